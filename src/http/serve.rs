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
//! `Content-Length` headers, a malformed request line, headers too large)
//! itself, before any service of ours runs, with an empty body and no hook
//! to shape it. [`ProblemIo`] sits between hyper and the socket and turns
//! exactly those answers into `application/problem+json` ones.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

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
    let io = ProblemIo {
        inner: TokioIo::new(stream),
        pending: None,
    };
    let conn = builder.serve_connection(io, TowerToHyperService::new(svc));
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

/// The socket as hyper sees it, with one change: the empty-bodied answers
/// hyper writes on its own for requests it cannot parse (400, 414, 431)
/// become `application/problem+json` answers. Every answer of ours has a
/// body, so an empty one with those statuses can only be hyper's.
struct ProblemIo {
    inner: TokioIo<tokio::net::TcpStream>,
    /// A replacement being written: (bytes, written so far, length of the
    /// original write it stands for).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl hyper::rt::Read for ProblemIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ProblemIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none()
            && let Some(replacement) = parser_problem(buf)
        {
            self.pending = Some((replacement, 0, buf.len()));
        }
        let this = &mut *self;
        let Some((bytes, done, stands_for)) = &mut this.pending else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        while *done < bytes.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = *stands_for;
        this.pending = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes a response head in one buffer, which
    // is what `parser_problem` looks at.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// If `buf` is a whole response head of hyper's own parse-error answer
/// (status 400, 414 or 431 with `content-length: 0`), the problem+json
/// answer to write instead.
fn parser_problem(buf: &[u8]) -> Option<Vec<u8>> {
    let (status, title, detail) = if buf.starts_with(b"HTTP/1.1 400 ") {
        (
            400,
            "Bad request",
            "the request is not valid HTTP/1.1 (for example a folded header, two Content-Length headers, or a control character in a header)",
        )
    } else if buf.starts_with(b"HTTP/1.1 414 ") {
        (414, "URI too long", "the request target is too long")
    } else if buf.starts_with(b"HTTP/1.1 431 ") {
        (
            431,
            "Request header fields too large",
            "the request's header is too large",
        )
    } else {
        return None;
    };
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if head_end + 4 != buf.len() {
        return None;
    }
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut empty = false;
    let mut keep = Vec::new();
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower == "content-length: 0" {
            empty = true;
        } else if !lower.starts_with("content-length:")
            && !lower.starts_with("content-type:")
            && !lower.starts_with("connection:")
        {
            keep.push(line);
        }
    }
    if !empty {
        return None;
    }
    let slug = match status {
        400 => "bad-request",
        414 => "uri-too-long",
        _ => "header-too-large",
    };
    let body = serde_json::json!({
        "type": format!("https://approvald.dev/problems/{slug}"),
        "title": title,
        "status": status,
        "detail": detail,
    })
    .to_string();
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for line in keep {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_own_empty_answers_are_rewritten() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 03:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(parser_problem(hyper_400).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(
            out.contains("content-type: application/problem+json\r\n"),
            "{out}"
        );
        assert!(
            out.contains("date: Sun, 29 Nov 2026 03:00:00 GMT\r\n"),
            "{out}"
        );
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{out}"
        );
        let p: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(p["status"], 400);
        let out = parser_problem(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n",
        );
        assert!(out.is_some());
        // Ours always have a body; other statuses and partial writes pass.
        assert!(
            parser_problem(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 120\r\n\r\n").is_none()
        );
        assert!(
            parser_problem(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}").is_none()
        );
        assert!(parser_problem(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(parser_problem(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
    }
}
