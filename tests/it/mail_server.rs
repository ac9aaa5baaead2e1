//! A small SMTP server on loopback for the mail tests: records every message,
//! answers scripted replies on demand (e.g. `451` three times, or `550`) at
//! `RCPT TO`, and can be stopped and restarted on the same port (the "SMTP
//! down" test). It speaks plain SMTP, STARTTLS or implicit TLS (with a
//! certificate the test makes, see [`TestPki`]) and can refuse a password
//! with `535`. Plus helpers to parse what it received.
#![allow(dead_code)]

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpListener,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, rustls};

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpt: Vec<String>,
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<Received>>,
    /// Per recipient (lowercase): replies to give at RCPT TO, in order; once
    /// used up the recipient is accepted.
    script: Mutex<HashMap<String, VecDeque<String>>>,
    /// Every RCPT TO seen, with the reply code given.
    rcpt_log: Mutex<Vec<(String, u16)>>,
    /// Every `AUTH PLAIN` seen, decoded to (user, password).
    auths: Mutex<Vec<(String, String)>>,
    /// When set, `AUTH PLAIN` with another password gets `535`.
    password: Mutex<Option<String>>,
    /// Completed TLS handshakes (STARTTLS or implicit).
    tls_sessions: Mutex<u32>,
    /// TLS handshakes the client broke off (it did not trust us).
    tls_failures: Mutex<u32>,
}

/// How the server talks.
#[derive(Clone)]
pub enum Security {
    Plain,
    /// Offers STARTTLS in EHLO and upgrades when asked.
    StartTls(TlsAcceptor),
    /// TLS from the first byte (port 465 style).
    Implicit(TlsAcceptor),
}

/// A certificate authority made for one test, and server certificates it
/// (or another, untrusted CA) signs.
pub struct TestPki {
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
    /// The CA certificate, PEM (what `mail.smtp.ca_file` points at).
    pub ca_pem: String,
}

impl TestPki {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("approvald test CA {name}"),
        );
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca_cert = params.self_signed(&ca_key).expect("CA certificate");
        let ca_pem = ca_cert.pem();
        Self {
            ca_params: params,
            ca_key,
            ca_pem,
        }
    }

    /// Write the CA certificate to `dir/name` and return its path.
    pub fn write_ca(&self, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.ca_pem).expect("write CA file");
        p
    }

    /// A TLS acceptor whose certificate names `names` (DNS names or IP
    /// addresses), signed by this CA.
    pub fn acceptor(&self, names: &[&str]) -> TlsAcceptor {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("server cert params");
        let key = rcgen::KeyPair::generate().expect("server key");
        let issuer = rcgen::Issuer::new(self.ca_params.clone(), &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let chain = vec![cert.der().clone()];
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .expect("server TLS config");
        TlsAcceptor::from(Arc::new(config))
    }
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    security: Arc<Mutex<Security>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SmtpServer {
    /// Start on a free port. Panics (fails the test) if it cannot.
    pub async fn start() -> Self {
        Self::start_with(Security::Plain).await
    }

    /// Start on a free port, speaking `security`.
    pub async fn start_with(security: Security) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("SMTP test server: bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let s = Self {
            addr,
            shared: Arc::new(Shared::default()),
            security: Arc::new(Mutex::new(security)),
            task: Mutex::new(None),
        };
        s.serve(listener);
        s
    }

    /// Refuse `AUTH PLAIN` with `535` unless the password is `password`.
    pub fn require_password(&self, password: &str) {
        *self.shared.password.lock().unwrap() = Some(password.to_string());
    }

    /// (completed TLS sessions, TLS handshakes the client broke off).
    pub fn tls_counts(&self) -> (u32, u32) {
        (
            *self.shared.tls_sessions.lock().unwrap(),
            *self.shared.tls_failures.lock().unwrap(),
        )
    }

    /// Use another certificate (or mode) from the next connection on.
    pub fn set_security(&self, security: Security) {
        *self.security.lock().unwrap() = security;
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// TOML for the app config: SMTP to this server, fast retries.
    pub fn config_toml(&self) -> String {
        format!(
            "[mail]\ntransport = \"smtp\"\nretry_base_ms = 100\nretry_cap_secs = 5\n\
             [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout_secs = 5\npool_size = 4\n",
            self.port()
        )
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let security = self.security.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in this set: aborting the accept task
            // drops the set, which aborts (disconnects) them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    acc = listener.accept() => {
                        let Ok((sock, _)) = acc else { continue };
                        let sec = security.lock().unwrap().clone();
                        conns.spawn(connection(sock, shared.clone(), sec));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Go down: stop listening and drop every open connection.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
    }

    /// Come back on the same port.
    pub async fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("SMTP test server: cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Answer `replies` (e.g. `"451 4.7.1 try later"`, or `"HANG"` for no
    /// answer at all) to the next RCPT TOs for `rcpt`, then accept it.
    pub fn script(&self, rcpt: &str, replies: &[&str]) {
        self.shared.script.lock().unwrap().insert(
            rcpt.to_lowercase(),
            replies.iter().map(|s| s.to_string()).collect(),
        );
    }

    /// Credentials presented with `AUTH PLAIN`, in order.
    pub fn auths(&self) -> Vec<(String, String)> {
        self.shared.auths.lock().unwrap().clone()
    }

    pub fn messages(&self) -> Vec<Received> {
        self.shared.messages.lock().unwrap().clone()
    }

    /// Every RCPT TO seen for `rcpt`, as reply codes (0: no answer).
    pub fn rcpt_codes(&self, rcpt: &str) -> Vec<u16> {
        let r = rcpt.to_lowercase();
        self.shared
            .rcpt_log
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| *a == r)
            .map(|(_, c)| *c)
            .collect()
    }

    /// Wait until `pred` holds for the received messages.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if pred(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "SMTP test server: timed out after {timeout:?} waiting for {what}; have {} messages",
                    m.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }
}

