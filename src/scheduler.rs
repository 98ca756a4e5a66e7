//! The scheduler's Rust half: which instance owns each task, the timer queues, failure reports
//! and the instruction budget. The per-frame half is the step's loop that resumes tasks, Lua code in
//! `lua/task.lua`, over the ready queue and frame waits that `step_memory` keeps behind the C
//! functions of `fastpath`, so a task that resumes and waits again never crosses between Rust and
//! Lua through mlua.
//!
//! Tasks are named by integer keys (a slot here, an index into Lua tables there). Threads and
//! per-task values live in Lua tables, not as one Rust handle each: mlua's handle stack is small on
//! LuaJIT. Timers carry the registration number Lua gave them; the Lua side wakes a task only if
//! that number is still its current one, so a stale timer is harmless and is swept lazily.
//!
//! Lua code that runs outside any task (an instance's chunk being set up, its tasks being closed,
//! Rust completions being settled) runs on behalf of the host instance, which only the [`host`]
//! guard sets (and restores when dropped). What the extensions do each step, and when an
//! instance's tasks are cancelled, comes in as [`StepHooks`]; the scheduler names none of them.

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bevy::platform::collections::{HashMap, HashSet};
use bevy::prelude::*;
use mlua::{Function, LightUserData, Lua, Table, Thread, Value, VmState};

use crate::error::{ScriptError, ScriptErrorKind, traceback_part};
use crate::time::{Clock, ClockKind, nanos_to_seconds, seconds_to_nanos};
use crate::timer::TimerQueue;

static REQ_ANCHOR: u8 = 0;
static ARGS_ANCHOR: u8 = 0;

/// The light userdata that marks a yield as a wait request.
pub(crate) fn req() -> LightUserData {
    LightUserData(&REQ_ANCHOR as *const u8 as *mut c_void)
}

/// The light userdata that says "resume with the task's stored arguments".
pub(crate) fn args_marker() -> LightUserData {
    LightUserData(&ARGS_ANCHOR as *const u8 as *mut c_void)
}

/// The registry name of the table of Lua functions the task inspector (`inspect.rs`) builds on.
pub(crate) const INSPECT_DEPS: &str = "bevy_lua_coroutines.inspect";

/// Wait request kinds (the `kind` of a `(REQ, kind, arg)` yield) and clock ids, shared with Lua.
pub(crate) mod kind {
    /// `task.wait(seconds)`: a game-time timer, or the next frame.
    pub const WAIT_TIME: i64 = 1;
    /// `task.waitFrames(n)`.
    pub const WAIT_FRAMES: i64 = 2;
    /// `task.waitRealtime(seconds)`.
    pub const WAIT_REAL: i64 = 3;
    /// Parked on a waiter slot until something wakes it (promises, channels).
    pub const PARK: i64 = 4;
    /// A timer on game time.
    pub const GAME: i64 = 1;
    /// A timer on real time.
    pub const REAL: i64 = 2;
}

/// Identifies a script instance (one script attached to one entity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct InstanceId(pub u64);

/// Identifies a task: a slot and the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TaskId {
    index: u32,
    generation: u32,
}

impl TaskId {
    /// The key Lua knows the task by.
    pub fn key(self) -> i64 {
        i64::from(self.index) + 1
    }
}

/// A timer registration.
#[derive(Clone, Copy, Debug)]
struct Timer {
    task: TaskId,
    /// The registration number Lua gave the wait.
    reg: f64,
    clock: ClockKind,
    since: u64,
    /// Resume with the stored arguments (`task.delay`) rather than the elapsed seconds.
    stored_args: bool,
}

struct Task {
    instance: InstanceId,
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
    /// A script despawned its entity during this step (the next sync forgets the instance): no
    /// other instance's code starts a task for it any more.
    pub despawned: bool,
    tasks: HashSet<TaskId>,
}

/// Counters the runner's `--stats` prints.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedulerStats {
    /// Tasks resumed by the step since start.
    pub resumed: u64,
}

/// The scheduler's Rust state. It lives in the VM's app data so the task API's Rust functions
/// reach it; it is never borrowed across a call into Lua.
#[derive(Default)]
pub(crate) struct Scheduler {
    slots: Vec<Slot>,
    free: Vec<u32>,
    game_timers: TimerQueue<Timer>,
    real_timers: TimerQueue<Timer>,
    born: u64,
    live: usize,
    /// The most tasks / instances alive since the Lua tables were last rebuilt.
    task_peak: usize,
    instance_peak: usize,
    /// Live tasks one instance may have (`None`: no limit).
    pub task_quota: Option<usize>,
    /// The clocks as of this step.
    pub clock: Clock,
    /// When this step began (for the optional time budget of the step).
    pub step_started: Option<std::time::Instant>,
    /// The instance on whose behalf Lua code runs outside any task (its chunk being set up, its
    /// tasks being closed); set only through [`host`].
    host_instance: Option<InstanceId>,
    instances: HashMap<InstanceId, InstanceRecord>,
    /// The instances on each entity.
    on_entity: HashMap<Entity, Vec<InstanceId>>,
    /// Failures reported during the step, drained into `ScriptError` messages.
    pub errors: Vec<ScriptError>,
    /// Lines printed during the step, drained into `ScriptPrint` messages.
    pub prints: Vec<(InstanceId, String)>,
    /// Instances forgotten since the last promise tick, and those forgotten again after closes of
    /// theirs were carried past their frame (the promise module drops what it kept for them).
    pub gone: Vec<InstanceId>,
    /// Whether `step.close_ended` has threads to close: tasks ended from outside their instance
    /// (a script of another instance despawned their entity or cancelled the promise they were
    /// the executor of; the game despawned it, a reload or a memory quota cancelled them), kept
    /// in Lua until the work that ended them is over ([`close_ended`]).
    pub closes_due: bool,
    /// The entity and script of instances forgotten while closes of their tasks were left to run
    /// (the budget ran out), or during this frame: what those closes print or raise still names
    /// them. Let go at the end of a frame that leaves no close at all ([`Self::let_go_departed`]).
    departed: HashMap<InstanceId, (Entity, Arc<str>)>,
    /// Whether `departed` was kept past the end of a frame (closes were left): the promise tick
    /// that forgot those instances may have run before their closes, which run as them and can
    /// make what the tick let go (see `step::forget_carried`).
    departed_carried: bool,
    /// Instances whose tasks are being closed (innermost last): their `__close` handlers start
    /// no task, which would outlive the cancellation.
    closing: Vec<InstanceId>,
    /// Whether a `__close` of an ended task asked Rust which instance runs (it printed, required
    /// or started Rust work) since the last sync let instances go: the instances it lets go then
    /// drop their Rust work once more ([`drop_instance_work`]), as their closes may have started
    /// some after their tasks were cancelled.
    closes_reached_rust: std::cell::Cell<bool>,
}

