//! The scheduler's hot path over Lua's C API: the common waits (`task.wait`, `sleep`,
//! `task.waitFrames`) as C functions that yield their request directly, the step's lists in Rust
//! memory (`step_memory`: the frame waits due this frame and next, the ready queue, the count of
//! resumes against the step's bounds) reached from Lua, the memory headroom a step may need after a
//! task ran out of memory (`relax_memory`), what a cancellation
//! keeps of where a task stood (`frames`, Lua 5.4), and the two loops of the step: one resumes
//! this frame's frame waits (`run_frames`), the other the ready queue (`run_ready`: tasks woken by
//! a promise or a channel, timers that fell due, work carried over), each handling the common
//! outcomes (the task asked to wait for the next frame, or parked on a promise's or channel's
//! slot) without running any Lua. Every other outcome goes back to `lua/task.lua`, which
//! finishes it exactly as its own resume does. One more loop serves `lua/promise.lua`'s batch
//! settlement of Rust completions (`settle_resolved`): the common entry (a promise resolved with
//! a plain value, one task or nobody awaiting it) is settled and its task woken as the Lua does
//! it; any other entry goes back to the Lua. Everything else talks to Lua through mlua.
//!
//! Invariants:
//! - The functions here are only ever called by Lua, on the VM's own OS thread. The loops' first
//!   upvalue is the budget's [`Watch`] (or null), which lives as long as the VM; every resume goes
//!   through it, so the budget's watchdog sees the thread running. The loops are
//!   called only by `lua/task.lua`'s step, with the arguments listed on them (they check the
//!   tables' types and return nothing if they are wrong, so the step falls back to its Lua loop);
//!   `settle_resolved` only by `lua/promise.lua`'s `settle_batch`, likewise checked.
//! - A thread is resumed only if it is suspended in a yield (`lua_status == LUA_YIELD`), which is
//!   what a registered frame wait always is; anything else is handed back to Lua untouched.
//! - A loop checks that its stack has room for what it pushes (16 slots, 40 for `run_ready`) on
//!   entry; it clears its stack back to the saved slots at the start of each entry, so what one
//!   entry leaves (at most 9 values above them) never adds up. A task thread gets one slot checked with
//!   `lua_checkstack` before its resume value is pushed. Values are only ever moved off a resumed
//!   thread's stack (`lua_xmove`, `lua_pop`): a table it yielded is written on the loop's own
//!   stack, so an error there is raised in the step, never in the suspended thread.
//! - The only calls here that can raise a Lua error are table writes that must grow a table (out
//!   of memory), `run_ready`'s two field names pushed on entry, before it takes anything off its
//!   queue (out of memory), in the waits, the `bad argument` error itself, in `push_ready` and
//!   `carry_ready`, a value that is not one a ready entry holds, and in `push_ready` and
//!   `push_next`, `make_room`'s `not enough memory` (each before its list is touched). (Every write is raw: the
//!   slots `lua/promise.lua` and `lua/channel.lua` park on are plain tables, and only they can
//!   be yielded with the request marker.) A raise unwinds (LuaJIT, Luau)
//!   or `longjmp`s (Lua 5.4) through these frames, so they hold nothing that needs dropping, and
//!   every counter the step shares is written back to its table before the next raising call.
//! - The counters shared with `lua/task.lua` live in one table (`shared`), at the slot numbers
//!   below, which the Lua file names the same way.
//! - The frame waits ([`FrameWaits`]), the ready queue
//!   ([`ReadyQueue`](crate::step_memory::ReadyQueue)) and the step's resume counts
//!   ([`Resumes`](crate::step_memory::Resumes)) are Rust memory ([`StepMemory`]), boxed in the
//!   VM's app data (dropped only after the VM is closed); the
//!   functions that use them keep its address as an upvalue (upvalue 2 of the loops, 1 of the
//!   others). Only those functions touch it, on the VM's thread, and none keeps a reference to it
//!   across a call into Lua (a resume may queue waits itself).
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ffi::{CStr, c_int, c_void};
use std::sync::atomic::{AtomicI64, AtomicPtr, Ordering};

use std::sync::Arc;

use mlua::{Function, Lua, Table, ffi};

use crate::hook::Watch;
use crate::step_memory::{FrameWaits, List, Ready, Resume, StepMemory, Wait, growth};

/// Slot of the shared table: the task being resumed (0: none).
pub(crate) const CURRENT: ffi::lua_Integer = 1;
/// Slot: the defer depth of the task being resumed.
pub(crate) const DEPTH: ffi::lua_Integer = 2;
/// Slot: the number of resumes so far.
pub(crate) const SERIAL: ffi::lua_Integer = 3;
/// Slot: set when the Lua step must end the resume (a task failed for want of memory, and the
/// step collects garbage; or something ran as no instance, see [`NOBODY_RUNS`]).
const LOOK: ffi::lua_Integer = 4;
// Slot 5 is the last registration number `lua/task.lua` handed out (positive numbers); the
// registrations the loops here make are negative (see `run_frames`).
/// Slot: how many error values' `__tostring`s run now as no instance (`as_nobody` in
/// `lua/task.lua`; read through `scheduler::Refs::nobody_runs`, set aside by `NobodyPaused`).
/// A resume that ran one sets [`LOOK`], so the Lua step ends it and sets the count to 0: one a
/// task left up stays with its own resume.
pub(crate) const NOBODY_RUNS: ffi::lua_Integer = 6;

/// The request marker every wait yields first (a light userdata; see `scheduler::req`).
static REQ: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
/// The request kinds the waits yield (see `scheduler::kind`).
static WAIT_TIME: AtomicI64 = AtomicI64::new(0);
static WAIT_FRAMES: AtomicI64 = AtomicI64::new(0);
static PARK: AtomicI64 = AtomicI64::new(0);
/// The arguments marker (a light userdata; see `scheduler::args_marker`): a ready entry that
/// resumes its task with the arguments it stored, if any.
static ARGS: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

/// Where `lua/task.lua`'s `bad` (its `bad argument` error) is kept in the registry.
const BAD: &CStr = c"bevy_lua_coroutines.task.bad";

