//! What the scheduler's step keeps in Rust memory rather than in Lua tables: the frame waits
//! (`task.wait()` and `task.waitFrames(1)`, due this frame and next), the ready queue (tasks woken
//! by a promise or a channel, timers that fell due, new instances' first resumes, and the work a
//! step carries to the next), and the count of resumes against the step's bounds. Only plain data
//! and the rules that keep it: the C functions of `fastpath` own the one [`StepMemory`] of a VM
//! and are the only code that reaches it (see the invariants there). Lua tables would cost a C API
//! call or a VM instruction per field on every resume; a `Vec` or a map costs a few instructions.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A Lua integer (task keys, registrations, defer depths, step numbers).
type Int = i64;

/// Everything here, for one VM.
#[derive(Default)]
pub(crate) struct StepMemory {
    pub waits: FrameWaits,
    pub ready: ReadyQueue,
    pub resumes: Resumes,
}

impl StepMemory {
    /// The bytes the lists keep (their room, used or not).
    pub fn bytes(&self) -> usize {
        room(&self.waits.now) + room(&self.waits.next) + room(&self.ready.entries) + room(&self.ready.carried)
    }

    /// Entry `i` (0: the first) of list `which` (see [`List`]): its task and registration.
    pub fn entry(&self, which: List, i: usize) -> Option<(Int, Int)> {
        match which {
            List::Ready => self.ready.entries.get(self.ready.head + i).map(|e| (e.key, e.reg)),
            List::Now => self.waits.now.get(self.waits.at + i).map(|w| (w.key, w.reg)),
            List::Next => self.waits.next.get(i).map(|w| (w.key, w.reg)),
        }
    }

    /// Gives back the room the lists keep beyond what they hold, and forgets the resume counts
    /// (after a mass despawn, with the step's Lua tables).
    pub fn shrink(&mut self) {
        self.waits.now.shrink_to_fit();
        self.waits.next.shrink_to_fit();
        self.ready.shrink();
        self.resumes = Resumes::default();
    }
}

/// The bytes `v` keeps.
fn room<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

/// The bytes a push onto `v` adds to its room (0 while it has room): `Vec` doubles its room, and
/// starts at four entries of this size.
pub(crate) fn growth<T>(v: &Vec<T>) -> usize {
    if v.len() < v.capacity() { 0 } else { v.capacity().max(4) * size_of::<T>() }
}

/// The lists an inspector may read entry by entry ([`StepMemory::entry`]): the ready queue, this
/// frame's frame waits not taken yet, and the next frame's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum List {
    Ready,
    Now,
    Next,
}

/// One frame wait: the task, its registration, and the game time (nanoseconds) it waited at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Wait {
    pub key: Int,
    pub reg: Int,
    pub since: f64,
}

/// The frame waits (`task.wait()`, `task.waitFrames(1)`): this frame's, resumed in order from
/// `at` on, and the next frame's, in the order queued. `task.waitFrames(n > 1)` waits in
/// `lua/task.lua`'s `later` buckets until their frame, when `fastpath`'s `begin_frame` takes them.
#[derive(Default)]
pub(crate) struct FrameWaits {
    pub now: Vec<Wait>,
    pub at: usize,
    pub next: Vec<Wait>,
}

impl FrameWaits {
    /// Takes this frame's next wait.
    pub fn take_now(&mut self) -> Option<Wait> {
        let wait = *self.now.get(self.at)?;
        self.at += 1;
        Some(wait)
    }
}

/// What a ready entry resumes its task with: the arguments the task has stored, if any (the
/// arguments marker: a task started, spawned or deferred, or woken by a promise or a channel, whose
/// results wait elsewhere), or one number (the seconds a timer waited).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Resume {
    Args,
    Int(Int),
    Num(f64),
}

/// One entry of the ready queue: task `key` resumes with `value`, at defer depth `depth`, if `reg`
/// is still its registration when the entry's turn comes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ready {
    pub key: Int,
    pub reg: Int,
    pub value: Resume,
    pub depth: Int,
}

/// A ready queue bigger than this many entries whose steps use less than a quarter of it...
const BIG: usize = 4096;
/// ...this many steps in a row (about a second at 60 frames a second) gives its room back.
const SHRINK_AFTER: u32 = 64;

