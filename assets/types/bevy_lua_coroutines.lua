---@meta bevy_lua_coroutines
-- Editor annotations (LuaLS / EmmyLua) for the script API of bevy_lua_coroutines: the globals
-- every script instance reads through its base. Nothing here runs; `tests/annotations.rs` checks
-- that these names are exactly the ones a real VM defines.

---------------------------------------------------------------------------------------------------
-- The instance
---------------------------------------------------------------------------------------------------

---An entity of the Bevy world, as scripts see it. Components are named by their reflected type
---name (`"Transform"`) and read and written as tables with named fields.
---@class Entity
---@field id integer Bevy's `Entity::to_bits`: the same from run to run.
local Entity = {}

---The component `name` as a table (vectors keep named fields), or `nil` if the entity lacks it.
---An unknown component name raises.
---@param name string A reflected component name, e.g. `"Transform"`.
---@return table<string, any>|nil
function Entity:get(name) end

---Patches the component `name` with the fields of `value` (inserting its reflected default first
---if the entity lacks it).
---@param name string
---@param value table|string|number|boolean
function Entity:set(name, value) end

---Whether the entity has the component `name`.
---@param name string
---@return boolean
function Entity:has(name) end

---Despawns the entity (and cancels the scripts that run on it).
function Entity:despawn() end

---The entity this script instance runs on.
---@type Entity
entity = nil

---This instance's persistent table: kept across hot reloads.
---@type table<string, any>
state = nil

---------------------------------------------------------------------------------------------------
-- Tasks and time
---------------------------------------------------------------------------------------------------

---Roblox-style task scheduling on game time. Every wait yields the calling task only.
---@class TaskLib
task = {}

---Resumes `f` (a function or a thread) now, until its first yield.
---@param f function|thread
---@param ... any Arguments for `f`.
---@return thread
function task.spawn(f, ...) end

---Resumes `f` later in this frame's step, after the running work.
---@param f function|thread
---@param ... any
---@return thread
function task.defer(f, ...) end

---Resumes `f` once `seconds` of game time have passed.
---@param seconds number
---@param f function|thread
---@param ... any
---@return thread
function task.delay(seconds, f, ...) end

---Yields until `seconds` of game time have passed (`nil`, 0 or less: the next frame).
---@param seconds? number
---@return number elapsed The game seconds that really passed.
function task.wait(seconds) end

---Yields for `n` frames (default 1).
---@param n? integer
---@return number elapsed Game seconds passed.
function task.waitFrames(n) end

---Returns `true` as soon as `pred()` is truthy (checked once per frame); `false` if `timeout` game
---seconds pass first.
---@param pred fun(): any
---@param timeout? number
---@return boolean
function task.waitUntil(pred, timeout) end

---Like `task.wait`, against real (unscaled, unpaused) time.
---@param seconds number
---@return number elapsed
function task.waitRealtime(seconds) end

---Cancels a task at once: it never resumes, and its to-be-closed variables close now.
---@param thread thread
function task.cancel(thread) end

