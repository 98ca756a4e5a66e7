//! Reflected values to and from Lua tables, by walking the value's reflection (no per-type glue).
//!
//! Why a walk and not serde: glam's serde form of `Vec3` is a sequence `[x, y, z]`, while scripts
//! want named fields (`transform.translation.x`). Reflection describes `Vec3`, `Quat` and every
//! derived component as structs with named fields, so walking it gives that shape for free, and
//! it skips serde's intermediate steps (measured in `benches/world.rs`).
//!
//! Shapes: a struct is a table of its fields; a tuple, tuple struct, list, array or set is an
//! array (1-based); a map is a table; `Option` is its value or `nil`; an enum is its variant's
//! name when the variant has no fields, else `{ Variant = fields }`. Leaves: numbers, booleans and
//! strings are Lua's own, `Entity` is an entity value, `Name` a string, and any other opaque type
//! goes through its `ReflectSerialize`/`ReflectDeserialize`.
//!
//! `entity:get` makes a component's tables through a Lua table constructor made once per type
//! ([`Shapes`]): Rust walks the value for its leaves and one call builds the tables, since making
//! each table and field from Rust costs a protected call apiece under a memory limit.
//!
//! Writing *patches*: only the fields a table names change; lists are replaced whole (new items
//! start from their type's reflected `Default`); maps and sets cannot be written; an `Option`
//! field inside a table can be given a value but not cleared, since a table cannot hold `nil`. Errors name the
//! path: `Transform.translation.x: number expected, got string`.

use std::any::TypeId;
use std::fmt::Write as _;

use bevy::prelude::*;
use bevy::reflect::enums::{DynamicEnum, DynamicVariant, Enum, VariantInfo, VariantType};
use bevy::reflect::std_traits::ReflectDefault;
use bevy::reflect::structs::DynamicStruct;
use bevy::reflect::tuple::DynamicTuple;
use bevy::reflect::{
    PartialReflect, ReflectDeserialize, ReflectMut, ReflectRef, ReflectSerialize, TypeInfo, TypeRegistry,
};
use mlua::{Lua, LuaSerdeExt, Table, Value};

use super::vector::Kind;
use crate::components::{LuaEntity, entity_value};
use crate::error::lua_type;

