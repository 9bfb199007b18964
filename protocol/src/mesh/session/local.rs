//! What the sync engine must do about a device's own writes.

use std::collections::{BTreeSet, VecDeque};

/// What to do about a local change notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAction<C> {
    /// Hand the change to the engine (`Engine::local_change`).
    Apply {
        /// The store.
        store: String,
        /// The change, as the store reported it.
        change: C,
    },
    /// Changes were missed (the notifications lagged, or the store was rewritten
    /// since): compare the store with every peer soon (`Engine::recheck`).
    Recheck {
        /// The store.
        store: String,
    },
}

/// Turns a device's local change notifications, seen or missed, into engine calls: a
/// change is applied as it comes; a missed one becomes one recheck of its store, however
/// many were missed before the driver polled.
#[derive(Debug)]
pub struct LocalChanges<C> {
    actions: VecDeque<LocalAction<C>>,
    rechecks: BTreeSet<String>,
}

impl<C> Default for LocalChanges<C> {
    fn default() -> Self {
        Self {
            actions: VecDeque::new(),
            rechecks: BTreeSet::new(),
        }
    }
}

impl<C> LocalChanges<C> {
    /// A new, empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// A change to `store` was seen.
    pub fn handle_change(&mut self, store: &str, change: C) {
        self.actions.push_back(LocalAction::Apply {
            store: store.to_owned(),
            change,
        });
    }

    /// Changes to `store` were missed (the subscription lagged, or the change seen
    /// belongs to the store as it was before a rewrite).
    pub fn handle_lagged(&mut self, store: &str) {
        if self.rechecks.insert(store.to_owned()) {
            self.actions.push_back(LocalAction::Recheck {
                store: store.to_owned(),
            });
        }
    }

    /// The next engine call to make.
    pub fn poll_action(&mut self) -> Option<LocalAction<C>> {
        let action = self.actions.pop_front()?;
        if let LocalAction::Recheck { store } = &action {
            self.rechecks.remove(store);
        }
        Some(action)
    }
}
