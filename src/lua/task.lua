-- The Lua half of the scheduler: the step that resumes tasks (over the ready queue and frame waits
-- it keeps in Rust memory), and the script API on top (`task`, `sleep`, `spawn`, `time`, the
-- `coroutine` wrappers).
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
-- reports and the instruction budget. The per-frame lists (the frame waits, the ready queue, the
-- step's resume counts) are Rust memory too, behind C functions (src/fastpath.rs) that call back
-- into nothing, so the common path (a task that resumes and waits for a later frame, or is woken
-- by a promise or a channel) costs a C call at most.
local core = ...

local REQ, ARGS = core.REQ, core.ARGS
local WAIT_TIME, WAIT_FRAMES, WAIT_REAL, PARK = core.WAIT_TIME, core.WAIT_FRAMES, core.WAIT_REAL, core.PARK
local GAME, REAL = core.GAME, core.REAL
local S = core.state -- the clocks (Rust writes them each frame)
local rust_adopt, rust_timer, rust_release, rust_fail, rust_report, rust_spent =
  core.adopt, core.timer, core.release, core.fail, core.report, core.spent
local traceback = core.traceback

-- `core.resume` (Lua 5.4 with the default budget) also tells the budget's watchdog which thread runs.
local co_create, co_resume, co_yield = coroutine.create, core.resume or coroutine.resume, coroutine.yield
local co_running, co_status, co_close = coroutine.running, coroutine.status, coroutine.close
-- `core.close` closes a suspended or dead thread telling the watchdog, like `core.resume`.
local close_thread = core.close or co_close
local type, error, select, tostring, getmetatable, setmetatable, pairs, collectgarbage =
  type, error, select, tostring, getmetatable, setmetatable, pairs, collectgarbage
local unpack = table.unpack or unpack
local string_format = string.format
local math_floor, math_huge, math_max = math.floor, math.huge, math.max

local MAX_DEFER_DEPTH = 10

-- Task state, by task key (an integer Rust allocates).
local threads = {}                        -- key -> thread
local regs = {}                           -- key -> current registration number
local args = {}                           -- key -> packed arguments for the next resume
local keys = setmetatable({}, { __mode = "k" }) -- thread -> key
local owner = {}                          -- key -> instance id
-- Threads that are no task but are still an instance's: the library's threads that run its code
-- (promise workers and executors: a promise shows its executor's thread to whoever holds it),
-- by instance id (`hold`); and tasks whose instance went away, until Rust closes them once the
-- step's resumes are over (`step.detach`), as NOBODY's. No other instance resumes them.
local held = setmetatable({}, { __mode = "k" })
local NOBODY = {}
-- The threads of tasks ended from outside their instance (by a script of another instance, the
-- game, a reload, a memory quota), to be closed once the work that ended them is over, each as
-- its instance (`close_all`): `thread, instance id, thread, id, ...`, in the order they were
-- ended. Kept here, not in Rust: a Rust handle per thread grows mlua's reference stack, whose
-- room a mass despawn would keep for good.
local ending = {}
local closes_due = core.closes_due -- tells Rust `ending` has work
local live = core.live -- whether Rust still tracks an instance
-- Under LuaJIT, which cannot close a thread, an ended task's thread stays suspended for good: it
-- is marked nobody's through its environment (which nothing runs under any more), not with an
-- entry in `held`, which would stay until the thread is collected and whose room a mass despawn
-- would keep (30,000 tasks: 0.8 MB).
local GRAVE, thread_env, set_thread_env = nil, nil, nil
if co_close == nil and core.debug ~= nil and core.debug.setfenv ~= nil then
  GRAVE, thread_env, set_thread_env = {}, core.debug.getfenv, core.debug.setfenv
end
local parked = {}                         -- key -> the slot it last parked on (stale once regs moves)

-- What the step shares with its raw loop (src/fastpath.rs, which names the slots the same way):
-- the task being resumed (0: none), its defer depth, a count of resumes, whether the step must
-- look at the end of the resume (false; `true`: a task failed for want of memory, and the step
-- collects garbage; `LOOK_NOBODY`: something ran as no instance, see `as_nobody`), the last
-- registration number, and how many error values' `__tostring`s run now as no instance.
local T = { 0, 0, 0, false, 0, 0 }
local CURRENT, DEPTH, SERIAL, LOOK, NEXT_REG, NOBODY_RUNS = 1, 2, 3, 4, 5, 6
local LOOK_NOBODY = 0
local fast = core.fast -- the C waits, the frame waits and the raw loops (src/fastpath.rs)
local run_frames, run_ready = fast.run_frames, fast.run_ready

-- Frame waits due next frame (the common case: `task.wait()`) and this frame's live in Rust
-- memory (`push_next`, `begin_frame`, `pop_now`); `task.waitFrames(n > 1)` goes to
-- `later[frame]`: `key, reg, since` triples, `n` slots.
local push_next, begin_frame, pop_now = fast.push_next, fast.begin_frame, fast.pop_now
local later = {}
-- This step's ready queue lives in Rust memory too: `push_ready(key, reg, value, d)` queues task
-- `key` to resume with `value` (the arguments marker `ARGS`, or a number) at defer depth `d` if
-- `reg` is still its registration then; `pop_ready()` takes the first entry; `carry_ready(...)`
-- and `carry_rest()` carry one entry, or all, to the next step, which `begin_frame` queues after
-- what was queued before it; `end_ready()` ends the step (a big queue gives its room back after
-- quiet steps).
local push_ready, pop_ready, carry_ready, carry_rest, end_ready =
  fast.push_ready, fast.pop_ready, fast.carry_ready, fast.carry_rest, fast.end_ready
-- What `wake` reads and writes, for the C code that wakes as it does (src/fastpath.rs): kept
-- current wherever one of these tables is replaced.
local wake_ctx = { regs, parked, args }

local function bump(key)
  local reg = T[NEXT_REG] + 1
  T[NEXT_REG], regs[key] = reg, reg
  return reg
end

--- Queues task `key` (registration `reg`) to resume `frames` frames from now.
local function push_frames(frames, key, reg)
  if frames == 1 then
    push_next(key, reg, S.nanos)
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

--- Makes `co` a task of the instance of task `current` (-1: of the host instance); its key.
local function adopt(co, current)
  local key, inst = rust_adopt(co, current)
  if key == nil then error(inst, 0) end -- the instance is at its live-task quota
  threads[key], keys[co], owner[key] = co, key, inst
  return key
end

--- The task key of `co`, making it a task of the running instance if it is not one yet.
local function key_for(co)
  local key = keys[co]
  if key == nil then key = adopt(co, T[CURRENT]) end
  return key
end

--- Forgets a task here (Rust forgets it through `release`/`fail`/`forget`).
local function drop(key)
  local co = threads[key]
  if co ~= nil then keys[co] = nil end
  threads[key], regs[key], args[key], owner[key], parked[key] = nil, nil, nil, nil, nil
end

--- Forgets the task thread `co` is, if it is one, here and in Rust: nothing it waited for wakes
--- it, and it is no task of any instance any more.
local function forget_task(co)
  local key = keys[co]
  if key ~= nil then
    drop(key)
    rust_release(key)
  end
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
    parked[key] = arg
  end
end

--- Closes a suspended thread (its to-be-closed variables run) or a failed one (its stack is
--- released); returns `ok, err`.
local function close(co)
  local status = co_status(co)
  if co_close ~= nil and (status == "suspended" or status == "dead") then return close_thread(co) end
  return true
end

--- `pcall(f, ...)`, but on the main thread (which carries no hook under Lua 5.4, so that the
--- step's own code runs at full speed) it runs `f` on a thread of its own that carries the budget
--- hook: script code the step calls (a `__tostring`, a `__close`) stays under a budget.
local rust_thread = core.thread
-- A new thread for every job, never one kept from an earlier job: the job is script code, which
-- can take its thread (`coroutine.running`) and resume it later itself, so a thread kept for reuse
-- would run every later job, whichever instance's, inside the script's own function.
local RUN_DONE = {}
local function runner(f, ...)
  return RUN_DONE, f(...)
end
local function finish_protected(ok, first, ...)
  if ok and first == RUN_DONE then return true, ... end
  return ok, first, ...
end
local function protected(f, ...)
  if rust_thread ~= nil then
    local _, main = co_running()
    if main == true then return finish_protected(co_resume(rust_thread(runner), f, ...)) end
  end
  return pcall(f, ...)
end

-- The promise module forgets the instance it cached for the running task whenever `as_nobody`
-- changes who runs (`owner_changed`, set by it).
local owner_changed = function() end

-- Puts back the count `as_nobody` raised, with a table write (after `f` spent the budget, the
-- raising hook refuses calls), before anything else.
local function nobody_done(saved, ...)
  T[NOBODY_RUNS] = saved
  owner_changed()
  return finish_protected(...)
end

--- Runs `f(...)` protected as no instance, on a thread of its own (one carrying the budget hook,
--- as `protected` makes on the main thread), leaving the running task as it is (its budget, its
--- key): code of any instance can run there. The count of such runs is a slot of `T`, which Rust
--- reads (`Refs::nobody_runs`). The thread is made before the count goes up (making it can fail
--- on a full heap) and `f` cannot yield past it. What raises between the count going up and
--- coming down (the calling thread's stack full: a script can fill it to the edge and catch the
--- error) leaves it up for the rest of that resume only: the end of every resume of the step
--- sets it to 0 (`finish_resume`; the raw loops hand a resume that ran this one to it, through
--- `T[LOOK]`), and so do the start of every close of an ended task, a `guard` outside any task
--- (the promise tick's `run_each` is one) and the end of the step, before Rust reads it for
--- the sync.
local function as_nobody(f, ...)
  local _, main = co_running()
  local co = (rust_thread ~= nil and main == true) and rust_thread(runner) or co_create(runner)
  if not T[LOOK] then T[LOOK] = LOOK_NOBODY end
  local saved = T[NOBODY_RUNS]
  T[NOBODY_RUNS] = saved + 1
  owner_changed()
  return nobody_done(saved, co_resume(co, f, ...))
end

--- The text of an error value, for a report: a string as it is (Rust reads its bytes lossily),
--- anything else through `tostring`, protected. The one place where an error value a script
--- raised becomes text. A `__tostring` runs as no instance (the value may be another
--- instance's: a rejection a task awaited), under the budget of whoever is running (a looping
--- one spends it).
local function error_text(err)
  if type(err) == "string" then return err end
  local ok, text = as_nobody(tostring, err)
  if ok and type(text) == "string" then return text end
  return "(error object: its __tostring raised)"
end

-- Where a thread stands, cheaply: `traceback` names each function by searching every loaded
-- library for it, which made it most of the cost of a despawn; a cancellation needs the frames
-- only in the rare case that a `__close` raises. Only Lua 5.4 has to-be-closed variables, so the
-- others never need them.
local getinfo = _VERSION == "Lua 5.4" and jit == nil and debug and debug.getinfo
local MAX_FRAMES = 22
-- (Lua 5.4) `stack_frames(co, n)`: the function and line of each of `co`'s first `n` frames, flat (a C
-- function, `src/fastpath.rs`: no source names are built, and no table per frame);
-- `frames_text` asks each function for its source in the rare case that the text is needed.
local stack_frames = getinfo and fast.frames

local function frames_of(co)
  if not stack_frames then return nil end
  return stack_frames(co, MAX_FRAMES)
end

--- `luaL_traceback`'s text for `frames`, naming each function by where it is defined.
local function frames_text(frames)
  if frames == nil then return "" end
  local lines = { "stack traceback:" }
  for i = 1, #frames, 2 do
    local f, line = getinfo(frames[i], "S"), frames[i + 1]
    local where = line > 0 and string_format("%s:%d:", f.short_src, line) or f.short_src .. ":"
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
  if err == "not enough memory" and co_close == nil then
    -- LuaJIT can neither close `co` nor collect before an allocation fails: what `co` holds stays
    -- until the step lets go of it, so the step gets headroom to go on (Rust collects and puts
    -- the limit back after the step).
    fast.relax_memory()
  end
  local message = error_text(err)
  drop(key)
  if S.spent then
    -- The budget of the task that runs it ran out (a `task.spawn` runs within its spawner's
    -- resume): the spawner is reported for it once the step has it back.
    close(co)
    rust_release(key)
    return
  end
  local ok, tb = pcall(traceback, co)
  close(co) -- first: what the thread holds becomes garbage before Rust is called
  if message == "not enough memory" then
    -- Collect it now, before anyone else needs memory (LuaJIT and Luau do not collect before
    -- they fail an allocation), and again once the resume that ran it is over (a thread LuaJIT
    -- cannot close is garbage only then).
    collectgarbage("collect")
    T[LOOK] = true
  end
  rust_fail(key, message, ok and tb or "")
end

--- Tells Rust that the budget was spent (`rust_spent`), which reports it (with `co`'s traceback),
--- closes `co` and resets the budget for the next resume. With the VM's heap full even that call
--- can fail (mlua allocates on the way in): then `co` is closed here (what filled the heap may be
--- on its stack), what it held is collected, and Rust is told again, without the thread. The flag
--- Lua reads is cleared here too, without allocating: left set, it stopped the next task of
--- another script in the stopped one's place.
local function report_spent(key, owner_id, co)
  if not pcall(rust_spent, key, owner_id, co) then
    if co ~= nil then pcall(close, co) end
    collectgarbage("collect")
    pcall(rust_spent, key, owner_id, nil)
  end
  S.spent = false
end

--- Task `key` spent its instruction budget (or a `__tostring` of its error did): it is forgotten,
--- reported with where the budget ran out, and closed (Rust closes it while the budget is still
--- spent, so a looping `__close` stops at once).
local function kill_spent(key, co)
  drop(key)
  report_spent(key, nil, co)
end

--- What a resume of task `key` returned: register its wait, let it go, or report its error.
local function after_step_resume(key, co, ok, first, kind, arg)
  if ok then
    if regs[key] == nil then
      if first == REQ then
        register(key, kind, arg)
      else
        -- Finished, or yielded without a request: nothing will wake it, so let go (script code
        -- holding the thread may resume it).
        drop(key)
        rust_release(key)
      end
    elseif co_status(co) == "dead" then
      -- It finished after something registered it again (it deferred itself, say).
      drop(key)
      rust_release(key)
    end
  else
    fail(key, co, first)
  end
end

--- Finishes a resume of task `key` (made current over `previous` at `previous_depth`) that
--- returned `ok, first, kind, arg`: collects garbage if a task failed for want of memory, reports
--- a failure or a spent budget, or registers its wait.
local function finish_resume(key, co, previous, previous_depth, ok, first, kind, arg)
  if previous == 0 then T[NOBODY_RUNS] = 0 end -- (see `as_nobody`)
  local look = T[LOOK]
  if look then
    T[LOOK] = false
    if look == true then collectgarbage("collect") end
  end
  if S.spent then
    -- The budget ran out: the task is dead for good, whatever it caught.
    kill_spent(key, co)
    T[CURRENT], T[DEPTH] = previous, previous_depth
    return
  end
  if not ok then
    if first == "not enough memory" and co_close ~= nil then
      -- Release what the thread holds and collect it before anything here needs memory again.
      close_thread(co)
      collectgarbage("collect")
    end
    -- Still charged to the task: its error object's `__tostring` runs under its budget.
    local message = error_text(first)
    if S.spent then
      kill_spent(key, co)
    else
      fail(key, co, message)
    end
    T[CURRENT], T[DEPTH] = previous, previous_depth
    return
  end
  T[CURRENT], T[DEPTH] = previous, previous_depth
  if first == REQ and kind == PARK and regs[key] == nil then
    -- A park (a promise or channel wait), inlined: the waker holds the slot.
    local reg = T[NEXT_REG] + 1
    T[NEXT_REG], regs[key] = reg, reg
    arg.key, arg.reg = key, reg
    parked[key] = arg
    return
  end
  if first == REQ and kind == WAIT_TIME and arg == nil and regs[key] == nil then
    -- `task.wait()`, the common case, inlined: due next frame.
    local reg = T[NEXT_REG] + 1
    T[NEXT_REG], regs[key] = reg, reg
    push_next(key, reg, S.nanos)
    return
  end
  after_step_resume(key, co, ok, first, kind, arg)
end

--- Resumes task `key` with `value` if `reg` is still its registration.
local resume_task
function resume_task(key, reg, value, d)
  if regs[key] ~= reg then return end
  local co = threads[key]
  regs[key] = nil
  local previous, previous_depth = T[CURRENT], T[DEPTH]
  T[CURRENT], T[DEPTH], T[SERIAL] = key, d, T[SERIAL] + 1
  local ok, first, kind, arg
  if value ~= ARGS then
    ok, first, kind, arg = co_resume(co, value)
  else
    local packed = args[key]
    if packed then
      args[key] = nil -- (only when there: storing nil under an absent key is the VM's slow path)
      ok, first, kind, arg = co_resume(co, unpack(packed, 1, packed.n))
    else
      ok, first, kind, arg = co_resume(co)
    end
  end
  return finish_resume(key, co, previous, previous_depth, ok, first, kind, arg)
end

-- Memory per instance (KiB; nil: off). After a resume, once the VM has grown by half a quota
-- since the last check, the step collects garbage and measures what each instance holds: what
-- is reachable from its globals and from its tasks' stacks and upvalues, stopping at what every
-- instance shares (the base and the crate's own code). Sizes are estimates (a table's slots,
-- a string's bytes). An instance over its quota has its tasks cancelled and is reported.
local MEMORY_QUOTA, rust_over_quota, env_of, dbg = core.MEMORY_QUOTA, core.over_quota, core.env_of, core.debug
local getlocal, getupvalue, getinfo = dbg and dbg.getlocal, dbg and dbg.getupvalue, dbg and dbg.getinfo
local shared = setmetatable({}, { __mode = "k" }) -- what every instance reaches (not counted)
local next_check = nil -- KiB of the VM at which the next check runs
local LIBRARY = "=bevy_lua_coroutines/"

local function gcount() return collectgarbage("count") end

--- Marks everything reachable from `root` as shared (tables only: the base and its libraries).
local function mark_shared(root)
  local stack, n = { root }, 1
  while n > 0 do
    local t = stack[n]
    stack[n], n = nil, n - 1
    if not shared[t] then
      shared[t] = true
      for k, v in next, t do
        if type(k) == "table" then n = n + 1; stack[n] = k end
        if type(v) == "table" then n = n + 1; stack[n] = v end
        if type(v) == "function" then shared[v] = true end
      end
      local mt = getmetatable(t)
      if type(mt) == "table" then n = n + 1; stack[n] = mt end
    end
  end
end

--- An estimate of the bytes reachable from the values in `roots` that nothing shared holds.
local function measure(roots)
  local seen, stack, n, bytes = {}, {}, 0, 0
  local function push(v)
    local t = type(v)
    if (t == "table" or t == "function" or t == "thread" or t == "userdata" or t == "string")
      and not seen[v] and not shared[v] then
      seen[v] = true
      n = n + 1
      stack[n] = v
    end
  end
  for i = 1, #roots do push(roots[i]) end
  while n > 0 do
    local v = stack[n]
    stack[n], n = nil, n - 1
    local t = type(v)
    if t == "string" then
      bytes = bytes + 25 + #v
    elseif t == "table" then
      bytes = bytes + 56
      for k, x in next, v do
        bytes = bytes + 32
        push(k)
        push(x)
      end
      push(getmetatable(v))
    elseif t == "function" then
      bytes = bytes + 40
      if getupvalue and getinfo(v, "S").source:sub(1, #LIBRARY) ~= LIBRARY then
        local i = 1
        while true do
          local name, x = getupvalue(v, i)
          if name == nil then break end
          bytes = bytes + 8
          push(x)
          i = i + 1
        end
      end
    elseif t == "thread" then
      bytes = bytes + 1024
      if getlocal then
        local level = 0
        while getinfo(v, level, "l") do
          local info = getinfo(v, level, "f")
          if info and info.func then push(info.func) end
          local i = 1
          while true do
            local name, x = getlocal(v, level, i)
            if name == nil then break end
            push(x)
            i = i + 1
          end
          level = level + 1
        end
      end
    else
      bytes = bytes + 40
    end
  end
  return bytes / 1024
end

--- Collects garbage and measures every instance that has tasks; cancels those over the quota.
local function check_memory()
  collectgarbage("collect")
  local roots = {}
  for key, inst in next, owner do
    local r = roots[inst]
    if r == nil then
      r = { env_of(inst) }
      roots[inst] = r
    end
    r[#r + 1] = threads[key]
  end
  local over = {}
  for inst, r in next, roots do
    local kib = measure(r)
    if kib > MEMORY_QUOTA then over[#over + 1] = { inst, kib } end
  end
  table.sort(over, function(a, b) return a[1] < b[1] end) -- in a deterministic order
  for i = 1, #over do rust_over_quota(over[i][1], over[i][2], MEMORY_QUOTA) end
  collectgarbage("collect")
  next_check = gcount() + MEMORY_QUOTA / 2
end

if MEMORY_QUOTA ~= nil then
  local resume_unchecked = resume_task
  resume_task = function(key, reg, value, d)
    resume_unchecked(key, reg, value, d)
    if gcount() > next_check then check_memory() end
  end
end

-- While something inspects tasks (a diagnostics plugin, the runner's `--inspect`), every resume is
-- bracketed by two Rust calls that count it, time it and open a tracing span named by its script.
-- Switching swaps the function the step calls, so the plain step pays nothing for it.
local plain_resume = resume_task
local track_enter, track_leave
local function tracked_resume(key, reg, value, d)
  if regs[key] ~= reg then return end
  track_enter(key)
  plain_resume(key, reg, value, d)
  track_leave()
end

local step = { close = close_reporting }

--- Marks the shared base: memory reachable from it is no instance's.
function step.share(base)
  mark_shared(base)
  next_check = gcount() + (MEMORY_QUOTA or 0) / 2
end

-- The step's bound. A task resumes at most MAX_RESUMES times in one step: a further wake (a
-- channel ping-pong, an await or `task.defer` loop) is carried to the next step, in the order it
-- came. With a time budget, once it is spent (checked after each resume, at least one resume per
-- step) everything still due is carried too. Carried work resumes at the start of the next step's
-- ready queue, after the timers that fell due.
local MAX_RESUMES, TIMED, over_time = core.MAX_RESUMES, core.TIMED, core.over_time
-- The tasks of one instance together resume at most this many times from the ready queue in one
-- step (tasks made during the step, a promise executor each, say, are new tasks each time).
local MAX_INSTANCE_RESUMES = 10 * MAX_RESUMES
-- Counts resumes against both bounds, in Rust memory (src/step_memory.rs's `Resumes`):
-- `count_resume(key, inst, step_no, max, max_instance)` is false (and counts nothing) when either
-- is reached; the raw loop counts the same way.
local count_resume = fast.count_resume
local step_no = 0
local last_frame = -1

-- What the raw ready loop (`run_ready`) reads: the step's tables (filled in by `step.run`, as some
-- are replaced at times) and the two bounds.
local ready_tables = { false, false, false, MAX_RESUMES, MAX_INSTANCE_RESUMES }

--- Turns per-resume accounting on (with the Rust functions that open and close a resume) or off
--- (no arguments).
function step.track(enter, leave)
  track_enter, track_leave = enter, leave
  resume_task = enter and tracked_resume or plain_resume
end

-- `task.list` and `task.info` are the inspector's (src/inspect.rs), installed once the VM is built.
local inspector = {}

--- Installs the inspector's `list` and `info`.
function step.set_inspector(t) inspector = t end

--- Resumes this frame's frame waits (those made earliest first), then the ready queue (timers
--- Rust queued, carried work, then everything woken while the step runs), until nothing is ready
--- or the step's bound stops it. If it raises (memory exhausted while queueing, say), calling it
--- again goes on where it stopped.
function step.run()
  -- Rust calls the step with no task running; a step that raised may have left one named.
  T[CURRENT], T[DEPTH], T[NOBODY_RUNS] = 0, 0, 0
  if S.spent then
    -- A budget spent in a resume whose end an error escaped (the heap was full, say): that task
    -- is stopped now, before any other runs, so that no other task is stopped in its place.
    local stopped = S.spent_task
    if threads[stopped] ~= nil then
      kill_spent(stopped, threads[stopped])
    else
      report_spent(stopped, nil, nil) -- forgotten already: Rust knows whose it was
    end
  end
  if S.frame ~= last_frame then
    -- A new frame: take the waits due now (after those a time budget left over), and the work
    -- the last step carried.
    last_frame = S.frame
    step_no = step_no + 1
    local b = later[S.frame]
    later[S.frame] = nil
    begin_frame(b)
  end
  local now = S.nanos
  local timed = TIMED
  -- The raw loops resume the tasks whose outcome is a common one (a frame wait, a park); what else
  -- happens comes back here. Not while a time budget or the inspector's tracking is on.
  local raw = run_frames ~= nil and not timed and resume_task == plain_resume
  local previous, previous_depth = T[CURRENT], T[DEPTH]
  local memory = MEMORY_QUOTA and next_check
  if raw then
    while true do
      local what, key, x, ok, first, kind, arg = run_frames(T, regs, threads, S, "spent", now, memory)
      if what == nil then break end -- every wait taken (or its arguments refused: the loop below)
      if what == 1 then
        resume_task(key, x, ok, 0) -- x: the registration, ok: the seconds waited
      elseif what == 2 then
        finish_resume(key, x, previous, previous_depth, ok, first, kind, arg) -- x: the thread
        if MEMORY_QUOTA ~= nil and gcount() > next_check then check_memory() end
      end
      memory = MEMORY_QUOTA and next_check -- a check moves it
    end
  end
  while true do
    local key, reg, since = pop_now()
    if key == nil then break end
    resume_task(key, reg, (now - since) / 1e9, 0)
    if timed and over_time() then
      -- Out of time: the rest waits for the next step (the frame waits left go before that
      -- frame's own; the woken tasks after the completions and timers that fall due by then).
      carry_rest()
      T[NOBODY_RUNS] = 0 -- (see `as_nobody`)
      end_ready()
      return
    end
  end
  if raw and run_ready ~= nil then
    memory = MEMORY_QUOTA and next_check -- the frame waits' resumes may have moved it
    local tables = ready_tables
    tables[1], tables[2], tables[3] = parked, args, owner
    while true do
      local what, key, x, ok, first, kind, arg = run_ready(T, regs, threads, S, "spent", now, memory, tables, step_no)
      if what == nil then break end -- the queue is empty (or its arguments refused: the loop below)
      if what == 1 then
        resume_task(key, x, ok, first) -- x: the registration, ok: the value, first: the depth
      else
        finish_resume(key, x, previous, previous_depth, ok, first, kind, arg) -- x: the thread
        if MEMORY_QUOTA ~= nil and gcount() > next_check then check_memory() end
      end
      memory = MEMORY_QUOTA and next_check
    end
  end
  while true do
    local key, reg, value, d = pop_ready()
    if key == nil then break end
    if not count_resume(key, owner[key] or 0, step_no, MAX_RESUMES, MAX_INSTANCE_RESUMES) then
      if regs[key] == reg then carry_ready(key, reg, value, d) end
    else
      resume_task(key, reg, value, d)
      if timed and over_time() then
        carry_rest()
        break
      end
    end
  end
  T[NOBODY_RUNS] = 0 -- (see `as_nobody`)
  end_ready()
end

--- Stores the arguments a task gets when it next resumes.
local function store_args(key, ...)
  local n = select("#", ...)
  args[key] = n > 0 and { n = n, ... } or nil
end

--- Parks the running thread on `slot` (a fresh table) until `wake(slot)`; returns nothing. This is
--- how promises and channels wait: the slot is their waiter entry.
local function park(slot)
  return co_yield(REQ, PARK, slot)
end

--- Wakes the thread parked on `slot`, in this step after the running work. Returns false if that
--- thread no longer waits there (cancelled, or woken already). Wakers pass nothing: what they
--- hand over waits in the slot or the promise, so this takes no varargs.
local function wake(slot)
  local key, reg = slot.key, slot.reg
  -- A slot is a table scripts can reach through a promise's fields, so it may be forged: one with
  -- no registration would match any key that has none, and keys and registrations can be guessed
  -- (a script of one instance could wake another's task). Only the slot the task parked on counts.
  if not key or not reg or regs[key] ~= reg or parked[key] ~= slot then return false end
  slot.key = false -- not waiting, and woken: a store over a value (the fast one), and what
  -- `lua/promise.lua` reads to know that it may keep the slot for another wait
  parked[key] = nil -- what the slot holds is the waker's business again
  if args[key] then args[key] = nil end -- stale arguments of a resume that never came
  push_ready(key, reg, ARGS, 0)
  return true
end

--- Whether the thread parked on `slot` still waits there: `wake(slot)` would wake it. A channel
--- asks before it takes a waiter's value or decides a select case can proceed.
local function waiting(slot)
  local key, reg = slot.key, slot.reg
  if not key or not reg then return false end
  return regs[key] == reg and parked[key] == slot
end

-- The table of the slots above: Rust reads the task being resumed, the number of resumes so
-- far and the count of runs as no instance from it without a call (`Refs::current`,
-- `Refs::nobody_runs`), and the promise module its running task.
step.shared = T

--- Queues a woken task (Rust calls this for timers that fell due).
function step.wake(key, reg, value)
  push_ready(key, reg, value, 0)
end

--- Makes `co` a task of the instance being set up and queues it to run this step.
function step.start(co)
  local key = keys[co] or adopt(co, -1) -- the host's, whichever task runs now
  push_ready(key, bump(key), ARGS, 0)
end

--- Runs `f(...)` protected, as work of instance `owner` (nil: the host instance). Outside any task
--- it gets a budget of its own (script code it runs, a `__close` or a `__tostring`, cannot loop
--- for ever); inside a task it is charged to that task. Returns what `pcall` returns (just
--- `true` when the budget ran out: that is reported).
local function guarded(owner, ...)
  if S.spent then
    -- Reported here as the budget error it is: the caller carries on as if `f` returned nothing.
    report_spent(-1, owner, nil)
    T[CURRENT], T[NOBODY_RUNS] = 0, 0
    return true
  end
  T[CURRENT], T[NOBODY_RUNS] = 0, 0 -- (see `as_nobody`)
  return ...
end
local function guard(owner, f, ...)
  if T[CURRENT] ~= 0 then return protected(f, ...) end
  T[CURRENT], T[SERIAL], T[NOBODY_RUNS] = -1, T[SERIAL] + 1, 0
  return guarded(owner, protected(f, ...))
end
step.guard = guard

--- Calls `f(list[i], list[i + 1])` for `i = 1, 3, ..., n`, each on a coroutine of its own (one
--- that yields is left there and the next runs), resumed as the step resumes tasks (the budget's
--- watchdog sees it), and `after()` after each: all under one `guard` outside any task, so they
--- share one budget and run as no instance. Each pair is taken out of `list` before it runs;
--- once the budget is spent no other starts (it would stop at once): the rest stay in `list`.
--- For the promise module's end-of-frame reactions.
local function run_each(list, n, f, after)
  for i = 1, n, 2 do
    if S.spent then return end
    local a, b = list[i], list[i + 1]
    list[i], list[i + 1] = nil, nil
    co_resume(co_create(f), a, b)
    after()
  end
end
function step.run_each(list, n, f, after)
  return guard(nil, run_each, list, n, f, after)
end

--- Makes thread `co` nobody's: no instance can resume it (a promise worker's or executor's
--- entry in `held` goes; under LuaJIT its environment marks it).
local function bury(co)
  if GRAVE ~= nil then
    set_thread_env(co, GRAVE)
    held[co] = nil
  else
    held[co] = NOBODY
  end
end

--- Leaves thread `co` of instance `id` to `close_all`, as nobody's until then.
local function end_later(co, id)
  local n = #ending
  ending[n + 1], ending[n + 2] = co, id
  bury(co)
end

--- Forgets task `key` of instance `id` for Rust (its instance is going away) and leaves its
--- thread to `close_all`: nothing resumes it again. Returns whether it had one.
function step.detach(key, id)
  local co = threads[key]
  drop(key)
  if co == nil then return false end
  end_later(co, id)
  return true
end

--- Takes the entries of `ending` from position `from` on out of it: returns the list that held
--- them (at the same positions), and `ending` becomes a new list of those before. (Cleared in
--- place instead, the list would keep the room of a mass despawn's entries for good.)
local function take_ending(from)
  local list, kept = ending, {}
  for j = 1, from - 1 do kept[j] = list[j] end
  ending = kept
  return list
end

--- Closes the threads of `ending` (tasks ended from outside their instance) from position
--- `from` on (those before were left by earlier work), all under one budget, each as its
--- instance: while one closes, the current task slot names it as `CLOSING - id` (Rust takes
--- that instance for the host, and refuses to start a task for it, which would outlive the
--- cancellation), so a close costs no call into Rust unless it raised. Once the budget is spent,
--- it is reported as that instance's and the rest stay in `ending`, in order, for the next
--- budget: closed now, each would stop at its first instruction, and past the library's grace
--- the loop itself would stop and lose them. So do the rest when closing one raised out of the
--- library's own code (the heap full, say): that one is reported and counts as closed. A thread
--- that could not be closed (LuaJIT closes none) stays nobody's.
local CLOSING, close_failed = core.CLOSING, core.close_failed

--- Closes `list[i]` (as instance `list[i + 1]`) for `i = from, from + 2, ...`, noting in `at[1]`
--- the one it is at; returns where the entries left start once the budget is spent (nil: none).
local function close_list(list, from, at)
  for i = from, #list, 2 do
    at[1] = i
    local co, id = list[i], list[i + 1]
    T[CURRENT], T[NOBODY_RUNS] = CLOSING - id, 0 -- (see `as_nobody`)
    local ok, message, tb = close_reporting(co)
    T[CURRENT], T[NOBODY_RUNS] = -1, 0
    if co_status(co) == "dead" then held[co] = nil end
    if S.spent then return i + 2 end
    if not ok then close_failed(id, message, tb) end
  end
  return nil
end

--- Reports that closing a task of instance `id` raised `err` out of the library's own code.
local function report_raised(id, err)
  close_failed(id, "closing an ended task failed: " .. error_text(err), "")
end

local function close_all(from)
  while ending[from] ~= nil do
    local list, at = take_ending(from), { from } -- what these closes end goes to `ending`
    local ok, left = pcall(close_list, list, from, at)
    T[CURRENT] = -1
    local id = list[at[1] + 1]
    if S.spent then
      report_spent(-1, id, nil)
    elseif not ok then
      pcall(report_raised, id, left)
    end
    if not ok then left = at[1] + 2 end
    if left ~= nil then
      -- The rest go back before what these closes ended, in `list` itself (which still holds
      -- the entries before `from`): without allocating, unless these closes ended more.
      local n, total = from - 1, #list
      for j = left, total do n = n + 1; list[n] = list[j] end
      for j = n + 1, total do list[j] = nil end
      for j = from, #ending do n = n + 1; list[n] = ending[j] end
      ending = list
      return
    end
  end
end

--- Closes the ended tasks' threads from position `from` of `ending` on (see `close_all`);
--- returns how many entries are left from there, whether any are left at all, and what raised
--- out of the loop itself, if anything (nothing is lost then either: the rest stay).
function step.close_ended(from)
  local ok, err = guard(nil, close_all, from)
  return math_max(0, #ending - from + 1), ending[1] ~= nil, (not ok) and error_text(err) or nil
end

--- Where the threads the work starting now ends will go in `ending` (see `step.close_ended`).
function step.ending_mark() return #ending + 1 end

--- Moves the entries of `ending` whose instance is in the set `ids` to its end, in order, and
--- returns where the first of them now stands, and how many entries it moved from before
--- `mark` (a mark the enclosing work holds moves down by that much): a reload closes every ended
--- task of the instances it restarts before their new code runs, also those the step left over.
function step.claim_ending(ids, mark)
  local others, mine, n, m, below = {}, {}, 0, 0, 0
  for i = 1, #ending, 2 do
    local co, id = ending[i], ending[i + 1]
    if ids[id] then
      mine[m + 1], mine[m + 2], m = co, id, m + 2
      if i < mark then below = below + 2 end
    else
      others[n + 1], others[n + 2], n = co, id, n + 2
    end
  end
  for j = 1, m do others[n + j] = mine[j] end
  ending = others
  return n + 1, below
end

--- Cancels task `key` for Rust (its instance is going away): forgets it and closes its thread,
--- its `__close` handlers under a budget (see `close_reporting` for what it returns). Inside a
--- task (its instance despawned its own entity) they are charged to that task; Rust kills
--- another instance's tasks only outside any task, as that instance.
function step.kill(key)
  local co = threads[key]
  drop(key)
  if co == nil then return true end
  local ok, closed, message, tb = guard(nil, close_reporting, co)
  if not ok then return false, closed, "" end
  if closed == nil then return true end -- its `__close` spent a budget, reported as such
  return closed, message, tb
end

--- The thread of task `key`.
function step.thread_of(key) return threads[key] end

-- The lists of the step's Rust memory, as `fast.entry_at` numbers them.
local READY_LIST, NOW_LIST, NEXT_LIST, entry_at = 0, 1, 2, fast.entry_at

--- Whether wait `reg` of task `key` is in list `which` of the step's Rust memory. A loop here, in
--- Lua, one entry a call, so that the instruction budget counts the scan as any script's work:
--- scripts can make the lists long at little cost (`task.defer` of one coroutine in a loop).
local function listed(which, key, reg)
  local i = 1
  while true do
    local k, r = entry_at(which, i)
    if k == nil then return false end
    if k == key and r == reg then return true end
    i = i + 1
  end
end

--- What the step knows of task `key`, for the inspector (`lua/inspect.lua`); never called by the
--- step itself. Returns the thread, its registration (nil: none), how it waits as far as the Lua
--- half knows (`"running"`, `"ready"`, `"park"` with the slot, `"frames"` with the frames left,
--- or nil: a Rust timer, or nothing), and the task being resumed now.
function step.state(key)
  local co, reg = threads[key], regs[key]
  if co == nil then return nil end
  if key == T[CURRENT] then return co, reg, "running" end
  if reg == nil then return co, nil, nil end
  local slot = parked[key]
  if slot ~= nil and slot.reg == reg and slot.key == key then return co, reg, "park", slot end
  if listed(READY_LIST, key, reg) or listed(NOW_LIST, key, reg) then return co, reg, "ready" end
  if listed(NEXT_LIST, key, reg) then return co, reg, "frames", 1 end
  for at, b in pairs(later) do
    for i = 1, b.n, 3 do
      if b[i] == key and b[i + 1] == reg then return co, reg, "frames", at - S.frame end
    end
  end
  return co, reg, nil
end

--- The key of `co` if it is a task (nil otherwise).
function step.key_of(co) return keys[co] end

--- Copies the task tables so that they shrink after a mass despawn (Lua tables never do).
function step.compact()
  local function copy(t)
    local fresh = {}
    for k, v in pairs(t) do fresh[k] = v end
    return fresh
  end
  threads, regs, args, owner, parked = copy(threads), copy(regs), copy(args), copy(owner), copy(parked)
  wake_ctx[1], wake_ctx[2], wake_ctx[3] = regs, parked, args -- (before anything here can raise)
  -- The frame waits' and the ready queue's room (the queue's only if it is empty: the instances
  -- started since the last step, before this runs, have their first tasks on it), and the counts.
  fast.shrink_waits()
  local function copy_weak(t)
    local fresh = setmetatable({}, { __mode = "k" })
    for k, v in pairs(t) do fresh[k] = v end
    return fresh
  end
  keys, held = copy_weak(keys), copy_weak(held)
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

--- The instance whose code runs now: the running task's, or (script code the step runs outside
--- any task, under `guard`) the one Rust runs it for.
local rust_instance = core.instance
local function running_instance()
  if T[NOBODY_RUNS] > 0 then return nil end
  local current = T[CURRENT]
  if current > 0 then return owner[current] end
  return rust_instance()
end

--- Whose thread `co` is: the instance of the task it is, or the one it is held for (`held`;
--- NOBODY for an ended task's, see `GRAVE`); nil for a thread that is neither.
local function holder_of(co)
  local key = keys[co]
  if key ~= nil then return owner[key] end
  local holder = held[co]
  if holder == nil and GRAVE ~= nil and thread_env(co) == GRAVE then return NOBODY end
  return holder
end

--- Whether thread `co` is a task of another instance than the one running, or a thread another
--- instance holds (see `held`).
local function foreign(co)
  local holder = holder_of(co)
  return holder ~= nil and holder ~= running_instance()
end

--- For promises: `co`, a thread the library made to run code of instance `id` (nil: of none), is
--- that instance's while it is no task.
local function hold(co, id)
  if id ~= nil then held[co] = id end
  return co
end

--- Raises `bad argument #n to 'fname'`, blaming the caller `level` frames up, if thread `co` is
--- a task of another instance (`foreign`): a script that got hold of another's thread (handed
--- over through a channel or a module, or left in a promise's fields) cannot resume, close,
--- cancel, spawn, defer or delay it.
local function check_own(co, n, fname, level)
  if foreign(co) then
    error(string_format("bad argument #%d to '%s' (a task of another script)", n, fname), level + 1)
  end
end

--- Turns `f | thread` into a thread, for spawn/defer/delay. A dead thread is refused here: it
--- could never run.
local function to_thread(f, n, fname, level)
  level = level or 3
  local t = type(f)
  if t == "thread" then
    if co_status(f) == "dead" then
      error(string_format("bad argument #%d to '%s' (cannot resume dead coroutine)", n, fname), level)
    end
    check_own(f, n, fname, level)
    return f
  end
  if t == "function" then return co_create(f) end
  local mt = getmetatable(f)
  if type(mt) == "table" and mt.__call ~= nil then
    return co_create(function(...) return f(...) end)
  end
  bad(n, fname, "function or thread", f, level)
end

--- The result of resuming `co` from script code: registers a wait request and hides it. A task
--- that did not ask to wait again (it finished, failed, or yielded plainly) is let go: nothing
--- will wake it, and whoever resumed it by hand has its results.
local function after_resume(co, ...)
  local ok, first = ...
  if ok and first == REQ then
    register(key_for(co), select(3, ...))
    return true
  end
  local key = keys[co]
  if key ~= nil and regs[key] == nil then
    drop(key)
    rust_release(key)
  end
  return ...
end

--- `coroutine.resume`, with wait requests registered (see the file's first comment). Resuming a
--- task by hand ends whatever it waited for, so that waker cannot resume it a second time.
local function resume(co, ...)
  if S.spent then error("script exceeded its instruction budget", 2) end
  check_own(co, 1, "resume", 2)
  local key = keys[co]
  if key ~= nil then regs[key], parked[key] = nil, nil end
  return after_resume(co, co_resume(co, ...))
end

--- `coroutine.close`: closing a task cancels it (nothing it waited for wakes it later).
local function close_coroutine(co)
  if type(co) == "thread" then
    check_own(co, 1, "close", 2)
    local status = co_status(co)
    if status == "suspended" then forget_task(co) end
    if status == "suspended" or status == "dead" then return close_thread(co) end
  end
  return co_close(co)
end

--- The result of `task.spawn`'s resume: errors are reported (never raised into the spawner).
local function after_spawn(co, ok, first, ...)
  if not ok then
    local key = keys[co]
    if key then
      fail(key, co, first)
    elseif S.spent then
      close(co) -- the spawner's budget ran out: it is reported once the step has it back
    else
      local msg = error_text(first)
      local traced, tb = pcall(traceback, co)
      close(co)
      if msg == "not enough memory" then
        collectgarbage("collect")
        T[LOOK] = true
      end
      rust_report(msg, traced and tb or "")
    end
  elseif first == REQ then
    register(key_for(co), ...)
  end
  return co
end

local function spawn_impl(fname, f, ...)
  if S.spent then error("script exceeded its instruction budget", 4) end
  local co = to_thread(f, 1, fname, 4)
  if co_status(co) ~= "suspended" then error("cannot resume non-suspended coroutine", 4) end
  local key = keys[co]
  if key then regs[key], parked[key] = nil, nil end -- it runs now: whatever it waited for no longer wakes it
  return after_spawn(co, co_resume(co, ...))
end

--- For promises: `pcall(task.spawn, co, a, b, c, d, e, f, g)` for `co`, a suspended thread, with
--- up to seven values and without the vararg calls and checks, while nothing unusual happens: the
--- budget is not spent, `co` is not a task, and it finishes or yields without a request (as a
--- pooled promise worker does). Anything else takes `task.spawn`'s own path; either way the
--- results are those of that `pcall` (just `true` when it went well).
local function spawn_job(co, a, b, c, d, e, f, g)
  if S.spent or keys[co] then return pcall(spawn_impl, "spawn", co, a, b, c, d, e, f, g) end
  local ok, first, kind, arg = co_resume(co, a, b, c, d, e, f, g)
  if ok and first ~= REQ then return true end
  return pcall(after_spawn, co, ok, first, kind, arg)
end

local task = {}

--- Resumes `f` (or a thread) now, until its first yield; returns the thread.
function task.spawn(f, ...)
  local co = spawn_impl("spawn", f, ...) -- not a tail call: errors blame the caller, three levels up
  return co
end

--- Resumes `f` later in this frame's step, after the running work.
function task.defer(f, ...)
  local co = to_thread(f, 1, "defer")
  local depth = T[DEPTH]
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

-- The common waits are C functions (src/fastpath.rs) that yield their request directly; they
-- raise their `bad argument` errors through `bad`.
fast.set_bad(bad)
--- Yields until `seconds` of game time have passed (the next frame for nil, 0, negative or NaN).
task.wait = fast.wait
--- Yields for `n` frames (default 1); returns the game seconds that passed.
task.waitFrames = fast.waitFrames

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
--- Cancels suspended or dead thread `co` (a task or not): it is forgotten, and closed.
local function cancel_thread(co, status)
  forget_task(co)
  if status == "suspended" then
    local ok, message, tb = close_reporting(co)
    if not ok then rust_report(message, tb) end
  end
end

function task.cancel(co)
  if type(co) ~= "thread" then bad(1, "cancel", "thread", co, 2) end
  local status = co_status(co)
  if status == "running" then error("cannot cancel the running thread", 2) end
  if status == "normal" then error("cannot cancel a thread that is resuming another", 2) end
  check_own(co, 1, "cancel", 2)
  cancel_thread(co, status)
end

--- For promises: cancels `co`, the executor thread of a cancelled promise of instance `id` (nil:
--- of none), if it is that instance's: a task of it, or a thread held for it (a thread a script
--- wrote into the promise's plain field is left alone). Whoever runs the cancellation (a timer,
--- another instance that holds the promise), the thread goes: closed now when `id` runs now;
--- otherwise forgotten now, so nothing resumes it, and closed as `id` once the step's resumes
--- are over (its `__close` handlers never run as the instance that cancelled). The thread of an
--- instance already let go, or of none (made by code running as no instance) when an instance
--- cancels, runs nothing: it is only made nobody's.
local function cancel_executor(co, id)
  if co_status(co) ~= "suspended" or holder_of(co) ~= id then return end
  local running = running_instance()
  if id == nil and running ~= nil then
    -- Made by code running as no instance: it does not run as the instance cancelling it.
    bury(co)
    return
  end
  if id == running then return cancel_thread(co, "suspended") end
  forget_task(co)
  if not live(id) then
    -- Its instance was let go: none of its code runs again, which would make what the instance
    -- was let go of (a worker pool, callbacks) anew.
    bury(co)
    return
  end
  end_later(co, id)
  closes_due()
end

--- Every live task of the running instance (see the README's "Seeing what scripts do").
function task.list() return inspector.list() end

--- What task `co` waits on and where it stands; nil if `co` is not a task.
function task.info(co)
  if type(co) ~= "thread" then bad(1, "info", "thread", co, 2) end
  if foreign(co) then return nil end -- not one of its tasks
  return inspector.info(co)
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

--- `task.wait` under its global name.
local sleep = fast.sleep

--- `xpcall` for scripts. A message handler runs where the error was raised, and the error the
--- instruction budget raises from its hook where the code cannot yield (Lua 5.4) is raised with
--- hooks off: a handler that looped there would run for ever. So once the budget is spent the
--- handler is not called, and the error passes as it is.
local raw_xpcall = xpcall
local function script_xpcall(f, handler, ...)
  if handler == nil then return raw_xpcall(f, handler, ...) end -- its own `bad argument`
  return raw_xpcall(f, function(e)
    if S.spent then return e end
    return handler(e)
  end, ...)
end

local coroutine_api = {}
for k, v in pairs(coroutine) do coroutine_api[k] = v end
coroutine_api.resume = resume
if co_close ~= nil then coroutine_api.close = close_coroutine end

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
  xpcall = script_xpcall,
  sleep = sleep,
  spawn = function(f, ...)
    local co = spawn_impl("spawn", f, ...)
    return co
  end,
  step = step,
  -- For the promise and channel modules: the one wait mechanism, the promise workers' resume
  -- (`spawn_job`), and the one `bad argument` helper.
  park = park,
  wake = wake,
  waiting = waiting,
  -- For `lua/promise.lua`'s batch settlement in C (`fast.settle_resolved`), which wakes as `wake`
  -- does: the tables it reads and writes.
  wake_ctx = wake_ctx,
  settle_resolved = fast.settle_resolved,
  spawn_job = spawn_job,
  -- The instance whose code runs now (a Rust call only outside any task), and where to say
  -- that it changed without a new resume (`as_nobody`).
  running_instance = running_instance,
  on_owner_changed = function(f) owner_changed = f end,
  cancel_executor = cancel_executor,
  hold = hold,
  bad = bad,
  error_text = error_text,
}