/// Where in a value a conversion is: `Transform.translation.x`, `Inventory.items[2]`.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    /// The component's name.
    Root(&'a str),
    /// A named field of `parent`.
    Field(&'a Path<'a>, &'a str),
    /// A 1-based position in `parent`.
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root(name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// How deep a value may nest (a self-referencing table, or a long chain built in a loop, stops
/// here with an error instead of exhausting the stack).
const MAX_DEPTH: usize = 64;

impl Path<'_> {
    /// How many levels below the component this is.
    fn depth(&self) -> usize {
        match self {
            Path::Root(_) => 0,
            Path::Field(parent, _) | Path::Index(parent, _) => 1 + parent.depth(),
        }
    }

    /// An error if this is deeper than [`MAX_DEPTH`].
    fn check_depth(&self) -> Result<(), String> {
        if self.depth() > MAX_DEPTH {
            return Err(self.error(format_args!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    /// `Transform.translation.x: {message}`.
    fn error(&self, message: impl std::fmt::Display) -> String {
        let mut out = self.to_string();
        let _ = write!(out, ": {message}");
        out
    }

    /// `Transform.translation.x: number expected, got string`.
    fn expected(&self, expected: &str, got: &Value) -> String {
        self.error(format_args!("{expected} expected, got {}", lua_type(got)))
    }
}

fn lua_error(path: &Path, e: mlua::Error) -> String {
    path.error(crate::error::split_traceback(&e).0)
}

/// A reflected value as a Lua value.
pub(crate) fn to_lua(
    lua: &Lua,
    value: &dyn PartialReflect,
    registry: &TypeRegistry,
    path: &Path,
) -> Result<Value, String> {
    path.check_depth()?;
    if let Some(name) = value.try_downcast_ref::<Name>() {
        return lua.create_string(name.as_str()).map(Value::String).map_err(|e| lua_error(path, e));
    }
    if let Some((kind, numbers)) = super::vector::numbers(value) {
        let make = kind.constructor(lua).ok_or_else(|| path.error("the vector classes are not installed"))?;
        let count = kind.len();
        return make
            .call::<Value>(mlua::Variadic::from_iter(numbers[..count].iter().copied()))
            .map_err(|e| lua_error(path, e));
    }
    let table = |len: usize| lua.create_table_with_capacity(len, 0).map_err(|e| lua_error(path, e));
    let set = |t: &Table, k: Value, v: Value| t.raw_set(k, v).map_err(|e| lua_error(path, e));
    match value.reflect_ref() {
        ReflectRef::Struct(s) => {
            let t = lua.create_table_with_capacity(0, s.field_len()).map_err(|e| lua_error(path, e))?;
            for i in 0..s.field_len() {
                let (Some(name), Some(field)) = (s.name_at(i), s.field_at(i)) else { continue };
                let v = to_lua(lua, field, registry, &Path::Field(path, name))?;
                t.raw_set(name, v).map_err(|e| lua_error(path, e))?;
            }
            Ok(Value::Table(t))
        }
        ReflectRef::TupleStruct(s) => {
            sequence(lua, (0..s.field_len()).filter_map(|i| s.field(i)), registry, path)
        }
        ReflectRef::Tuple(s) => sequence(lua, (0..s.field_len()).filter_map(|i| s.field(i)), registry, path),
        ReflectRef::List(s) => sequence(lua, s.iter(), registry, path),
        ReflectRef::Array(s) => sequence(lua, s.iter(), registry, path),
        ReflectRef::Set(s) => sequence(lua, s.iter(), registry, path),
        ReflectRef::Map(m) => {
            let t = table(0)?;
            for (i, (k, v)) in m.iter().enumerate() {
                let key = to_lua(lua, k, registry, &Path::Index(path, i + 1))?;
                let value = to_lua(lua, v, registry, &Path::Index(path, i + 1))?;
                set(&t, key, value)?;
            }
            Ok(Value::Table(t))
        }
        ReflectRef::Enum(e) => {
            if is_option(value) {
                return match e.field_at(0) {
                    Some(inner) => to_lua(lua, inner, registry, path),
                    None => Ok(Value::Nil),
                };
            }
            let name = e.variant_name();
            let inner = Path::Field(path, name);
            let payload = match e.variant_type() {
                VariantType::Unit => {
                    return lua.create_string(name).map(Value::String).map_err(|e| lua_error(path, e));
                }
                VariantType::Tuple => {
                    sequence(lua, (0..e.field_len()).filter_map(|i| e.field_at(i)), registry, &inner)?
                }
                VariantType::Struct => {
                    let t = table(0)?;
                    for i in 0..e.field_len() {
                        let (Some(field_name), Some(field)) = (e.name_at(i), e.field_at(i)) else { continue };
                        let v = to_lua(lua, field, registry, &Path::Field(&inner, field_name))?;
                        t.raw_set(field_name, v).map_err(|e| lua_error(path, e))?;
                    }
                    Value::Table(t)
                }
            };
            let t = table(0)?;
            t.raw_set(name, payload).map_err(|e| lua_error(path, e))?;
            Ok(Value::Table(t))
        }
        ReflectRef::Opaque(o) => opaque_to_lua(lua, o, registry, path),
        #[allow(unreachable_patterns)]
        _ => Err(path.error(format_args!("{} cannot be converted to Lua", value.reflect_short_type_path()))),
    }
}

/// Lua constructors for the fixed shape of a type, per VM (app data): `get` fills one with the
/// type's leaves instead of making each table and field from Rust.
///
/// Why: under a memory limit (the default) mlua makes every table, field-name string and field
/// store from Rust in a protected call of its own, so making `Transform`'s four tables and
/// thirteen fields that way costs about 40,000 instructions (measured with callgrind); a Lua
/// table constructor with constant keys makes the same tables for a few hundred.
///
/// A type's shape is the part of its reflection that does not depend on the value: structs,
/// tuple structs, tuples and arrays, nested. Anything else (numbers, strings, `Name`, enums,
/// `Option`, lists, maps) is a *leaf*, converted by [`to_lua`] and passed to the constructor. A
/// `TypeId`'s reflection never changes, so entries are never stale. Types whose root is a leaf,
/// with more leaves than a Lua function takes parameters, or with a field name that is not a Lua
/// identifier, have no constructor and are converted by [`to_lua`] alone.
#[derive(Default)]
pub(crate) struct Shapes(std::collections::HashMap<TypeId, Option<(mlua::Function, usize)>>);

/// Most leaves a constructor takes (Lua allows 200 locals per function).
const MAX_LEAVES: usize = 180;

/// Whether `info` is part of a fixed shape ([`Shapes`]) rather than a leaf.
fn is_shape(info: &TypeInfo) -> bool {
    info.type_id() != TypeId::of::<Name>()
        && matches!(
            info,
            TypeInfo::Struct(_) | TypeInfo::TupleStruct(_) | TypeInfo::Tuple(_) | TypeInfo::Array(_)
        )
}

/// Whether a value is part of a fixed shape: [`is_shape`] of the type it represents, the same
/// static type info [`write_shape`] reads from its parent's fields, so both agree on every leaf.
fn value_is_shape(value: &dyn PartialReflect) -> bool {
    value.get_represented_type_info().is_some_and(is_shape)
}

fn is_identifier(name: &str) -> bool {
    const KEYWORDS: [&str; 22] = [
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in",
        "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
    ];
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !KEYWORDS.contains(&name)
}

/// Writes the Lua table constructor for `info` into `out`, numbering its leaves from `*leaves`;
/// `None` if the shape cannot be written as one.
fn write_shape(info: &TypeInfo, out: &mut String, leaves: &mut usize) -> Option<()> {
    let item = |field: Option<&'static TypeInfo>, out: &mut String, leaves: &mut usize| -> Option<()> {
        match field {
            Some(info) if is_shape(info) => write_shape(info, out, leaves),
            _ => {
                *leaves += 1;
                let _ = write!(out, "a{leaves}");
                Some(())
            }
        }
    };
    if let Some(kind) = Kind::of(info.type_id()) {
        // `V3(a1, a2, a3)`: a vector value (its fields are its leaves, in order).
        let _ = write!(out, "V{}(", kind as usize);
        for i in 0..kind.len() {
            *leaves += 1;
            let _ = write!(out, "{}a{leaves}", if i == 0 { "" } else { "," });
        }
        out.push(')');
        return (*leaves <= MAX_LEAVES).then_some(());
    }
    out.push('{');
    match info {
        TypeInfo::Struct(s) => {
            for field in s.iter() {
                if !is_identifier(field.name()) {
                    return None;
                }
                let _ = write!(out, "{}=", field.name());
                item(field.type_info(), out, leaves)?;
                out.push(',');
            }
        }
        TypeInfo::TupleStruct(s) => {
            for field in s.iter() {
                item(field.type_info(), out, leaves)?;
                out.push(',');
            }
        }
        TypeInfo::Tuple(s) => {
            for field in s.iter() {
                item(field.type_info(), out, leaves)?;
                out.push(',');
            }
        }
        TypeInfo::Array(a) => {
            for _ in 0..a.capacity() {
                item(a.item_info(), out, leaves)?;
                out.push(',');
            }
        }
        _ => return None,
    }
    out.push('}');
    (*leaves <= MAX_LEAVES).then_some(())
}

/// The constructor for values of `info`'s type and how many leaves it takes (made on first use,
/// then cached in [`Shapes`]).
fn constructor(lua: &Lua, info: &TypeInfo) -> Option<(mlua::Function, usize)> {
    if let Some(found) = lua.app_data_ref::<Shapes>().and_then(|s| s.0.get(&info.type_id()).cloned()) {
        return found;
    }
    let made = is_shape(info)
        .then(|| {
            let (mut body, mut leaves) = (String::new(), 0);
            write_shape(info, &mut body, &mut leaves)?;
            let params = (1..=leaves).map(|i| format!("a{i}")).collect::<Vec<_>>().join(",");
            let vectors = lua.app_data_ref::<super::vector::Vectors>()?.constructors.clone();
            lua.load(format!("local V2, V3, V4, V5 = ...; return function({params}) return {body} end"))
                .set_name("=bevy_lua_coroutines/shape")
                .call::<mlua::Function>(vectors)
                .ok()
                .map(|f| (f, leaves))
        })
        .flatten();
    match lua.app_data_mut::<Shapes>() {
        Some(mut shapes) => {
            shapes.0.insert(info.type_id(), made.clone());
        }
        None => {
            let mut shapes = Shapes::default();
            shapes.0.insert(info.type_id(), made.clone());
            lua.set_app_data(shapes);
        }
    }
    made
}

/// The leaves of `value` in the order its constructor takes them ([`Shapes`]).
fn push_leaves(
    lua: &Lua,
    value: &dyn PartialReflect,
    registry: &TypeRegistry,
    path: &Path,
    out: &mut Vec<Value>,
) -> Result<(), String> {
    let item = |field: &dyn PartialReflect, path: &Path, out: &mut Vec<Value>| {
        if value_is_shape(field) {
            push_leaves(lua, field, registry, path, out)
        } else {
            out.push(to_lua(lua, field, registry, path)?);
            Ok(())
        }
    };
    match value.reflect_ref() {
        ReflectRef::Struct(s) => {
            for i in 0..s.field_len() {
                let (Some(name), Some(field)) = (s.name_at(i), s.field_at(i)) else { continue };
                item(field, &Path::Field(path, name), out)?;
            }
        }
        ReflectRef::TupleStruct(s) => {
            for (i, field) in (0..s.field_len()).filter_map(|i| s.field(i)).enumerate() {
                item(field, &Path::Index(path, i + 1), out)?;
            }
        }
        ReflectRef::Tuple(s) => {
            for (i, field) in (0..s.field_len()).filter_map(|i| s.field(i)).enumerate() {
                item(field, &Path::Index(path, i + 1), out)?;
            }
        }
        ReflectRef::Array(s) => {
            for (i, field) in s.iter().enumerate() {
                item(field, &Path::Index(path, i + 1), out)?;
            }
        }
        _ => out.push(to_lua(lua, value, registry, path)?),
    }
    Ok(())
}

/// A component's value as a Lua value: through its type's constructor ([`Shapes`]) when it has
/// one, else by [`to_lua`]. Both give the same tables.
pub(crate) fn component_to_lua(
    lua: &Lua,
    value: &dyn PartialReflect,
    registry: &TypeRegistry,
    path: &Path,
) -> Result<Value, String> {
    let make = value.get_represented_type_info().and_then(|info| constructor(lua, info));
    let Some((make, count)) = make else { return to_lua(lua, value, registry, path) };
    let mut leaves = Vec::with_capacity(count);
    push_leaves(lua, value, registry, path, &mut leaves)?;
    make.call::<Value>(mlua::MultiValue::from_vec(leaves)).map_err(|e| lua_error(path, e))
}

fn sequence<'a>(
    lua: &Lua,
    items: impl Iterator<Item = &'a dyn PartialReflect>,
    registry: &TypeRegistry,
    path: &Path,
) -> Result<Value, String> {
    let t = lua.create_table().map_err(|e| lua_error(path, e))?;
    for (i, item) in items.enumerate() {
        let v = to_lua(lua, item, registry, &Path::Index(path, i + 1))?;
        t.raw_set(i + 1, v).map_err(|e| lua_error(path, e))?;
    }
    Ok(Value::Table(t))
}

/// The short type name of a value, for messages.
fn short_name(value: &dyn PartialReflect) -> &'static str {
    value.get_represented_type_info().map_or("value", |info| info.type_path_table().short_path())
}

fn is_option(value: &dyn PartialReflect) -> bool {
    value.reflect_type_path().starts_with("core::option::Option<")
}

macro_rules! leaf_to_lua {
    ($value:expr, $lua:expr; float: $($f:ty),*; int: $($i:ty),*) => {
        $(if let Some(v) = $value.try_downcast_ref::<$f>() { return Ok(Value::Number(*v as f64)); })*
        $(if let Some(v) = $value.try_downcast_ref::<$i>() {
            return Ok(match mlua::Integer::try_from(*v) {
                Ok(n) => Value::Integer(n),
                Err(_) => Value::Number(*v as f64),
            });
        })*
    };
}

fn opaque_to_lua(
    lua: &Lua,
    value: &dyn PartialReflect,
    registry: &TypeRegistry,
    path: &Path,
) -> Result<Value, String> {
    leaf_to_lua!(value, lua; float: f32, f64; int: i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);
    if let Some(b) = value.try_downcast_ref::<bool>() {
        return Ok(Value::Boolean(*b));
    }
    if let Some(s) = value.try_downcast_ref::<String>() {
        return lua.create_string(s).map(Value::String).map_err(|e| lua_error(path, e));
    }
    if let Some(e) = value.try_downcast_ref::<Entity>() {
        return entity_value(lua, *e).map(Value::UserData).map_err(|e| path.error(e));
    }
    let serialize = value
        .try_as_reflect()
        .and_then(|r| Some((r, registry.get_type_data::<ReflectSerialize>(r.type_id())?)));
    match serialize {
        Some((r, s)) => lua.to_value(&*s.get_serializable(r)).map_err(|e| lua_error(path, e)),
        None => Err(path.error(format_args!(
            "{} cannot be converted to Lua (it is reflected opaquely, without Serialize)",
            value.reflect_short_type_path()
        ))),
    }
}

/// A new value of type `type_id` from Lua: the type's reflected `Default`, patched with `value`.
pub(crate) fn new_value(
    type_id: TypeId,
    value: Value,
    registry: &TypeRegistry,
    path: &Path,
) -> Result<Box<dyn Reflect>, String> {
    path.check_depth()?;
    if type_id == TypeId::of::<Entity>() {
        // `Entity` has no default; the placeholder is overwritten (or the patch fails).
        let mut made: Box<dyn Reflect> = Box::new(Entity::PLACEHOLDER);
        patch(made.as_partial_reflect_mut(), value, registry, path)?;
        return Ok(made);
    }
    let default = registry.get_type_data::<ReflectDefault>(type_id).ok_or_else(|| {
        let name =
            registry.get(type_id).map_or("this type", |r| r.type_info().type_path_table().short_path());
        path.error(format_args!(
            "{name} has no reflected Default (add #[reflect(Default)]), so it cannot be made from a table"
        ))
    })?;
    let mut made = default.default();
    patch(made.as_partial_reflect_mut(), value, registry, path)?;
    Ok(made)
}

/// Writes the fields `value` names onto `target`.
pub(crate) fn patch(
    target: &mut dyn PartialReflect,
    value: Value,
    registry: &TypeRegistry,
    path: &Path,
) -> Result<(), String> {
    path.check_depth()?;
    if let Some(name) = target.try_downcast_mut::<Name>() {
        let Value::String(s) = &value else { return Err(path.expected("string", &value)) };
        *name = Name::new(s.to_str().map_err(|e| lua_error(path, e))?.to_string());
        return Ok(());
    }
    if let Value::Table(t) = &value
        && let Some((kind, current)) = super::vector::numbers(target)
        && let Some(numbers) = super::vector::unpack(t, kind, current, path.to_string())?
    {
        // A vector value: its numbers in one call, not a walk over its fields from Rust.
        super::vector::write(target, numbers);
        return Ok(());
    }
    let type_name = short_name(target);
    match target.reflect_mut() {
        ReflectMut::Struct(s) => {
            let t = table_of(&value, path)?;
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair.map_err(|e| lua_error(path, e))?;
                let Value::String(k) = &k else {
                    return Err(path.error(format_args!("field names must be strings, got {}", lua_type(&k))));
                };
                let k = k.to_str().map_err(|e| lua_error(path, e))?;
                let field = s
                    .field_mut(&k)
                    .ok_or_else(|| path.error(format_args!("{type_name} has no field '{k}'")))?;
                patch(field, v, registry, &Path::Field(path, &k))?;
            }
            Ok(())
        }
        ReflectMut::TupleStruct(s) => {
            patch_positions(&value, s.field_len(), path, |i, v, p| match s.field_mut(i) {
                Some(f) => patch(f, v, registry, p),
                None => Err(p.error("no such position")),
            })
        }
        ReflectMut::Tuple(s) => {
            patch_positions(&value, s.field_len(), path, |i, v, p| match s.field_mut(i) {
                Some(f) => patch(f, v, registry, p),
                None => Err(p.error("no such position")),
            })
        }
        ReflectMut::Array(s) => patch_positions(&value, s.len(), path, |i, v, p| match s.get_mut(i) {
            Some(f) => patch(f, v, registry, p),
            None => Err(p.error("no such position")),
        }),
        ReflectMut::List(list) => {
            let t = table_of(&value, path)?;
            let item = list
                .get_represented_list_info()
                .map(|info| info.item_ty().id())
                .ok_or_else(|| path.error("the list's item type is unknown"))?;
            let len = list_len(t, path)?;
            let mut items = Vec::with_capacity(len);
            for i in 1..=len {
                let v: Value = t.raw_get(i).map_err(|e| lua_error(path, e))?;
                let p = Path::Index(path, i);
                let made = match list.get(i - 1).and_then(|current| current.reflect_clone().ok()) {
                    Some(mut current) => {
                        patch(current.as_partial_reflect_mut(), v, registry, &p)?;
                        current
                    }
                    None => new_value(item, v, registry, &p)?,
                };
                items.push(made);
            }
            while list.pop().is_some() {}
            for made in items {
                list.push(made.into_partial_reflect());
            }
            Ok(())
        }
        ReflectMut::Enum(e) => {
            let info = match e.get_represented_enum_info() {
                Some(info) => info,
                None => return Err(path.error("the enum's variants are unknown")),
            };
            let option = info.type_path().starts_with("core::option::Option<");
            // `Option`: nil is `None`, anything else the `Some` value.
            let (variant, payload) = match value {
                Value::Nil if option => ("None".to_string(), Value::Nil),
                v if option => ("Some".to_string(), v),
                Value::String(s) => (s.to_string_lossy(), Value::Nil),
                Value::Table(t) => {
                    let mut pairs = t.pairs::<String, Value>();
                    let (Some(Ok((name, payload))), None) = (pairs.next(), pairs.next()) else {
                        return Err(path.error("a table with one field, `{ Variant = fields }`, expected"));
                    };
                    (name, payload)
                }
                other => return Err(path.expected("string or table", &other)),
            };
            let Some(variant_info) = info.variant(&variant) else {
                return Err(path.error(format_args!("{type_name} has no variant '{variant}'")));
            };
            let inner_path = if option { *path } else { Path::Field(path, &variant) };
            if e.variant_name() == variant && e.variant_type() != VariantType::Unit {
                return patch_variant_fields(e, payload, option, registry, &inner_path);
            }
            let dynamic = match variant_info {
                VariantInfo::Unit(_) => DynamicVariant::Unit,
                VariantInfo::Tuple(fields) => {
                    let t = if option { None } else { Some(table_of(&payload, &inner_path)?) };
                    let mut tuple = DynamicTuple::default();
                    for i in 0..fields.field_len() {
                        let Some(field) = fields.field_at(i) else { continue };
                        let p = Path::Index(&inner_path, i + 1);
                        let v = match &t {
                            Some(t) => t.raw_get(i + 1).map_err(|e| lua_error(&p, e))?,
                            None => payload.clone(),
                        };
                        let p = if option { inner_path } else { p };
                        tuple.insert_boxed(
                            new_value(field.type_id(), v, registry, &p)?.into_partial_reflect(),
                        );
                    }
                    DynamicVariant::Tuple(tuple)
                }
                VariantInfo::Struct(fields) => {
                    let t = table_of(&payload, &inner_path)?;
                    let mut made = DynamicStruct::default();
                    for field in fields.iter() {
                        let p = Path::Field(&inner_path, field.name());
                        let v: Value = t.raw_get(field.name()).map_err(|e| lua_error(&p, e))?;
                        made.insert_boxed(
                            field.name(),
                            new_value(field.type_id(), v, registry, &p)?.into_partial_reflect(),
                        );
                    }
                    DynamicVariant::Struct(made)
                }
            };
            e.try_apply(&DynamicEnum::new(variant, dynamic)).map_err(|err| path.error(err))
        }
        ReflectMut::Map(_) | ReflectMut::Set(_) => {
            Err(path.error(format_args!("{type_name} is a map or set, which scripts cannot write")))
        }
        ReflectMut::Opaque(o) => patch_opaque(o, value, registry, path),
        #[allow(unreachable_patterns)]
        _ => Err(path.error(format_args!("{type_name} cannot be written from Lua"))),
    }
}

/// Patches the fields of the variant an enum already holds.
fn patch_variant_fields(
    e: &mut dyn Enum,
    payload: Value,
    option: bool,
    registry: &TypeRegistry,
    path: &Path,
) -> Result<(), String> {
    if option {
        let inner = e.field_at_mut(0).ok_or_else(|| path.error("Some without a value"))?;
        return patch(inner, payload, registry, path);
    }
    if e.variant_type() == VariantType::Tuple {
        let len = e.field_len();
        return patch_positions(&payload, len, path, |i, v, p| match e.field_at_mut(i) {
            Some(f) => patch(f, v, registry, p),
            None => Err(p.error("no such position")),
        });
    }
    let t = table_of(&payload, path)?;
    for pair in t.pairs::<String, Value>() {
        let (k, v) = pair.map_err(|e| lua_error(path, e))?;
        let field = e.field_mut(&k).ok_or_else(|| path.error(format_args!("no field '{k}'")))?;
        patch(field, v, registry, &Path::Field(path, &k))?;
    }
    Ok(())
}

fn table_of<'v>(value: &'v Value, path: &Path) -> Result<&'v Table, String> {
    match value {
        Value::Table(t) => Ok(t),
        other => Err(path.expected("table", other)),
    }
}

