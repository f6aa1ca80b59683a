-- Recovery drill: restore the newest backups into scratch databases and prove them, table by table
--
-- For each database, the steps of lib/drill_steps.lua (or the configured drill.steps):
--   pick_backup -> verify_backup -> restore_scratch -> compare_tables -> smoke_queries -> measure
-- then cleanup (the scratch database is dropped even when a step failed, or after an
-- interrupt), and a report in JSON (for machines) and Markdown (for the admin and auditors).
-- Exit 0 only when every database was restored and compared, passed every step and met its
-- RTO and RPO targets; a drill that restored or compared nothing is "incomplete" (exit 1).
-- The repository may be a bucket (s3://BUCKET/PREFIX), drilled in place: the backups stream
-- from it as `bkr restore` reads them (lib/restore.lua), and the reports go into it, under
-- PREFIX/drills/, with the names and contents of a local drill's (bkr check reads them there).
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local keys = require "lib.keys"
local restore = require "lib.restore"
local steps = require "lib.drill_steps"
local json = require "lib.json"
local fs = require "bkr.fs"
local logging = require "lib.logging"
local remote = require "lib.remote"
local store = require "lib.store"

local options = cli.parse({ ... }, {
  name = "drill",
  usage = "bkr drill [--db NAME]... [--report PATH] [--repo DIR|s3://BUCKET/PREFIX] [--config FILE] [--key-file K]",
  summary = "Restore the newest backup of each database into a scratch database, compare every table\n"
    .. "with the manifest, run the smoke queries, measure RTO and RPO against the targets\n"
    .. "(drill.rto_seconds, default 3600; drill.rpo_seconds, default 86400), drop the scratch\n"
    .. "database and write PATH.json and PATH.md (default REPO/drills/drill_<UTC time>).",
  options = {
    { "--db", "NAME", "database to drill (repeatable; default: the configured ones, else every database with backups)", repeatable = true },
    { "--report", "PATH", "report path without extension (.json and .md are written)" },
    { "--repo", "REPO", "DIR|s3://BUCKET/PREFIX: a directory, or object storage drilled in place (overrides the configuration)" },
    { "--config", "FILE", "configuration file" },
    { "--key-file", "FILE", "key for encrypted backups" },
  },
  exit_codes = "0 every database passed and met its targets, 1 a step failed or a target was missed,\n"
    .. "            2 usage or configuration error, 3 a backup failed verification or a table differs",
  see = "docs/drill.md",
})
if not options then return cli.EXIT_OK end

-- ------------------------------------------------------------------ set-up

local cfg = config.load(options, { remote = true })
-- The repository must exist: a drill of a typo creates nothing and writes no report. A bucket
-- must answer: one that cannot be listed stops the drill (exit 1) before anything is done.
-- drill.repo is its name (the directory or the URL), drill.repository the way to read it.
local repository = store.open(cfg, config.repository(cfg))
local drill = { cfg = cfg, repo = repository.name, repository = repository, started = os.time() }
repository.require_backups_of(options.db)
logging.start()

-- Two drills in one second keep two reports: the second takes the stamp "-2".
drill.stamp = repo.new_stamp(drill.started, function(second)
  return repository.highest_sequence("drills", { "drill_" }, second)
end)
local settings = cfg.drill or {}
drill.targets = { rto_seconds = settings.rto_seconds or 3600, rpo_seconds = settings.rpo_seconds or 86400 }
local order = settings.steps or steps.order
for _, name in ipairs(order) do
  if type(steps[name]) ~= "function" then
    cli.usage_error("configuration: drill.steps: no step named '%s' in lib/drill_steps.lua", name)
  end
end

-- Which databases: --db, else the configured list, else every database with a backup.
local function databases()
  if options.db then return options.db end
  if cfg.databases ~= "all" then return cfg.databases end
  return repository.databases_with_backups({})
end

-- ------------------------------------------------------------------ running the steps

local function run_step(name, db)
  local t0 = bkr.monotonic()
  local ok, passed, detail = pcall(steps[name], drill, db)
  local record = { name = name, seconds = math.floor((bkr.monotonic() - t0) * 1000 + 0.5) / 1000 }
  if not ok then
    -- a step stopped by SIGINT/SIGTERM did not fail: the drill was interrupted
    record.result = (cli.kind(passed) == "interrupted" or bkr.interrupted()) and "interrupted" or "failed"
    record.detail = cli.detail(passed)
  elseif passed then
    record.result, record.detail = "passed", detail
  else
    record.result, record.detail = "failed", detail or "failed"
  end
  logging.step(name, { database = db.name, result = record.result, seconds = record.seconds, detail = record.detail })
  return record
end

-- What a passed drill must have proven about a database: nil, or what is missing.
local function unproven(db)
  local missing = {}
  if not db.restored then missing[#missing + 1] = "no step restored the backup" end
  if not db.tables then missing[#missing + 1] = "no step compared its tables with the manifest" end
  if #missing == 0 then return nil end
  return table.concat(missing, " and ") .. " (drill.steps: " .. (#order > 0 and table.concat(order, ", ") or "none") .. ")"
end

local function drill_database(name)
  local db = { name = name, started = bkr.monotonic(), steps = {} }
  -- Whatever stops this database's drill (an error, an interrupt), its scratch database goes.
  local _ <close> = setmetatable({}, { __close = function()
    if db.scratch_guard then db.scratch_guard:close() end
  end })
  local failed, interrupted = false, false
  for _, step in ipairs(order) do
    interrupted = interrupted or bkr.interrupted() ~= nil
    if failed or interrupted then
      db.steps[#db.steps + 1] = { name = step, result = "skipped" }
    else
      local record = run_step(step, db)
      db.steps[#db.steps + 1] = record
      failed = record.result ~= "passed"
      interrupted = record.result == "interrupted"
      io.stdout:write(string.format("%-8s %-16s %-16s %s\n", record.result, cli.printable(name), step,
        cli.printable(record.detail or "")))
      io.stdout:flush()
    end
  end
  local cleanup = run_step("cleanup", db)
  db.steps[#db.steps + 1] = cleanup
  if cleanup.result ~= "passed" then failed = true end
  db.result = failed and "failed" or "passed"
  if interrupted then
    -- neither a failure of the backup nor a drill that proved too little: it was stopped
    db.result = "interrupted"
    io.stdout:write(string.format("%-8s %-16s %-16s %s\n", "interrupted", cli.printable(name), "(drill)",
      "stopped by " .. (bkr.interrupted() or "a signal")))
    io.stdout:flush()
  elseif not failed then
    db.incomplete = unproven(db)
    if db.incomplete then
      db.result = "incomplete"
      io.stdout:write(string.format("%-8s %-16s %-16s %s\n", "incomplete", cli.printable(name), "(drill)", db.incomplete))
      io.stdout:flush()
    end
  end
  return db
end

-- ------------------------------------------------------------------ the report

-- A name or text in one Markdown table cell or heading: no line break, no column break.
local function md(text)
  return (cli.printable(text):gsub("|", "\\|"))
end

local function report_markdown(report)
  local lines = {
    "# Recovery drill " .. report.time, "",
    string.format("Repository `%s`, host %s, targets: RTO < %d s, RPO < %d s. **Result: %s.**",
      report.repository, report.host, report.targets.rto_seconds, report.targets.rpo_seconds, report.result:upper()),
    "",
  }
  for _, db in ipairs(report.databases) do
    lines[#lines + 1] = string.format("## %s: %s", md(db.database), db.result)
    lines[#lines + 1] = ""
    if db.incomplete then
      lines[#lines + 1] = "**Incomplete:** " .. db.incomplete .. "."
      lines[#lines + 1] = ""
    end
    lines[#lines + 1] = string.format("Backup: `%s` · %s", db.backup or "none",
      db.rto_seconds and string.format("RTO: %s s · RPO: %s s", db.rto_seconds, db.rpo_seconds)
        or "RTO and RPO: not measured (the drill of this database stopped before measure)")
    lines[#lines + 1] = ""
    lines[#lines + 1] = "| step | result | seconds | detail |"
    lines[#lines + 1] = "|------|--------|---------|--------|"
    for _, s in ipairs(db.steps) do
      lines[#lines + 1] = string.format("| %s | %s | %s | %s |", md(s.name), s.result, s.seconds or "",
        md(s.detail or ""))
    end
    if db.smoke_queries and #db.smoke_queries > 0 then
      lines[#lines + 1] = ""
      lines[#lines + 1] = "| smoke query | result | detail |"
      lines[#lines + 1] = "|-------------|--------|--------|"
      for _, query in ipairs(db.smoke_queries) do
        lines[#lines + 1] = string.format("| %s | %s | %s |", md(query.query), query.result, md(query.detail or ""))
      end
    end
    if db.tables and #db.tables > 0 then
      lines[#lines + 1] = ""
      lines[#lines + 1] = "| table | rows | matches |"
      lines[#lines + 1] = "|-------|------|---------|"
      for _, t in ipairs(db.tables) do
        lines[#lines + 1] = string.format("| %s | %s | %s |", md(t.table), t.rows or "-",
          t.ok and "yes" or md("NO: " .. (t.reason or "")))
      end
    end
    lines[#lines + 1] = ""
  end
  return table.concat(lines, "\n")
end

-- Into the bucket: PREFIX/drills/drill_<stamp>.json and .md, as in a local repository.
local function put_report(report)
  local store = repository.s3
  local relative = "drills/drill_" .. drill.stamp
  local function put()
    local ok, err = remote.put(store, relative .. ".json", json.encode(report, true) .. "\n")
    if ok then ok, err = remote.put(store, relative .. ".md", report_markdown(report)) end
    return ok, err
  end
  local ok, err = put()
  if not ok and bkr.interrupted() then
    -- the drill is over: its report is written all the same, as bkr exits (requests are no
    -- longer refused as interrupted there), and what became of it is said
    bkr.at_exit(function()
      local done, again = put()
      io.stderr:write("bkr: drill: ", done and "the report was written to " .. remote.display(store, relative)
        or "the report could not be written: " .. cli.printable(tostring(again)), "\n")
    end)
    cli.fail(cli.EXIT_FAILED, "drill: interrupted while writing the report to the bucket; writing it as bkr exits")
  end
  if not ok then cli.fail(cli.EXIT_FAILED, "drill: cannot write the report: %s", err) end
  return remote.display(store, relative)
end

local function write_report(report)
  if repository.s3 and not options.report then return put_report(report) end
  local base = options.report and options.report:gsub("%.json$", ""):gsub("%.md$", "")
    or (drill.repo .. "/drills/drill_" .. drill.stamp)
  local dir = base:match("^(.*)/[^/]+$")
  if options.report then
    if dir then fs.mkdirs(dir, nil, repo.file_options(dir)) end
  else
    repo.real_subdir(drill.repo, "drills")
  end
  local ok, err = fs.write_file(base .. ".json", json.encode(report, true) .. "\n",
    repo.file_options(base, { mode = "0644", overwrite = true }))
  if ok then
    ok, err = fs.write_file(base .. ".md", report_markdown(report), repo.file_options(base, { mode = "0644", overwrite = true }))
  end
  if not ok then cli.fail(cli.EXIT_FAILED, "drill: cannot write the report: %s", err) end
  return base
end

-- ------------------------------------------------------------------ the run

local names = databases()
if #names == 0 then cli.fail(cli.EXIT_FAILED, "drill: no databases with backups in %s", drill.repo) end
-- A backup bkr may not read stops the drill before it starts (exit 1, with the fix).
for _, name in ipairs(names) do
  local newest = repository.scan({ db = { name } })[1]
  if newest and not newest.remote then repo.require_readable(newest) end
end
-- With `databases: all`, the smoke queries' database names are checked here, against the
-- databases `all` drills (a configured list was checked when the configuration was loaded).
if cfg.databases == "all" then
  config.check_smoke_query_databases(cfg, options.db and repository.databases_with_backups({}) or names)
end
drill.run = restore.prepare(cfg, (keys.load(cfg, options)))

local report = {
  format = "bkr-drill-1", time = repo.iso_time(drill.started), repository = drill.repo,
  host = require("lib.logging").host_name() or "unknown",
  targets = drill.targets, steps = order, databases = {},
}
local integrity, failed, incomplete, interrupted = false, false, false, false
for _, name in ipairs(names) do
  local db = drill_database(name)
  interrupted = interrupted or db.result == "interrupted"
  failed = failed or db.result == "failed"
  incomplete = incomplete or db.result == "incomplete"
  integrity = integrity or db.integrity_failed
  report.databases[#report.databases + 1] = {
    database = name, result = db.result, incomplete = db.incomplete, steps = db.steps,
    backup = db.backup and (db.backup.type .. "/" .. db.backup.file),
    backup_time = db.backup and repo.iso_time(db.backup.time),
    rto_seconds = db.rto_seconds, rpo_seconds = db.rpo_seconds,
    tables = db.tables, smoke_queries = db.smoke_queries, warnings = db.warnings,
  }
end
report.seconds = os.time() - drill.started
-- A drill passes only when every database was restored and compared: one that proved
-- nothing is "incomplete", and does not exit 0.
report.result = interrupted and "interrupted" or failed and "failed" or incomplete and "incomplete" or "passed"
drill.run.conn:close()
local base = write_report(report)
-- (a bucket keeps no log: lib/logging.lua writes this to logging.file, if set, else nowhere)
repo.log(drill.repo, { step = "report", result = report.result, seconds = report.seconds, report = base .. ".json" })
print(string.format("drill %s: %s, report %s.json and %s.md", report.result, cli.plural(#names, "database", "databases"),
  base, base))
-- On stderr too: a scheduler that throws stdout away must still see a drill that did not pass.
for _, db in ipairs(report.databases) do
  if db.result == "incomplete" then
    io.stderr:write(string.format("bkr drill: %s incomplete: %s\n", db.database, db.incomplete))
  end
  for _, s in ipairs(db.steps) do
    if s.result == "failed" then
      io.stderr:write(string.format("bkr drill: %s failed at %s: %s\n", db.database, s.name, s.detail or ""))
    end
  end
end
if integrity then return cli.EXIT_INTEGRITY end
return (failed or incomplete or interrupted) and cli.EXIT_FAILED or cli.EXIT_OK
