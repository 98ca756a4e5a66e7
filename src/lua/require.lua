-- `require(name)` as scripts see it: the Lua face of `src/modules.rs`. The Rust half resolves the
-- name in the assets folder, runs the module once per VM, and answers `ok, value, level`; a
-- failure is raised here so that it names the line of the `require` call (level 2), or as the
-- module's own code raised it (level 0).
local raw = ...
local error = error

return function(name)
  local ok, value, level = raw(name)
  if not ok then error(value, level) end
  return value
end
