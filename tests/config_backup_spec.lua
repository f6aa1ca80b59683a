-- bkr config backup|restore|verify|list: configuration files with their secrets encrypted field
-- by field. Checked with independent tools: sha256sum, cmp, stat, grep, base64, python3's yaml.
local util = require "support.util"
local json = require "dkjson"
local q = util.quote
local bkr = util.bkr_bin()

local function run(args)
  return util.sh(q(bkr) .. " " .. args .. " 2>&1")
end

local function new_key(dir, name)
  local path = dir .. "/" .. (name or "key")
  util.sh("head -c 32 /dev/urandom | base64 -w0 > " .. q(path) .. " && chmod 600 " .. q(path))
  return path
end

local function mode_of(path)
  return (util.sh("stat -c %a " .. q(path)):gsub("%s+$", ""))
end

local function same_bytes(a, b)
  local _, rc = util.sh("cmp -s " .. q(a) .. " " .. q(b))
  return rc == 0
end

-- Every file under dir, relative, sorted (lock and log excluded).
local function tree(dir)
  return (util.sh("cd " .. q(dir) .. " 2>/dev/null && find . ! -name .lock ! -name bkr.log ! -name . | sort"))
end

local function backups(repo)
  local list = {}
  for name in util.sh("ls " .. q(repo .. "/config") .. " 2>/dev/null"):gmatch("[^\n]+") do
    if name:match("^config_backup_%d+_%d+$") then list[#list + 1] = repo .. "/config/" .. name end
  end
  return list
end

local function newest(repo)
  local list = backups(repo)
  return list[#list]
end

-- grep -r for a string under a directory: the files that hold it (lines "path").
local function holding(dir, text)
  return (util.sh("grep -rlaF -e " .. q(text) .. " " .. q(dir) .. " 2>/dev/null"))
end

local function manifest_of(dir)
  return json.decode(util.read(dir .. "/manifest.json"))
end

local function entry_for(manifest, path)
  for _, f in ipairs(manifest.files) do
    if f.path == path then return f end
  end
end

-- After a deliberate edit of a stored file: make the manifest and SHA256SUMS agree with it
-- again, as someone who can write the repository could; only the encryption can object then.
local function reseal_checksums(dir)
  local manifest = manifest_of(dir)
  local names = {}
  for _, f in ipairs(manifest.files) do
    f.stored_sha256 = util.sha256sum(dir .. "/" .. f.stored)
    names[#names + 1] = q(f.stored)
  end
  util.write(dir .. "/manifest.json", json.encode(manifest, { indent = true }))
  util.sh("cd " .. q(dir) .. " && sha256sum " .. table.concat(names, " ") .. " manifest.json > SHA256SUMS")
end

local YAML = [==[
# Application settings: comments, order and formatting stay as they are
app:
  name: shop            # not a secret
  listen: [0.0.0.0, 8080]
defaults: {pw: &shared hunter2-anchor}
database:
  primary:
    host: db1.internal
    password: "pa:ss \"w0rd\""     # double quoted, with escapes
    admin_password: *shared
    replicas:
      - host: db2.internal
        db_password: 'single ''quoted'' secret'
api_tokens:
  - tok-live-aaaa
  - tok-live-bbbb
credentials: &creds cred-value-1
backup_credentials: *creds
tls:
  private_key: |
    -----BEGIN PRIVATE KEY-----
    MIIEvQIBADANBgkqhkiG9w0BAQEFAASC
    -----END PRIVATE KEY-----
  cert_file: /etc/ssl/app.pem
keep_token: |+
  kept-trailing-lines

folded_secret: >-
  folded
  secret value
flow: {api_key: flowkey-123, user: bob}
vault:
  secrets:
    smtp: smtp-hidden-value
    ports: [2525]
session_token: ENCRYPTED:v2:bm90LWEtcmVhbC10b2tlbg==
empty_password:
port: 5432
]==]

local YAML_SECRETS = { "hunter2-anchor", "pa:ss", "w0rd", "quoted'' secret", "tok-live", "cred-value-1",
  "MIIEvQ", "kept-trailing", "secret value", "flowkey-123", "smtp-hidden-value", "2525" }

local ENV = table.concat({
  "# database settings",
  'export DB_PASSWORD="p@ss w0rd # not a comment"   # trailing comment',
  "DB_HOST=db.internal",
  "API_KEY=plain-api-key-123",
  "  SECRET_KEY = 'spaced-secret'",
  "EMPTY_TOKEN=",
  'PRIVATE_KEY="-----BEGIN KEY-----',
  "multi-line-key-body",
  '-----END KEY-----"',
  "",
  "NOT_SENSITIVE=hello",
  "windows_token=crlf-secret\r",
  "export AUTH_TOKEN=last-line-no-newline",
}, "\n")

local ENV_SECRETS = { "p@ss", "plain-api-key", "spaced-secret", "multi-line-key-body", "crlf-secret", "last-line-no" }

-- A source tree with a YAML file, a .env file and a binary file, a repository and a key.
local function fixture()
  local base = util.scratch("cfg")
  local f = { base = base, src = base .. "/etc/app", repo = base .. "/repo", out = base .. "/out" }
  util.sh("mkdir -p " .. q(f.src) .. " " .. q(f.repo)) -- the repository exists (bkr init)
  f.key = new_key(base)
  f.yaml, f.env, f.bin = f.src .. "/app.yaml", f.src .. "/.env", f.src .. "/data.bin"
  util.write(f.yaml, YAML)
  util.write(f.env, ENV)
  util.sh("head -c 700000 /dev/urandom > " .. q(f.bin) .. " && printf 'PLAINTEXT-MARKER' >> " .. q(f.bin)
    .. " && head -c 1000 /dev/urandom >> " .. q(f.bin))
  util.sh("chmod 640 " .. q(f.yaml) .. " && chmod 600 " .. q(f.env) .. " && chmod 755 " .. q(f.bin))
  f.files = q(f.yaml) .. " " .. q(f.env) .. " " .. q(f.bin)
  return f
end

local function backup(f, extra)
  return run("config backup " .. f.files .. " --repo " .. q(f.repo) .. " --key-file " .. q(f.key) .. " " .. (extra or ""))
end

local function restore(f, dir, extra)
  return run("config restore " .. q(dir) .. " --to " .. q(f.out) .. " --key-file " .. q(f.key) .. " " .. (extra or ""))
end

describe("bkr config backup and restore", function()
  it("restores YAML, .env and binary files byte for byte, with their modes", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    assert.matches("^" .. f.repo:gsub("%p", "%%%0") .. "/config/config_backup_%d%d%d%d%d%d%d%d_%d%d%d%d%d%d$", dir)
    out, rc = restore(f, dir)
    assert.are.equal(0, rc, out)
    for _, path in ipairs({ f.yaml, f.env, f.bin }) do
      local restored = f.out .. path
      assert.are.equal(util.sha256sum(path), util.sha256sum(restored), path)
      assert.are.equal(mode_of(path), mode_of(restored), path)
    end
  end)

  it("stores YAML with every secret replaced in place, nothing else changed, and the result still parses", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    local stored_path = dir .. "/files" .. f.yaml
    local stored = util.read(stored_path)
    for _, secret in ipairs(YAML_SECRETS) do
      assert.is_nil(stored:find(secret, 1, true), "plaintext secret in the stored file: " .. secret)
    end
    local _, grc = util.sh("grep -q -e hunter2 -e tok-live -e MIIEvQ " .. q(stored_path))
    assert.are.equal(1, grc)
    -- every line without a secret is unchanged, comments included
    assert.matches("# Application settings: comments, order and formatting stay as they are\n", stored, 1, true)
    assert.matches("  name: shop            # not a secret\n", stored, 1, true)
    assert.matches("\n    password: ENCRYPTED:v2:[%w+/=]+     # double quoted, with escapes\n", stored)
    assert.matches("\n  cert_file: /etc/ssl/app.pem\n", stored, 1, true)
    assert.matches("\nsession_token: ENCRYPTED:v2:bm90LWEtcmVhbC10b2tlbg==\n", stored, 1, true)
    assert.matches("\nempty_password:\nport: 5432\n$", stored)

    -- an independent parser reads it, with tokens exactly where the secrets were
    local py = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    local parsed_text, prc = util.sh("python3 -c " .. q(py) .. " " .. q(stored_path))
    assert.are.equal(0, prc, parsed_text)
    local doc = json.decode(parsed_text)
    local token = "^ENCRYPTED:v2:[%w+/]+=*$"
    assert.matches(token, doc.database.primary.password)
    assert.matches(token, doc.database.primary.admin_password)
    assert.matches(token, doc.defaults.pw)
    assert.matches(token, doc.database.primary.replicas[1].db_password)
    assert.matches(token, doc.api_tokens[1])
    assert.matches(token, doc.api_tokens[2])
    assert.matches(token, doc.credentials)
    assert.are.equal(doc.credentials, doc.backup_credentials)
    assert.matches(token, doc.tls.private_key)
    assert.matches(token, doc.keep_token)
    assert.matches(token, doc.folded_secret)
    assert.matches(token, doc.flow.api_key)
    assert.are.equal("bob", doc.flow.user)
    assert.matches(token, doc.vault.secrets.smtp)
    assert.matches(token, doc.vault.secrets.ports[1])
    assert.are.equal("shop", doc.app.name)
    assert.are.same({ "0.0.0.0", 8080 }, doc.app.listen)
    assert.are.equal("db1.internal", doc.database.primary.host)
    assert.are.equal(5432, doc.port)

    local entry = entry_for(manifest_of(dir), f.yaml)
    assert.are.same({ "defaults.pw", "database.primary.password", "database.primary.replicas[0].db_password",
      "api_tokens[0]", "api_tokens[1]", "credentials", "tls.private_key", "keep_token", "folded_secret",
      "flow.api_key", "vault.secrets.smtp", "vault.secrets.ports[0]" }, entry.encrypted_fields)
    assert.are.equal("yaml", entry.kind)
  end)

  -- .env files, each backed up alone: no secret anywhere in the backup, every stored line as
  -- expected (the same line, or { pattern } for a sealed one), the sealed keys in order, and the
  -- file restored byte for byte.
  local TOKEN = "ENCRYPTED:v2:[%w+/]+=*"
  for _, case in ipairs({
    {
      it = "stores .env files with sensitive values encrypted and export, quoting, comments and blank lines kept",
      name = ".env", text = ENV, secrets = ENV_SECRETS,
      stored = {
        "# database settings",
        { "^export DB_PASSWORD=" .. TOKEN .. "$" },
        "DB_HOST=db.internal",
        { "^API_KEY=ENCRYPTED:v2:" },
        { "^  SECRET_KEY = ENCRYPTED:v2:" },
        "EMPTY_TOKEN=",
        { "^PRIVATE_KEY=" .. TOKEN .. "$" },
        "",
        "NOT_SENSITIVE=hello",
        { "^windows_token=" .. TOKEN .. "\r$" },
        { "^export AUTH_TOKEN=" .. TOKEN .. "$" },
      },
      fields = { "DB_PASSWORD", "API_KEY", "SECRET_KEY", "PRIVATE_KEY", "windows_token", "AUTH_TOKEN" },
    },
    {
      it = "seals a sensitive .env value in every form dotenv libraries read: =, spaces, tabs, export, KEY: value, "
        .. "KEY:value",
      name = "forms.env",
      text = table.concat({
        "EQ_PASSWORD=eqLEAK1",
        "SPACED_PASSWORD = spacedLEAK2",
        "TAB_PASSWORD\t=\ttabLEAK3",
        "export EXPORTED_PASSWORD=exportLEAK4",
        "COLON_PASSWORD:colon3LEAK",
        "COLON_SPACE_PASSWORD: colonSpaceLEAK5",
        "export COLON_EXPORT_PASSWORD: colonExportLEAK6",
        "\tINDENTED_TOKEN :indentLEAK7",
        'QUOTED_SECRET: "quoted colon LEAK8"',
        "1PASSWORD=digitLEAK9",
        "export DB_PASSWORD",
        'NOTE="a quoted value over lines',
        'that mentions the password"',
        "PLAIN: value",
      }, "\n") .. "\n",
      secrets = { "LEAK" },
      stored = {
        { "^EQ_PASSWORD=" .. TOKEN .. "$" },
        { "^SPACED_PASSWORD = " .. TOKEN .. "$" },
        { "^TAB_PASSWORD\t=\t" .. TOKEN .. "$" },
        { "^export EXPORTED_PASSWORD=" .. TOKEN .. "$" },
        { "^COLON_PASSWORD:" .. TOKEN .. "$" },
        { "^COLON_SPACE_PASSWORD: " .. TOKEN .. "$" },
        { "^export COLON_EXPORT_PASSWORD: " .. TOKEN .. "$" },
        { "^\tINDENTED_TOKEN :" .. TOKEN .. "$" },
        { "^QUOTED_SECRET: " .. TOKEN .. "$" },
        { "^1PASSWORD=" .. TOKEN .. "$" },
        "export DB_PASSWORD",
        'NOTE="a quoted value over lines',
        'that mentions the password"',
        "PLAIN: value",
        "",
      },
      fields = { "EQ_PASSWORD", "SPACED_PASSWORD", "TAB_PASSWORD", "EXPORTED_PASSWORD", "COLON_PASSWORD",
        "COLON_SPACE_PASSWORD", "COLON_EXPORT_PASSWORD", "INDENTED_TOKEN", "QUOTED_SECRET", "1PASSWORD" },
    },
  }) do
    it(case.it, function()
      local f = fixture()
      local env = f.src .. "/" .. case.name
      util.write(env, case.text)
      local out, rc = run("config backup " .. q(env) .. " --repo " .. q(f.repo) .. " --key-file " .. q(f.key))
      assert.are.equal(0, rc, out)
      local dir = newest(f.repo)
      for _, secret in ipairs(case.secrets) do
        assert.are.equal("", holding(dir, secret), "plaintext secret in the backup: " .. secret)
      end
      local lines = {}
      for line in (util.read(dir .. "/files" .. env) .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
      assert.are.equal(#case.stored, #lines)
      for i, want in ipairs(case.stored) do
        if type(want) == "table" then
          assert.matches(want[1], lines[i])
        else
          assert.are.equal(want, lines[i])
        end
      end
      assert.are.same(case.fields, entry_for(manifest_of(dir), env).encrypted_fields)
      out, rc = restore(f, dir)
      assert.are.equal(0, rc, out)
      assert.is_true(same_bytes(env, f.out .. env))
    end)
  end

  it("copies other files as they are, or with --encrypt-all stores them encrypted whole", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local plain_dir = newest(f.repo)
    assert.is_true(same_bytes(f.bin, plain_dir .. "/files" .. f.bin))
    util.sh("sleep 1.1")
    out, rc = backup(f, "--encrypt-all")
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    assert.are_not.equal(plain_dir, dir)
    local stored = dir .. "/files" .. f.bin .. ".enc"
    local _, grc = util.sh("grep -c PLAINTEXT-MARKER " .. q(stored))
    assert.are.equal(1, grc, "the marker is readable in the encrypted copy")
    assert.is_nil(io.open(dir .. "/files" .. f.bin))
    local entry = entry_for(manifest_of(dir), f.bin)
    assert.is_true(entry.whole_file_encrypted)
    assert.are.equal("files" .. f.bin .. ".enc", entry.stored)
    out, rc = restore(f, dir)
    assert.are.equal(0, rc, out)
    assert.are.equal(util.sha256sum(f.bin), util.sha256sum(f.out .. f.bin))
    assert.are.equal("755", mode_of(f.out .. f.bin))
    assert.are.equal(util.sha256sum(f.yaml), util.sha256sum(f.out .. f.yaml))
  end)

  it("writes a manifest with each original's path, kind, size, mode and SHA-256, and a SHA256SUMS that sha256sum -c accepts", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    local check, crc = util.sh("cd " .. q(dir) .. " && sha256sum -c --strict SHA256SUMS 2>&1")
    assert.are.equal(0, crc, check)
    assert.matches("manifest.json: OK", check, 1, true)
    assert.matches("files" .. f.env:gsub("%p", "%%%0") .. ": OK", check)
    local manifest = manifest_of(dir)
    assert.are.equal("bkr-config-1", manifest.format)
    assert.are.equal(dir:match("[^/]+$"), manifest.name)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", manifest.time)
    local key_id = util.sh("base64 -d " .. q(f.key) .. " | sha256sum"):sub(1, 16)
    assert.are.equal(key_id, manifest.key_id)
    assert.are.equal(3, #manifest.files)
    local kinds = { [f.yaml] = "yaml", [f.env] = "env", [f.bin] = "other" }
    for _, entry in ipairs(manifest.files) do
      assert.are.equal(kinds[entry.path], entry.kind)
      assert.are.equal(util.sha256sum(entry.path), entry.sha256)
      assert.are.equal(tonumber((util.sh("stat -c %s " .. q(entry.path)))), entry.size)
      assert.are.equal("0" .. mode_of(entry.path), entry.mode)
      assert.are.equal(util.sha256sum(dir .. "/" .. entry.stored), entry.stored_sha256)
      assert.are.equal(mode_of(entry.path), mode_of(dir .. "/" .. entry.stored))
    end
    -- the private parts of the backup are private
    assert.are.equal("700", mode_of(dir))
    assert.are.equal("700", mode_of(dir .. "/files"))
    assert.are.equal("700", mode_of(dir .. "/files" .. f.src))
    assert.are.equal("600", mode_of(dir .. "/manifest.json"))
    assert.are.equal("600", mode_of(dir .. "/SHA256SUMS"))
    assert.is_nil(util.read(dir .. "/manifest.json"):find(util.read(f.key), 1, true))
  end)

  it("restores a value encrypted by the previous tool's XOR scheme, computed here independently", function()
    local f = fixture()
    local raw_key = util.sh("base64 -d " .. q(f.key) .. " | od -An -v -tu1")
    local key = {}
    for byte in raw_key:gmatch("%d+") do key[#key + 1] = tonumber(byte) end
    assert.are.equal(32, #key)
    local function legacy(plaintext)
      local out = {}
      for i = 1, #plaintext do
        out[i] = string.char(plaintext:byte(i) ~ key[(i - 1) % 32 + 1])
      end
      local tmp = f.base .. "/xor.bin"
      util.write(tmp, table.concat(out))
      return "ENCRYPTED:" .. util.sh("base64 -w0 " .. q(tmp))
    end
    local secret = "an old secret that is longer than thirty-two bytes, to wrap the key"
    local original_yaml = "# previous tool\ndb:\n  host: legacy.internal\n  password: " .. secret .. "\n"
    local original_env = "LEGACY_TOKEN=" .. secret .. "\nPLAIN=1\n"
    -- a backup as the previous tool left it, with a manifest and SHA256SUMS written here
    local dir = f.repo .. "/config/config_backup_20200101_000000"
    util.sh("mkdir -p " .. q(dir .. "/files/etc/legacy"))
    util.write(dir .. "/files/etc/legacy/app.yaml", "# previous tool\ndb:\n  host: legacy.internal\n  password: "
      .. legacy(secret) .. "\n")
    util.write(dir .. "/files/etc/legacy/.env", "LEGACY_TOKEN=" .. legacy(secret) .. "\nPLAIN=1\n")
    local function sha(s)
      local tmp = f.base .. "/sha.txt"
      util.write(tmp, s)
      return util.sha256sum(tmp)
    end
    util.write(dir .. "/manifest.json", json.encode({
      format = "bkr-config-1", name = "config_backup_20200101_000000", time = "2020-01-01T00:00:00Z",
      files = {
        { path = "/etc/legacy/app.yaml", kind = "yaml", mode = "0640", size = #original_yaml, sha256 = sha(original_yaml),
          stored = "files/etc/legacy/app.yaml", stored_sha256 = "0", encrypted_fields = { "db.password" },
          whole_file_encrypted = false },
        { path = "/etc/legacy/.env", kind = "env", mode = "0600", size = #original_env, sha256 = sha(original_env),
          stored = "files/etc/legacy/.env", stored_sha256 = "0", encrypted_fields = { "LEGACY_TOKEN" },
          whole_file_encrypted = false },
      },
    }))
    reseal_checksums(dir)
    local out, rc = run("config verify " .. q(dir) .. " --key-file " .. q(f.key))
    assert.are.equal(0, rc, out)
    out, rc = restore(f, dir)
    assert.are.equal(0, rc, out)
    assert.are.equal(original_yaml, util.read(f.out .. "/etc/legacy/app.yaml"))
    assert.are.equal(original_env, util.read(f.out .. "/etc/legacy/.env"))
    assert.are.equal("640", mode_of(f.out .. "/etc/legacy/app.yaml"))
    assert.are.equal("600", mode_of(f.out .. "/etc/legacy/.env"))
    -- with another key the XOR "decrypts" to garbage: caught by the original's SHA-256
    local other = new_key(f.base, "other")
    out, rc = run("config restore " .. q(dir) .. " --to " .. q(f.base .. "/out2") .. " --key-file " .. q(other))
    assert.are.equal(3, rc, out)
    assert.matches("does not match the original's SHA%-256", out)
    assert.are.equal("", tree(f.base .. "/out2"))
  end)

  it("writes XOR values only with --legacy-xor, warning that XOR is not encryption", function()
    local f = fixture()
    local stdout, rc = util.sh(q(bkr) .. " config backup " .. q(f.yaml) .. " --repo " .. q(f.repo)
      .. " --key-file " .. q(f.key) .. " --legacy-xor 2>" .. q(f.base .. "/stderr"))
    assert.are.equal(0, rc, stdout)
    assert.matches("WARNING: .*XOR.*NOT encryption", util.read(f.base .. "/stderr"))
    local dir = newest(f.repo)
    local stored = util.read(dir .. "/files" .. f.yaml)
    local b64 = stored:match("\n    password: ENCRYPTED:([%w+/=]+) ")
    assert.is_truthy(b64, stored)
    local _, v2_tokens = stored:gsub("ENCRYPTED:v2:", "")
    assert.are.equal(1, v2_tokens) -- the value that was a token already, left as it was
    assert.are.equal("xor-legacy", manifest_of(dir).cipher)
    -- decode it independently: base64, then XOR with the key
    local function bytes(cmd)
      local t = {}
      for b in util.sh(cmd .. " | od -An -v -tu1"):gmatch("%d+") do t[#t + 1] = tonumber(b) end
      return t
    end
    local key = bytes("base64 -d " .. q(f.key))
    local cipher = bytes("printf %s " .. q(b64) .. " | base64 -d")
    local plain = {}
    for i, b in ipairs(cipher) do plain[i] = string.char(b ~ key[(i - 1) % 32 + 1]) end
    assert.are.equal('"pa:ss \\"w0rd\\""', table.concat(plain))
    local out
    out, rc = restore(f, dir)
    assert.are.equal(0, rc, out)
    assert.are.equal(util.sha256sum(f.yaml), util.sha256sum(f.out .. f.yaml))
    -- without the flag, never XOR
    util.sh("sleep 1.1")
    out, rc = backup(f)
    assert.are.equal(0, rc, out)
    assert.is_nil(out:find("WARNING", 1, true))
    local again = util.read(newest(f.repo) .. "/files" .. f.yaml)
    assert.is_nil(again:find("ENCRYPTED:[^v]"), again)
  end)

  it("requires a key: without one, exit 2 and nothing written", function()
    local f = fixture()
    local out, rc = run("config backup " .. f.files .. " --repo " .. q(f.repo))
    assert.are.equal(2, rc, out)
    assert.matches("no key", out)
    assert.are.equal("", tree(f.repo))
    util.sh("chmod 644 " .. q(f.key))
    out, rc = backup(f)
    assert.are.equal(2, rc, out)
    assert.matches("readable by group or others", out)
    assert.are.equal("", tree(f.repo))
  end)

  -- Files whose secrets cannot be sealed field by field: the backup fails (exit 1) naming the file
  -- and why, never quoting the value, and leaves nothing; with --encrypt-all the file is stored
  -- encrypted whole, nothing of it readable anywhere in the repository, and restored as it was.
  for _, case in ipairs({
    {
      it = "leaves nothing behind when a file cannot be protected, and stores it encrypted whole with --encrypt-all",
      name = "broken.yaml", kind = "yaml", text = "password: [unclosed, secret-in-broken\n",
      leak = "secret-in-broken", with_fixture_yaml = true, says = { "broken.yaml: yaml: line" },
    },
    {
      it = "refuses a .env line that names a sensitive key in a form it cannot read, rather than store it in plaintext",
      name = "odd.env", kind = "env", text = "# settings\nHOST=db\njust words are fine\ndb/password=slashLEAK\n",
      leak = "LEAK", says = { plain = "odd.env: line 4 names a sensitive key but is not KEY=VALUE" },
    },
  }) do
    it(case.it, function()
      local f = fixture()
      local bad = f.src .. "/" .. case.name
      util.write(bad, case.text)
      local files = (case.with_fixture_yaml and (q(f.yaml) .. " ") or "") .. q(bad)
      local out, rc = run("config backup " .. files .. " --repo " .. q(f.repo) .. " --key-file " .. q(f.key))
      assert.are.equal(1, rc, out)
      if case.says.plain then
        assert.matches(f.src .. "/" .. case.says.plain, out, 1, true)
      else
        assert.matches(case.says[1], out)
      end
      assert.matches("%-%-encrypt%-all", out)
      assert.is_nil(out:find(case.leak, 1, true), out)
      assert.are.equal("", util.sh("ls -A " .. q(f.repo .. "/config")))
      out, rc = run("config backup " .. files .. " --repo " .. q(f.repo) .. " --key-file " .. q(f.key)
        .. " --encrypt-all")
      assert.are.equal(0, rc, out)
      local dir = newest(f.repo)
      local entry = entry_for(manifest_of(dir), bad)
      assert.are.equal(case.kind, entry.kind)
      assert.is_true(entry.whole_file_encrypted)
      assert.are.equal("", holding(f.repo, case.leak))
      out, rc = restore(f, dir)
      assert.are.equal(0, rc, out)
      assert.are.equal(util.read(bad), util.read(f.out .. bad))
    end)
  end

  it("uses config_backup.sensitive_keys instead of the default list", function()
    local f = fixture()
    local yaml_file = f.src .. "/custom.yml"
    util.write(yaml_file, "password: stays-plain\nmagic_word: abracadabra\nnested:\n  MAGIC: sesame\n")
    local cfg = f.base .. "/bkr.yaml"
    util.write(cfg, "config_backup:\n  sensitive_keys: [magic]\nencryption:\n  key_file: " .. f.key .. "\n")
    local out, rc = run("config backup " .. q(yaml_file) .. " --repo " .. q(f.repo) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    local stored = util.read(dir .. "/files" .. yaml_file)
    assert.matches("^password: stays%-plain\nmagic_word: ENCRYPTED:v2:[%w+/=]+\nnested:\n  MAGIC: ENCRYPTED:v2:[%w+/=]+\n$", stored)
    assert.are.same({ "magic_word", "nested.MAGIC" }, entry_for(manifest_of(dir), yaml_file).encrypted_fields)
    -- the key comes from the configuration for restore too
    out, rc = run("config restore " .. q(dir) .. " --to " .. q(f.out) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal(util.read(yaml_file), util.read(f.out .. yaml_file))
  end)

  it("with no FILE saves config_backup.files (what a scheduled job runs); FILEs given still win", function()
    local f = fixture()
    local cfg = f.base .. "/bkr.yaml"
    util.write(cfg, "repository: " .. f.repo .. "\nencryption:\n  key_file: " .. f.key .. "\n"
      .. "config_backup:\n  files: [" .. f.yaml .. ", " .. f.env .. "]\n")
    local out, rc = run("config backup --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    local paths = {}
    for _, entry in ipairs(manifest_of(newest(f.repo)).files) do paths[#paths + 1] = entry.path end
    table.sort(paths)
    assert.are.same({ f.env, f.yaml }, paths)
    -- explicit FILEs replace the configured list
    util.sh("sleep 1.1")
    out, rc = run("config backup " .. q(f.bin) .. " --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal(1, #manifest_of(newest(f.repo)).files)
    assert.are.equal(f.bin, manifest_of(newest(f.repo)).files[1].path)
    -- a configured file that is gone is named by its key, exit 2, nothing written
    util.write(cfg, "repository: " .. f.repo .. "\nencryption:\n  key_file: " .. f.key .. "\n"
      .. "config_backup:\n  files: [" .. f.yaml .. ", " .. f.base .. "/gone.yaml]\n")
    out, rc = run("config backup --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches("config_backup.files[2]: no such file", out, 1, true)
    assert.are.equal(2, #backups(f.repo))
  end)

  it("with no FILE and no config_backup.files is a usage error; a relative configured path is refused at load", function()
    local f = fixture()
    local cfg = f.base .. "/bkr.yaml"
    util.write(cfg, "repository: " .. f.repo .. "\nencryption:\n  key_file: " .. f.key .. "\n")
    local out, rc = run("config backup --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches("name at least one FILE, or list them in config_backup.files", out, 1, true)
    util.write(cfg, "repository: " .. f.repo .. "\nconfig_backup:\n  files: [etc/app.yaml]\n")
    out, rc = run("config backup --config " .. q(cfg))
    assert.are.equal(2, rc, out)
    assert.matches("configuration: config_backup.files[1]: expected an absolute path", out, 1, true)
    assert.are.equal(0, #backups(f.repo))
  end)
end)

describe("bkr config verify and restore on damaged backups", function()
  local function tamper_token(path, field_pattern)
    local text = util.read(path)
    local prefix, token = text:match("(" .. field_pattern .. "ENCRYPTED:v2:)([%w+/]+)")
    assert.is_truthy(token, "no token for " .. field_pattern)
    local i = #token // 2
    local c = token:sub(i, i)
    local flipped = token:sub(1, i - 1) .. (c == "A" and "B" or "A") .. token:sub(i + 1)
    local pattern = (prefix .. token):gsub("%p", "%%%0")
    local replacement = (prefix .. flipped):gsub("%%", "%%%%")
    local changed, n = text:gsub(pattern, replacement)
    assert.are.equal(1, n)
    util.write(path, changed)
  end

  -- Each case: a backup (with `backup` options), damaged as someone who can write the repository
  -- could, and what verify then says, without the key (key = false) and with it. Restore then
  -- refuses the backup (exit 3), says why and that nothing was restored, and writes nothing.
  local function swap_tokens(f, dir)
    local path = dir .. "/files" .. f.yaml
    local text = util.read(path)
    local a = text:match("\n    password: (ENCRYPTED:v2:[%w+/=]+)")
    local b = text:match("\napi_tokens:\n  %- (ENCRYPTED:v2:[%w+/=]+)")
    assert.is_truthy(a and b)
    text = text:gsub(a:gsub("%p", "%%%0"), "@A@"):gsub(b:gsub("%p", "%%%0"), "@B@")
    text = text:gsub("@A@", (b:gsub("%%", "%%%%"))):gsub("@B@", (a:gsub("%%", "%%%%")))
    util.write(path, text)
  end

  local function edit_manifest(dir, edit)
    local manifest = manifest_of(dir)
    edit(manifest)
    util.write(dir .. "/manifest.json", json.encode(manifest, { indent = true }))
  end

  for _, case in ipairs({
    {
      it = "reports a tampered stored value (exit 3) and restores nothing",
      damage = function(f, dir) tamper_token(dir .. "/files" .. f.yaml, "\n    password: ") end,
      verify = function(f)
        return { { key = false, rc = 3, says = "files" .. f.yaml .. ": SHA-256 mismatch" } }
      end,
    },
    {
      it = "catches a tampered value by its authentication even when the checksums were rewritten to match",
      damage = function(f, dir)
        tamper_token(dir .. "/files" .. f.env, "\nAPI_KEY=")
        reseal_checksums(dir)
      end,
      verify = function(f)
        return {
          { key = false, rc = 0, says = "not checked: no key", why = "without the key only checksums can be checked" },
          { key = true, rc = 3, says = f.env .. ": API_KEY: authentication failed" },
        }
      end,
    },
    {
      it = "refuses a value moved to another field (the field's path is authenticated)",
      damage = function(f, dir)
        swap_tokens(f, dir)
        reseal_checksums(dir)
      end,
      verify = function()
        return { { key = true, rc = 3, says = "database.primary.password: authentication failed" } }
      end,
    },
    {
      it = "reports a missing stored file (exit 3) and restores nothing",
      damage = function(f, dir) os.remove(dir .. "/files" .. f.bin) end,
      verify = function(f) return { { key = true, rc = 3, says = "files" .. f.bin .. ": missing" } } end,
    },
    {
      it = "catches a damaged whole-file encrypted copy whose checksums were rewritten",
      backup = "--encrypt-all",
      damage = function(f, dir)
        util.flip_byte(dir .. "/files" .. f.bin .. ".enc", 5000)
        reseal_checksums(dir)
      end,
      verify = function(f)
        return { { key = true, rc = 3, pattern = f.bin:gsub("%p", "%%%0") .. ": .*decrypt" } }
      end,
    },
    {
      it = "refuses a manifest whose paths would escape the restore directory",
      damage = function(_, dir)
        edit_manifest(dir, function(manifest) manifest.files[1].path = "/../../escaped.yaml" end)
        reseal_checksums(dir)
      end,
      verify = function() return { { key = true, rc = 3, says = "unsafe original path" } } end,
      restore_says = "unsafe original path",
      after = function(f) assert.is_nil(io.open(f.base .. "/escaped.yaml")) end,
    },
    {
      it = "treats a manifest that lists a file twice as damage: exit 3, nothing written",
      damage = function(_, dir)
        edit_manifest(dir, function(manifest) table.insert(manifest.files, manifest.files[1]) end)
        reseal_checksums(dir)
      end,
      verify = function(f)
        return { { key = true, rc = 3, says = "manifest: " .. f.yaml .. " is listed twice" } }
      end,
    },
  }) do
    it(case.it, function()
      local f = fixture()
      local out, rc = backup(f, case.backup)
      assert.are.equal(0, rc, out)
      local dir = newest(f.repo)
      case.damage(f, dir)
      for _, expect in ipairs(case.verify(f)) do
        out, rc = run("config verify " .. q(dir) .. (expect.key and (" --key-file " .. q(f.key)) or ""))
        assert.are.equal(expect.rc, rc, (expect.why and (expect.why .. ": ") or "") .. out)
        if expect.pattern then
          assert.matches(expect.pattern, out)
        else
          assert.matches(expect.says, out, 1, true)
        end
      end
      out, rc = restore(f, dir)
      assert.are.equal(3, rc, out)
      assert.matches("nothing was restored", out, 1, true)
      if case.restore_says then assert.matches(case.restore_says, out, 1, true) end
      assert.are.equal("", tree(f.out))
      if case.after then case.after(f) end
    end)
  end

  it("names both key ids when the wrong key is given (exit 3, nothing written)", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    local wrong = new_key(f.base, "wrong")
    local right_id = util.sh("base64 -d " .. q(f.key) .. " | sha256sum"):sub(1, 16)
    local wrong_id = util.sh("base64 -d " .. q(wrong) .. " | sha256sum"):sub(1, 16)
    local expected = "backup was encrypted with key " .. right_id .. ", the key given is " .. wrong_id
    out, rc = run("config verify " .. q(dir) .. " --key-file " .. q(wrong))
    assert.are.equal(3, rc, out)
    assert.matches(expected, out, 1, true)
    out, rc = run("config restore " .. q(dir) .. " --to " .. q(f.out) .. " --key-file " .. q(wrong))
    assert.are.equal(3, rc, out)
    assert.matches(expected, out, 1, true)
    assert.are.equal("", tree(f.out))
    -- the same from the values themselves, when the manifest has no key id to compare
    local manifest = manifest_of(dir)
    manifest.key_id = nil
    util.write(dir .. "/manifest.json", json.encode(manifest))
    reseal_checksums(dir)
    out, rc = run("config verify " .. q(dir) .. " --key-file " .. q(wrong))
    assert.are.equal(3, rc, out)
    assert.matches("encrypted with key " .. right_id .. ", the key given is " .. wrong_id, out, 1, true)
  end)
end)

describe("bkr config restore", function()
  it("never replaces existing files without --overwrite, and writes none of the others either", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    out, rc = restore(f, dir)
    assert.are.equal(0, rc, out)
    util.write(f.out .. f.yaml, "changed since\n")
    os.remove(f.out .. f.env)
    out, rc = restore(f, dir)
    assert.are.equal(1, rc, out)
    assert.matches("refusing to replace existing files %(use %-%-overwrite%)", out)
    assert.are.equal("changed since\n", util.read(f.out .. f.yaml))
    assert.is_nil(io.open(f.out .. f.env))
    out, rc = restore(f, dir, "--overwrite")
    assert.are.equal(0, rc, out)
    for _, path in ipairs({ f.yaml, f.env, f.bin }) do
      assert.are.equal(util.sha256sum(path), util.sha256sum(f.out .. path))
      assert.are.equal(mode_of(path), mode_of(f.out .. path))
    end
    assert.are.equal("", util.sh("find " .. q(f.out) .. " -name '.*tmp*'"))
  end)

  it("finds a backup by name or as --latest in the repository", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    out, rc = run("config restore " .. dir:match("[^/]+$") .. " --repo " .. q(f.repo) .. " --to " .. q(f.out)
      .. " --key-file " .. q(f.key))
    assert.are.equal(0, rc, out)
    assert.are.equal(util.sha256sum(f.env), util.sha256sum(f.out .. f.env))
    out, rc = run("config restore --latest --repo " .. q(f.repo) .. " --to " .. q(f.base .. "/out2")
      .. " --key-file " .. q(f.key))
    assert.are.equal(0, rc, out)
    assert.are.equal(util.sha256sum(f.yaml), util.sha256sum(f.base .. "/out2" .. f.yaml))
    out, rc = run("config restore config_backup_19990101_000000 --repo " .. q(f.repo) .. " --to " .. q(f.out))
    assert.are.equal(2, rc, out)
    out, rc = run("config restore " .. q(dir) .. " --key-file " .. q(f.key))
    assert.are.equal(2, rc, out)
    assert.matches("%-%-to DIR is required", out)
    out, rc = run("config restore " .. q(dir) .. " --to " .. q(f.base .. "/out3"))
    assert.are.equal(2, rc, out)
    assert.matches("no key", out)
    assert.are.equal("", tree(f.base .. "/out3"))
  end)
end)

describe("bkr config backup that does not finish", function()
  it("on SIGTERM exits 143 and leaves nothing in the repository", function()
    local f = fixture()
    local big = f.base .. "/big.bin"
    util.sh("truncate -s 3G " .. q(big))
    local out, rc = util.sh("(" .. q(bkr) .. " config backup " .. q(f.yaml) .. " " .. q(big) .. " --encrypt-all --repo "
      .. q(f.repo) .. " --key-file " .. q(f.key) .. " 2>&1 & pid=$!; sleep 0.5; kill -TERM $pid; wait $pid)")
    os.remove(big)
    assert.are.equal(143, rc, out)
    assert.matches("nothing written", out)
    assert.are.equal("", util.sh("ls -A " .. q(f.repo .. "/config")))
  end)

  it("removes what an earlier crashed run left under its temporary name", function()
    local f = fixture()
    local stale = f.repo .. "/config/.partial-config_backup_20200101_000000"
    util.sh("mkdir -p " .. q(stale .. "/files") .. " && echo half > " .. q(stale .. "/files/x"))
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    assert.matches("removed .*%.partial%-config_backup_20200101_000000, left by an interrupted run", out)
    assert.is_nil(io.open(stale .. "/files/x"))
    assert.are.equal(1, #backups(f.repo))
  end)
end)

describe("bkr config list and rotation", function()
  it("lists config backups newest first, for people and as JSON", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    util.sh("sleep 1.1")
    out, rc = run("config backup " .. q(f.bin) .. " --repo " .. q(f.repo) .. " --key-file " .. q(f.key))
    assert.are.equal(0, rc, out)
    local all = backups(f.repo)
    assert.are.equal(2, #all)
    local listing
    listing, rc = run("config list --json --repo " .. q(f.repo))
    assert.are.equal(0, rc, listing)
    local rows = json.decode(listing)
    assert.are.equal(2, #rows)
    assert.are.equal(all[2]:match("[^/]+$"), rows[1].name)
    assert.are.equal(all[1]:match("[^/]+$"), rows[2].name)
    assert.are.equal(1, rows[1].files)
    assert.are.equal(0, rows[1].encrypted_fields)
    assert.are.equal(3, rows[2].files)
    assert.are.equal(18, rows[2].encrypted_fields)
    assert.are.equal(manifest_of(all[1]).key_id, rows[2].key_id)
    listing, rc = run("config list --repo " .. q(f.repo))
    assert.are.equal(0, rc, listing)
    local first = listing:find(rows[1].name, 1, true)
    local second = listing:find(rows[2].name, 1, true)
    assert.is_truthy(first and second and first < second, listing)
    assert.matches(rows[2].key_id, listing, 1, true)
    util.sh("mkdir " .. q(f.base .. "/empty"))
    listing, rc = run("config list --repo " .. q(f.base .. "/empty"))
    assert.are.equal(0, rc, listing)
    assert.matches("no config backups", listing)
  end)

  it("keeps the newest retention.daily config backups after each backup, and all with --no-rotate", function()
    local f = fixture()
    local cfg = f.base .. "/bkr.yaml"
    util.write(cfg, "repository: " .. f.repo .. "\nretention:\n  daily: 2\nencryption:\n  key_file: " .. f.key .. "\n")
    local names = {}
    for i = 1, 3 do
      if i > 1 then util.sh("sleep 1.1") end
      local out, rc = run("config backup " .. q(f.env) .. " --config " .. q(cfg))
      assert.are.equal(0, rc, out)
      names[i] = newest(f.repo)
    end
    assert.are.same({ names[2], names[3] }, backups(f.repo))
    util.sh("sleep 1.1")
    local out, rc = run("config backup " .. q(f.env) .. " --config " .. q(cfg) .. " --no-rotate")
    assert.are.equal(0, rc, out)
    assert.are.equal(3, #backups(f.repo))
    out, rc = run("config verify --all --config " .. q(cfg))
    assert.are.equal(0, rc, out)
    assert.are.equal("", util.sh("ls -A " .. q(f.repo .. "/config") .. " | grep -v '^config_backup_'"))
  end)
end)

describe("bkr config command line", function()
  it("has --help for every subcommand, with its exit codes", function()
    for _, sub in ipairs({ "backup", "restore", "verify", "list" }) do
      local out, rc = run("config " .. sub .. " --help")
      assert.are.equal(0, rc, out)
      assert.matches("^usage: bkr config " .. sub, out)
      assert.matches("exit codes: 0 ", out)
    end
    local out, rc = run("config --help")
    assert.are.equal(0, rc, out)
    assert.matches("backup [FILE...]", out, 1, true)
    out, rc = run("config")
    assert.are.equal(2, rc, out)
    out, rc = run("config frobnicate")
    assert.are.equal(2, rc, out)
    assert.matches("unknown subcommand 'frobnicate'", out)
    out, rc = run("--help")
    assert.are.equal(0, rc, out)
    assert.matches("config%s+Configuration backups", out)
    out, rc = run("config backup --repo /nonexistent")
    assert.are.equal(2, rc, out)
  end)
end)

-- Run bkr with arguments; returns its output (stdout and stderr), exit code and wall time in ms.
local function timed(args)
  local dir = util.scratch("timed")
  local ms, rc = util.sh("(s=$(date +%s%N); " .. q(bkr) .. " " .. args .. " > " .. q(dir .. "/out") .. " 2>&1; rc=$?; "
    .. "e=$(date +%s%N); echo $(( (e - s) / 1000000 )); exit $rc)")
  return util.read(dir .. "/out"), rc, tonumber(ms)
end

describe("bkr config backup of files that fight back", function()
  it("never quotes a value of a file being backed up in a message, the log or the manifest: it names the file, the key path and the line", function()
    local f = fixture()
    local cases = {
      { file = f.src .. "/int.yaml", text = "db:\n  host: x\n  password: !!int hunter2plain\n",
        where = "line 3, column 13: db.password: invalid !!int value" },
      { file = f.src .. "/port.yaml", text = "app:\n  port: !!int notaport-plain\n",
        where = "line 2, column 9: app.port: invalid !!int value" },
      { file = f.src .. "/bang.yaml", text = "admin:\n  - password: !Bang-plain\n",
        where = "line 2, column 15: admin[0].password: unsupported tag" },
      { file = f.src .. "/star.yaml", text = "password: *Star-plain\n",
        where = "line 1, column 11: password: undefined alias" },
    }
    local leaks = { "hunter2plain", "notaport-plain", "Bang-plain", "Star-plain" }
    local all = {}
    for _, case in ipairs(cases) do
      util.write(case.file, case.text)
      all[#all + 1] = q(case.file)
      local out, rc = run("config backup " .. q(case.file) .. " --repo " .. q(f.repo) .. " --key-file " .. q(f.key))
      assert.are.equal(1, rc, out)
      assert.matches(case.file .. ": yaml: " .. case.where, out, 1, true)
      for _, leak in ipairs(leaks) do assert.is_nil(out:find(leak, 1, true), out) end
    end
    -- stored encrypted whole: the note in the manifest says where, not what
    local out, rc = run("config backup " .. table.concat(all, " ") .. " --repo " .. q(f.repo) .. " --key-file "
      .. q(f.key) .. " --encrypt-all")
    assert.are.equal(0, rc, out)
    local entry = entry_for(manifest_of(newest(f.repo)), cases[1].file)
    assert.are.equal("encrypted whole: yaml: " .. cases[1].where, entry.note)
    for _, leak in ipairs(leaks) do
      assert.is_nil(out:find(leak, 1, true), out)
      assert.are.equal("", holding(f.repo, leak), leak .. " is in the repository (bkr.log or a manifest)")
    end
    assert.matches('"result":"failed"', util.read(f.repo .. "/bkr.log"), 1, true)
  end)

  it("refuses a billion-laughs YAML file in well under a second, naming the file, and leaves the repository as it was", function()
    local f = fixture()
    local lines = { 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]' }
    for i = 1, 8 do
      lines[i + 1] = string.format("a%d: &a%d [%s]", i, i, string.rep("*a" .. (i - 1), 9, ","))
    end
    lines[#lines + 1] = "password: *a8"
    local laughs = f.src .. "/laughs.yaml"
    util.write(laughs, table.concat(lines, "\n") .. "\n")
    assert.is_true(#util.read(laughs) < 500)
    local out, rc, ms = timed("config backup " .. q(f.yaml) .. " " .. q(laughs) .. " --repo " .. q(f.repo)
      .. " --key-file " .. q(f.key))
    assert.are.equal(1, rc, out)
    assert.is_true(ms < 1000, "took " .. ms .. " ms")
    assert.matches(laughs .. ": yaml: line 6, column 10: a5[0]: aliases stand for more than 100000 nodes", out, 1, true)
    assert.are.equal("", util.sh("ls -A " .. q(f.repo .. "/config")))
    -- the lock went with the process: the next backup runs
    out, rc = backup(f)
    assert.are.equal(0, rc, out)
  end)

  it("seals thousands of secrets reached through aliases in seconds, not minutes", function()
    local f = fixture()
    local lines = { "anchors:" }
    for i = 1, 3000 do lines[#lines + 1] = string.format("  a%d: &x%d value-%d", i, i, i) end
    lines[#lines + 1] = "passwords:"
    for i = 1, 3000 do lines[#lines + 1] = string.format("  p%d: *x%d", i, i) end
    local many = f.src .. "/many.yaml"
    util.write(many, table.concat(lines, "\n") .. "\n")
    local out, rc, ms = timed("config backup " .. q(many) .. " --repo " .. q(f.repo) .. " --key-file " .. q(f.key))
    assert.are.equal(0, rc, out)
    assert.is_true(ms < 10000, "took " .. ms .. " ms")
    assert.are.equal("", holding(newest(f.repo), "value-"))
    out, rc = restore(f, newest(f.repo))
    assert.are.equal(0, rc, out)
    assert.is_true(same_bytes(many, f.out .. many))
  end)
end)

describe("bkr config reads only regular files inside a backup", function()
  -- Put `what` where the stored copy of `path` was and make manifest.json and SHA256SUMS agree
  -- with what is read through it, as someone who can write the repository could.
  local function replace_stored(dir, path, make)
    local stored = dir .. "/files" .. path
    os.remove(stored)
    util.sh(make(q(stored)))
    local function readable(file) -- (sha256sum would wait forever on a FIFO)
      return select(2, util.sh("test -f " .. q(file))) == 0
    end
    local manifest = manifest_of(dir)
    local entry = entry_for(manifest, path)
    if readable(stored) then
      local digest = util.sha256sum(stored)
      entry.sha256, entry.stored_sha256 = digest, digest
    end
    util.write(dir .. "/manifest.json", json.encode(manifest, { indent = true }))
    local names = { "manifest.json" }
    for _, f in ipairs(manifest.files) do
      if readable(dir .. "/" .. f.stored) then names[#names + 1] = q(f.stored) end
    end
    util.sh("cd " .. q(dir) .. " && sha256sum " .. table.concat(names, " ") .. " > SHA256SUMS")
  end

  it("treats a stored file replaced by a symlink (to /etc/shadow, to the key) as damage: exit 3, nothing read or written", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    local shadow = f.base .. "/shadow"
    util.write(shadow, "root:SHADOW-SECRET-HASH:19000::::::\n")
    for _, target in ipairs({ shadow, f.key }) do
      replace_stored(dir, f.bin, function(stored) return "ln -s " .. q(target) .. " " .. stored end)
      local check, crc = util.sh("cd " .. q(dir) .. " && sha256sum -c --quiet SHA256SUMS 2>&1")
      assert.are.equal(0, crc, "the checksums agree with the symlink's target: " .. check)
      out, rc = run("config verify " .. q(dir) .. " --key-file " .. q(f.key))
      assert.are.equal(3, rc, out)
      assert.matches("files" .. f.bin .. ": a symlink where a regular file belongs", out, 1, true)
      out, rc = restore(f, dir)
      assert.are.equal(3, rc, out)
      assert.matches("nothing was restored", out)
      assert.is_nil(out:find("SHADOW-SECRET", 1, true))
      assert.are.equal("", tree(f.out))
    end
  end)

  it("treats a FIFO or a directory where a stored file, SHA256SUMS or manifest.json belongs as damage, without hanging", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    for kind, make in pairs({ FIFO = "mkfifo", directory = "mkdir" }) do
      replace_stored(dir, f.env, function(stored) return make .. " " .. stored end)
      out, rc = run("config verify " .. q(dir) .. " --key-file " .. q(f.key))
      assert.are.equal(3, rc, out)
      assert.matches("files" .. f.env .. ": a " .. (kind == "FIFO" and "named pipe" or "directory")
        .. " where a regular file belongs", out, 1, true)
      out, rc = util.sh("timeout 20 " .. q(bkr) .. " config restore " .. q(dir) .. " --to " .. q(f.out)
        .. " --key-file " .. q(f.key) .. " 2>&1")
      assert.are.equal(3, rc, out)
      assert.are.equal("", tree(f.out))
      util.sh("rm -rf " .. q(dir .. "/files" .. f.env))
    end
    -- the same for the backup's own files: SHA256SUMS, manifest.json
    for _, name in ipairs({ "SHA256SUMS", "manifest.json" }) do
      util.sh("rm -f " .. q(dir .. "/" .. name) .. " && mkfifo " .. q(dir .. "/" .. name))
      out, rc = util.sh("timeout 20 " .. q(bkr) .. " config verify " .. q(dir) .. " --key-file " .. q(f.key) .. " 2>&1")
      assert.are.equal(3, rc, out)
      assert.matches(name .. ".*not a regular file", out)
    end
  end)

  it("treats a symlinked directory inside the backup as damage, even when it points at an identical copy", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    local first = f.yaml:match("^/([^/]+)")
    local elsewhere = f.base .. "/elsewhere"
    util.sh("mv " .. q(dir .. "/files/" .. first) .. " " .. q(elsewhere) .. " && ln -s " .. q(elsewhere) .. " "
      .. q(dir .. "/files/" .. first))
    local check, crc = util.sh("cd " .. q(dir) .. " && sha256sum -c --quiet SHA256SUMS 2>&1")
    assert.are.equal(0, crc, check)
    out, rc = run("config verify " .. q(dir) .. " --key-file " .. q(f.key))
    assert.are.equal(3, rc, out)
    assert.matches("files/" .. first .. ": a symlink where a directory belongs", out, 1, true)
    out, rc = restore(f, dir)
    assert.are.equal(3, rc, out)
    assert.are.equal("", tree(f.out))
  end)
end)

describe("bkr config restore writes all or nothing, and only below --to", function()
  it("never writes through a symlink below --to that it did not create: one-line refusal, nothing written", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    local victim = f.base .. "/victim"
    util.sh("mkdir -p " .. q(victim) .. " " .. q(f.out))
    -- at the top of --to ...
    local first = f.yaml:match("^/([^/]+)")
    util.sh("ln -s " .. q(victim) .. " " .. q(f.out .. "/" .. first))
    out, rc = restore(f, dir)
    assert.are.equal(1, rc, out)
    local message = out:match("bkr: ([^\n]*)\n$")
    assert.is_truthy(message, out)
    assert.matches(f.out .. "/" .. first .. " is a symlink", message, 1, true)
    assert.matches("nothing was restored", message, 1, true)
    assert.are.equal("", util.sh("ls -A " .. q(victim)))
    -- ... deep down, with --overwrite too ...
    util.sh("rm " .. q(f.out .. "/" .. first) .. " && mkdir -p " .. q(f.out .. f.src:match("^(.*)/[^/]+$"))
      .. " && ln -s " .. q(victim) .. " " .. q(f.out .. f.src))
    out, rc = restore(f, dir, "--overwrite")
    assert.are.equal(1, rc, out)
    assert.matches(f.out .. f.src .. " is a symlink", out, 1, true)
    assert.are.equal("", util.sh("ls -A " .. q(victim)))
    -- ... and in place of a file, which --overwrite does not replace
    util.sh("rm " .. q(f.out .. f.src) .. " && mkdir " .. q(f.out .. f.src) .. " && echo keep > "
      .. q(victim .. "/target") .. " && ln -s " .. q(victim .. "/target") .. " " .. q(f.out .. f.yaml))
    out, rc = restore(f, dir, "--overwrite")
    assert.are.equal(1, rc, out)
    assert.matches(f.out .. f.yaml .. " is a symlink", out, 1, true)
    assert.are.equal("keep\n", util.read(victim .. "/target"))
    assert.are.equal("link", util.sh("stat -c %F " .. q(f.out .. f.yaml)):match("symbolic (link)"))
    assert.are.equal(f.out .. f.yaml, util.sh("find " .. q(f.out) .. " ! -type d"):gsub("\n$", ""))
  end)

  it("leaves --to as it was when it fills up halfway: no file restored, none replaced, nothing left behind", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    util.sh("mkdir -p " .. q(f.out))
    local _, mrc = util.sh("mount -t tmpfs -o size=64k tmpfs " .. q(f.out))
    assert.are.equal(0, mrc, "mount a small tmpfs (the specs run as root)")
    finally(function() util.sh("umount " .. q(f.out)) end)
    -- the YAML and .env files come first in the manifest and fit; the 700 kB file does not
    out, rc = restore(f, dir)
    assert.are.equal(1, rc, out)
    assert.matches("[Nn]o space left on device", out)
    assert.matches("nothing was restored", out)
    assert.are.equal("", util.sh("find " .. q(f.out) .. " -mindepth 1"))
    -- with --overwrite, the files that were there keep their content
    util.sh("mkdir -p " .. q(f.out .. f.src) .. " && echo old > " .. q(f.out .. f.yaml))
    out, rc = restore(f, dir, "--overwrite")
    assert.are.equal(1, rc, out)
    assert.are.equal("old\n", util.read(f.out .. f.yaml))
    assert.are.equal(f.out .. f.yaml, util.sh("find " .. q(f.out) .. " ! -type d"):gsub("\n$", ""))
  end)
end)

describe("bkr config list with a malformed manifest", function()
  it("reports the backup as unreadable, never crashes, and lists the others", function()
    local f = fixture()
    local out, rc = backup(f)
    assert.are.equal(0, rc, out)
    util.sh("sleep 1")
    out, rc = backup(f)
    assert.are.equal(0, rc, out)
    local dir = newest(f.repo)
    for _, text in ipairs({ '{"format":"bkr-config-1","files":[1]}', "5", '{"files":{"a":1}}' }) do
      util.write(dir .. "/manifest.json", text)
      local lout, lrc = run("config list --repo " .. q(f.repo))
      assert.are.equal(0, lrc, lout)
      assert.is_nil(lout:find("%.lua:%d+"), lout)
      assert.is_truthy(lout:find("not an object", 1, true) or lout:find("not a bkr config backup manifest", 1, true), lout)
      local jout = run("config list --json --repo " .. q(f.repo))
      local rows = json.decode(jout)
      assert.are.equal(2, #rows, jout)
    end
  end)
end)
