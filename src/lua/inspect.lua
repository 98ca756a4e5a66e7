-- The task inspector's Lua half: what a task waits on and where it last yielded, worked out only
-- when something asks (`LuaRuntime::task_list`, `task.list`, `task.info`), from what the step keeps
-- anyway (the registration, the parked slot, the frame lists) and from the suspended thread's stack.
-- The step never calls into this file.
--
-- Called once with `deps` (runtime.rs builds it); returns `inspect(key) -> table | nil`.
local deps = ...

local state = deps.state
local describe_channel = deps.describe_channel
local getinfo, dinfo = deps.getinfo, deps.info -- Lua 5.x and LuaJIT; Luau
local wait_until = deps.wait_until

local type, pcall = type, pcall
local string_sub, string_find = string.sub, string.find

local INTERNAL = "bevy_lua_coroutines/" -- the crate's own chunks (`=` dropped: Luau drops it)

--- Function, source, current line, name and `linedefined` of the frame `level` of `co` (nil past
--- the last frame).
local function frame(co, level)
  if getinfo ~= nil then
    local ok, i = pcall(getinfo, co, level, "Slnf")
    if not ok or i == nil then return nil end
    return i.func, i.source, i.currentline, i.name, i.linedefined, i.what
  end
  if dinfo ~= nil then
    local ok, s, l, n, f = pcall(dinfo, co, level, "slnf")
    if not ok or s == nil then return nil end
    local defined = nil
    if type(f) == "function" then
      local ok_line, at = pcall(dinfo, f, "l") -- of a function, "l" is the line it is defined on
      if ok_line then defined = at end
    end
    return f, s, l, n, defined, s == "[C]" and "C" or "Lua"
  end
  return nil
end

--- Where `co` stands: the innermost frame of script code (`file`, `line`, `func`), and whether it
--- waits inside `task.waitUntil` or a stream.
local function where(co, r)
  for level = 0, 250 do
    local f, src, line, name, linedefined, what = frame(co, level)
    if src == nil then break end
    if f == wait_until then r.predicate = true end
    if type(src) == "string" then
      local first = string_sub(src, 1, 1)
      if first == "@" or first == "=" then src = string_sub(src, 2) end
      if string_sub(src, 1, #INTERNAL) == INTERNAL then
        if string_find(src, "stream.lua", 1, true) then r.stream = true end
      elseif what ~= "C" and src ~= "[C]" and r.file == nil and line and line > 0 then
        r.file = src
        r.line = line
        if type(name) == "string" and name ~= "" then
          r.func = name
        elseif linedefined == 1 then
          r.func = "main chunk" -- the chunk runs in a function the loader wraps it in, on line 1
        else
          r.func = "anonymous function"
        end
      end
    end
  end
end

--- What task `key` waits on and where it last yielded: a table with `kind` (nil: Rust looks for
--- its timer), details by kind (`frames`, `channel`, `status`), `forever`, `file`, `line`,
--- `func`, `reg`; nil if `key` is not a task.
local function inspect(key)
  local co, reg, how, extra = state(key)
  if co == nil then return nil end
  local r = { reg = reg }
  if how ~= "running" then where(co, r) end
  if how == "running" or how == "ready" then
    r.kind = how
  elseif how == "park" then
    local kind, channel, forever = describe_channel(extra)
    if kind ~= nil then
      r.kind, r.channel, r.forever = kind, channel, forever
    elseif type(extra.promise) == "table" then
      r.kind, r.status = "promise", extra.promise._status
    else
      r.kind = "parked"
    end
  elseif how == "frames" then
    r.kind, r.frames = "frames", extra
  elseif reg == nil then
    r.kind = "none"
  end
  if r.predicate and (r.kind == "frames" or r.kind == "ready") then r.kind = "predicate" end
  if r.stream and r.kind ~= "running" and r.kind ~= "ready" then
    r.via, r.kind = r.kind, "stream"
  end
  r.predicate, r.stream = nil, nil
  return r
end

return inspect
