-- The innkeeper asks two questions, one after the other, and awaits each whole answer.
local function say(fmt, ...)
  print(string.format("[f %3d] innkeeper  " .. fmt, time.frame(), ...))
end

for _, question in ipairs({ "What news from the capital?", "Is the mountain pass open?" }) do
  say("asks: %s", question)
  local answer = await(llm.generateAsync(question, { maxTokens = 12 }))
  say("hears: %s", answer)
end
say("is done talking")