fn angle(arg: &str) -> String {
    let a = arg.trim();
    let a = a.split_once(':').map(|(_, v)| v).unwrap_or(a).trim();
    let a = a.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<')
        .trim_end_matches('>')
        .to_lowercase()
}

async fn connection(sock: tokio::net::TcpStream, shared: Arc<Shared>, security: Security) {
    match security {
        Security::Plain => {
            session(BufReader::new(sock), shared, false, true).await;
        }
        Security::Implicit(acceptor) => {
            let Some(tls) = handshake(&acceptor, sock, &shared).await else {
                return;
            };
            session(BufReader::new(tls), shared, false, true).await;
        }
        Security::StartTls(acceptor) => {
            let Some(plain) = session(BufReader::new(sock), shared.clone(), true, true).await
            else {
                return;
            };
            let Some(tls) = handshake(&acceptor, plain, &shared).await else {
                return;
            };
            // After STARTTLS the client greets again; no second banner.
            session(BufReader::new(tls), shared, false, false).await;
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

async fn handshake(
    acceptor: &TlsAcceptor,
    sock: tokio::net::TcpStream,
    shared: &Shared,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match acceptor.accept(sock).await {
        Ok(tls) => {
            *shared.tls_sessions.lock().unwrap() += 1;
            Some(tls)
        }
        Err(_) => {
            *shared.tls_failures.lock().unwrap() += 1;
            None
        }
    }
}

/// One SMTP conversation on `io`. With `offer_starttls`, EHLO advertises
/// STARTTLS and the stream is handed back when the client asks for it.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut r: BufReader<S>,
    shared: Arc<Shared>,
    offer_starttls: bool,
    banner: bool,
) -> Option<S> {
    if banner && send(&mut r, b"220 approvald-test ESMTP\r\n").await.is_err() {
        return None;
    }
    let mut from = String::new();
    let mut rcpt: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let starttls = if offer_starttls {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            format!(
                "250-approvald-test\r\n{starttls}250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 PIPELINING"
            )
        } else if upper == "STARTTLS" && offer_starttls {
            if send(&mut r, b"220 2.0.0 ready to start TLS\r\n")
                .await
                .is_err()
            {
                return None;
            }
            return Some(r.into_inner());
        } else if upper.starts_with("AUTH PLAIN ") {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(cmd[11..].trim())
                .unwrap_or_default();
            let parts: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).to_string())
                .collect();
            let (user, pass) = (
                parts.get(1).cloned().unwrap_or_default(),
                parts.get(2).cloned().unwrap_or_default(),
            );
            let wanted = shared.password.lock().unwrap().clone();
            let ok = wanted.as_deref().is_none_or(|w| w == pass);
            shared.auths.lock().unwrap().push((user, pass));
            if ok {
                "235 2.7.0 authenticated".into()
            } else {
                "535 5.7.8 authentication credentials invalid".into()
            }
        } else if upper.starts_with("HELO") {
            "250 approvald-test".into()
        } else if upper.starts_with("MAIL FROM") {
            from = angle(&cmd);
            rcpt.clear();
            "250 2.1.0 OK".into()
        } else if upper.starts_with("RCPT TO") {
            let to = angle(&cmd);
            let scripted = shared
                .script
                .lock()
                .unwrap()
                .get_mut(&to)
                .and_then(|q| q.pop_front());
            let reply = scripted.unwrap_or_else(|| "250 2.1.5 OK".into());
            if reply == "HANG" {
                // Never answer: the client must time out.
                shared.rcpt_log.lock().unwrap().push((to.clone(), 0));
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return None;
            }
            let code: u16 = reply[..3].parse().unwrap_or(250);
            shared.rcpt_log.lock().unwrap().push((to.clone(), code));
            if code == 250 {
                rcpt.push(to);
            }
            reply
        } else if upper == "DATA" {
            if rcpt.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                if send(&mut r, b"354 go ahead\r\n").await.is_err() {
                    return None;
                }
                let mut data = Vec::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let l = line.strip_prefix('.').unwrap_or(&line);
                    data.extend_from_slice(l.as_bytes());
                }
                shared.messages.lock().unwrap().push(Received {
                    from: from.clone(),
                    rcpt: rcpt.clone(),
                    data,
                });
                rcpt.clear();
                "250 2.0.0 queued".into()
            }
        } else if upper == "RSET" {
            rcpt.clear();
            "250 OK".into()
        } else if upper == "NOOP" {
            "250 OK".into()
        } else if upper == "QUIT" {
            let _ = send(&mut r, b"221 bye\r\n").await;
            return None;
        } else {
            "502 5.5.2 command not implemented".into()
        };
        if send(&mut r, format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return None;
        }
    }
}

