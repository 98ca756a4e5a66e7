//! The scheduler's hot path over Lua's C API: the common waits (`task.wait`, `sleep`,
//! `task.waitFrames`) as C functions that yield their request directly, what a cancellation
//! keeps of where a task stood (`frames`, Lua 5.4), and the loop that resumes
//! this frame's frame waits, handling the common outcome (the task asked to wait for the next
//! frame again) without running any Lua. Every other outcome goes back to `lua/task.lua`, which
//! finishes it exactly as its own resume does. Everything else talks to Lua through mlua.
//!
//! Invariants:
//! - The functions here are only ever called by Lua, on the VM's own OS thread. `run_frames`'s
//!   upvalue is the budget's [`Watch`] (or null), which lives as long as the VM; every resume goes
//!   through it, so the budget's watchdog sees the thread running. `run_frames` is
//!   called only by `lua/task.lua`'s step, with the arguments listed on it (it checks their types
//!   and returns nothing if they are wrong, so the step falls back to its Lua loop).
//! - A thread is resumed only if it is suspended in a yield (`lua_status == LUA_YIELD`), which is
//!   what a registered frame wait always is; anything else is handed back to Lua untouched.
//! - The loop checks that its stack has room for what it pushes (16 slots) on entry; it clears
//!   its stack back to the saved slots at the start of each entry, so what one entry leaves (at
//!   most 9 values) never adds up. A task thread gets one slot checked with `lua_checkstack`
//!   before its resume value is pushed.
//! - The only calls here that can raise a Lua error are table writes that must grow a table (out
//!   of memory) and, in the waits, the `bad argument` error itself. A raise unwinds (LuaJIT, Luau)
//!   or `longjmp`s (Lua 5.4) through these frames, so they hold nothing that needs dropping, and
//!   every counter the step shares is written back to its table before the next raising call.
//! - The counters shared with `lua/task.lua` live in one table (`shared`), at the slot numbers
//!   below, which the Lua file names the same way.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::sync::atomic::{AtomicI64, AtomicPtr, Ordering};

use std::sync::Arc;

use mlua::{Function, Lua, Table, ffi};

use crate::hook::Watch;

/// Slot of the shared table: the task being resumed (0: none).
pub(crate) const CURRENT: ffi::lua_Integer = 1;
/// Slot: the defer depth of the task being resumed.
pub(crate) const DEPTH: ffi::lua_Integer = 2;
/// Slot: the number of resumes so far.
pub(crate) const SERIAL: ffi::lua_Integer = 3;
/// Slot: set when a task failed for want of memory (the step collects garbage).
const MEMORY_FAILED: ffi::lua_Integer = 4;
// Slot 5 is the last registration number `lua/task.lua` handed out (positive numbers); the
// registrations this loop makes are negative (see `run_frames`).
/// Slot: the number of frame waits queued for the next frame.
const NEXT_N: ffi::lua_Integer = 6;

/// The request marker every wait yields first (a light userdata; see `scheduler::req`).
static REQ: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
/// The request kinds the waits yield (see `scheduler::kind`).
static WAIT_TIME: AtomicI64 = AtomicI64::new(0);
static WAIT_FRAMES: AtomicI64 = AtomicI64::new(0);

/// Where `lua/task.lua`'s `bad` (its `bad argument` error) is kept in the registry.
const BAD: &CStr = c"bevy_lua_coroutines.task.bad";

