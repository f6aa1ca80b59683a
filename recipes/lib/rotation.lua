-- Rotation: apply the retention policy (lib/retention.lua) to a repository. Used by
-- `bkr rotate` and at the end of a successful `bkr backup`. The caller holds the lock.
local lfs = require "lfs"
local repo = require "lib.repo"
local retention = require "lib.retention"

local rotation = {}

-- Sidecars whose backup is gone (a crash between two removals): remove them too, so a
-- sidecar never outlives its file.
local function orphan_sidecars(dir)
  local orphans = {}
  for _, type_ in ipairs(repo.TYPES) do
    local subdir = dir .. "/" .. type_
    if lfs.attributes(subdir, "mode") == "directory" then
      for file in lfs.dir(subdir) do
        local base = file:match("^(.+%.sql%.gz)%.sha256$") or file:match("^(.+%.sql%.gz)%.json$")
          or file:match("^(.+%.sql%.gz%.enc)%.sha256$") or file:match("^(.+%.sql%.gz%.enc)%.json$")
        if base and not lfs.attributes(subdir .. "/" .. base, "mode") then
          orphans[#orphans + 1] = subdir .. "/" .. file
        end
      end
    end
  end
  return orphans
end

-- Returns the number of backups removed (or that would be), and a list of errors.
function rotation.run(dir, cfg, opts)
  opts = opts or {}
  local say = opts.say or print
  local backups = repo.scan(dir, { globals = true })
  for _, backup in ipairs(backups) do backup.verified = repo.verified(backup) end
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
        repo.log(dir, { recipe = "rotate", database = backup.database, file = backup.type .. "/" .. backup.file,
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
  local stale = repo.temporaries(dir)
  for _, path in ipairs(stale) do
    if opts.dry_run or os.remove(path) then say(string.format("%s temporary file %s of an interrupted run", verb, path)) end
  end
  return #remove + #orphans + #stale, errors
end

return rotation
