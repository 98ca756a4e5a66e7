//! The timer queue: a min-heap of deadlines, FIFO among equal deadlines, with lazy removal.
//!
//! The scheduler never polls a sleeping task: it asks the queue for what fell due. Entries are
//! never removed in place; the scheduler checks each expired entry against the task it names and
//! drops stale ones, and [`TimerQueue::retain`] sweeps when stale entries pile up.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// An entry's position in the queue: its deadline, then the order it was inserted.
pub(crate) type TimerKey = (u64, u64);

struct Entry<T> {
    key: TimerKey,
    value: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}

/// A queue of values that fall due at a deadline (any monotonic unit: nanoseconds, frames).
pub(crate) struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    next_seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        Self { heap: BinaryHeap::new(), next_seq: 0 }
    }
}

impl<T> TimerQueue<T> {
    /// Schedules `value` at `deadline`; equal deadlines come out in insertion order.
    pub fn insert_at(&mut self, deadline: u64, value: T) -> TimerKey {
        let key = (deadline, self.next_seq);
        self.next_seq += 1;
        self.heap.push(Reverse(Entry { key, value }));
        key
    }

    /// Removes and returns the earliest entry whose deadline is `<= now`.
    pub fn poll_expired(&mut self, now: u64) -> Option<(TimerKey, T)> {
        if self.next_expiration()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(e)| (e.key, e.value))
    }

    /// The earliest deadline in the queue.
    pub fn next_expiration(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(e)| e.key.0)
    }

    /// Entries in the queue, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries for which `keep` returns true.
    /// Every timer with its deadline, in no particular order (for inspection only).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.heap.iter().map(|Reverse(e)| (e.key.0, &e.value))
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.heap.retain(|Reverse(e)| keep(&e.value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_deadline_then_insertion_order() {
        let mut q = TimerQueue::default();
        q.insert_at(20, "c");
        q.insert_at(10, "a");
        q.insert_at(10, "b");
        q.insert_at(30, "d");
        assert_eq!(q.next_expiration(), Some(10));
        let mut out = Vec::new();
        while let Some((_, v)) = q.poll_expired(25) {
            out.push(v);
        }
        assert_eq!(out, ["a", "b", "c"], "due entries by deadline, ties by insertion");
        assert_eq!(q.len(), 1, "the entry due at 30 stays");
        assert!(q.poll_expired(29).is_none());
    }

    #[test]
    fn retain_drops_stale_entries() {
        let mut q = TimerQueue::default();
        for i in 0..10 {
            q.insert_at(i, i);
        }
        q.retain(|v| v % 2 == 0);
        assert_eq!(q.len(), 5);
        let mut out = Vec::new();
        while let Some((_, v)) = q.poll_expired(100) {
            out.push(v);
        }
        assert_eq!(out, [0, 2, 4, 6, 8]);
    }
}
