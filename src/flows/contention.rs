//! What an optimistic write (one statement that commits only if what an
//! unlocked read saw is unchanged) has learnt about contention in this
//! process: the things (a member for an authorization, an org for a
//! submit) whose optimistic write lost a race lately. Their writes take the
//! locking path at once for [`WINDOW`]: writes that queue on one row would
//! lose again, each paying a wasted round trip. A hint only: either path
//! writes correctly.
use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// How long a lost race sends a thing's writes down the locking path.
pub const WINDOW: Duration = Duration::from_millis(100);

/// The ids whose optimistic write lost a race within [`WINDOW`].
#[derive(Default)]
pub struct LostLately {
    lost: Mutex<HashMap<String, Instant>>,
}

impl LostLately {
    /// Most entries; past it the map drops the old ones (and starts again
    /// empty if all are recent).
    const MAX: usize = 10_000;

    /// Did `id`'s optimistic write lose a race within [`WINDOW`]?
    pub fn lately(&self, id: &str) -> bool {
        lock(&self.lost)
            .get(id)
            .is_some_and(|t| t.elapsed() < WINDOW)
    }

    /// `id`'s optimistic write lost a race just now.
    pub fn lost(&self, id: &str) {
        let mut map = lock(&self.lost);
        if map.len() >= Self::MAX {
            map.retain(|_, t| t.elapsed() < WINDOW);
            if map.len() >= Self::MAX {
                map.clear();
            }
        }
        map.insert(id.to_string(), Instant::now());
    }
}

/// The map is consistent after every statement: a panic elsewhere while
/// holding the lock leaves nothing half-done.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_is_remembered_for_the_window_only_for_its_id() {
        let l = LostLately::default();
        assert!(!l.lately("a"));
        l.lost("a");
        assert!(l.lately("a"));
        assert!(!l.lately("b"));
        std::thread::sleep(WINDOW + Duration::from_millis(20));
        assert!(!l.lately("a"), "forgotten after the window");
    }

    #[test]
    fn a_full_map_keeps_working() {
        let l = LostLately::default();
        for i in 0..LostLately::MAX + 5 {
            l.lost(&format!("id{i}"));
        }
        let last = format!("id{}", LostLately::MAX + 4);
        assert!(l.lately(&last));
        assert!(lock(&l.lost).len() <= LostLately::MAX);
    }
}