/// The C functions for `lua/task.lua`: `wait`, `sleep`, `waitFrames`, the frame waits' `push_next`,
/// `begin_frame`, `pop_now`, `entry_at` and `shrink_waits`, the ready queue's `push_ready`,
/// `pop_ready`, `carry_ready`, `carry_rest` and `end_ready`, `count_resume`, the loops
/// `run_frames` and `run_ready`, `settle_resolved` (for `lua/promise.lua`), `relax_memory`,
/// `frames` (Lua 5.4), and `set_bad(f)`, which gives the waits the function that raises their
/// `bad argument` errors.
/// `req` is the request marker; `wait_time`, `wait_frames` and `park` the request kinds; `args`
/// the arguments marker.
pub(crate) fn functions(
    lua: &Lua,
    req: *mut c_void,
    wait_time: i64,
    wait_frames: i64,
    park: i64,
    args: *mut c_void,
    watch: Option<&Arc<Watch>>,
) -> mlua::Result<Table> {
    REQ.store(req, Ordering::Relaxed);
    ARGS.store(args, Ordering::Relaxed);
    WAIT_TIME.store(wait_time, Ordering::Relaxed);
    WAIT_FRAMES.store(wait_frames, Ordering::Relaxed);
    PARK.store(park, Ordering::Relaxed);
    let t = lua.create_table()?;
    // SAFETY: each function follows the module's invariants.
    unsafe {
        t.raw_set("wait", lua.create_c_function(wait)?)?;
        t.raw_set("sleep", lua.create_c_function(sleep)?)?;
        t.raw_set("waitFrames", lua.create_c_function(wait_frames_fn)?)?;
    }
    #[cfg(feature = "lua54")]
    // SAFETY: `frames` follows the module's invariants.
    unsafe {
        t.raw_set("frames", lua.create_c_function(frames)?)?;
    }
    // SAFETY: `relax_memory` uses no upvalue and calls no Lua.
    unsafe {
        t.raw_set("relax_memory", lua.create_c_function(relax_memory)?)?;
    }
    // The step's lists live in Rust memory, boxed in the VM's app data (dropped after the VM
    // closes), so the functions below keep its address.
    let memory = Box::new(UnsafeCell::new(StepMemory::default()));
    let at = memory.get() as *mut c_void;
    lua.set_app_data(Waits { _owned: memory });
    for (name, f) in [
        ("push_next", push_next as ffi::lua_CFunction),
        ("begin_frame", begin_frame),
        ("pop_now", pop_now),
        ("entry_at", entry_at),
        ("shrink_waits", shrink_waits),
        ("count_resume", count_resume),
        ("push_ready", push_ready),
        ("pop_ready", pop_ready),
        ("carry_ready", carry_ready),
        ("carry_rest", carry_rest),
        ("end_ready", end_ready),
        ("settle_resolved", settle_resolved),
    ] {
        // SAFETY: each reads its one upvalue as the address of the `StepMemory` above.
        let f = unsafe {
            lua.exec_raw::<Function>((), |l| {
                ffi::lua_pushlightuserdata(l, at);
                ffi::lua_pushcclosure(l, f, 1);
            })?
        };
        t.raw_set(name, f)?;
    }
    // `run_frames` and `run_ready` resume through the budget's watch, if it has one.
    t.raw_set("run_frames", crate::hook::watch_closure(lua, watch, at, run_frames)?)?;
    t.raw_set("run_ready", crate::hook::watch_closure(lua, watch, at, run_ready)?)?;
    t.raw_set(
        "set_bad",
        lua.create_function(|lua, f: Function| {
            lua.set_named_registry_value(BAD.to_str().expect("an ASCII name"), f)
        })?,
    )?;
    Ok(t)
}

unsafe extern "C-unwind" fn wait(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe { yield_request(l, WAIT_TIME.load(Ordering::Relaxed), c"wait") }
}

unsafe extern "C-unwind" fn sleep(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe { yield_request(l, WAIT_TIME.load(Ordering::Relaxed), c"sleep") }
}

unsafe extern "C-unwind" fn wait_frames_fn(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe { yield_request(l, WAIT_FRAMES.load(Ordering::Relaxed), c"waitFrames") }
}