impl Scheduler {
    fn task(&self, id: TaskId) -> Option<&Task> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.task.as_ref()
    }

    /// The live task Lua calls `key`.
    fn by_key(&self, key: i64) -> Option<TaskId> {
        let index = u32::try_from(key - 1).ok()?;
        let slot = self.slots.get(index as usize)?;
        slot.task.as_ref().map(|_| TaskId { index, generation: slot.generation })
    }

    /// Tasks alive (waiting or ready).
    pub fn live_tasks(&self) -> usize {
        self.live
    }

    /// The instance that owns the task Lua calls `key` (0: none), or the host instance; for a
    /// `key` at or below [`CLOSING`], the instance whose ended task the step is closing.
    pub fn instance_of(&self, key: i64) -> Option<InstanceId> {
        if key <= CLOSING {
            self.closes_reached_rust.set(true);
            return Some(InstanceId(CLOSING.abs_diff(key)));
        }
        self.by_key(key).and_then(|t| self.task(t)).map(|t| t.instance).or(self.host_instance)
    }

    /// Starts tracking an instance.
    pub fn add_instance(&mut self, id: InstanceId, entity: Entity, path: Arc<str>) {
        self.instances
            .insert(id, InstanceRecord { entity, path, despawned: false, tasks: HashSet::default() });
        self.on_entity.entry(entity).or_default().push(id);
        self.instance_peak = self.instance_peak.max(self.instances.len());
    }

    /// The record of an instance.
    pub fn instance(&self, id: InstanceId) -> Option<&InstanceRecord> {
        self.instances.get(&id)
    }

    /// The entity and script of an instance, live or recently forgotten (see `departed`).
    pub fn name_of(&self, id: InstanceId) -> Option<(Entity, Arc<str>)> {
        match self.instances.get(&id) {
            Some(r) => Some((r.entity, r.path.clone())),
            None => self.departed.get(&id).cloned(),
        }
    }

    /// Whether a close reached Rust since the last call (see `closes_reached_rust`).
    pub fn take_closes_reached_rust(&self) -> bool {
        self.closes_reached_rust.replace(false)
    }

    /// Lets go of the names of forgotten instances once no close is left (once a frame); notes
    /// when they are kept past the frame.
    pub fn let_go_departed(&mut self) {
        if self.closes_due {
            self.departed_carried |= !self.departed.is_empty();
        } else {
            self.departed.clear();
            self.departed_carried = false;
        }
    }

    /// The instances to forget again once no close is left, if some closes were carried past a
    /// frame (see `step::forget_carried`): they go to `gone` again. None otherwise, so forgetting
    /// instances whose closes all ran in their frame costs nothing more.
    pub fn take_carried(&mut self) -> Vec<InstanceId> {
        if self.closes_due || !self.departed_carried {
            return Vec::new();
        }
        self.departed_carried = false;
        let ids: Vec<InstanceId> = self.departed.keys().copied().collect();
        self.gone.extend_from_slice(&ids);
        ids
    }

    /// Names the script an instance runs (known once its asset loaded).
    pub fn set_instance_path(&mut self, id: InstanceId, path: Arc<str>) {
        if let Some(record) = self.instances.get_mut(&id) {
            record.path = path;
        }
    }

    /// The instances on `entity`, oldest first.
    pub fn instances_on(&self, entity: Entity) -> Vec<InstanceId> {
        self.on_entity.get(&entity).cloned().unwrap_or_default()
    }

    /// Removes every task of an instance but `keep`, in the order they were made; returns their
    /// keys for the caller to close.
    pub fn take_instance_tasks(&mut self, id: InstanceId, keep: Option<i64>) -> Vec<i64> {
        let Some(record) = self.instances.get(&id) else {
            return Vec::new();
        };
        let mut tasks: Vec<TaskId> = record.tasks.iter().copied().filter(|t| Some(t.key()) != keep).collect();
        tasks.sort_by_key(|&t| self.task(t).map(|t| t.born));
        for &task in &tasks {
            self.remove_task(task);
        }
        tasks.into_iter().map(TaskId::key).collect()
    }

    /// Stops tracking an instance (after its tasks were taken and closed).
    pub fn forget_instance(&mut self, id: InstanceId) {
        if let Some(record) = self.instances.remove(&id) {
            if let Some(ids) = self.on_entity.get_mut(&record.entity) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    self.on_entity.remove(&record.entity);
                }
            }
            self.departed.insert(id, (record.entity, record.path));
        }
        self.gone.push(id);
    }

    /// Whether the Lua task tables and environment table should be rebuilt: Lua tables never
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

    /// Makes a task for `instance`; returns its key.
    fn insert_task(&mut self, instance: InstanceId) -> TaskId {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        });
        self.born += 1;
        let slot = &mut self.slots[index as usize];
        slot.task = Some(Task { instance, born: self.born });
        let id = TaskId { index, generation: slot.generation };
        if let Some(record) = self.instances.get_mut(&instance) {
            record.tasks.insert(id);
        }
        self.live += 1;
        self.task_peak = self.task_peak.max(self.live);
        id
    }

    /// Forgets a task: its timers go stale.
    fn remove_task(&mut self, id: TaskId) -> bool {
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
        if let Some(record) = self.instances.get_mut(&task.instance) {
            record.tasks.remove(&id);
        }
        self.live -= 1;
        self.sweep_timers();
        true
    }

    /// Forgets the task Lua calls `key`, if it is alive.
    pub fn remove_key(&mut self, key: i64) -> Option<InstanceId> {
        let id = self.by_key(key)?;
        let instance = self.task(id).map(|t| t.instance);
        self.remove_task(id);
        instance
    }

    /// Drops timers of dead tasks once they outnumber live tasks, so cancelled sleepers do not
    /// keep memory until their deadline.
    fn sweep_timers(&mut self) {
        let stale_limit = 2 * self.live + 1024;
        let slots = &self.slots;
        let alive = |t: &Timer| {
            slots
                .get(t.task.index as usize)
                .is_some_and(|s| s.generation == t.task.generation && s.task.is_some())
        };
        for queue in [&mut self.game_timers, &mut self.real_timers] {
            if queue.len() > stale_limit {
                queue.retain(alive);
            }
        }
    }

    /// Registers a timer for the task Lua calls `key`.
    pub fn add_timer(&mut self, key: i64, reg: f64, clock: i64, seconds: f64, stored_args: bool) {
        let Some(task) = self.by_key(key) else { return };
        let clock = if clock == kind::REAL { ClockKind::Real } else { ClockKind::Game };
        let since = self.clock.now(clock);
        let timer = Timer { task, reg, clock, since, stored_args };
        let at = since.saturating_add(seconds_to_nanos(seconds).unwrap_or(0));
        match clock {
            ClockKind::Game => self.game_timers.insert_at(at, timer),
            ClockKind::Real => self.real_timers.insert_at(at, timer),
        };
    }

    /// Timers that fell due this frame, game time first, each by deadline then order made:
    /// `(key, registration, resume value)`.
    pub fn due_timers(&mut self) -> Vec<(i64, f64, Value)> {
        let mut due = Vec::new();
        let clock = self.clock;
        for (queue, now) in [(&mut self.game_timers, clock.game_ns), (&mut self.real_timers, clock.real_ns)] {
            while let Some((_, t)) = queue.poll_expired(now) {
                due.push(t);
            }
        }
        due.into_iter()
            .filter(|t| self.task(t.task).is_some())
            .map(|t| {
                let value = if t.stored_args {
                    Value::LightUserData(args_marker())
                } else {
                    Value::Number(nanos_to_seconds(clock.now(t.clock).saturating_sub(t.since)))
                };
                (t.task.key(), t.reg, value)
            })
            .collect()
    }

    /// Live tasks as `(key, instance, birth number)`, oldest first (for the task inspector).
    pub fn task_keys(&self) -> Vec<(i64, InstanceId, u64)> {
        let mut found: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.task.as_ref().map(|t| (i as i64 + 1, t.instance, t.born)))
            .collect();
        found.sort_by_key(|t| t.2);
        found
    }

    /// The instance and birth number of the live task Lua calls `key`.
    pub fn task_owner(&self, key: i64) -> Option<(InstanceId, u64)> {
        self.by_key(key).and_then(|t| self.task(t)).map(|t| (t.instance, t.born))
    }

    /// The timer task `key` waits on under registration `reg`: its clock, its deadline (ns) and
    /// whether it starts a `task.delay`. A scan of every timer: for the inspector only.
    pub fn timer_of(&self, key: i64, reg: f64) -> Option<(ClockKind, u64, bool)> {
        let id = self.by_key(key)?;
        self.game_timers
            .iter()
            .chain(self.real_timers.iter())
            .find(|(_, t)| t.task == id && t.reg == reg)
            .map(|(at, t)| (t.clock, at, t.stored_args))
    }

    /// Records a failure of `instance` (logged now, written as a message after the step).
    pub fn report(
        &mut self,
        instance: Option<InstanceId>,
        kind: ScriptErrorKind,
        message: String,
        traceback: String,
    ) {
        let (entity, script) =
            instance.and_then(|i| self.name_of(i)).unwrap_or_else(|| (Entity::PLACEHOLDER, Arc::from("?")));
        self.report_as(entity, &script, kind, message, traceback);
    }

    /// Records a failure of the script at `script` on `entity` (a placeholder when no instance
    /// of it runs).
    pub fn report_as(
        &mut self,
        entity: Entity,
        script: &str,
        kind: ScriptErrorKind,
        message: String,
        traceback: String,
    ) {
        let script = script.to_string();
        if traceback.is_empty() {
            error!("{script} ({entity}): {message}");
        } else {
            error!("{script} ({entity}): {message}\n{traceback}");
        }
        self.errors.push(ScriptError { entity, script, message, traceback, kind });
    }
}

