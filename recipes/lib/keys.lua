-- Encryption keys: where a recipe finds the key, and how it is checked (docs/encryption.md).
--
--   local key, key_id, source = keys.load(cfg, options)   -- nil when no key is configured
--   local key, key_id, source = keys.require(cfg, options) -- fails (exit 2) when none is
--
-- A key is 32 random bytes. It is stored as their base64 (44 characters) plus an optional
-- newline, in a file of mode 0600 (`bkr keygen --out FILE` writes one) or in an environment
-- variable. The first source that is set wins:
--   1. --key-file FILE            (options.key_file)
--   2. encryption.key_file        (configuration)
--   3. encryption.key_env         (configuration: the NAME of an environment variable)
-- A key is known in messages, manifests and logs by its key id only (crypto.key_id: 16 hex
-- characters of its SHA-256), never by its bytes: no message here quotes a file's content.
local cli = require "lib.cli"
local fs = require "bkr.fs"
local crypto = require "bkr.crypto"

local keys = {}

keys.KEY_BYTES = 32
local MAX_KEY_TEXT = 4096

-- 32 raw bytes from base64 text, or nil.
function keys.decode(text)
  text = text:gsub("%s+$", "")
  local key = crypto.base64_decode(text)
  if not key or #key ~= keys.KEY_BYTES then return nil end
  return key
end

-- The base64 text of a key, as a key file holds it (without the newline).
function keys.encode(key)
  return crypto.base64_encode(key)
end

local function read_key_file(path)
  local mode, err, kind = fs.mode(path)
  -- a key bkr may not read is a permission problem (exit 1): who owns it, and the fix
  if not mode and kind == "permission" then cli.permission_failure(path) end
  if not mode then cli.usage_error("key file %s", cli.failure(err, kind, path)) end
  if mode & tonumber("044", 8) ~= 0 then
    cli.usage_error("key file %s is readable by group or others (mode %04o); run: chmod 600 %s", path, mode, path)
  end
  if mode & tonumber("022", 8) ~= 0 then
    cli.usage_error("key file %s is writable by group or others (mode %04o); run: chmod 600 %s", path, mode, path)
  end
  local text, read_err, read_kind = fs.read_file(path, { follow = true, max = MAX_KEY_TEXT })
  if not text and read_kind == "permission" then cli.permission_failure(path) end
  if not text and read_kind ~= "too_large" then cli.usage_error("key file %s", cli.failure(read_err, read_kind, path)) end
  local key = text and keys.decode(text)
  if not key then
    cli.usage_error("key file %s is not a bkr key (expected the base64 of %d bytes, as bkr keygen writes)",
      path, keys.KEY_BYTES)
  end
  return key
end

local function read_key_env(name)
  local text = os.getenv(name)
  if not text or text == "" then
    cli.usage_error("configuration: encryption.key_env: environment variable %s is not set", name)
  end
  local key = keys.decode(text)
  if not key then
    cli.usage_error("configuration: encryption.key_env: environment variable %s is not a bkr key "
      .. "(expected the base64 of %d bytes)", name, keys.KEY_BYTES)
  end
  return key
end

-- The configured key: key (32 raw bytes), key id (hex), and where it came from (for messages);
-- or nil when none is configured. A configured but unusable key is a usage error (exit 2).
-- `bytes` random bytes from OpenSSL, as lowercase hex: names no one can guess beforehand, and
-- one-time keys.
function keys.random_hex(bytes)
  return (crypto.random_bytes(bytes):gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function keys.load(cfg, options)
  options = options or {}
  local encryption = (cfg and cfg.encryption) or {}
  local key, source
  if options.key_file then
    key, source = read_key_file(options.key_file), "key file " .. options.key_file
  elseif encryption.key_file then
    key, source = read_key_file(encryption.key_file), "key file " .. encryption.key_file
  elseif encryption.key_env then
    key, source = read_key_env(encryption.key_env), "environment variable " .. encryption.key_env
  else
    return nil
  end
  return key, crypto.key_id(key), source
end

-- Same, but a missing key is a usage error.
function keys.require(cfg, options)
  local key, key_id, source = keys.load(cfg, options)
  if not key then cli.usage_error("no key: give --key-file FILE or set encryption.key_file") end
  return key, key_id, source
end

return keys
