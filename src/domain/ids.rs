//! Newtypes that can only hold valid values ("parse, don't validate").
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value was refused; the message is shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Invalid {
    pub field: &'static str,
    pub why: String,
}

impl Invalid {
    pub fn new(field: &'static str, why: impl Into<String>) -> Self {
        Self {
            field,
            why: why.into(),
        }
    }
}

fn has_control(s: &str, allow_newlines: bool) -> bool {
    s.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t' || c == '\r')))
}

/// A member's sign-in id: 5-20 characters of letters, digits, `^`, `@`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct LoginId(String);

impl LoginId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let n = s.chars().count();
        if !(5..=20).contains(&n) {
            return Err(Invalid::new(
                "login_id",
                format!("must be 5-20 characters, got {n}"),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '^' | '@' | '_')))
        {
            return Err(Invalid::new(
                "login_id",
                format!("{c:?} is not allowed; use letters, digits, ^, @ or _"),
            ));
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A mail address the mailer can send to: parsed with the same rules as the
/// SMTP envelope (lettre's [`lettre::Address`], so `a..b@x`, `.lead@x`,
/// `x(y)@x` and the like are refused here rather than failing every mail
/// later), plus what we ask of every address: a dotted domain, no spaces or
/// control characters, at most 254 characters. Stored as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |why: &str| Err(Invalid::new("email", why.to_string()));
        if s.len() > 254 {
            return bad("must be at most 254 characters");
        }
        if s.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"')
        }) {
            return bad("must not contain spaces, control characters or <>,;\"");
        }
        let Some((local, domain)) = s.split_once('@') else {
            return bad("must look like name@example.com");
        };
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return bad("must look like name@example.com");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels
                .iter()
                .any(|l| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-'))
            || !labels
                .iter()
                .all(|l| l.chars().all(|c| c.is_alphanumeric() || c == '-'))
        {
            return bad("domain must look like example.com");
        }
        // The mailer's own parser: what it refuses could never be delivered.
        if s.parse::<lettre::Address>().is_err() {
            return bad(
                "is not a deliverable mail address (dots only between characters of the name; no ( ) [ ] : \\ or other special characters)",
            );
        }
        Ok(Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `a***@example.com`, for logs.
    pub fn masked(&self) -> String {
        mask_email(&self.0)
    }
}

/// Mask an address for logs: keep the first character and the domain.
pub fn mask_email(s: &str) -> String {
    match s.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

/// A language we send mail and pages in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Locale {
    #[serde(rename = "en")]
    En,
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "ja")]
    Ja,
}

impl Locale {
    pub const ALL: [Locale; 3] = [Locale::En, Locale::ZhCn, Locale::Ja];

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s.to_ascii_lowercase().as_str() {
            "en" => Ok(Self::En),
            "zh-cn" => Ok(Self::ZhCn),
            "ja" => Ok(Self::Ja),
            _ => Err(Invalid::new(
                "locale",
                format!("{s:?}: use en, zh-CN or ja"),
            )),
        }
    }
    /// Lenient: anything unknown falls back to English (recipients' stored
    /// locales are always valid, this serves Accept-Language and old rows).
    pub fn or_en(s: &str) -> Self {
        Self::parse(s).unwrap_or(Self::En)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::ZhCn => "zh-CN",
            Self::Ja => "ja",
        }
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person's or org's display name: 1-100 characters, no control characters.
pub fn parse_name(field: &'static str, s: &str) -> Result<String, Invalid> {
    let t = s.trim();
    let n = t.chars().count();
    if n == 0 || n > 100 {
        return Err(Invalid::new(field, "must be 1-100 characters"));
    }
    if has_control(t, false) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(t.to_string())
}

/// Free text such as a request's remark or a reviewer's comment: at most
/// `max` characters; newlines and tabs allowed, other control characters
/// (NUL included) refused.
pub fn parse_text(
    field: &'static str,
    s: &str,
    max: usize,
    required: bool,
) -> Result<String, Invalid> {
    let t = s.trim();
    if required && t.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    let n = t.chars().count();
    if n > max {
        return Err(Invalid::new(
            field,
            format!("must be at most {max} characters, got {n}"),
        ));
    }
    if has_control(t, true) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    Ok(t.to_string())
}

/// Kind of member account within an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberKind {
    SuperAdmin,
    Admin,
    Member,
}

impl MemberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SuperAdmin => "super_admin",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "super_admin" => Ok(Self::SuperAdmin),
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            _ => Err(Invalid::new(
                "kind",
                format!("{s:?}: use super_admin, admin or member"),
            )),
        }
    }
    /// May review org-internal requests (`org:admins`).
    pub fn is_admin(self) -> bool {
        matches!(self, Self::SuperAdmin | Self::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_ids() {
        for ok in ["abcde", "A^b@c_1", "12345678901234567890"] {
            LoginId::parse(ok).unwrap();
        }
        for bad in [
            "abcd",
            "123456789012345678901",
            "abc de",
            "abc-de",
            "ａｂｃｄｅ",
            "abc\0de",
        ] {
            assert!(LoginId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails() {
        for ok in [
            "a@example.com",
            "first.last+tag@sub.example.co.jp",
            "x@例え.jp",
            "o'brien@example.com",
            "a!#$%&*+/=?^_`{|}~-b@example.com",
        ] {
            Email::parse(ok).unwrap();
            assert!(ok.parse::<lettre::Address>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@",
            "@b.com",
            "a@b",
            "a b@c.com",
            "a@b..com",
            "a@@b.com",
            "a@-b.com",
            "<a@b.com>",
            // The mailer (lettre) cannot send to these.
            "a..b@example.com",
            ".lead@example.com",
            "trail.@example.com",
            "x(y)@example.com",
            "x[y]@example.com",
            "x:y@example.com",
            "x\\y@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Email::parse("alice@example.com").unwrap().masked(),
            "a***@example.com"
        );
    }

    #[test]
    fn text() {
        assert!(parse_text("remark", "ok\nline", 10, true).is_ok());
        assert!(parse_text("remark", "nul\0", 10, true).is_err());
        assert!(parse_text("remark", "  ", 10, true).is_err());
        assert!(parse_text("remark", "12345678901", 10, true).is_err());
        assert_eq!(Locale::parse("ZH-cn").unwrap(), Locale::ZhCn);
        assert!(Locale::parse("fr").is_err());
    }
}
