-- Builds the shared, read-only base every script instance reads through, and the instance
-- environments themselves. Runs once when the VM is created.
--
-- Library tables become read-only views; the VM's globals become a read-only view over the same
-- store, so neither a script nor a chunk it `load`s can change what another instance sees (the
-- README's "Protection" section says what this guarantees, and `tests/sandbox.rs` tries it).
local api, opts, emit = ...

local type, error, tostring, select, setmetatable, getmetatable, rawset, rawget, pairs, next, pcall =
  type, error, tostring, select, setmetatable, getmetatable, rawset, rawget, pairs, next, pcall
local table_concat = table.concat
local raw_load = load

-- Every table a script reaches through the base is a *view*: an empty proxy, shared by every
-- instance, whose reads go to a copy that only this file writes, whose writes raise, and whose
-- iteration (`pairs`, Luau's generalized `for`) yields the copy's keys and values without ever
-- handing out the copy. A table inside a view is a view too (one per table, reused), so no read,
-- iteration or metatable query of the base yields a writable shared table. Reads cost what they
-- cost before: a view's `__index` is a plain table.
local protected = setmetatable({}, { __mode = "k" }) -- view -> its `pairs` triple maker
local views = {}                                     -- table -> its view

local function readonly_error(_, key)
  error("attempt to modify read-only table (field '" .. tostring(key) .. "')", 2)
end

--- A view over `copy`, a table only this file writes, whose values are views already.
local function view_of(copy)
  local proxy = {}
  local function iterate(_, key) return next(copy, key) end
  local function iter() return iterate, proxy, nil end
  setmetatable(proxy, {
    __index = copy,
    __newindex = readonly_error,
    __pairs = iter,
    __iter = iter,
    __len = function() return #copy end,
    __metatable = false,
  })
  protected[proxy] = iter
  return proxy
end

local readonly

--- `v`, or its read-only view if it is a table.
local function shareable(v)
  if type(v) == "table" then return readonly(v) end
  return v
end

--- The read-only view of `t` (the same view every time): reads and iteration see what `t` held
--- when the view was made, its tables as views; writes raise. A name `t` lacks goes to `t`'s own
--- `__index` (in the libraries, only enums that raise for unknown names, at the script's line).
function readonly(t)
  if protected[t] then return t end
  local view = views[t]
  if view ~= nil then return view end
  local copy = {}
  view = view_of(copy)
  views[t] = view
  for k, v in next, t do copy[k] = shareable(v) end
  if getmetatable(t) ~= nil then
    setmetatable(copy, { __index = t })
  end
  return view
end

--- Whether scripts may not write `t` raw: a view, or a library object (a channel, a promise, a
--- stream: their metatables are hidden behind a name). A named channel is one object shared by
--- every instance, so a raw field on it would change what the others call.
local function locked(t)
  return protected[t] ~= nil or type(getmetatable(t)) == "string"
end

local function refuse_locked(t, n, fname)
  if type(t) == "table" and locked(t) then
    error("bad argument #" .. n .. " to '" .. fname .. "' (table is read-only)", 3)
  end
end

-- The base's copy: written only through `put`, so every table in it is a view.
local store = {}
local function put(name, value) store[name] = shareable(value) end
local globals = _G

-- What every flavour and mode shares.
for _, name in ipairs({
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
  "rawlen", "select", "setmetatable", "tonumber", "tostring", "type", "xpcall", "unpack",
  "_VERSION", "gcinfo", "newproxy", "typeof", "bit32",
}) do
  put(name, globals[name])
end

--- `rawset`, refusing the read-only tables and library objects (the error names the caller's line).
function store.rawset(t, k, v)
  if type(t) == "table" and locked(t) then
    error("attempt to modify read-only table (field '" .. tostring(k) .. "')", 2)
  end
  return rawset(t, k, v)
end

-- LuaJIT and Luau: `pairs` ignores `__pairs`, so it is taught about views (and nothing else).
local honours_pairs = false
pairs(setmetatable({}, { __pairs = function() honours_pairs = true return next, {}, nil end }))
if not honours_pairs then
  local raw_pairs = pairs
  function store.pairs(t)
    local iter = protected[t]
    if iter ~= nil then return iter() end
    return raw_pairs(t)
  end
end

-- LuaJIT and Luau: the table library writes raw, past a view's `__newindex`, so its writers
-- refuse views and library objects as `rawset` does.
local table_lib = {}
for k, v in pairs(globals.table) do table_lib[k] = v end
local probe = setmetatable({}, { __newindex = function() error("read-only") end })
if pcall(table.insert, probe, 1) then
  for _, name in ipairs({ "insert", "remove", "sort", "clear" }) do
    local raw = table_lib[name]
    if raw then
      table_lib[name] = function(t, ...)
        refuse_locked(t, 1, name)
        return raw(t, ...)
      end
    end
  end
  local raw_move = table_lib.move
  if raw_move then
    table_lib.move = function(a1, f, e, t, a2)
      refuse_locked(a2 == nil and a1 or a2, a2 == nil and 1 or 5, "move")
      return raw_move(a1, f, e, t, a2)
    end
  end
end
put("table", table_lib)

if not opts.all then
  -- A finalizer runs on whichever thread is collecting, which may be another instance's task
  -- (it could capture that thread, or act in that instance's name): scripts get none.
  local raw_setmetatable = setmetatable
  function store.setmetatable(t, mt)
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("bad argument #2 to 'setmetatable' (finalizers (__gc) are not available to scripts)", 2)
    end
    return raw_setmetatable(t, mt)
  end
  -- LuaJIT runs `__gc` of a `newproxy(true)` userdata; Luau never runs one from Lua.
  if globals.jit ~= nil then store.newproxy = nil end
end

--- `collectgarbage`, limited to the options that cannot stop the collector.
local raw_collectgarbage = collectgarbage
local gc_options = { collect = true, count = true, step = true, isrunning = true }
function store.collectgarbage(opt, ...)
  if opt ~= nil and not gc_options[opt] and not opts.all then
    error("bad argument #1 to 'collectgarbage' (option '" .. tostring(opt) .. "' is not allowed)", 2)
  end
  return raw_collectgarbage(opt, ...)
end

--- `print`: one line per call, arguments joined by tabs.
function store.print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  emit(table_concat(parts, "\t"))
end

for _, name in ipairs({ "string", "math", "utf8", "bit", "buffer", "vector" }) do
  put(name, globals[name])
end

if opts.all then
  for _, name in ipairs({ "io", "os", "debug", "package", "dofile", "loadfile", "jit", "ffi" }) do
    put(name, globals[name])
  end
else
  local os = globals.os
  if os then put("os", { clock = os.clock, date = os.date, difftime = os.difftime, time = os.time }) end
  local debug = globals.debug
  if debug then put("debug", { traceback = debug.traceback }) end
end

put("task", api.task)
put("time", api.time)
put("coroutine", api.coroutine)
put("xpcall", api.xpcall) -- (a handler is not called once the budget is spent: see lua/task.lua)
put("sleep", api.sleep)
put("spawn", api.spawn)
put("Promise", api.promise.Promise)
put("async", api.promise.async)
put("await", api.promise.await)
put("asyncTry", api.promise.asyncTry)
local channel_api = {}
for k, v in pairs(api.channel.Channel) do channel_api[k] = v end
channel_api._external = nil -- Rust's alone: an `ext` written in Lua would run outside the budget
for k, v in pairs(api.fields.Channel or {}) do channel_api[k] = v end -- `named`: typed channels
put("Channel", channel_api)
-- What the extensions built in (`require`, `Messages`, `Stream`: see `Base` in runtime.rs).
for name, value in pairs(api.builtins) do put(name, value) end
-- Classes the extensions built in (Vec2, Vec3, Vec4, Quat): already read-only (no raw fields, a
-- hidden metatable), and they must stay themselves, since `getmetatable(v) == Vec3` names a
-- vector's class. Marked protected, so `rawset` and the table library refuse them and `pairs`
-- lists nothing.
local nothing = view_of({})
local function no_fields() return next, nothing, nil end
for name, class in pairs(api.classes) do
  protected[class] = no_fields
  store[name] = class
end

-- The string metatable is shared by every string: hide it.
local string_mt = getmetatable("")
if string_mt then string_mt.__metatable = false end

local base = view_of(store)
store._G = base

local env_mt = { __index = store, __metatable = false }

--- A fresh environment: its own globals over the shared store. An instance's (`entity` given)
--- has `entity` and `state` (`state` kept from before a reload, or new); a module's has neither.
local function new_env(entity, state)
  -- Made with room for the four fields an instance's environment gets, so filling them does not
  -- grow it three times (a field left nil is absent to scripts, as if never made).
  local env = setmetatable({ _G = false, state = false, entity = false, load = false }, env_mt)
  env._G = env
  if entity ~= nil then
    env.state = state or {}
    env.entity = entity
  else
    env.state, env.entity = nil, nil
  end
  if not raw_load then
    env.load = nil
  elseif opts.all then
    env.load = function(chunk, name, mode, e) return raw_load(chunk, name, mode, e or env) end
  else
    env.load = function(chunk, name, _, e) return raw_load(chunk, name, "t", e or env) end
  end
  return env
end

local builtin = {}
for name in pairs(store) do builtin[name] = true end
local modules = {}

--- Defines `name` ("fn") or `module.name` ("db.query") in the shared base, for Rust functions a
--- game registers. Module tables are read-only for scripts. Built-in names cannot be replaced.
local function define(path, value)
  local module, name = path:match("^([%a_][%w_]*)%.([%a_][%w_]*)$")
  if module == nil then
    name = path:match("^[%a_][%w_]*$")
    if name == nil then error("invalid Lua name '" .. path .. "' (use 'name' or 'module.name')", 0) end
    if builtin[name] then error("'" .. name .. "' is built in and cannot be replaced", 0) end
    put(name, value)
    return
  end
  if builtin[module] then error("'" .. module .. "' is built in and cannot be extended", 0) end
  local real = modules[module]
  if real == nil then
    if store[module] ~= nil then error("'" .. module .. "' is already defined and is not a module", 0) end
    real = {}
    modules[module] = real
    store[module] = view_of(real)
  end
  real[name] = shareable(value)
end

--- The task that follows a reload's top-level chunk: it calls the new code's `onReload()`, if
--- the chunk defined one.
local function on_reload(env)
  return function()
    local f = rawget(env, "onReload")
    if f ~= nil then return f() end
  end
end

return { base = base, new_env = new_env, define = define, on_reload = on_reload }
