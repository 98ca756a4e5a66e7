-- The Lua half of the scheduler: `task`, `sleep`, `spawn`, `time`, and the `coroutine` wrappers.
--
-- A thread that waits yields a *request* `(REQ, kind, arg)` to whoever resumed it. When that is the
-- scheduler, the scheduler registers the wait. When it is script code (`coroutine.resume`,
-- `coroutine.wrap`, `task.spawn`), the wrappers below hand the request to `core.register`, and the
-- script sees an ordinary yield with no values. Either way the thread that called `task.wait` is
-- the thread the scheduler resumes later.
local core = ...

local REQ = core.REQ
local WAIT_TIME, WAIT_FRAMES, WAIT_REAL = core.WAIT_TIME, core.WAIT_FRAMES, core.WAIT_REAL
local DEFER, DELAY = core.DEFER, core.DELAY
local register, schedule, forget, report = core.register, core.schedule, core.forget, core.report
local clock = core.clock
local traceback = core.traceback

local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_running, co_status, co_close = coroutine.running, coroutine.status, coroutine.close
local type, error, select, tostring, getmetatable = type, error, select, tostring, getmetatable
local string_format = string.format
local math_huge = math.huge

--- Raises Lua's own `bad argument` error, blaming the caller `level` frames up.
local function bad(n, fname, expected, value, level)
  local got = type(value)
  if got == "userdata" then
    local mt = getmetatable(value)
    if type(mt) == "table" and type(mt.__name) == "string" then got = mt.__name end
  end
  error(string_format("bad argument #%d to '%s' (%s expected, got %s)", n, fname, expected, got), level + 1)
end

--- Checks an optional number argument.
local function opt_number(v, n, fname)
  if v ~= nil and type(v) ~= "number" then bad(n, fname, "number", v, 3) end
end

--- Turns `f | thread` into a thread, for spawn/defer/delay.
local function to_thread(f, n, fname)
  local t = type(f)
  if t == "thread" then return f end
  if t == "function" then return co_create(f) end
  local mt = getmetatable(f)
  if type(mt) == "table" and mt.__call ~= nil then
    return co_create(function(...) return f(...) end)
  end
  bad(n, fname, "function or thread", f, 3)
end

--- Closes a thread (to-be-closed variables close), reporting an error raised by a `__close`.
local function close(co)
  if co_close ~= nil then
    local ok, err = co_close(co)
    return ok, err
  end
  return true
end

--- The result of resuming `co` from script code: registers a wait request and hides it.
local function after_resume(co, ok, first, ...)
  if ok and first == REQ then
    register(co, ...)
    return true
  end
  return ok, first, ...
end

--- `coroutine.resume`, with wait requests registered (see the file's first comment).
local function resume(co, ...)
  return after_resume(co, co_resume(co, ...))
end

--- The result of `task.spawn`'s resume: errors are reported (never raised into the spawner).
local function after_spawn(co, ok, first, ...)
  if not ok then
    local msg = first
    if type(msg) ~= "string" then msg = tostring(msg) end
    report(msg, traceback(co))
    close(co)
  elseif first == REQ then
    register(co, ...)
  end
  return co
end

local function spawn_impl(fname, f, ...)
  local co = to_thread(f, 1, fname)
  local status = co_status(co)
  if status ~= "suspended" then
    error(string_format("cannot resume %s coroutine", status == "dead" and "dead" or "non-suspended"), 3)
  end
  return after_spawn(co, co_resume(co, ...))
end

local task = {}

--- Resumes `f` (or a thread) now, until its first yield; returns the thread.
function task.spawn(f, ...) return spawn_impl("spawn", f, ...) end

--- Resumes `f` later in this frame's step, after the running work.
function task.defer(f, ...)
  local co = to_thread(f, 1, "defer")
  local err = schedule(co, DEFER, 0, ...)
  if err then error(err, 2) end
  return co
end

--- Resumes `f` on the first frame where `seconds` of game time have passed.
function task.delay(seconds, f, ...)
  if type(seconds) ~= "number" then bad(1, "delay", "number", seconds, 2) end
  local co = to_thread(f, 2, "delay")
  local err = schedule(co, DELAY, seconds, ...)
  if err then error(err, 2) end
  return co
end

--- Yields until `seconds` of game time have passed (the next frame for nil, 0, negative or NaN).
function task.wait(seconds)
  if seconds ~= nil and type(seconds) ~= "number" then bad(1, "wait", "number", seconds, 2) end
  return co_yield(REQ, WAIT_TIME, seconds)
end

--- Yields for `n` frames (default 1); returns the game seconds that passed.
function task.waitFrames(n)
  if n ~= nil and type(n) ~= "number" then bad(1, "waitFrames", "number", n, 2) end
  return co_yield(REQ, WAIT_FRAMES, n)
end

--- Like `task.wait`, against real (unscaled, unpaused) time.
function task.waitRealtime(seconds)
  if type(seconds) ~= "number" then bad(1, "waitRealtime", "number", seconds, 2) end
  return co_yield(REQ, WAIT_REAL, seconds)
end

--- Returns true once `pred()` is truthy (checked now, then once per frame), false after `timeout`.
function task.waitUntil(pred, timeout)
  if type(pred) ~= "function" then bad(1, "waitUntil", "function", pred, 2) end
  opt_number(timeout, 2, "waitUntil")
  if pred() then return true end
  local start = clock.nanos
  local limit = timeout and timeout * 1e9
  while true do
    co_yield(REQ, WAIT_FRAMES, 1)
    if pred() then return true end
    if limit and clock.nanos - start >= limit then return false end
  end
end

--- Cancels a task at once: it never resumes and its to-be-closed variables close now.
function task.cancel(co)
  if type(co) ~= "thread" then bad(1, "cancel", "thread", co, 2) end
  local status = co_status(co)
  if status == "running" then error("cannot cancel the running thread", 2) end
  if status == "normal" then error("cannot cancel a thread that is resuming another", 2) end
  forget(co)
  if status == "suspended" then
    local ok, err = close(co)
    if not ok then report(tostring(err), traceback(co)) end
  end
end

local time = {}
--- Game seconds since start.
function time.elapsed() return clock.elapsed end
--- This frame's game delta in seconds.
function time.delta() return clock.delta end
--- The number of frames the scheduler has stepped.
function time.frame() return clock.frame end
--- Real seconds since start (unscaled, unpaused).
function time.realElapsed() return clock.real end

local coroutine_api = {}
for k, v in pairs(coroutine) do coroutine_api[k] = v end
coroutine_api.resume = resume

--- `coroutine.wrap` with wait requests registered; errors propagate as in Lua 5.4.
function coroutine_api.wrap(f)
  if type(f) ~= "function" then bad(1, "wrap", "function", f, 2) end
  local co = co_create(f)
  local function finish(ok, ...)
    if ok then return ... end
    local err = ...
    close(co)
    if type(err) == "string" then error(err, 2) end
    error(err, 0)
  end
  return function(...)
    return finish(resume(co, ...))
  end
end

return {
  task = task,
  time = time,
  coroutine = coroutine_api,
  sleep = function(seconds)
    if seconds ~= nil and type(seconds) ~= "number" then bad(1, "sleep", "number", seconds, 2) end
    return co_yield(REQ, WAIT_TIME, seconds)
  end,
  spawn = function(f, ...) return spawn_impl("spawn", f, ...) end,
  close = close,
}
