-- The scholar asks three questions at once and waits for all the answers with Promise.all.
local function say(fmt, ...)
  print(string.format("[f %3d] scholar    " .. fmt, time.frame(), ...))
end

local questions = {
  "Where does the old road lead?",
  "What does the blacksmith need?",
  "When will the rain come?",
}
say("asks three questions at once")
local asked = {}
for i, q in ipairs(questions) do asked[i] = llm.generateAsync(q, { maxTokens = 8, timeout = 5 }) end
local answers = await(Promise.all(asked))
for i, q in ipairs(questions) do say("%s -> %s", q, answers[i]) end
