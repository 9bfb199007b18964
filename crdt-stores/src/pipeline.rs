//! Group commit: writers queue their writes; one of them at a time leads, takes every
//! queued write and applies them in one durable step, so concurrent writers share one
//! flush. Each writer returns when the step holding its write is done.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

#[derive(Debug)]
struct Queue<W, E> {
    pending: Vec<W>,
    first_pending: u64,
    done: u64,
    failures: BTreeMap<u64, E>,
    leader: bool,
}

/// A group-commit queue of writes `W` failing with `E`.
#[derive(Debug)]
pub(crate) struct GroupCommit<W, E> {
    queue: Mutex<Queue<W, E>>,
    cond: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<W, E: Clone> GroupCommit<W, E> {
    pub(crate) fn new() -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                first_pending: 0,
                done: 0,
                failures: BTreeMap::new(),
                leader: false,
            }),
            cond: Condvar::new(),
        }
    }

    /// Queues `write` and returns once a step holding it has run `apply`; the step's
    /// error is every one of its writers' error.
    pub(crate) fn submit(
        &self,
        write: W,
        apply: impl Fn(Vec<W>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut queue = lock(&self.queue);
        let ticket = queue.first_pending + queue.pending.len() as u64;
        queue.pending.push(write);
        loop {
            if queue.done > ticket {
                return match queue.failures.remove(&ticket) {
                    Some(err) => Err(err),
                    None => Ok(()),
                };
            }
            if !queue.leader {
                queue.leader = true;
                let batch = std::mem::take(&mut queue.pending);
                let first = queue.first_pending;
                let count = batch.len() as u64;
                queue.first_pending += count;
                drop(queue);
                let result = apply(batch);
                queue = lock(&self.queue);
                if let Err(err) = result {
                    for t in first..first + count {
                        queue.failures.insert(t, err.clone());
                    }
                }
                queue.done = first + count;
                queue.leader = false;
                self.cond.notify_all();
                continue;
            }
            queue = self
                .cond
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}
