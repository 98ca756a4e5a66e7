-- A light that blinks by frame counts with `task.waitFrames`, not by seconds: at 60 frames per
-- second it is on for half a second, then off for a second and a half.

--- Prints one line: frame, game time, who, what.
local function log(who, fmt, ...)
  print(string.format("[f%4d t=%5.2fs] %-18s %s", time.frame(), time.elapsed(), who, string.format(fmt, ...)))
end

local ON_FRAMES, OFF_FRAMES, BLINKS = 30, 90, 5

state.on = false
for n = 1, BLINKS do
  state.on = true
  log("light", "on (blink %d of %d)", n, BLINKS)
  local lit = task.waitFrames(ON_FRAMES)
  state.on = false
  log("light", "off after %d frames (%.2fs)", ON_FRAMES, lit)
  task.waitFrames(OFF_FRAMES)
end
log("light", "burned out")
