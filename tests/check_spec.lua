-- bkr check: the monitoring plugin's verdicts (OK, WARNING, CRITICAL, UNKNOWN) on repositories
-- built to match, with real backups, verifies and drills against the test cluster, and stand-in
-- backups (util.fake_backup) to age them. The output is checked with independent parsers: the
-- plugin guidelines' perfdata grammar, jq, and python3's prometheus_client.
local util = require "support.util"
local q = util.quote
local run = util.bkr

local HOUR, DAY = 3600, 86400

local function check(args, env)
  return run("check " .. args, env)
end

local function config_file(text)
  local path = util.scratch("cfg") .. "/bkr.yaml"
  util.write(path, text)
  return path
end

-- The stamp of a backup taken `seconds` ago (negative: in the future).
local function stamp_ago(seconds)
  return os.date("!%Y%m%d_%H%M%S", os.time() - seconds)
end

local function iso_ago(seconds)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - seconds)
end

-- A database name in a file name, as docs/backup.md says: letters, digits, _ - . stay.
local function escape(name)
  return (name:gsub("[^%w_%-%.]", function(c) return string.format("%%%02X", c:byte()) end):gsub("^%.", "%%2E"))
end

-- A stand-in backup of db taken `age` seconds ago, with the verdict `verified` ("passed",
-- "failed", or nil for none).
local function aged_backup(repo, db, age, verified)
  util.sh("mkdir -p " .. q(repo .. "/daily"))
  local path = repo .. "/daily/backup_" .. stamp_ago(age) .. "_" .. escape(db) .. ".sql.gz"
  util.fake_backup(path, { database = db,
    verification = verified and { time = iso_ago(math.max(age - 60, 0)), result = verified } or false })
  return path
end

