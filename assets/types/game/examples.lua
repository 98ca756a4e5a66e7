---@meta examples
-- Functions the crate's examples register from Rust (`add_lua_async_function`): a game annotates
-- its own the same way, beside the crate's annotations. Not part of the crate's base, so the
-- annotations test skips this folder.

---`examples/async_queries.rs`: a simulated database query.
---@param sql string
---@return Promise<{ id: integer, name: string }[]>
function queryDatabase(sql) end

---`examples/async_queries.rs`: simulated data by key.
---@param key string
---@return Promise<{ name: string, level: integer }>
function fetchData(key) end

---`examples/arena.rs`: whether no wall stands between two points (computed on the task pool).
---@param segment number[] `{ x1, y1, x2, y2 }`
---@return Promise<boolean>
function lineOfSight(segment) end
