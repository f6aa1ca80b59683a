-- Apply the retention policy: keep the newest N daily, weekly, monthly backups per database
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local rotation = require "lib.rotation"
local fs = require "bkr.fs"
local logging = require "lib.logging"

local options = cli.parse({ ... }, {
  name = "rotate",
  usage = "bkr rotate [--dry-run] [--repo DIR|s3://BUCKET/PREFIX] [--config FILE]",
  summary = "Remove backups beyond the retention counts (retention.daily/weekly/monthly), each with\n"
    .. "its sidecars. The newest backup of each database that passed verification is always kept.\n"
    .. "The policy is lib/retention.lua; shadow it to change it (docs/rotation.md). The off-site\n"
    .. "copy (offsite:) is rotated by offsite_retention, and a copy under Object Lock is kept until its date.",
  options = {
    { "--dry-run", nil, "print what would be removed, remove nothing" },
    { "--repo", "DIR", "repository directory or s3://BUCKET/PREFIX (overrides the configuration)" },
    { "--config", "FILE", "configuration file" },
  },
  exit_codes = "0 done, 1 a removal failed, the repository is busy or a file in it cannot be read\n"
    .. "            (a permission problem: the fix is printed), 2 usage or configuration error (no repository at DIR)",
  see = "docs/rotation.md",
})
if not options then return cli.EXIT_OK end

local cfg = config.load(options, { remote = true })
local location = config.repository(cfg)

-- A repository in object storage: the off-site copy (offsite:) keeps offsite_retention's
-- counts, a backup repository (repository: s3://...) retention's. Locked on this host while
-- it is rotated (lib/store.lua), as a backup to it is.
local remote = require "lib.remote"
if remote.is_url(location) then
  local st = require("lib.store").open(cfg, location, { write = not options.dry_run })
  local lock <close> = st.lock
  local store = st.s3
  local offsite = cfg.offsite and remote.same(cfg.offsite, store.url)
  logging.start()
  local count, errors = rotation.run_remote(store, offsite and cfg.offsite_retention or cfg.retention,
    { dry_run = options.dry_run })
  logging.step("rotate", { repository = store.url, dry_run = options.dry_run, removed = count,
    errors = errors[1] and errors, level = errors[1] and "error" or nil })
  if count == 0 and #errors == 0 then cli.say("nothing to remove") end
  if #errors > 0 then
    io.stderr:write("bkr rotate: ", table.concat(errors, "; "), "\n")
    return cli.EXIT_FAILED
  end
  return cli.EXIT_OK
end

local dir = repo.open(location)
logging.start()
local lock <close> = (not options.dry_run) and repo.lock(dir) or nil
logging.step("lock", { level = "debug", dry_run = options.dry_run })
-- A dry run takes no lock, so it cannot tell a killed run's temporary file from a live one:
-- it lists temporaries only when no run holds the lock (and lets go of it at once).
local quiet_temporaries = false
if options.dry_run then
  local probe = fs.lock(dir .. "/.lock", repo.file_options(dir .. "/.lock"))
  if probe then probe:close() else quiet_temporaries = true end
end
local count, errors = rotation.run(dir, cfg, { dry_run = options.dry_run, skip_temporaries = quiet_temporaries })
logging.step("rotate", { dry_run = options.dry_run, removed = count, errors = errors[1] and errors, level = errors[1] and "error" or nil })
if count == 0 then cli.say("nothing to remove") end
if #errors > 0 then
  io.stderr:write("bkr rotate: ", table.concat(errors, "; "), "\n")
  return cli.EXIT_FAILED
end
return cli.EXIT_OK
