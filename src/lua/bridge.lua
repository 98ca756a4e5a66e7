-- Promises that Rust settles: the Lua half of `src/bridge.rs`. A Rust async function (or a
-- `PromiseHandle`) is known here by an id; Rust settles it with `settle(id, ok, value)` at the start
-- of a step, and cancelling the promise tells Rust to drop the work (`cancel(id)`).
-- `deferred() -> promise, resolve, reject, onCancel` (the promise module's, for the bridge: no
-- executor thread per promise).
local deferred, cancel = ...

local resolvers, rejecters = {}, {} -- id -> the resolve / reject of its pending promise

--- A promise settled later by `settle(id, ...)`.
local function pending(id)
  local p, resolve, reject, on_cancel = deferred()
  resolvers[id], rejecters[id] = resolve, reject
  on_cancel(function()
    if resolvers[id] ~= nil then
      resolvers[id], rejecters[id] = nil, nil
      cancel(id)
    end
  end)
  return p
end

--- Resolves (`ok`) or rejects promise `id` with `value`.
local function settle(id, ok, value)
  local resolve = resolvers[id]
  if resolve == nil then return end
  local reject = rejecters[id]
  resolvers[id], rejecters[id] = nil, nil
  if ok then resolve(value) else reject(value) end
end

--- Settles several promises in order: `settle_many(id1, ok1, value1, id2, ok2, value2, ...)`.
local function settle_many(...)
  local args, n = { ... }, select("#", ...)
  for i = 1, n, 3 do
    settle(args[i], args[i + 1], args[i + 2])
  end
end

--- Forgets promise `id` without settling it (its instance is gone).
local function forget(id)
  resolvers[id], rejecters[id] = nil, nil
end

local error, select = error, select

--- Wraps a registered Rust function `raw` (which returns `ok, value`) so that its failures are
--- ordinary Lua errors naming the caller's line, as Lua's own functions' errors do.
local function wrap(raw)
  return function(...)
    local ok, value = raw(...)
    if not ok then error(value, 2) end
    return value
  end
end

return { pending = pending, settle = settle, settle_many = settle_many, forget = forget, wrap = wrap }
