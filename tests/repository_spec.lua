-- What bkr trusts in a repository (docs/RELIABILITY.md): everything in it may have been put
-- there by someone else. Symlinks and FIFOs where backups belong, other people's files,
-- forged and malformed manifests, future dates, names with newlines, a full disk. Driven
-- through the binary against the real cluster; checked with ls, stat, sha256sum, psql.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr

local db, template -- one real database and one repository holding one backup of it

local function backup_file(repo)
  for _, name in ipairs(util.listdir(repo .. "/daily")) do
    if name:match("^backup_.*%.sql%.gz$") then return repo .. "/daily/" .. name, name end
  end
end

-- A copy of the template repository, so each test damages its own.
local function fresh_repo()
  local repo = util.scratch("repo")
  util.sh("cp -a " .. q(template) .. "/. " .. q(repo))
  return repo, backup_file(repo)
end

-- Run with a timeout, so a hang is a failure and not a stuck suite.
local function run_bounded(seconds, args)
  return util.sh("timeout -s KILL " .. seconds .. " " .. q(util.bkr_bin()) .. " " .. args .. " 2>&1")
end

setup(function()
  db = util.new_database("trust", "create table t (x text); insert into t select md5(i::text) from generate_series(1, 2000) i;")
  template = util.scratch("template")
  local out, rc = run("backup --no-globals --repo " .. q(template) .. " --db " .. db)
  assert(rc == 0, out)
end)

describe("files that are not what their names say", function()
  it("a FIFO in place of a backup is damaged at once: verify --all exits 3 and does not hang", function()
    local repo, path = fresh_repo()
    os.remove(path)
    util.sh("mkfifo " .. q(path))
    local out, rc = run_bounded(20, "verify --all --repo " .. q(repo))
    assert.are.equal(3, rc, out)
    assert.matches("FAILED .*not a regular file", out)
    assert.matches("damaged", run("list --repo " .. q(repo)))
  end)

  it("a symlink in place of a backup is never read through, and rotation never removes it", function()
    local repo, path = fresh_repo()
    local target = util.scratch("elsewhere") .. "/real.sql.gz"
    util.sh("mv " .. q(path) .. " " .. q(target) .. " && ln -s " .. q(target) .. " " .. q(path))
    local out, rc = run("verify --all --repo " .. q(repo))
    assert.are.equal(3, rc, out)
    assert.matches("not a regular file", out)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "retention:\n  daily: 0\n")
    out, rc = run("rotate --config " .. q(cfg) .. " --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    assert.matches("left alone daily/.*not a regular file", out)
    assert.are.equal("link", util.sh("stat -c %F " .. q(path)):match("symbolic (link)"))
    assert.is_truthy(io.open(target), "the symlink's target is untouched")
  end)

  it("a symlinked manifest or sidecar is not read: the backup is damaged", function()
    for _, suffix in ipairs({ ".json", ".sha256" }) do
      local repo, path = fresh_repo()
      util.sh("mv " .. q(path .. suffix) .. " " .. q(path .. suffix .. ".real") .. " && ln -s "
        .. q(path .. suffix .. ".real") .. " " .. q(path .. suffix))
      local out, rc = run("verify --all --repo " .. q(repo))
      assert.are.equal(3, rc, out)
      assert.matches("not a regular file", out)
    end
  end)
end)

describe("a type directory that is a symlink", function()
  it("is never written to, read or rotated through: nothing outside the repository changes", function()
    local repo = fresh_repo()
    local outside = util.scratch("outside")
    util.sh("mv " .. q(repo .. "/daily") .. "/* " .. q(outside) .. " && rmdir " .. q(repo .. "/daily")
      .. " && ln -s " .. q(outside) .. " " .. q(repo .. "/daily"))
    local before = util.listdir(outside)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "retention:\n  daily: 0\n")
    local out, rc = run("rotate --config " .. q(cfg) .. " --repo " .. q(repo))
    assert.matches("daily is not a real directory", out)
    out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(1, rc, out)
    assert.matches("not a directory of its own", out)
    assert.are.same(before, util.listdir(outside))
  end)
