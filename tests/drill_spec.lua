-- bkr drill: what a drill must prove before it passes, databases with unusual names, and
-- what an interrupted drill leaves behind (nothing). Checked with psql and the report files.
local util = require "support.util"
local R = require "support.restore_util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr

local function backup(repo, db)
  local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. q(db))
  assert(rc == 0, out)
end

local function scratch_databases()
  return R.databases_like("bkr_drill_%")
end

local function config_file(repo, drill_yaml, extra)
  local cfg = util.scratch("cfg") .. "/bkr.yaml"
  util.write(cfg, "repository: " .. repo .. "\n" .. (extra or "") .. (drill_yaml and ("drill:\n" .. drill_yaml) or ""))
  return cfg
end

describe("bkr drill", function()
  it("is incomplete, exit 1, when its steps neither restore nor compare, and the report says so", function()
    local db = util.new_database("dr", "create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    backup(repo, db)
    local cases = {
      { "[]", "no step restored the backup and no step compared its tables" },
      { "[pick_backup, verify_backup]", "no step restored the backup and no step compared its tables" },
      { "[pick_backup, verify_backup, restore_scratch, measure]", "no step compared its tables" },
    }
    for _, case in ipairs(cases) do
      local report = util.scratch("report") .. "/drill"
      local out, rc = run("drill --config " .. q(config_file(repo, "  steps: " .. case[1] .. "\n")) .. " --db " .. db
        .. " --report " .. q(report))
      assert.are.equal(1, rc, case[1] .. ": " .. out)
      assert.is_falsy(out:find("drill passed", 1, true), out)
      assert.matches("drill incomplete: 1 database", out, 1, true)
      assert.matches("bkr drill: " .. db .. " incomplete: " .. case[2], out, 1, true)
      local data = json.decode(util.read(report .. ".json"))
      assert.are.equal("incomplete", data.result)
      assert.are.equal("incomplete", data.databases[1].result)
      assert.matches(case[2], data.databases[1].incomplete, 1, true)
      local md = util.read(report .. ".md")
      assert.matches("**Result: INCOMPLETE.**", md, 1, true)
      assert.matches("**Incomplete:** " .. case[2], md, 1, true)
      assert.are.equal("", scratch_databases())
    end
    -- the default steps restore and compare: passed, exit 0
    local out, rc = run("drill --config " .. q(config_file(repo)) .. " --db " .. db .. " --report "
      .. q(util.scratch("report") .. "/drill"))
    assert.are.equal(0, rc, out)
    assert.matches("drill passed", out, 1, true)
  end)

  it("drills databases named dbname=... and host=..., never reading the names as connection strings", function()
    local repo = util.scratch("repo")
    local names = { "dbname=x_r", "host=/nonexistent", "two\nlines db" }
    for _, name in ipairs(names) do
      util.psql("drop database if exists " .. R.ident(name))
      util.psql("create database " .. R.ident(name))
      R.psql_in(name, "create table t (x int); insert into t values (1), (2);")
      backup(repo, name)
    end
    local report = util.scratch("report") .. "/drill"
    local cfg = config_file(repo, "  smoke_queries:\n    - select count(*) = 2 from t\n")
    local out, rc = run("drill --config " .. q(cfg) .. " --db " .. q(names[1]) .. " --db " .. q(names[2])
      .. " --db " .. q(names[3]) .. " --report " .. q(report))
    assert.are.equal(0, rc, out)
    local data = json.decode(util.read(report .. ".json"))
    for i, db in ipairs(data.databases) do
      assert.are.equal(names[i], db.database)
      assert.are.equal("passed", db.result)
      assert.are.equal(1, #db.tables)
      assert.are.equal(2, db.tables[1].rows)
    end
    assert.are.equal("", scratch_databases())
    -- a newline in a name cannot split a step's line of output in two
    for line in out:gmatch("[^\n]+") do
      assert.is_nil(line:match("^lines db"), "a line begins with the second half of a name: " .. out)
    end
    assert.matches("passed +two\\nlines db", out)
    for _, name in ipairs(names) do util.psql("drop database " .. R.ident(name)) end
  end)

  it("SIGTERM during a drill drops the scratch database and exits 143", function()
    local db = util.new_database("dr", "create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    backup(repo, db)
    local fake = R.held_psql()
    local cfg = config_file(repo, nil, "pg_bindir: " .. fake .. "\n")
    local report = util.scratch("report") .. "/drill"
    local bkr = R.start_bkr("drill --config " .. q(cfg) .. " --db " .. db .. " --report " .. q(report))
    assert.is_true(R.wait_for(fake .. "/started", 30), "psql never started")
    local scratch = scratch_databases()
    assert.matches("^bkr_drill_", scratch)
    bkr.kill("TERM")
    assert.are.equal(143, bkr.wait(60), bkr.output())
    assert.are.equal("", scratch_databases())
    local data = json.decode(util.read(report .. ".json"))
    local cleanup = data.databases[1].steps[#data.databases[1].steps]
    assert.are.same({ "cleanup", "passed", scratch .. " was dropped" }, { cleanup.name, cleanup.result, cleanup.detail })
    -- interrupted, said as such: neither a failed backup nor a drill that proved too little
    assert.are.equal("interrupted", data.result)
    assert.are.equal("interrupted", data.databases[1].result)
    assert.matches("interrupted", bkr.output())
    assert.is_nil(bkr.output():match("incomplete"), bkr.output())
  end)
end)

-- The drill's reports, its steps as an integrator changes them, and its targets (moved here
-- from restore_spec.lua, so that each spec matches one recipe).
local function new_database(sql)
  return util.new_database("rs", sql)
end

local backup_file = util.backup_newest

describe("bkr drill: reports, steps and targets", function()
  local function scratch_databases()
    return util.psql("select count(*) from pg_database where datname like 'bkr_drill_%'")
  end

  it("passes for two databases and writes a JSON and a Markdown report", function()
    local a = new_database("create table t (x int); insert into t select generate_series(1, 500);")
    local b = new_database("create schema s; create table s.u (y text); insert into s.u values ('ü'), ('x');")
    local repo = util.scratch("repo")
    backup_file(repo, a)
    backup_file(repo, b)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: " .. repo .. "\ndrill:\n  smoke_queries:\n    - select count(*) > 0 from pg_class\n")
    local report = util.scratch("report") .. "/drill"
    local out, rc = run("drill --config " .. q(cfg) .. " --db " .. a .. " --db " .. b .. " --report " .. q(report))
    assert.are.equal(0, rc, out)
    local data = json.decode(util.read(report .. ".json"))
    assert.are.equal("passed", data.result)
    assert.are.equal(2, #data.databases)
    for _, db in ipairs(data.databases) do
      assert.are.equal("passed", db.result)
      assert.is_true(db.rto_seconds >= 0 and db.rto_seconds < 3600)
      assert.is_true(db.rpo_seconds >= 0 and db.rpo_seconds < 86400)
      local names = {}
      for _, s in ipairs(db.steps) do names[#names + 1] = s.name .. "=" .. s.result end
      assert.are.same({ "pick_backup=passed", "verify_backup=passed", "restore_scratch=passed", "compare_tables=passed",
        "smoke_queries=passed", "measure=passed", "cleanup=passed" }, names)
    end
    local md = util.read(report .. ".md")
    assert.matches("Result: PASSED", md)
    assert.matches("| s.u | 2 | yes |", md, 1, true)
    assert.are.equal("0", scratch_databases())
  end)

  it("fails for a corrupted latest backup, exit 3, and leaves no scratch database", function()
    local a = new_database("create table t (x int); insert into t select generate_series(1, 500);")
    local repo = util.scratch("repo")
    local file = backup_file(repo, a)
    util.flip_byte(repo .. "/daily/" .. file, 200)
    local report = util.scratch("report") .. "/drill"
    local out, rc = run("drill --repo " .. q(repo) .. " --db " .. a .. " --report " .. q(report))
    assert.are.equal(3, rc, out)
    local data = json.decode(util.read(report .. ".json"))
    assert.are.equal("failed", data.result)
    assert.are.equal("failed", data.databases[1].steps[2].result)
    assert.matches("checksum mismatch", data.databases[1].steps[2].detail)
    assert.are.equal("skipped", data.databases[1].steps[3].result)
    assert.are.equal("0", scratch_databases())
  end)

  it("catches a row altered in the restored database, with a step added by the integrator", function()
    local a = new_database("create table t (id int, v text); insert into t select i, 'v' || i from generate_series(1, 100) i;")
    local repo = util.scratch("repo")
    backup_file(repo, a)
    local custom = util.scratch("custom")
    util.sh("mkdir -p " .. q(custom .. "/lib"))
    util.write(custom .. "/lib/drill_steps.lua", [[
local steps = dofile(bkr.recipe_path[#bkr.recipe_path] .. "/lib/drill_steps.lua")
-- an integrator's step: here it alters one row, to prove the comparison notices
function steps.tamper(drill, db)
  local conn <close> = require("lib.postgres").connect(drill.cfg, db.scratch)
  assert(conn:exec("update t set v = 'changed' where id = 42"))
  return true, "altered row 42"
end
return steps
]])
    local cfg = custom .. "/bkr.yaml"
    util.write(cfg, "repository: " .. repo .. "\ndrill:\n  steps: [pick_backup, verify_backup, restore_scratch, tamper, compare_tables, measure]\n")
    local report = custom .. "/report"
    local out, rc = run("drill --config " .. q(cfg) .. " --db " .. a .. " --report " .. q(report), "BKR_RECIPE_PATH=" .. q(custom))
    assert.are.equal(3, rc, out)
    assert.matches("public.t: same 100 rows but different contents", out)
    assert.are.equal("0", scratch_databases())
  end)

  it("fails when the newest backup is older than the RPO target", function()
    local a = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    backup_file(repo, a)
    util.sh("sleep 2")
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: " .. repo .. "\ndrill:\n  rpo_seconds: 1\n")
    local out, rc = run("drill --config " .. q(cfg) .. " --db " .. a .. " --report " .. q(util.scratch("r") .. "/d"))
    assert.are.equal(1, rc, out)
    assert.matches("RPO %d+ s exceeds the target 1 s", out)
    assert.are.equal("0", scratch_databases())
  end)

  it("fails a smoke query that returns 0, and says so on stderr", function()
    local a = new_database("create table invoices (x int);")
    local repo = util.scratch("repo")
    backup_file(repo, a)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: " .. repo .. "\ndrill:\n  smoke_queries:\n    - select count(*) from invoices\n")
    local out, rc = util.sh(q(util.bkr_bin()) .. " drill --config " .. q(cfg) .. " --db " .. a .. " --report "
      .. q(util.scratch("r") .. "/d") .. " 2>&1 >/dev/null")
    assert.are.equal(1, rc, out)
    assert.matches("bkr drill: " .. a .. " failed at smoke_queries: select count%(%*%) from invoices: returned 0", out)
    assert.are.equal("0", scratch_databases())
  end)

  it("runs each database's own smoke queries when they are given per database", function()
    local a = new_database("create table invoices (x int); insert into invoices values (1);")
    local b = new_database("create table contacts (y int);")
    local repo = util.scratch("repo")
    backup_file(repo, a)
    backup_file(repo, b)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: " .. repo .. "\ndrill:\n  smoke_queries:\n    " .. a
      .. ":\n      - select count(*) from invoices\n    " .. b .. ":\n      - select count(*) > 0 from contacts\n")
    local report = util.scratch("r") .. "/d"
    local out, rc = run("drill --config " .. q(cfg) .. " --db " .. a .. " --db " .. b .. " --report " .. q(report))
    assert.are.equal(1, rc, out)
    local data = json.decode(util.read(report .. ".json"))
    assert.are.equal("passed", data.databases[1].result)
    assert.are.equal("failed", data.databases[2].result)
    assert.matches("select count%(%*%) > 0 from contacts: returned false", data.databases[2].steps[5].detail)
  end)

  it("writes sizes and counts as people do, and reports each smoke query with its result", function()
    local a = new_database("create table t (x text); insert into t select md5(i::text) from generate_series(1, 3000) i;")
    local repo = util.scratch("repo")
    local file = backup_file(repo, a)
    -- the size of the SQL, counted by gunzip and wc, in the units `bkr backup` and `bkr list` use
    local sql_bytes = tonumber((util.sh("gunzip -c " .. q(repo .. "/daily/" .. file) .. " | wc -c")))
    assert.is_true(sql_bytes >= 1024 and sql_bytes < 1024 * 1024, tostring(sql_bytes))
    local size = string.format("%.1f KiB", sql_bytes / 1024)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: " .. repo .. "\ndrill:\n  smoke_queries:\n    - select count(*) = 3000 from t\n")
    local report = util.scratch("r") .. "/d"
    local out, rc = run("drill --config " .. q(cfg) .. " --db " .. a .. " --report " .. q(report))
    assert.are.equal(0, rc, out)
    assert.matches(" " .. size .. " of SQL into ", out, 1, true)
    assert.matches("compare_tables   1 table matches\n", out, 1, true)
    assert.matches("smoke_queries    1 query passed\n", out, 1, true)
    assert.matches("drill passed: 1 database, report ", out, 1, true)
    assert.is_falsy(out:find("bytes", 1, true), out)
    local data = json.decode(util.read(report .. ".json"))
    assert.are.same({ { query = "select count(*) = 3000 from t", result = "passed", detail = "returned true" } },
      data.databases[1].smoke_queries)
    local md = util.read(report .. ".md")
    assert.matches("| select count(*) = 3000 from t | passed | returned true |", md, 1, true)
    assert.matches("RTO: [%d.]+ s · RPO: %d+ s", md)

    -- two queries, one failing: both shown; a drill stopped before measure says RTO was not measured
    util.write(cfg, "repository: " .. repo .. "\ndrill:\n  smoke_queries:\n    - select count(*) = 1 from t\n"
      .. "    - select count(*) > 0 from t\n")
    out, rc = run("drill --config " .. q(cfg) .. " --db " .. a .. " --report " .. q(report))
    assert.are.equal(1, rc, out)
    data = json.decode(util.read(report .. ".json"))
    assert.are.same({ "failed", "passed" }, { data.databases[1].smoke_queries[1].result,
      data.databases[1].smoke_queries[2].result })
    assert.is_nil(data.databases[1].rto_seconds)
    md = util.read(report .. ".md")
    assert.matches("| select count(*) = 1 from t | failed | returned false, not true or a non-zero number |", md, 1, true)
    assert.matches("| select count(*) > 0 from t | passed | returned true |", md, 1, true)
    assert.matches("RTO and RPO: not measured", md, 1, true)
    assert.is_falsy(md:find("RTO: - s", 1, true), md)
  end)

  it("refuses a smoke_queries key that names no database, exit 2, before drilling anything", function()
    local billing = new_database("create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    backup_file(repo, billing)
    local typo = billing:sub(1, 3) .. billing:sub(5) -- one letter dropped, as "biling" for "billing"
    local queries = "drill:\n  smoke_queries:\n    " .. typo .. ":\n      - select count(*) = 0 from t\n"
    -- databases: a list -> a configuration error when the file is loaded
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: " .. repo .. "\ndatabases: [" .. billing .. ", shop]\n" .. queries)
    local report = util.scratch("r") .. "/d"
    local out, rc = run("drill --config " .. q(cfg) .. " --report " .. q(report))
    assert.are.equal(2, rc, out)
    assert.matches("configuration: drill.smoke_queries." .. typo .. ": no such database (databases: " .. billing
      .. ", shop); did you mean " .. billing .. "?", out, 1, true)
    -- databases: all -> checked against the databases the drill would drill, before any step
    util.write(cfg, "repository: " .. repo .. "\n" .. queries)
    out, rc = run("drill --config " .. q(cfg) .. " --report " .. q(report))
    assert.are.equal(2, rc, out)
    assert.matches("configuration: drill.smoke_queries." .. typo .. ": no such database (databases: " .. billing
      .. "); did you mean " .. billing .. "?", out, 1, true)
    assert.is_falsy(out:find("pick_backup", 1, true), out)
    assert.is_nil(io.open(report .. ".json"), "a report was written")
    assert.are.equal("0", scratch_databases())
    -- spelled right, the query runs (and fails: the table has a row), so the key was used
    util.write(cfg, "repository: " .. repo .. "\n" .. queries:gsub(typo, billing))
    out, rc = run("drill --config " .. q(cfg) .. " --report " .. q(report))
    assert.are.equal(1, rc, out)
    assert.matches("select count(*) = 0 from t: returned false", out, 1, true)
  end)

  it("refuses an unknown step name in the configuration, exit 2", function()
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: /tmp\ndrill:\n  steps: [pick_backup, no_such_step]\n")
    local out, rc = run("drill --config " .. q(cfg))
    assert.are.equal(2, rc)
    assert.matches("no step named 'no_such_step'", out)
  end)
end)
