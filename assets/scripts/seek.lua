-- Seek and arrive: each entity running this script steers toward a target with a capped speed
-- and acceleration, slowing down inside an arrival radius so it stops on the target instead of
-- overshooting. Everything is `Vec3` math; the entity's position is read and written through the
-- path "Transform.translation".
--
--   cargo run --example run -- assets/scripts/seek.lua --entities 3 --frames 600

local MAX_SPEED, MAX_ACCEL, SLOW_RADIUS = 4.0, 8.0, 2.0

-- Each runner entity gets its own target on a circle of radius 6 (by its id, so runs repeat).
local angle = (entity.id % 8) * math.pi / 4
local target = Vec3.new(math.cos(angle), math.sin(angle), 0) * 6
local velocity = Vec3.ZERO

while true do
  local dt = task.wait()
  local position = entity:get("Transform.translation") ---@type Vec3
  local offset = target - position
  local distance = offset:length()
  if distance < 0.01 and velocity:length() < 0.01 then break end
  -- Full speed far away, proportionally slower inside the radius: that is the "arrive".
  local speed = MAX_SPEED * math.min(1, distance / SLOW_RADIUS)
  local desired = offset:normalize() * speed
  local steering = (desired - velocity):clampLength(MAX_ACCEL * dt)
  velocity = (velocity + steering):clampLength(MAX_SPEED)
  entity:set("Transform.translation", position + velocity * dt)
end

local p = entity:get("Transform.translation")
print(string.format("%s arrived at (%.2f, %.2f) after %.2fs", entity:get("Name"), p.x, p.y, time.elapsed()))