/// `frames(co, n) -> { f1, line1, f2, line2, ... }` (Lua 5.4): the function and current line of
/// each of the first `n` frames of thread `co`, innermost first, as `debug.getinfo(co, level,
/// "fl")` gives them; nil if `co` is not a thread. What a cancellation keeps of where a task stood,
/// in case a `__close` raises (see `lua/task.lua`'s `close_reporting`).
#[cfg(feature = "lua54")]
unsafe extern "C-unwind" fn frames(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua; `co` is a thread of this VM that is not running (a task being
    // cancelled), so its stack may take the one function `lua_getinfo` pushes, moved off at once.
    unsafe {
        let co = ffi::lua_tothread(l, 1);
        if co.is_null() {
            return 0;
        }
        let mut ar: ffi::lua_Debug = std::mem::zeroed();
        // The table is made for the frames there are (a waiting task has two or three): one
        // sized for the most asked for was most of a despawn's cost in the allocator.
        let most = ffi::lua_tointeger(l, 2).clamp(0, 64) as c_int;
        let mut n = 0;
        while n < most && ffi::lua_getstack(co, n, &mut ar) != 0 {
            n += 1;
        }
        ffi::lua_createtable(l, 2 * n, 0);
        for level in 0..n {
            if ffi::lua_getstack(co, level, &mut ar) == 0 || (co != l && ffi::lua_checkstack(co, 1) == 0) {
                break;
            }
            ffi::lua_getinfo(co, c"fl".as_ptr(), &mut ar);
            ffi::lua_xmove(co, l, 1);
            ffi::lua_rawseti(l, -2, ffi::lua_Integer::from(2 * level + 1));
            ffi::lua_pushinteger(l, ffi::lua_Integer::from(ar.currentline));
            ffi::lua_rawseti(l, -2, ffi::lua_Integer::from(2 * level + 2));
        }
        1
    }
}

/// Yields `REQ, kind, arg` where `arg` is the first argument (a number or nil), as the Lua waits
/// did; anything else raises `bad argument #1 to 'name' (number expected, got ...)` through
/// `lua/task.lua`'s `bad`, which blames the caller of the wait.
unsafe fn yield_request(l: *mut ffi::lua_State, kind: i64, name: &CStr) -> c_int {
    // SAFETY: `l` is the running thread; a C function has LUA_MINSTACK free slots.
    unsafe {
        let t = ffi::lua_type(l, 1);
        if t != ffi::LUA_TNONE && t != ffi::LUA_TNIL && t != ffi::LUA_TNUMBER {
            ffi::lua_getfield(l, ffi::LUA_REGISTRYINDEX, BAD.as_ptr());
            ffi::lua_pushinteger(l, 1);
            ffi::lua_pushstring(l, name.as_ptr());
            ffi::lua_pushstring(l, c"number".as_ptr());
            ffi::lua_pushvalue(l, 1);
            ffi::lua_pushinteger(l, 2);
            ffi::lua_call(l, 5, 0); // raises
            return 0;
        }
        ffi::lua_settop(l, 1);
        ffi::lua_pushlightuserdata(l, REQ.load(Ordering::Relaxed));
        ffi::lua_pushinteger(l, kind as ffi::lua_Integer);
        ffi::lua_pushvalue(l, 1);
        ffi::lua_yield(l, 3)
    }
}

/// Owns the VM's [`StepMemory`] (in its app data).
struct Waits {
    _owned: Box<UnsafeCell<StepMemory>>,
}

// SAFETY: the memory is only touched by the C functions here, on the thread that runs the VM,
// and the VM is used by one thread at a time.
unsafe impl Send for Waits {}

/// The room the ready queue keeps, in entries (for the crate's tests), read between steps.
#[cfg(test)]
pub(crate) fn ready_room(lua: &Lua) -> usize {
    let waits = lua.app_data_ref::<Waits>().expect("the step's memory");
    // SAFETY: read on the VM's thread while no C function here runs (no Lua runs now).
    unsafe { (*waits._owned.get()).ready.room() }
}

/// The step memory of the C function running on `l`, from its upvalue 1.
///
/// # Safety
/// Only called by the functions [`functions`] made with the address of the VM's `StepMemory` as
/// upvalue 1; the reference must be dropped before any call into Lua.
unsafe fn memory<'a>(l: *mut ffi::lua_State) -> &'a mut StepMemory {
    // SAFETY: the caller's; the box lives as long as the VM.
    unsafe { &mut *(ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *mut StepMemory) }
}

/// The frame waits of the C function running on `l` (see [`memory`]).
///
/// # Safety
/// As [`memory`].
unsafe fn waits<'a>(l: *mut ffi::lua_State) -> &'a mut FrameWaits {
    // SAFETY: the caller's.
    unsafe { &mut memory(l).waits }
}

/// `push_next(key, reg, since)`: queues a frame wait for the next frame (raising `not enough
/// memory` if the list must grow past the VM's memory limit; see [`make_room`]).
unsafe extern "C-unwind" fn push_next(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `waits`; `make_room` may raise before the list is touched.
    unsafe {
        let wait = Wait {
            key: ffi::lua_tointeger(l, 1),
            reg: ffi::lua_tointeger(l, 2),
            since: ffi::lua_tonumber(l, 3),
        };
        make_room(l, growth(&waits(l).next));
        waits(l).next.push(wait);
        0
    }
}

/// Before a list of the step's memory that scripts can lengthen without end (a `task.defer` of
/// one coroutine in a loop, a coroutine resumed by hand that waits a frame each time) grows by
/// `more` bytes: raises Lua's `not enough memory` if the lists' room would then pass what the VM
/// may still allocate under its memory limit. The lists count against the limit when they grow,
/// as the Lua tables they replaced did, so such a loop meets the limit, not the host's memory.
/// Reads the limit only when a list must grow (its room doubles each time).
unsafe fn make_room(l: *mut ffi::lua_State, more: usize) {
    if more == 0 {
        return;
    }
    // SAFETY: called by Lua on the VM's thread, by the functions `memory` serves; the reference to
    // the memory is dropped before the raise.
    unsafe {
        let bytes = memory(l).bytes() + more;
        let room = crate::heap::headroom(Lua::get_or_init_from_ptr(l));
        if room.is_some_and(|room| bytes > room) {
            ffi::lua_pushstring(l, c"not enough memory".as_ptr());
            ffi::lua_error(l);
        }
    }
}

/// `begin_frame(later)`: this frame's waits become, in order, the ones a time budget left over,
/// then `later` (a bucket of `lua/task.lua`: `key, reg, since` triples, `n` slots; or nil), then
/// the ones queued for this frame; the work the last step carried joins the ready queue.
unsafe extern "C-unwind" fn begin_frame(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `memory`; the bucket's reads are raw reads of numbers, which call no Lua.
    unsafe {
        let m = memory(l);
        m.ready.begin_step();
        let w = &mut m.waits;
        w.now.drain(..w.at);
        w.at = 0;
        if ffi::lua_type(l, 1) == ffi::LUA_TTABLE {
            ffi::lua_getfield(l, 1, c"n".as_ptr());
            let n = ffi::lua_tointeger(l, -1);
            let mut i = 1;
            while i + 2 <= n {
                ffi::lua_settop(l, 1);
                ffi::lua_rawgeti(l, 1, i);
                ffi::lua_rawgeti(l, 1, i + 1);
                ffi::lua_rawgeti(l, 1, i + 2);
                let since = ffi::lua_tonumber(l, 4);
                w.now.push(Wait { key: ffi::lua_tointeger(l, 2), reg: ffi::lua_tointeger(l, 3), since });
                i += 3;
            }
        }
        if w.now.is_empty() {
            // The common frame: the two lists trade places, keeping both allocations.
            std::mem::swap(&mut w.now, &mut w.next);
        } else {
            w.now.append(&mut w.next);
        }
        0
    }
}

/// `pop_now() -> key, reg, since`: takes this frame's next wait (nothing once all are taken).
unsafe extern "C-unwind" fn pop_now(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `waits`; nothing here calls Lua.
    unsafe {
        let Some(wait) = waits(l).take_now() else { return 0 };
        ffi::lua_pushinteger(l, wait.key);
        ffi::lua_pushinteger(l, wait.reg);
        ffi::lua_pushnumber(l, wait.since);
        3
    }
}

/// `entry_at(list, i) -> key, reg`: entry `i` (1: the first) of `list` (0: the ready queue, 1:
/// this frame's frame waits not taken yet, 2: the next frame's), nothing past the end. For the
/// inspector, which scans the lists in Lua, one entry a call: so the instruction budget counts a
/// scan as the script work it is (scripts can make the lists long at little cost).
unsafe extern "C-unwind" fn entry_at(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `memory`; nothing here calls Lua.
    unsafe {
        let list = match ffi::lua_tointeger(l, 1) {
            0 => List::Ready,
            1 => List::Now,
            _ => List::Next,
        };
        let Ok(i) = usize::try_from(ffi::lua_tointeger(l, 2) - 1) else { return 0 };
        let Some((key, reg)) = memory(l).entry(list, i) else { return 0 };
        ffi::lua_pushinteger(l, key);
        ffi::lua_pushinteger(l, reg);
        2
    }
}

/// `shrink_waits()`: [`StepMemory::shrink`] (after a mass despawn, with the step's tables).
unsafe extern "C-unwind" fn shrink_waits(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `memory`; nothing here calls Lua.
    unsafe {
        memory(l).shrink();
        0
    }
}

/// `count_resume(key, inst, step, max, max_instance) -> boolean`: [`Resumes::count`], for the
/// step's Lua loop (`run_ready` counts its own resumes the same way).
unsafe extern "C-unwind" fn count_resume(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `memory`; nothing here calls Lua.
    unsafe {
        let [key, inst, step, max, max_instance] = [1, 2, 3, 4, 5].map(|i| ffi::lua_tointeger(l, i));
        let counted = memory(l).resumes.count(key, inst, step, max, max_instance);
        ffi::lua_pushboolean(l, counted as c_int);
        1
    }
}

/// The ready entry `key, reg, value, depth` at stack indices `at` to `at + 3`. The value is the
/// arguments marker or a number; anything else raises (`lua/task.lua` queues nothing else). A
/// registration that is not an integer matches no task's (they all are).
unsafe fn ready_entry(l: *mut ffi::lua_State, at: c_int) -> Ready {
    // SAFETY: called by the C functions below with their arguments; `lua_error` raises as a C
    // function may.
    unsafe {
        let value = match ffi::lua_type(l, at + 2) {
            ffi::LUA_TNUMBER if ffi::lua_isinteger(l, at + 2) != 0 => {
                Resume::Int(ffi::lua_tointeger(l, at + 2))
            }
            ffi::LUA_TNUMBER => Resume::Num(ffi::lua_tonumber(l, at + 2)),
            ffi::LUA_TLIGHTUSERDATA if ffi::lua_touserdata(l, at + 2) == ARGS.load(Ordering::Relaxed) => {
                Resume::Args
            }
            _ => {
                ffi::lua_pushstring(
                    l,
                    c"bevy_lua_coroutines: a ready entry's value is not a number".as_ptr(),
                );
                ffi::lua_error(l);
            }
        };
        let mut integer = 0;
        let reg = ffi::lua_tointegerx(l, at + 1, &mut integer);
        Ready {
            key: ffi::lua_tointeger(l, at),
            reg: if integer != 0 { reg } else { 0 },
            value,
            depth: ffi::lua_tointeger(l, at + 3),
        }
    }
}

/// Pushes what a ready entry resumes its task with.
unsafe fn push_resume(l: *mut ffi::lua_State, value: Resume) {
    // SAFETY: the caller has room for one value.
    unsafe {
        match value {
            Resume::Args => ffi::lua_pushlightuserdata(l, ARGS.load(Ordering::Relaxed)),
            Resume::Int(v) => ffi::lua_pushinteger(l, v),
            Resume::Num(v) => ffi::lua_pushnumber(l, v),
        }
    }
}

/// `push_ready(key, reg, value, depth)`: queues task `key` to resume with `value` (the arguments
/// marker or a number) at defer depth `depth`, if `reg` is still its registration then (raising
/// `not enough memory` if the queue must grow past the VM's memory limit; see [`make_room`]).
unsafe extern "C-unwind" fn push_ready(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `memory`; `ready_entry` and `make_room` may raise before the queue is touched.
    unsafe {
        let entry = ready_entry(l, 1);
        make_room(l, memory(l).ready.push_growth());
        memory(l).ready.push(entry);
        0
    }
}

/// `pop_ready() -> key, reg, value, depth`: takes the ready queue's first entry (nothing once it
/// is empty).
unsafe extern "C-unwind" fn pop_ready(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `memory`; a C function has room for 20 values (`LUA_MINSTACK`).
    unsafe {
        let Some(Ready { key, reg, value, depth }) = memory(l).ready.pop() else { return 0 };
        ffi::lua_pushinteger(l, key);
        ffi::lua_pushinteger(l, reg);
        push_resume(l, value);
        ffi::lua_pushinteger(l, depth);
        4
    }
}

/// `carry_ready(key, reg, value, depth)`: carries the entry to the next step.
unsafe extern "C-unwind" fn carry_ready(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: as `push_ready`.
    unsafe {
        let entry = ready_entry(l, 1);
        memory(l).ready.carry(entry);
        0
    }
}

/// `carry_rest()`: carries everything still on the ready queue to the next step (a time budget
/// ran out).
unsafe extern "C-unwind" fn carry_rest(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `memory`; nothing here calls Lua.
    unsafe {
        memory(l).ready.carry_rest();
        0
    }
}

/// `end_ready()`: the step is over (see `ReadyQueue::end_step`).
unsafe extern "C-unwind" fn end_ready(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see `memory`; nothing here calls Lua.
    unsafe {
        memory(l).ready.end_step();
        0
    }
}

/// The registry key the step's shared table is kept under (the address of this static), for
/// [`current`].
static SHARED: u8 = 0;

fn shared_key() -> *const c_void {
    std::ptr::from_ref(&SHARED).cast()
}

/// Keeps the step's `shared` table where [`current`] reads it (once, when the VM is made).
pub(crate) fn keep_shared(lua: &Lua, shared: &Table) -> mlua::Result<()> {
    // SAFETY: stores the argument exec_raw pushed in the registry, under a key only this module
    // uses; the registry is not reachable from scripts.
    unsafe { lua.exec_raw::<()>(shared, |l| ffi::lua_rawsetp(l, ffi::LUA_REGISTRYINDEX, shared_key())) }
}

/// The task being resumed (0: none) and the number of resumes so far: two raw reads of the
/// shared table in one hold of mlua's lock, without the protected call and value handles of
/// mlua's `Table::raw_get` (about 400 instructions instead of 900; Rust asks on every `print`,
/// every Rust function call that makes a promise and every budget check). `None` when the
/// stack has no room (the caller reads the table through mlua then).
pub(crate) fn current(lua: &Lua) -> Option<(i64, u64)> {
    lua.exec_raw_lua(|raw| {
        let l = raw.state();
        // SAFETY: `l` is a state of the VM, held; three slots are checked, the reads raise
        // nothing and call no metamethod, and the stack is put back as it was.
        unsafe {
            if ffi::lua_checkstack(l, 3) == 0 {
                return None;
            }
            let top = ffi::lua_gettop(l);
            if ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, shared_key()) != ffi::LUA_TTABLE {
                ffi::lua_settop(l, top);
                return None;
            }
            ffi::lua_rawgeti(l, -1, CURRENT);
            let current = ffi::lua_tointegerx(l, -1, std::ptr::null_mut());
            ffi::lua_rawgeti(l, -2, SERIAL);
            let serial = ffi::lua_tointegerx(l, -1, std::ptr::null_mut());
            ffi::lua_settop(l, top);
            Some((current, serial as u64))
        }
    })
}

