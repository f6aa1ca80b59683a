-- bkr verify against the real cluster, checked with sha256sum, gunzip and the files themselves.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local run = util.bkr
local tree, backups_of = util.tree, util.backups_of

local function new_database(sql)
  return util.new_database("bk", sql)
end

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
    util.resign(path)
    local out, rc = run("verify " .. q(path))
    assert.are.equal(3, rc)
    assert.matches("truncated", out)
  end)

  it("fails a dump cut at a line end and recompressed: no completion marker", function()
    fresh_backup()
    util.sh("gunzip -c " .. q(path) .. " 2>/dev/null | head -n 50 | gzip > " .. q(path .. ".new") .. " && mv " .. q(path .. ".new") .. " " .. q(path))
    util.resign(path, function(manifest)
      manifest.raw_bytes = tonumber(util.sh("gunzip -c " .. q(path) .. " | wc -c"):match("%d+"))
    end)
    local out, rc = run("verify " .. q(path))
    assert.are.equal(3, rc)
    assert.matches("truncated", out)
  end)

  it("fails a damaged block in the middle of a multi-block backup, even with forged checksums: exit 3", function()
    local big = new_database("create table t (x text); insert into t select md5(i::text) || repeat(md5((i * 7)::text), 3) from generate_series(1, 40000) i;")
    local r = util.scratch("repo")
    local out, rc = run("backup --no-globals --repo " .. q(r) .. " --db " .. big)
    assert.are.equal(0, rc, out)
    local file = r .. "/daily/" .. backups_of(r, big)[1]
    local second = util.read(file):find("\31\139\8", 2, true) -- the second gzip member (block)
    assert.is_truthy(second, "a dump of several MiB is several blocks")
    util.flip_byte(file, second + 3000)
    util.resign(file)
    out, rc = run("verify " .. q(file))
    assert.are.equal(3, rc, out)
    assert.matches("FAILED.*corrupt gzip", out)
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
