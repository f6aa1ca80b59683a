-- Put the configured schedule into systemd timers, cron or Windows Task Scheduler: install, show, remove
--
-- bkr runs no daemon of its own. The schedule (schedule: in the configuration, else the
-- default of lib/schedule.lua) becomes the platform's own entries, each job a recipe
-- invocation of the installed bkr with --config and BKR_JOB=<job> (docs/schedule.md):
--   1. read the command line and the configuration; the schedule in force
--   2. the plan: platform, target directory, the bkr binary, the config file
--   3. the files: lib/schedule_systemd.lua, lib/schedule_cron.lua, lib/schedule_windows.lua
--   4. show them, install them (lib/schedule_target.lua: only bkr's own files are replaced,
--      unchanged ones are left as they are), or remove them; then tell systemd when it runs
-- Exit codes: 0 ok, 1 failed (a file in the way, cannot write, systemctl failed), 2 usage or
-- configuration.
local lfs = require "lfs"
local proc = require "bkr.proc"
local cli = require "lib.cli"
local config = require "lib.config"
local schedule = require "lib.schedule"
local target = require "lib.schedule_target"

local PLATFORMS = {
  systemd = require "lib.schedule_systemd",
  cron = require "lib.schedule_cron",
  windows = require "lib.schedule_windows",
}

local SEE = "docs/schedule.md"
local EXIT_CODES = "0 ok, 1 failed (a file in the way, cannot write, systemctl failed), 2 usage or configuration error"

local COMMON_OPTIONS = {
  { "--systemd", nil, "systemd units in /etc/systemd/system (the default)" },
  { "--cron", nil, "a cron file, /etc/cron.d/bkr" },
  { "--windows", nil, "Task Scheduler XML files and bkr-task.ps1 for bkr in WSL (needs --dir)" },
  { "--dir", "DIR", "write into DIR instead (then nothing is activated: the commands are printed)" },
  { "--config", "FILE", "configuration file (default ./bkr.yaml, then /etc/bkr/bkr.yaml)" },
  { "--bkr", "PATH", "the bkr binary the jobs run (default: this one)" },
  { "--windows-dir", "FOLDER", "with --windows: DIR as Windows names it (default: from /mnt/X/..., as C:\\...)" },
}

local SUMMARIES = {
  install = "Write the schedule's entries (see `bkr schedule show`), replacing only files bkr wrote\n"
    .. "(they carry a '" .. schedule.MARKER .. "' line) and\n"
    .. "leaving unchanged files untouched. Into /etc/systemd/system with systemd running, it then\n"
    .. "runs systemctl daemon-reload and enable --now for the timers; otherwise it prints them.",
  show = "Print what install would write, file by file, after a summary of the schedule (the\n"
    .. "configured schedule.jobs, or the default when there are none).",
  remove = "Remove exactly the files install writes for this schedule, and only those bkr wrote;\n"
    .. "other files are reported and left alone. With systemd running, the timers are disabled\n"
    .. "first and systemd reloaded afterwards.",
}

