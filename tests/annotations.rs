//! The editor annotations (`assets/types/*.lua`, LuaLS / EmmyLua `---@meta` files) name exactly
//! what the script API defines: every name a real VM's base holds, every member of its API tables,
//! every entity method, and nothing else (apart from names the contract promises that are not
//! built yet, listed in `PENDING`).
//!
//! The API is the same under every Lua flavour; the base is enumerated under Lua 5.4, whose `pairs`
//! honours the base's `__pairs` (Luau's does not).
#![cfg(feature = "lua54")]

mod common;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bevy::prelude::*;
use bevy_lua_coroutines::LuaEntity;
use bevy_lua_coroutines::prelude::*;
use common::*;

/// Walks the base (the VM's globals): globals that are not Lua's own, and the members of API
/// tables (nested tables too: `Promise.Error.Kind`).
const ENUMERATE_BASE: &str = r#"
local lua_own = {}
for name in ("assert error getmetatable ipairs next pairs pcall rawequal rawget rawlen rawset select "
  .. "setmetatable tonumber tostring type xpcall unpack _VERSION gcinfo newproxy typeof bit32 "
  .. "collectgarbage print string table math utf8 bit buffer vector os debug coroutine _G load "
  .. "require"):gmatch("%S+") do
  lua_own[name] = true
