-- Builds the shared, read-only base every script instance reads through, and the instance
-- environments themselves. Runs once when the VM is created.
--
-- Library tables become read-only proxies; the VM's globals become a read-only proxy over the same
-- store, so neither a script nor a chunk it `load`s can change what another instance sees.
local api, opts, emit = ...

local type, error, tostring, select, setmetatable, rawset, pairs, next =
  type, error, tostring, select, setmetatable, rawset, pairs, next
local table_concat = table.concat
local raw_load = load

local protected = setmetatable({}, { __mode = "k" })

local function readonly_error(_, key)
  error("attempt to modify read-only table (field '" .. tostring(key) .. "')", 2)
end

--- A read-only view of `t`: reads and `pairs` see `t`, writes raise.
local function readonly(t)
  local proxy = setmetatable({}, {
    __index = t,
    __newindex = readonly_error,
    __pairs = function() return next, t, nil end,
    __len = function() return #t end,
    __metatable = false,
  })
  protected[proxy] = true
  return proxy
end

--- A read-only view of `t` whose nested tables are read-only views too (`Promise.Status`,
--- `Promise.Error.Kind`). A nested table keeps its own lookups for names it lacks (an enum raises).
local function readonly_tree(t)
  local view = {}
  for k, v in pairs(t) do
    if type(v) == "table" then v = readonly_tree(v) end
    view[k] = v
  end
  if getmetatable(t) ~= nil then setmetatable(view, { __index = t }) end
  return readonly(view)
end

local store = {}
local globals = _G

-- What every flavour and mode shares.
for _, name in ipairs({
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
  "rawlen", "select", "setmetatable", "tonumber", "tostring", "type", "xpcall", "unpack",
  "_VERSION", "gcinfo", "newproxy", "typeof", "bit32",
}) do
  store[name] = globals[name]
end

--- `rawset`, refusing the read-only tables (the error names the caller's line).
function store.rawset(t, k, v)
  if protected[t] then error("attempt to modify read-only table (field '" .. tostring(k) .. "')", 2) end
  return rawset(t, k, v)
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

local libs = { "string", "table", "math", "utf8", "bit", "buffer", "vector" }
for _, name in ipairs(libs) do
  if globals[name] then store[name] = readonly(globals[name]) end
end

if opts.all then
  for _, name in ipairs({ "io", "os", "debug", "package", "dofile", "loadfile", "jit", "ffi" }) do
    local v = globals[name]
    if type(v) == "table" then v = readonly(v) end
    store[name] = v
  end
else
  local os = globals.os
  if os then
    store.os = readonly({ clock = os.clock, date = os.date, difftime = os.difftime, time = os.time })
  end
  local debug = globals.debug
  if debug then store.debug = readonly({ traceback = debug.traceback }) end
end

store.require = api.require -- modules from the assets folder, in every mode
store.task = readonly(api.task)
store.time = readonly(api.time)
store.coroutine = readonly(api.coroutine)
store.sleep = api.sleep
store.spawn = api.spawn
store.Promise = readonly_tree(api.promise.Promise)
store.async = api.promise.async
store.await = api.promise.await
store.asyncTry = api.promise.asyncTry
local channel_api = {}
for k, v in pairs(api.channel.Channel) do channel_api[k] = v end
channel_api._external = nil -- Rust's alone: an `ext` written in Lua would run outside the budget
channel_api.named = api.rust_channels.named
store.Channel = readonly_tree(channel_api)
store.Messages = readonly(api.rust_channels.Messages)
store.Stream = readonly_tree(api.stream.Stream)
for name, class in pairs(api.vector) do store[name] = class end -- Vec2, Vec3, Vec4, Quat (read-only)

-- The string metatable is shared by every string: hide it.
local string_mt = getmetatable("")
if string_mt then string_mt.__metatable = false end

local base = readonly(store)
store._G = base

local env_mt = { __index = store, __metatable = false }

--- A fresh environment: its own globals over the shared store. An instance's (`entity` given)
--- has `entity` and `state` (`state` kept from before a reload, or new); a module's has neither.
local function new_env(entity, state)
  local env = setmetatable({}, env_mt)
  env._G = env
  if entity ~= nil then
    env.state = state or {}
    env.entity = entity
  end
  if raw_load then
    if opts.all then
      env.load = function(chunk, name, mode, e) return raw_load(chunk, name, mode, e or env) end
    else
      env.load = function(chunk, name, _, e) return raw_load(chunk, name, "t", e or env) end
    end
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
    store[name] = value
    return
  end
  if builtin[module] then error("'" .. module .. "' is built in and cannot be extended", 0) end
  local real = modules[module]
  if real == nil then
    if store[module] ~= nil then error("'" .. module .. "' is already defined and is not a module", 0) end
    real = {}
    modules[module] = real
    store[module] = readonly(real)
  end
  real[name] = value
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
