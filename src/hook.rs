//! The few raw calls the instruction budget needs that mlua does not offer: changing how often a
//! thread's hook fires, arming and disarming it, asking whether a thread can yield, and (Lua 5.4)
//! the watchdog that lets scripts run without any hook until one resume runs long. This is the
//! crate's only `unsafe` outside the VM's creation.
//!
//! Invariants: a thread is named by `Thread::to_pointer()`, which for a thread is its
//! `lua_State*` on every flavour (`lua_topointer` returns the object itself); it is only used
//! while the thread is alive (the caller holds the `Thread`, or is running on it inside its hook,
//! or it is the thread [`Watch`] publishes as running, which a resume holds on its stack), and
//! only on the thread that owns the VM, except for [`Watch`]'s watchdog, which calls
//! `lua_sethook` on the running thread from its own OS thread. The Lua manual allows that ("this
//! function can be called asynchronously"; `lua.c` stops a script on Ctrl-C that way): the hook
//! takes effect at the next instruction the running code fetches after a jump or a call. While
//! the watchdog does so, the published thread cannot be unpublished (see [`Watch::running`]), so
//! it stays alive.
#![allow(unsafe_code)]

use std::ffi::c_void;

use mlua::ffi;

#[cfg(not(any(feature = "luajit", feature = "luau")))]
pub(crate) use lazy::{Raiser, Watch, close_function, hook_of, install_raiser, raise_next, resume_function};

#[cfg(feature = "luau")]
pub(crate) use interrupt::{frame_at, remove_interrupt, set_interrupt};

/// Makes the hook of thread `state` (if it has one) fire every `count` instructions. Under LuaJIT
/// the hook is global: every thread changes.
#[cfg(not(feature = "luau"))]
pub(crate) fn set_count(state: *const c_void, count: i32) {
    if state.is_null() {
        return;
    }
    let l = state as *mut ffi::lua_State;
    // SAFETY: see the module's invariants: `l` is a live thread of this VM, used on its own OS thread.
    unsafe {
        let Some(hook) = ffi::lua_gethook(l) else { return };
        if ffi::lua_gethookcount(l) != count {
            let mask = ffi::lua_gethookmask(l);
            // Lua 5.1's `lua_sethook` returns an int, later versions nothing.
            #[allow(clippy::let_unit_value)]
            let _ = ffi::lua_sethook(l, Some(hook), mask, count);
        }
    }
}

/// Registry field holding the scheduler's state table (`core.state`), whose `spent` flag
/// [`set_spent_flag`] writes.
pub(crate) const STATE_KEY: &std::ffi::CStr = c"bevy_lua_coroutines.state";

/// Sets `state.spent` (the flag the step's Lua reads) and `state.spent_task` (the task whose
/// resume it was) from thread `state` (the running one) without allocating, where the heap may be
/// full and a store through mlua may fail: the table and both fields exist, so neither the
/// lookups nor the stores make anything. Returns false if it could not (no thread, or no room on
/// its stack).
pub(crate) fn set_spent_flag(state: *const c_void, value: bool, task: i64) -> bool {
    if state.is_null() {
        return false;
    }
    let l = state as *mut ffi::lua_State;
    // SAFETY: see the module's invariants (`state` is the running thread, on the VM's thread);
    // two slots are checked for and popped again.
    unsafe {
        if ffi::lua_checkstack(l, 2) == 0 {
            return false;
        }
        if ffi::lua_getfield(l, ffi::LUA_REGISTRYINDEX, STATE_KEY.as_ptr()) != ffi::LUA_TTABLE {
            ffi::lua_pop(l, 1);
            return false;
        }
        ffi::lua_pushinteger(l, task as ffi::lua_Integer);
        ffi::lua_setfield(l, -2, c"spent_task".as_ptr());
        ffi::lua_pushboolean(l, value as std::ffi::c_int);
        ffi::lua_setfield(l, -2, c"spent".as_ptr());
        ffi::lua_pop(l, 1);
        true
    }
}

/// Luau has interrupts, not counted hooks: nothing to change.
#[cfg(feature = "luau")]
pub(crate) fn set_count(_state: *const c_void, _count: i32) {}

/// Whether the running thread `state` can yield here (not inside a C call such as a metamethod,
/// a `string.gsub` callback or a Rust function).
pub(crate) fn yieldable(state: *const c_void) -> bool {
    #[cfg(feature = "luajit")]
    {
        let _ = state;
        false
    }
    #[cfg(not(feature = "luajit"))]
    {
        // SAFETY: see the module's invariants.
        !state.is_null() && unsafe { ffi::lua_isyieldable(state as *mut ffi::lua_State) != 0 }
    }
}

