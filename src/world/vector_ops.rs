//! Lua 5.4 only: `new` and the operators `+`, `-`, `*` and `/` of `Vec2`, `Vec3` and `Vec4` as C
//! functions. In Lua each operator pays for `type` calls, class checks through `__index` and a
//! `setmetatable` call on top of the arithmetic; here it is raw reads, `lua_arith` (so integers
//! stay integers and floats floats, exactly as the Lua operators make them) and one new table.
//! Only operands that are numbers or vectors of the class whose fields are all numbers are done
//! here; any other call goes to the Lua operator of `lua/vector.lua` (told it is one frame
//! further from the script, so its `bad argument` blames the same line), and `new` raises its
//! `bad argument` through the same `bad` function the Lua `new` uses.
//!
//! LuaJIT compiles the Lua operators and would only be slowed down by C calls, and Luau has no
//! `lua_arith`: they keep `lua/vector.lua`'s operators.
//!
//! Invariants:
//! - The functions here are only ever called by Lua, with the upvalues [`install`] gives them.
//! - A raise (the `bad argument` error, out of memory making the result, or the Lua operator's
//!   own) `longjmp`s through these frames, which hold nothing that needs dropping.
//! - A C function has `LUA_MINSTACK` (20) free slots; these push at most 2 + 2 × 4 + 3.
#![allow(unsafe_code)]

use std::ffi::c_int;

use mlua::{Function, Lua, Table, ffi};

// Upvalues. The class's field count and the operator are const parameters of the functions,
// not upvalues: reading an upvalue as an integer costs about 35 instructions a call.
const U_MT: c_int = 1;
/// The Lua operator (for `arith`) or `bad` (for `new`).
const U_LUA: c_int = 2;
/// `x`, `y`, `z`, `w`: upvalues 3 to 6.
const U_KEYS: c_int = 3;
const UPVALUES: c_int = 6;

type CFunction = unsafe extern "C-unwind" fn(*mut ffi::lua_State) -> c_int;

/// `arith::<LEN, OP>` for a class of `len` fields.
fn arith_of<const OP: c_int>(len: usize) -> CFunction {
    match len {
        2 => arith::<2, OP>,
        3 => arith::<3, OP>,
        _ => arith::<4, OP>,
    }
}

/// Replaces `module`'s operators and `new` (a class of `len` fields made by `lua/vector.lua`)
/// with the C functions; `bad` raises `bad argument`.
pub(crate) fn install(lua: &Lua, module: &Table, len: usize, bad: &Function) -> mlua::Result<()> {
    let mt: Table = module.raw_get("mt")?;
    let [x, y, z, w] = ["x", "y", "z", "w"];
    for (name, op) in [
        ("__add", arith_of::<{ ffi::LUA_OPADD }>(len)),
        ("__sub", arith_of::<{ ffi::LUA_OPSUB }>(len)),
        ("__mul", arith_of::<{ ffi::LUA_OPMUL }>(len)),
        ("__div", arith_of::<{ ffi::LUA_OPDIV }>(len)),
    ] {
        let lua_op: Function = mt.raw_get(name)?;
        // SAFETY: `arith` reads exactly these upvalues.
        let f = unsafe {
            lua.exec_raw::<Function>((&mt, lua_op, x, y, z, w), |l| ffi::lua_pushcclosure(l, op, UPVALUES))?
        };
        mt.raw_set(name, f)?;
    }
    let new: CFunction = match len {
        2 => new::<2>,
        3 => new::<3>,
        _ => new::<4>,
    };
    // SAFETY: `new` reads exactly these upvalues.
    let new = unsafe {
        lua.exec_raw::<Function>((&mt, bad, x, y, z, w), |l| ffi::lua_pushcclosure(l, new, UPVALUES))?
    };
    module.raw_get::<Table>("statics")?.raw_set("new", new)
}

/// Whether the value at `i` is a vector of this class.
unsafe fn ours(l: *mut ffi::lua_State, i: c_int) -> bool {
    // SAFETY: called by `arith`, with one free slot.
    unsafe {
        if ffi::lua_type(l, i) != ffi::LUA_TTABLE || ffi::lua_getmetatable(l, i) == 0 {
            return false;
        }
        let same = ffi::lua_rawequal(l, -1, ffi::lua_upvalueindex(U_MT)) != 0;
        ffi::lua_pop(l, 1);
        same
    }
}

/// Pushes operand `i`'s number for field `k`: the field of a vector, or the number itself.
/// Returns whether it is a number.
unsafe fn push_operand(l: *mut ffi::lua_State, i: c_int, vector: bool, k: c_int) -> bool {
    // SAFETY: called by `arith`, with room for two more values.
    unsafe {
        if vector {
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(U_KEYS + k));
            ffi::lua_rawget(l, i);
        } else {
            ffi::lua_pushvalue(l, i);
        }
        ffi::lua_type(l, -1) == ffi::LUA_TNUMBER
    }
}

unsafe extern "C-unwind" fn arith<const LEN: c_int, const OP: c_int>(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see the module's invariants.
    unsafe {
        ffi::lua_settop(l, 2);
        let (len, op) = (LEN, OP);
        let (va, vb) = (ours(l, 1), ours(l, 2));
        let number = |i| ffi::lua_type(l, i) == ffi::LUA_TNUMBER;
        let mut fits = (va && (vb || number(2))) || (vb && number(1));
        // The results, one per field, at 3..3 + len.
        let mut k = 0;
        while fits && k < len {
            fits = push_operand(l, 1, va, k) && push_operand(l, 2, vb, k);
            if fits {
                ffi::lua_arith(l, op);
            }
            k += 1;
        }
        if !fits {
            ffi::lua_settop(l, 2);
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(U_LUA));
            ffi::lua_insert(l, 1);
            ffi::lua_pushinteger(l, 1); // one frame further from the script
            ffi::lua_call(l, 3, 1);
            return 1;
        }
        new_vector(l, 3, len)
    }
}

/// Makes a vector of this class from the `len` numbers at `from..`, and returns it (one result).
unsafe fn new_vector(l: *mut ffi::lua_State, from: c_int, len: c_int) -> c_int {
    // SAFETY: called by `arith` or `new`, with room for three more values.
    unsafe {
        ffi::lua_createtable(l, 0, len);
        let t = ffi::lua_gettop(l);
        for k in 0..len {
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(U_KEYS + k));
            ffi::lua_pushvalue(l, from + k);
            ffi::lua_rawset(l, t);
        }
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(U_MT));
        ffi::lua_setmetatable(l, t);
        1
    }
}

unsafe extern "C-unwind" fn new<const LEN: c_int>(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see the module's invariants.
    unsafe {
        let len = LEN;
        ffi::lua_settop(l, len);
        for i in 1..=len {
            match ffi::lua_type(l, i) {
                ffi::LUA_TNUMBER => {}
                ffi::LUA_TNIL => {
                    // A missing component is 0.
                    ffi::lua_pushinteger(l, 0);
                    ffi::lua_replace(l, i);
                }
                _ => {
                    // `bad(i, "new", "number", value, 2)` blames the caller of `new`.
                    ffi::lua_pushvalue(l, ffi::lua_upvalueindex(U_LUA));
                    ffi::lua_pushinteger(l, i as ffi::lua_Integer);
                    ffi::lua_pushstring(l, c"new".as_ptr());
                    ffi::lua_pushstring(l, c"number".as_ptr());
                    ffi::lua_pushvalue(l, i);
                    ffi::lua_pushinteger(l, 2);
                    ffi::lua_call(l, 5, 0); // raises
                    return 0;
                }
            }
        }
        new_vector(l, 1, len)
    }
}
