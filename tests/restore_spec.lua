-- bkr restore against the real cluster, checked with psql. (bkr drill: drill_spec.lua.)
local util = require "support.util"
local json = require "dkjson"
local q = util.quote

local run = util.bkr

local function new_database(sql)
  return util.new_database("rs", sql)
end

local function exists(db)
  return util.psql("select count(*) from pg_database where datname = '" .. db .. "'") == "1"
end

local backup = util.backup_newest

local function stamp_of(file)
  return file:match("^backup_(%d+_%d+)_")
end

-- A database with one row per backup generation, backed up after each, one second apart.
local function generations(n)
  local db = new_database("create table marks (generation int primary key, note text);")
  local repo = util.scratch("repo")
  local files = {}
  for i = 1, n do
    util.psql("insert into marks values (" .. i .. ", 'generation " .. i .. "')", db)
    files[i] = backup(repo, db)
    if i < n then util.sh("sleep 1.1") end
  end
  return db, repo, files
end

local function generation(db)
  return tonumber(util.psql("select max(generation) from marks", db))
end

describe("bkr restore", function()
  local db, repo, files
  setup(function()
    db, repo, files = generations(4)
  end)

  it("picks the newest backup with --latest", function()
    local target = db .. "_latest"
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. target .. " --create")
    assert.are.equal(0, rc, out)
    assert.are.equal(4, generation(target))
    assert.matches("compare: 1 of 1 tables match", out)
    assert.matches("RTO", out)
  end)

  it("picks the backup taken at a time, given as YYYYMMDD_HHMMSS or ISO 8601", function()
    local s = stamp_of(files[2])
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --at " .. s .. " --into " .. db .. "_at --create")
    assert.are.equal(0, rc, out)
    assert.are.equal(2, generation(db .. "_at"))
    local iso = string.format("%s-%s-%sT%s:%s:%sZ", s:sub(1, 4), s:sub(5, 6), s:sub(7, 8), s:sub(10, 11), s:sub(12, 13), s:sub(14, 15))
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --at " .. iso .. " --dry-run")
    assert.are.equal(0, rc, out)
    assert.matches(files[2], out, 1, true)
  end)

  it("picks the newest backup before a time", function()
    local s = stamp_of(files[3])
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --before " .. s .. " --into " .. db .. "_before --create")
    assert.are.equal(0, rc, out)
    assert.are.equal(2, generation(db .. "_before"))
  end)

  it("restores an explicit file", function()
    local out, rc = run("restore " .. q(repo .. "/daily/" .. files[1]) .. " --into " .. db .. "_file --create")
    assert.are.equal(0, rc, out)
    assert.are.equal(1, generation(db .. "_file"))
  end)

  it("prints the chosen backup and its verification state with --dry-run, touching nothing", function()
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_dry --create --dry-run")
    assert.are.equal(0, rc, out)
    assert.matches(files[4], out, 1, true)
    assert.matches("verified: never verified", out)
    assert.is_false(exists(db .. "_dry"))
  end)

  it("names the nearest backups when none matches", function()
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --before 2001-01-01 --into x --create")
    assert.are.equal(1, rc)
    assert.matches("no backup of " .. db .. " before 2001%-01%-01T00:00:00Z", out)
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --at yesterday --into x --create")
    assert.are.equal(2, rc)
    assert.matches("cannot read time 'yesterday'", out)
  end)
end)

