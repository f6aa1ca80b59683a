-- Configuration files, kind by kind: what is secret in them and how it is sealed and put back.
-- Used by `bkr config` (recipes/config.lua); the format is described in docs/config-backup.md.
--
--   yaml   (*.yaml, *.yml)            every scalar value under a sensitive key is replaced in
--                                     place by one token; every other byte stays as it was
--   env    (.env, *.env, .env.*)      KEY=VALUE, KEY: VALUE, export KEY=VALUE lines with a
--                                     sensitive KEY: VALUE is replaced; any other line that
--                                     names a sensitive key is refused
--   other                             copied byte for byte, or sealed whole (chunked format)
--
-- A token seals the value's exact source text (quotes, block indicators and all), so that
-- putting it back gives the original file byte for byte. Its associated data is the field's
-- path ("database.password", "tokens[2]", "API_TOKEN"): a token moved to another field does
-- not authenticate.
local yaml = require "bkr.yaml"
local stream = require "bkr.stream"
local hash = require "bkr.hash"
local repo = require "lib.repo"
local cli = require "lib.cli"

local files = {}

-- Substrings of a key (compared without case, '_', '-', '.' or spaces) that mark its
-- values as secret. config_backup.sensitive_keys replaces this list.
files.DEFAULT_SENSITIVE_KEYS = {
  "password", "passwd", "passphrase", "pwd", "secret", "token", "api_key", "apikey",
  "private_key", "credential", "access_key", "auth_key", "signing_key", "encryption_key",
}

files.TOKEN_PREFIX = "ENCRYPTED:"
files.V2_PREFIX = "ENCRYPTED:v2:"

