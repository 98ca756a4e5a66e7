-- Spawned by tests/world.rs through `world.spawn{ script = ... }`: says when it started and where.
local t = entity:get("Transform")
print("child started at frame " .. time.frame() .. " x=" .. t.translation.x)
