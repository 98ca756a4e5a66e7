//! Seeing what scripts do: the task list (what every task waits on, where it last yielded, how
//! often it ran and what it cost) and the per-script cost of stepping.
//!
//! Nothing here is on the step's path unless something asks. What a task waits on and where it
//! stands are worked out when the list is asked for, from what the scheduler keeps anyway and from
//! the suspended thread's stack (`lua/inspect.lua`). Counting and timing resumes is *tracking*:
//! off by default, turned on by [`LuaRuntime::set_tracking`] (the [`LuaDiagnosticsPlugin`](crate::LuaDiagnosticsPlugin)
//! and the runner's `--inspect` and `--stats` do). While it is on, the step brackets every resume
//! with two Rust calls that count it, time it (wall time of the resume, on the thread that steps)
//! and enter a `tracing` span named `lua script` whose `script` field is the script's path.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::log::tracing;
use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use mlua::{Function, Lua, Table, Thread, Value};

use crate::runtime::LuaRuntime;
use crate::scheduler::{self, InstanceId, sched};
use crate::time::{ClockKind, nanos_to_seconds};

/// What a task waits on.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TaskWait {
    /// It is the task running now (it asked for the list).
    Running,
    /// Queued to resume in the step under way.
    Ready,
    /// `task.wait(seconds)` (or `Promise.delay`, `Channel.after`): game time, due in `due_in`
    /// game seconds.
    Time {
        /// Game seconds until it resumes.
        due_in: f64,
    },
    /// `task.delay(seconds, f)`: a task that has not started yet, due in `due_in` game seconds.
    Delay {
        /// Game seconds until it starts.
        due_in: f64,
    },
    /// `task.waitRealtime(seconds)`: real time, due in `due_in` real seconds.
    RealTime {
        /// Real seconds until it resumes.
        due_in: f64,
    },
    /// `task.wait()` or `task.waitFrames(n)`: `frames` more frames (`None`: never, as with
    /// `task.waitFrames(math.huge)`).
    Frames {
        /// Frames until it resumes.
        frames: Option<u64>,
    },
    /// `task.waitUntil(predicate)`: checks its predicate every frame.
    Predicate,
    /// `await`, `expect` or `awaitStatus` on a promise, whose status (`Started`, ...) is given.
    Promise {
        /// The promise's `Promise.Status`.
        status: String,
    },
    /// `ch:receive()` (or `ch:iter()`) on `channel` (its text and a number that tells channels apart).
    Receive {
        /// The channel, as `Channel(unbuffered)#3`.
        channel: String,
    },
    /// `ch:send(v)` waiting for room or a receiver on `channel`.
    Send {
        /// The channel, as `Channel(4)#2`.
        channel: String,
    },
    /// `Channel.select` over `channels` (comma-separated).
    Select {
        /// The channels of its cases.
        channels: String,
    },
    /// Reading a stream (`read`, `readLine`, `forEach`...).
    Stream,
    /// Parked by something the inspector does not recognise.
    Parked,
    /// Nothing wakes it (it yielded without a wait request and script code holds it).
    Nothing,
}

impl fmt::Display for TaskWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running => write!(f, "running"),
            Self::Ready => write!(f, "ready"),
            Self::Time { due_in } => write!(f, "time (due in {due_in:.3} s)"),
            Self::Delay { due_in } => write!(f, "delay (starts in {due_in:.3} s)"),
            Self::RealTime { due_in } => write!(f, "real time (due in {due_in:.3} s)"),
            Self::Frames { frames: Some(n) } => write!(f, "frames ({n} left)"),
            Self::Frames { frames: None } => write!(f, "frames (never)"),
            Self::Predicate => write!(f, "predicate (checked every frame)"),
            Self::Promise { status } => write!(f, "promise ({status})"),
            Self::Receive { channel } => write!(f, "receive on {channel}"),
            Self::Send { channel } => write!(f, "send on {channel}"),
            Self::Select { channels } => write!(f, "select over [{channels}]"),
            Self::Stream => write!(f, "stream"),
            Self::Parked => write!(f, "parked"),
            Self::Nothing => write!(f, "nothing"),
        }
    }
}

