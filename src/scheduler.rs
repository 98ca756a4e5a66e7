//! The scheduler: tasks, the ready queue, the timer queues and the step that resumes threads.
//!
//! Every wait goes through one mechanism. A thread that waits yields a request `(REQ, kind, arg)`
//! to whoever resumed it (see `lua/task.lua`); the request becomes one *registration*: the task's
//! `wait` counter is bumped and the waker (a timer entry, a frame wait) remembers that number. When
//! the waker fires it moves the task to the ready queue only if the number still matches, so a task
//! that was cancelled, resumed by someone else or re-registered is never woken twice. A task no one
//! can wake is in no queue at all, and costs nothing per frame.
//!
//! Threads live in a Lua table indexed by task slot (not as one Rust handle each: mlua's handle
//! stack is small on LuaJIT); everything else about a task is plain Rust data here.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bevy::platform::collections::{HashMap, HashSet};
use bevy::prelude::*;
use mlua::thread::ThreadStatus;
use mlua::{Function, LightUserData, Lua, MultiValue, Table, Thread, Value, VmState};

use crate::error::{ScriptError, ScriptErrorKind, split_text, split_traceback};
use crate::time::{Clock, ClockKind, nanos_to_seconds, seconds_to_nanos};
use crate::timer::TimerQueue;

static REQ_ANCHOR: u8 = 0;

/// The light userdata that marks a yield as a wait request.
pub(crate) fn req() -> LightUserData {
    LightUserData(&REQ_ANCHOR as *const u8 as *mut c_void)
}

/// Wait request kinds (the `kind` of a `(REQ, kind, arg)` yield).
pub(crate) mod kind {
    /// `task.wait(seconds)`: a game-time timer, or the next frame.
    pub const WAIT_TIME: i64 = 1;
    /// `task.waitFrames(n)`.
    pub const WAIT_FRAMES: i64 = 2;
    /// `task.waitRealtime(seconds)`.
    pub const WAIT_REAL: i64 = 3;
    /// `task.defer`: later in this step.
    pub const DEFER: i64 = 1;
    /// `task.delay`: after a game-time delay.
    pub const DELAY: i64 = 2;
}

/// How deep a chain of `task.defer` calls may go within one step.
pub(crate) const MAX_DEFER_DEPTH: u8 = 10;

/// Identifies a script instance (one script attached to one entity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct InstanceId(pub u64);

/// Identifies a task: a slot in the thread table and the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TaskId {
    index: u32,
    generation: u32,
}

impl TaskId {
    /// The key of this task's thread in the Lua thread table.
    pub fn key(self) -> i64 {
        i64::from(self.index) + 1
    }
}

/// What a task is resumed with when it wakes.
#[derive(Clone, Copy, Debug)]
enum Resume {
    /// The seconds of `clock` that passed since `since` (nanoseconds).
    Elapsed { clock: ClockKind, since: u64 },
    /// The values stored for the task in the Lua argument table.
    Stored,
}

/// A registration waiting in a timer queue or the next-frame list.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    task: TaskId,
    wait: u32,
    seq: u64,
    resume: Resume,
}

struct ReadyEntry {
    task: TaskId,
    wait: u32,
    resume: Resume,
    depth: u8,
}

struct Task {
    instance: InstanceId,
    ptr: usize,
    wait: u32,
    /// When the task was made (orders cancellation).
    born: u64,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    task: Option<Task>,
}

/// What the scheduler knows of a script instance.
pub(crate) struct InstanceRecord {
    /// The entity the instance runs on.
    pub entity: Entity,
    /// The script's asset path.
    pub path: Arc<str>,
    tasks: HashSet<TaskId>,
}

/// Counters the runner's `--stats` prints.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedulerStats {
    /// Resumes the step performed since start.
    pub resumed: u64,
}

