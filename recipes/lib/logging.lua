-- The run log: one JSON line per step and per result, by default REPO/bkr.log
-- (docs/logging.md). repo.log is how recipes write to it; this module owns where the
-- lines go, what each one carries, and this run's records, which the notification at the
-- end of a run (lib/notify.lua) reads to say what failed.
--
--   logging.validate(value, path, validators)   the `logging:` section of the configuration
--   logging.configure(cfg)                      once the configuration is loaded
--   logging.path(dir)                           where the records go (dir: the repository)
--   logging.write(dir, record)                  append one record (dir: the repository)
--   logging.records()                           this run's records, oldest first
local lfs = require "lfs"
local fs = require "bkr.fs"
local json = require "lib.json"

local logging = {}

local settings = {}   -- the validated `logging:` section, once configured
local records = {}    -- this run's records, for the notification at its end
local warned = false  -- a log that cannot be written is said once per run

function logging.validate(value, path, v)
  return v.section{
    file = v.string_value,
  }(value, path)
end

function logging.configure(cfg)
  settings = cfg.logging or {}
end

function logging.records()
  return records
end

-- Where the records of a run on repository `dir` go: logging.file, else REPO/bkr.log.
function logging.path(dir)
  return settings.file or (dir .. "/bkr.log")
end

function logging.write(dir, record)
  record.time = record.time or require("lib.repo").iso_time(os.time())
  records[#records + 1] = record
  local path = logging.path(dir)
  local parent = path:match("^(.*)/[^/]*$") or "."
  local group = ((fs.mode(parent) or 0) & tonumber("040", 8)) ~= 0
  local mode = tonumber(group and "640" or "600", 8)
  local current = lfs.symlinkattributes(path, "mode") == "file" and fs.mode(path)
  if current and (current & ~mode) ~= 0 then fs.chmod(path, current & mode) end
  local ok, err = fs.append(path, json.encode(record) .. "\n", { mode = mode })
  if not ok and not warned then
    warned = true -- once per run: the log is for monitoring, the run goes on
    io.stderr:write("bkr: cannot write the log: ", err, "\n")
  end
end

return logging
