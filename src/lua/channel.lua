-- Channels with Go's semantics, on top of the scheduler's one wait mechanism
-- (`park`/`wake` from task.lua). This module owns: channel state (the buffer and the closed flag),
-- the FIFO queues of waiting senders and receivers, `Channel.select` and its private random
-- generator, `Channel.after`, and the extension point for channels whose values live in Rust
-- (`Channel._external`, retried by `poll`).
--
-- Called once with `deps` (runtime.rs builds it) and returns `{ Channel = Channel, poll = poll }`.
--
-- * A channel object is an empty read-only table; its state lives in `state_of` (weak keys), out of
--   scripts' reach. Buffered values are counted, never measured with `#`, so `nil` values survive.
-- * A thread that must wait parks on a fresh slot; a *node* per (channel, direction) puts the slot in
--   that channel's queue of senders or receivers (a select puts one node per case). Whoever makes
--   the operation possible (a send, a receive, a close) takes the first node whose thread still
--   waits (`waiting(slot)`), wakes it, fills in the slot's result, and withdraws every other node
--   of that slot, so a select completes exactly one case: it never takes two values, and a waiting
--   sender's value is taken once or not at all. A thread that was cancelled (or whose entity was
--   despawned) no longer waits: its nodes are skipped and dropped, and the next waiter is tried.
-- * The woken thread resumes later in the same step, in the order it was woken, and reads its
--   result from the slot. Script code that resumes a parked thread by hand makes `park` return
--   early: the operation withdraws and starts over, as a promise's `await` does.
-- * External channels (`Channel._external(ext, name)`) keep their values in Rust. A blocked
--   operation on one is an *entry* in `ext_list`, in the order it parked; `poll()` (Rust calls it
--   at the start of every step) retries them all, and closing an external channel or a successful
--   operation on one from Lua retries that channel's entries at once.
--
-- Written for Lua 5.1 to 5.4, LuaJIT and Luau alike: no `goto`, integer division or bit operators.
local deps = ...

local task_spawn, task_wait = deps.task.spawn, deps.task.wait
local park, wake, waiting, bad = deps.park, deps.wake, deps.waiting, deps.bad

local type, error, tostring, tonumber, setmetatable, pcall =
  type, error, tostring, tonumber, setmetatable, pcall
local string_format = string.format
local math_floor, math_huge, math_tointeger = math.floor, math.huge, math.tointeger

--- Raises `bad argument #n to 'fname' (msg)`, blaming the caller `level` frames up.
local function bad_msg(n, fname, msg, level)
  error(string_format("bad argument #%d to '%s' (%s)", n, fname, msg), level + 1)
end

---------------------------------------------------------------------------------------------------
-- The select generator: a Park-Miller "minimal standard" LCG (x = 48271 x mod 2^31 - 1). Products
-- stay below 2^47, so doubles compute it exactly on every flavour, and a run replays exactly. It is
-- private: `math.randomseed` in a script does not change it.

local MODULUS = 2147483647
local rng = (tonumber(deps.seed) or 0) % (MODULUS - 1)
rng = math_floor(rng) + 1 -- in 1 .. MODULUS - 1

--- A pseudo-random integer in `0 .. n - 1`.
local function random_below(n)
  rng = (rng * 48271) % MODULUS
  return math_floor((rng - 1) / (MODULUS - 1) * n)
end

---------------------------------------------------------------------------------------------------
-- Channel objects and their state

local CLOSED = {} -- a slot's `err` when its channel closed under a waiting sender

local state_of = setmetatable({}, { __mode = "k" }) -- channel object -> state
local methods = {}
local ChannelMT = {
  __index = methods,
  __newindex = function(_, key)
    error("attempt to modify a Channel (field '" .. tostring(key) .. "')", 2)
  end,
  __metatable = "Channel",
}

--- How a channel's state reads (`tostring` of the channel).
local function state_text(st)
  if st.ext then return "Channel(" .. (st.name or "external") .. ")" end
  if st.cap == 0 then return "Channel(unbuffered)" end
  if st.cap == math_huge then return "Channel(unbounded)" end
  return "Channel(" .. tostring(st.cap) .. ")"