/// The instruction budget of one resume, shared with the VM's hook.
///
/// The step never calls Rust per resume, so the hook notices a new resume by the serial number
/// the Lua step counts resumes with (read only when the hook fires, every 1/16 of the budget).
///
/// In the default mode (Lua 5.4) no thread has the hook until the watch's watchdog arms it on a
/// resume that ran for a slice ([`crate::hook::Watch`]); a hook armed for an earlier resume takes
/// itself off at its first call. With `exact_instruction_count` (and under LuaJIT and Luau) every
/// thread has it from its first instruction.
///
/// Once a resume has spent its budget it is *spent* until the step has cancelled the task: every
/// later hook call on any thread stops the running code again at once (the hook of the thread it
/// fired on, and of the resumed task's thread, then fires on every instruction), so no `pcall`,
/// nested coroutine or C callback keeps the task running. The step sees `state.spent` when the
/// resume returns and cancels the task ([`spent`]). The crate's own Lua code is let finish (on
/// the main thread, where the step runs, always; on a task's thread, for a bounded number of
/// instructions), so the task bookkeeping it was doing stays whole.
#[derive(Default)]
pub(crate) struct Budget {
    /// Hook calls allowed per resume (0: unlimited).
    limit: AtomicU64,
    /// Instructions between two hook calls while nothing is spent.
    every: std::sync::atomic::AtomicI32,
    calls: AtomicU64,
    serial: AtomicU64,
    /// Hook calls let through in the crate's own code since the budget was spent.
    grace: AtomicU64,
    /// Set when the budget ran out, until the step has cancelled the task.
    spent: std::sync::Mutex<Option<Spent>>,
    /// `Thread::to_pointer()` of the main thread, where the step's own Lua code runs.
    main: AtomicU64,
    /// Instructions one hook call stands for (`every`, or 8 for a Luau interrupt).
    per_call: AtomicU64,
    /// Steps of work outside the VM not charged yet.
    pending: AtomicU64,
    /// Set in the default mode (Lua 5.4): threads carry no hook until the watchdog arms one.
    watch: std::sync::OnceLock<Arc<crate::hook::Watch>>,
    /// Set from when the budget runs out until [`Budget::reset`]: Luau's interrupt then calls
    /// the budget at every call and loop edge, not once a batch (see `hook`).
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// What the hook that raises where code cannot yield raises (Lua 5.4; see `hook::raise_next`).
    #[cfg(not(any(feature = "luajit", feature = "luau")))]
    raiser: crate::hook::Raiser,
}

/// Steps of work outside the VM (pattern matching) charged at once.
const WORK_BATCH: u64 = 4096;

