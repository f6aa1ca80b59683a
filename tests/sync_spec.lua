-- bkr sync, bkr list and bkr check with an off-site copy in object storage, against s3rver on
-- loopback (tests/support/s3.lua). What lands there is checked with sha256sum of s3rver's own
-- files and by bringing it back to a local repository that bkr verify and bkr restore use.
local util = require "support.util"
local S3 = require "support.s3"
local R = require "support.restore_util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr

local server

-- A configuration for the off-site copy at s3://bkr-test/PREFIX; extra YAML lines appended.
local function offsite_config(prefix, extra)
  return (server.config_file("offsite: s3://" .. S3.BUCKET .. "/" .. prefix, extra))
end

-- A repository with a daily and a weekly backup of db, each with its run's globals.
local function new_repo_with_backups(db)
  local repo = util.scratch("sync-repo")
  for _, type_ in ipairs({ "daily", "weekly" }) do
    local out, rc = run("backup --create-repo --repo " .. q(repo) .. " --db " .. db .. " --type " .. type_)
    assert.are.equal(0, rc, out)
  end
  return repo
end

local function db_with_rows(n)
  return util.new_database("sy", "create table t (id int primary key, x text); "
    .. "insert into t select i, md5(i::text) from generate_series(1, " .. n .. ") i;")
end

