-- Promises with roblox-lua-promise v4 names and semantics, and `async`, `await`, `asyncTry`, on top
-- of the scheduler's one wait mechanism (`park`/`wake` from task.lua).
--
-- Called once with `deps` (runtime.rs builds it) and returns `{ Promise, async, await, asyncTry, tick }`.
--
-- * A promise is a table of private fields (`_status`, `_values`, ...) whose metatable scripts cannot
--   reach. Everything that reacts to a settlement (handlers, awaiting tasks, combinators, promises
--   that follow this one) waits in one queue per promise, so reactions run in the order they were
--   attached.
-- * Executors and handlers run in their own new thread (`task.spawn`), so they may yield; an error
--   in them rejects with a `Promise.Error` (kind, error, trace, context, parent).
-- * A task that awaits parks on a slot the promise keeps in its queue; settling wakes it, so it
--   resumes later in the same step, after the running thread yields.
-- * Cancelling goes down to every consumer (the promises made from this one) and up to the parent
--   once all of the parent's consumers are cancelled; it closes the executor's thread.
-- * A rejection nothing observed is reported by `tick` (Rust calls it after every step) once the
--   next frame has ended.
--
-- Written for Lua 5.1 to 5.4 and Luau alike: no `goto`, integer division or `<close>` here.
local deps = ...

local task = deps.task
local task_spawn, task_defer, task_wait = task.spawn, task.defer, task.wait
local cancel_executor, hold = deps.cancel_executor, deps.hold
local park, wake, waiting, spawn_job = deps.park, deps.wake, deps.waiting, deps.spawn_job
local traceback, bad, frame = deps.traceback, deps.bad, deps.frame
local rust_report, rust_owner, spawn_as = deps.report, deps.owner, deps.spawn_as
-- The step's slots (task.lua's `T`): [1] the task being resumed (0: none), [3] resumes so far.
local step_slots = deps.slots
local guard = deps.guard

local type, error, select, tostring, tonumber, ipairs, pairs, next, setmetatable, getmetatable, pcall, xpcall =
  type, error, select, tostring, tonumber, ipairs, pairs, next, setmetatable, getmetatable, pcall, xpcall
local rawequal, rawget = rawequal, rawget
local unpack = table.unpack or unpack
local table_remove, table_concat, table_insert = table.remove, table.concat, table.insert
local string_format, string_sub, string_find, string_gsub = string.format, string.sub, string.find, string.gsub
local co_create, co_status, co_running, co_yield = coroutine.create, coroutine.status, coroutine.running, coroutine.yield
-- This chunk runs with the VM's own globals (before the sandbox), so the whole `debug` library is here.
local debug_getmetatable = debug and debug.getmetatable
local debug_getinfo = debug and debug.getinfo

local STARTED, RESOLVED, REJECTED, CANCELLED = "Started", "Resolved", "Rejected", "Cancelled"
local EXECUTION_ERROR, ALREADY_CANCELLED, NOT_RESOLVED_IN_TIME, TIMED_OUT =
  "ExecutionError", "AlreadyCancelled", "NotResolvedInTime", "TimedOut"

-- Reactions nest (a handler settles a promise whose handler settles another...) at most this deep
-- before they are queued and run by the outermost settlement: each level is a coroutine resume, and
-- Lua allows about 200 nested C calls.
local MAX_NEST = 8
-- Chunks whose frames stack traces leave out.
local INTERNAL = "=bevy_lua_coroutines/"

local function pack(...)
  return { n = select("#", ...), ... }
end

local safe_tostring = deps.error_text

--- Whether `f` can be called: a function, or a table or userdata with `__call`.
local function callable(f)
  if type(f) == "function" then return true end
  local mt = getmetatable(f)
  return type(mt) == "table" and mt.__call ~= nil
end

--- A table of names that raises when a missing name is read (`Promise.Status.Resloved` is a typo,
--- not nil).
local function enum(name, members)
  local t = {}
  for i = 1, #members do t[members[i]] = members[i] end
  return setmetatable(t, {
    __index = function(_, key) error(string_format("%s is not in %s", tostring(key), name), 2) end,
  })
end

-- Metatables scripts cannot reach: `getmetatable` returns the `__metatable` text instead.
local promise_methods = {}
local PromiseMT = { __index = promise_methods, __metatable = "Promise" }
local error_methods = {}
local ErrorMT = { __index = error_methods, __metatable = "Promise.Error" }

local function has_metatable(v, mt)
  if type(v) ~= "table" then return false end
  if debug_getmetatable then return debug_getmetatable(v) == mt end
  return getmetatable(v) == mt.__metatable -- Luau has no `debug.getmetatable`
end

local function is_promise(v) return has_metatable(v, PromiseMT) end
local function is_error(v) return has_metatable(v, ErrorMT) end

local function check_self(v, name, class, check)
  if not check(v) then
    error(string_format("calling '%s' on bad self (%s expected, got %s)", name, class, type(v)), 3)
  end
end

---------------------------------------------------------------------------------------------------
-- Stack frames, for `asyncTry`'s `err.stack`.