/// The memory limit a step raised (see [`relax_memory`]), to restore after the step.
pub(crate) struct RelaxedLimit(pub usize);

/// `relax_memory()`: raises the VM's memory limit by a quarter (at least 1 MiB) until the end of
/// the step, once per step. For a task that failed for want of memory where the VM can neither
/// close the task's thread nor collect before an allocation fails (LuaJIT): what the thread holds
/// stays reachable until the step lets go of it, and the step needs memory to report the failure
/// and run the other tasks. (Under LuaJIT and Luau the raw loops do the same, through
/// [`relax`], for a resume that failed near the limit.) The step collects garbage and restores
/// the limit when it ends ([`restore_memory_limit`]). Allocates nothing itself.
unsafe extern "C-unwind" fn relax_memory(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua on the VM's thread, which holds the VM.
    relax(unsafe { Lua::get_or_init_from_ptr(l) }, false);
    0
}

/// Raises the VM's memory limit for the rest of the step, as [`relax_memory`] says; with
/// `only_near`, only if the VM holds within half that raise of its limit.
fn relax(lua: &Lua, only_near: bool) {
    if lua.app_data_ref::<RelaxedLimit>().is_some() {
        return;
    }
    // `set_memory_limit` returns the limit it replaces: read it by setting it.
    let Ok(limit) = crate::heap::set_memory_limit(lua, 0) else { return };
    if limit == 0 {
        return; // there was no limit (and 0 is "none")
    }
    let raise = (limit / 4).max(1 << 20);
    if only_near && lua.used_memory().saturating_add(raise / 2) < limit {
        let _ = crate::heap::set_memory_limit(lua, limit);
        return;
    }
    let _ = crate::heap::set_memory_limit(lua, limit.saturating_add(raise));
    lua.set_app_data(RelaxedLimit(limit));
}

/// After a step: if a task made it relax the memory limit ([`relax_memory`]), collects what the
/// failed thread held and puts the limit back.
pub(crate) fn restore_memory_limit(lua: &Lua) {
    if let Some(RelaxedLimit(limit)) = lua.remove_app_data::<RelaxedLimit>() {
        let _ = lua.gc_collect();
        let _ = crate::heap::set_memory_limit(lua, limit);
    }
}

// `run_frames`'s arguments, by stack index.
const A_SHARED: c_int = 1;
const A_REGS: c_int = 2;
const A_THREADS: c_int = 3;
const A_STATE: c_int = 4;
const A_SPENT: c_int = 5;
const A_NOW: c_int = 6;
const A_MEMORY: c_int = 7;
// Saved on entry: the task being resumed and its depth (restored when the loop stops; a raise
// out of the loop leaves the last task named, which `step.run` and the step clear).
const S_CURRENT: c_int = 8;
const S_DEPTH: c_int = 9;
// Per entry: the thread.
const E_THREAD: c_int = 10;

