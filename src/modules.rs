//! `require` for scripts: module names resolved in the assets folder through a search path (like
//! Lua's `package.path`), each module run once per VM and its value cached (like
//! `package.loaded`), and the module graph (which module and which instance required which) that
//! hot reload follows to reload everything depending on a changed module.
//!
//! A module runs in an environment of its own that reads through the shared base, with no
//! `entity` or `state`. Its top-level chunk cannot yield (as with Lua's own `require`), and a
//! cycle of requires raises an error naming the cycle.

use std::sync::Arc;

use bevy::platform::collections::{HashMap, HashSet};
use mlua::{Function, IntoLua, Lua, Table, Value};

use crate::runtime::Base;
use crate::scheduler::{InstanceId, current_instance};

/// The default module search path: `require("ai.util")` looks for `scripts/ai/util.lua`, then
/// `ai/util.lua`, relative to the assets folder.
pub const DEFAULT_MODULE_PATH: [&str; 2] = ["scripts/?.lua", "?.lua"];

/// The module system's state, in the VM's app data.
pub(crate) struct Modules {
    /// Templates, `?` standing for the module name with dots as slashes.
    search: Vec<String>,
    /// The source each module was last loaded from, or changed to, by asset path.
    sources: HashMap<String, Arc<str>>,
    /// Modules whose top-level chunk is running, innermost last.
    loading: Vec<String>,
    /// Modules each module required.
    module_deps: HashMap<String, HashSet<String>>,
    /// Modules each instance required itself.
    instance_deps: HashMap<InstanceId, HashSet<String>>,
    /// A new source of a module that did not load (reported once).
    rejected: HashMap<String, Arc<str>>,
    /// Sources of modules whose file was deleted (restoring the same text changes nothing).
    deleted: HashMap<String, Arc<str>>,
    /// Module values by asset path (`package.loaded`).
    loaded: Table,
}

fn modules(lua: &Lua) -> mlua::AppDataRefMut<'_, Modules> {
    lua.app_data_mut::<Modules>().expect("the module system is installed with the VM")
}

/// Why a `require` failed, and the level `error` raises it at (2: at the `require` call;
/// 0: as it is, because the module's own code raised it and named its line).
struct Failure(String, i32);

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure(message, 2)
    }
}

/// Installs the module system, searching `search`, and builds in the `require` scripts see.
pub(crate) fn install(lua: &Lua, base: &Base, search: &[String]) -> mlua::Result<()> {
    lua.set_app_data(Modules {
        search: search.to_vec(),
        sources: HashMap::default(),
        loading: Vec::new(),
        module_deps: HashMap::default(),
        instance_deps: HashMap::default(),
        rejected: HashMap::default(),
        deleted: HashMap::default(),
        loaded: lua.create_table()?,
    });
    let raw = lua.create_function(|lua, name: Value| {
        let result = match name {
            Value::String(name) => require(lua, &name.to_string_lossy()),
            other => Err(Failure::from(crate::error::wrong_type(1, "require", "string", &other))),
        };
        match result {
            Ok(value) => Ok((true, value, 0)),
            Err(Failure(message, level)) => Ok((false, message.into_lua(lua)?, level)),
        }
    })?;
    let require: Function =
        lua.load(include_str!("lua/require.lua")).set_name("=bevy_lua_coroutines/require.lua").call(raw)?;
    // Modules from the assets folder, in every mode.
    base.builtin("require", require)
}