local function is_token(value)
  return type(value) == "string" and value:sub(1, #files.TOKEN_PREFIX) == files.TOKEN_PREFIX
end
files.is_token = is_token

-- ------------------------------------------------------------------ kinds and keys

function files.kind(path)
  local name = path:match("([^/]+)$") or path
  local lower = name:lower()
  if lower:match("%.ya?ml$") then return "yaml" end
  if lower == ".env" or lower:match("%.env$") or lower:match("^%.env%.") then return "env" end
  return "other"
end

local function normalize(key)
  return (tostring(key):lower():gsub("[%s_%-%.]", ""))
end

-- A predicate: is this key sensitive? patterns default to DEFAULT_SENSITIVE_KEYS.
function files.sensitive_matcher(patterns)
  local normalized = {}
  for _, pattern in ipairs(patterns or files.DEFAULT_SENSITIVE_KEYS) do
    local n = normalize(pattern)
    if n ~= "" then normalized[#normalized + 1] = n end
  end
  return function(key)
    local k = normalize(key)
    for _, pattern in ipairs(normalized) do
      if k:find(pattern, 1, true) then return true end
    end
    return false
  end
end

-- ------------------------------------------------------------------ ciphers

-- What a value that does not open means, in words chosen by the code crypto returns with it
-- ("format", "key", "auth"). A code without words here keeps crypto's message: "key" names
-- both key ids, which only crypto knows.
local VALUE_FAILURES = {
  auth = "authentication failed (tampered value or wrong field)",
  format = "malformed encrypted value (invalid base64 or too short)",
}

-- The sealing and opening of single values with one key.
--   cipher.seal(plaintext, field) -> token       ENCRYPTED:v2:... (or legacy ENCRYPTED:...)
--   cipher.open(token, field) -> plaintext | nil, message, code ("format", "key", "auth")
-- opts.legacy_xor: seal with the previous tool's XOR scheme (compatibility only).
function files.cipher(key, opts)
  local crypto = require "bkr.crypto"
  opts = opts or {}
  local cipher = { key_id = crypto.key_id(key), legacy_xor = opts.legacy_xor == true }
  function cipher.seal(plaintext, field)
    if cipher.legacy_xor then return crypto.xor_encrypt_value(key, plaintext) end
    return crypto.encrypt_value(key, plaintext, field)
  end
  function cipher.open(token, field)
    local plain, err, code
    if token:sub(1, #files.V2_PREFIX) == files.V2_PREFIX then
      plain, err, code = crypto.decrypt_value(key, token, field)
    else
      plain, err, code = crypto.xor_value(key, token)
    end
    if not plain then return nil, VALUE_FAILURES[code] or err, code end
    return plain
  end
  return cipher
end

-- ------------------------------------------------------------------ YAML

-- The serialized form of a path prefix, to tell mapping keys from sequence indices
-- (yaml.scalars gives both as Lua values; a key `1:` is the integer 1).
local function prefix_id(path, depth)
  local parts = {}
  for i = 1, depth do
    local element = path[i]
    parts[i] = (math.type(element) and ("i" .. tostring(element)) or ("s" .. tostring(element))) .. "\0"
  end
  return table.concat(parts)
end

local function key_text(key)
  key = tostring(key)
  if key:match("^[%w_%-]+$") then return key end
  return '["' .. key:gsub('[%c"\\]', function(c)
    return c == '"' and '\\"' or c == "\\" and "\\\\" or string.format("\\u%04x", c:byte())
  end) .. '"]'
end

-- A field's name ("database.password", "tokens[2]" with 0-based indices, as jq and yq
-- write them) and whether any mapping key on its path is sensitive.
local function yaml_field(path, keys, sensitive)
  local out, secret = {}, false
  for depth, element in ipairs(path) do
    -- (a key written as an alias, `*k: v`, is not listed among the keys: not an index either)
    if keys[prefix_id(path, depth)] or not math.type(element) then
      local text = key_text(element)
      out[#out + 1] = (#out > 0 and not text:find("^%[")) and ("." .. text) or text
      if sensitive(element) then secret = true end
    else
      out[#out + 1] = "[" .. tostring(element - 1) .. "]"
    end
  end
  return table.concat(out), secret
end

-- The scalars of a document with, for each value, its field name and sensitivity.
local function yaml_values(text, sensitive)
  local scalars, err = yaml.scalars(text)
  if not scalars then return nil, err end
  local keys = {}
  for _, s in ipairs(scalars) do
    if s.is_key then keys[prefix_id(s.path, #s.path)] = true end
  end
  local values = {}
  for _, s in ipairs(scalars) do
    if not s.is_key then
      s.field, s.secret = yaml_field(s.path, keys, sensitive or function() return false end)
      values[#values + 1] = s
    end
  end
  return values
end

-- Every value of the decoded document that sits under a sensitive key must be a token (or
-- null). One that is not got there through an alias (`db_password: *pw`) of an anchor defined
-- outside any sensitive key. Appends every such leaf, { place =, value = }, to `found`: all of
-- them at once, so that sealing takes one more pass, not one per anchor (a file with thousands
-- of aliased passwords took minutes under the repository lock). The walk visits an aliased
-- table once per alias: bkr.yaml bounds that (yaml.max_alias_nodes).
local function unsealed_leaves(value, sensitive, under_secret, where, found)
  if type(value) == "table" then
    for k, v in pairs(value) do
      local child = where == "" and tostring(k) or (where .. "." .. tostring(k))
      local secret = under_secret or (type(k) == "string" and sensitive(k))
      unsealed_leaves(v, sensitive, secret, child, found)
    end
  elseif under_secret and value ~= yaml.null and not is_token(value) then
    found[#found + 1] = { place = where, value = value }
  end
  return found
end

-- Is the scalar anchored (`&name value`, `&name !!str value`, `!!str &name value`)?
local function anchored(text, s)
  local before = text:sub(math.max(1, s.start - 256), s.start)
  return before:find("&[^%s%[%]{},]+[ \t]+$") or before:find("&[^%s%[%]{},]+[ \t]+![^%s]*[ \t]+$")
end

-- Replace the chosen scalars by tokens. Returns the stored text and the sealed field names.
local function seal_scalars(text, values, chosen, cipher)
  local pieces, fields, at = {}, {}, 0
  for _, s in ipairs(values) do
    if chosen[s] then
      local source = text:sub(s.start + 1, s.stop)
      -- a block scalar's span runs through its trailing line breaks: they stay outside the
      -- token, so the next line keeps its own line
      local body = source:gsub("[\r\n]+$", "")
      pieces[#pieces + 1] = text:sub(at + 1, s.start)
      pieces[#pieces + 1] = cipher.seal(body, s.field)
      at = s.start + #body
      fields[#fields + 1] = s.field
    end
  end
  pieces[#pieces + 1] = text:sub(at + 1)
  return table.concat(pieces), fields
end

-- Seal the secrets of a YAML document: every scalar value with a sensitive key anywhere on
-- its path, and an anchored scalar that an alias under a sensitive key refers to (sealed once,
-- where it is defined, under its own path). Values that already are tokens stay as they are.
-- Returns the stored text and the list of sealed field names, or nil and a message.
function files.protect_yaml(text, cipher, sensitive)
  local values, err = yaml_values(text, sensitive)
  if not values then return nil, err end
  local chosen = {}
  for _, s in ipairs(values) do
    if s.secret and s.start < s.stop and not is_token(s.value) then chosen[s] = true end
  end
  while true do
    local stored, fields = seal_scalars(text, values, chosen, cipher)
    -- the stored document must parse, with each token where it was put ...
    local check, cerr = yaml_values(stored, sensitive)
    if not check then return nil, "the document with its secrets sealed does not parse: " .. cerr end
    local sealed = {}
    for _, s in ipairs(check) do
      if is_token(s.value) and s.style == "plain" then sealed[s.field] = true end
    end
    for _, field in ipairs(fields) do
      if not sealed[field] then
        return nil, field .. ": the sealed value does not read back as one plain scalar"
      end
    end
    -- ... and nothing under a sensitive key may be left in the clear through an alias
    local leaves = unsealed_leaves(yaml.decode(stored), sensitive, false, "", {})
    if #leaves == 0 then return stored, fields end
    local wanted = {}
    for _, leaf in ipairs(leaves) do wanted[tostring(leaf.value)] = true end
    local found = false
    for _, s in ipairs(values) do
      if not chosen[s] and s.start < s.stop and wanted[s.value] and anchored(text, s) then
        chosen[s], found = true, true
      end
    end
    if not found then
      return nil, leaves[1].place .. ": the value under a sensitive key comes from an alias of a collection "
        .. "or value that cannot be found to seal in place"
    end
  end
end

local function as_set(list)
  local set = {}
  for _, item in ipairs(list or {}) do set[item] = true end
  return set
end

-- Put the sealed fields of a stored YAML document back. fields: the names the manifest lists.
-- Returns the original text, or nil and a message naming the field (and crypto's code, when
-- a value does not open).
function files.reveal_yaml(stored, fields, cipher)
  local values, err = yaml_values(stored)
  if not values then return nil, err end
  local wanted, found = as_set(fields), {}
  local pieces, at = {}, 0
  for _, s in ipairs(values) do
    if wanted[s.field] then
      if s.style ~= "plain" or not is_token(s.value) then
        return nil, s.field .. ": expected a sealed value, found none"
      end
      local plain, perr, code = cipher.open(s.value, s.field)
      if not plain then return nil, s.field .. ": " .. perr, code end
      pieces[#pieces + 1] = stored:sub(at + 1, s.start)
      pieces[#pieces + 1] = plain
      at = s.stop
      found[s.field] = true
    end
  end
  for _, field in ipairs(fields or {}) do
    if not found[field] then return nil, field .. ": sealed field missing from the stored file" end
  end
  pieces[#pieces + 1] = stored:sub(at + 1)
  return table.concat(pieces)
end

-- ------------------------------------------------------------------ .env

-- The assignments dotenv libraries read (python-dotenv, ruby dotenv, docker compose):
-- KEY=VALUE, KEY = VALUE (spaces or tabs), KEY: VALUE and KEY:VALUE, each also after `export `.
-- A key has no '=' or ':' in it, so the first separator after it decides the form, in the
-- original and in the stored text alike (a token's base64 may end with '=').
local KEY = "[%w_][%w_%.%-]*"
local FORMS = {
  "^[ \t]*export[ \t]+(" .. KEY .. ")[ \t]*[=:][ \t]*()",
  "^[ \t]*(" .. KEY .. ")[ \t]*[=:][ \t]*()",
}
-- Lines with nothing to seal: blank, a comment, a bare KEY or `export KEY`.
local NOTHING = { "^[ \t]*$", "^[ \t]*#", "^[ \t]*" .. KEY .. "[ \t]*$", "^[ \t]*export[ \t]+" .. KEY .. "[ \t]*$" }

-- Split into lines, each with its terminator ("\n", "\r\n" or "" at the end).
local function lines_of(text)
  local lines = {}
  local pos = 1
  while pos <= #text do
    local nl = text:find("\n", pos, true)
    local line = nl and text:sub(pos, nl) or text:sub(pos)
    lines[#lines + 1] = line
    pos = pos + #line
  end
  return lines
end

-- KEY and the byte offsets (1-based, within the line) of the value, or nil.
local function assignment(line)
  local body = line:gsub("\r?\n$", "")
  for _, form in ipairs(FORMS) do
    local key, value_at = body:match(form)
    if key then return key, value_at, #body end
  end
  return nil
end

local function holds_nothing(line)
  local body = line:gsub("\r?\n$", "")
  for _, pattern in ipairs(NOTHING) do
    if body:find(pattern) then return true end
  end
  return false
end

-- Where a quoted value that opens on line i closes: the index of that line, or i.
local function closing_line(lines, i, value_at)
  local first = lines[i]
  local quote = first:sub(value_at, value_at)
  if quote ~= '"' and quote ~= "'" then return i end
  local function closes(s, from)
    local pos = from
    while true do
      local q = s:find(quote, pos, true)
      if not q then return false end
      if quote == "'" then return true end
      local backslashes = 0
      local b = q - 1
      while b >= from and s:sub(b, b) == "\\" do
        backslashes = backslashes + 1
        b = b - 1
      end
      if backslashes % 2 == 0 then return true end
      pos = q + 1
    end
  end
  if closes((first:gsub("\r?\n$", "")), value_at + 1) then return i end
  for j = i + 1, #lines do
    if closes(lines[j], 1) then return j end
  end
  return i -- never closed: the value is this line's rest, as most parsers read it
end

-- Seal the values of sensitive keys in a .env file: the text after the separator (and its
-- spaces) up to the end of the line, or to the line of the closing quote of a multi-line quoted
-- value. Returns the stored text and the list of sealed keys (a key may appear twice).
-- A line that is none of the forms above but names a sensitive key (`db/password=...`,
-- `DB PASSWORD x`) is refused rather than stored as it is: nil and a message naming its line
-- (never its text).
function files.protect_env(text, cipher, sensitive)
  local lines = lines_of(text)
  local out, fields = {}, {}
  local i = 1
  while i <= #lines do
    local line = lines[i]
    local key, value_at, body_end = assignment(line)
    local last = i
    if key and value_at <= body_end then last = closing_line(lines, i, value_at) end
    if key and sensitive(key) and value_at <= body_end and not is_token(line:sub(value_at, body_end)) then
      local tail = lines[last]:match("\r?\n$") or ""
      local value = line:sub(value_at)
      for j = i + 1, last do value = value .. lines[j] end
      value = value:sub(1, #value - #tail)
      out[#out + 1] = line:sub(1, value_at - 1) .. cipher.seal(value, key) .. tail
      fields[#fields + 1] = key
    elseif not key and not holds_nothing(line) and sensitive(line) then
      return nil, string.format("line %d names a sensitive key but is not KEY=VALUE, KEY: VALUE or "
        .. "export KEY=VALUE", i)
    else
      -- (a quoted value over several lines is copied whole: its lines are not assignments)
      for j = i, last do out[#out + 1] = lines[j] end
    end
    i = last + 1
  end
  return table.concat(out), fields
end

-- Put the sealed values of a stored .env file back.
function files.reveal_env(stored, fields, cipher)
  local wanted, found = as_set(fields), {}
  local out = {}
  for _, line in ipairs(lines_of(stored)) do
    local key, value_at, body_end = assignment(line)
    local value = key and line:sub(value_at, body_end)
    if key and wanted[key] and is_token(value) then
      local plain, err, code = cipher.open(value, key)
      if not plain then return nil, key .. ": " .. err, code end
      out[#out + 1] = line:sub(1, value_at - 1) .. plain .. line:sub(body_end + 1)
      found[key] = true
    else
      out[#out + 1] = line
    end
  end
  for _, field in ipairs(fields or {}) do
    if not found[field] then return nil, field .. ": sealed field missing from the stored file" end
  end
  return table.concat(out)
end

-- ------------------------------------------------------------------ dispatch by kind

function files.protect(kind, text, cipher, sensitive)
  if kind == "yaml" then return files.protect_yaml(text, cipher, sensitive) end
  if kind == "env" then return files.protect_env(text, cipher, sensitive) end
  error("config_files.protect: no field sealing for kind " .. tostring(kind))
end

function files.reveal(kind, stored, fields, cipher)
  if kind == "yaml" then return files.reveal_yaml(stored, fields, cipher) end
  if kind == "env" then return files.reveal_env(stored, fields, cipher) end
  error("config_files.reveal: no field sealing for kind " .. tostring(kind))
end

-- ------------------------------------------------------------------ whole files (streamed)

-- Run a pipeline to its end: its result table, or nil, what went wrong as "STAGE: REASON"
-- and the kind (from stream.run's error object: docs/runtime.md).
local function run_pipeline(stages)
  local ok, result = pcall(stream.run, stages)
  if not ok then return nil, cli.detail(result), cli.kind(result) end
  return result
end

-- Copy a file byte for byte into the backup, sealed whole with opts.key when given.
-- Returns { sha256, stored_sha256, size, stored_size } or nil, message, kind.
function files.store_whole(source_path, stored_path, opts)
  -- the admin's own file: a symlink to it is followed (/etc/alternatives...), a FIFO is not
  local source, err, kind = stream.from_file(source_path, { follow = true })
  if not source then return nil, err, kind end
  local stages = { source, hash.sha256{ name = "original" } }
  if opts.key then stages[#stages + 1] = require("bkr.crypto").encrypt{ key = opts.key } end
  stages[#stages + 1] = hash.sha256{ name = "stored" }
  local sink, serr, skind = stream.to_file(stored_path, { mode = opts.mode })
  if not sink then
    for _, stage in ipairs(stages) do stage:close() end
    return nil, serr, skind
  end
  stages[#stages + 1] = sink
  local result, rerr, rkind = run_pipeline(stages)
  if not result then return nil, rerr, rkind end
  return { sha256 = result.original, stored_sha256 = result.stored, size = result.bytes_in,
    stored_size = result.bytes_out }
end

-- Read a stored whole file back (opened with opts.key when it was sealed) into `target`
-- (a path, written atomically with opts.mode and opts.overwrite) or, without one, nowhere.
-- Returns the SHA-256 of the plaintext, or nil, message, kind. Sealed data that does not
-- authenticate fails the run before the target appears.
function files.read_whole(stored_path, opts)
  local source, err, kind = stream.from_file(stored_path)
  if not source then return nil, err, kind end
  local stages = { source }
  if opts.key then stages[#stages + 1] = require("bkr.crypto").decrypt{ key = opts.key } end
  stages[#stages + 1] = hash.sha256{ name = "plain" }
  local sink, serr, skind
  if opts.target then
    sink, serr, skind = stream.to_file(opts.target, { mode = opts.mode, overwrite = opts.overwrite })
  else
    sink = stream.to_null()
  end
  if not sink then
    for _, stage in ipairs(stages) do stage:close() end
    return nil, serr, skind
  end
  stages[#stages + 1] = sink
  local result, rerr, rkind = run_pipeline(stages)
  if not result then return nil, rerr, rkind end
  return result.plain
end

-- ------------------------------------------------------------------ SHA256SUMS

-- Parse a SHA256SUMS text: list of { digest, name } or nil, message. Each line is read by
-- repo.parse_sums_line, the one reader of the format (repo.sums_line writes it).
function files.parse_sums(text)
  local entries = {}
  local number = 0
  for line in text:gmatch("([^\n]*)\n?") do
    number = number + 1
    if line ~= "" then
      local digest, name = repo.parse_sums_line(line)
      if not digest then return nil, string.format("SHA256SUMS line %d is malformed", number) end
      entries[#entries + 1] = { digest = digest, name = name }
    end
  end
  return entries
end

return files