end

function ChannelMT.__tostring(ch)
  return state_text(state_of[ch])
end

--- A new channel object whose state is `st`.
local function new_channel(st)
  local ch = setmetatable({}, ChannelMT)
  state_of[ch] = st
  return ch
end

--- A new Lua channel's state, with `capacity` buffer slots.
local function new_state(capacity)
  return {
    cap = capacity,
    buf = {},
    head = 1,
    count = 0,
    closed = false,
    recvq = {}, -- waiting receivers: nodes `{ slot, index, q, prev, next }`
    sendq = {}, -- waiting senders: the same, with `value`
  }
end

--- The state of `self`, or raises `calling 'name' on bad self`.
local function check_self(self, name)
  local st = state_of[self]
  if st == nil then
    error(string_format("calling '%s' on bad self (Channel expected, got %s)", name, type(self)), 3)
  end
  return st
end

-- `methods.send` and `methods.receive` do `buf_push` and `buf_pop` inline on their fast paths
-- (a call costs more than the work): a change here goes there too.
local function buf_push(st, v)
  local n = st.count
  st.buf[st.head + n] = v
  st.count = n + 1
end

local function buf_pop(st)
  local n, h, buf = st.count, st.head, st.buf
  local v = buf[h]
  buf[h] = nil
  if n > 1 then
    st.count, st.head = n - 1, h + 1
  else
    st.count, st.head = 0, 1
    if h > 64 then st.buf = {} end -- drained: a table that grew can shrink
  end
  return v
end

---------------------------------------------------------------------------------------------------
-- Waiter queues (doubly linked, so a select withdraws from every channel at once)

local function push_node(q, node)
  node.q = q
  local last = q.last
  node.prev = last
  if last then last.next = node else q.first = node end
  q.last = node
end

local function unlink(node)
  local q = node.q
  if not q then return end
  local prev, nxt = node.prev, node.next
  if prev then prev.next = nxt else q.first = nxt end
  if nxt then nxt.prev = prev else q.last = prev end
  -- `false`, not nil: a store over a value is the VM's fast one, and the next `push_node` stores
  -- over these again (links and queue ends are only ever tested for truth).
  node.q, node.prev, node.next = false, false, false
end

--- Forgets an external entry (it is skipped and dropped by the next retry).
local function drop_entry(entry)
  if entry.gone then return end
  entry.gone = true
  for j = 1, #entry do
    local st = entry[j].st
    st.parked = st.parked - 1
  end
end

--- Takes the waiter `slot` out of every queue it is in.
local function withdraw(slot)
  local node = slot.node
  if node then unlink(node) end
  local nodes = slot.nodes
  if nodes then
    for i = 1, #nodes do unlink(nodes[i]) end
  end
  local entry = slot.entry
  if entry then drop_entry(entry) end
end

--- The first node of `q` whose thread still waits; nodes of threads that no longer wait
--- (cancelled, despawned, resumed by hand) are dropped on the way.
local function first_live(q)
  local node = q.first
  while node do
    if waiting(node.slot) then return node end
    local nxt = node.next
    unlink(node)
    node = nxt
  end
  return nil
end

