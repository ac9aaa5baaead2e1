//! Mail templates: one folder per email under `src/mail/templates/`, one
//! sub-folder per locale (`en`, `zh-CN`, `ja`) holding `subject`, `body.txt`
//! and `body.html`. All of them are embedded at compile time (a missing file
//! is a build error), rendered with minijinja: undefined variables are errors,
//! and `.html` templates are HTML-escaped. HTML bodies are wrapped in one
//! shared layout with inline styles only (no external assets).
use std::sync::OnceLock;

use anyhow::Context;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::Serialize;

use super::Template;
use crate::domain::ids::Locale;

/// Everything a template may use. Fields a mail does not need stay `None`
/// (templates test them with `{% if %}`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MailContext {
    pub recipient_name: String,
    pub org_name: Option<String>,
    pub request_number: Option<String>,
    pub kind_title: Option<String>,
    /// The member who asked, or `None` when the org (its upstream app) did.
    pub requester_name: Option<String>,
    pub remark: Option<String>,
    /// The review deadline, formatted in the org's calendar zone.
    pub due_at: Option<String>,
    /// `{public_url}/review/{token}`.
    pub link: Option<String>,
    pub link_expires_at: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    /// The reviewer's comment (the reason, for a rejection).
    pub comment: Option<String>,
    pub member_name: Option<String>,
    pub member_login: Option<String>,
    /// The endpoint URL of a webhook mail.
    pub webhook_url: Option<String>,
    /// Why approvald disabled it: `gone` (410) or `failing`.
    pub webhook_reason: Option<String>,
    /// Spending alerts: `daily` or `monthly`, the period (`2026-03-31`,
    /// `2026-03`), the threshold in percent, and amounts with their currency.
    pub period_kind: Option<String>,
    pub period: Option<String>,
    pub threshold: Option<String>,
    pub spent: Option<String>,
    pub limit: Option<String>,
}

impl MailContext {
    /// Overlay the string (or null) fields of a mail's `params` object that
    /// name a context field; other keys are ignored.
    pub fn apply_params(&mut self, params: &serde_json::Value) {
        let Some(obj) = params.as_object() else {
            return;
        };
        for (k, v) in obj {
            let val = match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                _ => continue,
            };
            let slot = match k.as_str() {
                "recipient_name" => {
                    if let Some(s) = val {
                        self.recipient_name = s;
                    }
                    continue;
                }
                "org_name" => &mut self.org_name,
                "request_number" => &mut self.request_number,
                "kind_title" => &mut self.kind_title,
                "requester_name" => &mut self.requester_name,
                "remark" => &mut self.remark,
                "due_at" => &mut self.due_at,
                "decided_by" => &mut self.decided_by,
                "decided_at" => &mut self.decided_at,
                "comment" => &mut self.comment,
                "member_name" => &mut self.member_name,
                "member_login" => &mut self.member_login,
                "webhook_url" => &mut self.webhook_url,
                "webhook_reason" => &mut self.webhook_reason,
                "period_kind" => &mut self.period_kind,
                "period" => &mut self.period,
                "threshold" => &mut self.threshold,
                "spent" => &mut self.spent,
                "limit" => &mut self.limit,
                _ => continue,
            };
            *slot = val;
        }
    }
}

/// The template output formatter shared by mail and page templates: a
/// missing optional field prints as nothing (never as "none"), and HTML
/// escaping covers `& < > " '` only, so URLs stay readable in the source.
pub fn formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    if value.is_none() || value.is_undefined() {
        return Ok(());
    }
    if state.auto_escape() == AutoEscape::Html && !value.is_safe() {
        let s = value.to_string();
        let mut esc = String::with_capacity(s.len() + 16);
        for c in s.chars() {
            match c {
                '&' => esc.push_str("&amp;"),
                '<' => esc.push_str("&lt;"),
                '>' => esc.push_str("&gt;"),
                '"' => esc.push_str("&quot;"),
                '\'' => esc.push_str("&#39;"),
                c => esc.push(c),
            }
        }
        return out.write_str(&esc).map_err(|_| {
            minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write failed")
        });
    }
    minijinja::escape_formatter(out, state, value)
}