/// C closure `f` with the budget's `watch` (null for none) as its upvalue 1, which
/// [`upvalue_watch`] reads: how the C functions that resume threads reach the watch. Upvalue 2 is
/// `extra`, a light userdata for `f`'s own use (null if it has none).
pub(crate) fn watch_closure(
    lua: &mlua::Lua,
    watch: Option<&std::sync::Arc<Watch>>,
    extra: *mut c_void,
    f: ffi::lua_CFunction,
) -> mlua::Result<mlua::Function> {
    let watch = watch.map_or(std::ptr::null_mut(), |w| std::sync::Arc::as_ptr(w) as *mut c_void);
    // SAFETY: the closure only pushes onto the stack it is given; the `Watch` it points to is kept
    // alive by the budget for as long as the VM lives.
    unsafe {
        lua.exec_raw::<mlua::Function>((), |l| {
            ffi::lua_pushlightuserdata(l, watch);
            ffi::lua_pushlightuserdata(l, extra);
            ffi::lua_pushcclosure(l, f, 2);
        })
    }
}

/// The watch of the C closure running on `l` (made by [`watch_closure`]), if it has one.
///
/// # Safety
/// Only called by a C function made by [`watch_closure`], while it runs.
pub(crate) unsafe fn upvalue_watch<'a>(l: *mut ffi::lua_State) -> Option<&'a Watch> {
    // SAFETY: upvalue 1 is a light userdata that is null or points to a live `Watch`.
    unsafe { (ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *const Watch).as_ref() }
}

/// LuaJIT and Luau count exactly: the budget never has a watch (see `lazy` for Lua 5.4's).
#[cfg(any(feature = "luajit", feature = "luau"))]
#[derive(Default)]
pub(crate) struct Watch {
    /// The budget is spent.
    pub spent: std::sync::atomic::AtomicBool,
}

#[cfg(any(feature = "luajit", feature = "luau"))]
impl Watch {
    pub fn stale(&self) -> bool {
        false
    }

    pub fn arm(&self, state: *const c_void, count: i32) {
        set_count(state, count);
    }

    pub fn disarm(&self, _state: *const c_void) {}

    /// `lua_resume(co, l, narg, nres)`: nothing to publish.
    ///
    /// # Safety
    /// As `lua_resume`.
    pub unsafe fn resume(
        &self,
        l: *mut ffi::lua_State,
        co: *mut ffi::lua_State,
        narg: std::ffi::c_int,
        nres: &mut std::ffi::c_int,
    ) -> std::ffi::c_int {
        // SAFETY: the caller's.
        unsafe { ffi::lua_resume(co, l, narg, nres) }
    }
}

/// Lua 5.4's hook-free budget: the watchdog, and the resume and close functions that tell it which
/// thread runs.
#[cfg(not(any(feature = "luajit", feature = "luau")))]
mod lazy {
    use std::ffi::c_void;
    use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use mlua::ffi;

    /// `Watch::running` while the watchdog arms the published thread.
    const ARMING: *mut c_void = std::ptr::dangling_mut::<c_void>();

    /// What the watchdog of one VM (Lua 5.4) sees: which thread runs script code, and since which
    /// resume. Scripts run with no hook; once one resume of the step has run for a whole slice, the
    /// watchdog arms the count hook on whatever thread is running, and from then on the budget counts
    /// as in exact mode.
    #[derive(Default)]
    pub(crate) struct Watch {
        /// The `lua_State*` running script code (null: none). Only the VM's thread publishes, with a
        /// compare-and-swap that waits while it is [`ARMING`]: so the watchdog, which swaps in `ARMING`
        /// before touching the thread, never touches a thread that stopped running.
        running: AtomicPtr<c_void>,
        /// Resumes the step has started (a resume called from the main thread): each gets a fresh slice.
        resumes: AtomicU64,
        /// The resume the hooks now armed belong to: a hook firing in a later one disarms itself.
        armed_for: AtomicU64,
        /// The budget is spent: the watchdog arms with a count of 1.
        pub spent: AtomicBool,
        /// The main thread (`lua_State*`).
        main: AtomicPtr<c_void>,
        /// Instructions between two hook calls.
        every: AtomicI32,
        /// mlua's global hook function, which calls the budget's `on_hook`.
        hook: AtomicUsize,
        /// Held by whoever changes a thread's hook: the watchdog and the VM's thread.
        lock: Mutex<()>,
    }

    impl Watch {
        /// A watch for the VM whose main thread is `main`, arming `hook` to fire every `every`
        /// instructions.
        pub fn new(main: *const c_void, hook: ffi::lua_Hook, every: i32) -> Arc<Watch> {
            let watch = Watch::default();
            watch.main.store(main as *mut c_void, Ordering::Relaxed);
            watch.hook.store(hook as usize, Ordering::Relaxed);
            watch.every.store(every, Ordering::Relaxed);
            Arc::new(watch)
        }

        fn hook(&self) -> ffi::lua_Hook {
            // SAFETY: `hook` was stored from a `lua_Hook` in `new`.
            unsafe { std::mem::transmute::<usize, ffi::lua_Hook>(self.hook.load(Ordering::Relaxed)) }
        }

