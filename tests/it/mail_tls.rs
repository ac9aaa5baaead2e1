//! SMTP over TLS against a real TLS server (the in-tree test server with a
//! certificate from a CA made here), and the transport failures that are the
//! operator's to fix: an untrusted certificate, a wrong host name, a refused
//! password (535). Those keep every mail pending, say why once (and on
//! `/readyz`), and count `approvald_mail_transport_errors_total{kind}`.
use std::{collections::HashSet, path::Path, time::Duration};

use serde_json::Value;

use crate::{
    harness::{Opts, TestApp},
    mail_server::{Security, SmtpServer, TestPki, parse},
    review_util::{EmailRow, emails, reviewer, submit_ftp, wait_emails_final, wait_status},
};

// The notify job's retry policy is process-wide (the last daemon started in
// this test binary sets it), so these tests use the same cap (5 s) as every
// other SMTP test: a shorter one here made the SMTP-outage test's mails use
// up their 20 attempts before its server came back.
fn toml(smtp: &SmtpServer, tls: &str, ca_file: Option<&Path>, auth: Option<&str>) -> String {
    let mut s = format!(
        "[mail]\ntransport = \"smtp\"\nretry_base_ms = 100\nretry_cap_secs = 5\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{tls}\"\ntimeout_secs = 5\npool_size = 2\n",
        smtp.port()
    );
    if let Some(p) = ca_file {
        s.push_str(&format!("ca_file = \"{}\"\n", p.display()));
    }
    if let Some(pw) = auth {
        s.push_str(&format!("username = \"approvald\"\npassword = \"{pw}\"\n"));
    }
    s
}

async fn readyz(t: &TestApp) -> Value {
    t.client
        .get(format!("{}/readyz", t.base))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("readyz JSON")
}

