-- The Lua half of the scheduler: the ready queue, frame waits, the step that resumes tasks, and the
-- script API on top (`task`, `sleep`, `spawn`, `time`, the `coroutine` wrappers).
--
-- A thread that waits yields a *request* `(REQ, kind, arg)` to whoever resumed it. When that is the
-- step, the step registers it; when it is script code (`coroutine.resume`, `coroutine.wrap`,
-- `task.spawn`), the wrappers below register it and the script sees an ordinary yield with no
-- values. Either way the thread that called `task.wait` is the one resumed later.
--
-- Every registration takes a fresh number and stores it as the task's current one; a waker (a frame
-- bucket entry, a timer in Rust, later a promise or channel) carries the number it was given and
-- wakes the task only if it still matches. So a cancelled, re-registered or already-woken task is
-- never woken twice, and a task no one can wake is in no list at all.
--
-- Rust owns what is not per-frame: task ownership (which instance), the timer queues, error
-- reports and the instruction budget. Nothing here crosses into Rust on the common path (a task
-- that resumes and waits for a later frame).
local core = ...

local REQ, ARGS = core.REQ, core.ARGS
local WAIT_TIME, WAIT_FRAMES, WAIT_REAL, PARK = core.WAIT_TIME, core.WAIT_FRAMES, core.WAIT_REAL, core.PARK
local GAME, REAL = core.GAME, core.REAL
local S = core.state -- the clocks (Rust writes them each frame)
local rust_adopt, rust_timer, rust_release, rust_fail, rust_report =
  core.adopt, core.timer, core.release, core.fail, core.report
local traceback = core.traceback

local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_running, co_status, co_close = coroutine.running, coroutine.status, coroutine.close
local type, error, select, tostring, getmetatable, setmetatable, pairs, collectgarbage =
  type, error, select, tostring, getmetatable, setmetatable, pairs, collectgarbage
local unpack = table.unpack or unpack
local string_format = string.format
local math_floor, math_huge = math.floor, math.huge

local MAX_DEFER_DEPTH = 10

-- Task state, by task key (an integer Rust allocates).
local threads = {}                        -- key -> thread
local regs = {}                           -- key -> current registration number
local args = {}                           -- key -> packed arguments for the next resume
local keys = setmetatable({}, { __mode = "k" }) -- thread -> key
local next_reg = 0

-- Frame waits due next frame (the common case: `task.wait()`), as parallel arrays, and the ones
-- being resumed this frame; `task.waitFrames(n > 1)` goes to `later[frame]`, the same layout.
local next_keys, next_regs, next_since, next_n = {}, {}, {}, 0
local now_keys, now_regs, now_since, now_n, now_i = {}, {}, {}, 0, 1
local later = {}
-- This step's ready queue: key, reg, value, defer depth (four slots per entry).
local ready, head, tail = {}, 1, 0
-- The task being resumed (0: none), its defer depth, and a count of resumes.
local current, depth, serial = 0, 0, 0

local function bump(key)
  next_reg = next_reg + 1
  regs[key] = next_reg
  return next_reg
end

local function push_ready(key, reg, value, d)
  ready[tail + 1], ready[tail + 2], ready[tail + 3], ready[tail + 4] = key, reg, value, d
  tail = tail + 4
end

--- Queues task `key` (registration `reg`) to resume `frames` frames from now.
local function push_frames(frames, key, reg)
  if frames == 1 then
    local n = next_n + 1
    next_keys[n], next_regs[n], next_since[n], next_n = key, reg, S.nanos, n
    return
  end
  local at = S.frame + frames
  local b = later[at]
  if b == nil then
    b = { n = 0 }
    later[at] = b
  end
  local n = b.n
  b[n + 1], b[n + 2], b[n + 3], b.n = key, reg, S.nanos, n + 3
end

--- The task key of `co`, making it a task of the running instance if it is not one yet.
local function key_for(co)
  local key = keys[co]
  if key == nil then
    key = rust_adopt(co, current)
    threads[key], keys[co] = co, key
  end
  return key
end

--- Forgets a task here (Rust forgets it through `release`/`fail`/`forget`).
local function drop(key)
  local co = threads[key]
  if co ~= nil then keys[co] = nil end
  threads[key], regs[key], args[key] = nil, nil, nil
end

