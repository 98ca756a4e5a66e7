//! Script instances: the [`LuaScripts`] component, the environment each attached script gets
//! (`_G`, `state`, `entity`), starting an instance once its asset is loaded, and cancelling every
//! task of an instance when its script is removed or its entity despawned.

use std::sync::Arc;

use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use mlua::{Function, UserData, UserDataFields, UserDataMethods, Value};

use crate::asset::LuaScript;
use crate::error::ScriptErrorKind;
use crate::runtime::LuaRuntime;
use crate::scheduler::{self, InstanceId, sched};

/// Attaches Lua scripts to an entity. Each handle becomes one script instance with its own
/// globals and `state`; its top-level chunk runs as its first task once the asset is loaded.
///
/// Replacing the component starts instances for new handles and stops instances whose handle is
/// gone; removing it (or despawning the entity) cancels every task of every instance.
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

/// The `entity` value a script sees: `entity.id` is `Entity::to_bits`, `tostring(entity)` reads
/// `Entity(12v3)`; `get`, `set`, `has` and `despawn` act on the world (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LuaEntity(pub Entity);

impl UserData for LuaEntity {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, this| Ok(this.0.to_bits() as i64));
        // Names that are not fields are looked up in the world methods (`entity:get(...)`).
        fields.add_meta_field_with("__index", |lua| {
            lua.app_data_ref::<crate::world::EntityMethods>()
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

/// Scripts whose asset changed since the last sync: compiled code for them is dropped.
#[derive(Resource, Default)]
pub(crate) struct ChangedScripts(pub Vec<AssetId<LuaScript>>);

struct Attached {
    id: InstanceId,
    handle: Handle<LuaScript>,
}

/// The instances of every entity, and those waiting for their asset.
#[derive(Default)]
pub(crate) struct Instances {
    by_entity: HashMap<Entity, Vec<Attached>>,
    pending: Vec<(InstanceId, Entity, Handle<LuaScript>)>,
    compiled: HashMap<AssetId<LuaScript>, Function>,
    next: u64,
}

impl Instances {
    /// Instances waiting for their asset.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

impl LuaRuntime {
    /// Brings the instances of `entity` in line with its `LuaScripts` component.
    pub(crate) fn sync_entity(&mut self, world: &World, entity: Entity) {
        let wanted = world.get::<LuaScripts>(entity).map(|s| s.0.clone()).unwrap_or_default();
        let mut current = self.instances.by_entity.remove(&entity).unwrap_or_default();
        let mut kept = Vec::with_capacity(wanted.len());
        for handle in wanted {
            match current.iter().position(|a| a.handle.id() == handle.id()) {
                Some(pos) => kept.push(current.remove(pos)),
                None => kept.push(self.attach(entity, handle)),
            }
        }
        for gone in current {
            self.detach(gone.id);
        }
        if !kept.is_empty() {
            self.instances.by_entity.insert(entity, kept);
        }
    }

    fn attach(&mut self, entity: Entity, handle: Handle<LuaScript>) -> Attached {
        let id = InstanceId(self.instances.next);
        self.instances.next += 1;
        let path: Arc<str> =
            handle.path().map_or_else(|| format!("{:?}", handle.id()), |p| p.to_string()).into();
        sched(self.lua()).add_instance(id, entity, path);
        self.instances.pending.push((id, entity, handle.clone()));
        Attached { id, handle }
    }

    /// Cancels every task of an instance (to-be-closed variables close) and forgets it.
    fn detach(&mut self, id: InstanceId) {
        self.instances.pending.retain(|(p, _, _)| *p != id);
        let tasks = sched(self.lua()).take_instance_tasks(id);
        let lua = self.lua();
        crate::bridge::cancel_instance(lua, id);
        sched(lua).host_instance = Some(id);
        scheduler::kill_tasks(lua, &tasks, id);
        sched(lua).host_instance = None;
        sched(self.lua()).forget_instance(id);
        let _ = scheduler::refs(self.lua()).envs.raw_set(id.0 as i64, Value::Nil);
    }

    /// Drops compiled code of changed scripts, so new instances compile the new source.
    pub(crate) fn forget_compiled(&mut self, id: AssetId<LuaScript>) {
        self.instances.compiled.remove(&id);
    }

    /// Starts instances whose script finished loading; reports those whose script failed to load.
    pub(crate) fn start_pending(&mut self, scripts: &Assets<LuaScript>, server: &AssetServer) {
        if self.instances.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.instances.pending);
        for (id, entity, handle) in pending {
            if let Some(script) = scripts.get(&handle) {
                self.start(id, entity, handle.id(), script);
                continue;
            }
            if let bevy::asset::LoadState::Failed(err) = server.load_state(&handle) {
                let message = format!("could not load script: {err}");
                sched(self.lua()).report(Some(id), ScriptErrorKind::Load, message, String::new());
                continue;
            }
            self.instances.pending.push((id, entity, handle));
        }
    }

    fn start(&mut self, id: InstanceId, entity: Entity, asset: AssetId<LuaScript>, script: &LuaScript) {
        sched(self.lua()).set_instance_path(id, script.path.clone());
        let factory = match self.instances.compiled.get(&asset) {
            Some(f) => f.clone(),
            None => match compile(self.lua(), script, self.setfenv.as_ref()) {
                Ok(f) => {
                    self.instances.compiled.insert(asset, f.clone());
                    f
                }
                Err(e) => {
                    let (message, traceback) = crate::error::split_traceback(&e);
                    sched(self.lua()).report(Some(id), ScriptErrorKind::Load, message, traceback);
                    return;
                }
            },
        };
        sched(self.lua()).host_instance = Some(id);
        let started = self.spawn_chunk(id, entity, &factory);
        sched(self.lua()).host_instance = None;
        if let Err(e) = started {
            let (message, traceback) = crate::error::split_traceback(&e);
            sched(self.lua()).report(Some(id), ScriptErrorKind::Runtime, message, traceback);
        }
    }

    /// Creates the instance's environment and queues its chunk as its first task.
    fn spawn_chunk(&self, id: InstanceId, entity: Entity, factory: &Function) -> mlua::Result<()> {
        let lua = self.lua();
        let env: mlua::Table = self.new_env.call(LuaEntity(entity))?;
        scheduler::refs(lua).envs.raw_set(id.0 as i64, &env)?;
        let chunk: Function = factory.call(env)?;
        let thread = lua.create_thread(chunk)?;
        let start = scheduler::refs(lua).start.clone();
        start.call::<()>(thread)
    }
}

/// Compiles a script once into a factory `env -> chunk function`, so every instance shares the
/// compiled code and only its globals differ. The wrapper adds no line, so line numbers match.
fn compile(lua: &mlua::Lua, script: &LuaScript, setfenv: Option<&Function>) -> mlua::Result<Function> {
    let name = format!("@{}", script.path);
    // Compiled as written first, so a syntax error names the script's own lines and tokens.
    lua.load(&*script.source).set_name(&name).into_function()?;
    let chunk = match setfenv {
        // Lua 5.4: the environment is the chunk's `_ENV` upvalue.
        None => format!("return function(_ENV) return function(...) {}\nend end", script.source),
        // Lua 5.1 flavours: each instance gets a fresh closure whose environment is set.
        Some(_) => format!(
            "local __setfenv = ... return function(__env) return __setfenv(function(...) {}\nend, __env) end",
            script.source
        ),
    };
    lua.load(chunk).set_name(name).call::<Function>(setfenv.cloned())
}
