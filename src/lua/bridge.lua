-- Promises that Rust settles: the Lua half of `src/bridge.rs`. A Rust async function (or a
-- `PromiseHandle`) is known here by an id; Rust settles it with `settle(id, ok, value)` at the start
-- of a step, and cancelling the promise tells Rust to drop the work (`cancel(id)`).
local Promise, cancel = ...

local slots = {}

--- A promise settled later by `settle(id, ...)`.
local function pending(id)
  return Promise.new(function(resolve, reject, onCancel)
    slots[id] = { resolve, reject }
    onCancel(function()
      if slots[id] ~= nil then
        slots[id] = nil
        cancel(id)
      end
    end)
  end)
end

--- Resolves (`ok`) or rejects promise `id` with `value`.
local function settle(id, ok, value)
  local slot = slots[id]
  if slot == nil then return end
  slots[id] = nil
  if ok then slot[1](value) else slot[2](value) end
end

--- Forgets promise `id` without settling it (its instance is gone).
local function forget(id)
  slots[id] = nil
end

local error = error

--- Wraps a registered Rust function `raw` (which returns `ok, value`) so that its failures are
--- ordinary Lua errors naming the caller's line, as Lua's own functions' errors do.
local function wrap(raw)
  return function(...)
    local ok, value = raw(...)
    if not ok then error(value, 2) end
    return value
  end
end

return { pending = pending, settle = settle, forget = forget, wrap = wrap }
