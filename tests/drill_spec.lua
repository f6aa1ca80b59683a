-- bkr drill: what an interrupted drill leaves behind (nothing). Checked with psql and the
-- report files.
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
