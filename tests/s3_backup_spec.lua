-- bkr backup straight into S3-compatible object storage (s3rver on loopback, every signature
-- checked: tests/support/s3rver.js): a multipart upload while pg_dump runs, no local copy, the
-- sidecar and then the manifest after the data; what an interrupted run leaves; rotation there.
-- Checked with independent tools: sha256sum of s3rver's stored files, gunzip, psql.
local util = require "support.util"
local S3 = require "support.s3"
local R = require "support.restore_util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr

local server
local MiB = 1024 * 1024

-- A configuration whose repository is s3://bkr-test/PREFIX, with extra lines appended.
local function s3_config(prefix, extra)
  return server.config_file("repository: s3://" .. S3.BUCKET .. "/" .. prefix, "  part_size_mib: 5\n" .. (extra or ""))
end

local function db_with_rows(n)
  return util.new_database("s3b", "create table t (id int primary key, x text); "
    .. "insert into t select i, md5(i::text) from generate_series(1, " .. n .. ") i;")
end

-- A database of `rows` rows of random text (about 80 bytes each in the dump, half of that
-- once compressed): big enough that its backup goes up in several 5 MiB parts.
local function big_database(prefix, rows)
  return util.new_database(prefix, "create table t (id int primary key, x text); "
    .. "insert into t select i, md5(random()::text) || md5(random()::text) from generate_series(1, " .. rows .. ") i;")
end

-- The keys under PREFIX/TYPE/ in s3rver's store, by file name (no directories).
local function stored(prefix, type_)
  local dir = server.dir .. "/data/" .. S3.BUCKET .. "/" .. prefix .. "/" .. type_
  local names = {}
  for line in util.sh("ls " .. q(dir) .. " 2>/dev/null"):gmatch("[^\n]+") do
    local name = line:match("^(.*)%._S3rver_object$")
    if name then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

