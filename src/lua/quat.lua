-- `Quat`: rotations as values, loaded once when the VM is made, beside the vector classes
-- (`lua/vector.lua`, whose notes on tables, metatables and read-only classes hold here too).
-- Conventions are glam's (Bevy's): `q * v` rotates `v`, `a * b` applies `b` first, Euler angles
-- are radians in XYZ order (`fromEuler(x, y, z)` is rotate-about-X times about-Y times about-Z).
local bad, KEY, vec3 = ...

local setmetatable, getmetatable, type, error, tostring =
  setmetatable, getmetatable, type, error, tostring
local sqrt, sin, cos, asin, acos, format = math.sqrt, math.sin, math.cos, math.asin, math.acos, string.format
local atan2 = math.atan2 or math.atan
local Vec3, new3 = vec3.class, vec3.new

--- `Vec3`'s one method of its own (the template makes the ones every vector class shares).
function vec3.methods:cross(o)
  vec3.check(o, 1, "cross")
  return new3(self.y * o.z - self.z * o.y, self.z * o.x - self.x * o.z, self.x * o.y - self.y * o.x)
end

local statics = {}
local Quat = setmetatable({}, {
  __index = statics,
  __newindex = function(_, key)
    error("attempt to modify read-only table (field '" .. tostring(key) .. "')", 2)
  end,
  __tostring = function() return "Quat" end,
  __metatable = false,
})
local methods = { [KEY] = Quat }
local mt = { __index = methods, __metatable = Quat }

local function new(x, y, z, w)
  return setmetatable({ x = x, y = y, z = z, w = w }, mt)
end

local function check(q, n, fname)
  if getmetatable(q) ~= Quat then bad(n, fname, "Quat", q, 3) end
end

local function number(v, n, fname)
  if type(v) ~= "number" then bad(n, fname, "number", v, 3) end
end

--- `Quat.new(x, y, z, w)`, as given (not normalized); no arguments is the identity.
function statics.new(x, y, z, w)
  if x == nil and y == nil and z == nil and w == nil then return new(0, 0, 0, 1) end
  number(x, 1, "new"); number(y, 2, "new"); number(z, 3, "new"); number(w, 4, "new")
  return new(x, y, z, w)
end

function statics.fromAxisAngle(axis, radians)
  if getmetatable(axis) ~= Vec3 then bad(1, "fromAxisAngle", "Vec3", axis, 2) end
  number(radians, 2, "fromAxisAngle")
  local len = sqrt(axis.x * axis.x + axis.y * axis.y + axis.z * axis.z)
  if len == 0 then return new(0, 0, 0, 1) end
  local s = sin(radians / 2) / len
  return new(axis.x * s, axis.y * s, axis.z * s, cos(radians / 2))
end

local function mul(a, b)
  return new(
    a.w * b.x + a.x * b.w + a.y * b.z - a.z * b.y,
    a.w * b.y - a.x * b.z + a.y * b.w + a.z * b.x,
    a.w * b.z + a.x * b.y - a.y * b.x + a.z * b.w,
    a.w * b.w - a.x * b.x - a.y * b.y - a.z * b.z
  )
end

function statics.fromEuler(x, y, z)
  number(x, 1, "fromEuler"); number(y, 2, "fromEuler"); number(z, 3, "fromEuler")
  local qx = new(sin(x / 2), 0, 0, cos(x / 2))
  local qy = new(0, sin(y / 2), 0, cos(y / 2))
  local qz = new(0, 0, sin(z / 2), cos(z / 2))
  return mul(mul(qx, qy), qz)
end

setmetatable(statics, { __index = function(_, key)
  if key == "IDENTITY" then return new(0, 0, 0, 1) end
end })

mt.__mul = function(a, b)
  if getmetatable(a) ~= Quat then bad(1, "Quat.__mul", "Quat", a, 2) end
  local kind = getmetatable(b)
  if kind == Quat then return mul(a, b) end
  if kind ~= Vec3 then bad(2, "Quat.__mul", "Quat or Vec3", b, 2) end
  -- v + w t + q.xyz x t, where t = 2 (q.xyz x v)
  local tx = 2 * (a.y * b.z - a.z * b.y)
  local ty = 2 * (a.z * b.x - a.x * b.z)
  local tz = 2 * (a.x * b.y - a.y * b.x)
  return new3(
    b.x + a.w * tx + (a.y * tz - a.z * ty),
    b.y + a.w * ty + (a.z * tx - a.x * tz),
    b.z + a.w * tz + (a.x * ty - a.y * tx)
  )
end

mt.__eq = function(a, b)
  return getmetatable(a) == getmetatable(b) and a.x == b.x and a.y == b.y and a.z == b.z and a.w == b.w
end

mt.__tostring = function(q)
  return format("Quat(%.7g, %.7g, %.7g, %.7g)", q.x, q.y, q.z, q.w)
end

function methods:inverse()
  local n = self.x * self.x + self.y * self.y + self.z * self.z + self.w * self.w
  if n == 0 then return new(0, 0, 0, 0) end
  return new(-self.x / n, -self.y / n, -self.z / n, self.w / n)
end

function methods:normalize()
  local len = sqrt(self.x * self.x + self.y * self.y + self.z * self.z + self.w * self.w)
  if len == 0 then return new(0, 0, 0, 1) end
  return new(self.x / len, self.y / len, self.z / len, self.w / len)
end

function methods:dot(o)
  check(o, 1, "dot")
  return self.x * o.x + self.y * o.y + self.z * o.z + self.w * o.w
end

--- Spherical interpolation along the shorter arc.
function methods:slerp(o, t)
  check(o, 1, "slerp")
  number(t, 2, "slerp")
  local d = self.x * o.x + self.y * o.y + self.z * o.z + self.w * o.w
  local ox, oy, oz, ow = o.x, o.y, o.z, o.w
  if d < 0 then d, ox, oy, oz, ow = -d, -ox, -oy, -oz, -ow end
  local a, b
  if d > 0.9995 then
    a, b = 1 - t, t -- nearly parallel: a normalized lerp
    local q = new(self.x * a + ox * b, self.y * a + oy * b, self.z * a + oz * b, self.w * a + ow * b)
    return q:normalize()
  end
  local theta = acos(d)
  local s = sin(theta)
  a, b = sin((1 - t) * theta) / s, sin(t * theta) / s
  return new(self.x * a + ox * b, self.y * a + oy * b, self.z * a + oz * b, self.w * a + ow * b)
end

--- `x, y, z`: the angles `Quat.fromEuler` takes to make this rotation (radians, XYZ order).
function methods:toEuler()
  local x, y, z, w = self.x, self.y, self.z, self.w
  local m02 = 2 * (x * z + w * y)
  if m02 > 1 then m02 = 1 elseif m02 < -1 then m02 = -1 end
  local ry = asin(m02)
  if m02 > 0.9999999 or m02 < -0.9999999 then
    -- Gimbal lock: only x + z (or x - z) is defined; put it all in x.
    return atan2(2 * (y * z + w * x), 1 - 2 * (x * x + z * z)), ry, 0
  end
  local rx = atan2(-2 * (y * z - w * x), 1 - 2 * (x * x + y * y))
  local rz = atan2(-2 * (x * y - w * z), 1 - 2 * (y * y + z * z))
  return rx, ry, rz
end

return { class = Quat, mt = mt, new = new, methods = methods, statics = statics }
