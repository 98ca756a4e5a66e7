//! Lua 5.4: the `take` of a receive queue (`receive_queue` in `lua/rust_channels.lua`, which typed
//! channels and Rust streams receive through) as a C function, so that receiving a value Rust
//! already put in the queue runs no Lua of the queue's. An empty queue is handed to the queue's
//! own Lua `take`, which refills it from Rust; the C function returns what that returns.
//!
//! Invariants:
//! - [`make_take`] is only called by `lua/rust_channels.lua`, with the queue's `queue` and `pos`
//!   tables and its Lua `take` (it checks their types and returns nothing otherwise, and the Lua
//!   side keeps its own `take`). The closure it makes keeps them as upvalues 1 to 3.
//! - `pos`'s slots [`HEAD`] and [`TAIL`] always hold integers (made by its constructor, nothing
//!   stores nil there), so `lua_rawseti` into one allocates nothing; the queue slot emptied held
//!   a value, so storing nil there allocates nothing either. `take` thus raises only from the Lua
//!   `take` it calls for a refill, which unwinds (`longjmp`) through a frame that holds nothing to
//!   drop. It pushes at most three values (a C function has room for twenty).
#![allow(unsafe_code)]

use std::ffi::c_int;

use mlua::{Function, Lua, ffi};

/// Slot of `pos`: the index of the next value to receive (named the same in the Lua file).
const HEAD: ffi::lua_Integer = 1;
/// Slot of `pos`: the index of the last value waiting.
const TAIL: ffi::lua_Integer = 2;

/// `c_take(queue, pos, take) -> take'`, for `lua/rust_channels.lua`.
pub(crate) fn function(lua: &Lua) -> mlua::Result<Function> {
    // SAFETY: `make_take` follows the module's invariants.
    unsafe { lua.create_c_function(make_take) }
}

/// `make_take(queue, pos, take) -> take'`: the C `take` over the queue, or nothing when the
/// arguments are not two tables and a function.
unsafe extern "C-unwind" fn make_take(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua; the closure takes the three arguments as its upvalues.
    unsafe {
        ffi::lua_settop(l, 3);
        if ffi::lua_type(l, 1) != ffi::LUA_TTABLE
            || ffi::lua_type(l, 2) != ffi::LUA_TTABLE
            || ffi::lua_type(l, 3) != ffi::LUA_TFUNCTION
        {
            return 0;
        }
        ffi::lua_pushcclosure(l, take, 3);
        1
    }
}

/// `take() -> true, value | false`: the next value waiting, or, when none is, what the queue's Lua
/// `take` returns (it refills the queue first).
unsafe extern "C-unwind" fn take(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as the closure `make_take` made (see the module's invariants).
    unsafe {
        let (queue, pos) = (ffi::lua_upvalueindex(1), ffi::lua_upvalueindex(2));
        ffi::lua_settop(l, 0);
        ffi::lua_rawgeti(l, pos, HEAD);
        ffi::lua_rawgeti(l, pos, TAIL);
        let (mut head_ok, mut tail_ok) = (0, 0);
        let head = ffi::lua_tointegerx(l, 1, &mut head_ok);
        let tail = ffi::lua_tointegerx(l, 2, &mut tail_ok);
        ffi::lua_settop(l, 0);
        if head_ok == 0 || tail_ok == 0 || head > tail {
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(3));
            ffi::lua_call(l, 0, ffi::LUA_MULTRET);
            return ffi::lua_gettop(l);
        }
        ffi::lua_pushboolean(l, 1);
        if ffi::lua_rawgeti(l, queue, head) != ffi::LUA_TNIL {
            ffi::lua_pushnil(l);
            ffi::lua_rawseti(l, queue, head);
        }
        ffi::lua_pushinteger(l, head + 1);
        ffi::lua_rawseti(l, pos, HEAD);
        2
    }
}
