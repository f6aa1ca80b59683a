-- Unit specs for recipes/lib: the pure decisions (names, stamps, order, retention, the
-- manifest schema, command lines, printable names), called directly, fast, without a cluster.
-- The end-to-end specs prove the same rules through the binary.
package.path = (os.getenv("BKR_SOURCE_DIR") or ".") .. "/recipes/?.lua;" .. package.path
local repo = require "lib.repo"
local retention = require "lib.retention"
local manifest = require "lib.manifest"
local cli = require "lib.cli"
local json = require "lib.json"

describe("lib.repo stamps", function()
  it("reads real UTC times and refuses impossible ones", function()
    for _, case in ipairs({
      { "19700101_000000", 0 },
      { "20261130_044820", 1796014100 },
      { "20240229_235959", 1709251199 },
      { "20261345_000000", nil }, { "20260230_000000", nil }, { "20250229_000000", nil },
      { "20261130_240000", nil }, { "20261130_236000", nil }, { "20261130_235960", nil },
      { "20261130_999999", nil }, { "2026113_044820", nil }, { "20261130-044820", nil },
    }) do
      assert.are.equal(case[2], repo.stamp_epoch(case[1]), case[1])
    end
  end)

  it("reads a run's stamp with its sequence, and only the sequences bkr writes", function()
    assert.are.same({ 1796014100, 1 }, { repo.parse_stamp("20261130_044820") })
    assert.are.same({ 1796014100, 2 }, { repo.parse_stamp("20261130_044820-2") })
    assert.are.same({ 1796014100, 12 }, { repo.parse_stamp("20261130_044820-12") })
    for _, bad in ipairs({ "20261130_044820-1", "20261130_044820-02", "20261130_044820-", "20261130_044820-x" }) do
      assert.is_nil(repo.parse_stamp(bad), bad)
    end
  end)

  it("gives a new run a stamp after every earlier run of its second, even when a lower one is free", function()
    local dir = os.getenv("BKR_TEST_TMP") .. "/seq" .. math.random(1e9)
    assert(os.execute("mkdir -p " .. dir .. " && touch " .. dir .. "/backup_20261130_044820-3_crm.sql.gz "
      .. dir .. "/globals_20261130_044821.sql.gz " .. dir .. "/backup_20261130_0448209_x.sql.gz"))
    local function highest(second) return repo.highest_sequence(dir, { "backup_", "globals_" }, second) end
    assert.are.equal("20261130_044820-4", repo.new_stamp(1796014100, highest))
    assert.are.equal("20261130_044821-2", repo.new_stamp(1796014101, highest))
    assert.are.equal("20261130_044822", repo.new_stamp(1796014102, highest))
  end)

  it("orders backups by time, then by sequence within a second", function()
    local list = {
      { time = 10, sequence = 1, path = "a" }, { time = 10, sequence = 10, path = "b" },
      { time = 11, sequence = 1, path = "c" }, { time = 10, sequence = 2, path = "d" },
    }
    table.sort(list, repo.newer)
    assert.are.same({ "c", "b", "d", "a" }, { list[1].path, list[2].path, list[3].path, list[4].path })
  end)

  it("matches backup names with and without a sequence, and nothing else", function()
    -- stamp, escaped name, encrypted, and how it is stored (lib/codec.lua's storage, by name)
    local function backup(file)
      local stamp, db, encrypted, storage = repo.match_backup(file)
      return { stamp, db, encrypted, storage and storage.name }
    end
    local function globals(file)
      local stamp, encrypted, storage = repo.match_globals(file)
      return { stamp, encrypted, storage and storage.name }
    end
    assert.are.same({ "20261130_044820-2", "app%20db", false, "gzip" }, backup("backup_20261130_044820-2_app%20db.sql.gz"))
    assert.are.same({ "20261130_044820", "x", true, "gzip" }, backup("backup_20261130_044820_x.sql.gz.enc"))
    assert.are.same({ "20261130_044820", "x", false, "zstd" }, backup("backup_20261130_044820_x.sql.zst"))
    assert.are.same({ "20261130_044820", "x.sql.gz", true, "zstd" }, backup("backup_20261130_044820_x.sql.gz.sql.zst.enc"))
    assert.is_nil(repo.match_backup("backup_20261130_044820-1_x.sql.gz"))
    assert.is_nil(repo.match_backup("backup_20261399_044820_x.sql.gz"))
    assert.is_nil(repo.match_backup("backup_20261130_044820_x.sql.zstd"))
    assert.are.same({ "20261130_044820-3", false, "gzip" }, globals("globals_20261130_044820-3.sql.gz"))
    assert.are.same({ "20261130_044820", true, "zstd" }, globals("globals_20261130_044820.sql.zst.enc"))
  end)

  it("knows its own temporary files and no one else's", function()
    for _, own in ipairs({ ".bkr-tmp.backup_x.sql.gz.Ab12Cd", ".backup_20260101_000000_db.sql.gz.tmp.Ab12Cd",
      ".backup_20260101_000000_db.sql.gz.json.tmp.Ab12Cd", ".globals_20260101_000000.sql.gz.tmp.Ab12Cd" }) do
      assert.is_true(repo.is_temporary(own), own)
    end
    for _, other in ipairs({ ".editor.tmp.swp", ".my.tmp.notes", "notes.txt", ".backup_x.tmp.Ab12Cd",
      "backup_20260101_000000_db.sql.gz" }) do
      assert.is_false(repo.is_temporary(other), other)
    end
  end)
end)

describe("lib.retention plan", function()
  local function backups(n, verified_at)
    local list = {}
    for i = 1, n do
      list[i] = { database = "db", type = "daily", time = 1000 - i, sequence = 1, path = "p" .. i,
        verified = i == verified_at and "passed" or nil }
    end
    return list
  end

  it("keeps the newest N, the newest verified one and what the run wrote", function()
    local remove, keep = retention.plan(backups(10, 9), { daily = 3 }, 1000, { "p7" })
    local kept = {}
    for _, item in ipairs(keep) do kept[#kept + 1] = item.backup.path end
    assert.are.same({ "p1", "p2", "p3", "p7", "p9" }, kept)
    assert.are.equal(5, #remove)
  end)

  it("keeps nothing beyond the newest verified one with a count of 0", function()
    local remove, keep = retention.plan(backups(4, 2), { daily = 0 }, 1000)
    assert.are.equal(1, #keep)
    assert.are.equal("p2", keep[1].backup.path)
    assert.are.equal(3, #remove)
  end)
end)

describe("lib.manifest schema", function()
  local function valid()
    return {
      format = "bkr-backup-1", kind = "database", database = "app", type = "daily",
      file = "backup_20261130_044820_app.sql.gz", start_time = "2026-11-30T04:48:20Z",
      raw_bytes = 10, stored_bytes = 5, sha256 = string.rep("a", 64), encrypted = false,
      tables = { { schema = "public", name = "t", rows = 3, digest = string.rep("0", 64) } },
    }
  end

  it("accepts what bkr writes", function()
    assert.is_table(manifest.parse(json.encode(valid()), "m"))
    local globals = valid()
    globals.kind, globals.database, globals.tables = "globals", nil, nil
    assert.is_table(manifest.parse(json.encode(globals), "m"))
  end)

  local broken = {
    { "not a JSON object", function() return 5 end },
    { "format", function(m) m.format = "other" end },
    { "raw_bytes", function(m) m.raw_bytes = nil end },
    { "raw_bytes", function(m) m.raw_bytes = 1e300 end },
    { "raw_bytes", function(m) m.raw_bytes = -1 end },
    { "stored_bytes", function(m) m.stored_bytes = 1.5 end },
    { "sha256", function(m) m.sha256 = "abc" end },
    { "start_time", function(m) m.start_time = "2026-13-45T00:00:00Z" end },
    { "tables", function(m) m.tables = 5 end },
    { "tables%[1%]", function(m) m.tables = { 5 } end },
    { "tables%[1%]", function(m) m.tables[1].name = nil end },
    { "tables%[1%].digest", function(m) m.tables[1].digest = nil end },
    { "tables%[1%].rows", function(m) m.tables[1].rows = "many" end },
    { "database_properties", function(m) m.database_properties = 5 end },
    { "database", function(m) m.database = nil end },
    { "encryption", function(m) m.encrypted = true end },
    { "verification", function(m) m.verification = { result = "great", time = "2026-11-30T04:48:20Z" } end },
  }
  for _, case in ipairs(broken) do
    it("refuses a manifest with a bad " .. case[1]:gsub("%%", "") .. ", naming the field", function()
      local m = valid()
      m = case[2](m) or m
      local value, err, kind = manifest.parse(json.encode(m), "m.json")
      assert.is_nil(value)
      assert.matches("^m%.json: invalid manifest: " .. case[1], err)
      assert.are.equal("corrupt", kind)
    end)
  end

  it("refuses text that is not JSON, or nested too deeply, without raising", function()
    for _, text in ipairs({ "", "{", "nul", string.rep("[", 100000) }) do
      local value, err, kind = manifest.parse(text, "m.json")
      assert.is_nil(value)
      assert.matches("invalid JSON", err)
      assert.are.equal("corrupt", kind)
    end
  end)
end)

describe("lib.cli", function()
  local spec = {
    name = "t", usage = "bkr t", summary = "test",
    options = { { "--db", "NAME", "db", repeatable = true }, { "--dry-run", nil, "dry" }, { "--repo", "DIR", "repo" } },
  }

  it("parses options, repeatable ones into lists, and refuses unknown ones with exit 2", function()
    local o = cli.parse({ "--db", "a", "--db", "b", "--dry-run", "--repo=/r" }, spec)
    assert.are.same({ "a", "b" }, o.db)
    assert.is_true(o.dry_run)
    assert.are.equal("/r", o.repo)
    local ok, err = pcall(cli.parse, { "--nope" }, spec)
    assert.is_false(ok)
    assert.are.equal(2, err.exit_code)
    for _, args in ipairs({ { "--db" }, { "--db", "" }, { "--repo=" }, { "--db", "--dry-run" } }) do
      ok, err = pcall(cli.parse, args, spec)
      assert.is_false(ok, table.concat(args, " "))
      assert.matches("needs a value", err.message)
      assert.are.equal(2, err.exit_code)
    end
    assert.are.same({ "--odd" }, cli.parse({ "--db=--odd" }, spec).db)
  end)

  it("suggests the closest known word for a typo, and nothing for a word unlike any", function()
    local keys = { "connection", "databases", "exclude", "repository", "retention", "drill" }
    assert.are.equal("retention", cli.closest("retension", keys))
    assert.are.equal("repository", cli.closest("repsoitory", keys))
    assert.are.equal("databases", cli.closest("Databases", keys))
    assert.is_nil(cli.closest("colour", keys))
    assert.is_nil(cli.closest("x", { "y" }))
    assert.are.equal("; did you mean billing?", cli.did_you_mean("biling", { "shop", "billing" }))
    assert.are.equal("", cli.did_you_mean("crm", { "shop", "billing" }))
  end)

  it("writes counts with the noun in the singular for one", function()
    assert.are.equal("1 query", cli.plural(1, "query", "queries"))
    assert.are.equal("0 queries", cli.plural(0, "query", "queries"))
    assert.are.equal("2 tables", cli.plural(2, "table", "tables"))
  end)

  it("takes its exit codes from the host", function()
    assert.are.same({ 0, 1, 2, 3 }, { cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_INTEGRITY })
    assert.are.equal(bkr.exit_codes.integrity, cli.EXIT_INTEGRITY)
  end)

  it("escapes control characters in names for one-line output", function()
    assert.are.equal("a\\nb\\tc\\x1b\\\\d é", cli.printable("a\nb\tc\27\\d é"))
  end)

  it("reads kinds and details from error objects and plain messages alike", function()
    local err = { message = "stream.run: gunzip: bad", detail = "gunzip: bad", reason = "bad", kind = "corrupt" }
    assert.are.same({ "corrupt", "gunzip: bad", "bad" }, { cli.kind(err), cli.detail(err), cli.reason(err) })
    assert.are.same({ nil, "plain", "plain" }, { cli.kind("plain"), cli.detail("plain"), cli.reason("plain") })
  end)
end)

describe("config backups (lib.repo sha256sum lines, lib.config_*)", function()
  describe("sha256sum lines", function()
    local digest = string.rep("ab", 32)

    it("writes the lines sha256sum writes, escaping a name with a backslash or a newline", function()
      for _, case in ipairs({
        { "files/etc/app.yaml", digest .. "  files/etc/app.yaml\n" },
        { "manifest.json", digest .. "  manifest.json\n" },
        { "files/a\\b", "\\" .. digest .. "  files/a\\\\b\n" },
        { "files/a\nb", "\\" .. digest .. "  files/a\\nb\n" },
      }) do
        assert.are.equal(case[2], repo.sums_line(digest, case[1]), case[1])
      end
    end)

    it("reads back every name it writes, and text and binary lines as sha256sum -c does", function()
      for _, name in ipairs({ "files/etc/app.yaml", "files/a\\b", "files/a\nb", "files/x y", "*star" }) do
        local line = repo.sums_line(digest, name):gsub("\n$", "")
        assert.are.same({ digest, name }, { repo.parse_sums_line(line) }, name)
      end
      assert.are.same({ digest, "backup.sql.gz" }, { repo.parse_sums_line(digest:upper() .. " *backup.sql.gz") })
      assert.are.same({ digest, "*x" }, { repo.parse_sums_line(digest .. "  *x") })
    end)

    it("refuses lines that are not sha256sum's", function()
      for _, line in ipairs({ "", digest, digest .. "  ", digest .. " name", digest:sub(2) .. "  name",
        digest .. "0  name", "zz" .. digest:sub(3) .. "  name", digest .. "\tname", "\\" .. digest .. "  " }) do
        assert.is_nil(repo.parse_sums_line(line), line)
      end
    end)
  end)
  describe("config file formats", function()
    local files = require "lib.config_files"
    local crypto = require "bkr.crypto"
    local key = crypto.random_bytes(32)
    local cipher = files.cipher(key)
    local sensitive = files.sensitive_matcher()

    it("tells a file's format by its name, and knows the kinds a manifest may name", function()
      for path, kind in pairs({
        ["/etc/app.yaml"] = "yaml", ["/etc/APP.YML"] = "yaml", ["/srv/.env"] = "env", ["/srv/prod.env"] = "env",
        ["/srv/.env.local"] = "env", ["/etc/app.json"] = "other", ["/etc/env"] = "other", ["/etc/yaml"] = "other",
      }) do
        assert.are.equal(kind, files.kind(path), path)
      end
      for _, kind in ipairs({ "yaml", "env", "other" }) do assert.is_true(files.known_kind(kind), kind) end
      for _, kind in ipairs({ "toml", "YAML", "", 1 }) do assert.is_false(files.known_kind(kind), tostring(kind)) end
      assert.has_error(function() files.protect("other", "x", cipher, sensitive) end)
      assert.has_error(function() files.reveal("toml", "x", {}, cipher) end)
    end)

    it("seals every secret of each format and puts the original back byte for byte", function()
      for _, case in ipairs({
        -- (each secret has a '-' or a space, which no token's base64 has)
        { "yaml", "db:\n  host: h\n  password: \"hunter-2\"  # kept\ntokens: [tok-1, tok-2]\n",
          { "db.password", "tokens[0]", "tokens[1]" }, { "hunter-2", "tok-1", "tok-2" } },
        { "env", "# c\nexport DB_PASSWORD='p w'\r\nHOST=h\nAPI_KEY: key-1\n",
          { "DB_PASSWORD", "API_KEY" }, { "p w", "key-1" } },
      }) do
        local kind, text, fields, secrets = case[1], case[2], case[3], case[4]
        local stored, sealed = files.protect(kind, text, cipher, sensitive)
        assert.are.same(fields, sealed, kind)
        for _, secret in ipairs(secrets) do assert.is_nil(stored:find(secret, 1, true), kind .. ": " .. secret) end
        assert.are.equal(text, files.reveal(kind, stored, sealed, cipher), kind)
        -- sealing twice seals nothing more
        assert.are.same({ stored, {} }, { files.protect(kind, stored, cipher, sensitive) }, kind)
      end
    end)

    it("says why a value does not open by crypto's code, not by taking its message apart", function()
      local stored = files.protect("env", "A_TOKEN=one\nB_TOKEN=two\n", cipher, sensitive)
      local a = stored:match("A_TOKEN=(%S+)")
      local b = stored:match("B_TOKEN=(%S+)")
      local moved = "A_TOKEN=" .. b .. "\nB_TOKEN=" .. a .. "\n" -- B's value under A's key
      assert.are.same({ nil, "A_TOKEN: authentication failed (tampered value or wrong field)", "auth" },
        { files.reveal("env", moved, { "A_TOKEN" }, cipher) })
      local other = files.cipher(crypto.random_bytes(32))
      local plain, message, code = files.reveal("env", stored, { "A_TOKEN" }, other)
      assert.are.same({ nil, "key" }, { plain, code })
      assert.matches("encrypted with key " .. cipher.key_id .. ", the key given is " .. other.key_id, message, 1, true)
      assert.are.same({ nil, "malformed encrypted value (invalid base64 or too short)", "format" },
        { cipher.open("ENCRYPTED:v2:!!", "A_TOKEN") })
      assert.are.same({ nil, "A_TOKEN: sealed field missing from the stored file" },
        { files.reveal("env", "A_TOKEN=one\n", { "A_TOKEN" }, cipher) })
    end)

    it("refuses what it cannot seal field by field, naming the line or the field, never the value", function()
      for _, case in ipairs({
        { "env", "HOST=h\ndb/password=slashLEAK\n", "line 2 names a sensitive key" },
        { "yaml", "password: [unclosed, LEAK\n", "yaml: line" },
        { "yaml", "db:\n  password: !!int 12LEAK\n", "db.password: invalid !!int value" },
      }) do
        local stored, message = files.protect(case[1], case[2], cipher, sensitive)
        assert.is_nil(stored)
        assert.matches(case[3], message, 1, true)
        assert.is_nil(message:find("LEAK", 1, true), message)
      end
    end)
  end)
  describe("config backups in the repository and their checks", function()
    local config_repo = require "lib.config_repo"
    local check = require "lib.config_check"
    local digest = string.rep("0f", 32)

    local function entry(overrides)
      local e = { path = "/etc/app.yaml", kind = "yaml", mode = "0640", sha256 = digest, stored_sha256 = digest,
        stored = "files/etc/app.yaml", encrypted_fields = { "db.password" }, whole_file_encrypted = false }
      for k, v in pairs(overrides or {}) do e[k] = v end
      return e
    end

    it("stores a file under files/ by its original path, .enc appended when it is encrypted whole", function()
      assert.are.equal("files/etc/app.yaml", config_repo.stored_name("/etc/app.yaml", false))
      assert.are.equal("files/etc/tls.pem.enc", config_repo.stored_name("/etc/tls.pem", true))
      assert.are.equal("/srv/repo/config", config_repo.dir("/srv/repo"))
    end)

    it("reads SHA256SUMS line by line, naming the first malformed line", function()
      local text = repo.sums_line(digest, "files/etc/app.yaml") .. repo.sums_line(digest, "manifest.json")
      assert.are.same({ { digest = digest, name = "files/etc/app.yaml" }, { digest = digest, name = "manifest.json" } },
        config_repo.parse_sums(text))
      assert.are.same({}, config_repo.parse_sums(""))
      assert.are.same({ nil, "SHA256SUMS line 2 is malformed" },
        { config_repo.parse_sums(text:gsub("\n", "\nnot a line\n", 1)) })
    end)

    it("counts the values encrypted field by field and the files encrypted whole", function()
      assert.are.same({ 3, 1 }, { config_repo.counts({ files = {
        entry(), entry({ encrypted_fields = { "a", "b" } }), entry({ encrypted_fields = {}, whole_file_encrypted = true }),
      } }) })
      assert.are.same({ 0, 0 }, { config_repo.counts({}) })
    end)

    it("accepts the manifests bkr writes and names what is wrong with any other", function()
      local function manifest(list) return { format = "bkr-config-1", files = list } end
      assert.is_nil(check.manifest_problem(manifest({ entry(), entry({ path = "/etc/.env", stored = "files/etc/.env",
        kind = "env" }) })))
      for _, case in ipairs({
        { { format = "bkr-config-2", files = {} }, "manifest.json is not a bkr config backup manifest (format bkr-config-2)" },
        { { format = "bkr-config-1" }, "manifest.json is not a bkr config backup manifest (format bkr-config-1)" },
        { manifest({ "x" }), "manifest: an entry is not an object" },
        { manifest({ entry({ path = "/../../escaped" }) }), "manifest: an entry has an unsafe original path: /../../escaped" },
        { manifest({ entry({ path = "etc/app.yaml" }) }), "manifest: an entry has an unsafe original path: etc/app.yaml" },
        { manifest({ entry({ stored = "files/../../x" }) }), "manifest: /etc/app.yaml: unsafe stored path files/../../x" },
        { manifest({ entry({ stored = "manifest.json" }) }), "manifest: /etc/app.yaml: unsafe stored path manifest.json" },
        { manifest({ entry({ kind = "toml" }) }), "manifest: /etc/app.yaml: unknown kind toml" },
        { manifest({ entry({ sha256 = "abc" }) }), "manifest: /etc/app.yaml: manifest lacks a valid sha256" },
        { manifest({ entry({ stored_sha256 = 1 }) }), "manifest: /etc/app.yaml: manifest lacks a valid stored_sha256" },
        { manifest({ entry({ mode = "1777" }) }), "manifest: /etc/app.yaml: invalid mode 1777" },
        { manifest({ entry({ mode = 420 }) }), "manifest: /etc/app.yaml: invalid mode 420" },
        { manifest({ entry({ encrypted_fields = "x" }) }), "manifest: /etc/app.yaml: invalid encrypted_fields" },
        { manifest({ entry(), entry({ stored = "files/other" }) }), "manifest: /etc/app.yaml is listed twice" },
        { manifest({ entry(), entry({ path = "/etc/b" }) }), "manifest: stored copy files/etc/app.yaml is listed twice" },
        { manifest({ entry(), entry({ path = "/etc/app.yaml/x", stored = "files/x" }) }),
          "manifest: /etc/app.yaml is listed as a file and as a directory" },
      }) do
        assert.are.equal(case[2], check.manifest_problem(case[1]))
      end
    end)

    it("knows relative paths that stay below their base, and names what stands where a file belongs", function()
      for _, path in ipairs({ "a", "files/etc/app.yaml", "a/.b", "a/..b" }) do assert.is_true(check.safe_relative(path), path) end
      for _, path in ipairs({ "", "/a", "a//b", "a/./b", "a/../b", "..", "a/", 1 }) do
        assert.is_false(check.safe_relative(path), tostring(path))
      end
      assert.are.same({ "a symlink", "a named pipe", "a directory", "a whiteout" },
        { check.what("link"), check.what("named pipe"), check.what("directory"), check.what("whiteout") })
    end)
  end)
end)