/// `run_frames(shared, regs, threads, state, "spent", now, memory_limit) -> [what, ...]`: resumes
/// this frame's frame waits (see [`FrameWaits`]) in order, each with the game seconds since it
/// waited, as long as each asks to wait for the next frame again; those it queues for the next
/// frame with a fresh registration. It returns nothing once every wait is taken (or if its
/// arguments are wrong: the step's Lua loop then takes the rest), or, if it stopped early, why:
/// - `1, key, reg, value`: wait `key` (registration `reg`) is not a thread suspended in a
///   yield: resume it the Lua way;
/// - `2, key, thread, ok, first, kind, arg`: task `key` was resumed and did something else
///   (finished, failed, asked for another wait, spent its budget, or the VM grew past
///   `memory_limit` KiB): finish it the Lua way (the shared table still names it as the current
///   task).
unsafe extern "C-unwind" fn run_frames(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see the module's invariants: `l` is the running thread, the tables are the step's,
    // and each thread resumed is suspended in a yield. The frame waits are borrowed only between
    // calls into Lua (a resume may queue waits of its own).
    unsafe {
        let Some(Loop { now, limit, req, watch, memory }) = begin(l, &[], 16) else { return 0 };
        ffi::lua_settop(l, A_MEMORY);
        ffi::lua_rawgeti(l, A_SHARED, CURRENT);
        ffi::lua_rawgeti(l, A_SHARED, DEPTH);
        // Whether a task was resumed fast since the current one was last restored.
        let mut resumed = false;
        while let Some(Wait { key, reg, since }) = (*memory).waits.take_now() {
            ffi::lua_settop(l, S_DEPTH);
            if int_at(l, A_REGS, key) != Some(reg) {
                continue; // cancelled, or woken another way
            }
            let value = (now - since) / 1e9;
            ffi::lua_rawgeti(l, A_THREADS, key); // E_THREAD
            let co = ffi::lua_tothread(l, E_THREAD);
            if co.is_null() || ffi::lua_status(co) != ffi::LUA_YIELD || ffi::lua_checkstack(co, 1) == 0 {
                if resumed {
                    restore(l, S_CURRENT);
                }
                ffi::lua_pushinteger(l, 1);
                ffi::lua_pushinteger(l, key);
                ffi::lua_pushinteger(l, reg);
                ffi::lua_pushnumber(l, value);
                return 4;
            }
            let serial = make_current(l, key, 0);
            ffi::lua_pushnumber(co, value);
            let mut nres: c_int = 0;
            let status = resume(l, co, 1, watch, &mut nres);
            if outcome(co, status, nres, req) == Outcome::NextFrame && quiet(l, key, limit, watch) {
                // The task that was current comes back when the loop stops (`restore`): until
                // then no Lua runs but the next task, which is made current first.
                resumed = true;
                wait_next(l, co, key, serial, now, memory);
                continue;
            }
            // Anything else: hand `ok, first, kind, arg` (as `coroutine.resume` returns them) back.
            return hand_back(l, key, E_THREAD, co, status, nres);
        }
        if resumed {
            restore(l, S_CURRENT);
        }
        0
    }
}

// `run_ready`'s arguments past those of `run_frames` (1 to 7), by stack index.
const A_TABLES: c_int = 8;
const A_STEP: c_int = 9;
// Copied from `A_TABLES` on entry, in its order.
const R_PARKED: c_int = 10;
const R_ARGS: c_int = 11;
const R_OWNER: c_int = 12;
const R_MAX_RESUMES: c_int = 13;
const R_MAX_INSTANCE: c_int = 14;
// Saved on entry, as `S_CURRENT` and `S_DEPTH` are by `run_frames`: the current task, then its
// defer depth in the slot above (16).
const R_CURRENT: c_int = 15;
// The names of the fields a park slot gets, pushed on entry: interned once per call, not per park
// (`lua_setfield` looks its C string up in the VM's string cache each time).
const R_KEY_NAME: c_int = 17;
const R_REG_NAME: c_int = 18;
// Per entry: its task's thread.
const R_THREAD: c_int = 19;

/// The integer at `t[i]` (`t` at stack index `t`), if it is a number.
unsafe fn int_at(l: *mut ffi::lua_State, t: c_int, i: ffi::lua_Integer) -> Option<ffi::lua_Integer> {
    // SAFETY: as the loops, with a free slot; a raw read calls no Lua.
    unsafe {
        let v = (ffi::lua_rawgeti(l, t, i) == ffi::LUA_TNUMBER).then(|| ffi::lua_tointeger(l, -1));
        ffi::lua_pop(l, 1);
        v
    }
}

/// `t[i] = v` for the table at stack index `t`.
unsafe fn set_int(l: *mut ffi::lua_State, t: c_int, i: ffi::lua_Integer, v: ffi::lua_Integer) {
    // SAFETY: as the loops, with a free slot; raises only if `t` must grow and memory is out.
    unsafe {
        ffi::lua_pushinteger(l, v);
        ffi::lua_rawseti(l, t, i);
    }
}

/// As `resume_task`: task `key`'s registration is used up, and it becomes the current task, at
/// defer depth `depth`; the count of resumes goes up. Returns the new count, the resume's serial.
unsafe fn make_current(
    l: *mut ffi::lua_State,
    key: ffi::lua_Integer,
    depth: ffi::lua_Integer,
) -> ffi::lua_Integer {
    // SAFETY: as the loops, with two free slots.
    unsafe {
        ffi::lua_pushnil(l);
        ffi::lua_rawseti(l, A_REGS, key);
        set_int(l, A_SHARED, CURRENT, key);
        set_int(l, A_SHARED, DEPTH, depth);
        bump(l, SERIAL)
    }
}

/// `lua_resume(co, l, nargs, nres)`, through the budget's watch when there is one.
unsafe fn resume(
    l: *mut ffi::lua_State,
    co: *mut ffi::lua_State,
    nargs: c_int,
    watch: Option<&Watch>,
    nres: &mut c_int,
) -> c_int {
    // SAFETY: the caller's, as `lua_resume`'s.
    unsafe {
        match watch {
            Some(watch) => watch.resume(l, co, nargs, nres),
            None => ffi::lua_resume(co, l, nargs, nres),
        }
    }
}

/// After resume number `serial` of task `key` asked for the next frame (its three results still
/// on `co`): queues it there. Its registration is the serial, negated: unique (one per resume,
/// and `lua/task.lua` hands out positive numbers), with no counter to read back.
unsafe fn wait_next(
    l: *mut ffi::lua_State,
    co: *mut ffi::lua_State,
    key: ffi::lua_Integer,
    serial: ffi::lua_Integer,
    now: ffi::lua_Number,
    memory: *mut StepMemory,
) {
    // SAFETY: as the loops: `memory` is not borrowed elsewhere while no Lua runs.
    unsafe {
        ffi::lua_pop(co, 3);
        set_int(l, A_REGS, key, -serial);
        (*memory).waits.next.push(Wait { key, reg: -serial, since: now });
    }
}

