-- format: custom end to end against the real cluster: pg_dump's custom archives stored as
-- backup_STAMP_DB.dump, with the same sidecar, manifest and per-table digests as plain
-- backups; verify, restore (pg_restore -j), encryption, drill and SIGTERM. Checked with the
-- independent tools: pg_restore -l, pg_restore -d, sha256sum, psql.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr

local SETUP = "create table t (id int primary key, x text, at timestamptz default now());"
  .. " insert into t select i, md5(i::text) from generate_series(1, 20000) i;"
  .. " create schema \"Odd Schema\"; create table \"Odd Schema\".\"T 2\" (a int, b text);"
  .. " insert into \"Odd Schema\".\"T 2\" select i, null from generate_series(1, 300) i;"
  .. " create table empty_one (z int);"

local function new_database()
  return util.new_database("cf", SETUP)
end

local function custom_config(repo, extra)
  local path = util.scratch("cfg") .. "/bkr.yaml"
  util.write(path, "repository: " .. repo .. "\nformat: custom\n" .. (extra or ""))
  return path
end

local files = util.files

local function summary(db)
  return util.psql("select count(*) || ':' || md5(string_agg(x, ',' order by id)) from t", db)
    .. "/" .. util.psql('select count(*) from "Odd Schema"."T 2"', db)
end

local function pg_restore()
  return util.sh("ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1"):gsub("%s+$", "") .. "/pg_restore"
end

