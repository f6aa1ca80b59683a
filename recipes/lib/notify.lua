-- Notifications: when a run ends, tell a person what happened, by e-mail (SMTP), a webhook
-- (an HTTP POST of JSON) or a command (JSON on its stdin). docs/notify.md.
--
--   notify.validate(value, path, validators)   the `notify:` section of the configuration
--   notify.arm(cfg)                 from config.load: this run's event goes out when it ends
--   notify.manual()                 this run sends its own messages (bkr notify): arm does nothing
--   notify.event(cfg, outcome, records, run)   one event from a run's outcome and log records
--   notify.wants(channel, event)    does this channel take this event?
--   notify.send(cfg, event, channels, opts)    deliver on each channel, with retries; log failures
--   notify.json(event), notify.email_text(event, channel, cfg)   the event as sent
--   notify.newest_job_record(cfg, job)         the newest log record of a systemd job
--
-- One event per run. A notification failure never changes the run's exit status: it is
-- logged (REPO/bkr.log, result "notify failed") and said on stderr. No secret (an SMTP
-- password, a header from the environment, a URL from the environment) is ever in an event,
-- a log line, a message or a child's argv.
local lfs = require "lfs"
local fs = require "bkr.fs"
local cli = require "lib.cli"
local json = require "lib.json"
local repo = require "lib.repo"
local logging = require "lib.logging"
local notify_email = require "lib.notify_email"
local secrets = require "lib.secrets"

local notify = {}

notify.EVENTS = { "failure", "success", "drill" }
local SECURITY_PORTS = { starttls = 587, tls = 465, none = 25 }
local DEFAULTS = { retries = 3, retry_delay_seconds = 2, timeout_seconds = 15 }
-- Kinds worth another attempt: the server may be back in a moment. A refused password, a
-- certificate that does not verify or a refused recipient will be refused again.
local RETRY = { timeout = true, refused = true, unreachable = true, io = true, unavailable = true }
-- Bounds on what an event carries: an error message, and how many databases are listed.
local MAX_TEXT = 2000
local MAX_DATABASES = 200
-- Results of a database record that mean it failed.
local FAILED = { failed = true, interrupted = true }

-- ------------------------------------------------------------------ validation

local function host_value(v)
  return function(value, path)
    v.string_value(value, path)
    if #value > 253 or not value:match("^[%w_][%w%.%-_:]*$") then v.fail(path, "expected a host name or address") end
    return value
  end
end

-- An e-mail address as one printable ASCII word: nothing that could end a header or an SMTP
-- command, no display name.
local function address_value(v)
  return function(value, path)
    v.string_value(value, path)
    if #value > 254 or not value:match("^[!-~]+@[!-~]+$") or value:find("[<>,;\"()\\]") then
      v.fail(path, "expected an e-mail address such as bkr@example.com")
    end
    return value
  end
end

local function one_of(v, choices)
  return function(value, path)
    for _, choice in ipairs(choices) do
      if value == choice then return value end
    end
    v.fail(path, "expected one of: %s", table.concat(choices, ", "))
  end
end

-- A mapping from header names (HTTP tokens) to `value(...)`.
local function headers_value(v, value_of)
  return function(value, path)
    if type(value) ~= "table" or value[1] ~= nil then v.fail(path, "expected a mapping of header names") end
    local out = {}
    for name, item in pairs(value) do
      local child = path .. "." .. tostring(name)
      if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
        v.fail(path, "expected header names (letters, digits, -)")
      end
      out[name] = value_of(item, child)
    end
    return out
  end
end

local function plain_header(v)
  return function(value, path)
    v.string_value(value, path)
    if value:find("%c") then v.fail(path, "expected one line without control characters") end
    return value
  end
end

local function url_value(v)
  return function(value, path)
    v.string_value(value, path)
    local authority = value:match("^https?://([^/?#]*)")
    if not authority or authority == "" or value:find("[%s%c]") then
      v.fail(path, "expected an http:// or https:// URL")
    end
    if authority:find("@") then
      v.fail(path, "a user or password in the URL is refused; give a secret with headers_env or url_env")
    end
    return value
  end
end

local function absolute_path(v)
  return function(value, path)
    v.string_value(value, path)
    if value:sub(1, 1) ~= "/" then v.fail(path, "expected an absolute path (no PATH search)") end
    return value
  end
