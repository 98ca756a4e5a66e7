//! Script instances: the environment each attached script gets
//! (`_G`, `state`, `entity`), starting an instance once its asset is loaded, and cancelling every
//! task of an instance when its script is removed or its entity despawned.
//!
//! This layer sits above the VM and the extensions: [`Instances`] is a resource of its own, and
//! the sync and hot reload work on it through [`Scripts`] (the instances and the [`LuaRuntime`]
//! they run in). The runtime knows only how many instances wait to start.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use mlua::{Function, Lua, Value};

use crate::asset::LuaScript;
use crate::components::{LuaScripts, entity_value};
use crate::error::ScriptErrorKind;
use crate::runtime::LuaRuntime;
use crate::scheduler::{self, InstanceId, sched};

struct Attached {
    id: InstanceId,
    handle: Handle<LuaScript>,
}

/// A script's compiled code, which all its instances share.
struct Compiled {
    /// The source `factory` was compiled from.
    source: Arc<str>,
    /// `env -> chunk function` (see [`compile`]); `None` until a version of the script loads.
    factory: Option<Function>,
    /// A newer source that did not load (reported once; `factory` keeps running).
    rejected: Option<Arc<str>>,
    /// The script's file was deleted: its instances are stopped until it comes back.
    deleted: bool,
    /// Where the module that made `rejected` fail was looked for: creating one of these files
    /// retries the script.
    waiting_for: Vec<String>,
}

impl Compiled {
    fn new(source: Arc<str>, factory: Option<Function>) -> Self {
        let rejected = factory.is_none().then(|| source.clone());
        Self { source, factory, rejected, deleted: false, waiting_for: Vec::new() }
    }
}

/// See [`Scripts::launcher`].
struct Launcher(Function);

const LAUNCH: &str = r#"
local new_env, start, on_reload = ...
local co_create = coroutine.create
return function(envs, id, entity, factory, state)
  local env = new_env(entity, state)
  envs[id] = env
  start(co_create(factory(env)))
  if state ~= nil then start(co_create(on_reload(env))) end
end
"#;

/// The instances of every entity, and those waiting for their asset (a resource the plugin adds;
/// [`Scripts`] works on it).
#[derive(Default, Resource)]
pub(crate) struct Instances {
    by_entity: HashMap<Entity, Vec<Attached>>,
    pending: Vec<(InstanceId, Entity, Handle<LuaScript>)>,
    compiled: HashMap<AssetId<LuaScript>, Compiled>,
    /// What the instances of each script are called until it has loaded (its asset path, or its
    /// id for a script added to `Assets` by hand): made once per script, shared by its instances.
    names: HashMap<AssetId<LuaScript>, Arc<str>>,
    next: u64,
}

impl Instances {
    /// The running instances of `asset`, or of every script if `None`, oldest first.
    fn running(&self, asset: Option<AssetId<LuaScript>>) -> Vec<(InstanceId, Entity, AssetId<LuaScript>)> {
        let mut found: Vec<_> = self
            .by_entity
            .iter()
            .flat_map(|(&entity, attached)| attached.iter().map(move |a| (a.id, entity, a.handle.id())))
            .filter(|&(id, _, script)| {
                asset.is_none_or(|a| a == script) && !self.pending.iter().any(|p| p.0 == id)
            })
            .collect();
        found.sort_by_key(|r| r.0);
        found
    }
}

/// The instances and the VM they run in: what the sync and hot reload work on.
pub(crate) struct Scripts<'a> {
    runtime: &'a LuaRuntime,
    instances: &'a mut Instances,
    /// Instances this work detached: forgotten when it is over, once their tasks have closed.
    leaving: Vec<InstanceId>,
    /// Where the threads of the tasks this work cancelled start in the list of those to close
    /// ([`scheduler::ending_mark`]), once it cancelled any: they close when it is over.
    mark: Option<i64>,
}

impl Drop for Scripts<'_> {
    /// Closes the tasks this work cancelled, all under one budget (those the budget leaves close
    /// after the step's resumes), then forgets the instances it detached, so what their `__close`
    /// handlers print or raise still names their script and entity, and drops the Rust work those
    /// handlers started.
    fn drop(&mut self) {
        let lua = self.lua();
        if let Some(mark) = self.mark {
            scheduler::close_ended_from(lua, mark);
        }
        let again = sched(lua).take_closes_reached_rust();
        for id in std::mem::take(&mut self.leaving) {
            sched(lua).forget_instance(id);
            crate::modules::forget_instance(lua, id);
            if again {
                scheduler::drop_instance_work(lua, id); // what its closes started
            }
            let _ = scheduler::refs(lua).envs.raw_set(id.0 as i64, Value::Nil);
        }
    }
}

