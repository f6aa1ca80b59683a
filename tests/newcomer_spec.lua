-- What a sysadmin new to bkr meets first: one operating user (postgres), root on postgres's
-- repository, files bkr may not read, messages without recipe positions, a repository or a
-- database that does not exist, verdicts that a weaker verify must not downgrade, globals
-- verified with their run. The suite runs as root; bkr runs as postgres through runuser.
-- Results are checked with find, stat, ls and the files themselves.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr

local source = os.getenv("BKR_SOURCE_DIR") or "."

-- bkr as the postgres user (peer authentication, the documented operating user).
local function as_postgres(args)
  return util.sh("runuser -u postgres -- " .. q(util.bkr_bin()) .. " " .. args .. " 2>&1")
end

-- A scratch directory postgres may enter, and a repository in it owned by postgres (bkr init).
local function postgres_repo()
  local dir = util.scratch("newcomer")
  local repo = dir .. "/repo"
  local out, rc = run("init --repo " .. q(repo) .. " --owner postgres")
  assert(rc == 0, out)
  return repo, dir
end

local function new_database(sql)
  return util.new_database("nc", sql or "create table t (x int); insert into t select generate_series(1, 100);")
end

-- Paths under dir (relative) not owned by user:group, sorted; "" when none.
local function not_owned_by(dir, user)
  return (util.sh("cd " .. q(dir) .. " && find . \\( ! -user " .. user .. " -o ! -group " .. user .. " \\) | sort"))
end

local function manifest_of(path)
  return json.decode(util.read(path .. ".json"))
end

local function no_position(out)
  assert.is_nil(out:find("%.lua:%d+"), "a message names a recipe line: " .. out)
  assert.not_matches("traceback", out)
end