end)

describe("other people's files in the repository", function()
  it("rotation removes none of them, and a directory with a backup's name does not make it fail", function()
    local repo = fresh_repo()
    local daily = repo .. "/daily/"
    util.write(daily .. "notes.txt", "the admin's")
    util.write(daily .. "prod.sql.gz.sha256", "0000  prod.sql.gz\n")
    util.write(daily .. "myexport.sql.gz.json", "{}")
    util.write(daily .. ".editor.tmp.swp", "x")
    util.sh("touch -d '3 days ago' " .. q(daily .. ".editor.tmp.swp"))
    util.sh("mkdir " .. q(daily .. "empty-dir") .. " " .. q(daily .. "backup_20200101_000000_x.sql.gz"))
    util.write(daily .. "backup_20200101_000000_x.sql.gz/inside", "keep")
    util.sh("ln -s /etc/hostname " .. q(daily .. "backup_20200102_000000_x.sql.gz"))
    local before = util.listdir(daily)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "retention:\n  daily: 5\n")
    local out, rc = run("rotate --config " .. q(cfg) .. " --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    assert.matches("left alone daily/backup_20200101_000000_x.sql.gz", out)
    assert.matches("left alone daily/backup_20200102_000000_x.sql.gz", out)
    assert.are.same(before, util.listdir(daily))
    -- and a backup still runs, with its rotation
    out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
  end)

  it("an orphan sidecar is removed only when it is provably bkr's", function()
    local repo, path, name = fresh_repo()
    util.sh("cp " .. q(path .. ".sha256") .. " " .. q(repo .. "/daily/own.keep"))
    os.remove(path) -- the backup is gone, its sidecars remain
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "retention:\n  daily: 5\n")
    local foreign = repo .. "/daily/backup_20200101_000000_x.sql.gz.sha256"
    util.write(foreign, "not a sha256sum line\n")
    local out, rc = run("rotate --config " .. q(cfg) .. " --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    assert.is_nil(io.open(path .. ".sha256"), "bkr's own orphan sidecar goes")
    assert.is_nil(io.open(path .. ".json"), "bkr's own orphan manifest goes")
    assert.is_truthy(io.open(foreign), "a sidecar that does not say it is bkr's stays")
    assert.matches(name, out)
  end)
end)

