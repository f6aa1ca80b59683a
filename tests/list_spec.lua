-- bkr list against the real cluster, checked with sha256sum, gunzip and the files themselves.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr
local tree, backups_of = util.tree, util.backups_of

local function new_database(sql)
  return util.new_database("bk", sql)
end

describe("bkr list", function()
  it("lists backups newest first with size, ratio and verified state, also as JSON", function()
    local db = new_database("create table t (x text); insert into t select md5(i::text) from generate_series(1, 5000) i;")
    local repo = util.scratch("repo")
    assert.are.equal(0, select(2, run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)))
    util.sh("sleep 1.1")
    assert.are.equal(0, select(2, run("backup --no-globals --type weekly --repo " .. q(repo) .. " --db " .. db)))
    local rows = json.decode(run("list --json --repo " .. q(repo)))
    assert.are.equal(2, #rows)
    assert.are.equal("weekly", rows[1].type)
    assert.are.equal("daily", rows[2].type)
    assert.is_true(rows[1].time > rows[2].time)
    assert.are.equal("never", rows[1].verified)
    assert.is_false(rows[1].encrypted)
    assert.is_true(rows[1].ratio > 1)
    local text = run("list --repo " .. q(repo) .. " --type daily")
    assert.matches("daily +" .. db, text)
    assert.not_matches("weekly", text)
  end)

  it("shares its header style with config list: upper-case names, the time zone said once", function()
    local db = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    assert.are.equal(0, select(2, run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)))
    local key = util.scratch("key") .. "/k"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    local conf = util.scratch("conf") .. "/app.env"
    util.write(conf, "PASSWORD=x\n")
    assert.are.equal(0, select(2, run("config backup " .. q(conf) .. " --key-file " .. q(key) .. " --repo " .. q(repo))))
    local headers = {}
    for i, command in ipairs({ "list", "config list" }) do
      local out, rc = run(command .. " --repo " .. q(repo))
      assert.are.equal(0, rc, out)
      headers[i] = out:match("^[^\n]+")
      assert.matches("^TIME %(UTC%)  ", headers[i])
      assert.are.equal(headers[i]:upper(), headers[i])
      -- the rows line up under the header: the second column starts where its name does
      local row = out:match("\n([^\n]+)")
      assert.are.equal(headers[i]:find("  %S"), row:find("  %S"), out)
    end
  end)
end)
