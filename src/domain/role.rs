//! Roles: what a member of an org may do (DESIGN "Members, roles and
//! authorization"). A role's [`RoleSpec`] is stored as JSON in `roles.spec`.
use serde::{Deserialize, Serialize};

use super::{catalog::Catalog, payment::PaymentSettings};

/// The roles every org has from its creation (editable, deletable when unused).
pub const BUILTIN: [&str; 3] = ["purchasing", "engineer", "finance"];

/// Which data a member may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataScope {
    /// Only data the member owns.
    Own,
    /// The whole org's data.
    All,
}

impl DataScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Own => "own",
            Self::All => "all",
        }
    }
}

/// `{module}` covers every function of the module, including functions added
/// to the catalog later; `{module, function}` covers that one function only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleGrant {
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

/// What a role allows; every name is checked against the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub data_scope: DataScope,
    #[serde(default)]
    pub grants: Vec<RoleGrant>,
    /// Back-office menus (catalog `menus`) a sub-ID with this role may open.
    #[serde(default)]
    pub menus: Vec<String>,
    #[serde(default)]
    pub payment: PaymentSettings,
    /// May sign in to the sister sites.
    #[serde(default)]
    pub advanced: bool,
}

/// Why a role spec was refused: `field` is a path such as `grants[1].function`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct SpecError {
    pub field: String,
    pub why: String,
}

fn err(field: impl Into<String>, why: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        why: why.into(),
    }
}

impl RoleSpec {
    /// Check every name against the catalog and the payment limits; drop
    /// exact duplicates (keeping the first). Nothing is changed on error.
    pub fn validate(mut self, catalog: &Catalog) -> Result<Self, SpecError> {
        for (i, g) in self.grants.iter().enumerate() {
            let Some(m) = catalog.module(&g.module) else {
                return Err(err(
                    format!("grants[{i}].module"),
                    format!(
                        "{:?} is not a module of the catalog; use one of {}",
                        g.module,
                        catalog
                            .modules
                            .iter()
                            .map(|m| m.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            if let Some(f) = &g.function
                && !m.functions.contains_key(f)
            {
                return Err(err(
                    format!("grants[{i}].function"),
                    format!(
                        "{f:?} is not a function of module {:?}; use one of {}",
                        m.key,
                        m.functions.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        for (i, menu) in self.menus.iter().enumerate() {
            if catalog.menu(menu).is_none() {
                return Err(err(
                    format!("menus[{i}]"),
                    format!("{menu:?} is not a menu of the catalog"),
                ));
            }
        }
        self.payment
            .validate()
            .map_err(|e| err(format!("payment.{}", e.field), e.why))?;
        let mut seen = Vec::with_capacity(self.grants.len());
        self.grants.retain(|g| {
            if seen.contains(g) {
                false
            } else {
                seen.push(g.clone());
                true
            }
        });
        let mut seen_menus: Vec<String> = Vec::with_capacity(self.menus.len());
        self.menus.retain(|m| {
            if seen_menus.contains(m) {
                false
            } else {
                seen_menus.push(m.clone());
                true
            }
        });
        Ok(self)
    }

    /// The spec a built-in role starts with (see [`BUILTIN`]).
    pub fn builtin(name: &str) -> Option<RoleSpec> {
        let module = |m: &str| RoleGrant {
            module: m.into(),
            function: None,
        };
        let function = |m: &str, f: &str| RoleGrant {
            module: m.into(),
            function: Some(f.into()),
        };
        match name {
            // Buys for the company: its own orders, pays within limits.
            "purchasing" => Some(RoleSpec {
                data_scope: DataScope::Own,
                grants: vec![module("orders")],
                menus: vec![],
                payment: PaymentSettings {
                    allowed: true,
                    per_tx: 500_000,
                    daily: 2_000_000,
                    monthly: 10_000_000,
                },
                advanced: false,
            }),
            // Works with design files: downloads order files and files/models.
            "engineer" => Some(RoleSpec {
                data_scope: DataScope::Own,
                grants: vec![function("orders", "download_files"), module("files")],
                menus: vec![],
                payment: PaymentSettings::NONE,
                advanced: true,
            }),
            // Sees all of the company's data and manages the prepaid account.
            "finance" => Some(RoleSpec {
                data_scope: DataScope::All,
                grants: vec![module("prepaid")],
                menus: vec![],
                payment: PaymentSettings {
                    allowed: true,
                    per_tx: 5_000_000,
                    daily: 20_000_000,
                    monthly: 100_000_000,
                },
                advanced: false,
            }),
            _ => None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a role spec serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> RoleSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn builtins_are_valid() {
        let c = Catalog::shipped();
        for name in BUILTIN {
            let s = RoleSpec::builtin(name).unwrap();
            assert_eq!(s.clone().validate(&c).unwrap(), s, "{name}");
        }
        assert!(RoleSpec::builtin("admin").is_none());
    }

    /// The migration that gives orgs created before 0007 their built-in
    /// roles writes the same specs as new orgs get.
    #[test]
    fn migration_builtins_match() {
        for text in [
            include_str!("../../migrations/sqlite/0007_roles.sql"),
            include_str!("../../migrations/postgres/0007_roles.sql"),
        ] {
            for name in BUILTIN {
                let needle = format!("SELECT id, '{name}', '");
                let at = text.find(&needle).unwrap_or_else(|| panic!("{name}")) + needle.len();
                let json = &text[at..at + text[at..].find('\'').unwrap()];
                let parsed: RoleSpec = serde_json::from_str(json).unwrap();
                assert_eq!(parsed, RoleSpec::builtin(name).unwrap(), "{name}");
                assert_eq!(json, RoleSpec::builtin(name).unwrap().to_json(), "{name}");
            }
        }
    }

    #[test]
    fn validation_names_the_field() {
        let c = Catalog::shipped();
        let e = spec(serde_json::json!({"data_scope": "own", "grants": [{"module": "orders"}, {"module": "nope"}]}))
            .validate(&c)
            .unwrap_err();
        assert_eq!(e.field, "grants[1].module");
        let e = spec(serde_json::json!({"data_scope": "own", "grants": [{"module": "orders", "function": "fly"}]}))
            .validate(&c)
            .unwrap_err();
        assert_eq!(e.field, "grants[0].function");
        let e = spec(serde_json::json!({"data_scope": "all", "menus": ["ftp", "nope"]}))
            .validate(&c)
            .unwrap_err();
        assert_eq!(e.field, "menus[1]");
        let e = spec(serde_json::json!({"data_scope": "all",
            "payment": {"allowed": true, "per_tx": 10, "daily": 5, "monthly": 50}}))
        .validate(&c)
        .unwrap_err();
        assert_eq!(e.field, "payment.per_tx");
        assert!(
            serde_json::from_value::<RoleSpec>(serde_json::json!({"data_scope": "some"})).is_err()
        );
        let s = spec(serde_json::json!({"data_scope": "own",
            "grants": [{"module": "files"}, {"module": "files"}], "menus": ["ftp", "ftp"]}))
        .validate(&c)
        .unwrap();
        assert_eq!(s.grants.len(), 1);
        assert_eq!(s.menus, vec!["ftp".to_string()]);
    }
}
