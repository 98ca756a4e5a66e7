-- A guard walks a route of waypoints and rests at each one; `task.wait` takes game seconds.
--
-- Two entities run this script. Each instance has its own globals and its own `state`, so the two
-- guards never share a variable. Scripts cannot read components yet, so a guard picks its route
-- from its entity id: the demo spawns both guards one after the other, so one id is even and the
-- other odd.

--- Prints one line: frame, game time, who, what.
local function log(who, fmt, ...)
  print(string.format("[f%4d t=%5.2fs] %-18s %s", time.frame(), time.elapsed(), who, string.format(fmt, ...)))
end

local function waypoint(name, x, y) return { name = name, x = x, y = y } end

local ROUTES = {
  [0] = {
    name = "north", speed = 2.0, rest = 1.0,
    waypoints = { waypoint("gate", 0, 0), waypoint("tower", 4, 0), waypoint("well", 4, 3), waypoint("gate", 0, 0) },
  },
  [1] = {
    name = "south", speed = 1.5, rest = 0.5,
    waypoints = {
      waypoint("barracks", 0, -2), waypoint("stables", 3, -2), waypoint("forge", 3, -5),
      waypoint("stables", 3, -2), waypoint("barracks", 0, -2),
    },
  },
}

local me = "guard " .. tostring(entity)
state.route = ROUTES[entity.id % 2]
state.at = 1 -- index of the waypoint the guard stands at

local route = state.route
local first = route.waypoints[1]
log(me, "starts the %s route at the %s (%g, %g)", route.name, first.name, first.x, first.y)

local started = time.elapsed()
for i = 2, #route.waypoints do
  local from, to = route.waypoints[state.at], route.waypoints[i]
  local distance = math.sqrt((to.x - from.x) ^ 2 + (to.y - from.y) ^ 2)
  local walked = task.wait(distance / route.speed)
  state.at = i
  if i < #route.waypoints then
    log(me, "reached the %s after %.2fs, rests %.1fs", to.name, walked, route.rest)
    task.wait(route.rest)
  else
    log(me, "back at the %s: patrol done in %.2fs", to.name, time.elapsed() - started)
  end
end
