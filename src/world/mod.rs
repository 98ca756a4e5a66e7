//! Scripts that act on the world: the methods of entity values (`get`, `set`, `has`, `despawn`)
//! and the `world` module (`spawn`, `find`, `findAll`, `entity`). Components are named by their
//! reflected type name and converted by walking their reflection ([`convert`]), so any component
//! registered for reflection with `#[reflect(Component)]` works with no per-type glue.
//!
//! The world is reachable only while the step runs scripts ([`access`]); a world function called
//! at any other time raises. An entity value is an `Entity` (index and generation), so one whose
//! entity was despawned raises `entity 12v3 no longer exists`, even after its index is reused.

pub(crate) mod access;
mod convert;
mod fast;
mod path;
mod typed;
mod vector;
#[cfg(feature = "lua54")]
mod vector_ops;

use bevy::ecs::reflect::{ReflectComponent, ReflectResource};
use bevy::prelude::*;
use bevy::reflect::{TypeRegistration, TypeRegistry};
use mlua::{Function, Lua, MultiValue, Table, Value};

use crate::asset::LuaScript;
use crate::bridge::script_function;
use crate::components::{EntityIndex, LuaEntity, LuaScripts, SyncQueue};
use crate::error::{lua_type, wrong_type};
use crate::runtime::Base;
use access::with_world;
use convert::Path;
use path::{CompiledPath, Leaf, Paths, Stop};
use typed::{Read, Typed};
use vector::Kind;

/// Installs the vector classes (built into the shared base), the entity methods and the `world`
/// module's functions (defined by name, so a game may add to `world`).
pub(crate) fn install(lua: &Lua, base: &Base) -> mlua::Result<()> {
    let bad = base.bad();
    // Made now: world functions borrow these while they run, and app data cannot be added then.
    lua.set_app_data(convert::Shapes::default());
    lua.set_app_data(Paths::default());
    access::install(lua);
    let (classes, vector_modules) = vector::install(lua, bad)?;
    let raw = lua.create_table()?;
    // The typed paths `lua/world.lua` has compiled, which (Lua 5.4) the C methods made below
    // read and write themselves (see `fast`); `via_c` tells `lua/world.lua` they call its `get`
    // and `set`.
    let typed = lua.create_table()?;
    #[cfg(feature = "lua54")]
    raw.raw_set("via_c", true)?;
    raw.raw_set("typed", &typed)?;
    raw.raw_set("compile", lua.create_function(compile_path)?)?;
    raw.raw_set(
        "get",
        lua.create_function(|lua, (this, id): (Value, usize)| raw_out(lua, get_path(lua, &this, id)))?,
    )?;
    raw.raw_set("set", lua.create_function(|lua, args: RawSet| set_path(lua, Target::Entity, args))?)?;
    raw.raw_set("get_transform", lua.create_function(get_transform)?)?;
    raw.raw_set("set_transform", lua.create_function(set_transform)?)?;
    raw.raw_set("get_resource", lua.create_function(|lua, id: usize| raw_out(lua, get_resource(lua, id)))?)?;
    raw.raw_set(
        "set_resource",
        lua.create_function(|lua, args: RawSet| set_path(lua, Target::Resource, args))?,
    )?;
    raw.raw_set("max_cached", path::MAX_CACHED)?;
    raw.raw_set("query", lua.create_function(|lua, args: MultiValue| raw_query(lua, args, "query"))?)?;
    raw.raw_set("count", lua.create_function(|lua, args: MultiValue| raw_query(lua, args, "count"))?)?;
    raw.raw_set("take", lua.create_function(take)?)?;
    raw.raw_set("entity", lua.create_function(|lua, bits: u64| entity_of_bits(lua, bits))?)?;
    raw.raw_set(
        "parent",
        lua.create_function(|lua, this: Value| raw_out(lua, relatives(lua, &this, false)))?,
    )?;
    raw.raw_set(
        "children",
        lua.create_function(|lua, this: Value| raw_out(lua, relatives(lua, &this, true)))?,
    )?;
    raw.raw_set(
        "check_self",
        lua.create_function(|_, (this, method): (Value, mlua::LuaString)| {
            Ok(entity_arg(&this, &method.to_string_lossy()).err())
        })?,
    )?;
    let paths: Table = lua
        .load(include_str!("../lua/world.lua"))
        .set_name("=bevy_lua_coroutines/world.lua")
        .call((raw, &vector_modules))?;
    let (get, set) = (paths.raw_get::<Function>("get")?, paths.raw_get::<Function>("set")?);
    #[cfg(feature = "lua54")]
    let (get, set) = {
        let mt = |class: &str| vector_modules.raw_get::<Table>(class)?.raw_get::<Table>("mt");
        fast::functions(lua, &typed, &mt("Vec3")?, &mt("Quat")?, &get, &set)?
    };
    #[cfg(not(feature = "lua54"))]
    let _ = typed;
    let methods = lua.create_table()?;
    methods.raw_set("get", get)?;
    methods.raw_set("set", set)?;
    methods.raw_set("parent", paths.raw_get::<Function>("parent")?)?;
    methods.raw_set("children", paths.raw_get::<Function>("children")?)?;
    methods.raw_set("has", script_function(lua, has)?)?;
    methods.raw_set("despawn", script_function(lua, despawn)?)?;
    let id = lua.create_function(|_, this: mlua::UserDataRef<LuaEntity>| Ok(this.0.to_bits() as i64))?;
    lua.set_app_data(EntityIndex(fast::entity_index(lua, &methods, &id)?));
    let functions = vec![
        ("world.getResource", paths.raw_get::<Function>("get_resource")?),
        ("world.setResource", paths.raw_get::<Function>("set_resource")?),
        ("world.query", paths.raw_get::<Function>("query")?),
        ("world.count", paths.raw_get::<Function>("count")?),
        ("world.spawn", script_function(lua, spawn)?),
        ("world.find", script_function(lua, |lua, args| find(lua, args, false))?),
        ("world.findAll", script_function(lua, |lua, args| find(lua, args, true))?),
        ("world.entity", script_function(lua, entity_of_id)?),
    ];
    for pair in classes.pairs::<String, Table>() {
        let (name, class) = pair?;
        base.builtin_class(&name, class)?;
    }
    for (path, function) in functions {
        base.define(path, function)?;
    }
    Ok(())
}