describe("one operating user", function()
  it("README's daily-use commands run as postgres; its two set-up commands stay make demo and make test", function()
    local readme = util.read(source .. "/README.md")
    local setup = readme:match("## Set%-up[^\n]*\n+```sh\n(.-)```")
    assert.is_truthy(setup)
    local commands = {}
    for line in setup:gmatch("[^\n]+") do commands[#commands + 1] = line:match("^(%S+ %S+)") end
    assert.are.same({ "make demo", "make test" }, commands)
    local daily = readme:match("## Daily use[^\n]*\n.-```sh\n(.-)```")
    assert.is_truthy(daily)
    local count = 0
    for line in daily:gmatch("[^\n]+") do
      count = count + 1
      local command = line:gsub("%s+#.*$", "")
      if command ~= "bkr --help" then
        local as_postgres_user = command:match("^sudo %-u postgres bkr ")
        local setup_as_root = command:match("^sudo bkr %a+ .*%-%-owner postgres$")
          -- writing the system's scheduler entries (/etc/systemd/system) is root's
          or command:match("^sudo bkr schedule install ")
        assert.is_truthy(as_postgres_user or setup_as_root, "not run as postgres: " .. line)
      end
    end
    assert.is_true(count >= 10)
    -- every bkr command named there is one bkr has
    for recipe in daily:gmatch("bkr (%a+)") do
      if recipe ~= "config" then assert.is_truthy(io.open(source .. "/recipes/" .. recipe .. ".lua"), recipe) end
    end
  end)
end)

describe("root on a repository owned by postgres", function()
  it("says so once, and everything it creates there belongs to postgres, so postgres can read it all", function()
    local db = new_database()
    local repo, dir = postgres_repo()
    local key = dir .. "/backup.key"
    local out, rc = run("keygen --out " .. q(key) .. " --owner postgres")
    assert.are.equal(0, rc, out)
    assert.are.equal("postgres:postgres 600", (util.sh("stat -c '%U:%G %a' " .. q(key)):gsub("\n", "")))
    util.write(dir .. "/app.env", "DB_PASSWORD=x\n")

    out, rc = run("backup --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local _, warnings = out:gsub("bkr: running as root on a repository owned by postgres: files will be owned by postgres\n", "")
    assert.are.equal(1, warnings, out)
    assert.are.equal(0, select(2, run("backup --type weekly --repo " .. q(repo) .. " --db " .. db
      .. " --key-file " .. q(key))))
    out, rc = run("verify --all --repo " .. q(repo) .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
    assert.are.equal(0, select(2, run("config backup " .. q(dir .. "/app.env") .. " --repo " .. q(repo)
      .. " --key-file " .. q(key))))
    out, rc = run("drill --repo " .. q(repo) .. " --db " .. db .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
    assert.are.equal(0, select(2, run("rotate --dry-run --repo " .. q(repo))))

    -- backups, sidecars, manifests, type directories, config backups, drill reports, the
    -- log and the lock: all postgres's
    assert.are.equal("", not_owned_by(repo, "postgres"))
    for _, path in ipairs({ "bkr.log", ".lock", "daily", "weekly", "monthly", "config", "drills" }) do
      assert.is_truthy(util.sh("ls -a " .. q(repo)):find("\n" .. path:gsub("%p", "%%%0") .. "\n", 1),
        path .. " was created")
    end
    assert.matches("%.sql%.gz%.enc%.json", util.sh("ls " .. q(repo .. "/weekly")))
    assert.matches("drill_.*%.md", util.sh("ls " .. q(repo .. "/drills")))

    -- and postgres can work with all of it
    out, rc = as_postgres("verify --all --repo " .. q(repo) .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
    out, rc = as_postgres("list --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    assert.not_matches("unreadable", out)
    out, rc = as_postgres("config verify --all --repo " .. q(repo) .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
  end)

  it("never follows a symlink postgres put at REPO/drills or REPO/config: a root run writes nothing there", function()
    local db = new_database()
    local repo, dir = postgres_repo()
    local out, rc = as_postgres("backup --no-globals --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local elsewhere = dir .. "/root-only"
    util.sh("mkdir -m 0700 " .. q(elsewhere))
    util.sh("ln -s " .. q(elsewhere) .. " " .. q(repo .. "/drills") .. " && ln -s " .. q(elsewhere) .. " "
      .. q(repo .. "/config"))
    out, rc = run("drill --repo " .. q(repo) .. " --db " .. db)
    assert.are.equal(1, rc, out)
    assert.matches("/drills is not a directory of its own %(a symlink%?%)", out)
    local key = dir .. "/k.key"
    util.write(dir .. "/app.env", "DB_PASSWORD=x\n")
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    out, rc = run("config backup " .. q(dir .. "/app.env") .. " --repo " .. q(repo) .. " --key-file " .. q(key))
    assert.are.equal(1, rc, out)
    assert.matches("/config is not a directory of its own %(a symlink%?%)", out)
    assert.are.equal("", util.sh("ls -A " .. q(elsewhere)))
  end)

  it("keygen as root without --owner warns that postgres cannot read the key, with the fix", function()
    local dir = util.scratch("newcomer")
    local out, rc = run("keygen --out " .. q(dir .. "/root.key"))
    assert.are.equal(0, rc, out)
    assert.matches("bkr keygen: [^\n]*root%.key belongs to root %(mode 0600%): bkr run as postgres cannot read it; "
      .. "fix: chown postgres: [^\n]*root%.key", out)
    out, rc = run("keygen --out " .. q(dir .. "/x.key") .. " --owner no_such_user_here")
    assert.are.equal(2, rc, out)
    assert.is_nil(io.open(dir .. "/x.key"))
  end)
end)

describe("a file bkr cannot read", function()
  -- A repository postgres owns whose files root wrote (as bkr before 0.3 did, run as root).
  local function tainted_repo()
    local db = new_database()
    local repo, dir = postgres_repo()
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db)
    assert(rc == 0, out)
    util.write(dir .. "/app.env", "DB_PASSWORD=x\n")
    local key = dir .. "/backup.key"
    assert(select(2, run("keygen --out " .. q(key) .. " --owner postgres")) == 0)
    assert(select(2, run("config backup " .. q(dir .. "/app.env") .. " --repo " .. q(repo) .. " --key-file " .. q(key))) == 0)
    util.sh("chown -R root:root " .. q(repo) .. " && chown postgres:postgres " .. q(repo))
    local file = util.sh("ls " .. q(repo .. "/daily") .. " | grep '_" .. db .. ".sql.gz$'"):gsub("\n", "")
    return repo, db, key, repo .. "/daily/" .. file
  end

  it("is a permission problem: exit 1 with the owner, the mode, bkr's user and the fix, never FAILED or exit 3", function()
    local repo, db, key = tainted_repo()
    -- the type directories may be read, their files not
    util.sh("cd " .. q(repo) .. " && chmod 0755 daily weekly monthly")
    util.sh("chown postgres:postgres " .. q(repo .. "/.lock") .. " " .. q(repo .. "/bkr.log"))
    local line = "^bkr: cannot read " .. repo:gsub("%p", "%%%0") .. "/daily/[^\n]+: owned by root, mode 0600, "
      .. "bkr runs as postgres; fix: sudo chown %-R postgres: " .. repo:gsub("%p", "%%%0") .. "\n$"
    for _, args in ipairs({
      "verify --repo " .. q(repo),
      "verify --all --no-record --repo " .. q(repo),
      "restore --repo " .. q(repo) .. " --db " .. db .. " --into " .. db .. "_r --create",
      "drill --repo " .. q(repo),
      "rotate --repo " .. q(repo),
    }) do
      local out, rc = as_postgres(args)
      assert.are.equal(1, rc, args .. ": " .. out)
      assert.matches(line, out)
      assert.not_matches("FAILED", out)
      no_position(out)
    end
    -- list shows it "unreadable", not "incomplete", then says why (exit 1)
    local out, rc = as_postgres("list --repo " .. q(repo))
    assert.are.equal(1, rc, out)
    assert.matches("\n[^\n]*" .. db .. "[^\n]* unreadable ", out)
    assert.not_matches("incomplete", out)
    assert.matches("\nbkr: cannot read [^\n]+: owned by root, mode 0600, bkr runs as postgres; fix: sudo chown %-R postgres: ", out)
    local rows = json.decode(util.sh("runuser -u postgres -- " .. q(util.bkr_bin()) .. " list --json --repo " .. q(repo)
      .. " 2>/dev/null"))
    assert.are.equal("unreadable", rows[1].verified)
    -- a directory bkr may not read is one too
    util.sh("chmod 0750 " .. q(repo .. "/daily"))
    out, rc = as_postgres("list --repo " .. q(repo))
    assert.are.equal(1, rc, out)
    assert.matches("^bkr: cannot read " .. repo:gsub("%p", "%%%0") .. "/daily: owned by root, mode 0750, "
      .. "bkr runs as postgres; fix: sudo chown %-R postgres: ", out)
    -- the lock, for the commands that take it
    util.sh("chmod 0755 " .. q(repo .. "/daily") .. " && chown root:root " .. q(repo .. "/.lock"))
    out, rc = as_postgres("verify --repo " .. q(repo))
    assert.are.equal(1, rc, out)
    assert.matches("^bkr: cannot write " .. repo:gsub("%p", "%%%0") .. "/%.lock: owned by root, mode 0644, ", out)
    -- the config commands
    for _, args in ipairs({ "config list --repo " .. q(repo), "config verify --repo " .. q(repo),
        "config restore --latest --to " .. q(repo .. "-out") .. " --repo " .. q(repo) .. " --key-file " .. q(key) }) do
      out, rc = as_postgres(args)
      assert.are.equal(1, rc, args .. ": " .. out)
      assert.matches("bkr: cannot read " .. repo:gsub("%p", "%%%0") .. "/config[^\n]*: owned by root, mode 0%d%d%d, "
        .. "bkr runs as postgres; fix: sudo chown %-R postgres: ", out)
      no_position(out)
    end
    -- and the fix fixes it
    util.sh("chown -R postgres:postgres " .. q(repo))
    out, rc = as_postgres("verify --repo " .. q(repo))
    assert.are.equal(0, rc, out)
  end)

  it("a key file bkr cannot read names its path once, with the fix", function()
    local dir = util.scratch("newcomer")
    local key = dir .. "/root.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    local repo = postgres_repo()
    local out, rc = as_postgres("backup --repo " .. q(repo) .. " --db postgres --key-file " .. q(key))
    assert.are.equal(1, rc, out)
    assert.are.equal("bkr: cannot read " .. key .. ": owned by root, mode 0600, bkr runs as postgres; fix: sudo chown "
      .. "postgres: " .. key .. "\n", out)
  end)

  it("a configuration in a directory bkr may not enter is a permission problem, never 'no such file'; another "
    .. "user's repository is that user's to use: the fix is to run bkr as that user", function()
    local repo, dir = postgres_repo()
    local etc = dir .. "/etc-bkr"
    util.sh("mkdir " .. q(etc) .. " && chown postgres: " .. q(etc) .. " && chmod 0700 " .. q(etc))
    util.write(etc .. "/bkr.yaml", "repository: " .. repo .. "\n")
    local monitor = "runuser -u nobody -- " .. q(util.bkr_bin())
    local out, rc = util.sh(monitor .. " list --config " .. q(etc .. "/bkr.yaml") .. " 2>&1")
    assert.are.equal(2, rc, out)
    assert.are.equal("bkr: configuration: cannot read " .. etc .. "/bkr.yaml: its directory " .. etc .. " is owned by "
      .. "postgres, mode 0700, bkr runs as nobody; fix: run bkr as postgres (sudo -u postgres bkr ...)\n", out)
    out, rc = util.sh(monitor .. " check --config " .. q(etc .. "/bkr.yaml") .. " 2>&1")
    assert.are.equal(3, rc, out)
    assert.matches("^BKR UNKNOWN %- configuration: cannot read ", out)
    -- creating a repository where bkr's user may not: the fix is root making it for that user
    out, rc = as_postgres("init --repo " .. q(etc .. "x/sub/repo"))
    assert.are_not.equal(0, rc, out)
    out, rc = as_postgres("init --repo /var/lib/bkr-no-such-" .. math.random(1e6))
    assert.are.equal(1, rc, out)
    assert.matches("fix: sudo bkr init %-%-repo /var/lib/bkr%-no%-such%-%d+ %-%-owner postgres\n$", out)
  end)

  it("root with no role configured is told to run bkr as postgres when the server refuses role root", function()
    local repo = postgres_repo()
    local out, rc = util.sh("env -u PGUSER " .. q(util.bkr_bin()) .. " backup --repo " .. q(repo) .. " 2>&1")
    assert.are.equal(1, rc, out)
    assert.matches('role "root" does not exist', out, 1, true)
    assert.matches("(bkr runs as root and so connects as role root: run it as postgres, sudo -u postgres bkr ..., "
      .. "or set connection.user)", out, 1, true)
    -- with a role given, no such words
    out = util.sh("PGUSER=nobody_here " .. q(util.bkr_bin()) .. " backup --repo " .. q(repo) .. " 2>&1")
    assert.is_nil(out:find("connects as role root", 1, true))
  end)

  it("an application's file only root may read is named with the fix that leaves it the application's: an ACL", function()
    local repo, dir = postgres_repo()
    local key = dir .. "/pg.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key) .. " --owner postgres")))
    for _, name in ipairs({ "app.yaml", "notes.txt" }) do -- sealed field by field, and copied whole
      local file = dir .. "/" .. name
      util.write(file, "password: s3cret\n")
      util.sh("chmod 0600 " .. q(file))
      local out, rc = as_postgres("config backup " .. q(file) .. " --repo " .. q(repo) .. " --key-file " .. q(key))
      assert.are.equal(1, rc, out)
      assert.are.equal("bkr: config backup failed, nothing written: cannot read " .. file .. ": owned by root, "
        .. "mode 0600, bkr runs as postgres; fix: sudo setfacl -m u:postgres:r " .. file .. " (docs/config-backup.md)\n", out)
      -- the fix works, and changes nothing for the file's owner
      util.sh("setfacl -m u:postgres:r " .. q(file))
      out, rc = as_postgres("config backup " .. q(file) .. " --repo " .. q(repo) .. " --key-file " .. q(key))
      assert.are.equal(0, rc, out)
      -- (with an ACL, ls and stat show the ACL mask as the group bits; the group itself keeps none)
      assert.are.equal("root\n", util.sh("stat -c '%U' " .. q(file)))
      assert.matches("\ngroup::%-%-%-\n", util.sh("getfacl -p " .. q(file)))
    end
    -- restored, the files are 0600 as the application had them, not 0640 (the ACL's mask as
    -- group bits would give the group the secrets), and the restore says the ACL is not back
    local out, rc = run("config restore --latest --to " .. q(dir .. "/restored") .. " --repo " .. q(repo)
      .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
    assert.are.equal("600\n", util.sh("stat -c '%a' " .. q(dir .. "/restored" .. dir .. "/notes.txt")))
    assert.matches("notes%.txt had a POSIX ACL when it was backed up; it is restored without it: set it again", out)
  end)
end)

describe("messages", function()
  it("never show a recipe's file and line without --debug; --debug keeps them", function()
    local repo = postgres_repo()
    util.sh("mkdir -p " .. q(repo .. "/config") .. " && chmod 0700 " .. q(repo .. "/config")
      .. " && chown postgres:postgres " .. q(repo .. "/config"))
    local out, rc = as_postgres("config list --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    util.sh("chown root:root " .. q(repo .. "/config"))
    out, rc = as_postgres("config list --repo " .. q(repo))
    assert.are.equal(1, rc, out)
    assert.matches("^bkr: cannot read [^\n]+/config: owned by root, mode 0700", out)
    no_position(out)
    -- an error raised by Lua itself in a recipe: shadow a library with a failing one
    local custom = util.scratch("recipes")
    util.sh("mkdir -p " .. q(custom .. "/lib"))
    util.write(custom .. "/lib/retention.lua", "local r = {}\nfunction r.keep() error('policy went wrong') end\n"
      .. "function r.plan() r.keep() end\nreturn r\n")
    out, rc = util.bkr("rotate --repo " .. q(repo), "BKR_RECIPE_PATH=" .. q(custom))
    assert.are.equal(1, rc, out)
    assert.matches("bkr: policy went wrong\n$", out)
    no_position(out)
    out, rc = util.bkr("--debug rotate --repo " .. q(repo), "BKR_RECIPE_PATH=" .. q(custom))
    assert.are.equal(1, rc, out)
    assert.matches("retention%.lua:2: policy went wrong", out)
    assert.matches("stack traceback", out)
  end)
end)

describe("a repository that does not exist", function()
  it("is an error for every command, naming the path and how to create one; nothing is created", function()
    local dir = util.scratch("newcomer")
    local typo = dir .. "/typo"
    local db = new_database()
    util.write(dir .. "/f.yaml", "a: 1\n")
    for _, args in ipairs({
      "list", "list --json", "verify", "verify --all", "rotate", "rotate --dry-run", "drill",
      "restore --db " .. db .. " --into x --create", "backup --db " .. db, "config list", "config verify",
      "config verify --all", "config restore --latest --to " .. q(dir .. "/out"),
      "config backup " .. q(dir .. "/f.yaml") .. " --key-file /nonexistent",
    }) do
      local out, rc = run(args .. " --repo " .. q(typo))
      assert.are.equal(2, rc, args .. ": " .. out)
      assert.are.equal("bkr: no repository at " .. typo .. " (create one with: bkr init --repo " .. typo .. ")\n", out)
    end
    assert.are.same({ "f.yaml" }, util.listdir(dir))
  end)

  it("bkr init creates it 0750 for the invoking user (or --owner), and says so when it exists already", function()
    local dir = util.scratch("newcomer")
    local out, rc = run("init --repo " .. q(dir .. "/a/b/repo"))
    assert.are.equal(0, rc, out)
    assert.matches("created the repository [^\n]*/a/b/repo %(mode 0750, owner root%)", out)
    assert.are.equal("root:root 750", (util.sh("stat -c '%U:%G %a' " .. q(dir .. "/a/b/repo")):gsub("\n", "")))
    assert.are.same({}, util.listdir(dir .. "/a/b/repo"))
    out, rc = run("init --repo " .. q(dir .. "/a/b/repo"))
    assert.are.equal(0, rc, out)
    assert.matches("is already a repository %(owner root, mode 0750%): nothing to do", out)
    util.write(dir .. "/bkr.yaml", "repository: " .. dir .. "/pg\n")
    out, rc = run("init --config " .. q(dir .. "/bkr.yaml") .. " --owner postgres")
    assert.are.equal(0, rc, out)
    assert.are.equal("postgres:postgres 750", (util.sh("stat -c '%U:%G %a' " .. q(dir .. "/pg")):gsub("\n", "")))
    out, rc = as_postgres("init --repo " .. q(dir .. "/pg/other") .. " --owner root")
    assert.are.equal(2, rc, out)
    out, rc = run("init --help")
    assert.are.equal(0, rc, out)
    assert.matches("exit codes: 0", out)
  end)

  it("backup --create-repo creates it; drill --repo TYPO writes no report", function()
    local db = new_database()
    local dir = util.scratch("newcomer")
    local out, rc = run("backup --no-globals --create-repo --repo " .. q(dir .. "/new") .. " --db " .. db)
    assert.are.equal(0, rc, out)
    assert.matches("created the repository [^\n]*/new\n", out)
    assert.are.equal(1, #util.backups_of(dir .. "/new", db))
    out, rc = run("drill --repo " .. q(dir .. "/typo") .. " --db " .. db)
    assert.are.equal(2, rc, out)
    assert.is_nil(io.open(dir .. "/typo"))
  end)
end)

describe("a --db that matches nothing", function()
  it("is exit 2 for list, verify, restore and drill, naming the databases that have backups", function()
    local a, b = new_database(), new_database()
    local repo = util.scratch("repo")
    assert.are.equal(0, select(2, run("backup --no-globals --repo " .. q(repo) .. " --db " .. a .. " --db " .. b)))
    local names = { a, b }
    table.sort(names)
    local expected = "bkr: no backups of typo in " .. repo .. "; databases with backups: " .. table.concat(names, ", ") .. "\n"
    for _, args in ipairs({ "list --db typo", "list --json --db typo", "verify --db typo", "verify --all --db typo",
        "restore --db typo --into x --create", "restore --db typo --dry-run", "drill --db typo" }) do
      local out, rc = run(args .. " --repo " .. q(repo))
      assert.are.equal(2, rc, args .. ": " .. out)
      assert.are.equal(expected, out)
    end
  end)

  it("backup --db for a database not on the server writes nothing, not even the globals, exit 2", function()
    local repo = util.scratch("repo")
    local good = new_database()
    local out, rc = run("backup --repo " .. q(repo) .. " --db typo_nc --db " .. good)
    assert.are.equal(2, rc, out)
    assert.matches("^bkr: backup: no database typo_nc on the server; its databases: [^\n]*" .. good, out)
    assert.matches("its databases: [^\n]*postgres", out)
    assert.are.equal("", util.tree(repo))
  end)
end)

describe("verdicts", function()
  it("a checksum-only verify keeps a recorded 'passed', rotation still protects it; a failure overrides", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local key = util.scratch("key") .. "/backup.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    assert.are.equal(0, select(2, run("backup --no-globals --repo " .. q(repo) .. " --db " .. db .. " --key-file " .. q(key))))
    local path = repo .. "/daily/" .. util.sh("ls " .. q(repo .. "/daily") .. " | grep 'enc$'"):gsub("\n", "")
    local out, rc = run("verify --repo " .. q(repo) .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
    local passed = manifest_of(path).verification
    assert.are.equal("passed", passed.result)
    util.sh("sleep 1.1")
    out, rc = run("verify --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    assert.matches("checksum only: no key to authenticate the chunks; it passed in full at " .. passed.time, out, 1, true)
    local v = manifest_of(path).verification
    assert.are.equal("passed", v.result)
    assert.are.equal(passed.time, v.time)
    assert.is_truthy(v.checksum_only_time)
    assert.is_true(v.checksum_only_time > passed.time)
    assert.matches("passed", run("list --repo " .. q(repo)))
    -- newer backups and retention 0: the passed one is still kept as the newest verified
    util.sh("sleep 1.1")
    assert.are.equal(0, select(2, run("backup --no-globals --no-rotate --repo " .. q(repo) .. " --db " .. db)))
    local cfg = util.scratch("cfg") .. "/bkr.lua"
    util.write(cfg, "return { retention = { daily = 0, weekly = 0, monthly = 0 } }\n")
    out, rc = run("rotate --repo " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.is_truthy(io.open(path), out)
    -- a later failure always counts
    util.flip_byte(path, 40)
    out, rc = run("verify --all --repo " .. q(repo))
    assert.are.equal(3, rc, out)
    assert.are.equal("failed", manifest_of(path).verification.result)
  end)

  it("verify --latest verifies the globals of the same run, so rotation keeps the newest verified globals", function()
    local db = new_database()
    local repo = util.scratch("repo")
    assert.are.equal(0, select(2, run("backup --repo " .. q(repo) .. " --db " .. db)))
    local out, rc = run("verify --latest --repo " .. q(repo))
    assert.are.equal(0, rc, out)
    assert.matches("ok +daily/globals_", out)
    local globals = util.sh("ls " .. q(repo .. "/daily") .. " | grep '^globals_.*gz$'"):gsub("\n", "")
    assert.are.equal("passed", manifest_of(repo .. "/daily/" .. globals).verification.result)
    -- list still hides globals unless asked
    assert.not_matches("globals", run("list --repo " .. q(repo)))
    util.sh("sleep 1.1")
    assert.are.equal(0, select(2, run("backup --no-rotate --repo " .. q(repo) .. " --db " .. db)))
    local cfg = util.scratch("cfg") .. "/bkr.lua"
    util.write(cfg, "return { retention = { daily = 0, weekly = 0, monthly = 0 } }\n")
    out, rc = run("rotate --repo " .. q(repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.is_truthy(io.open(repo .. "/daily/" .. globals), out)
    -- --db verifies that database's newest backup and its run's globals too
    out = run("verify --latest --repo " .. q(repo) .. " --db " .. db)
    assert.matches("ok +daily/backup_", out)
    assert.matches("ok +daily/globals_", out)
  end)
end)