--- Wakes the first thread still waiting in `q` and withdraws it from every queue; returns its node
--- (the caller fills in the slot's result), or nil if no one waits.
local function take(q)
  local node = q.first
  while node do
    local slot = node.slot
    -- `wake` is false for a thread that no longer waits (`waiting(slot)` is false): skip it.
    if wake(slot) then
      slot.done, slot.index = true, node.index
      withdraw(slot)
      return node
    end
    local nxt = node.next
    unlink(node)
    node = nxt
  end
  return nil
end

---------------------------------------------------------------------------------------------------
-- External channels: the retry list

local ext_list, ext_n = {}, 0
local retrying = false

--- Adds `entry` (a parked operation on external channels) to the retry list.
local function park_external(entry)
  for j = 1, #entry do
    local st = entry[j].st
    st.parked = st.parked + 1
  end
  ext_n = ext_n + 1
  ext_list[ext_n] = entry
end

--- Whether the external operation `op` can proceed now (a send on a closed channel proceeds: it
--- raises). May raise what the Rust side raises.
local function ext_ready(op)
  local ext = op.st.ext
  if op.send then return ext.is_closed() or ext.can_send() end
  return ext.can_receive() or ext.is_closed()
end

--- Completes external operation `op` for the woken `slot`, recording the result or the error.
local function ext_complete(slot, op)
  local ext = op.st.ext
  if op.send then
    local ok, closed = pcall(ext.is_closed)
    if not ok then
      slot.err = { closed }
    elseif closed then
      slot.err = CLOSED
    else
      local sent, err = pcall(ext.send, op.value)
      if not sent then slot.err = { err } end
    end
  else
    local ok, can = pcall(ext.can_receive)
    if not ok then
      slot.err = { can }
    elseif can then
      local got, v = pcall(ext.receive)
      if got then slot.value, slot.ok = v, true else slot.err = { v } end
    else
      slot.value, slot.ok = nil, false
    end
  end
end

--- Retries one parked entry; true when it is finished with (completed, or its thread is gone).
local function attempt(entry)
  if entry.gone then return true end
  local slot = entry.slot
  if not waiting(slot) then
    drop_entry(entry)
    return true
  end
  local ready, k = nil, 0
  for j = 1, #entry do
    local op = entry[j]
    local ok, can = pcall(ext_ready, op)
    if not ok then
      -- The Rust side raised: the waiting operation raises it.
      if wake(slot) then
        slot.done, slot.index, slot.err = true, op.index, { can }
      end
      withdraw(slot)
      return true
    end
    if can then
      ready = ready or {}
      k = k + 1
      ready[k] = op
    end
  end
  if k == 0 then return false end
  local op = ready[k == 1 and 1 or 1 + random_below(k)]
  if not wake(slot) then
    withdraw(slot)
    return true
  end
  slot.done, slot.index = true, op.index
  withdraw(slot)
  ext_complete(slot, op)
  return true
end

local function involves(entry, st)
  for j = 1, #entry do
    if entry[j].st == st then return true end
  end
  return false
end

--- Retries the parked external operations in the order they parked (those on `only`'s channel if
--- given), waking those that can proceed now.
local function retry(only)
  if retrying or ext_n == 0 then return end
  retrying = true
  local list, n = ext_list, ext_n
  ext_list, ext_n = {}, 0
  local keep, k = {}, 0
  for i = 1, n do
    local entry = list[i]
    local finished
    if only == nil or involves(entry, only) then
      local ok, done = pcall(attempt, entry)
      finished = not ok or done
      if not ok then drop_entry(entry) end
    else
      finished = entry.gone
    end
    if not finished then
      k = k + 1
      keep[k] = entry
    end
  end
  for i = 1, ext_n do -- parked meanwhile (not expected): after the older ones
    k = k + 1
    keep[k] = ext_list[i]
  end
  ext_list, ext_n = keep, k
  retrying = false
end

--- Called by Rust once at the start of every step, before anything resumes: retries every parked
--- operation on external channels, in the order they parked.
local function poll()
  retry(nil)
end

---------------------------------------------------------------------------------------------------
-- The operations, without waiting

--- Sends `v` now if it can: to the first waiting receiver, else into the buffer. Returns true if
--- sent, false if it would have to wait, CLOSED on a closed channel. External: raises what Rust raises.
local function send_now(st, v)
  local ext = st.ext
  if ext then
    if ext.is_closed() then return CLOSED end
    if not ext.can_send() then return false end
    ext.send(v)
    if st.parked > 0 then retry(st) end
    return true
  end
  if st.closed then return CLOSED end
  local node = take(st.recvq)
  if node then
    local slot = node.slot
    slot.value, slot.ok = v, true
    return true
  end
  if st.count < st.cap then
    buf_push(st, v)
    return true
  end
  return false
end

--- Receives now if it can: from the buffer (refilled from the first waiting sender), from a waiting
--- sender, or `nil, false` from a closed, drained channel. Returns `proceeded, value, ok`.
local function receive_now(st)
  local ext = st.ext
  if ext then
    if ext.can_receive() then
      local v = ext.receive()
      if st.parked > 0 then retry(st) end
      return true, v, true
    end
    if ext.is_closed() then return true, nil, false end
    return false
  end
  if st.count > 0 then
    local v = buf_pop(st)
    local node = take(st.sendq)
    if node then buf_push(st, node.value) end
    return true, v, true
  end
  local node = take(st.sendq)
  if node then return true, node.value, true end
  if st.closed then return true, nil, false end
  return false
end

--- Whether a send on `st` would proceed now (on a closed channel it proceeds: it raises).
local function can_send(st)
  local ext = st.ext
  if ext then return ext.is_closed() or ext.can_send() end
  return st.closed or st.count < st.cap or first_live(st.recvq) ~= nil
end

--- Whether a receive on `st` would proceed now.
local function can_receive(st)
  local ext = st.ext
  if ext then return ext.can_receive() or ext.is_closed() end
  return st.count > 0 or st.closed or first_live(st.sendq) ~= nil
end

---------------------------------------------------------------------------------------------------
-- The operations, waiting

--- Puts `slot` in the queue of `st` for one operation (case `index` of a select, or 1).
local function enlist(slot, st, send, v, index)
  slot.st, slot.send = st, send -- for the task inspector
  if st.ext then
    local entry = { slot = slot, { st = st, send = send, value = v, index = index } }
    slot.entry = entry
    park_external(entry)
  else
    local node = { slot = slot, index = index, value = v }
    push_node(send and st.sendq or st.recvq, node)
    slot.node = node
  end
end

-- Waiters of finished sends and receives on Lua channels, kept for the next wait: a waiter is the
-- biggest table a wait makes. Only a waiter whose operation completed comes here (see `recycle`).
local spare, spare_n = {}, 0
local MAX_SPARE = 64

--- A waiter for one send (`send`, with `v`) or receive on `st`, queued: for a Lua channel one table
--- is both the slot and its node (`slot.slot == slot.node == slot`), made with every field it gets
--- so that filling them in never grows it (or a spare one); a waiting send or receive allocates
--- nothing else.
local function waiter(st, send, v)
  if st.ext then
    local slot = {}
    enlist(slot, st, send, v, 1)
    return slot
  end
  local slot
  if spare_n > 0 then
    slot = spare[spare_n]
    spare[spare_n] = nil
    spare_n = spare_n - 1
    slot.st, slot.send, slot.value = st, send, v
  else
    -- Every field it gets, `false` until it has a value (a store over a value is the fast
    -- one; the fields are only ever tested for truth): sixteen, the size of its hash part.
    slot = {
      key = false, reg = false, -- what `park` fills in
      st = st, send = send, -- for the task inspector
      slot = false, node = false, index = 1, value = v, q = false, prev = false, next = false, -- the node
      done = false, ok = false, err = false, -- the result
      nodes = false, entry = false, -- what a select's and an external channel's waiters have
    }
    slot.slot, slot.node = slot, slot
  end
  push_node(send and st.sendq or st.recvq, slot)
  return slot
end

--- Keeps `slot`, a Lua channel's waiter (made by `waiter`) whose operation completed, for the next
--- wait. Nothing else refers to it then: its waker took it out of its queue (`take`), and `wake`
--- cleared its task's `parked` entry and its `key`, so a stale look at it finds it not waiting;
--- whoever parks on it next gives it a new task and registration.
local function recycle(slot)
  if slot.node ~= slot or spare_n >= MAX_SPARE then return end
  slot.key, slot.reg, slot.st, slot.value, slot.index = false, false, false, false, 1
  slot.done, slot.ok, slot.err = false, false, false
  spare_n = spare_n + 1
  spare[spare_n] = slot
end

--- Raises what the Rust side raised while completing the external operation of fired `slot`.
local function raise_ext_error(slot)
  local err = slot.err
  if err and err ~= CLOSED then error(err[1], 0) end
end

--- Sends `v`, waiting until it is delivered or buffered. Returns true, or CLOSED. `full`: the
--- caller just found that the send cannot proceed (a Lua channel, open, with no receiver and no
--- room), so the first try is skipped.
local function send_wait(st, v, full)
  while true do
    if not full then
      local r = send_now(st, v)
      if r then return r end
    end
    full = false
    local slot = waiter(st, true, v)
    park(slot)
    -- Done: whoever completed it (`take`, `attempt`) withdrew it from every queue.
    if slot.done then
      local err = slot.err
      if err == CLOSED then return CLOSED end
      if err then raise_ext_error(slot) end
      recycle(slot)
      return true
    end
    -- Resumed by hand: out of the queues, and try again.
    withdraw(slot)
  end
end

--- Receives, waiting until a value arrives or the channel is closed and drained: `value, ok`.
--- `empty`: the caller just found nothing to receive (a Lua channel, open, with no value and no
--- sender), so the first try is skipped. `ch`, the channel itself, is only kept on the stack while
--- this waits: a channel nothing else holds (`Messages.subscribe(name):receive()`, or its `iter()`)
--- was collected under its waiting receiver, and with it the subscription that fed it.
local function receive_wait(st, empty, ch)
  while true do
    if not empty then
      local proceeded, v, ok = receive_now(st)
      if proceeded then return v, ok end
    end
    empty = false
    local slot = waiter(st, false, nil)
    park(slot)
    if slot.done then -- (withdrawn by whoever completed it, as in `send_wait`)
      if slot.err then raise_ext_error(slot) end
      local value, ok = slot.value, slot.ok
      recycle(slot)
      return value, ok
    end
    withdraw(slot)
  end
end

---------------------------------------------------------------------------------------------------
-- The API

local Channel = {}

--- `Channel.new(capacity?) -> channel`: `0` (the default) is unbuffered, `math.huge` unbounded.
function Channel.new(capacity)
  if capacity == nil then
    capacity = 0
  elseif type(capacity) ~= "number" then
    bad(1, "new", "number", capacity, 2)
  elseif capacity ~= math_huge and (capacity ~= capacity or capacity < 0 or math_floor(capacity) ~= capacity) then
    bad_msg(1, "new", "non-negative integer or math.huge expected, got " .. tostring(capacity), 2)
  elseif capacity ~= math_huge and capacity >= 2 ^ 63 then
    -- Past 64-bit integers (Lua 5.4 has no integer for it): Go's "size out of range".
    bad_msg(1, "new", "capacity below 2^63 or math.huge expected, got " .. tostring(capacity), 2)
  elseif capacity ~= math_huge and math_tointeger then
    capacity = math_tointeger(capacity) -- Lua 5.4: `cap()` of `Channel.new(3.0)` reads 3
  end
  return new_channel(new_state(capacity))
end

--- `ch:send(v) -> true`: waits until `v` is delivered or buffered; raises on a closed channel.
function methods.send(self, v)
  -- The common cases first, inline: a Lua channel, open, no receiver waiting, room in the buffer;
  -- or a receiver waiting, which takes the value; an external channel with no operation parked
  -- on it whose `put` takes the value at once.
  -- (`not x` rather than `x == nil` where `x` is never `false`: a test, where comparing with
  -- nil is a call into the VM's equality.)
  local st = state_of[self]
  if st then
    local ext = st.ext
    if not ext then
      local n = st.count
      if n < st.cap and not st.closed and not st.recvq.first then
        st.buf[st.head + n] = v -- `buf_push`, inline
        st.count = n + 1
        return true
      elseif not st.closed then
        if st.recvq.first then
          -- A receiver waits: hand `v` over (or, if every waiter is gone, what `send_now` does).
          if send_now(st, v) then return true end
        else
          -- No receiver, no room: wait at once.
          if send_wait(st, v, true) == CLOSED then error("send on closed channel", 2) end
          return true
        end
      end
    elseif st.parked == 0 then
      local put = ext.put
      if put and put(v) then return true end
    end
  end
  if send_wait(st or check_self(self, "send"), v) == CLOSED then error("send on closed channel", 2) end
  return true
end

--- `ch:receive() -> value, ok`: waits for a value; `nil, false` once closed and drained.
function methods.receive(self)
  -- The common cases first, inline: a Lua channel with a buffered value and no sender waiting to
  -- refill the buffer, or an empty one with a sender waiting; an external channel with no
  -- operation parked on it whose `take` has a value.
  local st = state_of[self]
  if st then
    local ext = st.ext
    if not ext then
      local n = st.count
      if n > 0 and not st.sendq.first then
        -- `buf_pop`, inline
        local h, buf = st.head, st.buf
        local v = buf[h]
        buf[h] = nil
        if n > 1 then
          st.count, st.head = n - 1, h + 1
        else
          st.count, st.head = 0, 1
          if h > 64 then st.buf = {} end
        end
        return v, true
      elseif n == 0 then
        if st.sendq.first then
          -- A sender waits: take its value (or, if every waiter is gone, what `receive_now` does).
          local proceeded, v, ok = receive_now(st)
          if proceeded then return v, ok end
        elseif not st.closed then
          return receive_wait(st, true, self) -- nothing to receive: wait at once
        end
      end
    elseif st.parked == 0 then
      local take = ext.take
      if take then
        local got, v = take()
        if got then return v, true end
      end
    end
  end
  return receive_wait(st or check_self(self, "receive"), false, self)
end

--- `ch:trySend(v) -> boolean`: sends only if that needs no waiting; raises on a closed channel.
function methods.trySend(self, v)
  local st = check_self(self, "trySend")
  local r = send_now(st, v)
  if r == CLOSED then error("send on closed channel", 2) end
  return r
end

--- `ch:tryReceive() -> value, ok`: receives only if a value is there now (`nil, false` otherwise).
function methods.tryReceive(self)
  local st = check_self(self, "tryReceive")
  local proceeded, v, ok = receive_now(st)
  if proceeded then return v, ok end
  return nil, false
end

--- `ch:close()`: waiting receivers get `nil, false`, waiting senders raise; closing twice raises.
function methods.close(self)
  local st = check_self(self, "close")
  local ext = st.ext
  if ext then
    if ext.is_closed() then error("close of closed channel", 2) end
    ext.close()
    if st.parked > 0 then retry(st) end
    return
  end
  if st.closed then error("close of closed channel", 2) end
  st.closed = true
  while true do
    local node = take(st.recvq)
    if node == nil then break end
    node.slot.value, node.slot.ok = nil, false
  end
  while true do
    local node = take(st.sendq)
    if node == nil then break end
    node.slot.err = CLOSED
  end
end

--- `ch:len() -> number`: values buffered now.
function methods.len(self)
  local st = check_self(self, "len")
  if st.ext then return st.ext.len() end
  return st.count
end

--- `ch:cap() -> number`: the buffer's capacity (`math.huge` for an unbounded channel).
function methods.cap(self)
  local st = check_self(self, "cap")
  if st.ext then return st.ext.cap() end
  return st.cap
end

--- `ch:isClosed() -> boolean`.
function methods.isClosed(self)
  local st = check_self(self, "isClosed")
  if st.ext then return st.ext.is_closed() and true or false end
  return st.closed
end

--- `for v in ch:iter() do`: receives until the channel is closed and drained. A generic `for` ends
--- at `nil`, so `nil` values are received and skipped.
function methods.iter(self)
  local st = check_self(self, "iter")
  return function()
    while true do
      local v, ok = receive_wait(st, false, self)
      if not ok then return nil end
      if v ~= nil then return v end
    end
  end
end

local OPS = { receive = true, send = true, default = true }

--- `Channel.select(cases) -> index, value, ok`: cases are `{ch, "receive"}`, `{ch, "send", v}` and
--- `{nil, "default"}`. Picks at random among the cases that can proceed now; else takes the default
--- at once; else waits until one can proceed. A case whose channel is nil never proceeds. A receive
--- case returns `index, value, ok`; a send case and the default return `index`.
function Channel.select(cases)
  if type(cases) ~= "table" then bad(1, "select", "table", cases, 2) end
  local n = #cases
  local sts, sends, values, default = {}, {}, {}, nil
  for i = 1, n do
    local c = cases[i]
    if type(c) ~= "table" then
      bad_msg(1, "select", string_format("case %d: table expected, got %s", i, type(c)), 2)
    end
    local ch, op = c[1], c[2]
    if not OPS[op] then
      bad_msg(1, "select", string_format("case %d: 'receive', 'send' or 'default' expected, got %s",
        i, type(op) == "string" and "'" .. op .. "'" or type(op)), 2)
    end
    local st = false
    if op == "default" then
      if ch ~= nil then bad_msg(1, "select", string_format("case %d: a default case takes no channel", i), 2) end
      if default then bad_msg(1, "select", string_format("case %d: more than one default case", i), 2) end
      default = i
    elseif ch ~= nil then
      st = state_of[ch]
      if st == nil then
        bad_msg(1, "select", string_format("case %d: Channel or nil expected, got %s", i, type(ch)), 2)
      end
    end
    sts[i], sends[i], values[i] = st, op == "send", c[3]
  end

  local ready = {}
  while true do
    -- The cases that can proceed now; one of them at random.
    local failed = nil
    while true do
      local k = 0
      for i = 1, n do
        local st = sts[i]
        if st and not (failed and failed[i]) and (sends[i] and can_send(st) or not sends[i] and can_receive(st)) then
          k = k + 1
          ready[k] = i
        end
      end
      if k == 0 then break end
      local i = ready[k == 1 and 1 or 1 + random_below(k)]
      if sends[i] then
        local r = send_now(sts[i], values[i])
        if r == CLOSED then error("send on closed channel", 2) end
        if r then return i end
      else
        local proceeded, v, ok = receive_now(sts[i])
        if proceeded then return i, v, ok end
      end
      -- An external channel changed its mind between the check and the operation: look again,
      -- without that case (it waits with the others, and `poll` retries it).
      failed = failed or {}
      failed[i] = true
    end
    if default then return default end

    -- Wait on every case at once.
    local slot = {}
    local nodes, entry = {}, nil
    local queues, by_queue = {}, {}
    for i = 1, n do
      local st = sts[i]
      if st then
        if st.ext then
          entry = entry or { slot = slot }
          entry[#entry + 1] = { st = st, send = sends[i], value = values[i], index = i }
        else
          local q = sends[i] and st.sendq or st.recvq
          local node = { slot = slot, index = i, value = values[i] }
          local group = by_queue[q]
          if group == nil then
            group = {}
            by_queue[q] = group
            queues[#queues + 1] = q
          end
          group[#group + 1] = node
          nodes[#nodes + 1] = node
        end
      end
    end
    for j = 1, #queues do
      local q = queues[j]
      local group = by_queue[q]
      -- Several cases on one queue wait in a random order, as in Go, so whoever comes for one of
      -- them later takes any of them alike (one draw per case past the first; none otherwise).
      for k = #group, 2, -1 do
        local r = 1 + random_below(k)
        group[k], group[r] = group[r], group[k]
      end
      for k = 1, #group do push_node(q, group[k]) end
    end
    slot.nodes = nodes
    if entry then
      slot.entry = entry
      park_external(entry)
    end
    park(slot)
    if slot.done then -- (withdrawn from every queue by whoever completed it, as in `send_wait`)
      if slot.err == CLOSED then error("send on closed channel", 2) end
      raise_ext_error(slot)
      local i = slot.index
      if sends[i] then return i end
      return i, slot.value, slot.ok
    end
    -- Resumed by hand: out of the queues, and look at the cases again.
    withdraw(slot)
  end
end

--- `Channel.after(seconds) -> channel`: a channel that receives the game seconds that really
--- passed, once, after `seconds` (as `task.wait(seconds)` counts them). The timer is a task of the
--- calling instance.
function Channel.after(seconds)
  if type(seconds) ~= "number" then bad(1, "after", "number", seconds, 2) end
  local st = new_state(1)
  st.after = true -- its own task sends: the inspector never calls a wait on it hopeless
  task_spawn(function()
    send_now(st, task_wait(seconds)) -- a closed channel (a script closed it) takes nothing
  end)
  return new_channel(st)
end

local EXT_FUNCTIONS = { "can_send", "send", "can_receive", "receive", "len", "cap", "close", "is_closed" }
local EXT_SHORTCUTS = { "put", "take" }

--- Internal (for the crate's Rust-backed typed channels): `Channel._external(ext, name?) -> channel`
--- makes a channel whose values live in Rust. `ext` holds the functions `can_send() -> boolean`,
--- `send(v)` (may raise a conversion error: it reaches the caller), `can_receive() -> boolean`,
--- `receive() -> v` (called only after `can_receive()` returned true), `len()`, `cap()`, `close()`
--- and `is_closed() -> boolean`. A blocked operation on it is retried by `poll()`. Two optional
--- functions let `send` and `receive` skip those steps when no operation is parked on the channel:
--- `put(v) -> boolean` sends `v` when it is open, has room and takes `v` with no conversion error
--- (false: nothing happened, the full path decides), and `take() -> true, v | false` receives when
--- a value is there.
function Channel._external(ext, name)
  if type(ext) ~= "table" then bad(1, "_external", "table", ext, 2) end
  if name ~= nil and type(name) ~= "string" then bad(2, "_external", "string", name, 2) end
  local own = {}
  for i = 1, #EXT_FUNCTIONS do
    local key = EXT_FUNCTIONS[i]
    local f = ext[key]
    if type(f) ~= "function" then
      bad_msg(1, "_external", string_format("field '%s': function expected, got %s", key, type(f)), 2)
    end
    own[key] = f
  end
  for i = 1, #EXT_SHORTCUTS do
    local key = EXT_SHORTCUTS[i]
    local f = ext[key]
    if f ~= nil and type(f) ~= "function" then
      local msg = string_format("field '%s': function or nil expected, got %s", key, type(f))
      bad_msg(1, "_external", msg, 2)
    end
    own[key] = f
  end
  return new_channel({ ext = own, name = name, parked = 0 })
end

---------------------------------------------------------------------------------------------------
-- For the task inspector (`lua/inspect.lua`): what a parked slot waits for. Nothing here runs
-- unless something lists tasks.

local channel_ids = setmetatable({}, { __mode = "k" }) -- state -> number, given when first listed
local last_channel_id = 0

--- `Channel(unbuffered)#3`: the channel's text and a number that tells channels apart; and
--- whether nothing can ever complete an operation on it (no channel object is left: only
--- waiting threads hold its state; a full collection must have run for this to show).
local function channel_label(st)
  local id = channel_ids[st]
  if id == nil then
    last_channel_id = last_channel_id + 1
    id = last_channel_id
    channel_ids[st] = id
  end
  local held = st.ext ~= nil or st.after
  if not held then
    for _, s in pairs(state_of) do
      if s == st then
        held = true
        break
      end
    end
  end
  return state_text(st) .. "#" .. id, not held
end

--- `kind, channel text, forever` for a slot a channel operation parked on (nil otherwise):
--- `"send"` / `"receive"` with the channel, or `"select"` with its channels.
local function describe(slot)
  if slot.nodes then
    local names, forever = {}, true
    local function add(st)
      local text, hopeless = channel_label(st)
      names[#names + 1] = text
      forever = forever and hopeless
    end
    for i = 1, #slot.nodes do
      local node = slot.nodes[i]
      local q = node.q
      if q then
        for _, st in pairs(state_of) do
          if st.recvq == q or st.sendq == q then
            add(st)
            break
          end
        end
      end
    end
    if slot.entry then
      for i = 1, #slot.entry do add(slot.entry[i].st) end
    end
    return "select", table.concat(names, ", "), forever
  end
  local st = slot.st
  if not st then return nil end
  local text, forever = channel_label(st)
  return slot.send and "send" or "receive", text, forever
end

--- Whether `x` is a channel this module made (its state is hidden: a script can forge the name
--- `getmetatable` reads, not the state).
local function is_channel(x)
  return state_of[x] ~= nil
end

return { Channel = Channel, poll = poll, describe = describe, is_channel = is_channel }
