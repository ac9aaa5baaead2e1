//! What an authz check knows about an org, kept by the org's authorization
//! revision (DESIGN "Members, roles and authorization": no time-based cache).
//!
//! Every transaction that changes an input of a decision (a role; a
//! member's kind, role or status; a grant; the member-level payment
//! permission) bumps `authz_revisions.revision` of the org as it commits
//! ([`crate::db::Tx::authz_changed`]), whichever process runs it. A check
//! reads that revision together with its API key in one indexed query
//! ([`crate::store::keys::authenticate_for_org`]), then asks this cache for
//! the member: what was loaded for the org at that revision (or a later one)
//! is reused, anything older is dropped and read again. So the hot path is
//! one statement, and the next check after any commit sees it.
//!
//! Why this is exact: an entry stored under revision `r` was read from the
//! database after a check had read `r`, so it includes every change up to
//! `r`; a change bumps the revision in its own transaction, so a check that
//! reads the same `r` has no newer change to see. An entry is only filed
//! under the revision its reader saw, and never replaces a newer one.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::Context;

use crate::{
    app::App,
    domain::{authz::Subject, ids::MemberKind, role::RoleSpec},
    store::{self, roles::MemberFacts},
};

/// Most orgs kept; past it the cache starts again empty (a check then costs
/// one more query). Each org keeps at most [`MAX_MEMBERS`] references.
pub const MAX_ORGS: usize = 10_000;
/// Most member references kept per org (ids and login ids, found or not).
pub const MAX_MEMBERS: usize = 10_000;

/// A member as the decision function sees it.
#[derive(Debug)]
pub struct Loaded {
    pub facts: MemberFacts,
    pub kind: MemberKind,
    pub spec: Option<RoleSpec>,
}

impl Loaded {
    pub fn from_facts(facts: MemberFacts) -> anyhow::Result<Self> {
        let kind = MemberKind::parse(&facts.kind)
            .map_err(|e| anyhow::anyhow!("member {}: {e}", facts.id))?;
        let spec = facts
            .role_spec()
            .with_context(|| format!("member {}: reading the role's spec", facts.id))?;
        Ok(Self { facts, kind, spec })
    }

    pub fn subject(&self) -> Subject<'_> {
        Subject {
            id: &self.facts.id,
            login_id: &self.facts.login_id,
            kind: self.kind,
            active: self.facts.status == store::members::ACTIVE,
            role: self.spec.as_ref(),
            member_payment: self.facts.member_payment(),
        }
    }
}

/// A member reference as last read: `None` names nobody in the org.
pub type Member = Option<Arc<Loaded>>;

struct OrgState {
    revision: i64,
    members: HashMap<String, Member>,
    /// The permission kinds the whole org holds (read on the first gated menu).
    granted: Option<Arc<Vec<String>>>,
}

impl OrgState {
    fn new(revision: i64) -> Self {
        Self {
            revision,
            members: HashMap::new(),
            granted: None,
        }
    }
}

/// Per process, in [`App`]. Lookups and stores hold a mutex for a hash-map
/// operation only; nothing waits on I/O under it.
#[derive(Default)]
pub struct AuthzCache {
    orgs: Mutex<HashMap<String, OrgState>>,
}

impl AuthzCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, OrgState>> {
        // The map is consistent after every statement: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.orgs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of `org` usable by a check that read `revision`.
    fn current<'a>(
        map: &'a mut HashMap<String, OrgState>,
        org: &str,
        revision: i64,
    ) -> Option<&'a mut OrgState> {
        map.get_mut(org).filter(|s| s.revision >= revision)
    }

    /// The state to file something read after reading `revision` into:
    /// `None` when a newer revision is already kept.
    fn filing<'a>(
        map: &'a mut HashMap<String, OrgState>,
        org: &str,
        revision: i64,
    ) -> Option<&'a mut OrgState> {
        if !map.contains_key(org) && map.len() >= MAX_ORGS {
            map.clear();
        }
        let state = map
            .entry(org.to_string())
            .or_insert_with(|| OrgState::new(revision));
        if state.revision < revision {
            *state = OrgState::new(revision);
        }
        (state.revision == revision).then_some(state)
    }

    fn member(&self, org: &str, revision: i64, reference: &str) -> Option<Member> {
        let mut map = self.lock();
        Self::current(&mut map, org, revision)?
            .members
            .get(reference)
            .cloned()
    }

    fn put_member(&self, org: &str, revision: i64, reference: &str, member: Member) {
        let mut map = self.lock();
        if let Some(state) = Self::filing(&mut map, org, revision) {
            if state.members.len() >= MAX_MEMBERS {
                state.members.clear();
            }
            state.members.insert(reference.to_string(), member);
        }
    }

    fn granted(&self, org: &str, revision: i64) -> Option<Arc<Vec<String>>> {
        let mut map = self.lock();
        Self::current(&mut map, org, revision)?.granted.clone()
    }

    fn put_granted(&self, org: &str, revision: i64, kinds: Arc<Vec<String>>) {
        let mut map = self.lock();
        if let Some(state) = Self::filing(&mut map, org, revision) {
            state.granted = Some(kinds);
        }
    }
}