describe("malformed and forged manifests", function()
  local cases = {
    { "a JSON number", function() return 5 end },
    { "an array", function() return { 1, 2 } end },
    { "raw_bytes missing", function(m) m.raw_bytes = nil; return m end },
    { "raw_bytes absurd", function(m) m.raw_bytes = 1e300; return m end },
    { "tables of numbers", function(m) m.tables = { 5 }; return m end },
    { "a table without a name", function(m) m.tables[1].name = nil; return m end },
    { "a table without a digest", function(m) m.tables[1].digest = nil; return m end },
    { "database_properties a number", function(m) m.database_properties = 5; return m end },
    { "another database's manifest", function(m) m.database = "someone_else"; return m end },
    { "another file's manifest", function(m) m.file = "../../etc/passwd"; return m end },
    { "another type's manifest", function(m) m.type = "weekly"; return m end },
    { "an absurd compression level", function(m) m.compression.level = 99; return m end },
  }
  for _, case in ipairs(cases) do
    it("marks the backup damaged and never crashes: " .. case[1], function()
      local repo, path = fresh_repo()
      local manifest = json.decode(util.read(path .. ".json"))
      util.write(path .. ".json", json.encode(case[2](manifest)))
      local out, rc = run("list --repo " .. q(repo))
      assert.are.equal(0, rc, out)
      assert.matches("damaged", out)
      out, rc = run("verify --all --repo " .. q(repo))
      assert.are.equal(3, rc, out)
      assert.matches("FAILED .*manifest", out)
      assert.is_nil(out:find("%.lua:%d+"), "no Lua error: " .. out)
      out, rc = run("rotate --repo " .. q(repo))
      assert.are.equal(0, rc, out)
      local target = db .. "_m" .. math.random(1e6)
      out, rc = run("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. target .. " --create")
      assert.are.equal(3, rc, out)
      assert.are.equal("0", util.psql("select count(*) from pg_database where datname = '" .. target .. "'"))
      -- the next backup still runs, and so does its rotation
      out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
      assert.are.equal(0, rc, out)
    end)
  end

  it("lists a backup without its manifest as incomplete, and one with a bad manifest as damaged", function()
    local repo, path = fresh_repo()
    os.remove(path .. ".json")
    local row = json.decode((run("list --json --repo " .. q(repo))))[1]
    assert.are.equal("incomplete", row.verified)
    assert.matches("missing manifest", row.problem)
    util.write(path .. ".json", "{}")
    row = json.decode((run("list --json --repo " .. q(repo))))[1]
    assert.are.equal("damaged", row.verified)
  end)

  it("reports invalid JSON as invalid, not as a missing manifest; data after the JSON too", function()
    local repo, path = fresh_repo()
    util.write(path .. ".json", util.read(path .. ".json") .. "garbage")
    local gout, grc = run("verify --all --repo " .. q(repo))
    assert.are.equal(3, grc, gout)
    assert.matches("invalid JSON: data after the value", gout)
    util.write(path .. ".json", "{ not json")
    local out, rc = run("verify --all --repo " .. q(repo))
    assert.are.equal(3, rc, out)
    assert.matches("invalid JSON", out)
    assert.is_nil(out:find("missing manifest"))
  end)
end)

describe("future-dated backups", function()
  it("are flagged, never the newest for --latest or rotation, and never removed", function()
    local repo, path, name = fresh_repo()
    local future_name = name:gsub("^backup_%d+_%d+_", "backup_20991231_235959_")
    local future = repo .. "/daily/" .. future_name
    util.sh("cp " .. q(path) .. " " .. q(future))
    util.write(future .. ".sha256", util.sha256sum(future) .. "  " .. future_name .. "\n")
    local manifest = json.decode(util.read(path .. ".json"))
    manifest.file, manifest.start_time = future_name, "2099-12-31T23:59:59Z"
    util.write(future .. ".json", json.encode(manifest))
    local out = run("list --repo " .. q(repo))
    assert.matches("2099%-12%-31.*FUTURE", out)
    -- dated by its manifest alone, under a name of today: flagged just the same
    local sneaky_name = name:gsub("^backup_(%d+)_(%d+)_", "backup_%1_%2-9_")
    local sneaky = repo .. "/daily/" .. sneaky_name
    util.sh("cp " .. q(path) .. " " .. q(sneaky))
    util.write(sneaky .. ".sha256", util.sha256sum(sneaky) .. "  " .. sneaky_name .. "\n")
    local m2 = json.decode(util.read(path .. ".json"))
    m2.file, m2.start_time = sneaky_name, "2099-12-31T23:59:59Z"
    util.write(sneaky .. ".json", json.encode(m2))
    out = run("list --json --repo " .. q(repo))
    local flagged = 0
    for _, row in ipairs(json.decode(out)) do if row.future then flagged = flagged + 1 end end
    assert.are.equal(2, flagged, out)
    os.remove(sneaky); os.remove(sneaky .. ".sha256"); os.remove(sneaky .. ".json")
    out = run("verify --all --repo " .. q(repo))
    assert.matches("dated in the future", out)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "retention:\n  daily: 1\n")
    out = run("rotate --config " .. q(cfg) .. " --repo " .. q(repo))
    assert.is_truthy(io.open(path), "the real newest backup is kept: " .. out)
    assert.is_truthy(io.open(future), "the future-dated file is not bkr's to remove")
    local vout, vrc = run("verify --latest --repo " .. q(repo))
    assert.are.equal(0, vrc, vout)
    assert.matches(name, vout)
    assert.is_nil(vout:find(future_name, 1, true))
  end)
end)