/// The chunk names of the crate's own Lua code (`=bevy_lua_coroutines/...`), as `short_src` shows them.
pub(crate) const LIBRARY_SOURCE: &str = "bevy_lua_coroutines/";

/// `file:line` of the innermost script function (not the crate's own code) among the frames
/// `frame(level)` describes (its `short_src` and current line), from level `from` outwards.
pub(crate) fn script_frame(from: usize, frame: impl FnMut(usize) -> Option<(String, Option<i32>)>) -> String {
    (from..64)
        .map_while(frame)
        .find(|(src, _)| !src.starts_with(LIBRARY_SOURCE) && src != "[C]")
        .map_or_else(|| "?".into(), |(src, line)| file_line(&src, line))
}

/// `src:line`, or `src:?` without a line: how a budget stop names where it happened.
pub(crate) fn file_line(src: &str, line: Option<i32>) -> String {
    format!("{src}:{}", line.map_or_else(|| "?".into(), |l| l.to_string()))
}

/// `file:line` of the innermost script function on the running thread's stack, as mlua sees it.
fn script_location(lua: &Lua) -> String {
    script_frame(1, |level| {
        lua.inspect_stack(level, |d| {
            (d.source().short_src.as_deref().unwrap_or("?").to_string(), d.current_line().map(|l| l as i32))
        })
    })
}

/// Where a budget ran out, and the thread of the task whose resume it was.
#[derive(Clone)]
struct Spent {
    at: String,
    /// The instance of the task whose resume it was (when it had one), for the report.
    instance: Option<InstanceId>,
    /// `at` is in the crate's own code: the first place script code is stopped replaces it.
    at_library: bool,
    /// `Thread::to_pointer()` of the resumed task's thread (0: none, outside any task).
    resumed: usize,
}

/// Hook calls the crate's own Lua code may still take once a budget is spent (each one
/// instruction): enough to finish any bookkeeping, too few to loop.
const GRACE: u64 = 100_000;

impl Budget {
    /// Names the main thread (the step's own Lua code there is never stopped, only the script
    /// code it calls).
    pub fn set_main(&self, main: *const c_void) {
        self.main.store(main as u64, Ordering::Relaxed);
    }

    /// Selects the default mode: hooks are armed by `watch`, the rest of the time threads have none.
    #[cfg_attr(any(feature = "luajit", feature = "luau"), allow(dead_code))]
    pub fn set_watch(&self, watch: Arc<crate::hook::Watch>) {
        let _ = self.watch.set(watch);
    }

    /// Makes the hook of `thread` fire every `count` instructions; in the default mode, gives it
    /// the hook first if it has none.
    fn arm(&self, thread: *const c_void, count: i32) {
        match self.watch.get() {
            Some(watch) => watch.arm(thread, count),
            None => crate::hook::set_count(thread, count),
        }
    }

    /// In the default mode, takes the hook off a thread mlua just made (mlua gives every thread
    /// it makes the global hook): it runs hook-free until the watchdog arms it.
    pub fn unhook(&self, thread: &Thread) {
        if let Some(watch) = self.watch.get() {
            watch.disarm(thread.to_pointer());
        }
    }

    /// Whether every instruction of script code is counted: a limit is set and no watchdog arms
    /// hooks lazily (exact mode, LuaJIT, Luau). Code that makes tasks must then run on a thread
    /// that carries the hook, which the threads it makes inherit.
    pub fn counts_exactly(&self) -> bool {
        self.limit.load(Ordering::Relaxed) != 0 && self.watch.get().is_none()
    }

    /// Sets how many hook calls one resume may take, `every` instructions apart.
    pub fn set_limit(&self, calls: u64, every: i32, per_call: u64) {
        self.limit.store(calls, Ordering::Relaxed);
        self.every.store(every, Ordering::Relaxed);
        self.per_call.store(per_call, Ordering::Relaxed);
    }

    /// The flag set while the budget is spent (for Luau's interrupt, see `hook`).
    #[cfg(feature = "luau")]
    pub fn stopping(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.stopping.clone()
    }

    fn limit(&self) -> u64 {
        match self.limit.load(Ordering::Relaxed) {
            0 => u64::MAX,
            n => n,
        }
    }

    fn spent(&self) -> Option<Spent> {
        self.spent.lock().ok()?.clone()
    }

    /// The raiser the VM's registry points to (see `hook::install_raiser`).
    #[cfg(not(any(feature = "luajit", feature = "luau")))]
    pub fn raiser(&self) -> &crate::hook::Raiser {
        &self.raiser
    }

    /// The step cancelled the task that spent its budget: the next resume starts afresh.
    pub fn reset(&self) {
        #[cfg(not(any(feature = "luajit", feature = "luau")))]
        self.raiser.set(None);
        if let Ok(mut slot) = self.spent.lock() {
            *slot = None;
        }
        self.grace.store(0, Ordering::Relaxed);
        self.calls.store(0, Ordering::Relaxed);
        self.stopping.store(false, Ordering::Relaxed);
        if let Some(watch) = self.watch.get() {
            watch.spent.store(false, Ordering::Release);
        }
    }

    /// Called by the VM's hook on the running thread (`in_library`: whether the running function
    /// is the crate's own Lua code): counts one call against the current resume and decides
    /// whether the running code must stop.
    #[cfg(not(feature = "luau"))]
    pub fn on_hook(
        &self,
        lua: &Lua,
        location: impl FnOnce() -> String,
        in_library: impl FnOnce() -> bool,
    ) -> mlua::Result<VmState> {
        self.on_thread_hook(lua, running_thread(lua), 1, location, in_library, || script_location(lua))
    }