/// `ms` as a wall-clock time in `tz`, written the way `locale` reads it,
/// always with the UTC offset (reviewers and requesters may sit in other zones).
pub fn format_time(ms: i64, tz: chrono_tz::Tz, locale: Locale) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms) else {
        return String::new();
    };
    let l = t.with_timezone(&tz);
    let off = l.format("%:z");
    match locale {
        Locale::En => format!("{} (UTC{off})", l.format("%Y-%m-%d %H:%M")),
        Locale::ZhCn | Locale::Ja => format!("{}（UTC{off}）", l.format("%Y年%-m月%-d日 %H:%M")),
    }
}

/// A rendered mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

struct Files {
    subject: &'static str,
    text: &'static str,
    html: &'static str,
}

macro_rules! files {
    ($t:literal, $l:literal) => {
        Files {
            subject: include_str!(concat!("templates/", $t, "/", $l, "/subject")),
            text: include_str!(concat!("templates/", $t, "/", $l, "/body.txt")),
            html: include_str!(concat!("templates/", $t, "/", $l, "/body.html")),
        }
    };
}

macro_rules! table {
    ($($t:ident => $name:literal),* $(,)?) => {
        fn files(t: Template, l: Locale) -> Files {
            match (t, l) {
                $(
                    (Template::$t, Locale::En) => files!($name, "en"),
                    (Template::$t, Locale::ZhCn) => files!($name, "zh-CN"),
                    (Template::$t, Locale::Ja) => files!($name, "ja"),
                )*
            }
        }
    };
}

table! {
    ReviewRequested => "review_requested",
    Reminder => "reminder",
    SlaEscalation => "sla_escalation",
    Approved => "approved",
    Rejected => "rejected",
    Cancelled => "cancelled",
    MemberDisabled => "member_disabled",
    WebhookDisabled => "webhook_disabled",
    SpendThreshold => "spend_threshold",
}

const LAYOUT: &str = include_str!("templates/layout.html");

/// Footer lines of every mail, per locale.
fn footer(l: Locale) -> &'static str {
    match l {
        Locale::En => {
            "This message was sent automatically by approvald. Please do not reply to it."
        }
        Locale::ZhCn => "此邮件由 approvald 自动发送，请勿直接回复。",
        Locale::Ja => "このメールは approvald から自動送信されています。返信しないでください。",
    }
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(formatter);
        env.add_template("layout.html", LAYOUT)
            .expect("mail layout parses");
        for t in Template::ALL {
            for l in Locale::ALL {
                let f = files(t, l);
                let base = format!("{}/{}", t.as_str(), l.as_str());
                env.add_template_owned(format!("{base}/subject"), f.subject)
                    .unwrap_or_else(|e| panic!("{base}/subject: {e}"));
                env.add_template_owned(format!("{base}/body.txt"), f.text)
                    .unwrap_or_else(|e| panic!("{base}/body.txt: {e}"));
                env.add_template_owned(format!("{base}/body.html"), f.html)
                    .unwrap_or_else(|e| panic!("{base}/body.html: {e}"));
            }
        }
        env
    })
}