        /// Publishes `state` as the running thread; returns the one it replaces.
        fn publish(&self, state: *mut c_void) -> *mut c_void {
            loop {
                let current = self.running.load(Ordering::Acquire);
                if current == ARMING {
                    std::hint::spin_loop();
                    continue;
                }
                if self
                    .running
                    .compare_exchange_weak(current, state, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return current;
                }
            }
        }

        /// `lua_resume(co, l, narg, nres)`, with `co` published as the running thread while it runs
        /// and the one running before published again after; a resume called from the main thread
        /// (the step's) starts a fresh slice.
        ///
        /// # Safety
        /// As `lua_resume`; `l` is the running thread, on the VM's own OS thread.
        pub unsafe fn resume(
            &self,
            l: *mut ffi::lua_State,
            co: *mut ffi::lua_State,
            narg: std::ffi::c_int,
            nres: &mut std::ffi::c_int,
        ) -> std::ffi::c_int {
            if l as *mut c_void == self.main.load(Ordering::Relaxed) {
                self.resumes.fetch_add(1, Ordering::AcqRel);
            }
            // A thread armed for an earlier resume, or made by one that was (a new thread copies
            // its maker's hook), runs hook-free again until it runs long itself. Only the budget's
            // own hook is removed (a script with the `debug` library may set one of its own), and
            // never on the running thread (resuming itself fails anyway), which the watchdog may be
            // arming at this moment.
            // SAFETY: `co` is alive (the caller resumes it) and, not being `l`, not running: the
            // watchdog touches only the published running thread, so these reads race with nothing.
            if co != l
                && unsafe { ffi::lua_gethookmask(co) } != 0
                && !self.spent.load(Ordering::Acquire)
                && self.stale()
                && unsafe { ffi::lua_gethook(co) }.map(|h| h as usize)
                    == Some(self.hook.load(Ordering::Relaxed))
            {
                self.disarm(co as *const c_void);
            }
            let previous = self.publish(co as *mut c_void);
            // SAFETY: the caller's.
            let status = unsafe { ffi::lua_resume(co, l, narg, nres) };
            self.publish(previous);
            status
        }

        /// Whether the hooks armed belong to an earlier resume than the one running.
        pub fn stale(&self) -> bool {
            self.armed_for.load(Ordering::Acquire) != self.resumes.load(Ordering::Acquire)
        }

        /// Gives thread `state` (if it has no hook yet) the budget's hook, firing every `count`
        /// instructions, on behalf of the running resume. Called on the VM's thread.
        pub fn arm(&self, state: *const c_void, count: i32) {
            if state.is_null() {
                return;
            }
            let _guard = self.lock.lock();
            self.armed_for.store(self.resumes.load(Ordering::Acquire), Ordering::Release);
            // SAFETY: see the module's invariants.
            unsafe { sethook(state as *mut ffi::lua_State, Some(self.hook()), count) };
        }

        /// Removes the hook of thread `state`, running on the VM's thread (inside its hook).
        pub fn disarm(&self, state: *const c_void) {
            let _guard = self.lock.lock();
            // SAFETY: see the module's invariants.
            unsafe { sethook(state as *mut ffi::lua_State, None, 0) };
        }

        /// One look of the watchdog: `seen` is the resume it saw last time and `armed` the thread it
        /// armed for it. Arms the running thread when the same resume is still running.
        fn tick(&self, seen: &mut u64, armed: &mut *mut c_void) {
            let resumes = self.resumes.load(Ordering::Acquire);
            if resumes != *seen {
                *seen = resumes;
                *armed = std::ptr::null_mut();
                return;
            }
            let _guard = self.lock.lock();
            let state = self.running.load(Ordering::Acquire);
            if state.is_null() || state == ARMING || state == *armed {
                return;
            }
            if self.running.compare_exchange(state, ARMING, Ordering::AcqRel, Ordering::Acquire).is_err() {
                return;
            }
            // Published before its resume was counted: it belongs to the resume now running only if
            // that is still the one seen.
            if self.resumes.load(Ordering::Acquire) == resumes {
                let count =
                    if self.spent.load(Ordering::Acquire) { 1 } else { self.every.load(Ordering::Relaxed) };
                self.armed_for.store(resumes, Ordering::Release);
                // SAFETY: `state` is published, so its resume is running and holds it; the VM's thread
                // waits for `running` to leave `ARMING` before it publishes anything else.
                unsafe { sethook(state as *mut ffi::lua_State, Some(self.hook()), count) };
                *armed = state;
            }
            self.running.store(state, Ordering::Release);
        }

