//! The permission catalog: which kinds of permission can be requested, who
//! reviews them, how long review may take, and what happens automatically.
use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::ids::Locale;

/// The catalog shipped with the binary.
pub const SHIPPED: &str = include_str!("../../config/catalog.toml");

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub kinds: Vec<PermissionKind>,
    #[serde(default)]
    pub modules: Vec<Module>,
    #[serde(default)]
    pub menus: Vec<Menu>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Titles {
    pub en: String,
    #[serde(rename = "zh-CN")]
    pub zh_cn: String,
    pub ja: String,
}

impl Titles {
    pub fn get(&self, locale: Locale) -> &str {
        match locale {
            Locale::En => &self.en,
            Locale::ZhCn => &self.zh_cn,
            Locale::Ja => &self.ja,
        }
    }
}

/// Who reviews a kind: a platform reviewer group, or the requesting org's admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reviewers {
    Platform(String),
    OrgAdmins,
}

impl Reviewers {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "org:admins" {
            return Ok(Self::OrgAdmins);
        }
        match s.strip_prefix("platform:") {
            Some(g) if is_word(g) => Ok(Self::Platform(g.to_string())),
            _ => Err(format!(
                "reviewers {s:?}: use `platform:<group>` or `org:admins`"
            )),
        }
    }
    pub fn as_string(&self) -> String {
        match self {
            Self::Platform(g) => format!("platform:{g}"),
            Self::OrgAdmins => "org:admins".into(),
        }
    }
}

impl Serialize for Reviewers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_string())
    }
}

impl<'de> Deserialize<'de> for Reviewers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// A reviewer decides.
    Manual,
    /// Approved by the review job once checks pass.
    AutoApprove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBreach {
    /// Mail the escalation contacts; the request stays in review.
    #[default]
    Escalate,
    /// Reject with `breach_reason`.
    AutoReject,
}

