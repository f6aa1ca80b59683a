-- Configuration files, kind by kind: what is secret in them and how it is sealed and put back.
-- Used by `bkr config` (recipes/config.lua); the format is described in docs/config-backup.md.
-- The core: choosing a file's format, the sensitive keys, the cipher, and whole files.
--
--   yaml   (*.yaml, *.yml)            lib/config_format_yaml.lua: every scalar value under a
--                                     sensitive key is replaced in place by one token
--   env    (.env, *.env, .env.*)      lib/config_format_env.lua: the value of each assignment
--                                     to a sensitive key is replaced; any other line that
--                                     names a sensitive key is refused
--   other                             copied byte for byte, or sealed whole (chunked format)
--
-- A format that seals field by field is a module, listed in FORMATS below:
--   format.kind                                  its name in manifests ("yaml")
--   format.claims(name)                          whether a file's last path component, in
--                                                lower case, names a file of this format
--   format.protect(text, cipher, sensitive)      -> stored text, the sealed fields' names
--                                                   | nil, message (never quoting a value)
--   format.reveal(stored, fields, cipher)        -> the original text
--                                                   | nil, message naming the field[, code]
-- where cipher is files.cipher(...) and sensitive files.sensitive_matcher(...). Adding a
-- format (TOML, JSON) adds a module and a line in FORMATS; the core does not change.
--
-- A token seals the value's exact source text (quotes, block indicators and all), so that
-- putting it back gives the original file byte for byte. Its associated data is the field's
-- path ("database.password", "tokens[2]", "API_TOKEN"): a token moved to another field does
-- not authenticate.
local stream = require "bkr.stream"
local hash = require "bkr.hash"
local cli = require "lib.cli"
local yaml_format = require "lib.config_format_yaml"
local env_format = require "lib.config_format_env"

local files = {}

-- The formats sealed field by field, in the order their names are tried.
local FORMATS = { yaml_format, env_format }
local BY_KIND = {}
for _, format in ipairs(FORMATS) do BY_KIND[format.kind] = format end

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

-- The kind of a file, by its name: a format's kind, or "other".
function files.kind(path)
  local name = (path:match("([^/]+)$") or path):lower()
  for _, format in ipairs(FORMATS) do
    if format.claims(name) then return format.kind end
  end
  return "other"
end

-- Whether a manifest's kind is one bkr knows: a format's, or "other".
function files.known_kind(kind)
  return kind == "other" or BY_KIND[kind] ~= nil
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
--   cipher.is_token(value) -> whether a value is a token already (left as it is)
-- opts.legacy_xor: seal with the previous tool's XOR scheme (compatibility only).
function files.cipher(key, opts)
  local crypto = require "bkr.crypto"
  opts = opts or {}
  local cipher = { key_id = crypto.key_id(key), legacy_xor = opts.legacy_xor == true, is_token = is_token }
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

-- ------------------------------------------------------------------ field by field, by format

-- Seal the secrets of a file of a format's kind: what that format's protect returns.
function files.protect(kind, text, cipher, sensitive)
  local format = BY_KIND[kind]
  if not format then error("config_files.protect: no field sealing for kind " .. tostring(kind)) end
  return format.protect(text, cipher, sensitive)
end

-- Put the sealed fields of a stored file of a format's kind back: what its reveal returns.
function files.reveal(kind, stored, fields, cipher)
  local format = BY_KIND[kind]
  if not format then error("config_files.reveal: no field sealing for kind " .. tostring(kind)) end
  return format.reveal(stored, fields, cipher)
end

-- ------------------------------------------------------------------ whole files (streamed)

-- Run a pipeline to its end: its result table, or nil, what went wrong as "STAGE: REASON"
-- and the kind (from stream.run's error object: docs/runtime.md).
local function run_pipeline(stages)
  local ok, result = pcall(stream.run, stages)
  if not ok then return nil, cli.detail(result), cli.kind(result) end
  return result
end

-- Copy a file byte for byte into the backup, sealed whole with opts.key when given, written
-- with opts.mode and given to opts.owner ({uid, gid}, when set).
-- Returns { sha256, stored_sha256, size, stored_size } or nil, message, kind.
function files.store_whole(source_path, stored_path, opts)
  -- the admin's own file: a symlink to it is followed (/etc/alternatives...), a FIFO is not
  local source, err, kind = stream.from_file(source_path, { follow = true })
  if not source then return nil, err, kind end
  local stages = { source, hash.sha256{ name = "original" } }
  if opts.key then stages[#stages + 1] = require("bkr.crypto").encrypt{ key = opts.key } end
  stages[#stages + 1] = hash.sha256{ name = "stored" }
  local sink, serr, skind = stream.to_file(stored_path, { mode = opts.mode, owner = opts.owner })
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

return files
