-- Rust-backed channels and Bevy messages for scripts: `Channel.named(name)` for typed channels a
-- game declares, `Messages.subscribe(name) -> channel` for message types Rust forwards, and
-- `Messages.write(name, value)` for message types scripts may write. The Rust half is
-- `src/bridge/channels.rs` and `src/bridge/messages.rs`.
local Channel, bad = ...

local type, error, pairs, setmetatable = type, error, pairs, setmetatable
local math_huge = math.huge

local named = {}       -- name -> external Channel
local subscribers = {} -- name -> set of channels (weak: a dropped subscription goes away)
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
  local set = subscribers[name]
  if set == nil then error("no message type named '" .. name .. "' is forwarded to scripts", 2) end
  local ch = Channel.new(math_huge)
  set[ch] = true
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

--- Rust: declares the typed channel `name`; `ext` holds its Rust functions, and `raw_send(v)`
--- returns a conversion error message instead of raising (it is raised here, as a string).
local function declare(name, ext, raw_send)
  ext.send = function(v)
    local err = raw_send(v)
    if err ~= nil then error("cannot send to channel '" .. name .. "': " .. err, 0) end
  end
  named[name] = Channel._external(ext, name)
end

--- Rust: scripts may subscribe to `name`.
local function forwarded(name)
  if subscribers[name] == nil then subscribers[name] = setmetatable({}, { __mode = "k" }) end
end

--- Rust: scripts may write `name` through `writer`.
local function writable(name, writer)
  writers[name] = writer
end

--- Rust: a message `name` was written; every open subscription gets it.
local function deliver(name, value)
  local set = subscribers[name]
  if set == nil then return end
  for ch in pairs(set) do
    if ch:isClosed() then set[ch] = nil else ch:trySend(value) end
  end
end

return {
  named = channel_named,
  Messages = Messages,
  declare = declare,
  forwarded = forwarded,
  writable = writable,
  deliver = deliver,
}
