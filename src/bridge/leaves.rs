//! Moves the leaves of typed channel values between Rust and the Lua tables that hold them with raw
//! C API calls, one protected call per batch each way, instead of one mlua `Value` per leaf (each
//! string one reference slot taken and released) and, under a memory limit, one protected call per
//! table and field. The bridge's other `unsafe` is Lua 5.4's alone, in `super::gather`.
//!
//! - Script → Rust: [`read`] copies the leaves scripts sent out of the Lua send buffer.
//! - Rust → script: [`write`] builds the tables of the values in a [`Values`] (their leaves and
//!   how their tables nest, as `super::flat` wrote them) and stores them in the receive queue.
//!
//! Invariants: each runs its closure through `Lua::exec_raw`, on the thread that owns the VM, which
//! pushes the table it is given and calls the closure in a protected frame whose stack holds just
//! that table at index 1 (exec_raw checked room for 3 slots). Nothing in either closure panics but
//! allocation failure, which aborts (indices stay below `i32::MAX`, as LuaJIT's and Luau's
//! `lua_rawseti`/`lua_rawgeti` shims require: a batch is far smaller), and nothing Rust owns that
//! has a destructor is made inside them, so a Lua error (out of memory) unwinding out of the
//! closure skips no drop. Both leave the stack empty.
//!
//! - [`read`] pushes one value at a time (`lua_rawgeti` raises no error and calls no metamethod) and
//!   pops it before the next, so the stack never holds more than two; a string's bytes are copied
//!   out before its value is popped (a popped string may be collected).
//! - [`write`] first makes room for the keys and the deepest nesting (`luaL_checkstack`, which
//!   raises when it cannot), pushes each key string once, then builds each value on top of them:
//!   a table per struct (`lua_createtable`), each field set by `lua_rawset` into the table just
//!   below its key and value, and the finished value stored by `lua_rawseti` into the queue at
//!   index 1. Everything it made is on the stack or in the queue, so the collector sees it. These
//!   calls raise only on allocation failure (fresh tables have no metatable; the queue's is never
//!   set); the count of values stored is written (volatile) after each store, so after an error
//!   the caller knows exactly which values are in the queue and which are not.
#![allow(unsafe_code)]

use std::ffi::c_int;
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
        && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&n)
        && n.to_bits() == (i as f64).to_bits()
    {
        RawLeaf::Int(i)
    } else {
        RawLeaf::Num(n)
    }
}

/// A leaf of a value Rust sends, as mlua's `IntoLua` makes it.
#[derive(Debug, Clone)]
pub(crate) enum OutLeaf {
    Bool(bool),
    Int(i64),
    Num(f64),
    /// Bytes of [`Values::bytes`].
    Str(Range<usize>),
}

/// A step in building the values of a [`Values`], in order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// A new table, with room for this many fields.
    Open(u32),
    /// The key of the next field: [`Values::keys`]`[i]`.
    Key(u32),
    /// The next leaf: a value of its own at the top level, else the field just keyed.
    Leaf,
    /// The table opened last is complete: a value of its own at the top level, else the field just
    /// keyed.
    Close,
}

/// Most distinct keys one batch of values has (each takes a stack slot while they are built).
pub(crate) const MAX_KEYS: usize = 256;

/// Values Rust sends, flattened (kept for reuse): how to build them, their leaves, the bytes of
/// their strings and the keys of their fields, each key once.
#[derive(Default)]
pub(crate) struct Values {
    pub ops: Vec<Op>,
    pub leaves: Vec<OutLeaf>,
    pub bytes: Vec<u8>,
    pub keys: Vec<&'static str>,
    /// The deepest nesting of tables among them.
    pub depth: usize,
    /// Where the next key is looked up first (see `super::flat`).
    pub next_key: usize,
}

impl Values {
    /// Forgets every value.
    pub(crate) fn clear(&mut self) {
        self.ops.clear();
        self.leaves.clear();
        self.bytes.clear();
        self.keys.clear();
        self.depth = 0;
        self.next_key = 0;
    }

    /// Appends a string leaf: a value of its own at the top level, else the field just keyed.
    pub(crate) fn push_str(&mut self, s: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(s);
        self.push(OutLeaf::Str(start..self.bytes.len()));
    }

    /// Appends an integer leaf, as [`push_str`](Self::push_str) a string.
    pub(crate) fn push_int(&mut self, i: i64) {
        self.push(OutLeaf::Int(i));
    }

    /// Appends a boolean leaf, as [`push_str`](Self::push_str) a string.
    pub(crate) fn push_bool(&mut self, b: bool) {
        self.push(OutLeaf::Bool(b));
    }

    /// Appends a leaf.
    pub(crate) fn push(&mut self, leaf: OutLeaf) {
        self.ops.push(Op::Leaf);
        self.leaves.push(leaf);
    }

    /// Where the values end now, for [`truncate`](Self::truncate).
    pub(crate) fn mark(&self) -> (usize, usize, usize) {
        (self.ops.len(), self.leaves.len(), self.bytes.len())
    }

    /// Forgets what was appended since `mark` (keys stay: they are only looked up).
    pub(crate) fn truncate(&mut self, (ops, leaves, bytes): (usize, usize, usize)) {
        self.ops.truncate(ops);
        self.leaves.truncate(leaves);
        self.bytes.truncate(bytes);
    }
}

/// Builds the values in `values` and stores them at `q[first + 1]...`, in order. Returns how many
/// it stored: all of them, or, when building one fails (out of memory), those before it, with the
/// error.
pub(crate) fn write(lua: &Lua, q: &Table, first: usize, values: &Values) -> (usize, mlua::Result<()>) {
    let mut stored = 0usize;
    let progress: *mut usize = &mut stored;
    let slots = (values.keys.len() + 2 * values.depth + 2) as c_int;
    // SAFETY: see the module's invariants.
    let result = unsafe {
        lua.exec_raw::<()>(q, |state| {
            ffi::luaL_checkstack(state, slots, c"typed channel values".as_ptr());
            for key in &values.keys {
                ffi::lua_pushlstring(state, key.as_ptr().cast(), key.len());
            }
            let mut leaves = values.leaves.iter();
            let (mut depth, mut n) = (0usize, 0usize);
            for op in &values.ops {
                match *op {
                    Op::Open(fields) => {
                        ffi::lua_createtable(state, 0, fields.min(c_int::MAX as u32) as c_int);
                        depth += 1;
                        continue;
                    }
                    // Keys sit at 2.. (the queue is at 1).
                    Op::Key(k) => {
                        ffi::lua_pushvalue(state, 2 + k as c_int);
                        continue;
                    }
                    Op::Leaf => match leaves.next() {
                        Some(OutLeaf::Bool(b)) => ffi::lua_pushboolean(state, c_int::from(*b)),
                        Some(OutLeaf::Int(i)) => ffi::lua_pushinteger(state, *i),
                        Some(OutLeaf::Num(x)) => ffi::lua_pushnumber(state, *x),
                        Some(OutLeaf::Str(r)) => {
                            let s = values.bytes.get(r.clone()).unwrap_or_default();
                            ffi::lua_pushlstring(state, s.as_ptr().cast(), s.len());
                        }
                        None => ffi::lua_pushnil(state),
                    },
                    Op::Close => depth = depth.saturating_sub(1),
                }
                if depth > 0 {
                    ffi::lua_rawset(state, -3);
                } else {
                    n += 1;
                    ffi::lua_rawseti(state, 1, (first + n) as ffi::lua_Integer);
                    std::ptr::write_volatile(progress, n);
                }
            }
            ffi::lua_settop(state, 0);
        })
    };
    (stored, result)
}
