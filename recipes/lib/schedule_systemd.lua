-- The schedule as systemd units: per job bkr-JOB.service (oneshot) and bkr-JOB.timer, and one
-- template bkr-notify@.service that each service's OnFailure= starts (docs/schedule.md).
-- Quoting follows systemd.syntax(7) and systemd.service(5): every word of ExecStart= in double
-- quotes with C escapes, specifiers escaped (% -> %%), and in the arguments (not the program,
-- which systemd takes as it is) variables escaped ($ -> $$).
local schedule = require "lib.schedule"

local systemd = { name = "systemd", default_dir = "/etc/systemd/system" }

-- One word of a command line, for ExecStart=.
function systemd.quote(word)
  local escaped = word:gsub('[\\"]', "\\%0"):gsub("%%", "%%%%"):gsub("%$", "$$")
  return '"' .. escaped .. '"'
end

-- One NAME=value for Environment= (specifiers are expanded there; variables are not).
local function assignment(name, value)
  local escaped = (name .. "=" .. value):gsub('[\\"]', "\\%0"):gsub("%%", "%%%%")
  return '"' .. escaped .. '"'
end

-- The program of ExecStart=: systemd expands specifiers there but no variables, and refuses
-- quotes and backslashes in it outright (systemd.check says so first).
function systemd.quote_program(path)
  return '"' .. path:gsub("%%", "%%%%") .. '"'
end

function systemd.check(plan)
  if plan.bkr:find("[\\\"']") then
    return "systemd refuses a program path with a quote or a backslash: give --bkr another path"
  end
end

local function command_line(argv)
  local words = { systemd.quote_program(argv[1]) }
  for i = 2, #argv do words[i] = systemd.quote(argv[i]) end
  return table.concat(words, " ")
end

-- OnCalendar=: "Mon,Tue *-*-* 01:30:00", or every day "*-*-* 01:30:00".
function systemd.on_calendar(job)
  local time = string.format("*-*-* %02d:%02d:00", job.at.hour, job.at.minute)
  if job.days == "daily" then return time end
  local names = {}
  for i, key in ipairs(job.days) do
    for _, day in ipairs(schedule.DAYS) do
      if day.key == key then names[i] = day.name end
    end
  end
  return table.concat(names, ",") .. " " .. time
end

local HEADER = "# " .. schedule.MARKER .. "\n"

-- Settings every bkr service shares: the user, the secrets, and hardening that leaves
-- pg_dump, the repository and the PostgreSQL socket alone (/usr, /boot and /etc read-only;
-- a private /tmp: see docs/schedule.md).
local function service_settings(plan)
  local s = plan.schedule
  local lines = {
    "Type=oneshot",
    "User=" .. s.user,
  }
  if s.environment_file then
    lines[#lines + 1] = "EnvironmentFile=-" .. s.environment_file:gsub("%%", "%%%%")
  end
  return lines
end

local HARDENING = {
  "Nice=10",
  "IOSchedulingClass=best-effort",
  "IOSchedulingPriority=7",
  "NoNewPrivileges=yes",
  "PrivateTmp=yes",
  "ProtectSystem=full",
  "ProtectKernelTunables=yes",
  "ProtectKernelModules=yes",
  "ProtectControlGroups=yes",
}

local function join(...)
  local out = {}
  for _, part in ipairs({ ... }) do
    for _, line in ipairs(part) do out[#out + 1] = line end
  end
  return table.concat(out, "\n") .. "\n"
end

local function service(plan, job)
  local env = {}
  for _, pair in ipairs(schedule.environment(job, plan)) do
    env[#env + 1] = "Environment=" .. assignment(pair[1], pair[2])
  end
  return HEADER .. join({
    "# bkr job " .. job.name .. " (docs/schedule.md); its timer is bkr-" .. job.name .. ".timer.",
    "[Unit]",
    "Description=bkr job " .. job.name,
    "After=network-online.target postgresql.service",
    "Wants=network-online.target",
  }, plan.cfg.notify and { "OnFailure=bkr-notify@%n.service" } or {}, {
    "",
    "[Service]",
  }, service_settings(plan), env, {
    "ExecStart=" .. command_line(schedule.command(job, plan)),
  }, HARDENING)
end

local function timer(plan, job)
  local lines = {
    "[Unit]",
    "Description=bkr job " .. job.name .. ", " .. schedule.days_text(job.days) .. " at "
      .. schedule.time_text(job.at),
    "",
    "[Timer]",
    "OnCalendar=" .. systemd.on_calendar(job),
    -- a run missed while the machine was off starts when it is back
    "Persistent=true",
  }
  if plan.schedule.randomized_delay_seconds then
    lines[#lines + 1] = "RandomizedDelaySec=" .. plan.schedule.randomized_delay_seconds
  end
  return HEADER .. join(lines, { "", "[Install]", "WantedBy=timers.target" })
end

-- bkr notify --unit UNIT: started by OnFailure= with the failed unit's name as the instance;
-- it tells a person when the job's run could not report its own failure (docs/notify.md).
-- Only with a notify: section: without one, bkr notify has nobody to tell and would fail.
local function notify_template(plan)
  local argv = { plan.bkr, "notify", "--unit" }
  if plan.config_file then
    argv[#argv + 1] = "--config"
    argv[#argv + 1] = plan.config_file
  end
  local exec = "ExecStart=" .. systemd.quote_program(argv[1]) .. " " .. systemd.quote(argv[2]) .. " "
    .. systemd.quote(argv[3]) .. ' "%i"'
  for i = 4, #argv do exec = exec .. " " .. systemd.quote(argv[i]) end
  return HEADER .. join({
    "# Started by OnFailure= of each bkr-JOB.service, with the failed unit as %i (docs/schedule.md).",
    "[Unit]",
    "Description=bkr notification about %i",
    "",
    "[Service]",
  }, service_settings(plan), {
    exec,
  }, HARDENING)
end

-- The files install writes: { name, content, mode }.
function systemd.files(plan)
  local files = {}
  for _, job in ipairs(plan.schedule.jobs) do
    files[#files + 1] = { name = "bkr-" .. job.name .. ".service", content = service(plan, job), mode = "0644" }
    files[#files + 1] = { name = "bkr-" .. job.name .. ".timer", content = timer(plan, job), mode = "0644" }
  end
  if plan.cfg.notify then
    files[#files + 1] = { name = "bkr-notify@.service", content = notify_template(plan), mode = "0644" }
  end
  return files
end

-- Files of this kind that another schedule may have written: reported, never removed.
function systemd.same_kind(name)
  return name:match("^bkr%-.+%.service$") ~= nil or name:match("^bkr%-.+%.timer$") ~= nil
end

local function timers(plan)
  local names = {}
  for _, job in ipairs(plan.schedule.jobs) do names[#names + 1] = "bkr-" .. job.name .. ".timer" end
  return names
end

-- Commands that make systemd act on the files: after install, before and after remove.
function systemd.after_install(plan)
  local enable = { "systemctl", "enable", "--now" }
  for _, name in ipairs(timers(plan)) do enable[#enable + 1] = name end
  return { { "systemctl", "daemon-reload" }, enable }
end

function systemd.before_remove(plan, removing)
  local disable = { "systemctl", "disable", "--now" }
  for _, name in ipairs(timers(plan)) do
    if removing[name] then disable[#disable + 1] = name end
  end
  return #disable > 3 and { disable } or {}
end

function systemd.after_remove()
  return { { "systemctl", "daemon-reload" } }
end

return systemd
