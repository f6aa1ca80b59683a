-- Monitoring check for Nagios, Icinga, Zabbix and Prometheus: are the backups fresh, verified and drilled?
--
-- The runbook (docs/check.md):
--   1. the options and the configuration            (anything wrong: UNKNOWN)
--   2. the repository: there and readable            (else UNKNOWN); a directory, or
--      s3://BUCKET/PREFIX (object storage: the same layout, read with lib/remote.lua)
--   3. which databases: --db, the configured list; with `databases: all`, those with backups
--      in the repository, and every database of the cluster when the server answers
--   4. per database: the newest backup, the newest verified one, future-dated ones, damaged
--      ones (a stat against the manifest: size, sidecar, file)
--   5. per database: its last drill, from REPO/drills/drill_*.json
--   6. the repository's free space (a directory only: object storage has none to run out of)
--   6b. with offsite: in the configuration, the off-site copy's newest backup of each database
--   7. the verdict, by the rules of lib/check.lua
--   8. one line of plugin output (or --json), --prometheus FILE for node_exporter
-- Exit codes are the monitoring plugin's, NOT bkr's usual ones: 0 OK, 1 WARNING,
-- 2 CRITICAL, 3 UNKNOWN (also for a usage or configuration error). It only reads: no lock,
-- nothing written in the repository, no log line.
local lfs = require "lfs"
local fs = require "bkr.fs"
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local json = require "lib.json"
local rules = require "lib.check"
local remote = require "lib.remote"

local SPEC = {
  name = "check",
  usage = "bkr check [--db NAME]... [--json] [--prometheus FILE] [--repo DIR|s3://BUCKET/PREFIX] [--config FILE]",
  summary = "Monitoring plugin: one line of output (BKR OK|WARNING|CRITICAL|UNKNOWN - ... | perfdata).\n"
    .. "CRITICAL: a database without a verified backup newer than drill.rpo_seconds, whose last\n"
    .. "drill failed, or with a backup that no longer matches its manifest. WARNING: the newest\n"
    .. "backup not verified yet, no drill within drill.interval_days, free space below\n"
    .. "check.min_free_percent or check.min_free_bytes; with offsite: set, an off-site copy older\n"
    .. "than drill.rpo_seconds, missing, or that cannot be listed. A repository in object storage\n"
    .. "(s3://BUCKET/PREFIX) is judged the same way, free space apart.\n"
    .. "Reads only; no server needed (with databases: all it asks the server when it answers).",
  options = {
    { "--db", "NAME", "check this database (repeatable; default: the configured ones)", repeatable = true },
    { "--json", nil, "print the same facts as one JSON object instead of the plugin line" },
    { "--prometheus", "FILE", "also write them as metrics for node_exporter's textfile collector" },
    { "--repo", "DIR", "repository directory or s3://BUCKET/PREFIX (overrides the configuration)" },
    { "--config", "FILE", "configuration file" },
  },
  exit_codes = "the monitoring plugin's, not bkr's usual ones:\n"
    .. "            0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (no verdict: a missing repository, an invalid\n"
    .. "            configuration or option, any error)",
  see = "docs/check.md",
}

-- ------------------------------------------------------------------ the facts

