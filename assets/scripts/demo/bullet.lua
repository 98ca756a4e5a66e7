-- A bullet a guard fired: flies east for 0.4 s of game time, moving its `Transform.translation` every frame,
-- then despawns its own entity (which ends this script too).

--- Prints one line: frame, game time, who, what.
local function log(who, fmt, ...)
  print(string.format("[f%4d t=%5.2fs] %-18s %s", time.frame(), time.elapsed(), who, string.format(fmt, ...)))
end

local SPEED, LIFE = 10.0, 0.4

local me = entity:get("Name")
local flown = 0
while flown < LIFE do
  local dt = task.wait()
  flown = flown + dt
  entity:set("Transform.translation", entity:get("Transform.translation") + Vec3.X * (SPEED * dt))
end
local t = entity:get("Transform.translation")
log(me, "lands at (%.2f, %.2f) and despawns", t.x, t.y)
entity:despawn()
