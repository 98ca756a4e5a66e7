-- The `llm` module scripts see (API.md §5): `generateAsync` and `streamGenerate` over a Rust
-- language-model service. The Rust half (`src/llm.rs`) opens a generation as a Rust stream of
-- tokens; this file turns it into the promise scripts await, applies the `timeout` option, and
-- waits a frame at a time while the service's queue is full (the script waits, never the frame).
--
-- Called once with `deps` (llm.rs builds it) and returns `{ generateAsync, streamGenerate }`.
local deps = ...

local open, Promise, bad, callable, wait = deps.open, deps.Promise, deps.bad, deps.callable, deps.wait

local type, error, pcall, tostring = type, error, pcall, tostring
local string_format = string.format
local table_concat = table.concat

--- Checks the arguments common to both calls and opens the generation: a Stream of tokens, and
--- the timeout in seconds (or nil). Waits while the service's queue is full. Errors blame the
--- script's line (`level` 3: the caller of the public function).
local function start(name, prompt, opts, opts_index)
  if type(prompt) ~= "string" then bad(1, name, "string", prompt, 3) end
  if opts ~= nil and type(opts) ~= "table" then bad(opts_index, name, "table", opts, 3) end
  local timeout = opts and opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0)) then
    error(string_format("bad argument #%d to '%s' (field 'timeout': positive number expected, got %s)",
      opts_index, name, type(timeout) == "number" and tostring(timeout) or type(timeout)), 3)
  end
  while true do
    local stream, err = open(prompt, opts, name, opts_index)
    if stream then return stream, timeout end
    if err ~= nil then error(err, 3) end
    wait() -- the queue is full: try again next frame
  end
end

--- `llm.generateAsync(prompt, opts?) -> Promise<string>`: the whole answer. Rejects with the
--- service's error, or a TimedOut `Promise.Error` after `opts.timeout` seconds of game time;
--- cancelling the promise (or its timeout) cancels the work in Rust.
local function generateAsync(prompt, opts)
  local stream, timeout = start("generateAsync", prompt, opts, 2)
  local p = stream:collect():andThen(function(tokens) return table_concat(tokens) end)
  if timeout then p = p:timeout(timeout) end
  return p
end

--- `llm.streamGenerate(prompt, onChunk, opts?) -> Promise<string>`: calls `onChunk(token)` for
--- each token as it arrives; returning `false` stops the generation (the work in Rust is
--- cancelled). The promise resolves with the text delivered when the stream ends or is stopped.
--- If the service fails, `onChunk(nil, err)` is called and the promise rejects with `err`; an
--- error raised by `onChunk` rejects it too.
local function streamGenerate(prompt, onChunk, opts)
  if not callable(onChunk) then bad(2, "streamGenerate", "function", onChunk, 2) end
  local stream, timeout = start("streamGenerate", prompt, opts, 3)
  local p = Promise.new(function(resolve, reject, onCancel)
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
