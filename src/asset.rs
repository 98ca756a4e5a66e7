//! The `.lua` asset: [`LuaScript`] and its loader, where the assets folder is on disk, and the one
//! rule for every file a script names ([`script_file`]). A script's chunk is named by its asset
//! path, so errors read `scripts/enemy.lua:12: message`.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bevy::asset::{AssetLoader, LoadContext, io::Reader};
use bevy::prelude::*;

use crate::error::Error;

/// A Lua script loaded through the `AssetServer` (files ending in `.lua`).
#[derive(Asset, TypePath, Debug, Clone)]
pub struct LuaScript {
    /// The asset path, used as the chunk name (`scripts/enemy.lua`).
    pub path: Arc<str>,
    /// The script's source text.
    pub source: Arc<str>,
}

impl LuaScript {
    /// A script from source text, named `path` in error messages (for scripts built in code).
    pub fn new(path: impl Into<Arc<str>>, source: impl Into<Arc<str>>) -> Self {
        Self { path: path.into(), source: source.into() }
    }
}

/// Loads `.lua` files as [`LuaScript`]s. Compilation happens on the main thread when an instance
/// first needs the script, so a syntax error is reported as a [`ScriptError`](crate::ScriptError).
#[derive(Default, TypePath)]
pub struct LuaScriptLoader;

impl AssetLoader for LuaScriptLoader {
    type Asset = LuaScript;
    type Settings = ();
    type Error = Error;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        load_context: &mut LoadContext<'_>,
    ) -> Result<LuaScript, Error> {
        let path = load_context.path().to_string();
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).await.map_err(|source| Error::Io { path: path.clone(), source })?;
        let source =
            std::str::from_utf8(&bytes).map_err(|source| Error::NotUtf8 { path: path.clone(), source })?;
        Ok(LuaScript::new(path, source))
    }

    fn extensions(&self) -> &[&str] {
        &["lua"]
    }
}

/// The app's assets folder on disk: the `AssetPlugin`'s `file_path` (default `assets`), resolved
/// as Bevy resolves it (against `BEVY_ASSET_ROOT`, else `CARGO_MANIFEST_DIR`, else the executable's
/// folder; an absolute `file_path` stays as it is). `AssetPlugin` must have been added already.
pub(crate) fn assets_folder(app: &App) -> std::path::PathBuf {
    let folder = app
        .get_added_plugins::<AssetPlugin>()
        .first()
        .map_or_else(|| AssetPlugin::default().file_path, |p| p.file_path.clone());
    bevy::asset::io::file::FileAssetReader::get_base_path().join(folder)
}

/// The assets folder on disk, kept in the VM's app data for the functions that name files.
struct AssetsFolder(PathBuf);

/// Records the assets folder (the plugin does, once `AssetPlugin` is known).
pub(crate) fn set_folder(lua: &mlua::Lua, root: PathBuf) {
    lua.set_app_data(AssetsFolder(root));
}

/// The assets folder, once the plugin has recorded it.
pub(crate) fn folder(lua: &mlua::Lua) -> Option<PathBuf> {
    lua.app_data_ref::<AssetsFolder>().map(|f| f.0.clone())
}

/// Why a file a script named cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileRefusal {
    /// The path is well formed, but no file is there.
    Missing,
    /// The path breaks the rule (the text says how, naming the asset path only).
    Refused(String),
}

impl std::fmt::Display for FileRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileRefusal::Missing => f.write_str("no such file in the assets folder"),
            FileRefusal::Refused(why) => f.write_str(why),
        }
    }
}