--- Registers the wait request `kind(arg)` for task `key`.
local function register(key, kind, arg)
  local reg = bump(key)
  if kind == WAIT_TIME or kind == WAIT_REAL then
    if arg ~= nil and arg > 0 then
      rust_timer(key, reg, kind == WAIT_TIME and GAME or REAL, arg, false)
    else
      push_frames(1, key, reg)
    end
  elseif kind == WAIT_FRAMES then
    local n = arg or 1
    if n ~= n or n < 1 then n = 1 end
    if n ~= math_huge then push_frames(math_floor(n), key, reg) end
  elseif kind == PARK then
    -- The waker (a promise, a channel) holds the slot and fills the task in when it wakes it.
    arg.key, arg.reg = key, reg
  end
end

--- Closes a suspended thread (its to-be-closed variables run) or a failed one (its stack is
--- released); returns `ok, err`.
local function close(co)
  local status = co_status(co)
  if co_close ~= nil and (status == "suspended" or status == "dead") then return co_close(co) end
  return true
end

--- The text of an error value, for a report: a string as it is (Rust reads its bytes lossily),
--- anything else through `tostring`, protected. The one place where an error value a script
--- raised becomes text.
local function error_text(err)
  if type(err) == "string" then return err end
  local ok, text = pcall(tostring, err)
  if ok and type(text) == "string" then return text end
  return "(error object: its __tostring raised)"
end

-- Where a thread stands, cheaply: `traceback` names each function by searching every loaded
-- library for it, which made it most of the cost of a despawn; a cancellation needs the frames
-- only in the rare case that a `__close` raises. Only Lua 5.4 has to-be-closed variables, so the
-- others never need them.
local getinfo = _VERSION == "Lua 5.4" and jit == nil and debug and debug.getinfo
local MAX_FRAMES = 22

local function frames_of(co)
  if not getinfo then return nil end
  local frames, n = {}, 0
  while n < MAX_FRAMES do
    local info = getinfo(co, n, "Sl")
    if info == nil then break end
    n = n + 1
    frames[n] = info
  end
  return frames
end