local function is_internal(info)
  return info.what ~= "C" and string_sub(info.source or "", 1, #INTERNAL) == INTERNAL
end

--- A frame record; `caller` is the frame that called it (a name given by this library's own code
--- is not the script's, so it is left out).
local function frame_of(info, caller)
  local func = info.name
  if caller ~= nil and is_internal(caller) then func = nil end
  if func == nil then
    if info.what == "main" then
      func = "main chunk"
    else
      func = string_format("function <%s:%d>", info.short_src, info.linedefined or 0)
    end
  end
  return { file = info.short_src, line = info.currentline, func = func, async = false }
end

--- The script frames of the running thread, innermost first (C frames and this crate's chunks left out).
local frames_here
if debug_getinfo then
  frames_here = function()
    local frames = {}
    local info = debug_getinfo(1, "Sln")
    for level = 2, 201 do
      if info == nil then break end
      local caller = debug_getinfo(level, "Sln")
      if info.what ~= "C" and not is_internal(info) then frames[#frames + 1] = frame_of(info, caller) end
      info = caller
    end
    return frames
  end
else
  -- Luau: `debug.info` answers by level; a function's own "l" is the line it was defined at.
  local debug_info = debug.info
  local function internal_source(src) return string_find(src, "bevy_lua_coroutines/", 1, true) ~= nil end
  frames_here = function()
    local frames = {}
    for level = 2, 201 do
      local src, line, name, f = debug_info(level, "slnf")
      if src == nil then break end
      if src ~= "[C]" and line ~= nil and line > 0 and not internal_source(src) then
        local caller = debug_info(level + 1, "s")
        if name == "" or (caller ~= nil and internal_source(caller)) then name = nil end
        frames[#frames + 1] = {
          file = src,
          line = line,
          func = name or string_format("function <%s:%d>", src, debug_info(f, "l") or 0),
          async = false,
        }
      end
    end
    return frames
  end
end

--- A Lua traceback without the lines of this library's own frames.
local function clean_trace(text)
  if type(text) ~= "string" then return text end
  text = string_gsub(text, "\n[^\n]*bevy_lua_coroutines/[^\n]*", "")
  text = string_gsub(text, "\n\t%[C%]: in function '[x]?pcall'", "")
  text = string_gsub(text, "\n\t%[C%]: in %?", "")
  return text
end

--- A Lua-style traceback of `stack`; frames of awaiting tasks read `[async]`.
local function render_frames(stack)
  local lines = { "stack traceback:" }
  for i = 1, #stack do
    local f = stack[i]
    lines[#lines + 1] = string_format("\t%s%s:%s: in %s", f.async and "[async] " or "", f.file, tostring(f.line), f.func)
  end
  return table_concat(lines, "\n")
end

--- `message`, then the traceback of `stack`.
local function render(message, stack)
  return message .. "\n" .. render_frames(stack)
end

--- `file:line` of the innermost script frame (the script's call into this library).
local function call_site()
  local f = frames_here()[1]
  if f == nil then return "?" end
  return f.file .. ":" .. tostring(f.line)
end

---------------------------------------------------------------------------------------------------
-- Async stacks: where a rejection was raised, then every frame that awaited it on the way.
--
-- A promise rejected by an error keeps that error's *stack* (`_stack`, innermost first): the frames
-- where it was raised, then, for each `await` it went through, the frames of the awaiting thread
-- (marked `async`). `await` raises the rejection with its stack plus its own frames: a
-- `Promise.Error` carries it (`_stack` of the error it raises); any other value cannot, so the
-- awaiting thread remembers it (`thrown`), and the handler that catches the same value there
-- (an executor's, a handler's, `asyncTry`'s) takes it from there.

local thrown = setmetatable({}, { __mode = "k" }) -- thread -> { value, stack } `await` raised last
local captured = setmetatable({}, { __mode = "k" }) -- error table -> the stack it was caught with

--- The stack of `err`, being raised in the running thread (called from an error handler):
--- what `await` raised it with, else where it is raised now.
local function stack_of_raise(err)
  local co = co_running()
  local rec = thrown[co]
  if rec ~= nil and rawequal(rec[1], err) then
    thrown[co] = nil
    return rec[2]
  end
  if is_error(err) and err._stack ~= nil then return err._stack end
  return frames_here()
end

--- `a` then `b`, in a new list (the frame records are shared: nothing changes them).
local function concat_frames(a, b)
  local out = {}
  for i = 1, #a do out[i] = a[i] end
  local n = #out
  for i = 1, #b do out[n + i] = b[i] end
  return out
end

-- Lua 5.4 says whether a frame was tail-called; LuaJIT does not (nil: unknown); Luau makes no
-- tail calls at all.
local knows_tail_calls = debug_getinfo ~= nil and pcall(debug_getinfo, 1, "t")

--- Whether `f` is the function of a frame of the running thread.
local function on_stack(f)
  for level = 2, 202 do
    local info = debug_getinfo(level, "f")
    if info == nil then return false end
    if info.func == f then return true end
  end
  return false
end

--- The frames of the thread awaiting `p`, all marked `async`. `await` called as a tail call
--- (`return await(f())`) leaves no frame of the function that called it; if the function that
--- made `p` (an `async` function's caller) is gone from the stack that way, its frame, at the line
--- where it made `p`, stands for it. `level`: the level of the `await` frame in the caller.
local function awaiting_frames(p, level)
  local frames = frames_here()
  local site = p._site
  if site ~= nil then
    local tail = nil
    if knows_tail_calls then
      local info = debug_getinfo(level + 1, "t")
      tail = info ~= nil and info.istailcall
    end
    if tail ~= false and not on_stack(site.func) then
      local info = debug_getinfo(site.func, "S")
      local func = info.what == "main" and "main chunk"
        or string_format("function <%s:%d>", info.short_src, info.linedefined or 0)
      table_insert(frames, 1, { file = info.short_src, line = site.currentline, func = func })
    end
  end
  for i = 1, #frames do frames[i].async = true end
  return frames
end

---------------------------------------------------------------------------------------------------
-- Promise.Error

local function new_error(options, parent)
  local text = options.error
  if text == nil then
    text = "[This error has no error text.]"
  elseif type(text) ~= "string" then
    text = safe_tostring(text)
  end
  return setmetatable({
    error = text,
    trace = options.trace,
    context = options.context,
    kind = options.kind,
    parent = parent,
  }, ErrorMT)
end

local function chain_of(e)
  local chain = {}
  while is_error(e) and #chain < 100 do
    chain[#chain + 1] = e
    e = e.parent
  end
  return chain
end

--- A new error of the same kind, with this one as its parent.
function error_methods.extend(self, options)
  check_self(self, "extend", "Promise.Error", is_error)
  if options ~= nil and type(options) ~= "table" then bad(1, "extend", "table", options, 2) end
  local o = {}
  if options ~= nil then
    for k, v in pairs(options) do o[k] = v end
  end
  if o.kind == nil then o.kind = self.kind end
  return new_error(o, self)
end

--- This error, then its parent, and so on.
function error_methods.getErrorChain(self)
  check_self(self, "getErrorChain", "Promise.Error", is_error)
  return chain_of(self)
end

function ErrorMT.__tostring(self)
  local parts = { string_format("-- Promise.Error(%s) --", safe_tostring(self.kind or "?")) }
  local chain = chain_of(self)
  for i = 1, #chain do
    local e = chain[i]
    local text = e.trace
    if text == nil or text == "" then text = e.error end
    if e.context ~= nil then text = safe_tostring(text) .. "\n" .. safe_tostring(e.context) end
    parts[#parts + 1] = safe_tostring(text)
  end
  return table_concat(parts, "\n")
end

local Error = {
  Kind = enum("Promise.Error.Kind", { EXECUTION_ERROR, ALREADY_CANCELLED, NOT_RESOLVED_IN_TIME, TIMED_OUT }),
  extend = error_methods.extend,
  getErrorChain = error_methods.getErrorChain,
}

--- `Promise.Error.new(options?, parent?)`: options `error`, `kind`, `trace`, `context`.
function Error.new(options, parent)
  if options ~= nil and type(options) ~= "table" then bad(1, "new", "table", options, 2) end
  if parent ~= nil and not is_error(parent) then bad(2, "new", "Promise.Error", parent, 2) end
  return new_error(options or {}, parent)
end

--- Whether `v` is a `Promise.Error`.
function Error.is(v) return is_error(v) end

--- Whether `v` is a `Promise.Error` of kind `kind`.
function Error.isKind(v, kind)
  if kind == nil then bad(2, "isKind", "Promise.Error.Kind", kind, 2) end
  return is_error(v) and v.kind == kind
end

--- The `xpcall` handler of executors and handlers: a table is the rejection value as it is; anything
--- else becomes a `Promise.Error` of kind ExecutionError carrying the traceback.
local function capture(err)
  local stack = stack_of_raise(err)
  if type(err) == "table" then
    captured[err] = stack
    return err
  end
  local text = type(err) == "string" and err or safe_tostring(err)
  local e = new_error({ error = text, kind = EXECUTION_ERROR, trace = clean_trace(traceback(text, 2)) })
  e._stack = stack
  captured[e] = stack
  return e
end

---------------------------------------------------------------------------------------------------
-- The core: settling, reactions, consumers, cancellation.

local cached_key, cached_serial, cached_owner = 0, -1, nil

--- The instance the running code belongs to (its id, or nil): asked of Rust once per resume,
--- and again after an error value's `__tostring` ran as no instance (`on_owner_changed`).
local function owner()
  local key, serial = step_slots[1], step_slots[3]
  -- (A `cached_serial` of -1, before any and after `on_owner_changed`, matches no resume.)
  if key == cached_key and serial == cached_serial then return cached_owner end
  local id = rust_owner()
  -- (Only a task's: outside any task, the host instance Rust names can change within one
  -- `guard`, as the despawned tasks' closes go from one instance to the next.)
  if key > 0 then cached_key, cached_serial, cached_owner = key, serial, id end
  return id
end
deps.on_owner_changed(function() cached_key, cached_serial = 0, -1 end)

--- The instance each promise was made for, by promise, where scripts cannot write: a promise's
--- own fields are plain, and an owner written there by a script would send its rejections to
--- another instance's `onUnhandledRejection` callbacks, or report them in another's name.
local owner_of = setmetatable({}, { __mode = "k" })

--- What runs or is closed when a pending promise is cancelled, where scripts cannot write: the
--- hook `onCancel` was given (`_hook`), the library's own hook (`_ihook`) and the executor's
--- thread (`_thread`). `cancel` uses a plain field only if it is the one recorded here: a hook a
--- script wrote there ran as whoever cancelled the promise (or, sent to the promise's instance,
--- as that one), and a task of that instance written into `_thread` was cancelled with it.
--- A promise with any of these records has `_rec` set, and its entries go when it settles or is
--- cancelled: LuaJIT's and Luau's weak-keyed tables keep a value that refers to its key (a hook
--- referring to its promise), and reading the three fields themselves as each promise settles
--- would be three misses through its metatable (`_rec` is read raw, once).
local hook_of = setmetatable({}, { __mode = "k" })
local ihook_of = setmetatable({}, { __mode = "k" })
local executor_of = setmetatable({}, { __mode = "k" })
-- Library hooks that many promises share (the bridge's cancellation), accepted as any's `_ihook`.
local shared_ihooks = {}

--- A promise a script gets: it remembers the instance it was made for (its unhandled rejection is
--- reported for that instance). Nothing else is captured: a traceback costs more than the promise.
-- The nil fields only size the table for the fields a promise usually gets (no rehash as they come):
-- five fields make room for eight (`_values`, `_v`, `_thread`, `_r1`, `_handled`, `_nconsumers`...), as
-- eight would, and each field of a constructor costs a store.
local function new_promise()
  local p = setmetatable({ _status = STARTED, _values = nil, _v = nil, _thread = nil, _r1 = nil }, PromiseMT)
  local id = owner()
  if id ~= nil then owner_of[p] = id end
  return p, id
end

--- A promise for a handler the running code adds (`andThen`, `finally`...): raises if no
--- instance runs. Script code runs for no instance only inside the library's own work (a
--- rejection's `__tostring` in the frame's report, a metamethod a Rust settlement meets); a
--- handler added there would belong to nobody and run inside whichever task settles the promise,
--- as that task's instance.
local function handler_promise()
  local p, id = new_promise()
  if id == nil then error("the Promise API was used outside of a script", 4) end
  return p
end

--- A promise the library makes for its own work: never reported as unhandled. `owned`: it runs
--- code of the running instance (a handler, an executor's thread), so it belongs to that instance,
--- which a settlement or cancellation elsewhere then runs that code as (with no owner, it ran as
--- whichever instance settled or cancelled it, or was not closed at all).
local function internal_promise(owned)
  local p = setmetatable({ _status = STARTED, _internal = true, _values = nil, _thread = nil, _r1 = nil }, PromiseMT)
  if owned then
    local id = owner()
    if id ~= nil then owner_of[p] = id end
  end
  return p
end

-- Rejections no handler observed yet, in the order they happened (`tick` reports them).
local pending = {}

local function internal_failure(p, err)
  rust_report("bevy_lua_coroutines: promise internals failed: " .. safe_tostring(err), "", owner_of[p])
end

--- The reactions the library queued (functions, and the waiter slots of awaits), where scripts
--- cannot write: a settlement runs a function, or wakes a slot, it finds in a promise's `_r1` or
--- `_queue` only if it is one of these. A function a script wrote there ran where the promise
--- settled, as the instance that settled it: the instance a promise reached through another's
--- `_consumers` was made for, say; so did the `__index` of a table with a metatable written
--- there in place of a slot (waking a slot reads its fields).
local reactions = setmetatable({}, { __mode = "k" })

--- Adds a reaction to `p`'s queue: a function called with `p`, or a park slot to wake. The first
--- one is kept in a field of its own (most promises have one reaction), the rest in a list.
local function enqueue(p, reaction)
  if type(reaction) == "function" then reactions[reaction] = true end
  -- (`not x` where `x` is never `false`, here and in the settlement's hot paths: a test, where
  -- comparing with nil calls the VM's equality.)
  if not p._r1 then
    p._r1 = reaction
    return
  end
  local q = p._queue
  if not q then
    p._queue = { reaction }
  else
    q[#q + 1] = reaction
  end
end

-- `nest`: how deep settlements nest now. `epoch`: bumped by `take_later` (the end of a step), which
-- resets `nest` under settlements a script suspended (a thenable's `__index` that yields, in a
-- coroutine of its own): one resumed in a later step must not take its levels off again.
local nest, epoch = 0, 0
local later, later_head, later_tail = {}, 1, 0

--- Runs one reaction the library queued: a park slot is woken (that cannot fail, and runs no
--- script code), a function is called protected (anything a script wrote into the queue is
--- passed over).
local function react(reaction, p)
  if not reactions[reaction] then return end
  if type(reaction) == "table" then
    wake(reaction)
  else
    local ok, err = pcall(reaction, p)
    if not ok then internal_failure(p, err) end
  end
end

--- Runs the reactions queued while settlements nested too deep, as the outermost settlement.
local function drain_later()
  local e = epoch
  -- (Counted from where it is, not set to 1 and back to 0: a drain a script suspends and resumes
  -- inside another settlement of the same step would set 0 under the levels around it.)
  nest = nest + 1
  while later_head <= later_tail do
    local r, lp = later[later_head], later[later_head + 1]
    later[later_head], later[later_head + 1] = nil, nil
    later_head = later_head + 2
    react(r, lp)
    -- Suspended inside that reaction past the end of a step: `take_later` took the rest.
    if e ~= epoch then return end
  end
  later_head, later_tail = 1, 0
  nest = nest - 1
end

--- Runs the reactions of `p` (just settled: `r1`, then the list `q` if any), or queues them for the
--- outermost settlement when reactions already nest too deep.
local function run_queue(p, r1, q)
  if nest >= MAX_NEST then
    later[later_tail + 1], later[later_tail + 2] = r1, p
    later_tail = later_tail + 2
    if q then
      for i = 1, #q do
        later[later_tail + 1], later[later_tail + 2] = q[i], p
        later_tail = later_tail + 2
      end
    end
    return
  end
  local e = epoch
  nest = nest + 1
  react(r1, p)
  if q then
    for i = 1, #q do react(q[i], p) end
  end
  -- Suspended past the end of a step, which reset `nest`: the rest of `q` ran uncounted.
  if e ~= epoch then return end
  nest = nest - 1
  if nest == 0 and later_head <= later_tail then drain_later() end
end

local settled

-- What a promise settled with: `_values` is a table of the values with their count `n`, never
-- changed once set; or, for exactly one value (the common case), `ONE`, the value being `_v`: no
-- table per settlement. `first_value` and `all_values` read either.
local ONE = { n = 1 }
-- The bridge's batch settlement in C (src/fastpath.rs; see `settle_batch`), with what it needs
-- of task.lua to wake as `wake` does.
local wake_ctx, settle_resolved = deps.wake_ctx, deps.settle_resolved
-- The values of every promise settled with none.
local NO_VALUES = { n = 0 }

--- The first value settled promise `p` settled with.
local function first_value(p)
  local v = p._values
  if v == ONE then return p._v end
  return v[1]
end

--- Every value settled promise `p` settled with.
local function all_values(p)
  local v = p._values
  if v == ONE then return p._v end
  return unpack(v, 1, v.n)
end

--- `settle(p, status, v)` for exactly one value, without a vararg call or `select`.
local function settle1(p, status, v)
  p._status = status
  p._values, p._v = ONE, v
  settled(p, status)
end

local function settle(p, status, ...)
  local n = select("#", ...)
  if n == 1 then return settle1(p, status, (...)) end
  p._status = status
  if n == 0 then
    p._values = NO_VALUES
  else
    p._values = { n = n, ... }
  end
  settled(p, status)
end

--- The rest of a settlement, once `_status` and `_values` are set: forget what only a pending
--- promise needs, remember an unobserved rejection, run the reactions.
function settled(p, status)
  -- (`_nconsumers` stays: nothing reads it once the promise has settled.)
  if rawget(p, "_rec") then hook_of[p], ihook_of[p], executor_of[p] = nil, nil, nil end
  p._hook, p._ihook, p._thread = nil, nil, nil
  local consumers = p._consumers
  if consumers then
    -- Settled: cancelling a consumer no longer reaches this promise.
    p._consumers = nil
    for i = 1, #consumers do
      local c = consumers[i]
      if c and c._parent == p then c._parent = nil end
    end
  end
  if status == REJECTED and not p._handled and not p._internal then
    -- It may be reported: remember where it happened, unless the error that rejected it did.
    if p._stack == nil then p._stack = frames_here() end
    p._rejected_at = frame()
    pending[#pending + 1] = p
  end
  local r1 = p._r1
  if r1 then
    local q = p._queue
    if not q and nest < MAX_NEST and type(r1) == "table" then
      -- One task awaits it, the common case: waking it runs nothing now, so this is `run_queue`
      -- without its bookkeeping (nothing is queued for later while nothing nests).
      p._r1 = nil
      if reactions[r1] then wake(r1) end
      return
    end
    p._r1 = nil
    if q then p._queue = nil end
    run_queue(p, r1, q)
  end
end

--- `child` consumes `parent`: cancelling every consumer of a pending promise cancels it.
local function add_consumer(parent, child)
  child._parent = parent
  -- `_nconsumers` also counts awaiting tasks, which are not in the list.
  local list = parent._consumers
  if not list then
    parent._consumers = { child }
  else
    list[#list + 1] = child
  end
  parent._nconsumers = (parent._nconsumers or 0) + 1
end

--- Whether script code of instance `id` (nil: the library's own) is about to run where another
--- instance runs: a handler it added to a promise another settles, a cancellation hook of a
--- promise another cancels. Run inline, it would run as that other instance, whose tasks it could
--- then list and cancel; it runs as a task of its own instance instead (`spawn_as`: in this step,
--- after the running work; nothing if that instance is gone).
local function elsewhere(id)
  return id ~= nil and id ~= owner()
end

--- Runs a user's cancellation hook in its own thread (its errors are reported like a task's), as
--- the instance the promise was made for. When no instance made it (code running as none, such
--- as an error value's `__tostring`, added it) and an instance cancels it, it runs at the end of
--- the frame, as no instance, with the other reactions left there, under their shared budget
--- (see `run_left`).
local queue_nobody_hook
local function run_hook(p, hook)
  local id, ok, err = owner_of[p], nil, nil
  if elsewhere(id) then
    ok, err = pcall(spawn_as, id, hook)
  elseif id == nil and owner() ~= nil then
    -- (Not here, under the budget of the task cancelling, which a looping hook would stop.)
    queue_nobody_hook(p, hook)
    return
  else
    ok, err = pcall(task_spawn, hook)
  end
  if not ok then internal_failure(p, err) end
end

local cancel

local function consumer_cancelled(parent, child)
  if parent._status ~= STARTED then return end
  local list = parent._consumers
  if list == nil then return end
  for i = 1, #list do
    if list[i] == child then
      list[i] = false
      parent._nconsumers = parent._nconsumers - 1
      if parent._nconsumers == 0 then cancel(parent) end
      return
    end
  end
end

--- Cancels `p` if it is pending: its hooks run (the library's own `_ihook(p)` first, then the
--- script's `onCancel` hook in a thread of its own), its executor's thread closes, its parent is told
--- (and cancelled once it has no other consumer), its consumers are cancelled, then its queue runs
--- (so `finally` handlers see "Cancelled").
function cancel(p)
  if p._status ~= STARTED then return end
  p._status = CANCELLED
  p._values = { n = 0 }
  local hook, ihook, co = p._hook, p._ihook, p._thread
  p._hook, p._ihook, p._thread = nil, nil, nil
  if ihook ~= nil then
    if ihook == ihook_of[p] or shared_ihooks[ihook] then
      local ok, err = pcall(ihook, p)
      if not ok then internal_failure(p, err) end
    end
    ihook_of[p] = nil
  end
  if hook ~= nil then
    if hook == hook_of[p] then run_hook(p, hook) end
    hook_of[p] = nil
  end
  if co ~= nil then
    if co == executor_of[p] then pcall(cancel_executor, co, owner_of[p]) end
    executor_of[p] = nil
  end
  local parent = p._parent
  if parent ~= nil then
    p._parent = nil
    consumer_cancelled(parent, p)
  end
  p._nconsumers = nil
  local consumers = p._consumers
  if consumers ~= nil then
    p._consumers = nil
    for i = 1, #consumers do
      local c = consumers[i]
      if c then
        c._parent = nil
        cancel(c)
      end
    end
  end
  local r1 = p._r1
  if r1 ~= nil then
    local q = p._queue
    p._r1, p._queue = nil, nil
    run_queue(p, r1, q)
  end
end

local function get_and_then(v) return v.andThen end

--- `Promise.is`: one of ours, or any table with a callable `andThen`.
local function is_thenable(v)
  if type(v) ~= "table" then return false end
  if is_promise(v) then return true end
  if is_error(v) then return false end
  local ok, f = pcall(get_and_then, v)
  return ok and callable(f)
end

local resolve, adopt

local function reject(p, ...)
  if p._status == STARTED then settle(p, REJECTED, ...) end
end

--- Rejects `p` with `err`, an error a handler (`capture`) caught, and the stack it was caught with.
local function reject_caught(p, err)
  if p._status ~= STARTED then return end
  if type(err) == "table" then p._stack = captured[err] end
  settle(p, REJECTED, err)
end

--- Rejects `p` as `src` (rejected) was: the same values and stack.
local function reject_like(p, src)
  if p._status ~= STARTED then return end
  p._stack = src._stack
  settle(p, REJECTED, all_values(src))
end

--- `p` takes the outcome of `src` (settled). `chained`: a rejection from an error becomes a new
--- error saying so, with the original as its parent (as when a handler returns a failed promise).
local function follow(p, src, chained)
  local status = src._status
  if status == RESOLVED then
    settle(p, RESOLVED, all_values(src))
  elseif status == REJECTED then
    local first = first_value(src)
    p._stack = src._stack
    if chained and is_error(first) and first.kind == EXECUTION_ERROR then
      settle(p, REJECTED, new_error({
        error = "This Promise was chained to a Promise that errored.",
        trace = "",
        kind = EXECUTION_ERROR,
        context = "Rejected because it was chained to the following Promise, which encountered an error:",
      }, first))
    else
      settle(p, REJECTED, all_values(src))
    end
  else
    cancel(p)
  end
end

--- `p` (pending) follows `q`, a promise or another library's thenable.
function adopt(p, q, chained)
  if q == p then
    settle(p, REJECTED, new_error({ error = "a Promise cannot be resolved with itself", kind = EXECUTION_ERROR }))
    return
  end
  if is_promise(q) then
    q._handled = true
    if q._status == STARTED then
      add_consumer(q, p)
      enqueue(q, function(src)
        if p._status == STARTED then follow(p, src, chained) end
      end)
    else
      follow(p, q, chained)
    end
    return
  end
  local ok, err = pcall(q.andThen, q, function(...) resolve(p, ...) end, function(...) reject(p, ...) end)
  if not ok then reject(p, err) end
end

function resolve(p, ...)
  local first = ...
  if type(first) ~= "table" and p._status == STARTED then
    -- The common case: not a thenable, so it settles now.
    settle(p, RESOLVED, ...)
    return
  end
  if p._status ~= STARTED then
    -- Resolving a cancelled promise with a promise no one else consumes cancels that one too.
    if p._status == CANCELLED and is_promise(first) and first._status == STARTED and first._nconsumers == nil then
      cancel(first)
    end
    return
  end
  if select("#", ...) > 0 and is_thenable(first) then
    adopt(p, first, true)
    return
  end
  settle(p, RESOLVED, ...)
end

--- One of ours for `v`: `v` itself, or a promise following another library's thenable.
local function to_promise(v)
  if is_promise(v) then return v end
  local p = internal_promise()
  adopt(p, v, false)
  return p
end

--- An internal promise that follows `v`, so that cancelling it cancels `v` only if nothing else
--- consumes `v`.
local function follower(v)
  local p = internal_promise()
  adopt(p, v, false)
  return p
end

--- The body of a promise's own thread: `body(...)`, its error rejecting `p`.
local function run_body(p, body, ...)
  local ok, err = xpcall(body, capture, ...)
  if not ok then reject_caught(p, err) end
  if p._thread == co_running() then p._thread, executor_of[p] = nil, nil end
end

-- Threads for executors and handlers, kept for reuse: making a coroutine for every `Promise.new`
-- and every handler (and collecting it later) was most of their cost. A worker runs one job
-- `f(a, b, c, d, e)`, goes back to the pool and yields IDLE; `task.spawn` resumes it with the next
-- job. A job that yields (the executor waits) makes the worker a task of the running instance
-- until the job ends (the step lets a task go when it yields without a request, as IDLE is);
-- a job that raises, or whose promise is cancelled while it waits, ends the worker for good.
--
-- Workers are pooled per instance: a job is script code, which can take its thread
-- (`coroutine.running`) and keep it; a worker reused for another instance's job would hand that
-- instance's task to the script (to resume, close or read). The pools of instances that went away
-- are dropped (`tick`).
local POOL_MAX = 4 -- per instance: a job that does not wait gives its worker back at once
local NO_INSTANCE = {} -- the pools' key for code that runs for no instance
local pools = {} -- instance id (or NO_INSTANCE) -> { n = count, [1..n] = idle workers }
local IDLE = setmetatable({}, { __tostring = function() return "idle promise worker" end })
local JOB = {} -- the first value a worker is resumed with: anything else (a script resuming a
-- pooled thread by hand) leaves it idle

--- Runs one job; false if it was not one. The job's values live in this frame only, so an idle
--- worker holds none of them.
local function run_job(tag, f, a, b, c, d, e)
  if tag ~= JOB then return false end
  f(a, b, c, d, e)
  return true
end

local function worker_loop(me, pool, done)
  while true do
    if done then
      local n = pool.n
      if n >= POOL_MAX then return end
      n = n + 1
      pool.n, pool[n] = n, me
    end
    done = run_job(co_yield(IDLE))
  end
end

--- The pool of instance `id` (or NO_INSTANCE), made on first use with the body of its workers,
--- which go back to this pool (a worker serves one instance all its life).
local function pool_of(id)
  local pool = pools[id]
  if pool == nil then
    pool = { n = 0 }
    pool.worker = function(...)
      -- A tail call: the first job's values go with this frame.
      return worker_loop(co_running(), pool, run_job(...))
    end
    pools[id] = pool
  end
  return pool
end

--- A suspended worker thread from the running instance's pool, or a new one.
local function take_worker()
  local id = owner() or NO_INSTANCE
  local pool = pools[id] or pool_of(id)
  local n = pool.n
  while n > 0 do
    local co = pool[n] -- left in the list, to be overwritten (a store over a value is the fast one)
    n = n - 1
    pool.n = n
    -- A worker whose task was killed (its budget ran out mid-job) is closed: skip it.
    if co_status(co) == "suspended" then return co end
  end
  if id == NO_INSTANCE then return co_create(pool.worker) end
  return hold(co_create(pool.worker), id)
end

-- The promise whose executor `run_executor` saw return last (`Promise.new` reads it).
local finished = nil

--- The job of a pooled worker for `Promise.new`: `run_body(p, executor, on_resolve, on_reject,
--- on_cancel)` with a fixed arity.
local function run_executor(p, executor, on_resolve, on_reject, on_cancel)
  local ok, err = xpcall(executor, capture, on_resolve, on_reject, on_cancel)
  finished = p
  if not ok then reject_caught(p, err) end
  local co = p._thread -- nil already if the executor settled `p`
  if co ~= nil and co == co_running() then p._thread, executor_of[p] = nil, nil end
end

--- Runs `body(...)` in a new thread that `p` owns (cancelling `p` closes it); it becomes a task of
--- the running instance if it yields.
local function start(p, body, ...)
  local co = hold(co_create(run_body), owner())
  p._thread, executor_of[p], p._rec = co, co, true
  local ok, err = pcall(task_spawn, co, p, body, ...)
  if not ok then reject(p, new_error({ error = safe_tostring(err), kind = EXECUTION_ERROR })) end
end

local function settle_call(p, ok, ...)
  if ok then
    resolve(p, ...)
  else
    reject_caught(p, (...))
  end
end

--- The handler that was to settle `child` could not start: `child` rejects with why.
local function not_started(child, err)
  reject(child, new_error({ error = safe_tostring(err), kind = EXECUTION_ERROR }))
end

--- Starts `f`, the handler that settles `child`, as a task of instance `id` (see `elsewhere`).
--- If that instance is gone (forgotten, or its entity despawned in this step), none of its code
--- runs any more: `child` is cancelled (what awaits it is not left waiting for good).
local function spawn_for(child, id, f)
  local ok, started = pcall(spawn_as, id, f)
  if not ok then
    not_started(child, started)
  elseif not started then
    cancel(child)
  end
end

local function run_handler(child, handler, src)
  settle_call(child, xpcall(handler, capture, all_values(src)))
end

--- Calls `handler` with the values of `src` (settled) in a new thread; its results resolve `child`,
--- its error rejects it. `now`: `child` is being made by the running code (its source had settled
--- already), so the instance that added the handler is the one running.
local function spawn_handler(child, handler, src, now)
  local id = not now and owner_of[child] -- the instance that added the handler
  if id and id ~= owner() then -- `elsewhere(id)`, inline: this is `andThen`'s path
    return spawn_for(child, id, function() run_handler(child, handler, src) end)
  end
  local ok, err = spawn_job(take_worker(), JOB, run_handler, child, handler, src)
  if not ok then not_started(child, err) end
end

--- Waits (parking the running thread) until `p` settles; returns at once if it has. The waiting task
--- counts as a consumer, so `p` is not cancelled from below while someone awaits it.
-- Slots of awaits that are over, kept for the next (see `wait_settled`), per instance like the
-- workers: a script reads the slots of the promises it holds (`_r1`), so a slot reused for another
-- instance's await would let it unhook that await (`key = nil`) or reach its promise.
-- At most 8 per instance (a literal below: the main chunk is at Lua's limit of 200 locals).
local spare_slots = {} -- instance id (or NO_INSTANCE) -> { n = count, [1..n] = slots }

local function wait_settled(p)
  p._handled = true
  if p._status ~= STARTED then return end
  local slot
  local id = owner() or NO_INSTANCE
  local spare = spare_slots[id]
  local n = spare and spare.n or 0
  if n > 0 then
    slot = spare[n] -- left in the list, to be overwritten
    spare.n = n - 1
    slot.promise = p
  else
    slot = { key = nil, reg = nil, promise = p } -- sized for what `park` stores in it
    reactions[slot] = true
  end
  if not p._r1 then p._r1 = slot else enqueue(p, slot) end
  p._nconsumers = (p._nconsumers or 0) + 1
  repeat
    park(slot)
  until p._status ~= STARTED
  -- Woken after its last park (`wake` sets `key` to false), so nothing refers to the slot any
  -- more: the settlement took it out of the promise's queue before it woke it, and `wake`
  -- cleared its task's `parked` entry. (Left any other way, it may still be queued: not kept.)
  if slot.key == false then
    if spare == nil then
      spare = { n = 0 }
      spare_slots[id] = spare
    end
    n = spare.n
    if n < 8 then
      slot.promise = false
      n = n + 1
      spare.n, spare[n] = n, slot
    end
  end
end

--- Waits (parking the running thread, a promise's own) until `p` settles, and goes on at once
--- when it does, inside the settlement, as roblox-lua-promise v4's `each` and `fold` do (a task's
--- `await` resumes later in the step instead). `p` is an internal promise this thread consumes.
local function wait_now(p)
  p._handled = true
  if p._status ~= STARTED then return end
  local co, me = co_running(), owner()
  local slot = { key = nil, reg = nil }
  enqueue(p, function()
    if waiting(slot) and co_status(co) == "suspended" then
      -- Another instance settles `p`: the task goes on as the waker resumes it, later in the
      -- step, as its own instance (`task.spawn` of another's task is refused).
      if me ~= owner() then return wake(slot) end
      local ok, err = pcall(task_spawn, co)
      if not ok then internal_failure(p, err) end
    end
  end)
  p._nconsumers = (p._nconsumers or 0) + 1
  repeat
    park(slot)
  until p._status ~= STARTED
end

--- An internal consumer of `src`: `react(src)` runs once src settles (now if it has), unless the
--- link was dropped first. Dropping a link cancels `src` if nothing else consumes it.
local function link(src, reaction)
  src._handled = true
  local l = internal_promise()
  if src._status == STARTED then
    add_consumer(src, l)
    enqueue(src, function(s)
      if l._dropped then return end
      if l._status == STARTED then settle(l, RESOLVED) end
      reaction(s)
    end)
  else
    settle(l, RESOLVED)
    reaction(src)
  end
  return l
end

local function drop(l)
  l._dropped = true
  cancel(l)
end

local function drop_all(links)
  for i = 1, #links do drop(links[i]) end
end

local function cancelled_error(context)
  return new_error({ error = "Promise is cancelled", kind = ALREADY_CANCELLED, context = context })
end

--- Rejects `out` the way `src` (rejected or cancelled) ended.
local function fail_like(out, src, context)
  if src._status == REJECTED then
    reject_like(out, src)
  else
    reject(out, cancelled_error(context))
  end
end

---------------------------------------------------------------------------------------------------
-- Promise

local Promise = {
  Status = enum("Promise.Status", { STARTED, RESOLVED, REJECTED, CANCELLED }),
  Error = Error,
}

local function executor_args(p)
  local function on_resolve(...)
    if select("#", ...) == 1 then
      local v = ...
      -- The common case, without another vararg call: one value that is not a thenable.
      if p._status == STARTED and type(v) ~= "table" then
        settle1(p, RESOLVED, v)
        return
      end
    end
    resolve(p, ...)
  end
  local function on_reject(...) reject(p, ...) end
  local function on_cancel(hook)
    if hook ~= nil then
      if not callable(hook) then bad(1, "onCancel", "function", hook, 2) end
      if p._status == CANCELLED then
        run_hook(p, hook)
      elseif p._status == STARTED then
        p._hook, hook_of[p], p._rec = hook, hook, true
      end
    end
    return p._status == CANCELLED
  end
  return on_resolve, on_reject, on_cancel
end

--- `Promise.new(executor(resolve, reject, onCancel))`: runs the executor now, in its own thread.
function Promise.new(executor)
  if type(executor) ~= "function" and not callable(executor) then bad(1, "new", "function", executor, 2) end
  local p = new_promise()
  -- `start(p, executor, executor_args(p))`, inlined (no vararg calls), on a pooled thread.
  local co = take_worker()
  p._thread = co
  local ok, err = spawn_job(co, JOB, run_executor, p, executor, executor_args(p))
  if not ok then reject(p, new_error({ error = safe_tostring(err), kind = EXECUTION_ERROR })) end
  -- Recorded only if it outlives this call, still pending (the common executor settles `p`, or
  -- returns, first: `run_executor` says so in `finished`): until then it runs, and nothing can
  -- cancel a running thread.
  if finished ~= p and p._status == STARTED then executor_of[p], p._rec = co, true end
  return p
end

--- `Promise.defer(executor)`: like `new`, but the executor starts later in this step (`task.defer`).
function Promise.defer(executor)
  if not callable(executor) then bad(1, "defer", "function", executor, 2) end
  local p = new_promise()
  local co = hold(co_create(run_body), owner())
  p._thread, executor_of[p], p._rec = co, co, true
  local ok, err = pcall(task_defer, co, p, executor, executor_args(p))
  if not ok then error(err, 2) end
  return p
end

--- `Promise.resolve(...)`: resolved with `...` (a promise given is followed).
function Promise.resolve(...)
  local p = new_promise()
  resolve(p, ...)
  return p
end

--- `Promise.reject(...)`: rejected with `...`.
function Promise.reject(...)
  local p = new_promise()
  settle(p, REJECTED, ...)
  return p
end

local function call_and_resolve(p, f, ...)
  resolve(p, f(...))
end

--- `Promise.try(f, ...)`: calls `f(...)` in a new thread; resolves with its results.
function Promise.try(f, ...)
  if not callable(f) then bad(1, "try", "function", f, 2) end
  local p = new_promise()
  start(p, call_and_resolve, p, f, ...)
  return p
end

--- `Promise.promisify(f)`: a function that calls `f` as `Promise.try` does.
function Promise.promisify(f)
  if not callable(f) then bad(1, "promisify", "function", f, 2) end
  return function(...)
    local p = new_promise()
    start(p, call_and_resolve, p, f, ...)
    return p
  end
end

local function delay_body(p, seconds)
  resolve(p, task_wait(seconds))
end

--- `Promise.delay(seconds)`: resolves with the game seconds that passed (as `task.wait(seconds)`).
function Promise.delay(seconds)
  if type(seconds) ~= "number" then bad(1, "delay", "number", seconds, 2) end
  local p = new_promise()
  start(p, delay_body, p, seconds)
  return p
end

--- Checks a list of promises (level: of the caller of the API function); returns ours and the count.
local function check_list(list, name)
  if type(list) ~= "table" then bad(1, name, "table", list, 3) end
  if is_thenable(list) then
    error(string_format("bad argument #1 to '%s' (array of Promises expected, got Promise)", name), 3)
  end
  local n = #list
  -- A table with other keys (a promise passed without braces, `{ p, foo = 1 }`) is not a list.
  for k in next, list do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      local shown = type(k) == "string" and "'" .. k .. "'" or safe_tostring(k)
      error(string_format("bad argument #1 to '%s' (array of Promises expected, got a table with key %s)",
        name, shown), 3)
    end
  end
  local out = {}
  for i = 1, n do
    local v = list[i]
    if not is_thenable(v) then bad(1, name, string_format("Promise at index %d", i), v, 3) end
    out[i] = to_promise(v)
  end
  return out, n
end

--- all, some and any: resolves once `amount` inputs resolved, rejects once that cannot happen.
local function gather(list, n, amount, mode)
  local out = new_promise()
  if n == 0 or amount == 0 then
    if mode == "any" then
      settle(out, RESOLVED, nil)
    else
      settle(out, RESOLVED, {})
    end
    return out
  end
  local values, resolved_n, failed_n, done = {}, 0, 0, false
  local links = {}
  out._ihook = function()
    done = true
    drop_all(links)
  end
  ihook_of[out] = out._ihook
  out._rec = true
  for i = 1, n do
    links[i] = link(list[i], function(src)
      if done then return end
      if src._status == RESOLVED then
        resolved_n = resolved_n + 1
        values[mode == "all" and i or resolved_n] = first_value(src)
        if resolved_n >= amount then
          done = true
          drop_all(links)
          if mode == "any" then
            settle(out, RESOLVED, values[1])
          else
            settle(out, RESOLVED, values)
          end
        end
      else
        failed_n = failed_n + 1
        if mode == "all" or n - failed_n < amount then
          done = true
          drop_all(links)
          fail_like(out, src, string_format("The Promise at index %d was cancelled.", i))
        end
      end
    end)
  end
  if done then drop_all(links) end
  return out
end

--- `Promise.all(list)`: resolves with the first value of each, in order; rejects with the first
--- rejection (a cancelled input rejects with an AlreadyCancelled error) and cancels the rest.
function Promise.all(list)
  local ps, n = check_list(list, "all")
  return gather(ps, n, n, "all")
end

--- `Promise.some(list, count)`: resolves with the first values of the first `count` to resolve, in
--- the order they resolved; rejects once that can no longer happen.
function Promise.some(list, count)
  local ps, n = check_list(list, "some")
  if type(count) ~= "number" then bad(2, "some", "number", count, 2) end
  if not (count >= 0 and count <= n) then
    error(string_format("bad argument #2 to 'some' (count between 0 and %d expected, got %s)", n, tostring(count)), 2)
  end
  return gather(ps, n, count, "some")
end

--- `Promise.any(list)`: resolves with the value of the first to resolve; rejects if all reject.
function Promise.any(list)
  local ps, n = check_list(list, "any")
  return gather(ps, n, 1, "any")
end

--- `Promise.allSettled(list)`: resolves with the status of each, once all settled.
function Promise.allSettled(list)
  local ps, n = check_list(list, "allSettled")
  local out = new_promise()
  if n == 0 then
    settle(out, RESOLVED, {})
    return out
  end
  local statuses, count, done = {}, 0, false
  local links = {}
  out._ihook = function()
    done = true
    drop_all(links)
  end
  ihook_of[out] = out._ihook
  out._rec = true
  for i = 1, n do
    links[i] = link(ps[i], function(src)
      if done then return end
      statuses[i] = src._status
      count = count + 1
      if count == n then
        done = true
        settle(out, RESOLVED, statuses)
      end
    end)
  end
  return out
end

local function race(ps, n)
  local out = new_promise()
  local links, done = {}, false
  out._ihook = function()
    done = true
    drop_all(links)
  end
  ihook_of[out] = out._ihook
  out._rec = true
  for i = 1, n do
    links[i] = link(ps[i], function(src)
      if done or src._status == CANCELLED then return end
      done = true
      drop_all(links) -- the losers first, as roblox-lua-promise does
      if out._status == STARTED then
        out._stack = src._stack
        settle(out, src._status, all_values(src))
      end
    end)
  end
  if done then drop_all(links) end
  return out
end

--- `Promise.race(list)`: settles like the first to settle and cancels the others (those with no
--- other consumer). A cancelled input does not take part.
function Promise.race(list)
  local ps, n = check_list(list, "race")
  return race(ps, n)
end

local function each_body(out, list, predicate)
  local tracked, cancelled = {}, false
  local function cancel_tracked()
    for i = 1, #tracked do cancel(tracked[i]) end
  end
  out._ihook = function()
    cancelled = true
    cancel_tracked()
  end
  ihook_of[out] = out._ihook
  out._rec = true
  -- Follow the promises in the list now, so that nothing else cancels them before their turn.
  local items, follows, n = {}, {}, 0
  for i, v in ipairs(list) do
    n = i
    if is_thenable(v) then
      local p = to_promise(v)
      if p._status == CANCELLED or p._status == REJECTED then
        p._handled = true
        cancel_tracked()
        fail_like(out, p, string_format(
          "The Promise at index %d passed to Promise.each was already cancelled when Promise.each began.", i))
        return
      end
      local f = follower(p)
      tracked[#tracked + 1] = f
      items[i], follows[i] = f, true
    else
      items[i] = v
    end
  end
  local results = {}
  for i = 1, n do
    local v = items[i]
    if follows[i] then
      wait_now(v)
      if v._status ~= RESOLVED then
        cancel_tracked()
        fail_like(out, v, string_format("The Promise at index %d passed to Promise.each was cancelled.", i))
        return
      end
      v = first_value(v)
    end
    if cancelled then return end
    local r = predicate(v, i)
    if is_thenable(r) then
      r = to_promise(r)
      tracked[#tracked + 1] = r
      wait_now(r)
      if r._status ~= RESOLVED then
        cancel_tracked()
        fail_like(out, r, string_format("The Promise the predicate returned for index %d was cancelled.", i))
        return
      end
      results[i] = first_value(r)
    else
      results[i] = r
    end
  end
  resolve(out, results)
end

--- `Promise.each(list, predicate)`: calls `predicate(value, index)` on each value in turn, waiting
--- for promises in the list and for the promises it returns; resolves with the list of results.
function Promise.each(list, predicate)
  if type(list) ~= "table" then bad(1, "each", "table", list, 2) end
  if not callable(predicate) then bad(2, "each", "function", predicate, 2) end
  local out = new_promise()
  start(out, each_body, out, list, predicate)
  return out
end

local function fold_body(out, list, reducer, acc)
  local current = nil
  out._ihook = function()
    if current ~= nil then cancel(current) end
  end
  ihook_of[out] = out._ihook
  out._rec = true
  for i, v in ipairs(list) do
    if is_thenable(v) then
      current = follower(v)
      wait_now(current)
      if current._status ~= RESOLVED then
        fail_like(out, current, string_format("The Promise at index %d passed to Promise.fold was cancelled.", i))
        return
      end
      v, current = first_value(current), nil
    end
    local r = reducer(acc, v, i)
    if is_thenable(r) then
      current = follower(r)
      wait_now(current)
      if current._status == CANCELLED then
        -- v4's fold resolves with the reducer's promise, so it is cancelled with it.
        cancel(out)
        return
      elseif current._status ~= RESOLVED then
        fail_like(out, current, "")
        return
      end
      acc, current = first_value(current), nil
    else
      acc = r
    end
  end
  resolve(out, acc)
end

--- `Promise.fold(list, reducer, initial)`: `reducer(acc, value, index)` over the list in turn (values
--- and results may be promises); resolves with the last result; stops at the first rejection.
function Promise.fold(list, reducer, initial)
  if type(list) ~= "table" then bad(1, "fold", "table", list, 2) end
  if not callable(reducer) then bad(2, "fold", "function", reducer, 2) end
  local out = new_promise()
  start(out, fold_body, out, list, reducer, initial)
  return out
end

--- One attempt of `retry`: calls `callback` here; returns a promise for its outcome.
local function attempt(callback, args)
  local r = pack(xpcall(callback, capture, unpack(args, 1, args.n)))
  local p = internal_promise()
  if r[1] then
    resolve(p, unpack(r, 2, r.n))
  else
    reject_caught(p, r[2])
  end
  return p
end

local function retry_body(out, callback, times, seconds, args)
  local left = times
  while true do
    local a = attempt(callback, args)
    out._current = a
    wait_settled(a)
    out._current = nil
    local status = a._status
    if status == RESOLVED then
      resolve(out, all_values(a))
      return
    elseif status == CANCELLED then
      cancel(out)
      return
    elseif left <= 0 then
      reject_like(out, a)
      return
    end
    left = left - 1
    if seconds ~= nil then task_wait(seconds) end
  end
end

local function retry(callback, times, seconds, ...)
  local out = new_promise()
  out._ihook = function()
    if out._current ~= nil then cancel(out._current) end
  end
  ihook_of[out] = out._ihook
  out._rec = true
  start(out, retry_body, out, callback, times, seconds, pack(...))
  return out
end

--- `Promise.retry(f, times, ...)`: calls `f(...)` (which may return a promise), and again up to
--- `times` more times while it fails; settles like the last attempt.
function Promise.retry(callback, times, ...)
  if not callable(callback) then bad(1, "retry", "function", callback, 2) end
  if type(times) ~= "number" then bad(2, "retry", "number", times, 2) end
  return retry(callback, times, nil, ...)
end

--- `Promise.retryWithDelay(f, times, seconds, ...)`: `retry`, waiting `seconds` of game time
--- between attempts.
function Promise.retryWithDelay(callback, times, seconds, ...)
  if not callable(callback) then bad(1, "retryWithDelay", "function", callback, 2) end
  if type(times) ~= "number" then bad(2, "retryWithDelay", "number", times, 2) end
  if type(seconds) ~= "number" then bad(3, "retryWithDelay", "number", seconds, 2) end
  return retry(callback, times, seconds, ...)
end

local function get_connect(v) return v.Connect end

local function from_event_body(out, event, predicate)
  local connection, done = nil, false
  local function disconnect()
    local c = connection
    connection = nil
    if c ~= nil then
      -- In a thread of its own: it may yield or fail (reported) without disturbing the caller.
      local ok, err = pcall(task_spawn, function() c:Disconnect() end)
      if not ok then internal_failure(out, err) end
    end
  end
  local function on_fire(...)
    if done then return end
    if predicate ~= nil then
      local ok, r = xpcall(predicate, capture, ...)
      if not ok then
        done = true
        reject_caught(out, r)
        disconnect()
        return
      end
      if not r then return end
    end
    done = true
    resolve(out, ...)
    disconnect()
  end
  connection = event:Connect(on_fire)
  if done or out._status ~= STARTED then
    disconnect() -- it fired while connecting, or the promise was cancelled meanwhile
    return
  end
  out._hook, hook_of[out], out._rec = disconnect, disconnect, true
end

--- `Promise.fromEvent(event, predicate?)`: resolves with the arguments of the next firing of `event`
--- (any object with `:Connect(fn)` returning something with `:Disconnect()`) for which
--- `predicate(...)` is truthy; disconnects once settled or cancelled.
function Promise.fromEvent(event, predicate)
  local t = type(event)
  local ok, connect = false, nil
  if t == "table" or t == "userdata" then ok, connect = pcall(get_connect, event) end
  if not ok or not callable(connect) then bad(1, "fromEvent", "object with a Connect method", event, 2) end
  if predicate ~= nil and not callable(predicate) then bad(2, "fromEvent", "function", predicate, 2) end
  local out = new_promise()
  start(out, from_event_body, out, event, predicate)
  return out
end

--- `Promise.is(v)`: whether `v` is a promise (ours, or any table with an `andThen` method).
function Promise.is(v) return is_thenable(v) end

-- onUnhandledRejection callbacks, per instance: an instance sees its own rejections only.
local NOBODY = {}
local callbacks = {}

--- `Promise.onUnhandledRejection(fn) -> unregister`: `fn(promise, ...values)` runs as a task of the
--- instance for each of its rejections that is reported as unhandled.
function Promise.onUnhandledRejection(callback)
  if not callable(callback) then bad(1, "onUnhandledRejection", "function", callback, 2) end
  local key = owner()
  if key == nil then key = NOBODY end
  local list = callbacks[key]
  if list == nil then
    list = {}
    callbacks[key] = list
  end
  local entry = { callback }
  list[#list + 1] = entry
  return function()
    local l = callbacks[key]
    if l == nil then return end
    for i = 1, #l do
      if l[i] == entry then
        table_remove(l, i)
        return
      end
    end
  end
end

---------------------------------------------------------------------------------------------------
-- Methods

--- What `child` of `then_impl` does once its source `s` has settled.
local function then_react(child, s, on_resolve, on_reject, now)
  if child._status ~= STARTED then return end
  local status = s._status
  if status == RESOLVED then
    if on_resolve ~= nil then
      spawn_handler(child, on_resolve, s, now)
    else
      settle(child, RESOLVED, all_values(s))
    end
  elseif status == REJECTED then
    if on_reject ~= nil then
      spawn_handler(child, on_reject, s, now)
    else
      reject_like(child, s)
    end
  else
    cancel(child)
  end
end

local function then_impl(src, on_resolve, on_reject, internal)
  src._handled = true
  local child, id
  if internal then
    child = internal_promise(true) -- (its handler is `tap`'s, code of the running instance)
  else
    -- (`handler_promise()`, inline: this is `andThen`'s path.)
    child, id = new_promise()
    if id == nil then error("the Promise API was used outside of a script", 3) end
  end
  local status = src._status
  if status == STARTED then
    add_consumer(src, child)
    enqueue(src, function(s) then_react(child, s, on_resolve, on_reject) end)
  elseif status == CANCELLED then
    child._status, child._values = CANCELLED, { n = 0 }
  else
    -- Settled already: no reaction to keep, so no closure.
    then_react(child, src, on_resolve, on_reject, true)
  end
  return child
end

--- `p:andThen(onResolve?, onReject?)`: a promise for what the handler returns (a promise returned
--- is followed); without a handler, the outcome passes through.
function promise_methods:andThen(on_resolve, on_reject)
  -- The check of `self` with its common case first (one of ours), as `await` does.
  if not (debug_getmetatable and debug_getmetatable(self) == PromiseMT) then
    check_self(self, "andThen", "Promise", is_promise)
  end
  -- (`callable` asked only of what is not a function, the common case, saving a call.)
  if on_resolve ~= nil and type(on_resolve) ~= "function" and not callable(on_resolve) then
    bad(1, "andThen", "function", on_resolve, 2)
  end
  if on_reject ~= nil and type(on_reject) ~= "function" and not callable(on_reject) then
    bad(2, "andThen", "function", on_reject, 2)
  end
  return then_impl(self, on_resolve, on_reject)
end
promise_methods["then"] = promise_methods.andThen

--- `p:catch(onReject)`: `andThen(nil, onReject)`.
function promise_methods:catch(on_reject)
  check_self(self, "catch", "Promise", is_promise)
  if not callable(on_reject) then bad(1, "catch", "function", on_reject, 2) end
  return then_impl(self, nil, on_reject)
end

--- `p:tap(f)`: calls `f` with the values and passes them on unchanged (after the promise `f`
--- returns, if any, resolves).
function promise_methods:tap(handler)
  check_self(self, "tap", "Promise", is_promise)
  if not callable(handler) then bad(1, "tap", "function", handler, 2) end
  return then_impl(self, function(...)
    local r = handler(...)
    if is_thenable(r) then
      local values = pack(...)
      return then_impl(to_promise(r), function() return unpack(values, 1, values.n) end, nil, true)
    end
    return ...
  end, nil)
end

--- `p:andThenCall(f, ...)`: on resolve, calls `f(...)` (the resolved values are discarded).
function promise_methods:andThenCall(callback, ...)
  check_self(self, "andThenCall", "Promise", is_promise)
  if not callable(callback) then bad(1, "andThenCall", "function", callback, 2) end
  local args = pack(...)
  return then_impl(self, function() return callback(unpack(args, 1, args.n)) end, nil)
end

--- `p:andThenReturn(...)`: on resolve, resolves with `...` instead.
function promise_methods:andThenReturn(...)
  check_self(self, "andThenReturn", "Promise", is_promise)
  local args = pack(...)
  return then_impl(self, function() return unpack(args, 1, args.n) end, nil)
end

local function run_finally(child, handler, src)
  local r = pack(xpcall(handler, capture, src._status))
  if not r[1] then
    reject_caught(child, r[2])
    return
  end
  local q = r[2]
  if r.n >= 2 and is_thenable(q) then
    -- Wait for the promise the handler returned: its rejection wins, otherwise pass `src` on.
    local l = link(to_promise(q), function(s)
      if child._status ~= STARTED then return end
      if s._status == REJECTED then
        reject_like(child, s)
      else
        follow(child, src, false)
      end
    end)
    if child._status == STARTED then
      child._ihook = function() drop(l) end
      ihook_of[child] = child._ihook
      child._rec = true
    end
  elseif child._status == STARTED then
    follow(child, src, false)
  end
end

--- Makes `child` (of `finally` or `finallyReturn`) wait on `src` without being one of its
--- consumers, as in roblox-lua-promise v4: a finally handler wants to run at the end, not the
--- value, so it never holds `src` up. Cancelling `child` cancels `src` only if nothing consumes it.
local function attach_finally(src, child, reaction)
  if src._status == STARTED then
    child._ihook = function()
      if src._status == STARTED and (src._nconsumers or 0) == 0 then cancel(src) end
    end
    ihook_of[child] = child._ihook
    child._rec = true
    enqueue(src, reaction)
  else
    reaction(src)
  end
end

local function finally_impl(src, handler)
  src._handled = true
  local child = handler_promise()
  local function reaction(s)
    if handler ~= nil then
      -- Runs even if `child` was cancelled: the handler sees every outcome of `src`.
      local id = owner_of[child]
      if elsewhere(id) then return spawn_for(child, id, function() run_finally(child, handler, s) end) end
      local ok, err = pcall(task_spawn, run_finally, child, handler, s)
      if not ok then not_started(child, err) end
    elseif child._status == STARTED then
      follow(child, s, false)
    end
  end
  attach_finally(src, child, reaction)
  return child
end

--- `p:finally(f?)`: calls `f(status)` when `p` resolves, rejects or is cancelled; the returned
--- promise then settles as `p` did (a rejection from `f`, or from the promise it returns, wins).
function promise_methods:finally(handler)
  check_self(self, "finally", "Promise", is_promise)
  if handler ~= nil and not callable(handler) then bad(1, "finally", "function", handler, 2) end
  return finally_impl(self, handler)
end

--- `p:finallyCall(f, ...)`: `finally`, calling `f(...)`.
function promise_methods:finallyCall(callback, ...)
  check_self(self, "finallyCall", "Promise", is_promise)
  if not callable(callback) then bad(1, "finallyCall", "function", callback, 2) end
  local args = pack(...)
  return finally_impl(self, function() return callback(unpack(args, 1, args.n)) end)
end

do
--- Whether resolving with `v` could run script code: a table, not one of ours, with a metatable
--- or an `andThen` field (one of our promises, or a plain table, is read without any).
local function may_run_script(v)
  if type(v) ~= "table" or is_promise(v) or is_error(v) then return false end
  local mt
  if debug_getmetatable then mt = debug_getmetatable(v) else mt = getmetatable(v) end
  return mt ~= nil or rawget(v, "andThen") ~= nil
end

--- `p:finallyReturn(...)`: once `p` resolves or rejects, resolves with `...` (the outcome is
--- discarded, a rejection included); cancelled if `p` is. A thenable among `...` is read (its
--- metamethods, its `andThen`) by the instance that called `finallyReturn`, in a task of its own
--- when another instance settles `p`, as a handler would be.
function promise_methods:finallyReturn(...)
  check_self(self, "finallyReturn", "Promise", is_promise)
  local args = pack(...)
  self._handled = true
  -- (`handler_promise()`, inline, so that level 2 below is the script that called this.)
  local child, id = new_promise()
  if id == nil then error("the Promise API was used outside of a script", 2) end
  local function resolve_child() resolve(child, unpack(args, 1, args.n)) end
  local function reaction(s)
    if child._status ~= STARTED then return end
    if s._status == CANCELLED then
      cancel(child)
    elseif may_run_script(args[1]) and elsewhere(id) then
      spawn_for(child, id, resolve_child)
    else
      resolve_child()
    end
  end
  attach_finally(self, child, reaction)
  return child
end
end

--- `p:cancel()`: see `cancel` above.
function promise_methods:cancel()
  check_self(self, "cancel", "Promise", is_promise)
  cancel(self)
end

--- `p:getStatus()`: one of `Promise.Status`.
function promise_methods:getStatus()
  check_self(self, "getStatus", "Promise", is_promise)
  return self._status
end

--- `p:timeout(seconds, rejection?)`: `p`'s outcome if it settles within `seconds` of game time;
--- otherwise rejects with `rejection` (default: a TimedOut error) and cancels `p`.
function promise_methods:timeout(seconds, rejection)
  check_self(self, "timeout", "Promise", is_promise)
  if type(seconds) ~= "number" then bad(1, "timeout", "number", seconds, 2) end
  local site = call_site()
  local timer = internal_promise(true) -- (`start` holds its thread for the running instance)
  start(timer, delay_body, timer, seconds)
  local timed = internal_promise()
  local l = link(timer, function(s)
    if timed._status ~= STARTED then return end
    if s._status ~= RESOLVED then
      cancel(timed)
    elseif rejection == nil then
      settle(timed, REJECTED, new_error({
        error = "Timed out",
        kind = TIMED_OUT,
        context = string_format("Timeout of %s seconds exceeded.\n:timeout() called at %s", tostring(seconds), site),
      }))
    else
      settle(timed, REJECTED, rejection)
    end
  end)
  if timed._status == STARTED then
    timed._ihook = function() drop(l) end
    ihook_of[timed] = timed._ihook
    timed._rec = true
  end
  return race({ timed, self }, 2)
end

--- `p:now(rejection?)`: resolved like `p` if `p` has resolved already; rejected otherwise (with
--- `rejection`, default a NotResolvedInTime error).
function promise_methods:now(rejection)
  check_self(self, "now", "Promise", is_promise)
  if self._status == RESOLVED then return then_impl(self, nil, nil) end
  local p = new_promise()
  if rejection == nil then
    rejection = new_error({
      error = "This Promise was not resolved in time for :now()",
      kind = NOT_RESOLVED_IN_TIME,
      context = ":now() was called at " .. call_site(),
    })
  end
  settle(p, REJECTED, rejection)
  return p
end

--- Raises the rejection of `p` (rejected or cancelled) in the awaiting thread (`await` or
--- `expect` calls it) with the rejection's stack and the awaiting frames. A `Promise.Error` is
--- raised as a new error of the same kind and text, with the original as its parent and that whole
--- stack as its trace, so the trace shows every task that awaited it; other values are raised as
--- they are, and the stack is kept for whoever catches them in this thread.
local function raise(p)
  local frames = awaiting_frames(p, 2)
  if p._status == CANCELLED then
    local text = "The awaited Promise was cancelled"
    local e = new_error({ error = text, kind = ALREADY_CANCELLED, trace = render(text, frames) })
    e._stack = frames
    error(e, 0)
  end
  local stack = p._stack and concat_frames(p._stack, frames) or frames
  local first = first_value(p)
  if first == nil then first = "Expected Promise rejected with no value." end
  if is_error(first) then
    local chain = chain_of(first)
    local text = safe_tostring(chain[#chain].error)
    local e = new_error({ error = first.error, kind = first.kind, trace = render(text, stack) }, first)
    e._stack = stack
    error(e, 0)
  end
  thrown[co_running()] = { first, stack }
  error(first, 0)
end

--- `p:await() -> ok, ...`: yields until `p` settles; `true` and the values, or `false` and the
--- rejection (`false` alone when cancelled).
function promise_methods:await()
  check_self(self, "await", "Promise", is_promise)
  wait_settled(self)
  local status = self._status
  if status == CANCELLED then return false end
  return status == RESOLVED, all_values(self)
end

--- `p:awaitStatus() -> status, ...`: yields until `p` settles.
function promise_methods:awaitStatus()
  check_self(self, "awaitStatus", "Promise", is_promise)
  wait_settled(self)
  return self._status, all_values(self)
end

--- `p:expect() -> ...`: yields until `p` settles; its values, or raises its rejection.
function promise_methods:expect()
  check_self(self, "expect", "Promise", is_promise)
  wait_settled(self)
  if self._status ~= RESOLVED then raise(self) end
  return all_values(self)
end

function PromiseMT.__tostring(p)
  return "Promise(" .. tostring(p._status) .. ")"
end

---------------------------------------------------------------------------------------------------
-- async, await, asyncTry

--- `async(f) -> function(...) -> Promise`: each call runs `f(...)` in a new task; its results
--- resolve the promise, its error rejects it.
local function async(f)
  if not callable(f) then bad(1, "async", "function", f, 2) end
  return function(...)
    local p = new_promise()
    if debug_getinfo then
      -- Where it is made, in case the maker awaits it in a tail call (see `awaiting_frames`).
      local info = debug_getinfo(2, "fl")
      if info ~= nil and info.currentline ~= nil and info.currentline > 0 then
        p._site = info -- `func` and `currentline`
      end
    end
    start(p, call_and_resolve, p, f, ...)
    return p
  end
end

--- `await(promise) -> ...`: yields until the promise settles; its values, or raises its rejection.
local function await(p)
  if not (debug_getmetatable and debug_getmetatable(p) == PromiseMT) then
    -- Not (known to be) one of ours: another library's thenable, or not a promise at all.
    if not is_thenable(p) then bad(1, "await", "Promise", p, 2) end
    p = to_promise(p)
  end
  p._handled = true
  if p._status == STARTED then wait_settled(p) end
  if p._status ~= RESOLVED then raise(p) end
  local v = p._values
  if v == ONE then return p._v end -- `all_values(p)`, inlined
  return unpack(v, 1, v.n)
end

--- The error `asyncTry` hands to `catch`: a `Promise.Error` (its parent the raised error, if it was
--- one) with `message`, `stack` (copies of the frames of `frames`: where it was raised, then the
--- frames of each task that awaited it, marked `async`), `traceback` and the raised `value`.
local function try_error(raw, frames)
  local stack, message = {}, nil
  for i = 1, #frames do
    local f = frames[i]
    stack[i] = { file = f.file, line = f.line, func = f.func, async = f.async == true }
  end
  if is_error(raw) then
    local chain = chain_of(raw)
    message = safe_tostring(chain[#chain].error)
  else
    message = type(raw) == "string" and raw or safe_tostring(raw)
  end
  local text = render(message, stack)
  local e = new_error({
    error = message,
    kind = is_error(raw) and raw.kind or EXECUTION_ERROR,
    trace = text,
  }, is_error(raw) and raw or nil)
  e.message, e.stack, e.traceback, e.value = message, stack, text, raw
  e._stack = frames
  return e
end

--- `asyncTry(try, catch?, finally?) -> Promise`: runs `try` as a task; on error calls `catch(err)`;
--- `finally()` always runs and completes before the promise settles; resolves with the results of
--- `try` or `catch`, rejects with the error of whichever failed last.
local function asyncTry(try, catch, finally)
  if not callable(try) then bad(1, "asyncTry", "function", try, 2) end
  if catch ~= nil and not callable(catch) then bad(2, "asyncTry", "function", catch, 2) end
  if finally ~= nil and not callable(finally) then bad(3, "asyncTry", "function", finally, 2) end
  local p = new_promise()
  local finally_ran = false
  if finally ~= nil then
    -- Cancelled: the try task is closed, but finally still runs.
    p._ihook = function()
      if not finally_ran then
        finally_ran = true
        run_hook(p, finally)
      end
    end
    ihook_of[p] = p._ihook
    p._rec = true
  end
  start(p, function()
    local stack = nil
    local r = pack(xpcall(try, function(raw)
      stack = stack_of_raise(raw)
      return raw
    end))
    local good = r[1]
    if not good then
      local err = try_error(r[2], stack or {})
      if catch ~= nil then
        r = pack(xpcall(catch, capture, err))
        good = r[1]
      else
        r = { n = 2, false, err }
      end
    end
    if finally ~= nil and not finally_ran then
      finally_ran = true
      local ok, err = xpcall(finally, capture)
      if not ok then
        good, r = false, { n = 2, false, err }
      end
    end
    if good then
      resolve(p, unpack(r, 2, r.n))
    elseif is_error(r[2]) and r[2]._stack ~= nil and p._status == STARTED then
      p._stack = r[2]._stack
      settle(p, REJECTED, r[2])
    else
      reject_caught(p, r[2])
    end
  end)
  return p
end

---------------------------------------------------------------------------------------------------
-- Unhandled rejections

--- The report of an unhandled rejection: a one-line message and the traceback of where it arose
--- (the error's own trace, or where the promise was made).
local function describe(p)
  local first = first_value(p)
  local text, trace
  if is_error(first) then
    local chain = chain_of(first)
    local root = chain[#chain]
    text, trace = safe_tostring(root.error), root.trace
  else
    text = safe_tostring(first)
  end
  local tb = nil
  local stack = p._stack
  if stack ~= nil and #stack > 0 then
    -- Where it was raised and every await it went through.
    tb = render_frames(stack)
  elseif type(trace) == "string" then
    local at = string_find(trace, "\nstack traceback:", 1, true)
    if at ~= nil then tb = string_sub(trace, at + 1) end
  end
  if tb == nil then tb = render_frames({}) end
  return "Unhandled Promise rejection: " .. text, clean_trace(tb)
end

local function report_unhandled(p)
  local message, tb = describe(p)
  local id = owner_of[p]
  rust_report(message, tb, id)
  local list = callbacks[id or NOBODY]
  if list == nil then return end
  for i = 1, #list do
    local fn = list[i][1]
    spawn_as(id, function() fn(p, all_values(p)) end)
  end
end

-- Reactions a task stopped inside nested settlements left over (see `take_later`), for the tick:
-- `left[left_head..left_tail]`, reaction and promise in turn.
local left, left_head, left_tail = {}, 1, 0

--- No settlement runs between steps (unless one yielded inside a thenable's `__index`: see the
--- README's "What the sandbox does not promise"): a depth left above 0, or reactions left in
--- `later`, are a task's that was stopped inside one (its budget spent) and killed. Left alone,
--- they would make every later settlement of every instance queue its reactions and never run
--- them, so they move to `left`, after what is there, for the tick to run.
local function take_later()
  nest, epoch = 0, epoch + 1
  for i = later_head, later_tail do
    left_tail = left_tail + 1
    left[left_tail], later[i] = later[i], nil
  end
  later_head, later_tail = 1, 0
end

-- `run_each(list, n, f, after)`: the pairs of `list` through `f`, under one budget (task.lua).
local run_each = deps.run_each

--- Runs the reactions in `left` that were there when the tick began: the tables (waiter slots,
--- woken if the library made them) run no script code and are all taken; the functions (and
--- cancellation hooks made as no instance), in order, share one budget (`run_each`), so a tick
--- costs at most one budget however many there are, and what the budget leaves, with what they
--- queue, waits for the next tick. One that yields does not hold the others back.
local function run_left()
  local last = left_tail
  local funcs, n = {}, 0
  for i = left_head, last, 2 do
    local r, lp = left[i], left[i + 1]
    left[i], left[i + 1] = nil, nil
    if type(r) == "table" then
      react(r, lp)
    else
      funcs[n + 1], funcs[n + 2], n = r, lp, n + 2
    end
  end
  if n > 0 then
    local ok, err = run_each(funcs, n, react, take_later)
    if not ok then internal_failure(nil, err) end -- (several instances' reactions: no owner)
  end
  local kept, k = {}, 0
  for i = 1, n do
    if funcs[i] ~= nil then
      k = k + 1
      kept[k] = funcs[i]
    end
  end
  for j = last + 1, left_tail do
    k = k + 1
    kept[k], left[j] = left[j], nil
  end
  left, left_head, left_tail = kept, 1, k
end

do
  -- Cancellation hooks made as no instance that an instance cancelled (see `run_hook`), by
  -- promise, run from `left` by a reaction function of the library's own.
  local hook_of = setmetatable({}, { __mode = "k" })
  local function run_nobody_hook(p)
    local hook = hook_of[p]
    hook_of[p] = nil
    if hook ~= nil then hook() end
  end
  reactions[run_nobody_hook] = true
  function queue_nobody_hook(p, hook)
    hook_of[p] = hook
    left[left_tail + 1], left[left_tail + 2] = run_nobody_hook, p
    left_tail = left_tail + 2
  end
end

--- Called by Rust after every step with the ids of instances that went away since (or nil).
--- Reports each rejection no handler observed by the end of the frame after it happened.
local function tick(gone)
  if gone ~= nil then
    for i = 1, #gone do
      local id = gone[i]
      callbacks[id], pools[id], spare_slots[id] = nil, nil, nil
    end
  end
  take_later()
  if left_head <= left_tail then run_left() end
  local n = #pending
  if n == 0 then return end
  local now = frame()
  local keep, k = {}, 0
  for i = 1, n do
    local p = pending[i]
    if not p._handled then
      if now > p._rejected_at then
        -- Under a budget of its own: the value's `__tostring` is script code.
        -- (As no instance: the value's `__tostring` is any script's code, and the instance
        -- the promise was made for may not be the one that wrote it.)
        local ok, err = guard(owner_of[p], report_unhandled, p)
        if not ok then internal_failure(p, err) end
      else
        k = k + 1
        keep[k] = p
      end
    end
  end
  pending = keep
end

--- For the Rust bridge: a pending promise without an executor, nor the closures an executor gets;
--- `on_cancel(p)` runs if it is cancelled while pending, and `settle_deferred` settles it.
local function deferred(on_cancel)
  local p = new_promise()
  p._ihook = on_cancel
  -- (One function for every such promise: accepted on any, which saves a record per promise; it
  -- does nothing for a promise that is not the bridge's.)
  shared_ihooks[on_cancel] = true
  return p
end

--- For the Rust bridge: settles `p` with the one value `v`, resolved if `ok` (a thenable is
--- followed, as an executor's `resolve` does), rejected if not; nothing if it has settled.
local function settle_deferred(p, ok, v)
  if not ok then
    reject(p, v)
  elseif p._status == STARTED and type(v) ~= "table" then
    settle1(p, RESOLVED, v)
  else
    resolve(p, v)
  end
end

--- For the Rust bridge: settles the `id, ok, value` triples at `q[1..n]`, clearing them, each
--- with `settle_deferred` on `promises[id]` if it is still there (forgotten from `promises` and
--- `ids` first; gone, the entry is only cleared). The common entry (resolved with a value that
--- is not a table; nobody, or one task, awaiting) goes through the C loop `settle_resolved`
--- (src/fastpath.rs), which does what the Lua does without running any: it stops at the first
--- entry of another kind, settled here, and the loop goes on after it. (It reads `_r1` raw and
--- wakes a table there only if a task parked on it, which only the library's slots are, so it
--- needs no look at `reactions`.)
local function settle_batch(q, n, promises, ids)
  local i = 1
  while i <= n do
    -- (`settled` wakes a task at once only while reactions do not nest too deep.)
    if settle_resolved and nest < MAX_NEST then
      i = settle_resolved(q, i, n, promises, ids, STARTED, RESOLVED, ONE, wake_ctx)
      if i > n then return end
    end
    local id, ok, value = q[i], q[i + 1], q[i + 2]
    q[i], q[i + 1], q[i + 2] = nil, nil, nil
    local p = promises[id]
    if p then
      promises[id], ids[p] = nil, nil
      -- Rust settles outside any task, and a settlement that is not the common one may run
      -- script code: a reaction or a metamethod a script put in the promise's plain fields. So
      -- it runs with a budget of its own (`guard`), charged to the promise's instance: a runaway
      -- there stops that settlement alone, and the rest of the batch still settles.
      guard(owner_of[p], settle_deferred, p, ok, value)
    end
    i = i + 3
  end
end

return {
  Promise = Promise,
  deferred = deferred,
  settle_batch = settle_batch,
  async = async,
  await = await,
  asyncTry = asyncTry,
  tick = tick,
  callable = callable,
  owner = owner,
}
