//! The entity methods scripts call most, over Lua's C API: the `__index` of entity values (a
//! method lookup is one raw table read, not a walk through mlua's dispatcher of fields), and on
//! Lua 5.4 the methods `entity:get` / `entity:set` themselves, which do the typed `Transform`
//! paths ([`Typed`]) once `lua/world.lua` has compiled them and hand every other call, with its
//! arguments untouched, to `lua/world.lua`'s general `get` and `set`, so every error and every
//! other case reads exactly as it does without them (those raise one level further up, past
//! the C frame).
//!
//! Invariants:
//! - The functions here are only ever called by Lua, on the thread that runs the VM. Their
//!   upvalues are fixed when they are made ([`functions`], [`entity_index`]): the tables named
//!   below, and a block holding the address of the VM's world slot, which lives as long as the
//!   VM; except the one-entry cache of `get` and `set` (that block's other fields and the string
//!   they name), which only ever holds a path `typed` maps and its code.
//! - An entity value is recognised by its first user value, its `Entity::to_bits` as an integer
//!   (set when it is made, see `components::entity_value`; no other value of the VM has an
//!   integer there); a path by `typed` (path string → [`Typed::code`]), which the Lua side fills
//!   only for paths it compiled, so the string names the same path for as long as the VM lives.
//! - The world is reached only through [`WorldSlot::with`], which does nothing outside the step
//!   and while another world function holds the world (the general path then raises the error).
//! - A raise `longjmp`s (Lua 5.4) or unwinds through these frames. The only calls that can raise
//!   are the ones that make the result vector (out of memory), `__index`'s call of the `id`
//!   getter and the call of the general `get` or `set`; all come after every Rust value with a
//!   destructor is gone.
//! - A C function has `LUA_MINSTACK` (20) free slots; none here pushes more than 6.
#![allow(unsafe_code)]

use std::ffi::c_int;

use mlua::{Function, Lua, Table, ffi};

/// The `__index` of entity values: `methods[key]`, else for `id` what `id(self)` returns.
pub(crate) fn entity_index(lua: &Lua, methods: &Table, id: &Function) -> mlua::Result<Function> {
    // SAFETY: `index` reads exactly these three upvalues.
    unsafe {
        lua.exec_raw::<Function>((methods, id, "id"), |l| {
            ffi::lua_pushcclosure(l, index, 3);
        })
    }
}

unsafe extern "C-unwind" fn index(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua with (self, key); upvalues as made by `entity_index`. Whatever else
    // is on the stack stays below what is pushed here (an index past the top reads nil), and the
    // result is always the top value.
    unsafe {
        ffi::lua_pushvalue(l, 2);
        if ffi::lua_rawget(l, ffi::lua_upvalueindex(1)) != ffi::LUA_TNIL
            || ffi::lua_rawequal(l, 2, ffi::lua_upvalueindex(3)) == 0
        {
            return 1;
        }
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(2));
        ffi::lua_pushvalue(l, 1);
        ffi::lua_call(l, 1, 1);
        1
    }
}

#[cfg(feature = "lua54")]
pub(crate) use paths::functions;

/// Lua 5.4's `get` and `set` of typed paths (see the module docs).
#[cfg(feature = "lua54")]
mod paths {
    use std::ffi::{c_int, c_void};

    use bevy::prelude::Entity;
    use mlua::{Function, Lua, Table, ffi};

    use super::super::access::{self, WorldSlot};
    use super::super::typed::{PARTS, Read, Typed};
    use super::super::vector::Kind;

    // Upvalues of `get` and `set`.
    const U_TYPED: c_int = 1;
    const U_VEC3: c_int = 2;
    const U_QUAT: c_int = 3;
    /// `x`, `y`, `z`, `w`: upvalues 4 to 7.
    const U_KEYS: c_int = 4;
    /// `translation`, `rotation`, `scale`: upvalues 8 to 10.
    const U_PARTS: c_int = 8;
    /// The general `get` or `set` of `lua/world.lua`.
    const U_GENERAL: c_int = 11;
    /// The function's [`Cache`] (a full userdata no script can reach).
    const U_CACHE: c_int = 12;
    /// The path string this function's last typed call named, kept alive for `Cache::path`.
    const U_LAST_PATH: c_int = 13;

    /// What `get` and `set` keep between calls, in a block of the VM's memory (no destructor):
    /// the world slot, and a one-entry cache in front of `typed` (a script calls `get` or `set`
    /// in a loop with the same path). `path` is the address of the string in `U_LAST_PATH`
    /// (null before the first typed call), which no other live value has while that upvalue
    /// holds the string: comparing addresses is one load, where `lua_rawequal` on an upvalue
    /// is some sixty instructions. (Equal long strings may have different addresses; those
    /// miss the cache and are looked up in `typed`.)
    #[repr(C)]
    struct Cache {
        slot: *const WorldSlot,
        path: *const c_void,
        code: i64,
    }

