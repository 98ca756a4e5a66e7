-- The sage: greets the arena, then speaks whenever the player comes near, streaming each line from
-- the language-model service into the on-screen text box (a Bevy message per token). It keeps the
-- conversation so far, so its answers move on.
local player = world.find("player")
local history = {}
local SYSTEM = "You are an old sage in a small arena. Answer in one or two short sentences."

local function say(prompt)
  local line = "Sage: "
  local text = await(llm.streamGenerate(prompt, function(token)
    line = line .. token
    Messages.write("NpcSay", { text = line })
  end, { system = SYSTEM, messages = history, maxTokens = 22 }))
  history[#history + 1] = { role = "user", content = prompt }
  history[#history + 1] = { role = "assistant", content = text }
  while #history > 8 do table.remove(history, 1) end
end

local function distanceToPlayer()
  local a = entity:get("Transform").translation
  local b = player:get("Transform").translation
  return math.sqrt((a.x - b.x) ^ 2 + (a.y - b.y) ^ 2)
end

say("Greet the traveller who just entered the arena.")
while true do
  task.waitUntil(function() return distanceToPlayer() < 120 end)
  say("The traveller stands before you. What advice do you give?")
  task.wait(4)
end
