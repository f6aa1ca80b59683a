-- compression: zstd end to end against the real cluster: backup, verify, restore, decrypt,
-- list and rotation of .sql.zst files, and a repository holding gzip and zstd backups of one
-- database. Checked with the independent tools: zstd -t, zstd -dc | psql, sha256sum.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr

local SETUP = "create table t (id int primary key, x text);"
  .. " insert into t select i, md5(i::text) from generate_series(1, 20000) i;"

local function new_database()
  return util.new_database("zs", SETUP)
end

-- A configuration file with `compression: zstd` (and whatever else is given).
local function zstd_config(repo, extra)
  local path = util.scratch("cfg") .. "/bkr.yaml"
  util.write(path, "repository: " .. repo .. "\ncompression: zstd\n" .. (extra or ""))
  return path
end

local files = util.files

local function table_summary(db)
  return util.psql("select count(*) || ':' || md5(string_agg(x, ',' order by id)) from t", db)
end

describe("compression: zstd", function()
  it("writes .sql.zst files that zstd -t accepts and zstd -dc | psql restores", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = zstd_config(repo)
    local out, rc = run("backup --create-repo --config " .. q(cfg) .. " --db " .. db)
    assert.are.equal(0, rc, out)
    local dumps = files(repo, "^backup_.*_" .. db .. "%.sql%.zst$")
    assert.are.equal(1, #dumps, out)
    assert.are.same({}, files(repo, "%.sql%.gz"))
    local path = repo .. "/daily/" .. dumps[1]
    assert.are.equal(0, select(2, util.sh("zstd -q -t " .. q(path))))
    -- every frame carries its content checksum
    assert.matches("XXH64", util.sh("zstd -lv " .. q(path) .. " 2>&1"))
    -- the globals of the run are zstd too
    local globals = files(repo, "^globals_.*%.sql%.zst$")
    assert.are.equal(1, #globals)
    assert.are.equal(0, select(2, util.sh("zstd -q -t " .. q(repo .. "/daily/" .. globals[1]))))
    -- the sidecar is sha256sum's, the manifest says zstd at the default level
    assert.are.equal(0, select(2, util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum -c --quiet "
      .. q(dumps[1] .. ".sha256"))))
    local manifest = json.decode(util.read(path .. ".json"))
    assert.are.same({ algorithm = "zstd", level = 3 }, manifest.compression)
    assert.are.equal(tonumber((util.sh("zstd -dc " .. q(path) .. " | wc -c"):match("%d+"))), manifest.raw_bytes)
    -- restored by hand, without bkr
    local target = util.new_database("zs_hand")
    local _, prc = util.sh("zstd -dc " .. q(path) .. " | psql -X -q -v ON_ERROR_STOP=1 -d " .. target .. " >/dev/null")
    assert.are.equal(0, prc)
    assert.are.equal(table_summary(db), table_summary(target))
  end)

  it("is verified end to end, and a damaged byte in the middle fails verification (exit 3)", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = zstd_config(repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local path = repo .. "/daily/" .. files(repo, "%.sql%.zst$")[1]
    local out, rc = run("verify --latest --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("ok +daily/backup_.*%.sql%.zst", out)
    assert.are.equal("passed", json.decode(util.read(path .. ".json")).verification.result)
    local size = tonumber(util.sh("stat -c %s " .. q(path)):match("%d+"))
    local original = util.scratch("orig") .. "/backup.sql.zst"
    util.sh("cp " .. q(path) .. " " .. q(original))
    util.flip_byte(path, size // 2)
    out, rc = run("verify --latest --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.matches("FAILED +daily/.*checksum mismatch", out)
    -- the same damage with a sidecar and manifest that match it: zstd itself notices
    util.resign(path)
    out, rc = run("verify " .. q(path))
    assert.are.equal(3, rc, out)
    assert.matches("FAILED +[^:]+: corrupt: ", out)
    -- a file cut short, with a sidecar and manifest that match it: truncated
    util.sh("head -c " .. (size - 200) .. " " .. q(original) .. " > " .. q(path))
    util.resign(path)
    out, rc = run("verify " .. q(path))
    assert.are.equal(3, rc, out)
    assert.matches("FAILED +[^:]+: truncated: ", out)
  end)

  it("is restored by bkr restore, table by table", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = zstd_config(repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local target = db .. "_r"
    local out, rc = run("restore --config " .. q(cfg) .. " --db " .. db .. " --latest --into " .. target .. " --create")
    assert.are.equal(0, rc, out)
    assert.matches("compare: 1 of 1 tables match", out)
    assert.are.equal(table_summary(db), table_summary(target))
  end)

  it("encrypted: .sql.zst.enc round-trips through verify, decrypt --decompress and restore", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local key = util.scratch("key") .. "/backup.key"
    assert.are.equal(0, select(2, run("keygen --out " .. q(key))))
    local cfg = zstd_config(repo)
    local out, rc = run("backup --create-repo --config " .. q(cfg) .. " --db " .. db .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
    local dumps = files(repo, "^backup_.*%.sql%.zst%.enc$")
    assert.are.equal(1, #dumps)
    assert.are.equal(1, #files(repo, "^globals_.*%.sql%.zst%.enc$"))
    local path = repo .. "/daily/" .. dumps[1]
    out, rc = run("verify --latest --config " .. q(cfg) .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
    assert.not_matches("checksum only", out)
    -- decrypt gives the zstd stream, --decompress (and its old name --gunzip) the SQL
    local zst = util.scratch("out") .. "/dump.sql.zst"
    assert.are.equal(0, select(2, run("decrypt " .. q(path) .. " --key-file " .. q(key) .. " --out " .. q(zst))))
    assert.are.equal(0, select(2, util.sh("zstd -q -t " .. q(zst))))
    for _, flag in ipairs({ "--decompress", "--gunzip" }) do
      local target = util.new_database("zs_dec")
      local _, prc = util.sh(q(util.bkr_bin()) .. " decrypt " .. q(path) .. " --key-file " .. q(key) .. " " .. flag
        .. " | psql -X -q -v ON_ERROR_STOP=1 -d " .. target .. " >/dev/null")
      assert.are.equal(0, prc, flag)
      assert.are.equal(table_summary(db), table_summary(target))
    end
    local target = db .. "_r"
    out, rc = run("restore --config " .. q(cfg) .. " --key-file " .. q(key) .. " --db " .. db .. " --latest --into "
      .. target .. " --create --globals")
    assert.are.equal(0, rc, out)
    assert.are.equal(table_summary(db), table_summary(target))
  end)

  it("a repository with gzip and zstd backups of one database: list, --latest and rotation see both", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local gzip_cfg = util.scratch("cfg") .. "/gzip.yaml"
    util.write(gzip_cfg, "repository: " .. repo .. "\nretention: {daily: 1}\n")
    local zstd_cfg = zstd_config(repo, "retention: {daily: 1}\n")
    assert.are.equal(0, select(2, run("backup --no-globals --no-rotate --create-repo --config " .. q(gzip_cfg)
      .. " --db " .. db)))
    util.sh("sleep 1.1")
    util.psql("insert into t values (0, 'newer')", db)
    assert.are.equal(0, select(2, run("backup --no-globals --no-rotate --config " .. q(zstd_cfg) .. " --db " .. db)))
    local rows = json.decode(run("list --json --config " .. q(zstd_cfg)))
    assert.are.equal(2, #rows)
    assert.matches("%.sql%.zst$", rows[1].file)
    assert.are.equal("zstd", rows[1].compression)
    assert.matches("%.sql%.gz$", rows[2].file)
    assert.are.equal("gzip", rows[2].compression)
    -- --latest is the zstd one, whichever compression the configuration now says
    local out, rc = run("restore --config " .. q(gzip_cfg) .. " --db " .. db .. " --latest --dry-run")
    assert.are.equal(0, rc, out)
    assert.matches("%.sql%.zst", out)
    out, rc = run("verify --all --config " .. q(gzip_cfg))
    assert.are.equal(0, rc, out)
    assert.matches("ok +daily/backup_.*%.sql%.gz\n", out)
    assert.matches("ok +daily/backup_.*%.sql%.zst\n", out)
    local target = db .. "_r"
    out, rc = run("restore --config " .. q(gzip_cfg) .. " --db " .. db .. " --latest --into " .. target .. " --create")
    assert.are.equal(0, rc, out)
    assert.are.equal("newer", util.psql("select x from t where id = 0", target))
    -- rotation keeps the newest (zstd), removes the gzip backup with its sidecars
    out, rc = run("rotate --config " .. q(gzip_cfg))
    assert.are.equal(0, rc, out)
    assert.matches("removed daily/backup_.*%.sql%.gz ", out)
    assert.are.same({}, files(repo, "%.sql%.gz"))
    assert.are.equal(3, #files(repo, "%.sql%.zst"))
  end)

  it("rotation removes an orphan sidecar of a .sql.zst backup, and a zstd temporary file", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = zstd_config(repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local name = files(repo, "%.sql%.zst$")[1]
    os.remove(repo .. "/daily/" .. name)
    util.write(repo .. "/daily/.bkr-tmp." .. name .. ".abcdef", "partial")
    local out, rc = run("rotate --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.matches("orphan sidecar", out)
    assert.are.same({}, files(repo, "."))
  end)

  it("configuration: compression is gzip or zstd, with a hint for a typo; the level's range follows it", function()
    local repo = util.scratch("repo")
    util.sh("mkdir -p " .. q(repo))
    local cases = {
      { "compression: zsdt\n", "configuration: compression: expected gzip or zstd; did you mean zstd%?" },
      { "compression: zstd\ncompression_level: 0\n", "compression_level: expected an integer from 1 to 19" },
      { "compression: zstd\ncompression_level: 20\n", "compression_level: expected an integer from 1 to 19" },
      { "compression: gzip\ncompression_level: 12\n", "compression_level: expected an integer from 0 to 9" },
    }
    for _, case in ipairs(cases) do
      local path = util.scratch("cfg") .. "/bkr.yaml"
      util.write(path, "repository: " .. repo .. "\n" .. case[1])
      local out, rc = run("list --config " .. q(path))
      assert.are.equal(2, rc, case[1])
      assert.matches(case[2], out)
    end
    -- a level zstd takes and gzip does not
    local db = new_database()
    local cfg = zstd_config(repo, "compression_level: 12\n")
    assert.are.equal(0, select(2, run("backup --no-globals --config " .. q(cfg) .. " --db " .. db)))
    local name = files(repo, "%.sql%.zst$")[1]
    assert.are.same({ algorithm = "zstd", level = 12 },
      json.decode(util.read(repo .. "/daily/" .. name .. ".json")).compression)
  end)

  it("a manifest that says gzip for a .sql.zst file marks the backup damaged", function()
    local db = new_database()
    local repo = util.scratch("repo")
    local cfg = zstd_config(repo)
    assert.are.equal(0, select(2, run("backup --no-globals --create-repo --config " .. q(cfg) .. " --db " .. db)))
    local path = repo .. "/daily/" .. files(repo, "%.sql%.zst$")[1]
    local manifest = json.decode(util.read(path .. ".json"))
    manifest.compression = { algorithm = "gzip", level = 6 }
    util.write(path .. ".json", json.encode(manifest))
    local out, rc = run("verify --latest --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.matches("the file name a zstd one", out)
    -- and a plain .sql.zst whose manifest says custom format is named as such
    manifest.compression = { algorithm = "zstd", level = 3 }
    manifest.dump_format = "custom"
    util.write(path .. ".json", json.encode(manifest))
    out, rc = run("verify --latest --config " .. q(cfg))
    assert.are.equal(3, rc, out)
    assert.matches("the manifest describes a custom-format backup, the file name a zstd one", out, 1, true)
  end)
end)