    /// The methods `get(self, path) -> value` and `set(self, path, value)`: the typed paths here,
    /// any other call by `general_get` / `general_set`. `typed` is described in the module docs;
    /// `vec3` and `quat` are the metatables of `Vec3` and `Quat` values.
    pub(crate) fn functions(
        lua: &Lua,
        typed: &Table,
        vec3: &Table,
        quat: &Table,
        general_get: &Function,
        general_set: &Function,
    ) -> mlua::Result<(Function, Function)> {
        let slot = access::slot_ptr(lua);
        let make = |f: ffi::lua_CFunction, general: &Function| {
            let upvalues =
                (typed, vec3, quat, "x", "y", "z", "w", "translation", "rotation", "scale", general);
            // SAFETY: the upvalues pushed are the ones the functions read (module invariants); the
            // slot lives as long as the VM; a userdata block is aligned for any Rust value.
            unsafe {
                lua.exec_raw::<Function>(upvalues, |l| {
                    let cache = ffi::lua_newuserdatauv(l, std::mem::size_of::<Cache>(), 0) as *mut Cache;
                    cache.write(Cache { slot, path: std::ptr::null(), code: 0 });
                    ffi::lua_pushnil(l);
                    ffi::lua_pushcclosure(l, f, U_LAST_PATH);
                })
            }
        };
        Ok((make(get, general_get)?, make(set, general_set)?))
    }

