-- Secrets that configuration names but never holds: a password or key read from a private
-- file or from an environment variable. The one reader, for SMTP passwords (lib/notify.lua)
-- and object-storage secret keys (lib/remote.lua). Messages name the file or the variable,
-- never what is in it.
local cli = require "lib.cli"
local fs = require "bkr.fs"

local secrets = {}

-- The value of environment variable `name`; or nil, message, "config" when it is unset or
-- empty. `where` is the configuration key that named it ("notify.channels[1].smtp.password_env").
function secrets.from_env(name, where)
  local value = os.getenv(name)
  if not value or value == "" then
    return nil, string.format("%s: environment variable %s is not set", where, name), "config"
  end
  return value
end

-- The one line of a private file (mode 0600 or 0640: no one else may read it); or nil,
-- message, kind ("permission", "missing", "config", ...).
function secrets.from_file(path, where)
  local mode, err, kind = fs.mode(path)
  if not mode then return nil, where .. ": " .. cli.failure(err, kind, path), kind end
  if mode & ~tonumber("640", 8) ~= 0 then
    return nil, string.format("%s: %s has mode %04o; give it mode 0600 or 0640", where, path, mode), "permission"
  end
  local text
  text, err, kind = fs.read_file(path, { max = 4096 })
  if not text then return nil, where .. ": " .. cli.failure(err, kind, path), kind end
  text = text:gsub("\r?\n$", "")
  if text == "" or text:find("[\r\n%z]") then
    return nil, string.format("%s: %s must hold the secret on one line", where, path), "config"
  end
  return text
end

return secrets
