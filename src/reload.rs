//! Hot reload: a `notify` watcher on the assets folder, debounced on a thread of its own, hands
//! changed `.lua` files (already read) to the step through a crossbeam channel; a system at the
//! start of the plugin's schedule applies them to script assets and modules.
//!
//! Debouncing is per file: a file is read once no event has touched it for the debounce time, so
//! an editor that saves by writing a temporary file and renaming it over the script (vim, VS
//! Code, JetBrains) and a burst of saves both make one change, with the last content. A change
//! whose content equals what is running does nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};

use crate::asset::LuaScript;
use crate::instance::ChangedScripts;
use crate::runtime::LuaRuntime;

/// A `.lua` file that changed: its asset path (`scripts/enemy.lua`) and its new content, `None`
/// if it was deleted.
#[derive(Debug)]
pub(crate) struct FileChange {
    pub path: String,
    pub contents: Option<String>,
}

/// The running watcher and the changes it found.
#[derive(Resource)]
pub(crate) struct ScriptWatcher {
    /// Kept so the watch lasts as long as the resource; dropping it ends the debounce thread.
    _watcher: notify::RecommendedWatcher,
    changes: Receiver<FileChange>,
}

/// Watches `.lua` files under `root`, reporting each change once no event touched the file for
/// `debounce`.
pub(crate) fn watch(root: &Path, debounce: Duration) -> notify::Result<ScriptWatcher> {
    let root = root.canonicalize().map_err(notify::Error::io)?;
    let (raw_tx, raw_rx) = crossbeam_channel::unbounded();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = raw_tx.send(event);
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    let (tx, changes) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("lua script watcher".into())
        .spawn(move || debounce_files(&root, &raw_rx, &tx, debounce))
        .map_err(notify::Error::io)?;
    Ok(ScriptWatcher { _watcher: watcher, changes })
}

/// Whether an event can mean new content: reads (the asset server's, ours) cannot.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The debounce loop: runs until the watcher or the app is gone.
fn debounce_files(
    root: &Path,
    events: &Receiver<notify::Result<notify::Event>>,
    out: &Sender<FileChange>,
    debounce: Duration,
) {
    let mut due: HashMap<PathBuf, Instant> = HashMap::default();
    loop {
        let now = Instant::now();
        let wait = due.values().min().map_or(Duration::from_secs(3600), |d| d.saturating_duration_since(now));
        match events.recv_timeout(wait) {
            Ok(Ok(event)) if changes_content(&event.kind) => {
                for path in event.paths {
                    if path.extension().is_some_and(|e| e == "lua") {
                        due.insert(path, Instant::now() + debounce);
                    }
                }
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => warn!("bevy_lua_coroutines: the script watcher reported {e}"),
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let quiet: Vec<PathBuf> = due.iter().filter(|(_, d)| **d <= now).map(|(p, _)| p.clone()).collect();
        for file in quiet {
            due.remove(&file);
            let Ok(relative) = file.strip_prefix(root) else { continue };
            let path =
                relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            let contents = std::fs::read_to_string(&file).ok();
            if out.send(FileChange { path, contents }).is_err() {
                return;
            }
        }
    }
}

/// Applies the watcher's changes: a script asset with new content gets it (and its instances
/// reload in this frame's sync), a deleted script stops its instances, a changed module reloads
/// what depends on it.
pub(crate) fn apply_file_changes(
    watcher: Option<Res<ScriptWatcher>>,
    mut scripts: ResMut<Assets<LuaScript>>,
    mut changed: ResMut<ChangedScripts>,
    mut runtime: ResMut<LuaRuntime>,
) {
    let Some(watcher) = watcher else { return };
    for change in watcher.changes.try_iter() {
        let ids: Vec<AssetId<LuaScript>> =
            scripts.iter().filter(|(_, s)| *s.path == *change.path).map(|(id, _)| id).collect();
        for id in ids {
            match &change.contents {
                Some(text) => {
                    if scripts.get(id).is_some_and(|s| *s.source != **text)
                        && let Some(mut script) = scripts.get_mut(id)
                    {
                        script.source = text.as_str().into();
                    }
                    changed.modified.push(id);
                }
                None => runtime.script_deleted(id, &change.path),
            }
        }
        runtime.module_changed(&change.path, change.contents.as_deref());
    }
}