/// The org's member whose id or login id is `reference`, as of `revision`
/// (the org's authorization revision, read by this check) or later: from the
/// cache, or one query.
pub async fn member(
    app: &App,
    org: &str,
    revision: i64,
    reference: &str,
) -> anyhow::Result<Member> {
    if let Some(hit) = app.authz.member(org, revision, reference) {
        return Ok(hit);
    }
    let loaded = store::roles::member_facts(&app.db, org, reference)
        .await
        .context("reading the member's authorization facts")?
        .map(Loaded::from_facts)
        .transpose()?
        .map(Arc::new);
    app.authz
        .put_member(org, revision, reference, loaded.clone());
    Ok(loaded)
}

/// The permission kinds the whole org holds an active grant of, as of
/// `revision` or later: from the cache, or one query.
pub async fn granted_kinds(
    app: &App,
    org: &str,
    revision: i64,
) -> anyhow::Result<Arc<Vec<String>>> {
    if let Some(hit) = app.authz.granted(org, revision) {
        return Ok(hit);
    }
    let kinds = Arc::new(
        store::roles::org_granted_kinds(&app.db, org)
            .await
            .context("reading the org's grants")?,
    );
    app.authz.put_granted(org, revision, kinds.clone());
    Ok(kinds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(id: &str) -> Member {
        Some(Arc::new(Loaded {
            facts: MemberFacts {
                id: id.into(),
                login_id: format!("{id}_login"),
                kind: "member".into(),
                status: "active".into(),
                role: None,
                spec: None,
                mp_active: None,
                mp_allowed: None,
            },
            kind: MemberKind::Member,
            spec: None,
        }))
    }

    fn id_of(m: Option<Member>) -> Option<Option<String>> {
        m.map(|m| m.map(|l| l.facts.id.clone()))
    }

    #[test]
    fn entries_serve_their_revision_and_later_checks_only_until_a_newer_one() {
        let c = AuthzCache::default();
        assert!(c.member("o", 1, "m").is_none());
        c.put_member("o", 1, "m", loaded("m1"));
        c.put_member("o", 1, "ghost", None);
        assert_eq!(id_of(c.member("o", 1, "m")), Some(Some("m1".into())));
        assert_eq!(id_of(c.member("o", 1, "ghost")), Some(None));
        // A check that read an older revision may use newer facts.
        assert_eq!(id_of(c.member("o", 0, "m")), Some(Some("m1".into())));
        // A newer revision misses everything kept for the older one...
        assert!(c.member("o", 2, "m").is_none());
        assert!(c.member("o", 2, "ghost").is_none());
        // ... and what a slow reader of revision 1 files now is dropped once
        // revision 2 is kept.
        c.put_member("o", 2, "m", loaded("m2"));
        c.put_member("o", 1, "late", loaded("stale"));
        assert!(c.member("o", 2, "late").is_none());
        assert!(c.member("o", 2, "ghost").is_none());
        assert_eq!(id_of(c.member("o", 2, "m")), Some(Some("m2".into())));
        // Other orgs are apart.
        assert!(c.member("p", 1, "m").is_none());
        // Grants follow the same rule.
        c.put_granted("o", 2, Arc::new(vec!["ftp_access".into()]));
        assert_eq!(c.granted("o", 2).unwrap().as_slice(), ["ftp_access"]);
        assert!(c.granted("o", 3).is_none());
        c.put_granted("o", 3, Arc::new(vec![]));
        assert!(c.member("o", 3, "m").is_none());
        assert!(c.granted("o", 3).unwrap().is_empty());
    }

    #[test]
    fn bounded() {
        let c = AuthzCache::default();
        for i in 0..MAX_MEMBERS + 5 {
            c.put_member("o", 1, &format!("m{i}"), None);
        }
        assert!(c.lock()["o"].members.len() <= MAX_MEMBERS);
        for i in 0..MAX_ORGS + 5 {
            c.put_member(&format!("o{i}"), 1, "m", None);
        }
        assert!(c.lock().len() <= MAX_ORGS);
    }
}