/// Poll until every mail row satisfies `pred` (30 s).
async fn wait_mails(t: &TestApp, what: &str, pred: impl Fn(&EmailRow) -> bool) -> Vec<EmailRow> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = emails(t).await;
        if !rows.is_empty() && rows.iter().all(&pred) {
            return rows;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn one_review_mail(t: &TestApp) -> String {
    let (org, key, _) = t.create_org("TLS Co", "cn").await;
    reviewer(t, "tls-rev@example.com", "en").await;
    let id = submit_ftp(t, &org, &key, "over TLS").await;
    wait_status(t, &org, &key, &id, "in_review").await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_implicit_tls_deliver_with_a_private_ca() {
    for mode in ["starttls", "tls"] {
        let pki = TestPki::new(mode);
        let acceptor = pki.acceptor(&["127.0.0.1"]);
        let smtp = SmtpServer::start_with(match mode {
            "starttls" => Security::StartTls(acceptor),
            _ => Security::Implicit(acceptor),
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let ca = pki.write_ca(dir.path(), "ca.pem");
        let t = TestApp::spawn_with(Opts {
            toml: toml(&smtp, mode, Some(&ca), Some("secret")),
            ..Default::default()
        })
        .await;
        one_review_mail(&t).await;
        let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
        assert!(rows.iter().all(|r| r.status == "sent"), "{mode}: {rows:#?}");
        let msgs = smtp
            .wait_until("the review mail", Duration::from_secs(10), |m| {
                !m.is_empty()
            })
            .await;
        assert_eq!(msgs.len(), rows.len(), "{mode}");
        let p = parse(&msgs[0].data);
        assert!(
            p.review_token(&t.base).is_some(),
            "{mode}: the link arrived"
        );
        let (sessions, failures) = smtp.tls_counts();
        assert!(sessions >= 1, "{mode}: the mail went over TLS");
        assert_eq!(failures, 0, "{mode}");
        // Credentials went inside TLS, as configured.
        assert_eq!(
            smtp.auths()[0],
            ("approvald".into(), "secret".into()),
            "{mode}"
        );
        assert_eq!(readyz(&t).await["mail"], "ok", "{mode}");
        t.finish().await;
    }
}

/// A daemon that trusts only `trusted`'s CA, and an SMTP server (STARTTLS)
/// whose certificate another CA signed.
struct Untrusted {
    trusted: TestPki,
    smtp: SmtpServer,
    /// Holds the daemon's `mail.smtp.ca_file`.
    _ca_dir: tempfile::TempDir,
    t: TestApp,
}

async fn untrusted() -> Untrusted {
    let trusted = TestPki::new("trusted");
    let stranger = TestPki::new("stranger");
    let smtp = SmtpServer::start_with(Security::StartTls(stranger.acceptor(&["127.0.0.1"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = trusted.write_ca(dir.path(), "ca.pem");
    let t = TestApp::spawn_with(Opts {
        toml: toml(&smtp, "starttls", Some(&ca), None),
        ..Default::default()
    })
    .await;
    Untrusted {
        trusted,
        smtp,
        _ca_dir: dir,
        t,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_misnamed_certificate_keeps_mails_pending_until_fixed() {
    let Untrusted {
        trusted,
        smtp,
        _ca_dir,
        t,
    } = untrusted().await;
    one_review_mail(&t).await;

    // 1. Signed by a CA we do not trust: the mail waits, tried again and again.
    let rows = wait_mails(&t, "retried under an unknown CA", |r| {
        r.attempts >= 2
            && r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("mail.smtp.ca_file"))
    })
    .await;
    assert!(rows.iter().all(|r| r.status == "pending"), "{rows:#?}");
    // The server notes a refused handshake when it sees the client go away,
    // which can be a moment after the client has recorded its attempt.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while smtp.tls_counts().1 < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(smtp.tls_counts().1 >= 2, "the client refused the handshake");
    assert!(smtp.messages().is_empty());
    let ready = readyz(&t).await;
    assert_eq!(ready["mail"]["status"], "failing", "{ready:#}");
    assert_eq!(ready["mail"]["kind"], "tls", "{ready:#}");
    assert!(
        ready["mail"]["detail"]
            .as_str()
            .unwrap()
            .contains("mail.smtp.ca_file"),
        "{ready:#}"
    );
    let m = t.metrics().await;
    assert!(
        m.contains("approvald_mail_transport_errors_total{kind=\"tls\"}"),
        "{m}"
    );

    // 2. Trusted, but the certificate names another host.
    smtp.set_security(Security::StartTls(trusted.acceptor(&["mail.example.test"])));
    wait_mails(&t, "retried with a misnamed certificate", |r| {
        r.status == "pending"
            && r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("not valid for the name"))
    })
    .await;
    assert!(smtp.messages().is_empty());

    // 3. Fixed on the server's side: the waiting mail goes out, once.
    smtp.set_security(Security::StartTls(trusted.acceptor(&["127.0.0.1"])));
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:#?}");
    assert_eq!(smtp.messages().len(), rows.len());
    assert_eq!(readyz(&t).await["mail"], "ok");
    t.finish().await;
}

/// Make every DELETE of the published mail health fail (`on`), or stop that.
async fn refuse_health_clears(t: &TestApp, on: bool) {
    let stmts: &[&str] = match (&t.app.db, on) {
        (approvald::db::Db::Sqlite(_), true) => &[
            "CREATE TRIGGER refuse_health_clear BEFORE DELETE ON mail_transport_health \
             BEGIN SELECT RAISE(ABORT, 'injected: clearing the mail health refused'); END",
        ],
        (approvald::db::Db::Sqlite(_), false) => &["DROP TRIGGER refuse_health_clear"],
        (approvald::db::Db::Postgres(_), true) => &[
            "CREATE FUNCTION refuse_health_clear() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected: clearing the mail health refused'; END $$",
            "CREATE TRIGGER refuse_health_clear BEFORE DELETE ON mail_transport_health \
             FOR EACH ROW EXECUTE FUNCTION refuse_health_clear()",
        ],
        (approvald::db::Db::Postgres(_), false) => &[
            "DROP TRIGGER refuse_health_clear ON mail_transport_health",
            "DROP FUNCTION refuse_health_clear()",
        ],
    };
    for sql in stmts {
        approvald::on_db!(&t.app.db, |p| sqlx::query(sqlx::AssertSqlSafe(*sql))
            .execute(p)
            .await
            .map(|_| ()))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// A delivery that finds the transport fixed clears the published failure;
/// when that write fails (the database refused it), the next delivery tries
/// again, so `/readyz` does not go on saying "failing" for a working server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_of_the_mail_health_is_tried_again() {
    let Untrusted {
        trusted,
        smtp,
        _ca_dir,
        t,
    } = untrusted().await;
    let (org, key, _) = t.create_org("Health Co", "cn").await;
    reviewer(&t, "health-rev@example.com", "en").await;
    let first = submit_ftp(&t, &org, &key, "first").await;
    wait_status(&t, &org, &key, &first, "in_review").await;
    wait_mails(&t, "refused under an unknown CA", |r| {
        r.last_error
            .as_deref()
            .is_some_and(|e| e.contains("mail.smtp.ca_file"))
    })
    .await;
    t.eventually("the failure is published", || async {
        readyz(&t).await["mail"]["status"] == "failing"
    })
    .await;

    // The server is fixed, but the write that clears the failure is refused.
    refuse_health_clears(&t, true).await;
    smtp.set_security(Security::StartTls(trusted.acceptor(&["127.0.0.1"])));
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:#?}");
    // Let the job that sent it finish its (refused) write.
    t.drain().await;
    assert_eq!(
        readyz(&t).await["mail"]["status"],
        "failing",
        "the refused clear left the failure published"
    );

    // The database takes writes again: the next delivery clears it.
    refuse_health_clears(&t, false).await;
    // (Another org: a second open request of the same kind would be a
    // duplicate.)
    let (org2, key2, _) = t.create_org("Health Two", "cn").await;
    let second = submit_ftp(&t, &org2, &key2, "second").await;
    wait_status(&t, &org2, &key2, &second, "in_review").await;
    t.eventually("both mails sent", || async {
        let rows = emails(&t).await;
        rows.len() == 2 && rows.iter().all(|r| r.status == "sent")
    })
    .await;
    t.eventually("the next delivery clears the published failure", || async {
        readyz(&t).await["mail"] == "ok"
    })
    .await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_keeps_mails_pending_and_the_fix_sends_each_once() {
    let smtp = SmtpServer::start().await;
    smtp.require_password("right-password");
    let mut t = TestApp::spawn_with(Opts {
        toml: toml(&smtp, "none", None, Some("wrong-password")),
        ..Default::default()
    })
    .await;
    let (org, key, _) = t.create_org("Auth Co", "cn").await;
    reviewer(&t, "a1@example.com", "en").await;
    reviewer(&t, "a2@example.com", "ja").await;
    for kind in ["ftp_access", "bulk_data_management", "listings_over_50000"] {
        let id = t
            .post(
                &format!("/v1/orgs/{org}/requests"),
                &key,
                serde_json::json!({"kind": kind, "remark": "please"}),
            )
            .await
            .expect(202)
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        wait_status(&t, &org, &key, &id, "in_review").await;
    }
    let rows = wait_mails(&t, "every mail refused at AUTH", |r| {
        r.attempts >= 1 && r.last_error.as_deref().is_some_and(|e| e.contains("535"))
    })
    .await;
    assert_eq!(rows.len(), 6, "{rows:#?}");
    assert!(
        rows.iter().all(|r| r.status == "pending"),
        "a wrong password fails no mail for good: {rows:#?}"
    );
    assert!(smtp.messages().is_empty());
    let ready = readyz(&t).await;
    assert_eq!(ready["mail"]["kind"], "auth", "{ready:#}");
    assert!(
        ready["mail"]["detail"]
            .as_str()
            .unwrap()
            .contains("mail.smtp.password"),
        "{ready:#}"
    );
    let m = t.metrics().await;
    assert!(
        m.contains("approvald_mail_transport_errors_total{kind=\"auth\"}"),
        "{m}"
    );
    let failed_events: i64 = t.count("request_events WHERE type = 'email_failed'").await;
    assert_eq!(failed_events, 0);

    // The operator fixes the password and restarts: every mail goes out once.
    t.config.mail.smtp.password = approvald::config::Secret::new("right-password");
    t.restart().await;
    let rows = wait_emails_final(&t, Duration::from_secs(60)).await;
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:#?}");
    // Let any stray retry run, then count what arrived.
    t.drain().await;
    let msgs = smtp.messages();
    let ids: HashSet<String> = msgs.iter().map(|m| parse(&m.data).message_id).collect();
    assert_eq!(msgs.len(), 6, "each mail once");
    assert_eq!(ids.len(), 6, "six different mails");
    assert_eq!(readyz(&t).await["mail"], "ok");
    t.finish().await;
}
