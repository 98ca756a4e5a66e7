-- Rust-backed channels and Bevy messages for scripts: `Channel.named(name)` for typed channels a
-- game declares, `Messages.subscribe(name) -> channel` for message types Rust forwards, and
-- `Messages.write(name, value)` for message types scripts may write. The Rust half is
-- `src/bridge/channels.rs` and `src/bridge/messages.rs`.
local Channel, bad, ARRAY = ... -- `ARRAY`: serde's array metatable (hidden: `getmetatable` reads false)

local type, error, setmetatable, next = type, error, setmetatable, next
local getmetatable = getmetatable
local math_huge = math.huge

-- Slots of a typed channel's `acct` (named the same in `src/bridge/gather.rs`).
local HELD, ROOM, CLOSED = 1, 2, 3

local named = {}       -- name -> external Channel
-- name -> the channels subscribed, in subscription order (weak values: a dropped subscription goes
-- away), with `n` the highest index in use
local subscribers = {}
local writers = {}     -- name -> Rust writer(value) -> error message | nil

--- The typed channel Rust declared under `name`: `send` hands values to Rust (converted to the
--- Rust type, or raising), `receive` takes what Rust sent.
local function channel_named(name)
  if type(name) ~= "string" then bad(1, "named", "string", name, 2) end
  local ch = named[name]
  if ch == nil then error("no channel named '" .. name .. "' was declared by the game", 2) end
  return ch
end

local Messages = {}

--- Subscribes to a message type Rust forwards: returns a channel that receives each message once,
--- in order, from now on.
function Messages.subscribe(name)
  if type(name) ~= "string" then bad(1, "subscribe", "string", name, 2) end
  local list = subscribers[name]
  if list == nil then error("no message type named '" .. name .. "' is forwarded to scripts", 2) end
  local ch = Channel.new(math_huge)
  list.n = list.n + 1
  list[list.n] = ch
  return ch
end

--- Writes a message of a type scripts may write; `value` must fit the Rust type.
function Messages.write(name, value)
  if type(name) ~= "string" then bad(1, "write", "string", name, 2) end
  local writer = writers[name]
  if writer == nil then error("scripts may not write a message type named '" .. name .. "'", 2) end
  local err = writer(value)
  if err ~= nil then error("bad argument #2 to 'write' (" .. err .. ")", 2) end
end

