//! Reads the leaves scripts sent through a typed channel straight out of the Lua send buffer with
//! raw C API reads: one protected call per flush, instead of one mlua `Value` per leaf (each string
//! one reference slot taken and released). This is the bridge's only `unsafe`.
//!
//! Invariants: [`read`] runs its closure through `Lua::exec_raw`, on the thread that owns the VM,
//! which pushes the buffer table and calls the closure in a protected frame whose stack holds just
//! that table at index 1 (exec_raw checked room for 3 slots). The closure pushes one value at a
//! time (`lua_rawgeti` raises no error and calls no metamethod) and pops it before the next, so
//! the stack never holds more than two; a string's bytes are copied out before its value is
//! popped (a popped string may be collected); nothing in the closure panics but allocation failure,
//! which aborts. It leaves the stack empty.
#![allow(unsafe_code)]

use std::ops::Range;

use mlua::{Lua, Table, ffi};

/// A leaf as read from the buffer, as mlua's conversion would have made it.
#[derive(Debug, Clone)]
pub(crate) enum RawLeaf {
    Bool(bool),
    Int(i64),
    Num(f64),
    /// Bytes of [`Leaves::bytes`].
    Str(Range<usize>),
    /// Anything else (which the script-side check lets through only by mistake).
    Other,
}

/// The leaves of one flush, with the bytes of their strings in one buffer (kept for reuse).
#[derive(Default)]
pub(crate) struct Leaves {
    pub leaves: Vec<RawLeaf>,
    pub bytes: Vec<u8>,
}

/// Replaces `out` with `buf[1..=n]`.
pub(crate) fn read(lua: &Lua, buf: &Table, n: usize, out: &mut Leaves) -> mlua::Result<()> {
    out.leaves.clear();
    out.bytes.clear();
    let (leaves, bytes) = (&mut out.leaves, &mut out.bytes);
    leaves.reserve(n);
    // SAFETY: see the module's invariants.
    unsafe {
        lua.exec_raw::<()>(buf, |state| {
            for i in 1..=n {
                ffi::lua_rawgeti(state, 1, i as ffi::lua_Integer);
                leaves.push(match ffi::lua_type(state, -1) {
                    ffi::LUA_TBOOLEAN => RawLeaf::Bool(ffi::lua_toboolean(state, -1) != 0),
                    ffi::LUA_TNUMBER => number(state),
                    ffi::LUA_TSTRING => {
                        let mut len = 0usize;
                        let p = ffi::lua_tolstring(state, -1, &mut len) as *const u8;
                        let start = bytes.len();
                        bytes.extend_from_slice(std::slice::from_raw_parts(p, len));
                        RawLeaf::Str(start..bytes.len())
                    }
                    _ => RawLeaf::Other,
                });
                ffi::lua_pop(state, 1);
            }
            ffi::lua_settop(state, 0);
        })
    }
}

/// The number on top of the stack, an integer exactly when mlua's conversion makes one.
#[cfg(feature = "lua54")]
unsafe fn number(state: *mut ffi::lua_State) -> RawLeaf {
    // SAFETY: the caller's value is a number on top of the stack.
    unsafe {
        if ffi::lua_isinteger(state, -1) != 0 {
            RawLeaf::Int(ffi::lua_tointeger(state, -1))
        } else {
            RawLeaf::Num(ffi::lua_tonumber(state, -1))
        }
    }
}

/// The number on top of the stack, an integer exactly when mlua's conversion makes one (a double
/// that is an `i64` bit for bit, so not -0).
#[cfg(not(feature = "lua54"))]
unsafe fn number(state: *mut ffi::lua_State) -> RawLeaf {
    // SAFETY: the caller's value is a number on top of the stack.
    let n = unsafe { ffi::lua_tonumber(state, -1) };
    let i = n as i64;
    if n.fract() == 0.0
        && n >= -9_223_372_036_854_775_808.0
        && n < 9_223_372_036_854_775_808.0
        && n.to_bits() == (i as f64).to_bits()
    {
        RawLeaf::Int(i)
    } else {
        RawLeaf::Num(n)
    }
}