/// Render `template` in `locale` with `ctx`.
pub fn render(template: Template, locale: Locale, ctx: &MailContext) -> anyhow::Result<Rendered> {
    let env = env();
    let base = format!("{}/{}", template.as_str(), locale.as_str());
    let get = |part: &str| -> anyhow::Result<String> {
        let name = format!("{base}/{part}");
        env.get_template(&name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .with_context(|| format!("rendering mail template {name}"))
    };
    // A subject is one line, whatever the template or the data did.
    let subject = get("subject")?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut text = get("body.txt")?.trim_end().to_string();
    text.push_str("\n\n-- \n");
    text.push_str(footer(locale));
    text.push('\n');
    let content = get("body.html")?;
    let html = env
        .get_template("layout.html")
        .and_then(|t| {
            t.render(minijinja::context! {
                lang => locale.as_str(),
                subject => &subject,
                footer => footer(locale),
                content => Value::from_safe_string(content),
            })
        })
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("rendering mail layout")?;
    Ok(Rendered {
        subject,
        text,
        html,
    })
}

/// A fixed context with every field set, in `locale` (tests and snapshot
/// fixtures): hostile text in the remark and names, times in Asia/Shanghai.
pub fn sample_context(locale: Locale) -> MailContext {
    let tz = chrono_tz::Asia::Shanghai;
    MailContext {
        recipient_name: "Alice <Reviewer>".into(),
        org_name: Some("Acme & Sons".into()),
        request_number: Some("R000042".into()),
        kind_title: Some(
            match locale {
                Locale::En => "FTP access",
                Locale::ZhCn => "FTP使用权限",
                Locale::Ja => "FTP利用権限",
            }
            .into(),
        ),
        requester_name: Some("Bob Buyer".into()),
        remark: Some("We upload 20,000 listings nightly.\n<script>alert(1)</script>".into()),
        due_at: Some(format_time(1_771_034_400_000, tz, locale)),
        link: Some(
            "https://approvals.example.com/review/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdE"
                .into(),
        ),
        link_expires_at: Some(format_time(1_771_552_800_000, tz, locale)),
        decided_by: Some("Carol Checker".into()),
        decided_at: Some(format_time(1_770_967_800_000, tz, locale)),
        comment: Some("The licence number does not match the registry.".into()),
        member_name: Some("Dave Departed".into()),
        member_login: Some("dave_01".into()),
        webhook_url: Some("https://shop.example.com/hooks/approvald?a=1&b=<2>".into()),
        webhook_reason: Some("failing".into()),
        period_kind: Some("daily".into()),
        period: Some("2026-02-14".into()),
        threshold: Some("80".into()),
        spent: Some("800.00 CNY".into()),
        limit: Some("1000.00 CNY".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_renders_in_every_locale() {
        for t in Template::ALL {
            for l in Locale::ALL {
                let ctx = sample_context(l);
                let r = render(t, l, &ctx).unwrap_or_else(|e| panic!("{t}/{l}: {e:#}"));
                assert!(
                    !r.subject.is_empty() && !r.subject.contains('\n'),
                    "{t}/{l}"
                );
                assert!(
                    r.html.contains(&format!("lang=\"{}\"", l.as_str())),
                    "{t}/{l}"
                );
                assert!(!r.html.contains("<script>"), "{t}/{l}: HTML not escaped");
                assert!(!r.html.contains("src="), "{t}/{l}: external asset");
                if t.has_review_link() {
                    assert!(
                        r.text.contains(ctx.link.as_deref().unwrap()),
                        "{t}/{l}: link missing in text"
                    );
                    assert!(
                        r.html.contains(ctx.link.as_deref().unwrap()),
                        "{t}/{l}: link missing in HTML"
                    );
                }
            }
        }
    }

    #[test]
    fn rejection_carries_the_reason() {
        for l in Locale::ALL {
            let r = render(Template::Rejected, l, &sample_context(l)).unwrap();
            assert!(r.text.contains("The licence number does not match"), "{l}");
        }
    }

    #[test]
    fn optional_fields_may_be_missing() {
        let ctx = MailContext {
            recipient_name: "X".into(),
            ..MailContext::default()
        };
        for t in Template::ALL {
            for l in Locale::ALL {
                render(t, l, &ctx).unwrap_or_else(|e| panic!("{t}/{l}: {e:#}"));
            }
        }
    }

    #[test]
    fn times_carry_the_offset() {
        let ms = 1_771_034_400_000; // 2026-02-14T02:00:00Z
        assert_eq!(
            format_time(ms, chrono_tz::Asia::Shanghai, Locale::En),
            "2026-02-14 10:00 (UTC+08:00)"
        );
        assert_eq!(
            format_time(ms, chrono_tz::Asia::Tokyo, Locale::Ja),
            "2026年2月14日 11:00（UTC+09:00）"
        );
    }

    #[test]
    fn params_override_known_fields_only() {
        let mut ctx = sample_context(Locale::En);
        ctx.apply_params(&serde_json::json!({"comment": "new", "member_name": null, "dedupe": "x", "kind_title": 5}));
        assert_eq!(ctx.comment.as_deref(), Some("new"));
        assert_eq!(ctx.member_name, None);
        assert_eq!(ctx.kind_title.as_deref(), Some("FTP access"));
    }
}