describe("names and lists", function()
  it("a database listed twice is backed up once, and the run succeeds", function()
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    util.write(cfg, "repository: " .. repo .. "\ndatabases: [" .. db .. ", " .. db .. "]\n")
    util.sh("sleep 1")
    out, rc = run("backup --no-globals --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local n = 0
    for _, f in ipairs(util.listdir(repo .. "/daily")) do if f:match("%.sql%.gz$") then n = n + 1 end end
    assert.are.equal(2, n)
  end)

  it("a newline in a database name cannot split a line of list or backup output", function()
    local name = "evil\n2026-01-01T00:00:00Z  daily    forged " .. math.random(1e6)
    util.psql('create database "' .. name:gsub('"', '""') .. '"')
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. q(name))
    assert.are.equal(0, rc, out)
    assert.matches("backed up evil\\n2026", out, 1, true)
    local listing = run("list --repo " .. q(repo))
    local lines = select(2, listing:gsub("\n", ""))
    assert.are.equal(2, lines, listing) -- the header and one row
    assert.are.equal(name, json.decode(run("list --json --repo " .. q(repo)))[1].database)
  end)
end)

describe("names in the drill's Markdown report", function()
  it("cannot break its headings or tables: newlines and pipes are escaped", function()
    local name = "dr|ill\nname " .. math.random(1e6)
    util.psql('create database "' .. name .. '"')
    util.sh("psql -X -q -d " .. q("dbname='" .. name .. "'") .. " -c " .. q('create table "a|b\nc" (x int); insert into "a|b\nc" values (1)'))
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. q(name))
    assert.are.equal(0, rc, out)
    local report = util.scratch("report") .. "/drill"
    out, rc = run("drill --repo " .. q(repo) .. " --db " .. q(name) .. " --report " .. q(report))
    assert.are.equal(0, rc, out)
    local md = util.read(report .. ".md")
    assert.matches("## dr\\|ill\\nname", md)
    assert.matches("| public.a\\|b\\nc | 1 | yes |", md, 1, true)
    for line in md:gmatch("[^\n]+") do
      if line:sub(1, 1) == "|" then
        local cells = select(2, line:gsub("[^\\]|", "")) + 1
        assert.is_true(cells >= 4, line) -- every table row has all its columns on one line
      end
    end
  end)
end)

describe("a copy elsewhere", function()
  it("verifies under another name, by its sidecars and manifest", function()
    local repo, path = fresh_repo()
    local elsewhere = util.scratch("copy")
    util.sh("cp " .. q(path) .. " " .. q(elsewhere .. "/prod.sql.gz") .. " && cp " .. q(path .. ".sha256") .. " "
      .. q(elsewhere .. "/prod.sql.gz.sha256") .. " && cp " .. q(path .. ".json") .. " " .. q(elsewhere .. "/prod.sql.gz.json"))
    local out, rc = run("verify " .. q(elsewhere .. "/prod.sql.gz") .. " --no-record")
    assert.are.equal(0, rc, out)
    assert.matches("ok .*prod%.sql%.gz", out)
    util.flip_byte(elsewhere .. "/prod.sql.gz", 300)
    out, rc = run("verify " .. q(elsewhere .. "/prod.sql.gz") .. " --no-record")
    assert.are.equal(3, rc, out)
  end)
end)

