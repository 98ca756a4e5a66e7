-- `string.find`, `string.match`, `string.gmatch` and `string.gsub` over the Rust matcher
-- (`pattern.rs`), whose work counts against the instruction budget. Lua 5.4's semantics under every
-- flavour. The Rust half returns `FAIL, message, located` instead of raising: `located` says the
-- message already names where (a spent budget); otherwise it is raised at the caller's line.
local raw_find, raw_gsub, FAIL, bad, LEVEL, string = ...

local type, tostring, tonumber, error, select, math_floor = type, tostring, tonumber, error, select, math.floor
local sub, byte, format, concat = string.sub, string.byte, string.format, table.concat
local unpack = table.unpack or unpack

local function str(v, n, fname)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  bad(n, fname, "string", v, 3)
end

local function int(v, n, fname)
  local x = v
  if type(x) == "string" then x = tonumber(x) end
  if type(x) ~= "number" then bad(n, fname, "number", v, 3) end
  if x ~= x or x == math.huge or x == -math.huge or math_floor(x) ~= x then
    error(format("bad argument #%d to '%s' (number has no integer representation)", n, fname), 3)
  end
  return x
end

-- Called in tail position by the wrappers (LEVEL counts the wrapper where a flavour keeps it).
local function finish(first, ...)
  if first == FAIL then
    local message, located = ...
    error(message, located and 0 or LEVEL)
  end
  return first, ...
end

local function pack(...) return { n = select("#", ...), ... } end

local function find_in(s, p, pos, level)
  local r = pack(raw_find(s, p, pos, false, true))
  if r[1] == FAIL then error(r[2], r[3] and 0 or level + 1) end
  return r
end

function string.find(s, p, init, plain)
  s, p = str(s, 1, "find"), str(p, 2, "find")
  return finish(raw_find(s, p, init == nil and 1 or int(init, 3, "find"), plain and true or false, true))
end

function string.match(s, p, init)
  s, p = str(s, 1, "match"), str(p, 2, "match")
  return finish(raw_find(s, p, init == nil and 1 or int(init, 3, "match"), false, false))
end

function string.gmatch(s, p, init)
  s, p = str(s, 1, "gmatch"), str(p, 2, "gmatch")
  local len = #s
  local pos = init == nil and 1 or int(init, 3, "gmatch")
  if pos < 0 then pos = pos < -len and 1 or len + pos + 1 elseif pos == 0 then pos = 1 end
  if byte(p, 1) == 94 then p = "%" .. p end -- `^` is no anchor in gmatch
  local last = nil
  return function()
    while pos <= len + 1 do
      local r = find_in(s, p, pos, 2)
      local st, e = r[1], r[2]
      if st == nil then pos = len + 2; return nil end
      if st == pos and e == last then
        pos = pos + 1 -- an empty match right after the last one
      else
        pos, last = e + 1, e
        if r.n > 2 then return unpack(r, 3, r.n) end
        return sub(s, st, e)
      end
    end
    return nil
  end
end

function string.gsub(s, p, repl, n)
  s, p = str(s, 1, "gsub"), str(p, 2, "gsub")
  local tr = type(repl)
  if tr == "number" then repl, tr = tostring(repl), "string" end
  if tr ~= "string" and tr ~= "function" and tr ~= "table" then
    bad(3, "gsub", "string/function/table", repl, 2)
  end
  local len = #s
  local max = n == nil and len + 1 or int(n, 4, "gsub")
  if tr == "string" then return finish(raw_gsub(s, p, repl, max)) end
  local anchor = byte(p, 1) == 94
  local out, k = {}, 0
  local pos, count, last = 1, 0, nil
  while count < max do
    local r = find_in(s, p, pos, 2)
    local st, e = r[1], r[2]
    if st == nil then break end
    if st == pos and e == last then
      if pos > len then break end
      k = k + 1
      out[k] = sub(s, pos, pos)
      pos = pos + 1
    else
      if st > pos then
        k = k + 1
        out[k] = sub(s, pos, st - 1)
      end
      count = count + 1
      local whole = sub(s, st, e)
      local v
      if tr == "function" then
        if r.n > 2 then v = repl(unpack(r, 3, r.n)) else v = repl(whole) end
      else
        if r.n > 2 then v = repl[r[3]] else v = repl[whole] end
      end
      if not v then
        v = whole
      elseif type(v) == "number" then
        v = tostring(v)
      elseif type(v) ~= "string" then
        error(format("invalid replacement value (a %s)", type(v)), 2)
      end
      k = k + 1
      out[k] = v
      pos, last = e + 1, e
    end
    if anchor then break end
  end
  if pos <= len then
    k = k + 1
    out[k] = sub(s, pos)
  end
  return concat(out, "", 1, k), count
end
