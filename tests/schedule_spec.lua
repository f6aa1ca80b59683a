-- bkr schedule install|show|remove: the schedule as systemd units, cron lines and Windows
-- Task Scheduler files. Checked with independent tools: systemd-analyze (verify, calendar),
-- croniter and /bin/sh (tests/support/schedule_check.py reads the lines as cron does), xmllint
-- and python3's ElementTree, and tree-sitter-powershell (tests/support/ps_parse.js).
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local bkr = util.bkr_bin()

local SOURCE = os.getenv("BKR_SOURCE_DIR") or "."
local CHECK = SOURCE .. "/tests/support/schedule_check.py"
local PS_PARSE = SOURCE .. "/tests/support/ps_parse.js"
-- Debian's python3, which has python3-croniter (a python3 earlier on the PATH may not)
local PYTHON = "/usr/bin/python3"

local function run(args, env)
  return util.sh((env or "") .. " " .. q(bkr) .. " " .. args .. " 2>&1")
end

-- The binary under test as /proc/self/exe names it: what the jobs run by default.
local BKR_REAL = (util.sh("realpath " .. q(bkr)):gsub("%s+$", ""))

local function check(kind, ...)
  local words = { PYTHON, q(CHECK), kind }
  for _, arg in ipairs({ ... }) do words[#words + 1] = q(arg) end
  local out, rc = util.sh(table.concat(words, " ") .. " 2>&1")
  assert(rc == 0, out)
  return json.decode(out)
end

-- A Lua value as Lua source (configurations with strings YAML would make hard to read).
local function lua_source(value)
  if type(value) == "table" then
    local parts = {}
    for i, v in ipairs(value) do parts[i] = lua_source(v) end
    for k, v in pairs(value) do
      if math.type(k) ~= "integer" then parts[#parts + 1] = "[" .. string.format("%q", k) .. "] = " .. lua_source(v) end
    end
    return "{ " .. table.concat(parts, ", ") .. " }"
  end
  if type(value) == "string" then return string.format("%q", value) end
  return tostring(value)
end

local function lua_config(dir, value)
  local path = dir .. "/bkr.lua"
  util.write(path, "return " .. lua_source(value) .. "\n")
  return path
end

local function yaml_config(dir, text)
  local path = dir .. "/bkr.yaml"
  util.write(path, text)
  return path
end

-- Every entry below dir with its type, mode, size, mtime (ns) and content digest.
local function listing(dir)
  return (util.sh("cd " .. q(dir) .. " && find . -mindepth 1 -printf '%p %y %m %s %T@ %l\\n' | sort && "
    .. "find . -type f -exec sha256sum {} + | sort"))
end

local function files_in(dir)
  return util.listdir(dir)
end

-- The sections of `show`'s output: { [path] = content } and the summary before them.
local function show_sections(out)
  local sections, order = {}, {}
  local summary_end = out:find("\n==> ", 1, true)
  local summary = summary_end and out:sub(1, summary_end) or out
  local pos = summary_end
  while pos do
    local path, body_start = out:match("^\n==> (.-) <==\n()", pos)
    local next_pos = out:find("\n==> ", body_start, true)
    sections[path] = out:sub(body_start, next_pos and next_pos - 1 or #out)
    order[#order + 1] = path
    pos = next_pos
  end
  return sections, summary, order
end

-- A stand-in bkr that records how it was started: argv and the job's variables, as JSON.
local function fake_bkr(dir)
  local path = dir .. "/bin/bkr"
  util.sh("mkdir -p " .. q(dir .. "/bin"))
  util.write(path, "#!" .. PYTHON .. "\nimport json, os, sys\n"
    .. "json.dump({'argv': sys.argv[1:], 'job': os.environ.get('BKR_JOB'),\n"
    .. "           'recipe_path': os.environ.get('BKR_RECIPE_PATH')}, open(os.environ['FAKE_BKR_OUT'], 'w'))\n")
  util.sh("chmod 755 " .. q(path))
  return path
end

-- notify: is validated by lib/notify.lua; where that module is not in this tree yet, a
-- stand-in accepts the section as it is (the schedule only reads it).
local function notify_env()
  if io.open(SOURCE .. "/recipes/lib/notify.lua") then return "" end
  local dir = util.scratch("notify-stub")
  util.sh("mkdir -p " .. q(dir .. "/lib"))
  util.write(dir .. "/lib/notify.lua", "return setmetatable({ validate = function(value) return value end },\n"
    .. "  { __index = function() return function() end end })\n")
  return "BKR_RECIPE_PATH=" .. q(dir)
end

local NOTIFY_YAML = [[
notify:
  channels:
    - type: email
      smtp: {host: smtp.example.com, port: 587, security: starttls, user: bkr, password_env: BKR_SMTP_PASSWORD}
      from: bkr@example.com
      to: [ops@example.com, dba@example.com]
]]

-- Arguments that every layer of quoting must carry through unchanged.
local NASTY = {
  "it's \"quoted\"",
  "50% off %d %% %n",
  "$(touch /tmp/bkr-pwned) ${HOME} $HOME `id`",
  "back\\slash \\\" \\\\\" trailing\\",
  "; rm -rf / # & | > < ! * ? ~ {a,b}",
  "Grüße ‘typographic’ quotes’ ’",
  "",
  " leading and trailing spaces ",
}

local function nasty_schedule(extra)
  local run_words = { "backup" }
  for _, a in ipairs(NASTY) do run_words[#run_words + 1] = a end
  local s = {
    user = "postgres",
    randomized_delay_seconds = 600,
    jobs = {
      { name = "odd-args", run = run_words, at = "23:05", days = "daily" },
      { name = "dashes", run = { "backup", "--type", "weekly", "--", "--config", "after" }, at = "00:00",
        days = { "sun" } },
      { name = "own-config", run = { "verify", "--config=/etc/other.yaml" }, at = "12:59", days = { "sat", "wed" } },
    },
  }
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

local WEEKDAYS = { Mon = 1, Tue = 2, Wed = 3, Thu = 4, Fri = 5, Sat = 6, Sun = 7 }

-- The distinct "Day HH:MM" of a list, sorted by weekday.
local function distinct(times)
  local seen, out = {}, {}
  for _, t in ipairs(times) do
    if not seen[t] then seen[t] = true out[#out + 1] = t end
  end
  table.sort(out, function(a, b) return WEEKDAYS[a:sub(1, 3)] < WEEKDAYS[b:sub(1, 3)] end)
  return out
end

local function every(days, time)
  local out = {}
  for _, d in ipairs(days) do out[#out + 1] = d .. " " .. time end
  return out
end
local ALL_DAYS = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" }

-- systemd's own reading of an OnCalendar= value: the next 14 elapses, as "Day HH:MM".
local function calendar(spec)
  local out, rc = util.sh("TZ=UTC systemd-analyze calendar --iterations=14 --base-time='2025-01-06 00:00:00 UTC' "
    .. q(spec) .. " 2>&1")
  assert(rc == 0, out)
  local times = {}
  for day, hm in out:gmatch("(%a%a%a) %d+%-%d+%-%d+ (%d%d:%d%d):%d%d UTC") do times[#times + 1] = day .. " " .. hm end
  assert.are.equal(14, #times, out)
  return distinct(times)
end

local function verify_units(dir)
  local out, rc = util.sh("cd " .. q(dir) .. " && systemd-analyze verify --man=no --recursive-errors=no "
    .. "*.service *.timer 2>&1")
  return out, rc
end

-- ------------------------------------------------------------------ the schedule

describe("bkr schedule show", function()
  it("says when the default applies: daily backups Mon-Sat 01:30, weekly on Sunday 02:00, a drill Monday 04:00, "
    .. "a verify every day at 05:00", function()
    local dir = util.scratch("sched")
    local cfg = yaml_config(dir, "repository: " .. dir .. "/repo\n")
    local out, rc = run("schedule show --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local _, summary = show_sections(out)
    assert.matches("schedule: the default (the configuration has no schedule.jobs)", summary, 1, true)
    assert.matches("backup%-daily%s+Mon%.%.Sat at 01:30%s+backup %-%-type daily", summary)
    assert.matches("backup%-weekly%s+Sun at 02:00%s+backup %-%-type weekly", summary)
    assert.matches("drill%-weekly%s+Mon at 04:00%s+drill", summary)
    -- (without it, nothing the schedule writes would ever count as verified: bkr check warns)
    assert.matches("verify%-daily%s+daily at 05:00%s+verify %-%-latest", summary)
    assert.is_nil(summary:find("config-backup", 1, true))
    assert.matches("jobs run as postgres with " .. BKR_REAL .. " --config " .. cfg, summary, 1, true)
  end)

  it("adds a daily config backup at 01:15 to the default when config_backup.files is set", function()
    local dir = util.scratch("sched")
    local cfg = yaml_config(dir, "repository: " .. dir .. "/repo\nconfig_backup:\n  files: [/etc/bkr/bkr.yaml]\n")
    local out, rc = run("schedule show --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("config%-backup%s+daily at 01:15%s+config backup", out)
    local sections = show_sections(out)
    local service = sections["/etc/systemd/system/bkr-config-backup.service"]
    assert.matches('ExecStart="' .. BKR_REAL .. '" "config" "backup" "--config" "' .. cfg .. '"', service, 1, true)
  end)

  it("adds the off-site sync at 05:30 and its rotation at 06:00 when offsite is set; the repository may be "
    .. "a bucket", function()
    local dir = util.scratch("sched")
    local cfg = yaml_config(dir, "repository: s3://bkr-test/site1\noffsite: s3://bkr-test/site1-offsite\n")
    local out, rc = run("schedule show --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("sync%-daily%s+daily at 05:30%s+sync\n", out)
    assert.matches("rotate%-offsite%s+daily at 06:00%s+rotate %-%-repo s3://bkr%-test/site1%-offsite", out)
    local sections = show_sections(out)
    local service = sections["/etc/systemd/system/bkr-rotate-offsite.service"]
    assert.matches('ExecStart="' .. BKR_REAL .. '" "rotate" "--repo" "s3://bkr-test/site1-offsite" "--config" "'
      .. cfg .. '"', service, 1, true)
    -- without offsite, neither
    cfg = yaml_config(util.scratch("sched"), "repository: " .. dir .. "/repo\n")
    out = run("schedule show --config " .. q(cfg))
    assert.is_nil(out:find("sync-daily", 1, true))
    assert.is_nil(out:find("rotate-offsite", 1, true))
  end)

  it("prints exactly the files install writes, under the names it writes them", function()
    local dir = util.scratch("sched")
    local cfg = lua_config(dir, { schedule = nasty_schedule() })
    for _, platform in ipairs({ "--systemd", "--cron", "--windows" }) do
      local target = util.scratch("mnt") .. "/c"
      util.sh("mkdir -p " .. q(target))
      local extra = platform == "--windows" and " --windows-dir 'C:\\bkr'" or ""
      local out, rc = run("schedule show " .. platform .. " --dir " .. q(target) .. " --config " .. q(cfg) .. extra)
      assert.are.equal(0, rc, out)
      local sections, _, order = show_sections(out)
      out, rc = run("schedule install " .. platform .. " --dir " .. q(target) .. " --config " .. q(cfg) .. extra)
      assert.are.equal(0, rc, out)
      local names = {}
      for _, path in ipairs(order) do
        assert.are.equal(sections[path], util.read(path), path)
        names[#names + 1] = path:match("[^/]+$")
      end
      table.sort(names)
      assert.are.same(names, files_in(target))
    end
  end)
end)

describe("bkr schedule configuration", function()
  it("accepts the commented schedule and config_backup sections of docs/bkr.example.yaml", function()
    local lines, on = {}, false
    for line in (util.read(SOURCE .. "/docs/bkr.example.yaml") .. "\n"):gmatch("([^\n]*)\n") do
      if line == "# schedule:" or line == "# config_backup:" then on = true end
      if on and line:match("^# ") then
        lines[#lines + 1] = line:sub(3)
      elseif on then
        on = false
      elseif not line:match("^#") then
        lines[#lines + 1] = line
      end
    end
    local dir = util.scratch("sched")
    local cfg = yaml_config(dir, table.concat(lines, "\n") .. "\n")
    local out, rc = run("schedule show --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("schedule: schedule.jobs of", out, 1, true)
    assert.matches("drill%-weekly%s+Mon at 04:00%s+drill", out)
  end)

  local function refused(schedule_yaml, key, message)
    local dir = util.scratch("sched")
    local cfg = yaml_config(dir, schedule_yaml)
    local out, rc = run("schedule install --dir " .. q(dir .. "/units") .. " --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches("configuration: " .. key .. ": " .. message, out, 1, true)
    assert.is_nil(io.open(dir .. "/units"), "nothing may be written")
  end

  it("refuses job names that could escape a file name or break a line, at load (exit 2, key named)", function()
    for _, name in ipairs({ '"a b"', '"../etc/x"', "\"it's\"", '"a\\nb"', '"Backup"', '"-x"', '""', '"x/y"',
      '"' .. ("a"):rep(65) .. '"', "7" }) do
      refused("schedule: {jobs: [{name: " .. name .. ", run: [backup], at: '01:00'}]}",
        "schedule.jobs[1].name", "expected a name of lower-case letters")
    end
  end)

  it("refuses a recipe that is no plain name, arguments that are no strings or hold control characters", function()
    refused("schedule: {jobs: [{name: a, run: [../backup], at: '01:00'}]}", "schedule.jobs[1].run[1]", "expected a recipe name")
    refused("schedule: {jobs: [{name: a, run: ['backup; rm'], at: '01:00'}]}", "schedule.jobs[1].run[1]", "expected a recipe name")
    refused("schedule: {jobs: [{name: a, run: [run, /tmp/x.lua], at: '01:00'}]}", "schedule.jobs[1].run[1]", "'run' runs a Lua file")
    refused("schedule: {jobs: [{name: a, run: 'backup --type daily', at: '01:00'}]}", "schedule.jobs[1].run", "expected a list")
    refused("schedule: {jobs: [{name: a, run: [backup, 7], at: '01:00'}]}", "schedule.jobs[1].run[2]", "expected a string")
    refused("schedule: {jobs: [{name: a, run: [backup, \"a\\nb\"], at: '01:00'}]}", "schedule.jobs[1].run[2]",
      "control characters and invalid UTF-8 cannot be scheduled")
  end)

  it("refuses times, days, users and paths it cannot put in every scheduler", function()
    refused("schedule: {jobs: [{name: a, run: [backup], at: '24:00'}]}", "schedule.jobs[1].at", "expected a time of day HH:MM")
    refused("schedule: {jobs: [{name: a, run: [backup], at: '1:30'}]}", "schedule.jobs[1].at", "expected a time of day HH:MM")
    refused("schedule: {jobs: [{name: a, run: [backup]}]}", "schedule.jobs[1].at", "required")
    refused("schedule: {jobs: [{name: a, run: [backup], at: '01:00', days: [mon, funday]}]}", "schedule.jobs[1].days",
      "expected daily or a list of days")
    refused("schedule: {jobs: [{name: a, run: [backup], at: '01:00'}, {name: a, run: [drill], at: '02:00'}]}",
      "schedule.jobs[2].name", "the same name as schedule.jobs[1]")
    refused("schedule: {jobs: []}", "schedule.jobs", "expected at least one job")
    refused("schedule: {user: 'root; rm'}", "schedule.user", "expected a user name")
    refused("schedule: {environment_file: etc/bkr.env}", "schedule.environment_file", "expected an absolute path")
    refused("schedule: {environment_file: '/etc/bkr env'}", "schedule.environment_file", "expected an absolute path")
    refused("schedule: {recipe_path: ['/a:/b']}", "schedule.recipe_path[1]", "expected an absolute path")
    refused("schedule: {windows: {distribution: 'Debian 12'}}", "schedule.windows.distribution", "expected a WSL distribution name")
    refused("schedule: {randomized_delay_seconds: -1}", "schedule.randomized_delay_seconds", "expected an integer")
    refused("schedule: {jobs: [{name: a, run: [backup], at: '01:00', when: daily}]}", "schedule.jobs[1].when", "unknown key")
    refused("schedule: [a, b]", "schedule", "expected a mapping")
  end)
end)

-- ------------------------------------------------------------------ systemd

describe("bkr schedule --systemd", function()
  it("writes units systemd-analyze verify accepts: the user, the environment file, BKR_JOB, the calendar", function()
    local dir = util.scratch("sched")
    local units = dir .. "/units"
    local cfg = yaml_config(dir, "repository: " .. dir .. "/repo\nschedule:\n  user: postgres\n"
      .. "  environment_file: /etc/bkr/bkr.env\n  randomized_delay_seconds: 600\n  jobs:\n"
      .. "    - {name: backup-daily, run: [backup, --type, daily], at: '01:30', days: [mon, tue, wed, thu, fri, sat]}\n"
      .. "    - {name: drill-weekly, run: [drill], at: '04:00', days: [mon]}\n"
      .. "    - {name: nightly, run: [verify], at: '23:59', days: daily}\n")
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(0, rc, out)
    -- with --dir nothing is activated: the commands are printed
    assert.matches("systemctl daemon-reload", out, 1, true)
    assert.matches("systemctl enable --now bkr-backup-daily.timer bkr-drill-weekly.timer bkr-nightly.timer", out, 1, true)
    assert.are.same({ "bkr-backup-daily.service", "bkr-backup-daily.timer", "bkr-drill-weekly.service",
      "bkr-drill-weekly.timer", "bkr-nightly.service", "bkr-nightly.timer" }, files_in(units))
    local vout, vrc = verify_units(units)
    assert.are.equal(0, vrc, vout)
    assert.are.equal("", vout)
    assert.are.equal("644", (util.sh("stat -c %a " .. q(units .. "/bkr-nightly.timer")):gsub("%s+$", "")))

    local service = check("unit", units .. "/bkr-backup-daily.service")
    assert.are.same({ BKR_REAL, "backup", "--type", "daily", "--config", cfg }, service.exec)
    assert.are.same({ BKR_JOB = "backup-daily" }, service.environment)
    assert.are.same({ "postgres" }, service.settings.User)
    assert.are.same({ "oneshot" }, service.settings.Type)
    assert.are.same({ "-/etc/bkr/bkr.env" }, service.settings.EnvironmentFile)
    assert.are.same({ "yes" }, service.settings.NoNewPrivileges)
    assert.are.same({ "yes" }, service.settings.PrivateTmp)
    assert.are.same({ "full" }, service.settings.ProtectSystem)
    assert.is_nil(service.settings.OnFailure) -- no notify: section, nobody to tell

    local expected = {
      ["backup-daily"] = every({ "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }, "01:30"),
      ["drill-weekly"] = { "Mon 04:00" },
      nightly = every(ALL_DAYS, "23:59"),
    }
    for job, times in pairs(expected) do
      local timer = check("unit", units .. "/bkr-" .. job .. ".timer")
      assert.are.same(times, calendar(timer.settings.OnCalendar[1]), job)
      assert.are.same({ "true" }, timer.settings.Persistent)
      assert.are.same({ "600" }, timer.settings.RandomizedDelaySec)
      assert.are.same({ "timers.target" }, timer.settings.WantedBy)
    end
  end)

  it("carries quotes, %, $, backslashes and spaces through ExecStart exactly, as systemd reads them back", function()
    local dir = util.scratch("sched")
    local units = dir .. "/units"
    -- the configuration and the binary in directories with awkward names too
    local cfg_dir = dir .. "/conf 'q' 100% $x \\ \"d\""
    util.sh("mkdir -p " .. q(cfg_dir))
    local cfg = lua_config(cfg_dir, { schedule = nasty_schedule({ recipe_path = { "/etc/bkr/recipes", "/opt/bkr" } }) })
    local bin_dir = dir .. "/bin 100% $HOME"
    util.sh("mkdir -p " .. q(bin_dir) .. " && ln -s " .. q(BKR_REAL) .. " " .. q(bin_dir .. "/bkr"))
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units) .. " --bkr " .. q(bin_dir .. "/bkr"))
    assert.are.equal(0, rc, out)
    local vout, vrc = verify_units(units)
    assert.are.equal(0, vrc, vout)
    assert.are.equal("", vout)

    local expected_args = { bin_dir .. "/bkr", "backup" }
    for _, a in ipairs(NASTY) do expected_args[#expected_args + 1] = a end
    expected_args[#expected_args + 1] = "--config"
    expected_args[#expected_args + 1] = cfg
    local service = check("unit", units .. "/bkr-odd-args.service")
    assert.is_nil(service.error)
    assert.are.same(expected_args, service.exec)
    assert.are.same({ BKR_JOB = "odd-args", BKR_RECIPE_PATH = "/etc/bkr/recipes:/opt/bkr" }, service.environment)
    -- --config goes before a "--", and not at all when the job names its own
    assert.are.same({ bin_dir .. "/bkr", "backup", "--type", "weekly", "--config", cfg, "--", "--config", "after" },
      check("unit", units .. "/bkr-dashes.service").exec)
    assert.are.same({ bin_dir .. "/bkr", "verify", "--config=/etc/other.yaml" }, check("unit", units .. "/bkr-own-config.service").exec)
  end)

  it("refuses a bkr path systemd would not run (a quote or backslash in it), exit 2", function()
    local dir = util.scratch("sched")
    local bin_dir = dir .. "/it's"
    util.sh("mkdir -p " .. q(bin_dir) .. " && ln -s " .. q(BKR_REAL) .. " " .. q(bin_dir .. "/bkr"))
    local cfg = yaml_config(dir, "repository: /tmp\n")
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(dir .. "/units") .. " --bkr " .. q(bin_dir .. "/bkr"))
    assert.are.equal(2, rc, out)
    assert.matches("systemd refuses a program path with a quote or a backslash", out, 1, true)
    assert.is_nil(io.open(dir .. "/units"))
  end)

  it("with a notify: section, each service has OnFailure=bkr-notify@%n.service, which runs bkr notify --unit %i", function()
    local dir = util.scratch("sched")
    local units = dir .. "/units"
    local cfg = yaml_config(dir, "repository: " .. dir .. "/repo\n" .. NOTIFY_YAML)
    local env = notify_env()
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units), env)
    assert.are.equal(0, rc, out)
    assert.are.same({ "bkr-backup-daily.service", "bkr-backup-daily.timer", "bkr-backup-weekly.service",
      "bkr-backup-weekly.timer", "bkr-drill-weekly.service", "bkr-drill-weekly.timer", "bkr-notify@.service",
      "bkr-verify-daily.service", "bkr-verify-daily.timer" },
      files_in(units))
    local vout, vrc = verify_units(units)
    assert.are.equal(0, vrc, vout)
    assert.are.equal("", vout)
    assert.are.same({ "bkr-notify@%n.service" }, check("unit", units .. "/bkr-backup-daily.service").settings.OnFailure)
    local template = util.read(units .. "/bkr-notify@.service")
    assert.matches('\nExecStart="' .. BKR_REAL .. '" "notify" "--unit" "%i" "--config" "' .. cfg .. '"\n', template, 1, true)
    assert.matches("\nUser=postgres\n", template, 1, true)
    -- an instance of the template verifies too, as OnFailure= starts it
    local iout, irc = util.sh("cd " .. q(units) .. " && systemd-analyze verify --man=no --recursive-errors=no "
      .. "'bkr-notify@bkr-backup-daily.service.service' 2>&1")
    assert.are.equal(0, irc, iout)
  end)

  it("installs twice to the same bytes and mtimes, and rewrites only what a changed schedule changes", function()
    local dir = util.scratch("sched")
    local units = dir .. "/units"
    local cfg = yaml_config(dir, "repository: /tmp\nschedule:\n  jobs:\n"
      .. "    - {name: a, run: [backup], at: '01:00'}\n    - {name: b, run: [drill], at: '02:00'}\n")
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(0, rc, out)
    local first = listing(units)
    util.sh("sleep 1.1")
    out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(0, rc, out)
    assert.are.equal(first, listing(units))
    assert.matches("(0 written, 4 unchanged)", out, 1, true)
    assert.is_nil(out:find("daemon-reload", 1, true)) -- nothing new for systemd to read

    util.write(cfg, "repository: /tmp\nschedule:\n  jobs:\n"
      .. "    - {name: a, run: [backup], at: '01:00'}\n    - {name: b, run: [drill], at: '03:00'}\n")
    out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(0, rc, out)
    assert.matches("(1 written, 3 unchanged)", out, 1, true)
    assert.matches("wrote " .. units .. "/bkr-b.timer", out, 1, true)
  end)

  it("install then remove leaves the directory exactly as it was, unrelated files included", function()
    local dir = util.scratch("sched")
    local units = dir .. "/units"
    util.sh("mkdir -p " .. q(units) .. " && echo '[Unit]' > " .. q(units .. "/other.service")
      .. " && echo 'mine' > " .. q(units .. "/bkr-notes.txt") .. " && ln -s other.service " .. q(units .. "/alias.service"))
    local cfg = yaml_config(dir, "repository: /tmp\n" .. NOTIFY_YAML)
    local env = notify_env()
    local before = listing(units)
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units), env)
    assert.are.equal(0, rc, out)
    assert.are_not.equal(before, listing(units))
    out, rc = run("schedule remove --config " .. q(cfg) .. " --dir " .. q(units), env)
    assert.are.equal(0, rc, out)
    assert.matches("removed " .. units .. "/bkr-notify@.service", out, 1, true)
    assert.matches("systemctl disable --now bkr-backup-daily.timer bkr-backup-weekly.timer bkr-drill-weekly.timer", out, 1, true)
    assert.are.equal(before, listing(units))
    -- and again: nothing left to remove, still fine
    out, rc = run("schedule remove --config " .. q(cfg) .. " --dir " .. q(units), env)
    assert.are.equal(0, rc, out)
    assert.matches("schedule removed: 0 files", out, 1, true)
    assert.are.equal(before, listing(units))
  end)

  it("never writes through a symlink at a unit's name: exit 1, the symlink and its target untouched, nothing written", function()
    local dir = util.scratch("sched")
    local units = dir .. "/units"
    util.sh("mkdir -p " .. q(units) .. " && echo precious > " .. q(dir .. "/target") .. " && ln -s ../target "
      .. q(units .. "/bkr-backup-weekly.timer"))
    local cfg = yaml_config(dir, "repository: /tmp\n")
    local before = listing(units)
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(1, rc, out)
    assert.matches(units .. "/bkr-backup-weekly.timer is a symlink: bkr never writes through one", out, 1, true)
    assert.matches("nothing written", out, 1, true)
    assert.are.equal(before, listing(units))
    assert.are.equal("precious\n", util.read(dir .. "/target"))
    -- remove leaves it too, and says so
    out, rc = run("schedule remove --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(0, rc, out)
    assert.matches("bkr-backup-weekly.timer is a symlink, not a file bkr wrote: left alone", out, 1, true)
    assert.are.equal(before, listing(units))
  end)

  it("never overwrites or removes a file bkr did not write at a unit's name: exit 1, naming it", function()
    local dir = util.scratch("sched")
    local units = dir .. "/units"
    util.sh("mkdir -p " .. q(units))
    util.write(units .. "/bkr-drill-weekly.service", "[Service]\nExecStart=/usr/local/bin/my-drill\n")
    local cfg = yaml_config(dir, "repository: /tmp\n")
    local before = listing(units)
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(1, rc, out)
    assert.matches(units .. "/bkr-drill-weekly.service exists and was not written by bkr", out, 1, true)
    assert.are.equal(before, listing(units))
    out, rc = run("schedule remove --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(0, rc, out)
    assert.matches(units .. "/bkr-drill-weekly.service was not written by bkr", out, 1, true)
    assert.are.equal(before, listing(units))
    -- a file that only quotes the marker further down is not bkr's either
    util.write(units .. "/bkr-drill-weekly.service", ("#\n"):rep(400) .. "# Generated by bkr schedule install; edits are overwritten.\n")
    out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(1, rc, out)
  end)

  it("reports, and leaves, units bkr wrote for a job the schedule no longer has", function()
    local dir = util.scratch("sched")
    local units = dir .. "/units"
    local cfg = yaml_config(dir, "repository: /tmp\nschedule:\n  jobs:\n"
      .. "    - {name: a, run: [backup], at: '01:00'}\n    - {name: old, run: [drill], at: '02:00'}\n")
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(0, rc, out)
    util.write(cfg, "repository: /tmp\nschedule:\n  jobs:\n    - {name: a, run: [backup], at: '01:00'}\n")
    out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(0, rc, out)
    assert.matches(units .. "/bkr-old.timer was written by bkr but is not part of this schedule", out, 1, true)
    out, rc = run("schedule remove --config " .. q(cfg) .. " --dir " .. q(units))
    assert.are.equal(0, rc, out)
    assert.matches(units .. "/bkr-old.service was written by bkr but is not part of this schedule", out, 1, true)
    assert.are.same({ "bkr-old.service", "bkr-old.timer" }, files_in(units))
  end)

  it("fails with exit 1 when it cannot write the directory", function()
    local dir = util.scratch("sched")
    local cfg = yaml_config(dir, "repository: /tmp\n")
    util.write(dir .. "/file", "x")
    local out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(dir .. "/file/units"))
    assert.are.equal(1, rc, out)
    out, rc = run("schedule install --config " .. q(cfg) .. " --dir " .. q(dir .. "/missing/parent/units"))
    assert.are.equal(1, rc, out)
    assert.is_nil(io.open(dir .. "/missing"))
  end)
end)

-- ------------------------------------------------------------------ cron

describe("bkr schedule --cron", function()
  it("writes lines cron parses at the configured times, each running the absolute bkr with exactly its arguments", function()
    local dir = util.scratch("sched")
    local cfg_dir = dir .. "/conf 'q' 100% $x \\ \"d\""
    util.sh("mkdir -p " .. q(cfg_dir))
    local cfg = lua_config(cfg_dir, { schedule = nasty_schedule({ recipe_path = { "/etc/bkr/recipes" } }) })
    local fake = fake_bkr(dir)
    local target = dir .. "/cron.d"
    local out, rc = run("schedule install --cron --config " .. q(cfg) .. " --dir " .. q(target) .. " --bkr " .. q(fake))
    assert.are.equal(0, rc, out)
    assert.matches("cron has no random delay", out, 1, true)
    assert.are.same({ "bkr" }, files_in(target))
    assert.are.equal("644", (util.sh("stat -c %a " .. q(target .. "/bkr")):gsub("%s+$", "")))

    local entries = check("cron", target .. "/bkr", "2025-01-06T00:00", "--user")
    local expected_times = {
      ["odd-args"] = every(ALL_DAYS, "23:05"),
      dashes = { "Sun 00:00" },
      ["own-config"] = { "Wed 12:59", "Sat 12:59" },
    }
    local expected_argv = { ["odd-args"] = { "backup" } }
    for _, a in ipairs(NASTY) do table.insert(expected_argv["odd-args"], a) end
    table.insert(expected_argv["odd-args"], "--config")
    table.insert(expected_argv["odd-args"], cfg)
    expected_argv.dashes = { "backup", "--type", "weekly", "--config", cfg, "--", "--config", "after" }
    expected_argv["own-config"] = { "verify", "--config=/etc/other.yaml" }

    local seen = {}
    for _, entry in ipairs(entries) do
      assert.is_nil(entry.error, entry.error)
      if not entry.variable then
        assert.are.equal("postgres", entry.user)
        assert.is_nil(entry.stdin, "an unescaped % would cut the command here")
        -- the command starts with the job's variables, then the absolute path of bkr
        local job = entry.command:match("^BKR_JOB='([%w_-]+)' BKR_RECIPE_PATH='/etc/bkr/recipes' '" .. fake:gsub("%p", "%%%0") .. "' ")
        assert.is_truthy(job, entry.command)
        seen[job] = true
        assert.are.same(expected_times[job], distinct(entry.next), job)
        -- run it as cron does (/bin/sh -c), with the stand-in bkr recording what it got
        local record = dir .. "/run-" .. job .. ".json"
        local result = check("run-cron", "FAKE_BKR_OUT=" .. q(record) .. "; export FAKE_BKR_OUT; " .. entry.command)
        assert.are.equal(0, result.code, result.stderr)
        local got = json.decode(util.read(record))
        assert.are.same(expected_argv[job], got.argv, job)
        assert.are.equal(job, got.job)
        assert.are.equal("/etc/bkr/recipes", got.recipe_path)
      else
        assert.are.equal("SHELL=/bin/sh", entry.variable)
      end
    end
    assert.are.same({ ["odd-args"] = true, dashes = true, ["own-config"] = true }, seen)
    assert.is_nil(io.open("/tmp/bkr-pwned"))
  end)

  it("show --cron --user-crontab prints lines without the user field, for crontab -e", function()
    local dir = util.scratch("sched")
    local cfg = yaml_config(dir, "repository: /tmp\n")
    local out, rc = run("schedule show --cron --user-crontab --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    util.write(dir .. "/crontab", out)
    local entries = check("cron", dir .. "/crontab", "2025-01-06T00:00")
    assert.are.equal(4, #entries) -- the default: daily and weekly backups, a drill, a verify
    for _, entry in ipairs(entries) do
      assert.is_nil(entry.error, entry.error)
      assert.matches("^BKR_JOB='[%w-]+' '" .. BKR_REAL:gsub("%p", "%%%0") .. "' ", entry.command)
    end
    assert.are.same(every({ "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }, "01:30"), distinct(entries[1].next))
    assert.are.same({ "Sun 02:00" }, distinct(entries[2].next))
    assert.are.same({ "Mon 04:00" }, distinct(entries[3].next))
    -- the user crontab form is for show only
    out, rc = run("schedule install --cron --user-crontab --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    out, rc = run("schedule show --user-crontab --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches("--user-crontab goes with --cron", out, 1, true)
  end)

  it("install then remove leaves the directory as it was; twice gives the same bytes and mtime; a stranger's file stays", function()
    local dir = util.scratch("sched")
    local target = dir .. "/cron.d"
    util.sh("mkdir -p " .. q(target) .. " && echo '0 1 * * * root true' > " .. q(target .. "/other"))
    local cfg = yaml_config(dir, "repository: /tmp\n")
    local before = listing(target)
    local out, rc = run("schedule install --cron --config " .. q(cfg) .. " --dir " .. q(target))
    assert.are.equal(0, rc, out)
    local installed = listing(target)
    util.sh("sleep 1.1")
    out, rc = run("schedule install --cron --config " .. q(cfg) .. " --dir " .. q(target))
    assert.are.equal(0, rc, out)
    assert.are.equal(installed, listing(target))
    out, rc = run("schedule remove --cron --config " .. q(cfg) .. " --dir " .. q(target))
    assert.are.equal(0, rc, out)
    assert.are.equal(before, listing(target))
    -- someone's own /etc/cron.d/bkr is neither replaced nor removed
    util.write(target .. "/bkr", "30 2 * * * root /usr/local/bin/my-backup\n")
    local theirs = listing(target)
    out, rc = run("schedule install --cron --config " .. q(cfg) .. " --dir " .. q(target))
    assert.are.equal(1, rc, out)
    assert.matches(target .. "/bkr exists and was not written by bkr", out, 1, true)
    out, rc = run("schedule remove --cron --config " .. q(cfg) .. " --dir " .. q(target))
    assert.are.equal(0, rc, out)
    assert.are.equal(theirs, listing(target))
  end)
end)

-- ------------------------------------------------------------------ Windows

describe("bkr schedule --windows", function()
  local function node_ready()
    local _, rc = util.sh("test -d " .. q(SOURCE .. "/tests/node/node_modules/tree-sitter-powershell"))
    assert(rc == 0, "tree-sitter-powershell is not installed: run scripts/install-deps.sh (make test does)")
  end

  local function ps_parse(path)
    node_ready()
    local out, rc = util.sh("node " .. q(PS_PARSE) .. " " .. q(path) .. " 2>&1")
    assert(rc == 0, out)
    return json.decode(out)
  end

  it("writes one Task Scheduler XML file per job, well formed, with trigger, principal, settings and action", function()
    local dir = util.scratch("sched")
    local target = dir .. "/mnt/c/bkr tasks"
    util.sh("mkdir -p " .. q(dir .. "/mnt/c"))
    local cfg = lua_config(dir, { schedule = nasty_schedule() })
    -- a folder name with characters XML must escape
    local out, rc = run("schedule install --windows --config " .. q(cfg) .. " --dir " .. q(target)
      .. " --windows-dir " .. q("C:\\R&D's bkr"))
    assert.are.equal(0, rc, out)
    assert.matches('powershell.exe -ExecutionPolicy Bypass -File "C:\\R&D\'s bkr\\bkr-task.ps1" -Register', out, 1, true)
    assert.are.same({ "bkr-dashes.xml", "bkr-odd-args.xml", "bkr-own-config.xml", "bkr-task.ps1" }, files_in(target))
    local xout, xrc = util.sh("xmllint --noout " .. q(target) .. "/*.xml 2>&1")
    assert.are.equal(0, xrc, xout)
    -- the declaration says UTF-8, and the file is
    assert.matches('^<%?xml version="1.0" encoding="UTF%-8"%?>\n', util.read(target .. "/bkr-odd-args.xml"))
    local _, erc = util.sh("iconv -f UTF-8 -t UTF-8 " .. q(target .. "/bkr-odd-args.xml") .. " >/dev/null")
    assert.are.equal(0, erc)

    local expected = {
      ["odd-args"] = { start = "2024-01-01T23:05:00", days_interval = "1" },
      dashes = { start = "2024-01-01T00:00:00", days = { "Sunday" }, weeks_interval = "1" },
      ["own-config"] = { start = "2024-01-01T12:59:00", days = { "Wednesday", "Saturday" }, weeks_interval = "1" },
    }
    for job, want in pairs(expected) do
      local t = check("task", target .. "/bkr-" .. job .. ".xml")
      assert.are.equal("{http://schemas.microsoft.com/windows/2004/02/mit/task}Task", t.tag)
      assert.are.equal("1.2", t.version)
      assert.are.equal("\\bkr\\bkr-" .. job, t.uri)
      assert.are.equal(want.start, t.start)
      assert.are.equal("PT600S", t.random_delay)
      assert.are.equal(want.days_interval, t.days_interval)
      assert.are.same(want.days, t.days)
      assert.are.equal(want.weeks_interval, t.weeks_interval)
      assert.are.equal("Password", t.logon_type)
      assert.are.equal("true", t.start_when_available)
      assert.are.equal("IgnoreNew", t.multiple_instances)
      assert.are.equal("powershell.exe", t.command)
      assert.are.equal('-NoProfile -NonInteractive -ExecutionPolicy Bypass -File "C:\\R&D\'s bkr\\bkr-task.ps1" -Job ' .. job,
        t.arguments)
      assert.are.equal("C:\\R&D's bkr", t.working_directory)
    end
  end)

  it("writes bkr-task.ps1 that parses with no error and carries each job's argv exactly, in single quotes", function()
    local dir = util.scratch("sched")
    local target = dir .. "/tasks"
    local cfg_dir = dir .. "/conf 'q' 100% $x \\ \"d\""
    util.sh("mkdir -p " .. q(cfg_dir))
    local cfg = lua_config(cfg_dir, { schedule = nasty_schedule({ user = "backup", windows = { distribution = "Debian-12" } }) })
    local out, rc = run("schedule install --windows --config " .. q(cfg) .. " --dir " .. q(target) .. " --windows-dir 'D:\\bkr'")
    assert.are.equal(0, rc, out)
    local script = target .. "/bkr-task.ps1"
    local parsed = ps_parse(script)
    assert.are.same({}, parsed.errors)
    local argv = {}
    for _, entry in ipairs(parsed.hash_entries) do argv[entry.key] = entry.values end
    local odd = { "/usr/bin/env", "BKR_JOB=odd-args", BKR_REAL, "backup" }
    for _, a in ipairs(NASTY) do odd[#odd + 1] = a end
    odd[#odd + 1] = "--config"
    odd[#odd + 1] = cfg
    assert.are.same(odd, argv["odd-args"])
    assert.are.same({ "/usr/bin/env", "BKR_JOB=dashes", BKR_REAL, "backup", "--type", "weekly", "--config", cfg,
      "--", "--config", "after" }, argv.dashes)
    local text = util.read(script)
    assert.are.equal("\u{FEFF}", text:sub(1, 3)) -- Windows PowerShell reads it as UTF-8
    assert.matches("\n$Distribution = 'Debian-12'\n", text, 1, true)
    assert.matches("\n$LinuxUser = 'backup'\n", text, 1, true)
    assert.matches("'--exec'", text, 1, true) -- wsl.exe without a Linux shell
    assert.matches("\n$Mail = $null\n", text, 1, true)
  end)

  it("puts the notify: e-mail settings in the script for when WSL cannot run, never a password", function()
    local dir = util.scratch("sched")
    local target = dir .. "/tasks"
    local cfg = yaml_config(dir, "repository: /tmp\n" .. NOTIFY_YAML)
    local out, rc = run("schedule install --windows --config " .. q(cfg) .. " --dir " .. q(target)
      .. " --windows-dir 'C:\\bkr'", notify_env() .. " BKR_SMTP_PASSWORD=hunter2-secret")
    assert.are.equal(0, rc, out)
    local script = target .. "/bkr-task.ps1"
    assert.are.same({}, ps_parse(script).errors)
    local text = util.read(script)
    for _, line in ipairs({ "Host = 'smtp.example.com'", "Port = 587", "Security = 'starttls'",
      "From = 'bkr@example.com'", "To = @('ops@example.com', 'dba@example.com')", "UserName = 'bkr'",
      "PasswordVariable = 'BKR_SMTP_PASSWORD'" }) do
      assert.matches("\n    " .. line .. "\n", text, 1, true)
    end
    assert.is_nil(text:find("hunter2", 1, true))
  end)

  it("needs --dir, and --windows-dir when the directory is not under /mnt/X (exit 2, nothing written)", function()
    local dir = util.scratch("sched")
    local cfg = yaml_config(dir, "repository: /tmp\n")
    local out, rc = run("schedule install --windows --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches("--windows needs --dir DIR", out, 1, true)
    -- a folder under /mnt/X is named by its drive letter (show writes nothing)
    out, rc = run("schedule show --windows --config " .. q(cfg) .. " --dir /mnt/d/Users/Admin//bkr/")
    assert.are.equal(0, rc, out)
    assert.matches('-File &quot;D:\\Users\\Admin\\bkr\\bkr-task.ps1&quot; -Job drill-weekly</Arguments>', out, 1, true)
    out, rc = run("schedule install --windows --config " .. q(cfg) .. " --dir " .. q(dir .. "/tasks"))
    assert.are.equal(2, rc, out)
    assert.matches("is not under /mnt/X/: give --windows-dir", out, 1, true)
    out, rc = run("schedule install --windows --config " .. q(cfg) .. " --dir " .. q(dir .. "/tasks")
      .. " --windows-dir 'C:\\a \"b\"'")
    assert.are.equal(2, rc, out)
    assert.is_nil(io.open(dir .. "/tasks"))
  end)

  it("install then remove leaves the directory as it was; install twice changes nothing", function()
    local dir = util.scratch("sched")
    local target = dir .. "/tasks"
    util.sh("mkdir -p " .. q(target) .. " && echo notes > " .. q(target .. "/README.txt")
      .. " && echo '<Task/>' > " .. q(target .. "/bkr-mine.xml"))
    local cfg = yaml_config(dir, "repository: /tmp\n")
    local before = listing(target)
    local args = "--windows --config " .. q(cfg) .. " --dir " .. q(target) .. " --windows-dir 'C:\\bkr'"
    local out, rc = run("schedule install " .. args)
    assert.are.equal(0, rc, out)
    local installed = listing(target)
    util.sh("sleep 1.1")
    out, rc = run("schedule install " .. args)
    assert.are.equal(0, rc, out)
    assert.are.equal(installed, listing(target))
    out, rc = run("schedule remove " .. args)
    assert.are.equal(0, rc, out)
    assert.are.equal(before, listing(target))
  end)
end)

-- ------------------------------------------------------------------ the command line

describe("bkr schedule command line", function()
  it("has --help for schedule and each subcommand, with the exit codes", function()
    local out, rc = run("schedule --help")
    assert.are.equal(0, rc, out)
    assert.matches("^usage: bkr schedule SUBCOMMAND", out)
    assert.matches("exit codes: 0 ok, 1 failed", out)
    for _, sub in ipairs({ "install", "show", "remove" }) do
      out, rc = run("schedule " .. sub .. " --help")
      assert.are.equal(0, rc, out)
      assert.matches("^usage: bkr schedule " .. sub, out)
      assert.matches("exit codes: 0 ok, 1 failed %(.-%), 2 usage or configuration error", out)
      assert.matches("documentation: docs/schedule.md", out, 1, true)
    end
    out, rc = run("--help")
    assert.matches("schedule%s+Put the configured schedule into", out)
  end)

  it("refuses unknown subcommands, two platforms at once and unknown options (exit 2)", function()
    local dir = util.scratch("sched")
    local cfg = yaml_config(dir, "repository: /tmp\n")
    local out, rc = run("schedule")
    assert.are.equal(2, rc, out)
    out, rc = run("schedule frobnicate")
    assert.are.equal(2, rc, out)
    assert.matches("unknown subcommand 'frobnicate'", out, 1, true)
    out, rc = run("schedule show --cron --systemd --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches("give one of --systemd, --cron, --windows", out, 1, true)
    out, rc = run("schedule show --bogus")
    assert.are.equal(2, rc, out)
    out, rc = run("schedule show --bkr /nonexistent/bkr --config " .. q(cfg))
    assert.are.equal(2, rc, out)
  end)

  it("warns about a job whose recipe is nowhere on its recipe path, and about settings a platform ignores", function()
    local dir = util.scratch("sched")
    util.sh("mkdir -p " .. q(dir .. "/recipes"))
    util.write(dir .. "/recipes/export-report.lua", "-- an integrator's recipe\nreturn 0\n")
    local cfg = yaml_config(dir, "repository: /tmp\nschedule:\n  environment_file: /etc/bkr/bkr.env\n"
      .. "  recipe_path: [" .. dir .. "/recipes]\n  jobs:\n"
      .. "    - {name: report, run: [export-report, --format, csv], at: '06:00', days: [mon]}\n"
      .. "    - {name: typo, run: [bakup], at: '01:00'}\n")
    local out, rc = run("schedule show --cron --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("job typo: no recipe bakup in schedule.recipe_path or the built-in recipes", out, 1, true)
    assert.is_nil(out:find("job report:", 1, true))
    assert.matches("schedule.environment_file is read by systemd only", out, 1, true)
    assert.matches("BKR_RECIPE_PATH='" .. dir .. "/recipes' ", out, 1, true)
  end)
end)