-- A drill report as bkr drill writes it (docs/drill.md), taken `age` seconds ago.
local function drill_report(repo, age, databases)
  util.sh("mkdir -p " .. q(repo .. "/drills"))
  local list = {}
  for db, result in pairs(databases) do
    list[#list + 1] = { database = db, result = result, rto_seconds = 12.5, rpo_seconds = 3600 }
  end
  local at = os.time() - age -- (one second for the name and the time inside, as bkr drill's)
  util.write(repo .. "/drills/drill_" .. os.date("!%Y%m%d_%H%M%S", at) .. ".json", require("dkjson").encode({
    format = "bkr-drill-1", time = os.date("!%Y-%m-%dT%H:%M:%SZ", at), databases = list, result = "passed",
  }))
end

-- bkr as the postgres user (peer authentication, the documented operating user), as
-- tests/newcomer_spec.lua runs it: the suite runs as root, which may read any file.
local function as_postgres(args)
  return util.sh("runuser -u postgres -- " .. q(util.bkr_bin()) .. " " .. args .. " 2>&1")
end

-- A repository owned by postgres (bkr init) with a verified stand-in backup of shop and a
-- passed drill, all given to postgres.
local function postgres_repo()
  local repo = util.scratch("pgrepo") .. "/repo"
  local out, rc = run("init --repo " .. q(repo) .. " --owner postgres")
  assert(rc == 0, out)
  local path = aged_backup(repo, "shop", HOUR, "passed")
  drill_report(repo, HOUR, { shop = "passed" })
  util.sh("chown -R postgres: " .. q(repo))
  return repo, path
end

-- No message names a recipe file or line (a Lua error's position), nor a traceback.
local function no_position(out)
  assert.is_nil(out:find("%.lua:%d+"), "a message names a recipe line: " .. out)
  assert.not_matches("traceback", out)
end

local output = require "support.check_output"
local plugin_output, prometheus_samples, jq = output.plugin_output, output.prometheus_samples, output.jq

describe("bkr check", function()
  local db = util.new_database("checked", "create table t (n int); insert into t select generate_series(1, 50);")
  local repo = util.scratch("repo")
  local cfg = config_file("repository: " .. repo .. "\ndatabases: [" .. db .. "]\n")

  it("is OK with a verified backup within the RPO and a passed drill; perfdata per the plugin guidelines", function()
    util.backup_newest(repo, db)
    local out, rc = run("verify --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    out, rc = run("drill --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    out, rc = check("--config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local state, text, perf = plugin_output(out)
    assert.are.equal("OK", state)
    assert.matches("1 database:", text)
    local age = perf[db .. " verified_age"]
    assert.are.equal("s", age.uom)
    assert.is_true(tonumber(age.value) >= 0 and tonumber(age.value) < 600)
    assert.are.equal("86400", age.crit)
    assert.are.equal("B", perf[db .. " newest_size"].uom)
    assert.are.equal(util.sh("stat -c %s " .. q(repo) .. "/daily/backup_*_" .. db .. ".sql.gz"):gsub("\n", ""),
      perf[db .. " newest_size"].value)
    assert.are.equal("10:", perf.free_percent.warn)
    -- --help says the exit codes are the plugin's
    local help = check("--help")
    assert.matches("0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN", help, 1, true)
    assert.matches("not bkr's usual ones", help, 1, true)
  end)

  it("WARNs when the newest backup is not verified yet, and says the same in --json", function()
    util.backup_newest(repo, db)
    local out, rc = check("--config " .. q(cfg))
    assert.are.equal(1, rc, out)
    local state, text = plugin_output(out)
    assert.are.equal("WARNING", state)
    assert.matches(db .. ": newest backup %(.-%) not verified", text)
    out, rc = check("--json --config " .. q(cfg))
    assert.are.equal(1, rc, out)
    assert.are.equal("WARNING 1 " .. db .. " WARNING never passed", jq(out,
      '"\\(.status) \\(.exit_code) \\(.databases[0].database) \\(.databases[0].status) '
      .. '\\(.databases[0].newest.verified) \\(.databases[0].newest_verified.verified)"'))
    out, rc = run("verify --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal(0, select(2, check("--config " .. q(cfg))))
  end)

  it("WARNs when the last drill is older than drill.interval_days, or there is none, or free space is low", function()
    local late = config_file("repository: " .. repo .. "\ndatabases: [" .. db .. "]\ndrill:\n  interval_days: 1\n")
    assert.are.equal(0, select(2, check("--config " .. q(late))))
    local other = util.scratch("repo")
    util.sh("cp -a " .. q(repo) .. "/. " .. q(other))
    local report = util.sh("ls " .. q(other .. "/drills") .. " | grep json$"):gsub("\n", "")
    -- (aged as a drill two days ago would be: its name and the time inside)
    local aged = require("dkjson").decode(util.read(other .. "/drills/" .. report))
    local at = os.time() - 2 * DAY
    aged.time = os.date("!%Y-%m-%dT%H:%M:%SZ", at)
    os.remove(other .. "/drills/" .. report)
    util.write(other .. "/drills/drill_" .. os.date("!%Y%m%d_%H%M%S", at) .. ".json", require("dkjson").encode(aged))
    local out, rc = check("--config " .. q(late) .. " --repo " .. q(other))
    assert.are.equal(1, rc, out)
    assert.matches("last drill 2 d ago, interval 24 h", out, 1, true)
    assert.are.equal(0, select(2, check("--config " .. q(cfg) .. " --repo " .. q(other))), "8 days by default")

    util.sh("rm -r " .. q(other .. "/drills"))
    out, rc = check("--config " .. q(cfg) .. " --repo " .. q(other))
    assert.are.equal(1, rc, out)
    assert.matches(db .. ": no drill report", out, 1, true)

    local full = config_file("repository: " .. repo .. "\ndatabases: [" .. db .. "]\ncheck:\n  min_free_percent: 100\n")
    out, rc = check("--config " .. q(full))
    assert.are.equal(1, rc, out)
    assert.matches("%d+%% free in the repository, below 100%%", out)
    local bytes = config_file("repository: " .. repo .. "\ndatabases: [" .. db .. "]\ncheck:\n  min_free_bytes: "
      .. math.tointeger(2 ^ 62) .. "\n")
    out, rc = check("--config " .. q(bytes))
    assert.are.equal(1, rc, out)
    assert.matches("bytes free in the repository, below", out, 1, true)
  end)

  it("is CRITICAL when a configured database has no backup, or none verified within the RPO", function()
    local none = util.new_database("nobackup")
    local both = config_file("repository: " .. repo .. "\ndatabases: [" .. db .. ", " .. none .. "]\n")
    local out, rc = check("--config " .. q(both))
    assert.are.equal(2, rc, out)
    local state, text, perf = plugin_output(out)
    assert.are.equal("CRITICAL", state)
    assert.matches("^" .. none .. ": no backup", text)
    assert.are.equal("U", perf[none .. " verified_age"].value)

    local old = util.scratch("repo")
    aged_backup(old, "shop", 30 * HOUR, "passed")
    drill_report(old, HOUR, { shop = "passed" })
    out, rc = check("--repo " .. q(old) .. " --db shop")
    assert.are.equal(2, rc, out)
    assert.matches("shop: newest verified backup 30 h old, older than the RPO target 24 h", out, 1, true)
    local rpo = config_file("drill:\n  rpo_seconds: 172800\n")
    assert.are.equal(0, select(2, check("--config " .. q(rpo) .. " --repo " .. q(old) .. " --db shop")))

    -- a newer backup that was never verified does not help; one that failed is CRITICAL itself
    aged_backup(old, "shop", 2 * HOUR, nil)
    out, rc = check("--repo " .. q(old) .. " --db shop")
    assert.are.equal(2, rc, out)
    local failed = util.scratch("repo")
    aged_backup(failed, "shop", 5 * HOUR, "passed")
    aged_backup(failed, "shop", HOUR, "failed")
    drill_report(failed, HOUR, { shop = "passed" })
    out, rc = check("--repo " .. q(failed) .. " --db shop")
    assert.are.equal(2, rc, out)
    assert.matches("shop: newest backup failed verification", out, 1, true)
  end)

  it("a passed report copied under a newer name does not hide a failed drill: its time inside is not its name's",
    function()
    local forged = util.scratch("repo")
    aged_backup(forged, "shop", HOUR, "passed")
    drill_report(forged, 3 * HOUR, { shop = "passed" })
    drill_report(forged, 2 * HOUR, { shop = "failed" })
    local out, rc = check("--repo " .. q(forged) .. " --db shop")
    assert.are.equal(2, rc, out)
    -- the old passed report, copied to a name of an hour ago
    local old = util.sh("ls " .. q(forged .. "/drills") .. " | sort | head -n 1"):gsub("\n", "")
    local copy = forged .. "/drills/drill_" .. stamp_ago(HOUR) .. ".json"
    util.sh("cp " .. q(forged .. "/drills/" .. old) .. " " .. q(copy))
    out, rc = check("--repo " .. q(forged) .. " --db shop")
    assert.are.equal(2, rc, out)
    assert.matches("shop: last drill failed", out, 1, true)
    assert.matches("unreadable drill report " .. copy .. " (dated ", out, 1, true)
    assert.matches("by its name (copied or edited?)", out, 1, true)
  end)

  it("is CRITICAL when the last drill failed", function()
    local smoke = config_file("repository: " .. repo .. "\ndatabases: [" .. db .. "]\ndrill:\n  smoke_queries:\n"
      .. "    - select count(*) = 0 from t\n")
    local out, rc = run("drill --config " .. q(smoke))
    assert.are.equal(1, rc, out)
    out, rc = check("--config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches(db .. ": last drill failed", out, 1, true)
    out, rc = run("drill --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal(0, select(2, check("--config " .. q(cfg))), "the newest drill passed again")
  end)

  it("is UNKNOWN (3) without a verdict: missing repository, invalid configuration, unknown option", function()
    local out, rc = check("--repo " .. q(util.scratch("gone") .. "/nothing") .. " --db x")
    assert.are.equal(3, rc, out)
    assert.matches("^BKR UNKNOWN %- repository .* does not exist\n$", out)
    out, rc = check("--config " .. q(config_file("retention:\n  dayly: 3\n")) .. " --repo " .. q(repo))
    assert.are.equal(3, rc, out)
    assert.matches("^BKR UNKNOWN %- configuration: retention.dayly: unknown key; did you mean daily%?\n$", out)
    out, rc = check("--config " .. q(config_file("check:\n  min_free_percent: 101\n")) .. " --repo " .. q(repo))
    assert.are.equal(3, rc, out)
    assert.matches("check.min_free_percent: expected an integer from 0 to 100", out, 1, true)
    out, rc = check("--frobnicate")
    assert.are.equal(3, rc, out)
    assert.matches("^BKR UNKNOWN %- check: unknown option %-%-frobnicate", out)
    out, rc = check("--json --repo " .. q(util.scratch("gone") .. "/nothing") .. " --db x")
    assert.are.equal(3, rc, out)
    assert.are.equal("UNKNOWN 3", jq(out, '"\\(.status) \\(.exit_code)"'))
  end)

  it("does not count a future-dated backup as fresh, and uses the real clock", function()
    local skewed = util.scratch("repo")
    aged_backup(skewed, "shop", 30 * HOUR, "passed")
    aged_backup(skewed, "shop", -3 * DAY, "passed")
    drill_report(skewed, HOUR, { shop = "passed" })
    local out, rc = check("--repo " .. q(skewed) .. " --db shop")
    assert.are.equal(2, rc, out)
    assert.matches("newest verified backup 30 h old", out, 1, true)
    assert.matches("1 backup dated in the future", out)
    out = check("--json --repo " .. q(skewed) .. " --db shop")
    assert.are.equal("1 " .. stamp_ago(30 * HOUR):sub(1, 8), jq(out,
      '"\\(.databases[0].future_backups) \\(.databases[0].newest.file | sub("daily/backup_"; "") | .[0:8])"'))

    -- a fresh, verified backup is CRITICAL for a clock three days ahead
    local asan = (os.getenv("ASAN_OPTIONS") or "") .. ":verify_asan_link_order=0"
    out, rc = check("--config " .. q(cfg), "FAKETIME_DONT_FAKE_MONOTONIC=1 ASAN_OPTIONS=" .. q(asan) .. " faketime -f +3d")
    assert.are.equal(2, rc, out)
    assert.matches(db .. ": newest verified backup 3 d old", out, 1, true)
  end)

  it("writes --prometheus metrics that parse, atomically, with a status also when UNKNOWN", function()
    local dir = util.scratch("textfile")
    local file = dir .. "/bkr.prom"
    local out, rc = check("--config " .. q(cfg) .. " --prometheus " .. q(file))
    assert.are.equal(0, rc, out)
    plugin_output(out)
    local samples = prometheus_samples(file)
    local labels = "{database=" .. db .. ",repository=" .. repo .. "}"
    assert.are.equal(0, samples["bkr_check_status{repository=" .. repo .. "}"])
    assert.are.equal(1, samples["bkr_backup_newest_verified" .. labels])
    assert.are.equal(1, samples["bkr_drill_last_success" .. labels])
    assert.are.equal(0, samples["bkr_check_database_status" .. labels])
    assert.is_true(samples["bkr_backup_newest_age_seconds" .. labels] < 3600)
    assert.is_true(samples["bkr_backup_newest_verified_age_seconds" .. labels] < 3600)
    assert.is_true(samples["bkr_backup_newest_size_bytes" .. labels] > 0)
    assert.is_true(samples["bkr_drill_last_rto_seconds" .. labels] >= 0, "a tiny database restores in 0.0 s")
    assert.is_number(samples["bkr_drill_last_rpo_seconds" .. labels])
    assert.is_number(samples["bkr_drill_last_age_seconds" .. labels])
    assert.is_true(samples["bkr_repository_free_bytes{repository=" .. repo .. "}"] > 0)
    assert.are.equal("644", util.sh("stat -c %a " .. q(file)):match("%d+"))
    assert.are.same({ "bkr.prom" }, util.listdir(dir), "no temporary left beside it")

    out, rc = check("--repo " .. q(util.scratch("gone") .. "/nothing") .. " --db x --prometheus " .. q(file))
    assert.are.equal(3, rc, out)
    samples = prometheus_samples(file)
    local statuses = 0
    for key, value in pairs(samples) do
      if key:match("^bkr_check_status{") then
        statuses = statuses + 1
        assert.are.equal(3, value)
      end
    end
    assert.are.equal(1, statuses)

    out, rc = check("--config " .. q(cfg) .. " --prometheus " .. q(util.scratch("gone") .. "/no/dir/bkr.prom"))
    assert.are.equal(3, rc, out)
    assert.matches("^BKR UNKNOWN %- cannot write the metrics", out)
  end)

  it("escapes a database name with a quote, a backslash, a newline, '=' and '|' in every output", function()
    local odd = 'we"ird\\na\nme=\'x|y'
    local weird = util.scratch("repo")
    aged_backup(weird, odd, HOUR, "passed")
    aged_backup(weird, "plain", 40 * HOUR, "passed")
    local file = util.scratch("textfile") .. "/bkr.prom"
    local names = util.scratch("names") .. "/db"
    local out, rc = check("--repo " .. q(weird) .. " --db " .. q(odd) .. " --db plain --prometheus " .. q(file))
    assert.are.equal(2, rc, out)
    local state, text, perf = plugin_output(out)
    assert.are.equal("CRITICAL", state)
    assert.matches("^plain: newest verified backup 40 h old", text)
    assert.matches('we"ird\\\\na\\nme=\'x\\x7cy: no drill report', text, 1, true)
    assert.is_table(perf['we"ird\\\\na\\nme\\x3d\'x\\x7cy verified_age'])

    local samples = prometheus_samples(file)
    local wanted = "bkr_backup_newest_verified{database=" .. odd .. ",repository=" .. weird .. "}"
    assert.are.equal(1, samples[wanted], "the label reads back as the name itself")

    out, rc = check("--json --repo " .. q(weird) .. " --db " .. q(odd) .. " --db plain")
    assert.are.equal(2, rc, out)
    util.write(names, odd)
    assert.are.equal(util.read(names), jq(out, ".databases[0].database"))
  end)

  it("with databases: all judges the repository's databases and the server's, or says the server was not reached",
    function()
    local all = util.scratch("repo")
    aged_backup(all, "shop", HOUR, "passed")
    drill_report(all, HOUR, { shop = "passed" })
    local unreachable = config_file("repository: " .. all .. "\nconnection:\n  host: " .. util.scratch("nosocket")
      .. "\n")
    local out, rc = check("--config " .. q(unreachable))
    assert.are.equal(0, rc, out)
    assert.matches("databases from the repository only: server not reached", out, 1, true)
    out = check("--json --config " .. q(unreachable))
    assert.are.equal("repository shop", jq(out, '"\\(.databases_from) \\([.databases[].database] | join(","))"'))

    local lonely = util.new_database("lonely")
    out, rc = check("--json --repo " .. q(all))
    assert.are.equal(2, rc, out)
    assert.are.equal("repository and server CRITICAL no backup OK", jq(out, '"\\(.databases_from) '
      .. '\\(.databases[] | select(.database == "' .. lonely .. '") | .status + " " + .problems[0].message) '
      .. '\\(.databases[] | select(.database == "shop") | .status)"'))
    local excluded = config_file("exclude: [" .. lonely .. "]\n")
    out = check("--json --config " .. q(excluded) .. " --repo " .. q(all))
    assert.are.equal("", jq(out, '.databases[] | select(.database == "' .. lonely .. '") | .database'))
  end)

  it("is CRITICAL when a backup was truncated, grown, or lost its file or sidecar since it was written; "
    .. "freshness counts only intact backups", function()
    util.backup_newest(repo, db)
    local out, rc = run("verify --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local damaged = util.scratch("repo")
    util.sh("cp -a " .. q(repo) .. "/. " .. q(damaged))
    local newest = util.sh("ls " .. q(damaged .. "/daily") .. " | grep '_" .. db .. ".sql.gz$' | tail -n 1"):gsub("\n", "")
    local recorded = require("dkjson").decode(util.read(damaged .. "/daily/" .. newest .. ".json")).stored_bytes
    assert.are.equal(0, select(2, check("--config " .. q(cfg) .. " --repo " .. q(damaged))))
    util.sh("truncate -s 100 " .. q(damaged .. "/daily/" .. newest))
    out, rc = check("--config " .. q(cfg) .. " --repo " .. q(damaged))
    assert.are.equal(2, rc, out)
    local state, text, perf = plugin_output(out)
    assert.are.equal("CRITICAL", state)
    assert.matches(db .. ": daily/" .. newest .. " damaged since it was verified: size 100, manifest says "
      .. recorded .. "; run bkr verify", text, 1, true)
    assert.are_not.equal("100", perf[db .. " newest_size"].value, "the newest intact backup is measured")
    out = check("--json --config " .. q(cfg) .. " --repo " .. q(damaged))
    local fresh = jq(out, ".databases[0].newest_verified.file")
    assert.are_not.equal("daily/" .. newest, fresh, "a damaged backup is never the fresh verified one")
    assert.are.equal(require("dkjson").decode(util.read(damaged .. "/" .. fresh .. ".json")).stored_bytes,
      tonumber((util.sh("stat -c %s " .. q(damaged .. "/" .. fresh)))), "its size still matches its manifest")

    -- grown: bytes appended after the verify
    util.sh("cp -a " .. q(repo .. "/daily/" .. newest) .. " " .. q(damaged .. "/daily/"))
    util.sh("printf 'tail' >> " .. q(damaged .. "/daily/" .. newest))
    out, rc = check("--config " .. q(cfg) .. " --repo " .. q(damaged))
    assert.are.equal(2, rc, out)
    assert.matches("size " .. (recorded + 4) .. ", manifest says " .. recorded, out, 1, true)

    -- the sidecar, or the stored file itself, gone while the manifest stays
    local lost = util.scratch("repo")
    local path = aged_backup(lost, "shop", HOUR, "passed")
    aged_backup(lost, "shop", 2 * HOUR, "passed")
    drill_report(lost, HOUR, { shop = "passed" })
    assert.are.equal(0, select(2, check("--repo " .. q(lost) .. " --db shop")))
    util.sh("rm " .. q(path .. ".sha256"))
    out, rc = check("--repo " .. q(lost) .. " --db shop")
    assert.are.equal(2, rc, out)
    assert.matches("shop: daily/" .. path:match("[^/]+$") .. " damaged since it was verified: its sidecar", out, 1, true)
    util.sh("rm " .. q(path))
    out, rc = check("--json --repo " .. q(lost) .. " --db shop")
    assert.are.equal(2, rc, out)
    assert.are.equal("CRITICAL 1 daily/" .. path:match("[^/]+$") .. " damaged since it was verified: the file is "
      .. "missing, its manifest is there; run bkr verify", jq(out, '"\\(.status) \\(.databases[0].damaged) '
      .. '\\(.databases[0].problems[0].message)"'))
  end)

  it("is UNKNOWN with the permission message, never 'no backup', for manifests bkr may not read", function()
    local pgrepo = postgres_repo()
    assert.are.equal(0, select(2, as_postgres("check --repo " .. q(pgrepo) .. " --db shop")))
    util.sh("chown root: " .. q(pgrepo) .. "/daily/*.json && chmod 0600 " .. q(pgrepo) .. "/daily/*.json")
    local out, rc = as_postgres("check --repo " .. q(pgrepo) .. " --db shop")
    assert.are.equal(3, rc, out)
    assert.matches("^BKR UNKNOWN %- cannot read " .. pgrepo:gsub("%p", "%%%0") .. "/daily/backup_[^ ]+%.json: "
      .. "owned by root, mode 0600, bkr runs as postgres; fix: sudo chown %-R postgres: " .. pgrepo:gsub("%p", "%%%0")
      .. "\n$", out)
    out, rc = as_postgres("check --json --repo " .. q(pgrepo) .. " --db shop")
    assert.are.equal(3, rc, out)
    assert.matches("^cannot read ", jq(out, ".summary"))
  end)

  it("is UNKNOWN with the permission message, no Lua position, for a repository or drills directory at mode 0",
    function()
    local pgrepo = postgres_repo()
    util.sh("chmod 000 " .. q(pgrepo))
    local out, rc = as_postgres("check --repo " .. q(pgrepo) .. " --db shop")
    assert.are.equal(3, rc, out)
    no_position(out)
    assert.are.equal("BKR UNKNOWN - cannot read " .. pgrepo .. ": owned by postgres, mode 0000, bkr runs as postgres; "
      .. "fix: chmod -R u+rwX " .. pgrepo .. "\n", out)
    util.sh("chmod 750 " .. q(pgrepo) .. " && chmod 000 " .. q(pgrepo .. "/drills"))
    out, rc = as_postgres("check --repo " .. q(pgrepo) .. " --db shop")
    assert.are.equal(3, rc, out)
    no_position(out)
    assert.are.equal("BKR UNKNOWN - cannot read " .. pgrepo .. "/drills: owned by postgres, mode 0000, bkr runs as "
      .. "postgres; fix: chmod -R u+rwX " .. pgrepo .. "\n", out)
  end)

  it("WARNs about a drill report nested too deeply to decode, or too large, and still finds the older one", function()
    local nested = util.scratch("repo")
    aged_backup(nested, "shop", HOUR, "passed")
    drill_report(nested, 2 * HOUR, { shop = "passed" })
    local deep = nested .. "/drills/drill_" .. stamp_ago(HOUR) .. ".json"
    util.sh("python3 -c \"print('[' * 1000000)\" > " .. q(deep))
    local out, rc = check("--repo " .. q(nested) .. " --db shop")
    assert.are.equal(1, rc, out)
    no_position(out)
    local state, text = plugin_output(out)
    assert.are.equal("WARNING", state)
    assert.are.equal("unreadable drill report " .. deep .. " (not JSON)", text)
    util.sh("truncate -s 9M " .. q(deep))
    out, rc = check("--repo " .. q(nested) .. " --db shop")
    assert.are.equal(1, rc, out)
    assert.matches("unreadable drill report " .. deep .. " (larger than 8 MiB)", out, 1, true)
  end)
end)
