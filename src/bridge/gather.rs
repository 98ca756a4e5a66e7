//! Script → Rust on Lua 5.4: a C function that checks a value a script sends against its type's
//! flat shape and copies its leaves out in one pass over its tables, straight into a Rust buffer
//! the channel's flush reads (instead of a generated Lua check storing the leaves in a Lua buffer
//! that the flush then reads back). It accepts exactly what `super::flat`'s Lua check accepts
//! (tables without metatables; booleans, numbers, integers in range, strings, each where the shape
//! has one; with `count_keys`, no extra keys), except that a string need only be valid UTF-8
//! rather than ASCII: mlua's serde reads such a string exactly the same way. Other flavours keep
//! the Lua check (their number and string C APIs differ).
//!
//! Two C functions share the check: `flatten(v, buf, n) -> n'`, the Lua check's stand-in, and
//! `put(v) -> boolean`, the channel's whole `ext.put` shortcut (`lua/rust_channels.lua`), which
//! also reads and counts the send side's state in the channel's `acct` table, so that a send the
//! check accepts runs no Lua of the channel's.
//!
//! Invariants:
//! - The functions are only called by Lua, on the VM's thread. Their first upvalue is a light
//!   userdata pointing to their [`Gather`], which the VM's app data keeps alive until after
//!   `lua_close`, so for as long as Lua can call them; the second is the channel's `acct` table,
//!   whose slots [`HELD`], [`ROOM`] and [`CLOSED`] are in its array part (made with room for them;
//!   `lua/rust_channels.lua`'s `declare` fills them), so `lua_rawseti` into one allocates nothing,
//!   and `put` takes nothing while they are not numbers; the others are the shape's key strings.
//! - No call it makes raises a Lua error: `lua_checkstack` (room for the nesting, a key and value,
//!   and `lua_next`'s pair) reports failure by its result; `lua_rawget` on a table, `lua_next` from
//!   nil over a table nobody changes meanwhile, `lua_getmetatable`, and reading a value of a type
//!   already checked (`lua_tolstring` of a string converts nothing) neither allocate nor call
//!   metamethods. So nothing unwinds past the buffer's lock guard; and Rust code in it does not
//!   panic (growing a `Vec` aborts when memory runs out, it does not unwind).
//! - A value that does not fit leaves the buffer as it was and returns no result (nil), so the
//!   script takes the serde path, which raises with the field's path.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex};

use mlua::{Function, Lua, Table, ffi};

use super::flat::{Leaf, Shape};
use super::leaves::{Leaves, RawLeaf};

/// Most distinct field names a shape may have (a C closure has at most 255 upvalues; the first two
/// are the [`Gather`] and `acct`).
const MAX_KEYS: usize = 253;

/// The upvalue of the first key string.
const FIRST_KEY: c_int = 3;

/// Slot of `acct`: values accepted since the last flush (named the same in `lua/rust_channels.lua`).
const HELD: ffi::lua_Integer = 1;
/// Slot of `acct`: values Rust's end could take at the last flush.
const ROOM: ffi::lua_Integer = 2;
/// Slot of `acct`: a script closed the channel.
const CLOSED: ffi::lua_Integer = 3;

/// One step of the check, in field order.
#[derive(Debug, Clone, Copy)]
enum Node {
    /// Read the field keyed by this upvalue of the table on top, which must be this leaf.
    Leaf { key: c_int, leaf: Leaf },
    /// Push the field keyed by this upvalue of the table on top, which must be a plain table.
    Open { key: c_int },
    /// The table on top is complete (it had this many fields): pop it.
    Close { fields: usize },
}

/// A channel's compiled shape and the leaves of the values sent since the last flush.
pub(crate) struct Gather {
    /// The shape's nodes (the top-level table's `Close` last); empty when the shape is one leaf.
    nodes: Vec<Node>,
    /// The shape when it is one leaf.
    root: Option<Leaf>,
    /// Leaves per value.
    per: usize,
    /// Deepest nesting of tables.
    depth: usize,
    /// Whether a table must have no keys but its fields.
    count_keys: bool,
    /// The leaves of the values accepted since the last flush.
    out: Mutex<Leaves>,
}

impl Gather {
    /// Moves the leaves gathered since the last call into `into` (replacing what it held).
    pub(crate) fn take(&self, into: &mut Leaves) -> mlua::Result<()> {
        // The check is not running (this is called from Lua, by the channel's flush), so the
        // buffer is free unless a panic poisoned it.
        let mut out = self.out.try_lock().map_err(|_| mlua::Error::runtime("channel buffer busy"))?;
        std::mem::swap(into, &mut *out);
        out.leaves.clear();
        out.bytes.clear();
        Ok(())
    }
}

/// Keeps every channel's [`Gather`] alive as long as the VM (app data outlives `lua_close`).
#[derive(Default)]
struct Gathers(Vec<Arc<Gather>>);

