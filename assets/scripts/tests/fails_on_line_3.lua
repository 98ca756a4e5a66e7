print("loaded from a file")
local x = 1
missing(x)