local function backups_of(prefix, type_, pattern)
  local found = {}
  for _, name in ipairs(stored(prefix, type_)) do
    if name:match(pattern) then found[#found + 1] = name end
  end
  return found
end

-- This host's lock on an s3:// prefix (lib/remote.lua: named after the bucket and prefix).
local function lock_path(url)
  return "/run/lock/bkr-s3-" .. util.sh("printf '%s' " .. q(url) .. " | sha256sum"):sub(1, 16) .. ".lock"
end

describe("bkr backup into object storage", function()
  setup(function() server = S3.start() end)
  teardown(function() if server then server.stop() end end)

  it("streams each backup into the bucket with its sidecar and manifest, nothing written locally", function()
    local db = db_with_rows(5000)
    local cfg, cfg_dir = s3_config("site1")
    local work = util.scratch("s3b-cwd")
    local before = #server.requests()
    local out, rc = util.sh("cd " .. q(work) .. " && " .. q(util.bkr_bin()) .. " backup --config " .. q(cfg)
      .. " --db " .. db .. " 2>&1")
    assert.are.equal(0, rc, out)
    local data = backups_of("site1", "daily", "^backup_.*%.sql%.gz$")
    assert.are.equal(1, #data, out)
    local name = data[1]
    local object = server.object_file("site1/daily/" .. name)
    -- the sidecar is sha256sum's line for the stored bytes, the manifest says the same
    local digest = util.sha256sum(object)
    assert.are.equal(digest .. "  " .. name .. "\n", util.read(server.object_file("site1/daily/" .. name .. ".sha256")))
    local manifest = json.decode(util.read(server.object_file("site1/daily/" .. name .. ".json")))
    assert.are.equal(digest, manifest.sha256)
    assert.are.equal(db, manifest.database)
    -- gunzip reads it, and it is the dump of the table
    local sql = util.sh("gunzip -c " .. q(object))
    assert.matches("COPY public.t ", sql)
    assert.are.equal(manifest.raw_bytes, #sql)
    -- the globals of the run are there too, and nothing was written in the working directory
    assert.are.equal(1, #backups_of("site1", "daily", "^globals_.*%.sql%.gz$"))
    assert.are.equal("", util.sh("ls -A " .. q(work)))
    assert.are.equal("bkr.yaml\ns3.secret\n", util.sh("ls -A " .. q(cfg_dir)))
    assert.is_nil(out:find(S3.SECRET_KEY, 1, true))
    -- the data before its sidecar, the sidecar before its manifest
    local order = {}
    for i, r in ipairs(server.requests()) do
      if i > before and r.method == "PUT" and r.url:find(db, 1, true) and not r.url:find("partNumber") then
        order[#order + 1] = r.url:match("%.sha256$") and "sidecar" or r.url:match("%.json$") and "manifest" or "data"
      end
    end
    assert.are.same({ "data", "sidecar", "manifest" }, order)
    -- and list, verify and restore take it from there
    out, rc = run("list --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("daily +" .. db, out)
    out, rc = run("verify --all --config " .. q(cfg))
    assert.are.equal(0, rc, out)
  end)

  it("a backup bigger than a part goes up in parts while pg_dump runs; gunzip and psql restore it", function()
    -- random text: about 6x the 5 MiB part once compressed
    local db = big_database("s3big", 500000)
    local cfg = s3_config("site2")
    local before = #server.requests()
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local name = backups_of("site2", "daily", "%.sql%.gz$")[1]
    local object = server.object_file("site2/daily/" .. name)
    local size = tonumber(util.sh("stat -c %s " .. q(object)):match("%d+"))
    local parts = 0
    for i, r in ipairs(server.requests()) do
      if i > before and r.method == "PUT" and r.url:find("partNumber=", 1, true) then parts = parts + 1 end
    end
    assert.are.equal(math.ceil(size / (5 * MiB)), parts)
    assert.is_true(parts >= 3, "parts: " .. parts)
    assert.are.same({}, server.open_uploads())
    -- restored by hand from the stored object
    local target = db .. "_by_hand"
    util.sh("createdb " .. target .. " && gunzip -c " .. q(object) .. " | psql -q -X -v ON_ERROR_STOP=1 -d " .. target)
    assert.are.equal("500000", util.psql("select count(*) from t", target):match("%d+"))
    assert.are.equal(util.psql("select md5(string_agg(x, ',' order by id)) from t", db),
      util.psql("select md5(string_agg(x, ',' order by id)) from t", target))
  end)

  it("the server gone mid-upload: exit 1, no backup in the bucket; the next run aborts the open upload "
    .. "and backs up", function()
    local db = big_database("s3cut", 600000)
    local cfg = s3_config("site3", "connection:\n  connect_timeout_seconds: 5")
    local port = server.port
    local h = R.start_bkr("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    assert.is_true(server.wait_for_first_part("site3/daily/"), "no part was sent")
    server.stop("KILL")
    local rc = h.wait(180)
    assert.are.equal(1, rc, h.output())
    assert.matches("failed", h.output())
    server = S3.start(server.dir, port)
    -- nothing visible: no object, no sidecar, no manifest; the upload stays open on the server
    assert.are.same({}, stored("site3", "daily"))
    assert.is_true(#server.open_uploads() > 0)
    local out
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.is_truthy(out:find("aborted the open upload of s3://" .. S3.BUCKET .. "/site3/daily/backup_", 1, true), out)
    R.wait_until(function() return #server.open_uploads() == 0 end, 5)
    assert.are.same({}, server.open_uploads())
    local files = stored("site3", "daily")
    assert.are.equal(3, #files, table.concat(files, " "))
    out, rc = run("verify --all --config " .. q(cfg))
    assert.are.equal(0, rc, out)
  end)

  it("SIGTERM mid-upload: exit 143, the upload aborted, nothing under the backup's name", function()
    local db = big_database("s3term", 600000)
    local cfg = s3_config("site4")
    local h = R.start_bkr("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    assert.is_true(server.wait_for_first_part("site4/daily/"), "no part was sent")
    h.kill("TERM")
    assert.are.equal(143, h.wait(60), h.output())
    R.wait_until(function() return #server.open_uploads() == 0 end, 5)
    assert.are.same({}, server.open_uploads())
    assert.are.same({}, stored("site4", "daily"))
  end)

  it("rotates the bucket by retention after a backup; the run's own backup is kept", function()
    local db = db_with_rows(100)
    local cfg = s3_config("site5", "retention: { daily: 1, weekly: 0, monthly: 0 }")
    for _ = 1, 3 do
      local out, rc = run("backup --no-globals --no-rotate --config " .. q(cfg) .. " --db " .. db)
      assert.are.equal(0, rc, out)
    end
    assert.are.equal(3, #backups_of("site5", "daily", "%.sql%.gz$"))
    -- someone else's object with a backup's name and a newline in it: left alone, said on one line
    local foreign = "site5/daily/backup_20261130_000000_x\nbkr: all backups verified\n.sql.gz"
    server.put_text(foreign, "not a backup")
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local left = backups_of("site5", "daily", "^backup_.*%.sql%.gz$")
    -- the newest verified one stays beside the run's own (verify has not run: none is verified,
    -- so only the run's own)
    assert.are.equal(1, #left, table.concat(left, " "))
    assert.matches("removed daily/backup_", out)
    -- each removed backup went with its sidecar and manifest
    assert.are.equal(4, #stored("site5", "daily"))
    assert.matches("left alone daily/backup_20261130_000000_x\\nbkr: all backups verified\\n.sql.gz: ", out, 1, true)
    assert.is_nil(out:find("\nbkr: all backups verified", 1, true))
  end)

  it("two runs in the same second get different names (the stamp's sequence from the bucket)", function()
    local db = db_with_rows(10)
    local cfg = s3_config("site6")
    for _ = 1, 3 do
      local out, rc = run("backup --no-globals --no-rotate --config " .. q(cfg) .. " --db " .. db)
      assert.are.equal(0, rc, out)
    end
    local names = backups_of("site6", "daily", "%.sql%.gz$")
    assert.are.equal(3, #names)
  end)

  it("an encrypted backup: only ciphertext in the bucket, and an independent decrypt gets the dump back; "
    .. "the database's settings are sealed in the manifest and come back with the key", function()
    local db = db_with_rows(1000)
    util.psql("alter database " .. db .. " set app.api_key = 'TOPSECRET123'")
    util.psql("alter role postgres in database " .. db .. " set app.role_token = 'ROLETOKEN456'")
    local cfg, dir = s3_config("site7")
    local key = dir .. "/backup.key"
    local out, rc = run("keygen --out " .. q(key))
    assert.are.equal(0, rc, out)
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --key-file " .. q(key) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local name = backups_of("site7", "daily", "%.sql%.gz%.enc$")[1]
    assert.is_truthy(name)
    local object = server.object_file("site7/daily/" .. name)
    assert.is_nil(util.read(object):find("COPY public.t", 1, true))
    local plain = dir .. "/plain.sql.gz"
    util.sh("python3 " .. q(S3.SOURCE .. "/tests/decrypt_independent.py") .. " " .. q(key) .. " " .. q(object)
      .. " " .. q(plain))
    assert.matches("COPY public.t ", util.sh("gunzip -c " .. q(plain)))
    -- nothing of the settings' values in the bucket, the names readable
    local manifest = util.read(server.object_file("site7/daily/" .. name .. ".json"))
    assert.is_nil(manifest:find("TOPSECRET123", 1, true))
    assert.is_nil(manifest:find("ROLETOKEN456", 1, true))
    assert.matches("app.api_key=ENCRYPTED:v2:", manifest, 1, true)
    local found = util.sh("grep -rl TOPSECRET123 " .. q(server.dir .. "/data") .. " 2>/dev/null")
    assert.are.equal("", found)
    -- restored from the bucket with the key: the settings are back, as they were
    local target = db .. "_back"
    out, rc = run("restore --config " .. q(cfg) .. " --key-file " .. q(key) .. " --db " .. db .. " --latest --into "
      .. target .. " --create")
    assert.are.equal(0, rc, out)
    local settings = util.psql("select string_agg(array_to_string(s.setconfig, ','), ';' order by s.setrole) "
      .. "from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase where d.datname = '" .. target .. "'")
    assert.matches("app.api_key=TOPSECRET123", settings, 1, true)
    assert.matches("app.role_token=ROLETOKEN456", settings, 1, true)
    -- a sealed value moved to another setting does not open there: not applied, and said
    local m = json.decode(manifest)
    local api = m.database_properties.settings[1]:match("=(.*)$")
    m.database_properties.role_settings[1].settings[1] = "app.role_token=" .. api
    server.put_text("site7/daily/" .. name .. ".json", json.encode(m))
    out, rc = run("restore --config " .. q(cfg) .. " --key-file " .. q(key) .. " --db " .. db .. " --latest --into "
      .. target .. "2 --create")
    assert.are.equal(0, rc, out)
    assert.matches("the database's owner, privileges and settings were not re-applied: the sealed value of setting "
      .. "postgres/app.role_token does not open with the key", out, 1, true)
    assert.is_nil(out:find("TOPSECRET123", 1, true))
    -- the seal taken off and settings (and an owner) written in the clear: none of it applied
    m = json.decode(manifest)
    m.database_properties = { encoding = "UTF8", owner = "nobody_else", settings = { "search_path=evil" } }
    server.put_text("site7/daily/" .. name .. ".json", json.encode(m))
    out, rc = run("restore --config " .. q(cfg) .. " --key-file " .. q(key) .. " --db " .. db .. " --latest --into "
      .. target .. "3 --create")
    assert.are.equal(0, rc, out)
    assert.matches("manifest does not seal them", out, 1, true)
    assert.are.equal("", util.psql("select array_to_string(s.setconfig, ',') from pg_db_role_setting s join "
      .. "pg_database d on d.oid = s.setdatabase where d.datname = '" .. target .. "3'"))
  end)

  it("format: custom: pg_dump's archive goes up from a private temporary file, gone afterwards", function()
    local db = db_with_rows(1000)
    local tmp = util.scratch("s3b-tmp")
    local cfg = s3_config("site8", "format: custom")
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db, "TMPDIR=" .. q(tmp))
    assert.are.equal(0, rc, out)
    local name = backups_of("site8", "daily", "%.dump$")[1]
    assert.is_truthy(name, out)
    local listed = util.sh("pg_restore -l " .. q(server.object_file("site8/daily/" .. name)))
    assert.matches("TABLE DATA public t ", listed)
    assert.are.equal("", util.sh("ls -A " .. q(tmp)))
    -- verify reads it back from the bucket (downloaded, checked as it comes, for pg_restore)
    local manifest_file = server.object_file("site8/daily/" .. name .. ".json")
    out, rc = run("verify --all --config " .. q(cfg), "TMPDIR=" .. q(tmp))
    assert.are.equal(0, rc, out)
    assert.are.equal("passed", json.decode(util.read(manifest_file)).verification.result)
    assert.are.equal("", util.sh("ls -A " .. q(tmp)))
    -- connections dropped again and again: nothing about the archive, nothing recorded
    server.fault("drop 50 GET 200")
    out, rc = run("verify --all --config " .. q(cfg), "TMPDIR=" .. q(tmp))
    util.sh("rm -f " .. q(server.dir .. "/fault"))
    assert.are.equal(1, rc, out)
    assert.are.equal("passed", json.decode(util.read(manifest_file)).verification.result)
    -- a byte flipped in the stored archive: exit 3, recorded in the bucket
    util.flip_byte(server.object_file("site8/daily/" .. name), 2000)
    out, rc = run("verify --all --config " .. q(cfg), "TMPDIR=" .. q(tmp))
    assert.are.equal(3, rc, out)
    assert.are.equal("failed", json.decode(util.read(manifest_file)).verification.result)
    assert.are.equal("", util.sh("ls -A " .. q(tmp)))
  end)

  it("format: custom: a $TMPDIR too small for the archive is refused before anything is uploaded; "
    .. "a disk that fills up mid-dump leaves nothing in the bucket", function()
    local db = util.new_database("s3tmp", "create table t (id int primary key, x text); "
      .. "insert into t select i, md5(random()::text) from generate_series(1, 100000) i;")
    local tmp = util.scratch("s3b-smalltmp")
    util.sh("mount -t tmpfs -o size=1m tmpfs " .. q(tmp))
    finally(function() util.sh("umount " .. q(tmp)) end)
    local cfg = s3_config("site11", "format: custom")
    local before = #server.requests()
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db, "TMPDIR=" .. q(tmp))
    assert.are.equal(1, rc, out)
    assert.matches("not enough free space in " .. tmp:gsub("%p", "%%%0") .. " for the pg_dump archive", out)
    for i, r in ipairs(server.requests()) do
      assert.is_true(i <= before or r.method == "GET", r.method .. " " .. r.url)
    end
    -- with room for the estimate (a first backup of a tiny table) but not for what the table grew to
    local small = util.new_database("s3tmp2", "create table t (id int primary key, x text);")
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. small)
    assert.are.equal(0, rc, out)
    util.psql("insert into t select i, md5(random()::text) from generate_series(1, 100000) i", small)
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. small, "TMPDIR=" .. q(tmp))
    assert.are.equal(1, rc, out)
    assert.matches("pg_dump failed", out)
    assert.are.equal(3, #stored("site11", "daily")) -- the first backup, alone
    assert.are.equal("", util.sh("ls -A " .. q(tmp)))
  end)

  it("a second run on the same prefix from this host is refused while the first holds it", function()
    local db = db_with_rows(10)
    local cfg = s3_config("site9")
    local url = "s3://" .. S3.BUCKET .. "/site9"
    local lock = lock_path(url)
    local holder = util.scratch("s3b-lock")
    util.sh("(flock -n " .. q(lock) .. " sh -c 'touch " .. q(holder .. "/held") .. "; sleep 5' >/dev/null 2>&1 &)")
    assert.is_true(R.wait_for(holder .. "/held", 5))
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(1, rc, out)
    assert.matches("repository " .. url:gsub("%p", "%%%0") .. " is busy", out)
    assert.are.same({}, stored("site9", "daily"))
    util.sh("flock " .. q(lock) .. " true") -- (waits for the holder to end)
    -- verify records its verdicts in the bucket's manifests: under the same lock (a rotation
    -- running meanwhile would leave a verdict for a backup it removed); --no-record takes none
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    util.sh("(flock -n " .. q(lock) .. " sh -c 'touch " .. q(holder .. "/held2") .. "; sleep 5' >/dev/null 2>&1 &)")
    assert.is_true(R.wait_for(holder .. "/held2", 5))
    out, rc = run("verify --all --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    assert.matches("is busy", out)
    out, rc = run("verify --all --no-record --config " .. q(cfg))
    assert.are.equal(0, rc, out)
  end)

  it("the lock is the bucket's and prefix's: the endpoint spelled another way is still busy; a lock file "
    .. "root left is taken by the postgres user's run", function()
    local db = db_with_rows(10)
    local cfg, dir = s3_config("site12")
    local url = "s3://" .. S3.BUCKET .. "/site12"
    local lock = lock_path(url)
    local other = dir .. "/localhost.yaml"
    util.write(other, (util.read(cfg):gsub("127%.0%.0%.1", "localhost")))
    local holder = util.scratch("s3b-lock2")
    util.sh("(flock -n " .. q(lock) .. " sh -c 'touch " .. q(holder .. "/held") .. "; sleep 5' >/dev/null 2>&1 &)")
    assert.is_true(R.wait_for(holder .. "/held", 5))
    local out, rc = run("backup --no-globals --config " .. q(other) .. " --db " .. db)
    assert.are.equal(1, rc, out)
    assert.matches("is busy", out)
    util.sh("flock " .. q(lock) .. " true") -- (waits for the holder to end)
    -- root's run leaves the file, 0644, root's; the postgres user's run locks it read-only
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.matches("^root 644", util.sh("stat -c '%U %a' " .. q(lock)))
    util.sh("chown -R postgres " .. q(dir))
    out, rc = util.sh("cd / && runuser -u postgres -- " .. q(util.bkr_bin()) .. " backup --no-globals --config "
      .. q(cfg) .. " --db " .. db .. " 2>&1")
    assert.are.equal(0, rc, out)
    assert.are.equal(6, #stored("site12", "daily"))
  end)

  it("pg_dump is handed neither the S3 secret nor any variable the configuration names", function()
    local db = db_with_rows(10)
    local bindir = util.fake_pg_dump('env > "$FAKEBIN/env"\nexec "$REAL_PG_DUMP" "$@"')
    local cfg = s3_config("site13", "pg_bindir: " .. bindir)
    util.write(cfg, (util.read(cfg):gsub("  secret_access_key_file: [^\n]+\n", "  session_token_env: BKR_T_TOKEN\n")))
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db,
      "AWS_SECRET_ACCESS_KEY=" .. q(S3.SECRET_KEY) .. " BKR_T_TOKEN=tok-en-value")
    assert.are.equal(0, rc, out)
    local env = util.read(bindir .. "/env")
    assert.matches("PGAPPNAME=bkr", env, 1, true)
    assert.is_nil(env:find(S3.SECRET_KEY, 1, true))
    assert.is_nil(env:find("tok-en-value", 1, true))
    assert.is_nil(env:find("AWS_SECRET_ACCESS_KEY", 1, true))
  end)

  it("without credentials: exit 2 naming where it looked, before anything; no local s3: directory", function()
    local work = util.scratch("s3b-nocred")
    local out, rc = util.sh("cd " .. q(work) .. " && env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "
      .. q(util.bkr_bin()) .. " backup --repo s3://" .. S3.BUCKET .. "/site10 --db postgres 2>&1")
    assert.are.equal(2, rc, out)
    assert.matches("s3: no access key: set s3.access_key_id", out, 1, true)
    out, rc = util.sh("cd " .. q(work) .. " && env -u AWS_SECRET_ACCESS_KEY AWS_ACCESS_KEY_ID=AKIDX BKR_T_SECRET= "
      .. q(util.bkr_bin()) .. " backup --repo s3://" .. S3.BUCKET .. "/site10 --db postgres 2>&1")
    assert.are.equal(2, rc, out)
    assert.matches("s3: no secret key: set s3.secret_access_key_file (or s3.secret_access_key_env) in the "
      .. "configuration, or the environment variable AWS_SECRET_ACCESS_KEY", out, 1, true)
    -- a secret file others may read is refused, and its content never shown
    local cfg, dir = s3_config("site10")
    util.sh("chmod 644 " .. q(dir .. "/s3.secret"))
    out, rc = util.sh("cd " .. q(work) .. " && " .. q(util.bkr_bin()) .. " backup --config " .. q(cfg)
      .. " --db postgres 2>&1")
    assert.are.equal(2, rc, out)
    assert.matches("s3.secret_access_key_file", out, 1, true)
    assert.is_nil(out:find(S3.SECRET_KEY, 1, true))
    assert.are.equal("", util.sh("ls -A " .. q(work)))
  end)
end)