--- The receive queue of a channel Rust fills in batches: `drain(q) -> n` stores every value waiting
--- now at `q[1..n]` (a failed drain raises and stores nothing the queue reads). Returns
--- `can_receive()`, `receive() -> value | nil` (nil: nothing waiting), `queued() -> count`,
--- `clear()`, `take() -> true, value | false` (both at once, for `Channel._external`'s `take`) and
--- `take_queued()`, which is `take` without the refill (it never calls Rust, so never raises).
--- The queue table is reused across refills and each value is released once received.
local function receive_queue(drain)
  local queue, head, tail = {}, 1, 0 -- values not yet received: queue[head..tail]
  local function refill()
    tail = drain(queue)
    head = 1
    return tail > 0
  end
  local function can_receive()
    return head <= tail or refill()
  end
  local function take()
    if head > tail and not refill() then return false end
    local v = queue[head]
    queue[head] = nil
    head = head + 1
    return true, v
  end
  local function take_queued()
    if head > tail then return false end
    local v = queue[head]
    queue[head] = nil
    head = head + 1
    return true, v
  end
  local function receive()
    local _, v = take()
    return v
  end
  local function queued()
    return tail - head + 1
  end
  local function clear()
    for i = head, tail do queue[i] = nil end
    head, tail = 1, 0
  end
  return can_receive, receive, queued, clear, take, take_queued
end

--- Rust: declares the typed channel `name`. `rs` holds its Rust functions: `drain(q) -> n` moves
--- every value Rust sent into `q[1..n]`; `flush(buf, n) -> room` reads the leaves at `buf[1..n]`
--- (of whole values the check accepted) and returns how many more values Rust's end can take;
--- `send(v) -> error
--- message | nil` converts one value through serde; `len`, `cap`, `close`; `acct`, the table of the
--- send side's counts; and, optionally, `put`, a Rust `ext.put` that keeps those counts itself.
--- `flatten(v, buf, n) -> n' | nil` (nil when the type is not a flat struct) copies the `per`
--- leaves of a value that surely converts into `buf`. Returns the function the step calls to hand
--- Rust what was sent.
---
--- Both directions batch: a receive takes from a queue refilled by one Rust call when empty, and a
--- send that passes the check only appends its leaves; they go to Rust when the room counted at the
--- last flush is used up, before a value that needs serde, at `close`, and after each step.
local function declare(name, rs, per, flatten)
  local drain, flush, rs_send, rs_len, rs_close = rs.drain, rs.flush, rs.send, rs.len, rs.close
  local can_receive, receive, queued, _, take = receive_queue(drain)
  local buf = {} -- the leaves of the values sent but not yet flushed (for a Lua `flatten`)
  -- The send side's counts, in the table `rs.acct` that a C `put` shares: values sent but not yet
  -- flushed, values Rust's end could take at the last flush, and whether a script closed it.
  local acct = rs.acct
  acct[HELD], acct[ROOM], acct[CLOSED] = 0, rs.cap(), false

  local function push()
    acct[ROOM] = flush(buf, acct[HELD] * per)
    acct[HELD] = 0
  end

  local ext = { cap = rs.cap }
  function ext.can_send()
    if acct[HELD] < acct[ROOM] then return true end
    push()
    return acct[ROOM] > 0
  end
  function ext.send(v)
    if flatten ~= nil then
      local held = acct[HELD]
      if flatten(v, buf, held * per) ~= nil then
        acct[HELD] = held + 1
        return
      end
    end
    push()
    local err = rs_send(v)
    if err ~= nil then error("cannot send to channel '" .. name .. "': " .. err, 0) end
    acct[ROOM] = acct[ROOM] - 1
  end
  -- The shortcuts `Channel` takes when nothing is parked on the channel: `put` is `can_send` then
  -- `send` for a value the check accepts with room counted (anything else: the full path decides).
  -- Rust's own (Lua 5.4's C check) when it has one.
  if rs.put ~= nil then
    ext.put = rs.put
  elseif flatten ~= nil then
    function ext.put(v)
      local held = acct[HELD]
      if acct[CLOSED] or held >= acct[ROOM] then return false end
      if flatten(v, buf, held * per) == nil then return false end
      acct[HELD] = held + 1
      return true
    end
  end
  ext.can_receive, ext.receive, ext.take = can_receive, receive, take
  function ext.len()
    return queued() + rs_len()
  end
  function ext.close()
    push()
    acct[CLOSED] = true
    rs_close()
  end
  function ext.is_closed()
    return acct[CLOSED]
  end
  named[name] = Channel._external(ext, name)
  return push
end

--- Rust: scripts may subscribe to `name`.
local function forwarded(name)
  if subscribers[name] == nil then subscribers[name] = setmetatable({ n = 0 }, { __mode = "v" }) end
end

--- Rust: scripts may write `name` through `writer`.
local function writable(name, writer)
  writers[name] = writer
end

--- Rust: a message `name` was written; every open subscription gets it.
--- A copy of `v`, a message as serde made it (tables, serde's array metatable on its lists, and
--- leaves; never a cycle), so that every subscriber gets its own: one table for all let one
--- subscriber change what the others read, or give it a metatable whose metamethods then ran as
--- the reader. (Copying serde's metatable through `getmetatable`, which reads it as `false`,
--- raised, and every later subscriber missed the message.)
local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in next, v do t[k] = copy(x) end
  if getmetatable(v) ~= nil then setmetatable(t, ARRAY) end
  return t
end

local function deliver(name, value)
  local list = subscribers[name]
  if list == nil then return end
  -- In subscription order; closed and collected subscriptions are dropped, the rest kept in order.
  -- Each subscriber after the first gets a copy made before any of them runs.
  local n, kept = list.n, 0
  local first = true
  for i = 1, n do
    local ch = list[i]
    list[i] = nil
    if ch ~= nil and not ch:isClosed() then
      -- Kept before the send, so that a send that raises loses no subscription.
      kept = kept + 1
      list[kept] = ch
      ch:trySend(first and value or copy(value))
      first = false
    end
  end
  list.n = kept
end

return {
  named = channel_named,
  Messages = Messages,
  declare = declare,
  receive_queue = receive_queue,
  forwarded = forwarded,
  writable = writable,
  deliver = deliver,
}
