-- The repository's names (recipes/lib/repo.lua): runs in the same second never collide, and
-- what a killed run leaves behind is removed by the next run that holds the lock. Checked
-- through the binary, against the real cluster, with ls, psql and sha256sum.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr

-- Run bkr with the wall clock frozen at `second` (faketime): every run sees the same second,
-- as three runs on a fast machine do. The monotonic clock keeps running (timeouts, RTO).
local function frozen_at(second, args)
  -- libfaketime is preloaded; the ASan runtime must then not insist on coming first.
  local asan = (os.getenv("ASAN_OPTIONS") or "") .. ":verify_asan_link_order=0"
  return util.bkr(args, "TZ=UTC FAKETIME_DONT_FAKE_MONOTONIC=1 ASAN_OPTIONS=" .. q(asan)
    .. " faketime -f " .. q(second))
end

local function files_in(dir, pattern)
  local list = {}
  for _, name in ipairs(util.listdir(dir)) do
    if name:match(pattern) then list[#list + 1] = name end
  end
  return list
end

describe("runs in the same second", function()
  it("three backups of one database in one second all succeed; list, verify, restore --latest and rotate "
    .. "see them in the order they were taken", function()
    local db = util.new_database("same", "create table t (n int); insert into t values (1);")
    local repo = util.scratch("repo")
    local second = util.sh("date -u '+%Y-%m-%d %H:%M:%S'"):gsub("\n", "")
    local stamp = second:gsub("[-:]", ""):gsub(" ", "_")
    for n = 1, 3 do
      if n > 1 then util.psql("insert into t values (" .. n .. ")", db) end
      local out, rc = frozen_at(second, "backup --no-rotate --repo " .. q(repo) .. " --db " .. db)
      assert.are.equal(0, rc, out)
    end
    -- The first run keeps the plain name; the next ones take -2 and -3, globals included.
    assert.are.same({
      "backup_" .. stamp .. "-2_" .. db .. ".sql.gz", "backup_" .. stamp .. "-3_" .. db .. ".sql.gz",
      "backup_" .. stamp .. "_" .. db .. ".sql.gz",
    }, files_in(repo .. "/daily", "^backup_.*%.sql%.gz$"))
    assert.are.same({ "globals_" .. stamp .. "-2.sql.gz", "globals_" .. stamp .. "-3.sql.gz",
      "globals_" .. stamp .. ".sql.gz" }, files_in(repo .. "/daily", "^globals_.*%.sql%.gz$"))
    local check, crc = util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum -c *.sha256")
    assert.are.equal(0, crc, check)

    local listing = json.decode((run("list --json --repo " .. q(repo) .. " --db " .. db)))
    assert.are.equal(3, #listing)
    assert.matches("%-3_", listing[1].file)
    assert.matches("%-2_", listing[2].file)
    assert.matches("^daily/backup_" .. stamp .. "_", listing[3].file)

    local vout, vrc = run("verify --all --repo " .. q(repo))
    assert.are.equal(0, vrc, vout)
    assert.are.equal(6, select(2, vout:gsub("\nok ", "")) + (vout:match("^ok ") and 1 or 0), vout)

    local target = db .. "_latest"
    local rout, rrc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. target .. " --create")
    assert.are.equal(0, rrc, rout)
    assert.are.equal("3", util.psql("select count(*) from t", target))
    local at_target = db .. "_at"
    rout, rrc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --at " .. stamp .. " --into " .. at_target
      .. " --create")
    assert.are.equal(0, rrc, rout)
    assert.are.equal("3", util.psql("select count(*) from t", at_target), "--at picks the newest of that second")

    -- retention daily 2 keeps the two newest: the oldest run of the second goes, with its sidecars.
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "retention:\n  daily: 2\n")
    local tout, trc = run("rotate --config " .. q(cfg) .. " --repo " .. q(repo))
    assert.are.equal(0, trc, tout)
    assert.are.same({ "backup_" .. stamp .. "-2_" .. db .. ".sql.gz", "backup_" .. stamp .. "-3_" .. db .. ".sql.gz" },
      files_in(repo .. "/daily", "^backup_.*%.sql%.gz$"))
    assert.are.same({}, files_in(repo .. "/daily", "^backup_" .. stamp .. "_"))

    -- the plain name is free again, but a fourth run of that second must still sort newest
    util.psql("insert into t values (4)", db)
    local out, rc = frozen_at(second, "backup --config " .. q(cfg) .. " --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.are.same({ "backup_" .. stamp .. "-3_" .. db .. ".sql.gz", "backup_" .. stamp .. "-4_" .. db .. ".sql.gz" },
      files_in(repo .. "/daily", "^backup_.*%.sql%.gz$"), "its own rotation kept the two newest")
    assert.matches("%-4_", json.decode((run("list --json --repo " .. q(repo) .. " --db " .. db)))[1].file)
  end)

  it("two config backups in one second are both kept, the second as -2", function()
    local dir = util.scratch("cfgsrc")
    util.write(dir .. "/app.env", "DB_PASSWORD=s3cret\n")
    local key = util.scratch("key") .. "/k"
    local kout, krc = run("keygen --out " .. q(key))
    assert.are.equal(0, krc, kout)
    local repo = util.scratch("repo")
    local second = util.sh("date -u '+%Y-%m-%d %H:%M:%S'"):gsub("\n", "")
    local stamp = second:gsub("[-:]", ""):gsub(" ", "_")
    for _ = 1, 2 do
      local out, rc = frozen_at(second, "config backup " .. q(dir .. "/app.env") .. " --key-file " .. q(key)
        .. " --repo " .. q(repo))
      assert.are.equal(0, rc, out)
    end
    assert.are.same({ "config_backup_" .. stamp, "config_backup_" .. stamp .. "-2" }, util.listdir(repo .. "/config"))
    local lout, lrc = run("config list --repo " .. q(repo))
    assert.are.equal(0, lrc, lout)
    assert.is_truthy(lout:find("config_backup_" .. stamp .. "-2", 1, true) < lout:find("config_backup_" .. stamp .. " ", 1, true)
      or lout:find("config_backup_" .. stamp .. "\n", 1, true), lout)
  end)
