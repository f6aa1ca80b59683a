-- The run log: one JSON line per step and per result, by default REPO/bkr.log
-- (docs/logging.md). repo.log is how recipes write results to it, logging.step their steps;
-- this module owns where the lines go, what each one carries, rotation, and this run's
-- records, which the notification at the end of a run (lib/notify.lua) reads to say what
-- failed.
--
--   logging.validate(value, path, validators)   the `logging:` section of the configuration
--   logging.configure(cfg)                      once the configuration is loaded (config.load)
--   logging.start([recipe])                     the run's first line; the `finish` line follows
--                                               at exit, however the run ends
--   logging.step(name[, fields])                one line for a named step of the run
--   logging.path(dir)                           where the records go (dir: the repository)
--   logging.write(dir, record)                  append one record (dir: the repository)
--   logging.records()                           this run's records, oldest first
--
-- Every line carries the run's identity: run_id (UTC start time and pid, shared by the run's
-- lines), recipe, host, job (env BKR_JOB, when set) and a level (debug, info, warning,
-- error). Lines below the configured level (logging.level, or --log-level) are not written;
-- records() keeps them all.
--
-- Rotation: a writer that finds the file would grow past logging.max_bytes renames it to
-- FILE.1 (FILE.1 to FILE.2, ... up to logging.keep) under its own lock, FILE.lock, and
-- checks the size again once it holds it, so two runs never both rotate the same file. Lines
-- are appended with O_APPEND in one write(2), never through a symlink: a line written by a
-- run that opened the file just before the rename lands in FILE.1, never nowhere.
local lfs = require "lfs"
local fs = require "bkr.fs"
local json = require "lib.json"

local logging = {}

-- The levels, lowest first.
logging.LEVELS = { "debug", "info", "warning", "error" }
local RANK = { debug = 1, info = 2, warning = 3, error = 4 }
logging.RANK = RANK

logging.DEFAULTS = { level = "info", max_bytes = 10 * 1024 * 1024, keep = 5 }

local settings = {}   -- the validated `logging:` section, once configured
local dir_of_run      -- the repository, when the configuration names one
local records = {}    -- this run's records, for the notification at its end
local warned = false  -- a log that cannot be written is said once per run
local run             -- this run's identity (run_id, recipe, host, job), made at the first record
local finish_registered = false
local identity

function logging.validate(value, path, v)
  local function level_value(item, at)
    if type(item) ~= "string" or not RANK[item] then v.fail(at, "expected debug, info, warning or error") end
    return item
  end
  local function absolute_path(item, at)
    v.string_value(item, at)
    if item:sub(1, 1) ~= "/" then v.fail(at, "expected an absolute path") end
    if item:sub(-1) == "/" then v.fail(at, "expected a file, not a directory") end
    return item
  end
  return v.section{
    file = absolute_path,
    level = level_value,
    max_bytes = v.integer_in(1024),
    keep = v.integer_in(1, 1000),
  }(value, path)
end

-- The settings with their defaults; the level from --log-level when given (the command line
-- is parsed before the configuration is read: lib/cli.lua keeps it).
function logging.configure(cfg)
  settings = {}
  for key, default in pairs(logging.DEFAULTS) do settings[key] = default end
  for key, value in pairs(cfg.logging or {}) do settings[key] = value end
  local from_command_line = require("lib.cli").globals.log_level
  if from_command_line then settings.level = from_command_line end
  dir_of_run = cfg.repository
  identity() -- the run's clock starts now, for the finish line's seconds
end

-- The repository whose bkr.log this run's lines go to (when logging.file is not set): the
-- configured one unless a recipe says otherwise (bkr sync: its local side).
function logging.use_repository(dir)
  dir_of_run = dir
end

function logging.records()
  return records
end

-- ------------------------------------------------------------------ the run's identity

local function read_line(path)
  local f = io.open(path)
  if not f then return nil end
  local line = f:read("l")
  f:close()
  return line
end

-- The machine's host name (the kernel's, else /etc/hostname's), or nil: every line carries
-- it, and notifications and drill reports name the host by it.
function logging.host_name()
  return read_line("/proc/sys/kernel/hostname") or read_line("/etc/hostname")
end

identity = function()
  if run then return run end
  local started = os.time()
  local pid = (read_line("/proc/self/stat") or ""):match("^(%d+)") or "0"
  local recipe = (bkr.script or ""):match("([^/]+)%.lua$") or "bkr"
  local job = os.getenv("BKR_JOB")
  run = {
    run_id = os.date("!%Y%m%dT%H%M%SZ", started) .. "-" .. pid,
    recipe = recipe,
    host = logging.host_name() or "unknown",
    job = job ~= "" and job or nil,
    clock = bkr.monotonic(),
  }
  return run
end

-- ------------------------------------------------------------------ the file

-- Where the records of a run on repository `dir` go: logging.file, else REPO/bkr.log (nil
-- with neither).
local function log_path(dir)
  if settings.file then return settings.file end
  -- a repository in object storage keeps no log: logging.file, or the local side's (bkr sync)
  if dir and not dir:match("^%a[%w+.-]*://") then return dir .. "/bkr.log" end
  return nil
end
logging.path = log_path

-- The log's mode: private, or readable by the group when its directory is (a backup group).
-- A log left looser by bkr 0.1 is tightened.
local function private_mode(path)
  local parent = path:match("^(.*)/[^/]*$") or "."
  if parent == "" then parent = "/" end
  local group = ((fs.mode(parent) or 0) & tonumber("040", 8)) ~= 0
  return tonumber(group and "640" or "600", 8)
