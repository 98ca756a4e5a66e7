-- One vector class (`Vec2`, `Vec3` or `Vec4`), loaded once per class when the VM is made.
--
-- This file is a template: `src/world/vector.rs` expands `@NAME` to the class name, `{{expr}}` to
-- `expr` once per field (`$` standing for the field) joined by ", ", and `{{+ expr}}`, `{{or expr}}` and
-- `{{and expr}}` joined by that operator, so every class gets straight-line code with no loop over its fields.
--
-- A vector is a plain Lua table `{ x = .., y = .., z = .. }` whose metatable is shared by every
-- vector of the class (made here once): creating one is one table constructor, and reading `v.x`
-- is a raw field read. Tables, not userdata, because every operator and method runs in Lua (or,
-- on Lua 5.4, in C over the same tables: `src/world/vector_ops.rs`): a userdata's fields and
-- metamethods would each be a call into Rust. The metatable's `__metatable`
-- is the class, so `getmetatable(v) == Vec3` tells a vector's class, and no script can reach the
-- shared metatable to change it.
local bad, KEY = ...

local setmetatable, getmetatable, type, error, tostring, ipairs, upper =
  setmetatable, getmetatable, type, error, tostring, ipairs, string.upper
local sqrt, abs, min, max, format = math.sqrt, math.abs, math.min, math.max, string.format

local statics = {} -- `new` and the other class functions, read through the class
local Class = setmetatable({}, {
  __index = statics,
  __newindex = function(_, key)
    error("attempt to modify read-only table (field '" .. tostring(key) .. "')", 2)
  end,
  __tostring = function() return "@NAME" end,
  __metatable = false,
})
-- `v[KEY]` is the class of any vector (`KEY` is private to the vector modules and the world's Lua
-- side): a field read, cheaper than `getmetatable` under the count hook.
local methods = { [KEY] = Class }
local mt = { __index = methods, __metatable = Class }

local function new({{$}})
  return setmetatable({ {{$ = $}} }, mt)
end

--- Raises `bad argument` unless `v` is a vector of this class.
local function check(v, n, fname)
  if getmetatable(v) ~= Class then bad(n, fname, "@NAME", v, 3) end
  return v
end

local function number(v, n, fname)
  if type(v) ~= "number" then bad(n, fname, "number", v, 3) end
  return v
end

--- `@NAME.new(...)`: a missing component is 0.
function statics.new({{$}})
  if {{or type($) ~= "number"}} then
    local args = { {{$}} }
    for i = 1, {{+ 1}} do
      local v = args[i]
      if v ~= nil and type(v) ~= "number" then bad(i, "new", "number", v, 2) end
    end
    return setmetatable({ {{$ = $ or 0}} }, mt)
  end
  return setmetatable({ {{$ = $}} }, mt)
end

-- Constants are made fresh on each read, so no script can change another's `Vec3.ZERO`.
local constants = {
  ZERO = function() return new({{0}}) end,
  ONE = function() return new({{1}}) end,
}
for _, field in ipairs({ {{"$"}} }) do
  constants[upper(field)] = function()
    local v = new({{0}})
    v[field] = 1
    return v
  end
end
setmetatable(statics, { __index = function(_, key)
  local make = constants[key]
  if make then return make() end
end })

--- The operand that is not a vector of this class or a number, as `bad argument` (the caller of
--- the metamethod is the script line that used the operator; `extra` more frames when the
--- metamethod was called by another function, as the C operators of Lua 5.4 do).
local function operand(a, b, op, extra)
  local level = 3 + (extra or 0)
  if getmetatable(a) ~= Class and type(a) ~= "number" then bad(1, op, "@NAME or number", a, level) end
  bad(2, op, "@NAME or number", b, level)
end

-- Operators (on Lua 5.4, `src/world/vector_ops.rs` puts C functions in front of these and `new`,
-- which call them for every case they do not do themselves). If one operand is a number, the other has this metamethod, so it is a vector of
-- this class (the shared metatable is hidden, so nothing else can hold it): only the
-- vector-with-vector case checks both. Results are made inline, without a call to `new`.
mt.__add = function(a, b, extra)
  local ta, tb = type(a), type(b)
  if tb == "number" then return setmetatable({ {{$ = a.$ + b}} }, mt) end
  if ta == "number" then return setmetatable({ {{$ = a + b.$}} }, mt) end
  if ta == "table" and tb == "table" and a[KEY] == Class and b[KEY] == Class then
    return setmetatable({ {{$ = a.$ + b.$}} }, mt)
  end
  operand(a, b, "__add", extra)
end

mt.__sub = function(a, b, extra)
  local ta, tb = type(a), type(b)
  if tb == "number" then return setmetatable({ {{$ = a.$ - b}} }, mt) end
  if ta == "number" then return setmetatable({ {{$ = a - b.$}} }, mt) end
  if ta == "table" and tb == "table" and a[KEY] == Class and b[KEY] == Class then
    return setmetatable({ {{$ = a.$ - b.$}} }, mt)
  end
  operand(a, b, "__sub", extra)
end

mt.__mul = function(a, b, extra)
  local ta, tb = type(a), type(b)
  if tb == "number" then return setmetatable({ {{$ = a.$ * b}} }, mt) end
  if ta == "number" then return setmetatable({ {{$ = a * b.$}} }, mt) end
  if ta == "table" and tb == "table" and a[KEY] == Class and b[KEY] == Class then
    return setmetatable({ {{$ = a.$ * b.$}} }, mt)
  end
  operand(a, b, "__mul", extra)
end

mt.__div = function(a, b, extra)
  local ta, tb = type(a), type(b)
  if tb == "number" then return setmetatable({ {{$ = a.$ / b}} }, mt) end
  if ta == "number" then return setmetatable({ {{$ = a / b.$}} }, mt) end
  if ta == "table" and tb == "table" and a[KEY] == Class and b[KEY] == Class then
    return setmetatable({ {{$ = a.$ / b.$}} }, mt)
  end
  operand(a, b, "__div", extra)
end

mt.__unm = function(a) return new({{-a.$}}) end

mt.__eq = function(a, b)
  return getmetatable(a) == getmetatable(b) and {{and a.$ == b.$}}
end

mt.__tostring = function(v)
  return format("@NAME({{%.7g}})", {{v.$}})
end

function methods:length() return sqrt({{+ self.$ * self.$}}) end
function methods:lengthSquared() return {{+ self.$ * self.$}} end

function methods:normalize()
  local len = sqrt({{+ self.$ * self.$}})
  if len == 0 then return new({{0}}) end
  return new({{self.$ / len}})
end

function methods:dot(o)
  check(o, 1, "dot")
  return {{+ self.$ * o.$}}
end

function methods:distance(o)
  check(o, 1, "distance")
  local {{d$}} = {{o.$ - self.$}}
  return sqrt({{+ d$ * d$}})
end

function methods:lerp(o, t)
  check(o, 1, "lerp")
  number(t, 2, "lerp")
  return new({{self.$ + (o.$ - self.$) * t}})
end

function methods:min(o)
  check(o, 1, "min")
  return new({{min(self.$, o.$)}})
end

function methods:max(o)
  check(o, 1, "max")
  return new({{max(self.$, o.$)}})
end

function methods:abs() return new({{abs(self.$)}}) end

function methods:clampLength(limit)
  number(limit, 1, "clampLength")
  local len = sqrt({{+ self.$ * self.$}})
  if len <= limit or len == 0 then return new({{self.$}}) end
  local k = limit / len
  return new({{self.$ * k}})
end

return { class = Class, mt = mt, new = new, methods = methods, statics = statics, check = check }