/// The C functions for `lua/task.lua`: `wait`, `sleep`, `waitFrames`, `run_frames`, and
/// `set_bad(f)`, which gives the waits the function that raises their `bad argument` errors.
/// `req` is the request marker; `wait_time` and `wait_frames` the request kinds.
pub(crate) fn functions(
    lua: &Lua,
    req: *mut c_void,
    wait_time: i64,
    wait_frames: i64,
    watch: Option<&Arc<Watch>>,
) -> mlua::Result<Table> {
    REQ.store(req, Ordering::Relaxed);
    WAIT_TIME.store(wait_time, Ordering::Relaxed);
    WAIT_FRAMES.store(wait_frames, Ordering::Relaxed);
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
    // `run_frames` resumes through the budget's watch, if it has one.
    let run = crate::hook::watch_closure(lua, watch, run_frames)?;
    t.raw_set("run_frames", run)?;
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
        let n = ffi::lua_tointeger(l, 2).clamp(0, 64) as c_int;
        ffi::lua_createtable(l, 2 * n, 0);
        let mut ar: ffi::lua_Debug = std::mem::zeroed();
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

// `run_frames`'s arguments, by stack index.
const A_SHARED: c_int = 1;
const A_NOW_KEYS: c_int = 2;
const A_NOW_REGS: c_int = 3;
const A_NOW_SINCE: c_int = 4;
const A_REGS: c_int = 5;
const A_THREADS: c_int = 6;
const A_NEXT_KEYS: c_int = 7;
const A_NEXT_REGS: c_int = 8;
const A_NEXT_SINCE: c_int = 9;
const A_STATE: c_int = 10;
const A_SPENT: c_int = 11;
const A_FROM: c_int = 12;
const A_TO: c_int = 13;
const A_NOW: c_int = 14;
const A_MEMORY: c_int = 15;
// Saved on entry: the task being resumed and its depth (restored when the loop stops; a raise
// out of the loop leaves the last task named, which `step.run` and the step clear).
const S_CURRENT: c_int = 16;
const S_DEPTH: c_int = 17;
// Per entry: its key, its registration, the thread.
const E_KEY: c_int = 18;
const E_REG: c_int = 19;
const E_THREAD: c_int = 20;

/// `run_frames(shared, now_keys, now_regs, now_since, regs, threads, next_keys, next_regs,
/// next_since, state, "spent", from, to, now, memory_limit) -> i [, what, ...]`: resumes the frame
/// waits `from..=to` of this frame (parallel arrays), each with the game seconds since it waited,
/// as long as each asks to wait for the next frame again; those it queues for the next frame
/// (`next_*`, counted in the shared table) with a fresh registration. It returns the index of the
/// first entry not done and, if it stopped early, why:
/// - `i, 1, key, reg, value`: entry `key` (registration `reg`) is not a thread suspended in a
///   yield: resume it the Lua way;
/// - `i, 2, key, thread, ok, first, kind, arg`: entry `key` was resumed and did something else
///   (finished, failed, asked for another wait, spent its budget, or the VM grew past
///   `memory_limit` KiB): finish it the Lua way (the shared table still names it as the current
///   task).
unsafe extern "C-unwind" fn run_frames(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see the module's invariants: `l` is the running thread, the tables are the step's,
    // and each thread resumed is suspended in a yield.
    unsafe {
        for arg in A_SHARED..=A_STATE {
            if ffi::lua_type(l, arg) != ffi::LUA_TTABLE {
                return 0;
            }
        }
        if ffi::lua_checkstack(l, 16) == 0 {
            return 0;
        }
        let mut i = ffi::lua_tointeger(l, A_FROM);
        let to = ffi::lua_tointeger(l, A_TO);
        let now = ffi::lua_tonumber(l, A_NOW);
        let limit = (ffi::lua_type(l, A_MEMORY) == ffi::LUA_TNUMBER).then(|| ffi::lua_tonumber(l, A_MEMORY));
        let req = REQ.load(Ordering::Relaxed);
        let watch = crate::hook::upvalue_watch(l);
        let wait_time = WAIT_TIME.load(Ordering::Relaxed) as ffi::lua_Number;
        ffi::lua_settop(l, A_MEMORY);
        ffi::lua_rawgeti(l, A_SHARED, CURRENT);
        ffi::lua_rawgeti(l, A_SHARED, DEPTH);
        // Whether a task was resumed fast since the current one was last restored.
        let mut resumed = false;
        while i <= to {
            ffi::lua_settop(l, S_DEPTH);
            ffi::lua_rawgeti(l, A_NOW_KEYS, i);
            ffi::lua_rawgeti(l, A_NOW_REGS, i);
            let key = ffi::lua_tointeger(l, E_KEY);
            ffi::lua_rawgeti(l, A_REGS, key);
            let current = ffi::lua_rawequal(l, E_REG, -1) != 0;
            ffi::lua_rawgeti(l, A_NOW_SINCE, i);
            let value = (now - ffi::lua_tonumber(l, -1)) / 1e9;
            i += 1;
            if !current {
                continue; // cancelled, or woken another way
            }
            ffi::lua_settop(l, E_REG);
            ffi::lua_rawgeti(l, A_THREADS, key);
            let co = ffi::lua_tothread(l, E_THREAD);
            if co.is_null() || ffi::lua_status(co) != ffi::LUA_YIELD || ffi::lua_checkstack(co, 1) == 0 {
                if resumed {
                    restore(l);
                }
                ffi::lua_pushinteger(l, i);
                ffi::lua_pushinteger(l, 1);
                ffi::lua_pushvalue(l, E_KEY);
                ffi::lua_pushvalue(l, E_REG);
                ffi::lua_pushnumber(l, value);
                return 5;
            }
            // As `resume_task`: the registration is used up, and the task is the current one.
            ffi::lua_pushnil(l);
            ffi::lua_rawseti(l, A_REGS, key);
            ffi::lua_pushvalue(l, E_KEY);
            ffi::lua_rawseti(l, A_SHARED, CURRENT);
            ffi::lua_pushinteger(l, 0);
            ffi::lua_rawseti(l, A_SHARED, DEPTH);
            let serial = bump(l, SERIAL);

            ffi::lua_pushnumber(co, value);
            let mut nres: c_int = 0;
            let status = match watch {
                Some(watch) => watch.resume(l, co, 1, &mut nres),
                None => ffi::lua_resume(co, l, 1, &mut nres),
            };

            let again = status == ffi::LUA_YIELD
                && nres == 3
                && ffi::lua_type(co, -3) == ffi::LUA_TLIGHTUSERDATA
                && ffi::lua_touserdata(co, -3) == req
                && ffi::lua_type(co, -2) == ffi::LUA_TNUMBER
                && ffi::lua_tonumber(co, -2) == wait_time
                && ffi::lua_type(co, -1) == ffi::LUA_TNIL
                && quiet(l, key, limit, watch);
            if again {
                ffi::lua_pop(co, 3);
                // The task that was current comes back when the loop stops (`restore`): until
                // then no Lua runs but the next task, which is made current first.
                resumed = true;
                // The registration is the resume's serial, negated: unique (one per resume, and
                // `lua/task.lua` hands out positive numbers), with no counter to read back.
                let reg = -serial;
                ffi::lua_pushinteger(l, reg);
                ffi::lua_rawseti(l, A_REGS, key);
                ffi::lua_rawgeti(l, A_SHARED, NEXT_N); // left on the stack: the next entry clears it
                let n = ffi::lua_tointeger(l, -1) + 1;
                ffi::lua_pushinteger(l, key);
                ffi::lua_rawseti(l, A_NEXT_KEYS, n);
                ffi::lua_pushinteger(l, reg);
                ffi::lua_rawseti(l, A_NEXT_REGS, n);
                ffi::lua_pushvalue(l, A_NOW);
                ffi::lua_rawseti(l, A_NEXT_SINCE, n);
                ffi::lua_pushinteger(l, n);
                ffi::lua_rawseti(l, A_SHARED, NEXT_N);
                continue;
            }
            // Anything else: hand `ok, first, kind, arg` (as `coroutine.resume` returns them) back.
            ffi::lua_pushinteger(l, i);
            ffi::lua_pushinteger(l, 2);
            ffi::lua_pushvalue(l, E_KEY);
            ffi::lua_pushvalue(l, E_THREAD);
            if status == ffi::LUA_OK || status == ffi::LUA_YIELD {
                if ffi::lua_checkstack(l, nres + 3) == 0 {
                    ffi::lua_pop(co, nres);
                    ffi::lua_pushboolean(l, 0);
                    ffi::lua_pushstring(l, c"too many results to resume".as_ptr());
                    return 6;
                }
                ffi::lua_pushboolean(l, 1);
                ffi::lua_xmove(co, l, nres);
                if nres > 3 {
                    ffi::lua_pop(l, nres - 3);
                }
                for _ in nres..3 {
                    ffi::lua_pushnil(l);
                }
                return 8;
            }
            ffi::lua_pushboolean(l, 0);
            ffi::lua_xmove(co, l, 1); // the error value
            return 6;
        }
        if resumed {
            restore(l);
        }
        ffi::lua_pushinteger(l, i);
        1
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

/// Makes the task that was current when `run_frames` was called (and its defer depth) current
/// again.
unsafe fn restore(l: *mut ffi::lua_State) {
    // SAFETY: as `run_frames`, whose saved slots these are.
    unsafe {
        ffi::lua_pushvalue(l, S_CURRENT);
        ffi::lua_rawseti(l, A_SHARED, CURRENT);
        ffi::lua_pushvalue(l, S_DEPTH);
        ffi::lua_rawseti(l, A_SHARED, DEPTH);
    }
}

/// After a resume that asked for the next frame again: whether nothing else needs the Lua step's
/// attention (nothing registered the task meanwhile, no budget ran out, no task failed for want of
/// memory, and the VM is under `limit` KiB).
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
        ffi::lua_rawgeti(l, A_SHARED, MEMORY_FAILED);
        let memory_failed = ffi::lua_toboolean(l, -1) != 0; // (what it pushed stays: see `bump`)
        if registered || spent || memory_failed {
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
