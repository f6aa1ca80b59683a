-- Encrypted backups end to end against the real cluster: bkr keygen, backup with a key,
-- verify, decrypt, list, rotate; checked with sha256sum, gunzip, psql, stat and an
-- independent decrypter written from docs/format.md (tests/decrypt_independent.py).
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local bkr = util.bkr_bin()

local SOURCE = os.getenv("BKR_SOURCE_DIR") or "."
local INDEPENDENT = SOURCE .. "/tests/decrypt_independent.py"
local HEADER, FULL = 27, 65536 + 16

local function run(args, env)
  return util.sh((env or "") .. " " .. q(bkr) .. " " .. args .. " 2>&1")
end

-- stdout and stderr apart: stdout goes to a file, whose content is returned
local function run_split(args)
  local out_file = util.scratch("out") .. "/stdout"
  local err, rc = util.sh(q(bkr) .. " " .. args .. " 2>&1 >" .. q(out_file))
  return util.read(out_file), err, rc
end

local counter = 0
local function new_database(sql)
  counter = counter + 1
  local name = string.format("enc_%d_%d", counter, math.random(1e6))
  util.psql("create database " .. name)
  if sql then
    local file = util.scratch("sql") .. "/setup.sql"
    util.write(file, sql)
    local out, rc = util.sh("psql -X -q -v ON_ERROR_STOP=1 -d " .. name .. " -f " .. q(file) .. " 2>&1")
    assert(rc == 0, out)
  end
  return name
end

local function new_key()
  local path = util.scratch("key") .. "/backup.key"
  local out, rc = run("keygen --out " .. q(path))
  assert(rc == 0, out)
  return path, out:match("key id (%x+)")
end

local function size_of(path)
  return tonumber(util.sh("stat -c %s " .. q(path)):match("%d+"))
end

-- Point the sidecar and the manifest at the file's current bytes, so that only the
-- decryption itself can notice the damage.
local reseal = util.resign

local ROWS_SQL = "create table t (id int primary key, x text); "
  .. "insert into t select i, md5(i::text) || repeat('z', i % 40) from generate_series(1, 40000) i;"

describe("bkr keygen", function()
  it("writes a base64 32-byte key with mode 0600 and prints its key id, never the key", function()
    local path = util.scratch("kg") .. "/k"
    local out, rc = run("keygen --out " .. q(path))
    assert.are.equal(0, rc, out)
    assert.are.equal("600", util.sh("stat -c %a " .. q(path)):match("%d+"))
    local text = util.read(path)
    assert.matches("^[A-Za-z0-9+/]+=*\n$", text)
    assert.are.equal("32", util.sh("base64 -d " .. q(path) .. " | wc -c"):match("%d+"))
    local id = util.sh("base64 -d " .. q(path) .. " | sha256sum"):sub(1, 16)
    assert.matches("key id " .. id, out)
    assert.is_nil(out:find(text:sub(1, 44), 1, true))
  end)

  it("refuses to overwrite an existing file and leaves it as it was", function()
    local path = util.scratch("kg") .. "/k"
    assert.are.equal(0, select(2, run("keygen --out " .. q(path))))
    local before = util.read(path)
    local out, rc = run("keygen --out " .. q(path))
    assert.are.equal(1, rc)
    assert.matches("already exists; a key file is never overwritten", out)
    assert.are.equal(before, util.read(path))
  end)

  it("needs --out: a key is never printed", function()
    local out, rc = run("keygen")
    assert.are.equal(2, rc)
    assert.matches("give %-%-out FILE", out)
    assert.are.equal(2, select(2, run("keygen --out -")))
  end)
end)

