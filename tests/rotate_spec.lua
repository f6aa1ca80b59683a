-- bkr rotate against the real cluster, checked with sha256sum, gunzip and the files themselves.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr
local tree, backups_of = util.tree, util.backups_of

local function new_database(sql)
  return util.new_database("bk", sql)
end

describe("bkr rotate", function()
  -- A repository of synthetic backups: one per day for 60 days (daily), one per week (weekly).
  local function synthetic_repo()
    local repo = util.scratch("rot")
    util.sh("mkdir -p " .. q(repo .. "/daily") .. " " .. q(repo .. "/weekly"))
    local now = os.time()
    local function add(type_, epoch, db, verified)
      local name = string.format("backup_%s_%s.sql.gz", os.date("!%Y%m%d_%H%M%S", epoch), db)
      local path = repo .. "/" .. type_ .. "/" .. name
      util.fake_backup(path, { database = db,
        verification = verified and { result = verified, time = "2026-01-01T00:00:00Z" } or false })
      return name
    end
    local names = { daily = {}, weekly = {} }
    for day = 0, 59 do
      local epoch = now - day * 86400
      -- the backup of day 40 is the only verified one
      table.insert(names.daily, add("daily", epoch, "appdb", day == 40 and "passed" or nil))
      if day % 7 == 0 then table.insert(names.weekly, add("weekly", epoch, "appdb")) end
    end
    return repo, names
  end

  local function remaining(repo, type_)
    local out = util.sh("ls " .. q(repo .. "/" .. type_))
    local data, sidecars = {}, 0
    for name in out:gmatch("[^\n]+") do
      if name:match("%.sql%.gz$") then data[#data + 1] = name else sidecars = sidecars + 1 end
    end
    table.sort(data, function(a, b) return a > b end)
    return data, sidecars
  end

  it("keeps the newest 7 daily and 4 weekly, plus the newest verified, each with both sidecars", function()
    local repo, names = synthetic_repo()
    local out, rc = run("rotate --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    local daily, daily_sidecars = remaining(repo, "daily")
    local expected = { table.unpack(names.daily, 1, 7) }
    expected[#expected + 1] = names.daily[41] -- day 40: verified, never removed
    assert.are.same(expected, daily)
    assert.are.equal(2 * #expected, daily_sidecars)
    local weekly, weekly_sidecars = remaining(repo, "weekly")
    assert.are.same({ table.unpack(names.weekly, 1, 4) }, weekly)
    assert.are.equal(8, weekly_sidecars)
    assert.matches("removed daily/" .. names.daily[8], out)
  end)

  it("removes bkr's own temporary files at once, under the lock, and nobody else's", function()
    local repo = synthetic_repo()
    local daily = repo .. "/daily/"
    util.write(daily .. ".bkr-tmp.backup_20260101_000000_appdb.sql.gz.Ab12Cd", "partial")
    util.write(daily .. ".backup_20260102_000000_appdb.sql.gz.tmp.Xy34Zw", "partial, named by bkr 0.1")
    util.write(daily .. ".editor.tmp.swp", "an editor's")
    util.write(daily .. ".my.tmp.notes", "the admin's")
    util.sh("touch -d '2 days ago' " .. q(daily .. ".editor.tmp.swp") .. " " .. q(daily .. ".my.tmp.notes"))
    util.sh("ln -s /etc/hostname " .. q(daily .. ".bkr-tmp.link.Qw12Er"))
    local out, rc = run("rotate --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    assert.matches("removed .*Ab12Cd, left by an interrupted run", out)
    assert.matches("removed .*Xy34Zw, left by an interrupted run", out)
    assert.are.same({ ".bkr-tmp.link.Qw12Er", ".editor.tmp.swp", ".my.tmp.notes" },
      (function()
        local hidden = {}
        for _, name in ipairs(util.listdir(daily)) do
          if name:sub(1, 1) == "." then hidden[#hidden + 1] = name end
        end
        return hidden
      end)())
  end)

  it("removes nothing with --dry-run but says what it would remove", function()
    local repo = synthetic_repo()
    local before = tree(repo)
    local out, rc = run("rotate --dry-run --repo " .. q(repo))
    assert.are.equal(0, rc)
    assert.matches("would remove daily/", out)
    assert.are.equal(before, tree(repo))
  end)

  it("follows the configured counts", function()
    local repo, names = synthetic_repo()
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "retention: { daily: 3, weekly: 1 }\n")
    local out, rc = run("rotate --config " .. q(cfg) .. " --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    local daily = remaining(repo, "daily")
    assert.are.same({ names.daily[1], names.daily[2], names.daily[3], names.daily[41] }, daily)
    assert.are.same({ names.weekly[1] }, (remaining(repo, "weekly")))
  end)

  it("uses a policy shadowed through BKR_RECIPE_PATH", function()
    local repo, names = synthetic_repo()
    local custom = util.scratch("custom")
    util.sh("mkdir -p " .. q(custom .. "/lib"))
    util.write(custom .. "/lib/retention.lua", [[
local base = dofile(os.getenv("BKR_SOURCE_DIR") .. "/recipes/lib/retention.lua")
-- keep by age: everything younger than 10 days
function base.keep(backups, counts, now)
  local keep = {}
  for _, b in ipairs(backups) do
    if now - b.time < 10 * 86400 then keep[b] = "younger than 10 days" end
  end
  return keep
end
return base
]])
    local out, rc = run("rotate --repo " .. q(repo), "BKR_RECIPE_PATH=" .. q(custom))
    assert.are.equal(0, rc, out)
    assert.are.equal(11, #remaining(repo, "daily")) -- 10 days + the verified one
  end)

  it("runs after a successful backup, never removing what it just wrote", function()
    local db = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "retention: { daily: 0 }\nrepository: " .. repo .. "\n")
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.are.equal(1, #backups_of(repo, db))
  end)
end)