describe("bkr sync to and from object storage", function()
  setup(function() server = S3.start() end)
  teardown(function() if server then server.stop() end end)

  it("copies every backup with its sidecar and manifest, byte for byte, once", function()
    local db = db_with_rows(3000)
    local repo = new_repo_with_backups(db)
    local cfg = offsite_config("site1")
    local out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("copied daily/backup_", out)
    for _, type_ in ipairs({ "daily", "weekly" }) do
      for file in util.sh("ls " .. q(repo .. "/" .. type_)):gmatch("[^\n]+") do
        local stored = server.object_file("site1/" .. type_ .. "/" .. file)
        assert.is_truthy(stored, type_ .. "/" .. file .. " is not in the bucket")
        assert.are.equal(util.sha256sum(repo .. "/" .. type_ .. "/" .. file), util.sha256sum(stored))
      end
    end
    -- nothing twice
    out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("0 backups copied, 4 already there", out)
    -- and list reads the bucket as it reads a directory
    out, rc = run("list --globals --repo s3://" .. S3.BUCKET .. "/site1 --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("daily +" .. db, out)
    assert.matches("weekly +" .. db, out)
    assert.matches("%(globals%)", out)
  end)

  it("brings a copy back to a new local repository that verify and restore accept", function()
    local db = db_with_rows(2000)
    local repo = new_repo_with_backups(db)
    local cfg = offsite_config("site2")
    local out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local back = util.scratch("sync-back")
    out, rc = run("init --repo " .. q(back))
    assert.are.equal(0, rc, out)
    out, rc = run("sync --from s3://" .. S3.BUCKET .. "/site2 --to " .. q(back) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal(util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum *"),
      util.sh("cd " .. q(back .. "/daily") .. " && sha256sum *"))
    out, rc = run("verify --all --repo " .. q(back))
    assert.are.equal(0, rc, out)
    local target = db .. "_back"
    out, rc = run("restore --repo " .. q(back) .. " --db " .. db .. " --latest --into " .. target .. " --create")
    assert.are.equal(0, rc, out)
    assert.are.equal("2000", util.psql("select count(*) from t", target):match("%d+"))
  end)

  it("replaces nothing it cannot prove its own in a local target; completes a copy whose data is there", function()
    local db = db_with_rows(300)
    local repo = util.scratch("sync-own")
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --repo " .. q(repo) .. " --db " .. db)))
    local name = util.files(repo, "%.sql%.gz$")[1]
    local cfg = offsite_config("site10")
    assert.are.equal(0, select(2, run("sync --from " .. q(repo) .. " --config " .. q(cfg))))
    local back = util.scratch("sync-own-back")
    assert.are.equal(0, select(2, run("init --repo " .. q(back))))
    util.sh("mkdir -p " .. q(back .. "/daily") .. " && echo mine > " .. q(back .. "/daily/notes.txt"))
    local victim = util.scratch("victim") .. "/file"
    util.write(victim, "someone else's\n")
    util.sh("ln -s " .. q(victim) .. " " .. q(back .. "/daily/" .. name))
    local from = "--from s3://" .. S3.BUCKET .. "/site10 --to " .. q(back) .. " --config " .. q(cfg)
    local out, rc = run("sync " .. from)
    assert.are.equal(1, rc, out)
    assert.matches("left alone: .*not a regular file", out)
    assert.matches("symbolic link", util.sh("stat -c %F " .. q(back .. "/daily/" .. name)))
    assert.are.equal("someone else's\n", util.read(victim))
    assert.are.equal("mine\n", util.read(back .. "/daily/notes.txt"))
    -- the same bytes under the name, without sidecar or manifest (a copy cut short): completed
    util.sh("rm " .. q(back .. "/daily/" .. name) .. " && cp " .. q(repo .. "/daily/" .. name) .. " " .. q(back .. "/daily/"))
    out, rc = run("sync " .. from)
    assert.are.equal(0, rc, out)
    assert.matches("completed daily/" .. name:gsub("%p", "%%%0"), out)
    assert.are.equal(0, select(2, run("verify --all --repo " .. q(back))))
    -- other bytes under the name: left alone
    local other = util.scratch("sync-own-other")
    assert.are.equal(0, select(2, run("init --repo " .. q(other))))
    util.sh("mkdir -p " .. q(other .. "/daily"))
    util.write(other .. "/daily/" .. name, "not the backup\n")
    out, rc = run("sync --from s3://" .. S3.BUCKET .. "/site10 --to " .. q(other) .. " --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    assert.matches("its name is taken by another file", out)
    assert.are.equal("not the backup\n", util.read(other .. "/daily/" .. name))
  end)

  it("does not copy a damaged backup (exit 3): nothing under its key, no open upload; the rest is copied", function()
    local db = db_with_rows(3000)
    local repo = new_repo_with_backups(db)
    local daily = util.sh("ls " .. q(repo .. "/daily") .. " | grep '_" .. db .. ".sql.gz$'"):gsub("\n", "")
    util.flip_byte(repo .. "/daily/" .. daily, 2000)
    local cfg = offsite_config("site3")
    local out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.matches("not copied, damaged: .*" .. daily:gsub("%p", "%%%0") .. ": checksum mismatch", out)
    assert.is_nil(server.object_file("site3/daily/" .. daily))
    assert.is_nil(server.object_file("site3/daily/" .. daily .. ".json"))
    assert.is_nil(server.object_file("site3/daily/" .. daily .. ".sha256"))
    assert.are.same({}, server.open_uploads())
    assert.matches("weekly +" .. db, run("list --repo s3://" .. S3.BUCKET .. "/site3 --config " .. q(cfg)))
  end)

  it("when uploads fail, leaves no complete-looking backup and no open upload; the next sync finishes", function()
    local db = util.new_database("sy", "create table t (x text); insert into t select repeat(md5(i::text), 40) "
      .. "from generate_series(1, 60000) i;")
    local repo = util.scratch("sync-big")
    util.backup_newest(repo, db)
    local cfg = offsite_config("site4")
    server.fault("500 1000 PUT")
    local out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    assert.matches("failed", out)
    util.sh("rm -f " .. q(server.dir .. "/fault"))
    for file in util.sh("ls " .. q(repo .. "/daily")):gmatch("[^\n]+") do
      if file:match("%.json$") then assert.is_nil(server.object_file("site4/daily/" .. file)) end
    end
    out = run("list --repo s3://" .. S3.BUCKET .. "/site4 --config " .. q(cfg))
    assert.is_nil(out:match("passed"), out)
    assert.are.same({}, server.open_uploads())
    out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    for file in util.sh("ls " .. q(repo .. "/daily")):gmatch("[^\n]+") do
      assert.are.equal(util.sha256sum(repo .. "/daily/" .. file), util.sha256sum(server.object_file("site4/daily/" .. file)))
    end
  end)

  it("sends Object Lock retention with every upload when configured", function()
    local db = db_with_rows(500)
    local repo = util.scratch("sync-lock")
    util.backup_newest(repo, db)
    local cfg = offsite_config("site5", "  object_lock:\n    mode: governance\n    days: 30")
    local before = #server.requests()
    local out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local puts = 0
    for i, r in ipairs(server.requests()) do
      if i > before and (r.method == "PUT" or (r.method == "POST" and r.url:find("uploads"))) and not r.url:find("partNumber") then
        puts = puts + 1
        assert.are.equal("GOVERNANCE", r.headers["x-amz-object-lock-mode"], r.url)
        local until_ = r.headers["x-amz-object-lock-retain-until-date"]
        assert.is_truthy(until_, r.url)
        local y, m, d = until_:match("^(%d+)-(%d+)-(%d+)T")
        local days = (os.time{ year = tonumber(y), month = tonumber(m), day = tonumber(d), hour = 12 } - os.time()) / 86400
        assert.is_true(days > 28 and days < 32, until_)
      end
    end
    assert.are.equal(3, puts) -- the backup's data, sidecar and manifest
  end)

  it("never shows the secret key, and refuses what it cannot use with exit 2", function()
    local db = db_with_rows(100)
    local repo = util.scratch("sync-secret")
    util.backup_newest(repo, db)
    local cfg = offsite_config("site6")
    local outputs = {}
    local function try(args, want_rc, env)
      local out, rc = run(args, env)
      assert.are.equal(want_rc, rc, args .. ": " .. out)
      outputs[#outputs + 1] = out
      return out
    end
    try("sync --from " .. q(repo) .. " --config " .. q(cfg), 0)
    -- a wrong secret: auth, named, not shown
    local wrong = util.scratch("sync-wrong") .. "/bkr.yaml"
    util.write(wrong, util.read(cfg):gsub("secret_access_key_file: [^\n]+", "secret_access_key_env: BKR_TEST_SECRET"))
    local out = try("list --repo s3://" .. S3.BUCKET .. "/site6 --config " .. q(wrong), 1,
      "BKR_TEST_SECRET=" .. q(S3.SECRET_KEY .. "x"))
    assert.matches("auth", out)
    -- no credentials at all: the places it looked
    local bare = util.scratch("sync-bare") .. "/bkr.yaml"
    util.write(bare, "offsite: s3://" .. S3.BUCKET .. "/site6\ns3:\n  endpoint: " .. server.endpoint .. "\n")
    out = try("sync --from " .. q(repo) .. " --config " .. q(bare), 2, "AWS_ACCESS_KEY_ID= AWS_SECRET_ACCESS_KEY=")
    assert.matches("no access key: .*AWS_ACCESS_KEY_ID", out)
    -- the commands that work on a local repository say where s3:// is used
    out = try("init --repo s3://" .. S3.BUCKET .. "/site6 --config " .. q(cfg), 2)
    assert.matches("an s3:// repository is used by bkr backup", out, 1, true)
    try("sync --from " .. q(repo) .. " --to s3://Bad_Bucket/x --config " .. q(cfg), 2)
    try("sync --from " .. q(repo) .. " --to s3://" .. S3.BUCKET .. "/a/../b --config " .. q(cfg), 2)
    local log = util.read(repo .. "/bkr.log")
    for _, text in ipairs(outputs) do assert.is_nil(text:find(S3.SECRET_KEY, 1, true)) end
    assert.is_nil(log:find(S3.SECRET_KEY, 1, true))
    assert.is_nil(util.read(server.dir .. "/requests.log"):find(S3.SECRET_KEY, 1, true))
  end)
end)

describe("bkr check with an off-site copy", function()
  setup(function() server = S3.start() end)
  teardown(function() server.stop() end)

  it("is OK with a fresh copy, WARNING without one or when it cannot be listed", function()
    local db = db_with_rows(200)
    local repo = util.scratch("check-offsite")
    util.backup_newest(repo, db)
    assert.are.equal(0, select(2, run("verify --all --repo " .. q(repo))))
    local cfg = offsite_config("site7", "databases: [" .. db .. "]\ndrill:\n  interval_days: 366")
    local out, rc = run("check --repo " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    assert.matches("no off%-site copy", out)
    -- (the drill is missing too: a WARNING of its own; only the off-site part matters here)
    assert.are.equal(0, select(2, run("sync --from " .. q(repo) .. " --config " .. q(cfg))))
    out = run("check --repo " .. q(repo) .. " --config " .. q(cfg))
    assert.is_nil(out:match("off%-site"), out)
    assert.matches("offsite_age", out)
    local doc = json.decode((run("check --json --repo " .. q(repo) .. " --config " .. q(cfg))))
    assert.are.equal(db, doc.offsite.databases[1].database)
    assert.is_true(doc.offsite.databases[1].age_seconds < 600)
    -- a server that does not answer: a warning naming it, never OK
    local unreachable = util.scratch("check-down") .. "/bkr.yaml"
    util.write(unreachable, util.read(cfg):gsub("endpoint: [^\n]+", "endpoint: http://127.0.0.1:9"))
    out, rc = run("check --repo " .. q(repo) .. " --config " .. q(unreachable))
    assert.are.equal(1, rc, out)
    assert.matches("off-site copy s3://" .. S3.BUCKET .. "/site7 cannot be listed", out, 1, true)
  end)
end)

describe("the off-site configuration", function()
  local SOURCE = os.getenv("BKR_SOURCE_DIR") or "."

  local function load(text)
    local dir = util.scratch("offsite-example")
    util.write(dir .. "/bkr.yaml", text)
    util.write(dir .. "/load.lua", "local cfg = require('lib.config').load{ config = " .. string.format("%q", dir .. "/bkr.yaml")
      .. " }\nprint(cfg.offsite, cfg.s3.region, cfg.s3.object_lock and cfg.s3.object_lock.days)\n")
    return run("run " .. q(dir .. "/load.lua"))
  end

  it("docs/bkr.example.yaml's commented offsite and s3 sections are valid once uncommented", function()
    local example = util.read(SOURCE .. "/docs/bkr.example.yaml")
    local block = example:match("\n(# offsite: .*)$")
    assert.is_truthy(block)
    local out, rc = load((block:gsub("\n#   # ", "\n  "):gsub("\n# ?", "\n"):gsub("^# ", "")) .. "\n")
    assert.are.equal(0, rc, out)
    assert.are.equal("s3://acme-backups/site1\teu-west-1\t35\n", out)
  end)

  it("is refused with the key's path and no value: a bad URL, a secret given twice, a half Object Lock", function()
    for _, case in ipairs({
      { "offsite: s3://Acme/x\n", "offsite: the bucket name" },
      { "offsite: https://acme/x\n", "offsite: expected an s3://BUCKET/PREFIX URL" },
      { "s3:\n  secret_access_key_file: /etc/k\n  secret_access_key_env: K\n", "s3: give secret_access_key_file or" },
      { "s3:\n  object_lock: { days: 3 }\n", "s3.object_lock: needs both mode and days" },
      { "s3:\n  endpoint: https://user:pw@minio:9000\n", "s3.endpoint: expected http" },
      { "s3:\n  regoin: eu-west-1\n", "did you mean region" },
    }) do
      local out, rc = load(case[1])
      assert.are.equal(2, rc, case[1] .. out)
      assert.matches(case[2], out, 1, true)
      assert.is_nil(out:find("pw@", 1, true))
    end
  end)
end)

describe("bkr rotate on an off-site copy", function()
  setup(function() server = S3.start() end)
  teardown(function() server.stop() end)

  it("applies offsite_retention: the older backups go, manifest first; --dry-run removes nothing", function()
    local db = db_with_rows(100)
    local repo = util.scratch("rotate-remote")
    for _ = 1, 3 do
      local out, rc = run("backup --no-globals --create-repo --no-rotate --repo " .. q(repo) .. " --db " .. db)
      assert.are.equal(0, rc, out)
    end
    local cfg = offsite_config("site8", "retention: { daily: 7 }\noffsite_retention: { daily: 1 }")
    assert.are.equal(0, select(2, run("sync --from " .. q(repo) .. " --config " .. q(cfg))))
    local names = {}
    for file in util.sh("ls " .. q(repo .. "/daily") .. " | grep 'sql.gz$'"):gmatch("[^\n]+") do names[#names + 1] = file end
    -- oldest first, as bkr orders them: by second, then by the -N of runs in the same second
    local function order(name)
      local second, n = name:match("^backup_(%d+_%d+)%-?(%d*)_")
      return second .. string.format("%04d", tonumber(n) or 1)
    end
    table.sort(names, function(a, b) return order(a) < order(b) end)
    assert.are.equal(3, #names)
    local url = "s3://" .. S3.BUCKET .. "/site8"
    local out, rc = run("rotate --dry-run --repo " .. url .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("would remove daily/" .. names[1]:gsub("%p", "%%%0"), out)
    for _, name in ipairs(names) do assert.is_truthy(server.object_file("site8/daily/" .. name .. ".json")) end
    local before = #server.requests()
    out, rc = run("rotate --repo " .. url .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    for i = 1, 2 do
      for _, suffix in ipairs({ "", ".sha256", ".json" }) do
        assert.is_nil(server.object_file("site8/daily/" .. names[i] .. suffix), names[i] .. suffix)
      end
    end
    for _, suffix in ipairs({ "", ".sha256", ".json" }) do
      assert.is_truthy(server.object_file("site8/daily/" .. names[3] .. suffix))
    end
    -- the manifest is deleted before the data it describes
    local deletes = {}
    for i, r in ipairs(server.requests()) do
      if i > before and r.method == "DELETE" then deletes[#deletes + 1] = r.url end
    end
    assert.matches("%.json$", deletes[1])
    -- the local repository keeps its own (retention.daily 7)
    assert.are.equal(3, #util.sh("ls " .. q(repo .. "/daily") .. " | grep 'sql.gz$'"):gsub("[^\n]", ""))
  end)
end)

describe("bkr rotate and Object Lock", function()
  setup(function() server = S3.start() end)
  teardown(function() server.stop() end)

  it("keeps a locked copy until its date instead of failing to delete it", function()
    local db = db_with_rows(100)
    local repo = util.scratch("rotate-lock")
    for _ = 1, 2 do
      assert.are.equal(0, select(2, run("backup --no-globals --create-repo --no-rotate --repo " .. q(repo) .. " --db " .. db)))
    end
    -- (offsite_config appends after the s3 section: an indented line is one of its keys)
    local cfg = offsite_config("site9", "  object_lock: { mode: governance, days: 2 }\noffsite_retention: { daily: 1 }")
    assert.are.equal(0, select(2, run("sync --from " .. q(repo) .. " --config " .. q(cfg))))
    local out, rc = run("rotate --repo s3://" .. S3.BUCKET .. "/site9 --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("kept daily/backup_.*: under Object Lock until 20%d%d%-", out)
    assert.is_nil(out:match("removed"), out)
    local objects = util.sh("find " .. q(server.dir .. "/data") .. " -name '*._S3rver_object' | grep -c site9")
    assert.are.equal("6", objects:match("%d+")) -- both backups, each with its sidecar and manifest
  end)
end)

describe("bkr verify on an off-site copy", function()
  setup(function() server = S3.start() end)
  teardown(function() server.stop() end)

  it("streams each backup from the bucket through the same checks and records the verdict there", function()
    local db = db_with_rows(2000)
    local repo = new_repo_with_backups(db)
    local cfg = offsite_config("site11")
    assert.are.equal(0, select(2, run("sync --from " .. q(repo) .. " --config " .. q(cfg))))
    local url = "s3://" .. S3.BUCKET .. "/site11"
    local out, rc = run("verify --all --repo " .. url .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("ok +daily/backup_", out)
    assert.matches("ok +weekly/globals_", out)
    local daily = util.files(repo, "^backup_.*%.sql%.gz$")[1]
    local manifest = json.decode(util.read(server.object_file("site11/daily/" .. daily .. ".json")))
    assert.are.equal("passed", manifest.verification.result)
    assert.matches("passed", run("list --repo " .. url .. " --config " .. q(cfg)))
    -- the bucket unreachable: nothing is known, nothing recorded (exit 1)
    local down = util.scratch("verify-down") .. "/bkr.yaml"
    util.write(down, util.read(cfg):gsub("endpoint: [^\n]+", "endpoint: http://127.0.0.1:9"))
    out, rc = run("verify --latest --repo " .. url .. " --config " .. q(down))
    assert.are.equal(1, rc, out)
    assert.matches("verify: cannot list s3://", out, 1, true)
    assert.are.equal("passed", json.decode(util.read(server.object_file("site11/daily/" .. daily .. ".json")))
      .verification.result)
    -- connections dropped mid-object, again and again: the network's failure, not the backup's
    server.fault("drop 50 GET 200")
    out, rc = run("verify --latest --db " .. db .. " --repo " .. url .. " --config " .. q(cfg))
    util.sh("rm -f " .. q(server.dir .. "/fault"))
    assert.are.equal(1, rc, out)
    assert.matches("could not be verified", out)
    assert.are.equal("passed", json.decode(util.read(server.object_file("site11/daily/" .. daily .. ".json")))
      .verification.result)
    -- a flipped byte in the stored object: checksum mismatch, exit 3, recorded in the bucket
    -- (--all: which of the daily and weekly backups is the newest depends on the clock)
    util.flip_byte(server.object_file("site11/daily/" .. daily), 300)
    out, rc = run("verify --all --repo " .. url .. " --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.matches("FAILED +daily/.*checksum mismatch", out)
    manifest = json.decode(util.read(server.object_file("site11/daily/" .. daily .. ".json")))
    assert.are.equal("failed", manifest.verification.result)
  end)
end)

describe("bkr sync: what the target lacks, whatever the clock says", function()
  setup(function() server = S3.start() end)
  teardown(function() if server then server.stop() end end)

  it("copies a backup dated ahead of this host's clock, and copies again one whose data went missing "
    .. "in the target while its manifest stayed", function()
    local db = db_with_rows(200)
    local repo = util.scratch("sync-future")
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --repo " .. q(repo) .. " --db " .. db)))
    local name = util.files(repo, "%.sql%.gz$")[1]
    local ahead = name:gsub("^backup_%d+_%d+", "backup_" .. os.date("!%Y%m%d_%H%M%S", os.time() + 7200))
    for _, suffix in ipairs({ "", ".json" }) do
      os.rename(repo .. "/daily/" .. name .. suffix, repo .. "/daily/" .. ahead .. suffix)
    end
    os.remove(repo .. "/daily/" .. name .. ".sha256")
    util.resign(repo .. "/daily/" .. ahead, function(m) m.file = ahead end)
    local cfg = offsite_config("site20")
    local out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("copied daily/" .. ahead:gsub("%p", "%%%0"), out)
    local object = server.object_file("site20/daily/" .. ahead)
    assert.are.equal(util.sha256sum(repo .. "/daily/" .. ahead), util.sha256sum(object))
    -- the data object and its sidecar gone from the bucket, the manifest left: copied again
    util.sh("rm -f " .. q(object) .. "* " .. q(server.object_file("site20/daily/" .. ahead .. ".sha256")) .. "*")
    out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("1 backup copied, 0 already there", out)
    assert.are.equal(util.sha256sum(repo .. "/daily/" .. ahead),
      util.sha256sum(server.object_file("site20/daily/" .. ahead)))
    assert.is_truthy(server.object_file("site20/daily/" .. ahead .. ".sha256"))
    out, rc = run("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.matches("0 backups copied, 1 already there", out)
  end)

  it("SIGTERM mid-copy: exit 143 with the summary, nothing of the copy left, no open upload", function()
    local db = util.new_database("sy", "create table t (id int primary key, x text); "
      .. "insert into t select i, md5(random()::text) || md5(random()::text) from generate_series(1, 600000) i;")
    local repo = util.scratch("sync-term")
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --repo " .. q(repo) .. " --db " .. db)))
    local cfg = offsite_config("site21", "  part_size_mib: 5")
    local h = R.start_bkr("sync --from " .. q(repo) .. " --config " .. q(cfg))
    assert.is_true(server.wait_for_first_part("site21/daily/"), "no part was sent")
    h.kill("TERM")
    assert.are.equal(143, h.wait(60), h.output())
    local out = h.output()
    assert.matches("interrupted; nothing of it was left", out)
    assert.matches("sync [^\n]+ %(interrupted%): 0 backups copied", out)
    assert.is_nil(out:find("stream.run", 1, true), out)
    R.wait_until(function() return #server.open_uploads() == 0 end, 5)
    assert.are.same({}, server.open_uploads())
    assert.are.equal("", util.sh("ls " .. q(server.dir .. "/data/" .. S3.BUCKET .. "/site21/daily") .. " 2>/dev/null"))
  end)
end)