describe("format: custom", function()
  it("stores a pg_dump custom archive (.dump) that pg_restore lists and restores by hand", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local out, rc = run("backup --create-repo --config " .. q(custom_config(repo)) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local dumps = files(repo, "^backup_.*_" .. db .. "%.dump$")
    assert.are.equal(1, #dumps, out)
    -- the globals stay plain SQL, gzip-compressed as configured
    assert.are.equal(1, #files(repo, "^globals_.*%.sql%.gz$"))
    local path = repo .. "/daily/" .. dumps[1]
    assert.are.equal("600", util.sh("stat -c %a " .. q(path)):gsub("%s", ""))
    assert.are.equal(0, select(2, util.sh(q(pg_restore()) .. " -l " .. q(path) .. " >/dev/null")))
    assert.are.equal(0, select(2, util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum -c --quiet "
      .. q(dumps[1] .. ".sha256"))))
    local manifest = json.decode(util.read(path .. ".json"))
    assert.are.equal("custom", manifest.dump_format)
    assert.are.same({ algorithm = "gzip", level = 6 }, manifest.compression)
    assert.are.equal(manifest.stored_bytes, manifest.raw_bytes)
    assert.are.equal(3, #manifest.tables)
    local rows = json.decode(run("list --json --repo " .. q(repo)))
    assert.are.equal("custom", rows[1].dump_format)
    assert.are.equal("gzip", rows[1].compression)
    -- nothing temporary is left in the repository
    assert.are.same({}, files(repo, "^%.bkr%-tmp"))
    local target = util.new_database("cf_hand")
    local said, prc = util.sh(q(pg_restore()) .. " --exit-on-error -d " .. target .. " " .. q(path) .. " 2>&1")
    assert.are.equal(0, prc, said)
    assert.are.equal(summary(db), summary(target))
  end)

  it("records the same per-table digests as a plain backup of the same data", function()
    local db = new_database()
    local plain_repo, custom_repo = util.scratch("repo"), util.scratch("repo")
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --repo " .. q(plain_repo) .. " --db " .. db)))
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(custom_config(custom_repo))
      .. " --db " .. db)))
    local plain = json.decode(util.read(plain_repo .. "/daily/" .. files(plain_repo, "%.sql%.gz$")[1] .. ".json"))
    local custom = json.decode(util.read(custom_repo .. "/daily/" .. files(custom_repo, "%.dump$")[1] .. ".json"))
    local function by_name(tables)
      local out = {}
      for _, t in ipairs(tables) do out[t.schema .. "." .. t.name] = { rows = t.rows, digest = t.digest } end
      return out
    end
    assert.are.same(by_name(plain.tables), by_name(custom.tables))
    assert.are.equal(20000, by_name(custom.tables)["public.t"].rows)
  end)

  it("is verified through pg_restore, and a damaged archive fails verification (exit 3)", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = custom_config(repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local path = repo .. "/daily/" .. files(repo, "%.dump$")[1]
    local out, rc = run("verify --latest --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("ok +daily/backup_.*%.dump\n", out)
    assert.are.equal("passed", json.decode(util.read(path .. ".json")).verification.result)
    local size = tonumber(util.sh("stat -c %s " .. q(path)):match("%d+"))
    util.flip_byte(path, size // 2)
    out, rc = run("verify --latest --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.matches("FAILED +daily/.*checksum mismatch", out)
    -- the same damage with a sidecar and manifest that match it: pg_restore notices
    util.resign(path)
    out, rc = run("verify " .. q(path))
    assert.are.equal(3, rc, out)
    assert.matches("FAILED +[^\n]*corrupt", out)
  end)

  it("fails verification when the manifest's tables disagree with the archive", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = custom_config(repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local path = repo .. "/daily/" .. files(repo, "%.dump$")[1]
    local manifest = json.decode(util.read(path .. ".json"))
    manifest.tables[1].digest = string.rep("0", 64)
    util.write(path .. ".json", json.encode(manifest))
    local out, rc = run("verify " .. q(path))
    assert.are.equal(3, rc, out)
    assert.matches("manifest mismatch: table", out)
  end)

  it("is restored by bkr restore with pg_restore -j N (--jobs), table by table", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = custom_config(repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local target = db .. "_r"
    local out, rc = run("restore --config " .. q(cfg) .. " --db " .. db .. " --latest --into " .. target
      .. " --create --jobs 3")
    assert.are.equal(0, rc, out)
    assert.matches("pg_restore %-j 3", out)
    assert.matches("compare: 3 of 3 tables match", out)
    assert.are.equal(summary(db), summary(target))
    -- one job: pg_restore in one transaction, into an existing (empty) database
    local existing = util.new_database("cf_one")
    out, rc = run("restore --config " .. q(cfg) .. " --db " .. db .. " --latest --into " .. existing .. " --jobs 1")
    assert.are.equal(0, rc, out)
    assert.matches("pg_restore %-j 1", out)
    assert.are.equal(summary(db), summary(existing))
    -- into a database that is not empty, pg_restore -j fails, and the message does not claim
    -- that nothing was committed
    local busy = util.new_database("cf_busy", "create table t (id int);")
    out, rc = run("restore --config " .. q(cfg) .. " --db " .. db .. " --latest --into " .. busy .. " --jobs 2")
    assert.are.equal(1, rc, out)
    assert.matches("pg_restore %-j 2 may have left part of the backup in " .. busy, out)
    -- --jobs takes a whole number
    out, rc = run("restore --config " .. q(cfg) .. " --db " .. db .. " --latest --into x --create --jobs many")
    assert.are.equal(2, rc, out)
  end)

  it("a damaged archive is refused before the target is touched (exit 3)", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = custom_config(repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local path = repo .. "/daily/" .. files(repo, "%.dump$")[1]
    util.flip_byte(path, 100)
    local target = db .. "_r"
    local out, rc = run("restore --config " .. q(cfg) .. " --db " .. db .. " --latest --into " .. target .. " --create")
    assert.are.equal(3, rc, out)
    assert.matches("checksum mismatch", out)
    assert.are.equal("0", util.psql("select count(*) from pg_database where datname = '" .. target .. "'"))
  end)

  it("an archive whose size is not the manifest's is refused before pg_restore runs (exit 3)", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = custom_config(repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local path = repo .. "/daily/" .. files(repo, "%.dump$")[1]
    -- bytes appended, then re-signed: the sidecar, sha256 and stored_bytes recomputed
    util.sh("printf 'CREATE TABLE public.injected(x int);\\n' >> " .. q(path))
    util.resign(path)
    local target = util.new_database("cf_size")
    local out, rc = run("restore --config " .. q(cfg) .. " --db " .. db .. " --latest --into " .. target .. " --jobs 2")
    assert.are.equal(3, rc, out)
    assert.matches("size: the archive has %d+ bytes, the manifest says %d+", out)
    assert.are.equal("0", util.psql("select count(*) from pg_class where relname in ('t', 'injected')", target))
  end)

  it("encrypted: .dump.enc round-trips through verify and restore; the plaintext never stays on disk", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local key = util.scratch("key") .. "/backup.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    local cfg = custom_config(repo)
    local tmp = util.scratch("tmpdir")
    local env = "TMPDIR=" .. q(tmp)
    local out, rc = run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db .. " --key-file "
      .. q(key), env)
    assert.are.equal(0, rc, out)
    local dumps = files(repo, "^backup_.*%.dump%.enc$")
    assert.are.equal(1, #dumps)
    local path = repo .. "/daily/" .. dumps[1]
    -- without the key: the checksum only; with it: through pg_restore
    out, rc = run("verify --latest --config " .. q(cfg), env)
    assert.are.equal(0, rc, out)
    assert.matches("checksum only", out)
    out, rc = run("verify --latest --config " .. q(cfg) .. " --key-file " .. q(key), env)
    assert.are.equal(0, rc, out)
    assert.not_matches("checksum only", out)
    -- decrypt gives back the archive, which pg_restore reads; --decompress is refused
    local archive = util.scratch("out") .. "/a.dump"
    assert.are.equal(0, select(2, run("decrypt " .. q(path) .. " --key-file " .. q(key) .. " --out " .. q(archive))))
    assert.are.equal(0, select(2, util.sh(q(pg_restore()) .. " -l " .. q(archive) .. " >/dev/null")))
    out, rc = run("decrypt " .. q(path) .. " --key-file " .. q(key) .. " --decompress")
    assert.are.equal(2, rc, out)
    assert.matches("custom%-format archive", out)
    local target = db .. "_r"
    out, rc = run("restore --config " .. q(cfg) .. " --key-file " .. q(key) .. " --db " .. db .. " --latest --into "
      .. target .. " --create --jobs 2", env)
    assert.are.equal(0, rc, out)
    assert.are.equal(summary(db), summary(target))
    -- the decrypted copy went with its private directory
    assert.are.equal("", util.sh("ls -A " .. q(tmp)))
    -- a wrong key: nothing decrypted, nothing left
    local other = util.scratch("key") .. "/other.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(other))))
    out, rc = run("verify " .. q(path) .. " --key-file " .. q(other), env)
    assert.are.equal(3, rc, out)
    assert.matches("wrong key", out)
    assert.are.equal("", util.sh("ls -A " .. q(tmp)))
  end)

  it("encrypted: pg_dump's plaintext archive waits in a private directory under TMPDIR, never in the repository", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local key = util.scratch("key") .. "/backup.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    local tmp = util.scratch("tmpdir")
    -- a pg_dump that reports where it wrote and what the repository held meanwhile
    local bindir = util.fake_pg_dump('"$REAL_PG_DUMP" "$@" || exit $?\n'
      .. 'for a in "$@"; do case "$a" in --file=*) f="${a#--file=}";; esac; done\n'
      .. 'echo "$f" > "$FAKEBIN/file"\nstat -c %a "$(dirname "$f")" > "$FAKEBIN/dirmode"\n'
      .. 'stat -c %a "$f" > "$FAKEBIN/filemode"\n'
      .. 'ls -A ' .. q(repo .. "/daily") .. ' > "$FAKEBIN/repo"')
    local cfg = custom_config(repo, "pg_bindir: " .. bindir .. "\n")
    local out, rc = run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db .. " --key-file "
      .. q(key), "TMPDIR=" .. q(tmp))
    assert.are.equal(0, rc, out)
    local file = util.read(bindir .. "/file"):gsub("\n$", "")
    assert.are.equal(tmp .. "/bkr-archive.", file:sub(1, #tmp + 13))
    assert.matches("^bkr%-archive%.%d+%.%w+/backup_[^/]*%.dump$", file:sub(#tmp + 2))
    assert.are.equal("700\n", util.read(bindir .. "/dirmode"))
    assert.are.equal("600\n", util.read(bindir .. "/filemode"))
    assert.are.equal("", util.read(bindir .. "/repo"))
    -- gone with the run
    assert.are.equal("", util.sh("ls -A " .. q(tmp)))
    assert.are.equal(1, #files(repo, "^backup_.*%.dump%.enc$"))
  end)

  it("encrypted: after a SIGKILL of bkr, pg_dump dies too, and the next run removes the private directory it left", function()
    local db = new_database()
    local repo = util.scratch("repo")
    util.sh("mkdir -p " .. q(repo))
    local key = util.scratch("key") .. "/backup.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    local tmp = util.scratch("tmpdir")
    local bindir = util.fake_pg_dump('echo $$ > "$FAKEBIN/pid"\n"$REAL_PG_DUMP" "$@"\nexec sleep 60')
    local cfg = custom_config(repo, "pg_bindir: " .. bindir .. "\n")
    local out, rc = util.sh("(TMPDIR=" .. q(tmp) .. " " .. q(util.bkr_bin()) .. " backup --no-globals --config " .. q(cfg)
      .. " --db " .. db .. " --key-file " .. q(key) .. " & p=$!; while [ ! -s " .. q(bindir .. "/pid")
      .. " ]; do sleep 0.05; done; sleep 1; kill -KILL $p; wait $p) 2>&1")
    assert.are.equal(137, rc, out)
    -- pg_dump (here the sleep it became) went with bkr
    local pid = util.read(bindir .. "/pid"):match("%d+")
    local state
    for _ = 1, 20 do
      state = util.sh("ps -o stat= -p " .. pid):match("%S+")
      if not state or state:sub(1, 1) == "Z" then break end
      util.sh("sleep 0.05")
    end
    assert.is_true(not state or state:sub(1, 1) == "Z", "pg_dump still runs: " .. tostring(state))
    -- the private directory of the killed run, with the plaintext archive in it
    local left = util.sh("ls -A " .. q(tmp)):gsub("\n$", "")
    assert.matches("^bkr%-archive%.%d+%.%w+$", left)
    -- a live process's (a fresh one), or someone else's name: never touched
    util.sh("mkdir " .. q(tmp .. "/bkr-archive.1.alive") .. " " .. q(tmp .. "/bkr-archive-other")
      .. " " .. q(tmp .. "/bkr-archive." .. util.pid() .. ".live"))
    util.write(bindir .. "/pid", "")
    util.write(bindir .. "/pg_dump", util.read(bindir .. "/pg_dump"):gsub("exec sleep 60", "true"))
    out, rc = util.sh("TMPDIR=" .. q(tmp) .. " " .. q(util.bkr_bin()) .. " backup --no-globals --config " .. q(cfg)
      .. " --db " .. db .. " --key-file " .. q(key) .. " 2>&1")
    assert.are.equal(0, rc, out)
    assert.matches("bkr: removed " .. (tmp .. "/" .. left):gsub("%p", "%%%0") .. ", left by an interrupted run", out)
    local kept = { "bkr-archive-other", "bkr-archive.1.alive", "bkr-archive." .. util.pid() .. ".live" }
    table.sort(kept)
    assert.are.same(kept, util.listdir(tmp))
    assert.are.equal(1, #files(repo, "^backup_.*%.dump%.enc$"))
  end)

  it("verify records nothing when the environment stops it (temp dir missing, not a directory, "
    .. "relative; pg_restore killed): exit 1, the verdict kept", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local key = util.scratch("key") .. "/backup.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    local cfg = custom_config(repo, "encryption:\n  key_file: " .. key .. "\n")
    local out, rc = run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local path = repo .. "/daily/" .. files(repo, "%.dump%.enc$")[1]
    out, rc = run("verify --latest --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local function verification(file) return json.decode(util.read(file .. ".json")).verification end
    local passed = verification(path)
    assert.are.equal("passed", passed.result)
    local not_a_dir = util.scratch("tmpfile") .. "/file"
    util.write(not_a_dir, "x")
    for _, tmpdir in ipairs({ "/nonexistent", not_a_dir, "relative/dir" }) do
      out, rc = run("verify --latest --config " .. q(cfg), "TMPDIR=" .. q(tmpdir))
      assert.are.equal(1, rc, tmpdir .. ": " .. out)
      assert.matches("ERROR +daily/backup_[^\n]*%.dump%.enc: could not be verified", out)
      assert.matches("1 backup could not be verified", out)
      assert.not_matches("FAILED", out)
      assert.are.same(passed, verification(path))
    end
    -- a temporary directory on a disk too small for the decrypted archive (no space)
    local small = util.scratch("smalltmp")
    assert.are.equal(0, select(2, util.sh("mount -t tmpfs -o size=64k tmpfs " .. q(small))))
    finally(function() util.sh("umount " .. q(small)) end)
    out, rc = run("verify --latest --config " .. q(cfg), "TMPDIR=" .. q(small))
    assert.are.equal(1, rc, out)
    assert.matches("could not be verified[^\n]*No space left on device", out)
    assert.not_matches("FAILED", out)
    assert.are.same(passed, verification(path))
    assert.are.equal("", util.sh("ls -A " .. q(small)))
    -- bkr check still sees a verified backup (rotation keeps the newest one that passed)
    assert.matches("'" .. db .. " verified_age'=%d+s", (run("check --config " .. q(cfg))))
    -- a plain custom archive whose pg_restore is killed (SIGKILL, the OOM killer) half way
    local plain_repo = util.scratch("repo")
    local plain_cfg = custom_config(plain_repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(plain_cfg) .. " --db " .. db)))
    local dump = plain_repo .. "/daily/" .. files(plain_repo, "%.dump$")[1]
    assert.are.equal(0, select(2, run("verify --latest --config " .. q(plain_cfg))))
    passed = verification(dump)
    assert.are.equal("passed", passed.result)
    local bindir = util.scratch("fakebin")
    util.write(bindir .. "/pg_restore", "#!/bin/sh\nREAL=" .. q(pg_restore()) .. "\n"
      .. 'if [ "$1" = --version ]; then exec "$REAL" --version; fi\n'
      .. '"$REAL" "$@" | head -c 20000\nkill -KILL $$\n')
    util.sh("chmod +x " .. q(bindir .. "/pg_restore"))
    local killing_cfg = custom_config(plain_repo, "pg_bindir: " .. bindir .. "\n")
    out, rc = run("verify --latest --config " .. q(killing_cfg))
    assert.are.equal(1, rc, out)
    assert.matches("could not be verified[^\n]*killed by a signal", out)
    assert.not_matches("FAILED", out)
    assert.are.same(passed, verification(dump))
    -- pg_restore that exits 1 on its own is a finding: see "a damaged archive fails verification"
  end)

  it("verify stopped by SIGTERM at any moment exits 143 and records nothing", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local key = util.scratch("key") .. "/backup.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    local cfg = custom_config(repo, "encryption:\n  key_file: " .. key .. "\n")
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local path = repo .. "/daily/" .. files(repo, "%.dump%.enc$")[1]
    local out, rc = run("verify --latest --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local tmp = util.scratch("tmpdir")
    -- the signal lands in C (decrypting, pg_restore) or in Lua code between the steps
    for i = 1, 25 do
      out, rc = util.sh("(TMPDIR=" .. q(tmp) .. " " .. q(util.bkr_bin()) .. " verify --latest --config " .. q(cfg)
        .. " & p=$!; sleep " .. string.format("%.3f", 0.012 * i) .. "; kill -TERM $p; wait $p) 2>&1")
      assert.is_true(rc == 143 or rc == 0, out)
      local verification = json.decode(util.read(path .. ".json")).verification
      assert.are.equal("passed", verification.result, out)
      assert.not_matches("FAILED", out)
      assert.are.equal("", util.sh("ls -A " .. q(tmp)))
    end
  end)

  it("a drill passes on a custom-format backup", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = custom_config(repo, "drill:\n  smoke_queries: [\"select count(*) > 0 from t\"]\n")
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local out, rc = run("drill --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.matches("passed +" .. db .. " +compare_tables", out)
    -- pg_restore restores an archive, not SQL
    assert.matches("restore_scratch +[%d.]+ [KMG]?i?B archive into", out)
    assert.not_matches("of SQL", out)
    assert.are.equal("0", util.psql("select count(*) from pg_database where datname like 'bkr_drill_%'"))
  end)

  it("on SIGTERM during pg_dump leaves no temporary file and no backup, and exits 143", function()
    local db = new_database()
    local repo = util.scratch("repo")
    util.sh("mkdir -p " .. q(repo))
    -- a pg_dump that writes its archive, then lingers: bkr is stopped while it waits for it
    local bindir = util.fake_pg_dump('echo $$ > "$FAKEBIN/pid"\n"$REAL_PG_DUMP" "$@"\nexec sleep 60')
    local cfg = bindir .. "/custom.lua"
    util.write(cfg, "return { pg_bindir = " .. string.format("%q", bindir) .. ", format = 'custom' }\n")
    local out, rc = util.sh("(" .. q(util.bkr_bin()) .. " backup --no-globals --config " .. q(cfg) .. " --repo " .. q(repo)
      .. " --db " .. db .. " & p=$!; while [ ! -s " .. q(bindir .. "/pid") .. " ]; do sleep 0.05; done; sleep 1;"
      .. " ls -A " .. q(repo .. "/daily") .. "; kill -TERM $p; wait $p) 2>&1")
    assert.are.equal(143, rc, out)
    -- the temporary archive existed while pg_dump ran, under a name no one could plant a
    -- symlink at beforehand (a random suffix), with the prefix the next run's cleanup finds
    assert.matches("%.bkr%-tmp%.backup_[^\n]*%.dump%.pg_dump%." .. ("%x"):rep(12) .. "\n", out)
    assert.are.same({}, files(repo, "."))
  end)

  it("configuration: format is plain or custom; custom with zstd needs a pg_dump that has it (exit 2)", function()
    local db = new_database()
    local repo = util.scratch("repo")
    util.sh("mkdir -p " .. q(repo))
    local path = util.scratch("cfg") .. "/bkr.yaml"
    util.write(path, "repository: " .. repo .. "\nformat: costum\n")
    local out, rc = run("list --config " .. q(path))
    assert.are.equal(2, rc, out)
    assert.matches("configuration: format: expected plain or custom; did you mean custom%?", out)
    local cfg = custom_config(repo, "compression: zstd\n")
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    local major = tonumber(util.psql("show server_version_num")) // 10000
    if major < 16 then
      assert.are.equal(2, rc, out)
      assert.matches("configuration: format: custom with compression: zstd needs pg_dump 16 or later", out)
      assert.are.same({}, files(repo, "."))
    else
      assert.are.equal(0, rc, out)
    end
  end)
end)