/// `run_ready(shared, regs, threads, state, "spent", now, memory_limit, tables, step) -> [what,
/// ...]`: runs the step's ready queue (the tasks woken, timers that fell due, work carried from the
/// last step: [`StepMemory`]'s, which wakes append to while this runs) as `lua/task.lua`'s loop
/// does: it counts each resume against the task's and its instance's bound for the step
/// ([`Resumes`](crate::step_memory::Resumes)), carrying an entry over its bound to the next step
/// (if still registered); resumes the task (with the entry's number, or with the arguments marker,
/// with none when it has no stored arguments) if `reg` is still its registration; and handles the
/// common outcomes without any Lua: the task asked for the next frame (a frame wait, as
/// `run_frames` queues it), or parked on a slot (a promise's or channel's wait: registered with the
/// slot and in `parked`, as `finish_resume` does). `tables` holds `parked, args, owner` (the step's
/// tables of those names) and the two bounds; `step` is the step's number. Returns nothing once
/// the queue is empty (or if its arguments are wrong: the step's Lua loop then takes the rest), or,
/// having taken an entry off the queue:
/// - `1, key, reg, value, depth`: counted, but not for this loop to resume (not a thread
///   suspended in a yield, stored arguments, or no room on the thread's stack): resume it the Lua
///   way;
/// - `2, key, thread, ok, first, kind, arg`: as `run_frames`.
unsafe extern "C-unwind" fn run_ready(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: as `run_frames`.
    unsafe {
        let Some(Loop { now, limit, req, watch, memory }) = begin(l, &[A_TABLES], 40) else { return 0 };
        let step = ffi::lua_tointeger(l, A_STEP);
        ffi::lua_settop(l, A_STEP);
        for i in 1..=(R_MAX_INSTANCE - R_PARKED + 1) {
            ffi::lua_rawgeti(l, A_TABLES, i as ffi::lua_Integer);
        }
        for t in R_PARKED..=R_OWNER {
            if ffi::lua_type(l, t) != ffi::LUA_TTABLE {
                return 0;
            }
        }
        let max_resumes = ffi::lua_tointeger(l, R_MAX_RESUMES);
        let max_instance = ffi::lua_tointeger(l, R_MAX_INSTANCE);
        ffi::lua_rawgeti(l, A_SHARED, CURRENT);
        ffi::lua_rawgeti(l, A_SHARED, DEPTH);
        ffi::lua_pushstring(l, c"key".as_ptr());
        ffi::lua_pushstring(l, c"reg".as_ptr());
        let mut resumed = false;
        loop {
            ffi::lua_settop(l, R_REG_NAME);
            let Some(entry) = (*memory).ready.pop() else { break };
            let Ready { key, reg, value, depth } = entry;
            let inst = int_at(l, R_OWNER, key).unwrap_or(0);
            let registered = int_at(l, A_REGS, key) == Some(reg);
            if !(*memory).resumes.count(key, inst, step, max_resumes, max_instance) {
                if registered {
                    (*memory).ready.carry(entry);
                }
                continue;
            }
            // As `resume_task`: nothing to do unless `reg` is still the task's registration.
            if !registered {
                continue;
            }
            ffi::lua_rawgeti(l, A_THREADS, key); // R_THREAD
            let co = ffi::lua_tothread(l, R_THREAD);
            let stored = value == Resume::Args && ffi::lua_rawgeti(l, R_ARGS, key) != ffi::LUA_TNIL;
            if co.is_null()
                || stored
                || ffi::lua_status(co) != ffi::LUA_YIELD
                || ffi::lua_checkstack(co, 1) == 0
            {
                if resumed {
                    restore(l, R_CURRENT);
                }
                ffi::lua_settop(l, R_THREAD);
                ffi::lua_pushinteger(l, 1);
                ffi::lua_pushinteger(l, key);
                ffi::lua_pushinteger(l, reg);
                push_resume(l, value);
                ffi::lua_pushinteger(l, depth);
                return 5;
            }
            let serial = make_current(l, key, depth);
            let nargs = if value == Resume::Args {
                0
            } else {
                push_resume(co, value);
                1
            };
            let mut nres: c_int = 0;
            let status = resume(l, co, nargs, watch, &mut nres);
            match outcome(co, status, nres, req) {
                Outcome::NextFrame if quiet(l, key, limit, watch) => {
                    resumed = true;
                    wait_next(l, co, key, serial, now, memory);
                }
                Outcome::Park if quiet(l, key, limit, watch) => {
                    // As `finish_resume`: the slot learns who waits on it, and `parked` keeps it
                    // (registered as `wait_next` registers).
                    resumed = true;
                    let reg = -serial;
                    set_int(l, A_REGS, key, reg);
                    ffi::lua_xmove(co, l, 1); // the slot
                    ffi::lua_pop(co, 2);
                    ffi::lua_pushvalue(l, R_KEY_NAME);
                    ffi::lua_pushinteger(l, key);
                    ffi::lua_rawset(l, -3);
                    ffi::lua_pushvalue(l, R_REG_NAME);
                    ffi::lua_pushinteger(l, reg);
                    ffi::lua_rawset(l, -3);
                    ffi::lua_rawseti(l, R_PARKED, key);
                }
                _ => return hand_back(l, key, R_THREAD, co, status, nres),
            }
        }
        if resumed {
            restore(l, R_CURRENT);
        }
        0
    }
}

// The field names a settlement reads and writes, in this order (pushed on entry by
// `settle_resolved`).
const NAMES: [&CStr; 11] = [
    c"_status",
    c"_consumers",
    c"_queue",
    c"_r1",
    c"_values",
    c"_v",
    c"_hook",
    c"_ihook",
    c"_thread",
    c"key",
    c"reg",
];
const N_STATUS: usize = 0;
const N_CONSUMERS: usize = 1;
const N_QUEUE: usize = 2;
const N_R1: usize = 3;
const N_VALUES: usize = 4;
const N_V: usize = 5;
const N_HOOK: usize = 6;
const N_THREAD: usize = 8;
const N_KEY: usize = 9;
const N_REG: usize = 10;

/// Where a settlement finds what it reads (stack indices): the field names, the promise constants
/// `STARTED`, `RESOLVED` and `ONE`, and `lua/task.lua`'s wake tables (its `wake_ctx`: `regs`,
/// `parked`, `args`); and the step's Rust memory (`settle_resolved`'s upvalue).
struct Settling {
    names: [c_int; 11],
    started: c_int,
    resolved: c_int,
    one: c_int,
    regs: c_int,
    parked: c_int,
    args: c_int,
    /// The step's Rust memory, whose ready queue a wake appends to.
    memory: *mut StepMemory,
}

impl Settling {
    /// Pushes `wake_ctx`'s three tables (the context table at `ctx`) and returns where they are.
    unsafe fn wake_tables(l: *mut ffi::lua_State, ctx: c_int) -> Option<[c_int; 3]> {
        // SAFETY: the caller has room for three more values; raw reads.
        unsafe {
            let first = ffi::lua_gettop(l) + 1;
            for k in 1..=3 {
                ffi::lua_rawgeti(l, ctx, k);
            }
            let at = [first, first + 1, first + 2];
            at.iter().all(|&t| ffi::lua_type(l, t) == ffi::LUA_TTABLE).then_some(at)
        }
    }

    /// Whether promise `p` (a table) is settled by [`Self::resolve`] as `settled` would settle
    /// it: pending, no consumers, no reaction queue, and no reaction or one park slot. Pushes four
    /// values, the last the slot (or a false value).
    unsafe fn common(&self, l: *mut ffi::lua_State, p: c_int) -> bool {
        // SAFETY: the caller has room for four more values; raw reads.
        unsafe {
            let field = |name: usize| {
                ffi::lua_pushvalue(l, self.names[name]);
                ffi::lua_rawget(l, p)
            };
            field(N_STATUS);
            if ffi::lua_rawequal(l, -1, self.started) == 0 {
                return false;
            }
            field(N_CONSUMERS);
            if ffi::lua_toboolean(l, -1) != 0 {
                return false;
            }
            field(N_QUEUE);
            if ffi::lua_toboolean(l, -1) != 0 {
                return false;
            }
            let r1 = field(N_R1);
            ffi::lua_toboolean(l, -1) == 0 || r1 == ffi::LUA_TTABLE
        }
    }

    /// `settle1(p, RESOLVED, value)` and the rest of `settled` for a promise [`Self::common`]
    /// accepted, `slot` its one reaction (a park slot, or a false value): its pending-only fields
    /// go, and the task parked on the slot is woken.
    unsafe fn resolve(&self, l: *mut ffi::lua_State, p: c_int, value: c_int, slot: c_int) {
        // SAFETY: the caller has room for eight more values; raw writes, which raise only out of
        // memory (`_values` and `_v` are new keys), as the Lua's do.
        unsafe {
            for (name, v) in [(N_STATUS, self.resolved), (N_VALUES, self.one), (N_V, value)] {
                ffi::lua_pushvalue(l, self.names[name]);
                ffi::lua_pushvalue(l, v);
                ffi::lua_rawset(l, p);
            }
            for name in N_HOOK..=N_THREAD {
                self.clear(l, p, name);
            }
            if ffi::lua_type(l, slot) == ffi::LUA_TTABLE {
                self.clear(l, p, N_R1);
                self.wake(l, slot);
            }
        }
    }