        /// Starts the watchdog of this VM: a thread that looks every `slice` and ends with the VM.
        pub fn start(self: &Arc<Self>, slice: Duration) {
            let watch = Arc::downgrade(self);
            let spawned = std::thread::Builder::new().name("lua budget watchdog".into()).spawn(move || {
                let (mut seen, mut armed) = (u64::MAX, std::ptr::null_mut());
                loop {
                    std::thread::sleep(slice);
                    let Some(watch) = watch.upgrade() else { return };
                    watch.tick(&mut seen, &mut armed);
                }
            });
            if let Err(e) = spawned {
                bevy::log::error!("no instruction budget: the watchdog thread did not start ({e})");
            }
        }
    }

    /// Sets the hook of `l` (`None`: removes it), keeping the thread's hook when it has one.
    ///
    /// # Safety
    /// `l` is a live thread of the VM (see the module's invariants).
    unsafe fn sethook(l: *mut ffi::lua_State, hook: Option<ffi::lua_Hook>, count: i32) {
        unsafe {
            let hook = hook.map(|h| ffi::lua_gethook(l).unwrap_or(h));
            let mask = if hook.is_some() { ffi::LUA_MASKCOUNT } else { 0 };
            #[allow(clippy::let_unit_value)]
            let _ = ffi::lua_sethook(l, hook, mask, count);
        }
    }

    /// The hook function mlua installed on the main thread (its global hook), if any.
    pub(crate) fn hook_of(state: *const c_void) -> Option<ffi::lua_Hook> {
        // SAFETY: see the module's invariants.
        unsafe { ffi::lua_gethook(state as *mut ffi::lua_State) }
    }

    /// `coroutine.resume` that publishes the thread it resumes to `watch` (its upvalue) for as long as
    /// it runs, then the one that was running before. A resume called from the main thread (the step's)
    /// starts a fresh slice. Same results and errors as `coroutine.resume`.
    pub(crate) fn resume_function(lua: &mlua::Lua, watch: &Arc<Watch>) -> mlua::Result<mlua::Function> {
        super::watch_closure(lua, Some(watch), std::ptr::null_mut(), resume)
    }

    /// `coroutine.close` for a suspended or dead thread (the caller checks), publishing it to `watch`
    /// (if there is one) while its to-be-closed variables run. Same results as `coroutine.close`,
    /// but a thread the budget stopped with an error that left it (see [`raise_next`]) is not
    /// closed: `false` and `script exceeded its instruction budget` (where is reported once, for
    /// the task whose budget it was).
    pub(crate) fn close_function(
        lua: &mlua::Lua,
        watch: Option<&Arc<Watch>>,
    ) -> mlua::Result<mlua::Function> {
        super::watch_closure(lua, watch, std::ptr::null_mut(), close)
    }

    /// What [`raise_hook`] raises, kept in Rust memory so that nothing on the way to the raise
    /// allocates from Lua (past the memory limit that failed, and the budget's hook raised the
    /// old way). The budget owns it; the VM's registry holds its address for as long as the VM
    /// lives ([`install_raiser`]).
    #[derive(Default)]
    pub(crate) struct Raiser {
        /// The message while the budget is spent; `None` once the step has reset it.
        message: Mutex<Option<String>>,
        /// The chunk-name prefix of the crate's own Lua code, which is let finish for a while.
        library: std::sync::OnceLock<&'static str>,
        /// Hook calls let through in the crate's own code since the budget was spent.
        grace: AtomicU64,
    }

    /// Hook calls the crate's own Lua code may take on a thread [`raise_next`] marked.
    const GRACE: u64 = 100_000;

    impl Raiser {
        /// Sets the message raised from now on, or (`None`) lets marked threads run on.
        pub fn set(&self, message: Option<String>) {
            if let Ok(mut slot) = self.message.lock() {
                *slot = message;
            }
            self.grace.store(0, Ordering::Relaxed);
        }

        /// Copies the message (at most `buf.len()` bytes) into `buf`; returns its length, or
        /// `None` when nothing is spent.
        fn copy_message(&self, buf: &mut [u8]) -> Option<usize> {
            let slot = self.message.lock().ok()?;
            let message = slot.as_ref()?.as_bytes();
            let n = message.len().min(buf.len());
            buf[..n].copy_from_slice(&message[..n]);
            Some(n)
        }
    }

    /// The registry key of the [`Raiser`]'s address (a light userdata).
    static RAISER_KEY: u8 = 0;

    /// Puts `raiser`'s address in the VM's registry, for [`raise_hook`]; `library` is the
    /// chunk-name prefix of the crate's own Lua code. `raiser` lives as long as the VM.
    pub(crate) fn install_raiser(
        lua: &mlua::Lua,
        raiser: &Raiser,
        library: &'static str,
    ) -> mlua::Result<()> {
        let _ = raiser.library.set(library);
        let address = raiser as *const Raiser as *mut c_void;
        // SAFETY: one push and a raw store of a light userdata under a light-userdata key.
        unsafe {
            lua.exec_raw::<()>((), |l| {
                ffi::lua_pushlightuserdata(l, address);
                ffi::lua_rawsetp(l, ffi::LUA_REGISTRYINDEX, &RAISER_KEY as *const u8 as *const c_void);
            })
        }
    }