describe("encrypted backups", function()
  local db, repo, key, key_id, path

  -- One encrypted backup shared by the checks that only read it; damage tests copy it.
  local function setup()
    if path then return end
    db = new_database(ROWS_SQL)
    repo = util.scratch("repo")
    key, key_id = new_key()
    local out, rc = run("backup --repo " .. q(repo) .. " --db " .. db .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
    path = repo .. "/daily/" .. util.sh("ls " .. q(repo .. "/daily") .. " | grep '^backup_.*enc$'"):gsub("\n", "")
  end

  -- A fresh copy of the backup with its sidecars, under a repository of its own.
  local function copy_backup()
    setup()
    local dir = util.scratch("copy")
    util.sh("mkdir -p " .. q(dir .. "/daily") .. " && cp -p " .. q(path) .. " " .. q(path .. ".sha256") .. " "
      .. q(path .. ".json") .. " " .. q(dir .. "/daily/"))
    return dir, dir .. "/daily/" .. path:match("[^/]+$")
  end

  it("are written as .sql.gz.enc with sidecars that sha256sum -c accepts and a manifest naming the key id", function()
    setup()
    assert.matches("/backup_%d+_%d+_" .. db .. "%.sql%.gz%.enc$", path)
    assert.are.equal("BKRENC", util.read(path):sub(1, 6))
    assert.is_false(util.gzip_ok(path))
    local check, crc = util.sh("cd " .. q(repo .. "/daily") .. " && sha256sum -c " .. q(path:match("[^/]+$") .. ".sha256"))
    assert.are.equal(0, crc, check)
    local manifest = json.decode(util.read(path .. ".json"))
    assert.is_true(manifest.encrypted)
    assert.are.same({ algorithm = "AES-256-GCM", format = "bkr-chunked-1", chunk_size = 65536, key_id = key_id },
      manifest.encryption)
    assert.are.equal(util.sha256sum(path), manifest.sha256)
    assert.are.equal(size_of(path), manifest.stored_bytes)
    assert.are.equal(40000, manifest.tables[1].rows)
    -- the globals of the same run are encrypted too
    local globals = util.sh("ls " .. q(repo .. "/daily") .. " | grep '^globals_.*enc$'"):gsub("\n", "")
    assert.matches("^globals_%d+_%d+%.sql%.gz%.enc$", globals)
    assert.is_true(json.decode(util.read(repo .. "/daily/" .. globals .. ".json")).encrypted)
  end)

  it("are decrypted by an independent program written from docs/format.md alone", function()
    setup()
    local dir = util.scratch("indep")
    local out, rc = util.sh("python3 " .. q(INDEPENDENT) .. " " .. q(key) .. " " .. q(path) .. " " .. q(dir .. "/plain.gz") .. " 2>&1")
    assert.are.equal(0, rc, out)
    assert.is_true(util.gzip_ok(dir .. "/plain.gz"))
    local independent = util.sh("gunzip -c " .. q(dir .. "/plain.gz") .. " | sha256sum"):sub(1, 64)
    local by_bkr = util.sh(q(bkr) .. " decrypt " .. q(path) .. " --key-file " .. q(key) .. " --gunzip | sha256sum"):sub(1, 64)
    assert.are.equal(independent, by_bkr)
    local raw = tonumber(util.sh("gunzip -c " .. q(dir .. "/plain.gz") .. " | wc -c"):match("%d+"))
    assert.are.equal(json.decode(util.read(path .. ".json")).raw_bytes, raw)
    assert.matches("PostgreSQL database dump complete", util.sh("gunzip -c " .. q(dir .. "/plain.gz") .. " | tail -n 8"))
  end)

  it("restore with bkr decrypt --gunzip | psql into an identical database", function()
    setup()
    local target = new_database()
    local out, rc = util.sh(q(bkr) .. " decrypt " .. q(path) .. " --key-file " .. q(key)
      .. " --gunzip | psql -X -q -v ON_ERROR_STOP=1 -d " .. target .. " 2>&1 >/dev/null")
    assert.are.equal(0, rc, out)
    local digest = "select count(*) || ':' || md5(string_agg(id || x, ',' order by id)) from t"
    assert.are.equal(util.psql(digest, db), util.psql(digest, target))
    -- --out writes the gzip stream, mode 0600
    local dir = util.scratch("dec")
    out, rc = run("decrypt " .. q(path) .. " --key-file " .. q(key) .. " --out " .. q(dir .. "/x.sql.gz"))
    assert.are.equal(0, rc, out)
    assert.is_true(util.gzip_ok(dir .. "/x.sql.gz"))
    assert.are.equal("600", util.sh("stat -c %a " .. q(dir .. "/x.sql.gz")):match("%d+"))
    -- an existing file is not replaced
    out, rc = run("decrypt " .. q(path) .. " --key-file " .. q(key) .. " --out " .. q(dir .. "/x.sql.gz"))
    assert.are.equal(1, rc)
    assert.matches(dir .. "/x.sql.gz: already exists", out, 1, true)
  end)

  it("pass verify with the key, authenticating every chunk, and record passed", function()
    local dir, copy = copy_backup()
    local out, rc = run("verify --repo " .. q(dir) .. " --key-file " .. q(key))
    assert.are.equal(0, rc, out)
    assert.matches("ok +daily/backup_.*%.enc\n", out)
    assert.are.equal("passed", json.decode(util.read(copy .. ".json")).verification.result)
  end)

  it("get a checksum-only verdict from verify without a key, said and recorded as such", function()
    local dir, copy = copy_backup()
    local out, rc = run("verify --repo " .. q(dir))
    assert.are.equal(0, rc, out)
    assert.matches("ok +daily/.*%(checksum only: no key to authenticate the chunks%)", out)
    assert.matches("not decrypted: no key given", out)
    assert.are.equal("checksum-only", json.decode(util.read(copy .. ".json")).verification.result)
    -- a damaged byte is still caught by the checksum
    util.flip_byte(copy, 5000)
    out, rc = run("verify --repo " .. q(dir))
    assert.are.equal(3, rc)
    assert.matches("checksum mismatch", out)
  end)

  it("fail verify and decrypt with the wrong key: exit 3, both key ids, no plaintext, verdict kept", function()
    local dir, copy = copy_backup()
    local other, other_id = new_key()
    local out, rc = run("verify --repo " .. q(dir) .. " --key-file " .. q(other))
    assert.are.equal(3, rc)
    assert.matches("wrong key: encrypted with key " .. key_id .. ", the key given is " .. other_id, out)
    assert.is_nil(json.decode(util.read(copy .. ".json")).verification)
    local stdout, err, drc = run_split("decrypt " .. q(copy) .. " --key-file " .. q(other))
    assert.are.equal(3, drc)
    assert.are.equal("", stdout)
    assert.matches("encrypted with key " .. key_id .. ", the key given is " .. other_id, err)
    local target = util.scratch("wrong") .. "/out.gz"
    _, drc = run("decrypt " .. q(copy) .. " --key-file " .. q(other) .. " --out " .. q(target))
    assert.are.equal(3, drc)
    assert.is_nil(io.open(target))
  end)

  -- Each form of damage, with the sidecar and manifest updated to match so that only the
  -- authentication can catch it: verify and decrypt both exit 3 and write no plaintext.
  local damages = {
    { "a flipped byte in the header", function(p) util.flip_byte(p, 2) end },
    { "a flipped byte in chunk 1", function(p)
      util.flip_byte(p, (HEADER + FULL + 1000)) end },
    { "a flipped byte in the last tag", function(p)
      util.flip_byte(p, (size_of(p) - 3)) end },
    { "truncation at a chunk boundary", function(p) util.sh("truncate -s " .. (HEADER + 3 * FULL) .. " " .. q(p)) end },
    { "truncation inside a chunk", function(p) util.sh("truncate -s " .. (HEADER + 2 * FULL + 5000) .. " " .. q(p)) end },
    { "chunks 1 and 2 swapped", function(p)
      local data = util.read(p)
      local c1 = data:sub(HEADER + FULL + 1, HEADER + 2 * FULL)
      local c2 = data:sub(HEADER + 2 * FULL + 1, HEADER + 3 * FULL)
      util.write(p, data:sub(1, HEADER + FULL) .. c2 .. c1 .. data:sub(HEADER + 3 * FULL + 1))
    end },
    { "garbage appended", function(p) util.sh("printf 'garbage' >> " .. q(p)) end },
  }
  for _, damage in ipairs(damages) do
    it("are refused by verify and decrypt with exit 3 and no plaintext after " .. damage[1], function()
      local dir, copy = copy_backup()
      assert.is_true(size_of(copy) > HEADER + 4 * FULL)
      damage[2](copy)
      reseal(copy)
      local out, rc = run("verify --repo " .. q(dir) .. " --key-file " .. q(key))
      assert.are.equal(3, rc, out)
      assert.matches("FAILED +daily/", out)
      assert.are.equal("failed", json.decode(util.read(copy .. ".json")).verification.result)
      for _, flags in ipairs({ "", " --gunzip" }) do
        local stdout, err, drc = run_split("decrypt " .. q(copy) .. " --key-file " .. q(key) .. flags)
        assert.are.equal(3, drc, err)
        assert.are.equal(0, #stdout)
        assert.matches("bkr: decrypt: ", err)
        local target = util.scratch("dmg") .. "/out"
        _, drc = run("decrypt " .. q(copy) .. " --key-file " .. q(key) .. flags .. " --out " .. q(target))
        assert.are.equal(3, drc)
        assert.are.same({}, util.listdir(target:match("^(.*)/")))
      end
    end)
  end

  it("are listed as encrypted", function()
    setup()
    local rows = json.decode(run("list --json --repo " .. q(repo)))
    assert.is_true(rows[1].encrypted)
    assert.matches(db .. ".-yes\n", run("list --repo " .. q(repo)))
  end)

  it("are rotated with both their sidecars like plain backups", function()
    local d = new_database("create table t (x int);")
    local r = util.scratch("repo")
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    local k = new_key()
    util.write(cfg, "repository: " .. r .. "\nretention: { daily: 1 }\nencryption:\n  key_file: " .. k .. "\n")
    assert.are.equal(0, select(2, run("backup --no-globals --config " .. q(cfg) .. " --db " .. d)))
    local first = util.sh("ls " .. q(r .. "/daily")):match("(backup_%S+%.enc)\n")
    util.sh("sleep 1.1")
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. d)
    assert.are.equal(0, rc, out)
    local files = util.listdir(r .. "/daily")
    assert.are.equal(3, #files)
    for _, f in ipairs(files) do assert.is_nil(f:find(first, 1, true)) end
    assert.matches("%.sql%.gz%.enc$", files[1])
  end)

  it("take the key from an environment variable named in the configuration", function()
    local d = new_database("create table t (x int);")
    local r = util.scratch("repo")
    local cfg = util.scratch("cfg") .. "/bkr.yaml"
    local k, id = new_key()
    util.write(cfg, "repository: " .. r .. "\nencryption:\n  key_env: BKR_TEST_KEY\n")
    local env = "BKR_TEST_KEY=" .. q(util.read(k):gsub("\n", ""))
    local out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. d, env)
    assert.are.equal(0, rc, out)
    local manifest = util.sh("cat " .. q(r) .. "/daily/*.enc.json")
    assert.are.equal(id, json.decode(manifest).encryption.key_id)
    out, rc = run("verify --config " .. q(cfg), env)
    assert.are.equal(0, rc, out)
    assert.not_matches("checksum only", out)
    out, rc = run("backup --no-globals --config " .. q(cfg) .. " --db " .. d)
    assert.are.equal(2, rc)
    assert.matches("environment variable BKR_TEST_KEY is not set", out)
  end)

  it("refuse a key file readable by group or others, and a file that is not a key, before any work", function()
    local d = new_database("create table t (x int);")
    local r = util.scratch("repo")
    local k = new_key()
    util.sh("chmod 640 " .. q(k))
    local out, rc = run("backup --no-globals --repo " .. q(r) .. " --db " .. d .. " --key-file " .. q(k))
    assert.are.equal(2, rc)
    assert.matches("key file " .. k:gsub("%p", "%%%0") .. " is readable by group or others %(mode 0640%); run: chmod 600 ", out)
    -- nothing but the log's record of the refused run (its start and finish lines)
    assert.are.equal("", util.sh("find " .. q(r) .. " -type f ! -name bkr.log 2>/dev/null"))
    assert.matches('"exit_code":2', util.read(r .. "/bkr.log"))
    local bad = util.scratch("bad") .. "/k"
    util.write(bad, "this is not a key but a secret sentence\n")
    util.sh("chmod 600 " .. q(bad))
    out, rc = run("backup --no-globals --repo " .. q(r) .. " --db " .. d .. " --key-file " .. q(bad))
    assert.are.equal(2, rc)
    assert.matches("is not a bkr key", out)
    assert.not_matches("secret sentence", out)
    out, rc = run("decrypt /nonexistent.enc")
    assert.are.equal(2, rc)
    assert.matches("no key: give %-%-key%-file FILE", out)
  end)

  it("keep the key out of children's argv and environment, manifests, logs and messages", function()
    local d = new_database(ROWS_SQL)
    local r = util.scratch("repo")
    local k = new_key()
    local text = util.read(k):gsub("\n", "")
    local raw_hex = util.sh("base64 -d " .. q(k) .. " | od -An -tx1 | tr -d ' \n'")
    assert.are.equal(64, #raw_hex)
    local bindir = util.fake_pg_dump('echo "$@" > "$FAKEBIN/argv"\nenv > "$FAKEBIN/env"\nexec "$REAL_PG_DUMP" "$@"')
    local cfg = bindir .. "/bkr.yaml"
    util.write(cfg, "repository: " .. r .. "\npg_bindir: " .. bindir .. "\nencryption:\n  key_file: " .. k .. "\n")
    local outputs = {}
    local function collect(args)
      local out = run(args)
      outputs[#outputs + 1] = out
      return out
    end
    collect("backup --no-globals --config " .. q(cfg) .. " --db " .. d)
    collect("verify --config " .. q(cfg))
    collect("list --config " .. q(cfg))
    local file = util.sh("ls " .. q(r) .. "/daily/*.enc"):gsub("\n", "")
    collect("decrypt " .. q(file) .. " --config " .. q(cfg) .. " --out " .. q(bindir .. "/x.gz"))
    collect("decrypt " .. q(file) .. " --key-file " .. q(new_key()))
    local haystack = table.concat(outputs) .. util.read(bindir .. "/argv") .. util.read(bindir .. "/env")
    for _, needle in ipairs({ text, text:sub(1, 20), raw_hex, raw_hex:sub(1, 32) }) do
      assert.is_nil(haystack:lower():find(needle:lower(), 1, true), "the key leaked into output, argv or env")
      assert.are.equal("", util.sh("grep -rlF " .. q(needle) .. " " .. q(r)))
      assert.are.equal("", util.sh("grep -rliF " .. q(needle) .. " " .. q(r)))
    end
  end)
end)
