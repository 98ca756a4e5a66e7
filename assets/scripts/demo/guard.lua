-- A guard walks a route of waypoints and rests at each one, and fires a bullet east whenever it
-- rests. It moves by writing its own position every frame with vector math (`Vec3` values and the
-- path `"Transform.translation"`); `task.wait()` returns the game seconds of the frame that passed.
--
-- Two entities run this script. Each instance has its own globals and its own `state`, so the two
-- guards never share a variable. A guard picks its route by its `Name` component, and starts where
-- its `Transform` puts it.

--- Prints one line: frame, game time, who, what.
local function log(who, fmt, ...)
  print(string.format("[f%4d t=%5.2fs] %-18s %s", time.frame(), time.elapsed(), who, string.format(fmt, ...)))
end

local function waypoint(name, x, y) return { name = name, at = Vec3.new(x, y, 0) } end

local ROUTES = {
  ["north guard"] = {
    speed = 2.0, rest = 1.0,
    waypoints = { waypoint("gate", 0, 0), waypoint("tower", 4, 0), waypoint("well", 4, 3), waypoint("gate", 0, 0) },
  },
  ["south guard"] = {
    speed = 1.5, rest = 0.5,
    waypoints = {
      waypoint("barracks", 0, -2), waypoint("stables", 3, -2), waypoint("forge", 3, -5),
      waypoint("stables", 3, -2), waypoint("barracks", 0, -2),
    },
  },
}

local me = entity:get("Name")
state.route = ROUTES[me]
state.at = 1 -- index of the waypoint the guard stands at

--- Where the guard is (a `Vec3`).
local function position()
  return entity:get("Transform.translation")
end

--- Walks to `to` (a `Vec3`) at the route's speed, one step per frame, and arrives exactly;
--- returns the game seconds it took.
local function walk_to(to, speed)
  local took = 0
  while true do
    local dt = task.wait()
    took = took + dt
    local here = position()
    local step = speed * dt
    if here:distance(to) <= step then
      entity:set("Transform.translation", to)
      return took
    end
    entity:set("Transform.translation", here + (to - here):normalize() * step)
  end
end

local route = state.route
local p = position()
log(me, "starts at the %s (%.2f, %.2f)", route.waypoints[1].name, p.x, p.y)

local started = time.elapsed()
for i = 2, #route.waypoints do
  local to = route.waypoints[i]
  local walked = walk_to(to.at, route.speed)
  state.at = i
  p = position()
  if i < #route.waypoints then
    log(me, "reached the %s (%.2f, %.2f) after %.2fs, fires, rests %.1fs", to.name, p.x, p.y, walked, route.rest)
    world.spawn{
      script = "scripts/demo/bullet.lua",
      Name = "bullet from the " .. to.name,
      Transform = { translation = p },
    }
    task.wait(route.rest)
  else
    log(me, "back at the %s (%.2f, %.2f): patrol done in %.2fs", to.name, p.x, p.y, time.elapsed() - started)
  end
end