describe("bkr restore safety", function()
  it("aborts with exit 3 before touching the target when the backup is corrupt", function()
    local db = new_database("create table t (x int); insert into t select generate_series(1, 1000);")
    local repo = util.scratch("repo")
    local file = backup(repo, db)
    util.flip_byte(repo .. "/daily/" .. file, 300)
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_c --create")
    assert.are.equal(3, rc)
    assert.matches("failed verification, " .. db .. "_c left untouched: checksum mismatch", out)
    assert.is_false(exists(db .. "_c"))
    -- and --replace of an existing database leaves it as it was
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. " --replace")
    assert.are.equal(3, rc)
    assert.are.equal("1000", util.psql("select count(*) from t", db))
  end)

  it("--replace swaps in the restored database and keeps the old one", function()
    local db = new_database("create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    backup(repo, db)
    util.psql("insert into t values (2)", db) -- a later change the restore rolls back
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. " --replace")
    assert.are.equal(0, rc, out)
    assert.are.equal("1", util.psql("select count(*) from t", db))
    local old = out:match("kept as (%S+)")
    assert.is_truthy(old)
    assert.are.equal("2", util.psql("select count(*) from t", old))
  end)

  it("--replace keeps the old database untouched when the restore fails", function()
    local role = "rs_owner_" .. math.random(1e6)
    util.psql("create role " .. role)
    local db = new_database("create table t (x int); insert into t values (1);")
    util.psql("alter table t owner to " .. role, db)
    local repo = util.scratch("repo")
    backup(repo, db)
    -- the dump says ALTER TABLE t OWNER TO role: without the role, the SQL fails midway
    util.psql("alter table t owner to postgres", db)
    util.psql("insert into t values (2)", db)
    util.psql("drop role " .. role)
    local before = util.psql("select string_agg(datname, ',' order by datname) from pg_database")
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. " --replace")
    assert.are.equal(1, rc)
    assert.matches("nothing was committed", out)
    assert.matches("role \"" .. role .. "\" does not exist", out)
    assert.are.equal("2", util.psql("select count(*) from t", db))
    assert.are.equal(before, util.psql("select string_agg(datname, ',' order by datname) from pg_database"))
  end)

  it("leaves no partial database when the SQL fails midway with --create", function()
    local role = "rs_owner_" .. math.random(1e6)
    util.psql("create role " .. role)
    local db = new_database("create table a (x int); insert into a values (1); create table t (x int);")
    util.psql("alter table t owner to " .. role, db)
    local repo = util.scratch("repo")
    backup(repo, db)
    util.psql("drop table t", db)
    util.psql("drop role " .. role)
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_p --create")
    assert.are.equal(1, rc)
    assert.matches("was dropped", out)
    assert.is_false(exists(db .. "_p"))
  end)

  it("refuses to restore over a database with active connections unless --force", function()
    local db = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    backup(repo, db)
    local holder = util.scratch("hold")
    os.execute("psql -X -q -d " .. db .. " -c 'select pg_sleep(30)' >/dev/null 2>&1 & echo $! > " .. q(holder .. "/pid"))
    for _ = 1, 100 do
      if util.psql("select count(*) from pg_stat_activity where datname = '" .. db .. "'") ~= "0" then break end
      util.sh("sleep 0.05")
    end
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. " --replace")
    assert.are.equal(1, rc)
    assert.matches("active connection", out)
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. " --replace --force")
    assert.are.equal(0, rc, out)
    util.sh("kill " .. util.read(holder .. "/pid"):match("%d+") .. " 2>/dev/null")
  end)

  it("re-applies the database's settings, owner and privileges", function()
    local role = "rs_app_" .. math.random(1e6)
    util.psql("create role " .. role .. " login")
    local db = new_database("create schema app; create table app.t (x int);")
    util.psql("alter database " .. db .. " owner to " .. role)
    util.psql("alter database " .. db .. " set search_path = app, public")
    util.psql("alter database " .. db .. " set work_mem = '12MB'")
    util.psql("alter role " .. role .. " in database " .. db .. " set statement_timeout = '5s'")
    util.psql("revoke connect on database " .. db .. " from public")
    util.psql("grant connect on database " .. db .. " to " .. role)
    local repo = util.scratch("repo")
    backup(repo, db)
    local target = db .. "_props"
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. target .. " --create")
    assert.are.equal(0, rc, out)
    -- owner and privileges (a set: compared in a stable order)
    local function props(name)
      return util.psql("select pg_get_userbyid(datdba) || ' ' || (select string_agg(a::text, ',' order by a::text) "
        .. "from unnest(datacl) a) from pg_database where datname = '" .. name .. "'")
    end
    assert.are.equal(props(db), props(target))
    assert.are.equal("app, public", util.psql("show search_path", target))
    assert.are.equal("12MB", util.psql("show work_mem", target))
    assert.are.equal("5s", util.sh("psql -X -A -t -U " .. role .. " -d " .. target .. " -c 'show statement_timeout'"):gsub("%s+$", ""))
  end)

  it("compares timestamps correctly whatever the time zones of the backup and the restore", function()
    local db = new_database("create table events (at timestamptz, d date); "
      .. "insert into events select timestamptz '2026-03-29 00:30:00+00' + i * interval '17 minutes', current_date "
      .. "from generate_series(1, 300) i;")
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db, "PGTZ=Asia/Tokyo")
    assert.are.equal(0, rc, out)
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_tz --create",
      "PGTZ=America/New_York")
    assert.are.equal(0, rc, out)
    assert.matches("compare: 1 of 1 tables match", out)
    assert.are.equal(util.psql("select sum(extract(epoch from at)) from events", db),
      util.psql("select sum(extract(epoch from at)) from events", db .. "_tz"))
  end)

  it("restores the roles of the same run first with --globals, reporting existing ones", function()
    local role = "rs_glob_" .. math.random(1e6)
    util.psql("create role " .. role .. " login")
    local db = new_database("create table t (x int);")
    util.psql("alter table t owner to " .. role, db)
    local repo = util.scratch("repo")
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    util.psql("drop database " .. db)
    util.psql("drop role " .. role)
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. " --create --globals")
    assert.are.equal(0, rc, out)
    assert.matches("existing roles kept: .*postgres", out)
    assert.are.equal(role, util.psql("select tableowner from pg_tables where tablename = 't'", db))
  end)
