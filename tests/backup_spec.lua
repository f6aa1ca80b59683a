-- bkr backup, verify, list, rotate against the real cluster, checked with sha256sum,
-- gunzip, psql and pg_dump.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local bkr = util.bkr_bin()

local PG_BIN = util.sh("ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1"):gsub("%s+$", "")

local run = util.bkr

local function new_database(sql)
  return util.new_database("bk", sql)
end

-- Every file under dir (relative), sorted: the repository's state, to compare before/after.
local function tree(dir)
  local out = util.sh("cd " .. q(dir) .. " 2>/dev/null && find . -type f ! -name bkr.log ! -name .lock | sort")
  return out
end

local function backups_of(repo, db, type_)
  local out = util.sh("ls " .. q(repo .. "/" .. (type_ or "daily")) .. " 2>/dev/null")
  local list = {}
  for name in out:gmatch("[^\n]+") do
    if name:match("^backup_.*_" .. db:gsub("%p", "%%%0") .. "%.sql%.gz$") then list[#list + 1] = name end
  end
  return list
end

local RICH_SCHEMA = [==[
create schema accounting;
create schema "Mixed Case";
create table accounting.invoices (id serial primary key, supplier text not null, amount numeric(12,2),
  issued date default current_date, data bytea, note text);
insert into accounting.invoices (supplier, amount, issued, data, note)
  select 'Lieferant ' || i || ' Müller & Söhne ✓', i * 1.25, date '2026-01-01' + i, decode(md5(i::text), 'hex'),
         case when i % 3 = 0 then E'line one\nline two\ttab \\ backslash' end
  from generate_series(1, 2000) i;
create table "Mixed Case"."Table ""quoted""" ("Col A" int, b text);
insert into "Mixed Case"."Table ""quoted""" values (1, '日本語'), (2, null), (1, '日本語');
create sequence accounting.counter start 42;
select setval('accounting.counter', 99);
create view accounting.big as select * from accounting.invoices where amount > 100;
create function accounting.touch() returns trigger language plpgsql as $body$
begin
  new.note := coalesce(new.note, $$it's "quoted" $dollar$$);
  return new;
end $body$;
create trigger invoices_touch before insert on accounting.invoices
  for each row execute function accounting.touch();
select lo_from_bytea(0, 'large object payload ' || repeat('x', 10000)::bytea);
create table accounting.empty (id int);
]==]

describe("bkr backup", function()
  it("writes a gzip dump, a sha256sum -c sidecar and a manifest, restorable without bkr into an identical database", function()
    local db = new_database(RICH_SCHEMA)
    util.psql("alter database " .. db .. " set search_path = accounting, public")
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local files = backups_of(repo, db)
    assert.are.equal(1, #files)
    local path = repo .. "/daily/" .. files[1]
    assert.matches("^backup_%d%d%d%d%d%d%d%d_%d%d%d%d%d%d_" .. db .. "%.sql%.gz$", files[1])
    assert.is_true(util.gzip_ok(path))
    local check, crc = util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum -c " .. q(files[1] .. ".sha256"))
    assert.are.equal(0, crc, check)

    local manifest = json.decode(util.read(path .. ".json"))
    assert.are.equal(db, manifest.database)
    assert.are.equal("daily", manifest.type)
    assert.are.equal(util.sha256sum(path), manifest.sha256)
    assert.are.equal(tonumber(util.sh("stat -c %s " .. q(path)):match("%d+")), manifest.stored_bytes)
    assert.are.equal(tonumber(util.sh("gunzip -c " .. q(path) .. " | wc -c"):match("%d+")), manifest.raw_bytes)
    assert.are.same({ "search_path=accounting, public" }, manifest.database_properties.settings)
    assert.are.equal("postgres", manifest.database_properties.owner)
    local by_name = {}
    for _, t in ipairs(manifest.tables) do by_name[t.schema .. "." .. t.name] = t end
    assert.are.equal(2000, by_name["accounting.invoices"].rows)
    assert.are.equal(3, by_name['Mixed Case.Table "quoted"'].rows)
    assert.are.equal(0, by_name["accounting.empty"].rows)

    -- gunzip | psql into a new database, then both dump identically
    local restored = new_database()
    local rout, rrc = util.sh("gunzip -c " .. q(path) .. " | psql -X -q -v ON_ERROR_STOP=1 -d " .. restored .. " 2>&1 >/dev/null")
    assert.are.equal(0, rrc, rout)
    -- (pg_dump >= 15.14 brackets its output with \restrict KEY lines, a fresh random KEY each run)
    local a = util.sh(PG_BIN .. "/pg_dump -d " .. db .. " | grep -v '^\\\\\\(un\\)\\?restrict '")
    local b = util.sh(PG_BIN .. "/pg_dump -d " .. restored .. " | grep -v '^\\\\\\(un\\)\\?restrict '")
    assert.matches("CREATE TABLE accounting.invoices", a)
    assert.are.equal(#a, #b)
    assert.is_true(a == b, "the restored database dumps differently")
    assert.matches("lo_open", a)
    assert.are.equal("99", util.psql("select last_value from accounting.counter", restored))
  end)

  it("keeps the real database name in the manifest when the file name needs escaping", function()
    local n = math.random(1e6)
    local db = "Ünï db/with%chars " .. n
    util.psql('create database "' .. db .. '"')
    util.sh("psql -X -q -d " .. q("dbname='" .. db .. "'") .. " -c 'create table t (x int); insert into t values (1)'")
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. q(db))
    assert.are.equal(0, rc, out)
    local name = util.sh("ls " .. q(repo .. "/daily") .. " | grep 'sql.gz$'"):gsub("\n", "")
    assert.matches("^backup_%d+_%d+_%%C3%%9Cn%%C3%%AF%%20db%%2Fwith%%25chars%%20" .. n .. "%.sql%.gz$", name)
    local manifest = json.decode(util.read(repo .. "/daily/" .. name .. ".json"))
    assert.are.equal(db, manifest.database)
    local listing = run("list --json --repo " .. q(repo))
    assert.are.equal(db, json.decode(listing)[1].database)
  end)

  it("backs up the other databases when one fails, reports which and why, and exits 1", function()
    local good = new_database("create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db no_such_db --db " .. good)
    assert.are.equal(1, rc)
    assert.matches('database "no_such_db" failed: database "no_such_db" does not exist', out)
    assert.are.equal(1, #backups_of(repo, good))
    assert.are.equal(0, #backups_of(repo, "no_such_db"))
    local log = util.read(repo .. "/bkr.log")
    assert.matches('"database":"no_such_db"', log)
    assert.matches('"result":"failed"', log)
    assert.matches('"result":"ok"', log)
  end)

  it("leaves the repository as it was when pg_dump dies midway, and includes pg_dump's stderr", function()
    local db = new_database("create table t (x text); insert into t select repeat('y', 100) from generate_series(1, 50000);")
    local repo = util.scratch("repo")
    -- a pg_dump that prints part of the dump, complains and dies of SIGKILL
    local bindir = util.fake_pg_dump('"$REAL_PG_DUMP" "$@" | head -c 200000\necho "pg_dump: simulated crash" >&2\nkill -9 $$')
    local before = tree(repo)
    local out, rc = run("backup --no-globals --config " .. q(bindir .. "/bkr.lua") .. " --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(1, rc)
    assert.matches("killed by signal 9", out)
    assert.matches("simulated crash", out)
    assert.are.equal(before, tree(repo))
    assert.are.equal("", util.sh("find " .. q(repo) .. " -name '.*tmp*'"))
  end)

  it("fails on a full disk, leaving earlier backups intact and no partial file", function()
    local db = new_database("create table t (x bytea);")
    local repo = util.scratch("repo")
    local _, mrc = util.sh("mount -t tmpfs -o size=12m tmpfs " .. q(repo))
    assert.are.equal(0, mrc)
    finally(function() util.sh("umount " .. q(repo)) end)
    -- first backup is small, so the free-space estimate from it lets the second one start
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local before = tree(repo)
    util.psql("insert into t select decode(string_agg(md5(random()::text), ''), 'hex') from generate_series(1, 20000) g(i), generate_series(1, 100) h(j) group by j", db)
    util.sh("sleep 1.1")
    out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(1, rc)
    assert.matches("No space left on device", out)
    assert.are.equal(before, tree(repo))
    assert.are.equal("", util.sh("find " .. q(repo) .. " -name '.*tmp*'"))
  end)

  it("refuses to start when the repository has less free space than the database needs", function()
    local db = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    util.sh("mount -t tmpfs -o size=1m tmpfs " .. q(repo))
    finally(function() util.sh("umount " .. q(repo)) end)
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(1, rc)
    assert.matches("not enough free space in " .. repo:gsub("%p", "%%%0"), out)
    assert.are.equal("", tree(repo))
  end)

  it("fails before any work when the server cannot be reached or authentication fails", function()
    local repo = util.scratch("repo")
    local out, rc = run("backup --repo " .. q(repo) .. " --db postgres", "PGUSER=no_such_role")
    assert.are.equal(1, rc)
    assert.matches('role "no_such_role" does not exist', out)
    assert.are.equal("", tree(repo))
  end)

  it("on SIGTERM stops pg_dump, leaves no file behind and exits 143", function()
    local db = new_database("create table t (x int); insert into t select generate_series(1, 1000);")
    local repo = util.scratch("repo")
    local bindir = util.fake_pg_dump('echo $$ > "$FAKEBIN/pid"\n"$REAL_PG_DUMP" "$@"\nexec sleep 60')
    local out, rc = util.sh("(" .. q(bkr) .. " backup --no-globals --config " .. q(bindir .. "/bkr.lua") .. " --repo " .. q(repo)
      .. " --db " .. db .. " & p=$!; while [ ! -s " .. q(bindir .. "/pid") .. " ]; do sleep 0.05; done; sleep 0.5; kill -TERM $p; wait $p) 2>&1")
    assert.are.equal(143, rc, out)
    local pid = util.read(bindir .. "/pid"):match("%d+")
    local _, alive = util.sh("kill -0 " .. pid .. " 2>/dev/null")
    assert.are_not.equal(0, alive, "pg_dump's process must be gone")
    assert.are.equal("", tree(repo))
  end)

  it("shows a progress line on a terminal, and nothing of it without one", function()
    local db = new_database("create table t (x text); insert into t select md5(i::text) from generate_series(1, 20000) i;")
    local repo = util.scratch("repo")
    -- a pg_dump that pauses midway, so the dump lasts longer than the progress interval
    local bindir = util.fake_pg_dump('"$REAL_PG_DUMP" "$@" | { head -c 100000; sleep 1.2; cat; }')
    -- script(1) runs bkr on a pseudo-terminal, as an admin at a shell would
    local cmd = q(util.bkr_bin()) .. " backup --no-globals --config " .. q(bindir .. "/bkr.lua") .. " --repo " .. q(repo)
      .. " --db " .. db
    local out, rc = util.sh("script -qec " .. q(cmd) .. " /dev/null")
    assert.are.equal(0, rc, out)
    assert.matches(db .. ": [%d.]+ MiB, [%d.]+ MiB/s", out)
    util.sh("sleep 1.1")
    out, rc = run("backup --no-globals --config " .. q(bindir .. "/bkr.lua") .. " --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.not_matches("MiB/s", out)
  end)

  it("refuses a second run on the same repository, naming the holder's PID", function()
    local db = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    util.sh("mkdir -p " .. q(repo))
    local holder = util.scratch("holder") .. "/hold.lua"
    util.write(holder, "local l = require('bkr.fs').lock(...) ; io.open(select(2, ...), 'w'):close() ; os.execute('sleep 5')\n")
    os.execute(q(bkr) .. " run " .. q(holder) .. " " .. q(repo .. "/.lock") .. " " .. q(repo .. "/ready") .. " &")
    for _ = 1, 100 do
      if io.open(repo .. "/ready") then break end
      util.sh("sleep 0.05")
    end
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(1, rc)
    assert.matches("repository .* is busy: .*held by process %d+", out)
    assert.are.equal(0, #backups_of(repo, db))
  end)

  it("dumps the cluster's globals beside the backups when the user is a superuser", function()
    local db = new_database("create table t (x int);")
    local role = "bkr_role_" .. math.random(1e6)
    util.psql("create role " .. role .. " login")
    local repo = util.scratch("repo")
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local globals = util.sh("ls " .. q(repo .. "/daily") .. " | grep '^globals_.*sql.gz$'"):gsub("\n", "")
    assert.matches("^globals_%d+_%d+%.sql%.gz$", globals)
    assert.matches("CREATE ROLE " .. role, util.sh("gunzip -c " .. q(repo .. "/daily/" .. globals)))
    local _, crc = util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum -c " .. q(globals .. ".sha256"))
    assert.are.equal(0, crc)
  end)

  it("says once that it skips globals for a user who may not read them, and goes on", function()
    local role = "bkr_plain_" .. math.random(1e6)
    util.psql("create role " .. role .. " login createdb")
    local db = new_database()
    util.psql("alter database " .. db .. " owner to " .. role)
    util.sh("psql -X -q -U " .. role .. " -d " .. db .. " -c 'create table t (x int)'")
    local repo = util.scratch("repo")
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db, "PGUSER=" .. role)
    assert.are.equal(0, rc, out)
    local _, count = out:gsub("skipping roles and tablespaces", "")
    assert.are.equal(1, count)
    assert.are.equal(1, #backups_of(repo, db))
  end)

  it("refuses a pg_dump older than the server, naming the package to install", function()
    package.path = os.getenv("BKR_SOURCE_DIR") .. "/recipes/?.lua;" .. package.path
    local postgres = require "lib.postgres"
    local ok, err = pcall(postgres.find_program, "pg_dump", 99, {})
    assert.is_false(ok)
    assert.matches("pg_dump %d+ is older than the server %(99%).*install postgresql%-client%-99", tostring(err))
    local path, version = postgres.find_program("pg_dump", 15, {})
    assert.matches("/pg_dump$", path)
    assert.matches("^1[5-9]", version)
  end)

  it("keeps the password out of argv, manifests and logs", function()
    local db = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    local cfgdir = util.scratch("cfg")
    local bindir = util.fake_pg_dump('echo "$@" > "$FAKEBIN/argv"\nenv > "$FAKEBIN/env"\nexec "$REAL_PG_DUMP" "$@"')
    util.write(cfgdir .. "/bkr.yaml", "connection:\n  password_env: BKR_TEST_SECRET\nrepository: " .. repo .. "\npg_bindir: " .. bindir .. "\n")
    local out, rc = run("backup --no-globals --config " .. q(cfgdir .. "/bkr.yaml") .. " --db " .. db, "BKR_TEST_SECRET=s3cr3t-PaSS")
    assert.are.equal(0, rc, out)
    assert.not_matches("s3cr3t", util.read(bindir .. "/argv"))
    assert.matches("PGPASSWORD=s3cr3t%-PaSS", util.read(bindir .. "/env"))
    assert.are.equal("", util.sh("grep -rl s3cr3t " .. q(repo)))
  end)
end)

describe("bkr configuration", function()
  it("reads YAML and Lua files with the same schema", function()
    local dir = util.scratch("cfg")
    local db = new_database("create table t (x int);")
    util.write(dir .. "/bkr.yaml", "databases: [" .. db .. "]\nrepository: " .. dir .. "/repo-y\ncompression_level: 1\n"
      .. "retention:\n  daily: 2\n")
    util.write(dir .. "/bkr.lua", "return { databases = { '" .. db .. "' }, repository = '" .. dir .. "/repo-l', compression_level = 9 }\n")
    local out, rc = run("backup --no-globals --config " .. q(dir .. "/bkr.yaml"))
    assert.are.equal(0, rc, out)
    out, rc = run("backup --no-globals --config " .. q(dir .. "/bkr.lua"))
    assert.are.equal(0, rc, out)
    local y = json.decode(util.read(util.sh("ls " .. dir .. "/repo-y/daily/*.json"):gsub("\n", "")))
    local l = json.decode(util.read(util.sh("ls " .. dir .. "/repo-l/daily/*.json"):gsub("\n", "")))
    assert.are.equal(1, y.compression.level)
    assert.are.equal(9, l.compression.level)
  end)

  it("reports unknown keys and wrong types with the key's path, exit 2", function()
    local dir = util.scratch("cfg")
    local cases = {
      { "retention:\n  daily: -1\n", "configuration: retention.daily: expected a non%-negative integer" },
      { "retention:\n  dayly: 3\n", "configuration: retention.dayly: unknown key" },
      { "compression_level: 12\n", "configuration: compression_level: expected an integer from 0 to 9" },
      { "connection:\n  port: '5432x'\n", "configuration: connection.port: expected an integer from 1 to 65535" },
      { "databases: [a, 3]\n", "configuration: databases%[2%]: expected a non%-empty string" },
      { "repository: [\n", "configuration: yaml: .*line" },
      { "- a\n- b\n", "configuration: %(top level%): expected a mapping of settings" },
    }
    for _, case in ipairs(cases) do
      util.write(dir .. "/bkr.yaml", case[1])
      local out, rc = run("list --config " .. q(dir .. "/bkr.yaml") .. " --repo " .. q(dir))
      assert.are.equal(2, rc, out)
      assert.matches(case[2], out)
    end
    local out, rc = run("list --config " .. q(dir .. "/missing.yaml"))
    assert.are.equal(2, rc)
    assert.matches("missing.yaml: no such file", out)
  end)

  it("needs a repository from the file or --repo", function()
    local out, rc = run("list", "cd " .. q(util.scratch("empty")) .. " &&")
    assert.are.equal(2, rc)
    assert.matches("no repository: give %-%-repo DIR", out)
  end)

  it("answers --help for every recipe, and rejects unknown options with exit 2", function()
    for _, recipe in ipairs({ "backup", "verify", "list", "rotate" }) do
      local out, rc = run(recipe .. " --help")
      assert.are.equal(0, rc, recipe)
      assert.matches("usage: bkr " .. recipe, out)
      assert.matches("exit codes:", out)
      local _, bad = run(recipe .. " --bogus")
      assert.are.equal(2, bad, recipe)
    end
  end)
end)

describe("bkr verify", function()
  local repo, db, path

  local function fresh_backup()
    db = db or new_database("create table t (x text); insert into t select md5(i::text) from generate_series(1, 20000) i;")
    repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    path = repo .. "/daily/" .. backups_of(repo, db)[1]
  end

  it("passes a sound backup and records the verdict in the manifest", function()
    fresh_backup()
    local out, rc = run("verify --latest --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    assert.matches("ok +daily/backup_", out)
    local manifest = json.decode(util.read(path .. ".json"))
    assert.are.equal("passed", manifest.verification.result)
    assert.matches("verified", run("list --repo " .. q(repo)):lower())
    assert.matches("passed", run("list --repo " .. q(repo)))
  end)

  it("fails a backup with a flipped byte: checksum mismatch, exit 3, recorded", function()
    fresh_backup()
    util.flip_byte(path, 5000)
    local out, rc = run("verify --repo " .. q(repo))
    assert.are.equal(3, rc)
    assert.matches("FAILED +daily/.*checksum mismatch", out)
    assert.are.equal("failed", json.decode(util.read(path .. ".json")).verification.result)
  end)

  it("fails a truncated backup even with a matching sidecar", function()
    fresh_backup()
    local size = tonumber(util.sh("stat -c %s " .. q(path)):match("%d+"))
    util.sh("truncate -s " .. (size - 100) .. " " .. q(path))
    util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum " .. q(path:match("[^/]+$")) .. " > " .. q(path .. ".sha256"))
    local manifest = json.decode(util.read(path .. ".json"))
    manifest.sha256 = util.sha256sum(path)
    util.write(path .. ".json", json.encode(manifest))
    local out, rc = run("verify " .. q(path))
    assert.are.equal(3, rc)
    assert.matches("truncated", out)
  end)

  it("fails a dump cut at a line end and recompressed: no completion marker", function()
    fresh_backup()
    util.sh("gunzip -c " .. q(path) .. " 2>/dev/null | head -n 50 | gzip > " .. q(path .. ".new") .. " && mv " .. q(path .. ".new") .. " " .. q(path))
    util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum " .. q(path:match("[^/]+$")) .. " > " .. q(path .. ".sha256"))
    local manifest = json.decode(util.read(path .. ".json"))
    manifest.sha256 = util.sha256sum(path)
    manifest.raw_bytes = tonumber(util.sh("gunzip -c " .. q(path) .. " | wc -c"):match("%d+"))
    util.write(path .. ".json", json.encode(manifest))
    local out, rc = run("verify " .. q(path))
    assert.are.equal(3, rc)
    assert.matches("truncated", out)
  end)

  it("fails a backup without its sidecar", function()
    fresh_backup()
    os.remove(path .. ".sha256")
    local out, rc = run("verify --repo " .. q(repo))
    assert.are.equal(3, rc)
    assert.matches("missing sidecar", out)
  end)

  it("fails when the manifest's tables disagree with the dump", function()
    fresh_backup()
    local manifest = json.decode(util.read(path .. ".json"))
    manifest.tables[1].rows = manifest.tables[1].rows + 1
    util.write(path .. ".json", json.encode(manifest))
    local out, rc = run("verify --repo " .. q(repo))
    assert.are.equal(3, rc)
    assert.matches("manifest mismatch: table public.t", out)
  end)

  it("checks every backup with --all and reports each failure", function()
    fresh_backup()
    util.sh("sleep 1.1")
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    util.flip_byte(path, 100)
    out, rc = run("verify --all --repo " .. q(repo))
    assert.are.equal(3, rc)
    local _, oks = out:gsub("\nok ", "")
    assert.matches("FAILED", out)
    assert.is_true(oks >= 1)
  end)
end)

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
end)
