//! The `.lua` asset: [`LuaScript`] and its loader, and where the assets folder is on disk. A
//! script's chunk is named by its asset path, so errors read `scripts/enemy.lua:12: message`.

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
