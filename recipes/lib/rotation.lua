-- Rotation: apply the retention policy (lib/retention.lua) to a repository. Used by
-- `bkr rotate` and at the end of a successful `bkr backup`. The caller holds the lock.
local lfs = require "lfs"
local cli = require "lib.cli"
local repo = require "lib.repo"
local retention = require "lib.retention"

local rotation = {}

-- Whether a sidecar whose backup is gone is provably bkr's: it is a regular file named after
-- a bkr backup, and says so (the sha256sum line names that file, the manifest describes it).
local function own_orphan(subdir, file, base, suffix)
  local path = subdir .. "/" .. file
  if lfs.symlinkattributes(path, "mode") ~= "file" then return false end
  if not (repo.match_backup(base) or repo.match_globals(base)) then return false end
  if lfs.symlinkattributes(subdir .. "/" .. base, "mode") ~= nil then return false end
  if suffix == "sha256" then
    return repo.read_sidecar({ sidecar = path, file = base }) ~= nil
  end
  local m = repo.read_manifest(path)
  return m ~= nil and m.file == base
end

-- Sidecars whose backup is gone (a crash between two removals): remove them too, so a
-- sidecar never outlives its file. Only bkr's own: an admin's notes.sql.gz.sha256 stays.
local function orphan_sidecars(dir)
  local orphans = {}
  for _, type_ in ipairs(repo.TYPES) do
    local subdir = repo.type_dir(dir, type_)
    if subdir then
      for file in lfs.dir(subdir) do
        -- (own_orphan asks repo whether base is a backup's name, whatever its storage)
        local base, suffix = file:match("^(.+)%.(%w+)$")
        if base and (suffix == "sha256" or suffix == "json") and own_orphan(subdir, file, base, suffix) then
          orphans[#orphans + 1] = subdir .. "/" .. file
        end
      end
    end
  end
  return orphans
end

-- What has a backup's name but cannot be proved to be a backup bkr wrote: a symlink, FIFO or
-- directory, or a file whose manifest is missing or invalid. Rotation neither counts nor
-- removes it; it says so, and the run goes on.
local function stray_reason(backup)
  if not backup.regular then return "not a regular file" end
  if not backup.manifest then return backup.manifest_error end
  return nil
end

-- Returns the number of backups removed (or that would be), and a list of errors.
function rotation.run(dir, cfg, opts)
  opts = opts or {}
  local say = opts.say or function(line) cli.say("%s", line) end -- progress: --quiet silences it
  local backups = {}
  for _, backup in ipairs(repo.scan(dir, { globals = true })) do
    -- a backup bkr may not read cannot be proved bkr's, nor left alone as a stray: the
    -- admin must fix the permissions first (exit 1, with the fix)
    if backup.unreadable then repo.permission_failure(backup.unreadable) end
    local reason = stray_reason(backup)
    if reason then
      cli.report("left alone %s/%s: %s", backup.type, backup.file, reason) -- a warning: always shown
    else
      backup.verified = repo.verified(backup)
      backups[#backups + 1] = backup
    end
  end
  local remove = retention.plan(backups, cfg.retention, os.time(), opts.protect)
  local verb = opts.dry_run and "would remove" or "removed"
  local errors = {}
  for _, item in ipairs(remove) do
    local backup = item.backup
    if opts.dry_run then
      say(string.format("%s %s/%s (%s)", verb, backup.type, backup.file, item.reason))
    else
      local ok, err = repo.remove(backup)
      if ok then
        say(string.format("%s %s/%s (%s)", verb, backup.type, backup.file, item.reason))
        repo.log(dir, { step = "remove", database = backup.database, file = backup.type .. "/" .. backup.file,
          result = "removed", reason = item.reason })
      else
        errors[#errors + 1] = string.format("%s: %s", backup.path, err)
      end
    end
  end
  local orphans = orphan_sidecars(dir)
  for _, path in ipairs(orphans) do
    if opts.dry_run then
      say(string.format("%s orphan sidecar %s", verb, path))
    elseif os.remove(path) then
      say(string.format("%s orphan sidecar %s", verb, path))
    end
  end
  -- The caller holds the lock (or removes nothing: --dry-run), so no run is writing these.
  local stale = opts.skip_temporaries and {} or repo.temporaries(dir)
  for _, path in ipairs(stale) do
    if opts.dry_run or os.remove(path) then say(string.format("%s temporary file %s of an interrupted run", verb, path)) end
  end
  return #remove + #orphans + #stale, errors
end

return rotation