/// One live task, as [`LuaRuntime::task_list`] sees it.
#[derive(Clone, Debug)]
pub struct TaskInfo {
    /// The entity its instance runs on.
    pub entity: Entity,
    /// The script's asset path.
    pub script: String,
    /// What it waits on.
    pub wait: TaskWait,
    /// Nothing can wake it any more (as far as is cheap to know: `task.waitFrames(math.huge)`,
    /// a select with no channel, a channel no one else holds once a collection ran).
    pub forever: bool,
    /// Where it last yielded, `file:line`, in script code (`None`: it has not run yet, or only
    /// the crate's own code is on its stack).
    pub location: Option<String>,
    /// The function it last yielded in (`main chunk` for a script's top level).
    pub function: Option<String>,
    /// Frames since it last ran (tracking only).
    pub frames_since_ran: Option<u64>,
    /// Resumes so far (tracking only: counted since tracking was turned on).
    pub resumes: Option<u64>,
    /// Time spent resuming it, in total (tracking only).
    pub cpu_total: Option<Duration>,
    /// Time spent resuming it in the last frame (tracking only).
    pub cpu_last_frame: Option<Duration>,
}

impl fmt::Display for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}: {}", self.script, self.entity, self.wait)?;
        if self.forever {
            write!(f, " [forever]")?;
        }
        match (&self.location, &self.function) {
            (Some(at), Some(func)) => write!(f, " at {at} in {func}")?,
            (Some(at), None) => write!(f, " at {at}")?,
            _ => write!(f, " (not started)")?,
        }
        if let (Some(resumes), Some(total)) = (self.resumes, self.cpu_total) {
            write!(f, "; {resumes} resumes, {} total", fmt_duration(total))?;
        }
        if let Some(last) = self.cpu_last_frame.filter(|d| !d.is_zero()) {
            write!(f, ", {} last frame", fmt_duration(last))?;
        }
        if let Some(frames) = self.frames_since_ran {
            write!(f, ", ran {frames} frames ago")?;
        }
        Ok(())
    }
}

/// What stepping one script has cost (see [`LuaRuntime::script_costs`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScriptCost {
    /// The script's asset path.
    pub script: String,
    /// Its instances still running.
    pub instances: usize,
    /// Resumes of its tasks in the last frame.
    pub resumes_last_frame: u64,
    /// Resumes of its tasks since tracking was turned on.
    pub resumes: u64,
    /// Time spent resuming its tasks in the last frame.
    pub last_frame: Duration,
    /// Time spent resuming its tasks since tracking was turned on.
    pub total: Duration,
}

/// Formats `d` in the unit that suits it (`850 ns`, `12.3 µs`, `4.56 ms`).
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// The task list as text, one task a line (what `--inspect` prints).
pub fn format_task_list(tasks: &[TaskInfo]) -> String {
    let mut out = format!("{} live tasks\n", tasks.len());
    for t in tasks {
        out.push_str("  ");
        out.push_str(&t.to_string());
        out.push('\n');
    }
    out
}

#[derive(Clone, Copy, Default)]
struct TaskStats {
    born: u64,
    resumes: u64,
    last_frame: u64,
    total_ns: u64,
    frame_ns: u64,
    frame_no: u64,
}

#[derive(Clone, Default)]
struct Cost {
    resumes: u64,
    frame_resumes: u64,
    total_ns: u64,
    frame_ns: u64,
    frame_no: u64,
}

impl Cost {
    fn add(&mut self, frame: u64, ns: u64) {
        if self.frame_no != frame {
            self.frame_no = frame;
            self.frame_ns = 0;
            self.frame_resumes = 0;
        }
        self.resumes += 1;
        self.frame_resumes += 1;
        self.total_ns += ns;
        self.frame_ns += ns;
    }

    fn last_frame(&self, frame: u64) -> (u64, u64) {
        if self.frame_no == frame { (self.frame_resumes, self.frame_ns) } else { (0, 0) }
    }
}

struct Current {
    key: i64,
    instance: InstanceId,
    born: u64,
    start: Instant,
    span: tracing::Span,
}