impl<'a> Scripts<'a> {
    /// Works on `instances`, which run in `runtime`'s VM.
    pub(crate) fn new(runtime: &'a LuaRuntime, instances: &'a mut Instances) -> Self {
        Self { runtime, instances, leaving: Vec::new(), mark: None }
    }

    fn lua(&self) -> &'a Lua {
        self.runtime.lua()
    }

    /// Tells the runtime how many instances wait for their asset (see
    /// [`LuaRuntime::pending_instances`]).
    fn publish_pending(&self) {
        self.runtime.pending().waiting.store(self.instances.pending.len(), Ordering::Relaxed);
    }

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
        let path = self
            .instances
            .names
            .entry(handle.id())
            .or_insert_with(|| {
                handle.path().map_or_else(|| format!("{:?}", handle.id()), |p| p.to_string()).into()
            })
            .clone();
        sched(self.lua()).add_instance(id, entity, path);
        self.instances.pending.push((id, entity, handle.clone()));
        self.publish_pending();
        Attached { id, handle }
    }

    /// Cancels every task of an instance; it is forgotten when this work is over, once its
    /// to-be-closed variables have closed (see the `Drop` of [`Scripts`]).
    fn detach(&mut self, id: InstanceId) {
        self.instances.pending.retain(|(p, _, _)| *p != id);
        self.publish_pending();
        self.cancel(id);
        self.leaving.push(id);
    }

    /// Cancels every task of an instance (see [`scheduler::cancel_instance`]); they close when this
    /// work is over.
    fn cancel(&mut self, id: InstanceId) {
        let lua = self.lua();
        self.mark.get_or_insert_with(|| scheduler::ending_mark(lua));
        scheduler::cancel_instance(lua, id, None);
    }

    /// Drops compiled code of an unloaded script, so new instances compile it again.
    pub(crate) fn forget_compiled(&mut self, id: AssetId<LuaScript>) {
        self.instances.compiled.remove(&id);
        self.instances.names.remove(&id);
    }

    /// Blocks until the script of every pending instance has finished loading (or failed),
    /// finishing the asset server's loads as its own system does at the start of a frame, so
    /// [`start_pending`](Self::start_pending) starts them all in this sync. Scripts that are not
    /// loading through the asset server (added to `Assets` by hand) are not waited for.
    pub(crate) fn wait_for_loads(&self, world: &mut World) {
        let loading = |world: &World| {
            let server = world.resource::<AssetServer>();
            self.instances
                .pending
                .iter()
                .find(|(_, _, h)| server.load_state(h).is_loading())
                .map(|p| p.2.clone())
        };
        let started = std::time::Instant::now();
        let mut warned = false;
        while loading(world).is_some() {
            bevy::asset::handle_internal_asset_events(world);
            let Some(handle) = loading(world) else { return };
            if !warned && started.elapsed() > std::time::Duration::from_secs(5) {
                let path = handle.path().map_or_else(|| format!("{:?}", handle.id()), |p| p.to_string());
                warn!("bevy_lua_coroutines: the frame has waited 5 s for {path} to load");
                warned = true;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Starts instances whose script finished loading; reports those whose script failed to load.
    pub(crate) fn start_pending(&mut self, scripts: &Assets<LuaScript>, server: &AssetServer) {
        if self.instances.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.instances.pending);
        for (id, entity, handle) in pending {
            let deleted = self.instances.compiled.get(&handle.id()).is_some_and(|c| c.deleted);
            if let Some(script) = scripts.get(&handle).filter(|_| !deleted) {
                self.start(id, entity, handle.id(), script);
                continue;
            }
            if let bevy::asset::LoadState::Failed(err) = server.load_state(&handle) {
                let mut message = format!("could not load script: {err}");
                if let Some(root) = crate::asset::folder(self.lua()) {
                    message = crate::asset::hide_folder(&message, &root);
                }
                sched(self.lua()).report(Some(id), ScriptErrorKind::Load, message, String::new());
                continue;
            }
            self.instances.pending.push((id, entity, handle));
        }
        self.publish_pending();
    }

    fn start(&mut self, id: InstanceId, entity: Entity, asset: AssetId<LuaScript>, script: &LuaScript) {
        sched(self.lua()).set_instance_path(id, script.path.clone());
        let factory = match self.instances.compiled.get(&asset).and_then(|c| c.factory.clone()) {
            Some(factory) => factory,
            None => {
                let compiled = compile(self.lua(), script, self.runtime.setfenv.as_ref());
                let entry = Compiled::new(script.source.clone(), compiled.as_ref().ok().cloned());
                self.instances.compiled.insert(asset, entry);
                match compiled {
                    Ok(factory) => factory,
                    Err(e) => {
                        let (message, traceback) = crate::error::split_traceback(&e);
                        sched(self.lua()).report(Some(id), ScriptErrorKind::Load, message, traceback);
                        return;
                    }
                }
            }
        };
        self.launch(id, entity, &factory, None);
    }

    /// Runs `factory`'s chunk as the first task of instance `id`, in a fresh environment whose
    /// `state` is `state` (a reload's kept table) or new. After a reload, a second task calls the
    /// new code's `onReload()`.
    fn launch(&self, id: InstanceId, entity: Entity, factory: &Function, state: Option<mlua::Table>) {
        let lua = self.lua();
        let host = scheduler::host(lua, Some(id));
        // One call into Lua does the whole set-up (environment, chunk, first task): each crossing
        // from Rust costs more than the Lua work it would do.
        let started = self.launcher().and_then(|launch| {
            let envs = scheduler::refs(lua).envs.clone();
            let args = (envs, id.0 as i64, entity_value(lua, entity)?, factory, state);
            // `launch` runs no script code (the chunk runs later, as a task), so it is called
            // where Rust is, except when the budget counts exactly: then on a thread mlua makes,
            // which carries the budget's hook, so the tasks `coroutine.create` makes there inherit
            // it (the main thread has none).
            let exact =
                lua.app_data_ref::<std::sync::Arc<scheduler::Budget>>().is_some_and(|b| b.counts_exactly());
            if exact {
                crate::runtime::script_thread(lua, launch)?.resume::<()>(args)
            } else {
                launch.call(args)
            }
        });
        drop(host);
        if let Err(e) = started {
            let (message, traceback) = crate::error::split_traceback(&e);
            sched(lua).report(Some(id), ScriptErrorKind::Runtime, message, traceback);
        }
    }

    /// `launch(envs, id, entity, factory, state)`, made on first use: gives instance `id` a fresh
    /// environment (kept in `envs`), runs `factory`'s chunk in it as the instance's first task
    /// and, after a reload (`state` given), a second task that calls `onReload()`.
    fn launcher(&self) -> mlua::Result<Function> {
        let lua = self.lua();
        if let Some(launcher) = lua.app_data_ref::<Launcher>() {
            return Ok(launcher.0.clone());
        }
        let start = scheduler::refs(lua).start.clone();
        let launch: Function = lua.load(LAUNCH).set_name("=bevy_lua_coroutines/launch").call((
            self.runtime.new_env.clone(),
            start,
            self.runtime.on_reload.clone(),
        ))?;
        lua.set_app_data(Launcher(launch.clone()));
        Ok(launch)
    }

    /// Runs instances again, each with its chunk (`instance, entity, chunk`): their tasks are
    /// cancelled, `state` is kept, the chunk runs from the top, then `onReload()`.
    fn restart(&mut self, restarting: Vec<(InstanceId, Entity, Function)>) {
        let lua = self.lua();
        // The old tasks close first (also those of them the step left over), so that no old
        // `__close` runs over the new code: under one budget, and if a looping one spends it,
        // under one more for each (as a reload closed them before), rather than after the new
        // chunk.
        let before = scheduler::ending_mark(lua);
        for &(id, _, _) in &restarting {
            scheduler::cancel_instance(lua, id, None);
        }
        let ids: Vec<InstanceId> = restarting.iter().map(|r| r.0).collect();
        let mark = scheduler::claim_ending(lua, &ids, &mut self.mark).unwrap_or_else(|e| {
            error!("bevy_lua_coroutines: listing the ended tasks of reloaded scripts raised {e}");
            before
        });
        let mut left = usize::MAX;
        loop {
            let now = scheduler::close_ended_from(lua, mark);
            if now == 0 || now >= left {
                break;
            }
            left = now;
        }
        for (id, entity, factory) in restarting {
            crate::modules::forget_instance(lua, id);
            // An instance that never ran (its first version did not load) starts as new.
            let env: Option<mlua::Table> = scheduler::refs(lua).envs.raw_get(id.0 as i64).ok();
            let state = env.map(|env| match env.raw_get::<mlua::Table>("state") {
                Ok(state) => Ok(state),
                Err(_) => lua.create_table(),
            });
            self.launch(id, entity, &factory, state.transpose().ok().flatten());
        }
    }

    /// A script's asset has new source: if it loads (it compiles, and every module it newly
    /// requires by name resolves and compiles), its running instances restart with it; if not,
    /// they keep running their last good code and the failure is reported once.
    pub(crate) fn script_changed(&mut self, asset: AssetId<LuaScript>, scripts: &Assets<LuaScript>) {
        let Some(script) = scripts.get(asset) else { return };
        let Some(entry) = self.instances.compiled.get_mut(&asset) else { return };
        if !entry.deleted {
            if entry.factory.is_some() && entry.source == script.source {
                // Back to the running version: a later bad save is a new change.
                entry.rejected = None;
                return;
            }
            if entry.rejected.as_ref() == Some(&script.source) {
                return;
            }
        }
        let previous = entry.factory.as_ref().map(|_| entry.source.clone());
        let lua = self.lua();
        let running = self.instances.running(Some(asset));
        let loaded = compile(lua, script, self.runtime.setfenv.as_ref())
            .map_err(|e| (crate::error::split_traceback(&e), Vec::new()))
            .and_then(|factory| {
                crate::modules::check_requires(lua, &script.source, previous.as_deref())
                    .map(|()| factory)
                    .map_err(|r| ((r.at(&script.path), String::new()), r.tried))
            });
        match loaded {
            Err(((message, traceback), tried)) => {
                warn!("{}: the new version did not load; the last good version keeps running", script.path);
                let entity = running.first().map_or(Entity::PLACEHOLDER, |r| r.1);
                sched(lua).report_as(entity, &script.path, ScriptErrorKind::Load, message, traceback);
                if let Some(entry) = self.instances.compiled.get_mut(&asset) {
                    entry.rejected = Some(script.source.clone());
                    entry.waiting_for = tried;
                }
            }
            Ok(factory) => {
                info!("reloaded {} ({} instances)", script.path, running.len());
                let compiled = Compiled::new(script.source.clone(), Some(factory.clone()));
                self.instances.compiled.insert(asset, compiled);
                self.restart(running.iter().map(|&(id, entity, _)| (id, entity, factory.clone())).collect());
            }
        }
    }

    /// The file of `asset` was saved: a version refused before is tried again, even if the text
    /// is the same (what it needed may have changed).
    pub(crate) fn retry_script(&mut self, asset: AssetId<LuaScript>) {
        if let Some(entry) = self.instances.compiled.get_mut(&asset) {
            entry.rejected = None;
        }
    }

    /// Scripts refused because a module they newly require was missing at `path`, now that a file
    /// is there: they are marked for another try.
    pub(crate) fn scripts_waiting_for(&mut self, path: &str) -> Vec<AssetId<LuaScript>> {
        let mut found = Vec::new();
        for (&asset, entry) in &mut self.instances.compiled {
            if entry.rejected.is_some() && entry.waiting_for.iter().any(|p| p == path) {
                entry.rejected = None;
                found.push(asset);
            }
        }
        found
    }

    /// A changed script or module file that cannot be used (`why`: it is not UTF-8, it is a
    /// link out of the assets folder): reported; what runs keeps running.
    pub(crate) fn report_unusable(&self, path: &str, why: &str) {
        let why = why.strip_prefix(&format!("path {path:?} ")).unwrap_or(why);
        let message = format!("{path} {why}; the last good version keeps running");
        warn!("{message}");
        sched(self.lua()).report_as(Entity::PLACEHOLDER, path, ScriptErrorKind::Load, message, String::new());
    }

    /// A script's file was deleted: its instances stop (their `state` is kept) until it is
    /// restored. Reported once.
    pub(crate) fn script_deleted(&mut self, asset: AssetId<LuaScript>, path: &str) {
        let Some(entry) = self.instances.compiled.get_mut(&asset) else { return };
        if entry.deleted {
            return;
        }
        entry.deleted = true;
        let running = self.instances.running(Some(asset));
        for &(id, _, _) in &running {
            self.cancel(id);
        }
        let message =
            format!("{path} was deleted: its {} instances stopped until it is restored", running.len());
        warn!("{message}");
        let entity = running.first().map_or(Entity::PLACEHOLDER, |r| r.1);
        sched(self.lua()).report_as(entity, path, ScriptErrorKind::Load, message, String::new());
    }

    /// A module's file changed: if the new source loads, every module that depends on it is run
    /// again on its next `require`, and every instance that required any of them restarts; if
    /// not, everything keeps running and the failure is reported once.
    pub(crate) fn module_changed(&mut self, path: &str, source: Option<&str>) {
        let lua = self.lua();
        match crate::modules::module_changed(lua, path, source) {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => {
                let ids: bevy::platform::collections::HashSet<InstanceId> = ids.into_iter().collect();
                let running: Vec<_> =
                    self.instances.running(None).into_iter().filter(|r| ids.contains(&r.0)).collect();
                info!("reloaded module {path} ({} dependent instances)", running.len());
                let compiled = &self.instances.compiled;
                let factory =
                    |asset| compiled.get(&asset).filter(|c: &&Compiled| !c.deleted)?.factory.clone();
                let restarting = running
                    .iter()
                    .filter_map(|&(id, entity, asset)| Some((id, entity, factory(asset)?)))
                    .collect();
                self.restart(restarting);
            }
            Err(message) => {
                warn!("{path}: the new version did not load; the last good version keeps running");
                let message = if message.starts_with(path) { message } else { format!("{path}: {message}") };
                sched(lua).report_as(
                    Entity::PLACEHOLDER,
                    path,
                    ScriptErrorKind::Load,
                    message,
                    String::new(),
                );
            }
        }
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
