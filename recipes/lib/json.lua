-- JSON through dkjson (Debian's lua-dkjson), with a stable key order so manifests and
-- log lines read the same way every time and diff cleanly.
local dkjson = require "dkjson"

local json = {}

-- Keys that lead, in this order, wherever they appear; the rest follow sorted.
local LEADING = {
  "format", "database", "schema", "name", "type", "file", "time", "result", "recipe",
  "start_time", "end_time", "seconds",
}
local rank = {}
for i, key in ipairs(LEADING) do rank[key] = i end

local function ordered_keys(t)
  local keys = {}
  for key in pairs(t) do
    if type(key) == "string" then keys[#keys + 1] = key end
  end
  table.sort(keys, function(a, b)
    local ra, rb = rank[a] or math.huge, rank[b] or math.huge
    if ra ~= rb then return ra < rb end
    return a < b
  end)
  return keys
end

-- A copy whose tables carry __jsonorder (dkjson honours it).
local function with_order(value)
  if type(value) ~= "table" then return value end
  local copy = {}
  for k, v in pairs(value) do copy[k] = with_order(v) end
  if #copy == 0 and next(copy) ~= nil then
    return setmetatable(copy, { __jsonorder = ordered_keys(copy) })
  end
  if next(copy) == nil then
    return setmetatable(copy, { __jsontype = value.__empty_object and "object" or "array" })
  end
  return copy
end

function json.encode(value, pretty)
  local text = assert(dkjson.encode(with_order(value), { indent = pretty and true or nil }))
  return text
end

-- Decode, or nil and a message naming what was being read.
function json.decode(text, what)
  local value, after, err = dkjson.decode(text, 1, nil)
  if err or value == nil then
    return nil, string.format("%s: invalid JSON: %s", what or "input", err or "empty")
  end
  -- dkjson stops after the first value: anything but white space after it is not JSON
  if text:find("%S", after) then
    return nil, string.format("%s: invalid JSON: data after the value at byte %d", what or "input", after)
  end
  return value
end

-- A JSON file bkr wrote (a manifest, a report): a regular file only, never through a symlink
-- or from a FIFO (docs/RELIABILITY.md). Returns the value, or nil, message, kind
-- (fs.read_file's kinds, or "corrupt" for text that is not JSON).
function json.read_file(path)
  local text, err, kind = require("bkr.fs").read_file(path)
  if not text then return nil, err, kind end
  local value, derr = json.decode(text, path)
  if value == nil then return nil, derr, "corrupt" end
  return value
end

return json
