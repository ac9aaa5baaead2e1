//! "May this member do this?": the pure decision behind `authz/check`
//! (DESIGN "Members, roles and authorization"). No I/O and no allocation per
//! check: the caller loads the member, its role and the org's grants from the
//! last committed state and passes them in.
use super::{
    catalog::Catalog,
    ids::MemberKind,
    role::{DataScope, RoleSpec},
};

/// A parsed action. Names are borrowed from the checked string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// `<module>.<function>`
    Function { module: &'a str, function: &'a str },
    /// `menu:<menu>`
    Menu(&'a str),
    /// `payment:use_balance`
    PaymentUseBalance,
    /// `advanced:sign_in`
    AdvancedSignIn,
    /// `data:view` (with `owner`)
    DataView,
    /// `data:edit` (with `owner`)
    DataEdit,
    /// `account:overview`
    AccountOverview,
    /// `account:close`
    AccountClose,
    /// `account:switch`
    AccountSwitch,
    /// `account:cancel_close`
    AccountCancelClose,
    /// `members:manage`
    MembersManage,
    /// `logs:view`
    LogsView,
    /// Well-formed, but names nothing approvald knows (`unknown_action`).
    Unknown,
}

/// The action string does not follow the grammar (`<module>.<function>` or
/// `<namespace>:<name>`, lowercase letters, digits and `_`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0}: use <module>.<function>, menu:<menu>, payment:use_balance, advanced:sign_in, data:view, data:edit, account:<action>, members:manage or logs:view"
)]
pub struct BadAction(pub &'static str);

/// The most characters an action may have.
pub const MAX_ACTION: usize = 130;

fn word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

impl<'a> Action<'a> {
    /// Parse by the grammar; a well-formed action the catalog does not know
    /// is [`Action::Unknown`] (denied with `unknown_action`), not an error.
    pub fn parse(s: &'a str, catalog: &Catalog) -> Result<Self, BadAction> {
        if s.is_empty() {
            return Err(BadAction("is empty"));
        }
        if s.len() > MAX_ACTION {
            return Err(BadAction("is too long"));
        }
        if let Some((ns, name)) = s.split_once(':') {
            if !word(ns) || !word(name) {
                return Err(BadAction("is not well-formed"));
            }
            return Ok(match (ns, name) {
                ("menu", m) if catalog.menu(m).is_some() => Action::Menu(m),
                ("payment", "use_balance") => Action::PaymentUseBalance,
                ("advanced", "sign_in") => Action::AdvancedSignIn,
                ("data", "view") => Action::DataView,
                ("data", "edit") => Action::DataEdit,
                ("account", "overview") => Action::AccountOverview,
                ("account", "close") => Action::AccountClose,
                ("account", "switch") => Action::AccountSwitch,
                ("account", "cancel_close") => Action::AccountCancelClose,
                ("members", "manage") => Action::MembersManage,
                ("logs", "view") => Action::LogsView,
                _ => Action::Unknown,
            });
        }
        let Some((module, function)) = s.split_once('.') else {
            return Err(BadAction("is not well-formed"));
        };
        if !word(module) || !word(function) {
            return Err(BadAction("is not well-formed"));
        }
        Ok(match catalog.module(module) {
            Some(m) if m.functions.contains_key(function) => Action::Function { module, function },
            _ => Action::Unknown,
        })
    }

    fn is_data(self) -> bool {
        matches!(self, Action::DataView | Action::DataEdit)
    }
}

/// Every fixed (non-catalog) action, for listings.
pub const FIXED_ACTIONS: [&str; 10] = [
    "payment:use_balance",
    "advanced:sign_in",
    "data:view",
    "data:edit",
    "account:overview",
    "account:close",
    "account:switch",
    "account:cancel_close",
    "members:manage",
    "logs:view",
];

/// The stable reason codes of DESIGN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    SuperAdmin,
    Admin,
    ModuleGrant,
    FunctionGrant,
    Menu,
    NoGrant,
    ScopeOwnOnly,
    MemberDisabled,
    AdminOnly,
    SuperAdminOnly,
    OrgNotGranted,
    UnknownAction,
    UnknownMember,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::SuperAdmin,
        Reason::Admin,
        Reason::ModuleGrant,
        Reason::FunctionGrant,
        Reason::Menu,
        Reason::NoGrant,
        Reason::ScopeOwnOnly,
        Reason::MemberDisabled,
        Reason::AdminOnly,
        Reason::SuperAdminOnly,
        Reason::OrgNotGranted,
        Reason::UnknownAction,
        Reason::UnknownMember,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SuperAdmin => "super_admin",
            Reason::Admin => "admin",
            Reason::ModuleGrant => "module_grant",
            Reason::FunctionGrant => "function_grant",
            Reason::Menu => "menu",
            Reason::NoGrant => "no_grant",
            Reason::ScopeOwnOnly => "scope_own_only",
            Reason::MemberDisabled => "member_disabled",
            Reason::AdminOnly => "admin_only",
            Reason::SuperAdminOnly => "super_admin_only",
            Reason::OrgNotGranted => "org_not_granted",
            Reason::UnknownAction => "unknown_action",
            Reason::UnknownMember => "unknown_member",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
}

