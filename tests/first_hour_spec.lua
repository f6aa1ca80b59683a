-- docs/first-hour.md, run for real: a newcomer's page whose commands rot is worse than none.
--
-- Every ```sh block runs in order, in a fresh `bash -euo pipefail`, with `bkr` on the PATH
-- resolving to $BKR_BIN and a `sudo` that runs `sudo -u USER cmd` as USER (runuser) and
-- `sudo cmd` as root, so the page's one operating user, postgres, is the user bkr really
-- runs as here. The page names real paths (/var/backups/bkr, /etc/bkr, /etc/shop,
-- /etc/systemd/system) and a mail server; each is replaced by a scratch directory or the
-- loopback SMTP server before a block runs, and a block that still names one fails the test
-- instead of touching this machine. The ```yaml block marked <!-- test: file PATH --> is
-- written to PATH (as postgres, as the page says). Blocks marked skip are not run.
-- Point BKR_FIRST_HOUR at an edited copy to see the test catch a broken page.
local util = require "support.util"
local markdown = require "support.markdown"
local q = util.quote

local SOURCE = os.getenv("BKR_SOURCE_DIR") or "."
local PAGE = os.getenv("BKR_FIRST_HOUR") or (SOURCE .. "/docs/first-hour.md")
local BKR = util.bkr_bin()

-- The blocks that cannot run in a test, by their reason.
local EXPECTED_SKIPS = { "enables systemd timers" }

-- The real paths the page names; none may be left in a block once replaced.
local REAL_PATHS = { "/var/backups", "/etc/bkr", "/etc/shop", "/etc/systemd" }
local NEVER_RUN = { "apt%-get", "systemctl", "make install" }

local function start_smtp(dir)
  util.sh("mkdir -p " .. q(dir))
  util.sh("/usr/bin/python3 " .. q(SOURCE .. "/tests/support/smtp_server.py") .. " " .. q(dir)
    .. " >" .. q(dir .. "/server.log") .. " 2>&1 & echo $! > " .. q(dir .. "/pid"))
  for _ = 1, 100 do
    local f = io.open(dir .. "/port")
    local port = f and f:read("a")
    if f then f:close() end
    if port and port:match("^%d+") then return port:match("^%d+") end
    util.sh("sleep 0.1")
  end
  error("the SMTP server did not start:\n" .. (util.read(dir .. "/server.log") or ""))
end

local function stop_smtp(dir)
  util.sh("kill $(cat " .. q(dir .. "/pid") .. ") 2>/dev/null")
end

-- A directory with `bkr` (the binary under test) and the test's `sudo`, first on the PATH.
local function bin_dir()
  local dir = util.scratch("first-hour-bin")
  local target = BKR:sub(1, 1) == "/" and BKR or (util.sh("pwd"):gsub("\n", "") .. "/" .. BKR)
  util.sh("ln -s " .. q(target) .. " " .. q(dir .. "/bkr"))
  util.write(dir .. "/sudo", [[#!/bin/sh
# sudo for the first-hour test: "sudo -u USER cmd..." runs cmd as USER, "sudo cmd..." as root.
if [ "$1" = "-u" ]; then user=$2; shift 2; exec runuser -u "$user" -- "$@"; fi
exec "$@"
]])
  util.sh("chmod 0755 " .. q(dir) .. " " .. q(dir .. "/sudo"))
  return dir
end

local function replace_all(text, replacements)
  for _, pair in ipairs(replacements) do
    text = text:gsub(pair[1]:gsub("%p", "%%%0"), (pair[2]:gsub("%%", "%%%%")))
  end
  return text
end

