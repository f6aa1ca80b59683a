-- docs/RECOVERY_GUIDE.md, run for real, so that the guide cannot rot; and the integrator's
-- example step of docs/drill.md.
--
-- Every ```sh block of the guide is run against the throwaway cluster, procedure by procedure
-- ("## N. Title"), in order:
--   * the first block of a procedure is its settings (only NAME=value lines and comments); the
--     test replaces it with test values, and fails when the guide has a setting the test
--     does not give a value (it could point at the real /var/backups or /) or the other way;
--   * every later block runs in a fresh `bash -euo pipefail`, in a scratch directory, after the
--     settings, with `bkr` on the PATH resolving to $BKR_BIN;
--   * a block must exit 0, or the code its marker `<!-- test: expect exit N -->` gives;
--   * a block marked `<!-- test: diagnostic (reason) -->` only reads the machine (kernel log,
--     mount table): it runs, and any exit status but a missing command (126, 127) is accepted;
--   * a block marked `<!-- test: skip (reason) -->` is not run (packages, systemd, off-site
--     copies); the exact list of skipped blocks is asserted below.
-- Each procedure has a scenario here: the situation it is for (a database with data and
-- backups, a bad change, a corrupted backup, a lost server...), and checks of the outcome with
-- psql and coreutils. To see the test catch a broken guide without touching the real one, point
-- BKR_RECOVERY_GUIDE (or BKR_DRILL_DOC) at an edited copy.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote

local SOURCE = os.getenv("BKR_SOURCE_DIR") or "."
local GUIDE = os.getenv("BKR_RECOVERY_GUIDE") or (SOURCE .. "/docs/RECOVERY_GUIDE.md")
local DRILL_DOC = os.getenv("BKR_DRILL_DOC") or (SOURCE .. "/docs/drill.md")
local BKR = util.bkr_bin()

-- The blocks that cannot run in a test, as "procedure: reason", in the guide's order.
local EXPECTED_SKIPS = {
  "4: installs packages and builds bkr",
  "4: copies from off-site storage",
  "4: changes /etc/postgresql and restarts the PostgreSQL service",
  "4: enables systemd timers",
}

-- ------------------------------------------------------------------ reading the markdown

local markdown = require "support.markdown"
local parse, sh_blocks = markdown.parse, markdown.sh_blocks

-- The NAME=value assignments of a settings block, or nil when it holds anything else.
local function settings_names(block)
  local names = {}
  for line in block.code:gmatch("[^\n]+") do
    if not line:match("^%s*#") and not line:match("^%s*$") then
      local name = line:match("^%s*([A-Z_][A-Z0-9_]*)=")
      if not name then return nil end
      names[#names + 1] = name
    end
  end
  table.sort(names)
  return names
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

-- ------------------------------------------------------------------ the cluster and bkr

local function bkr(args, env)
  local out, rc = util.sh((env or "") .. " " .. q(BKR) .. " " .. args .. " 2>&1")
  assert(rc == 0, "bkr " .. args .. " exited " .. tostring(rc) .. ":\n" .. out)
  return out
end

local function suffix()
  return tostring(math.random(1e6))
end

local function sql(db, text)
  local file = util.scratch("sql") .. "/setup.sql"
  util.write(file, text)
  local out, rc = util.sh("psql -X -q -v ON_ERROR_STOP=1 -d " .. q(db) .. " -f " .. q(file) .. " 2>&1")
  assert(rc == 0, out)
end

local function new_database(name, setup)
  util.psql("create database " .. name)
  if setup then sql(name, setup) end
  return name
end

local function database_exists(name)
  return util.psql("select count(*) from pg_database where datname = '" .. name .. "'") == "1"
end

local function role_exists(name)
  return util.psql("select count(*) from pg_roles where rolname = '" .. name .. "'") == "1"
end

-- A configuration file for a scenario, in YAML.
local function write_config(path, text)
  util.sh("mkdir -p " .. q(path:match("^(.*)/[^/]+$")))
  util.write(path, text)
  return path
end

local function keygen(path)
  bkr("keygen --out " .. q(path))
  return path
end

-- The backup files of db (newest last), relative to the repository's daily directory.
local function backup_files(repo, db, encrypted)
  local out = util.sh("ls -1 " .. q(repo .. "/daily") .. " 2>/dev/null")
  local list = {}
  local pattern = "^backup_(%d+_%d+)%-?(%d*)_" .. db:gsub("%p", "%%%0") .. "%.sql%.gz" .. (encrypted and "%.enc" or "") .. "$"
  local order = {}
  for name in out:gmatch("[^\n]+") do
    local second, sequence = name:match(pattern)
    if second then
      list[#list + 1] = name
      order[name] = string.format("%s_%06d", second, tonumber(sequence) or 1)
    end
  end
  -- oldest first; two runs in one second are -2, -3... after the plain name
  table.sort(list, function(a, b) return order[a] < order[b] end)
  return list
end

local function corrupt(path)
  util.flip_byte(path, 200)
end

-- A directory holding `bkr`, a link to the binary under test, to put first on the PATH.
local bin_dir
local function bkr_on_path()
  if not bin_dir then
    bin_dir = util.scratch("bin")
    local target = BKR:sub(1, 1) == "/" and BKR or (util.sh("pwd"):gsub("\n", "") .. "/" .. BKR)
    util.sh("ln -s " .. q(target) .. " " .. q(bin_dir .. "/bkr"))
  end
  return bin_dir
end

-- ------------------------------------------------------------------ running a procedure

local guide = parse(util.read(GUIDE))

-- Commands that change the machine running the tests: a block holding one must be marked skip.
local NEVER_RUN = { "apt%-get", "dpkg", "systemctl", "make install", "rsync", "%-%-to /%s", "%-%-to /$" }

-- "procedure: reason" of every skipped block, in the guide's order.
local function skipped_blocks()
  local list = {}
  for _, section in ipairs(guide.sections) do
    for _, block in ipairs(section.blocks) do
      if block.lang == "sh" and block.skip then list[#list + 1] = tostring(section.number) .. ": " .. block.skip end
    end
  end
  return list
end

local function procedure(number)
  for _, section in ipairs(guide.sections) do
    if section.number == number then return section end
  end
  error("the guide has no procedure " .. number)
end

-- Run every sh block of procedure `number` with the settings replaced by `values`.
-- hooks[i] runs before the procedure's i-th sh block (the settings block is 1).
-- Returns the output of each block that ran, by index.
local function run_procedure(number, values, hooks)
  -- A marker gone would run apt-get or systemctl here: check the skips before anything runs.
  assert.are.same(EXPECTED_SKIPS, skipped_blocks(), "the guide's skipped blocks changed: no procedure is run")
  local section = procedure(number)
  local blocks = sh_blocks(section)
  assert(#blocks >= 2, "procedure " .. number .. " has no commands after its settings")
  local names = settings_names(blocks[1])
  assert(names, "procedure " .. number .. ": its first sh block (line " .. blocks[1].line
    .. ") must hold only NAME=value settings")
  assert.are.same(names, sorted_keys(values),
    "procedure " .. number .. ": the settings in the guide and the test values in this spec differ")

  local work = util.scratch("proc" .. number)
  local prelude = { "cd " .. q(work) }
  for _, name in ipairs(names) do prelude[#prelude + 1] = name .. "=" .. q(values[name]) end
  prelude = table.concat(prelude, "\n") .. "\n"
  local path = bkr_on_path() .. ":" .. os.getenv("PATH")

  local outputs = {}
  for i = 2, #blocks do
    local block = blocks[i]
    if hooks and hooks[i] then hooks[i](outputs) end
    if not block.skip then
      for _, pattern in ipairs(NEVER_RUN) do
        assert(not block.code:find(pattern), string.format("procedure %d, block at line %d: '%s' must not run "
          .. "in a test; mark the block <!-- test: skip (reason) -->", number, block.line, pattern))
      end
      local script = work .. "/block" .. i .. ".sh"
      util.write(script, prelude .. block.code)
      local out, rc = util.sh("cd " .. q(work) .. " && env PATH=" .. q(path) .. " bash -euo pipefail " .. q(script) .. " 2>&1")
      local expected = block.expect or 0
      if block.diagnostic then
        -- It reads the machine (kernel log, mount table), which a container or an unprivileged
        -- user may not be allowed to: any exit is fine but a missing command.
        assert(rc ~= 126 and rc ~= 127, string.format("procedure %d, block at line %d: a command is missing "
          .. "(exit %s): declare its package in scripts/install-deps.sh\n%s", number, block.line, tostring(rc), out))
        expected = rc
      end
      assert(rc == expected, string.format(
        "procedure %d, block at line %d: exit %s, expected %d\n--- block\n%s--- output\n%s",
        number, block.line, tostring(rc), expected, block.code, out))
      outputs[i] = out
    end
  end
  return outputs
end

-- ------------------------------------------------------------------ the guide's shape

describe("docs/RECOVERY_GUIDE.md", function()
  it("puts every command in an sh block, so that this test runs it", function()
    for _, fence in ipairs(guide.fences) do
      assert(fence.lang == "sh" or fence.lang == "text",
        "line " .. fence.line .. ": a ```" .. fence.lang .. " block: commands go in ```sh blocks, output in ```text")
    end
    for _, section in ipairs(guide.sections) do
      if not section.number then
        assert.are.equal(0, #sh_blocks(section), "section '" .. section.title .. "' has commands but is no numbered procedure")
      end
    end
  end)

  it("skips exactly the blocks that cannot run in a test", function()
    for _, section in ipairs(guide.sections) do
      for _, block in ipairs(sh_blocks(section)) do
        if block.marker then
          assert(block.skip or block.expect or block.diagnostic, "line " .. block.line .. ": unknown test marker '" .. block.marker .. "'")
        end
      end
    end
    assert.are.same(EXPECTED_SKIPS, skipped_blocks())
  end)

  -- Filled below, one scenario per procedure.
  local scenarios = {}

  it("has a scenario in this spec for every procedure", function()
    local numbers = {}
    for _, section in ipairs(guide.sections) do
      if section.number and #sh_blocks(section) > 0 then numbers[#numbers + 1] = section.number end
    end
    assert.are.same(numbers, sorted_keys(scenarios))
  end)

  -- 0. config backups: the files come back later in procedure 4
  scenarios[0] = true
  it("0. saves the configuration files in a config backup, secrets encrypted", function()
    local dir = util.scratch("prep")
    local repo = dir .. "/repo"
    local key = keygen(dir .. "/backup.key")
    local cfg = write_config(dir .. "/etc/bkr/bkr.yaml",
      "repository: " .. repo .. "\nencryption:\n  key_file: " .. key .. "\n"
      .. "notify:\n  contacts:\n    - { name: Ana Admin, role: DBA, phone: '+49 30 1234' }\n"
      .. "    - { name: Bo Boss, role: IT lead, email: bo@example.com, when: after 30 minutes }\n"
      .. "  channels:\n    - { type: email, smtp: { host: mail.example.com }, from: bkr@example.com,"
      .. " to: [oncall@example.com] }\n")
    local env = write_config(dir .. "/etc/app/app.env", "DB_PASSWORD=s3cret-prep\nPORT=8080\n")
    local conf = write_config(dir .. "/etc/postgresql/postgresql.conf", "shared_buffers = 128MB\n")
    bkr("init --config " .. q(cfg))
    local outputs = run_procedure(0, { CONFIG = cfg, CONFIG_FILES = table.concat({ cfg, env, conf }, " ") })
    assert.matches("config backup [^\n]+: 3 files, 1 encrypted field,", outputs[2])
    -- who is called, in order, and where the alerts go
    assert.matches("  1%. Ana Admin, DBA: %+49 30 1234\n  2%. Bo Boss, IT lead: bo@example.com %(after 30 minutes%)\n"
      .. "Alerts go to:\n  email +mail%.example%.com:587 %(starttls%) to oncall@example%.com, on failure\n", outputs[3])
    local list = json.decode(bkr("config list --json --repo " .. q(repo)))
    assert.are.equal(1, #list)
    assert.are.equal(3, list[1].files)
    local _, found = util.sh("grep -rq s3cret-prep " .. q(repo .. "/config"))
    assert.are_not.equal(0, found, "the password is stored in clear")
  end)

  -- 1. the latest backup, in place of a damaged database
  scenarios[1] = true
  it("1. restores the latest backup of one database in its place and drops the old copy", function()
    local db = new_database("rg1_" .. suffix(),
      "create table orders (id int primary key, note text); insert into orders select i, 'order ' || i from generate_series(1, 100) i;")
    local repo = util.scratch("repo")
    local cfg = write_config(util.scratch("cfg") .. "/bkr.yaml", "repository: " .. repo .. "\n")
    bkr("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    local file = backup_files(repo, db)[1]
    util.psql("drop table orders", db) -- the damage
    local outputs = run_procedure(1, { CONFIG = cfg, DB = db })
    assert.matches(file, outputs[2], 1, true)
    assert.matches("compare: 1 of 1 tables match the backup", outputs[3], 1, true)
    assert.matches("%(RTO%)", outputs[3])
    assert.matches("orders", outputs[4], 1, true)
    assert.are.equal("100", util.psql("select count(*) from orders", db))
    assert.are.equal("0", util.psql("select count(*) from pg_database where starts_with(datname, '" .. db .. "_before_')"))
  end)

  -- 2. a bad change, then a backup that already holds it: --before picks the one before
  scenarios[2] = true
  it("2. restores the newest backup before a bad change, beside and then in place", function()
    local db = new_database("rg2_" .. suffix(), "create table marks (generation int primary key, note text);")
    local repo = util.scratch("repo")
    local cfg = write_config(util.scratch("cfg") .. "/bkr.yaml", "repository: " .. repo .. "\n")
    util.psql("insert into marks values (1, 'first')", db)
    bkr("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    util.sh("sleep 1.1")
    util.psql("insert into marks values (2, 'second')", db)
    bkr("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    util.sh("sleep 1.1")
    util.psql("delete from marks", db) -- the bad change
    -- the admin's wall clock, one hour east of UTC
    local bad_time = os.date("!%Y-%m-%d %H:%M:%S", os.time() + 3600) .. "+01:00"
    util.sh("sleep 1.1")
    util.psql("insert into marks values (3, 'after the incident')", db)
    bkr("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    local files = backup_files(repo, db)
    assert.are.equal(3, #files)

    local outputs = run_procedure(2, { CONFIG = cfg, REPO = repo, DB = db, BAD_TIME = bad_time })
    assert.matches("backup:  daily/" .. files[2], outputs[2], 1, true)
    assert.matches("daily/" .. files[3], outputs[2], 1, true) -- the start_time listing
    assert.are.equal("1,2", util.psql("select string_agg(generation::text, ',' order by generation) from marks", db))
    local old = util.psql("select datname from pg_database where starts_with(datname, '" .. db .. "_before_')")
    assert.are.equal("3", util.psql("select string_agg(generation::text, ',') from marks", old))
    assert.is_false(database_exists(db .. "_restored"))
  end)

  -- 3. the newest backup is corrupt: restore the one before, quarantine, back up again
  scenarios[3] = true
  it("3. restores the newest backup that passed, quarantines the damaged one and backs up again", function()
    local db = new_database("rg3_" .. suffix(), "create table marks (generation int);")
    local repo = util.scratch("repo")
    local quarantine = repo .. "/quarantine" -- as in the guide: beside the type directories
    local cfg = write_config(util.scratch("cfg") .. "/bkr.yaml",
      "repository: " .. repo .. "\ndatabases: [" .. db .. "]\n")
    util.psql("insert into marks values (1)", db)
    bkr("backup --config " .. q(cfg))
    util.sh("sleep 1.1")
    util.psql("insert into marks values (2)", db)
    bkr("backup --config " .. q(cfg))
    local files = backup_files(repo, db)
    corrupt(repo .. "/daily/" .. files[2])
    util.sh("sleep 1.1") -- the new backup of step 6 gets a stamp of its own

    local outputs = run_procedure(3, { CONFIG = cfg, REPO = repo, DB = db, QUARANTINE = quarantine })
    assert.matches("FAILED  daily/" .. files[2] .. ": checksum mismatch", outputs[2], 1, true)
    assert.matches("restored from " .. files[1], outputs[3], 1, true)
    assert.are.equal("1", util.psql("select string_agg(generation::text, ',') from marks", db))
    assert.are.same({ files[2], files[2] .. ".json", files[2] .. ".sha256" }, util.listdir(quarantine))
    local now = backup_files(repo, db)
    assert.are.equal(2, #now)
    assert.are.equal(files[1], now[1])
    local listed = json.decode(bkr("list --json --repo " .. q(repo) .. " --db " .. db))
    assert.are.equal("passed", listed[1].verified)
    assert.are.equal("daily/" .. now[2], listed[1].file)
  end)

  -- 4. a lost server: configuration, roles and databases back from the repository and the key
  scenarios[4] = true
  it("4. rebuilds a lost server: configuration files, roles, databases, a first backup", function()
    local tag = suffix()
    local role, app, crm = "rg4_owner_" .. tag, "rg4_app_" .. tag, "rg4_crm_" .. tag
    util.psql("create role " .. role .. " login")
    new_database(app, "create table orders (id int primary key); insert into orders select generate_series(1, 50);"
      .. "alter table orders owner to " .. role .. ";")
    util.psql("alter database " .. app .. " owner to " .. role)
    util.psql("alter database " .. app .. " set search_path = public, pg_catalog")
    new_database(crm, "create table customers (name text); insert into customers values ('Ada'), ('Grace');")
    local old_server = util.scratch("oldserver")
    local repo = old_server .. "/repo"
    local key = keygen(util.scratch("keys") .. "/backup.key") -- the copy kept away from the server
    local cfg_text = "repository: " .. repo .. "\ndatabases: [" .. app .. ", " .. crm .. "]\n"
      .. "encryption:\n  key_file: " .. key .. "\n"
    local cfg = write_config(old_server .. "/etc/bkr/bkr.yaml", cfg_text)
    local env_text = "DB_PASSWORD=s3cret-rebuild\n"
    local env = write_config(old_server .. "/etc/app/app.env", env_text)
    util.sh("chmod 0640 " .. q(cfg))
    bkr("init --config " .. q(cfg))
    bkr("backup --config " .. q(cfg))
    bkr("config backup --config " .. q(cfg) .. " " .. q(cfg) .. " " .. q(env))
    -- the server is lost: its databases, its roles, its configuration
    util.psql("drop database " .. app)
    util.psql("drop database " .. crm)
    util.psql("drop role " .. role)
    util.sh("rm -rf " .. q(old_server .. "/etc"))

    local root = util.scratch("newroot")
    run_procedure(4, {
      REPO = repo, KEY = key, CONFIG = root .. cfg, CONFIG_ROOT = root,
      DATABASES = app .. " " .. crm, PG_VERSION = "15", BKR_SRC = SOURCE,
    })
    assert.is_true(role_exists(role))
    assert.are.equal("50", util.psql("select count(*) from orders", app))
    assert.are.equal(role, util.psql("select tableowner from pg_tables where tablename = 'orders'", app))
    assert.are.equal(role, util.psql("select pg_get_userbyid(datdba) from pg_database where datname = '" .. app .. "'"))
    assert.are.equal("public, pg_catalog", util.psql("show search_path", app))
    assert.are.equal("Ada,Grace", util.psql("select string_agg(name, ',' order by name) from customers", crm))
    assert.are.equal(cfg_text, util.read(root .. cfg))
    assert.are.equal(env_text, util.read(root .. env))
    assert.are.equal("root postgres 640", (util.sh("stat -c '%U %G %a' " .. q(root .. cfg)):gsub("\n", "")))
    assert.are.equal(2, #backup_files(repo, app, true), "the first backup of the new server")
  end)

  -- 5. plain backups without bkr: sha256sum, gunzip, psql
  scenarios[5] = true
  it("5. restores an unencrypted backup with sha256sum, gunzip and psql only, roles first", function()
    local tag = suffix()
    local reader = "rg5_reader_" .. tag
    util.psql("create role " .. reader)
    local db = new_database("rg5_" .. tag, "create table t (x int); insert into t select generate_series(1, 10);"
      .. "grant select on t to " .. reader .. ";")
    local repo = util.scratch("repo")
    bkr("backup --repo " .. q(repo) .. " --db " .. db)
    -- as on a new server: the role is gone
    util.psql("revoke select on t from " .. reader, db)
    util.psql("drop role " .. reader)
    local new = db .. "_restored"

    local outputs = run_procedure(5, { REPO = repo, DB = db, NEW = new })
    assert.matches(": OK\n.*globals_.*: OK", outputs[2])
    assert.matches('"owner": "postgres"', outputs[3], 1, true)
    assert.is_true(role_exists(reader))
    assert.are.equal("10", util.psql("select count(*) from t", new))
    assert.are.equal("t", util.psql("select has_table_privilege('" .. reader .. "', 't', 'select')", new))
  end)

  -- 6. encrypted backups: bkr decrypt, then the independent decrypter
  scenarios[6] = true
  it("6. restores an encrypted backup with bkr decrypt, and with the independent decrypter", function()
    local tag = suffix()
    local reader = "rg6_reader_" .. tag
    util.psql("create role " .. reader)
    local db = new_database("rg6_" .. tag, "create table t (x int, s text); insert into t select i, 'ü' || i from generate_series(1, 10) i;"
      .. "grant select on t to " .. reader .. ";")
    local repo = util.scratch("repo")
    local key = keygen(util.scratch("keys") .. "/backup.key")
    bkr("backup --repo " .. q(repo) .. " --db " .. db .. " --key-file " .. q(key))
    util.psql("revoke select on t from " .. reader, db)
    util.psql("drop role " .. reader)
    local new = db .. "_restored"

    local outputs = run_procedure(6, { REPO = repo, DB = db, NEW = new, KEY = key, BKR_SRC = SOURCE }, {
      -- before the independent decrypter's block: bkr decrypt's restore is complete; start over
      [5] = function()
        assert.are.equal("10", util.psql("select count(*) from t", new))
        util.psql("drop database " .. new)
      end,
    })
    assert.matches(": OK", outputs[2], 1, true)
    assert.is_true(role_exists(reader))
    assert.are.equal("10", util.psql("select count(*) from t where s like 'ü%'", new))
    assert.are.equal("t", util.psql("select has_table_privilege('" .. reader .. "', 't', 'select')", new))
  end)

  -- 7. the RPO now and the last drill's RTO
  scenarios[7] = true
  it("7. shows the age of the newest backups and the last drill's RTO and RPO", function()
    local db = new_database("rg7_" .. suffix(), "create table t (x int); insert into t values (1);")
    local repo = util.scratch("repo")
    local cfg = write_config(util.scratch("cfg") .. "/bkr.yaml", "repository: " .. repo .. "\n")
    bkr("backup --no-globals --config " .. q(cfg) .. " --db " .. db)
    bkr("drill --config " .. q(cfg) .. " --db " .. db)
    local outputs = run_procedure(7, { CONFIG = cfg, REPO = repo })
    assert.matches(db .. "  newest backup %d%d%d%d%-%d%d%-%d%dT[%d:]+Z, 0 h old", outputs[2])
    assert.matches(db .. "  RTO [%d.]+ s, RPO %d+ s: passed", outputs[2])
  end)

  -- 8. the drill checklist, with an encrypted repository and an off-site key copy
  scenarios[8] = true
  it("8. runs the drill checklist: verify, key copy, config backup, drill", function()
    local tag = suffix()
    local a = new_database("rg8a_" .. tag, "create table t (x int); insert into t select generate_series(1, 300);")
    local b = new_database("rg8b_" .. tag, "create schema s; create table s.u (y text); insert into s.u values ('x'), ('y');")
    local dir = util.scratch("drillcheck")
    local repo = dir .. "/repo"
    local key = keygen(dir .. "/backup.key")
    local key_copy = util.scratch("media") .. "/backup.key"
    util.sh("cp " .. q(key) .. " " .. q(key_copy) .. " && chmod 0600 " .. q(key_copy))
    local cfg = write_config(dir .. "/bkr.yaml", "repository: " .. repo .. "\ndatabases: [" .. a .. ", " .. b .. "]\n"
      .. "encryption:\n  key_file: " .. key .. "\n"
      .. "drill:\n  smoke_queries:\n    - select count(*) > 0 from pg_class where relkind = 'r'\n")
    bkr("init --config " .. q(cfg))
    bkr("backup --config " .. q(cfg))
    bkr("config backup --config " .. q(cfg) .. " " .. q(cfg))

    local outputs = run_procedure(8, { CONFIG = cfg, REPO = repo, KEY_COPY = key_copy })
    assert.matches("ok      daily/globals_", outputs[2], 1, true)
    assert.not_matches("checksum only", outputs[3], 1, true)
    local report = outputs[5]:match("([^\n]+%.md)\n$")
    assert.is_truthy(report, outputs[5])
    assert.matches("**Result: PASSED.**", util.read(report), 1, true)
    local data = json.decode(util.read(report:gsub("%.md$", ".json")))
    assert.are.equal("passed", data.result)
    assert.are.equal(2, #data.databases)
    assert.are.equal("0", util.psql("select count(*) from pg_database where datname like 'bkr_drill_%'"))
  end)
end)

-- ------------------------------------------------------------------ docs/drill.md

describe("docs/drill.md", function()
  it("its example of an integrator's step runs in a drill, and fails when the application check does", function()
    local doc = parse(util.read(DRILL_DOC))
    local steps_file, config_text
    for _, section in ipairs(doc.sections) do
      for _, block in ipairs(section.blocks) do
        if block.marker and block.marker:match("^drill steps file") then steps_file = block.code end
        if block.marker and block.marker:match("^drill config") then config_text = block.code end
      end
    end
    assert.is_truthy(steps_file, "no block marked 'drill steps file' in docs/drill.md")
    assert.is_truthy(config_text, "no block marked 'drill config' in docs/drill.md")

    -- the example names databases appdb and crm, and a role app
    for _, name in ipairs({ "appdb", "crm" }) do util.psql("drop database if exists " .. name .. " with (force)") end
    finally(function()
      for _, name in ipairs({ "appdb", "crm" }) do util.psql("drop database if exists " .. name .. " with (force)") end
    end)
    if not role_exists("app") then util.psql("create role app") end
    new_database("appdb", "create table orders (id int, created timestamptz default now());"
      .. "insert into orders (id) select generate_series(1, 20); grant insert on orders to app;")
    new_database("crm", "create table customers (name text); insert into customers values ('Ada');")

    local custom = util.scratch("recipes")
    util.sh("mkdir -p " .. q(custom .. "/lib"))
    util.write(custom .. "/lib/drill_steps.lua", steps_file)
    local repo = custom .. "/repo"
    assert.matches("\nrepository: [^\n]+\n", "\n" .. config_text)
    local cfg = write_config(custom .. "/bkr.yaml", (config_text:gsub("repository: [^\n]+", "repository: " .. repo)))
    local env = "BKR_RECIPE_PATH=" .. q(custom)
    bkr("init --config " .. q(cfg))
    bkr("backup --no-globals --config " .. q(cfg))

    local out = bkr("drill --config " .. q(cfg) .. " --report " .. q(custom .. "/report"), env)
    assert.matches("passed%s+appdb%s+app_smoke%s+2 application checks passed", out)
    assert.matches("passed%s+crm%s+app_smoke%s+no application check for crm", out)

    -- the check must bite: without the privilege, the drill of appdb fails at app_smoke
    util.psql("revoke insert on orders from app", "appdb")
    util.sh("sleep 1.1")
    bkr("backup --no-globals --config " .. q(cfg))
    local failed, rc = util.sh(env .. " " .. q(BKR) .. " drill --config " .. q(cfg) .. " --report " .. q(custom .. "/report2") .. " 2>&1")
    assert.are.equal(1, rc, failed)
    assert.matches("failed%s+appdb%s+app_smoke%s+select has_table_privilege%('app', 'orders', 'insert'%): not true", failed)
    assert.are.equal("0", util.psql("select count(*) from pg_database where datname like 'bkr_drill_%'"))
  end)
end)