---What one task of this instance is doing (see the README's "Seeing what scripts do").
---@class TaskInfo
---@field thread thread
---@field entity integer the entity's id
---@field script string the script's asset path
---@field waitsOn "running"|"ready"|"time"|"delay"|"realtime"|"frames"|"predicate"|"promise"|"receive"|"send"|"select"|"stream"|"parked"|"nothing"
---@field dueIn number? seconds until a timer falls due
---@field frames number? frames left (`math.huge`: never)
---@field status string? the awaited promise's status
---@field channel string? the channel waited on
---@field forever boolean nothing can wake it any more
---@field where string? `"file:line"` where it last yielded
---@field func string? the function it last yielded in
---@field framesSinceRan integer? while tracking
---@field resumes integer? while tracking
---@field cpuTotal number? seconds, while tracking
---@field cpuLastFrame number? seconds, while tracking

---Every live task of this instance, oldest first.
---@return TaskInfo[]
function task.list() end

---One task of this instance, or nil if `thread` is not one.
---@param thread thread
---@return TaskInfo?
function task.info(thread) end

---The same as `task.wait`.
---@param seconds? number
---@return number elapsed
function sleep(seconds) end

---The same as `task.spawn`.
---@param f function|thread
---@param ... any
---@return thread
function spawn(f, ...) end

---Clocks of the schedule the scripts run in.
---@class TimeLib
time = {}

---Game seconds since the start (virtual time: pausing and time scale apply).
---@return number
function time.elapsed() end

---This frame's game delta, in seconds.
---@return number
function time.delta() end

---The frame counter.
---@return integer
function time.frame() end

---Real seconds since the start (unpaused, unscaled).
---@return number
function time.realElapsed() end

---------------------------------------------------------------------------------------------------
-- Promises (roblox-lua-promise v4)
---------------------------------------------------------------------------------------------------

---@alias PromiseStatus "Started"|"Resolved"|"Rejected"|"Cancelled"
---@alias PromiseErrorKind "ExecutionError"|"AlreadyCancelled"|"NotResolvedInTime"|"TimedOut"

---A value that arrives later: resolved with values, rejected with an error, or cancelled.
---@class Promise<T>
Promise = {}

---The statuses `getStatus` returns.
---@class PromiseStatusEnum
Promise.Status = {}
Promise.Status.Started = "Started" ---@type PromiseStatus
Promise.Status.Resolved = "Resolved" ---@type PromiseStatus
Promise.Status.Rejected = "Rejected" ---@type PromiseStatus
Promise.Status.Cancelled = "Cancelled" ---@type PromiseStatus

---A rejection with a kind, a trace and a context.
---@class PromiseError
---@field kind PromiseErrorKind
---@field error string
---@field trace string|nil
---@field context string|nil
---@field parent PromiseError|nil
local PromiseError = {}

---A new error made from this one's fields and `options`, with this one as its parent.
---@param options table
---@return PromiseError
function PromiseError:extend(options) end

---This error and its parents, newest first.
---@return PromiseError[]
function PromiseError:getErrorChain() end

---`Promise.Error`: the error values promises reject with when they fail on their own.
---@class PromiseErrorLib
Promise.Error = {}

---The kinds of `Promise.Error`.
---@class PromiseErrorKindEnum
Promise.Error.Kind = {}
Promise.Error.Kind.ExecutionError = "ExecutionError" ---@type PromiseErrorKind
Promise.Error.Kind.AlreadyCancelled = "AlreadyCancelled" ---@type PromiseErrorKind
Promise.Error.Kind.NotResolvedInTime = "NotResolvedInTime" ---@type PromiseErrorKind
Promise.Error.Kind.TimedOut = "TimedOut" ---@type PromiseErrorKind

---@param options { kind?: PromiseErrorKind, error?: any, context?: string, trace?: string }
---@param parent? PromiseError
---@return PromiseError
function Promise.Error.new(options, parent) end

---@param value any
---@return boolean
function Promise.Error.is(value) end

---Whether `value` is a `Promise.Error` of `kind`.
---@param value any
---@param kind PromiseErrorKind
---@return boolean
function Promise.Error.isKind(value, kind) end

---@param error PromiseError
---@param options table
---@return PromiseError
function Promise.Error.extend(error, options) end

---@param error PromiseError
---@return PromiseError[]
function Promise.Error.getErrorChain(error) end

---Runs `executor` now; it settles the promise with `resolve(...)` or `reject(...)`, and may
---register a cancellation handler with `onCancel(fn)`.
---@param executor fun(resolve: fun(...: any), reject: fun(...: any), onCancel: fun(handler?: fun()): boolean)
---@return Promise<any>
function Promise.new(executor) end

---Like `Promise.new`, with the executor run later in this frame's step.
---@param executor fun(resolve: fun(...: any), reject: fun(...: any), onCancel: fun(handler?: fun()): boolean)
---@return Promise<any>
function Promise.defer(executor) end

---A promise resolved with `value` (and any further values).
---@generic T
---@param value? T
---@param ... any
---@return Promise<T>
function Promise.resolve(value, ...) end

---A promise rejected with `...`.
---@param ... any
---@return Promise<any>
function Promise.reject(...) end

---Calls `f(...)`: its return values resolve the promise, its error rejects it.
---@generic T
---@param f fun(...): T
---@param ... any
---@return Promise<T>
function Promise.try(f, ...) end

---Wraps `f` so that calling it returns a promise of its results.
---@param f function
---@return fun(...): Promise<any>
function Promise.promisify(f) end

---Resolves with the game seconds that really passed, after `seconds` of game time.
---@param seconds number
---@return Promise<number>
function Promise.delay(seconds) end

---Resolves with the list of values once every promise resolves; rejects with the first rejection.
---@generic T
---@param promises Promise<T>[]
---@return Promise<T[]>
function Promise.all(promises) end

---Resolves with every promise once all settle (never rejects).
---@param promises Promise<any>[]
---@return Promise<Promise<any>[]>
function Promise.allSettled(promises) end

---Settles like the first promise that settles; cancels the others.
---@generic T
---@param promises Promise<T>[]
---@return Promise<T>
function Promise.race(promises) end

---Resolves with the first value to resolve; rejects only if all reject.
---@generic T
---@param promises Promise<T>[]
---@return Promise<T>
function Promise.any(promises) end

---Resolves with the first `count` values to resolve.
---@generic T
---@param promises Promise<T>[]
---@param count integer
---@return Promise<T[]>
function Promise.some(promises, count) end

---Calls `predicate(value, index)` for each value in order (a promise is awaited first); resolves with
---the list of results.
---@param list any[]
---@param predicate fun(value: any, index: integer): any
---@return Promise<any[]>
function Promise.each(list, predicate) end

---Folds `list` with `reducer(acc, value, index)`, which may return a promise.
---@param list any[]
---@param reducer fun(acc: any, value: any, index: integer): any
---@param initial any
---@return Promise<any>
function Promise.fold(list, reducer, initial) end

---Calls `f(...)` (which returns a promise) up to `times` more times while it rejects.
---@param f fun(...): Promise<any>
---@param times integer
---@param ... any
---@return Promise<any>
function Promise.retry(f, times, ...) end

---Like `Promise.retry`, waiting `seconds` of game time between tries.
---@param f fun(...): Promise<any>
---@param times integer
---@param seconds number
---@param ... any
---@return Promise<any>
function Promise.retryWithDelay(f, times, seconds, ...) end

---Resolves the first time `event` fires (with `predicate` returning true, if given). `event` is
---anything with `:Connect(fn)` returning something with `:Disconnect()`.
---@param event { Connect: fun(self: any, fn: function): { Disconnect: fun(self: any) } }
---@param predicate? fun(...): boolean
---@return Promise<any>
function Promise.fromEvent(event, predicate) end

---Whether `value` is a promise.
---@param value any
---@return boolean
function Promise.is(value) end

---Calls `fn(error, promise)` for each unhandled rejection; returns a function that unregisters it.
---@param fn fun(error: any, promise: Promise<any>)
---@return fun()
function Promise.onUnhandledRejection(fn) end

---Chains: `onResolve(...)`'s result (a value or a promise) resolves the new promise.
---@param onResolve? fun(...: any): any
---@param onReject? fun(...: any): any
---@return Promise<any>
function Promise:andThen(onResolve, onReject) end

---`andThen(nil, onReject)`.
---@param onReject fun(...: any): any
---@return Promise<any>
function Promise:catch(onReject) end

---Calls `f(...)` with the values and passes them on unchanged.
---@param f fun(...: any): any
---@return Promise<T>
function Promise:tap(f) end

---Calls `f(status)` once the promise resolves, rejects or is cancelled.
---@param f fun(status: PromiseStatus): any
---@return Promise<T>
function Promise:finally(f) end

---`andThen(function() return f(...) end)`.
---@param f function
---@param ... any
---@return Promise<any>
function Promise:andThenCall(f, ...) end

---`andThen(function() return ... end)`.
---@param ... any
---@return Promise<any>
function Promise:andThenReturn(...) end

---`finally(function() return f(...) end)`.
---@param f function
---@param ... any
---@return Promise<T>
function Promise:finallyCall(f, ...) end

---`finally(function() return ... end)`.
---@param ... any
---@return Promise<T>
function Promise:finallyReturn(...) end

---Cancels the promise (and the work it waits on, once no one else waits for it).
function Promise:cancel() end

---@return PromiseStatus
function Promise:getStatus() end

---Rejects with a `TimedOut` error (or `rejectionValue`) if not settled within `seconds` of game time.
---@param seconds number
---@param rejectionValue? any
---@return Promise<T>
function Promise:timeout(seconds, rejectionValue) end

---Rejects with `NotResolvedInTime` (or `rejectionValue`) unless already resolved.
---@param rejectionValue? any
---@return Promise<T>
function Promise:now(rejectionValue) end

---Yields until settled: `true, values...` when resolved, `false, error` otherwise.
---@return boolean ok
---@return T|any ...
function Promise:await() end

---Yields until settled: the status, then the values or the error.
---@return PromiseStatus status
---@return any ...
function Promise:awaitStatus() end

---Yields until settled: the values, or raises the rejection.
---@return T ...
function Promise:expect() end

---`async(f)`: a function that runs `f` in a new task of this instance and returns a promise of its
---results.
---@param f function
---@return fun(...): Promise<any>
function async(f) end

---Yields the current task until `promise` settles; returns its values or raises its rejection.
---@generic T
---@param promise Promise<T>
---@return T
function await(promise) end

---@class AsyncError
---@field message string
---@field stack { file: string, line: integer, func: string, async: boolean }[]
---@field traceback string

---Runs `try` as a task; on error calls `catch(err)`; `finally` always runs. Resolves with the
---value of `try` or of `catch`.
---@param try fun(): any
---@param catch? fun(err: AsyncError): any
---@param finally? fun()
---@return Promise<any>
function asyncTry(try, catch, finally) end

---------------------------------------------------------------------------------------------------
-- Channels (Go semantics)
---------------------------------------------------------------------------------------------------

---A Go-style channel between tasks (and, when named, between scripts and Rust systems).
---@class Channel
Channel = {}

---A channel with `capacity` slots: 0 (the default) is unbuffered, `math.huge` unbounded.
---@param capacity? integer
---@return Channel
function Channel.new(capacity) end

---Yields until one case can proceed, or takes `{nil, "default"}` at once. Cases are
---`{ch, "receive"}`, `{ch, "send", v}` and `{nil, "default"}`.
---@param cases table[]
---@return integer index
---@return any value
---@return boolean ok
function Channel.select(cases) end

---A channel that delivers the elapsed game seconds once, after `seconds`.
---@param seconds number
---@return Channel
function Channel.after(seconds) end

---The typed channel the game declared under `name` (values arrive as tables).
---@param name string
---@return Channel
function Channel.named(name) end

---Yields until delivered or buffered; raises on a closed channel.
---@param value any
---@return true
function Channel:send(value) end

---Yields until a value arrives; `nil, false` once closed and drained.
---@return any value
---@return boolean ok
function Channel:receive() end

---Sends only if that can happen now.
---@param value any
---@return boolean
function Channel:trySend(value) end

---Receives only if a value is there now.
---@return any value
---@return boolean ok
function Channel:tryReceive() end

---Closes the channel (closing twice raises).
function Channel:close() end

---@return integer
function Channel:len() end

---@return number
function Channel:cap() end

---@return boolean
function Channel:isClosed() end

---`for v in ch:iter() do`: receives until closed and drained.
---@return fun(): any
function Channel:iter() end

---Bevy messages forwarded to scripts, and messages scripts write.
---@class MessagesLib
Messages = {}

---A channel that receives each message of type `name` the game forwards, once, in order.
---@param name string
---@return Channel
function Messages.subscribe(name) end

---Writes a message of type `name` (the game must allow it), converted from `value`.
---@param name string
---@param value table
function Messages.write(name, value) end

---------------------------------------------------------------------------------------------------
-- Streams
---------------------------------------------------------------------------------------------------

---A pull-based stream of chunks with backpressure.
---@class Stream
Stream = {}

---A stream over a channel, a list, or an iterator (called until it returns nil).
---@param source Channel|any[]|fun(): any
---@return Stream
function Stream.from(source) end

---Yields until a chunk arrives; `nil` at the end (`nil, err` if the producer failed).
---@return any chunk
---@return any err
function Stream:read() end

---The next line (without its `\n` or `\r\n`), or `nil` at the end.
---@return string|nil
function Stream:readLine() end

---Calls `f(chunk)` for each chunk; resolves at the end.
---@param f fun(chunk: any)
---@return Promise<nil>
function Stream:forEach(f) end

---A lazy stream of `f(chunk)`.
---@param f fun(chunk: any): any
---@return Stream
function Stream:map(f) end

---A lazy stream of the chunks for which `f(chunk)` is truthy.
---@param f fun(chunk: any): any
---@return Stream
function Stream:filter(f) end

---A lazy stream of the first `n` chunks.
---@param n integer
---@return Stream
function Stream:take(n) end

---Folds the chunks with `f(acc, chunk)`.
---@param f fun(acc: any, chunk: any): any
---@param init any
---@return Promise<any>
function Stream:reduce(f, init) end

---Every chunk, in a list.
---@return Promise<any[]>
function Stream:collect() end

---`for chunk in s:iter() do`.
---@return fun(): any
function Stream:iter() end

---Stops the stream (its producer sees `send` fail).
function Stream:close() end

---A stream of the file's chunks (a path under the assets folder), read off the main thread.
---@param path string
---@return Stream
function readFileStream(path) end

---------------------------------------------------------------------------------------------------
-- The world
---------------------------------------------------------------------------------------------------

---The ECS world, reached while scripts run.
---@class WorldLib
world = {}

---Spawns an entity: `script` (an asset path) and components by name.
---@param spec { script?: string, [string]: any }
---@return Entity
function world.spawn(spec) end

---The first entity whose `Name` is `name`, or nil.
---@param name string
---@return Entity|nil
function world.find(name) end

---Every entity whose `Name` is `name`.
---@param name string
---@return Entity[]
function world.findAll(name) end

---The entity with this id (`entity.id`), or nil if it no longer exists.
---@param id integer
---@return Entity|nil
function world.entity(id) end

---------------------------------------------------------------------------------------------------
-- Language-model service
---------------------------------------------------------------------------------------------------

---@class LlmMessage
---@field role "user"|"assistant"|"system"
---@field content string

---@class LlmOptions
---@field temperature? number
---@field maxTokens? integer
---@field timeout? number Seconds of game time before the promise rejects with `TimedOut`.
---@field system? string A system prompt.
---@field messages? LlmMessage[] The conversation so far, oldest first.

---The language-model service the game registered.
---@class LlmLib
llm = {}

---The whole answer to `prompt`.
---@param prompt string
---@param opts? LlmOptions
---@return Promise<string>
function llm.generateAsync(prompt, opts) end

---Calls `onChunk(token)` as tokens arrive (`false` stops); resolves with the text delivered.
---On failure `onChunk(nil, err)` is called and the promise rejects.
---@param prompt string
---@param onChunk fun(token: string|nil, err: any): boolean|nil
---@param opts? LlmOptions
---@return Promise<string>
function llm.streamGenerate(prompt, onChunk, opts) end

---The same module as `llm`, under the name the seed used.
llmBridge = llm
