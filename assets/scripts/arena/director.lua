-- The spawner director: receives waves from Rust over the typed channel `waves` and spawns each
-- wave's enemies around the edge of the arena, a few frames apart.
local waves = Channel.named("waves")

local corners = { { -420, 260 }, { 420, 260 }, { 420, -260 }, { -420, -260 }, { 0, 280 }, { 0, -280 } }

for wave in waves:iter() do
  print(string.format("director: wave %d, %d enemies", wave.number, wave.count))
  for i = 1, wave.count do
    local c = corners[(i + wave.number) % #corners + 1]
    world.spawn({
      script = "scripts/arena/enemy.lua",
      Enemy = { state = "" },
      Transform = { translation = { x = c[1] + math.random(-30, 30), y = c[2] + math.random(-20, 20), z = 1 } },
      Name = "enemy",
    })
    task.wait(0.15)
  end
end