    /// [`Budget::on_hook`] for a hook that names the running thread `thread` itself, and finds
    /// the innermost script function's `file:line` with `script_at` (Luau's interrupt, which
    /// runs outside mlua's callbacks: there mlua's view of the running thread is not `thread`),
    /// counting `weight` calls at once.
    pub fn on_thread_hook(
        &self,
        lua: &Lua,
        thread: *const c_void,
        weight: u64,
        location: impl FnOnce() -> String,
        in_library: impl FnOnce() -> bool,
        script_at: impl FnOnce() -> String,
    ) -> mlua::Result<VmState> {
        let spent = self.spent();
        if let Some(watch) = self.watch.get()
            && spent.is_none()
            && watch.stale()
        {
            // Armed for a resume that is over: this one runs hook-free until it runs long.
            watch.disarm(thread);
            return Ok(VmState::Continue);
        }
        if let Some(mut spent) = spent {
            crate::hook::set_count(thread, 1);
            if in_library() {
                let main = thread as u64 == self.main.load(Ordering::Relaxed);
                if main || self.grace.fetch_add(1, Ordering::Relaxed) < GRACE {
                    return Ok(VmState::Continue);
                }
            } else if spent.at_library {
                spent.at = location();
                spent.at_library = false;
                if let Ok(mut slot) = self.spent.lock() {
                    *slot = Some(spent.clone());
                }
            }
            return self.stop(thread, &spent);
        }
        let every = self.every.load(Ordering::Relaxed).max(1);
        crate::hook::set_count(thread, every);
        // (Before the step's tables exist, while the VM is being made, nothing is a task.)
        let Some((current, serial)) = try_current_task(lua) else {
            return Ok(VmState::Continue);
        };
        if current == 0 {
            return Ok(VmState::Continue);
        }
        if self.serial.swap(serial, Ordering::Relaxed) != serial {
            self.calls.store(0, Ordering::Relaxed);
        }
        let calls = self.calls.fetch_add(weight, Ordering::Relaxed) + weight;
        if calls <= self.limit() {
            return Ok(VmState::Continue);
        }
        let at_library = in_library();
        // In the crate's own code, the script line that called into it, if there is one (a stop
        // in script code later replaces it with its own line).
        let at = match at_library.then(script_at) {
            Some(at) if at != "?" => at,
            _ => location(),
        };
        let spent = self.exhaust(lua, thread, current, at, at_library);
        if at_library {
            return Ok(VmState::Continue);
        }
        self.stop(thread, &spent)
    }

    /// Marks the budget of the resume of task `current` spent at `at`: from now on the running
    /// thread `running` and the task's own thread stop at every instruction.
    fn exhaust(
        &self,
        lua: &Lua,
        running: *const c_void,
        current: i64,
        at: String,
        at_library: bool,
    ) -> Spent {
        let (resumed, state) = {
            let refs = refs(lua);
            // The thread is alive: the task table holds it.
            (refs.thread_of.call::<Option<Thread>>(current).ok().flatten(), refs.state.clone())
        };
        let resumed = resumed.as_ref().map_or(0, |t| t.to_pointer() as usize);
        let instance = sched(lua).instance_of(current);
        let spent = Spent { at, instance, at_library, resumed };
        if let Ok(mut slot) = self.spent.lock() {
            *slot = Some(spent.clone());
        }
        self.stopping.store(true, Ordering::Relaxed);
        if !crate::hook::set_spent_flag(running, true, current) {
            let _ = state.raw_set("spent", true);
        }
        if let Some(watch) = self.watch.get() {
            watch.spent.store(true, Ordering::Release);
        }
        self.arm(running, 1);
        self.arm(resumed as *const c_void, 1);
        spent
    }

    /// Charges `steps` of work done outside the VM (pattern matching), one step for one
    /// instruction, to the running resume. Counted in batches: only every [`WORK_BATCH`] steps
    /// does it look at the resume (a call into Lua). Fails with the message to raise once the
    /// budget is spent.
    pub fn work(&self, lua: &Lua, steps: u64) -> Result<(), String> {
        if self.limit.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        if let Some(spent) = self.spent() {
            return Err(format!("{}: script exceeded its instruction budget", spent.at));
        }
        let pending = self.pending.fetch_add(steps, Ordering::Relaxed) + steps;
        if pending < WORK_BATCH {
            return Ok(());
        }
        let per_call = self.per_call.load(Ordering::Relaxed).max(1);
        self.pending.store(pending % per_call, Ordering::Relaxed);
        let (current, serial) = current_task(lua);
        if current == 0 {
            return Ok(());
        }
        if self.serial.swap(serial, Ordering::Relaxed) != serial {
            self.calls.store(0, Ordering::Relaxed);
        }
        let calls = self.calls.fetch_add(pending / per_call, Ordering::Relaxed) + pending / per_call;
        if calls <= self.limit() {
            return Ok(());
        }
        let at = script_location(lua);
        let spent = self.exhaust(lua, running_thread(lua), current, at, false);
        Err(format!("{}: script exceeded its instruction budget", spent.at))
    }

    /// Stops the code running on `thread`: the resumed task itself yields where it can (which
    /// stops it even inside `pcall`); anything else raises (under Lua 5.4 at the next
    /// instruction, from a hook of the crate's own: see `hook::raise_next`).
    fn stop(&self, thread: *const c_void, spent: &Spent) -> mlua::Result<VmState> {
        if thread as usize == spent.resumed && crate::hook::yieldable(thread) {
            return Ok(VmState::Yield);
        }
        let message = format!("{}: script exceeded its instruction budget", spent.at);
        #[cfg(not(any(feature = "luajit", feature = "luau")))]
        {
            self.raiser.set(Some(message));
            crate::hook::raise_next(self.watch.get().map(|w| &**w), thread);
            Ok(VmState::Continue)
        }
        #[cfg(any(feature = "luajit", feature = "luau"))]
        {
            let _ = self;
            Err(mlua::Error::runtime(message))
        }
    }
}

/// Lua values the Rust side uses, created once with the VM.
pub(crate) struct Refs {
    /// `step.shared`: the counters the step shares with Rust and its raw loop (slots named in
    /// `fastpath`), among them the task being resumed; read without calling into Lua.
    pub shared: Table,
    /// `step.thread_of(key) -> thread`: the thread of a task (read when the budget runs out).
    pub thread_of: Function,
    /// Instance id -> environment table.
    pub envs: Table,
    /// `step.run()`: resumes everything ready.
    pub run: Function,
    /// `step.wake(key, reg, value)`: queues a task a timer woke.
    pub wake: Function,
    /// `step.start(co)`: makes a thread a task of the host instance and queues it.
    pub start: Function,
    /// `step.detach(key, id) -> bool`: forgets a task of instance `id`, which is going away, and
    /// leaves its thread to `step.close_ended`; false if it had none.
    pub detach: Function,
    /// `step.kill(key) -> ok, message, traceback`: forgets a task whose instance is going away and
    /// closes its thread.
    pub kill: Function,
    /// `step.close_ended(from) -> left, any, raised`: closes the threads of tasks ended from
    /// outside their instance, from position `from` of the list on, under one budget.
    pub close_ended: Function,
    /// `step.ending_mark() -> from`: where the threads the work starting now ends will go.
    pub ending_mark: Function,
    /// `step.claim_ending(ids, mark) -> from, below`: moves the threads of the instances in the
    /// set `ids` to the end of the list, and says where they start and how many entries moved
    /// from before `mark`.
    pub claim_ending: Function,
    /// `step.compact()`: rebuilds the Lua task tables.
    pub compact: Function,
    /// `step.close(co) -> ok, message, traceback`: closes a suspended thread.
    pub close: Function,
    /// `debug.traceback`, kept even when scripts do not get `debug`.
    pub traceback: Function,
    /// The scheduler state shared with Lua (`spent` is set there when a budget runs out).
    pub state: Table,
    /// `tick(gone)` from `lua/promise.lua`: reports unhandled rejections; called after every step
    /// with the ids of the instances forgotten since the last call (or nil).
    pub tick: Function,
}