    /// `t[name] = nil` where the field is there (a raw store of nil under a new key is nothing in
    /// Lua 5.4, but would take a slot elsewhere).
    unsafe fn clear(&self, l: *mut ffi::lua_State, t: c_int, name: usize) {
        // SAFETY: the caller has room for three more values; raw reads and writes.
        unsafe {
            ffi::lua_pushvalue(l, self.names[name]);
            if ffi::lua_rawget(l, t) != ffi::LUA_TNIL {
                ffi::lua_pushvalue(l, self.names[name]);
                ffi::lua_pushnil(l);
                ffi::lua_rawset(l, t);
            }
            ffi::lua_pop(l, 1);
        }
    }

    /// `lua/task.lua`'s `wake(slot)`: if the task parked on the slot still waits there, the slot
    /// is marked woken (`key = false`), the task forgets it and any stale arguments, and it goes
    /// on the ready queue, to be resumed with no values.
    unsafe fn wake(&self, l: *mut ffi::lua_State, slot: c_int) {
        // SAFETY: the caller has room for six more values; raw reads and writes.
        unsafe {
            let top = ffi::lua_gettop(l);
            ffi::lua_pushvalue(l, self.names[N_KEY]);
            ffi::lua_rawget(l, slot);
            let mut integer = 0;
            let key = ffi::lua_tointegerx(l, -1, &mut integer);
            ffi::lua_pushvalue(l, self.names[N_REG]);
            ffi::lua_rawget(l, slot);
            let reg = ffi::lua_gettop(l);
            let mut reg_integer = 0;
            let reg_value = ffi::lua_tointegerx(l, reg, &mut reg_integer);
            // A task key is a small positive integer and a registration a number. The slot is a
            // table scripts can reach (a promise's fields are plain), so anything else is refused,
            // the key before it is used as an index (LuaJIT's and Luau's `lua_rawgeti` take an
            // `int`), as `wake` refuses a slot with no registration.
            if integer == 0 || !(1..=ffi::lua_Integer::from(c_int::MAX)).contains(&key) || reg_integer == 0 {
                ffi::lua_settop(l, top);
                return;
            }
            ffi::lua_rawgeti(l, self.regs, key);
            ffi::lua_rawgeti(l, self.parked, key);
            if ffi::lua_rawequal(l, -2, reg) == 0 || ffi::lua_rawequal(l, -1, slot) == 0 {
                // Not waiting there (cancelled, or woken already), or a forged slot: as `wake`.
                ffi::lua_settop(l, top);
                return;
            }
            ffi::lua_pushvalue(l, self.names[N_KEY]);
            ffi::lua_pushboolean(l, 0);
            ffi::lua_rawset(l, slot);
            for t in [self.parked, self.args] {
                if ffi::lua_rawgeti(l, t, key) != ffi::LUA_TNIL {
                    ffi::lua_pushnil(l);
                    ffi::lua_rawseti(l, t, key);
                }
                ffi::lua_pop(l, 1);
            }
            (*self.memory).ready.push(Ready { key, reg: reg_value, value: Resume::Args, depth: 0 });
            ffi::lua_settop(l, top);
        }
    }
}

// `settle_resolved`'s arguments, by stack index; then `wake_ctx`'s three tables, the 11 names, and
// per entry its id, ok and value, the promise, and what `Settling::common` pushes (the slot last).
const SR_Q: c_int = 1;
const SR_I: c_int = 2;
const SR_N: c_int = 3;
const SR_PROMISES: c_int = 4;
const SR_IDS: c_int = 5;
const SR_STARTED: c_int = 6;
const SR_RESOLVED: c_int = 7;
const SR_ONE: c_int = 8;
const SR_CTX: c_int = 9;
const SR_NAMES: c_int = 13;
const SR_ID: c_int = 24;
const SR_OK: c_int = 25;
const SR_VALUE: c_int = 26;
const SR_P: c_int = 27;
const SR_SLOT: c_int = 31;

/// `settle_resolved(q, i, n, promises, ids, STARTED, RESOLVED, ONE, wake_ctx) -> i'`: the common
/// case of `lua/promise.lua`'s `settle_batch` (Rust completions settling the promises they were
/// filed under) without running any Lua. From entry `i` of the `id, ok, value` triples at
/// `q[i..n]`, it takes each entry whose promise is gone (`promises[id]` nil: the entry is only
/// cleared) or is resolved (`ok` true) with a value that is not a table and is one
/// [`Settling::common`] accepts: as `settle_deferred` → `settle1` → `settled` → `wake` do, the
/// entry is cleared, the promise forgotten (`promises`, `ids`) and resolved with the one value,
/// and its waiting task woken. It stops at the first entry of any other kind and returns its index
/// (past `n` when it took them all): `settle_batch` settles that one in Lua, then calls again.
/// The caller makes sure that a settlement may wake a task at once (reactions do not nest too
/// deep), as `settled` checks. Raises only as the Lua would: a table that must grow, out of
/// memory.
unsafe extern "C-unwind" fn settle_resolved(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with its arguments (checked below: anything unexpected takes
    // nothing, and `settle_batch` settles in Lua); every read and write is raw, so no Lua runs.
    unsafe {
        let mut i = ffi::lua_tointeger(l, SR_I);
        let n = ffi::lua_tointeger(l, SR_N);
        ffi::lua_settop(l, SR_CTX);
        let tables = [SR_Q, SR_PROMISES, SR_IDS, SR_CTX];
        let wake = if tables.iter().all(|&t| ffi::lua_type(l, t) == ffi::LUA_TTABLE)
            && ffi::lua_checkstack(l, 40) != 0
        {
            Settling::wake_tables(l, SR_CTX)
        } else {
            None
        };
        let Some([regs, parked, args]) = wake else {
            ffi::lua_pushinteger(l, i);
            return 1;
        };
        for name in NAMES {
            ffi::lua_pushstring(l, name.as_ptr());
        }
        let s = Settling {
            names: std::array::from_fn(|k| SR_NAMES + k as c_int),
            started: SR_STARTED,
            resolved: SR_RESOLVED,
            one: SR_ONE,
            regs,
            parked,
            args,
            memory: ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *mut StepMemory,
        };
        while i <= n {
            ffi::lua_settop(l, SR_ID - 1);
            ffi::lua_rawgeti(l, SR_Q, i); // SR_ID
            ffi::lua_rawgeti(l, SR_Q, i + 1); // SR_OK
            ffi::lua_rawgeti(l, SR_Q, i + 2); // SR_VALUE
            ffi::lua_pushvalue(l, SR_ID);
            let p = ffi::lua_rawget(l, SR_PROMISES); // SR_P
            let common = p == ffi::LUA_TNIL
                || (p == ffi::LUA_TTABLE
                    && ffi::lua_type(l, SR_OK) == ffi::LUA_TBOOLEAN
                    && ffi::lua_toboolean(l, SR_OK) != 0
                    && ffi::lua_type(l, SR_VALUE) != ffi::LUA_TTABLE
                    && s.common(l, SR_P));
            if !common {
                break;
            }
            for k in 0..3 {
                ffi::lua_pushnil(l);
                ffi::lua_rawseti(l, SR_Q, i + k);
            }
            i += 3;
            if p == ffi::LUA_TNIL {
                continue;
            }
            // `settle`: forgotten by id and by promise.
            ffi::lua_pushvalue(l, SR_ID);
            ffi::lua_pushnil(l);
            ffi::lua_rawset(l, SR_PROMISES);
            ffi::lua_pushvalue(l, SR_P);
            ffi::lua_pushnil(l);
            ffi::lua_rawset(l, SR_IDS);
            s.resolve(l, SR_P, SR_VALUE, SR_SLOT);
        }
        ffi::lua_pushinteger(l, i);
        1
    }
}

/// What a resume came to, as far as the raw loops are concerned.
#[derive(PartialEq)]
enum Outcome {
    /// The task yielded `REQ, WAIT_TIME, nil`: `task.wait()`, due next frame.
    NextFrame,
    /// The task yielded `REQ, PARK, slot` (a table): it waits for `wake(slot)`.
    Park,
    /// Anything else.
    Other,
}

/// Classifies what `co` returned from a resume with `status` and `nres` results (on its stack).
unsafe fn outcome(co: *mut ffi::lua_State, status: c_int, nres: c_int, req: *mut c_void) -> Outcome {
    // SAFETY: `co` was just resumed and holds its `nres` results.
    unsafe {
        if status != ffi::LUA_YIELD
            || nres != 3
            || ffi::lua_type(co, -3) != ffi::LUA_TLIGHTUSERDATA
            || ffi::lua_touserdata(co, -3) != req
            || ffi::lua_type(co, -2) != ffi::LUA_TNUMBER
        {
            return Outcome::Other;
        }
        let kind = ffi::lua_tonumber(co, -2);
        let arg = ffi::lua_type(co, -1);
        if kind == WAIT_TIME.load(Ordering::Relaxed) as ffi::lua_Number && arg == ffi::LUA_TNIL {
            Outcome::NextFrame
        } else if kind == PARK.load(Ordering::Relaxed) as ffi::lua_Number && arg == ffi::LUA_TTABLE {
            Outcome::Park
        } else {
            Outcome::Other
        }
    }
}

/// Hands the resume of task `key` (its thread at `thread`, `co`) back to `lua/task.lua`: returns
/// `2, key, thread, ok, first, kind, arg`, what `coroutine.resume` would have returned (its
/// first three results), for `finish_resume`.
unsafe fn hand_back(
    l: *mut ffi::lua_State,
    key: ffi::lua_Integer,
    thread: c_int,
    co: *mut ffi::lua_State,
    status: c_int,
    nres: c_int,
) -> c_int {
    // SAFETY: as the loops that call it, which leave room for 4 values on `l`.
    unsafe {
        ffi::lua_pushinteger(l, 2);
        ffi::lua_pushinteger(l, key);
        ffi::lua_pushvalue(l, thread);
        if status == ffi::LUA_OK || status == ffi::LUA_YIELD {
            if ffi::lua_checkstack(l, nres + 3) == 0 {
                ffi::lua_pop(co, nres);
                ffi::lua_pushboolean(l, 0);
                ffi::lua_pushstring(l, c"too many results to resume".as_ptr());
                return 5;
            }
            ffi::lua_pushboolean(l, 1);
            ffi::lua_xmove(co, l, nres);
            if nres > 3 {
                ffi::lua_pop(l, nres - 3);
            }
            for _ in nres..3 {
                ffi::lua_pushnil(l);
            }
            return 7;
        }
        ffi::lua_pushboolean(l, 0);
        ffi::lua_xmove(co, l, 1); // the error value
        // LuaJIT and Luau collect nothing before they fail an allocation: a task that failed
        // near the limit leaves the step no memory to grow its stack by, to report it and go
        // on, until the step ends (Lua 5.4 collects first). LuaJIT's `fail` relaxes the limit
        // too, but the step's own calls on the way there can fail first, which lost the task.
        #[cfg(any(feature = "luau", feature = "luajit"))]
        relax(Lua::get_or_init_from_ptr(l), true);
        5
    }
}

/// What both loops read once, on entry.
struct Loop<'a> {
    /// The step's game time (`A_NOW`).
    now: ffi::lua_Number,
    /// The VM size (KiB) past which a resume goes back to Lua (`A_MEMORY`), if any.
    limit: Option<f64>,
    /// The request marker.
    req: *mut c_void,
    /// The budget's watch (upvalue 1).
    watch: Option<&'a Watch>,
    /// The step's Rust memory (upvalue 2).
    memory: *mut StepMemory,
}