/// Whom a grant is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The whole org (a seller capability).
    #[default]
    Org,
    /// The requesting member (e.g. payment permission).
    Member,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionKind {
    pub key: String,
    pub titles: Titles,
    /// `platform:<group>` or `org:admins`.
    #[schema(value_type = String, pattern = "^(org:admins|platform:[A-Za-z0-9_-]{1,64})$")]
    pub reviewers: Reviewers,
    /// Review takes this many business days.
    pub sla_days: u32,
    /// Document types that must be attached, e.g. `liquor_licence`.
    #[serde(default)]
    pub documents: Vec<String>,
    pub policy: Policy,
    #[serde(default)]
    pub on_breach: OnBreach,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breach_reason: Option<String>,
    #[serde(default)]
    pub scope: Scope,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Module {
    pub key: String,
    pub titles: Titles,
    #[serde(default)]
    pub functions: BTreeMap<String, Titles>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Menu {
    pub key: String,
    pub titles: Titles,
    /// The permission kind that must be granted before the menu opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<String>,
}

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Keys that appear in actions (`orders.delete`, `menu:ftp`).
fn is_action_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

fn check_titles(what: &str, t: &Titles) -> Result<(), String> {
    for s in [&t.en, &t.zh_cn, &t.ja] {
        if s.trim().is_empty() {
            return Err(format!("{what}: every title (en, zh-CN, ja) is required"));
        }
    }
    Ok(())
}

impl Catalog {
    pub fn parse(text: &str) -> Result<Self, String> {
        let c: Catalog = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    pub fn shipped() -> Self {
        Self::parse(SHIPPED).expect("shipped catalog is valid (tested)")
    }

    fn check(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for k in &self.kinds {
            if !is_word(&k.key) {
                return Err(format!(
                    "kind key {:?} must be letters, digits, _ or -",
                    k.key
                ));
            }
            if !seen.insert(k.key.as_str()) {
                return Err(format!("kind {:?} is listed twice", k.key));
            }
            if !(1..=20).contains(&k.sla_days) {
                return Err(format!("kind {:?}: sla_days must be 1-20", k.key));
            }
            for t in [&k.titles.en, &k.titles.zh_cn, &k.titles.ja] {
                if t.trim().is_empty() {
                    return Err(format!(
                        "kind {:?}: every title (en, zh-CN, ja) is required",
                        k.key
                    ));
                }
            }
            if k.on_breach == OnBreach::AutoReject
                && k.breach_reason.as_deref().unwrap_or("").is_empty()
            {
                return Err(format!(
                    "kind {:?}: on_breach = auto_reject needs a breach_reason",
                    k.key
                ));
            }
        }
        let mut modules = HashSet::new();
        for m in &self.modules {
            if !is_action_word(&m.key) {
                return Err(format!(
                    "module key {:?} must be lowercase letters, digits or _",
                    m.key
                ));
            }
            if !modules.insert(m.key.as_str()) {
                return Err(format!("module {:?} is listed twice", m.key));
            }
            check_titles(&format!("module {:?}", m.key), &m.titles)?;
            for (f, titles) in &m.functions {
                if !is_action_word(f) {
                    return Err(format!(
                        "module {:?}: function key {f:?} must be lowercase letters, digits or _",
                        m.key
                    ));
                }
                check_titles(&format!("function {:?}.{f:?}", m.key), titles)?;
            }
        }
        let mut menus = HashSet::new();
        for m in &self.menus {
            if !is_action_word(&m.key) {
                return Err(format!(
                    "menu key {:?} must be lowercase letters, digits or _",
                    m.key
                ));
            }
            if !menus.insert(m.key.as_str()) {
                return Err(format!("menu {:?} is listed twice", m.key));
            }
            check_titles(&format!("menu {:?}", m.key), &m.titles)?;
            if let Some(r) = &m.requires {
                match self.kind(r) {
                    None => {
                        return Err(format!("menu {:?} requires unknown kind {r:?}", m.key));
                    }
                    Some(k) if k.scope != Scope::Org => {
                        return Err(format!(
                            "menu {:?} requires {r:?}, which is granted per member; a menu needs an org-wide kind",
                            m.key
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    pub fn module(&self, key: &str) -> Option<&Module> {
        self.modules.iter().find(|m| m.key == key)
    }

    pub fn menu(&self, key: &str) -> Option<&Menu> {
        self.menus.iter().find(|m| m.key == key)
    }

    pub fn kind(&self, key: &str) -> Option<&PermissionKind> {
        self.kinds.iter().find(|k| k.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_catalog_is_valid() {
        let c = Catalog::shipped();
        assert!(c.kinds.len() >= 10);
        let alcohol = c.kind("alcohol_sales").unwrap();
        assert_eq!(alcohol.documents, vec!["liquor_licence".to_string()]);
        assert_eq!(
            c.kind("payment_permission").unwrap().reviewers,
            Reviewers::OrgAdmins
        );
        assert_eq!(c.kind("payment_permission").unwrap().scope, Scope::Member);
        // The company-account seed: three modules, eight functions.
        let fns: Vec<String> = c
            .modules
            .iter()
            .flat_map(|m| m.functions.keys().map(move |f| format!("{}.{f}", m.key)))
            .collect();
        assert_eq!(
            fns,
            [
                "orders.delete",
                "orders.download_files",
                "prepaid.edit_transfer_info",
                "prepaid.set_password_free_limit",
                "prepaid.set_payment_password",
                "prepaid.transfer_out",
                "files.delete",
                "files.download",
            ]
        );
        assert_eq!(c.module("orders").unwrap().titles.zh_cn, "订单管理");
        assert_eq!(
            c.menu("ftp").unwrap().requires.as_deref(),
            Some("ftp_access")
        );
        assert!(c.menu("basic_info").unwrap().requires.is_none());
        // Every org-wide kind unlocks a menu.
        for k in c.kinds.iter().filter(|k| k.scope == Scope::Org) {
            assert!(
                c.menus
                    .iter()
                    .any(|m| m.requires.as_deref() == Some(&k.key)),
                "{}",
                k.key
            );
        }
    }

    #[test]
    fn bad_modules_and_menus_are_refused() {
        let twice = format!(
            "{SHIPPED}\n[[modules]]\nkey = \"orders\"\ntitles = {{ en = \"a\", \"zh-CN\" = \"b\", ja = \"c\" }}\n"
        );
        assert!(Catalog::parse(&twice).unwrap_err().contains("twice"));
        let member_kind = format!(
            "{SHIPPED}\n[[menus]]\nkey = \"pay\"\ntitles = {{ en = \"a\", \"zh-CN\" = \"b\", ja = \"c\" }}\nrequires = \"payment_permission\"\n"
        );
        assert!(
            Catalog::parse(&member_kind)
                .unwrap_err()
                .contains("per member")
        );
        let bad_key = format!(
            "{SHIPPED}\n[[menus]]\nkey = \"Bad-Key\"\ntitles = {{ en = \"a\", \"zh-CN\" = \"b\", ja = \"c\" }}\n"
        );
        assert!(Catalog::parse(&bad_key).unwrap_err().contains("lowercase"));
    }

    #[test]
    fn bad_catalogs_are_refused() {
        assert!(Reviewers::parse("platform:").is_err());
        assert!(Reviewers::parse("someone").is_err());
        let dup = format!(
            "{SHIPPED}\n{}",
            &SHIPPED[SHIPPED.find("[[kinds]]").unwrap()..]
        );
        assert!(Catalog::parse(&dup).unwrap_err().contains("twice"));
    }
}