/// The length of the list in `t`, by the crate's one list rule (`crate::lists`).
fn list_len(t: &Table, path: &Path) -> Result<usize, String> {
    crate::lists::list_len(t).map_err(|e| lua_error(path, e))?.map_err(|not_a_list| path.error(not_a_list))
}

/// Patches positions `1..=len` of an array-like value with what `value` (a table) holds there.
fn patch_positions(
    value: &Value,
    len: usize,
    path: &Path,
    mut each: impl FnMut(usize, Value, &Path) -> Result<(), String>,
) -> Result<(), String> {
    let t = table_of(value, path)?;
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| lua_error(path, e))?;
        // Lua 5.4 keys are integers; LuaJIT and Luau have only floats.
        let position = match k {
            Value::Integer(i) => Some(i as f64),
            Value::Number(n) if n.fract() == 0.0 => Some(n),
            _ => None,
        };
        let index = match position {
            Some(i) if i >= 1.0 && i <= len as f64 => i as usize,
            _ => {
                let shown = k.to_string().unwrap_or_else(|_| lua_type(&k).to_string());
                return Err(path.error(format_args!("position {shown} is not within 1..{len}")));
            }
        };
        each(index - 1, v, &Path::Index(path, index))?;
    }
    Ok(())
}

macro_rules! leaf_from_lua {
    ($target:expr, $value:expr, $path:expr; float: $($f:ty),*; int: $($i:ty),*) => {
        $(if let Some(slot) = $target.try_downcast_mut::<$f>() {
            *slot = match $value {
                Value::Integer(n) => n as $f,
                Value::Number(n) => n as $f,
                other => return Err($path.expected("number", &other)),
            };
            return Ok(());
        })*
        $(if let Some(slot) = $target.try_downcast_mut::<$i>() {
            let n = match $value {
                Value::Integer(n) => n,
                Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.2e18 => n as mlua::Integer,
                Value::Number(n) if n.is_nan() => return Err($path.error("integer expected, got nan")),
                Value::Number(n) if n.fract() == 0.0 || n.is_infinite() => {
                    return Err($path.error(format_args!("{n} does not fit in {}", stringify!($i))));
                }
                Value::Number(_) => return Err($path.error("integer expected, got a number with a fraction")),
                other => return Err($path.expected("number", &other)),
            };
            *slot = <$i>::try_from(n)
                .map_err(|_| $path.error(format_args!("{n} does not fit in {}", stringify!($i))))?;
            return Ok(());
        })*
    };
}