end)

describe("drills in the same second", function()
  it("keep both reports: a failed drill's report is not overwritten by a passing one", function()
    local db = util.new_database("drill2", "create table t (n int); insert into t values (1);")
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local second = util.sh("date -u '+%Y-%m-%d %H:%M:%S'"):gsub("\n", "")
    local stamp = second:gsub("[-:]", ""):gsub(" ", "_")
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: " .. repo .. "\ndrill:\n  smoke_queries:\n    - select count(*) = 2 from t\n")
    local fout, frc = frozen_at(second, "drill --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(1, frc, fout) -- the smoke query fails: one row, not two
    local pout, prc = frozen_at(second, "drill --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, prc, pout)
    assert.are.same({ "drill_" .. stamp .. "-2.json", "drill_" .. stamp .. "-2.md", "drill_" .. stamp .. ".json",
      "drill_" .. stamp .. ".md" }, util.listdir(repo .. "/drills"))
    assert.are.equal("failed", json.decode(util.read(repo .. "/drills/drill_" .. stamp .. ".json")).result)
    assert.are.equal("passed", json.decode(util.read(repo .. "/drills/drill_" .. stamp .. "-2.json")).result)
  end)
end)

describe("a killed run", function()
  it("leaves a temporary file that the next backup removes at once, under the lock", function()
    local db = util.new_database("killed",
      "create table t (x text); insert into t select repeat('y', 200) from generate_series(1, 20000);")
    local repo = util.scratch("repo")
    -- a pg_dump that writes part of the dump, then waits to be killed
    local bindir, cfg = util.fake_pg_dump('"$REAL_PG_DUMP" "$@" | head -c 100000\necho $$ > "$FAKEBIN/pid"\nexec sleep 60')
    local pid = util.sh(q(util.bkr_bin()) .. " backup --no-globals --config " .. q(cfg) .. " --repo " .. q(repo)
      .. " --db " .. db .. " >/dev/null 2>&1 & echo $!"):gsub("%s", "")
    local temporaries
    for _ = 1, 200 do
      temporaries = util.sh("ls -A " .. q(repo .. "/daily") .. " 2>/dev/null | grep '^\\.bkr-tmp\\.'")
      if temporaries ~= "" and io.open(bindir .. "/pid") then break end
      util.sh("sleep 0.05")
    end
    util.sh("kill -9 " .. pid)
    util.sh("kill -9 $(cat " .. q(bindir .. "/pid") .. ") 2>/dev/null")
    util.sh("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    assert.matches("^%.bkr%-tmp%.backup_.*%.sql%.gz%.%w+\n$", temporaries)
    assert.are.equal(temporaries, util.sh("ls -A " .. q(repo .. "/daily") .. " | grep '^\\.bkr-tmp\\.'"),
      "the killed run left its temporary file")

    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.matches("removed .*%.bkr%-tmp%.backup_.*left by an interrupted run", out)
    assert.are.equal("", util.sh("ls -A " .. q(repo .. "/daily") .. " | grep tmp"))
    assert.are.equal(1, #files_in(repo .. "/daily", "^backup_.*%.sql%.gz$"))
  end)
end)