/// The step's ready queue, in the order entries were queued, and the entries carried to the next
/// step (over a bound, or left when a time budget ran out), which join the queue when the next
/// step begins, after what was queued before it (timers that fell due first).
///
/// An empty queue starts over at its first slot, so a ping-pong between two tasks reuses one. Its
/// room is kept from step to step (a game that wakes thousands of tasks every other frame would
/// otherwise grow it anew each time); a big queue that [`SHRINK_AFTER`] steps in a row used less
/// than a quarter of gives it back.
#[derive(Default)]
pub(crate) struct ReadyQueue {
    entries: Vec<Ready>,
    head: usize,
    /// The most entries the queue held at once in this step.
    peak: usize,
    /// Steps in a row that used under a quarter of a big queue.
    small_steps: u32,
    carried: Vec<Ready>,
}

impl ReadyQueue {
    /// Queues `entry` after everything queued.
    pub fn push(&mut self, entry: Ready) {
        self.entries.push(entry);
    }

    /// Takes the first entry.
    pub fn pop(&mut self) -> Option<Ready> {
        let entry = *self.entries.get(self.head)?;
        self.head += 1;
        if self.head == self.entries.len() {
            self.start_over();
        }
        Some(entry)
    }

    /// Empties the queue, noting how much of it this step used.
    fn start_over(&mut self) {
        self.peak = self.peak.max(self.entries.len());
        self.entries.clear();
        self.head = 0;
    }

    /// The bytes a push adds to the queue's room (see [`growth`]).
    pub fn push_growth(&self) -> usize {
        growth(&self.entries)
    }

    /// Carries `entry` to the next step.
    pub fn carry(&mut self, entry: Ready) {
        self.carried.push(entry);
    }

    /// Carries everything still queued to the next step, in order.
    pub fn carry_rest(&mut self) {
        self.carried.extend_from_slice(&self.entries[self.head..]);
        self.start_over();
    }

    /// A new step: what the last one carried goes after what is queued now. A big carried list
    /// (a burst over a bound, or left by a time budget) gives its room back once emptied.
    pub fn begin_step(&mut self) {
        if self.carried.capacity() > BIG {
            let carried = std::mem::take(&mut self.carried);
            self.entries.extend(carried);
        } else {
            self.entries.append(&mut self.carried);
        }
    }

    /// The end of a step (the queue drained or carried): a big queue this step used less than a
    /// quarter of counts towards giving its room back.
    pub fn end_step(&mut self) {
        let room = self.entries.capacity();
        if room > BIG && self.peak.max(self.entries.len()) < room / 4 {
            self.small_steps += 1;
            if self.small_steps >= SHRINK_AFTER && self.head >= self.entries.len() {
                self.small_steps = 0;
                self.entries = Vec::new();
                self.head = 0;
            }
        } else {
            self.small_steps = 0;
        }
        self.peak = 0;
    }

    /// Gives back the room the queue keeps, if it is empty, and what the carried list keeps.
    fn shrink(&mut self) {
        if self.head >= self.entries.len() {
            self.entries = Vec::new();
            self.head = 0;
            self.small_steps = 0;
        }
        self.carried.shrink_to_fit();
    }

    /// The entries' room (for tests).
    #[cfg(test)]
    pub fn room(&self) -> usize {
        self.entries.capacity()
    }
}

/// How many times each task, and the tasks of each instance together, were resumed from the
/// ready queue in the current step, against the step's bounds (`lua/task.lua`'s `MAX_RESUMES`
/// and `MAX_INSTANCE_RESUMES`). Counts of one step only: the first count of a new step forgets
/// the last step's.
#[derive(Default)]
pub(crate) struct Resumes {
    step: Int,
    tasks: HashMap<Int, Int, BuildHasherDefault<KeyHasher>>,
    instances: HashMap<Int, Int, BuildHasherDefault<KeyHasher>>,
}

impl Resumes {
    /// Counts a resume of task `key`, of instance `inst`, in step `step`, unless the task has had
    /// `max` resumes in this step or its instance's tasks `max_instance`: returns whether it
    /// counted it (if not, the resume waits for the next step).
    pub fn count(&mut self, key: Int, inst: Int, step: Int, max: Int, max_instance: Int) -> bool {
        if step != self.step {
            self.step = step;
            self.tasks.clear();
            self.instances.clear();
        }
        let task = self.tasks.entry(key).or_insert(0);
        if *task >= max {
            return false;
        }
        let instance = self.instances.entry(inst).or_insert(0);
        if *instance >= max_instance {
            return false;
        }
        *task += 1;
        *instance += 1;
        true
    }
}