end)

describe("bkr restore edge cases", function()
  it("--before goes by when each database's dump started, not when the run started", function()
    local db = new_database("create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    local first = backup(repo, db)
    util.sh("sleep 1.1")
    local second = backup(repo, db)
    -- as if the run had spent 30 s on other databases before dumping this one
    local path = repo .. "/daily/" .. second .. ".json"
    local manifest = json.decode(util.read(path))
    local stamp = stamp_of(second)
    local run_start = os.time{ year = tonumber(stamp:sub(1, 4)), month = tonumber(stamp:sub(5, 6)),
      day = tonumber(stamp:sub(7, 8)), hour = tonumber(stamp:sub(10, 11)), min = tonumber(stamp:sub(12, 13)),
      sec = tonumber(stamp:sub(14, 15)) }
    manifest.start_time = os.date("%Y-%m-%dT%H:%M:%SZ", run_start + 30)
    util.write(path, json.encode(manifest))
    local before = os.date("%Y-%m-%dT%H:%M:%SZ", run_start + 10)
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --before " .. before .. " --dry-run")
    assert.are.equal(0, rc, out)
    assert.matches(first, out, 1, true)
  end)

  it("keeps derived database names within 63 bytes, so --replace works twice on a long name", function()
    local long = "customer_relationship_management_production_db_" .. math.random(1e6)
    util.psql("create database " .. long)
    util.psql("create table t (x int); insert into t values (1)", long)
    local repo = util.scratch("repo")
    backup(repo, long)
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. long .. " --latest --into " .. long .. " --replace")
    assert.are.equal(0, rc, out)
    local old = out:match("kept as (%S+)")
    assert.is_true(#old <= 63)
    assert.is_true(exists(old), old)
    util.sh("sleep 1.1")
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. long .. " --latest --into " .. long .. " --replace")
    assert.are.equal(0, rc, out)
  end)

  it("refuses at once to --replace the database bkr connects to", function()
    local repo = util.scratch("repo")
    local db = new_database("create table t (x int);")
    backup(repo, db)
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. " --replace",
      "PGDATABASE=" .. db)
    assert.are.equal(2, rc, out)
    assert.matches("cannot %-%-replace " .. db .. ": bkr itself is connected to it", out)
  end)

  it("needs the key of an encrypted backup before anything is created, and names a wrong one", function()
    local db = new_database("create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    local keys = util.scratch("keys")
    assert.are.equal(0, select(2, run("keygen --out " .. q(keys .. "/a.key"))))
    assert.are.equal(0, select(2, run("keygen --out " .. q(keys .. "/b.key"))))
    backup(repo, db, "--key-file " .. q(keys .. "/a.key"))
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_k --create")
    assert.are.equal(2, rc, out)
    assert.matches("is encrypted: give %-%-key%-file", out)
    assert.is_false(exists(db .. "_k"))
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_k --create --key-file "
      .. q(keys .. "/b.key"))
    assert.are.equal(3, rc, out)
    assert.matches("was encrypted with key %x+, the key given is %x+", out)
    assert.is_false(exists(db .. "_k"))
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_k --create --key-file "
      .. q(keys .. "/a.key"))
    assert.are.equal(0, rc, out)
    assert.are.equal("1", util.psql("select count(*) from t", db .. "_k"))
  end)

  it("checks the globals file's sidecar before applying it", function()
    local db = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local globals = util.sh("ls " .. q(repo .. "/daily") .. " | grep '^globals_.*gz$'"):gsub("\n", "")
    util.flip_byte(repo .. "/daily/" .. globals, 20)
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_g --create --globals")
    assert.are.equal(1, rc, out)
    assert.matches("globals file " .. globals:gsub("%p", "%%%0") .. " failed verification: checksum mismatch", out)
    assert.is_false(exists(db .. "_g"))
  end)