describe("a full disk", function()
  it("rotate and verify still take the lock on a repository with no space left", function()
    local mnt = util.scratch("full")
    local _, mrc = util.sh("mount -t tmpfs -o size=2m tmpfs " .. q(mnt))
    assert.are.equal(0, mrc, "these tests run as root and mount a small tmpfs")
    finally(function() util.sh("umount " .. q(mnt)) end)
    util.sh("cp -a " .. q(template) .. "/. " .. q(mnt))
    util.write(mnt .. "/.lock", "")
    util.sh("dd if=/dev/zero of=" .. q(mnt .. "/filler") .. " bs=64k 2>/dev/null")
    assert.are.equal("0", util.sh("df --output=avail " .. q(mnt) .. " | tail -n 1"):match("%d+"))
    local out, rc = run("rotate --repo " .. q(mnt))
    assert.are.equal(0, rc, out)
    out, rc = run("verify --latest --no-record --repo " .. q(mnt))
    assert.are.equal(0, rc, out)
  end)
end)

describe("verdicts that cannot be recorded", function()
  it("make verify exit 1 and say so, on a full disk", function()
    local mnt = util.scratch("full")
    local _, mrc = util.sh("mount -t tmpfs -o size=2m tmpfs " .. q(mnt))
    assert.are.equal(0, mrc)
    finally(function() util.sh("umount " .. q(mnt)) end)
    util.sh("cp -a " .. q(template) .. "/. " .. q(mnt))
    util.sh("dd if=/dev/zero of=" .. q(mnt .. "/filler") .. " bs=64k 2>/dev/null")
    local out, rc = run("verify --latest --repo " .. q(mnt))
    assert.are.equal(1, rc, out)
    assert.matches("was not recorded", out)
    assert.matches("rotation will not know", out)
  end)

  it("are recorded under the lock for a PATH inside a repository: busy while another run holds it", function()
    local repo, path = fresh_repo()
    local out, rc = util.sh("flock -n " .. q(repo .. "/.lock") .. " " .. q(util.bkr_bin()) .. " verify " .. q(path) .. " 2>&1")
    assert.are.equal(1, rc, out)
    assert.matches("busy", out)
    out, rc = util.sh("flock -n " .. q(repo .. "/.lock") .. " " .. q(util.bkr_bin()) .. " verify --no-record " .. q(path) .. " 2>&1")
    assert.are.equal(0, rc, out)
  end)

  it("rotate --dry-run does not call a running backup's temporary file a leftover", function()
    local repo = fresh_repo()
    util.write(repo .. "/daily/.bkr-tmp.backup_x.sql.gz.Ab12Cd", "a live dump")
    local out = util.sh("flock -n " .. q(repo .. "/.lock") .. " " .. q(util.bkr_bin()) .. " rotate --dry-run --repo " .. q(repo) .. " 2>&1")
    assert.is_nil(out:find("Ab12Cd"), out)
    out = run("rotate --dry-run --repo " .. q(repo))
    assert.matches("would remove temporary file .*Ab12Cd", out)
  end)
end)