/// Borrows the Lua values the Rust side uses (a shared borrow: it may be held across calls into Lua).
pub(crate) fn refs(lua: &Lua) -> mlua::AppDataRef<'_, Refs> {
    lua.app_data_ref::<Refs>().expect("the scheduler tables are installed with the VM")
}

/// Borrows the scheduler. Never hold the borrow across a call into Lua code.
pub(crate) fn sched(lua: &Lua) -> mlua::AppDataRefMut<'_, Scheduler> {
    lua.app_data_mut::<Scheduler>().expect("the scheduler is installed with the VM")
}

/// The task being resumed (0: none) and the number of resumes so far.
pub(crate) fn current_task(lua: &Lua) -> (i64, u64) {
    try_current_task(lua).unwrap_or_else(|| refs(lua).current())
}

/// The thread running now, named as `Thread::to_pointer` names it (its `lua_State`). Read
/// without touching the thread's stack: the budget's hook asks for it at any instruction, also
/// when the VM is out of memory, and under Luau `Lua::current_thread` then panics (it asserts
/// that the stack can grow by one slot, which fails when growing it cannot allocate).
fn running_thread(lua: &Lua) -> *const c_void {
    lua.state() as *const c_void
}

/// [`current_task`], or `None` before the VM's step tables exist.
fn try_current_task(lua: &Lua) -> Option<(i64, u64)> {
    crate::fastpath::current(lua).or_else(|| lua.app_data_ref::<Refs>().map(|refs| refs.current()))
}

impl Refs {
    /// The task being resumed (0: none) and the number of resumes so far, read from the step's
    /// shared table (no call into Lua).
    pub fn current(&self) -> (i64, u64) {
        use crate::fastpath::{CURRENT, SERIAL};
        (self.shared.raw_get(CURRENT).unwrap_or(0), self.shared.raw_get(SERIAL).unwrap_or(0))
    }

    /// How many error values' `__tostring`s run now as no instance (see [`running_as`]).
    fn nobody_runs(&self) -> i64 {
        self.shared.raw_get(crate::fastpath::NOBODY_RUNS).unwrap_or(0)
    }

    /// Records that no task is being resumed (after a step that raised out of a resume).
    pub fn clear_current(&self) -> mlua::Result<()> {
        use crate::fastpath::{CURRENT, DEPTH, NOBODY_RUNS};
        self.shared.raw_set(CURRENT, 0)?;
        self.shared.raw_set(NOBODY_RUNS, 0)?;
        self.shared.raw_set(DEPTH, 0)
    }
}

/// The instance Lua code runs for right now.
pub(crate) fn current_instance(lua: &Lua) -> Option<InstanceId> {
    let (current, _) = current_task(lua);
    running_as(lua, current)
}

/// Sets aside the count of error values' `__tostring`s running as no instance (see
/// [`running_as`]) until dropped: for Rust code that names the instance work is for itself.
pub(crate) struct NobodyPaused<'a> {
    lua: &'a Lua,
    saved: i64,
}

impl<'a> NobodyPaused<'a> {
    pub(crate) fn new(lua: &'a Lua) -> Self {
        let refs = refs(lua);
        let saved = refs.nobody_runs();
        if saved != 0 {
            let _ = refs.shared.raw_set(crate::fastpath::NOBODY_RUNS, 0);
        }
        drop(refs);
        Self { lua, saved }
    }
}

impl Drop for NobodyPaused<'_> {
    fn drop(&mut self) {
        if self.saved != 0 {
            let _ = refs(self.lua).shared.raw_set(crate::fastpath::NOBODY_RUNS, self.saved);
        }
    }
}

/// The instance code runs as while task `current` (or the host, see [`Scheduler::instance_of`])
/// runs: none while an error value's `__tostring` runs (`as_nobody` in `lua/task.lua` counts
/// those in a slot of the step's shared table), whatever task is running.
fn running_as(lua: &Lua, current: i64) -> Option<InstanceId> {
    let nobody = lua.app_data_ref::<Refs>().is_some_and(|r| r.nobody_runs() > 0);
    if nobody { None } else { sched(lua).instance_of(current) }
}

/// While alive, Lua code that runs outside any task runs on behalf of an instance (see [`host`]);
/// dropping it restores the host instance that was there before.
#[must_use = "the host instance is restored when the guard is dropped"]
pub(crate) struct HostGuard<'a> {
    lua: &'a Lua,
    previous: Option<InstanceId>,
}

/// Makes `instance` the host instance (the one Lua code outside any task runs for: a chunk being
/// set up, tasks being closed, completions being settled) until the returned guard is dropped,
/// which restores the previous one, so hosts nest.
pub(crate) fn host(lua: &Lua, instance: Option<InstanceId>) -> HostGuard<'_> {
    let previous = std::mem::replace(&mut sched(lua).host_instance, instance);
    HostGuard { lua, previous }
}

impl Drop for HostGuard<'_> {
    fn drop(&mut self) {
        sched(self.lua).host_instance = self.previous;
    }
}

/// What the step's current task slot holds while it closes a task of instance `id` that was ended
/// from outside it (`step.close_ended`): `CLOSING - id`. That instance is the host then, and no
/// task starts for it.
pub(crate) const CLOSING: i64 = -2;