/// `require(name)`: the cached value, or the module run once.
fn require(lua: &Lua, name: &str) -> Result<Value, Failure> {
    if !valid_name(name) {
        return Err(
            crate::error::bad_argument(1, "require", format_args!("invalid module name '{name}'")).into()
        );
    }
    if STANDARD_LIBRARIES.contains(&name) {
        // As standard Lua answers from `package.loaded`: the library the script sees as a global.
        let library: Value = lua.globals().get(name).map_err(|e| e.to_string())?;
        if !library.is_nil() {
            return Ok(library);
        }
    }
    let instance = current_instance(lua);
    let (path, loaded) = {
        let root = crate::asset::folder(lua);
        let mut m = modules(lua);
        let resolved = m.resolve(root.as_deref(), name);
        // A name that did not resolve is recorded at every path tried, so creating the file
        // reruns whoever asked for it.
        let paths = match &resolved {
            Ok(path) => vec![path.clone()],
            Err(NotFound { tried, .. }) => tried.clone(),
        };
        let deps = match (m.loading.last().cloned(), instance) {
            (Some(module), _) => Some(m.module_deps.entry(module).or_default()),
            (None, Some(id)) => Some(m.instance_deps.entry(id).or_default()),
            (None, None) => None,
        };
        if let Some(deps) = deps {
            deps.extend(paths);
        }
        let path = resolved.map_err(|e| e.message)?;
        if let Some(at) = m.loading.iter().position(|p| *p == path) {
            let mut cycle = m.loading[at..].to_vec();
            cycle.push(path);
            return Err(format!("require cycle: {}", cycle.join(" -> ")).into());
        }
        (path.clone(), m.loaded.clone())
    };
    let cached: Value = loaded.raw_get(path.as_str()).map_err(|e| e.to_string())?;
    if !cached.is_nil() {
        return Ok(cached);
    }
    let source = source_of(lua, &path)?;
    let chunk = compile(lua, &path, &source).map_err(|e| format!("error loading module '{name}': {e}"))?;
    {
        let mut m = modules(lua);
        m.sources.insert(path.clone(), source);
        m.module_deps.remove(&path);
        m.loading.push(path.clone());
    }
    let result = chunk.call::<Value>((name, path.as_str()));
    modules(lua).loading.pop();
    let value = result.map_err(|e| Failure(crate::error::split_traceback(&e).0, 0))?;
    let value = if value.is_nil() { Value::Boolean(true) } else { value };
    loaded.raw_set(path.as_str(), &value).map_err(|e| e.to_string())?;
    Ok(value)
}

/// The names of standard libraries (of any flavour): `require` returns the one the sandbox grants,
/// and looks for a file only if it grants none (`io` under `StdlibAccess::Safe`).
const STANDARD_LIBRARIES: &[&str] = &[
    "coroutine",
    "debug",
    "io",
    "math",
    "os",
    "package",
    "string",
    "table",
    "utf8",
    "bit",
    "bit32",
    "jit",
    "ffi",
    "buffer",
    "vector",
];

