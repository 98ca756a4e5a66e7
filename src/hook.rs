//! The few raw calls the instruction budget needs that mlua does not offer: changing how often a
//! thread's existing hook fires, and asking whether a thread can yield. This is the crate's only
//! `unsafe` outside the VM's creation.
//!
//! Invariants: a thread is named by `Thread::to_pointer()`, which for a thread is its
//! `lua_State*` on every flavour (`lua_topointer` returns the object itself); it is only used
//! while the thread is alive (the caller holds the `Thread`, or is running on it inside its hook),
//! and only on the thread that owns the VM. `lua_sethook` may be called at any time, even from
//! inside a hook (the Lua manual says so); it keeps the hook function mlua installed and changes
//! only its count.
#![allow(unsafe_code)]

use std::ffi::c_void;

use mlua::ffi;

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
