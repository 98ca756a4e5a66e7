-- Awaits Rust async functions (they run on Bevy's task pools) without blocking the frame.
local function log(fmt, ...)
  print(string.format("[f %3d] " .. fmt, time.frame(), ...))
end

-- Two queries in sequence: each `await` yields this task until the answer arrives.
local users = await(queryDatabase("SELECT * FROM users"))
log("got %d users; first is %s", #users, users[1].name)
local orders = await(queryDatabase("SELECT * FROM orders"))
log("got %d orders; first is %s", #orders, orders[1].name)
state.summary = { users = #users, orders = #orders }

-- Three requests in parallel.
local results = await(Promise.all({
  queryDatabase("SELECT * FROM items"),
  queryDatabase("SELECT * FROM quests"),
  queryDatabase("SELECT * FROM guilds"),
}))
log("Promise.all: %d + %d + %d rows", #results[1], #results[2], #results[3])

-- A query that fails, caught with pcall around the await.
local ok, err = pcall(await, queryDatabase("SELEKT nonsense"))
log("pcall(await, ...) -> %s, %s", tostring(ok), tostring(err))

-- A chain.
await(fetchData("profile")
  :andThen(function(profile) return profile.level * 10 end)
  :andThen(function(score) log("chain: score %d", score) end)
  :catch(function(e) log("chain failed: %s", tostring(e)) end))

await(fetchData("missing")
  :andThen(function() log("never") end)
  :catch(function(e) log("chain caught: %s", tostring(e)) end))

log("done: %d users, %d orders", state.summary.users, state.summary.orders)
