-- Promises that Rust settles: the Lua half of `src/bridge.rs`. A Rust async function (or a
-- `PromiseHandle`) is known here by an id; Rust settles a batch of them with `settle_many` at the
-- start of a step, and cancelling the promise tells Rust to drop the work (`cancel(id)`).
-- `deferred(on_cancel) -> promise` and `settle_batch(q, n, promises, ids)` (the batch `settle_many`
-- hands on) are the promise module's, for the bridge: no executor thread and no closures per
-- promise.
local deferred, settle_batch, cancel = ...

local promises = {} -- id -> its pending promise
local ids = {} -- pending promise -> its id

--- The cancellation of pending promise `p`: Rust drops the work behind it.
local function cancelled(p)
  local id = ids[p]
  if id ~= nil then
    promises[id], ids[p] = nil, nil
    cancel(id)
  end
end

--- Settles several promises in order: `settle_many(q, n)` with `id, ok, value` triples at
--- `q[1..n]`, which it clears (the table is Rust's, reused for the next batch).
local function settle_many(q, n)
  settle_batch(q, n, promises, ids)
end

--- Forgets promise `id` without settling it (its instance is gone).
local function forget(id)
  local p = promises[id]
  if p ~= nil then promises[id], ids[p] = nil, nil end
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

--- Wraps a registered Rust function `raw` that hands scripts a promise Rust settles: `raw` returns
--- `true, id` (its work held under `id`) or `false, message`; the call returns the pending promise
--- `id`, made here so that Rust does not call back into Lua for it. The promise is made before
--- `raw` runs, so a script out of memory fails the call before any Rust work starts (a
--- `PromiseHandle` function may act at once); only the two stores that file it under `id` come
--- after.
local function wrap_pending(raw)
  return function(...)
    local p = deferred(cancelled)
    local ok, value = raw(...)
    if not ok then error(value, 2) end
    promises[value], ids[p] = p, value
    return p
  end
end

return {
  settle_many = settle_many,
  forget = forget,
  wrap = wrap,
  wrap_pending = wrap_pending,
}
