-- bkr backup against the real cluster, checked with sha256sum, gunzip, psql and pg_dump.
-- (verify, rotate and list have their own specs.)
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local bkr = util.bkr_bin()

local PG_BIN = util.sh("ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1"):gsub("%s+$", "")

local run = util.bkr

local function new_database(sql)
  return util.new_database("bk", sql)
end

local tree, backups_of = util.tree, util.backups_of

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
    -- (a configured database that is gone fails alone; a --db typo stops the run: newcomer_spec)
    local cfg = repo .. "/bkr.lua"
    util.write(cfg, "return { databases = { 'no_such_db', '" .. good .. "' } }\n")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --config " .. q(cfg))
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

  it("fails the database, exit 1, when its role settings cannot be read: no manifest that quietly lacks them",
    function()
    local role = "bkr_plain_" .. math.random(1e6)
    util.psql("create role " .. role .. " login")
    local db = new_database("create table t (x int);")
    util.psql("alter database " .. db .. " owner to " .. role)
    util.psql("revoke select on pg_catalog.pg_db_role_setting from public")
    finally(function() util.psql("grant select on pg_catalog.pg_db_role_setting to public") end)
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db, "PGUSER=" .. role)
    assert.are.equal(1, rc, out)
    assert.matches('database "' .. db .. '" failed: [^\n]*permission denied for table pg_db_role_setting', out)
    assert.are.equal(0, #backups_of(repo, db))
  end)

  it("fails the globals step, exit 1, when the server is lost before it asks whether it may read roles", function()
    local db = new_database("create table t (x int);")
    local repo = util.scratch("repo")
    -- pg_dump succeeds, then bkr's own connection is terminated: the next query fails
    local bindir = util.fake_pg_dump('"$REAL_PG_DUMP" "$@" || exit $?\n'
      .. "psql -X -q -d postgres -c \"select pg_terminate_backend(pid) from pg_stat_activity "
      .. "where application_name = 'bkr' and pid <> pg_backend_pid()\" >/dev/null")
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db .. " --config " .. q(bindir .. "/bkr.lua"))
    assert.are.equal(1, rc, out)
    assert.not_matches("skipping roles and tablespaces", out)
    assert.matches("globals failed: could not ask the server whether the user may read roles: .*terminat", out)
    assert.are.equal(1, #backups_of(repo, db))
    local logged
    for line in util.read(repo .. "/bkr.log"):gmatch("[^\n]+") do
      local entry = json.decode(line)
      if entry.step == "globals" then logged = entry end
    end
    assert.are.equal("failed", logged.result)
    assert.matches("terminat", logged.error)
  end)

  it("gives up on a server that accepts and never answers after connection.connect_timeout_seconds, exit 1, lock released", function()
    local dir = util.scratch("silent")
    -- a listener that accepts every connection and never says a word (a stopped postmaster,
    -- a firewall that swallows the answer)
    util.write(dir .. "/silent.py", [[
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.settimeout(60)
held = []
try:
    while True:
        held.append(s.accept()[0])
except Exception:
    pass
]])
    local pid = util.sh("/usr/bin/python3 " .. q(dir .. "/silent.py") .. " " .. q(dir .. "/port")
      .. " >/dev/null 2>&1 & echo $!"):match("%d+")
    local port
    for _ = 1, 100 do
      port = io.open(dir .. "/port") and util.read(dir .. "/port")
      if port then break end
      util.sh("sleep 0.05")
    end
    assert.is_truthy(port, "the silent listener did not start")
    local repo = util.scratch("repo")
    util.write(dir .. "/bkr.yaml", "connection:\n  connect_timeout_seconds: 2\nrepository: " .. repo .. "\n")
    local started = os.time()
    local out, rc = run("backup --create-repo --config " .. q(dir .. "/bkr.yaml"),
      "timeout 60 env PGHOST=127.0.0.1 PGPORT=" .. port)
    local took = os.time() - started
    util.sh("kill " .. pid)
    assert.are.equal(1, rc, out)
    assert.is_true(took <= 6, "took " .. took .. " s")
    assert.matches("did not answer within 2 s: connection.connect_timeout_seconds", out, 1, true)
    local _, frc = util.sh("flock -n " .. q(repo .. "/.lock") .. " true")
    assert.are.equal(0, frc)
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
    -- and a child never waits forever for a server that does not answer
    assert.matches("\nPGCONNECT_TIMEOUT=10\n", "\n" .. util.read(bindir .. "/env"))
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
    local out, rc = run("backup --no-globals --create-repo --config " .. q(dir .. "/bkr.yaml"))
    assert.are.equal(0, rc, out)
    out, rc = run("backup --no-globals --create-repo --config " .. q(dir .. "/bkr.lua"))
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
      { "connection:\n  connect_timeout_seconds: 0\n",
        "configuration: connection.connect_timeout_seconds: expected an integer from 1 to 3600" },
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

  it("refuses a secret pasted where an environment variable's name belongs, or in connection.host, without showing it", function()
    local dir = util.scratch("cfg")
    local repo = util.scratch("repo")
    util.sh("mkdir -p " .. q(repo .. "/daily"))
    local secret = "KR3ekDc5s3cr3tQ0p+/Zx1"
    local name_expected = "expected the name of an environment variable (letters, digits, _), not a value: "
      .. "the value is not shown"
    local cases = {
      { "encryption:\n  key_env: \"" .. secret .. "=\"\n", "configuration: encryption.key_env: " .. name_expected },
      { "connection:\n  password_env: \"" .. secret .. "\"\n", "configuration: connection.password_env: " .. name_expected },
      { "connection:\n  password_env: \"9" .. secret:gsub("[^%w]", "") .. "\"\n",
        "configuration: connection.password_env: " .. name_expected },
      { "notify:\n  channels:\n    - type: webhook\n      url_env: \"https://x:" .. secret .. "@h\"\n",
        "configuration: notify.channels[1].url_env: " .. name_expected },
      { "s3:\n  secret_access_key_env: \"" .. secret .. "\"\n", "configuration: s3.secret_access_key_env: " .. name_expected },
      { "connection:\n  host: \"db.example.com password=" .. secret .. "\"\n", "configuration: connection.host: expected" },
      { "connection:\n  host: \"postgresql://u:" .. secret .. "@db\"\n", "configuration: connection.host: expected" },
      { "connection:\n  host: \"db'" .. secret .. "\"\n", "configuration: connection.host: expected" },
    }
    for _, case in ipairs(cases) do
      util.write(dir .. "/bkr.yaml", case[1] .. "repository: " .. repo .. "\n")
      local out, rc = run("backup --no-globals --config " .. q(dir .. "/bkr.yaml"), "BKR_SOME_KEY=x")
      assert.are.equal(2, rc, out)
      assert.matches(case[2], out, 1, true)
      assert.is_falsy(out:find("s3cr3t", 1, true), out)
      assert.are.equal("", util.sh("grep -rl s3cr3t " .. q(repo) .. " 2>&1"))
    end
    -- a name is still a name, and a socket directory is still a host
    util.write(dir .. "/bkr.yaml", "connection:\n  host: /var/run/postgresql\n  password_env: PG_PASS_1\n"
      .. "encryption:\n  key_env: _BKR_KEY\nrepository: " .. repo .. "\n")
    local out, rc = run("list --config " .. q(dir .. "/bkr.yaml"))
    assert.are.equal(0, rc, out)
  end)

  it("says how to fix a configuration mistake: the key meant, spaces for a tab, the list form", function()
    local dir = util.scratch("cfg")
    local cases = {
      { "retension:\n  daily: 3\n", "configuration: retension: unknown key; did you mean retention?" },
      { "retention:\n  dayly: 3\n", "configuration: retention.dayly: unknown key; did you mean daily?" },
      { "connection:\n  hots: db1\n", "configuration: connection.hots: unknown key; did you mean host?" },
      { "colour: blue\n", "configuration: colour: unknown key\n" },
      { "repository: /r\nretention:\n  daily: 3\n\tweekly: 2\n",
        "bkr.yaml: line 4, column 1: a tab character; YAML indents with spaces only\n" },
      { "connection:\n\thost: db1\n", "bkr.yaml: line 2, column 1: a tab character; YAML indents with spaces only\n" },
      { "databases: shop, billing\n", "configuration: databases: expected a list of names, e.g. [shop, billing]\n" },
      { "exclude: template1\n", "configuration: exclude: expected a list of names, e.g. [template1]\n" },
      -- anything but a plain list of names is not echoed: a generic example instead
      { "databases: \"s3cr3t pass!\"\n", "configuration: databases: expected a list of names, e.g. [appdb, crm]\n" },
    }
    for _, case in ipairs(cases) do
      util.write(dir .. "/bkr.yaml", case[1])
      local out, rc = run("list --config " .. q(dir .. "/bkr.yaml") .. " --repo " .. q(dir))
      assert.are.equal(2, rc, out)
      assert.matches(case[2], out, 1, true)
      assert.is_falsy(out:find("s3cr3t", 1, true), out)
    end
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
