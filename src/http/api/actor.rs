//! The acting member of org-key calls that manage members, roles, limits or
//! logs (`Approvald-Actor: <member id>`), and the org's rules for who may do
//! what to whom (DESIGN "Members, roles and authorization").
use axum::http::HeaderMap;

use super::{Caller, CallerScope};
use crate::{
    app::App,
    domain::ids::MemberKind,
    http::ApiError,
    store::{self, orgs::Org},
};

/// The header naming the member an org-key call acts for.
pub const ACTOR_HEADER: &str = "approvald-actor";

/// An active member of the org, acting through an API call.
#[derive(Debug, Clone)]
pub struct ActingMember {
    pub id: String,
    pub org_id: String,
    pub kind: MemberKind,
    pub role: Option<String>,
    pub name: String,
}

impl ActingMember {
    /// The super admin or an admin.
    pub fn is_admin(&self) -> bool {
        self.kind.is_admin()
    }

    pub fn is_super_admin(&self) -> bool {
        self.kind == MemberKind::SuperAdmin
    }

    /// `member:<id>`: the actor recorded in audit rows.
    pub fn audit_actor(&self) -> String {
        format!("member:{}", self.id)
    }
}

fn refuse(why: impl std::fmt::Display) -> ApiError {
    ApiError::forbidden(format!("Approvald-Actor: {why}"))
}

/// Org-key calls: reads `Approvald-Actor`; a missing, unknown, disabled or
/// foreign member is a 403 naming the header. Platform-key calls: the header
/// is optional (checked the same way when present); `None` means "the
/// platform". The header holds the member's id (its login id is accepted too).
pub async fn require_actor(
    app: &App,
    caller: &Caller,
    org: &Org,
    headers: &HeaderMap,
) -> Result<Option<ActingMember>, ApiError> {
    let values: Vec<_> = headers.get_all(ACTOR_HEADER).iter().collect();
    let value = match (values.as_slice(), &caller.scope) {
        ([], CallerScope::Platform) => return Ok(None),
        ([], CallerScope::Org(_)) => {
            return Err(refuse(
                "this call acts for a member of the org: send the header `Approvald-Actor: <member id>`",
            ));
        }
        ([v], _) => *v,
        _ => return Err(refuse("send the header once")),
    };
    let reference = value
        .to_str()
        .map_err(|_| refuse("the header is not valid text"))?
        .trim();
    if reference.is_empty() || reference.len() > 64 {
        return Err(refuse("name a member of this org by its id"));
    }
    let m = store::members::find(&app.db, &org.id, reference)
        .await?
        .ok_or_else(|| refuse(format!("{reference:?} is not a member of this org")))?;
    if m.status != store::members::ACTIVE {
        return Err(refuse(format!(
            "member {reference:?} is disabled and cannot act"
        )));
    }
    let kind = MemberKind::parse(&m.kind).map_err(|e| ApiError::internal(anyhow::anyhow!(e)))?;
    Ok(Some(ActingMember {
        id: m.id,
        org_id: m.org_id,
        kind,
        role: m.role,
        name: m.name,
    }))
}

/// The audit actor of a call: the acting member, else the calling key.
pub fn audit_actor(caller: &Caller, actor: &Option<ActingMember>) -> String {
    match actor {
        Some(a) => a.audit_actor(),
        None => caller.actor(),
    }
}

/// Managing members, roles and logs needs the platform, the super admin or
/// an admin: a plain member gets 403 naming the header.
pub fn require_admin(actor: &Option<ActingMember>) -> Result<(), ApiError> {
    match actor {
        None => Ok(()),
        Some(a) if a.is_admin() => Ok(()),
        Some(a) => Err(refuse(format!(
            "member {:?} is not an admin; only the super admin and admins manage members, roles and logs",
            a.id
        ))),
    }
}

/// Changing a member's `kind` (admin / member): the super admin only (or the
/// platform); the super admin's own kind never changes (409 for everyone).
pub fn may_change_kind(
    actor: &Option<ActingMember>,
    target_kind: MemberKind,
) -> Result<(), ApiError> {
    if target_kind == MemberKind::SuperAdmin {
        return Err(ApiError::conflict(
            "kind: the super admin (the org's owner) cannot be demoted",
        ));
    }
    match actor {
        Some(a) if !a.is_super_admin() => Err(refuse(format!(
            "member {:?} is not the super admin; only the super admin changes a member's kind",
            a.id
        ))),
        _ => Ok(()),
    }
}

/// Disabling (or otherwise acting against) a member: nobody disables the
/// super admin (409, as for every caller); only the super admin (or the
/// platform) disables an admin; an admin disables plain members; a plain
/// member disables nobody (see [`require_admin`]).
pub fn may_disable(actor: &Option<ActingMember>, target_kind: MemberKind) -> Result<(), ApiError> {
    if target_kind == MemberKind::SuperAdmin {
        return Err(ApiError::conflict(
            "the super admin (the org's owner) cannot be disabled",
        ));
    }
    require_admin(actor)?;
    match actor {
        Some(a) if target_kind == MemberKind::Admin && !a.is_super_admin() => Err(refuse(format!(
            "member {:?} is an admin; only the super admin disables an admin",
            a.id
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acting(kind: MemberKind) -> Option<ActingMember> {
        Some(ActingMember {
            id: "m1".into(),
            org_id: "o".into(),
            kind,
            role: None,
            name: "M".into(),
        })
    }

    #[test]
    fn who_may_do_what_to_whom() {
        use MemberKind::*;
        let platform: Option<ActingMember> = None;
        assert!(require_admin(&platform).is_ok());
        assert!(require_admin(&acting(SuperAdmin)).is_ok());
        assert!(require_admin(&acting(Admin)).is_ok());
        assert_eq!(require_admin(&acting(Member)).unwrap_err().status, 403);

        for actor in [platform.clone(), acting(SuperAdmin), acting(Admin)] {
            assert_eq!(may_disable(&actor, SuperAdmin).unwrap_err().status, 409);
            assert!(may_disable(&actor, Member).is_ok());
        }
        assert!(may_disable(&platform, Admin).is_ok());
        assert!(may_disable(&acting(SuperAdmin), Admin).is_ok());
        let e = may_disable(&acting(Admin), Admin).unwrap_err();
        assert_eq!(e.status, 403);
        assert!(e.detail.contains("Approvald-Actor"));
        assert_eq!(
            may_disable(&acting(Member), Member).unwrap_err().status,
            403
        );

        assert!(may_change_kind(&acting(SuperAdmin), Admin).is_ok());
        assert!(may_change_kind(&platform, Member).is_ok());
        assert_eq!(
            may_change_kind(&acting(Admin), Member).unwrap_err().status,
            403
        );
        assert_eq!(
            may_change_kind(&acting(SuperAdmin), SuperAdmin)
                .unwrap_err()
                .status,
            409
        );
    }
}
