-- The exit codes the docs promise, command by command, run for real.
--
-- CASES is the data: { doc, command, code, args, pattern[, row][, as = "other user" | "locked"] }.
-- Each case runs `bkr ARGS` against the throwaway cluster and checks the exit code and that
-- the output matches `pattern` (a Lua pattern). `row`, when given, is a phrase the doc's row
-- for that code must contain (plain text): the case then proves that line of the doc, and a
-- doc that puts the same failure under another code fails here. {name} in args stands for a
-- fixture below; {fresh} for a new scratch directory and {fresh_db} for an unused database
-- name, both per case.
--
-- DOCS names each command's exit-code table. Every code 0-3 a table lists must have a case,
-- and every case's code must be in its command's table: the docs and the behaviour cannot
-- drift apart without a failure here.
local util = require "support.util"
local q = util.quote

local SOURCE = os.getenv("BKR_SOURCE_DIR") or "."

-- doc, command, and for a table that covers several commands the column that is this one's.
local DOCS = {
  { doc = "backup.md", command = "backup" },
  { doc = "verify.md", command = "verify" },
  { doc = "restore.md", command = "restore" },
  { doc = "list.md", command = "list" },
  { doc = "rotation.md", command = "rotate" },
  { doc = "drill.md", command = "drill" },
  { doc = "config-backup.md", command = "config" },
  { doc = "offsite.md", command = "sync" },
  { doc = "encryption.md", command = "keygen", column = "`bkr keygen`" },
  { doc = "encryption.md", command = "decrypt", column = "`bkr decrypt`" },
}