    /// Makes the running thread `state`, inside the budget's hook, raise the [`Raiser`]'s message
    /// at its next instruction or call, from [`raise_hook`], a hook of the crate's own, which
    /// stays on the thread. Allocates nothing.
    ///
    /// Why not raise from the budget's hook itself: mlua's hook wrapper, on an error, first cuts
    /// the stack down to its frame's base, and inside a hook that frame is the running Lua
    /// function's, so its pending `__close` handlers run right there, inside the hook, where Lua
    /// calls no hook: a `__close` that loops froze the game. `raise_hook` pushes the message
    /// and calls `lua_error` (as `lua.c` stops a script on Ctrl-C), which closes nothing. It also
    /// fires on calls: the instruction that was about to run when the budget's hook fired still
    /// runs, and were it a call to `coroutine.yield`, the thread would be left suspended.
    ///
    /// An error raised in a hook that leaves the thread (no `pcall` in it catches it) leaves
    /// the thread with hooks off for good (Lua restores its `allowhook` flag only where a
    /// `pcall` catches). Closing that thread would run its `__close` handlers with no budget, so
    /// [`close_function`] does not close a dead thread that still carries `raise_hook`: its
    /// to-be-closed variables never run.
    pub(crate) fn raise_next(watch: Option<&Watch>, state: *const c_void) {
        let _guard = watch.map(|w| w.lock.lock());
        // SAFETY: see the module's invariants: `state` is the running thread, on the VM's thread,
        // and the watchdog, which may arm the same thread, waits for the lock.
        unsafe {
            #[allow(clippy::let_unit_value)]
            let _ = ffi::lua_sethook(
                state as *mut ffi::lua_State,
                Some(raise_hook),
                ffi::LUA_MASKCOUNT | ffi::LUA_MASKCALL,
                1,
            );
        }
    }

    /// Raises the [`Raiser`]'s message, but lets the crate's own Lua code run on for a while (so
    /// the bookkeeping it was doing stays whole, as the budget's hook does), and takes itself off
    /// once the budget has been reset (the thread may run again, for another task).
    unsafe extern "C-unwind" fn raise_hook(l: *mut ffi::lua_State, ar: *mut ffi::lua_Debug) {
        // SAFETY: a hook runs with `LUA_MINSTACK` free slots and a valid `ar`; the raiser's
        // address was stored by `install_raiser` and lives as long as the VM. Nothing with a
        // destructor is alive when `lua_error` jumps: the message is copied to a plain buffer.
        unsafe {
            ffi::lua_rawgetp(l, ffi::LUA_REGISTRYINDEX, &RAISER_KEY as *const u8 as *const c_void);
            let raiser = (ffi::lua_touserdata(l, -1) as *const Raiser).as_ref();
            ffi::lua_pop(l, 1);
            let mut buf = [0u8; 512];
            let Some((raiser, n)) = raiser.and_then(|r| Some((r, r.copy_message(&mut buf)?))) else {
                #[allow(clippy::let_unit_value)]
                let _ = ffi::lua_sethook(l, None, 0, 0);
                return;
            };
            if let Some(library) = raiser.library.get()
                && ffi::lua_getinfo(l, c"S".as_ptr(), ar) != 0
                && std::ffi::CStr::from_ptr((*ar).short_src.as_ptr())
                    .to_bytes()
                    .starts_with(library.as_bytes())
                && raiser.grace.fetch_add(1, Ordering::Relaxed) < GRACE
            {
                return;
            }
            ffi::lua_pushlstring(l, buf.as_ptr() as *const std::ffi::c_char, n);
            ffi::lua_error(l);
        }
    }

    /// Whether thread `co` died of an error [`raise_hook`] raised (see [`raise_next`]).
    ///
    /// # Safety
    /// `co` is a live thread of the VM that is not running.
    unsafe fn stopped_for_good(co: *mut ffi::lua_State) -> bool {
        // SAFETY: the caller's.
        unsafe {
            let status = ffi::lua_status(co);
            status != ffi::LUA_OK
                && status != ffi::LUA_YIELD
                && ffi::lua_gethook(co).map(|h| h as usize) == Some(raise_hook as ffi::lua_Hook as usize)
        }
    }

    unsafe extern "C-unwind" fn close(l: *mut ffi::lua_State) -> std::ffi::c_int {
        // SAFETY: as `resume`; the operations are those of Lua's own `coroutine.close` (`luaB_close`)
        // once it has found the thread suspended or dead.
        unsafe {
            let co = ffi::lua_tothread(l, 1);
            if co.is_null() {
                return ffi::luaL_argerror(l, 1, c"coroutine expected".as_ptr());
            }
            if stopped_for_good(co) {
                ffi::lua_pushboolean(l, 0);
                ffi::lua_pushstring(l, c"script exceeded its instruction budget".as_ptr());
                return 2;
            }
            let watch = super::upvalue_watch(l);
            let previous = watch.map(|w| w.publish(co as *mut c_void));
            let status = ffi::lua_closethread(co, l);
            if let (Some(watch), Some(previous)) = (watch, previous) {
                watch.publish(previous);
            }
            if status == ffi::LUA_OK {
                ffi::lua_pushboolean(l, 1);
                1
            } else {
                ffi::lua_pushboolean(l, 0);
                ffi::lua_xmove(co, l, 1);
                2
            }
        }
    }