end
local names = {}
local function walk(prefix, t, depth)
  for k, v in pairs(t) do
    if type(k) == "string" then
      local name = prefix .. k
      names[#names + 1] = name
      if type(v) == "table" and depth < 3 then walk(name .. ".", v, depth + 1) end
    end
  end
end
for k, v in pairs(_G) do
  if type(k) == "string" and not lua_own[k] then
    names[#names + 1] = k
    if type(v) == "table" then walk(k .. ".", v, 1) end
  end
end
return names
"#;

/// The names the running base defines; the entity's members are probed among `entity_candidates`
/// (its metatable is closed to enumeration).
fn defined(entity_candidates: &BTreeSet<String>) -> BTreeSet<String> {
    let mut app = create_app();
    app.add_llm_service(LocalLlm::new(Duration::ZERO), LlmConfig::default());
    let lua = app.world().resource::<LuaRuntime>().lua();
    let base: Vec<String> =
        lua.load(ENUMERATE_BASE).set_name("=enumerate").call(()).expect("the base enumerates");
    let entity = lua.create_userdata(LuaEntity(Entity::PLACEHOLDER)).unwrap();
    let probe = r#"
        local e, names, out = ...
        for _, n in ipairs(names) do if e[n] ~= nil then out[#out + 1] = n end end
        return out
    "#;
    let names: Vec<&str> = entity_candidates.iter().map(|n| &n[7..]).collect();
    let found: Vec<String> = lua.load(probe).call((entity, names, lua.create_table().unwrap())).unwrap();
    let entity =
        found.into_iter().map(|n| if n == "id" { "entity.id".into() } else { format!("entity:{n}") });
    // The methods of API objects: the `__index` tables of their (script-hidden) metatables.
    let objects: mlua::MultiValue = lua
        .load(r#"return Promise.resolve(1), Channel.new(), Stream.from({}), Promise.Error.new({})"#)
        .eval()
        .expect("API objects are made");
    let mut methods = Vec::new();
    for (class, object) in ["Promise", "Channel", "Stream", "PromiseError"].into_iter().zip(objects) {
        let mlua::Value::Table(object) = object else { panic!("{class} is not a table") };
        let index: mlua::Table = object.metatable().expect("a metatable").get("__index").unwrap();
        for pair in index.pairs::<String, mlua::Value>() {
            methods.push(format!("{class}:{}", pair.unwrap().0));
        }
    }
    base.into_iter().chain(entity).chain(methods).collect()
}

/// Names of the contract (API.md section 6c) that the annotations describe before the base defines
/// them: a name under one of these roots may be annotated and not defined yet. Once the base
/// defines a name, it must be annotated like any other.
const PENDING: &[&str] = &[
    "Vec2",
    "Vec3",
    "Vec4",
    "Quat",
    "world.query",
    "world.count",
    "world.getResource",
    "world.setResource",
    "Entity:parent",
    "Entity:children",
];

/// Globals that are another name for an API table (annotated as `alias = table`): their members
/// are the table's.
const ALIASES: &[(&str, &str)] = &[("llmBridge.", "llm.")];

/// Globals of each instance (not of the base).
const INSTANCE: &[&str] = &["entity", "state"];

/// The names the annotation files declare: `function a.b(`, `function A:m(`, `a.b = ` and
/// `name = ` at the top level (`local` names are not globals), and `Entity`'s `---@field`s as
/// `Entity.field`.
fn annotated() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/types");
    // Files of the folder itself: `game/` holds functions the examples register, not the base.
    let mut files: Vec<_> =
        std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    assert!(files.len() >= 2, "annotation files in {}", folder.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("---@meta"), "{} is a ---@meta file", file.display());
        let mut class = String::new();
        for line in text.lines() {
            let ident = |s: &str| {
                s.chars().take_while(|c| c.is_alphanumeric() || "_.:".contains(*c)).collect::<String>()
            };
            if let Some(rest) = line.strip_prefix("---@class ") {
                class = ident(rest);
            } else if let Some(rest) = line.strip_prefix("---@field ") {
                if class == "Entity" {
                    names.insert(format!("Entity.{}", ident(rest)));
                }
            } else if let Some(rest) = line.strip_prefix("function ") {
                names.insert(ident(rest));
            } else if !line.starts_with(['-', ' ']) && line.contains(" = ") && !line.starts_with("local ") {
                let name = ident(line);
                if !name.is_empty() && line[name.len()..].starts_with(" = ") {
                    names.insert(name);
                }
            }
        }
    }
    names
}

#[test]
fn the_annotations_name_exactly_what_the_base_defines() {
    let annotated = annotated();
    let entity_candidates: BTreeSet<String> = annotated
        .iter()
        .filter_map(|n| n.strip_prefix("Entity:").or(n.strip_prefix("Entity.")))
        .map(|m| format!("entity.{m}"))
        .chain(["entity.nope".to_string()])
        .collect();
    // The running VM's names, spelled as the annotations spell them (`Entity:get`, `Entity.id`).
    let defined: BTreeSet<String> = defined(&entity_candidates)
        .into_iter()
        .map(|n| n.replacen("entity:", "Entity:", 1).replacen("entity.", "Entity.", 1))
        .map(|n| match ALIASES.iter().find(|(alias, _)| n.starts_with(alias)) {
            Some((alias, table)) => format!("{table}{}", &n[alias.len()..]),
            None => n,
        })
        .chain(INSTANCE.iter().map(|n| n.to_string()))
        // `then` is a reserved word: `p["then"]` is an alias of `andThen`, not annotated apart.
        .filter(|n| n != "Promise:then")
        .collect();
    assert!(defined.contains("Entity:get") && defined.contains("Entity.id"), "the probe works: {defined:?}");
    assert!(!defined.contains("Entity:nope"), "the probe finds only what exists");
    let pending = |n: &str| {
        PENDING.iter().any(|p| n == *p || n.strip_prefix(p).is_some_and(|r| r.starts_with(['.', ':'])))
    };
    let missing: Vec<_> = defined.difference(&annotated).collect();
    let extra: Vec<_> = annotated.difference(&defined).filter(|n| !pending(n)).collect();
    assert!(missing.is_empty(), "defined by the base but not annotated in assets/types: {missing:?}");
    assert!(extra.is_empty(), "annotated in assets/types but not defined by the base: {extra:?}");
}

#[test]
fn the_editor_config_reads_the_annotations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("assets/.luarc.json")).expect("assets/.luarc.json");
    let config: serde_json::Value = serde_json::from_str(&text).expect(".luarc.json is JSON");
    let library = config["workspace"]["library"].as_array().expect("workspace.library");
    assert!(library.iter().any(|l| l == "types"), "workspace.library names the types folder: {library:?}");
}
