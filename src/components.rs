//! The plain data types the layers above share: the [`LuaScripts`] component, the [`LuaEntity`]
//! value scripts see, and the queues the plugin's observers fill for the next sync.

use bevy::prelude::*;
use mlua::{UserData, UserDataFields, UserDataMethods};

use crate::asset::LuaScript;

/// The `__index` of entity values: their methods (`get`, `set`, ...) and `id` (app data, set by
/// the world module when it installs them, read when the metatable of [`LuaEntity`] is made).
pub(crate) struct EntityIndex(pub mlua::Function);

/// Attaches Lua scripts to an entity. Each handle becomes one script instance with its own
/// globals and `state`; its top-level chunk runs as its first task once the asset is loaded.
///
/// Replacing the component starts instances for new handles and stops instances whose handle is
/// gone; removing it (or despawning the entity) cancels every task of every instance.
///
/// ```no_run
/// # use bevy::prelude::*;
/// # use bevy_lua_coroutines::prelude::*;
/// fn spawn_guard(mut commands: Commands, assets: Res<AssetServer>) {
///     commands.spawn((
///         Name::new("guard"),
///         Transform::default(),
///         // Two instances on one entity, each with its own globals and `state`.
///         LuaScripts::new(assets.load("scripts/patrol.lua")).with(assets.load("scripts/bark.lua")),
///     ));
/// }
/// ```
#[derive(Component, Clone, Debug, Default)]
pub struct LuaScripts(pub Vec<Handle<LuaScript>>);

impl LuaScripts {
    /// One script.
    pub fn new(script: Handle<LuaScript>) -> Self {
        Self(vec![script])
    }

    /// Adds another script.
    pub fn with(mut self, script: Handle<LuaScript>) -> Self {
        self.0.push(script);
        self
    }
}

impl From<Handle<LuaScript>> for LuaScripts {
    fn from(script: Handle<LuaScript>) -> Self {
        Self::new(script)
    }
}

/// An entity as the value scripts see ([`LuaEntity`] userdata). It crosses into Rust (function
/// arguments, messages, typed channels) as its id, `Entity::to_bits`.
pub(crate) fn entity_value(lua: &mlua::Lua, entity: Entity) -> mlua::Result<mlua::AnyUserData> {
    let value = lua.create_ser_userdata(LuaEntity(entity))?;
    #[cfg(feature = "lua54")]
    mark_entity(lua, &value, entity)?;
    Ok(value)
}

/// Lua 5.4: sets the first user value of an entity value to its `Entity::to_bits` (as an
/// integer), which the world's C functions read to know an entity value without calling into
/// Rust through mlua. mlua leaves that slot empty unless `AnyUserData::set_user_value` puts its
/// table of user values there (entity values are only made here), and scripts cannot reach it.
#[cfg(feature = "lua54")]
#[allow(unsafe_code)]
fn mark_entity(lua: &mlua::Lua, value: &mlua::AnyUserData, entity: Entity) -> mlua::Result<()> {
    use mlua::ffi;
    let bits = entity.to_bits() as ffi::lua_Integer;
    // SAFETY: the closure finds the value on top of the stack (the argument exec_raw pushed),
    // writes its first user value (which a full userdata made by mlua has) and pops it.
    unsafe {
        lua.exec_raw::<()>(value, |l| {
            ffi::lua_pushinteger(l, bits);
            ffi::lua_setiuservalue(l, -2, 1);
            ffi::lua_pop(l, 1);
        })
    }
}

impl serde::Serialize for LuaEntity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0.to_bits())
    }
}

/// The `entity` value a script sees: `entity.id` is `Entity::to_bits`, `tostring(entity)` reads
/// `Entity(12v3)`; `get`, `set`, `has` and `despawn` act on the world (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LuaEntity(pub Entity);

impl UserData for LuaEntity {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        // `id` and the world methods (`entity:get(...)`), in one function the world module
        // makes, so a method lookup is not a walk through mlua's dispatcher of fields.
        fields.add_meta_field_with("__index", |lua| {
            lua.app_data_ref::<EntityIndex>()
                .map(|m| m.0.clone())
                .ok_or_else(|| mlua::Error::runtime("the world methods are installed with the VM"))
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(mlua::MetaMethod::ToString, |_, this, ()| Ok(format!("Entity({})", this.0)));
        methods.add_meta_method(mlua::MetaMethod::Eq, |_, this, other: mlua::UserDataRef<LuaEntity>| {
            Ok(this.0 == other.0)
        });
    }
}

/// Entities whose `LuaScripts` changed (inserted, replaced, removed, despawned) since the last sync.
#[derive(Resource, Default)]
pub(crate) struct SyncQueue(pub Vec<Entity>);

/// Scripts whose asset changed since the last sync.
#[derive(Resource, Default)]
pub(crate) struct ChangedScripts {
    /// New source: running instances reload.
    pub modified: Vec<AssetId<LuaScript>>,
    /// Unloaded: compiled code for them is dropped.
    pub removed: Vec<AssetId<LuaScript>>,
}