-- A file or directory bkr may not read is a permission problem: no verdict (UNKNOWN), with
-- the message `bkr list` gives (the file, its owner and mode, bkr's user, the fix), never
-- "no backup" or "damaged".
local function permission_unknown(path, dir)
  cli.fail(rules.UNKNOWN, "%s", cli.permission_message(path, { fix_tree = dir }))
end

-- The directory `path` listed by lfs.dir, or a failure without a Lua position in it: a
-- directory bkr may not enter is a permission problem.
local function list_directory(path, dir)
  local ok, _, kind = fs.access(path, "rx")
  if not ok and kind == "permission" then permission_unknown(path, dir) end
  local files = {}
  local listed = pcall(function() for file in lfs.dir(path) do files[#files + 1] = file end end)
  if not listed then cli.fail(rules.UNKNOWN, "%s cannot be listed", path) end
  return files
end

-- The repository must be a directory bkr can list: a missing or unreadable one is no
-- verdict at all (UNKNOWN), never "no backups" (CRITICAL for the wrong reason).
local function check_repository(dir)
  local _, _, kind = fs.owner(dir)
  if kind == "permission" then permission_unknown(dir, dir) end
  local mode = lfs.attributes(dir, "mode")
  if mode == nil then cli.fail(rules.UNKNOWN, "repository %s does not exist", dir) end
  if mode ~= "directory" then cli.fail(rules.UNKNOWN, "repository %s is not a directory", dir) end
  list_directory(dir, dir)
end

-- A backup as the output shows it.
local function backup_facts(entry, now)
  return {
    file = entry.type .. "/" .. entry.file,
    time = repo.iso_time(entry.time),
    timestamp = entry.time,
    age_seconds = math.max(0, now - entry.time),
    stored_bytes = entry.stored_bytes,
    verified = repo.verified(entry) or "never",
  }
end

-- How a backup with a valid manifest differs from what its manifest recorded, by a stat and
-- nothing more (the data is not read): { file, verified, problem = "size" (size,
-- stored_bytes), "missing_sidecar" or "missing_file" }, or nil when it is intact.
local function damage(entry)
  local found = { file = entry.type .. "/" .. entry.file, verified = repo.verified(entry) or "never" }
  if not entry.regular then
    found.problem = "missing_file"
  elseif entry.stored_bytes ~= entry.manifest.stored_bytes then
    found.problem, found.size, found.stored_bytes = "size", entry.stored_bytes, entry.manifest.stored_bytes
  elseif not entry.has_sidecar then
    found.problem = "missing_sidecar"
  else
    return nil
  end
  return found
end

-- The backups whose manifest is there but whose stored file is not (a scan finds backups by
-- their stored file, so it cannot see them). The manifest is written last, so this is never
-- a backup still being written.
local function manifests_without_file(dir)
  local entries = {}
  for _, type_ in ipairs(repo.TYPES) do
    local subdir = repo.type_dir(dir, type_)
    if subdir then
      for _, file in ipairs(list_directory(subdir, dir)) do
        local stored = file:match("^(.+)%.json$")
        if stored and repo.match_backup(stored) and not lfs.symlinkattributes(subdir .. "/" .. stored, "mode") then
          local entry = repo.entry(dir, type_, stored)
          if entry.unreadable then permission_unknown(entry.unreadable, dir) end
          if entry.manifest then entries[#entries + 1] = entry end
        end
      end
    end
  end
  return entries
end

-- Every database's backups, from one scan's entries (repo.scan's or remote.scan's) and the
-- backups known only by their manifest: { [name] = { newest, newest_verified,
-- future_backups, backups, damaged, damaged_backups } }. A file with a backup's name that is
-- not a regular file with a valid manifest is no backup (it is counted as damaged); nor is one
-- that differs from its manifest (damage(): listed in damaged_backups, CRITICAL). A
-- future-dated one is not fresh (repo.is_future): counted, never the newest.
local function tally_backups(entries, without_file, now)
  local by_name = {}
  local function database(name)
    local db = by_name[name]
    if not db then
      db = { backups = 0, future_backups = 0, damaged = 0, damaged_backups = {} }
      by_name[name] = db
    end
    return db
  end
  for _, entry in ipairs(entries) do
    local db = database(entry.database)
    local damaged = entry.regular and entry.manifest and damage(entry)
    if not entry.regular or not entry.manifest then
      db.damaged = db.damaged + 1
    elseif damaged then
      db.damaged = db.damaged + 1
      db.damaged_backups[#db.damaged_backups + 1] = damaged
    elseif entry.future then
      db.future_backups = db.future_backups + 1
    else
      db.backups = db.backups + 1
      local facts = backup_facts(entry, now)
      db.newest = db.newest or facts
      if facts.verified == "passed" then db.newest_verified = db.newest_verified or facts end
    end
  end
  for _, entry in ipairs(without_file) do
    local db = database(entry.database)
    db.damaged = db.damaged + 1
    db.damaged_backups[#db.damaged_backups + 1] = damage(entry)
  end
  return by_name
end

-- The backups of a repository directory. A backup file bkr may not read stops the check:
-- UNKNOWN, with the permission message.
local function backups_by_database(dir, now)
  local entries = repo.scan(dir, { future = true })
  for _, entry in ipairs(entries) do
    if entry.unreadable then permission_unknown(entry.unreadable, dir) end
  end
  return tally_backups(entries, manifests_without_file(dir), now)
end

-- The cluster's databases (as `bkr backup` with databases: all would take them), or nil and
-- why not. Never waits longer than check.connect_timeout_seconds.
local function server_databases(cfg, targets)
  local pg = require "bkr.pg"
  local postgres = require "lib.postgres"
  local got, conninfo = pcall(config.conninfo, cfg)
  if not got then return nil, cli.detail(conninfo) end
  conninfo.connect_timeout = targets.connect_timeout_seconds
  local conn, err = pg.connect(conninfo)
  if not conn then return nil, err end
  local ok, names = pcall(postgres.databases, conn, cfg)
  conn:close()
  if not ok then return nil, cli.detail(names) end
  return names
end

-- Which databases to judge, and where the list came from (for the output).
local function databases_to_check(options, cfg, backups, targets)
  if options.db then return options.db, "command line" end
  if cfg.databases ~= "all" then return cfg.databases, "configuration" end
  local excluded, seen, names = {}, {}, {}
  for _, name in ipairs(cfg.exclude or {}) do excluded[name] = true end
  local function add(name)
    if not seen[name] and not excluded[name] then
      seen[name] = true
      names[#names + 1] = name
    end
  end
  for name in pairs(backups) do add(name) end
  local from_server, err = server_databases(cfg, targets)
  for _, name in ipairs(from_server or {}) do add(name) end
  table.sort(names)
  if from_server then return names, "repository and server" end
  return names, "repository", err
end

-- A drill report bkr drill writes is about 200 bytes per database: this bound is far above
-- any real one, and keeps a huge file from taking the monitoring host's memory.
local MAX_DRILL_REPORT_BYTES = 8 * 1024 * 1024

-- A drill report's contents from its text, or nil and why not: not JSON (a decode failure of
-- any kind, a stack overflow on deep nesting included) or not a drill report.
local function decode_drill_report(text, where)
  local decoded, value = pcall(json.decode, text, where)
  if not decoded or value == nil then return nil, "not JSON" end
  if type(value) ~= "table" or type(value.databases) ~= "table" then return nil, "not a drill report" end
  return value
end

-- A drill report's contents, or nil and why not: a file that is too large, not JSON (a decode
-- failure of any kind, a stack overflow on deep nesting included) or not a drill report. One
-- bkr may not read stops the check (UNKNOWN, the permission message).
local function read_drill_report(path, dir)
  local text, err, kind = fs.read_file(path, { max = MAX_DRILL_REPORT_BYTES })
  if not text then
    if kind == "permission" then permission_unknown(path, dir) end
    if kind == "too_large" then return nil, string.format("larger than %d MiB", MAX_DRILL_REPORT_BYTES // 1048576) end
    return nil, cli.REASONS[kind] or err
  end
  return decode_drill_report(text, path)
end

-- The newest drill report of each database, from `reports` ({ path, time, sequence, read }:
-- read() gives the report's contents, or nil and why not), newest first by the stamp in its
-- name, read until each database has one. A report that cannot be read is named; one dated
-- in the future is not fresh and is skipped.
local function newest_drills(reports, names, now)
  table.sort(reports, repo.newer)
  local wanted, missing = {}, 0
  for _, name in ipairs(names) do
    wanted[name] = true
    missing = missing + 1
  end
  local found, unreadable = {}, {}
  for _, report in ipairs(reports) do
    if missing == 0 then break end
    if report.time <= now + repo.FUTURE_TOLERANCE then
      local value, why = report.read()
      -- bkr drill writes its start time inside and in the name: a report whose two differ was
      -- copied or edited (an old passed report under a newer name must not hide a failed drill)
      if value and value.format ~= "bkr-drill-1" then
        value, why = nil, "not a bkr-drill-1 report"
      elseif value and value.time ~= repo.iso_time(report.time) then
        value, why = nil, string.format("dated %s inside and %s by its name (copied or edited?)",
          cli.printable(tostring(value.time)), repo.iso_time(report.time))
      end
      if not value then
        unreadable[#unreadable + 1] = { path = report.path, reason = why }
      else
        for _, db in ipairs(value.databases) do
          if type(db) == "table" and wanted[db.database] and not found[db.database] then
            found[db.database] = {
              report = report.path, time = repo.iso_time(report.time), timestamp = report.time,
              age_seconds = math.max(0, now - report.time),
              result = type(db.result) == "string" and db.result or "unknown",
              rto_seconds = tonumber(db.rto_seconds), rpo_seconds = tonumber(db.rpo_seconds),
            }
            missing = missing - 1
          end
        end
      end
    end
  end
  return found, unreadable
end

-- The drill reports of a repository directory: REPO/drills/drill_<stamp>.json, regular files.
local function last_drills(dir, names, now)
  local drills_dir = dir .. "/drills"
  local reports = {}
  local mode = lfs.symlinkattributes(drills_dir, "mode")
  if mode == nil then
    local _, _, kind = fs.owner(drills_dir)
    if kind == "permission" then permission_unknown(drills_dir, dir) end
  elseif mode == "directory" then
    for _, file in ipairs(list_directory(drills_dir, dir)) do
      local stamp = file:match("^drill_(.+)%.json$")
      local time, sequence = repo.parse_stamp(stamp or "")
      local path = drills_dir .. "/" .. file
      if time and lfs.symlinkattributes(path, "mode") == "file" then
        reports[#reports + 1] = { path = path, time = time, sequence = sequence,
          read = function() return read_drill_report(path, dir) end }
      end
    end
  end
  return newest_drills(reports, names, now)
end

local function free_space(dir)
  local free, total = fs.free_space(dir)
  if not free then cli.fail(rules.UNKNOWN, "repository %s: %s", dir, tostring(total)) end
  return { free_bytes = free, total_bytes = total, free_percent = total > 0 and free * 100 / total or 0 }
end

-- ------------------------------------------------------------------ a repository in object storage

-- A bucket that cannot be listed or read (an endpoint that does not answer, a refused key) is
-- no verdict: UNKNOWN, naming the repository and the kind of failure, never "no backup".
local function bucket_unknown(store, what, err, kind)
  cli.fail(rules.UNKNOWN, "repository %s %s: %s (%s)", store.url, what, cli.printable(err), tostring(kind))
end

-- A manifest that could not be fetched says nothing about the backup (verify says the same):
-- only a missing, invalid or oversized one ("rejected") makes it damaged.
local MANIFEST_DAMAGE = { missing = true, corrupt = true, rejected = true }

local function check_manifest_read(store, entry)
  if entry.manifest_error and not MANIFEST_DAMAGE[entry.manifest_kind] then
    bucket_unknown(store, "cannot be read", entry.manifest_error, entry.manifest_kind)
  end
end

-- The backups in the bucket, as backups_by_database gives those of a directory: the sizes
-- and sidecars from the listing, the manifests fetched (nothing else is read).
local function bucket_backups(store, now)
  local entries, err, kind = remote.scan(store, { future = true })
  if not entries then bucket_unknown(store, "cannot be listed", err, kind) end
  for _, entry in ipairs(entries) do check_manifest_read(store, entry) end
  local orphans
  orphans, err, kind = remote.manifests_without_data(store)
  if not orphans then bucket_unknown(store, "cannot be listed", err, kind) end
  local without_file = {}
  for _, entry in ipairs(orphans) do
    check_manifest_read(store, entry)
    if entry.manifest then without_file[#without_file + 1] = entry end
  end
  return tally_backups(entries, without_file, now)
end

-- A drill report in the bucket, or nil and why not, as read_drill_report reads a local one:
-- a refused key is the bucket's permission problem (UNKNOWN); any other failure to fetch it
-- makes it an unreadable report, as an unreadable local file is.
local function read_bucket_drill_report(store, object)
  local relative = "drills/" .. object.name
  if (object.size or 0) > MAX_DRILL_REPORT_BYTES then
    return nil, string.format("larger than %d MiB", MAX_DRILL_REPORT_BYTES // 1048576)
  end
  local text, err, kind = remote.get(store, relative, MAX_DRILL_REPORT_BYTES)
  if not text then
    if kind == "auth" or kind == "interrupted" then bucket_unknown(store, "cannot be read", err, kind) end
    if kind == "rejected" then return nil, string.format("larger than %d MiB", MAX_DRILL_REPORT_BYTES // 1048576) end
    return nil, string.format("%s (%s)", cli.printable(err), tostring(kind))
  end
  return decode_drill_report(text, remote.display(store, relative))
end

-- The drill reports in the bucket: PREFIX/drills/drill_<stamp>.json, as bkr drill names them.
local function bucket_drills(store, names, now)
  local objects, err, kind = remote.objects(store, "drills")
  if not objects then bucket_unknown(store, "cannot be listed", err, kind) end
  local reports = {}
  for _, object in ipairs(objects) do
    local stamp = object.name:match("^drill_(.+)%.json$")
    local time, sequence = repo.parse_stamp(stamp or "")
    if time then
      reports[#reports + 1] = { path = remote.display(store, "drills/" .. object.name), time = time,
        sequence = sequence, read = function() return read_bucket_drill_report(store, object) end }
    end
  end
  return newest_drills(reports, names, now)
end

-- ------------------------------------------------------------------ the check

local known_repository = "" -- for the metrics of a check that found no verdict

-- The newest complete backup (manifest written) of each database in the off-site copy.
local function offsite_facts(cfg, names, now)
  local facts = { url = cfg.offsite, databases = {} }
  local store = remote.open(cfg, cfg.offsite)
  facts.url = store.url
  local entries, err, kind = remote.scan(store, { db = names })
  if not entries then
    facts.error = string.format("%s (%s)", err, kind)
    return facts
  end
  for _, name in ipairs(names) do
    local newest
    for _, entry in ipairs(entries) do
      if entry.database == name and entry.manifest then
        newest = entry
        break
      end
    end
    facts.databases[#facts.databases + 1] = { database = name, file = newest and (newest.type .. "/" .. newest.file),
      age_seconds = newest and math.max(0, now - newest.time) or nil }
  end
  return facts
end

-- What the repository holds: its backups, and a reader of its drill reports; and, for a
-- directory, its free space (object storage has no file system to fill: none).
local function repository_facts(cfg, now)
  local dir = config.repository(cfg)
  if remote.is_url(dir) then
    local store = remote.open(cfg, dir)
    known_repository = store.url
    return { location = store.url, remote = true, backups = bucket_backups(store, now),
      drills = function(names) return bucket_drills(store, names, now) end }
  end
  known_repository = dir
  check_repository(dir)
  return { location = dir, backups = backups_by_database(dir, now),
    drills = function(names) return last_drills(dir, names, now) end,
    space = function() return free_space(dir) end }
end

-- The thresholds as the output shows them: without the free-space ones where they do not apply.
local function shown_targets(targets, facts)
  if not facts.remote then return targets end
  local shown = {}
  for key, value in pairs(targets) do
    if key ~= "min_free_percent" and key ~= "min_free_bytes" then shown[key] = value end
  end
  return shown
end

local function run_check(options)
  local cfg = config.load(options, { notify = false, remote = true })
  local targets = rules.targets(cfg)
  local now = os.time()
  local facts = repository_facts(cfg, now)

  local backups = facts.backups
  local names, source, server_error = databases_to_check(options, cfg, backups, targets)
  local drills, unreadable = facts.drills(names)

  local result = {
    time = repo.iso_time(now), timestamp = now, repository = facts.location, targets = shown_targets(targets, facts),
    databases_from = source, server_error = server_error, databases = {},
    space = facts.space and facts.space() or nil,
  }
  local status = rules.OK
  for _, name in ipairs(names) do
    local found = backups[name] or { backups = 0, future_backups = 0, damaged = 0, damaged_backups = {} }
    local db = rules.judge_database({
      database = name, backups = found.backups, newest = found.newest, newest_verified = found.newest_verified,
      future_backups = found.future_backups, damaged = found.damaged, damaged_backups = found.damaged_backups,
      drill = drills[name],
    }, targets)
    result.databases[#result.databases + 1] = db
    status = rules.worst(status, db.status)
  end
  result.problems = rules.judge_repository({ space = result.space, databases = #names,
    unreadable_drill_reports = unreadable }, targets)
  if cfg.offsite then
    result.offsite = offsite_facts(cfg, names, now)
    for _, p in ipairs(rules.judge_offsite(result.offsite, targets)) do result.problems[#result.problems + 1] = p end
  end
  for _, p in ipairs(result.problems) do status = rules.worst(status, p.status) end
  result.status = status
  return result
end

-- ------------------------------------------------------------------ plugin output

-- Text in the one line of plugin output: no control character (a newline would end the
-- line), no '|' (it starts the performance data).
local function text(value)
  return (cli.printable(value):gsub("|", "\\x7c"))
end

-- A performance-data label: quoted, a quote doubled, no '=' (the plugin guidelines allow
-- neither in a label).
local function label(value)
  return "'" .. text(value):gsub("=", "\\x3d"):gsub("'", "''") .. "'"
end

-- A number as short as it can be written and read back the same: 0.1, not 0.10000000000000001.
local function number_text(value)
  if value == true then return "1" end
  if value == false then return "0" end
  if math.type(value) == "integer" then return tostring(value) end
  if value == math.floor(value) and math.abs(value) < 2 ^ 53 then return string.format("%d", value) end
  for digits = 6, 17 do
    local s = string.format("%." .. digits .. "g", value)
    if tonumber(s) == value then return s end
  end
  return string.format("%.17g", value)
end

local function perf(name, value, unit, warn, crit, min, max)
  if value == nil then return label(name) .. "=U" end
  local number = number_text(value)
  return string.format("%s=%s%s;%s;%s;%s;%s", label(name), number, unit or "", warn or "", crit or "", min or "",
    max or ""):gsub(";+$", "")
end

-- What is wrong, the worst first: each database's problems together ("shop: no verified
-- backup (...), last drill failed (...)"), then the repository's.
local function summary(result)
  local lines = {}
  for status = rules.CRITICAL, rules.WARNING, -1 do
    for _, db in ipairs(result.databases) do
      if db.status == status then
        local messages = {}
        for severity = rules.CRITICAL, rules.WARNING, -1 do
          for _, p in ipairs(db.problems) do
            if p.status == severity then messages[#messages + 1] = p.message end
          end
        end
        lines[#lines + 1] = text(db.database) .. ": " .. table.concat(messages, ", ")
      end
    end
  end
  for status = rules.CRITICAL, rules.WARNING, -1 do
    for _, p in ipairs(result.problems) do
      if p.status == status then lines[#lines + 1] = text(p.message) end
    end
  end
  if #lines == 0 then
    local oldest, drill = 0, nil
    for _, db in ipairs(result.databases) do
      oldest = math.max(oldest, db.newest_verified.age_seconds)
      if db.drill and (not drill or db.drill.age_seconds > drill) then drill = db.drill.age_seconds end
    end
    lines[1] = string.format("%s: verified backups %s old at most (RPO %s), drills passed, "
      .. "oldest %s ago", cli.plural(#result.databases, "database", "databases"), rules.duration(oldest),
      rules.duration(result.targets.rpo_seconds), rules.duration(drill or 0))
    if result.space then lines[1] = lines[1] .. string.format("; %d%% free", math.floor(result.space.free_percent)) end
    if result.offsite then lines[1] = lines[1] .. "; off-site copies within the RPO" end
  end
  if result.databases_from == "repository" and result.server_error then
    lines[#lines + 1] = "databases from the repository only: server not reached"
  end
  return table.concat(lines, "; ")
end

local function plugin_line(result)
  local t = result.targets
  local data = {}
  for _, db in ipairs(result.databases) do
    local name = db.database
    data[#data + 1] = perf(name .. " verified_age", db.newest_verified and db.newest_verified.age_seconds, "s", nil,
      t.rpo_seconds, 0)
    data[#data + 1] = perf(name .. " newest_age", db.newest and db.newest.age_seconds, "s", nil, nil, 0)
    data[#data + 1] = perf(name .. " newest_size", db.newest and db.newest.stored_bytes, "B", nil, nil, 0)
    data[#data + 1] = perf(name .. " drill_age", db.drill and db.drill.age_seconds, "s", t.drill_interval_seconds,
      nil, 0)
  end
  for _, db in ipairs(result.offsite and result.offsite.databases or {}) do
    data[#data + 1] = perf(db.database .. " offsite_age", db.age_seconds, "s", t.rpo_seconds, nil, 0)
  end
  local space = result.space
  if space then -- a repository in object storage has no free space to watch
    data[#data + 1] = perf("free", space.free_bytes, "B", t.min_free_bytes > 0 and (t.min_free_bytes .. ":") or nil,
      nil, 0, space.total_bytes)
    data[#data + 1] = perf("free_percent", math.floor(space.free_percent * 10) / 10, "%", t.min_free_percent .. ":",
      nil, 0, 100)
  end
  return string.format("BKR %s - %s | %s", rules.NAMES[result.status], summary(result), table.concat(data, " "))
end

-- ------------------------------------------------------------------ --json

local function json_object(result)
  local out = {
    status = rules.NAMES[result.status], exit_code = result.status, summary = summary(result),
    time = result.time, repository = result.repository, databases_from = result.databases_from,
    server_error = result.server_error, targets = result.targets, space = result.space,
    offsite = result.offsite, problems = {}, databases = {},
  }
  for _, p in ipairs(result.problems) do
    out.problems[#out.problems + 1] = { status = rules.NAMES[p.status], message = p.message }
  end
  for _, db in ipairs(result.databases) do
    local problems = {}
    for _, p in ipairs(db.problems) do problems[#problems + 1] = { status = rules.NAMES[p.status], message = p.message } end
    out.databases[#out.databases + 1] = {
      database = db.database, status = rules.NAMES[db.status], problems = problems, backups = db.backups,
      future_backups = db.future_backups, damaged = db.damaged, newest = db.newest,
      newest_verified = db.newest_verified, drill = db.drill,
    }
  end
  return out
end

-- ------------------------------------------------------------------ --prometheus

-- A label value or HELP text in the exposition format: '\', '"' and newline escaped (HELP
-- escapes no quote). Bytes that are not UTF-8 (a database name may hold any) are shown as
-- \xNN text, since the format is UTF-8.
local function exposition_escape(value, quote)
  local s = tostring(value)
  if not utf8.len(s) then
    s = s:gsub("[\128-\255]", function(c) return string.format("\\x%02x", c:byte()) end)
  end
  s = s:gsub("\\", "\\\\"):gsub("\n", "\\n")
  if quote then s = s:gsub('"', '\\"') end
  return s
end

-- The metrics, one family after another (HELP, TYPE, samples), every sample labelled with the
-- repository; a family without a sample is left out.
local function metrics_text(result)
  local lines = {}
  local repository = 'repository="' .. exposition_escape(result.repository, true) .. '"'
  local function family(name, help, samples)
    if #samples == 0 then return end
    lines[#lines + 1] = "# HELP " .. name .. " " .. exposition_escape(help)
    lines[#lines + 1] = "# TYPE " .. name .. " gauge"
    for _, sample in ipairs(samples) do
      local labels = repository
      if sample.database then labels = labels .. ',database="' .. exposition_escape(sample.database, true) .. '"' end
      lines[#lines + 1] = string.format("%s{%s} %s", name, labels, number_text(sample.value))
    end
  end
  local function per_database(get)
    local samples = {}
    for _, db in ipairs(result.databases or {}) do
      local value = get(db)
      if value ~= nil then samples[#samples + 1] = { database = db.database, value = value } end
    end
    return samples
  end
  family("bkr_check_status", "Verdict of bkr check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
    { { value = result.status } })
  family("bkr_check_timestamp_seconds", "When bkr check wrote these metrics (Unix time).",
    { { value = result.timestamp } })
  family("bkr_check_database_status", "Verdict for one database: 0 OK, 1 WARNING, 2 CRITICAL.",
    per_database(function(db) return db.status end))
  family("bkr_backup_newest_age_seconds", "Age of the newest backup, verified or not.",
    per_database(function(db) return db.newest and db.newest.age_seconds end))
  family("bkr_backup_newest_timestamp_seconds", "When the newest backup was taken (Unix time).",
    per_database(function(db) return db.newest and db.newest.timestamp end))
  family("bkr_backup_newest_size_bytes", "Stored size of the newest backup.",
    per_database(function(db) return db.newest and db.newest.stored_bytes end))
  family("bkr_backup_newest_verified", "1 when the newest backup passed bkr verify, else 0.",
    per_database(function(db) return db.newest ~= nil and db.newest.verified == "passed" end))
  family("bkr_backup_newest_verified_age_seconds", "Age of the newest backup that passed bkr verify.",
    per_database(function(db) return db.newest_verified and db.newest_verified.age_seconds end))
  family("bkr_backup_future_dated", "Backups dated in the future (clock skew), not counted as fresh.",
    per_database(function(db) return db.future_backups end))
  family("bkr_backup_rpo_target_seconds", "RPO target: how old the newest verified backup may be (drill.rpo_seconds).",
    result.targets and { { value = result.targets.rpo_seconds } } or {})
  family("bkr_drill_last_success", "1 when the last drill of the database passed, else 0.",
    per_database(function(db) return db.drill and db.drill.result == "passed" end))
  family("bkr_drill_last_age_seconds", "Age of the last drill of the database.",
    per_database(function(db) return db.drill and db.drill.age_seconds end))
  family("bkr_drill_last_rto_seconds", "RTO measured by the last drill of the database.",
    per_database(function(db) return db.drill and db.drill.rto_seconds end))
  family("bkr_drill_last_rpo_seconds", "RPO measured by the last drill of the database.",
    per_database(function(db) return db.drill and db.drill.rpo_seconds end))
  family("bkr_drill_interval_target_seconds", "How old the last drill may be (drill.interval_days).",
    result.targets and { { value = result.targets.drill_interval_seconds } } or {})
  family("bkr_repository_free_bytes", "Bytes available to bkr on the repository's file system.",
    result.space and { { value = result.space.free_bytes } } or {})
  family("bkr_repository_size_bytes", "Size of the repository's file system.",
    result.space and { { value = result.space.total_bytes } } or {})
  return table.concat(lines, "\n") .. "\n"
end

-- Atomically, readable by node_exporter's user; the temporary name (.bkr-tmp.*) does not end
-- in .prom, so the collector never reads half a file.
local function write_metrics(path, result)
  local ok, err = fs.write_file(path, metrics_text(result), { mode = "0644", overwrite = true })
  if not ok then return nil, err end
  return true
end

-- ------------------------------------------------------------------ the run

local options
local args = { ... }
local ok, result = pcall(function()
  options = cli.parse(args, SPEC)
  if not options then return nil end
  return run_check(options)
end)
if ok and result == nil then return cli.EXIT_OK end -- --help

if not ok then
  -- No verdict: UNKNOWN, whatever went wrong (a usage or configuration error included).
  local message = type(result) == "table" and result.message or tostring(result)
  result = { status = rules.UNKNOWN, timestamp = os.time(), time = repo.iso_time(os.time()), message = message,
    repository = known_repository }
end

if options and options.prometheus then
  local written, err = write_metrics(options.prometheus, result)
  if not written then
    result = { status = rules.UNKNOWN, timestamp = result.timestamp, time = result.time,
      message = "cannot write the metrics: " .. tostring(err), repository = result.repository }
  end
end

if result.message then
  if options and options.json then
    print(json.encode({ status = "UNKNOWN", exit_code = rules.UNKNOWN, summary = result.message, time = result.time }))
  else
    print("BKR UNKNOWN - " .. text(result.message))
  end
  return rules.UNKNOWN
end
if options.json then
  print(json.encode(json_object(result)))
else
  print(plugin_line(result))
end
return result.status