end

local function required(v, out, path, key)
  if out[key] == nil then v.fail(path .. "." .. key, "required") end
end

-- The settings every channel has, then its own.
local function channel_fields(v, own)
  local fields = {
    type = v.string_value,
    on = v.list_of(one_of(v, notify.EVENTS), nil, true),
    timeout_seconds = v.integer_in(1, 300),
  }
  for key, validate in pairs(own) do fields[key] = validate end
  return fields
end

local function channel_kinds(v)
  return {
    email = channel_fields(v, {
      smtp = v.section{
        host = host_value(v),
        port = v.integer_in(1, 65535),
        security = one_of(v, { "starttls", "tls", "none" }),
        user = v.string_value,
        password_file = absolute_path(v),
        password_env = v.env_name,
        ca_file = v.string_value,
      },
      from = address_value(v),
      to = v.list_of(address_value(v), nil, true),
    }),
    webhook = channel_fields(v, {
      url = url_value(v),
      url_env = v.env_name,
      headers = headers_value(v, plain_header(v)),
      headers_env = headers_value(v, v.env_name),
      ca_file = v.string_value,
    }),
    command = channel_fields(v, {
      run = function(value, path)
        local argv = v.list_of(v.string_value, nil, true)(value, path)
        absolute_path(v)(argv[1], path .. "[1]")
        return argv
      end,
    }),
  }
end

local function check_email(v, out, path)
  required(v, out, path, "smtp")
  required(v, out, path, "from")
  required(v, out, path, "to")
  local smtp, spath = out.smtp, path .. ".smtp"
  required(v, smtp, spath, "host")
  smtp.security = smtp.security or "starttls"
  smtp.port = smtp.port or SECURITY_PORTS[smtp.security]
  if smtp.password_file and smtp.password_env then
    v.fail(spath, "give password_file or password_env, not both")
  end
  local has_password = smtp.password_file or smtp.password_env
  if has_password and not smtp.user then v.fail(spath .. ".user", "required with a password") end
  if smtp.user and not has_password then v.fail(spath, "user needs password_file or password_env") end
  if has_password and smtp.security == "none" then
    v.fail(spath .. ".security", "none would send the password in clear text; use starttls or tls")
  end
end

local function check_webhook(v, out, path)
  if (out.url == nil) == (out.url_env == nil) then v.fail(path, "give url or url_env (one of them)") end
end

function notify.validate(value, path, v)
  local kinds = channel_kinds(v)
  local function channel(item, cpath)
    if type(item) ~= "table" or item[1] ~= nil then v.fail(cpath, "expected a mapping with a type") end
    local fields = kinds[item.type]
    if not fields then v.fail(cpath .. ".type", "expected email, webhook or command") end
    local out = v.section(fields)(item, cpath)
    out.on = out.on or { "failure" }
    out.timeout_seconds = out.timeout_seconds or DEFAULTS.timeout_seconds
    if out.type == "email" then check_email(v, out, cpath) end
    if out.type == "webhook" then check_webhook(v, out, cpath) end
    if out.type == "command" then required(v, out, cpath, "run") end
    out.path = cpath -- names the channel in messages: never a URL, never a secret
    return out
  end
  -- The people called when backups fail, in the order they are called: for the recovery
  -- guide (`bkr notify contacts`), not for sending. Only words and numbers a person reads.
  local function contact(item, cpath)
    local out = v.section{
      name = v.string_value, role = v.string_value, phone = v.string_value, email = v.string_value,
      when = v.string_value,
    }(item, cpath)
    required(v, out, cpath, "name")
    return out
  end
  local out = v.section{
    host_name = host_value(v),
    retries = v.integer_in(0, 10),
    retry_delay_seconds = v.integer_in(0, 60),
    channels = v.list_of(channel, nil, true),
    contacts = v.list_of(contact, nil, true),
  }(value, path)
  required(v, out, path, "channels")
  out.retries = out.retries or DEFAULTS.retries
  out.retry_delay_seconds = out.retry_delay_seconds or DEFAULTS.retry_delay_seconds
  return out
end

-- ------------------------------------------------------------------ the run and its facts

-- The configured host_name, else the machine's (lib/logging.lua), if it is a plain host name.
function notify.host_name(cfg)
  if cfg.notify and cfg.notify.host_name then return cfg.notify.host_name end
  local name = logging.host_name()
  if name and name:match("^[%w_][%w%.%-_]*$") then return name end
  return "localhost"
