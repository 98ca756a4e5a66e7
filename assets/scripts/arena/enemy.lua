-- An enemy, entirely in Lua: a state machine (wander, chase, attack, flee) whose states are tasks
-- that wait with `task.wait`, steering by seek-and-arrive, a line-of-sight query awaited from Rust
-- (`lineOfSight` runs on Bevy's task pool), strikes written as Bevy messages, and shockwaves read
-- from them. Edit it while the arena runs: the enemies reload (their `state` table is kept).
local MAX_SPEED = 150      -- pixels per second
local ACCELERATION = 600   -- pixels per second squared
local SLOW_RADIUS = 90     -- start braking this close to the target
local SIGHT = 380          -- how far an enemy sees

state.vx, state.vy = state.vx or 0, state.vy or 0

local player = world.find("player")
local shockwaves = Messages.subscribe("Shockwave")

local function position(e)
  local t = e:get("Transform").translation
  return t.x, t.y
end

local function show(name)
  entity:set("Enemy", { state = name })
end

--- One frame of seek-and-arrive towards (tx, ty); returns the distance left.
local function steer(tx, ty, dt, speed)
  local x, y = position(entity)
  local dx, dy = tx - x, ty - y
  local dist = math.sqrt(dx * dx + dy * dy)
  local want = speed or MAX_SPEED
  if dist < SLOW_RADIUS then want = want * dist / SLOW_RADIUS end
  local wx, wy = 0, 0
  if dist > 0.001 then wx, wy = dx / dist * want, dy / dist * want end
  -- Accelerate the velocity towards the wanted one, at most ACCELERATION.
  local ax, ay = wx - state.vx, wy - state.vy
  local a = math.sqrt(ax * ax + ay * ay)
  local limit = ACCELERATION * dt
  if a > limit then ax, ay = ax / a * limit, ay / a * limit end
  state.vx, state.vy = state.vx + ax, state.vy + ay
  entity:set("Transform", { translation = { x = x + state.vx * dt, y = y + state.vy * dt } })
  return dist
end

--- Whether the player is in sight: close enough, and no wall between (asked of Rust).
local function seesPlayer()
  local x, y = position(entity)
  local px, py = position(player)
  if (px - x) ^ 2 + (py - y) ^ 2 > SIGHT * SIGHT then return false end
  return await(lineOfSight({ x, y, px, py }))
end

local states = {}

function states.wander()
  show("wander")
  local x, y = position(entity)
  local tx, ty = x + math.random(-160, 160), y + math.random(-120, 120)
  tx, ty = math.max(-440, math.min(440, tx)), math.max(-280, math.min(280, ty))
  local until_ = time.elapsed() + 2
  local nextLook = 0
  while time.elapsed() < until_ do
    if steer(tx, ty, task.wait(), MAX_SPEED * 0.5) < 4 then break end
    if time.elapsed() >= nextLook then
      nextLook = time.elapsed() + 0.3
      if seesPlayer() then return "chase" end
    end
  end
  task.wait(0.4)
  return "wander"
end

function states.chase()
  show("chase")
  local lost = 0
  while true do
    local px, py = position(player)
    local dist = steer(px, py, task.wait())
    if dist < 34 then return "attack" end
    if not seesPlayer() then
      lost = lost + 1
      if lost > 20 then return "wander" end
    else
      lost = 0
    end
  end
end

function states.attack()
  show("attack")
  task.wait(0.25) -- wind up
  local x, y = position(entity)
  Messages.write("EnemyAttack", { x = x, y = y, damage = 5 })
  state.vx, state.vy = -state.vx, -state.vy -- bounce back
  task.wait(0.6)
  return "chase"
end

function states.flee(fx, fy)
  show("flee")
  local x, y = position(entity)
  local dx, dy = x - fx, y - fy
  local d = math.max(1, math.sqrt(dx * dx + dy * dy))
  local tx, ty = x + dx / d * 220, y + dy / d * 220
  local until_ = time.elapsed() + 1.2
  while time.elapsed() < until_ do
    steer(tx, ty, task.wait(), MAX_SPEED * 1.6)
  end
  return "wander"
end

-- The brain: runs the current state as a task; a shockwave nearby interrupts it with `flee`.
local current = "wander"
local runner
local function run(name, ...)
  if runner then task.cancel(runner) end
  local args = table.pack(...)
  runner = task.spawn(function()
    local nextState = states[name](table.unpack(args, 1, args.n))
    while true do
      nextState = states[nextState]()
    end
  end)
end
run(current)

for wave in shockwaves:iter() do
  local x, y = position(entity)
  if (wave.x - x) ^ 2 + (wave.y - y) ^ 2 < wave.radius * wave.radius then
    run("flee", wave.x, wave.y)
  end
end