/// The send-side functions of a channel whose values Lua 5.4's C check takes.
pub(crate) struct Gathered {
    /// `flatten(v, buf, n) -> n' | nil`: the check (`buf` unused: the leaves go to `gather`).
    pub flatten: Function,
    /// `put(v) -> boolean`: the channel's `ext.put`, counting in `acct`.
    pub put: Function,
    /// Where the accepted leaves wait for the flush.
    pub gather: Arc<Gather>,
}

/// Makes the check for `shape`, counting in `acct` (see the module); `None` when the shape has too
/// many field names for one C closure.
pub(crate) fn function(
    lua: &Lua,
    shape: &Shape,
    count_keys: bool,
    acct: &Table,
) -> mlua::Result<Option<Gathered>> {
    let mut keys: Vec<&'static str> = Vec::new();
    let mut nodes = Vec::new();
    let mut depth = 0;
    let root = match shape {
        Shape::Leaf(leaf) => Some(*leaf),
        Shape::Struct(fields) => {
            if !compile(fields, &mut keys, &mut nodes, 1, &mut depth) {
                return Ok(None);
            }
            None
        }
    };
    let gather = Arc::new(Gather {
        nodes,
        root,
        per: shape.leaves(),
        depth,
        count_keys,
        out: Mutex::new(Leaves::default()),
    });
    match lua.app_data_mut::<Gathers>() {
        Some(mut all) => all.0.push(gather.clone()),
        None => {
            lua.set_app_data(Gathers(vec![gather.clone()]));
        }
    }
    let ptr = Arc::as_ptr(&gather) as *mut c_void;
    let closure = |f: ffi::lua_CFunction| {
        // SAFETY: the closure only pushes onto the stack it is given (room for the upvalues is
        // checked); the `Gather` it points to lives as long as the VM (see the module's invariants).
        unsafe {
            lua.exec_raw::<Function>(acct, |l| {
                ffi::luaL_checkstack(l, keys.len() as c_int + 2, c"typed channel check".as_ptr());
                ffi::lua_pushlightuserdata(l, ptr);
                ffi::lua_pushvalue(l, 1);
                for key in &keys {
                    ffi::lua_pushlstring(l, key.as_ptr().cast(), key.len());
                }
                ffi::lua_pushcclosure(l, f, keys.len() as c_int + 2);
                ffi::lua_replace(l, 1);
            })
        }
    };
    Ok(Some(Gathered { flatten: closure(flatten)?, put: closure(put)?, gather }))
}

