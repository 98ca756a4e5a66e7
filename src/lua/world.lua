-- The Lua side of `entity:get` / `entity:set` (and `world.getResource` / `world.setResource`):
-- paths are compiled by Rust once and cached here by their string, so a path in a loop costs a
-- table lookup; vectors cross as plain numbers, so Rust never builds or reads a vector table
-- field by field (under a memory limit each of those would be a protected call).
--
-- Rust's raw functions return a tag first: `1` a value (the next result), `2`..`5` a `Vec2`,
-- `Vec3`, `Vec4` or `Quat` (its numbers follow), `0` an error (its message follows), `6` "give me
-- the value as a table" (a vector passed where the path holds something else).
local raw, vectors = ...

local type, error, setmetatable, getmetatable, tostring =
  type, error, setmetatable, getmetatable, tostring
local compile, raw_get, raw_set, check_self = raw.compile, raw.get, raw.set, raw.check_self
local raw_get_transform, raw_set_transform, next = raw.get_transform, raw.set_transform, next
local raw_get_resource, raw_set_resource = raw.get_resource, raw.set_resource
-- Lua 5.4: `entity:get` / `entity:set` are C functions (`src/world/fast.rs`) that do the typed
-- `Transform` paths themselves and call the `get` and `set` below for everything else, so these
-- raise one level further from the script (`VIA_C`). `typed[path]` is the C functions' number for
-- compiled paths that have one. In the other flavours `get` and `set` are the methods.
local typed = raw.typed
local VIA_C = raw.via_c and 1 or 0
local Vec2, Vec3, Vec4, Quat = vectors.Vec2.class, vectors.Vec3.class, vectors.Vec4.class, vectors.Quat.class
local M2, M3, M4, MQ = vectors.Vec2.mt, vectors.Vec3.mt, vectors.Vec4.mt, vectors.Quat.mt
local KEY = vectors.key -- `v[KEY]` is a vector's class (see lua/vector.lua)

local ids = {} -- path string -> compiled path number (numbers from `max_cached` on are not kept)
local max_cached = raw.max_cached
local WHOLE = 1 -- `typed[path]` of a whole `Transform` (see `set_transform`)

--- The number of `path` (compiled on first use), or raises `bad argument #1 to 'fname'` (or
--- the error for a bad `self`, checked first as Lua checks arguments in order).
local function path_id(path, fname, method, self)
  local level = 3
  if method then
    level = 3 + VIA_C
    local message = check_self(self, fname)
    if message then error(message, level) end
  end
  if type(path) ~= "string" then
    error("bad argument #1 to '" .. fname .. "' (string expected, got " .. type(path) .. ")", level)
  end
  local id, code = compile(path, fname)
  if not id then error(code, level) end
  if id < max_cached then
    ids[path] = id
    if code then typed[path] = code end
  end
  return id
end

--- A whole `Transform` from its ten numbers.
local function transform(a, b, c, d, e, f, g, h, i, j)
  return {
    translation = setmetatable({ x = a, y = b, z = c }, M3),
    rotation = setmetatable({ x = d, y = e, z = f, w = g }, MQ),
    scale = setmetatable({ x = h, y = i, z = j }, M3),
  }
end

--- Turns a raw result into the value a script sees (`level`: where an error is blamed, counted
--- from the caller of `value`); `self` is the entity a whole `Transform` (tag 7) is read from.
local function value(level, tag, a, b, c, d, self)
  if tag == 1 then return a end
  if tag == 3 then return setmetatable({ x = a, y = b, z = c }, M3) end
  if tag == 5 then return setmetatable({ x = a, y = b, z = c, w = d }, MQ) end
  if tag == 2 then return setmetatable({ x = a, y = b }, M2) end
  if tag == 4 then return setmetatable({ x = a, y = b, z = c, w = d }, M4) end
  if tag == 7 then return transform(raw_get_transform(self)) end
  error(a, level + 1)
end

-- `get` and `set`: the methods in LuaJIT and Luau, where they are the hot paths (one Lua function
-- each, the common cases inline); on Lua 5.4 what the C methods hand every other call to.
local function get(self, path)
  local tag, a, b, c, d = raw_get(self, ids[path] or path_id(path, "get", true, self))
  if tag == 3 then return setmetatable({ x = a, y = b, z = c }, M3) end
  if tag == 1 then return a end
  local v = value(2 + VIA_C, tag, a, b, c, d, self)
  return v
end