    /// Calls the general function (upvalue `U_GENERAL`) with the call's `n` arguments and returns
    /// what it returns. The call may yield (a script table's `__index` that waits, read while
    /// checking a value), as it could when the general function was the method itself.
    unsafe fn general(l: *mut ffi::lua_State, n: c_int) -> c_int {
        // SAFETY: called by `get` or `set` with their arguments at 1..=n and nothing above them
        // that matters, holding nothing that needs dropping; may raise (the general function's
        // errors) or yield (then `returned` finishes the call when the thread is resumed).
        unsafe {
            ffi::lua_settop(l, n);
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(U_GENERAL));
            ffi::lua_rotate(l, 1, 1);
            ffi::lua_callk(l, n, ffi::LUA_MULTRET, 0, Some(returned));
            ffi::lua_gettop(l)
        }
    }

    /// The continuation of `general`'s call: its results are the call's.
    unsafe extern "C-unwind" fn returned(l: *mut ffi::lua_State, _: c_int, _: ffi::lua_KContext) -> c_int {
        // SAFETY: called by Lua with the results of the general function on the stack.
        unsafe { ffi::lua_gettop(l) }
    }

    /// The number at the top of the stack (popped), if it is one.
    unsafe fn pop_number(l: *mut ffi::lua_State) -> Option<f64> {
        // SAFETY: the stack has a value on top.
        unsafe {
            let n = (ffi::lua_type(l, -1) == ffi::LUA_TNUMBER).then(|| ffi::lua_tonumber(l, -1));
            ffi::lua_pop(l, 1);
            n
        }
    }

    /// The world slot, the entity of argument 1 and the typed path of argument 2, if both are known.
    unsafe fn target<'a>(l: *mut ffi::lua_State) -> Option<(&'a WorldSlot, Entity, Typed)> {
        // SAFETY: called by `get` or `set`, whose upvalues these are; arguments 1 and 2 exist.
        unsafe {
            if ffi::lua_type(l, 1) != ffi::LUA_TUSERDATA {
                return None; // (a light userdata has no user values either: its type differs)
            }
            ffi::lua_getiuservalue(l, 1, 1);
            let mut integer = 0;
            let bits = ffi::lua_tointegerx(l, -1, &mut integer);
            ffi::lua_pop(l, 1);
            if integer == 0 {
                return None;
            }
            let cache = &mut *(ffi::lua_touserdata(l, ffi::lua_upvalueindex(U_CACHE)) as *mut Cache);
            if ffi::lua_type(l, 2) != ffi::LUA_TSTRING {
                return None;
            }
            let path = ffi::lua_topointer(l, 2);
            if path != cache.path {
                ffi::lua_pushvalue(l, 2);
                ffi::lua_rawget(l, ffi::lua_upvalueindex(U_TYPED));
                let code = pop_number(l)? as i64;
                ffi::lua_pushvalue(l, 2);
                ffi::lua_replace(l, ffi::lua_upvalueindex(U_LAST_PATH));
                (cache.path, cache.code) = (path, code);
            }
            let typed = Typed::from_code(cache.code)?;
            Some((cache.slot.as_ref()?, Entity::try_from_bits(bits as u64)?, typed))
        }
    }

    /// The metatable upvalue of vectors of class `kind` (`Vec3` or `Quat`).
    fn class_of(kind: Kind) -> c_int {
        if kind == Kind::Quat { U_QUAT } else { U_VEC3 }
    }

    /// Pushes a new vector of class `kind` (`Vec3` or `Quat`) with `numbers`.
    unsafe fn push_vector(l: *mut ffi::lua_State, kind: Kind, numbers: &[f64]) {
        // SAFETY: called by `get`, with room for three more values; may raise (out of memory).
        unsafe {
            let len = kind.len() as c_int;
            ffi::lua_createtable(l, 0, len);
            for (i, n) in numbers.iter().take(len as usize).enumerate() {
                ffi::lua_pushvalue(l, ffi::lua_upvalueindex(U_KEYS + i as c_int));
                ffi::lua_pushnumber(l, *n);
                ffi::lua_rawset(l, -3);
            }
            ffi::lua_pushvalue(l, ffi::lua_upvalueindex(class_of(kind)));
            ffi::lua_setmetatable(l, -2);
        }
    }

    /// The numbers of the vector at `i` if it is of class `kind` (`Vec3` or `Quat`) and every one of
    /// its fields is a number.
    unsafe fn read_vector(l: *mut ffi::lua_State, i: c_int, kind: Kind) -> Option<[f64; 4]> {
        // SAFETY: called by `set`, with room for two more values; `i` is an absolute index.
        unsafe {
            if ffi::lua_getmetatable(l, i) == 0 {
                return None;
            }
            let same = ffi::lua_rawequal(l, -1, ffi::lua_upvalueindex(class_of(kind))) != 0;
            ffi::lua_pop(l, 1);
            if !same {
                return None;
            }
            let mut numbers = [0.0; 4];
            for (k, slot) in numbers.iter_mut().take(kind.len()).enumerate() {
                ffi::lua_pushvalue(l, ffi::lua_upvalueindex(U_KEYS + k as c_int));
                ffi::lua_rawget(l, i);
                *slot = pop_number(l)?;
            }
            Some(numbers)
        }
    }

    /// The parts of a whole `Transform` given as the plain table at `i` (no metatable, no key but
    /// `translation`, `rotation` and `scale`, each a vector of its class with number fields), as
    /// `Typed::write_transform` takes them; `None` for anything else.
    unsafe fn read_transform(l: *mut ffi::lua_State, i: c_int) -> Option<[Option<[f64; 4]>; 3]> {
        // SAFETY: called by `set`, with room for four more values; `i` is an absolute index.
        unsafe {
            if ffi::lua_type(l, i) != ffi::LUA_TTABLE || ffi::lua_getmetatable(l, i) != 0 {
                return None; // (a metatable stays pushed: `set` returns at once)
            }
            let mut parts = [None; 3];
            ffi::lua_pushnil(l);
            while ffi::lua_next(l, i) != 0 {
                let part = PARTS
                    .into_iter()
                    .find(|&p| ffi::lua_rawequal(l, -2, ffi::lua_upvalueindex(U_PARTS + p as c_int)) != 0)?;
                let top = ffi::lua_gettop(l);
                parts[part as usize] = Some(read_vector(l, top, part.kind())?);
                ffi::lua_pop(l, 1);
            }
            Some(parts)
        }
    }

    unsafe extern "C-unwind" fn get(l: *mut ffi::lua_State) -> c_int {
        // SAFETY: see the module's invariants.
        unsafe {
            let n = ffi::lua_gettop(l);
            if n < 2 {
                return general(l, n);
            }
            let Some((slot, entity, typed)) = target(l) else { return general(l, n) };
            let read = match slot.with(|world| typed.read(world, entity)) {
                Ok(Some(read)) => read,
                _ => return general(l, n),
            };
            match read {
                Read::Number(x) => ffi::lua_pushnumber(l, x),
                Read::Vector(kind @ (Kind::Vec3 | Kind::Quat), numbers) => push_vector(l, kind, &numbers),
                Read::Transform(numbers) => {
                    ffi::lua_createtable(l, 0, PARTS.len() as c_int);
                    let mut from = 0;
                    for part in PARTS {
                        let kind = part.kind();
                        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(U_PARTS + part as c_int));
                        push_vector(l, kind, &numbers[from..from + kind.len()]);
                        ffi::lua_rawset(l, -3);
                        from += kind.len();
                    }
                }
                _ => return general(l, n),
            }
            1
        }
    }

    unsafe extern "C-unwind" fn set(l: *mut ffi::lua_State) -> c_int {
        // SAFETY: see the module's invariants.
        unsafe {
            let n = ffi::lua_gettop(l);
            if n < 3 {
                return general(l, n);
            }
            let Some((slot, entity, typed)) = target(l) else { return general(l, n) };
            let written = match typed {
                Typed::Number(..) => {
                    if ffi::lua_type(l, 3) != ffi::LUA_TNUMBER {
                        return general(l, n);
                    }
                    let numbers = [ffi::lua_tonumber(l, 3), 0.0, 0.0, 0.0];
                    slot.with(|world| typed.write(world, entity, numbers))
                }
                Typed::Vector(part) => {
                    let Some(numbers) = read_vector(l, 3, part.kind()) else { return general(l, n) };
                    slot.with(|world| typed.write(world, entity, numbers))
                }
                Typed::Transform => {
                    let Some(parts) = read_transform(l, 3) else { return general(l, n) };
                    slot.with(|world| Typed::write_transform(world, entity, parts))
                }
            };
            if !matches!(written, Ok(true)) {
                return general(l, n);
            }
            0
        }
    }
}