/// Makes a task of `thread` for the instance that owns task `current` (or the host instance).
/// Fails with the message for the script if the instance is at its live-task quota.
pub(crate) fn adopt(lua: &Lua, current: i64) -> mlua::Result<Result<(i64, u64), String>> {
    let running = running_as(lua, current);
    let mut s = sched(lua);
    // (A forgotten instance is no script's any more: a task made for it would run on, with no
    // entity and nothing to cancel it.)
    let Some(instance) = running.filter(|id| s.instances.contains_key(id)) else {
        return Err(mlua::Error::runtime("the task API was used outside of a script"));
    };
    if current <= CLOSING || s.closing.contains(&instance) {
        return Ok(Err("cannot start a task while this script's tasks are being cancelled".into()));
    }
    if let (Some(quota), Some(record)) = (s.task_quota, s.instances.get(&instance))
        && record.tasks.len() >= quota
    {
        return Ok(Err(format!(
            "too many live tasks: this instance has {} (max_tasks_per_instance is {quota})",
            record.tasks.len()
        )));
    }
    Ok(Ok((s.insert_task(instance).key(), instance.0)))
}

/// Instance `instance` holds about `kib` KiB, past its memory quota: every task of it is
/// cancelled and it is reported (its globals stay until its entity goes).
pub(crate) fn over_memory_quota(lua: &Lua, instance: InstanceId, kib: f64, quota_kib: f64) {
    let message = format!(
        "memory quota exceeded: this instance holds about {} KiB (memory_per_instance is {} KiB); its tasks are cancelled",
        kib.round(),
        quota_kib.round()
    );
    sched(lua).report(Some(instance), ScriptErrorKind::Quota, message, String::new());
    cancel_instance(lua, instance, None);
}

/// The task `key` ended (finished or let go).
pub(crate) fn release(lua: &Lua, key: i64) {
    sched(lua).remove_key(key);
}

/// Charges `steps` of work done outside the VM to the running resume's instruction budget (see
/// [`Budget::work`]); fails with the message to raise once it is spent. Nothing without a budget.
pub(crate) fn charge_work(lua: &Lua, steps: u64) -> Result<(), String> {
    let budget = lua.app_data_ref::<Arc<Budget>>().map(|b| b.clone());
    budget.map_or(Ok(()), |b| b.work(lua, steps))
}

/// The task `key` failed with `message`; `traceback` is Lua's.
pub(crate) fn fail(lua: &Lua, key: i64, message: String, traceback: String) {
    let mut s = sched(lua);
    let instance = s.instance_of(key);
    s.remove_key(key);
    s.report(instance, ScriptErrorKind::Runtime, message, traceback_part(&traceback));
}

/// A budget ran out while Lua code ran for task `key` (or, for a key that is no task, for
/// `owner` or the host instance): reports it (with `thread`'s traceback, taken before the step
/// closes it) and lets the next resume start afresh. The Lua side has forgotten the task.
pub(crate) fn spent(lua: &Lua, key: i64, owner: Option<InstanceId>, thread: Option<&Thread>) {
    let Some(budget) = lua.app_data_ref::<Arc<Budget>>().map(|b| b.clone()) else { return };
    let (at, spent_by) = budget.spent().map_or_else(|| ("?".into(), None), |s| (s.at, s.instance));
    let traceback = thread.map(|t| thread_traceback(lua, t)).unwrap_or_default();
    let instance = {
        let mut s = sched(lua);
        let instance = owner.or_else(|| s.instance_of(key)).or(spent_by);
        s.remove_key(key);
        instance
    };
    let message = format!("{at}: script exceeded its instruction budget");
    sched(lua).report(instance, ScriptErrorKind::Budget, message, traceback);
    if let Some(t) = thread {
        // Its to-be-closed variables run, and stop at their first instruction: still spent.
        let close = refs(lua).close.clone();
        let _ = close.call::<(bool, Value)>(t);
    }
    budget.reset();
    let _ = refs(lua).state.raw_set("spent", false);
}

fn thread_traceback(lua: &Lua, thread: &Thread) -> String {
    let traceback = refs(lua).traceback.clone();
    traceback.call::<String>(thread).map(|t| traceback_part(&t)).unwrap_or_default()
}

/// Reports what closing a thread (`step.close` or `step.kill`: `ok, message, traceback`) raised,
/// if anything: a `__close` that raised, with the traceback of where the thread stood.
fn report_closed(
    lua: &Lua,
    closed: mlua::Result<(bool, Option<mlua::LuaString>, Option<mlua::LuaString>)>,
    instance: Option<InstanceId>,
) {
    let (message, traceback) = match closed {
        Ok((true, _, _)) => return,
        Ok((false, message, traceback)) => (
            message.map_or_else(String::new, |m| m.to_string_lossy()),
            traceback.map_or_else(String::new, |t| traceback_part(&t.to_string_lossy())),
        ),
        Err(e) => crate::error::split_traceback(&e),
    };
    sched(lua).report(instance, ScriptErrorKind::Runtime, message, traceback);
}

/// Cancels every task of an instance (but `keep`, the task running now, if it is one of them:
/// it finishes its resume) and the Rust work it started; the instance stays. Nothing resumes the
/// tasks again. Their to-be-closed variables close in the order the tasks were made: at once when
/// a task of the instance itself runs now (its entity despawned by its own script; the handlers
/// are charged to that task's budget), and otherwise once the work that cancelled them is over
/// ([`close_ended`]), each as its instance, all under one budget: a game that despawns 200
/// entities whose `__close` handlers loop spends one budget on them in a frame, not 200.
pub(crate) fn cancel_instance(lua: &Lua, id: InstanceId, keep: Option<i64>) {
    let (current, _) = current_task(lua);
    if current > 0 && running_as(lua, current) == Some(id) {
        let tasks = take_instance(lua, id, keep);
        let _host = host(lua, Some(id));
        let kill = refs(lua).kill.clone();
        sched(lua).closing.push(id);
        for key in tasks {
            report_closed(lua, kill.call(key), Some(id));
        }
        sched(lua).closing.pop();
        return;
    }
    if detach_instance(lua, id, keep) > 0 {
        sched(lua).closes_due = true;
    }
}

/// Stops tracking the tasks of an instance (but `keep`) and the Rust work it started; returns the
/// tasks' keys, in the order they were made.
fn take_instance(lua: &Lua, id: InstanceId, keep: Option<i64>) -> Vec<i64> {
    let tasks = sched(lua).take_instance_tasks(id, keep);
    drop_instance_work(lua, id);
    tasks
}

