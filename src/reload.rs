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
use crate::components::ChangedScripts;
use crate::instance::{Instances, Scripts};
use crate::runtime::LuaRuntime;

/// A `.lua` file that changed: its asset path (`scripts/enemy.lua`) and what is in it now.
#[derive(Debug)]
pub(crate) struct FileChange {
    pub path: String,
    pub contents: Contents,
}

/// What a changed file holds.
#[derive(Debug, PartialEq)]
pub(crate) enum Contents {
    Text(String),
    Deleted,
    /// Not UTF-8: reported, and the last good version keeps running.
    NotText,
    /// Refused by the rule for script files (it says why): reported, and the last good version
    /// keeps running.
    Refused(String),
}

/// Reads of a file that fail for another reason than its absence (an editor holding it, say)
/// are tried again after another debounce, this many times.
const READ_ATTEMPTS: u32 = 5;

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
    // When each touched file is due to be read, and how many reads of it failed.
    let mut due: HashMap<PathBuf, (Instant, u32)> = HashMap::default();
    let later = |attempt: u32| (Instant::now().checked_add(debounce).unwrap_or_else(Instant::now), attempt);
    loop {
        let now = Instant::now();
        let next = due.values().map(|d| d.0).min();
        let wait = next.map_or(Duration::from_secs(3600), |d| d.saturating_duration_since(now));
        match events.recv_timeout(wait) {
            Ok(Ok(event)) if changes_content(&event.kind) => {
                for path in event.paths {
                    // Files written into a new folder before the watch on it began raise no
                    // events of their own: the folder is read once it is quiet.
                    let new_folder = matches!(event.kind, EventKind::Create(_)) && path.is_dir();
                    if new_folder || path.extension().is_some_and(|e| e == "lua") {
                        due.insert(path, later(0));
                    }
                }
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => warn!("bevy_lua_coroutines: the script watcher reported {e}"),
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let (folders, mut quiet): (Vec<_>, Vec<_>) = due
            .iter()
            .filter(|(_, d)| d.0 <= now)
            .map(|(p, d)| (p.clone(), d.1))
            .partition(|(p, _)| p.is_dir());
        for (folder, _) in folders {
            due.remove(&folder);
            quiet.extend(lua_files(&folder).into_iter().filter(|f| !due.contains_key(f)).map(|f| (f, 0)));
        }
        for (file, attempt) in quiet {
            due.remove(&file);
            let Ok(relative) = file.strip_prefix(root) else { continue };
            let path =
                relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            // The rule every file a script names follows: a link out of the assets folder or a
            // named pipe is refused before it is opened (a pipe would block this thread for good).
            let file = match crate::asset::script_file(root, &path) {
                Ok(file) => file,
                Err(crate::asset::FileRefusal::Refused(why)) => {
                    if out.send(FileChange { path, contents: Contents::Refused(why) }).is_err() {
                        return;
                    }
                    continue;
                }
                Err(crate::asset::FileRefusal::Missing) => file,
            };
            let contents = match std::fs::read(&file) {
                Ok(bytes) => String::from_utf8(bytes).map_or(Contents::NotText, Contents::Text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Contents::Deleted,
                Err(e) if attempt + 1 < READ_ATTEMPTS => {
                    debug!("bevy_lua_coroutines: reading {} failed ({e}); trying again", file.display());
                    due.insert(file, later(attempt + 1));
                    continue;
                }
                Err(e) => {
                    warn!("bevy_lua_coroutines: could not read {}: {e}", file.display());
                    continue;
                }
            };
            if out.send(FileChange { path, contents }).is_err() {
                return;
            }
        }
    }
}

/// The `.lua` files under `folder`.
fn lua_files(folder: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![folder.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "lua") {
                found.push(path);
            }
        }
    }
    found
}

/// Applies the watcher's changes: a script asset with new content gets it (and its instances
/// reload in this frame's sync), a deleted script stops its instances, a changed module reloads
/// what depends on it. A change to a script the asset server is still loading is kept until the
/// asset is there (the loader may have read the file before the save).
pub(crate) fn apply_file_changes(
    watcher: Option<Res<ScriptWatcher>>,
    mut scripts: ResMut<Assets<LuaScript>>,
    mut changed: ResMut<ChangedScripts>,
    runtime: Res<LuaRuntime>,
    mut instances: ResMut<Instances>,
    server: Res<AssetServer>,
    mut early: Local<HashMap<String, String>>,
) {
    let Some(watcher) = watcher else { return };
    let mut runtime = Scripts::new(&runtime, &mut instances);
    let mut changes: Vec<FileChange> =
        early.drain().map(|(path, text)| FileChange { path, contents: Contents::Text(text) }).collect();
    changes.extend(watcher.changes.try_iter());
    // In path order (stable: an early change of a path stays before a newer one), so that what
    // a batch does does not depend on the order the watcher's debouncer handed its files over.
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    for change in changes {
        let ids: Vec<AssetId<LuaScript>> =
            scripts.iter().filter(|(_, s)| same_path(&s.path, &change.path)).map(|(id, _)| id).collect();
        let text = match &change.contents {
            Contents::Text(text) => Some(text.as_str()),
            Contents::Deleted => None,
            Contents::NotText => {
                runtime.report_unusable(&change.path, "is not valid UTF-8");
                continue;
            }
            Contents::Refused(why) => {
                runtime.report_unusable(&change.path, why);
                continue;
            }
        };
        for &id in &ids {
            let Some(text) = text else {
                runtime.script_deleted(id, &change.path);
                continue;
            };
            if scripts.get(id).is_some_and(|s| *s.source != *text)
                && let Some(mut script) = scripts.get_mut(id)
            {
                script.source = text.into();
            }
            runtime.retry_script(id);
            changed.modified.push(id);
        }
        if let Some(text) = text {
            changed.modified.extend(runtime.scripts_waiting_for(&change.path));
            if ids.is_empty()
                && server.get_path_id(bevy::asset::AssetPath::from(change.path.clone())).is_some()
            {
                early.insert(change.path.clone(), text.to_string());
            }
        }
        runtime.module_changed(&change.path, text);
    }
}

/// Whether a script's asset path names the file at `path` (`/`-separated, as the watcher makes
/// it), whichever separator the asset path was written with.
fn same_path(asset_path: &str, path: &str) -> bool {
    asset_path.len() == path.len()
        && asset_path.bytes().zip(path.bytes()).all(|(a, b)| a == b || (a == b'\\' && b == b'/'))
}