--- Calls `write(target, id, tag, ...)` with `v` as it crosses to Rust; returns what to raise.
local function put(write, target, id, v)
  local kind, message = type(v) == "table" and v[KEY], nil
  if kind == Vec3 then
    message = write(target, id, 3, v.x, v.y, v.z)
  elseif kind == Quat then
    message = write(target, id, 5, v.x, v.y, v.z, v.w)
  elseif kind == Vec2 then
    message = write(target, id, 2, v.x, v.y)
  elseif kind == Vec4 then
    message = write(target, id, 4, v.x, v.y, v.z, v.w)
  else
    message = write(target, id, 1, v)
  end
  if message == 6 then message = write(target, id, 1, v) end
  return message
end

--- `entity:set` of a whole `Transform` whose table names only `translation`, `rotation` and
--- `scale`, each a vector of its class: their numbers cross to Rust in one call (Rust walking the
--- table would cost a protected call per field); `6` means "not that case: set it the general
--- way" (as does any other table here).
local function set_transform(self, id, t)
  local tr, ro, sc
  for k, v in next, t do
    if k == "translation" then tr = v
    elseif k == "rotation" then ro = v
    elseif k == "scale" then sc = v
    else return 6 end
  end
  local given, tx, ty, tz, rx, ry, rz, rw, sx, sy, sz = 0
  if tr ~= nil then
    if getmetatable(tr) ~= Vec3 then return 6 end
    given, tx, ty, tz = 1, tr.x, tr.y, tr.z
  end
  if ro ~= nil then
    if getmetatable(ro) ~= Quat then return 6 end
    given, rx, ry, rz, rw = given + 2, ro.x, ro.y, ro.z, ro.w
  end
  if sc ~= nil then
    if getmetatable(sc) ~= Vec3 then return 6 end
    given, sx, sy, sz = given + 4, sc.x, sc.y, sc.z
  end
  return raw_set_transform(self, id, given, tx, ty, tz, rx, ry, rz, rw, sx, sy, sz)
end

local function set(self, path, v)
  local id = ids[path] or path_id(path, "set", true, self)
  local message
  if type(v) == "table" and v[KEY] == Vec3 then
    message = raw_set(self, id, 3, v.x, v.y, v.z)
    if message == nil then return end
    if message == 6 then message = raw_set(self, id, 1, v) end
  elseif typed[path] == WHOLE and type(v) == "table" and v[KEY] == nil then
    message = set_transform(self, id, v)
    if message == nil then return end
    if message == 6 then message = raw_set(self, id, 1, v) end
  else
    message = put(raw_set, self, id, v)
  end
  if message ~= nil then error(message, 2 + VIA_C) end
end

local function get_resource(path)
  local v = value(2, raw_get_resource(ids[path] or path_id(path, "getResource")))
  return v
end

local function set_resource(path, v)
  local message = put(raw_set_resource, nil, ids[path] or path_id(path, "setResource"), v)
  if message ~= nil then error(message, 2) end
end

-- Entity values by id, shared by queries and the hierarchy (entity values hold no state, so
-- sharing one is safe). Held strongly, so a query loop over the same entities every frame makes
-- no new values (a weak table lost them at every collection and made them all again); ids of
-- despawned entities are dropped by starting over once the table holds twice as many values as
-- the world has entities (plus a margin), which the query functions report.
local entities, held, world_entities = {}, 0, 0
local raw_entity, take, raw_query, raw_count = raw.entity, raw.take, raw.query, raw.count

local function entity_of(id)
  local e = entities[id]
  if e == nil then
    if held > 2 * world_entities + 1024 then
      entities, held = {}, 0
    end
    e = raw_entity(id)
    entities[id] = e
    held = held + 1
  end
  return e
end

--- An iterator over the entities whose ids `matched` holds (`n` of them), taken in chunks.
local function iterate(matched, n)
  local chunk, len, pos, from = nil, 0, 0, 0
  return function()
    pos = pos + 1
    if pos > len then
      if from >= n then return nil end
      chunk = { take(matched, from) }
      len, pos = #chunk, 1
      if len == 0 then return nil end
      from = from + len
    end
    local id = chunk[pos]
    local e = entities[id]
    if e ~= nil then return e end
    return entity_of(id)
  end
end

local function query(...)
  local matched, n, total = raw_query(...)
  if matched == false then error(n, 2) end
  world_entities = total
  return iterate(matched, n)
end

local function count(...)
  local n, message = raw_count(...)
  if n == false then error(message, 2) end
  return n
end

local raw_parent, raw_children = raw.parent, raw.children

local function parent(self)
  local tag, id = raw_parent(self)
  if tag == 0 then error(id, 2) end
  if id == nil then return nil end
  return entity_of(id)
end

local function children(self)
  local tag, matched = raw_children(self)
  if tag == 0 then error(matched, 2) end
  local list, i = {}, 0
  for e in iterate(matched, math.huge) do
    i = i + 1
    list[i] = e
  end
  return list
end

return { query = query, count = count, parent = parent, children = children, get = get, set = set, get_resource = get_resource, set_resource = set_resource }