/// Checks a loop's arguments (those of `run_frames`, and the tables at `tables`) and makes room
/// for `slots` values on its stack; `None` if it cannot run.
unsafe fn begin<'a>(l: *mut ffi::lua_State, tables: &[c_int], slots: c_int) -> Option<Loop<'a>> {
    // SAFETY: called first thing by a loop made by `hook::watch_closure`, with the step's memory
    // as its second upvalue.
    unsafe {
        for &arg in [A_SHARED, A_REGS, A_THREADS, A_STATE].iter().chain(tables) {
            if ffi::lua_type(l, arg) != ffi::LUA_TTABLE {
                return None;
            }
        }
        if ffi::lua_checkstack(l, slots) == 0 {
            return None;
        }
        Some(Loop {
            now: ffi::lua_tonumber(l, A_NOW),
            limit: (ffi::lua_type(l, A_MEMORY) == ffi::LUA_TNUMBER).then(|| ffi::lua_tonumber(l, A_MEMORY)),
            req: REQ.load(Ordering::Relaxed),
            watch: crate::hook::upvalue_watch(l),
            memory: ffi::lua_touserdata(l, ffi::lua_upvalueindex(2)) as *mut StepMemory,
        })
    }
}

/// Adds 1 to the shared table's counter at `slot` and returns the new value (the old one stays on
/// the stack: `run_frames` clears its stack once per entry).
unsafe fn bump(l: *mut ffi::lua_State, slot: ffi::lua_Integer) -> ffi::lua_Integer {
    // SAFETY: as `run_frames`, whose stack this uses (two free slots).
    unsafe {
        ffi::lua_rawgeti(l, A_SHARED, slot);
        let v = ffi::lua_tointeger(l, -1) + 1;
        ffi::lua_pushinteger(l, v);
        ffi::lua_rawseti(l, A_SHARED, slot);
        v
    }
}

/// Makes the task that was current when a loop was called (saved at `saved`) and its defer depth
/// (at `saved + 1`) current again.
unsafe fn restore(l: *mut ffi::lua_State, saved: c_int) {
    // SAFETY: as the loops, whose saved slots these are.
    unsafe {
        ffi::lua_pushvalue(l, saved);
        ffi::lua_rawseti(l, A_SHARED, CURRENT);
        ffi::lua_pushvalue(l, saved + 1);
        ffi::lua_rawseti(l, A_SHARED, DEPTH);
    }
}

/// After a resume that asked for the next frame or parked: whether nothing else needs the Lua step's
/// attention (nothing registered the task meanwhile, no budget ran out, nothing set [`LOOK`], and
/// the VM is under `limit` KiB).
unsafe fn quiet(
    l: *mut ffi::lua_State,
    key: ffi::lua_Integer,
    limit: Option<f64>,
    watch: Option<&Watch>,
) -> bool {
    // SAFETY: as `run_frames`, whose stack this uses (three free slots at most).
    unsafe {
        ffi::lua_rawgeti(l, A_REGS, key);
        let registered = ffi::lua_type(l, -1) != ffi::LUA_TNIL;
        // The budget's flag; with a watch, its copy there (set and cleared with it).
        let spent = match watch {
            Some(watch) => watch.spent.load(Ordering::Acquire),
            None => {
                ffi::lua_pushvalue(l, A_SPENT);
                ffi::lua_rawget(l, A_STATE);
                ffi::lua_toboolean(l, -1) != 0
            }
        };
        ffi::lua_rawgeti(l, A_SHARED, LOOK);
        let look = ffi::lua_toboolean(l, -1) != 0; // (what it pushed stays: see `bump`)
        if registered || spent || look {
            return false;
        }
        match limit {
            None => true,
            Some(kib) => {
                // Whole KiB, rounded up (Luau has no count of the bytes beyond them).
                let used = ffi::lua_gc(l, ffi::LUA_GCCOUNT, 0 as c_int) as f64 + 1.0;
                used <= kib
            }
        }
    }
}