local CASES = {
  { "backup.md", "backup", 0, "backup --no-globals --repo {fresh} --db {db}", "" },
  -- (a configured database that is gone fails on its own: --db would refuse it, exit 2)
  { "backup.md", "backup", 1, "backup --no-globals --config {gone_config} --repo {fresh}",
    "1 of 1 backups failed; rotation skipped", row = "a backup failed" },
  { "backup.md", "backup", 2, "backup --bogus", "unknown option %-%-bogus", row = "unknown option" },

  { "verify.md", "verify", 0, "verify --repo {repo}", "ok" },
  { "verify.md", "verify", 1, "verify --repo {fresh}", "no backups found in", row = "no backups found" },
  { "verify.md", "verify", 2, "verify --latest --all --repo {repo}", "%-%-latest", row = "`--latest` with `--all`" },
  { "verify.md", "verify", 3, "verify --repo {bad_repo}", "1 of 1 backups failed verification",
    row = "failed verification" },

  { "restore.md", "restore", 0, "restore --db {db} --latest --into {fresh_db} --create --repo {repo}", "done: " },
  { "restore.md", "restore", 1, "restore --db {db} --latest --into {db} --create --repo {repo}",
    "already exists %(%-%-create%)", row = "the target exists (`--create`)" },
  { "restore.md", "restore", 2, "restore --db {db} --latest --into {fresh_db} --create --repo {enc_repo}",
    "is encrypted: give %-%-key%-file FILE", row = "no key for an encrypted backup" },
  { "restore.md", "restore", 3,
    "restore --db {db} --latest --into {fresh_db} --create --repo {enc_repo} --key-file {wrong_key}",
    "was encrypted with key %x+, the key given is %x+; [%w_]+ left untouched", row = "the wrong key (target untouched)" },
  { "restore.md", "restore", 3, "restore --db {db} --latest --into {fresh_db} --create --repo {bad_repo}",
    "failed verification[^,\n]*, [%w_]+ left untouched", row = "the backup failed its check (target untouched)" },

  { "list.md", "list", 0, "list --repo {repo}", "TIME %(UTC%)" },
  { "list.md", "list", 1, "list --repo {unreadable_repo}", "cannot read [^\n]*daily: owned by", as = "other user",
    row = "may not read" },
  { "list.md", "list", 2, "list --type hourly --repo {repo}", "%-%-type must be daily, weekly or monthly",
    row = "bad `--type`" },

  { "rotation.md", "rotate", 0, "rotate --repo {repo}", "" },
  { "rotation.md", "rotate", 1, "rotate --repo {fresh}", "is busy", as = "locked", row = "the repository is busy" },
  { "rotation.md", "rotate", 2, "rotate --bogus", "unknown option %-%-bogus" },

  { "drill.md", "drill", 0, "drill --repo {repo} --db {db} --report {fresh}/d", "drill passed" },
  { "drill.md", "drill", 1, "drill --config {drill_smoke_fails} --db {db} --report {fresh}/d",
    "failed at smoke_queries", row = "a failed smoke query" },
  { "drill.md", "drill", 2, "drill --config {drill_bad_step}", "no step named 'no_such_step'",
    row = "an unknown step name" },
  { "drill.md", "drill", 3, "drill --repo {bad_repo} --db {db} --report {fresh}/d", "checksum mismatch",
    row = "a backup failed `verify_backup`" },

  { "offsite.md", "sync", 0, "sync --from {repo} --to {fresh}", "1 backup copied" },
  { "offsite.md", "sync", 1, "sync --from {repo} --to {fresh}", "is busy", as = "locked", row = "a copy failed" },
  { "offsite.md", "sync", 2, "sync --from {repo} --to sftp://host/x", "bkr does not support sftp:// repositories",
    row = "a URL bkr cannot use" },
  { "offsite.md", "sync", 3, "sync --from {bad_repo} --to {fresh}", "not copied, damaged",
    row = "failed its checksum" },

  { "config-backup.md", "config", 0, "config backup {app_yaml} --repo {fresh} --key-file {key}",
    "config backup [^\n]+: 1 file, 1 encrypted field" },
  { "config-backup.md", "config", 1, "config restore --latest --to {config_restored} --repo {config_repo} --key-file {key}",
    "refusing to replace existing files %(use %-%-overwrite%)", row = "without `--overwrite`" },
  { "config-backup.md", "config", 2, "config backup {app_yaml} --repo {fresh}", "no key: give %-%-key%-file FILE",
    row = "no key" },
  { "config-backup.md", "config", 3, "config verify --latest --repo {config_bad_repo} --key-file {key}", "FAILED",
    row = "a checksum" },

  { "encryption.md", "keygen", 0, "keygen --out {fresh}/k", "key id %x+" },
  { "encryption.md", "keygen", 1, "keygen --out {key}", "already exists; a key file is never overwritten",
    row = "exists" },
  { "encryption.md", "keygen", 2, "keygen", "give %-%-out FILE", row = "no `--out`" },

  { "encryption.md", "decrypt", 0, "decrypt {enc_file} --key-file {key} --out {fresh}/out.sql.gz", "decrypted " },
  { "encryption.md", "decrypt", 1, "decrypt {enc_file} --key-file {key} --out {key}",
    "decrypt: [^\n]*backup%.key: already exists; %-%-out never replaces a file",
    row = "cannot be written" },
  { "encryption.md", "decrypt", 2, "decrypt {enc_file}", "key", row = "no key" },
  { "encryption.md", "decrypt", 3, "decrypt {enc_file} --key-file {wrong_key} --out {fresh}/o",
    "encrypted with key %x+, the key given is %x+", row = "wrong key" },

  -- docs/configuration.md: an unreadable configuration file is an error, not skipped
  { "configuration.md", "list", 2, "list --config {unreadable_config}", "bkr%.yaml: Permission denied",
    as = "other user" },
  { "configuration.md", "list", 2, "list", "bkr%.yaml: Permission denied", as = "other user",
    cd = "{unreadable_config_dir}" },
}

-- ------------------------------------------------------------------ the docs' tables

