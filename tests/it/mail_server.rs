//! A small SMTP server on loopback for the mail tests: records every message,
//! answers scripted replies on demand (e.g. `451` three times, or `550`) at
//! `RCPT TO`, and can be stopped and restarted on the same port (the "SMTP
//! down" test). Plus helpers to parse what it received.
#![allow(dead_code)]

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
    task::JoinHandle,
};

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
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SmtpServer {
    /// Start on a free port. Panics (fails the test) if it cannot.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("SMTP test server: bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let s = Self {
            addr,
            shared: Arc::new(Shared::default()),
            task: Mutex::new(None),
        };
        s.serve(listener);
        s
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
        let task = tokio::spawn(async move {
            // Connection tasks live in this set: aborting the accept task
            // drops the set, which aborts (disconnects) them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    acc = listener.accept() => {
                        let Ok((sock, _)) = acc else { continue };
                        conns.spawn(session(sock, shared.clone()));
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

async fn session(sock: tokio::net::TcpStream, shared: Arc<Shared>) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    if w.write_all(b"220 approvald-test ESMTP\r\n").await.is_err() {
        return;
    }
    let mut from = String::new();
    let mut rcpt: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-approvald-test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-AUTH PLAIN\r\n250 PIPELINING"
                .into()
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
            shared.auths.lock().unwrap().push((user, pass));
            "235 2.7.0 authenticated".into()
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
                return;
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
                if w.write_all(b"354 go ahead\r\n").await.is_err() {
                    return;
                }
                let mut data = Vec::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
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
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            "502 5.5.2 command not implemented".into()
        };
        if w.write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
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