describe("docs/first-hour.md", function()
  it("takes a new server from nothing to verified, drilled, scheduled and alerting backups as postgres", function()
    local page = markdown.parse(util.read(PAGE))
    local work = util.scratch("first-hour")
    util.sh("chmod 0755 " .. q(work))
    local smtp_dir = work .. "/smtp"
    local port = start_smtp(smtp_dir)
    finally(function() stop_smtp(smtp_dir) end)

    -- The machine the page starts from: PostgreSQL with two databases, an application whose
    -- configuration only root may read, nothing of bkr's.
    local suffix = tostring(math.random(1e6))
    local shop, billing = "shop_fh" .. suffix, "billing_fh" .. suffix
    util.psql("create database " .. shop)
    util.psql("create database " .. billing)
    util.psql("create table orders (id int primary key, total numeric); "
      .. "insert into orders select g, g * 1.5 from generate_series(1, 500) g", shop)
    util.psql("create table invoices (id int primary key, supplier text); "
      .. "insert into invoices select g, 'supplier ' || g from generate_series(1, 300) g", billing)
    local app = work .. "/shop"
    util.sh("mkdir -p " .. q(app) .. " " .. q(work .. "/units"))
    util.write(app .. "/app.yaml", "database:\n  host: localhost\n  password: s3cret-app\n")
    util.write(app .. "/.env", "SHOP_API_TOKEN=tok-123\nSHOP_MODE=live\n")
    util.sh("chmod 0600 " .. q(app .. "/app.yaml") .. " " .. q(app .. "/.env"))

    local replacements = {
      { "/var/backups/bkr", work .. "/repo" },
      { "/etc/bkr", work .. "/bkr-etc" },
      { "/etc/shop", app },
      { "/etc/systemd/system", work .. "/units" },
      { "[shop, billing]", "[" .. shop .. ", " .. billing .. "]" },
      { "--db shop ", "--db " .. shop .. " " },
      { "mail.example.com", "127.0.0.1" },
      { "port: 587", "port: " .. port },
      { "security: starttls", "security: none" }, -- the loopback server offers no TLS
    }
    local path = bin_dir() .. ":" .. os.getenv("PATH")

    local skipped, ran = {}, 0
    for _, section in ipairs(page.sections) do
      for _, block in ipairs(section.blocks) do
        local where = string.format("%s, block at line %d", section.title, block.line)
        if block.file then
          local target = replace_all(block.file, replacements)
          util.write(work .. "/config.tmp", replace_all(block.code, replacements))
          local out, rc = util.sh("runuser -u postgres -- tee " .. q(target) .. " < " .. q(work .. "/config.tmp")
            .. " >/dev/null 2>&1; echo $?")
          assert(out:match("^0"), where .. ": writing " .. target .. " as postgres failed " .. out .. tostring(rc))
        elseif block.lang == "sh" and block.skip then
          skipped[#skipped + 1] = block.skip
        elseif block.lang == "sh" then
          local code = replace_all(block.code, replacements)
          for _, real in ipairs(REAL_PATHS) do
            assert(not code:find(real, 1, true), where .. ": names " .. real .. " after the test's replacements")
          end
          for _, pattern in ipairs(NEVER_RUN) do
            assert(not code:find(pattern), where .. ": '" .. pattern .. "' must not run in a test; mark it skip")
          end
          local script = work .. "/block" .. block.line .. ".sh"
          util.write(script, "cd " .. q(work) .. "\n" .. code)
          local out, rc = util.sh("cd " .. q(work) .. " && env PATH=" .. q(path) .. " bash -euo pipefail "
            .. q(script) .. " 2>&1")
          assert(rc == (block.expect or 0), string.format("%s: exit %s, expected %d\n--- block\n%s--- output\n%s",
            where, tostring(rc), block.expect or 0, code, out))
          -- no message a newcomer sees may point into bkr's own source
          assert(not out:find("%.lua:%d+:"), where .. ": a message shows a recipe's file and line\n" .. out)
          ran = ran + 1
        end
      end
    end
    assert.are.same(EXPECTED_SKIPS, skipped)
    assert(ran >= 8, "the page ran only " .. ran .. " blocks")

    -- What the page promised, checked with other tools than bkr:
    local repo = work .. "/repo"
    -- everything in the repository belongs to postgres, whoever ran the command
    assert.are.equal("", util.sh("find " .. q(repo) .. " ! -user postgres"))
    -- the key is postgres's and private
    assert.are.equal("postgres 600\n", util.sh("stat -c '%U %a' " .. q(work .. "/bkr-etc/backup.key")))
    -- encrypted backups of both databases, each matching its sidecar
    for _, db in ipairs({ shop, billing }) do
      local files = util.sh("ls " .. q(repo .. "/daily") .. " | grep '_" .. db .. "\\.sql\\.gz\\.enc$'")
      local file = files:match("[^\n]+")
      assert(file, "no encrypted backup of " .. db)
      local _, rc = util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum -c " .. q(file .. ".sha256"))
      assert.are.equal(0, rc)
    end
    -- the restore check's database is gone again; the live one untouched
    assert.are.equal("0", util.psql("select count(*) from pg_database where datname = 'shop_check'"))
    assert.are.equal("500", util.psql("select count(*) from orders", shop))
    -- a drill report, a config backup with the secrets sealed, systemd units written
    assert.are_not.equal("", util.sh("ls " .. q(repo .. "/drills") .. " | grep 'drill_.*\\.md$'"))
    assert.are_not.equal("", util.sh("ls " .. q(repo .. "/config")))
    assert.are.equal("", util.sh("grep -rl -e s3cret-app -e tok-123 " .. q(repo)))
    assert.are_not.equal("", util.sh("ls " .. q(work .. "/units") .. " | grep '^bkr-backup-daily\\.timer$'"))
    -- the test mail reached the server
    assert.are_not.equal("", util.sh("ls " .. q(smtp_dir) .. " | grep '^mail-'"))
  end)
end)
