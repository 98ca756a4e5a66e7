-- Streams: pull-based sequences of chunks over channels, tables, iterators and Rust
-- producers, a thin layer over the channel and promise modules. This module owns the stream object,
-- its sources, the lazy stages (`map`, `filter`, `take`) and the consumers (`read`, `readLine`,
-- `iter`, `forEach`, `reduce`, `collect`). It adds no scheduler of its own: a stream over a channel
-- waits in `Channel:receive` (park/wake), and a Rust producer is an external channel (`poll` retries
-- it each step) whose bounded buffer holds the producer back.
--
-- Called once with `deps` (runtime.rs builds it) and returns `{ Stream = Stream, rust = rust }`.
--
-- * A stream's state lives in `state_of` (weak keys): `pull(step) -> more, value` (more = false at
--   the end, with the producer's error as `value` if it failed; a stage reads its source with
--   `step(source_state)`) and `close()` (stops the producer).
--   Nothing is pulled before a consumer asks, so `map`, `filter` and `take` do no work ahead.
-- * The first end (the source ran dry, failed, or was closed) is remembered: every later read
--   returns it again, and the producer is told once (`close`), which releases a Rust producer.
-- * Chunks are never nil: a `nil` from a channel, or from `map`, is skipped.
-- * A pull that returns after the stream ended (another task closed it, or `take` reached its
--   count, while this one waited) drops what it got: no chunk is handed out after the end.
-- * `readLine` keeps what it holds in the state, never only in locals: `parts` (the pieces of a
--   line begun, none with a newline) and `rest`/`rest_pos` (a chunk's bytes after the last line it
--   returned). The other consumers read that buffered text first, so no byte is lost between them.
local deps = ...

local Promise, bad, callable = deps.Promise, deps.bad, deps.callable
local owner, is_channel = deps.owner, deps.is_channel

local rawget = rawget
local type, error, tostring, setmetatable, getmetatable, pcall =
  type, error, tostring, setmetatable, getmetatable, pcall
local string_format, string_find, string_sub = string.format, string.find, string.sub
local table_concat = table.concat
local math_floor = math.floor
local co_running = coroutine.running

local WEAK_KEYS = { __mode = "k" }
local MAIN = {} -- stands for the main thread, which `coroutine.running` gives as nil in Lua 5.1

--- Raises `bad argument #n to 'fname' (msg)`, blaming the caller `level` frames up.
local function bad_msg(n, fname, msg, level)
  error(string_format("bad argument #%d to '%s' (%s)", n, fname, msg), level + 1)
end

local state_of = setmetatable({}, { __mode = "k" }) -- stream object -> state
local methods = {}
local StreamMT = {
  __index = methods,
  __newindex = function(_, key)
    error("attempt to modify a Stream (field '" .. tostring(key) .. "')", 2)
  end,
  __metatable = "Stream",
}

function StreamMT.__tostring(s)
  return "Stream(" .. state_of[s].kind .. ")"
end

--- A new stream object over `pull` and `close` (either may be nil: nothing to stop), made by the
--- running instance. `code`: pulling it runs script code of that instance (an iterator, a table's
--- metamethods, a `map` or `filter` function, here or upstream).
local function new_stream(kind, pull, close, code)
  local s = setmetatable({}, StreamMT)
  state_of[s] =
    { kind = kind, pull = pull, close = close, ended = false, err = nil, pulls = 0, owner = owner(), code = code }
  return s
end