/// The entity value scripts see for `entity`.
fn entity_value(lua: &Lua, entity: Entity) -> Result<Value, String> {
    crate::components::entity_value(lua, entity)
        .map(Value::UserData)
        .map_err(|e| crate::error::split_traceback(&e).0)
}

/// The entity a method was called on (`entity:get(...)`), as Lua words a bad `self`.
fn this(args: &mut impl Iterator<Item = Value>, method: &str) -> Result<Entity, String> {
    entity_arg(&args.next().unwrap_or(Value::Nil), method)
}

/// [`this`], from the value itself.
fn entity_arg(value: &Value, method: &str) -> Result<Entity, String> {
    match value {
        Value::UserData(u) => u.borrow::<LuaEntity>().map(|e| e.0).ok(),
        _ => None,
    }
    .ok_or_else(|| format!("calling '{method}' on bad self (entity expected, got {})", lua_type(value)))
}

/// Argument `n` of `function`, which must be a string.
fn string_arg(args: &mut impl Iterator<Item = Value>, n: usize, function: &str) -> Result<String, String> {
    match args.next().unwrap_or(Value::Nil) {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => Err(wrong_type(n, function, "string", &other)),
    }
}

/// The registration of the type scripts call `name` (short type name or full type path); `what`
/// (`component` or `resource`) words the error.
fn registered<'r>(
    registry: &'r TypeRegistry,
    name: &str,
    what: &str,
) -> Result<&'r TypeRegistration, String> {
    let registration = registry.get_with_short_type_path(name).or_else(|| registry.get_with_type_path(name));
    registration.ok_or_else(|| {
        if registry.is_ambiguous(name) {
            return format!("{what} name '{name}' is ambiguous: use its full type path");
        }
        let derive = if what == "resource" { "Resource" } else { "Component" };
        format!(
            "unknown {what} '{name}' (no type registered for reflection has that name; \
             register it with app.register_type and #[reflect({derive})])"
        )
    })
}

/// The registration of the component scripts call `name` (short type name or full type path).
fn component<'r>(
    registry: &'r TypeRegistry,
    name: &str,
) -> Result<(&'r TypeRegistration, &'r ReflectComponent), String> {
    let registration = registered(registry, name, "component")?;
    let reflect = registration
        .data::<ReflectComponent>()
        .ok_or_else(|| format!("'{name}' is not a reflected component (add #[reflect(Component)] to it)"))?;
    Ok((registration, reflect))
}

/// Fails unless `entity` exists (its index not reused by another entity since).
fn alive(world: &World, entity: Entity) -> Result<(), String> {
    match world.get_entity(entity) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("entity {entity} no longer exists")),
    }
}

/// What a raw get hands `lua/world.lua`: a value, or a vector's numbers (see [`raw_out`]); a
/// whole `Transform` is only tagged, its numbers come from a second call ([`get_transform`]), so
/// the common results stay five values.
enum Got {
    Value(Value),
    Vector(Kind, [f64; 4]),
    Transform,
}

/// A raw get's results: a tag (`1` a value, `2`..`5` a vector of that [`Kind`], `7` a whole
/// `Transform`, `0` an error), then the value, the vector's numbers or the message.
type RawGot = (i64, Value, f64, f64, f64);

fn raw_out(lua: &Lua, got: Result<Got, String>) -> mlua::Result<RawGot> {
    Ok(match got {
        Ok(Got::Value(v)) => (1, v, 0.0, 0.0, 0.0),
        Ok(Got::Vector(kind, [a, b, c, d])) => (kind as i64, Value::Number(a), b, c, d),
        Ok(Got::Transform) => (7, Value::Nil, 0.0, 0.0, 0.0),
        Err(message) => (0, Value::String(lua.create_string(message)?), 0.0, 0.0, 0.0),
    })
}

/// The numbers of a whole `Transform` (translation, rotation, scale).
type RawTransformNumbers = (f64, f64, f64, f64, f64, f64, f64, f64, f64, f64);

/// `get_transform(self) -> numbers`: the entity's `Transform` as ten numbers, after a raw get of
/// a whole `Transform` said it has one (tag `7`); zeros if it no longer has it (which cannot
/// happen between the two calls, as no script runs between them).
fn get_transform(lua: &Lua, this: Value) -> mlua::Result<RawTransformNumbers> {
    let read = entity_arg(&this, "get").ok().and_then(|entity| {
        with_world(lua, "get", |world| Typed::Transform.read(world, entity)).ok().flatten()
    });
    let [a, b, c, d, e, f, g, h, i, j] = match read {
        Some(Read::Transform(numbers)) => numbers,
        _ => [0.0; 10],
    };
    Ok((a, b, c, d, e, f, g, h, i, j))
}