local function parse_arguments(name, args)
  local options = {}
  for i, option in ipairs(COMMON_OPTIONS) do options[i] = option end
  if name == "show" then
    options[#options + 1] = { "--user-crontab", nil, "with --cron: lines for `crontab -e` (no user field)" }
  end
  return cli.parse(args, {
    name = "schedule " .. name,
    usage = "bkr schedule " .. name .. " [--systemd | --cron | --windows] [--dir DIR] [--config FILE] [--bkr PATH]"
      .. (name == "show" and " [--user-crontab]" or ""),
    summary = SUMMARIES[name],
    options = options,
    exit_codes = EXIT_CODES,
    see = SEE,
  })
end

-- ------------------------------------------------------------------ steps

local function warn(fmt, ...) cli.warn("schedule", fmt, ...) end

local function platform_of(options, what)
  local chosen
  for _, name in ipairs({ "systemd", "cron", "windows" }) do
    if options[name] then
      if chosen then cli.usage_error("%s: give one of --systemd, --cron, --windows", what) end
      chosen = name
    end
  end
  return PLATFORMS[chosen or "systemd"]
end

-- A path that goes into a scheduler's entry: absolute, normalized, one line of text.
local function entry_path(path, what, where)
  local absolute = cli.absolute(path)
  if not schedule.plain_text(absolute) then
    cli.usage_error("%s: %s: control characters or invalid UTF-8 cannot be scheduled", what, where)
  end
  return absolute
end

-- The bkr the jobs run: --bkr, else this running binary.
local function bkr_binary(options, what)
  local path = options.bkr or lfs.symlinkattributes("/proc/self/exe", "target")
  if not path then cli.usage_error("%s: cannot tell where this bkr is; give --bkr PATH", what) end
  path = entry_path(path, what, "--bkr")
  if lfs.attributes(path, "mode") ~= "file" then
    cli.usage_error("%s: --bkr %s: no such file", what, cli.printable(path))
  end
  return path
end

-- Everything the files are made of.
local function make_plan(name, options)
  local what = "schedule " .. name
  local platform = platform_of(options, what)
  if options.user_crontab and platform.name ~= "cron" then
    cli.usage_error("%s: --user-crontab goes with --cron", what)
  end
  if options.windows_dir and platform.name ~= "windows" then
    cli.usage_error("%s: --windows-dir goes with --windows", what)
  end
  -- (the jobs' recipes read the repository, local or s3://; scheduling them reads none)
  local cfg = config.load(options, { notify = false, remote = true })
  local plan = {
    platform = platform,
    cfg = cfg,
    schedule = schedule.of(cfg),
    bkr = bkr_binary(options, what),
    config_file = cfg.file and entry_path(cfg.file, what, "the configuration file's path") or nil,
    dir_given = options.dir ~= nil,
  }
  if options.dir then
    plan.dir = cli.absolute(options.dir)
  elseif platform.name == "windows" then
    cli.usage_error("%s: --windows needs --dir DIR, a folder on a Windows drive (/mnt/c/bkr)", what)
  else
    plan.dir = platform.default_dir
  end
  -- --dir naming the platform's own directory is no staging directory: the files are in place
  if plan.dir == platform.default_dir then plan.dir_given = false end
  local problem = platform.check and platform.check(plan)
  if problem then cli.usage_error("%s: %s", what, problem) end
  if platform.name == "windows" then
    plan.windows_dir = options.windows_dir or PLATFORMS.windows.windows_path(plan.dir)
    if not plan.windows_dir then
      cli.usage_error("%s: %s is not under /mnt/X/: give --windows-dir with its Windows name (C:\\bkr)",
        what, cli.printable(plan.dir))
    end
    if not PLATFORMS.windows.valid_folder(plan.windows_dir) then
      cli.usage_error("%s: the Windows folder must be like C:\\bkr, without \" %% < > | ? * or control characters",
        what)
    end
  end
  return plan
end

-- Settings the platform has no place for, and recipes the jobs will not find: said, not fatal.
local function check_plan(plan)
  local s, name = plan.schedule, plan.platform.name
  if s.environment_file and name ~= "systemd" then
    warn("schedule.environment_file is read by systemd only: %s jobs do not see it (give the "
      .. "password with connection.passfile, readable by %s)", name, s.user)
  end
  if s.randomized_delay_seconds and name == "cron" then
    warn("schedule.randomized_delay_seconds: cron has no random delay; the jobs start on the minute")
  end
  local dirs = {}
  for _, dir in ipairs(s.recipe_path or {}) do dirs[#dirs + 1] = dir end
  dirs[#dirs + 1] = bkr.recipe_path[#bkr.recipe_path] -- the built-in recipes
  for _, job in ipairs(s.jobs) do
    local found = false
    for _, dir in ipairs(dirs) do
      if lfs.attributes(dir .. "/" .. job.run[1] .. ".lua", "mode") == "file" then found = true end
    end
    if not found then
      warn("job %s: no recipe %s in schedule.recipe_path or the built-in recipes; the job will fail "
        .. "until there is", job.name, job.run[1])
    end
  end
end

local function shell_words(argv)
  local words = {}
  for i, word in ipairs(argv) do
    words[i] = word:match("^[%w%._/@:=+,%-]+$") and word or ("'" .. word:gsub("'", "'\\''") .. "'")
  end
  return table.concat(words, " ")
end

local function summary(plan)
  local s = plan.schedule
  local lines = {}
  if s.default then
    lines[1] = "schedule: the default (the configuration has no schedule.jobs)"
  else
    lines[1] = "schedule: schedule.jobs of " .. cli.printable(plan.config_file)
  end
  lines[#lines + 1] = "jobs run as " .. s.user .. " with " .. cli.printable(plan.bkr)
    .. (plan.config_file and (" --config " .. cli.printable(plan.config_file)) or " (no configuration file)")
  for _, job in ipairs(s.jobs) do
    lines[#lines + 1] = string.format("  %-16s %-20s %s", job.name,
      schedule.days_text(job.days) .. " at " .. schedule.time_text(job.at),
      cli.printable(table.concat(job.run, " ")))
  end
  return lines
end

-- Run the commands that make the platform act, or print them for the admin.
local function activate(plan, commands, note)
  if #commands == 0 then return true end
  local live = plan.platform.name == "systemd" and not plan.dir_given
    and lfs.attributes("/run/systemd/system", "mode") == "directory"
  if not live then
    cli.say("%s", note)
    for _, argv in ipairs(commands) do cli.say("  %s", shell_words(argv)) end
    return true
  end
  for _, argv in ipairs(commands) do
    cli.say("running %s", shell_words(argv))
    local result, err = proc.run{ argv = argv, stdout = "capture", stderr = "capture" }
    if not result then
      warn("%s", err)
      return false
    end
    if not result.ok then
      warn("%s failed (%s %s): %s", shell_words(argv), result.how, tostring(result.code),
        (result.stderr:gsub("%s+$", "")))
      return false
    end
  end
  return true
end

local function report_strays(plan, files)
  for _, path in ipairs(target.strays(plan.dir, files, plan.platform.same_kind)) do
    warn("%s was written by bkr but is not part of this schedule (a job renamed or dropped, or "
      .. "another configuration's): left alone", cli.printable(path))
  end
end

-- ------------------------------------------------------------------ subcommands

local function show(args)
  local options = parse_arguments("show", args)
  if not options then return cli.EXIT_OK end
  local plan = make_plan("show", options)
  check_plan(plan)
  if options.user_crontab then
    for _, line in ipairs(summary(plan)) do cli.say("# %s", line) end
    for _, line in ipairs(plan.platform.lines(plan, false)) do cli.say("%s", line) end
    return cli.EXIT_OK
  end
  for _, line in ipairs(summary(plan)) do cli.say("%s", line) end
  cli.say("%s files in %s", plan.platform.name, cli.printable(plan.dir))
  for _, file in ipairs(plan.platform.files(plan)) do
    io.stdout:write("\n==> ", plan.dir, "/", file.name, " <==\n", file.content)
  end
  io.stdout:flush()
  return cli.EXIT_OK
end

local function install(args)
  local options = parse_arguments("install", args)
  if not options then return cli.EXIT_OK end
  local plan = make_plan("install", options)
  check_plan(plan)
  local files = plan.platform.files(plan)

  -- write what is new or changed; nothing when a file not bkr's is in the way
  local result, problems, partial = target.install(plan.dir, files,
    { rename = plan.platform.name == "windows" })
  for _, path in ipairs((result or partial or {}).written or {}) do cli.say("wrote %s", cli.printable(path)) end
  if not result then
    for _, problem in ipairs(problems) do warn("%s", problem) end
    cli.fail(cli.EXIT_FAILED, "schedule install: %s", partial and "stopped part way; run it again"
      or "nothing written")
  end
  for _, path in ipairs(result.unchanged) do cli.say("unchanged %s", cli.printable(path)) end
  report_strays(plan, files)
  cli.say("schedule installed: %d files in %s (%d written, %d unchanged)", #files, cli.printable(plan.dir),
    #result.written, #result.unchanged)

  -- make the platform act on them
  local name = plan.platform.name
  local ok = true
  if name == "systemd" then
    local commands = plan.platform.after_install(plan)
    if #result.written == 0 then table.remove(commands, 1) end -- nothing new to reload
    local note = plan.dir_given and "copy the units to /etc/systemd/system, then run as root:"
      or "systemd is not running here; where it is, run as root:"
    ok = activate(plan, commands, note)
  elseif name == "cron" then
    cli.say(plan.dir_given and "copy %s/bkr to /etc/cron.d/bkr (owner root, mode 0644); cron reads it within a minute"
      or "cron reads %s/bkr within a minute", cli.printable(plan.dir))
    -- cron files do nothing without the daemon, which a minimal Debian does not have
    if not lfs.attributes("/usr/sbin/cron", "mode") then
      warn("no cron daemon on this machine (/usr/sbin/cron): these lines run only once it is installed "
        .. "(apt-get install cron)")
    end
  else
    cli.say("then, in a PowerShell started as an administrator on Windows:")
    cli.say("  powershell.exe -ExecutionPolicy Bypass -File \"%s\\%s\" -Register", plan.windows_dir:gsub("\\$", ""),
      PLATFORMS.windows.script)
  end
  return ok and cli.EXIT_OK or cli.EXIT_FAILED
end

local function remove(args)
  local options = parse_arguments("remove", args)
  if not options then return cli.EXIT_OK end
  local plan = make_plan("remove", options)
  local files = plan.platform.files(plan)

  -- systemd first lets go of the timers, while their files are still there
  local ok = activate(plan, plan.platform.before_remove(plan, target.removable(plan.dir, files)),
    "first, as root, if these units were installed in /etc/systemd/system:")
  if not ok then cli.fail(cli.EXIT_FAILED, "schedule remove: nothing removed") end

  local result, failures = target.remove(plan.dir, files)
  for _, path in ipairs(result.removed) do cli.say("removed %s", cli.printable(path)) end
  for _, message in ipairs(result.left) do warn("%s", message) end
  for _, message in ipairs(failures) do warn("%s", message) end
  report_strays(plan, files)
  cli.say("schedule removed: %d files from %s", #result.removed, cli.printable(plan.dir))
  if #result.removed > 0 then
    ok = activate(plan, plan.platform.after_remove(plan), "then, as root:")
  end
  if #failures > 0 then return cli.EXIT_FAILED end
  return ok and cli.EXIT_OK or cli.EXIT_FAILED
end

-- ------------------------------------------------------------------ dispatch

local SUBCOMMANDS = { install = install, show = show, remove = remove }

local OVERVIEW = [[
usage: bkr schedule SUBCOMMAND [--systemd | --cron | --windows] [--dir DIR] [--config FILE] [--bkr PATH]

Turn the schedule in the configuration (schedule:, else the default: daily backups Monday to
Saturday at 01:30, a weekly backup on Sunday at 02:00, a drill on Monday at 04:00, a config
backup daily at 01:15 when config_backup.files is set) into the platform's own scheduler
entries. bkr runs no daemon.

subcommands:
  show       print the schedule and the files install would write
  install    write them (only bkr's own files are ever replaced) and, with systemd, enable the timers
  remove     remove exactly the files install writes, and only those bkr wrote

platforms:
  --systemd  bkr-JOB.service and bkr-JOB.timer per job, bkr-notify@.service (default; /etc/systemd/system)
  --cron     /etc/cron.d/bkr (show --cron --user-crontab: lines for crontab -e)
  --windows  bkr-JOB.xml per job and bkr-task.ps1, for bkr inside WSL 2 (--dir /mnt/c/...)

`bkr schedule SUBCOMMAND --help` describes each.
exit codes: 0 ok, 1 failed (a file in the way, cannot write, systemctl failed), 2 usage or configuration error
documentation: docs/schedule.md]]

return cli.subcommand("schedule", { ... }, OVERVIEW, SUBCOMMANDS)