/// The scheduler's state. It lives in the VM's app data so the task API's Rust functions reach it;
/// it is never borrowed across a resume.
#[derive(Default)]
pub(crate) struct Scheduler {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_ptr: HashMap<usize, TaskId>,
    ready: VecDeque<ReadyEntry>,
    next_frame: Vec<Waiting>,
    frames: TimerQueue<Waiting>,
    game_timers: TimerQueue<Waiting>,
    real_timers: TimerQueue<Waiting>,
    seq: u64,
    live: usize,
    /// The most tasks / instances alive since the Lua tables were last rebuilt.
    task_peak: usize,
    instance_peak: usize,
    /// The clocks as of this step.
    pub clock: Clock,
    /// The task being resumed, its instance, and its `task.defer` depth.
    current: Option<(TaskId, InstanceId, u8)>,
    /// The instance on whose behalf Lua code runs outside any task (its chunk being set up, its
    /// tasks being closed).
    pub host_instance: Option<InstanceId>,
    instances: HashMap<InstanceId, InstanceRecord>,
    /// Failures reported during the step, drained into `ScriptError` messages.
    pub errors: Vec<ScriptError>,
    /// Lines printed during the step, drained into `ScriptPrint` messages.
    pub prints: Vec<(InstanceId, String)>,
    /// Counters.
    pub stats: SchedulerStats,
}

