-- The backup manifest's schema (docs/manifest.md), checked in one place when a manifest is
-- read. A manifest is input like any other: a repository may have been copied back from
-- off-site or edited by someone with write access. One that does not match the schema marks
-- its backup damaged; it never crashes a command or stops the others.
--
--   manifest.parse(text, what) -> manifest | nil, reason, "corrupt"
--
-- Pure Lua with no native module (tests/fuzz/fuzz_manifest.c runs it on arbitrary bytes:
-- it must return, never raise).
local json = require "lib.json"
local codec = require "lib.codec"

local manifest = {}

manifest.FORMAT = "bkr-backup-1"
-- Sizes are integers a double holds exactly; anything larger was not written by bkr.
local MAX_INTEGER = 2 ^ 53

local TYPES = { daily = true, weekly = true, monthly = true }
local RESULTS = { passed = true, failed = true, ["checksum-only"] = true }

local function is_object(v)
  local mt = type(v) == "table" and getmetatable(v)
  return type(v) == "table" and (not mt or mt.__jsontype ~= "array")
end

local function is_array(v)
  if type(v) ~= "table" then return false end
  local mt = getmetatable(v)
  if mt and mt.__jsontype == "object" and next(v) ~= nil then return false end
  local n = 0
  for k in pairs(v) do
    if math.type(k) ~= "integer" or k < 1 then return false end
    n = n + 1
  end
  return n == #v
end

local function is_integer(v, min)
  if type(v) ~= "number" or v ~= math.floor(v) then return false end -- NaN, fractions
  return v >= (min or 0) and v <= MAX_INTEGER
end

local function is_hex64(v)
  return type(v) == "string" and #v == 64 and v:match("^%x+$") ~= nil
end

local function is_time(v)
  if type(v) ~= "string" then return false end
  local y, m, d, H, M, S = v:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)Z$")
  if not y then return false end
  m, d, H, M, S = tonumber(m), tonumber(d), tonumber(H), tonumber(M), tonumber(S)
  return m >= 1 and m <= 12 and d >= 1 and d <= 31 and H <= 23 and M <= 59 and S <= 59
end

local function is_string_array(v)
  if not is_array(v) then return false end
  for _, s in ipairs(v) do
    if type(s) ~= "string" then return false end
  end
  return true
end

-- Each check returns nil when the field is sound, else what is wrong with it.
local function check_tables(tables)
  if not is_array(tables) then return "tables: not an array" end
  for i, t in ipairs(tables) do
    if not is_object(t) then return string.format("tables[%d]: not an object", i) end
    if type(t.schema) ~= "string" or type(t.name) ~= "string" then
      return string.format("tables[%d]: schema and name must be strings", i)
    end
    if not is_integer(t.rows) then return string.format("tables[%d].rows: not a row count", i) end
    if not is_hex64(t.digest) then return string.format("tables[%d].digest: not 64 hex digits", i) end
    if t.columns ~= nil and not is_string_array(t.columns) then
      return string.format("tables[%d].columns: not an array of strings", i)
    end
  end
  return nil
end

local function check_properties(p)
  if not is_object(p) then return "database_properties: not an object" end
  for _, key in ipairs({ "owner", "encoding", "collate", "ctype", "acl", "sealed" }) do
    if p[key] ~= nil and type(p[key]) ~= "string" then return "database_properties." .. key .. ": not a string" end
  end
  if p.connection_limit ~= nil and not is_integer(p.connection_limit, -1) then
    return "database_properties.connection_limit: not an integer"
  end
  if p.settings ~= nil and not is_string_array(p.settings) then
    return "database_properties.settings: not an array of strings"
  end
  if p.role_settings ~= nil then
    if not is_array(p.role_settings) then return "database_properties.role_settings: not an array" end
    for i, r in ipairs(p.role_settings) do
      if not is_object(r) or type(r.role) ~= "string" or not is_string_array(r.settings or {}) then
        return string.format("database_properties.role_settings[%d]: not {role, settings}", i)
      end
    end
  end
  return nil
end

local function check(m)
  if not is_object(m) then return "not a JSON object" end
  if m.format ~= manifest.FORMAT then return "format: not " .. manifest.FORMAT end
  if m.kind ~= "database" and m.kind ~= "globals" then return "kind: neither database nor globals" end
  if not TYPES[m.type] then return "type: not daily, weekly or monthly" end
  if type(m.file) ~= "string" or m.file == "" then return "file: missing" end
  if not is_time(m.start_time) then return "start_time: not a UTC time" end
  if m.end_time ~= nil and not is_time(m.end_time) then return "end_time: not a UTC time" end
  if m.seconds ~= nil and (type(m.seconds) ~= "number" or m.seconds ~= m.seconds or m.seconds < 0
      or m.seconds > MAX_INTEGER) then
    return "seconds: not a duration"
  end
  if not is_integer(m.raw_bytes) then return "raw_bytes: not a size" end
  if not is_integer(m.stored_bytes) then return "stored_bytes: not a size" end
  if not is_hex64(m.sha256) then return "sha256: not 64 hex digits" end
  if m.encrypted ~= nil and type(m.encrypted) ~= "boolean" then return "encrypted: not true or false" end
  if m.encrypted then
    if not is_object(m.encryption) or type(m.encryption.key_id) ~= "string" then
      return "encryption: no key_id"
    end
  end
  if m.compression ~= nil then
    if not is_object(m.compression) or not is_integer(m.compression.level) then
      return "compression: not {algorithm, level}"
    end
    local problem = codec.check_facts(m.compression)
    if problem then return problem end
  end
  if m.dump_format ~= nil and m.dump_format ~= "plain" and m.dump_format ~= "custom" then
    return "dump_format: neither plain nor custom"
  end
  for _, key in ipairs({ "bkr_version", "pg_dump_version", "server_version", "dump_timezone" }) do
    if m[key] ~= nil and type(m[key]) ~= "string" then return key .. ": not a string" end
  end
  if m.kind == "database" then
    if type(m.database) ~= "string" or m.database == "" then return "database: missing" end
    if m.database_properties ~= nil then
      local problem = check_properties(m.database_properties)
      if problem then return problem end
    end
    local problem = check_tables(m.tables)
    if problem then return problem end
  end
  if m.verification ~= nil then
    local v = m.verification
    if not is_object(v) or not RESULTS[v.result] or not is_time(v.time)
        or (v.reason ~= nil and type(v.reason) ~= "string")
        or (v.checksum_only_time ~= nil and not is_time(v.checksum_only_time)) then
      return "verification: not {time, result, reason, checksum_only_time}"
    end
  end
  return nil
end

-- The manifest in `text` (read from `what`, for messages), or nil, the reason, "corrupt".
function manifest.parse(text, what)
  -- pcall: dkjson recurses, so a deeply nested document can overflow the stack
  local ok, value, err = pcall(json.decode, text, what)
  if not ok then return nil, string.format("%s: invalid JSON: nested too deeply", what or "manifest"), "corrupt" end
  if value == nil then return nil, err, "corrupt" end
  local problem = check(value)
  if problem then return nil, string.format("%s: invalid manifest: %s", what or "manifest", problem), "corrupt" end
  return value
end

return manifest
