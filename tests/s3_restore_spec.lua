-- bkr restore and bkr drill straight from object storage (--repo s3://BUCKET/PREFIX), against
-- s3rver on loopback (tests/support/s3.lua) and the real cluster. Backups get into the bucket
-- as an admin's would: bkr backup into a local repository, then bkr sync. What is restored is
-- checked with psql; what lands in the bucket with s3rver's own files; what is left on disk
-- with ls and find.
local util = require "support.util"
local S3 = require "support.s3"
local R = require "support.restore_util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr

local server

-- A configuration for s3://bkr-test/PREFIX (the repository), with top-level YAML lines first.
local function s3_config(prefix, top)
  return (server.config_file((top or "") .. "repository: s3://" .. S3.BUCKET .. "/" .. prefix))
end

local function url(prefix) return "s3://" .. S3.BUCKET .. "/" .. prefix end

-- Back up db into a new local repository (with the configuration's format, compression and
-- key), then sync it to the prefix. Returns the local repository and the backup's file name.
local function backup_to_bucket(db, prefix, cfg, extra)
  local repo = util.scratch("s3r-repo")
  local out, rc = run("backup --create-repo --repo " .. q(repo) .. " --config " .. q(cfg) .. " --db " .. db
    .. " " .. (extra or ""))
  assert.are.equal(0, rc, out)
  out, rc = run("sync --from " .. q(repo) .. " --to " .. url(prefix) .. " --config " .. q(cfg))
  assert.are.equal(0, rc, out)
  local file = util.files(repo, "^backup_.*_" .. db:gsub("%p", "%%%0") .. "%.")[1]
  local data
  for _, name in ipairs(util.files(repo, "^backup_")) do
    if not name:match("%.json$") and not name:match("%.sha256$") then data = name end
  end
  return repo, data or file
end

local SETUP = "create table t (id int primary key, x text); "
  .. "insert into t select i, md5(i::text) from generate_series(1, %d) i;"

local function db_with_rows(n)
  return util.new_database("s3r", string.format(SETUP, n))
end

-- The table's row count and a digest of its contents, by psql: the same in source and copy.
local function contents(db)
  return util.psql("select count(*) || ' ' || md5(coalesce(string_agg(id || ':' || x, ',' order by id), '')) from t", db)
end

-- An empty directory to run bkr in (its working directory), and an empty $TMPDIR: after the
-- run both must still be empty (no local copy of a plain backup, no directory "s3:").
local function clean_dirs()
  return util.scratch("s3r-cwd"), util.scratch("s3r-tmp")
end

local function in_dirs(cwd, tmp, env)
  return "cd " .. q(cwd) .. " && TMPDIR=" .. q(tmp) .. " " .. (env or "")
end

local function empty(dir)
  return (util.sh("find " .. q(dir) .. " -mindepth 1"):gsub("\n$", ""))
end

local function report_stamp(out, prefix)
  return out:match("report " .. url(prefix):gsub("%p", "%%%0") .. "/drills/drill_([%d_%-]+)%.json")
end

-- Run bkr in the background while the bucket stalls after 100000 bytes of the backup's
-- object (smaller objects, the manifests and sidecars, come whole), then:
-- how = "stop": kill s3rver once that object is being read (the server gone mid-restore),
-- then start it again, on its port, with its objects. how = "refuse": the stalled request
-- times out, and the next one (a resume of the object) is refused with 403 (a key revoked, a
-- token expired mid-restore). Returns bkr's exit code and output.
local function fail_mid_object(how, file, args, env)
  server.fault("stall 50 GET 100000")
  local log_before = #server.requests()
  local bg = R.start_bkr(args, env)
  local reading = R.wait_until(function()
    for i, r in ipairs(server.requests()) do
      if i > log_before and r.method == "GET" and r.url:find(file, 1, true) and not r.url:find("%.json")
          and not r.url:find("%.sha256") then
        return true
      end
    end
    return false
  end, 30)
  util.sh("sleep 0.3")
  if how == "stop" then
    server.stop("KILL")
  else
    server.fault("403 50 GET")
  end
  local code = bg.wait(60)
  util.sh("rm -f " .. q(server.dir .. "/fault"))
  if how == "stop" then server = S3.start(server.dir, server.port) end
  assert.is_true(reading, bg.output())
  return code, bg.output()
end

describe("bkr restore from object storage", function()
  setup(function() server = S3.start() end)
  teardown(function() if server then server.stop() end end)

  it("restores the newest gzip backup straight from the bucket, leaving no copy and no s3: directory", function()
    local db = db_with_rows(3000)
    local cfg = s3_config("r1")
    local _, file = backup_to_bucket(db, "r1", cfg)
    local cwd, tmp = clean_dirs()
    -- --dry-run names the backup and touches nothing
    local out, rc = run("restore --repo " .. url("r1") .. " --db " .. db .. " --dry-run --config " .. q(cfg),
      in_dirs(cwd, tmp))
    assert.are.equal(0, rc, out)
    assert.matches("backup:  daily/" .. file:gsub("%p", "%%%0"), out)
    local target = db .. "_r"
    assert.is_false(R.exists(target))
    local before = #server.requests()
    -- the repository from the configuration (repository: s3://...), no --repo
    out, rc = run("restore --db " .. db .. " --latest --into " .. target .. " --create --config " .. q(cfg),
      in_dirs(cwd, tmp))
    assert.are.equal(0, rc, out)
    assert.matches("the SHA-256 is checked as the backup streams from the bucket", out, 1, true)
    assert.matches("compare: 1 of 1 tables match", out)
    assert.are.equal(contents(db), contents(target))
    assert.are.equal("3000", contents(target):match("^%d+"))
    -- read once, from the bucket
    local gets = 0
    for i, r in ipairs(server.requests()) do
      if i > before and r.method == "GET" and r.url:find(file, 1, true) and not r.url:find("%.json") and not r.url:find("%.sha256") then
        gets = gets + 1
      end
    end
    assert.are.equal(1, gets)
    assert.are.equal("", empty(cwd))
    assert.are.equal("", empty(tmp))
  end)

  for _, case in ipairs({
    { name = "zstd", top = "compression: zstd\n", suffix = "%.sql%.zst$" },
    { name = "encrypted", key = true, suffix = "%.sql%.gz%.enc$" },
  }) do
    it("restores a " .. case.name .. " backup from the bucket", function()
      local db = db_with_rows(2000)
      local prefix = "r-" .. case.name
      local top = case.top or ""
      if case.key then
        local key = util.scratch("s3r-key") .. "/bkr.key"
        assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
        top = "encryption:\n  key_file: " .. key .. "\n"
      end
      local cfg = s3_config(prefix, top)
      local _, file = backup_to_bucket(db, prefix, cfg)
      assert.matches(case.suffix, file)
      local cwd, tmp = clean_dirs()
      local out, rc = run("restore --repo " .. url(prefix) .. " --db " .. db .. " --into " .. db .. "_r --create --config "
        .. q(cfg), in_dirs(cwd, tmp))
      assert.are.equal(0, rc, out)
      assert.are.equal(contents(db), contents(db .. "_r"))
      assert.are.equal("", empty(cwd))
      assert.are.equal("", empty(tmp))
    end)
  end

  for _, case in ipairs({ { name = "custom-format" }, { name = "encrypted custom-format", key = true } }) do
    it("restores a " .. case.name .. " backup with pg_restore -j 2 from a private copy it removes", function()
      local db = db_with_rows(4000)
      local prefix = "r-" .. case.name:gsub("[^%w]", "")
      local top = "format: custom\n"
      if case.key then
        local key = util.scratch("s3r-key") .. "/bkr.key"
        assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
        top = top .. "encryption:\n  key_file: " .. key .. "\n"
      end
      local cfg = s3_config(prefix, top)
      local _, file = backup_to_bucket(db, prefix, cfg)
      assert.matches("%.dump", file)
      local cwd, tmp = clean_dirs()
      local out, rc = run("restore --repo " .. url(prefix) .. " --db " .. db .. " --into " .. db .. "_r --create --jobs 2"
        .. " --config " .. q(cfg), in_dirs(cwd, tmp))
      assert.are.equal(0, rc, out)
      assert.matches("with pg_restore %-j 2", out)
      assert.are.equal(contents(db), contents(db .. "_r"))
      assert.are.equal("", empty(cwd))
      assert.are.equal("", empty(tmp))
    end)
  end

  it("restores the roles of the same run with --globals, checked whole first", function()
    local role = "s3r_role_" .. math.random(1e6)
    util.psql("create role " .. role)
    local db = db_with_rows(100)
    util.psql("alter table t owner to " .. role, db)
    local cfg = s3_config("r-globals")
    local repo = util.scratch("s3r-repo")
    assert.are.equal(0, select(2, run("backup --create-repo --repo " .. q(repo) .. " --config " .. q(cfg) .. " --db " .. db)))
    assert.are.equal(0, select(2, run("sync --from " .. q(repo) .. " --to " .. url("r-globals") .. " --config " .. q(cfg))))
    util.psql("drop owned by " .. role .. " cascade; drop role " .. role, db)
    local out, rc = run("restore --repo " .. url("r-globals") .. " --db " .. db .. " --into " .. db .. "_g --create "
      .. "--globals --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("globals: restored", out)
    assert.are.equal("1", util.psql("select count(*) from pg_roles where rolname = '" .. role .. "'"))
    assert.are.equal(role, util.psql("select tableowner from pg_tables where tablename = 't'", db .. "_g"))
    -- a globals object damaged in the bucket: refused before anything is applied or created
    local globals = util.files(repo, "^globals_.*%.gz$")[1]
    util.flip_byte(server.object_file("r-globals/daily/" .. globals), 20)
    out, rc = run("restore --repo " .. url("r-globals") .. " --db " .. db .. " --into " .. db .. "_g2 --create "
      .. "--globals --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    assert.matches("globals file " .. globals:gsub("%p", "%%%0") .. " failed verification: .*checksum mismatch", out)
    assert.is_false(R.exists(db .. "_g2"))
  end)

  it("--replace swaps in the restored database and keeps the old one", function()
    local db = db_with_rows(500)
    local cfg = s3_config("r-replace")
    backup_to_bucket(db, "r-replace", cfg)
    local target = util.new_database("s3r", string.format(SETUP, 7))
    local out, rc = run("restore --repo " .. url("r-replace") .. " --db " .. db .. " --into " .. target .. " --replace"
      .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal(contents(db), contents(target))
    local old = R.databases_like(target .. "_before_%")
    assert.are_not.equal("", old)
    assert.are.equal("7", contents(old):match("^%d+"))
  end)
end)

describe("bkr restore from object storage, when the object or the bucket fails", function()
  setup(function() server = S3.start() end)
  teardown(function() if server then server.stop() end end)

  -- gzip does not check its header's MTIME (bytes 4 to 7): a byte flipped there is seen by the
  -- SHA-256 alone, at the very end of the stream, when psql has read the whole dump.
  local MTIME_BYTE = 5

  it("a byte changed in the object (sidecar and manifest as they were): exit 3, nothing committed", function()
    local db = db_with_rows(3000)
    local cfg = s3_config("d1")
    local _, file = backup_to_bucket(db, "d1", cfg)
    util.flip_byte(server.object_file("d1/daily/" .. file), MTIME_BYTE)
    -- --create: no database left
    local out, rc = run("restore --repo " .. url("d1") .. " --db " .. db .. " --into " .. db .. "_c --create --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.matches("failed verification while restoring, nothing was committed: .*checksum mismatch", out)
    assert.is_false(R.exists(db .. "_c"))
    -- an existing target, --replace: its rows as they were, no restore database left
    local target = util.new_database("s3r", string.format(SETUP, 11))
    local before = contents(target)
    out, rc = run("restore --repo " .. url("d1") .. " --db " .. db .. " --into " .. target .. " --replace --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.are.equal(before, contents(target))
    assert.are.equal("", R.databases_like(target .. "_bkr_restore_%"))
    -- an existing empty target, restored into in place: nothing committed there
    local empty_target = util.new_database("s3r")
    out, rc = run("restore --repo " .. url("d1") .. " --db " .. db .. " --into " .. empty_target .. " --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.are.equal("0", util.psql("select count(*) from pg_tables where schemaname = 'public'", empty_target))
  end)

  it("a changed object re-signed (sidecar and manifest recomputed): exit 3 while streaming, nothing committed", function()
    local db = db_with_rows(3000)
    local cfg = s3_config("d2")
    local repo = util.scratch("s3r-repo")
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --repo " .. q(repo) .. " --config " .. q(cfg)
      .. " --db " .. db)))
    local file = util.files(repo, "^backup_.*%.sql%.gz$")[1]
    util.flip_byte(repo .. "/daily/" .. file, 3000)
    util.resign(repo .. "/daily/" .. file)
    assert.are.equal(0, select(2, run("sync --from " .. q(repo) .. " --to " .. url("d2") .. " --config " .. q(cfg))))
    local out, rc = run("restore --repo " .. url("d2") .. " --db " .. db .. " --into " .. db .. "_c --create --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.matches("failed verification while restoring, nothing was committed", out)
    assert.is_false(R.exists(db .. "_c"))
  end)

  it("a bucket that cannot be reached or drops the connection: exit 1, nothing committed", function()
    local db = util.new_database("s3r", "create table t (id int primary key, x text); "
      .. "insert into t select i, repeat(md5(i::text), 8) from generate_series(1, 20000) i;")
    local cfg = s3_config("n1")
    local _, file = backup_to_bucket(db, "n1", cfg)
    -- nothing listens there
    local down = util.scratch("s3r-down") .. "/bkr.yaml"
    util.write(down, util.read(cfg):gsub("endpoint: [^\n]+", "endpoint: http://127.0.0.1:9"))
    local out, rc = run("restore --repo " .. url("n1") .. " --db " .. db .. " --into " .. db .. "_c --create --config " .. q(down))
    assert.are.equal(1, rc, out)
    assert.matches("cannot list s3://", out, 1, true)
    assert.is_false(R.exists(db .. "_c"))
    -- the server gone while the object streams in: --create leaves no database
    local code, output = fail_mid_object("stop", file, "restore --repo " .. url("n1") .. " --db " .. db .. " --into "
      .. db .. "_c --create --config " .. q(cfg))
    assert.are.equal(1, code, output)
    assert.matches("failed, nothing was committed", output)
    assert.is_false(R.exists(db .. "_c"))
    -- the same into an existing target with --replace: its rows as they were
    local target = util.new_database("s3r", string.format(SETUP, 5))
    local before = contents(target)
    code, output = fail_mid_object("stop", file, "restore --repo " .. url("n1") .. " --db " .. db .. " --into " .. target
      .. " --replace --config " .. q(cfg))
    assert.are.equal(1, code, output)
    assert.are.equal(before, contents(target))
    assert.are.equal("", R.databases_like(target .. "_bkr_restore_%"))
    -- the bucket refuses the rest of the object: its "auth" is S3's 403, the bucket's failure,
    -- not a chunk that failed to authenticate: exit 1, nothing committed
    local quick = util.scratch("s3r-quick") .. "/bkr.yaml"
    util.write(quick, util.read(cfg):gsub("timeout_seconds: 10", "timeout_seconds: 2"))
    code, output = fail_mid_object("refuse", file, "restore --repo " .. url("n1") .. " --db " .. db .. " --into "
      .. db .. "_c --create --config " .. q(quick))
    assert.are.equal(1, code, output)
    assert.matches("failed, nothing was committed", output)
    assert.is_false(R.exists(db .. "_c"))
    -- and a positional FILE stays local: an s3:// one is a usage error that says what to do
    out, rc = run("restore " .. url("n1") .. "/daily/" .. file .. " --into x --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches("give %-%-repo s3://", out)
  end)

  it("a custom-format download cut short or stopped by SIGTERM leaves no plaintext in $TMPDIR", function()
    local db = util.new_database("s3r", "create table t (id int primary key, x text); "
      .. "insert into t select i, repeat(md5(i::text), 8) from generate_series(1, 20000) i;")
    local cfg = s3_config("n2", "format: custom\n")
    local _, file = backup_to_bucket(db, "n2", cfg)
    local _, tmp = clean_dirs()
    local code, output = fail_mid_object("stop", file, "restore --repo " .. url("n2") .. " --db " .. db .. " --into "
      .. db .. "_c --create --config " .. q(cfg), "TMPDIR=" .. q(tmp))
    assert.are.equal(1, code, output)
    assert.is_false(R.exists(db .. "_c"))
    assert.are.equal("", empty(tmp))
    -- stalled after 100000 bytes: the copy is being written when SIGTERM comes
    server.fault("stall 50 GET 100000")
    local bg = R.start_bkr("restore --repo " .. url("n2") .. " --db " .. db .. " --into " .. db .. "_t --create --config "
      .. q(cfg), "TMPDIR=" .. q(tmp))
    local writing = R.wait_until(function()
      return util.sh("find " .. q(tmp) .. " -type f -size +0"):match("bkr%-archive") ~= nil
    end, 20)
    bg.kill("TERM")
    local code = bg.wait(30)
    util.sh("rm -f " .. q(server.dir .. "/fault"))
    assert.is_true(writing, bg.output())
    assert.are.equal(143, code, bg.output())
    assert.are.equal("", empty(tmp))
    assert.is_false(R.exists(db .. "_t"))
  end)
end)

describe("bkr drill on object storage", function()
  setup(function() server = S3.start() end)
  teardown(function() if server then server.stop() end end)

  it("drills the bucket in place and writes its reports there, as a local drill names them", function()
    local db = db_with_rows(1000)
    local cfg = s3_config("dr1", "databases: [" .. db .. "]\n")
    local _, file = backup_to_bucket(db, "dr1", cfg)
    local cwd, tmp = clean_dirs()
    local out, rc = run("drill --config " .. q(cfg), in_dirs(cwd, tmp))
    assert.are.equal(0, rc, out)
    -- nothing under the working directory: above all no "s3:" taken for a directory
    assert.are.equal("", empty(cwd))
    local stamp = report_stamp(out, "dr1")
    assert.is_truthy(stamp, out)
    local stored = server.object_file("dr1/drills/drill_" .. stamp .. ".json")
    assert.is_truthy(stored)
    local report = json.decode(util.read(stored))
    assert.are.equal("bkr-drill-1", report.format)
    assert.are.equal("passed", report.result)
    assert.are.equal(url("dr1"), report.repository)
    assert.are.equal(db, report.databases[1].database)
    assert.are.equal("daily/" .. file, report.databases[1].backup)
    assert.matches("**Result: PASSED.**", util.read(server.object_file("dr1/drills/drill_" .. stamp .. ".md")), 1, true)
    assert.are.equal("", R.databases_like("bkr_drill_%"))
    assert.are.equal("", empty(tmp))
    -- a second drill keeps the first one's report
    out, rc = run("drill --config " .. q(cfg), in_dirs(cwd, tmp))
    assert.are.equal(0, rc, out)
    local reports = util.sh("find " .. q(server.dir .. "/data") .. " -path '*dr1/drills/drill_*.json._S3rver_object' | wc -l")
    assert.are.equal("2", reports:match("%d+"))
    -- a byte changed in the object: the drill fails with exit 3, and says so in the bucket
    util.flip_byte(server.object_file("dr1/daily/" .. file), 5)
    out, rc = run("drill --config " .. q(cfg), in_dirs(cwd, tmp))
    assert.are.equal(3, rc, out)
    assert.matches("checksum mismatch", out)
    stamp = report_stamp(out, "dr1")
    report = json.decode(util.read(server.object_file("dr1/drills/drill_" .. stamp .. ".json")))
    assert.are.equal("failed", report.result)
    assert.are.equal("", R.databases_like("bkr_drill_%"))
    assert.are.equal("", empty(cwd))
  end)

  it("SIGTERM while the report goes into the bucket: the report is written as bkr exits, and said", function()
    local db = db_with_rows(100)
    local cfg = s3_config("dr2", "databases: [" .. db .. "]\n")
    backup_to_bucket(db, "dr2", cfg)
    server.fault("stall 1 PUT") -- the drill's first PUT is its report: never answered
    local before = #server.requests()
    local bg = R.start_bkr("drill --config " .. q(cfg))
    assert.is_true(R.wait_until(function()
      for i, r in ipairs(server.requests()) do
        if i > before and r.method == "PUT" and r.url:find("dr2/drills/drill_", 1, true) then return true end
      end
      return false
    end, 60), "the report was never sent")
    bg.kill("TERM")
    assert.are.equal(143, bg.wait(60), bg.output())
    local out = bg.output()
    assert.matches("interrupted while writing the report to the bucket; writing it as bkr exits", out, 1, true)
    local stamp = out:match("the report was written to " .. url("dr2"):gsub("%p", "%%%0") .. "/drills/drill_([%d_%-]+)")
    assert.is_truthy(stamp, out)
    local report = json.decode(util.read(server.object_file("dr2/drills/drill_" .. stamp .. ".json")))
    assert.are.equal("passed", report.result)
    assert.matches("**Result: PASSED.**", util.read(server.object_file("dr2/drills/drill_" .. stamp .. ".md")), 1, true)
    assert.are.equal("", R.databases_like("bkr_drill_%"))
  end)
end)