/// Appends the nodes of a table of `fields` at nesting `level` (its `Close` included), adding new
/// field names to `keys`. False when there are too many names.
fn compile(
    fields: &[(&'static str, Shape)],
    keys: &mut Vec<&'static str>,
    nodes: &mut Vec<Node>,
    level: usize,
    depth: &mut usize,
) -> bool {
    *depth = (*depth).max(level);
    for (name, shape) in fields {
        let key = match keys.iter().position(|k| k == name) {
            Some(i) => i,
            None if keys.len() < MAX_KEYS => {
                keys.push(name);
                keys.len() - 1
            }
            None => return false,
        };
        let key = key as c_int + FIRST_KEY;
        match shape {
            Shape::Leaf(leaf) => nodes.push(Node::Leaf { key, leaf: *leaf }),
            Shape::Struct(inner) => {
                nodes.push(Node::Open { key });
                if !compile(inner, keys, nodes, level + 1, depth) {
                    return false;
                }
            }
        }
    }
    nodes.push(Node::Close { fields: fields.len() });
    true
}

/// `flatten(v, buf, n) -> n + per`, or nothing when `v` does not surely fit (see the module).
unsafe extern "C-unwind" fn flatten(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C closure `function` made (see the module's invariants).
    unsafe {
        let mut isnum = 0;
        let n = ffi::lua_tointegerx(l, 3, &mut isnum);
        if isnum == 0 || !accept(l) {
            return 0;
        }
        ffi::lua_pushinteger(l, n.wrapping_add(gather(l).per as ffi::lua_Integer));
        1
    }
}

/// `put(v) -> boolean`: when the channel is open and has room counted, takes `v` if it surely fits
/// and counts it held (true); otherwise does nothing (false): the full path decides.
unsafe extern "C-unwind" fn put(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C closure `function` made (see the module's invariants): the
    // `acct` slots hold values, and there is room for the three pushed and popped here.
    unsafe {
        let acct = ffi::lua_upvalueindex(2);
        ffi::lua_rawgeti(l, acct, CLOSED);
        ffi::lua_rawgeti(l, acct, HELD);
        ffi::lua_rawgeti(l, acct, ROOM);
        let (mut held_ok, mut room_ok) = (0, 0);
        let closed = ffi::lua_toboolean(l, -3) != 0;
        let held = ffi::lua_tointegerx(l, -2, &mut held_ok);
        let room = ffi::lua_tointegerx(l, -1, &mut room_ok);
        ffi::lua_pop(l, 3);
        let took = !closed && held_ok != 0 && room_ok != 0 && held < room && accept(l);
        if took {
            ffi::lua_pushinteger(l, held + 1);
            ffi::lua_rawseti(l, acct, HELD);
        }
        ffi::lua_pushboolean(l, c_int::from(took));
        1
    }
}

/// The [`Gather`] of the running C closure.
unsafe fn gather<'a>(l: *mut ffi::lua_State) -> &'a Gather {
    // SAFETY: the caller is a closure `function` made: upvalue 1 points to a live `Gather`.
    unsafe { &*(ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *const Gather) }
}

/// Whether argument 1 surely fits the shape; if so its leaves are appended to the buffer. Leaves
/// the stack empty either way.
unsafe fn accept(l: *mut ffi::lua_State) -> bool {
    // SAFETY: the caller is a closure `function` made, called by Lua.
    unsafe {
        let gather = gather(l);
        let Ok(mut out) = gather.out.try_lock() else { return false };
        if ffi::lua_checkstack(l, gather.depth as c_int + 4) == 0 {
            return false;
        }
        ffi::lua_settop(l, 1);
        let (leaves, bytes) = (out.leaves.len(), out.bytes.len());
        let fits = match gather.root {
            Some(leaf) => read_leaf(l, leaf, &mut out),
            None => walk(l, gather, &mut out),
        };
        ffi::lua_settop(l, 0);
        if !fits {
            out.leaves.truncate(leaves);
            out.bytes.truncate(bytes);
        }
        fits
    }
}

/// Whether the value at the top of the stack is a table without a metatable.
unsafe fn plain_table(l: *mut ffi::lua_State) -> bool {
    // SAFETY: the caller's stack has a value on top and room for one more.
    unsafe {
        if ffi::lua_type(l, -1) != ffi::LUA_TTABLE {
            return false;
        }
        if ffi::lua_getmetatable(l, -1) != 0 {
            ffi::lua_pop(l, 1);
            return false;
        }
        true
    }
}

/// Checks the table at the top of the stack (the value sent) against the nodes, appending its
/// leaves to `out`.
unsafe fn walk(l: *mut ffi::lua_State, gather: &Gather, out: &mut Leaves) -> bool {
    // SAFETY: the caller checked room for the nesting plus four slots; each node pushes at most
    // one value above the tables open, and `Close` pops its table.
    unsafe {
        if !plain_table(l) {
            return false;
        }
        for node in &gather.nodes {
            match *node {
                Node::Leaf { key, leaf } => {
                    ffi::lua_pushvalue(l, ffi::lua_upvalueindex(key));
                    ffi::lua_rawget(l, -2);
                    let fits = read_leaf(l, leaf, out);
                    ffi::lua_pop(l, 1);
                    if !fits {
                        return false;
                    }
                }
                Node::Open { key } => {
                    ffi::lua_pushvalue(l, ffi::lua_upvalueindex(key));
                    ffi::lua_rawget(l, -2);
                    if !plain_table(l) {
                        return false;
                    }
                }
                Node::Close { fields } => {
                    if gather.count_keys && count(l) != fields {
                        return false;
                    }
                    ffi::lua_pop(l, 1);
                }
            }
        }
        true
    }
}

/// How many keys the table on top has.
unsafe fn count(l: *mut ffi::lua_State) -> usize {
    // SAFETY: the caller's top is a table nobody changes during the loop, with room for two more.
    unsafe {
        let mut c = 0;
        ffi::lua_pushnil(l);
        while ffi::lua_next(l, -2) != 0 {
            c += 1;
            ffi::lua_pop(l, 1);
        }
        c
    }
}

/// Appends the value on top of the stack to `out` if it is `leaf` (as mlua's serde reads it).
unsafe fn read_leaf(l: *mut ffi::lua_State, leaf: Leaf, out: &mut Leaves) -> bool {
    // SAFETY: the caller's stack has a value on top.
    unsafe {
        let raw = match (leaf, ffi::lua_type(l, -1)) {
            (Leaf::Bool, ffi::LUA_TBOOLEAN) => RawLeaf::Bool(ffi::lua_toboolean(l, -1) != 0),
            (Leaf::Int { min, max }, ffi::LUA_TNUMBER) if ffi::lua_isinteger(l, -1) != 0 => {
                let i = ffi::lua_tointegerx(l, -1, std::ptr::null_mut());
                if i < min || i > max {
                    return false;
                }
                RawLeaf::Int(i)
            }
            (Leaf::Float, ffi::LUA_TNUMBER) => {
                if ffi::lua_isinteger(l, -1) != 0 {
                    RawLeaf::Int(ffi::lua_tointegerx(l, -1, std::ptr::null_mut()))
                } else {
                    RawLeaf::Num(ffi::lua_tonumberx(l, -1, std::ptr::null_mut()))
                }
            }
            (Leaf::Str, ffi::LUA_TSTRING) => {
                let mut len = 0usize;
                let p = ffi::lua_tolstring(l, -1, &mut len) as *const u8;
                let s = std::slice::from_raw_parts(p, len);
                if std::str::from_utf8(s).is_err() {
                    return false;
                }
                let start = out.bytes.len();
                out.bytes.extend_from_slice(s);
                RawLeaf::Str(start..out.bytes.len())
            }
            _ => return false,
        };
        out.leaves.push(raw);
        true
    }
}
