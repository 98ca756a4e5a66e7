-- A blinking lamp. Edit this file while `cargo run --example hot_reload` runs: change `every`
-- or the message below and save. The lamp keeps its `state` (the blink count) across reloads.
local palette = require("hot_reload.palette")

local every = 1.0 -- seconds between blinks: try 0.25

state.blinks = state.blinks or 0

function onReload()
  print(("lamp: reloaded, %d blinks so far"):format(state.blinks))
end

while true do
  task.wait(every)
  state.blinks = state.blinks + 1
  local color = palette.colors[state.blinks % #palette.colors + 1]
  print(("lamp: blink %d, %s"):format(state.blinks, color))
end
