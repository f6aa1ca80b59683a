-- Notifications by hand: a test message on every channel, or a job that failed without reporting
--
--   bkr notify test [--config FILE]
--       sends a test message on every channel of the `notify:` section (whatever each one's
--       `on:`), once each, and says how each one went.
--   bkr notify contacts [--config FILE]
--       prints who is called when backups fail, in order (notify.contacts), and where the
--       alerts go (each channel and when it fires): the recovery guide's contact list.
--   bkr notify --unit UNIT [--config FILE] [--job NAME]
--       run by systemd (OnFailure=bkr-notify@%n.service) after the unit bkr-JOB.service failed:
--       sends "job JOB (unit UNIT) failed without reporting" on the channels that take
--       failures, unless the job's newest log record is the "notified" record its run wrote
--       (the run reported its own failure: no second message). A run killed outright (SIGKILL,
--       the OOM killer, a crash, systemd's timeout) wrote none, so it is reported here.
-- The configuration and its channels are those of lib/notify.lua (docs/notify.md).
local cli = require "lib.cli"
local notify = require "lib.notify"
local repo = require "lib.repo"

-- This run sends its own messages: loading the configuration must not arm the at-exit one
-- (a failed test would otherwise be reported as a failed run).
notify.manual()
local config = require "lib.config"

local options = cli.parse({ ... }, {
  name = "notify",
  usage = "bkr notify test [--config FILE]\n"
    .. "       bkr notify contacts [--config FILE]\n"
    .. "       bkr notify --unit UNIT [--config FILE] [--job NAME]",
  summary = "test: send a test message on every channel of the configuration's notify: section.\n"
    .. "contacts: who is called when backups fail, in order, and where the alerts go.\n"
    .. "--unit: after the systemd unit UNIT (bkr-JOB.service) failed, send a failure message\n"
    .. "unless the job's run already reported it (its newest log record is its \"notified\" record).",
  positional = "test|contacts",
  options = {
    { "--config", "FILE", "configuration file (default ./bkr.yaml, then /etc/bkr/bkr.yaml)" },
    { "--unit", "UNIT", "the systemd unit that failed (as OnFailure=bkr-notify@%n.service passes it)" },
    { "--job", "NAME", "the job's name (default: JOB of a unit named bkr-JOB.service)" },
  },
  exit_codes = "0 every message sent (or none needed), 1 a channel failed, 2 usage or configuration error",
  see = "docs/notify.md",
})
if not options then return cli.EXIT_OK end

local testing = options.args[1] == "test"
local contacts = options.args[1] == "contacts"
if #options.args > 1 or (options.args[1] and not testing and not contacts) then
  cli.usage_error("notify: unexpected argument '%s' (see --help)", cli.printable(options.args[#options.args]))
end
if (testing or contacts) == (options.unit ~= nil) then
  cli.usage_error("notify: give test, contacts or --unit UNIT (see --help)")
end
if options.job and not options.unit then cli.usage_error("notify: --job goes with --unit") end

local cfg = config.load(options, { remote = true }) -- (it reads no repository: an s3:// one is fine)
if not cfg.notify then
  cli.usage_error("notify: the configuration%s has no notify: section (docs/notify.md)",
    cfg.file and (" " .. cfg.file) or "")
end

-- What a channel reaches, for the admin: never a URL (it may carry a token), never a secret.
local function reaches(channel)
  if channel.type == "email" then
    return string.format("%s:%d (%s) to %s", channel.smtp.host, channel.smtp.port, channel.smtp.security,
      table.concat(channel.to, ", "))
  elseif channel.type == "webhook" then
    local host = channel.url and channel.url:match("^https?://([^/?#]+)")
    return host or ("the URL in $" .. channel.url_env)
  end
  return channel.run[1]
end

local function report(results)
  local failed = 0
  for _, r in ipairs(results) do
    local c = r.channel
    if r.ok then
      cli.say("sent    %-8s %s: %s", c.type, c.path, cli.printable(reaches(c)))
    else
      failed = failed + 1
      cli.report("FAILED  %-8s %s: %s (%s)", c.type, c.path, cli.printable(r.error or "?"), r.kind or "io")
    end
  end
  return failed == 0 and cli.EXIT_OK or cli.EXIT_FAILED
end

local host = notify.host_name(cfg)

-- ------------------------------------------------------------------ bkr notify contacts

if contacts then
  cli.say("When backups of %s fail:", cli.printable(host))
  local people = cfg.notify.contacts or {}
  if #people == 0 then cli.say("  no contacts listed (notify.contacts in %s)", cli.printable(cfg.file or "the configuration")) end
  for i, person in ipairs(people) do
    local reach = {}
    for _, field in ipairs({ "phone", "email" }) do
      if person[field] then reach[#reach + 1] = person[field] end
    end
    cli.say("  %d. %s%s%s%s", i, cli.printable(person.name), person.role and (", " .. cli.printable(person.role)) or "",
      #reach > 0 and (": " .. cli.printable(table.concat(reach, ", "))) or "",
      person.when and (" (" .. cli.printable(person.when) .. ")") or "")
  end
  cli.say("Alerts go to:")
  for _, channel in ipairs(cfg.notify.channels) do
    cli.say("  %-8s %s, on %s", channel.type, cli.printable(reaches(channel)), table.concat(channel.on, ", "))
  end
  return cli.EXIT_OK
end

-- ------------------------------------------------------------------ bkr notify test

if testing then
  local event = {
    format = "bkr-notification-1", event = "test", result = "ok", recipe = "notify", host = host,
    job = os.getenv("BKR_JOB"), time = repo.iso_time(os.time()), bkr_version = bkr.version,
    message = "A test message from bkr notify test: this channel works.",
  }
  event.summary = "TEST notification from " .. host
  return report(notify.send(cfg, event, cfg.notify.channels, { retries = false, quiet = true, no_record = true }))
end

-- ------------------------------------------------------------------ bkr notify --unit UNIT

local unit = options.unit
-- A unit name as systemd writes one: it goes into a subject line and a journalctl command.
if #unit > 256 or not unit:match("^[%w:_%.\\@%-]+$") then
  cli.usage_error("notify: --unit: not a systemd unit name")
end
local job = options.job or unit:match("^bkr%-(.+)%.service$") or unit:gsub("%.service$", "")

local newest = notify.newest_job_record(cfg, job)
-- The job's run reported itself when its newest record is its "notified" record of a failure
-- (a success's record cannot be this failed run's).
if newest and newest.event == "notified" and newest.exit_code ~= 0 then
  cli.say("job %s: its run reported itself at %s; nothing sent", cli.printable(job), cli.printable(newest.time or "?"))
  return cli.EXIT_OK
end

local message = string.format("job %s (unit %s) failed without reporting; see journalctl -u %s", job, unit, unit)
local event = {
  format = "bkr-notification-1", event = "failure", result = "failed",
  recipe = newest and newest.recipe or nil, job = job, unit = unit, host = host,
  time = repo.iso_time(os.time()), repository = cfg.repository, bkr_version = bkr.version,
  kind = "unreported", error = message,
  last_record = newest and { event = newest.event, time = newest.time, result = newest.result } or nil,
  rerun = "systemctl start " .. unit,
}
event.summary = string.format("FAILED job %s on %s: %s", job, host, message)
local channels = {}
for _, channel in ipairs(cfg.notify.channels) do
  if notify.wants(channel, event) then channels[#channels + 1] = channel end
end
if #channels == 0 then
  cli.say("job %s: no channel takes failures (notify.channels[].on); nothing sent", cli.printable(job))
  return cli.EXIT_OK
end
return report(notify.send(cfg, event, channels))