local function cells(line)
  local out = {}
  for cell in line:gsub("^%s*|", ""):gsub("|%s*$", ""):gmatch("[^|]+") do
    out[#out + 1] = cell:match("^%s*(.-)%s*$")
  end
  return out
end

-- { [code] = row text } of the doc's exit-code table (first column "code" or "exit"), for
-- `column` when the table covers several commands. Codes 0-3 only (signals are not run here).
local function documented(entry)
  local rows, header, inside = {}, nil, false
  for line in (util.read(SOURCE .. "/docs/" .. entry.doc) .. "\n"):gmatch("([^\n]*)\n") do
    if line:match("^|") then
      local c = cells(line)
      if not inside then
        inside = true
        header = (c[1] == "code" or c[1] == "exit") and c or nil
      elseif header and tonumber(c[1]) and tonumber(c[1]) <= 3 then
        local index = 2
        if entry.column then
          index = nil
          for i, name in ipairs(header) do if name == entry.column then index = i end end
          assert(index, entry.doc .. ": no column " .. entry.column)
        end
        local text = c[index] or ""
        if text ~= "" and text ~= "-" and text ~= "—" then rows[tonumber(c[1])] = text end
      end
    else
      inside = false
    end
  end
  return rows
end

local function doc_entry(doc, command)
  for _, entry in ipairs(DOCS) do
    if entry.doc == doc and entry.command == command then return entry end
  end
end

describe("exit codes, as the docs tell them", function()
  it("every code 0-3 in a command's table has a case here, and every case's code is in the table", function()
    for _, entry in ipairs(DOCS) do
      local rows = documented(entry)
      assert.is_truthy(next(rows), entry.doc .. " has no exit-code table for " .. entry.command)
      for code in pairs(rows) do
        local found = false
        for _, case in ipairs(CASES) do
          if case[1] == entry.doc and case[2] == entry.command and case[3] == code then found = true end
        end
        assert.is_true(found, string.format("%s: exit %d of %s has no case", entry.doc, code, entry.command))
      end
      for _, case in ipairs(CASES) do
        if case[1] == entry.doc and case[2] == entry.command then
          local row = rows[case[3]]
          assert.is_truthy(row, string.format("%s does not document exit %d for %s", entry.doc, case[3], case[2]))
          if case.row then
            assert.is_truthy(row:find(case.row, 1, true), string.format("%s, exit %d of %s: the row does not say "
              .. "'%s': %s", entry.doc, case[3], case[2], case.row, row))
          end
        end
      end
    end
  end)
end)

-- ------------------------------------------------------------------ the cases, run

describe("exit codes, run", function()
  local f = {}
  local root = util.sh("id -u"):match("^0") ~= nil

  lazy_setup(function()
    local scratch = util.scratch("exit")
    f.db = util.new_database("ec", "create table t (x int); insert into t values (1), (2);")
    f.repo = scratch .. "/repo"
    util.backup_newest(f.repo, f.db)
    -- the same backup, damaged
    f.bad_repo = scratch .. "/bad"
    util.sh("cp -a " .. q(f.repo) .. " " .. q(f.bad_repo))
    local file = util.sh("ls " .. q(f.bad_repo .. "/daily") .. " | grep 'sql.gz$'"):gsub("\n", "")
    util.flip_byte(f.bad_repo .. "/daily/" .. file, 100)
    -- keys, and an encrypted backup
    f.key, f.wrong_key = scratch .. "/backup.key", scratch .. "/other.key"
    for _, key in ipairs({ f.key, f.wrong_key }) do
      local out, rc = util.bkr("keygen --out " .. q(key))
      assert(rc == 0, out)
    end
    f.enc_repo = scratch .. "/enc"
    util.backup_newest(f.enc_repo, f.db, "--key-file " .. q(f.key))
    f.enc_file = f.enc_repo .. "/daily/" .. util.sh("ls " .. q(f.enc_repo .. "/daily") .. " | grep 'sql.gz.enc$'"):gsub("\n", "")
    -- a list whose type directory cannot be read
    f.unreadable_repo = scratch .. "/unreadable"
    util.sh("mkdir -p " .. q(f.unreadable_repo .. "/daily") .. " && chmod 000 " .. q(f.unreadable_repo .. "/daily"))
    -- configuration files
    f.unreadable_config_dir = scratch .. "/unreadable-config"
    f.unreadable_config = f.unreadable_config_dir .. "/bkr.yaml"
    util.sh("mkdir -p " .. q(f.unreadable_config_dir))
    util.write(f.unreadable_config, "repository: " .. f.repo .. "\n")
    util.sh("chmod 000 " .. q(f.unreadable_config))
    f.gone_config = scratch .. "/gone.yaml"
    util.write(f.gone_config, "databases: [no_such_database_ec]\n")
    f.drill_smoke_fails = scratch .. "/smoke.yaml"
    util.write(f.drill_smoke_fails, "repository: " .. f.repo .. "\ndrill:\n  smoke_queries:\n    - select count(*) = 0 from t\n")
    f.drill_bad_step = scratch .. "/steps.yaml"
    util.write(f.drill_bad_step, "repository: " .. f.repo .. "\ndrill:\n  steps: [pick_backup, no_such_step]\n")
    -- a config backup, one restored already, and a damaged copy
    f.app_yaml = scratch .. "/app.yaml"
    util.write(f.app_yaml, "database:\n  password: s3cret\n")
    f.config_repo = scratch .. "/config-repo"
    util.sh("mkdir " .. q(f.config_repo))
    local out, rc = util.bkr("config backup " .. q(f.app_yaml) .. " --repo " .. q(f.config_repo) .. " --key-file " .. q(f.key))
    assert(rc == 0, out)
    f.config_restored = scratch .. "/restored"
    out, rc = util.bkr("config restore --latest --to " .. q(f.config_restored) .. " --repo " .. q(f.config_repo)
      .. " --key-file " .. q(f.key))
    assert(rc == 0, out)
    f.config_bad_repo = scratch .. "/config-bad"
    util.sh("cp -a " .. q(f.config_repo) .. " " .. q(f.config_bad_repo))
    local stored = util.sh("find " .. q(f.config_bad_repo) .. " -name app.yaml"):gsub("\n", "")
    util.write(stored, util.read(stored) .. "# changed\n")
  end)

  lazy_teardown(function()
    -- modes back, so that the run's scratch directory can be removed by any user
    if f.unreadable_repo then util.sh("chmod 755 " .. q(f.unreadable_repo .. "/daily")) end
    if f.unreadable_config then util.sh("chmod 600 " .. q(f.unreadable_config)) end
  end)

  local fresh_count = 0
  local function expand(text)
    return (text:gsub("{([%w_]+)}", function(name)
      if name == "fresh" then return q(util.scratch("fresh")) end
      if name == "fresh_db" then
        fresh_count = fresh_count + 1
        return string.format("ec_new_%d_%d", fresh_count, math.random(1e6))
      end
      assert(f[name], "no fixture " .. name)
      return q(f[name])
    end))
  end

  for _, case in ipairs(CASES) do
    local doc, command, code, args, pattern = case[1], case[2], case[3], case[4], case[5]
    it(string.format("bkr %s exits %d: %s (%s)", command, code, args, doc), function()
      local prefix = ""
      if case.as == "other user" and root then
        prefix = "runuser -u postgres --"
      elseif case.as == "locked" then
        -- flock(1) holds REPO/.lock while bkr runs, as a backup in progress would
        local dir = util.scratch("locked")
        args = args:gsub("{fresh}", dir)
        prefix = "flock " .. q(dir .. "/.lock")
      end
      local cd = case.cd and ("cd " .. expand(case.cd) .. " && ") or ""
      local out, rc = util.sh(cd .. prefix .. " " .. q(util.bkr_bin()) .. " " .. expand(args) .. " 2>&1")
      assert.are.equal(code, rc, out)
      assert.matches(pattern, out)
    end)
  end
end)