/// A received message, parsed.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub message_id: String,
    pub subject: String,
    pub to: String,
    pub content_language: String,
    pub text: String,
    pub html: String,
}

impl Parsed {
    /// The review link's token, when the mail has one (`{base}/review/{token}`);
    /// checks that the text and HTML parts carry the same link.
    pub fn review_token(&self, base: &str) -> Option<String> {
        let t = find_token(&self.text, base)?;
        assert_eq!(
            find_token(&self.html, base).as_deref(),
            Some(t.as_str()),
            "HTML part has another link"
        );
        Some(t)
    }
}

fn find_token(s: &str, base: &str) -> Option<String> {
    let prefix = format!("{base}/review/");
    let i = s.find(&prefix)? + prefix.len();
    let tok: String = s[i..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    Some(tok)
}

/// Parse a raw message: headers decoded (RFC 2047), the text and HTML parts
/// of the multipart/alternative body decoded.
pub fn parse(raw: &[u8]) -> Parsed {
    use mailparse::MailHeaderMap;
    let m = mailparse::parse_mail(raw).expect("message parses");
    let h = |name: &str| m.headers.get_first_value(name).unwrap_or_default();
    assert_eq!(
        m.ctype.mimetype, "multipart/alternative",
        "mail must be text + HTML alternatives"
    );
    let mut text = String::new();
    let mut html = String::new();
    for p in &m.subparts {
        match p.ctype.mimetype.as_str() {
            "text/plain" => text = p.get_body().expect("text body decodes"),
            "text/html" => html = p.get_body().expect("html body decodes"),
            other => panic!("unexpected part {other}"),
        }
    }
    assert!(!text.is_empty() && !html.is_empty(), "both parts present");
    Parsed {
        message_id: h("Message-ID"),
        subject: h("Subject"),
        to: h("To"),
        content_language: h("Content-Language"),
        text,
        html,
    }
}
