//! The HTTP/1.1 server loop: hyper's connection builder, because
//! `axum::serve` offers neither a header-read timeout nor a bound on
//! graceful shutdown (it waits for every connection, however long a client
//! takes to finish its headers).
//!
//! - A client must send a request's whole header within
//!   `server.header_read_timeout_secs` (also the keep-alive idle limit);
//!   otherwise its connection is closed.
//! - On stop: no new connections; idle keep-alive connections close at once,
//!   requests in flight may finish for up to `server.shutdown_grace_secs`;
//!   whatever is still open then is closed, and `serve` returns.
//!
//! hyper answers requests it cannot parse (a folded header, two
//! `Content-Length` headers, a malformed request line) itself, with
//! `400 Bad Request` and an empty body, before any service of ours runs;
//! hyper 1.x has no hook to shape that answer (see the README).
use std::{net::SocketAddr, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Timeouts of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest time to receive a request's header (and idle keep-alive).
    pub header_read_timeout: Duration,
    /// Longest time connections get to finish after `stop`.
    pub shutdown_grace: Duration,
}

/// Serve `router` on `listener` until `stop` is cancelled, then shut down
/// within `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(stream, peer, router.clone(), limits, closing_rx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a little
                    // rather than spin; the listener itself stays usable.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let open = conns.len();
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            of = open,
            grace_secs = limits.shutdown_grace.as_secs_f64(),
            "HTTP connections still open after server.shutdown_grace_secs; closing them"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
) {
    let svc = router.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
    let mut conn = std::pin::pin!(conn);
    let mut told = *closing.borrow();
    if told {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            changed = closing.changed(), if !told => {
                told = true;
                if changed.is_ok() {
                    // Idle connections close now; one in flight finishes its
                    // response without keep-alive.
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