end)

describe("bkr restore checks what verify checks, before psql commits", function()
  -- The file changed, then "re-signed": the sidecar and the manifest's sha256 and stored_bytes
  -- recomputed, so only the size after decompression and the completion marker give it away.
  local resign = util.resign

  local function config_with(repo, compression)
    local path = util.scratch("cfg") .. "/bkr.yaml"
    util.write(path, "repository: " .. repo .. "\ncompression: " .. compression .. "\n")
    return path
  end

  local SETUP = "create table t (id int primary key, x text); insert into t select i, md5(i::text) from generate_series(1, 5000) i;"

  for _, compression in ipairs({ "gzip", "zstd" }) do
    local tool = compression == "gzip" and "gzip" or "zstd -q"
    local suffix = compression == "gzip" and "%.sql%.gz$" or "%.sql%.zst$"

    local function backup_of(db)
      local repo = util.scratch("repo")
      local out, rc = run("backup --no-globals --create-repo --config " .. q(config_with(repo, compression))
        .. " --db " .. db)
      assert.are.equal(0, rc, out)
      local list = util.sh("ls " .. q(repo .. "/daily"))
      for name in list:gmatch("[^\n]+") do
        if name:match(suffix) then return repo, repo .. "/daily/" .. name end
      end
      error("no backup in " .. list)
    end

    it(compression .. ": a dump with SQL appended is refused (exit 3) and nothing of it is committed", function()
      local db = new_database(SETUP)
      local repo, path = backup_of(db)
      util.sh("printf 'CREATE TABLE public.injected(x int);\\n' | " .. tool .. " -c >> " .. q(path))
      resign(path)
      local target = new_database()
      local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. target)
      assert.are.equal(3, rc, out)
      assert.matches("failed verification while restoring, nothing was committed: size: more than the %d+ bytes "
        .. "expected", out)
      assert.are.equal("0", util.psql("select count(*) from pg_class where relname in ('t', 'injected')", target))
      -- a database restore --create made is dropped again
      out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_new --create")
      assert.are.equal(3, rc, out)
      assert.is_false(exists(db .. "_new"))
    end)

    it(compression .. ": a dump cut after a row is refused (exit 3) and nothing of it is committed", function()
      local db = new_database(SETUP)
      local repo, path = backup_of(db)
      local decompress = tool .. " -dc " .. q(path) .. " 2>/dev/null"
      util.sh("n=$(" .. decompress .. " | grep -n '^COPY public.t ' | cut -d: -f1); " .. decompress
        .. " | head -n $((n + 100)) | " .. tool .. " -c > " .. q(path .. ".cut") .. " && mv " .. q(path .. ".cut")
        .. " " .. q(path))
      resign(path)
      local target = new_database()
      local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. target)
      assert.are.equal(3, rc, out)
      assert.matches("failed verification while restoring, nothing was committed: size: %d+ bytes, %d+ expected", out)
      assert.are.equal("0", util.psql("select count(*) from pg_class where relname = 't'", target))
      -- the same cut with the manifest's size changed to match: the completion marker is missing
      local manifest = json.decode(util.read(path .. ".json"))
      manifest.raw_bytes = tonumber(util.sh(decompress .. " | wc -c"):match("%d+"))
      util.write(path .. ".json", json.encode(manifest))
      out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. target)
      assert.are.equal(3, rc, out)
      assert.matches("completion marker: the expected end is not in the last", out)
      assert.are.equal("0", util.psql("select count(*) from pg_class where relname = 't'", target))
    end)
  end

  -- A backup of a new database whose dump is forged as someone who can write the repository
  -- would: pg_dump's \\restrict lines out (psql would refuse a backslash command inside them),
  -- `lines` in before the table's data, size, checksum and sidecar recomputed.
  local function forged_backup(lines)
    local db = new_database(SETUP)
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --create-repo --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local path = repo .. "/daily/" .. util.files(repo, "%.sql%.gz$")[1]
    local sql = util.sh("gzip -dc " .. q(path)):gsub("\\restrict [^\n]*\n", ""):gsub("\\unrestrict [^\n]*\n", "")
    sql = sql:gsub("\nCOPY public%.t ", "\n" .. lines:gsub("%%", "%%%%") .. "COPY public.t ", 1)
    local plain = util.scratch("forged") .. "/dump.sql"
    util.write(plain, sql)
    util.sh("gzip -c " .. q(plain) .. " > " .. q(path))
    resign(path, function(m) m.raw_bytes = #sql end)
    return db, repo
  end

  it("a dump forged with a shell command, its size, marker and checksums recomputed, runs nothing: "
    .. "restore and verify refuse it (exit 3)", function()
    local pwned = util.scratch("pwned") .. "/ran"
    local db, repo = forged_backup("\\! touch " .. pwned .. "\n")
    local out, rc = run("verify --no-record --latest --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(3, rc, out)
    assert.matches("a psql meta-command pg_dump never writes: ", out, 1, true)
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_f --create")
    assert.are.equal(3, rc, out)
    assert.matches("a psql meta-command pg_dump never writes: ", out, 1, true)
    assert.is_nil(io.open(pwned))
    assert.is_false(exists(db .. "_f"))
    -- once verify has recorded it as failed, restore refuses it before anything else
    out, rc = run("verify --latest --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(3, rc, out)
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_f --create")
    assert.are.equal(3, rc, out)
    assert.matches("failed verification at [^\n]*, " .. db .. "_f left untouched; restore an earlier one with "
      .. "%-%-before ", out)
    assert.is_false(exists(db .. "_f"))
  end)

  it("a forged dump that switches psql to SJIS to hide a \\! from any text filter runs nothing either: psql "
    .. "itself is restricted by bkr", function()
    local pwned = util.scratch("pwned") .. "/ran"
    -- in SJIS, psql reads 0x83 and the backslash after it as one character: the string ends there
    local db, repo = forged_backup("SET client_encoding = 'SJIS';\nSELECT E'\x83\\'; \\! touch " .. pwned
      .. "\n-- ';\nSET client_encoding = 'UTF8';\n")
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_sj --create")
    assert.are_not.equal(0, rc, out)
    assert.matches("backslash commands are restricted", out, 1, true)
    assert.is_nil(io.open(pwned))
    assert.is_false(exists(db .. "_sj"))
  end)

  it("a globals file with SQL appended is refused before any of it is applied", function()
    local db = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local globals = repo .. "/daily/" .. util.sh("ls " .. q(repo .. "/daily") .. " | grep '^globals_.*gz$'"):gsub("\n", "")
    local role = "bkr_injected_" .. math.random(1e6)
    util.sh("printf 'CREATE ROLE " .. role .. ";\\n' | gzip -c >> " .. q(globals))
    resign(globals)
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. "_g --create --globals")
    assert.are.equal(1, rc, out)
    assert.matches("globals file [^\n]* failed verification: size: more than", out)
    assert.are.equal("0", util.psql("select count(*) from pg_roles where rolname = '" .. role .. "'"))
    assert.is_false(exists(db .. "_g"))
  end)
end)

describe("bkr restore reads what it is given exactly", function()
  it("--help's usage line names every option, --jobs and --no-compare included", function()
    local out, rc = run("restore --help")
    assert.are.equal(0, rc, out)
    local usage = out:match("^(.-)\n\n") or out
    for _, option in ipairs({ "--db", "--latest", "--at", "--before", "--into", "--create", "--replace", "--globals",
      "--dry-run", "--force", "--no-compare", "--jobs N", "--repo", "--config", "--key-file" }) do
      assert.is_truthy(usage:find(option, 1, true), option .. " missing from: " .. usage)
    end
  end)

  it("reads valid times and refuses impossible ones with exit 2 'cannot read time'", function()
    local restore = require "lib.restore"
    local valid = {
      { "20261130_010203", "2026-11-30T01:02:03Z" },
      { "20240229_235959", "2024-02-29T23:59:59Z" },
      { "2026-11-30", "2026-11-30T00:00:00Z" },
      { "2026-11-30T01:02", "2026-11-30T01:02:00Z" },
      { "2026-11-30 01:02:03Z", "2026-11-30T01:02:03Z" },
      { "2026-11-30T01:02:03.250Z", "2026-11-30T01:02:03Z" },
      { "2026-11-30T01:02:03+01:00", "2026-11-30T00:02:03Z" },
      { "2026-11-30T01:02:03-0530", "2026-11-30T06:32:03Z" },
      { "2026-11-30T01:02:03+01", "2026-11-30T00:02:03Z" },
      { "2026-11-30T01:02+14:00", "2026-11-29T11:02:00Z" },
      { "2026-11-30T01:02-14:00", "2026-11-30T15:02:00Z" },
      { "2026-11-30T01:02-00:59", "2026-11-30T02:01:00Z" },
    }
    for _, case in ipairs(valid) do
      local epoch = restore.parse_time(case[1])
      assert.is_not_nil(epoch, case[1])
      assert.are.equal(case[2], os.date("!%Y-%m-%dT%H:%M:%SZ", epoch), case[1])
    end
    local invalid = {
      "2026-13-45", "2026-02-30T25:61:61", "2026-11-30T01:02:03+99:99", "20261130_999999",
      "2025-02-29", "20250229_120000", "2026-04-31", "2026-11-30T24:00", "2026-11-30T23:60",
      "2026-11-30T23:59:60Z", "2026-11-30T01:02+14:01", "2026-11-30T01:02+15:00", "2026-11-30T01:02+05:60",
      "2026-11-30T01:02:03+1", "2026-11-30T01:02:03 +01:00", "2026-11-30T01:02.5", "2026-11-30Z",
      "2026-11-30T", "2026-11-30T1:02", "yesterday", "",
    }
    local repo = util.scratch("repo")
    for _, text in ipairs(invalid) do
      assert.is_nil(restore.parse_time(text), text)
      for _, flag in ipairs({ "--at", "--before" }) do
        local out, rc = run("restore --repo " .. q(repo) .. " --db x " .. flag .. " " .. q(text) .. " --into y --create")
        assert.are.equal(2, rc, text .. ": " .. out)
        -- (an empty value is refused by the command line itself, before it is read as a time)
        assert.matches(text == "" and (flag .. " needs a value") or (flag .. ": cannot read time '" .. text .. "'"),
          out, 1, true)
      end
    end
  end)

  it("restores ./FILE, FILE and ../daily/FILE from inside daily/, and a path through a symbolic link", function()
    local db = new_database("create table t (x int); insert into t values (7);")
    local repo = util.scratch("repo")
    local file = backup(repo, db)
    local daily = repo .. "/daily"
    local link = util.scratch("links") .. "/to_daily"
    util.sh("ln -s " .. q(daily) .. " " .. q(link))
    local cases = {
      { daily, "./" .. file }, { daily, file }, { daily, "../daily/" .. file }, { daily, "./.././daily/./" .. file },
      { repo, "daily//" .. file }, { link, "./" .. file }, { util.scratch("elsewhere"), link .. "/../daily/" .. file },
    }
    for i, case in ipairs(cases) do
      local target = db .. "_path" .. i
      local out, rc = run("restore " .. q(case[2]) .. " --into " .. target .. " --create", "cd " .. q(case[1]) .. " &&")
      assert.are.equal(0, rc, case[2] .. ": " .. out)
      assert.are.equal("7", util.psql("select x from t", target))
    end
    -- what is not a backup of a repository is still refused, exit 2
    for _, path in ipairs({ "./nope_" .. file, "../daily", "..", "./" .. file .. "/", repo .. "/" .. file }) do
      local out, rc = run("restore " .. q(path) .. " --into " .. db .. "_never --create", "cd " .. q(daily) .. " &&")
      assert.are.equal(2, rc, path .. ": " .. out)
      assert.matches("is not a backup in a bkr repository", out)
    end
    assert.is_false(exists(db .. "_never"))
  end)
end)

describe("bkr restore with unusual database names", function()
  local R = require "support.restore_util"

  local function drop_if_exists(name)
    util.psql("drop database if exists " .. R.ident(name) .. " with (force)")
  end

  it("never reads a target name such as dbname=x_r or host=/nonexistent as a connection string", function()
    local db = new_database("create table t (x int); insert into t values (1), (2);")
    local repo = util.scratch("repo")
    backup(repo, db)
    for _, target in ipairs({ "dbname=x_r", "host=/nonexistent" }) do
      drop_if_exists(target)
      local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. q(target) .. " --create")
      assert.are.equal(0, rc, out)
      assert.matches("compare: 1 of 1 tables match", out)
      assert.are.equal("2", R.psql_in(target, "select count(*) from t"))
      -- --replace over it: the restored one is swapped in, the old one kept, nothing else left
      R.psql_in(target, "insert into t values (3)")
      out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. q(target) .. " --replace")
      assert.are.equal(0, rc, out)
      assert.are.equal("2", R.psql_in(target, "select count(*) from t"))
      local old = out:match("kept as (.-) %(drop it when done%)")
      assert.are.equal("3", R.psql_in(old, "select count(*) from t"))
      assert.are.equal("", R.databases_like(target .. "_bkr_restore_%"))
      drop_if_exists(old)
      drop_if_exists(target)
    end
    -- and x_r, which libpq would have connected to, was never made
    assert.is_false(exists("x_r"))
  end)

  it("--replace works for a 63-byte name of two-byte characters, cutting derived names between characters", function()
    local restore = require "lib.restore"
    -- derived names: at most 63 bytes, valid UTF-8, a prefix of the name, for 1- to 4-byte characters
    for _, char in ipairs({ "a", "é", "€", "𝄞" }) do
      for length = 30, 63 do
        local name = string.rep(char, length // #char) .. string.rep("x", length % #char)
        for _, suffix in ipairs({ "_bkr_restore_20261130_010203", "_before_20261130_010203-2" }) do
          local derived = restore.derived_name(name, suffix)
          assert.is_true(#derived <= 63, derived)
          assert.is_not_nil(utf8.len(derived), derived)
          local kept = derived:sub(1, #derived - #suffix)
          assert.are.equal(kept, name:sub(1, #kept))
          if #kept < #name then assert.is_true(#derived > 63 - #char, derived) end -- cut no more than needed
        end
      end
    end
    local name = string.rep("é", 31) .. "x"
    assert.are.equal(63, #name)
    drop_if_exists(name)
    util.psql("create database " .. R.ident(name))
    R.psql_in(name, "create table t (x int); insert into t values (1)")
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. q(name))
    assert.are.equal(0, rc, out)
    R.psql_in(name, "insert into t values (2)")
    out, rc = run("restore --repo " .. q(repo) .. " --db " .. q(name) .. " --latest --into " .. q(name) .. " --replace")
    assert.are.equal(0, rc, out)
    assert.are.equal("1", R.psql_in(name, "select count(*) from t"))
    local old = out:match("kept as (.-) %(drop it when done%)")
    assert.is_not_nil(utf8.len(old), old)
    assert.are.equal("2", R.psql_in(old, "select count(*) from t"))
    drop_if_exists(old)
    drop_if_exists(name)
  end)
end)

describe("bkr restore cleans up what it created", function()
  local R = require "support.restore_util"

  -- bkr's own sessions, as the server sees them
  local function terminate_bkr_sessions()
    util.psql("select count(pg_terminate_backend(pid)) from pg_stat_activity where application_name = 'bkr'")
  end

  it("says a database was NOT dropped when the DROP fails, with the command that drops it, and logs it", function()
    local db = new_database("create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    backup(repo, db)
    -- a target whose name needs quoting in SQL and in the shell
    local target = db .. [[_it's "odd"]]
    local fake, cfg = R.held_psql()
    util.write(fake .. "/fail", "")
    local bkr = R.start_bkr("restore --config " .. q(cfg) .. " --repo " .. q(repo) .. " --db " .. db
      .. " --latest --into " .. q(target) .. " --create")
    assert.is_true(R.wait_for(fake .. "/started", 30), "psql never started")
    assert.is_true(R.exists(target))
    -- the server drops bkr's connection (as when it stops): the restore fails, and so does the DROP
    terminate_bkr_sessions()
    util.write(fake .. "/go", "")
    assert.are.equal(1, bkr.wait(60))
    local out = bkr.output()
    assert.matches("nothing was committed", out, 1, true)
    assert.is_falsy(out:find(target .. " was dropped", 1, true), out)
    local command = out:match("; drop it with: ([^\n]+)")
    assert.is_truthy(out:find(target .. " was NOT dropped (pg.exec: ", 1, true), out)
    assert.is_true(R.exists(target))
    local log = util.read(repo .. "/bkr.log")
    assert.is_truthy(log:find('"event":"cleanup failed"', 1, true), log)
    assert.is_truthy(log:find(json.encode(command), 1, true), log)
    -- the command given drops exactly that database
    local cmd_out, cmd_rc = util.sh(command .. " 2>&1")
    assert.are.equal(0, cmd_rc, command .. ": " .. cmd_out)
    assert.is_false(R.exists(target))
  end)

  local function interrupted_restore(mode)
    local db = new_database("create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    backup(repo, db)
    local before = util.psql("select string_agg(datname, ',' order by datname) from pg_database")
    local target = mode == "--create" and db .. "_new" or db
    local fake, cfg = R.held_psql()
    local bkr = R.start_bkr("restore --config " .. q(cfg) .. " --repo " .. q(repo) .. " --db " .. db
      .. " --latest --into " .. target .. " " .. mode)
    assert.is_true(R.wait_for(fake .. "/started", 30), "psql never started")
    local made = mode == "--create" and target or R.databases_like(db .. "_bkr_restore_%")
    assert.is_true(R.exists(made), made)
    bkr.kill("TERM")
    assert.are.equal(143, bkr.wait(60))
    local out = bkr.output()
    assert.matches(made .. " was dropped", out, 1, true)
    assert.are.equal(before, util.psql("select string_agg(datname, ',' order by datname) from pg_database"))
    return db, repo, target, out
  end

  it("SIGTERM during restore --create drops the new target (exit 143), and a retry succeeds", function()
    local db, repo, target = interrupted_restore("--create")
    assert.is_false(exists(target))
    local out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. target .. " --create")
    assert.are.equal(0, rc, out)
  end)

  it("SIGTERM during restore --replace drops the new database and keeps the target (exit 143)", function()
    local db = interrupted_restore("--replace")
    assert.are.equal("1", util.psql("select count(*) from t", db))
  end)

  it("SIGTERM while rows stream into the new database drops it, its loading session included", function()
    local db = new_database("create table t (i int, pad text); "
      .. "insert into t select i, repeat('x', 100) from generate_series(1, 400000) i;")
    local repo = util.scratch("repo")
    backup(repo, db)
    local before = util.psql("select string_agg(datname, ',' order by datname) from pg_database")
    local bkr = R.start_bkr("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. db .. " --replace --force")
    local pattern = db .. "_bkr_restore_%"
    assert.is_true(R.wait_until(function()
      return util.psql("select count(*) from pg_stat_activity where datname like " .. R.literal(pattern)) ~= "0"
    end, 30), "the restore never connected to its new database")
    bkr.kill("TERM")
    assert.are.equal(143, bkr.wait(60), bkr.output())
    assert.matches("_bkr_restore_%S+ was dropped", bkr.output())
    assert.are.equal(before, util.psql("select string_agg(datname, ',' order by datname) from pg_database"))
    assert.are.equal("400000", util.psql("select count(*) from t", db))
  end)
end)
