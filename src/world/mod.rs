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

use bevy::ecs::reflect::ReflectComponent;
use bevy::prelude::*;
use bevy::reflect::{TypeRegistration, TypeRegistry};
use mlua::{Function, Lua, MultiValue, Value};

use crate::asset::LuaScript;
use crate::bridge::script_function;
use crate::components::{EntityMethods, LuaEntity, LuaScripts, SyncQueue};
use crate::error::{lua_type, wrong_type};
use access::with_world;
use convert::Path;

/// Installs the entity methods; returns the `world` module's functions, to be defined by name.
pub(crate) fn install(lua: &Lua) -> mlua::Result<Vec<(&'static str, Function)>> {
    let methods = lua.create_table()?;
    methods.raw_set("get", script_function(lua, get)?)?;
    methods.raw_set("set", script_function(lua, set)?)?;
    methods.raw_set("has", script_function(lua, has)?)?;
    methods.raw_set("despawn", script_function(lua, despawn)?)?;
    lua.set_app_data(EntityMethods(methods));
    Ok(vec![
        ("world.spawn", script_function(lua, spawn)?),
        ("world.find", script_function(lua, |lua, args| find(lua, args, false))?),
        ("world.findAll", script_function(lua, |lua, args| find(lua, args, true))?),
        ("world.entity", script_function(lua, entity_of_id)?),
    ])
}

/// The entity value scripts see for `entity`.
fn entity_value(lua: &Lua, entity: Entity) -> Result<Value, String> {
    crate::components::entity_value(lua, entity)
        .map(Value::UserData)
        .map_err(|e| crate::error::split_traceback(&e).0)
}

/// The entity a method was called on (`entity:get(...)`), as Lua words a bad `self`.
fn this(args: &mut impl Iterator<Item = Value>, method: &str) -> Result<Entity, String> {
    let value = args.next().unwrap_or(Value::Nil);
    match &value {
        Value::UserData(u) => u.borrow::<LuaEntity>().map(|e| e.0).ok(),
        _ => None,
    }
    .ok_or_else(|| format!("calling '{method}' on bad self (entity expected, got {})", lua_type(&value)))
}

/// Argument `n` of `function`, which must be a string.
fn string_arg(args: &mut impl Iterator<Item = Value>, n: usize, function: &str) -> Result<String, String> {
    match args.next().unwrap_or(Value::Nil) {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => Err(wrong_type(n, function, "string", &other)),
    }
}

/// The registration of the component scripts call `name` (short type name or full type path).
fn component<'r>(
    registry: &'r TypeRegistry,
    name: &str,
) -> Result<(&'r TypeRegistration, &'r ReflectComponent), String> {
    let registration = registry.get_with_short_type_path(name).or_else(|| registry.get_with_type_path(name));
    let Some(registration) = registration else {
        if registry.is_ambiguous(name) {
            return Err(format!("component name '{name}' is ambiguous: use its full type path"));
        }
        return Err(format!(
            "unknown component '{name}' (no type registered for reflection has that name; \
             register it with app.register_type and #[reflect(Component)])"
        ));
    };
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

/// What `get`, `set` and `has` work on, checked: the world, the entity the method was called on
/// (alive), the component its first argument names, and the argument after that.
struct ComponentCall<'a> {
    world: &'a mut World,
    registry: &'a TypeRegistry,
    entity: Entity,
    name: &'a str,
    registration: &'a TypeRegistration,
    reflect: &'a ReflectComponent,
    value: Value,
}

/// Runs `method` (`entity:method(name, value?)`) on the world, with its arguments checked.
fn on_component(
    lua: &Lua,
    args: MultiValue,
    method: &str,
    f: impl FnOnce(ComponentCall) -> Result<Value, String>,
) -> Result<Value, String> {
    let mut args = args.into_iter();
    let entity = this(&mut args, method)?;
    let name = string_arg(&mut args, 1, method)?;
    let value = args.next().unwrap_or(Value::Nil);
    with_world(lua, method, |world| {
        let registry = world.resource::<AppTypeRegistry>().clone();
        let registry = registry.read();
        let (registration, reflect) = component(&registry, &name)?;
        alive(world, entity)?;
        f(ComponentCall { world, registry: &registry, entity, name: &name, registration, reflect, value })
    })?
}

/// `entity:get(name) -> table | nil`.
fn get(lua: &Lua, args: MultiValue) -> Result<Value, String> {
    on_component(lua, args, "get", |c| match c.reflect.reflect(c.world.entity(c.entity)) {
        Some(value) => {
            convert::component_to_lua(lua, value.as_partial_reflect(), c.registry, &Path::Root(c.name))
        }
        None => Ok(Value::Nil),
    })
}

/// `entity:set(name, table)`: patches the fields the table names onto a copy of the current
/// value and stores the copy (so a failed patch changes nothing), or inserts the component (its
/// reflected `Default`, patched) if the entity lacks it.
fn set(lua: &Lua, args: MultiValue) -> Result<Value, String> {
    on_component(lua, args, "set", |c| {
        if c.value.is_nil() {
            return Err(wrong_type(2, "set", "value", &c.value));
        }
        let (name, path) = (c.name, Path::Root(c.name));
        match c.reflect.reflect(c.world.entity(c.entity)).map(|current| current.reflect_clone()) {
            Some(Ok(mut updated)) => {
                convert::patch(updated.as_partial_reflect_mut(), c.value, c.registry, &path)?;
                let components = c.world.components();
                let mutable = components
                    .get_id(c.registration.type_id())
                    .and_then(|id| components.get_info(id))
                    .is_none_or(|info| info.mutable());
                if !mutable {
                    // An immutable component (`ChildOf`, say) is replaced whole, so its hooks run.
                    let mut entity = c.world.entity_mut(c.entity);
                    c.reflect.insert(&mut entity, updated.as_partial_reflect(), c.registry);
                    return Ok(Value::Nil);
                }
                let Some(mut live) = c.reflect.reflect_mut(c.world.entity_mut(c.entity)) else {
                    return Err(format!("{name} vanished while it was being set"));
                };
                live.set(updated).map_err(|_| format!("{name}: the patched value has another type"))?;
            }
            Some(Err(e)) => {
                return Err(format!("{name} cannot be copied to patch it ({e}); add #[reflect(Clone)]"));
            }
            None => {
                let made = convert::new_value(c.registration.type_id(), c.value, c.registry, &path)?;
                c.reflect.insert(&mut c.world.entity_mut(c.entity), made.as_partial_reflect(), c.registry);
            }
        }
        Ok(Value::Nil)
    })
}

/// `entity:has(name) -> boolean`.
fn has(lua: &Lua, args: MultiValue) -> Result<Value, String> {
    on_component(lua, args, "has", |c| Ok(Value::Boolean(c.reflect.contains(c.world.entity(c.entity)))))
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
