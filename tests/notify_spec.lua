-- Notifications (lib/notify.lua, bkr.curl, bkr notify) against real servers on loopback: an
-- SMTP server (aiosmtpd) and an HTTP server that record what they receive, and a command
-- that keeps its stdin. Received mail is read back with Python's e-mail parser.
local util = require "support.util"
local R = require "support.restore_util"
local json = require "dkjson"
local q = util.quote

local SOURCE = os.getenv("BKR_SOURCE_DIR") or "."
local PYTHON = io.open("/usr/bin/python3") and "/usr/bin/python3" or "python3"
local HEADERS = { "From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
  "Content-Transfer-Encoding", "Auto-Submitted", "X-Bkr-Event" }

-- ------------------------------------------------------------------ servers

-- Start tests/support/SCRIPT in a scratch directory; it writes its port there when ready.
local function start_server(script, args)
  local dir = util.scratch("server")
  util.sh("(" .. PYTHON .. " " .. q(SOURCE .. "/tests/support/" .. script) .. " " .. q(dir) .. " " .. (args or "")
    .. " >" .. q(dir .. "/server.log") .. " 2>&1 & echo $! >" .. q(dir .. "/pid") .. ")")
  assert(R.wait_for(dir .. "/port", 20), "server did not start: " .. (io.open(dir .. "/server.log") and
    util.read(dir .. "/server.log") or ""))
  local server = { dir = dir, port = tonumber(util.read(dir .. "/port"):match("%d+")),
    pid = util.read(dir .. "/pid"):match("%d+") }
  -- Stop it (this pid only, which the spec started), and wait until it is gone.
  function server.stop()
    util.sh("kill -TERM " .. server.pid .. " 2>/dev/null; for i in $(seq 50); do kill -0 " .. server.pid
      .. " 2>/dev/null || break; sleep 0.1; done; kill -KILL " .. server.pid .. " 2>/dev/null")
  end
  -- The files PREFIX-N.EXT received so far, in order.
  function server.received(prefix, ext)
    local list = {}
    for _, name in ipairs(util.listdir(dir)) do
      local n = name:match("^" .. prefix .. "%-(%d+)%." .. ext .. "$")
      if n then list[#list + 1] = tonumber(n) end
    end
    table.sort(list)
    for i, n in ipairs(list) do list[i] = dir .. "/" .. prefix .. "-" .. n .. "." .. ext end
    return list
  end
  function server.count()
    return #server.received(server.kind, server.ext)
  end
  function server.commands()
    local f = io.open(dir .. "/commands.log")
    if not f then return "" end
    local text = f:read("a")
    f:close()
    return text
  end
  return server
end

-- A received e-mail as Python reads it: headers (decoded), header_block (raw), body (decoded).
local function read_mail(path)
  local out, rc = util.sh(PYTHON .. " " .. q(SOURCE .. "/tests/support/read_mail.py") .. " " .. q(path))
  assert(rc == 0, out)
  local mail = json.decode(out)
  mail.header = {}
  for _, h in ipairs(mail.headers) do mail.header[h[1]] = h[2] end
  mail.meta = json.decode(util.read(path:gsub("%.eml$", ".json")))
  return mail
end

-- The event a webhook received (the JSON body), and the request's headers.
local function read_post(path)
  local post = json.decode(util.read(path))
  return json.decode(post.body), post.headers
end

-- The mails (or posts) received since `before` of them were there.
local function since(server, before)
  local list, out = server.received(server.kind, server.ext), {}
  for i = before + 1, #list do out[#out + 1] = list[i] end
  return out
end

local smtp, http
local function new_smtp(args)
  local s = start_server("smtp_server.py", args)
  s.kind, s.ext = "mail", "eml"
  return s
end
local function new_http(args)
  local s = start_server("http_server.py", args)
  s.kind, s.ext = "post", "json"
  return s
end

-- ------------------------------------------------------------------ configurations

local function email_channel(port, extra)
  return "    - type: email\n"
    .. "      smtp: { host: 127.0.0.1, port: " .. port .. ", security: none }\n"
    .. "      from: bkr@example.com\n"
    .. "      to: [admin@example.com, oncall@example.com]\n" .. (extra or "")
end

local function webhook_channel(port, extra)
  return "    - type: webhook\n"
    .. "      url: http://127.0.0.1:" .. port .. "/hook/secret-path-token\n" .. (extra or "")
end

-- A configuration file: a repository, the database nosuchdb (a scheduled backup of a database
-- that is gone fails that database, exit 1; --db names another) and a notify: section with
-- `channels` (YAML lines).
local function config(repo, channels, extra)
  local dir = util.scratch("cfg")
  local path = dir .. "/bkr.yaml"
  local databases = (extra or ""):find("databases:", 1, true) and "" or "databases: [nosuchdb]\n"
  util.write(path, "repository: " .. repo .. "\n" .. databases .. (extra or "")
    .. "notify:\n  host_name: db1.test\n  retries: 1\n  retry_delay_seconds: 0\n  channels:\n" .. channels)
  return path
end

local function log_records(repo)
  local records = {}
  local f = io.open(repo .. "/bkr.log")
  if not f then return records end
  for line in f:lines() do records[#records + 1] = json.decode(line) end
  f:close()
  return records
end

local function records_where(repo, field, value)
  local out = {}
  for _, r in ipairs(log_records(repo)) do
    if r[field] == value then out[#out + 1] = r end
  end
  return out
end

-- A command channel's program: keeps its stdin (and $BKR_NOTIFY_EVENT) in DIR/event-N.json.
local function recording_command(exit_code)
  local dir = util.scratch("command")
  util.write(dir .. "/notify.sh", "#!/bin/sh\nn=$(ls " .. q(dir) .. " | grep -c '^event-')\n"
    .. "cat > " .. q(dir) .. "/event-$((n + 1)).json\necho \"$BKR_NOTIFY_EVENT\" > " .. q(dir) .. "/env-$((n + 1))\n"
    .. "echo 'the pager says no' >&2\nexit " .. (exit_code or 0) .. "\n")
  util.sh("chmod +x " .. q(dir .. "/notify.sh"))
  return dir
end

local function plant_backup(repo, db, stamp)
  util.sh("mkdir -p " .. q(repo .. "/daily"))
  util.fake_backup(repo .. "/daily/backup_" .. stamp .. "_" .. db .. ".sql.gz", { database = db })
end

-- ------------------------------------------------------------------ specs

describe("notifications", function()
  setup(function()
    smtp = new_smtp()
    http = new_http()
  end)
  teardown(function()
    if smtp then smtp.stop() end
    if http then http.stop() end
  end)

  it("a failed backup sends one e-mail and one webhook call with the database, error, exit code, host, "
    .. "last good backup and the command to run again; the exit code is unchanged", function()
    local repo = util.scratch("repo")
    plant_backup(repo, "nosuchdb", "20260101_020304")
    local cfg = config(repo, email_channel(smtp.port) .. webhook_channel(http.port))
    local plain = util.scratch("cfg") .. "/plain.yaml"
    util.write(plain, "repository: " .. repo .. "\ndatabases: [nosuchdb]\n")
    local _, plain_rc = util.bkr("backup --no-globals --config " .. q(plain))
    local mails, posts = smtp.count(), http.count()

    local out, rc = util.bkr("backup --no-globals --config " .. q(cfg))
    assert.are.equal(1, plain_rc)
    assert.are.equal(plain_rc, rc, out)
    local new_mails, new_posts = since(smtp, mails), since(http, posts)
    assert.are.equal(1, #new_mails)
    assert.are.equal(1, #new_posts)

    local mail = read_mail(new_mails[1])
    assert.are.same({}, mail.defects)
    assert.are.equal('[bkr] FAILED backup of nosuchdb on db1.test: database "nosuchdb" does not exist',
      mail.header.Subject)
    assert.are.same({ "admin@example.com", "oncall@example.com" }, mail.meta.rcpt_tos)
    assert.matches('database "nosuchdb" does not exist', mail.body, 1, true)
    assert.matches("Recipe:      backup", mail.body, 1, true)
    assert.matches("Host:        db1.test", mail.body, 1, true)
    assert.matches("Exit code:   1", mail.body, 1, true)
    assert.matches("last good backup: 2026-01-01T02:03:04Z (daily/backup_20260101_020304_nosuchdb.sql.gz)",
      mail.body, 1, true)
    assert.matches("bkr backup --config " .. cfg .. " --no-globals --db nosuchdb", mail.body, 1, true)

    local event, headers = read_post(new_posts[1])
    assert.are.equal("application/json", headers["Content-Type"])
    assert.are.same({ "failure", "failed", "backup", "db1.test", 1 },
      { event.event, event.result, event.recipe, event.host, event.exit_code })
    assert.are.equal("nosuchdb", event.databases[1].database)
    assert.are.equal("failed", event.databases[1].result)
    assert.are.equal('database "nosuchdb" does not exist', event.databases[1].error)
    assert.are.equal("2026-01-01T02:03:04Z", event.databases[1].last_good_backup.time)
    assert.are.equal("bkr backup --config " .. cfg .. " --no-globals --db nosuchdb", event.rerun)
    -- the run reported itself
    local notified = records_where(repo, "event", "notified")
    assert.are.equal(1, #notified)
    assert.are.same({ "email", "webhook" }, notified[1].channels)
  end)

  it("check, list, schedule and init never notify: a CRITICAL check or a list of a typo is no failed job", function()
    local repo = util.scratch("repo")
    local cfg = config(repo, webhook_channel(http.port))
    local posts = http.count()
    local out, rc = util.bkr("check --config " .. q(cfg))
    assert.are.equal(2, rc, out) -- CRITICAL: nosuchdb has no backup
    out, rc = util.bkr("list --config " .. q(cfg) .. " --repo " .. q(repo .. "/typo"))
    assert.are.equal(2, rc, out)
    out, rc = util.bkr("schedule show --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal(0, #since(http, posts))
    -- while a recipe that does the work does
    out, rc = util.bkr("verify --config " .. q(cfg) .. " --repo " .. q(repo .. "/typo"))
    assert.are.equal(2, rc, out)
    assert.are.equal(1, #since(http, posts))
  end)

  it("an error of several lines (libpq's) keeps its lines in the e-mail, indented, never a literal \\n", function()
    local repo = util.scratch("repo")
    local cfg = config(repo, email_channel(smtp.port), "connection: { host: /nonexistent-socket-dir }\n")
    local mails = smtp.count()
    local out, rc = util.bkr("backup --no-globals --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    local mail = read_mail(since(smtp, mails)[1])
    assert.matches("\nError: +pg%.connect: [^\n]+/nonexistent%-socket%-dir/[^\n]+\n +Is the server running", mail.body)
    assert.is_nil(mail.body:find("\\n", 1, true))
    assert.is_nil(mail.body:find(": nil", 1, true))
  end)

  it("an SMTP server that is down changes nothing in the run's exit status; the failure is logged and on stderr",
    function()
      local repo = util.scratch("repo")
      local cfg = config(repo, email_channel(1) .. webhook_channel(http.port))
      local posts = http.count()
      local out, rc = util.bkr("backup --no-globals --config " .. q(cfg))
      assert.are.equal(1, rc, out)
      assert.matches("bkr: notification by email failed: curl.smtp_send: 127.0.0.1:1: [^\n]*refused", out)
      assert.matches("2 attempts", out, 1, true)
      local failed = records_where(repo, "result", "notify failed")
      assert.are.equal(1, #failed)
      assert.are.same({ "email", "refused", "notify.channels[1]", 2 },
        { failed[1].channel, failed[1].kind, failed[1].channel_path, failed[1].attempts })
      -- the other channel still went out, and the run's own result is in the log
      assert.are.equal(1, #since(http, posts))
      assert.are.equal("failed", records_where(repo, "database", "nosuchdb")[1].result)
      assert.are.same({ "webhook" }, records_where(repo, "event", "notified")[1].channels)
      -- and a successful backup stays successful with the SMTP server down
      local db = util.new_database("nt", "create table t (x int);")
      local cfg_ok = config(repo, email_channel(1, "      on: [success]\n"))
      out, rc = util.bkr("backup --no-globals --db " .. db .. " --config " .. q(cfg_ok))
      assert.are.equal(0, rc, out)
      assert.matches("notification by email failed", out, 1, true)
    end)

  it("a success goes to channels with on: [failure, success], with sizes and durations; on: [failure] sends nothing",
    function()
      local db = util.new_database("nt", "create table t (x int); insert into t select generate_series(1, 5000);")
      local repo = util.scratch("repo")
      local cfg = config(repo, email_channel(smtp.port) .. webhook_channel(http.port, "      on: [failure, success]\n"))
      local mails, posts = smtp.count(), http.count()
      local out, rc = util.bkr("backup --no-globals --db " .. db .. " --config " .. q(cfg))
      assert.are.equal(0, rc, out)
      assert.are.equal(0, #since(smtp, mails))
      local new_posts = since(http, posts)
      assert.are.equal(1, #new_posts)
      local event = read_post(new_posts[1])
      assert.are.same({ "success", "ok", 0 }, { event.event, event.result, event.exit_code })
      assert.is_nil(event.rerun)
      local item = event.databases[1]
      assert.are.equal(db, item.database)
      local file = repo .. "/" .. item.file
      assert.are.equal(tonumber(util.sh("stat -c %s " .. q(file)):match("%d+")), item.bytes)
      assert.are.equal(tonumber(util.sh("gunzip -c " .. q(file) .. " | wc -c"):match("%d+")), item.raw_bytes)
      assert.is_true(item.seconds > 0 and item.seconds < 60)
      assert.matches("^OK backup of " .. db .. " on db1.test", event.summary)
    end)

  it("notify test reaches every channel and says so (exit 0); one channel down exits 1; no notify: section exits 2",
    function()
      local repo = util.scratch("repo")
      local command = recording_command()
      local cfg = config(repo, email_channel(smtp.port) .. webhook_channel(http.port, "      on: [drill]\n")
        .. "    - type: command\n      run: [" .. command .. "/notify.sh]\n")
      local mails, posts = smtp.count(), http.count()
      local out, rc = util.bkr("notify test --config " .. q(cfg))
      assert.are.equal(0, rc, out)
      assert.matches("sent    email    notify.channels[1]: 127.0.0.1:" .. smtp.port .. " (none) to admin@example.com",
        out, 1, true)
      assert.matches("sent    webhook  notify.channels[2]: 127.0.0.1:" .. http.port, out, 1, true)
      assert.matches("sent    command  notify.channels[3]", out, 1, true)
      assert.not_matches("secret%-path%-token", out)
      local new_mails = since(smtp, mails)
      assert.are.equal(1, #new_mails)
      assert.are.equal("[bkr] TEST notification from db1.test", read_mail(new_mails[1]).header.Subject)
      assert.are.equal("test", read_post(since(http, posts)[1]).event)
      assert.are.equal("test", json.decode(util.read(command .. "/event-1.json")).event)
      -- a test is not a run: nothing is logged as notified
      assert.are.same({}, records_where(repo, "event", "notified"))

      local down = config(repo, email_channel(1) .. webhook_channel(http.port))
      out, rc = util.bkr("notify test --config " .. q(down))
      assert.are.equal(1, rc, out)
      assert.matches("FAILED  email    notify.channels[1]: curl.smtp_send: 127.0.0.1:1:", out, 1, true)
      assert.matches("sent    webhook", out, 1, true)
      -- --quiet keeps the failure, drops the rest
      local quiet = util.bkr("notify test --quiet --config " .. q(down))
      assert.matches("FAILED  email    notify.channels[1]", quiet, 1, true)
      assert.is_nil(quiet:find("sent    webhook", 1, true))
      -- the report says it once, on stdout; a test is not a run: nothing in the log
      assert.not_matches("bkr: notification by email failed", out, 1, true)
      assert.are.same({}, records_where(repo, "result", "notify failed"))

      local bare = util.scratch("cfg") .. "/bkr.yaml"
      util.write(bare, "repository: " .. repo .. "\n")
      out, rc = util.bkr("notify test --config " .. q(bare))
      assert.are.equal(2, rc, out)
      assert.matches("has no notify: section", out, 1, true)
      out, rc = util.bkr("notify --config " .. q(cfg))
      assert.are.equal(2, rc, out)
      out, rc = util.bkr("notify --help")
      assert.are.equal(0, rc, out)
      assert.matches("exit codes: 0", out, 1, true)
    end)

  it("security: starttls with a server that offers no STARTTLS fails with kind tls and sends nothing in clear text",
    function()
      local plain = new_smtp("--auth bkr hunter2-secret")
      finally(plain.stop)
      local repo = util.scratch("repo")
      local cfg = config(repo, "    - type: email\n"
        .. "      smtp: { host: 127.0.0.1, port: " .. plain.port .. ", security: starttls, user: bkr,"
        .. " password_env: BKR_TEST_SMTP_PASSWORD }\n"
        .. "      from: bkr@example.com\n      to: [admin@example.com]\n")
      local out, rc = util.bkr("backup --no-globals --config " .. q(cfg),
        "BKR_TEST_SMTP_PASSWORD=hunter2-secret")
      assert.are.equal(1, rc, out)
      assert.matches("bkr: notification by email failed: [^\n]*STARTTLS[^\n]*%(tls, notify.channels%[1%], 1 attempt%)", out)
      -- the server saw the greeting and nothing after it: no AUTH, no MAIL, no message
      assert.are.equal("EHLO db1.test\n", plain.commands())
      assert.are.equal(0, plain.count())
      local failed = records_where(repo, "result", "notify failed")
      assert.are.equal("tls", failed[1].kind)
      assert.not_matches("hunter2", out)
      assert.not_matches("hunter2", util.read(repo .. "/bkr.log"))
    end)

  it("STARTTLS with a private CA and a password file: the mail goes over TLS, authenticated, and the password "
    .. "is in no log line, message or output", function()
      local dir = util.scratch("tls")
      local _, orc = util.sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost"
        .. " -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " .. q(dir .. "/key.pem")
        .. " -out " .. q(dir .. "/cert.pem") .. " 2>/dev/null")
      assert.are.equal(0, orc)
      local password = "Tr0ub4dor-&-3-secret"
      local server = new_smtp("--tls " .. q(dir .. "/cert.pem") .. " " .. q(dir .. "/key.pem") .. " --auth bkr "
        .. q(password))
      finally(server.stop)
      util.write(dir .. "/smtp.pass", password .. "\n")
      util.sh("chmod 0600 " .. q(dir .. "/smtp.pass"))
      local repo = util.scratch("repo")
      local channel = "    - type: email\n"
        .. "      smtp: { host: 127.0.0.1, port: " .. server.port .. ", security: starttls, user: bkr,"
        .. " password_file: " .. dir .. "/smtp.pass, ca_file: " .. dir .. "/cert.pem }\n"
        .. "      from: bkr@example.com\n      to: [admin@example.com]\n"
      local cfg = config(repo, channel .. webhook_channel(http.port))
      local posts = http.count()
      local out, rc = util.bkr("backup --no-globals --config " .. q(cfg))
      assert.are.equal(1, rc, out)
      assert.are.equal(1, server.count(), out .. server.commands())
      local mail = read_mail(server.received("mail", "eml")[1])
      assert.is_true(mail.meta.tls)
      assert.are.equal("bkr", mail.meta.auth)
      assert.matches("AUTH %u+ ok", server.commands())
      for _, text in ipairs({ out, util.read(repo .. "/bkr.log"), mail.header_block, mail.body,
        util.read(since(http, posts)[1]) }) do
        assert.is_nil(text:find(password, 1, true))
      end
      -- without the CA file the certificate does not verify: kind tls, nothing sent
      local untrusted = config(repo, (channel:gsub(", ca_file: [^ ]+ }", " }")))
      out, rc = util.bkr("notify test --config " .. q(untrusted))
      assert.are.equal(1, rc, out)
      assert.matches("(tls)", out, 1, true)
      assert.are.equal(1, server.count())
      -- a password file others may read is refused before anything is sent
      util.sh("chmod 0644 " .. q(dir .. "/smtp.pass"))
      out, rc = util.bkr("notify test --config " .. q(cfg))
      assert.are.equal(1, rc, out)
      assert.matches("password_file: " .. dir .. "/smtp.pass has mode 0644; give it mode 0600 or 0640 (permission)",
        out, 1, true)
      assert.is_nil(out:find(password, 1, true))
    end)

  it("a command channel gets the event as JSON on stdin; a command that fails is logged", function()
    local repo = util.scratch("repo")
    local command = recording_command()
    local cfg = config(repo, "    - type: command\n      run: [" .. command .. "/notify.sh, --team, db]\n")
    local out, rc = util.bkr("backup --no-globals --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    local event = json.decode(util.read(command .. "/event-1.json"))
    assert.are.same({ "failure", "backup", "nosuchdb" }, { event.event, event.recipe, event.databases[1].database })
    assert.are.equal("failure\n", util.read(command .. "/env-1"))

    local failing = recording_command(3)
    cfg = config(repo, "    - type: command\n      run: [" .. failing .. "/notify.sh]\n")
    out, rc = util.bkr("backup --no-globals --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    assert.matches("notification by command failed: [^\n]*exited with code 3: the pager says no", out)
    local failed = records_where(repo, "result", "notify failed")
    assert.are.equal("child_failed", failed[#failed].kind)
  end)

  it("notify --unit reports a job whose run died without reporting, and not one whose run reported itself", function()
    local repo = util.scratch("repo")
    local db = util.new_database("nt", "create table t (x int);")
    local fake = util.fake_pg_dump('kill -KILL "$PPID"; sleep 5')
    local cfg = config(repo, webhook_channel(http.port), "pg_bindir: " .. fake .. "\n")
    local unit = "bkr-nightly.service"

    -- the run fails and reports it itself: --unit sends nothing more
    local out, rc = util.bkr("backup --no-globals --config " .. q(cfg), "BKR_JOB=nightly")
    assert.are.equal(1, rc, out)
    local posts = http.count()
    out, rc = util.bkr("notify --unit " .. unit .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("job nightly: its run reported itself", out, 1, true)
    assert.are.equal(0, #since(http, posts))
    -- nor when the log was rotated in between: the run's records are in bkr.log.1 now
    util.sh("mv " .. q(repo .. "/bkr.log") .. " " .. q(repo .. "/bkr.log.1"))
    out, rc = util.bkr("notify --unit " .. unit .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("job nightly: its run reported itself", out, 1, true)
    assert.are.equal(0, #since(http, posts))

    -- the run is killed outright (SIGKILL, as the OOM killer does): no notified record
    out, rc = util.bkr("backup --no-globals --db " .. db .. " --config " .. q(cfg), "BKR_JOB=nightly")
    assert.are.equal(137, rc, out)
    local records = log_records(repo)
    -- (its last lines are its start and its steps up to the kill: no "notified", no finish)
    assert.are.equal("nightly", records[#records].job)
    for _, r in ipairs(records_where(repo, "run_id", records[#records].run_id)) do
      assert.are_not.equal("notified", r.event)
      assert.are_not.equal("finish", r.step)
    end
    out, rc = util.bkr("notify --unit " .. unit .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local new_posts = since(http, posts)
    assert.are.equal(1, #new_posts)
    local event = read_post(new_posts[1])
    assert.are.same({ "failure", "nightly", unit, "backup" }, { event.event, event.job, event.unit, event.recipe })
    assert.are.equal("job nightly (unit bkr-nightly.service) failed without reporting; see journalctl -u "
      .. "bkr-nightly.service", event.error)
    -- another job's record does not count for this one
    out, rc = util.bkr("notify --unit bkr-weekly.service --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal(2, #since(http, posts))
    out, rc = util.bkr("notify --unit 'bkr-x.service\nBcc: y' --config " .. q(cfg))
    assert.are.equal(2, rc, out)
  end)

  it("a drill sends its verdict with RTO and RPO to channels with on: [drill]", function()
    local db = util.new_database("nt", "create table t (x int); insert into t values (1), (2);")
    local repo = util.scratch("repo")
    util.backup_newest(repo, db)
    local cfg = config(repo, email_channel(smtp.port) .. webhook_channel(http.port, "      on: [drill]\n"))
    local mails, posts = smtp.count(), http.count()
    local out, rc = util.bkr("drill --db " .. db .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal(0, #since(smtp, mails)) -- on: [failure] (the default), and the drill passed
    local event = read_post(since(http, posts)[1])
    assert.are.same({ "drill", "passed" }, { event.event, event.drill.result })
    local item = event.drill.databases[1]
    assert.are.equal(db, item.database)
    assert.are.equal("passed", item.result)
    assert.is_true(item.rto_seconds >= 0 and item.rpo_seconds >= 0)
    assert.matches("^DRILL PASSED on db1.test", event.summary)
  end)
end)

describe("notifications under attack", function()
  setup(function()
    smtp = new_smtp()
    http = new_http()
  end)
  teardown(function()
    if smtp then smtp.stop() end
    if http then http.stop() end
  end)

  it("a database name with CR and LF cannot add a header or a recipient to the e-mail", function()
    local repo = util.scratch("repo")
    local cfg = config(repo, email_channel(smtp.port) .. webhook_channel(http.port))
    local mails, posts = smtp.count(), http.count()
    local evil = "evil\r\nBcc: victim@example.com\r\nX-Injected: yes\r\n\r\nfake body"
    -- (a database in the configuration: an unknown --db is refused before anything runs)
    local evil_cfg = config(repo, email_channel(smtp.port) .. webhook_channel(http.port),
      "databases: [\"evil\\r\\nBcc: victim@example.com\\r\\nX-Injected: yes\\r\\n\\r\\nfake body\"]\n")
    local out, rc = util.bkr("backup --no-globals --config " .. q(evil_cfg))
    assert.are.equal(1, rc, out)
    local mail = read_mail(since(smtp, mails)[1])
    local names = {}
    for _, h in ipairs(mail.headers) do names[#names + 1] = h[1] end
    assert.are.same(HEADERS, names)
    assert.is_nil(mail.header_block:find("\r\nBcc:", 1, true))
    assert.is_nil(mail.header_block:find("\r\nX-Injected", 1, true))
    assert.are.same({ "admin@example.com", "oncall@example.com" }, mail.meta.rcpt_tos)
    assert.matches("FAILED backup of evil Bcc: victim@example.com X-Injected: yes fake body on db1.test",
      mail.header.Subject, 1, true)
    -- in the body the name is shown escaped, on its own line
    assert.matches("evil\\r\\nBcc: victim@example.com\\r\\nX-Injected: yes\\r\\n\\r\\nfake body: failed", mail.body, 1, true)
    -- the JSON keeps the exact name
    assert.are.equal(evil, read_post(since(http, posts)[1]).databases[1].database)
  end)

  it("a huge error message is bounded in the subject, the body and the JSON", function()
    local repo = util.scratch("repo")
    local cfg = config(repo, email_channel(smtp.port) .. webhook_channel(http.port))
    local script = util.scratch("script") .. "/huge.lua"
    util.write(script, "require('lib.config').load{ config = " .. string.format("%q", cfg) .. " }\n"
      .. "error(('é' .. string.rep('x', 20)):rep(20000), 0)\n")
    local mails, posts = smtp.count(), http.count()
    local out, rc = util.bkr("run " .. q(script))
    assert.are.equal(1, rc)
    assert.is_true(#out > 400000)
    local mail = read_mail(since(smtp, mails)[1])
    assert.is_true(#mail.header.Subject <= 210, mail.header.Subject)
    assert.matches("^%[bkr%] FAILED huge on db1.test: éxxx", mail.header.Subject)
    assert.is_true(#mail.body < 6000, tostring(#mail.body))
    assert.matches("%(%d+ more bytes%)", mail.body)
    local event = read_post(since(http, posts)[1])
    assert.is_true(#event.error < 2100)
    assert.is_true(#util.read(since(http, posts)[1]) < 12000)
  end)

  it("an SMTP server that goes silent after the message is cut off by timeout_seconds, not libcurl's 120 s", function()
    local hung = new_smtp("--hang-after-data")
    finally(hung.stop)
    local repo = util.scratch("repo")
    local cfg = config(repo, email_channel(hung.port, "      timeout_seconds: 2\n"))
    local started = os.time()
    local out, rc = util.bkr("backup --no-globals --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    -- two attempts of 2 s each (retries: 1)
    assert.is_true(os.time() - started < 12, "took " .. (os.time() - started) .. " s")
    assert.are.equal(2, hung.count())
    assert.matches("notification by email failed: [^\n]*%(timeout, notify.channels%[1%], 2 attempts%)", out)
  end)

  it("a webhook that hangs is cut off by timeout_seconds and logged as a timeout", function()
    local hung = new_http("--hang 30")
    finally(hung.stop)
    local repo = util.scratch("repo")
    local cfg = config(repo, webhook_channel(hung.port, "      timeout_seconds: 2\n"))
    local started = os.time()
    local out, rc = util.bkr("backup --no-globals --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    -- two attempts of 2 s each (retries: 1), not 30 s
    assert.is_true(os.time() - started < 12, "took " .. (os.time() - started) .. " s")
    assert.are.equal(2, hung.count())
    assert.matches("notification by webhook failed: curl.http_post: 127.0.0.1:" .. hung.port
      .. ": [^\n]*%(timeout, notify.channels%[1%], 2 attempts%)", out)
    assert.not_matches("secret%-path%-token", out)
    assert.not_matches("secret%-path%-token", util.read(repo .. "/bkr.log"))
    assert.are.equal("timeout", records_where(repo, "result", "notify failed")[1].kind)
  end)

  it("a webhook that answers 500 and then 200 is retried and delivered", function()
    -- (busted keeps one finally per test: it stops both servers)
    local flaky, refusing = new_http("--statuses 500,200"), nil
    finally(function()
      flaky.stop()
      if refusing then refusing.stop() end
    end)
    local repo = util.scratch("repo")
    local cfg = config(repo, webhook_channel(flaky.port))
    local out, rc = util.bkr("backup --no-globals --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    assert.are.equal(2, flaky.count())
    assert.not_matches("notification by webhook failed", out)
    assert.are.same({}, records_where(repo, "result", "notify failed"))
    assert.are.same({ "webhook" }, records_where(repo, "event", "notified")[1].channels)
    -- a 4xx is not worth another try: one call, logged as rejected
    refusing = new_http("--statuses 403")
    cfg = config(repo, webhook_channel(refusing.port))
    out = util.bkr("backup --no-globals --config " .. q(cfg))
    assert.are.equal(1, refusing.count())
    assert.matches("HTTP 403 (rejected, notify.channels[1], 1 attempt)", out, 1, true)
  end)

  it("SIGTERM during a backup: every channel still says the run was interrupted by SIGTERM, exit 143", function()
    local db = util.new_database("nt", "create table t (x int);")
    local repo = util.scratch("repo")
    local fake = util.fake_pg_dump('touch "$FAKEBIN/started"; exec sleep 30')
    local command = recording_command()
    local cfg = config(repo, email_channel(smtp.port) .. webhook_channel(http.port)
      .. "    - type: command\n      run: [" .. command .. "/notify.sh]\n", "pg_bindir: " .. fake .. "\n")
    local mails, posts = smtp.count(), http.count()
    local bkr = R.start_bkr("backup --no-globals --db " .. db .. " --config " .. q(cfg))
    assert.is_true(R.wait_for(fake .. "/started", 30), "pg_dump never started")
    bkr.kill("TERM")
    assert.are.equal(143, bkr.wait(60), bkr.output())
    assert.are.equal(1, #since(smtp, mails), bkr.output())
    assert.are.equal(1, #since(http, posts), bkr.output())
    local mail = read_mail(since(smtp, mails)[1])
    assert.are.equal("[bkr] INTERRUPTED backup of " .. db .. " on db1.test: interrupted by SIGTERM", mail.header.Subject)
    local event = read_post(since(http, posts)[1])
    assert.are.same({ "failure", "interrupted", "SIGTERM", 143, "interrupted by SIGTERM" },
      { event.event, event.result, event.interrupted, event.exit_code, event.error })
    local from_command = json.decode(util.read(command .. "/event-1.json"))
    assert.are.equal("interrupted by SIGTERM", from_command.error)
  end)
end)

describe("the notify: section", function()
  local function refused(section, message)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: /nonexistent\nnotify:\n" .. section)
    local out, rc = util.bkr("notify test --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches("bkr: configuration: " .. message, out, 1, true)
  end

  it("is validated at load, exit 2, with the key's path in every message and never a value", function()
    local email = "  channels:\n    - type: email\n      from: bkr@example.com\n      to: [a@example.com]\n"
    refused("  channels: []\n", "notify.channels: expected at least one item")
    refused("  retries: 11\n  channels:\n    - type: command\n      run: [/bin/true]\n",
      "notify.retries: expected an integer from 0 to 10")
    refused("  channels:\n    - type: pager\n", "notify.channels[1].type: expected email, webhook or command")
    refused(email .. "      smtp: { host: m.example.com, port: 70000 }\n",
      "notify.channels[1].smtp.port: expected an integer from 1 to 65535")
    refused(email .. "      smtp: { host: m.example.com, security: none, user: u, password_env: P }\n",
      "notify.channels[1].smtp.security: none would send the password in clear text")
    refused(email .. "      smtp: { host: m.example.com, user: u }\n",
      "notify.channels[1].smtp: user needs password_file or password_env")
    refused(email .. "      smtp: { host: m.example.com, password: hunter2 }\n",
      "notify.channels[1].smtp.password: unknown key")
    refused("  channels:\n    - type: email\n      smtp: { host: m.example.com }\n      to: [a@example.com]\n",
      "notify.channels[1].from: required")
    refused(email .. "      smtp: { host: m.example.com }\n      on: [failure, sometimes]\n",
      "notify.channels[1].on[2]: expected one of: failure, success, drill")
    refused("  channels:\n    - type: email\n      smtp: { host: m.example.com }\n      from: bkr@example.com\n"
      .. "      to: ['a@example.com>\\r\\nRCPT TO:<b@example.com']\n",
      "notify.channels[1].to[1]: expected an e-mail address")
    refused("  channels:\n    - type: webhook\n      url: https://user:pw@hooks.example.com/x\n",
      "notify.channels[1].url: a user or password in the URL is refused")
    refused("  channels:\n    - type: webhook\n      url: https://hooks.example.com/x\n      headers: { X-A: \"a\\r\\nB: c\" }\n",
      "notify.channels[1].headers.X-A: expected one line without control characters")
    refused("  channels:\n    - type: command\n      run: [page-oncall]\n",
      "notify.channels[1].run[1]: expected an absolute path")
  end)
end)

describe("the notify: examples in the documentation", function()
  -- Load a configuration (never sending: only failure and drill channels, and the run succeeds).
  local function load(text)
    local dir = util.scratch("doc")
    util.write(dir .. "/bkr.yaml", text)
    util.write(dir .. "/load.lua", "local cfg = require('lib.config').load{ config = " .. string.format("%q", dir .. "/bkr.yaml")
      .. " }\nprint(#cfg.notify.channels)\n")
    return util.bkr("run " .. q(dir .. "/load.lua"))
  end

  it("docs/bkr.example.yaml's commented notify: section is valid once uncommented", function()
    local example = util.read(SOURCE .. "/docs/bkr.example.yaml")
    local block = example:match("\n(# notify:\n.-)\n[^#]") or example:match("\n(# notify:\n.*)$")
    assert.is_truthy(block)
    local out, rc = load((block:gsub("\n# ?", "\n"):gsub("^# ", "")) .. "\n")
    assert.are.equal(0, rc, out)
    assert.are.equal("3\n", out)
  end)

  it("docs/notify.md's configuration example is valid", function()
    local doc = util.read(SOURCE .. "/docs/notify.md")
    local block = doc:match("```yaml\n(notify:\n.-)```")
    assert.is_truthy(block)
    local out, rc = load(block)
    assert.are.equal(0, rc, out)
    assert.are.equal("3\n", out)
  end)
end)

describe("lib/notify_email", function()
  it("writes a message Python's parser reads back exactly: long lines, '=', UTF-8, a long non-ASCII subject", function()
    local dir = util.scratch("mail")
    local body = "Fehler: " .. string.rep("Größe=100% ", 40) .. "\nline two ends with a space \n.\n-- \nend"
    local subject = string.rep("Sicherung fehlgeschlagen für Datenbank «Kunden» ", 4)
    util.write(dir .. "/make.lua", "local m = require('lib.notify_email').message{ from = 'bkr@example.com',"
      .. " to = { 'a@example.com' }, subject = " .. string.format("%q", subject) .. ", body = "
      .. string.format("%q", body) .. ", host = 'db1.test', time = 1796004007, event = 'failure' }\n"
      .. "local f = assert(io.open(" .. string.format("%q", dir .. "/m.eml") .. ", 'wb')) f:write(m) f:close()\n"
      .. "for line in m:gmatch('([^\\n]*)\\n') do assert(#line <= 78 or line:match('^Subject'), line) end\n")
    local out, rc = util.bkr("run " .. q(dir .. "/make.lua"))
    assert.are.equal(0, rc, out)
    local raw = util.read(dir .. "/m.eml")
    assert.is_nil(raw:find("[\128-\255]"), "8-bit byte in the message")
    assert.is_nil(raw:gsub("\r\n", ""):find("[\r\n]"), "a bare CR or LF")
    local out2, rc2 = util.sh(PYTHON .. " " .. q(SOURCE .. "/tests/support/read_mail.py") .. " " .. q(dir .. "/m.eml"))
    assert.are.equal(0, rc2, out2)
    local mail = json.decode(out2)
    assert.are.same({}, mail.defects)
    assert.are.equal(body .. "\n", (mail.body:gsub("\r\n", "\n")))
    local decoded
    for _, h in ipairs(mail.headers) do if h[1] == "Subject" then decoded = h[2] end end
    -- cut to 200 bytes on a character boundary, and said so
    assert.is_true(#decoded <= 200 and #decoded > 190, decoded)
    local kept = decoded:sub(1, -4)
    assert.are.equal("...", decoded:sub(-3))
    assert.are.equal(subject:sub(1, #kept), kept)
    assert.is_truthy(utf8.len(decoded))
  end)
end)
