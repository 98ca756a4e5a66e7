-- The `llm` module scripts see: `generateAsync` and `streamGenerate` over a Rust
-- language-model service. The Rust half (`src/llm.rs`) opens a generation as a Rust stream of
-- tokens; this file turns it into the promise scripts await and applies the `timeout` option.
--
-- Called once with `deps` (llm.rs builds it) and returns `{ generateAsync, streamGenerate }`.
--
-- * Arguments are checked at the call; the promise is returned at once. While the service's queue
--   is full, the promise waits for a place inside it (so `timeout` and cancelling cover that wait),
--   first come first served: waiters hold tickets in `queue`, and only the oldest asks Rust again,
--   once per frame (a place frees on a pool thread, which cannot wake a Lua thread).
-- * A ticket notes the frame its thread last looked (`seen`); a ticket not seen for a whole frame
--   belongs to a thread that no longer runs (its entity was despawned) and is dropped, so it cannot
--   hold the others back. A cancelled waiter withdraws its ticket at once.
local deps = ...

local open, Promise, bad, callable, wait, frame =
  deps.open, deps.Promise, deps.bad, deps.callable, deps.wait, deps.frame

local type, error, pcall, tostring = type, error, pcall, tostring
local string_format = string.format
local table_concat, table_remove = table.concat, table.remove

local queue = {} -- tickets waiting for a place in the executor, oldest first

--- Takes `ticket` out of the queue (if it is there).
local function withdraw(ticket)
  ticket.queued = false
  for i = 1, #queue do
    if queue[i] == ticket then
      table_remove(queue, i)
      return
    end
  end
end

--- Checks the arguments common to both calls and opens the generation if there is room now and no
--- one waits before: a Stream of tokens or `false` (wait with `admit`), and the timeout in seconds
--- (or nil). Errors blame the script's line (`level` 3: the caller of the public function).
local function start(name, prompt, opts, opts_index)
  if type(prompt) ~= "string" then bad(1, name, "string", prompt, 3) end
  if opts ~= nil and type(opts) ~= "table" then bad(opts_index, name, "table", opts, 3) end
  local timeout = opts and opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0)) then
    error(string_format("bad argument #%d to '%s' (field 'timeout': positive number expected, got %s)",
      opts_index, name, type(timeout) == "number" and tostring(timeout) or type(timeout)), 3)
  end
  local stream, err = open(prompt, opts, name, opts_index, #queue == 0)
  if err ~= nil then error(err, 3) end
  return stream, timeout
end

--- Inside a promise's executor: waits its turn for a place in the executor and returns the stream.
--- `onCancel` withdraws the ticket while it waits.
local function admit(name, prompt, opts, opts_index, onCancel)
  local ticket = { seen = frame(), queued = true }
  queue[#queue + 1] = ticket
  onCancel(function() withdraw(ticket) end)
  while true do
    local now = frame()
    ticket.seen = now
    -- Drop the tickets of threads that stopped running (not seen since before the last frame).
    while queue[1] ~= nil and queue[1] ~= ticket and queue[1].seen < now - 1 do
      table_remove(queue, 1).queued = false
    end
    if not ticket.queued then
      -- Dropped as stale while this thread did not run (its entity was paused, say): queue again.
      ticket.queued = true
      queue[#queue + 1] = ticket
    end
    if queue[1] == ticket then
      local stream, err = open(prompt, opts, name, opts_index, true)
      if stream or err ~= nil then
        table_remove(queue, 1)
        ticket.queued = false
        if err ~= nil then error(err, 0) end
        return stream
      end
    end
    wait()
  end
end

--- `llm.generateAsync(prompt, opts?) -> Promise<string>`: the whole answer. Rejects with the
--- service's error, or a TimedOut `Promise.Error` after `opts.timeout` seconds of game time;
--- cancelling the promise (or its timeout) cancels the work in Rust.
local function generateAsync(prompt, opts)
  local stream, timeout = start("generateAsync", prompt, opts, 2)
  local p
  if stream then
    p = stream:collect()
  else
    p = Promise.new(function(resolve, reject, onCancel)
      stream = admit("generateAsync", prompt, opts, 2, onCancel)
      local inner = stream:collect()
      onCancel(function() inner:cancel() end)
      local status, v = inner:awaitStatus()
      if status == Promise.Status.Resolved then return resolve(v) end
      return reject(v)
    end)
  end
  p = p:andThen(function(tokens) return table_concat(tokens) end)
  if timeout then p = p:timeout(timeout) end
  return p
end

--- `llm.streamGenerate(prompt, onChunk, opts?) -> Promise<string>`: calls `onChunk(token)` for
--- each token as it arrives; returning `false` stops the generation (the work in Rust is
--- cancelled). The promise resolves with the text delivered when the stream ends or is stopped.
--- If the service fails, `onChunk(nil, err)` is called and the promise rejects with `err`; an
--- error raised by `onChunk` rejects it too.
local function streamGenerate(prompt, onChunk, opts)
  if type(prompt) ~= "string" then bad(1, "streamGenerate", "string", prompt, 2) end
  if not callable(onChunk) then bad(2, "streamGenerate", "function", onChunk, 2) end
  local stream, timeout = start("streamGenerate", prompt, opts, 3)
  local p = Promise.new(function(resolve, reject, onCancel)
    if not stream then stream = admit("streamGenerate", prompt, opts, 3, onCancel) end
    onCancel(function() stream:close() end)
    local parts, n = {}, 0
    while true do
      local token, err = stream:read()
      if token == nil then
        if err ~= nil then
          pcall(onChunk, nil, err)
          return reject(err)
        end
        return resolve(table_concat(parts, "", 1, n))
      end
      n = n + 1
      parts[n] = token
      local ok, more = pcall(onChunk, token)
      if not ok then
        stream:close()
        return reject(more)
      end
      if more == false then
        stream:close()
        return resolve(table_concat(parts, "", 1, n))
      end
    end
  end)
  if timeout then p = p:timeout(timeout) end
  return p
end

return { generateAsync = generateAsync, streamGenerate = streamGenerate }
