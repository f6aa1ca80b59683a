-- The run log (recipes/lib/logging.lua, docs/logging.md): one JSON line per step with the
-- run's id, levels, rotation by size without losing lines, --quiet, the finish line, and a
-- symlink at the log's path. Checked through the binary, with jq, ls, stat and cat.
local util = require "support.util"
local q = util.quote
local run = util.bkr

local db = util.new_database("logged", "create table t (n int); insert into t select generate_series(1, 100);")

-- Every line of a log file as jq reads it (jq -c: one compact object per line); asserts
-- that jq parses the whole file.
local function jq_lines(path, filter)
  local out, rc = util.sh("jq -c " .. q(filter or ".") .. " " .. q(path) .. " 2>&1")
  assert.are.equal(0, rc, "jq cannot parse " .. path .. ": " .. out)
  local lines = {}
  for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
  return lines
end

-- The values of several fields of the selected lines, joined by commas, one string a line.
local function field(path, filter)
  return jq_lines(path, "[" .. filter .. "] | select(length > 0) | map(tostring) | join(\",\")")
end

-- The distinct values of a jq filter over a log file (raw strings), sorted.
local function distinct(path, filter)
  local out, rc = util.sh("jq -r " .. q(filter) .. " " .. q(path) .. " | sort -u")
  assert.are.equal(0, rc, out)
  local list = {}
  for line in out:gmatch("[^\n]+") do list[#list + 1] = line end
  return list
end

local function config_file(text)
  local path = util.scratch("cfg") .. "/bkr.yaml"
  util.write(path, text)
  return path
end

describe("the run log", function()
  it("gets one line per step of a backup, every line with the run's id, recipe, host, job and level", function()
    local repo = util.scratch("repo")
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db, "BKR_JOB=nightly")
    assert.are.equal(0, rc, out)
    local log = repo .. "/bkr.log"
    local steps = jq_lines(log, ".step")
    assert.are.same({ '"start"', '"connect"', '"free_space"', '"dump"', '"globals"', '"rotate"', '"finish"' }, steps)
    local ids = distinct(log, ".run_id")
    assert.are.equal(1, #ids)
    assert.matches("^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ%-%d+$", ids[1])
    assert.are.same({ "backup,nightly,info" }, distinct(log, "[.recipe, .job, .level] | join(\",\")"))
    local host = util.sh("cat /proc/sys/kernel/hostname"):gsub("\n", "")
    assert.are.same({ host }, distinct(log, ".host"))
    -- the dump's line has its sizes and time; the finish line its exit code
    assert.are.same({ '"' .. db .. ',ok,' .. util.sh("stat -c %s " .. q(repo .. "/daily/")
      .. "backup_*_" .. db .. ".sql.gz"):gsub("\n", "") .. '"' },
      field(log, 'select(.step == "dump") | .database, .result, .bytes'))
    assert.are.same({ "true" }, jq_lines(log, 'select(.step == "dump") | .seconds > 0 and .raw_bytes > .bytes'))
    assert.are.same({ "0" }, jq_lines(log, 'select(.step == "finish") | .exit_code'))

    -- a second run has its own id
    out, rc = run("verify --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    assert.are.equal(2, #distinct(log, ".run_id"))
    -- (the globals of the same run are verified with it)
    assert.are.same({ '"start"', '"check"', '"check"', '"finish"' }, jq_lines(log, 'select(.recipe == "verify") | .step'))
  end)

  it("writes only lines at or above the level: info by default, --log-level debug adds the details, "
    .. "logging.level error keeps the failures", function()
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.are.same({ "info" }, distinct(repo .. "/bkr.log", ".level"))

    local debug = util.scratch("repo")
    out, rc = run("backup --no-globals --log-level debug --repo " .. q(debug) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.are.same({ '"lock"', '"databases"' }, jq_lines(debug .. "/bkr.log", 'select(.level == "debug") | .step'))

    -- the file says error; the command line wins over it
    -- (a configured database that is gone fails on its own; --db would refuse it before starting)
    local cfg = config_file("logging:\n  level: error\ndatabases: [" .. db .. ", no_such_database]\n")
    local quiet = util.scratch("repo")
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --repo " .. q(quiet))
    assert.are.equal(1, rc, out)
    assert.are.same({ '"dump,no_such_database,error"', '"finish,null,error"' },
      field(quiet .. "/bkr.log", ".step, .database, .level"))
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --log-level info --repo " .. q(quiet) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.are.equal("start", util.sh("jq -r 'select(.level == \"info\") | .step' " .. q(quiet .. "/bkr.log")
      .. " | head -n 1"):gsub("\n", ""))
  end)

  it("refuses a level it does not know, a relative file and a tiny max_bytes, naming the key", function()
    local repo = util.scratch("repo")
    local out, rc = run("rotate --log-level loud --repo " .. q(repo))
    assert.are.equal(2, rc, out)
    assert.matches("%-%-log%-level must be debug, info, warning or error", out)
    for text, message in pairs({
      ["logging:\n  level: loud\n"] = "logging.level: expected debug, info, warning or error",
      ["logging:\n  file: logs/bkr.log\n"] = "logging.file: expected an absolute path",
      ["logging:\n  max_bytes: 10\n"] = "logging.max_bytes: expected an integer >= 1024",
      ["logging:\n  keep: 0\n"] = "logging.keep: expected an integer from 1 to 1000",
      ["logging:\n  colour: blue\n"] = "logging.colour: unknown key",
    }) do
      out, rc = run("rotate --config " .. q(config_file(text)) .. " --repo " .. q(repo))
      assert.are.equal(2, rc, out)
      assert.matches(message, out, 1, true)
    end
  end)

  it("goes to logging.file when one is configured, private (0600, or 0640 when its directory is "
    .. "group-readable)", function()
    local dir = util.scratch("logs")
    util.sh("chmod 0750 " .. q(dir))
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --config " .. q(config_file("logging:\n  file: " .. dir .. "/bkr.log\n"))
      .. " --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.is_nil(io.open(repo .. "/bkr.log"), "nothing in the repository")
    assert.are.equal("640", util.sh("stat -c %a " .. q(dir .. "/bkr.log")):match("%d+"))
    assert.are.same({ '"start"', '"connect"', '"free_space"', '"dump"', '"rotate"', '"finish"' },
      jq_lines(dir .. "/bkr.log", ".step"))
  end)
end)

describe("rotation", function()
  it("keeps logging.keep files, each within max_bytes, and the newest lines", function()
    local repo = util.scratch("repo")
    util.sh("chmod 0700 " .. q(repo))
    local cfg = config_file("logging:\n  max_bytes: 1024\n  keep: 3\n")
    for _ = 1, 12 do
      local out, rc = run("rotate --dry-run --config " .. q(cfg) .. " --repo " .. q(repo))
      assert.are.equal(0, rc, out)
    end
    assert.are.same({ "bkr.log", "bkr.log.1", "bkr.log.2", "bkr.log.3" },
      (function()
        local list = {}
        for _, name in ipairs(util.listdir(repo)) do
          if name:match("^bkr%.log") and not name:match("%.lock$") then list[#list + 1] = name end
        end
        return list
      end)())
    for _, name in ipairs({ "bkr.log", "bkr.log.1", "bkr.log.2", "bkr.log.3" }) do
      local size = tonumber((util.sh("stat -c %s " .. q(repo .. "/" .. name)):match("%d+")))
      assert.is_true(size <= 1024 and size > 0, name .. " is " .. size .. " bytes")
      jq_lines(repo .. "/" .. name) -- every line whole
    end
    -- the newest run is whole in the newest file: start, rotate, finish
    local last = util.sh("tail -n 1 " .. q(repo .. "/bkr.log") .. " | jq -r .run_id"):gsub("\n", "")
    assert.are.same({ '"start"', '"rotate"', '"finish"' },
      jq_lines(repo .. "/bkr.log", 'select(.run_id == "' .. last .. '") | .step'))
    assert.are.equal("600", util.sh("stat -c %a " .. q(repo .. "/bkr.log.3")):match("%d+"))
  end)

  it("loses no line when runs write and rotate at the same time", function()
    local repo = util.scratch("repo")
    local cfg = config_file("logging:\n  max_bytes: 1024\n  keep: 1000\n")
    -- four shells, each running bkr ten times; and four writers of 300 lines each, at once
    local writer = util.scratch("writer") .. "/write.lua"
    util.write(writer, [[
local logging = require "lib.logging"
local dir, id = ...
logging.configure({ repository = dir, logging = { max_bytes = 1024, keep = 1000 } })
for n = 1, 300 do logging.step("line", { writer = id, n = n }) end
]])
    local script = {}
    for w = 1, 4 do
      script[#script + 1] = "(for i in $(seq 10); do " .. q(util.bkr_bin()) .. " rotate --dry-run --config " .. q(cfg)
        .. " --repo " .. q(repo) .. " >/dev/null 2>&1; done) &"
      script[#script + 1] = q(util.bkr_bin()) .. " run " .. q(writer) .. " " .. q(repo) .. " w" .. w .. " &"
    end
    script[#script + 1] = "wait"
    util.sh(table.concat(script, "\n"))
    local files = util.sh("ls " .. q(repo) .. " | grep -c '^bkr\\.log\\(\\.[0-9]*\\)\\?$'"):match("%d+")
    assert.is_true(tonumber(files) > 10, "it rotated: " .. files .. " files")
    -- every line whole (jq parses every file), and all of them there
    local all, jrc = util.sh("ls " .. q(repo) .. " | grep '^bkr\\.log\\(\\.[0-9]*\\)\\?$' | (cd " .. q(repo)
      .. " && xargs cat) | jq -r '[.recipe, .step, .writer // \"\"] | join(\",\")'")
    assert.are.equal(0, jrc, all)
    local count, per_writer, runs = 0, {}, {}
    for line in all:gmatch("[^\n]+") do
      count = count + 1
      local recipe, step, w = line:match("^([^,]*),([^,]*),([^,]*)$")
      if step == "line" then per_writer[w] = (per_writer[w] or 0) + 1 end
      if recipe == "rotate" then runs[step] = (runs[step] or 0) + 1 end
    end
    assert.are.same({ w1 = 300, w2 = 300, w3 = 300, w4 = 300 }, per_writer)
    assert.are.same({ start = 40, rotate = 40, finish = 40 }, runs)
    assert.are.equal(4 * 301 + 40 * 3, count)
  end)
end)

describe("--quiet", function()
  it("silences progress lines but never an error", function()
    local repo = util.scratch("repo")
    local stdout, rc = util.sh(q(util.bkr_bin()) .. " backup --quiet --repo " .. q(repo) .. " --db " .. db .. " 2>/dev/null")
    assert.are.equal(0, rc)
    assert.are.equal("", stdout)
    local gone = config_file("databases: [no_such_database]\n")
    local out, rc2 = run("backup --quiet --no-globals --config " .. q(gone) .. " --repo " .. q(repo))
    assert.are.equal(1, rc2, out)
    assert.matches('database "no_such_database" failed', out)
    -- and it is in every recipe's help
    local help = run("verify --help")
    assert.matches("%-%-quiet", help)
    assert.matches("%-%-log%-level LEVEL", help)
  end)
end)

describe("the finish line", function()
  it("carries the exit code of a run that failed", function()
    local repo = util.scratch("repo")
    local gone = config_file("databases: [no_such_database]\n")
    local out, rc = run("backup --no-globals --config " .. q(gone) .. " --repo " .. q(repo))
    assert.are.equal(1, rc, out)
    assert.are.same({ '"1,error"' }, field(repo .. "/bkr.log", 'select(.step == "finish") | .exit_code, .level'))
    -- a run stopped by an error object: its message too
    out, rc = run("verify --repo " .. q(repo) .. " --db no_such_database")
    assert.are.equal(2, rc, out)
    assert.are.same({ '"2,no backups of no_such_database in ' .. repo .. '; databases with backups: none"' },
      field(repo .. "/bkr.log", 'select(.step == "finish" and .recipe == "verify") | .exit_code, .message'))
  end)

  it("is written when the run is stopped by SIGTERM", function()
    local bindir, cfg = util.fake_pg_dump('echo $$ > "$FAKEBIN/pid"\nexec sleep 30')
    local repo = util.scratch("repo")
    local pid = util.sh(q(util.bkr_bin()) .. " backup --no-globals --config " .. q(cfg) .. " --repo " .. q(repo)
      .. " --db " .. db .. " >/dev/null 2>&1 & echo $!"):gsub("%s", "")
    for _ = 1, 200 do
      if io.open(bindir .. "/pid") then break end
      util.sh("sleep 0.05")
    end
    util.sh("kill -TERM " .. pid .. "; while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    assert.are.same({ '"143,SIGTERM,error"' },
      field(repo .. "/bkr.log", 'select(.step == "finish") | .exit_code, .interrupted, .level'))
  end)
end)

describe("a symlink at the log's path", function()
  it("is not followed: its target stays as it was, the run goes on and says so", function()
    local repo = util.scratch("repo")
    local target = util.scratch("elsewhere") .. "/target"
    util.write(target, "precious\n")
    util.sh("ln -s " .. q(target) .. " " .. q(repo .. "/bkr.log"))
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.matches("cannot write the log", out)
    assert.are.equal("precious\n", util.read(target))
    assert.are.equal("link", util.sh("stat -c %F " .. q(repo .. "/bkr.log")):match("symbolic (link)"))
    -- nor at a configured logging.file, nor when rotation would rename it
    local dir = util.scratch("logs")
    util.sh("ln -s " .. q(target) .. " " .. q(dir .. "/bkr.log"))
    local cfg = config_file("logging:\n  file: " .. dir .. "/bkr.log\n  max_bytes: 1024\n")
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.matches("cannot write the log", out)
    assert.are.equal("precious\n", util.read(target))
    assert.are.same({ "bkr.log" }, util.listdir(dir))
  end)

  it("at the rotation lock stops rotation with a warning, never silently, and is not followed", function()
    local repo = util.scratch("repo")
    local target = util.scratch("elsewhere") .. "/target"
    util.write(target, "precious\n")
    util.sh("ln -s " .. q(target) .. " " .. q(repo .. "/bkr.log.lock"))
    local cfg = config_file("logging:\n  max_bytes: 1024\n")
    local warned = 0
    for _ = 1, 6 do
      local out, rc = run("rotate --dry-run --config " .. q(cfg) .. " --repo " .. q(repo))
      assert.are.equal(0, rc, out)
      local _, n = out:gsub("bkr: cannot rotate the log: ", "")
      assert.is_true(n <= 1, out) -- once per run at most
      warned = warned + n
    end
    assert.is_true(warned >= 1)
    assert.are.equal("precious\n", util.read(target))
  end)
end)

describe("secrets", function()
  it("never reach the log, not even at level debug", function()
    local repo = util.scratch("repo")
    local secret = "pw-" .. math.random(1e9) .. "-s3cret"
    local cfg = config_file("connection:\n  password_env: BKR_TEST_SECRET\ndatabases: [" .. db .. ", no_such_database]\n")
    local out, rc = run("backup --log-level debug --config " .. q(cfg) .. " --repo " .. q(repo),
      "BKR_TEST_SECRET=" .. q(secret))
    assert.are.equal(1, rc, out)
    assert.is_true(#jq_lines(repo .. "/bkr.log") >= 8)
    assert.is_nil(util.read(repo .. "/bkr.log"):find(secret, 1, true))
  end)
end)
