-- bkr check on a repository in object storage (repository: s3://BUCKET/PREFIX), against
-- s3rver on loopback (tests/support/s3.lua). Backups get into the bucket as an admin's would:
-- a local bkr backup (or stand-in backups, util.fake_backup, to age them), then bkr sync; drill
-- reports by copying a local drill's report files into PREFIX/drills/ with a signed PUT. The
-- outputs are read with the parsers of tests/check_spec.lua (tests/support/check_output.lua).
local util = require "support.util"
local S3 = require "support.s3"
local output = require "support.check_output"
local json = require "dkjson"
local q = util.quote
local run = util.bkr
local plugin_output, prometheus_samples, jq = output.plugin_output, output.prometheus_samples, output.jq

local HOUR = 3600

local server

local function url(prefix)
  return "s3://" .. S3.BUCKET .. "/" .. prefix
end

-- The s3: section every configuration here has; extra YAML lines appended.
local function s3_config(extra)
  return (server.config_file(nil, extra))
end

-- bkr check run from a working directory of its own (where a URL taken for a path would
-- become a directory "s3:"); the output, the exit code and that directory.
local cwd = nil
local function check(args)
  cwd = cwd or util.scratch("check-s3-cwd")
  local out, rc = util.sh("cd " .. q(cwd) .. " && " .. q(util.bkr_bin()) .. " check " .. args .. " 2>&1")
  return out, rc
end

local function put_objects(pairs_) server.put_objects(pairs_) end
local function put_text(key, text) server.put_text(key, text) end

local function stamp_ago(seconds)
  return os.date("!%Y%m%d_%H%M%S", os.time() - seconds)
end

local function iso_ago(seconds)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - seconds)
end

-- A stand-in backup of db in REPO/daily taken `age` seconds ago, verified as `verified`
-- ("passed", "failed", or nil: never).
local function aged_backup(repo, db, age, verified)
  util.sh("mkdir -p " .. q(repo .. "/daily"))
  local path = repo .. "/daily/backup_" .. stamp_ago(age) .. "_" .. db .. ".sql.gz"
  util.fake_backup(path, { database = db,
    verification = verified and { time = iso_ago(math.max(age - 60, 0)), result = verified } or false })
  return path
end

