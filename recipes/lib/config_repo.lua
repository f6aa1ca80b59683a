-- Config backups in the repository: where they go, how they are named, found, built under a
-- temporary name and published, rotated and logged. Used by `bkr config` (recipes/config.lua);
-- lib/repo.lua owns the database backups' layout, and its stamps, order, lock and log serve
-- here too.
--
--   REPO/config/config_backup_YYYYMMDD_HHMMSS[-N]/       one backup; directories 0700
--     files/<original path without its leading '/'>     the stored copies (".enc" appended
--                                                       when encrypted whole)
--     manifest.json                                     0600, format bkr-config-1
--     SHA256SUMS                                        0600, for `cd DIR && sha256sum -c`
--   REPO/config/.partial-config_backup_.../              a backup being built; published by one
--                                                       rename, or removed by the next run
--
-- A run's stamp is repo.new_stamp's: a second backup in the same second is "-2", and sorts
-- after the first. What a backup's contents must be is checked by lib/config_check.lua.
local lfs = require "lfs"
local fs = require "bkr.fs"
local hash = require "bkr.hash"
local cli = require "lib.cli"
local config = require "lib.config"
local json = require "lib.json"
local repo = require "lib.repo"
local retention = require "lib.retention"

local config_repo = {}

config_repo.FORMAT = "bkr-config-1"
config_repo.SUBDIR = "config"
config_repo.MANIFEST = "manifest.json"
config_repo.SUMS = "SHA256SUMS"
config_repo.STORED_DIR = "files"

local PREFIX = "config_backup_"
local NAME_PATTERN = "^" .. PREFIX .. "(%d%d%d%d%d%d%d%d_%d%d%d%d%d%d%-?%d*)$"
local PARTIAL_PREFIX = ".partial-"
local PRIVATE = tonumber("700", 8)
local PRIVATE_FILE = tonumber("600", 8)

-- REPO/config.
function config_repo.dir(root)
  return root .. "/" .. config_repo.SUBDIR
end

-- Where a file is stored inside a backup, relative to it: "files/etc/app.yaml", or
-- "files/etc/tls.pem.enc" when it is encrypted whole.
function config_repo.stored_name(original_path, encrypted_whole)
  return config_repo.STORED_DIR .. original_path .. (encrypted_whole and ".enc" or "")
end

-- ------------------------------------------------------------------ finding backups

-- Every config backup in REPO/config, newest first (repo.newer):
-- { name, path, stamp, time, sequence, type = "daily" } (type: for lib/retention.lua).
function config_repo.scan(dir)
  local backups = {}
  if lfs.attributes(dir, "mode") ~= "directory" then return backups end
  local readable, _, kind = fs.access(dir, "rx")
  if not readable and kind == "permission" then repo.permission_failure(dir) end
  for name in lfs.dir(dir) do
    local stamp = name:match(NAME_PATTERN)
    local time, sequence = repo.parse_stamp(stamp or "")
    -- (symlinkattributes: a symlink there is not a backup bkr wrote; never read or rotated)
    if time and lfs.symlinkattributes(dir .. "/" .. name, "mode") == "directory" then
      backups[#backups + 1] = { name = name, path = dir .. "/" .. name, stamp = stamp,
        time = time, sequence = sequence, type = "daily" }
    end
  end
  table.sort(backups, repo.newer)
  return backups
end

-- BACKUP as given on the command line: a directory, or a backup's name in REPO/config (the
-- repository from options, as lib/config.lua finds it). what: the subcommand, for messages
-- ("config restore"). A word that is neither is a usage error (exit 2).
function config_repo.resolve(options, word, what)
  if word:find("/") or lfs.attributes(word, "mode") == "directory" then
    if lfs.attributes(word, "mode") ~= "directory" then
      cli.usage_error("%s: no such backup directory %s", what, word)
    end
    return (word:gsub("(.)/+$", "%1"))
  end
  if not word:match(NAME_PATTERN) then
    cli.usage_error("%s: %s is neither a directory nor a config backup name "
      .. "(config_backup_YYYYMMDD_HHMMSS[-N])", what, word)
  end
  local path = config_repo.dir(repo.open(config.repository(config.load(options)))) .. "/" .. word
  if lfs.attributes(path, "mode") ~= "directory" then
    cli.usage_error("%s: no config backup %s", what, path)
  end
  return path