/// `compile(path, function) -> id, typed | false, message`: the number `lua/world.lua` caches
/// `path` under (compiled on first use) and the [`Typed::code`] of its typed fast path, if it has
/// one (a whole `Transform` is `1`, which `set` passes as numbers, see [`set_transform`]), or the
/// error to raise.
fn compile_path(
    lua: &Lua,
    (text, function): (mlua::LuaString, mlua::LuaString),
) -> mlua::Result<(Value, Value)> {
    let function = function.to_string_lossy();
    let result = match text.to_str() {
        Ok(text) => {
            with_world(lua, &function, |world| compile_in(lua, world, &text, &function)).and_then(|r| r)
        }
        Err(_) => Err(crate::error::bad_argument(1, &function, "the path is not valid UTF-8")),
    };
    Ok(match result {
        Ok((id, typed)) => (
            Value::Integer(id as mlua::Integer),
            typed.map_or(Value::Boolean(false), |t| Value::Integer(t.code() as mlua::Integer)),
        ),
        Err(message) => (Value::Boolean(false), Value::String(lua.create_string(message)?)),
    })
}

fn compile_in(
    lua: &Lua,
    world: &mut World,
    text: &str,
    function: &str,
) -> Result<(usize, Option<Typed>), String> {
    let mut paths = lua.app_data_mut::<Paths>().expect("the world is installed with the VM");
    if let Some(&id) = paths.by_text.get(text) {
        return Ok((id, paths.list[id].typed));
    }
    let registry = world.resource::<AppTypeRegistry>().clone();
    let registry = registry.read();
    let bad = |e: String| crate::error::bad_argument(1, function, e);
    let resource = function.ends_with("Resource");
    let name = path::root_name(text);
    let registration =
        registered(&registry, name, if resource { "resource" } else { "component" }).map_err(bad)?;
    let component = registration.data::<ReflectComponent>().cloned();
    let is_resource = registration.data::<ReflectResource>().is_some();
    match (&component, resource) {
        (_, true) if !is_resource => {
            return Err(bad(format!(
                "'{name}' is not a reflected resource (add #[reflect(Resource)] to it)"
            )));
        }
        (None, false) => {
            return Err(bad(format!(
                "'{name}' is not a reflected component (add #[reflect(Component)] to it)"
            )));
        }
        _ => {}
    }
    let mut compiled = path::compile(text, registration.type_id(), &registry).map_err(bad)?;
    compiled.resource = is_resource;
    if let Some(reflect) = &component {
        let id = reflect.register_component(world);
        compiled.mutable = world.components().get_info(id).is_none_or(|info| info.mutable());
        compiled.component_id = Some(id);
    }
    compiled.component = component;
    let typed = compiled.typed;
    Ok((paths.insert(compiled), typed))
}

/// The compiled path `id` (an id `lua/world.lua` got from [`compile_path`]).
fn compiled(paths: &Paths, id: usize) -> Result<&CompiledPath, String> {
    paths.list.get(id).ok_or_else(|| format!("no compiled path {id}"))
}

/// An error that stopped a walk, as the error `function` raises (`None` on the way included).
fn stopped(stop: Stop, function: &str) -> String {
    match stop {
        Stop::None(at) => crate::error::bad_argument(1, function, format_args!("{at} is None")),
        Stop::Error(e) => crate::error::bad_argument(1, function, e),
    }
}

/// `entity:get(path)` (Rust's side: `lua/world.lua` turns the result into the value).
fn get_path(lua: &Lua, this: &Value, id: usize) -> Result<Got, String> {
    let entity = entity_arg(this, "get")?;
    with_world(lua, "get", |world| {
        let paths = lua.app_data_ref::<Paths>().expect("the world is installed with the VM");
        let path = compiled(&paths, id)?;
        if let Some(typed) = path.typed {
            return match typed.read(world, entity) {
                None => Err(format!("entity {entity} no longer exists")),
                Some(Read::Missing) => Ok(Got::Value(Value::Nil)),
                Some(Read::Number(n)) => Ok(Got::Value(Value::Number(n))),
                Some(Read::Vector(kind, numbers)) => Ok(Got::Vector(kind, numbers)),
                Some(Read::Transform(_)) => Ok(Got::Transform),
            };
        }
        let Some(reflect) = &path.component else {
            return Err(crate::error::bad_argument(
                1,
                "get",
                format_args!(
                    "'{}' is not a reflected component (add #[reflect(Component)] to it)",
                    path.root()
                ),
            ));
        };
        let world: &World = world;
        let entity = world.get_entity(entity).map_err(|_| format!("entity {entity} no longer exists"))?;
        match reflect.reflect(entity) {
            Some(component) => read(lua, world, path, component.as_partial_reflect(), "get"),
            None => Ok(Got::Value(Value::Nil)),
        }
    })?
}

