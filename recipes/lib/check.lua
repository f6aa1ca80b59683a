-- The rules of `bkr check` (docs/check.md): from the facts a check gathered about each
-- database and the repository, what is OK, WARNING or CRITICAL, and why. The recipe
-- (recipes/check.lua) gathers the facts and prints them; this file decides. Shadow it
-- (BKR_RECIPE_PATH/lib/check.lua) to change a rule; the `check:` section of the
-- configuration is validated here too.
--
--   check.validate(value, path, validators)   the `check:` section
--   check.targets(cfg)                        the thresholds, defaults applied
--   check.judge_database(db, targets)         db.status and db.problems
--   check.judge_repository(facts, targets)    problems of the repository as a whole
--   check.worst(statuses...)                  the most serious of several states
local check = {}

-- The Nagios plugin states and exit codes (not bkr's usual exit codes).
check.OK, check.WARNING, check.CRITICAL, check.UNKNOWN = 0, 1, 2, 3
check.NAMES = { [0] = "OK", [1] = "WARNING", [2] = "CRITICAL", [3] = "UNKNOWN" }

check.DEFAULTS = {
  min_free_percent = 10,         -- WARNING below this share of the file system free
  min_free_bytes = 0,            -- WARNING below this many bytes free (0: no such threshold)
  connect_timeout_seconds = 5,   -- databases: all asks the server, but never waits longer
}
check.DEFAULT_RPO_SECONDS = 86400        -- drill.rpo_seconds: the drill's own default
check.DEFAULT_DRILL_INTERVAL_DAYS = 8    -- drill.interval_days: a weekly drill, a day's grace

function check.validate(value, path, v)
  return v.section{
    min_free_percent = v.integer_in(0, 100),
    min_free_bytes = v.integer_in(0),
    connect_timeout_seconds = v.integer_in(1, 300),
  }(value, path)
end

function check.targets(cfg)
  local section, drill = cfg.check or {}, cfg.drill or {}
  local targets = {
    rpo_seconds = drill.rpo_seconds or check.DEFAULT_RPO_SECONDS,
    drill_interval_seconds = (drill.interval_days or check.DEFAULT_DRILL_INTERVAL_DAYS) * 86400,
  }
  for key, default in pairs(check.DEFAULTS) do
    if section[key] ~= nil then targets[key] = section[key] else targets[key] = default end
  end
  return targets
end

function check.worst(...)
  local worst = check.OK
  for _, status in ipairs({ ... }) do
    if status > worst then worst = status end
  end
  return worst
end

-- A duration as an admin reads it: 45 s, 20 min, 30 h, 9 d.
function check.duration(seconds)
  seconds = math.max(0, math.floor(seconds))
  if seconds < 90 then return seconds .. " s" end
  if seconds < 90 * 60 then return (seconds // 60) .. " min" end
  if seconds < 48 * 3600 then return (seconds // 3600) .. " h" end
  return (seconds // 86400) .. " d"
end

local function problem(db, status, fmt, ...)
  db.problems[#db.problems + 1] = { status = status, message = string.format(fmt, ...) }
  if status > db.status then db.status = status end
end

-- A backup that no longer matches its manifest: the storage, or someone, changed it after
-- bkr wrote (and perhaps verified) it. damaged: { file, verified, problem, size, stored_bytes }.
local function damage_message(damaged)
  local since = damaged.verified == "passed" and "since it was verified" or "since it was written"
  if damaged.problem == "size" then
    return string.format("%s damaged %s: size %d, manifest says %d; run bkr verify", damaged.file, since,
      damaged.size, damaged.stored_bytes)
  elseif damaged.problem == "missing_file" then
    return string.format("%s damaged %s: the file is missing, its manifest is there; run bkr verify", damaged.file,
      since)
  end
  return string.format("%s damaged %s: its sidecar %s.sha256 is missing; run bkr verify", damaged.file, since,
    damaged.file)
end

-- One database. db: { newest, newest_verified, future_backups, damaged, damaged_backups,
-- drill } as the recipe gathered them (newest and newest_verified: { age_seconds, verified,
-- ... } or nil, never a damaged backup; damaged_backups: those that differ from their
-- manifest; drill: { age_seconds, result } or nil). Sets db.status and db.problems.
function check.judge_database(db, targets)
  db.status, db.problems = check.OK, {}
  local rpo = targets.rpo_seconds
  local newest, verified = db.newest, db.newest_verified

  -- CRITICAL: a backup changed since bkr wrote it (a stat shows it: no data is read)
  for _, damaged in ipairs(db.damaged_backups or {}) do
    problem(db, check.CRITICAL, "%s", damage_message(damaged))
  end
  -- CRITICAL: nothing to restore that is known good and recent enough
  if not newest then
    problem(db, check.CRITICAL, (db.damaged or 0) > 0 and "no intact backup" or "no backup")
  elseif not verified then
    problem(db, check.CRITICAL, "no verified backup (newest %s old, %s)", check.duration(newest.age_seconds),
      newest.verified == "never" and "not verified yet" or ("verification: " .. newest.verified))
  elseif verified.age_seconds > rpo then
    problem(db, check.CRITICAL, "newest verified backup %s old, older than the RPO target %s",
      check.duration(verified.age_seconds), check.duration(rpo))
  end
  -- the newest backup is corrupt: the storage or the dump is failing, whatever older ones say
  if newest and newest.verified == "failed" and verified then
    problem(db, check.CRITICAL, "newest backup failed verification")
  elseif newest and verified and newest.file ~= verified.file and newest.verified ~= "failed" then
    problem(db, check.WARNING, "newest backup (%s old) not verified", check.duration(newest.age_seconds))
  end
  if (db.future_backups or 0) > 0 then
    problem(db, check.WARNING, "%s dated in the future (clock skew?), not counted",
      require("lib.cli").plural(db.future_backups, "backup", "backups"))
  end

  -- the drill: a failed one is CRITICAL, a missing, late or incomplete one a WARNING
  local drill = db.drill
  if not drill then
    problem(db, check.WARNING, "no drill report")
  else
    if drill.result == "failed" then
      problem(db, check.CRITICAL, "last drill failed (%s ago)", check.duration(drill.age_seconds))
    elseif drill.result ~= "passed" then
      problem(db, check.WARNING, "last drill %s (%s ago)", tostring(drill.result), check.duration(drill.age_seconds))
    end
    if drill.age_seconds > targets.drill_interval_seconds then
      problem(db, check.WARNING, "last drill %s ago, interval %s", check.duration(drill.age_seconds),
        check.duration(targets.drill_interval_seconds))
    end
  end
  return db
end

-- The repository as a whole: free space, databases to judge at all, unreadable drill
-- reports. facts: { space = {free_bytes, total_bytes, free_percent} (nil for a repository in
-- object storage: no file system to fill), databases = n, unreadable_drill_reports =
-- { {path, reason} } }. Returns a list of { status, message }.
function check.judge_repository(facts, targets)
  local problems = {}
  local space = facts.space
  if space and space.free_percent < targets.min_free_percent then
    problems[#problems + 1] = { status = check.WARNING, message = string.format(
      "%d%% free in the repository, below %d%%", math.floor(space.free_percent), targets.min_free_percent) }
  end
  if space and targets.min_free_bytes > 0 and space.free_bytes < targets.min_free_bytes then
    problems[#problems + 1] = { status = check.WARNING, message = string.format(
      "%d bytes free in the repository, below %d", space.free_bytes, targets.min_free_bytes) }
  end
  if facts.databases == 0 then
    problems[#problems + 1] = { status = check.CRITICAL, message = "no databases to check: no backups in the repository" }
  end
  for _, report in ipairs(facts.unreadable_drill_reports or {}) do
    problems[#problems + 1] = { status = check.WARNING, message = string.format("unreadable drill report %s (%s)",
      report.path, report.reason or "unreadable") }
  end
  return problems
end

-- The off-site copy (offsite: s3://..., docs/offsite.md): each checked database must have a
-- complete copy there (its manifest written) within the RPO. facts: { url, error = message
-- when it cannot be listed, databases = { {database, age_seconds|nil, file|nil} } }. A stale
-- or missing off-site copy is a WARNING: the backups on this machine still meet the RPO, a
-- disaster that takes the machine would not.
function check.judge_offsite(facts, targets)
  local problems = {}
  if facts.error then
    problems[1] = { status = check.WARNING, message = string.format("off-site copy %s cannot be listed: %s",
      facts.url, facts.error) }
    return problems
  end
  for _, db in ipairs(facts.databases) do
    if not db.age_seconds then
      problems[#problems + 1] = { status = check.WARNING, message = string.format("%s: no off-site copy in %s",
        db.database, facts.url) }
    elseif db.age_seconds > targets.rpo_seconds then
      problems[#problems + 1] = { status = check.WARNING, message = string.format(
        "%s: newest off-site copy %s old, beyond the RPO of %s (bkr sync)", db.database,
        check.duration(db.age_seconds), check.duration(targets.rpo_seconds)) }
    end
  end
  return problems
end

return check