end

-- The newest config backup's directory, or the run stops (exit 1) when there is none.
function config_repo.latest(options, what)
  local dir = config_repo.dir(repo.open(config.repository(config.load(options))))
  local newest = config_repo.scan(dir)[1]
  if not newest then cli.fail(cli.EXIT_FAILED, "%s: no config backups in %s", what, dir) end
  return newest.path
end

-- ------------------------------------------------------------------ manifest and SHA256SUMS

-- A backup's manifest as JSON (not yet checked: lib/config_check.lua does that); or nil,
-- message, kind (fs.read_file's kinds, or "corrupt").
function config_repo.read_manifest(backup_dir)
  return json.read_file(backup_dir .. "/" .. config_repo.MANIFEST)
end

-- Parse a SHA256SUMS text: list of { digest, name } or nil, message. Each line is read by
-- repo.parse_sums_line, the one reader of the format (repo.sums_line writes it).
function config_repo.parse_sums(text)
  local entries = {}
  local number = 0
  for line in text:gmatch("([^\n]*)\n?") do
    number = number + 1
    if line ~= "" then
      local digest, name = repo.parse_sums_line(line)
      if not digest then
        return nil, string.format("%s line %d is malformed", config_repo.SUMS, number)
      end
      entries[#entries + 1] = { digest = digest, name = name }
    end
  end
  return entries
end

-- How many values a backup holds encrypted field by field, and how many files whole.
function config_repo.counts(manifest)
  local fields, whole = 0, 0
  for _, file in ipairs(manifest.files or {}) do
    fields = fields + #(file.encrypted_fields or {})
    if file.whole_file_encrypted then whole = whole + 1 end
  end
  return fields, whole
end

-- ------------------------------------------------------------------ building a backup

-- Lock the repository for a new config backup: REPO/config made (0700), REPO/.lock taken
-- (repo.lock: fails fast naming the holder), and what a crashed run left under a temporary
-- name removed (holding the lock proves nobody else is writing it). Returns the lock, for
-- a to-be-closed variable.
function config_repo.lock(root)
  local dir = config_repo.dir(root)
  local lock = repo.lock(root)
  repo.real_subdir(root, config_repo.SUBDIR, PRIVATE)
  local readable, _, rkind = fs.access(dir, "rwx")
  if not readable and rkind == "permission" then repo.permission_failure(dir, "write") end
  for name in lfs.dir(dir) do
    if name:sub(1, #PARTIAL_PREFIX) == PARTIAL_PREFIX then
      fs.remove_tree(dir .. "/" .. name)
      cli.warn("config backup", "removed %s/%s, left by an interrupted run", dir, name)
    end
  end
  return lock
end

local Staged = {}
Staged.__index = Staged

-- A new config backup, taken at `epoch`, under its temporary name in REPO/config; the caller
-- holds the lock (config_repo.lock). The staged backup:
--   staged.name, staged.path (temporary), staged.final, staged.epoch
--   staged:file(stored)                 its path for a stored name, its directories made (0700)
--   staged:write_manifest(manifest)     manifest.json and SHA256SUMS; returns the manifest
--   staged:publish()                    every directory fsynced, then one rename to its name
--   staged:discard()                    remove it all
-- The methods raise on failure (the message as the binding gave it): the caller builds the
-- backup under pcall and discards it on any failure.
function config_repo.stage(root, epoch)
  local dir = config_repo.dir(root)
  local name = PREFIX .. repo.new_stamp(epoch, function(second)
    return repo.highest_sequence(dir, { PREFIX, PARTIAL_PREFIX .. PREFIX }, second)
  end)
  local staged = setmetatable({ root = root, name = name, epoch = epoch, final = dir .. "/" .. name,
    path = dir .. "/" .. PARTIAL_PREFIX .. name, made = {}, made_order = {} }, Staged)
  local ok, err = fs.mkdirs(staged.path, PRIVATE, repo.file_options(staged.path))
  if not ok then cli.fail(cli.EXIT_FAILED, "config backup: %s", err) end
  return staged
end

function Staged:file(stored)
  local path = self.path
  for part in (stored:match("^(.*)/[^/]*$") or ""):gmatch("[^/]+") do
    path = path .. "/" .. part
    if not self.made[path] then
      local ok, err = fs.mkdirs(path, PRIVATE, repo.file_options(path))
      if not ok then error(err, 0) end
      self.made[path] = true
      self.made_order[#self.made_order + 1] = path
    end
  end
  return self.path .. "/" .. stored
end

-- manifest: key_id, cipher, sensitive_keys and files (the entries, each with its stored name
-- and stored_sha256); format, name, time and bkr_version are filled in here.
function Staged:write_manifest(manifest)
  manifest.format, manifest.name = config_repo.FORMAT, self.name
  manifest.time, manifest.bkr_version = repo.iso_time(self.epoch), bkr.version
  local text = json.encode(manifest, true) .. "\n"
  local ok, err = fs.write_file(self.path .. "/" .. config_repo.MANIFEST, text,
    repo.file_options(self.path, { mode = PRIVATE_FILE, overwrite = false }))
  if not ok then error(err, 0) end
  local lines = {}
  for _, entry in ipairs(manifest.files) do
    lines[#lines + 1] = repo.sums_line(entry.stored_sha256, entry.stored)
  end
  lines[#lines + 1] = repo.sums_line(hash.sha256_string(text), config_repo.MANIFEST)
  ok, err = fs.write_file(self.path .. "/" .. config_repo.SUMS, table.concat(lines),
    repo.file_options(self.path, { mode = PRIVATE_FILE, overwrite = false }))
  if not ok then error(err, 0) end
  return manifest
end

-- Every directory of the staged backup reaches the disk before the rename publishes it.
function Staged:publish()
  for i = #self.made_order, 1, -1 do
    local ok, err = fs.fsync(self.made_order[i])
    if not ok then error(err, 0) end
  end
  local ok, err = fs.fsync(self.path)
  if not ok then error(err, 0) end
  ok, err = fs.rename(self.path, self.final)
  if not ok then error(err, 0) end
end

function Staged:discard()
  fs.remove_tree(self.path)
end

-- ------------------------------------------------------------------ rotation and the log

-- One line in REPO/bkr.log for `bkr config backup`: result ("ok", "failed", "removed"), the
-- backup's name (or nil) and any other fields.
function config_repo.log(root, result, name, fields)
  local record = fields or {}
  record.recipe, record.result = "config backup", result
  if name then record.file = config_repo.SUBDIR .. "/" .. name end
  repo.log(root, record)
end

-- Keep what lib/retention.lua keeps of the config backups (as daily backups: retention.daily
-- newest) and always the newest one and `published` (the run's own). Every config backup was
-- verified before it was published. The caller holds the lock. Returns the paths removed and
-- the errors of those that could not be.
function config_repo.rotate(root, policy, published)
  local backups = config_repo.scan(config_repo.dir(root))
  for _, backup in ipairs(backups) do backup.verified = "passed" end
  local keep = retention.keep(backups, policy, os.time())
  if backups[1] then keep[backups[1]] = keep[backups[1]] or "newest config backup" end
  local removed, errors = {}, {}
  for _, backup in ipairs(backups) do
    if not keep[backup] and backup.path ~= published then
      local ok, err = fs.remove_tree(backup.path)
      if ok then
        removed[#removed + 1] = backup.path
        config_repo.log(root, "removed", backup.name, { reason = "beyond retention" })
      else
        errors[#errors + 1] = err
      end
    end
  end
  return removed, errors
end

return config_repo