impl Scheduler {
    fn task(&self, id: TaskId) -> Option<&Task> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.task.as_ref()
    }

    fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.task.as_mut()
    }

    /// Tasks alive (waiting or ready).
    pub fn live_tasks(&self) -> usize {
        self.live
    }

    /// The instance on whose behalf Lua code runs right now.
    pub fn current_instance(&self) -> Option<InstanceId> {
        self.current.map(|(_, i, _)| i).or(self.host_instance)
    }

    /// Starts tracking an instance.
    pub fn add_instance(&mut self, id: InstanceId, entity: Entity, path: Arc<str>) {
        self.instances.insert(id, InstanceRecord { entity, path, tasks: HashSet::default() });
        self.instance_peak = self.instance_peak.max(self.instances.len());
    }

    /// Whether the task tables and the environment table should be rebuilt: Lua tables never
    /// shrink when entries are cleared, so after a mass despawn they are copied to fit.
    pub fn take_compaction(&mut self) -> (bool, bool) {
        fn shrunk(peak: &mut usize, live: usize) -> bool {
            let due = *peak > 4096 && live * 4 < *peak;
            if due {
                *peak = live;
            }
            due
        }
        (shrunk(&mut self.task_peak, self.live), shrunk(&mut self.instance_peak, self.instances.len()))
    }

    /// The record of an instance.
    pub fn instance(&self, id: InstanceId) -> Option<&InstanceRecord> {
        self.instances.get(&id)
    }

    /// Names the script an instance runs (known once its asset loaded).
    pub fn set_instance_path(&mut self, id: InstanceId, path: Arc<str>) {
        if let Some(record) = self.instances.get_mut(&id) {
            record.path = path;
        }
    }

    /// Removes every task of an instance, in creation order; the caller closes their threads.
    pub fn take_instance_tasks(&mut self, id: InstanceId) -> Vec<TaskId> {
        let Some(record) = self.instances.get(&id) else {
            return Vec::new();
        };
        let mut tasks: Vec<TaskId> = record.tasks.iter().copied().collect();
        tasks.sort_by_key(|&t| self.task(t).map(|t| t.born));
        for &task in &tasks {
            self.remove_task(task);
        }
        tasks
    }

    /// Stops tracking an instance (after its tasks were taken and closed).
    pub fn forget_instance(&mut self, id: InstanceId) {
        self.instances.remove(&id);
    }

    /// The task that runs `ptr`, if the scheduler knows that thread.
    pub fn find(&self, ptr: usize) -> Option<TaskId> {
        self.by_ptr.get(&ptr).copied()
    }

    /// Makes a task of a thread for `instance`.
    pub fn insert_task(&mut self, instance: InstanceId, ptr: usize) -> TaskId {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        });
        self.seq += 1;
        let slot = &mut self.slots[index as usize];
        slot.task = Some(Task { instance, ptr, wait: 0, born: self.seq });
        let id = TaskId { index, generation: slot.generation };
        self.by_ptr.insert(ptr, id);
        if let Some(record) = self.instances.get_mut(&instance) {
            record.tasks.insert(id);
        }
        self.live += 1;
        self.task_peak = self.task_peak.max(self.live);
        id
    }

    /// Forgets a task: every registration it had goes stale. The caller clears its Lua slots.
    pub fn remove_task(&mut self, id: TaskId) -> bool {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return false;
        };
        if slot.generation != id.generation {
            return false;
        }
        let Some(task) = slot.task.take() else {
            return false;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.by_ptr.remove(&task.ptr);
        if let Some(record) = self.instances.get_mut(&task.instance) {
            record.tasks.remove(&id);
        }
        self.live -= 1;
        self.compact();
        true
    }

    /// Sweeps stale timer entries once they outnumber live tasks, so cancelled sleepers do not
    /// keep memory until their deadline.
    fn compact(&mut self) {
        let stale_limit = 2 * self.live + 1024;
        let slots = &self.slots;
        let valid = |w: &Waiting| {
            slots.get(w.task.index as usize).is_some_and(|s| {
                s.generation == w.task.generation && s.task.as_ref().is_some_and(|t| t.wait == w.wait)
            })
        };
        for queue in [&mut self.game_timers, &mut self.real_timers, &mut self.frames] {
            if queue.len() > stale_limit {
                queue.retain(valid);
            }
        }
    }

    /// Starts a new registration for `task`, invalidating any earlier one.
    fn begin_wait(&mut self, task: TaskId) -> Option<(u32, u64)> {
        let t = self.task_mut(task)?;
        t.wait = t.wait.wrapping_add(1);
        let wait = t.wait;
        self.seq += 1;
        Some((wait, self.seq))
    }

    /// Registers the wait request `kind(arg)` for `task`. Errors are messages for the script.
    pub fn register_wait(&mut self, task: TaskId, kind: i64, arg: &Value) -> Result<(), String> {
        let number = match arg {
            Value::Nil => None,
            Value::Integer(i) => Some(*i as f64),
            Value::Number(n) => Some(*n),
            other => return Err(format!("invalid wait argument ({})", other.type_name())),
        };
        let Some((wait, seq)) = self.begin_wait(task) else {
            return Ok(());
        };
        let now = self.clock;
        match kind {
            kind::WAIT_TIME | kind::WAIT_REAL => {
                let clock = if kind == kind::WAIT_TIME { ClockKind::Game } else { ClockKind::Real };
                let since = now.now(clock);
                let entry = Waiting { task, wait, seq, resume: Resume::Elapsed { clock, since } };
                match number.and_then(seconds_to_nanos) {
                    None => self.next_frame.push(entry),
                    Some(ns) => {
                        let queue = match clock {
                            ClockKind::Game => &mut self.game_timers,
                            ClockKind::Real => &mut self.real_timers,
                        };
                        queue.insert_at(since.saturating_add(ns), entry);
                    }
                }
            }
            kind::WAIT_FRAMES => {
                let n = number.unwrap_or(1.0);
                let n = if n.is_nan() || n < 1.0 { 1.0 } else { n.floor() };
                let resume = Resume::Elapsed { clock: ClockKind::Game, since: now.game_ns };
                let entry = Waiting { task, wait, seq, resume };
                if n == 1.0 {
                    self.next_frame.push(entry);
                } else if n.is_finite() && n < u64::MAX as f64 {
                    self.frames.insert_at(now.frame.saturating_add(n as u64), entry);
                }
                // An infinite wait is a registration nothing fires: the task sleeps for good.
            }
            other => return Err(format!("unknown wait request {other}")),
        }
        Ok(())
    }

    /// Schedules `task` for `task.defer` (later this step) or `task.delay` (after `seconds`), to
    /// be resumed with its stored arguments.
    pub fn schedule(&mut self, task: TaskId, how: i64, seconds: f64) -> Result<(), String> {
        let depth = match how {
            kind::DEFER => {
                let depth = self.current.map_or(0, |(_, _, d)| d) + 1;
                if depth > MAX_DEFER_DEPTH {
                    return Err(format!(
                        "Maximum re-entrancy depth ({MAX_DEFER_DEPTH}) exceeded calling task.defer"
                    ));
                }
                depth
            }
            _ => 0,
        };
        let Some((wait, seq)) = self.begin_wait(task) else {
            return Ok(());
        };
        match how {
            kind::DEFER => self.ready.push_back(ReadyEntry { task, wait, resume: Resume::Stored, depth }),
            _ => {
                let entry = Waiting { task, wait, seq, resume: Resume::Stored };
                match seconds_to_nanos(seconds) {
                    None => self.next_frame.push(entry),
                    Some(ns) => {
                        let at = self.clock.game_ns.saturating_add(ns);
                        self.game_timers.insert_at(at, entry);
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues a new task to run in this step with its stored arguments (an instance's chunk).
    pub fn push_ready(&mut self, task: TaskId) {
        if let Some((wait, _)) = self.begin_wait(task) {
            self.ready.push_back(ReadyEntry { task, wait, resume: Resume::Stored, depth: 0 });
        }
    }

    fn make_ready(&mut self, w: Waiting) {
        if self.task(w.task).is_some_and(|t| t.wait == w.wait) {
            self.ready.push_back(ReadyEntry { task: w.task, wait: w.wait, resume: w.resume, depth: 0 });
        }
    }

    /// Moves everything that fell due this frame to the ready queue: frame waits in the order
    /// they were made, then game timers and real timers, each by deadline then order made.
    pub fn wake_due(&mut self) {
        let mut listed = std::mem::take(&mut self.next_frame);
        let mut counted = Vec::new();
        while let Some((_, w)) = self.frames.poll_expired(self.clock.frame) {
            counted.push(w);
        }
        if counted.is_empty() {
            for w in listed.drain(..) {
                self.make_ready(w);
            }
        } else {
            counted.sort_by_key(|w| w.seq);
            let mut all = listed.drain(..).chain(counted).collect::<Vec<_>>();
            all.sort_by_key(|w| w.seq);
            for w in all {
                self.make_ready(w);
            }
        }
        self.next_frame = listed;
        while let Some((_, w)) = self.game_timers.poll_expired(self.clock.game_ns) {
            self.make_ready(w);
        }
        while let Some((_, w)) = self.real_timers.poll_expired(self.clock.real_ns) {
            self.make_ready(w);
        }
    }

    /// Takes the next valid ready entry, marks it current, and says how to resume it.
    fn pop_ready(&mut self) -> Option<(TaskId, Resume)> {
        while let Some(entry) = self.ready.pop_front() {
            let Some(task) = self.task_mut(entry.task) else { continue };
            if task.wait != entry.wait {
                continue;
            }
            task.wait = task.wait.wrapping_add(1);
            let instance = task.instance;
            self.current = Some((entry.task, instance, entry.depth));
            return Some((entry.task, entry.resume));
        }
        None
    }

    /// Records a failure of `instance` (logged now, written as a message after the step).
    pub fn report(
        &mut self,
        instance: Option<InstanceId>,
        kind: ScriptErrorKind,
        message: String,
        traceback: String,
    ) {
        let (entity, script) = match instance.and_then(|i| self.instances.get(&i)) {
            Some(r) => (r.entity, r.path.to_string()),
            None => (Entity::PLACEHOLDER, String::from("?")),
        };
        if traceback.is_empty() {
            error!("{script} ({entity}): {message}");
        } else {
            error!("{script} ({entity}): {message}\n{traceback}");
        }
        self.errors.push(ScriptError { entity, script, message, traceback, kind });
    }
}

/// The instruction budget of one resume, shared with the VM's hook.
#[derive(Default)]
pub(crate) struct Budget {
    /// Hook calls allowed per resume (0: unlimited).
    limit: AtomicU64,
    calls: AtomicU64,
    /// The thread the scheduler is resuming (0 when none is).
    thread: AtomicUsize,
    yielded: AtomicBool,
    exceeded_at: std::sync::Mutex<Option<String>>,
}

impl Budget {
    /// Sets how many hook calls one resume may take.
    pub fn set_limit(&self, calls: u64) {
        self.limit.store(calls, Ordering::Relaxed);
    }

    fn begin(&self, thread: usize) {
        self.calls.store(0, Ordering::Relaxed);
        self.thread.store(thread, Ordering::Relaxed);
    }

    /// Ends a resume; returns where the budget ran out, if it did.
    fn end(&self) -> Option<String> {
        self.thread.store(0, Ordering::Relaxed);
        if self.yielded.swap(false, Ordering::Relaxed) | (self.calls.load(Ordering::Relaxed) > self.limit()) {
            return self.exceeded_at.lock().ok()?.take();
        }
        None
    }

    fn limit(&self) -> u64 {
        match self.limit.load(Ordering::Relaxed) {
            0 => u64::MAX,
            n => n,
        }
    }

    /// Called by the VM's hook: counts one call and decides whether the running code must stop.
    pub fn on_hook(&self, lua: &Lua, location: impl FnOnce() -> String) -> mlua::Result<VmState> {
        let resumed = self.thread.load(Ordering::Relaxed);
        if resumed == 0 {
            return Ok(VmState::Continue);
        }
        let calls = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if calls <= self.limit() {
            return Ok(VmState::Continue);
        }
        let at = location();
        if let Ok(mut slot) = self.exceeded_at.lock() {
            // The last place wins: it is where the resumed task itself was stopped.
            *slot = Some(at.clone());
        }
        let message = format!("{at}: script exceeded its instruction budget");
        let is_resumed = lua.current_thread().to_pointer() as usize == resumed;
        if cfg!(not(feature = "luajit")) && is_resumed && !self.yielded.swap(true, Ordering::Relaxed) {
            // Yielding stops the task even inside `pcall`; the step reports and closes it.
            return Ok(VmState::Yield);
        }
        Err(mlua::Error::runtime(message))
    }
}

/// Lua values the scheduler and the task API share, created once with the VM.
pub(crate) struct Refs {
    /// Task slot key -> thread.
    pub threads: Table,
    /// Task slot key -> packed arguments for its next resume.
    pub args: Table,
    /// Instance id -> environment table.
    pub envs: Table,
    /// Closes a thread (to-be-closed variables run): `close(co) -> ok, err`.
    pub close: Function,
    /// `debug.traceback`, kept even when scripts do not get `debug`.
    pub traceback: Function,
}

/// Borrows the shared Lua tables (a shared borrow: it may be held across calls into Lua).
pub(crate) fn refs(lua: &Lua) -> mlua::AppDataRef<'_, Refs> {
    lua.app_data_ref::<Refs>().expect("the task tables are installed with the VM")
}

/// Borrows the scheduler. Never hold the borrow across a call into Lua code.
pub(crate) fn sched(lua: &Lua) -> mlua::AppDataRefMut<'_, Scheduler> {
    lua.app_data_mut::<Scheduler>().expect("the scheduler is installed with the VM")
}

/// Makes `thread` a task of the current instance, or finds the task it already is.
pub(crate) fn adopt(lua: &Lua, thread: &Thread) -> mlua::Result<Option<TaskId>> {
    let ptr = thread.to_pointer() as usize;
    let mut s = sched(lua);
    if let Some(id) = s.find(ptr) {
        return Ok(Some(id));
    }
    let Some(instance) = s.current_instance() else {
        return Ok(None);
    };
    let id = s.insert_task(instance, ptr);
    drop(s);
    refs(lua).threads.raw_set(id.key(), thread)?;
    Ok(Some(id))
}

/// Stores `args` as the values `task` is resumed with next.
pub(crate) fn store_args(lua: &Lua, task: TaskId, args: MultiValue) -> mlua::Result<()> {
    let refs = refs(lua);
    if args.is_empty() {
        return refs.args.raw_set(task.key(), Value::Nil);
    }
    let n = args.len();
    let packed = lua.create_sequence_from(args)?;
    packed.raw_set("n", n)?;
    refs.args.raw_set(task.key(), packed)
}

/// Forgets a task and clears its Lua slots.
pub(crate) fn drop_task(lua: &Lua, task: TaskId) {
    if sched(lua).remove_task(task) {
        clear_slots(&refs(lua), task);
    }
}

fn clear_slots(refs: &Refs, task: TaskId) {
    let _ = refs.threads.raw_set(task.key(), Value::Nil);
    let _ = refs.args.raw_set(task.key(), Value::Nil);
}

/// Closes threads whose tasks were already removed from the scheduler (cancelled instances).
pub(crate) fn close_tasks(lua: &Lua, tasks: &[TaskId], instance: Option<InstanceId>) {
    let refs = refs(lua);
    for &task in tasks {
        let thread = refs.threads.raw_get::<Option<Thread>>(task.key()).ok().flatten();
        clear_slots(&refs, task);
        if let Some(thread) = thread {
            close_thread(lua, &refs, &thread, instance);
        }
    }
}

/// Closes a suspended or failed thread; an error raised by a `__close` is reported.
fn close_thread(lua: &Lua, refs: &Refs, thread: &Thread, instance: Option<InstanceId>) {
    if !matches!(thread.status(), ThreadStatus::Resumable | ThreadStatus::Error) {
        return;
    }
    let failed = thread.status() == ThreadStatus::Error;
    match refs.close.call::<(bool, Value)>(thread) {
        Ok((false, err)) if !failed => {
            let message = err.to_string().unwrap_or_else(|_| format!("{err:?}"));
            sched(lua).report(instance, ScriptErrorKind::Runtime, message, String::new());
        }
        Err(e) => {
            let (message, traceback) = split_traceback(&e);
            sched(lua).report(instance, ScriptErrorKind::Runtime, message, traceback);
        }
        _ => {}
    }
}

/// Resumes every ready task, and every task they wake, until the ready queue is empty.
pub(crate) fn run(lua: &Lua, budget: &Budget) {
    let refs = &*refs(lua);
    let req = Value::LightUserData(req());
    loop {
        let Some((task, resume)) = sched(lua).pop_ready() else { break };
        let thread = match refs.threads.raw_get::<Option<Thread>>(task.key()) {
            Ok(Some(t)) => t,
            _ => {
                sched(lua).current = None;
                drop_task(lua, task);
                continue;
            }
        };
        budget.begin(thread.to_pointer() as usize);
        let result = match resume {
            Resume::Elapsed { clock, since } => {
                let now = sched(lua).clock.now(clock);
                thread.resume::<(Value, Value, Value)>(nanos_to_seconds(now.saturating_sub(since)))
            }
            Resume::Stored => {
                let packed = refs.args.raw_get::<Option<Table>>(task.key()).ok().flatten();
                let _ = refs.args.raw_set(task.key(), Value::Nil);
                match packed {
                    Some(t) => {
                        let n = t.raw_get::<Option<i64>>("n").ok().flatten().unwrap_or(0);
                        let args = (1..=n).map(|i| t.raw_get::<Value>(i).unwrap_or(Value::Nil));
                        thread.resume(args.collect::<MultiValue>())
                    }
                    None => thread.resume(()),
                }
            }
        };
        let exceeded = budget.end();
        let mut s = sched(lua);
        s.stats.resumed += 1;
        let instance = s.current.take().map(|(_, i, _)| i);
        let failure = match (result, exceeded) {
            (_, Some(at)) => {
                let message = format!("{at}: script exceeded its instruction budget");
                Some((ScriptErrorKind::Budget, message, None))
            }
            (Ok((first, kind, arg)), None) => {
                if first == req && thread.status() == ThreadStatus::Resumable {
                    let kind = kind.as_integer().unwrap_or(0);
                    match s.register_wait(task, kind, &arg) {
                        Ok(()) => continue,
                        Err(message) => Some((ScriptErrorKind::Runtime, message, None)),
                    }
                } else {
                    // Finished, or yielded without a request: nothing will wake it, so the
                    // scheduler lets go (script code that holds the thread may resume it).
                    drop(s);
                    drop_task(lua, task);
                    continue;
                }
            }
            (Err(mlua::Error::CoroutineUnresumable), None) => {
                drop(s);
                drop_task(lua, task);
                continue;
            }
            (Err(e), None) => {
                let (message, traceback) = split_traceback(&e);
                Some((ScriptErrorKind::Runtime, message, Some(traceback)))
            }
        };
        drop(s);
        if let Some((kind, message, traceback)) = failure {
            let traceback = match traceback {
                Some(t) if !t.is_empty() => t,
                _ => refs
                    .traceback
                    .call::<String>((&thread, Value::Nil))
                    .map(|t| split_text(&format!("\n{t}")).1)
                    .unwrap_or_default(),
            };
            sched(lua).report(instance, kind, message, traceback);
            drop_task(lua, task);
            close_thread(lua, &refs, &thread, instance);
        }
    }
}