const fn allow(reason: Reason) -> Decision {
    Decision {
        allowed: true,
        reason,
    }
}

const fn deny(reason: Reason) -> Decision {
    Decision {
        allowed: false,
        reason,
    }
}

/// The member a check is about, as last committed.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub id: &'a str,
    pub login_id: &'a str,
    pub kind: MemberKind,
    pub active: bool,
    /// The spec of the member's role; `None` without a role.
    pub role: Option<&'a RoleSpec>,
    /// The member-level payment permission, when one is in force: set by an
    /// approved `payment_permission` request (`Some(true)`) or turned off by
    /// the cleanup of a disable (`Some(false)`). It overrides the role's
    /// `payment.allowed` for `payment:use_balance`; `None`: the role decides.
    pub member_payment: Option<bool>,
}

impl Subject<'_> {
    /// Is `owner` this member (by id or login id)?
    fn owns(&self, owner: &str) -> bool {
        owner == self.id || owner == self.login_id
    }
}

/// Decide, in DESIGN's order: unknown member or action; disabled member;
/// a menu whose required permission kind the org does not hold (for
/// everyone, the super admin too); super admin; admin (not the three
/// account actions of the super admin); a member never does account
/// actions, `members:manage` or `logs:view`; otherwise the role decides,
/// and `data_scope = own` denies another member's data. For
/// `payment:use_balance` the member-level payment permission, when one is in
/// force, decides instead of the role (DESIGN "Spending limits").
///
/// `org_holds(kind)` says whether the org holds an active grant of `kind`;
/// it is asked only for a menu that `requires` one. `owner` is only read
/// for `data:*` actions: `None` there means the member's own data.
pub fn decide(
    catalog: &Catalog,
    subject: Option<&Subject<'_>>,
    action: Action<'_>,
    owner: Option<&str>,
    org_holds: impl FnOnce(&str) -> bool,
) -> Decision {
    let Some(s) = subject else {
        return deny(Reason::UnknownMember);
    };
    if action == Action::Unknown {
        return deny(Reason::UnknownAction);
    }
    if !s.active {
        return deny(Reason::MemberDisabled);
    }
    if let Action::Menu(m) = action
        && let Some(kind) = catalog.menu(m).and_then(|m| m.requires.as_deref())
        && !org_holds(kind)
    {
        return deny(Reason::OrgNotGranted);
    }
    match s.kind {
        MemberKind::SuperAdmin => return allow(Reason::SuperAdmin),
        MemberKind::Admin => {
            return match action {
                Action::AccountClose | Action::AccountSwitch | Action::AccountCancelClose => {
                    deny(Reason::SuperAdminOnly)
                }
                _ => allow(Reason::Admin),
            };
        }
        MemberKind::Member => {}
    }
    let scope = s.role.map_or(DataScope::Own, |r| r.data_scope);
    if action.is_data() {
        return match owner {
            Some(o) if scope == DataScope::Own && !s.owns(o) => deny(Reason::ScopeOwnOnly),
            _ => allow(Reason::FunctionGrant),
        };
    }
    match action {
        Action::AccountOverview
        | Action::AccountClose
        | Action::AccountSwitch
        | Action::AccountCancelClose
        | Action::MembersManage
        | Action::LogsView => return deny(Reason::AdminOnly),
        _ => {}
    }
    if action == Action::PaymentUseBalance {
        let allowed = s
            .member_payment
            .unwrap_or_else(|| s.role.is_some_and(|r| r.payment.allowed));
        return if allowed {
            allow(Reason::FunctionGrant)
        } else {
            deny(Reason::NoGrant)
        };
    }
    let Some(role) = s.role else {
        return deny(Reason::NoGrant);
    };
    match action {
        Action::Function { module, function } => {
            let mut by_function = false;
            for g in &role.grants {
                if g.module == module {
                    match &g.function {
                        None => return allow(Reason::ModuleGrant),
                        Some(f) if f == function => by_function = true,
                        Some(_) => {}
                    }
                }
            }
            if by_function {
                allow(Reason::FunctionGrant)
            } else {
                deny(Reason::NoGrant)
            }
        }
        Action::Menu(m) if role.menus.iter().any(|x| x == m) => allow(Reason::Menu),
        Action::AdvancedSignIn if role.advanced => allow(Reason::FunctionGrant),
        _ => deny(Reason::NoGrant),
    }
}