fn patch_opaque(
    target: &mut dyn PartialReflect,
    value: Value,
    registry: &TypeRegistry,
    path: &Path,
) -> Result<(), String> {
    leaf_from_lua!(target, value, path; float: f32, f64; int: i8, i16, i32, i64, isize, u8, u16, u32, u64, usize);
    if let Some(slot) = target.try_downcast_mut::<bool>() {
        let Value::Boolean(b) = value else { return Err(path.expected("boolean", &value)) };
        *slot = b;
        return Ok(());
    }
    if let Some(slot) = target.try_downcast_mut::<String>() {
        let Value::String(s) = &value else { return Err(path.expected("string", &value)) };
        *slot = s.to_str().map_err(|e| lua_error(path, e))?.to_string();
        return Ok(());
    }
    if let Some(slot) = target.try_downcast_mut::<Entity>() {
        let entity = match &value {
            Value::UserData(u) => u.borrow::<LuaEntity>().ok().map(|e| e.0),
            _ => None,
        };
        *slot = entity.ok_or_else(|| path.expected("entity", &value))?;
        return Ok(());
    }
    let type_name = target.reflect_short_type_path().to_string();
    let deserialize = target
        .get_represented_type_info()
        .map(TypeInfo::type_id)
        .and_then(|id| registry.get_type_data::<ReflectDeserialize>(id))
        .ok_or_else(|| {
            path.error(format_args!(
                "{type_name} cannot be written from Lua (it is reflected opaquely, without Deserialize)"
            ))
        })?;
    // (Not charged to the budget: no VM here. A component reflected opaquely with `Deserialize`
    // is the game's choice, and the walk is bounded by what the VM's memory limit lets a script
    // build.)
    crate::lists::check_tree(&value, &mut |_| Ok(())).map_err(|e| path.error(e))?;
    let made =
        deserialize.deserialize(mlua::serde::Deserializer::new(value)).map_err(|e| lua_error(path, e))?;
    target.try_apply(made.as_partial_reflect()).map_err(|e| path.error(e))
}