    unsafe extern "C-unwind" fn resume(l: *mut ffi::lua_State) -> std::ffi::c_int {
        // SAFETY: called by Lua as a C closure made by `resume_function` (upvalue 1 is a live `Watch`);
        // the stack operations are those of Lua's own `coroutine.resume` (`luaB_coresume`).
        unsafe {
            let co = ffi::lua_tothread(l, 1);
            if co.is_null() {
                return ffi::luaL_argerror(l, 1, c"coroutine expected".as_ptr());
            }
            let Some(watch) = super::upvalue_watch(l) else { return 0 };
            let narg = ffi::lua_gettop(l) - 1;
            if ffi::lua_checkstack(co, narg) == 0 {
                ffi::lua_pushboolean(l, 0);
                ffi::lua_pushliteral(l, c"too many arguments to resume");
                return 2;
            }
            ffi::lua_xmove(l, co, narg);
            let mut nres = 0;
            let status = watch.resume(l, co, narg, &mut nres);
            if status == ffi::LUA_OK || status == ffi::LUA_YIELD {
                if ffi::lua_checkstack(l, nres + 1) == 0 {
                    ffi::lua_pop(co, nres);
                    ffi::lua_pushboolean(l, 0);
                    ffi::lua_pushliteral(l, c"too many results to resume");
                    return 2;
                }
                ffi::lua_pushboolean(l, 1);
                ffi::lua_xmove(co, l, nres);
                nres + 1
            } else {
                // The message, then `false` under it (as `luaB_coresume`): when `co` is the running
                // thread itself, `lua_resume` left the message on this very stack already.
                ffi::lua_xmove(co, l, 1);
                ffi::lua_pushboolean(l, 0);
                ffi::lua_insert(l, -2);
                2
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        unsafe extern "C-unwind" fn no_op(_: *mut ffi::lua_State, _: *mut ffi::lua_Debug) {}
        unsafe extern "C-unwind" fn other(_: *mut ffi::lua_State, _: *mut ffi::lua_Debug) {
            std::hint::black_box(1); // not the same code as `no_op`, so never the same function
        }

        #[test]
        fn a_thread_armed_for_an_earlier_resume_runs_hook_free_when_resumed_again() {
            let lua = mlua::Lua::new();
            let co =
                lua.create_thread(lua.load("coroutine.yield() return 1").into_function().unwrap()).unwrap();
            let main = lua.current_thread().to_pointer() as *mut ffi::lua_State;
            let state = co.to_pointer() as *mut ffi::lua_State;
            let watch = Watch::new(main as *const c_void, no_op, 1000);
            // The watchdog armed it during the step's first resume (a thread made by an armed
            // thread carries the same hook).
            watch.resumes.store(1, Ordering::Release);
            watch.arm(state as *const c_void, 1000);
            // SAFETY: `co` is alive and suspended; `main` is the VM's main thread.
            unsafe {
                assert_ne!(ffi::lua_gethookmask(state), 0);
                let mut nres = 0;
                // The step's next resume (from the main thread) finds the hook stale and removes it.
                let status = watch.resume(main, state, 0, &mut nres);
                assert_eq!(status, ffi::LUA_YIELD);
                ffi::lua_pop(state, nres);
                assert_eq!(ffi::lua_gethookmask(state), 0, "the stale hook is gone");
                // A hook that is not the budget's (a script's `debug.sethook`) stays.
                ffi::lua_sethook(state, Some(other), ffi::LUA_MASKLINE, 0);
                watch.resumes.store(5, Ordering::Release);
                let status = watch.resume(main, state, 0, &mut nres);
                assert_eq!(status, ffi::LUA_OK);
                ffi::lua_pop(state, nres);
                assert_ne!(ffi::lua_gethookmask(state), 0, "a script's own hook is kept");
            }
        }
    }
}

/// Luau's interrupt, installed without mlua's wrapper, and gated: Luau calls it at every call and
/// loop edge, so it counts those itself and calls the budget's callback only once every `batch`
/// of them (every time while an `always` flag is set), charging it the whole batch. Through
/// mlua's wrapper (a protected Rust call with an error slot set aside each time) and a full
/// check at each interrupt, the budget made a compute-bound script 1.9x slower under Luau.
/// The wrapper also needs a free stack slot at each call, which fails once a thread's stack
/// cannot grow for want of memory; this touches the stack only to raise.
///
/// Luau hands an interrupt nothing of ours (mlua keeps the callbacks' user data), so each VM's
/// gate is kept in a registry under the address of its callbacks (one per VM, stable while it
/// lives); each OS thread remembers the last one it looked up, checked against a generation that
/// every change of the registry moves on. Invariants: an entry is replaced or removed only while
/// no Lua code of its VM runs ([`set_interrupt`] when the runtime is made, [`remove_interrupt`]
/// when it is dropped), so a remembered pointer whose generation is current points into a live
/// entry; the interrupts of one VM run on one OS thread at a time, so the count needs no atomic
/// read-modify-write; the callback and every value it made are dropped before the interrupt
/// raises.
#[cfg(feature = "luau")]
mod interrupt {
    use std::cell::Cell;
    use std::ffi::c_int;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use mlua::{Lua, VmState, ffi};

    /// What an interrupt calls, with the interrupted thread and how many interrupts it stands
    /// for: continue, yield (where it can) or raise. mlua's view of the running thread
    /// (`Lua::state`, `Lua::inspect_stack`) is not the interrupted thread here (mlua sets it only
    /// inside its own callbacks): use the one given.
    type Callback = dyn Fn(&Lua, *mut ffi::lua_State, u64) -> mlua::Result<VmState> + Send + Sync;

    /// One VM's interrupt.
    struct Gate {
        /// The address of the VM's callbacks.
        key: usize,
        /// Interrupts per call of `callback` (1: every one).
        batch: u64,
        /// Interrupts since the last call.
        ticks: AtomicU64,
        /// Call `callback` at every interrupt while set.
        always: Arc<AtomicBool>,
        callback: Box<Callback>,
    }

    /// The gate of each VM that has one.
    static REGISTRY: Mutex<Vec<Arc<Gate>>> = Mutex::new(Vec::new());
    /// Moves on at every change of the registry.
    static GENERATION: AtomicU64 = AtomicU64::new(0);

    thread_local! {
        /// The last lookup on this thread: key, generation, gate.
        static LAST: Cell<Option<(usize, u64, *const Gate)>> = const { Cell::new(None) };
    }

    /// The registry's key of the VM `l` belongs to.
    fn key(l: *mut ffi::lua_State) -> usize {
        // SAFETY: `l` is a live state; this takes the address of its VM's callbacks, nothing more.
        unsafe { ffi::lua_callbacks(l) as usize }
    }

    /// The VM's key, read through mlua.
    fn key_of(lua: &Lua) -> mlua::Result<usize> {
        let mut k = 0;
        // SAFETY: the closure only reads the state's address of its callbacks.
        unsafe { lua.exec_raw::<()>((), |l| k = key(l))? };
        Ok(k)
    }

    /// Makes `callback` the VM's interrupt (replacing any), called once every `batch` interrupts,
    /// or at every one while `always` is set.
    pub(crate) fn set_interrupt(
        lua: &Lua,
        batch: u64,
        always: Arc<AtomicBool>,
        callback: impl Fn(&Lua, *mut ffi::lua_State, u64) -> mlua::Result<VmState> + Send + Sync + 'static,
    ) -> mlua::Result<()> {
        let key = key_of(lua)?;
        let gate =
            Gate { key, batch: batch.max(1), ticks: AtomicU64::new(0), always, callback: Box::new(callback) };
        {
            let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            registry.retain(|g| g.key != key);
            registry.push(Arc::new(gate));
            GENERATION.fetch_add(1, Ordering::AcqRel);
        }
        // SAFETY: sets the VM's interrupt to `proc_`, which finds the gate just registered.
        unsafe { lua.exec_raw::<()>((), |l| (*ffi::lua_callbacks(l)).interrupt = Some(proc_)) }
    }

    /// Takes the VM's interrupt away (before the runtime that set it goes).
    pub(crate) fn remove_interrupt(lua: &Lua) {
        let Ok(key) = key_of(lua) else { return };
        // SAFETY: clears the VM's interrupt; nothing of ours is called after this.
        let _ = unsafe { lua.exec_raw::<()>((), |l| (*ffi::lua_callbacks(l)).interrupt = None) };
        let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        registry.retain(|g| g.key != key);
        GENERATION.fetch_add(1, Ordering::AcqRel);
    }

    /// The gate registered for key `k`, remembered for the next interrupt on this thread.
    fn lookup(k: usize) -> Option<*const Gate> {
        let generation = GENERATION.load(Ordering::Acquire);
        if let Some((key, g, gate)) = LAST.get()
            && key == k
            && g == generation
        {
            return Some(gate);
        }
        let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        let gate = Arc::as_ptr(registry.iter().find(|g| g.key == k)?);
        LAST.set(Some((k, GENERATION.load(Ordering::Acquire), gate)));
        Some(gate)
    }

    /// The source (`short_src`) and current line of the function `level` calls below the top
    /// of thread `l` (0: the running function), if there is one.
    pub(crate) fn frame_at(l: *mut ffi::lua_State, level: c_int) -> Option<(String, Option<i32>)> {
        // SAFETY: `l` is the interrupted thread, alive while its interrupt runs; `lua_getinfo`
        // fills `ar` and allocates nothing; the strings it points to live while the frame does,
        // and are copied before this returns.
        unsafe {
            let mut ar: ffi::lua_Debug = std::mem::zeroed();
            if ffi::lua_getinfo(l, level, c"sl".as_ptr(), &mut ar) == 0 {
                return None;
            }
            let src = if ar.short_src.is_null() {
                "?".to_string()
            } else {
                std::ffi::CStr::from_ptr(ar.short_src).to_string_lossy().into_owned()
            };
            Some((src, (ar.currentline >= 0).then_some(ar.currentline)))
        }
    }

    unsafe extern "C-unwind" fn proc_(l: *mut ffi::lua_State, gc: c_int) {
        if gc >= 0 {
            return; // a collection step, not a call or a loop edge
        }
        let Some(gate) = lookup(key(l)) else { return };
        // SAFETY: `gate` points into a live entry (module invariants).
        let gate = unsafe { &*gate };
        let weight = if gate.batch > 1 && !gate.always.load(Ordering::Relaxed) {
            // Only this VM's thread counts (module invariants): a load and a store suffice.
            let ticks = gate.ticks.load(Ordering::Relaxed) + 1;
            if ticks < gate.batch {
                gate.ticks.store(ticks, Ordering::Relaxed);
                return;
            }
            gate.ticks.store(0, Ordering::Relaxed);
            gate.batch
        } else {
            1
        };
        // SAFETY: mlua made the VM, so the `Lua` it returns for `l` is the VM's own.
        let result = unsafe { (gate.callback)(Lua::get_or_init_from_ptr(l), l, weight) };
        let message = match result {
            Ok(VmState::Yield) => {
                // SAFETY: yielding from an interrupt is how Luau stops a thread that can yield.
                unsafe {
                    if ffi::lua_isyieldable(l) != 0 {
                        ffi::lua_yield(l, 0);
                    }
                }
                return;
            }
            Ok(_) => return, // continue
            Err(mlua::Error::RuntimeError(message)) => message,
            Err(e) => e.to_string(),
        };
        // SAFETY: one slot is pushed (an interrupt runs where the VM has its minimum stack free;
        // if the string cannot be made, Luau raises its memory error instead), and nothing with a
        // destructor is alive past `lua_pushlstring` but `message`, dropped first.
        unsafe {
            ffi::lua_pushlstring(l, message.as_ptr() as *const _, message.len());
            drop(message);
            ffi::lua_error(l);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Runs a loop of `n` iterations and returns (calls of the callback, interrupts charged).
        fn run_loop(lua: &Lua, n: u32, seen: &(AtomicU64, AtomicU64)) -> (u64, u64) {
            let before = (seen.0.load(Ordering::Relaxed), seen.1.load(Ordering::Relaxed));
            lua.load(format!("local s = 0 for i = 1, {n} do s = s + i end")).exec().unwrap();
            (seen.0.load(Ordering::Relaxed) - before.0, seen.1.load(Ordering::Relaxed) - before.1)
        }

        #[test]
        fn the_gate_calls_once_a_batch_every_time_when_told_and_never_once_removed() {
            let lua = Lua::new();
            let seen = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
            let always = Arc::new(AtomicBool::new(false));
            let s = seen.clone();
            set_interrupt(&lua, 16, always.clone(), move |_, l, weight| {
                assert!(!l.is_null());
                s.0.fetch_add(1, Ordering::Relaxed);
                s.1.fetch_add(weight, Ordering::Relaxed);
                Ok(VmState::Continue)
            })
            .unwrap();
            // Luau interrupts at each loop edge (and call): at least 10,000 here.
            let (calls, charged) = run_loop(&lua, 10_000, &seen);
            assert!(charged >= 9_984 && calls * 16 == charged, "{calls} calls charged {charged}");
            always.store(true, Ordering::Relaxed);
            let (calls, charged) = run_loop(&lua, 1_000, &seen);
            assert!(calls >= 1_000 && calls == charged, "{calls} calls charged {charged}");
            remove_interrupt(&lua);
            assert_eq!(run_loop(&lua, 1_000, &seen), (0, 0));
        }

        #[test]
        fn a_callback_error_raises_its_message_where_the_script_runs() {
            let lua = Lua::new();
            set_interrupt(&lua, 1, Arc::new(AtomicBool::new(false)), |_, _, _| {
                Err(mlua::Error::runtime("stopped here"))
            })
            .unwrap();
            let err = lua.load("local s = 0 for i = 1, 10 do s = s + i end").exec().unwrap_err();
            assert!(err.to_string().contains("stopped here"), "{err}");
            remove_interrupt(&lua);
        }
    }
}