end

-- The file's size when it is a regular file (never a symlink's target), else nil.
local function size_of(path)
  if lfs.symlinkattributes(path, "mode") ~= "file" then return nil end
  return lfs.symlinkattributes(path, "size")
end

local function over_limit(path, incoming)
  local size = size_of(path)
  return size ~= nil and size > 0 and size + incoming > (settings.max_bytes or logging.DEFAULTS.max_bytes)
end

-- FILE -> FILE.1 -> ... -> FILE.keep (the oldest beyond keep is replaced), by the one writer
-- that holds FILE.lock: two writers shifting the names at once would rename one's fresh
-- FILE.1 over the other's, and lose it. A writer that finds the lock taken appends without
-- rotating: the holder is rotating. The size is checked again under the lock: another writer
-- may have rotated between our look and our lock, and the file is then a fresh one that must
-- not be rotated again (that would drop the oldest file early).
local rotate_warned = false

local function rotate(path, incoming)
  local lock, err, kind = fs.lock(path .. ".lock", { owner = require("lib.repo").owner_for(path) })
  if not lock then
    -- held: its holder is rotating. Anything else (a symlink planted there, no permission)
    -- would stop rotation for good without a word: say it, once per run
    if kind ~= "locked" and not rotate_warned then
      rotate_warned = true
      io.stderr:write("bkr: cannot rotate the log: ", err, "\n")
    end
    return
  end
  if over_limit(path, incoming) then
    local keep = settings.keep or logging.DEFAULTS.keep
    for n = keep - 1, 1, -1 do
      local from = path .. "." .. n
      if lfs.symlinkattributes(from, "mode") then fs.rename(from, path .. "." .. (n + 1)) end
    end
    fs.rename(path, path .. ".1")
  end
  lock:close()
end

-- Lines whose directory does not exist yet (a first backup creates the repository after its
-- first line): written, in order, by the first append that finds the directory. A repository
-- that never comes to exist gets no log, and no warning about it (a configured logging.file
-- whose directory is missing does get one).
local pending = {}

local function append(path, line)
  pending[#pending + 1] = line
  local text = table.concat(pending)
  local mode = private_mode(path)
  local current = lfs.symlinkattributes(path, "mode") == "file" and fs.mode(path)
  if current and (current & ~mode) ~= 0 then fs.chmod(path, current & mode) end
  if over_limit(path, #text) then rotate(path, #text) end
  -- (root on another user's repository gives the log to that user: lib/repo.lua)
  local ok, err, kind = fs.append(path, text, { mode = mode, owner = require("lib.repo").owner_for(path) })
  -- (a configured logging.file in a missing directory is a mistake to report, not to wait out)
  local waiting = not ok and kind == "missing" and not settings.file
  if not waiting then pending = {} end
  if not ok and not waiting and not warned then
    warned = true -- once per run: the log is for monitoring, the run goes on
    if kind == "permission" then
      -- named as what it is, with its owner and the fix (lib/cli.lua), like every file bkr may not use
      local cli = require "lib.cli"
      err = cli.permission_message(path, { verb = "write", fix_tree = dir })
    end
    io.stderr:write("bkr: cannot write the log: ", err, "\n")
  end
end

-- ------------------------------------------------------------------ records

-- A record's level when it names none: a failure is an error, anything else info.
local function default_level(record)
  if record.error or record.result == "failed" or record.result == "interrupted" then return "error" end
  return "info"
end

local finish

function logging.write(dir, record)
  local who = identity()
  record.time = record.time or require("lib.repo").iso_time(os.time())
  record.level = record.level or default_level(record)
  record.run_id = record.run_id or who.run_id
  record.recipe = record.recipe or who.recipe
  record.host = record.host or who.host
  record.job = record.job or who.job
  records[#records + 1] = record
  if not finish_registered then
    finish_registered = true
    bkr.at_exit(finish)
  end
  local path = log_path(dir or dir_of_run)
  if not path then return end
  if RANK[record.level] < RANK[settings.level or logging.DEFAULTS.level] then return end
  append(path, json.encode(record) .. "\n")
end

-- One line for a named step of this run, in the configured repository's log: {step = name,
-- ...fields}. fields.level chooses the level (default: error when the fields carry an error,
-- else info).
function logging.step(name, fields)
  local record = {}
  for key, value in pairs(fields or {}) do record[key] = value end
  record.step = name
  logging.write(dir_of_run, record)
end

-- The run's first line. recipe: the name its lines carry (default: the recipe file's name;
-- `config backup` for a subcommand).
function logging.start(recipe)
  local who = identity()
  if recipe then who.recipe = recipe end
  logging.step("start", { bkr_version = bkr.version })
end

-- The run's last line, from bkr.at_exit: its exit code, its message when it failed, the
-- signal that stopped it, how long it ran.
finish = function(outcome)
  local who = identity()
  logging.step("finish", {
    level = outcome.exit_code == 0 and "info" or "error",
    exit_code = outcome.exit_code,
    message = outcome.message or (outcome.interrupted and "interrupted by " .. outcome.interrupted),
    interrupted = outcome.interrupted,
    seconds = math.floor((bkr.monotonic() - who.clock) * 1000 + 0.5) / 1000,
  })
end

return logging
