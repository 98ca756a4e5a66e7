-- A spawner schedules waves with `task.delay`. Each wave starts its enemies with `task.spawn`:
-- every enemy is its own short task that lives a few seconds and then leaves. The last wave is
-- called off with `task.cancel` before it is due, so it never runs.

--- Prints one line: frame, game time, who, what.
local function log(who, fmt, ...)
  print(string.format("[f%4d t=%5.2fs] %-18s %s", time.frame(), time.elapsed(), who, string.format(fmt, ...)))
end

local WAVES = {
  { at = 1.0, enemies = 2 },
  { at = 3.5, enemies = 3 },
  { at = 6.0, enemies = 2 },
  { at = 9.0, enemies = 4 }, -- called off at 8 s
}

state.alive = 0

--- One enemy: appears, stays `life` seconds, leaves.
local function enemy(name, life)
  state.alive = state.alive + 1
  log("enemy " .. name, "appears (%d alive)", state.alive)
  task.wait(life)
  state.alive = state.alive - 1
  log("enemy " .. name, "leaves after %.2fs (%d alive)", life, state.alive)
end

--- One wave: starts `count` enemies, each living a little longer than the one before.
local function wave(n, count)
  log("spawner", "wave %d: %d enemies", n, count)
  for i = 1, count do
    task.spawn(enemy, string.format("%d.%d", n, i), 1.0 + 0.75 * i)
  end
end

local scheduled = {}
for n, w in ipairs(WAVES) do
  scheduled[n] = task.delay(w.at, wave, n, w.enemies) -- the thread that will run the wave
end
log("spawner", "scheduled %d waves", #WAVES)

task.wait(8)
task.cancel(scheduled[4])
log("spawner", "calls off wave 4 (%d alive)", state.alive)