/// Drops the Rust work an instance has in flight (each extension's `cancel_instance` hook):
/// when its tasks are cancelled, and again when it is let go, for the work its tasks' `__close`
/// handlers started in between.
pub(crate) fn drop_instance_work(lua: &Lua, id: InstanceId) {
    let mut i = 0;
    while let Some(hook) = step_hook(lua, |h| h.cancel_instance.get(i)) {
        hook(lua, id);
        i += 1;
    }
}

/// Cancels every task of an instance (but `keep`) and the Rust work it started, and leaves their
/// threads to `step.close_ended`, not closed yet, in the order the tasks were made: nothing resumes
/// them again. Returns how many there were.
fn detach_instance(lua: &Lua, id: InstanceId, keep: Option<i64>) -> usize {
    let tasks = take_instance(lua, id, keep);
    let detach = refs(lua).detach.clone();
    tasks.into_iter().filter(|&key| detach.call::<bool>((key, id.0)).unwrap_or(false)).count()
}

/// Cancels now the instances on `entity`, which a script despawned during the step, so none of
/// their tasks resumes again in this step (the despawning task itself finishes its resume). The
/// next sync forgets them. See [`cancel_instance`] for when their `__close` handlers run: another
/// instance's close once the step's resumes are over (closed inside the despawner's task, they
/// ran as the despawner, where they could list and cancel its tasks).
pub(crate) fn cancel_despawned(lua: &Lua, entity: Entity) {
    let (current, _) = current_task(lua);
    let keep = (current > 0).then_some(current);
    let ids = sched(lua).instances_on(entity);
    for id in ids {
        if let Some(record) = sched(lua).instances.get_mut(&id) {
            record.despawned = true;
        }
        cancel_instance(lua, id, keep);
    }
}

/// Where the threads of the tasks that the work starting now ends from outside their instance
/// will be kept (see [`close_ended_from`]): the sync and a reload close only those.
pub(crate) fn ending_mark(lua: &Lua) -> i64 {
    let ending_mark = refs(lua).ending_mark.clone();
    ending_mark.call(()).unwrap_or(1)
}

/// Moves the threads left to close of `instances` (also those the step left over) after all the
/// others, and returns where they start (see [`close_ended_from`]): a reload closes every ended
/// task of the instances it restarts before their new code runs. `mark`, a mark the enclosing
/// work holds ([`ending_mark`]), is moved down past the entries that moved from before it.
pub(crate) fn claim_ending(lua: &Lua, instances: &[InstanceId], mark: &mut Option<i64>) -> mlua::Result<i64> {
    let ids = lua.create_table_with_capacity(0, instances.len())?;
    for id in instances {
        ids.raw_set(id.0, true)?;
    }
    let claim = refs(lua).claim_ending.clone();
    let (from, below): (i64, i64) = claim.call((ids, mark.unwrap_or(i64::MAX)))?;
    if let Some(m) = mark {
        *m -= below;
    }
    Ok(from)
}

/// Closes the threads of the tasks that were cancelled from outside their instance (see
/// [`Scheduler::closes_due`]), each as work of its own instance, in the order they were ended, all
/// under one budget of their own (`step.close_ended`): a script that despawns many entities whose
/// `__close` handlers loop costs the frame one budget, as it did when they closed inside its task,
/// and so does a game that despawns them. Called after the step's resumes for all of them.
pub(crate) fn close_ended(lua: &Lua) {
    close_ended_from(lua, 1);
}

/// [`close_ended`] for the threads ended since `mark` ([`ending_mark`]) only: the sync and the
/// hot reload close what they cancelled, while those the step left over wait for the next step,
/// where scripts reach the world. Returns how many entries from `mark` on are left (the budget
/// ran out), which stay for the next budget.
pub(crate) fn close_ended_from(lua: &Lua, mark: i64) -> usize {
    if !sched(lua).closes_due {
        return 0;
    }
    let close_ended = refs(lua).close_ended.clone();
    match close_ended.call::<(usize, bool, Option<String>)>(mark) {
        Ok((left, any, raised)) => {
            if let Some(e) = raised {
                error!("bevy_lua_coroutines: closing ended tasks raised {e}");
            }
            sched(lua).closes_due = any;
            left
        }
        Err(e) => {
            error!("bevy_lua_coroutines: closing ended tasks raised {e}");
            0
        }
    }
}

/// For `step.close_ended`: the `__close` handlers of an ended task of `instance` raised `message`
/// (the thread stood at `traceback`); reported as that instance's.
pub(crate) fn close_failed(lua: &Lua, instance: InstanceId, message: &str, traceback: &str) {
    let traceback = traceback_part(traceback);
    sched(lua).report(Some(instance), ScriptErrorKind::Runtime, message.to_string(), traceback);
}

/// Work an extension does at the start of every step.
pub(crate) type StepHook = fn(&Lua) -> mlua::Result<()>;

/// Work the extensions (the bridge, say) hook into the step, registered through
/// [`Base`](crate::runtime::Base) when the VM is made; kept in the VM's app data.
#[derive(Default)]
pub(crate) struct StepHooks {
    /// Called at the start of every step, before the timers that fell due are queued, in the
    /// order registered: completions coming in (Rust results settling their promises), so what
    /// they wake runs in this step. An error is logged and the step goes on.
    pub before_step: Vec<(&'static str, StepHook)>,
    /// Called when every task of an instance is cancelled (its entity despawned, its script
    /// removed or reloaded, its memory quota spent): the Rust work it started stops.
    pub cancel_instance: Vec<fn(&Lua, InstanceId)>,
}

/// The `i`th of the step hooks `pick` selects, copied out so no borrow is held while it runs.
pub(crate) fn step_hook<T: Copy>(lua: &Lua, pick: impl Fn(&StepHooks) -> Option<&T>) -> Option<T> {
    lua.app_data_ref::<StepHooks>().and_then(|hooks| pick(&hooks).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_guard_restores_the_host_it_replaced() {
        let lua = Lua::new();
        lua.set_app_data(Scheduler::default());
        let host_now = || sched(&lua).instance_of(0);
        {
            let _outer = host(&lua, Some(InstanceId(1)));
            {
                let _inner = host(&lua, Some(InstanceId(2)));
                assert_eq!(host_now(), Some(InstanceId(2)));
            }
            assert_eq!(host_now(), Some(InstanceId(1)), "the outer host is back, not None");
            {
                let _none = host(&lua, None);
                assert_eq!(host_now(), None);
            }
            assert_eq!(host_now(), Some(InstanceId(1)));
        }
        assert_eq!(host_now(), None);
    }
}
