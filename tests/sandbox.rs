//! The sandbox's central promise, in one place: no instance can change what another instance
//! runs. Several instances share one VM; one of them is hostile and tries every path into the
//! shared tables (`pairs`, `next`, `rawget`, `rawequal`, `getmetatable`, `_G`/`_ENV` tricks, `load`
//! with environments, `debug`, the string metatable, finalizers that run on another instance's
//! thread). The others must see pristine libraries, base, `print`, `task`, `Promise`, `Channel`
//! and `world`, and their tasks must run undisturbed.

mod common;

use bevy_lua_coroutines::prelude::*;
use common::*;

/// A fingerprint of everything a script reads through the shared base: every name of the base
/// and of every table in it (two levels deep), with each value's identity (`tostring`, which
/// names the function or table object), plus the behaviour of a few library calls. Printed as
/// one line: `fp <label> <digest>`, where equal digests mean the instance sees the same base.
const FINGERPRINT: &str = r#"
local function fingerprint()
  local saved = _G
  _G = nil
  local base = _G -- the shared base, read through
  _G = saved
  local out = {}
  local function walk(prefix, t, depth)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local v = rawget(t, k)
      if v == nil then v = t[k] end
      local text = tostring(v):gsub("[\128-\255]", function(c) return "\\" .. c:byte() end)
      out[#out + 1] = prefix .. k .. "=" .. type(v) .. ":" .. text
      if type(v) == "table" and depth < 2 and k ~= "_G" then walk(prefix .. k .. ".", v, depth + 1) end
    end
  end
  walk("", base, 0)
  out[#out + 1] = "n=" .. #out
  out[#out + 1] = "upper=" .. string.upper("ok") .. ("ok"):upper()
  out[#out + 1] = "strmeta=" .. tostring(getmetatable("")) .. tostring(("").x)
  out[#out + 1] = "promise=" .. tostring(Promise.resolve(7):expect())
  local ch = Channel.new(1)
  ch:send("sent")
  out[#out + 1] = "channel=" .. tostring((ch:receive()))
  out[#out + 1] = "world=" .. type(world.spawn) .. type(world.find)
  return table.concat(out, "\n")
end
"#;

/// A hostile script: every attack runs under `pcall`; whatever table an attack obtains is
/// vandalized (every way of writing to it tried). Prints `wrote <attack>` for each write that
/// went through to a table that is not the script's own, and `done` at the end of each round.
const HOSTILE: &str = r#"
local print = print -- its own `print` is among what it overwrites
local evil = function() return "PWNED" end
local own = {}
own[_G] = true
local wrote = {}
local function vandalize(name, t)
  if type(t) ~= "table" or own[t] then return end
  local function try(how, f)
    if pcall(f) then wrote[#wrote + 1] = name .. " (" .. how .. ")" end
  end
  try("assign", function() t.upper = evil end)
  try("assign print", function() t.print = evil end)
  try("rawset", function() rawset(t, "upper", evil) end)
  try("table.insert", function() table.insert(t, evil) end)
  try("setmetatable", function() setmetatable(t, { __index = function() return evil end }) end)
  local ok, f, s = pcall(pairs, t)
  if ok and type(s) == "table" and s ~= t then
    try("pairs state", function() s.upper = evil end)
    try("pairs state rawset", function() rawset(s, "upper", evil) end)
    try("pairs state print", function() s.print = evil end)
  end
  if ok and type(f) == "function" then
    local seen = 0
    for k, v in f, s, nil do
      seen = seen + 1
      if seen > 200 then break end
      if type(v) == "table" and k ~= "_G" then
        try("pairs value " .. tostring(k), function() v.upper = evil end)
        try("pairs value rawset " .. tostring(k), function() rawset(v, "upper", evil) end)
      end
    end
  end
  local k, v = next(t)
  if type(v) == "table" then try("next value", function() v.upper = evil end) end
  if type(rawget(t, "upper")) ~= "nil" and not rawequal(rawget(t, "upper"), evil) then
    wrote[#wrote + 1] = name .. " (rawget sees the real table)"
  end
  local mt = getmetatable(t)
  if type(mt) == "table" then
    try("metatable", function() mt.__index = function() return evil end end)
    try("metatable __newindex", function() mt.__newindex = nil end)
    if type(mt.__index) == "table" then
      try("metatable __index table", function() mt.__index.upper = evil end)
    end
  end
end

local function libraries(round)
  for _, name in ipairs({
    "string", "table", "math", "utf8", "coroutine", "task", "time", "os", "debug", "Promise",
    "Channel", "Stream", "Messages", "world", "bit32", "bit", "buffer", "vector", "Vec2", "Vec3",
    "Vec4", "Quat",
  }) do
    local lib = rawget(_G, name) or _G[name]
    vandalize(round .. name, lib)
  end
end

local function attacks(round)
  libraries(round)
  -- `_G = nil` makes `_G` fall through to the shared base.
  local saved = _G
  pcall(function()
    _G = nil
    local base = _G
    _G = saved
    own[saved] = true
    vandalize(round .. "base via _G = nil", base)
    for k, v in pairs(base) do
      if type(v) == "table" then vandalize(round .. "base." .. tostring(k), v) end
    end
  end)
  _G = saved
  -- `_ENV` (Lua 5.4): a chunk's environment is the instance's own table.
  pcall(function()
    local env = load("return _ENV")()
    if env ~= _G then vandalize(round .. "load _ENV", env) end
  end)
  -- `load` with every kind of environment.
  for i, env in ipairs({ false, {} }) do
    pcall(function()
      local f = load("return _G, string, print", "=x", "t", env or nil)
      local g, s = f()
      if g ~= _G then vandalize(round .. "load env " .. i .. " _G", g) end
      vandalize(round .. "load env " .. i .. " string", s)
    end)
  end
  pcall(function() load("string.upper = ...", "=x", "t")(evil) end)
  pcall(function() load("print = ...", "=x", "t", nil)(evil) end)
  -- `debug` under the safe libraries holds only `traceback`.
  for _, name in ipairs({ "getregistry", "getmetatable", "getupvalue", "setupvalue", "getinfo",
                          "sethook", "getlocal", "setmetatable", "upvalueid", "getfenv" }) do
    local f = debug[name]
    if f ~= nil then wrote[#wrote + 1] = round .. "debug." .. name .. " is there" end
  end
  -- Lua 5.1's environment functions.
  for _, name in ipairs({ "getfenv", "setfenv", "loadstring", "dofile", "loadfile", "require" }) do
    local f = rawget(_G, name) or _G[name]
    if f ~= nil and name ~= "require" then wrote[#wrote + 1] = round .. name .. " is there" end
  end
  -- The string metatable, shared by every string.
  vandalize(round .. "getmetatable('')", getmetatable(""))
  pcall(function() vandalize(round .. "('').__index", ("").__index) end)
  -- Objects the libraries make.
  vandalize(round .. "Channel object", Channel.new())
  vandalize(round .. "Promise object metatable", getmetatable(Promise.resolve()))
  vandalize(round .. "entity metatable", getmetatable(entity))
  -- rawequal and friends cannot tell a view from the real table in a useful way: whatever
  -- compares equal to a library is the same read-only view.
  local _, s = pairs(string)
  if rawequal(s, string) then vandalize(round .. "rawequal pairs state", s) end
end

attacks("1:")
-- A finalizer runs on whichever thread collects: it would see another instance's thread.
captured = nil
pcall(setmetatable, {}, { __gc = function() captured = coroutine.running() end })
print("done")
task.wait()
attacks("2:")
task.wait()
if type(captured) == "thread" then wrote[#wrote + 1] = "a finalizer captured a thread" end
for _, w in ipairs(wrote) do print("wrote " .. w) end
print("done")
"#;

/// A well-behaved script: fingerprints the base before and after the hostile one ran, and checks
/// that its own task and `print` go on undisturbed.
fn victim(label: &str) -> String {
    format!(
        r#"{FINGERPRINT}
local before = fingerprint()
print("fp {label} " .. before)
task.wait()
collectgarbage() -- a hostile finalizer would run here, on this instance's thread
task.wait()
task.wait()
local after = fingerprint()
print("same {label} " .. tostring(before == after))
print("fp {label} " .. after)
"#
    )
}

/// The fingerprints `victim` printed (one `print` each), by label.
fn fingerprints(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("fp "))
        .map(|rest| rest.split_once(' ').unwrap_or((rest, "")))
        .map(|(label, text)| (label.to_string(), text.to_string()))
        .collect()
}

#[test]
fn a_hostile_instance_leaves_every_other_instance_pristine() {
    let mut app = create_app();
    spawn_script(&mut app, "scripts/before.lua", &victim("before"));
    spawn_script(&mut app, "scripts/hostile.lua", HOSTILE);
    run(&mut app, 6);
    // Started after the hostile one has done its worst.
    spawn_script(&mut app, "scripts/after.lua", &victim("after"));
    run(&mut app, 6);
    let lines = printed(&app);
    let wrote: Vec<_> = lines.iter().filter(|l| l.starts_with("wrote ")).collect();
    assert!(wrote.is_empty(), "the hostile script wrote to shared tables: {wrote:#?}");
    assert_eq!(
        lines.iter().filter(|l| *l == "done").count(),
        2,
        "the hostile script ran to its end: {lines:#?} {:#?}",
        errors(&app)
    );
    assert!(lines.contains(&"same before true".to_string()), "{lines:#?}");
    assert!(lines.contains(&"same after true".to_string()), "{lines:#?}");
    let fps = fingerprints(&lines);
    assert_eq!(fps.len(), 4, "{fps:#?}");
    for (label, fp) in &fps[1..] {
        let differs: Vec<_> = fp.lines().zip(fps[0].1.lines()).filter(|(a, b)| a != b).collect();
        assert!(
            differs.is_empty() && fp.lines().count() == fps[0].1.lines().count(),
            "instance '{label}' sees another base than the first one did: {differs:#?}"
        );
    }
    let fp = &fps[0].1;
    for expected in ["upper=OKOK", "promise=7", "channel=sent", "world=functionfunction", "print=function:"] {
        assert!(fp.contains(expected), "fingerprint lacks {expected}: {fp}");
    }
    assert!(fp.contains("strmeta=falsenil") || fp.contains("strmeta=nilnil"), "{fp}");
    let errs = errors(&app);
    assert!(errs.is_empty(), "{errs:#?}");
}

/// Each path on its own, with the write the issue reported: after it, another instance's
/// `string.upper`, `print`, `task` and `coroutine` work as before.
#[test]
fn pairs_and_the_base_hand_out_no_writable_table() {
    for attack in [
        "local _, raw = pairs(string); raw.upper = function() return 'PWNED' end",
        "local _, raw = pairs(task); raw.wait = function() return 'PWNED' end",
        "local _, raw = pairs(coroutine); raw.running = function() return 'PWNED' end",
        "for _, v in pairs(Promise) do if type(v) == 'table' then local _, r = pairs(v); r.x = 1 end end",
        "_G = nil; local _, store = pairs(_G); store.print = function() end",
        "_G = nil; local _, store = pairs(_G); store.string = { upper = function() return 'PWNED' end }",
        "_G = nil; for k, v in pairs(_G) do if type(v) == 'table' then local _, r = pairs(v); r.upper = print end end",
        "_G = nil; local _, store = pairs(_G); store.task = { wait = function() return 'PWNED' end }",
        "rawset(string, 'upper', print)",
        "rawset(Channel.named and Channel or string, 'new', print)",
        "table.insert(string, print)",
        "rawset(Vec3, 'new', function() return 'PWNED' end)",
        "table.insert(Vec3, print); rawset(Quat, 'IDENTITY', 1)",
        "local _, raw = pairs(Vec3); raw.new = print",
        "local k, v = next(string); string[k] = print",
    ] {
        let mut app = create_app();
        spawn_script(&mut app, "scripts/hostile.lua", attack);
        spawn_script(
            &mut app,
            "scripts/victim.lua",
            "task.wait() print(string.upper('x'), type(task.wait), coroutine.running() ~= nil, \
             type(Promise.Status.Resolved), tostring(Vec3.new(1, 2, 3)))",
        );
        run(&mut app, 3);
        assert_eq!(printed(&app), ["X\tfunction\ttrue\tstring\tVec3(1, 2, 3)"], "after `{attack}`");
    }
}

/// A finalizer runs on whichever thread happens to collect, so it could capture and later close
/// another instance's task: scripts cannot set one under the safe libraries.
#[test]
fn scripts_cannot_set_finalizers_under_the_safe_libraries() {
    let out = output(
        r#"
        print(pcall(setmetatable, {}, { __gc = function() end }))
        ran = false
        pcall(function() getmetatable(newproxy(true)).__gc = function() ran = true end end)
        collectgarbage()
        collectgarbage()
        print(ran)
        print(setmetatable({}, { __index = { a = 1 } }).a)
        "#,
        2,
    );
    assert!(out[0].starts_with("false\t") && out[0].contains("__gc"), "{out:?}");
    assert_eq!(out[1..], ["false", "1"], "no finalizer ran (LuaJIT has no newproxy, Luau runs none)");
}

/// Library objects that several instances can hold (a named channel is one object for all)
/// refuse `rawset`; a script's own tables do not.
#[test]
fn rawset_refuses_library_objects_but_not_the_scripts_own_tables() {
    let out = output(
        r#"
        print(pcall(rawset, Channel.new(), "send", print))
        print(pcall(rawset, Promise.resolve(), "andThen", print))
        local t = {}
        rawset(t, "a", 1)
        rawset(_G, "g", 2)
        print(t.a, g)
        "#,
        2,
    );
    assert!(out[0].starts_with("false\t") && out[0].contains("read-only"), "{out:?}");
    assert!(out[1].starts_with("false\t"), "{out:?}");
    assert_eq!(out[2], "1\t2");
}

/// The shared libraries still read and iterate as usual.
#[test]
fn read_only_libraries_still_iterate_and_index() {
    let out = output(
        r#"
        local n = 0
        for k, v in pairs(string) do if type(v) == "function" then n = n + 1 end end
        print(n > 10, string.format("%d", 3), #Promise.Status == 0)
        local kinds = {}
        for k in pairs(Promise.Status) do kinds[#kinds + 1] = k end
        table.sort(kinds)
        print(table.concat(kinds, ","))
        print(pcall(function() string.upper = nil end))
        "#,
        2,
    );
    assert_eq!(out[0], "true\t3\ttrue");
    assert_eq!(out[1], "Cancelled,Rejected,Resolved,Started");
    assert!(out[2].starts_with("false\t") && out[2].contains("read-only"), "{out:?}");
}

// Reports: whatever a script raises or prints becomes a report or a line, and its task ends.

/// An error whose message is not UTF-8 is reported (lossily) and its task no longer counts as
/// live; `print` of bytes that are not UTF-8 prints them lossily instead of raising.
#[test]
fn bytes_that_are_not_utf8_are_reported_and_printed_lossily() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/bytes.lua",
        r#"
        print("\255 printed")
        task.spawn(function() error("\255 spawned") end)
        task.wait()
        error("\255 bad byte")
        "#,
    );
    run(&mut app, 3);
    assert_eq!(printed(&app), ["\u{FFFD} printed"]);
    let errs = errors(&app);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].message, "scripts/bytes.lua:3: \u{FFFD} spawned");
    assert_eq!(errs[1].message, "scripts/bytes.lua:5: \u{FFFD} bad byte");
    if !LUAU {
        // Luau keeps no stack in a coroutine that died of an error.
        assert!(errs[1].traceback.contains("scripts/bytes.lua:5"), "{}", errs[1].traceback);
    }
    assert_eq!(live_tasks(&app), 0, "the failed tasks are gone");
}

/// An error object whose `__tostring` raises is reported, and never escapes `task.spawn` into the
/// task that spawned it.
#[test]
fn an_error_object_whose_tostring_raises_stays_in_its_task() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/obj.lua",
        r#"
        local bad = setmetatable({}, { __tostring = function() error("tostring raised") end })
        task.spawn(function() error(bad) end)
        print("the spawner goes on")
        task.spawn(function() task.wait() error(bad) end)
        task.wait()
        task.wait()
        print("still going")
        error(bad)
        "#,
    );
    run(&mut app, 4);
    assert_eq!(printed(&app), ["the spawner goes on", "still going"]);
    let errs = errors(&app);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    for e in &errs {
        assert_eq!(e.message, "(error object: its __tostring raised)", "{errs:#?}");
        assert_eq!(e.kind, ScriptErrorKind::Runtime);
    }
    assert_eq!(live_tasks(&app), 0);
}

/// A `__close` that raises while its task is cancelled (by `task.cancel`, or by its entity going
/// away) is reported with a traceback that shows where the task stood. To-be-closed variables
/// are Lua 5.4's alone.
#[cfg(feature = "lua54")]
#[test]
fn a_close_error_during_cancellation_is_reported_with_a_traceback() {
    let mut app = create_app();
    let e = spawn_script(
        &mut app,
        "scripts/close.lua",
        r#"
        local function hold(what)
          local x <close> = setmetatable({}, { __close = function() error(what .. " close failed") end })
          task.wait(100)
        end
        local co = task.spawn(hold, "cancelled")
        task.wait()
        task.cancel(co)
        hold("despawned")
        "#,
    );
    run(&mut app, 3);
    app.world_mut().despawn(e);
    run(&mut app, 2);
    let errs = errors(&app);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].message, "scripts/close.lua:3: cancelled close failed");
    assert_eq!(errs[1].message, "scripts/close.lua:3: despawned close failed");
    for e in &errs {
        assert!(e.traceback.starts_with("stack traceback:"), "{errs:#?}");
        assert!(e.traceback.contains("scripts/close.lua:4: in"), "where the task stood: {errs:#?}");
    }
}
