//! The plain data types the layers above share: the [`LuaScripts`] component, the [`LuaEntity`]
//! value scripts see, and the queues the plugin's observers fill for the next sync.

use bevy::prelude::*;
use mlua::{Table, UserData, UserDataFields, UserDataMethods};

use crate::asset::LuaScript;

/// The Lua table entity values index for their methods (app data, set by the world module when
/// it installs them, read when the metatable of [`LuaEntity`] is made).
pub(crate) struct EntityMethods(pub Table);

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
    lua.create_ser_userdata(LuaEntity(entity))
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
        fields.add_field_method_get("id", |_, this| Ok(this.0.to_bits() as i64));
        // Names that are not fields are looked up in the world methods (`entity:get(...)`).
        fields.add_meta_field_with("__index", |lua| {
            lua.app_data_ref::<EntityMethods>()
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
