-- The bard streams an answer token by token into its speech line, showing it as it grows.
local function say(fmt, ...)
  print(string.format("[f %3d] bard       " .. fmt, time.frame(), ...))
end

local line, tokens = "", 0
local first = time.frame()
say("asks: Sing me something about the valley.")
local text = await(llm.streamGenerate("Sing me something about the valley.", function(token)
  line = line .. token
  tokens = tokens + 1
  if tokens % 6 == 0 then say("sings so far: %s...", line) end
end, { maxTokens = 18, temperature = 0.8 }))
say("sang %d tokens over %d frames: %s", tokens, time.frame() - first, text)

-- A second song it cuts short: returning false stops the generation in Rust.
local heard = 0
local cut = await(llm.streamGenerate("Sing the long ballad of the ferryman.", function()
  heard = heard + 1
  return heard < 5
end))
say("stopped the ballad after %d tokens: %s", heard, cut)
