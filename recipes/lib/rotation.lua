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
      cli.report("left alone %s/%s: %s", backup.type, cli.printable(backup.file), cli.printable(tostring(reason))) -- a warning: always shown
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

-- The same policy on a repository in object storage (lib/remote.lua), with the counts the
-- caller gives (retention for a backup repository, offsite_retention for an off-site copy;
-- opts.protect: what the running backup just wrote). Only backups with a valid manifest are counted and removed; anything
-- else under the prefix is left alone and said. A backup under Object Lock retention is kept
-- until its date (S3 would refuse the delete). The manifest goes first, so a removal cut
-- short leaves an incomplete backup, never one that looks whole. The caller holds this host's
-- lock on the prefix (remote.lock); one host writes a prefix (docs/offsite.md). Returns the number removed (or that would be) and errors.
function rotation.run_remote(store, counts, opts)
  opts = opts or {}
  local say = opts.say or function(line) cli.say("%s", line) end
  local remote = require "lib.remote"
  local entries, err, kind = remote.scan(store, { globals = true })
  if not entries then return 0, { string.format("cannot list %s: %s (%s)", store.url, err, kind) } end
  local backups = {}
  for _, backup in ipairs(entries) do
    if backup.manifest then
      backup.verified = repo.verified(backup)
      backups[#backups + 1] = backup
    else
      cli.report("left alone %s/%s: %s", backup.type, cli.printable(backup.file),
        cli.printable(tostring(backup.manifest_error)))
    end
  end
  local now = os.time()
  local remove = retention.plan(backups, counts, now, opts.protect)
  local verb = opts.dry_run and "would remove" or "removed"
  local errors, removed = {}, 0
  for _, item in ipairs(remove) do
    local backup = item.backup
    local facts = store.client:head(backup.key)
    if facts and facts.retain_until and facts.retain_until > now then
      say(string.format("kept %s/%s: under Object Lock until %s", backup.type, backup.file,
        repo.iso_time(facts.retain_until)))
    elseif opts.dry_run then
      removed = removed + 1
      say(string.format("%s %s/%s (%s)", verb, backup.type, backup.file, item.reason))
    else
      local ok, derr
      for _, key in ipairs({ backup.manifest_key, backup.key, backup.sidecar_key }) do
        ok, derr = store.client:delete(key)
        if not ok then break end
      end
      if ok then
        removed = removed + 1
        say(string.format("%s %s/%s (%s)", verb, backup.type, backup.file, item.reason))
      else
        errors[#errors + 1] = string.format("%s: %s", backup.path, derr)
      end
    end
  end
  return removed, errors
end

return rotation