/// `world.getResource(path)` (Rust's side).
fn get_resource(lua: &Lua, id: usize) -> Result<Got, String> {
    with_world(lua, "getResource", |world| {
        let paths = lua.app_data_ref::<Paths>().expect("the world is installed with the VM");
        let path = compiled(&paths, id)?;
        let world: &World = world;
        let (Some(reflect), true) = (&path.component, path.resource) else {
            return Err(crate::error::bad_argument(
                1,
                "getResource",
                format_args!(
                    "'{}' is not a reflected resource (add #[reflect(Resource)] to it)",
                    path.root()
                ),
            ));
        };
        let value = resource_entity(world, path).and_then(|e| reflect.reflect(world.entity(e)));
        match value {
            Some(value) => read(lua, world, path, value.as_partial_reflect(), "getResource"),
            None => Ok(Got::Value(Value::Nil)),
        }
    })?
}

/// The entity that holds the resource `path` starts at, if the resource exists.
fn resource_entity(world: &World, path: &CompiledPath) -> Option<Entity> {
    world.resource_entities().get(path.component_id?)
}

/// The value at `path` inside `root`: numbers and vectors straight from their type, anything
/// else converted by walking its reflection.
fn read(
    lua: &Lua,
    world: &World,
    path: &CompiledPath,
    root: &dyn PartialReflect,
    function: &str,
) -> Result<Got, String> {
    let value = match path.walk(root) {
        Ok(value) => value,
        Err(Stop::None(_)) => return Ok(Got::Value(Value::Nil)),
        Err(stop) => return Err(stopped(stop, function)),
    };
    match path.leaf {
        Leaf::F32 => {
            if let Some(v) = value.try_downcast_ref::<f32>() {
                return Ok(Got::Value(Value::Number(f64::from(*v))));
            }
        }
        Leaf::F64 => {
            if let Some(v) = value.try_downcast_ref::<f64>() {
                return Ok(Got::Value(Value::Number(*v)));
            }
        }
        Leaf::Vector(_) => {
            if let Some((kind, numbers)) = vector::numbers(value) {
                return Ok(Got::Vector(kind, numbers));
            }
        }
        Leaf::Other => {}
    }
    let registry = world.resource::<AppTypeRegistry>().clone();
    let registry = registry.read();
    convert::component_to_lua(lua, value, &registry, &Path::Root(&path.text)).map(Got::Value)
}

/// What a raw set writes to.
#[derive(Clone, Copy)]
enum Target {
    /// The entity of the `self` argument (`entity:set`).
    Entity,
    /// The resource the path names (`world.setResource`).
    Resource,
}

/// The arguments of a raw set: `self` (for `entity:set`), the path's id, the tag (`1` a value,
/// `2`..`5` a vector of that [`Kind`]) and the value or the vector's numbers.
type RawSet = (Value, usize, i64, Value, Value, Value, Value);

/// `entity:set(path, value)` and `world.setResource(path, value)` (Rust's side): returns nothing
/// when written, the message to raise, or `6` when `lua/world.lua` should pass a vector as a
/// table instead (the path holds something other than that vector).
fn set_path(lua: &Lua, target: Target, (this, id, tag, a, b, c, d): RawSet) -> mlua::Result<Value> {
    let function = match target {
        Target::Entity => "set",
        Target::Resource => "setResource",
    };
    let result = match target {
        Target::Entity => entity_arg(&this, "set").map(Some),
        Target::Resource => Ok(None),
    }
    .and_then(|entity| {
        with_world(lua, function, |world| write(lua, world, entity, id, tag, [a, b, c, d], function))?
    });
    Ok(match result {
        Ok(true) => Value::Nil,
        Ok(false) => Value::Integer(6),
        Err(message) => Value::String(lua.create_string(message)?),
    })
}

/// The arguments of [`set_transform`]: `self`, the path's id, which parts are given (bits 1, 2
/// and 4: translation, rotation, scale) and their numbers (nil for a part not given).
type RawTransform = (Value, usize, u8, Value, Value, Value, Value, Value, Value, Value, Value, Value, Value);

/// `entity:set("Transform", t)` when `t` names nothing but `translation`, `rotation` and
/// `scale`, each a vector of its class (`lua/world.lua` checks that): the given parts written
/// straight into the entity's `Transform`. Returns `6` ("set it the general way") for anything
/// else (a part that is not all numbers, a missing entity or `Transform`), so every error and
/// every other case reads as the general `set` makes it, and nothing is half-applied.
fn set_transform(
    lua: &Lua,
    (this, id, given, a, b, c, d, e, f, g, h, i, j): RawTransform,
) -> mlua::Result<Value> {
    let values = [a, b, c, d, e, f, g, h, i, j];
    let number = |v: &Value| match *v {
        Value::Number(n) => Some(n),
        Value::Integer(n) => Some(n as f64),
        _ => None,
    };
    let part = |bit: u8, from: usize, len: usize| -> Option<Option<[f64; 4]>> {
        if given & bit == 0 {
            return Some(None);
        }
        let mut out = [0.0; 4];
        for (slot, v) in out.iter_mut().zip(&values[from..from + len]) {
            *slot = number(v)?;
        }
        Some(Some(out))
    };
    let (Some(translation), Some(rotation), Some(scale), Ok(entity)) =
        (part(1, 0, 3), part(2, 3, 4), part(4, 7, 3), entity_arg(&this, "set"))
    else {
        return Ok(Value::Integer(6));
    };
    let written = with_world(lua, "set", |world| {
        let paths = lua.app_data_ref::<Paths>().expect("the world is installed with the VM");
        let whole = paths.list.get(id).is_some_and(|p| p.typed == Some(Typed::Transform));
        whole && Typed::write_transform(world, entity, [translation, rotation, scale])
    });
    Ok(if written == Ok(true) { Value::Nil } else { Value::Integer(6) })
}