-- A drill report as bkr drill writes it (docs/drill.md), taken `age` seconds ago, in the
-- bucket under PREFIX/drills/.
local function bucket_drill_report(prefix, age, databases)
  local list = {}
  for db, result in pairs(databases) do
    list[#list + 1] = { database = db, result = result, rto_seconds = 12.5, rpo_seconds = 3600 }
  end
  local at = os.time() - age -- (one second for the name and the time inside, as bkr drill's)
  local name = "drill_" .. os.date("!%Y%m%d_%H%M%S", at) .. ".json"
  put_text(prefix .. "/drills/" .. name, json.encode({ format = "bkr-drill-1", time = os.date("!%Y-%m-%dT%H:%M:%SZ", at),
    databases = list, result = "passed" }))
  return name
end

-- What s3rver was asked since request number `from`: the methods other than GET and HEAD.
local function writes_since(from)
  local writes = {}
  for i, request in ipairs(server.requests()) do
    if i > from and request.method ~= "GET" and request.method ~= "HEAD" then
      writes[#writes + 1] = request.method .. " " .. request.url
    end
  end
  return writes
end

local function sync(repo, prefix, cfg)
  local out, rc = run("sync --from " .. q(repo) .. " --to " .. url(prefix) .. " --config " .. q(cfg))
  assert(rc == 0, out)
end

describe("bkr check on a repository in object storage", function()
  setup(function() server = S3.start() end)
  teardown(function() if server then server.stop() end end)

  it("is OK with a fresh verified backup and a passed drill, read from the bucket alone; nothing written", function()
    local db = util.new_database("cs3", "create table t (n int); insert into t select generate_series(1, 50);")
    local repo = util.scratch("check-s3-local")
    local local_cfg = util.scratch("check-s3-lcfg") .. "/bkr.yaml"
    util.write(local_cfg, "repository: " .. repo .. "\ndatabases: [" .. db .. "]\n")
    util.backup_newest(repo, db)
    local out, rc = run("verify --config " .. q(local_cfg))
    assert.are.equal(0, rc, out)
    out, rc = run("drill --config " .. q(local_cfg))
    assert.are.equal(0, rc, out)
    local cfg = s3_config("repository: " .. url("ok") .. "\ndatabases: [" .. db .. "]")
    sync(repo, "ok", cfg)
    local uploads = {}
    for name in util.sh("ls " .. q(repo .. "/drills")):gmatch("[^\n]+") do
      uploads[#uploads + 1] = { repo .. "/drills/" .. name, "ok/drills/" .. name }
    end
    put_objects(uploads)
    local report = util.sh("ls " .. q(repo .. "/drills") .. " | grep json$"):gsub("\n", "")

    local before = #server.requests()
    out, rc = check("--config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local state, text, perf = plugin_output(out)
    assert.are.equal("OK", state)
    assert.matches("^1 database: verified backups .* old at most %(RPO 24 h%), drills passed, oldest .* ago$", text)
    local stored = util.sh("stat -c %s " .. q(repo) .. "/daily/backup_*_" .. db .. ".sql.gz"):gsub("\n", "")
    assert.are.equal(stored, perf[db .. " newest_size"].value)
    assert.is_true(tonumber(perf[db .. " verified_age"].value) < 600)
    assert.are.equal("86400", perf[db .. " verified_age"].crit)
    assert.is_true(tonumber(perf[db .. " drill_age"].value) < 600)
    -- free space is a file system's: object storage has none, so no free or free_percent
    assert.is_nil(perf.free)
    assert.is_nil(perf.free_percent)

    out, rc = check("--json --repo " .. url("ok") .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal("OK 0 " .. url("ok") .. " passed passed", jq(out,
      '"\\(.status) \\(.exit_code) \\(.repository) \\(.databases[0].newest.verified) \\(.databases[0].drill.result)"'))
    assert.are.equal(url("ok") .. "/drills/" .. report, jq(out, ".databases[0].drill.report"))
    assert.are.equal("null null null", jq(out, '"\\(.space) \\(.targets.min_free_percent) \\(.targets.min_free_bytes)"'))
    assert.are.equal("86400", jq(out, ".targets.rpo_seconds"))

    local prom = util.scratch("check-s3-prom") .. "/bkr.prom"
    out, rc = check("--prometheus " .. q(prom) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local samples = prometheus_samples(prom)
    local labels = "database=" .. db .. ",repository=" .. url("ok")
    assert.are.equal(0, samples["bkr_check_status{repository=" .. url("ok") .. "}"])
    assert.are.equal(1, samples["bkr_backup_newest_verified{" .. labels .. "}"])
    assert.are.equal(1, samples["bkr_drill_last_success{" .. labels .. "}"])
    assert.is_nil(samples["bkr_repository_free_bytes{repository=" .. url("ok") .. "}"])
    assert.is_nil(util.read(prom):find("bkr_repository_", 1, true))

    -- check only reads: no PUT, POST or DELETE reached the bucket, and no directory "s3:"
    assert.are.same({}, writes_since(before))
    assert.are.equal("", util.sh("ls -A " .. q(cwd)))
  end)

  it("judges old, unverified, damaged and undrilled backups in the bucket as it judges local ones", function()
    local repo = util.scratch("check-s3-aged")
    aged_backup(repo, "old", 30 * HOUR, "passed")
    aged_backup(repo, "fresh", 2 * HOUR, "passed")
    aged_backup(repo, "fresh", 10 * 60, nil)
    aged_backup(repo, "drilled", HOUR, "passed")
    aged_backup(repo, "undrilled", HOUR, "passed")
    local changed = aged_backup(repo, "changed", HOUR, "passed")
    local cfg = s3_config()
    sync(repo, "rules", cfg)
    bucket_drill_report("rules", 2 * HOUR, { old = "passed", fresh = "passed", drilled = "failed", changed = "passed" })
    local function judged(db)
      local out, rc = check("--db " .. db .. " --repo " .. url("rules") .. " --config " .. q(cfg))
      local state, text = plugin_output(out)
      return rc, state, text
    end
    local rc, state, text = judged("old")
    assert.are.equal(2, rc)
    assert.are.equal("CRITICAL", state)
    assert.matches("old: newest verified backup 30 h old, older than the RPO target 24 h", text, 1, true)
    rc, state, text = judged("fresh")
    assert.are.equal(1, rc)
    assert.matches("^fresh: newest backup %(10 min old%) not verified$", text)
    rc, state, text = judged("drilled")
    assert.are.equal(2, rc)
    assert.matches("drilled: last drill failed (2 h ago)", text, 1, true)
    rc, state, text = judged("undrilled")
    assert.are.equal(1, rc)
    assert.matches("^undrilled: no drill report$", text)

    -- a backup whose bytes in the bucket no longer match its manifest: CRITICAL, as on disk
    local key = "rules/daily/" .. changed:match("[^/]+$")
    put_text(key, "grown by a few bytes")
    rc, state, text = judged("changed")
    assert.are.equal(2, rc)
    assert.matches("changed: daily/" .. changed:match("[^/]+$"):gsub("%p", "%%%0")
      .. " damaged since it was verified: size 20, manifest says 1; run bkr verify", text)
    -- and a manifest whose data object is gone: "the file is missing"
    local lost = aged_backup(util.scratch("check-s3-lost"), "changed", 30 * 60, "passed")
    put_objects({ { lost .. ".json", "rules/daily/" .. lost:match("[^/]+$") .. ".json" } })
    rc, state, text = judged("changed")
    assert.are.equal(2, rc)
    assert.matches(lost:match("[^/]+$"):gsub("%p", "%%%0") .. " damaged since it was verified: the file is missing", text)

    -- a newer report that is not JSON: named, WARNING, and the older one still counts
    local bad = "drill_" .. stamp_ago(HOUR) .. ".json"
    put_text("rules/drills/" .. bad, "{ not json")
    local out, code = check("--json --db drilled --db fresh --repo " .. url("rules") .. " --config " .. q(cfg))
    assert.are.equal(2, code, out)
    assert.are.equal("WARNING unreadable drill report " .. url("rules") .. "/drills/" .. bad .. " (not JSON)",
      jq(out, '.problems[] | "\\(.status) \\(.message)"'))
    assert.are.equal("failed passed", jq(out, '[.databases[].drill.result] | join(" ")'))
  end)

  it("is UNKNOWN (3), one line naming the repository and the kind, when the bucket cannot be listed", function()
    local cfg = s3_config("repository: " .. url("down"))
    local down = util.scratch("check-s3-down") .. "/bkr.yaml"
    util.write(down, util.read(cfg):gsub("endpoint: [^\n]+", "endpoint: http://127.0.0.1:9"))
    local out, rc = check("--config " .. q(down))
    assert.is_nil(out:find(S3.SECRET_KEY, 1, true), out)
    assert.are.equal(3, rc, out)
    assert.matches("^BKR UNKNOWN %- repository " .. url("down"):gsub("%p", "%%%0") .. " cannot be listed: [^\n]*%(refused%)\n$",
      out)
    out, rc = check("--json --config " .. q(down))
    assert.are.equal(3, rc, out)
    assert.are.equal("UNKNOWN 3", jq(out, '"\\(.status) \\(.exit_code)"'))
    local prom = util.scratch("check-s3-prom") .. "/bkr.prom"
    out, rc = check("--prometheus " .. q(prom) .. " --config " .. q(down))
    assert.are.equal(3, rc, out)
    assert.are.equal(3, prometheus_samples(prom)["bkr_check_status{repository=" .. url("down") .. "}"])

    -- a key the server refuses: UNKNOWN too, and neither secret in any output
    local wrong = util.scratch("check-s3-wrong")
    util.write(wrong .. "/s3.secret", "notTheSecret/butOneLikeIt+0123456789abcdef\n")
    util.sh("chmod 600 " .. q(wrong .. "/s3.secret"))
    util.write(wrong .. "/bkr.yaml", util.read(cfg):gsub("secret_access_key_file: [^\n]+",
      "secret_access_key_file: " .. wrong .. "/s3.secret"))
    out, rc = check("--config " .. q(wrong .. "/bkr.yaml"))
    local json_out = check("--json --config " .. q(wrong .. "/bkr.yaml"))
    for _, text in ipairs({ out, json_out }) do
      assert.is_nil(text:find(S3.SECRET_KEY, 1, true), text)
      assert.is_nil(text:find("notTheSecret", 1, true), text)
    end
    assert.are.equal(3, rc, out)
    assert.matches("^BKR UNKNOWN %- repository " .. url("down"):gsub("%p", "%%%0") .. " cannot be listed: [^\n]*%(auth%)\n$",
      out)
    assert.are.equal("", util.sh("ls -A " .. q(cwd)))
  end)
end)