/// The one rule for every file a script names (`require`, `world.spawn{ script = ... }`,
/// `readFileStream`, hot reload): `path` is relative to the assets folder `root`, with `/`
/// between names, no `..`, not absolute, no NUL byte; it names a regular file (not a folder, a
/// named pipe or a device, which would block whoever reads it), and no symbolic link on the way
/// leads out of the assets folder. Returns the file on disk (links resolved). Checked before the
/// file is opened; messages name the asset path, never where the assets folder is on the host.
pub(crate) fn script_file(root: &Path, path: &str) -> Result<PathBuf, FileRefusal> {
    well_formed(path)?;
    let refuse = |why: &str| Err(FileRefusal::Refused(format!("path {path:?} {why}")));
    let Ok(root) = root.canonicalize() else { return Err(FileRefusal::Missing) };
    let target = match root.join(path).canonicalize() {
        Ok(target) => target,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileRefusal::Missing),
        Err(e) => return refuse(&format!("cannot be resolved ({})", e.kind())),
    };
    if !target.starts_with(&root) {
        return refuse("leaves the assets folder (through a symbolic link)");
    }
    match std::fs::metadata(&target) {
        Ok(meta) if meta.is_file() => Ok(target),
        Ok(_) => refuse("is not a regular file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FileRefusal::Missing),
        Err(e) => refuse(&format!("cannot be read ({})", e.kind())),
    }
}

/// The part of [`script_file`]'s rule that needs no disk: not empty, no NUL byte, no `..`, not
/// absolute.
fn well_formed(path: &str) -> Result<(), FileRefusal> {
    let refuse = |why: &str| Err(FileRefusal::Refused(format!("path {path:?} {why}")));
    if path.is_empty() {
        return Err(FileRefusal::Refused("empty path".into()));
    }
    if path.contains('\0') {
        return refuse("contains a NUL byte");
    }
    for component in Path::new(path).components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return refuse("leaves the assets folder ('..')"),
            Component::RootDir | Component::Prefix(_) => {
                return refuse("is absolute (give a path inside the assets folder)");
            }
        }
    }
    Ok(())
}

/// [`script_file`] for a script asset a Lua function was given as its first argument: refused
/// (a missing file too) with `bad argument #1 to 'function' (...)`. A path in an asset source the
/// game registered (`"mods://enemy.lua"`) is not on the assets folder's disk: it only has to be
/// well formed, and the source decides what it holds.
pub(crate) fn check_script_file(lua: &mlua::Lua, path: &str, function: &str) -> Result<(), String> {
    let refused = |why: String| crate::error::bad_argument(1, function, format_args!("script {why}"));
    if let Some((_source, inner)) = path.split_once("://") {
        return well_formed(inner).map_err(|e| refused(e.to_string()));
    }
    let root = folder(lua).ok_or_else(|| format!("{function}: the assets folder is not known yet"))?;
    script_file(&root, path).map(drop).map_err(|e| match e {
        FileRefusal::Missing => refused(format!("path {path:?}: {e}")),
        FileRefusal::Refused(why) => refused(why),
    })
}

/// `message` with the assets folder's place on the host taken out, so it names asset paths only
/// (`Path not found: /home/me/game/assets/scripts/a.lua` reads `Path not found: scripts/a.lua`).
pub(crate) fn hide_folder(message: &str, root: &Path) -> String {
    let mut text = message.to_string();
    let mut roots = vec![root.to_path_buf()];
    roots.extend(root.canonicalize().ok());
    for root in roots {
        let shown = root.display().to_string();
        for prefix in [format!("{shown}/"), format!("{shown}\\"), shown] {
            text = text.replace(&prefix, "");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{FileRefusal, script_file};

    #[test]
    fn the_path_rule_refuses_what_leaves_the_assets_folder() {
        let root = std::path::Path::new("/nonexistent/game/assets");
        let refused = |p: &str| match script_file(root, p) {
            Err(FileRefusal::Refused(why)) => why,
            other => panic!("{p}: {other:?}"),
        };
        assert!(refused("../secret").contains("leaves the assets folder"));
        assert!(refused("a/../../b").contains(".."));
        assert!(refused("/etc/passwd").contains("absolute"));
        assert_eq!(refused(""), "empty path");
        assert!(refused("a\0b").contains("NUL"));
        assert_eq!(script_file(root, "scripts/a.lua"), Err(FileRefusal::Missing));
    }
}