/// Writes `values` (tagged as in [`set_path`]) at the compiled path `id`, on `entity` or (for
/// `None`) on the path's resource. Numbers and vectors are written straight into their field;
/// anything else patches a copy of the component, stored only if the whole patch fits.
fn write(
    lua: &Lua,
    world: &mut World,
    entity: Option<Entity>,
    id: usize,
    tag: i64,
    values: [Value; 4],
    function: &str,
) -> Result<bool, String> {
    let paths = lua.app_data_ref::<Paths>().expect("the world is installed with the VM");
    let path = compiled(&paths, id)?;
    if let (Some(typed), Some(entity)) = (path.typed, entity)
        && let Some(numbers) = typed_numbers(typed, tag, &values)
        && typed.write(world, entity, numbers)
    {
        return Ok(true);
    }
    let name = path.root();
    let target = match entity {
        Some(entity) => {
            alive(world, entity)?;
            entity
        }
        None if !path.resource => {
            return Err(crate::error::bad_argument(
                1,
                function,
                format_args!("'{name}' is not a reflected resource (add #[reflect(Resource)] to it)"),
            ));
        }
        None => resource_entity(world, path).ok_or_else(|| format!("resource '{name}' does not exist"))?,
    };
    let Some(reflect) = &path.component else {
        return Err(crate::error::bad_argument(
            1,
            function,
            format_args!("'{name}' is not a reflected component (add #[reflect(Component)] to it)"),
        ));
    };
    let [value, b, c, d] = values;
    if let (Leaf::Vector(kind), 2..=5) = (path.leaf, tag)
        && tag != kind as i64
    {
        let given = [Kind::Vec2, Kind::Vec3, Kind::Vec4, Kind::Quat][tag as usize - 2];
        return Err(format!("{}: {} expected, got {}", path.text, kind.name(), given.name()));
    }
    // Straight into the field: checked first, so a bad number changes nothing.
    let direct = match (path.leaf, tag) {
        (Leaf::Vector(kind), tag) if tag == kind as i64 => {
            Some(vector::checked(kind, [&value, &b, &c, &d], &path.text)?)
        }
        (Leaf::F32 | Leaf::F64, 1) => match value {
            Value::Number(n) => Some([n, 0.0, 0.0, 0.0]),
            Value::Integer(n) => Some([n as f64, 0.0, 0.0, 0.0]),
            _ => None,
        },
        _ => None,
    };
    if let (Some(numbers), true, false) = (direct, path.mutable, path.is_root()) {
        if !path.is_static() {
            // Walked on a shared borrow first, so a path that does not fit changes nothing (and
            // does not mark the component changed). A path of struct fields alone always fits.
            let current = reflect.reflect(world.entity(target));
            let current = current.ok_or_else(|| format!("{}: the entity has no {name}", path.text))?;
            path.walk(current.as_partial_reflect()).map_err(|stop| stopped(stop, function))?;
        }
        let Some(mut live) = reflect.reflect_mut(world.entity_mut(target)) else {
            return Err(format!("{}: the entity has no {name}", path.text));
        };
        let slot = path.walk_mut(live.as_partial_reflect_mut()).map_err(|stop| stopped(stop, function))?;
        let written = match path.leaf {
            Leaf::F32 => slot.try_downcast_mut::<f32>().map(|v| *v = numbers[0] as f32).is_some(),
            Leaf::F64 => slot.try_downcast_mut::<f64>().map(|v| *v = numbers[0]).is_some(),
            Leaf::Vector(_) => vector::write(slot, numbers),
            Leaf::Other => false,
        };
        if written {
            return Ok(true);
        }
    }
    if tag != 1 {
        return Ok(false);
    }
    let registry = world.resource::<AppTypeRegistry>().clone();
    let registry = registry.read();
    if path.is_root() {
        if value.is_nil() {
            return Err(wrong_type(2, function, "value", &value));
        }
        return set_component(world, &registry, target, path, reflect, value).map(|()| true);
    }
    let Some(current) = reflect.reflect(world.entity(target)) else {
        return Err(format!("{}: the entity has no {name}", path.text));
    };
    let mut updated = current
        .reflect_clone()
        .map_err(|e| format!("{name} cannot be copied to patch it ({e}); add #[reflect(Clone)]"))?;
    let slot = path.walk_mut(updated.as_partial_reflect_mut()).map_err(|stop| stopped(stop, function))?;
    convert::patch(slot, value, &registry, &Path::Root(&path.text))?;
    store(world, &registry, target, reflect, path.mutable, updated, name).map(|()| true)
}

/// The numbers a typed write of `typed` takes from a raw set's `tag` and values, if they are
/// what it expects (a vector of its class, or a number); `None` sends the write the general way,
/// which raises the right error for anything else.
fn typed_numbers(typed: Typed, tag: i64, values: &[Value; 4]) -> Option<[f64; 4]> {
    let number = |v: &Value| match *v {
        Value::Number(n) => Some(n),
        Value::Integer(n) => Some(n as f64),
        _ => None,
    };
    match typed {
        Typed::Number(..) if tag == 1 => Some([number(&values[0])?, 0.0, 0.0, 0.0]),
        Typed::Vector(part) if tag == part.kind() as i64 => {
            let mut out = [0.0; 4];
            for (slot, v) in out.iter_mut().zip(&values[..part.kind().len()]) {
                *slot = number(v)?;
            }
            Some(out)
        }
        _ => None,
    }
}