/// Hashes the integer keys of [`Resumes`] (task keys and instance ids, which Rust hands out, so
/// no script chooses them) with one multiplication: the table's bucket takes the low bits, which
/// follow the key's, and its tag the high ones, which mix them all.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i64(&mut self, n: i64) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: Int) -> Ready {
        Ready { key, reg: key * 10, value: Resume::Args, depth: 0 }
    }

    fn drain(q: &mut ReadyQueue) -> Vec<Int> {
        std::iter::from_fn(|| q.pop()).map(|e| e.key).collect()
    }

    #[test]
    fn the_queue_keeps_its_order_and_carried_work_goes_after_what_was_queued_first() {
        let mut q = ReadyQueue::default();
        for k in 1..=3 {
            q.push(entry(k));
        }
        assert_eq!(q.pop().map(|e| e.key), Some(1));
        q.carry(entry(9));
        q.push(entry(4)); // a wake while the step runs
        assert_eq!(q.pop().map(|e| e.key), Some(2));
        q.carry_rest(); // a time budget ran out
        assert_eq!(q.pop(), None);
        q.end_step();
        q.push(entry(7)); // a timer that fell due before the next step
        q.begin_step();
        assert_eq!(drain(&mut q), [7, 9, 3, 4]);
    }

    #[test]
    fn a_burst_s_room_is_kept_until_sixty_four_quiet_steps_in_a_row() {
        let mut q = ReadyQueue::default();
        let burst = |q: &mut ReadyQueue| {
            for k in 0..5000 {
                q.push(entry(k));
            }
            assert_eq!(drain(q).len(), 5000);
            q.end_step();
        };
        burst(&mut q);
        let room = q.room();
        assert!(room >= 5000);
        for _ in 0..SHRINK_AFTER - 1 {
            q.push(entry(1));
            q.pop();
            q.end_step();
        }
        assert_eq!(q.room(), room, "kept over 63 quiet steps");
        burst(&mut q); // another burst starts the count again
        for _ in 0..SHRINK_AFTER - 1 {
            q.end_step();
        }
        assert_eq!(q.room(), room);
        q.end_step();
        assert_eq!(q.room(), 0, "given back after the 64th");
    }

    #[test]
    fn a_carried_burst_s_room_is_given_back_once_it_is_queued_again() {
        let mut q = ReadyQueue::default();
        for k in 0..100_000 {
            q.push(entry(k));
        }
        q.pop();
        q.carry_rest();
        q.end_step();
        q.begin_step();
        assert_eq!(q.carried.capacity(), 0);
        assert_eq!(drain(&mut q).len(), 99_999);
    }

    #[test]
    fn an_inspector_reads_each_list_in_order_from_its_first_entry_not_taken() {
        let mut m = StepMemory::default();
        for k in 1..=3 {
            m.ready.push(entry(k));
            m.waits.now.push(Wait { key: k, reg: k * 10, since: 0.0 });
        }
        m.waits.next.push(Wait { key: 7, reg: 70, since: 0.0 });
        m.ready.pop();
        m.waits.at = 2;
        assert_eq!([0, 1, 2].map(|i| m.entry(List::Ready, i)), [Some((2, 20)), Some((3, 30)), None]);
        assert_eq!([0, 1].map(|i| m.entry(List::Now, i)), [Some((3, 30)), None]);
        assert_eq!([0, 1].map(|i| m.entry(List::Next, i)), [Some((7, 70)), None]);
        assert_eq!(m.bytes(), 8 * size_of::<Wait>() + 4 * size_of::<Ready>());
    }

    #[test]
    fn a_push_grows_a_full_list_by_doubling_its_room() {
        let mut v: Vec<Ready> = Vec::new();
        assert_eq!(growth(&v), 4 * size_of::<Ready>());
        for k in 0..4 {
            v.push(entry(k));
        }
        assert_eq!((v.capacity(), growth(&v)), (4, 4 * size_of::<Ready>()));
        v.push(entry(5));
        assert_eq!((v.capacity(), growth(&v)), (8, 0));
    }

    #[test]
    fn shrinking_keeps_what_is_queued() {
        let mut q = ReadyQueue::default();
        q.push(entry(1));
        q.shrink();
        assert_eq!(drain(&mut q), [1]);
        q.shrink();
        assert_eq!(q.room(), 0);
    }

    #[test]
    fn each_task_and_each_instance_is_counted_up_to_its_bound_per_step() {
        let mut r = Resumes::default();
        assert!(r.count(1, 100, 1, 2, 3));
        assert!(r.count(1, 100, 1, 2, 3));
        assert!(!r.count(1, 100, 1, 2, 3), "the task's bound");
        assert!(r.count(2, 100, 1, 2, 3));
        assert!(!r.count(3, 100, 1, 2, 3), "the instance's bound");
        assert!(r.count(3, 200, 1, 2, 3), "another instance");
        assert!(r.count(1, 100, 2, 2, 3), "a new step forgets the counts");
    }
}
