-- A guard walks a route of waypoints and rests at each one, and fires a bullet east whenever it
-- rests. It moves by writing its own `Transform` every frame; `task.wait()` returns the game
-- seconds of the frame that passed.
--
-- Two entities run this script. Each instance has its own globals and its own `state`, so the two
-- guards never share a variable. A guard picks its route by its `Name` component, and starts where
-- its `Transform` puts it.

--- Prints one line: frame, game time, who, what.
local function log(who, fmt, ...)
  print(string.format("[f%4d t=%5.2fs] %-18s %s", time.frame(), time.elapsed(), who, string.format(fmt, ...)))
end

local function waypoint(name, x, y) return { name = name, x = x, y = y } end

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

--- Where the guard is, from its `Transform`.
local function position()
  local t = entity:get("Transform").translation
  return t.x, t.y
end

--- Walks to `to` at the route's speed, one step per frame; returns the game seconds it took.
local function walk_to(to, speed)
  local took = 0
  while true do
    local dt = task.wait()
    took = took + dt
    local x, y = position()
    local dx, dy = to.x - x, to.y - y
    local distance = math.sqrt(dx * dx + dy * dy)
    local step = speed * dt
    if distance <= step then
      entity:set("Transform", { translation = { x = to.x, y = to.y } })
      return took
    end
    entity:set("Transform", { translation = { x = x + dx / distance * step, y = y + dy / distance * step } })
  end
end

local route = state.route
local x, y = position()
log(me, "starts at the %s (%.2f, %.2f)", route.waypoints[1].name, x, y)

local started = time.elapsed()
for i = 2, #route.waypoints do
  local to = route.waypoints[i]
  local walked = walk_to(to, route.speed)
  state.at = i
  x, y = position()
  if i < #route.waypoints then
    log(me, "reached the %s (%.2f, %.2f) after %.2fs, fires, rests %.1fs", to.name, x, y, walked, route.rest)
    world.spawn{
      script = "scripts/demo/bullet.lua",
      Name = "bullet from the " .. to.name,
      Transform = { translation = { x = x, y = y } },
    }
    task.wait(route.rest)
  else
    log(me, "back at the %s (%.2f, %.2f): patrol done in %.2fs", to.name, x, y, time.elapsed() - started)
  end
end