/// Per-resume accounting while tracking is on (VM app data).
#[derive(Default)]
pub(crate) struct Tracker {
    on: bool,
    tasks: HashMap<i64, TaskStats>,
    instances: HashMap<InstanceId, (Arc<str>, Cost)>,
    /// Costs of instances that are gone, by script path.
    finished: HashMap<Arc<str>, Cost>,
    current: Option<Current>,
    /// Time spent in the step's resumes in the last frame, and its frame.
    step: Cost,
}

/// Lua functions the inspector calls (VM app data).
pub(crate) struct InspectLua {
    /// `inspect(key) -> table | nil` from `lua/inspect.lua`.
    inspect: Function,
    /// `step.track(enter?, leave?)` from `lua/task.lua`.
    track: Function,
    /// The Rust functions the tracked step calls around a resume.
    enter: Function,
    leave: Function,
    /// `step.key_of(thread) -> key | nil`.
    key_of: Function,
}

/// Loads the inspector (`lua/inspect.lua`) on what the VM set aside for it and gives scripts
/// `task.list` and `task.info`.
pub(crate) fn install(runtime: &LuaRuntime) -> mlua::Result<()> {
    let lua = runtime.lua();
    lua.set_app_data(Tracker::default());
    let deps: Table = lua.named_registry_value(scheduler::INSPECT_DEPS)?;
    let inspect: Function =
        lua.load(include_str!("lua/inspect.lua")).set_name("=bevy_lua_coroutines/inspect.lua").call(&deps)?;
    lua.set_app_data(InspectLua {
        inspect,
        track: deps.get("track")?,
        enter: lua.create_function(|lua, key: i64| enter(lua, key))?,
        leave: lua.create_function(|lua, ()| leave(lua))?,
        key_of: deps.get("key_of")?,
    });
    let functions = lua.create_table()?;
    functions.set(
        "list",
        lua.create_function(|lua, ()| {
            let Some(instance) = scheduler::current_instance(lua) else {
                return Err(mlua::Error::runtime("the task API was used outside of a script"));
            };
            let list = lua.create_table()?;
            for (_, info, thread) in list_tasks(lua, Some(instance))? {
                list.raw_push(info_table(lua, &info, thread)?)?;
            }
            Ok(list)
        })?,
    )?;
    functions.set(
        "info",
        lua.create_function(|lua, co: Value| {
            let Value::Thread(co) = co else {
                return Err(mlua::Error::runtime(crate::error::wrong_type(1, "info", "thread", &co)));
            };
            let key_of = lua.app_data_ref::<InspectLua>().map(|i| i.key_of.clone());
            let Some(key) = key_of.map(|f| f.call::<Option<i64>>(&co)).transpose()?.flatten() else {
                return Ok(Value::Nil);
            };
            match task_info(lua, key)? {
                Some(info) => Ok(Value::Table(info_table(lua, &info, Some(co))?)),
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    deps.get::<Function>("set_inspector")?.call::<()>(functions)
}

fn enter(lua: &Lua, key: i64) -> mlua::Result<()> {
    let owner = sched(lua).task_owner(key);
    let Some((instance, born)) = owner else { return Ok(()) };
    let (path, entity) = {
        let s = sched(lua);
        s.instance(instance)
            .map(|r| (r.path.clone(), r.entity))
            .unwrap_or((Arc::from("?"), Entity::PLACEHOLDER))
    };
    let span = tracing::info_span!(target: "bevy_lua_coroutines::script", "lua script", script = %path, entity = %entity);
    if let Some(id) = span.id() {
        tracing::dispatcher::get_default(|d| d.enter(&id));
    }
    if let Some(mut tracker) = lua.app_data_mut::<Tracker>() {
        tracker.current = Some(Current { key, instance, born, start: Instant::now(), span });
        tracker.instances.entry(instance).or_insert_with(|| (path, Cost::default()));
    }
    Ok(())
}

fn leave(lua: &Lua) -> mlua::Result<()> {
    let frame = sched(lua).clock.frame;
    let Some(mut tracker) = lua.app_data_mut::<Tracker>() else { return Ok(()) };
    let Some(current) = tracker.current.take() else { return Ok(()) };
    let ns = current.start.elapsed().as_nanos() as u64;
    if let Some(id) = current.span.id() {
        tracing::dispatcher::get_default(|d| d.exit(&id));
    }
    let stats = tracker.tasks.entry(current.key).or_default();
    if stats.born != current.born {
        *stats = TaskStats { born: current.born, ..default() };
    }
    stats.resumes += 1;
    stats.last_frame = frame;
    if stats.frame_no != frame {
        stats.frame_no = frame;
        stats.frame_ns = 0;
    }
    stats.frame_ns += ns;
    stats.total_ns += ns;
    if let Some((_, cost)) = tracker.instances.get_mut(&current.instance) {
        cost.add(frame, ns);
    }
    tracker.step.add(frame, ns);
    Ok(())
}

/// Folds the costs of instances that are gone into their script's, and forgets stats of dead
/// tasks once they pile up.
fn prune(lua: &Lua) {
    let s = sched(lua);
    let Some(mut tracker) = lua.app_data_mut::<Tracker>() else { return };
    let gone: Vec<InstanceId> =
        tracker.instances.keys().copied().filter(|&id| s.instance(id).is_none()).collect();
    for id in gone {
        if let Some((path, cost)) = tracker.instances.remove(&id) {
            let into = tracker.finished.entry(path).or_default();
            into.resumes += cost.resumes;
            into.total_ns += cost.total_ns;
            if cost.frame_no >= into.frame_no {
                if cost.frame_no > into.frame_no {
                    into.frame_ns = 0;
                    into.frame_resumes = 0;
                }
                into.frame_no = cost.frame_no;
                into.frame_ns += cost.frame_ns;
                into.frame_resumes += cost.frame_resumes;
            }
        }
    }
    if tracker.tasks.len() > 2 * s.live_tasks() + 1024 {
        tracker.tasks.retain(|&key, stats| s.task_owner(key).is_some_and(|(_, born)| born == stats.born));
    }
}

/// What task `key` is doing, from the Lua half and the timers; `None` if it is not a task.
fn task_info(lua: &Lua, key: i64) -> mlua::Result<Option<TaskInfo>> {
    let inspect = lua.app_data_ref::<InspectLua>().map(|i| i.inspect.clone());
    let Some(inspect) = inspect else { return Ok(None) };
    let Some(r) = inspect.call::<Option<Table>>(key)? else { return Ok(None) };
    let s = sched(lua);
    let Some((instance, born)) = s.task_owner(key) else { return Ok(None) };
    let (entity, script) = s
        .instance(instance)
        .map_or((Entity::PLACEHOLDER, "?".to_string()), |r| (r.entity, r.path.to_string()));
    let kind: Option<String> = r.get("kind")?;
    let reg: Option<f64> = r.get("reg")?;
    let mut forever: bool = r.get::<Option<bool>>("forever")?.unwrap_or(false);
    let text = |name: &str| r.get::<Option<String>>(name).map(Option::unwrap_or_default);
    let wait = match kind.as_deref() {
        Some("running") => TaskWait::Running,
        Some("ready") => TaskWait::Ready,
        Some("frames") => TaskWait::Frames { frames: r.get::<Option<u64>>("frames")? },
        Some("predicate") => TaskWait::Predicate,
        Some("promise") => TaskWait::Promise { status: text("status")? },
        Some("receive") => TaskWait::Receive { channel: text("channel")? },
        Some("send") => TaskWait::Send { channel: text("channel")? },
        Some("select") => TaskWait::Select { channels: text("channel")? },
        Some("stream") => TaskWait::Stream,
        Some("parked") => TaskWait::Parked,
        Some(_) => TaskWait::Nothing,
        None => match reg.and_then(|reg| s.timer_of(key, reg)) {
            Some((clock, at, stored)) => {
                let due_in = nanos_to_seconds(at.saturating_sub(s.clock.now(clock)));
                match (clock, stored) {
                    (ClockKind::Real, _) => TaskWait::RealTime { due_in },
                    (ClockKind::Game, true) => TaskWait::Delay { due_in },
                    (ClockKind::Game, false) => TaskWait::Time { due_in },
                }
            }
            None => {
                // Registered, yet in no frame list and under no timer: `waitFrames(math.huge)`.
                forever = true;
                TaskWait::Frames { frames: None }
            }
        },
    };
    let file: Option<String> = r.get("file")?;
    let line: Option<u64> = r.get("line")?;
    let frame = s.clock.frame;
    drop(s);
    let stats = lua.app_data_ref::<Tracker>().filter(|t| t.on || !t.tasks.is_empty()).map(|t| {
        t.tasks.get(&key).copied().filter(|st| st.born == born).unwrap_or(TaskStats { born, ..default() })
    });
    Ok(Some(TaskInfo {
        entity,
        script,
        wait,
        forever,
        location: file.map(|f| format!("{f}:{}", line.unwrap_or(0))),
        function: r.get("func")?,
        frames_since_ran: stats.filter(|st| st.resumes > 0).map(|st| frame.saturating_sub(st.last_frame)),
        resumes: stats.map(|st| st.resumes),
        cpu_total: stats.map(|st| Duration::from_nanos(st.total_ns)),
        cpu_last_frame: stats
            .map(|st| Duration::from_nanos(if st.frame_no == frame { st.frame_ns } else { 0 })),
    }))
}

/// Every live task (of `only`, if given), oldest first, with its key and thread.
fn list_tasks(lua: &Lua, only: Option<InstanceId>) -> mlua::Result<Vec<(i64, TaskInfo, Option<Thread>)>> {
    let keys = sched(lua).task_keys();
    let thread_of = scheduler::refs(lua).thread_of.clone();
    let mut out = Vec::new();
    for (key, instance, _) in keys {
        if only.is_some_and(|o| o != instance) {
            continue;
        }
        if let Some(info) = task_info(lua, key)? {
            out.push((key, info, thread_of.call::<Option<Thread>>(key)?));
        }
    }
    Ok(out)
}

/// A task's info as the table `task.list` and `task.info` return.
fn info_table(lua: &Lua, info: &TaskInfo, thread: Option<Thread>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("thread", thread)?;
    t.set("entity", crate::components::entity_value(lua, info.entity)?)?;
    t.set("script", info.script.as_str())?;
    let (kind, detail): (&str, Option<Value>) = match &info.wait {
        TaskWait::Running => ("running", None),
        TaskWait::Ready => ("ready", None),
        TaskWait::Time { due_in } => ("time", Some(Value::Number(*due_in))),
        TaskWait::Delay { due_in } => ("delay", Some(Value::Number(*due_in))),
        TaskWait::RealTime { due_in } => ("realtime", Some(Value::Number(*due_in))),
        TaskWait::Frames { frames } => {
            ("frames", Some(frames.map_or(Value::Number(f64::INFINITY), |n| Value::Number(n as f64))))
        }
        TaskWait::Predicate => ("predicate", None),
        TaskWait::Promise { status } => ("promise", Some(Value::String(lua.create_string(status)?))),
        TaskWait::Receive { channel }
        | TaskWait::Send { channel }
        | TaskWait::Select { channels: channel } => (
            match &info.wait {
                TaskWait::Receive { .. } => "receive",
                TaskWait::Send { .. } => "send",
                _ => "select",
            },
            Some(Value::String(lua.create_string(channel)?)),
        ),
        TaskWait::Stream => ("stream", None),
        TaskWait::Parked => ("parked", None),
        TaskWait::Nothing => ("nothing", None),
    };
    t.set("waitsOn", kind)?;
    match kind {
        "time" | "delay" | "realtime" => t.set("dueIn", detail)?,
        "frames" => t.set("frames", detail)?,
        "promise" => t.set("status", detail)?,
        "receive" | "send" | "select" => t.set("channel", detail)?,
        _ => {}
    }
    t.set("forever", info.forever)?;
    t.set("where", info.location.as_deref())?;
    t.set("func", info.function.as_deref())?;
    t.set("framesSinceRan", info.frames_since_ran)?;
    t.set("resumes", info.resumes)?;
    t.set("cpuTotal", info.cpu_total.map(|d| d.as_secs_f64()))?;
    t.set("cpuLastFrame", info.cpu_last_frame.map(|d| d.as_secs_f64()))?;
    Ok(t)
}

impl LuaRuntime {
    /// What the last frame's step spent: tasks resumed and time resuming them (tracking only:
    /// zero while it is off).
    pub fn last_step(&self) -> (u64, Duration) {
        let lua = self.lua();
        let frame = sched(lua).clock.frame;
        lua.app_data_ref::<Tracker>().map_or((0, Duration::ZERO), |t| {
            let (n, ns) = t.step.last_frame(frame);
            (n, Duration::from_nanos(ns))
        })
    }

    /// Every live task, oldest first: its entity and script, what it waits on, where it last
    /// yielded and, while tracking is on, its resumes, frames since it ran and time spent.
    /// Runs a full garbage collection first (so a channel nobody holds any more shows as such);
    /// meant for tools, not for every frame.
    pub fn task_list(&self) -> Vec<TaskInfo> {
        let lua = self.lua();
        let _ = lua.gc_collect();
        match list_tasks(lua, None) {
            Ok(list) => list.into_iter().map(|(_, info, _)| info).collect(),
            Err(e) => {
                error!("bevy_lua_coroutines: listing tasks raised {e}");
                Vec::new()
            }
        }
    }

    /// Turns tracking on or off: while it is on, every resume is counted, timed (wall time on the
    /// stepping thread) and wrapped in a `tracing` span named `lua script` with the script's path,
    /// which [`task_list`](Self::task_list) and [`script_costs`](Self::script_costs) report. It
    /// costs two calls into Rust per resume; off (the default), the step pays nothing for it.
    pub fn set_tracking(&self, on: bool) {
        let lua = self.lua();
        let track =
            lua.app_data_ref::<InspectLua>().map(|i| (i.track.clone(), i.enter.clone(), i.leave.clone()));
        let switched = track.map(|(track, enter, leave)| match on {
            true => track.call::<()>((enter, leave)),
            false => track.call::<()>(()),
        });
        if let Some(Err(e)) = switched {
            error!("bevy_lua_coroutines: switching tracking raised {e}");
        }
        if let Some(mut tracker) = lua.app_data_mut::<Tracker>() {
            tracker.on = on;
        }
    }

    /// Whether tracking is on (see [`set_tracking`](Self::set_tracking)).
    pub fn tracking(&self) -> bool {
        self.lua().app_data_ref::<Tracker>().is_some_and(|t| t.on)
    }

    /// What stepping each script has cost since tracking was turned on, costliest first (by the
    /// last frame, then in total); scripts whose instances are all gone keep their totals.
    pub fn script_costs(&self) -> Vec<ScriptCost> {
        let lua = self.lua();
        prune(lua);
        let frame = sched(lua).clock.frame;
        let Some(tracker) = lua.app_data_ref::<Tracker>() else { return Vec::new() };
        let mut by_path: HashMap<Arc<str>, ScriptCost> = HashMap::default();
        let mut add = |path: &Arc<str>, cost: &Cost, live: bool| {
            let entry = by_path
                .entry(path.clone())
                .or_insert_with(|| ScriptCost { script: path.to_string(), ..default() });
            let (n, ns) = cost.last_frame(frame);
            entry.instances += usize::from(live);
            entry.resumes += cost.resumes;
            entry.resumes_last_frame += n;
            entry.total += Duration::from_nanos(cost.total_ns);
            entry.last_frame += Duration::from_nanos(ns);
        };
        for (path, cost) in tracker.instances.values() {
            add(path, cost, true);
        }
        for (path, cost) in &tracker.finished {
            add(path, cost, false);
        }
        let mut costs: Vec<ScriptCost> = by_path.into_values().collect();
        costs.sort_by(|a, b| {
            b.last_frame.cmp(&a.last_frame).then(b.total.cmp(&a.total)).then(a.script.cmp(&b.script))
        });
        costs
    }
}
