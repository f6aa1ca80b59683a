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
    local names = { "dbname=x_r", "host=/nonexistent" }
    for _, name in ipairs(names) do
      util.psql("drop database if exists " .. R.ident(name))
      util.psql("create database " .. R.ident(name))
      R.psql_in(name, "create table t (x int); insert into t values (1), (2);")
      backup(repo, name)
    end
    local report = util.scratch("report") .. "/drill"
    local cfg = config_file(repo, "  smoke_queries:\n    - select count(*) = 2 from t\n")
    local out, rc = run("drill --config " .. q(cfg) .. " --db " .. q(names[1]) .. " --db " .. q(names[2])
      .. " --report " .. q(report))
    assert.are.equal(0, rc, out)
    local data = json.decode(util.read(report .. ".json"))
    for i, db in ipairs(data.databases) do
      assert.are.equal(names[i], db.database)
      assert.are.equal("passed", db.result)
      assert.are.equal(1, #db.tables)
      assert.are.equal(2, db.tables[1].rows)
    end
    assert.are.equal("", scratch_databases())
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
    assert.are_not.equal("passed", data.result)
  end)
end)