end

-- The recipe this run is: the script's name (backup for .../recipes/backup.lua).
local function recipe_name()
  return (tostring(bkr.script):match("([^/]+)%.lua$") or "bkr")
end

-- At most MAX_TEXT bytes of text, cut on a character boundary, saying how much was left out.
local function bounded(text)
  if text == nil then return nil end
  text = tostring(text)
  if #text <= MAX_TEXT then return text end
  return notify_email.cut_utf8(text, MAX_TEXT) .. string.format(" ... (%d more bytes)", #text - MAX_TEXT)
end

-- A word as the shell reads it back (for the command to run again).
local function shell_word(word)
  if word:match("^[%w%-_./=:,@+%%]+$") then return word end
  return "'" .. word:gsub("'", "'\\''") .. "'"
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return (lfs.currentdir() or ".") .. "/" .. path:gsub("^%./", "")
end

-- The command that runs this recipe again: its arguments, the configuration file by its
-- absolute path, and, when `databases` is given, only those (--db). Arguments never carry a
-- secret (passwords travel in the environment and in files), so they may be shown.
function notify.command_line(cfg, recipe, args, databases)
  local words, rest, config_file = { "bkr", recipe }, {}, cfg.file
  local i = 1
  while i <= #args do
    local word = args[i]
    if word == "--config" and args[i + 1] then
      config_file, i = args[i + 1], i + 1
    elseif word:match("^%-%-config=") then
      config_file = word:sub(10)
    elseif databases and word == "--db" then
      i = i + 1
    elseif not (databases and word:match("^%-%-db=")) then
      rest[#rest + 1] = word
    end
    i = i + 1
  end
  -- the subcommand (bkr config backup) stays first, then the configuration file
  local lead = 1
  while rest[lead] and rest[lead]:sub(1, 1) ~= "-" do
    words[#words + 1] = rest[lead]
    lead = lead + 1
  end
  if config_file then
    words[#words + 1] = "--config"
    words[#words + 1] = absolute(config_file)
  end
  for j = lead, #rest do words[#words + 1] = rest[j] end
  for _, db in ipairs(databases or {}) do
    words[#words + 1] = "--db"
    words[#words + 1] = db
  end
  for j, word in ipairs(words) do words[j] = shell_word(word) end
  return table.concat(words, " ")
end

-- The newest backup of `database` ("(globals)" for roles and tablespaces) whose file and
-- manifest are in place: { time, file, verified }, or nil.
function notify.last_good_backup(dir, database)
  if not dir then return nil end
  local globals = database == "(globals)"
  local ok, entries = pcall(repo.scan, dir, globals and { globals = true } or { db = { database } })
  if not ok then return nil end
  for _, entry in ipairs(entries) do
    if entry.regular and entry.manifest and entry.kind == (globals and "globals" or "database") then
      return { time = repo.iso_time(entry.time), file = entry.type .. "/" .. entry.file, verified = repo.verified(entry) }
    end
  end
  return nil
end

-- What the drill's report says about each database (verdict, the step that failed, RTO, RPO).
local function drill_facts(record)
  local facts = { result = record.result, report = record.report, seconds = record.seconds }
  local report = record.report and json.read_file(record.report)
  if type(report) ~= "table" then return facts end
  facts.targets = report.targets
  facts.databases = {}
  for _, db in ipairs(report.databases or {}) do
    local item = { database = db.database, result = db.result, rto_seconds = db.rto_seconds,
      rpo_seconds = db.rpo_seconds, backup = db.backup, backup_time = db.backup_time, error = bounded(db.incomplete) }
    for _, step in ipairs(db.steps or {}) do
      if step.result == "failed" and not item.step then
        item.step, item.error = step.name, bounded(step.detail)
      end
    end
    facts.databases[#facts.databases + 1] = item
  end
  return facts
end

-- The subject's headline and the first line of the body.
-- The first line of a message: a headline (and a subject) is one line, whatever the error.
local function first_line(message)
  return message and (tostring(message):match("^[^\n]*"))
end

local function headline(event)
  local names, seen = {}, {}
  for _, db in ipairs(event.databases or {}) do
    if (event.event ~= "failure" or FAILED[db.result]) and not seen[db.database] then
      seen[db.database] = true
      names[#names + 1] = db.database
    end
  end
  local subject = #names == 0 and "" or #names <= 3 and (" of " .. table.concat(names, ", "))
    or string.format(" of %d databases", #names)
  local what = event.recipe .. subject
  if event.job then what = what .. " (job " .. event.job .. ")" end
  if event.event == "test" then return "TEST notification from " .. event.host end
  if event.event == "drill" then
    return string.format("DRILL %s on %s", (event.drill and event.drill.result or event.result):upper(), event.host)
      .. (event.error and (": " .. first_line(event.error)) or "")
  end
  if event.event == "success" then return string.format("OK %s on %s", what, event.host) end
  local label = event.interrupted and "INTERRUPTED" or "FAILED"
  return string.format("%s %s on %s: %s", label, what, event.host,
    first_line(event.error) or ("exit code " .. tostring(event.exit_code)))
end

-- One event from the outcome the host gives the at-exit function and the run's log records.
-- run: { recipe, args, started } (defaults: this process's).
function notify.event(cfg, outcome, records, run)
  run = run or {}
  local recipe = run.recipe or recipe_name()
  local failed = outcome.exit_code ~= 0 or outcome.interrupted ~= nil
  local event = {
    format = "bkr-notification-1",
    event = recipe == "drill" and "drill" or failed and "failure" or "success",
    result = outcome.interrupted and "interrupted" or failed and "failed" or "ok",
    recipe = recipe,
    job = os.getenv("BKR_JOB"),
    host = notify.host_name(cfg),
    time = repo.iso_time(os.time()),
    exit_code = outcome.exit_code,
    interrupted = outcome.interrupted,
    kind = type(outcome.error) == "table" and outcome.error.kind or nil,
    repository = cfg.repository,
    bkr_version = bkr.version,
  }
  if run.started then event.seconds = os.time() - run.started end
  local databases, failed_names, first_error = {}, {}, nil
  for _, record in ipairs(records or {}) do
    if record.recipe == "drill" and record.report and not record.event then
      event.drill = drill_facts(record)
    elseif record.database and record.result ~= "removed" and #databases < MAX_DATABASES then
      local item = { database = record.database, result = record.result, error = bounded(record.error),
        kind = record.kind, step = record.step or record.event, file = record.file, bytes = record.bytes,
        raw_bytes = record.raw_bytes, seconds = record.seconds and math.floor(record.seconds * 1000 + 0.5) / 1000 }
      if FAILED[record.result] then
        item.last_good_backup = notify.last_good_backup(cfg.repository, record.database)
        first_error = first_error or item.error
        if record.database ~= "(globals)" then failed_names[#failed_names + 1] = record.database end
      end
      databases[#databases + 1] = item
    end
  end
  if #databases > 0 then event.databases = databases end
  if event.drill and event.drill.databases then
    for _, db in ipairs(event.drill.databases) do
      if db.result ~= "passed" then
        first_error = first_error or string.format("%s %s%s: %s", db.database, db.result,
          db.step and (" at " .. db.step) or "", db.error or "")
        db.last_good_backup = notify.last_good_backup(cfg.repository, db.database)
      end
    end
  end
  if failed then
    event.error = bounded(outcome.message)
      or (outcome.interrupted and ("interrupted by " .. outcome.interrupted))
      or first_error or ("exit code " .. tostring(outcome.exit_code))
  end
  local args = run.args or arg or {}
  event.command = notify.command_line(cfg, recipe, args)
  if failed then
    event.rerun = notify.command_line(cfg, recipe, args,
      recipe == "backup" and #failed_names > 0 and failed_names or nil)
  end
  event.summary = headline(event)
  return event
end

-- ------------------------------------------------------------------ rendering

function notify.json(event)
  return json.encode(event) .. "\n"
end

local function size(bytes)
  return bytes and cli.size(bytes) or "?"
end

-- The body of the e-mail: the facts, one per line, each value printable (no line breaks).
-- A message of several lines (libpq's) keeps its lines, each printable, the later ones
-- indented under the first.
local function email_body(event)
  local p = cli.printable
  local lines = { p(event.summary), "" }
  local function multiline(value, indent)
    local parts = {}
    for part in (tostring(value) .. "\n"):gmatch("([^\n]*)\n") do parts[#parts + 1] = p(part) end
    return table.concat(parts, "\n" .. indent)
  end
  local function add(label, value)
    if value ~= nil then lines[#lines + 1] = string.format("%-12s %s", label .. ":", p(value)) end
  end
  if event.error ~= nil then
    lines[#lines + 1] = string.format("%-12s %s", "Error:", multiline(event.error, string.rep(" ", 13)))
  end
  add("Kind", event.kind)
  add("Recipe", event.recipe)
  add("Job", event.job)
  add("Unit", event.unit)
  add("Host", event.host)
  add("Exit code", event.exit_code)
  add("Time", event.time)
  add("Repository", event.repository)
  if event.message then
    lines[#lines + 1] = ""
    lines[#lines + 1] = p(event.message)
  end
  if event.databases then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "Databases:"
    for _, db in ipairs(event.databases) do
      if FAILED[db.result] then
        lines[#lines + 1] = string.format("  %s: %s%s: %s", p(db.database), db.result,
          db.step and (" at " .. p(db.step)) or "", multiline(db.error or "?", "      "))
        local last = db.last_good_backup
        lines[#lines + 1] = "    last good backup: " .. (last and string.format("%s (%s%s)", last.time, p(last.file),
          last.verified and (", verify " .. last.verified) or "") or "none")
      else
        local detail = db.bytes and string.format(", %s stored (%s raw) in %.1f s", size(db.bytes), size(db.raw_bytes),
          db.seconds or 0) or ""
        lines[#lines + 1] = string.format("  %s: %s%s", p(db.database), db.result and p(db.result) or "no result", detail)
      end
    end
  end
  if event.drill then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "Drill: " .. p(event.drill.result or "?") .. (event.drill.report and (", report " .. p(event.drill.report)) or "")
    for _, db in ipairs(event.drill.databases or {}) do
      local measured = db.rto_seconds and string.format("RTO %s s, RPO %s s", tostring(db.rto_seconds),
        tostring(db.rpo_seconds or "?")) or "RTO and RPO not measured"
      lines[#lines + 1] = string.format("  %s: %s, %s%s", p(db.database), p(db.result or "?"), measured,
        db.step and (", failed at " .. p(db.step) .. ": " .. p(db.error or "")) or "")
    end
  end
  if event.rerun then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "Run it again:"
    lines[#lines + 1] = "  " .. p(event.rerun)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "-- "
  lines[#lines + 1] = string.format("Sent by bkr %s on %s (docs/notify.md).", tostring(event.bkr_version or bkr.version),
    p(event.host))
  return table.concat(lines, "\n")
end

function notify.email_text(event, channel)
  return notify_email.message{
    from = channel.from, to = channel.to, subject = "[bkr] " .. event.summary, body = email_body(event),
    host = event.host, time = os.time(), event = event.event,
  }
end

-- ------------------------------------------------------------------ delivering

-- The SMTP password, from the environment or a private file (lib/secrets.lua); or nil,
-- message, kind.
local function smtp_password(channel)
  local smtp = channel.smtp
  local where = channel.path .. ".smtp"
  if smtp.password_env then return secrets.from_env(smtp.password_env, where .. ".password_env") end
  if not smtp.password_file then return nil end
  return secrets.from_file(smtp.password_file, where .. ".password_file")
end

local function url_host(host)
  return host:find(":") and ("[" .. host .. "]") or host
end

local function connect_timeout(channel)
  return math.min(10, channel.timeout_seconds)
end

local senders = {}

function senders.email(cfg, channel, event)
  local smtp = channel.smtp
  local password, err, kind = smtp_password(channel)
  if err then return nil, err, kind end
  local curl = require "bkr.curl"
  return curl.smtp_send{
    url = string.format("%s://%s:%d/%s", smtp.security == "tls" and "smtps" or "smtp", url_host(smtp.host), smtp.port,
      event.host),
    starttls = smtp.security == "starttls",
    username = smtp.user, password = password,
    from = channel.from, to = channel.to,
    message = notify.email_text(event, channel),
    timeout = channel.timeout_seconds, connect_timeout = connect_timeout(channel), ca_file = smtp.ca_file,
  }
end

-- A secret from the environment, or nil, message, "config".
local function from_env(name, what)
  local value = os.getenv(name)
  if not value or value == "" then
    return nil, string.format("%s: environment variable %s is not set", what, name), "config"
  end
  return value
end

function senders.webhook(cfg, channel, event)
  local url, err, kind = channel.url, nil, nil
  if channel.url_env then
    url, err, kind = from_env(channel.url_env, channel.path .. ".url_env")
    if not url then return nil, err, kind end
    if not url:match("^https?://[^/?#@]+") or url:find("[%s%c]") then
      return nil, string.format("%s.url_env: %s does not hold an http:// or https:// URL without credentials",
        channel.path, channel.url_env), "config"
    end
  end
  local headers = {}
  for name, value in pairs(channel.headers or {}) do headers[name] = value end
  for name, variable in pairs(channel.headers_env or {}) do
    local value
    value, err, kind = from_env(variable, channel.path .. ".headers_env." .. name)
    if not value then return nil, err, kind end
    if value:find("[\r\n%z]") then
      return nil, string.format("%s.headers_env.%s: %s holds more than one line", channel.path, name, variable), "config"
    end
    headers[name] = value
  end
  local curl = require "bkr.curl"
  local status
  status, err, kind = curl.http_post{
    url = url, body = notify.json(event), content_type = "application/json", headers = headers,
    timeout = channel.timeout_seconds, connect_timeout = connect_timeout(channel), ca_file = channel.ca_file,
    max_response = 4096,
  }
  if not status then return nil, err, kind end
  if status >= 200 and status < 300 then return true end
  local retry = status >= 500 or status == 429 or status == 408
  return nil, string.format("curl.http_post: the server answered HTTP %d", status), retry and "unavailable" or "rejected"
end

-- Exit codes of coreutils' timeout(1): 124 it ran out of time, 137 it had to kill.
local TIMED_OUT = { [124] = true, [137] = true }

function senders.command(cfg, channel, event)
  local proc = require "bkr.proc"
  local argv = { "timeout", "--kill-after=5", tostring(channel.timeout_seconds) }
  for _, word in ipairs(channel.run) do argv[#argv + 1] = word end
  local result, err = proc.run{ argv = argv, input = notify.json(event), env = { BKR_NOTIFY_EVENT = event.event } }
  if not result then return nil, tostring(err), "io" end
  if result.ok then return true end
  local name = channel.run[1]
  if result.how == "exit" and TIMED_OUT[result.code] then
    return nil, string.format("%s: still running after %d s", name, channel.timeout_seconds), "timeout"
  end
  local last = (result.stderr or ""):match("([^\n]+)\n*$")
  return nil, string.format("%s: %s %d%s", name, result.how == "signal" and "killed by signal" or "exited with code",
    result.code, last and (": " .. notify_email.one_line(last, 300)) or ""), "child_failed"
end

-- One attempt, whatever goes wrong inside it (a bug must not stop the other channels).
local function attempt(cfg, channel, event)
  local called, ok, err, kind = pcall(senders[channel.type], cfg, channel, event)
  if not called then return nil, tostring(ok), "io" end
  return ok, err, kind
end

-- Deliver on one channel, retrying what may pass on a second try, with a doubling delay.
-- Returns true, attempts; or nil, message, kind, attempts.
local function deliver(cfg, channel, event, settings)
  local tries = 1 + settings.retries
  local delay = settings.retry_delay_seconds
  for n = 1, tries do
    local ok, err, kind = attempt(cfg, channel, event)
    if ok then return true, n end
    if n == tries or not RETRY[kind] then return nil, err, kind, n end
    bkr.sleep(delay * 2 ^ (n - 1))
  end
end

-- A record in the run log, where there is one (a repository, or logging.file).
local function log(cfg, record)
  if cfg.repository or (cfg.logging and cfg.logging.file) then
    repo.log(cfg.repository or ".", record)
  end
end

function notify.wants(channel, event)
  local failed = event.result ~= "ok" and event.result ~= "passed"
  for _, on in ipairs(channel.on) do
    if on == event.event or (on == "failure" and failed) or (on == "success" and not failed) then return true end
  end
  return false
end

-- Send `event` on each of `channels`. Failures are logged and said on stderr; one "notified"
-- record follows when any channel delivered. opts: retries = false (try once), quiet (no
-- stderr line), no_record (nothing in the log: a test is not a run). Returns a list of
-- { channel, ok, error, kind, attempts }.
function notify.send(cfg, event, channels, opts)
  opts = opts or {}
  local settings = cfg.notify
  if opts.retries == false then settings = { retries = 0, retry_delay_seconds = 0 } end
  local results, sent = {}, {}
  for _, channel in ipairs(channels) do
    local ok, err, kind, attempts = deliver(cfg, channel, event, settings)
    if ok then
      attempts = err
      sent[#sent + 1] = channel.type
    else
      if not opts.quiet then
        io.stderr:write(string.format("bkr: notification by %s failed: %s (%s, %s, %d attempt%s)\n", channel.type,
          cli.printable(err), kind or "io", channel.path, attempts, attempts == 1 and "" or "s"))
      end
      if not opts.no_record then log(cfg, { recipe = event.recipe, event = "notify failed", result = "notify failed", job = event.job,
        channel = channel.type, channel_path = channel.path, notification = event.event, kind = kind or "io",
        error = err, attempts = attempts }) end
    end
    results[#results + 1] = { channel = channel, ok = ok or false, error = not ok and err or nil, kind = kind,
      attempts = attempts }
  end
  if #sent > 0 and not opts.no_record then
    log(cfg, { recipe = event.recipe, event = "notified", result = "sent", job = event.job, unit = event.unit,
      notification = event.event, exit_code = event.exit_code, channels = sent })
  end
  return results
end

-- ------------------------------------------------------------------ arming a run

local manual, armed = false, false

function notify.manual()
  manual = true
end

-- The run's at-exit function: the event, the channels that want it, the sending. Nothing
-- here may raise into the host (it would only print), and nothing changes the exit status.
local function at_exit(cfg, started, outcome)
  local event = notify.event(cfg, outcome, logging.records(), { started = started })
  local channels = {}
  for _, channel in ipairs(cfg.notify.channels) do
    if notify.wants(channel, event) then channels[#channels + 1] = channel end
  end
  if #channels > 0 then notify.send(cfg, event, channels) end
end

function notify.arm(cfg)
  if manual or armed or not cfg.notify then return end
  armed = true
  local started = os.time()
  -- A systemd job's run says it started, so `bkr notify --unit` can tell a run that died
  -- without reporting (its newest record is this one) from one that reported itself.
  local job = os.getenv("BKR_JOB")
  if job and cfg.repository and lfs.attributes(cfg.repository, "mode") == "directory" then
    log(cfg, { recipe = recipe_name(), event = "started", result = "started", job = job })
  end
  bkr.at_exit(function(outcome)
    local ok, err = pcall(at_exit, cfg, started, outcome)
    if not ok then io.stderr:write("bkr: notification failed: ", cli.printable(tostring(err)), "\n") end
  end)
end

-- ------------------------------------------------------------------ the log, for --unit

-- How much of the end of the log is read to find a job's newest record.
local LOG_TAIL = 4 * 1024 * 1024

-- The newest record of `job` in the run log: its newest run's "notified" record when it has
-- one, else that run's newest record (started, a step, finish), or nil.
-- The end of one log file (a regular file only), as lines appended to `lines`.
local function tail_lines(path, lines)
  if lfs.symlinkattributes(path, "mode") ~= "file" then return end
  local f = io.open(path, "rb")
  if not f then return end
  local size = f:seek("end")
  f:seek("set", math.max(0, size - LOG_TAIL))
  local text = f:read("a") or ""
  f:close()
  for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
end

function notify.newest_job_record(cfg, job)
  if not cfg.repository and not (cfg.logging and cfg.logging.file) then return nil end
  local path = logging.path(cfg.repository or ".")
  -- the newest rotated file first: a rotation between the run and this unit (or in the middle
  -- of the run) must not hide the run's "notified" record and send its failure twice
  local lines = {}
  tail_lines(path .. ".1", lines)
  tail_lines(path, lines)
  -- The job's newest run is the run of its newest record; that run reported itself when one
  -- of its records is "notified" (the log's own finish line may come after it).
  local newest
  for i = #lines, 1, -1 do
    if lines[i]:find('"job"', 1, true) then
      local record = json.decode(lines[i], path)
      if type(record) == "table" and record.job == job then
        newest = newest or record
        if record.run_id ~= newest.run_id then break end
        if record.event == "notified" then return record end
      end
    end
  end
  return newest
end

return notify