--- Whether the running instance may pull `st` (a stream's state): any may read a stream that runs
--- no script code (from Rust or over a channel); one that does is its maker's alone, since pulled
--- in another instance's task its maker's code would run as that instance.
local function may_pull(st)
  return not st.code or st.owner == owner()
end

--- Raises unless the running instance may pull `st` (`may_pull`).
local function check_owner(st, name, level)
  if not may_pull(st) then
    error(string_format("calling '%s' on bad self (a Stream of another script)", name), level + 1)
  end
end

local function check_self(self, name)
  local st = state_of[self]
  if st == nil then
    error(string_format("calling '%s' on bad self (Stream expected, got %s)", name, type(self)), 3)
  end
  check_owner(st, name, 3)
  return st
end

--- Ends the stream (once) and tells its producer to stop.
local function finish(st, err)
  if st.ended then return end
  st.ended, st.err = true, err
  local close = st.close
  if close then pcall(close) end
end

--- Takes the text `readLine` buffered (a line begun, or a chunk's bytes after a line), or nil.
local function take_buffered(st)
  local parts = st.parts
  if parts then
    st.parts = nil
    if #parts > 0 then return table_concat(parts) end
  end
  local rest = st.rest
  if rest then
    st.rest = nil
    local pos = st.rest_pos
    if pos == 1 then return rest end
    return string_sub(rest, pos)
  end
  return nil
end

--- The next chunk, unprotected: `true, chunk`, or `false, err?` at the end; stages read their
--- sources the same way. What the source raises goes through, and the stream is not ended by it.
local function pull_raw(st)
  local buffered = take_buffered(st)
  if buffered then return true, buffered end
  if st.ended then return false, st.err end
  local more, v = st.pull(pull_raw)
  -- Ended while this pull waited (closed, or `take` reached its count): drop the chunk.
  if st.ended then return false, st.err end
  if more then return true, v end
  finish(st, v)
  return false, st.err
end

local next_chunk

--- The next chunk from the source, past what `readLine` buffered: `true, chunk`, or `false, err?`
--- at the end. A source that raises ends the stream with that error.
local function pull_next(st)
  local pulling = st.pulling
  if pulling then
    local co = co_running() or MAIN
    if pulling[co] then
      -- A pull of `iter` in this thread raised out of its loop: the stream ended there.
      pulling[co] = nil
      st.pulls = st.pulls - 1
      finish(st)
    end
  end
  if st.ended then return false, st.err end
  local ok, more, v = pcall(st.pull, next_chunk)
  -- Ended while this pull waited (closed, or `take` reached its count): drop the chunk.
  if st.ended then return false, st.err end
  if not ok then
    finish(st, more)
  elseif more then
    return true, v
  else
    finish(st, v)
  end
  return false, st.err
end

--- The next chunk: `true, chunk`, or `false, err?` at the end; stages read their sources the same
--- way. What `readLine` buffered comes first. A source that raises ends the stream with that error.
function next_chunk(st)
  local buffered = take_buffered(st)
  if buffered then return true, buffered end
  return pull_next(st)
end

---------------------------------------------------------------------------------------------------
-- Sources

--- Pulls from `ch` (a Channel) until it is closed and drained; `err()` names a Rust producer's failure.
local function channel_pull(ch, err)
  return function()
    while true do
      local v, ok = ch:receive()
      if not ok then
        if err then return false, err() end
        return false
      end
      if v ~= nil then return true, v end
    end
  end
end

--- (Read raw once made: a metatable the maker sets on `t` later would otherwise run its
--- `__index` in the reader's task, as the reader.)
local function table_pull(t)
  local i, n = 0, #t
  return function()
    while i < n do
      i = i + 1
      local v = rawget(t, i)
      if v ~= nil then return true, v end
    end
    return false
  end
end

local function iterator_pull(f)
  return function()
    local v = f()
    if v == nil then return false end
    return true, v
  end
end

local Stream = {}

--- Closes channel `ch` unless it is closed already (the stream over it ended).
local function closer(ch)
  return function()
    if not ch:isClosed() then ch:close() end
  end
end

--- `Stream.from(channel | table | iterator) -> Stream`: a channel is read until it is closed and
--- drained, and the stream owns it: ending the stream early (`close`, `take`) closes the channel,
--- so a producer waiting in `send` raises; a table (a list) from 1 to its length at the call; an
--- iterator is called with no arguments until it returns nil. A stream is returned as it is.
function Stream.from(source)
  local t = type(source)
  if t == "table" then
    -- (Known by their hidden state: the name `getmetatable` reads can be forged.)
    local st = state_of[source]
    if st then
      if not may_pull(st) then bad_msg(1, "from", "a Stream of another script", 2) end
      return source
    end
    if is_channel(source) then return new_stream("channel", channel_pull(source), closer(source)) end
    local mt = getmetatable(source)
    if mt == nil or type(mt) == "table" and mt.__call == nil then
      return new_stream("table", table_pull(source), nil, mt ~= nil)
    end
  end
  if callable(source) then return new_stream("iterator", iterator_pull(source), nil, true) end
  bad(1, "from", "Channel, table or function", source, 2)
end

--- Rust: completes `ext`, the external channel of a Rust producer, with its receiving half:
--- `receive_queue(drain)` (from `rust_channels.lua`, shared with typed channels) over `ext.drain(q)
--- -> n`, which moves every chunk buffered now, converted, into `q[1..n]`, so a chunk costs no call
--- into Rust of its own. `ext.is_closed() -> closed, cancelled` tells whether it reads as closed
--- once the queue is empty. `ext.take_queued` is the queue's `take` without a refill, for `iter`.
local function batched(ext, receive_queue)
  local rust_len, rust_closed, rust_close = ext.len, ext.is_closed, ext.close
  local can_receive, receive, queued, clear, take, take_queued = receive_queue(ext.drain)
  ext.drain = nil
  ext.can_receive, ext.receive, ext.take, ext.take_queued = can_receive, receive, take, take_queued
  function ext.len()
    return queued() + rust_len()
  end
  function ext.is_closed()
    local closed, cancelled = rust_closed()
    return closed and (cancelled or queued() == 0)
  end
  function ext.close()
    clear()
    return rust_close()
  end
  return ext
end

--- Rust: a stream over the external channel `ch` of a Rust producer; `err()` is its failure (or
--- nil) once the channel is closed, `close()` stops it; `ext` is what `batched` made of the channel.
local function rust(ch, err, close, ext)
  local s = new_stream("rust", channel_pull(ch, err), close)
  state_of[s].queued = ext.take_queued
  return s
end

---------------------------------------------------------------------------------------------------
-- Lazy stages

--- `s:map(f) -> Stream`: `f(chunk)` for each chunk (a nil result is skipped).
function methods.map(self, f)
  local up = check_self(self, "map")
  if not callable(f) then bad(1, "map", "function", f, 2) end
  return new_stream("map", function(step)
    while true do
      local more, v = step(up)
      if not more then return false, v end
      v = f(v)
      if v ~= nil then return true, v end
    end
  end, function() finish(up) end, true)
end

--- `s:filter(f) -> Stream`: the chunks for which `f(chunk)` is truthy.
function methods.filter(self, f)
  local up = check_self(self, "filter")
  if not callable(f) then bad(1, "filter", "function", f, 2) end
  return new_stream("filter", function(step)
    while true do
      local more, v = step(up)
      if not more then return false, v end
      if f(v) then return true, v end
    end
  end, function() finish(up) end, true)
end

--- `s:take(n) -> Stream`: the first `n` chunks; then the source is closed (its producer stops).
function methods.take(self, n)
  local up = check_self(self, "take")
  if type(n) ~= "number" then bad(1, "take", "number", n, 2) end
  if n ~= n or n < 0 or math_floor(n) ~= n then
    bad_msg(1, "take", "non-negative integer expected, got " .. tostring(n), 2)
  end
  local left = n
  return new_stream("take", function(step)
    if left <= 0 then
      finish(up)
      return false
    end
    local more, v = step(up)
    if not more then return false, v end
    if left <= 0 then return false end -- another reader took the last one while this one waited
    left = left - 1
    if left == 0 then finish(up) end
    return true, v
  end, function() finish(up) end, up.code)
end

---------------------------------------------------------------------------------------------------
-- Consumers

--- `s:read() -> chunk | nil`: waits for the next chunk; `nil` at the end, `nil, err` if the
--- producer failed.
function methods.read(self)
  local st = check_self(self, "read")
  local more, v = next_chunk(st)
  if more then return v end
  if v ~= nil then return nil, v end
  return nil
end

--- A finished line: `text` without a trailing `\r`.
local function strip_cr(text)
  if string_sub(text, -1) == "\r" then return string_sub(text, 1, -2) end
  return text
end

--- `s:readLine() -> string | nil`: joins chunks (strings or numbers) and returns the next line
--- without its `\n` or `\r\n`; a last line without a newline is returned too (without a final
--- `\r`); then `nil` (`nil, err` if the producer failed, after the line it had begun). Only each
--- new chunk is searched, and a line's pieces are joined once. What it holds between waits is in
--- the state: a cancelled call, or one that raised on a chunk that is not a string, loses nothing.
function methods.readLine(self)
  local st = check_self(self, "readLine")
  local parts = st.parts
  if parts == nil then
    parts = {}
    st.parts = parts
  end
  while true do
    local chunk, pos = st.rest, st.rest_pos
    if chunk then
      st.rest = nil
    else
      local more, v = pull_next(st)
      if not more then
        st.parts = nil
        if #parts > 0 then return strip_cr(table_concat(parts)) end
        if v ~= nil then return nil, v end
        return nil
      end
      local t = type(v)
      if t == "number" then
        v = tostring(v)
      elseif t ~= "string" then
        error(string_format("readLine: the stream gave a %s, not a string", t), 2)
      end
      chunk, pos = v, 1
    end
    local nl = string_find(chunk, "\n", pos, true)
    if nl then
      if nl < #chunk then st.rest, st.rest_pos = chunk, nl + 1 end
      parts[#parts + 1] = string_sub(chunk, pos, nl - 1)
      st.parts = nil
      return strip_cr(table_concat(parts))
    end
    parts[#parts + 1] = pos == 1 and chunk or string_sub(chunk, pos)
  end
end

--- `for chunk in s:iter() do`: reads until the end; a producer's failure is raised.
---
--- The chunks are pulled without `pcall`: Luau nests one C call per successful protected call of
--- a Lua function made inside a generic `for`'s iterator, until the thread yields, so a loop over a
--- few hundred ready chunks would end in `C stack overflow`. What a source raises therefore goes
--- through as it is; the stream ends then, and its producer is stopped, at its next use in that
--- thread (or when it is collected).
---
--- A stream from Rust hands out the chunks already in its queue without going through its layers
--- (`st.queued`: no call into Rust, nothing that raises) while no pull of `iter` is under way or
--- raised out of its loop in any thread (`st.pulls`; a thread cancelled while it waited in a pull
--- leaves it above zero, and the stream takes the full path from then on), the stream has not
--- ended, and `readLine` holds nothing.
function methods.iter(self)
  local st = check_self(self, "iter")
  local pulling = st.pulling -- thread -> true while a pull of `iter` runs in it (`st.pulls` of them)
  if pulling == nil then
    pulling = setmetatable({}, WEAK_KEYS)
    st.pulling = pulling
  end
  local queued = st.queued
  return function()
    -- (`not x` rather than `x == nil` for these, never `false`: a test, not a call. A chunk may
    -- be `false`.)
    if queued and st.pulls == 0 and not st.ended and not st.parts and not st.rest then
      local got, v = queued()
      if got and v ~= nil then return v end
    end
    check_owner(st, "iter", 2) -- (the iterator may have been handed to another instance)
    local co = co_running() or MAIN
    if pulling[co] then
      -- The last pull in this thread raised out of the loop: the stream ended there.
      pulling[co] = nil
      st.pulls = st.pulls - 1
      finish(st)
    end
    pulling[co] = true
    st.pulls = st.pulls + 1
    local more, v = pull_raw(st)
    pulling[co] = nil
    st.pulls = st.pulls - 1
    if more then return v end
    if v ~= nil then error(v, 0) end
    return nil
  end
end

--- `s:close()`: ends the stream now and stops its producer (a Rust producer's `send` fails).
function methods.close(self)
  local st = check_self(self, "close")
  st.parts, st.rest = nil, nil -- what readLine buffered goes too
  finish(st)
end

--- A promise that reads `st` to the end, calling `step(chunk)` for each chunk, and resolves with
--- `done()`. Rejects with the producer's error, or with what `step` raised (the stream is closed);
--- cancelling it closes the stream.
local function consume(st, step, done)
  return Promise.new(function(resolve, reject, onCancel)
    onCancel(function() finish(st) end)
    while true do
      local more, v = next_chunk(st)
      if not more then
        if v ~= nil then return reject(v) end
        return resolve(done())
      end
      local ok, err = pcall(step, v)
      if not ok then
        finish(st)
        return reject(err)
      end
    end
  end)
end

--- `s:forEach(f) -> Promise`: calls `f(chunk)` for each chunk (it may wait); resolves at the end.
function methods.forEach(self, f)
  local st = check_self(self, "forEach")
  if not callable(f) then bad(1, "forEach", "function", f, 2) end
  return consume(st, f, function() end)
end

--- `s:reduce(f, init) -> Promise`: `acc = f(acc, chunk)` for each chunk from `init`; resolves with `acc`.
function methods.reduce(self, f, init)
  local st = check_self(self, "reduce")
  if not callable(f) then bad(1, "reduce", "function", f, 2) end
  local acc = init
  return consume(st, function(v) acc = f(acc, v) end, function() return acc end)
end

--- `s:collect() -> Promise<list>`: resolves with every chunk, in order.
function methods.collect(self)
  local st = check_self(self, "collect")
  local list, n = {}, 0
  return consume(st, function(v)
    n = n + 1
    list[n] = v
  end, function() return list end)
end

return { Stream = Stream, rust = rust, batched = batched }