/// Stores a patched copy of a component: written over the live one, or (for an immutable
/// component such as `ChildOf`) inserted whole, so its hooks run.
fn store(
    world: &mut World,
    registry: &TypeRegistry,
    entity: Entity,
    reflect: &ReflectComponent,
    mutable: bool,
    updated: Box<dyn Reflect>,
    name: &str,
) -> Result<(), String> {
    if !mutable {
        let mut entity = world.entity_mut(entity);
        reflect.insert(&mut entity, updated.as_partial_reflect(), registry);
        return Ok(());
    }
    let Some(mut live) = reflect.reflect_mut(world.entity_mut(entity)) else {
        return Err(format!("{name} vanished while it was being set"));
    };
    live.set(updated).map_err(|_| format!("{name}: the patched value has another type"))
}

/// `entity:set(name, table)`: patches the fields the table names onto a copy of the current
/// value and stores the copy (so a failed patch changes nothing), or inserts the component (its
/// reflected `Default`, patched) if the entity lacks it.
fn set_component(
    world: &mut World,
    registry: &TypeRegistry,
    entity: Entity,
    path: &CompiledPath,
    reflect: &ReflectComponent,
    value: Value,
) -> Result<(), String> {
    let name = path.root();
    let root = Path::Root(name);
    match reflect.reflect(world.entity(entity)).map(|current| current.reflect_clone()) {
        Some(Ok(mut updated)) => {
            convert::patch(updated.as_partial_reflect_mut(), value, registry, &root)?;
            store(world, registry, entity, reflect, path.mutable, updated, name)
        }
        Some(Err(e)) => Err(format!("{name} cannot be copied to patch it ({e}); add #[reflect(Clone)]")),
        None => {
            let made = convert::new_value(path.type_id, value, registry, &root)?;
            reflect.insert(&mut world.entity_mut(entity), made.as_partial_reflect(), registry);
            Ok(())
        }
    }
}

/// `entity:has(name) -> boolean`.
fn has(lua: &Lua, args: MultiValue) -> Result<Value, String> {
    let mut args = args.into_iter();
    let entity = this(&mut args, "has")?;
    let name = string_arg(&mut args, 1, "has")?;
    with_world(lua, "has", |world| {
        let registry = world.resource::<AppTypeRegistry>().clone();
        let registry = registry.read();
        let (_, reflect) = component(&registry, &name)?;
        alive(world, entity)?;
        Ok(Value::Boolean(reflect.contains(world.entity(entity))))
    })?
}

/// `entity:despawn()`: the entity and its components go now, and so do the tasks of the scripts
/// that went with it (the running one finishes its resume); the next sync forgets the instances.
fn despawn(lua: &Lua, args: MultiValue) -> Result<Value, String> {
    let mut args = args.into_iter();
    let entity = this(&mut args, "despawn")?;
    let scripted = with_world(lua, "despawn", |world| {
        alive(world, entity)?;
        // Entities whose scripts go with this despawn (children too) queue themselves for the
        // sync; their tasks are cancelled now, so none of them resumes later in this step.
        let before = world.resource::<SyncQueue>().0.len();
        world.despawn(entity);
        let queued = &world.resource::<SyncQueue>().0;
        let mut gone: Vec<Entity> = queued[before.min(queued.len())..]
            .iter()
            .copied()
            .filter(|&e| world.get_entity(e).is_err())
            .collect();
        gone.dedup();
        Ok::<_, String>(gone)
    })??;
    for gone in scripted {
        crate::scheduler::cancel_despawned(lua, gone);
    }
    Ok(Value::Nil)
}

/// `world.spawn{ script = "path.lua" | {paths}, Name = "x", Transform = {...}, ... } -> entity`.
/// Every component is converted before anything is spawned, so a bad field spawns nothing.
fn spawn(lua: &Lua, args: MultiValue) -> Result<Value, String> {
    let spec = match args.into_iter().next().unwrap_or(Value::Nil) {
        Value::Table(t) => t,
        other => return Err(wrong_type(1, "spawn", "table", &other)),
    };
    let mut fields = Vec::new();
    for pair in spec.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| crate::error::split_traceback(&e).0)?;
        let Value::String(k) = &k else {
            return Err(format!("spawn: keys must be component names, got a {}", lua_type(&k)));
        };
        fields.push((k.to_string_lossy(), v));
    }
    // Sorted, so which error a table with several bad fields raises does not depend on hashing.
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    with_world(lua, "spawn", |world| {
        let registry = world.resource::<AppTypeRegistry>().clone();
        let registry = registry.read();
        let mut scripts = Vec::new();
        let mut parent = None;
        let mut components = Vec::new();
        let mut given: bevy::platform::collections::HashSet<std::any::TypeId> = Default::default();
        for (name, value) in fields {
            if name == "script" {
                scripts = script_paths(value)?;
                for path in &scripts {
                    crate::asset::check_script_file(lua, path, "spawn")?;
                }
                continue;
            }
            if name == "parent" {
                let e = entity_arg(&value, "spawn")
                    .map_err(|_| format!("spawn: parent: entity expected, got {}", lua_type(&value)))?;
                alive(world, e).map_err(|m| format!("spawn: parent: {m}"))?;
                parent = Some(e);
                continue;
            }
            let (registration, reflect) = component(&registry, &name)?;
            if !given.insert(registration.type_id()) {
                return Err(format!("spawn: {name}: this component is given twice"));
            }
            let made = convert::new_value(registration.type_id(), value, &registry, &Path::Root(&name))?;
            components.push((reflect.clone(), made));
        }
        let handles: Vec<Handle<LuaScript>> = {
            let server = world.resource::<AssetServer>();
            scripts.into_iter().map(|path| server.load(path)).collect()
        };
        let mut spawned = world.spawn_empty();
        for (reflect, made) in &components {
            reflect.insert(&mut spawned, made.as_partial_reflect(), &registry);
        }
        if let Some(parent) = parent {
            spawned.insert(ChildOf(parent));
        }
        if !handles.is_empty() {
            spawned.insert(LuaScripts(handles));
        }
        entity_value(lua, spawned.id())
    })?
}

