-- The director: receives spawn orders from a Rust system over a typed channel, starts the ordered
-- enemies (each a task with its own Lua channel for commands), fans commands out to them, and the
-- enemies report their deaths to Rust as Bevy messages.
local function log(fmt, ...)
  print(string.format("[f %3d t=%5.2fs] director  " .. fmt, time.frame(), time.elapsed(), ...))
end

local orders = Channel.named("orders")

--- An enemy: obeys commands until told to die, then reports it to Rust.
local function enemy(wave, id, commands)
  local name = string.format("%d.%d", wave, id)
  for command in commands:iter() do
    if command == "advance" then
      task.wait(0.25 * id)             -- enemies move at their own pace
      print(string.format("[f %3d t=%5.2fs] enemy %s  advances", time.frame(), time.elapsed(), name))
    elseif command == "die" then
      Messages.write("EnemyDied", { wave = wave, id = id })
      return
    end
  end
end

for _ = 1, 3 do
  local order = orders:receive()
  log("wave %d: spawning %d %s", order.wave, order.count, order.kind)
  local squad = {}
  for id = 1, order.count do
    local commands = Channel.new()    -- unbuffered: a send waits until that enemy takes it
    squad[id] = commands
    task.spawn(enemy, order.wave, id, commands)
  end
  for _, commands in ipairs(squad) do commands:send("advance") end
  task.wait(1)
  for _, commands in ipairs(squad) do commands:send("die") end
  log("wave %d: all ordered to fall", order.wave)
end
log("no more waves")