/// Every action of the catalog and the fixed ones, in a stable order: the
/// complete list `members/{id}/permissions` walks.
pub fn all_actions(catalog: &Catalog) -> Vec<String> {
    let mut v = Vec::new();
    for m in &catalog.modules {
        for f in m.functions.keys() {
            v.push(format!("{}.{f}", m.key));
        }
    }
    for m in &catalog.menus {
        v.push(format!("menu:{}", m.key));
    }
    v.extend(FIXED_ACTIONS.iter().map(|a| a.to_string()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::role::RoleGrant;

    fn role(scope: DataScope, grants: &[(&str, Option<&str>)], menus: &[&str]) -> RoleSpec {
        RoleSpec {
            data_scope: scope,
            grants: grants
                .iter()
                .map(|(m, f)| RoleGrant {
                    module: m.to_string(),
                    function: f.map(str::to_string),
                })
                .collect(),
            menus: menus.iter().map(|m| m.to_string()).collect(),
            payment: Default::default(),
            advanced: false,
        }
    }

    fn check(
        c: &Catalog,
        s: &Subject<'_>,
        action: &str,
        owner: Option<&str>,
        held: bool,
    ) -> (bool, &'static str) {
        let a = Action::parse(action, c).unwrap();
        let d = decide(c, Some(s), a, owner, |_| held);
        (d.allowed, d.reason.as_str())
    }

    #[test]
    fn grammar() {
        let c = Catalog::shipped();
        assert_eq!(
            Action::parse("orders.delete", &c).unwrap(),
            Action::Function {
                module: "orders",
                function: "delete"
            }
        );
        assert_eq!(Action::parse("menu:ftp", &c).unwrap(), Action::Menu("ftp"));
        assert_eq!(Action::parse("orders.fly", &c).unwrap(), Action::Unknown);
        assert_eq!(Action::parse("menu:nope", &c).unwrap(), Action::Unknown);
        assert_eq!(Action::parse("account:nope", &c).unwrap(), Action::Unknown);
        assert_eq!(Action::parse("wat:ever", &c).unwrap(), Action::Unknown);
        for bad in [
            "",
            "orders",
            "orders.",
            ".delete",
            "a.b.c",
            "menu:",
            ":x",
            "Orders.delete",
            "orders.delete ",
            "menu:ftp:x",
            "a b.c",
            "x\u{0}.y",
        ] {
            assert!(Action::parse(bad, &c).is_err(), "{bad:?}");
        }
        assert!(Action::parse(&"a".repeat(200), &c).is_err());
        for a in all_actions(&c) {
            assert_ne!(Action::parse(&a, &c).unwrap(), Action::Unknown, "{a}");
        }
    }

    #[test]
    fn rules_in_order() {
        let c = Catalog::shipped();
        let sub = |kind, role| Subject {
            id: "m1",
            login_id: "login1",
            kind,
            active: true,
            role,
            member_payment: None,
        };
        let owner = sub(MemberKind::SuperAdmin, None);
        assert_eq!(
            check(&c, &owner, "account:close", None, false),
            (true, "super_admin")
        );
        assert_eq!(
            check(&c, &owner, "menu:ftp", None, false),
            (false, "org_not_granted")
        );
        assert_eq!(
            check(&c, &owner, "menu:ftp", None, true),
            (true, "super_admin")
        );
        let admin = sub(MemberKind::Admin, None);
        assert_eq!(
            check(&c, &admin, "account:switch", None, false),
            (false, "super_admin_only")
        );
        assert_eq!(check(&c, &admin, "logs:view", None, false), (true, "admin"));
        assert_eq!(
            check(&c, &admin, "data:edit", Some("x"), false),
            (true, "admin")
        );

        let module = role(DataScope::Own, &[("orders", None)], &["basic_info", "ftp"]);
        let m = sub(MemberKind::Member, Some(&module));
        assert_eq!(
            check(&c, &m, "orders.delete", None, false),
            (true, "module_grant")
        );
        assert_eq!(
            check(&c, &m, "files.delete", None, false),
            (false, "no_grant")
        );
        assert_eq!(
            check(&c, &m, "members:manage", None, false),
            (false, "admin_only")
        );
        assert_eq!(
            check(&c, &m, "account:overview", None, false),
            (false, "admin_only")
        );
        assert_eq!(
            check(&c, &m, "menu:basic_info", None, false),
            (true, "menu")
        );
        assert_eq!(
            check(&c, &m, "menu:ftp", None, false),
            (false, "org_not_granted")
        );
        assert_eq!(check(&c, &m, "menu:ftp", None, true), (true, "menu"));
        assert_eq!(check(&c, &m, "menu:items", None, true), (false, "no_grant"));
        assert_eq!(
            check(&c, &m, "data:view", Some("m1"), false),
            (true, "function_grant")
        );
        assert_eq!(
            check(&c, &m, "data:view", Some("login1"), false),
            (true, "function_grant")
        );
        assert_eq!(
            check(&c, &m, "data:edit", Some("m2"), false),
            (false, "scope_own_only")
        );
        assert_eq!(
            check(&c, &m, "payment:use_balance", None, false),
            (false, "no_grant")
        );

        let function = role(DataScope::All, &[("files", Some("download"))], &[]);
        let f = sub(MemberKind::Member, Some(&function));
        assert_eq!(
            check(&c, &f, "files.download", None, false),
            (true, "function_grant")
        );
        assert_eq!(
            check(&c, &f, "files.delete", None, false),
            (false, "no_grant")
        );
        assert_eq!(
            check(&c, &f, "data:edit", Some("m2"), false),
            (true, "function_grant")
        );

        let none = sub(MemberKind::Member, None);
        assert_eq!(
            check(&c, &none, "orders.delete", None, false),
            (false, "no_grant")
        );
        assert_eq!(
            check(&c, &none, "data:view", Some("m1"), false),
            (true, "function_grant")
        );
        assert_eq!(
            check(&c, &none, "data:view", Some("m2"), false),
            (false, "scope_own_only")
        );

        let mut off = sub(MemberKind::SuperAdmin, None);
        off.active = false;
        assert_eq!(
            check(&c, &off, "orders.delete", None, false),
            (false, "member_disabled")
        );
        let d = decide(&c, None, Action::LogsView, None, |_| true);
        assert_eq!((d.allowed, d.reason), (false, Reason::UnknownMember));
        let d = decide(&c, Some(&m), Action::Unknown, None, |_| true);
        assert_eq!((d.allowed, d.reason), (false, Reason::UnknownAction));
    }

    /// A function added to a module later is covered by the module grant and
    /// by no function grant.
    #[test]
    fn added_function_follows_module_grants_only() {
        let mut c = Catalog::shipped();
        let titles = c.modules[0].titles.clone();
        c.modules
            .iter_mut()
            .find(|m| m.key == "orders")
            .unwrap()
            .functions
            .insert("archive".into(), titles);
        let by_module = role(DataScope::Own, &[("orders", None)], &[]);
        let by_function = role(
            DataScope::Own,
            &[
                ("orders", Some("delete")),
                ("orders", Some("download_files")),
            ],
            &[],
        );
        let a = sub_member(&by_module);
        assert_eq!(
            check(&c, &a, "orders.archive", None, false),
            (true, "module_grant")
        );
        let b = sub_member(&by_function);
        assert_eq!(
            check(&c, &b, "orders.archive", None, false),
            (false, "no_grant")
        );
        assert_eq!(
            check(&c, &b, "orders.delete", None, false),
            (true, "function_grant")
        );
    }

    fn sub_member(r: &RoleSpec) -> Subject<'_> {
        Subject {
            id: "m",
            login_id: "m_login",
            kind: MemberKind::Member,
            active: true,
            role: Some(r),
            member_payment: None,
        }
    }

    /// The member-level payment permission decides `payment:use_balance`
    /// over the role, both ways, with or without a role; nothing else.
    #[test]
    fn member_payment_overrides_the_role() {
        let c = Catalog::shipped();
        let paying = RoleSpec::builtin("purchasing").unwrap();
        let not_paying = RoleSpec::builtin("engineer").unwrap();
        assert!(paying.payment.allowed && !not_paying.payment.allowed);
        let with = |role: Option<&RoleSpec>, member_payment: Option<bool>| {
            let s = Subject {
                id: "m",
                login_id: "m_login",
                kind: MemberKind::Member,
                active: true,
                role,
                member_payment,
            };
            check(&c, &s, "payment:use_balance", None, false)
        };
        let yes = (true, "function_grant");
        let no = (false, "no_grant");
        assert_eq!(with(Some(&paying), None), yes);
        assert_eq!(with(Some(&not_paying), None), no);
        assert_eq!(with(None, None), no);
        assert_eq!(with(Some(&not_paying), Some(true)), yes);
        assert_eq!(with(None, Some(true)), yes);
        assert_eq!(with(Some(&paying), Some(false)), no);
        // Nothing else follows it.
        let s = Subject {
            member_payment: Some(true),
            ..sub_member(&not_paying)
        };
        assert_eq!(
            check(&c, &s, "prepaid.transfer_out", None, false),
            (false, "no_grant")
        );
        let mut off = s;
        off.active = false;
        assert_eq!(
            check(&c, &off, "payment:use_balance", None, false),
            (false, "member_disabled")
        );
    }
}