/// The `script` field of `world.spawn`: one asset path or an array of them.
fn script_paths(value: Value) -> Result<Vec<String>, String> {
    let paths = script_path_list(value)?;
    for path in &paths {
        if let Err(e) = bevy::asset::AssetPath::try_parse(path) {
            return Err(format!("spawn: script: invalid asset path '{path}' ({e})"));
        }
    }
    Ok(paths)
}

/// The `script` field as a list of strings.
fn script_path_list(value: Value) -> Result<Vec<String>, String> {
    match value {
        Value::String(s) => Ok(vec![s.to_string_lossy()]),
        Value::Table(t) => t
            .sequence_values::<Value>()
            .enumerate()
            .map(|(i, v)| match v {
                Ok(Value::String(s)) => Ok(s.to_string_lossy()),
                Ok(other) => {
                    Err(format!("spawn: script[{}]: string expected, got {}", i + 1, lua_type(&other)))
                }
                Err(e) => Err(e.to_string()),
            })
            .collect(),
        other => Err(format!("spawn: script: string or array of strings expected, got {}", lua_type(&other))),
    }
}

/// `world.find(name) -> entity | nil` (the lowest-indexed entity with that `Name`), and
/// `world.findAll(name) -> {entity...}` (all of them, by index).
fn find(lua: &Lua, args: MultiValue, all: bool) -> Result<Value, String> {
    let function = if all { "findAll" } else { "find" };
    let name = string_arg(&mut args.into_iter(), 1, function)?;
    let mut found = with_world(lua, function, |world| {
        let mut query = world.query::<(Entity, &Name)>();
        query.iter(world).filter(|(_, n)| n.as_str() == name).map(|(e, _)| e).collect::<Vec<_>>()
    })?;
    found.sort_by_key(|e| (e.index_u32(), e.to_bits()));
    if !all {
        return found.first().map_or(Ok(Value::Nil), |&e| entity_value(lua, e));
    }
    let list = lua.create_table_with_capacity(found.len(), 0).map_err(|e| e.to_string())?;
    for (i, e) in found.into_iter().enumerate() {
        list.raw_set(i + 1, entity_value(lua, e)?).map_err(|e| e.to_string())?;
    }
    Ok(Value::Table(list))
}

/// `world.entity(id) -> entity`: the entity value of an id (`Entity::to_bits`), as Rust messages
/// carry entities. It is not checked here: its methods raise if the entity does not exist.
fn entity_of_id(lua: &Lua, args: MultiValue) -> Result<Value, String> {
    let value = args.into_iter().next().unwrap_or(Value::Nil);
    let bits = match value {
        Value::Integer(n) if n >= 0 => n as u64,
        // `as` would saturate: 2^64 and beyond are no id, not the largest one.
        Value::Number(n) if n.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&n) => n as u64,
        Value::Number(n) if n >= 18_446_744_073_709_551_616.0 => {
            return Err(crate::error::bad_argument(
                1,
                "entity",
                format_args!("id below 2^64 expected, got {n:e}"),
            ));
        }
        other => return Err(wrong_type(1, "entity", "integer", &other)),
    };
    let entity = Entity::try_from_bits(bits)
        .ok_or_else(|| crate::error::bad_argument(1, "entity", format_args!("{bits} is not an entity id")))?;
    entity_value(lua, entity)
}

/// Entities a query matched, in order, as their ids (`Entity::to_bits`): what `world.query`
/// iterates, handed to Lua in chunks by [`take`] (numbers, not entity values, so no Lua value is
/// made per entity here; `lua/world.lua` keeps one entity value per id).
struct Matched(Vec<u64>);

impl mlua::UserData for Matched {}

/// Most ids one [`take`] returns (LuaJIT's C stack takes about 8,000 values).
const CHUNK: usize = 1024;

/// `take(matched, from) -> id...`: the ids from position `from` (0-based), at most [`CHUNK`].
fn take(_: &Lua, (matched, from): (mlua::UserDataRef<Matched>, usize)) -> mlua::Result<mlua::Variadic<i64>> {
    let ids = &matched.0[from.min(matched.0.len())..];
    Ok(ids[..ids.len().min(CHUNK)].iter().map(|&bits| bits as i64).collect())
}

/// An entity value for an id from [`take`] or [`relatives`].
fn entity_of_bits(lua: &Lua, bits: u64) -> mlua::Result<Value> {
    let entity = Entity::try_from_bits(bits).ok_or_else(|| mlua::Error::runtime("not an entity id"))?;
    crate::components::entity_value(lua, entity).map(Value::UserData)
}