/// Module names are dot-separated words: letters, digits, `_` and `-`.
fn valid_name(name: &str) -> bool {
    name.split('.').all(|part| {
        !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// The module's source: as last changed, or read from the assets folder (under the rule of
/// [`crate::asset::script_file`], checked again right before the file is opened).
fn source_of(lua: &Lua, path: &str) -> Result<Arc<str>, String> {
    if let Some(source) = modules(lua).sources.get(path) {
        return Ok(source.clone());
    }
    let root = crate::asset::folder(lua).ok_or("the assets folder is not known yet")?;
    let file = crate::asset::script_file(&root, path).map_err(|e| format!("module '{path}': {e}"))?;
    std::fs::read_to_string(&file).map(Arc::from).map_err(|e| format!("could not read module '{path}': {e}"))
}

/// Compiles a module's source in a fresh module environment, named by its asset path.
fn compile(lua: &Lua, path: &str, source: &str) -> Result<Function, String> {
    let new_env = crate::runtime::new_env(lua).ok_or("the sandbox is not installed")?;
    let env: Table = new_env.call(()).map_err(|e| e.to_string())?;
    lua.load(source)
        .set_name(format!("@{path}"))
        .set_environment(env)
        .into_function()
        .map_err(|e| crate::error::split_traceback(&e).0)
}

/// A module name that resolved to no file: Lua's message, and the paths tried.
struct NotFound {
    message: String,
    tried: Vec<String>,
}

impl Modules {
    /// The asset path `name` resolves to in the assets folder `root`: the first file of the search
    /// path there. A file the rule of [`crate::asset::script_file`] refuses (a link that leaves
    /// the folder, a named pipe) is refused, not skipped.
    fn resolve(&self, root: Option<&std::path::Path>, name: &str) -> Result<String, NotFound> {
        let relative = name.replace('.', "/");
        let mut tried = Vec::new();
        for template in &self.search {
            let path = template.replace('?', &relative);
            if self.sources.contains_key(&path) {
                return Ok(path);
            }
            match root.map(|r| crate::asset::script_file(r, &path)) {
                Some(Ok(_)) => return Ok(path),
                Some(Err(crate::asset::FileRefusal::Refused(why))) => {
                    let message = crate::error::bad_argument(1, "require", why);
                    return Err(NotFound { message, tried: vec![path] });
                }
                _ => {}
            }
            tried.push(path);
        }
        let list: String = tried.iter().map(|p| format!("\n\tno file '{p}'")).collect();
        Err(NotFound { message: format!("module '{name}' not found:{list}"), tried })
    }

    /// Modules that depend on `path`, directly or through other modules, `path` included.
    fn dependents(&self, path: &str) -> HashSet<String> {
        let mut found = HashSet::default();
        let mut todo = vec![path.to_string()];
        while let Some(module) = todo.pop() {
            if found.insert(module.clone()) {
                let users = self.module_deps.iter().filter(|(_, deps)| deps.contains(&module));
                todo.extend(users.map(|(user, _)| user.clone()));
            }
        }
        found
    }
}

/// Forgets what an instance required (it is gone, or about to run its code again).
pub(crate) fn forget_instance(lua: &Lua, id: InstanceId) {
    modules(lua).instance_deps.remove(&id);
}

/// How many instances the module graph records requires of (for tests).
#[cfg(test)]
pub(crate) fn instances_with_deps(lua: &Lua) -> usize {
    modules(lua).instance_deps.len()
}

/// A module's new source (or `None`: its file is gone). Returns `Ok(instances)` to restart when a
/// module that was loaded (or asked for) changed and loads, `Err(message)` when it does not load
/// (once per new source), and `Ok(empty)` when nothing depends on it or nothing changed.
pub(crate) fn module_changed(lua: &Lua, path: &str, source: Option<&str>) -> Result<Vec<InstanceId>, String> {
    let Some(source) = source else {
        // Whoever loaded it keeps its value; a new `require` will not find it.
        let mut m = modules(lua);
        if let Some(old) = m.sources.remove(path) {
            bevy::log::warn!("module {path} was deleted; what loaded it keeps running");
            m.deleted.insert(path.to_string(), old);
        }
        return Ok(Vec::new());
    };
    let previous = {
        let mut m = modules(lua);
        if let Some(old) = m.deleted.remove(path) {
            if *old == *source {
                m.sources.insert(path.to_string(), old);
                return Ok(Vec::new());
            }
            m.sources.insert(path.to_string(), old);
        }
        let required = m.module_deps.values().chain(m.instance_deps.values()).any(|deps| deps.contains(path));
        match m.sources.get(path) {
            Some(old) if **old == *source => {
                m.rejected.remove(path);
                return Ok(Vec::new());
            }
            _ if m.rejected.get(path).is_some_and(|r| **r == *source) => return Ok(Vec::new()),
            Some(old) => Some(old.clone()),
            // Required, but it failed to load or did not exist: whoever required it runs again.
            None if required => None,
            None => return Ok(Vec::new()),
        }
    };
    let checked = compile(lua, path, source)
        .and_then(|_| check_requires(lua, source, previous.as_deref()).map_err(|r| r.at(path)));
    let mut m = modules(lua);
    if let Err(message) = checked {
        m.rejected.insert(path.to_string(), source.into());
        return Err(message);
    }
    m.rejected.remove(path);
    m.sources.insert(path.to_string(), source.into());
    let stale = m.dependents(path);
    for module in &stale {
        m.loaded.raw_set(module.as_str(), Value::Nil).map_err(|e| e.to_string())?;
    }
    let mut instances: Vec<InstanceId> = m
        .instance_deps
        .iter()
        .filter(|(_, deps)| deps.iter().any(|d| stale.contains(d)))
        .map(|(id, _)| *id)
        .collect();
    instances.sort();
    Ok(instances)
}

/// Why a new version was refused: a module it newly requires is missing or does not compile.
pub(crate) struct Refusal {
    /// The line of the `require`.
    pub line: usize,
    /// What is wrong with the module.
    pub message: String,
    /// The paths the module was looked for at (creating one of them is worth a retry).
    pub tried: Vec<String>,
}

impl Refusal {
    /// The message, at `path:line`.
    pub fn at(&self, path: &str) -> String {
        format!("{path}:{}: {}", self.line, self.message)
    }
}

/// Checks the modules a new version of a script or module requires by a literal name that the
/// version it replaces (`previous`) did not: each must resolve and compile. So a reload that
/// would fail on a missing or broken module is refused before the running code is replaced, while
/// a `require` the running version already had (an optional one under `pcall`, say) is left to
/// run time as before.
pub(crate) fn check_requires(lua: &Lua, source: &str, previous: Option<&str>) -> Result<(), Refusal> {
    let known: HashSet<String> =
        previous.map(|p| literal_requires(p).into_iter().map(|(name, _)| name).collect()).unwrap_or_default();
    for (name, line) in literal_requires(source) {
        if known.contains(&name) || !valid_name(&name) {
            continue;
        }
        let root = crate::asset::folder(lua);
        let resolved = modules(lua).resolve(root.as_deref(), &name);
        let path = resolved.map_err(|e| Refusal { line, message: e.message, tried: e.tried })?;
        let refuse = |message: String| Refusal { line, message, tried: vec![path.clone()] };
        let text = source_of(lua, &path).map_err(refuse)?;
        compile(lua, &path, &text).map_err(|e| refuse(format!("error loading module '{name}': {e}")))?;
    }
    Ok(())
}

/// The names of `require("name")` / `require 'name'` / `require [[name]]` calls in `source`: a
/// small scan of Lua's tokens that skips comments and other strings.
fn literal_requires(source: &str) -> Vec<(String, usize)> {
    #[derive(PartialEq)]
    enum After {
        Other,
        Require,
        RequireParen,
        Access,
    }
    // Bytes past ASCII belong to names: LuaJIT accepts them in identifiers, and treating them as
    // words keeps every index this scan slices at on a character boundary.
    let word_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || !b.is_ascii();
    let bytes = source.as_bytes();
    let mut names = Vec::new();
    let mut after = After::Other;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if bytes[i..].starts_with(b"--") {
            i = match long_bracket(&source[i + 2..]) {
                Some((_, len)) => i + 2 + len,
                None => bytes[i..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |e| i + e),
            };
            continue;
        }
        let start = i;
        let string = match c {
            b'"' | b'\'' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != c && bytes[j] != b'\n' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                // An escape may end the string inside a character: keep whole characters.
                let text = String::from_utf8_lossy(&bytes[i + 1..j.min(bytes.len())]).into_owned();
                i = j + 1;
                Some(text)
            }
            b'[' => long_bracket(&source[i..]).map(|(text, len)| {
                i += len;
                text.to_string()
            }),
            _ => None,
        };
        if let Some(text) = string {
            if after == After::Require || after == After::RequireParen {
                let line = 1 + bytes[..start].iter().filter(|&&b| b == b'\n').count();
                names.push((text, line));
            }
            after = After::Other;
            continue;
        }
        if word_byte(c) && !c.is_ascii_digit() {
            let end = bytes[i..].iter().position(|&b| !word_byte(b)).map_or(bytes.len(), |e| i + e);
            let word = &bytes[i..end];
            after = if word == b"require" && after != After::Access { After::Require } else { After::Other };
            i = end;
            continue;
        }
        if bytes[i..].starts_with(b"..") {
            // Concatenation (or `...`), not field access.
            i += bytes[i..].iter().take_while(|&&b| b == b'.').count();
            after = After::Other;
            continue;
        }
        after = match c {
            b'(' if after == After::Require => After::RequireParen,
            b'.' | b':' => After::Access,
            _ => After::Other,
        };
        i += 1;
    }
    names
}

/// A long bracket at the start of `text` (`[[...]]`, `[==[...]==]`): its contents and the length
/// of the whole bracket (to the end of `text` if it is not closed).
fn long_bracket(text: &str) -> Option<(&str, usize)> {
    let level = text.strip_prefix('[')?.bytes().take_while(|&b| b == b'=').count();
    let open = 2 + level;
    if text.as_bytes().get(open - 1) != Some(&b'[') {
        return None;
    }
    let close = format!("]{}]", "=".repeat(level));
    Some(match text[open..].find(&close) {
        Some(e) => (&text[open..open + e], open + e + close.len()),
        None => (&text[open..], text.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_requires_are_found_outside_comments() {
        let src = r#"
local a = require("ai.util")
local b = require 'b'
local c = require  ( "c-d" )
-- local old = require("old")
--[[ require("block") ]]
--[==[ require("level") ]==]
local s = "-- require('in string') is code" .. require"e"
local t = myrequire("no")
local f = require [[f]]
local u = obj:require("no")
"#;
        let found = literal_requires(src);
        let found: Vec<(&str, usize)> = found.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        assert_eq!(found, [("ai.util", 2), ("b", 3), ("c-d", 4), ("e", 8), ("f", 10)]);
    }

    #[test]
    fn literal_requires_scan_non_ascii_source_without_panicking() {
        // LuaJIT takes bytes past ASCII in names; a string may end in an escaped multi-byte
        // character; a number may run into one.
        let src = "local caf\u{e9} = require(\"m\u{f6}d\")\nlocal \u{3c0}x = 1.\u{e9}\nlocal s = '\\\u{e9}' .. require 'b'\n-- \u{fc}\n";
        let found = literal_requires(src);
        let found: Vec<(&str, usize)> = found.iter().map(|(n, l)| (n.as_str(), *l)).collect();
        assert_eq!(found, [("m\u{f6}d", 1), ("b", 3)]);
    }

    #[test]
    fn module_names_are_dotted_words() {
        assert!(valid_name("ai.util"));
        assert!(valid_name("my_mod-2"));
        assert!(!valid_name("../x"));
        assert!(!valid_name("a..b"));
        assert!(!valid_name("/abs"));
        assert!(!valid_name(""));
    }
}
