---@meta bevy_lua_coroutines.world_fast
-- Editor annotations for the vector math, queries, hierarchy and resources of the contract's
-- section 6c. `tests/annotations.rs` lets these names be annotated before the base defines them
-- (`PENDING`), and checks them like every other name once it does.

---A 2-component vector value (changing one never changes a component until it is `set`).
---Operators: `+ - * /` (by a vector or a number, either side), unary `-`, `==`; `tostring` reads
---`Vec2(1, 2)`.
---@class Vec2
---@field x number
---@field y number
---@operator add(Vec2): Vec2
---@operator sub(Vec2): Vec2
---@operator mul(Vec2|number): Vec2
---@operator div(Vec2|number): Vec2
---@operator unm: Vec2
Vec2 = {}

---@param x number
---@param y number
---@return Vec2
function Vec2.new(x, y) end

Vec2.ZERO = nil ---@type Vec2
Vec2.ONE = nil ---@type Vec2
Vec2.X = nil ---@type Vec2
Vec2.Y = nil ---@type Vec2

---@return number
function Vec2:length() end

---@return number
function Vec2:lengthSquared() end

---This vector scaled to length 1 (zero stays zero).
---@return Vec2
function Vec2:normalize() end

---@param other Vec2
---@return number
function Vec2:dot(other) end

---@param other Vec2
---@return number
function Vec2:distance(other) end

---@param other Vec2
---@param t number
---@return Vec2
function Vec2:lerp(other, t) end

---@param other Vec2
---@return Vec2
function Vec2:min(other) end

---@param other Vec2
---@return Vec2
function Vec2:max(other) end

---@return Vec2
function Vec2:abs() end

---This vector, shortened to at most `max`.
---@param max number
---@return Vec2
function Vec2:clampLength(max) end

---A 3-component vector value (changing one never changes a component until it is `set`).
---Operators: `+ - * /` (by a vector or a number, either side), unary `-`, `==`; `tostring` reads
---`Vec3(1, 2, 3)`.
---@class Vec3
---@field x number
---@field y number
---@field z number
---@operator add(Vec3): Vec3
---@operator sub(Vec3): Vec3
---@operator mul(Vec3|number): Vec3
---@operator div(Vec3|number): Vec3
---@operator unm: Vec3
Vec3 = {}

---@param x number
---@param y number
---@param z number
---@return Vec3
function Vec3.new(x, y, z) end

Vec3.ZERO = nil ---@type Vec3
Vec3.ONE = nil ---@type Vec3
Vec3.X = nil ---@type Vec3
Vec3.Y = nil ---@type Vec3
Vec3.Z = nil ---@type Vec3

---@return number
function Vec3:length() end

---@return number
function Vec3:lengthSquared() end

---This vector scaled to length 1 (zero stays zero).
---@return Vec3
function Vec3:normalize() end

---@param other Vec3
---@return number
function Vec3:dot(other) end

---@param other Vec3
---@return number
function Vec3:distance(other) end

---@param other Vec3
---@param t number
---@return Vec3
function Vec3:lerp(other, t) end

---@param other Vec3
---@return Vec3
function Vec3:min(other) end

---@param other Vec3
---@return Vec3
function Vec3:max(other) end

---@return Vec3
function Vec3:abs() end

---This vector, shortened to at most `max`.
---@param max number
---@return Vec3
function Vec3:clampLength(max) end

---@param other Vec3
---@return Vec3
function Vec3:cross(other) end

---A 4-component vector value (changing one never changes a component until it is `set`).
---Operators: `+ - * /` (by a vector or a number, either side), unary `-`, `==`; `tostring` reads
---`Vec4(1, 2, 3, 4)`.
---@class Vec4
---@field x number
---@field y number
---@field z number
---@field w number
---@operator add(Vec4): Vec4
---@operator sub(Vec4): Vec4
---@operator mul(Vec4|number): Vec4
---@operator div(Vec4|number): Vec4
---@operator unm: Vec4
Vec4 = {}

---@param x number
---@param y number
---@param z number
---@param w number
---@return Vec4
function Vec4.new(x, y, z, w) end

Vec4.ZERO = nil ---@type Vec4
Vec4.ONE = nil ---@type Vec4
Vec4.X = nil ---@type Vec4
Vec4.Y = nil ---@type Vec4
Vec4.Z = nil ---@type Vec4
Vec4.W = nil ---@type Vec4

---@return number
function Vec4:length() end

---@return number
function Vec4:lengthSquared() end

---This vector scaled to length 1 (zero stays zero).
---@return Vec4
function Vec4:normalize() end

---@param other Vec4
---@return number
function Vec4:dot(other) end

---@param other Vec4
---@return number
function Vec4:distance(other) end

---@param other Vec4
---@param t number
---@return Vec4
function Vec4:lerp(other, t) end

---@param other Vec4
---@return Vec4
function Vec4:min(other) end

---@param other Vec4
---@return Vec4
function Vec4:max(other) end

---@return Vec4
function Vec4:abs() end

---This vector, shortened to at most `max`.
---@param max number
---@return Vec4
function Vec4:clampLength(max) end

---A rotation (a unit quaternion) value.
---@class Quat
---@field x number
---@field y number
---@field z number
---@field w number
---@operator mul(Quat): Quat
---@operator mul(Vec3): Vec3
Quat = {}

Quat.IDENTITY = nil ---@type Quat

---@param axis Vec3
---@param radians number
---@return Quat
function Quat.fromAxisAngle(axis, radians) end

---Radians, XYZ order.
---@param x number
---@param y number
---@param z number
---@return Quat
function Quat.fromEuler(x, y, z) end

---@return Quat
function Quat:inverse() end

---@param other Quat
---@param t number
---@return Quat
function Quat:slerp(other, t) end

---Radians, XYZ order.
---@return number x
---@return number y
---@return number z
function Quat:toEuler() end

---Entities that have every named component, in a stable order. A last argument
---`{ without = { "Dead" } }` excludes entities with any of those components.
---@param ... string|{ without: string[] }
---@return fun(): Entity
function world.query(...) end

---How many entities `world.query(...)` would visit.
---@param ... string|{ without: string[] }
---@return integer
function world.count(...) end

---A resource registered for reflection (or a path into it, `"Score.points"`), or nil.
---@param name string
---@return any
function world.getResource(name) end

---@param name string
---@param value any
function world.setResource(name, value) end

---@class Entity
local Entity = {}

---@return Entity|nil
function Entity:parent() end

---@return Entity[]
function Entity:children() end