describe("the repository log", function()
  it("is created private: 0600, or 0640 when a backup group may read the repository; "
    .. "a world-readable one is tightened", function()
    local repo = util.scratch("repo")
    util.sh("chmod 0700 " .. q(repo))
    local out, rc = run("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.are.equal("600", util.sh("stat -c %a " .. q(repo .. "/bkr.log")):match("%d+"))
    local shared = util.scratch("repo")
    util.sh("chmod 0750 " .. q(shared))
    out, rc = run("backup --no-globals --repo " .. q(shared) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.are.equal("640", util.sh("stat -c %a " .. q(shared .. "/bkr.log")):match("%d+"))
    util.sh("chmod 0644 " .. q(repo .. "/bkr.log"))
    run("verify --latest --repo " .. q(repo))
    assert.are.equal("600", util.sh("stat -c %a " .. q(repo .. "/bkr.log")):match("%d+"))
  end)
end)

describe("a table locked by another session", function()
  it("fails that database's backup after lock_wait_seconds instead of waiting forever", function()
    local locked = util.new_database("locked", "create table t (x int);")
    local holder = util.scratch("lockholder")
    -- a session that holds an ACCESS EXCLUSIVE lock until it is killed
    -- (the subshell's own output goes elsewhere too, or util.sh would wait for it to end)
    local pid = util.sh("(echo 'begin; lock table t in access exclusive mode; select pg_sleep(60);' | psql -X -q -d "
      .. locked .. ") > /dev/null 2>&1 & echo $!"):gsub("%s", "")
    finally(function()
      -- the server would go on sleeping for the killed client: end that session too
      util.psql("select pg_terminate_backend(pid) from pg_stat_activity where datname = '" .. locked .. "'")
      util.sh("pkill -P " .. pid .. " 2>/dev/null; kill " .. pid .. " 2>/dev/null")
    end)
    local held = q("select count(*) from pg_locks l join pg_class c on c.oid = l.relation "
      .. "where c.relname = 't' and l.mode = 'AccessExclusiveLock'")
    util.sh("for i in $(seq 100); do [ \"$(psql -X -At -d " .. locked .. " -c " .. held .. ")\" = 1 ] && break; sleep 0.1; done")
    assert.are.equal("1", util.psql("select count(*) from pg_locks l join pg_class c on c.oid = l.relation "
      .. "where c.relname = 't' and l.mode = 'AccessExclusiveLock'", locked))
    local repo = util.scratch("repo")
    local cfg = holder .. "/bkr.yaml"
    util.write(cfg, "lock_wait_seconds: 1\n")
    local started = os.time()
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --repo " .. q(repo) .. " --db " .. locked)
    assert.are.equal(1, rc, out)
    assert.matches("lock", out)
    assert.is_true(os.time() - started < 30, "it gave up instead of waiting")
    assert.are.same({}, util.listdir(repo .. "/daily"))
  end)
end)

describe("a pg_dump that exits 0 with a cut-off dump", function()
  it("fails the backup and leaves nothing under a final name", function()
    -- everything but the marker line: complete data, and pg_dump's exit status 0
    local _, cfg = util.fake_pg_dump('"$REAL_PG_DUMP" "$@" | grep -v "^-- PostgreSQL database dump complete"\nexit 0')
    local repo = util.scratch("repo")
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(1, rc, out)
    assert.matches("completion marker", out)
    assert.are.same({}, util.listdir(repo .. "/daily"))
  end)
end)

describe("an interrupted backup", function()
  it("says it was interrupted, without a recipe path, and logs it", function()
    local bindir, cfg = util.fake_pg_dump('"$REAL_PG_DUMP" "$@" | head -c 20000\necho $$ > "$FAKEBIN/pid"\nexec sleep 30')
    local repo = util.scratch("repo")
    local log = util.scratch("out") .. "/out"
    local pid = util.sh(q(util.bkr_bin()) .. " backup --no-globals --config " .. q(cfg) .. " --repo " .. q(repo)
      .. " --db " .. db .. " > " .. q(log) .. " 2>&1 & echo $!"):gsub("%s", "")
    for _ = 1, 200 do
      if io.open(bindir .. "/pid") then break end
      util.sh("sleep 0.05")
    end
    util.sh("kill -TERM " .. pid)
    local _, rc = util.sh("wait_for() { while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done; }; wait_for")
    assert.are.equal(0, rc)
    local out = util.read(log)
    assert.matches("interrupted", out)
    assert.is_nil(out:find("%.lua:%d+"), out)
    assert.matches('"result":"interrupted"', util.read(repo .. "/bkr.log"))
  end)

  it("leaves nothing under a final name when SIGTERM lands as the files are put in place", function()
    -- strace delivers SIGTERM right after the chosen system call: the dump's link, the
    -- sidecar's rename, the manifest's rename (the last file of the backup)
    for _, point in ipairs({ "link:when=1", "rename:when=1", "rename:when=2" }) do
      local repo = util.scratch("repo")
      -- (LeakSanitizer cannot run under ptrace: the ASan build checks leaks everywhere else)
      local asan = (os.getenv("ASAN_OPTIONS") or "") .. ":detect_leaks=0"
      local out, rc = util.sh("ASAN_OPTIONS=" .. q(asan) .. " strace -f -o /dev/null -e trace=link,rename -e inject="
        .. point:gsub(":", ":signal=TERM:", 1) .. " " .. q(util.bkr_bin()) .. " backup --no-globals --repo " .. q(repo) .. " --db " .. db .. " 2>&1")
      assert.are.equal(143, rc, point .. ": " .. out)
      assert.matches("interrupted", out)
      assert.are.same({}, util.listdir(repo .. "/daily"), point)
      out, rc = run("verify --all --repo " .. q(repo))
      assert.are.equal(1, rc, out) -- nothing to verify: no damaged leftover
    end
  end)
end)

describe("a repository given as a URL", function()
  it("is refused with exit 2 by every command that cannot use it, and nothing is created under the working "
    .. "directory", function()
    local cwd = util.scratch("url-cwd")
    local cfg = cwd .. "/bkr.yaml"
    util.write(cfg, "repository: s3://bkr/from-config\n")
    for _, case in ipairs({
      { "backup --repo sftp://bkr/site1 --db postgres", "sftp://bkr/site1", "sftp" },
      { "backup --create-repo --repo file:///bkr/site1 --db postgres", "file:///bkr/site1", "file" },
      { "init --repo S3://bkr/site1", "S3://bkr/site1", "s3" },
      { "config backup --repo s3://bkr/site1", "s3://bkr/site1", "s3" },
      { "list --repo sftp://host/backups", "sftp://host/backups", "sftp" },
      { "verify --latest --repo file:///var/backups/bkr", "file:///var/backups/bkr", "file" },
      { "init --config " .. q(cfg), "s3://bkr/from-config", "s3" },
    }) do
      local out, rc = util.sh("cd " .. q(cwd) .. " && " .. q(util.bkr_bin()) .. " " .. case[1] .. " 2>&1")
      assert.are.equal(2, rc, case[1] .. ": " .. out)
      local said = case[3] == "s3" and "this command works on a local repository; an s3:// repository is used by "
        .. "bkr backup, restore, drill" or ("bkr does not support " .. case[3] .. ":// repositories")
      assert.matches("repository " .. case[2]:gsub("%p", "%%%0") .. ": " .. said:gsub("%p", "%%%0"), out)
    end
    -- backup, restore and drill use a bucket (s3_*_spec.lua): without credentials, exit 2
    for _, command in ipairs({ "backup --repo s3://bkr/site1 --db postgres", "restore --repo s3://bkr/site1 --db x --into y",
        "drill --repo s3://bkr/site1", "backup --config " .. q(cfg) .. " --db postgres" }) do
      local out, rc = util.sh("cd " .. q(cwd) .. " && env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "
        .. q(util.bkr_bin()) .. " " .. command .. " 2>&1")
      assert.are.equal(2, rc, command .. ": " .. out)
      assert.matches("s3: no access key", out, 1, true)
    end
    -- check's UNKNOWN (3): no verdict. It reads s3:// repositories (tests/check_s3_spec.lua);
    -- without credentials it says so, and makes no directory "s3:" either.
    local out, rc = util.sh("cd " .. q(cwd) .. " && env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "
      .. q(util.bkr_bin()) .. " check --repo s3://bkr/site1 2>&1")
    assert.are.equal(3, rc, out)
    assert.matches("^BKR UNKNOWN %- s3: no access key", out)
    out, rc = util.sh("cd " .. q(cwd) .. " && " .. q(util.bkr_bin()) .. " check --repo sftp://host/backups 2>&1")
    assert.are.equal(3, rc, out)
    assert.matches("repository sftp://host/backups: bkr does not support sftp:// repositories", out, 1, true)
    assert.are.same({ "bkr.yaml" }, util.listdir(cwd))
  end)
end)
