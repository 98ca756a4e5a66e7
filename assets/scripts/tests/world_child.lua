-- Spawned by tests/world.rs through `world.spawn{ script = ... }`: says when it started and where.
local t = entity:get("Transform")
print(string.format("child started at frame %d x=%g", time.frame(), t.translation.x))