/// `world.query(name, ..., { without = {...} }?)` and `world.count(...)` (Rust's side): the
/// matched ids (a [`Matched`] and their count) or the count, then how many entities the world
/// has; `false, message` on bad arguments.
fn raw_query(lua: &Lua, args: MultiValue, function: &str) -> mlua::Result<(Value, Value, usize)> {
    let fail = |message: String| Ok((Value::Boolean(false), Value::String(lua.create_string(message)?), 0));
    let (with, without) = match query_names(args, function) {
        Ok(names) => names,
        Err(message) => return fail(message),
    };
    let found = with_world(lua, function, |world| {
        let registry = world.resource::<AppTypeRegistry>().clone();
        let registry = registry.read();
        let ids =
            |names: &[(usize, String)]| -> Result<Vec<Option<bevy::ecs::component::ComponentId>>, String> {
                names
                    .iter()
                    .map(|(n, name)| {
                        let (registration, _) = component(&registry, name)
                            .map_err(|e| crate::error::bad_argument(*n, function, e))?;
                        Ok(world.components().get_id(registration.type_id()))
                    })
                    .collect()
            };
        let total = world.entities().len() as usize;
        let (with, mut without) = (ids(&with)?, ids(&without)?.into_iter().flatten().collect::<Vec<_>>());
        // Entities Bevy's queries skip by default (`Disabled` ones) are skipped here too.
        if let Some(filters) = world.get_resource::<bevy::ecs::entity_disabling::DefaultQueryFilters>() {
            without.extend(filters.disabling_ids());
        }
        // A component no entity ever had has no id yet: nothing matches.
        let Some(with) = with.into_iter().collect::<Option<Vec<_>>>() else { return Ok((Vec::new(), total)) };
        let mut found: Vec<Entity> = world
            .archetypes()
            .iter()
            .filter(|a| with.iter().all(|&c| a.contains(c)) && !without.iter().any(|&c| a.contains(c)))
            .flat_map(|a| a.entities().iter().map(|e| e.id()))
            .collect();
        found.sort_unstable_by_key(|e| (e.index_u32(), e.to_bits()));
        Ok((found, total))
    })
    .and_then(|r| r);
    let (found, total) = match found {
        Ok(found) => found,
        Err(message) => return fail(message),
    };
    if function == "count" {
        return Ok((Value::Integer(found.len() as mlua::Integer), Value::Nil, total));
    }
    let count = found.len();
    let matched = lua.create_userdata(Matched(found.into_iter().map(|e| e.to_bits()).collect()))?;
    Ok((Value::UserData(matched), Value::Integer(count as mlua::Integer), total))
}

/// The component names of a query's arguments (with their positions, for errors): those it
/// needs, and those its last argument's `without` list excludes.
type QueryNames = (Vec<(usize, String)>, Vec<(usize, String)>);

fn query_names(args: MultiValue, function: &str) -> Result<QueryNames, String> {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let count = args.len();
    for (i, arg) in args.into_iter().enumerate() {
        let n = i + 1;
        match arg {
            Value::String(s) => with.push((n, s.to_string_lossy())),
            Value::Table(t) if n == count && n > 1 => {
                for pair in t.pairs::<Value, Value>() {
                    let (k, v) = pair.map_err(|e| e.to_string())?;
                    match (&k, v) {
                        (Value::String(k), Value::Table(list)) if k == "without" => {
                            for (j, name) in list.sequence_values::<Value>().enumerate() {
                                match name.map_err(|e| e.to_string())? {
                                    Value::String(s) => without.push((n, s.to_string_lossy())),
                                    other => {
                                        return Err(crate::error::bad_argument(
                                            n,
                                            function,
                                            format_args!(
                                                "without[{}]: string expected, got {}",
                                                j + 1,
                                                lua_type(&other)
                                            ),
                                        ));
                                    }
                                }
                            }
                        }
                        (Value::String(k), v) if k == "without" => {
                            return Err(crate::error::bad_argument(
                                n,
                                function,
                                format_args!("without: table expected, got {}", lua_type(&v)),
                            ));
                        }
                        _ => {
                            let shown = k.to_string().unwrap_or_else(|_| lua_type(&k).to_string());
                            return Err(crate::error::bad_argument(
                                n,
                                function,
                                format_args!("unknown option '{shown}'"),
                            ));
                        }
                    }
                }
            }
            other => return Err(wrong_type(n, function, "string", &other)),
        }
    }
    if with.is_empty() {
        return Err(crate::error::bad_argument(1, function, "a component name expected"));
    }
    Ok((with, without))
}

/// `entity:parent()` (`children = false`: the id of its `ChildOf` parent, or nil) and
/// `entity:children()` (a [`Matched`] of its `Children`, in order).
fn relatives(lua: &Lua, this: &Value, children: bool) -> Result<Got, String> {
    let method = if children { "children" } else { "parent" };
    let entity = entity_arg(this, method)?;
    let found = with_world(lua, method, |world| {
        alive(world, entity)?;
        let e = world.entity(entity);
        Ok::<_, String>(if children {
            e.get::<Children>().map(|c| c.iter().map(|e| e.to_bits()).collect()).unwrap_or_default()
        } else {
            e.get::<ChildOf>().map(|c| vec![c.parent().to_bits()]).unwrap_or_default()
        })
    })??;
    if !children {
        return Ok(Got::Value(found.first().map_or(Value::Nil, |&bits| Value::Integer(bits as i64))));
    }
    lua.create_userdata(Matched(found)).map(|m| Got::Value(Value::UserData(m))).map_err(|e| e.to_string())
}