--- `luaL_traceback`'s text for `frames`, naming each function by where it is defined.
local function frames_text(frames)
  if frames == nil then return "" end
  local lines = { "stack traceback:" }
  for i = 1, #frames do
    local f = frames[i]
    local where = f.currentline > 0 and string_format("%s:%d:", f.short_src, f.currentline)
      or f.short_src .. ":"
    local what
    if f.what == "main" then
      what = "main chunk"
    elseif f.what ~= "C" then
      what = string_format("function <%s:%d>", f.short_src, f.linedefined)
    else
      what = "?"
    end
    lines[#lines + 1] = "\t" .. where .. " in " .. what
  end
  return table.concat(lines, "\n")
end

--- Closes `co` as a cancellation does: true, or false, the text of what a `__close` raised and
--- the traceback of where the thread stood when it was closed.
local function close_reporting(co)
  local frames = frames_of(co)
  local ok, err = close(co)
  if ok then return true end
  return false, error_text(err), frames_text(frames)
end

--- Reports that task `key` failed with `err`, and closes it. Protected: under the memory limit
--- even the traceback may fail to allocate.
local function fail(key, co, err)
  local message = error_text(err)
  drop(key)
  local ok, tb = pcall(traceback, co)
  close(co) -- first: what the thread holds becomes garbage before Rust is called
  rust_fail(key, message, ok and tb or "")
end

--- What a resume of task `key` returned: register its wait, let it go, or report its error.
local function after_step_resume(key, co, ok, first, kind, arg)
  if ok then
    if regs[key] == nil then
      if first == REQ then
        register(key, kind, arg)
      else
        -- Finished, or yielded without a request: nothing will wake it, so let go (script code
        -- holding the thread may resume it). Rust reports a task the budget stopped.
        drop(key)
        rust_release(key, co)
      end
    elseif co_status(co) == "dead" then
      -- It finished after something registered it again (it deferred itself, say).
      drop(key)
      rust_release(key, co)
    end
  else
    fail(key, co, first)
  end
end

--- Resumes task `key` with `value` if `reg` is still its registration.
local function resume_task(key, reg, value, d)
  if regs[key] ~= reg then return end
  local co = threads[key]
  regs[key] = nil
  local previous, previous_depth = current, depth
  current, depth, serial = key, d, serial + 1
  local ok, first, kind, arg
  if value ~= ARGS then
    ok, first, kind, arg = co_resume(co, value)
  else
    local packed = args[key]
    args[key] = nil
    if packed then
      ok, first, kind, arg = co_resume(co, unpack(packed, 1, packed.n))
    else
      ok, first, kind, arg = co_resume(co)
    end
  end
  current, depth = previous, previous_depth
  if first == REQ and kind == PARK and regs[key] == nil then
    -- A park (a promise or channel wait), inlined: the waker holds the slot.
    next_reg = next_reg + 1
    regs[key] = next_reg
    arg.key, arg.reg = key, next_reg
    return
  end
  if first == REQ and kind == WAIT_TIME and arg == nil and regs[key] == nil then
    -- `task.wait()`, the common case, inlined: due next frame.
    next_reg = next_reg + 1
    regs[key] = next_reg
    local n = next_n + 1
    next_keys[n], next_regs[n], next_since[n], next_n = key, next_reg, S.nanos, n
    return
  end
  if not ok and first == "not enough memory" and co_close ~= nil then
    -- Release what the thread holds and collect it before anything here needs memory again.
    co_close(co)
    collectgarbage("collect")
  end
  after_step_resume(key, co, ok, first, kind, arg)
end

local step = { close = close_reporting }

--- Resumes this frame's frame waits (those made earliest first), then the ready queue (timers
--- Rust queued, then everything woken while the step runs), until nothing is ready.
--- If it raises (memory exhausted while queueing, say), calling it again goes on where it stopped.
function step.run()
  if now_i > now_n then
    -- A new frame: take the waits due now.
    local b = later[S.frame]
    if b ~= nil then
      later[S.frame] = nil
      for i = 1, b.n, 3 do
        local n = now_n + 1
        now_keys[n], now_regs[n], now_since[n], now_n = b[i], b[i + 1], b[i + 2], n
      end
    end
    local n = now_n
    for i = 1, next_n do
      n = n + 1
      now_keys[n], now_regs[n], now_since[n] = next_keys[i], next_regs[i], next_since[i]
    end
    now_n, next_n = n, 0
  end
  local now = S.nanos
  while now_i <= now_n do
    local i = now_i
    now_i = i + 1
    resume_task(now_keys[i], now_regs[i], (now - now_since[i]) / 1e9, 0)
  end
  now_i, now_n = 1, 0
  local peak = tail
  while head <= tail do
    -- Entries hold only numbers and markers, so consumed slots are left as they are (clearing them
    -- would push the queue into the table's hash part); an empty queue starts over at slot 1, so a
    -- ping-pong between two tasks reuses the same four slots.
    local key, reg, value, d = ready[head], ready[head + 1], ready[head + 2], ready[head + 3]
    head = head + 4
    if head > tail then head, tail = 1, 0 end
    resume_task(key, reg, value, d)
    if tail > peak then peak = tail end
  end
  if peak > 4 * 4096 then ready = {} end -- drained; a big one is dropped so it can shrink
  head, tail = 1, 0
end

--- Stores the arguments a task gets when it next resumes.
local function store_args(key, ...)
  local n = select("#", ...)
  args[key] = n > 0 and { n = n, ... } or nil
end

--- Parks the running thread on `slot` (a fresh table) until `wake(slot, ...)`; returns what
--- `wake` passed. This is how promises and channels wait: the slot is their waiter entry.
local function park(slot)
  return co_yield(REQ, PARK, slot)
end

--- Wakes the thread parked on `slot` with `...`, in this step after the running work. Returns
--- false if that thread no longer waits there (cancelled, or woken already).
local function wake(slot, ...)
  local key, reg = slot.key, slot.reg
  if key == nil or regs[key] ~= reg then return false end
  slot.key = nil
  local n = select("#", ...)
  args[key] = n > 0 and { n = n, ... } or nil
  ready[tail + 1], ready[tail + 2], ready[tail + 3], ready[tail + 4] = key, reg, ARGS, 0
  tail = tail + 4
  return true
end

--- Whether the thread parked on `slot` still waits there: `wake(slot)` would wake it. A channel
--- asks before it takes a waiter's value or decides a select case can proceed.
local function waiting(slot)
  local key = slot.key
  return key ~= nil and regs[key] == slot.reg
end

--- The task being resumed (0: none) and the number of resumes so far, for Rust.
function step.current() return current, serial end

--- Queues a woken task (Rust calls this for timers that fell due).
function step.wake(key, reg, value)
  push_ready(key, reg, value, 0)
end

--- Makes `co` a task of the instance being set up and queues it to run this step.
function step.start(co)
  local key = key_for(co)
  push_ready(key, bump(key), ARGS, 0)
end

--- Cancels task `key` for Rust (its instance is going away): closes the thread (see
--- `close_reporting` for what it returns).
function step.kill(key)
  local co = threads[key]
  drop(key)
  if co ~= nil then return close_reporting(co) end
  return true
end

--- The thread of task `key`.
function step.thread_of(key) return threads[key] end

--- Copies the task tables so that they shrink after a mass despawn (Lua tables never do).
function step.compact()
  local function copy(t)
    local fresh = {}
    for k, v in pairs(t) do fresh[k] = v end
    return fresh
  end
  threads, regs, args = copy(threads), copy(regs), copy(args)
  local fresh = setmetatable({}, { __mode = "k" })
  for k, v in pairs(keys) do fresh[k] = v end
  keys = fresh
end

--- Raises Lua's own `bad argument` error, blaming the caller `level` frames up.
local function bad(n, fname, expected, value, level)
  local got = type(value)
  if got == "userdata" then
    local mt = getmetatable(value)
    if type(mt) == "table" and type(mt.__name) == "string" then got = mt.__name end
  end
  error(string_format("bad argument #%d to '%s' (%s expected, got %s)", n, fname, expected, got), level + 1)
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

--- The result of resuming `co` from script code: registers a wait request and hides it.
local function after_resume(co, ...)
  local ok, first = ...
  if ok and first == REQ then
    register(key_for(co), select(3, ...))
    return true
  end
  return ...
end

--- `coroutine.resume`, with wait requests registered (see the file's first comment). Resuming a
--- task by hand ends whatever it waited for, so that waker cannot resume it a second time.
local function resume(co, ...)
  local key = keys[co]
  if key ~= nil then regs[key] = nil end
  return after_resume(co, co_resume(co, ...))
end

--- The result of `task.spawn`'s resume: errors are reported (never raised into the spawner).
local function after_spawn(co, ok, first, ...)
  if not ok then
    local key = keys[co]
    if key then
      fail(key, co, first)
    else
      local traced, tb = pcall(traceback, co)
      rust_report(error_text(first), traced and tb or "")
      close(co)
    end
  elseif first == REQ then
    register(key_for(co), ...)
  end
  return co
end

local function spawn_impl(fname, f, ...)
  local co = to_thread(f, 1, fname)
  local status = co_status(co)
  if status ~= "suspended" then
    error(string_format("cannot resume %s coroutine", status == "dead" and "dead" or "non-suspended"), 3)
  end
  local key = keys[co]
  if key then regs[key] = nil end -- it runs now: whatever it waited for no longer wakes it
  return after_spawn(co, co_resume(co, ...))
end

local task = {}

--- Resumes `f` (or a thread) now, until its first yield; returns the thread.
function task.spawn(f, ...) return spawn_impl("spawn", f, ...) end

--- Resumes `f` later in this frame's step, after the running work.
function task.defer(f, ...)
  local co = to_thread(f, 1, "defer")
  if depth >= MAX_DEFER_DEPTH then
    error(string_format("Maximum re-entrancy depth (%d) exceeded calling task.defer", MAX_DEFER_DEPTH), 2)
  end
  local key = key_for(co)
  store_args(key, ...)
  push_ready(key, bump(key), ARGS, depth + 1)
  return co
end

--- Resumes `f` on the first frame where `seconds` of game time have passed.
function task.delay(seconds, f, ...)
  if type(seconds) ~= "number" then bad(1, "delay", "number", seconds, 2) end
  local co = to_thread(f, 2, "delay")
  local key = key_for(co)
  store_args(key, ...)
  rust_timer(key, bump(key), GAME, seconds, true)
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
  if timeout ~= nil and type(timeout) ~= "number" then bad(2, "waitUntil", "number", timeout, 2) end
  if pred() then return true end
  local start = S.nanos
  local limit = timeout and timeout * 1e9
  if limit ~= limit then limit = 0 end -- NaN: no time at all, as a negative timeout
  while true do
    co_yield(REQ, WAIT_FRAMES, 1)
    if pred() then return true end
    if limit and S.nanos - start >= limit then return false end
  end
end

--- Cancels a task at once: it never resumes and its to-be-closed variables close now.
function task.cancel(co)
  if type(co) ~= "thread" then bad(1, "cancel", "thread", co, 2) end
  local status = co_status(co)
  if status == "running" then error("cannot cancel the running thread", 2) end
  if status == "normal" then error("cannot cancel a thread that is resuming another", 2) end
  local key = keys[co]
  if key then
    drop(key)
    core.forget(key)
  end
  if status == "suspended" then
    local ok, message, tb = close_reporting(co)
    if not ok then rust_report(message, tb) end
  end
end

local time = {}
--- Game seconds since start.
function time.elapsed() return S.elapsed end
--- This frame's game delta in seconds.
function time.delta() return S.delta end
--- The number of frames the scheduler has stepped.
function time.frame() return S.frame end
--- Real seconds since start (unscaled, unpaused).
function time.realElapsed() return S.real end

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
  step = step,
  -- For the promise and channel modules: the one wait mechanism, and the one `bad argument` helper.
  park = park,
  wake = wake,
  waiting = waiting,
  bad = bad,
  error_text = error_text,
}
