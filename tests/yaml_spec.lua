-- yaml_spec.lua - bkr.yaml: the configuration file's YAML, parsed by libyaml.
-- Values are checked against python3's yaml module (an independent parser) where YAML 1.1
-- and 1.2 agree, and offsets from scalars() against the source text itself.
local yaml = require "bkr.yaml"
local cjson = require "cjson"
local util = require "support.util"

local null = yaml.null

-- decode that must succeed.
local function decode(text)
  local value, err = yaml.decode(text)
  assert(err == nil, err)
  return value
end

-- decode that must fail; returns the message.
local function failure(text)
  local value, err = yaml.decode(text)
  assert.is_nil(value)
  assert.is_string(err)
  return err
end

-- The document as python3's yaml.safe_load sees it, through JSON (None -> cjson.null).
local function python_load(text)
  local dir = util.scratch("yaml")
  util.write(dir .. "/doc.yaml", text)
  local out, rc = util.sh("python3 -c 'import sys, json, yaml; "
    .. "json.dump(yaml.safe_load(open(sys.argv[1], encoding=\"utf-8\")), sys.stdout)' "
    .. util.quote(dir .. "/doc.yaml") .. " 2>&1")
  assert.are.equal(0, rc, "python3 yaml failed (is python3-yaml installed?): " .. out)
  return cjson.decode(out)
end

-- Our value in JSON's terms: yaml.null -> cjson.null, keys -> strings.
local function as_json(v)
  if v == null then return cjson.null end
  if type(v) ~= "table" then return v end
  local out = {}
  local is_array = #v > 0 or next(v) == nil
  for k, x in pairs(v) do
    out[is_array and k or tostring(k)] = as_json(x)
  end
  return out
end

local function count_lines(s)
  return select(2, s:gsub("\n", "")) + 1
end

local config = [[
# bkr configuration
connection:
  host: db1.example.com
  port: 5432
  user: backup
  sslmode: "verify-full"
databases:
  - app
  - billing
  - "2024"          # quoted: stays a string
repository:
  path: /var/backups/bkr
  keep_partial: false
compression:
  codec: gzip
  level: 6
retention:
  daily: 7
  weekly: 4
  monthly: 12
  yearly: ~
secrets:
  database:
    password: 's3cr3t: with colon'
  encryption:
    passphrase: "pa\"ss"
    key_file:
notes: |
  Restores are drilled weekly.
  Ask ops before changing.
]]

describe("yaml.decode", function()
  it("decodes a realistic bkr configuration to the right Lua types", function()
    local c = decode(config)
    assert.are.same({ host = "db1.example.com", port = 5432, user = "backup", sslmode = "verify-full" },
      c.connection)
    assert.are.equal("integer", math.type(c.connection.port))
    assert.are.same({ "app", "billing", "2024" }, c.databases)
    assert.are.equal("string", type(c.databases[3]))
    assert.are.equal(false, c.repository.keep_partial)
    assert.are.equal("/var/backups/bkr", c.repository.path)
    assert.are.same({ codec = "gzip", level = 6 }, c.compression)
    assert.are.equal(7, c.retention.daily)
    assert.are.equal(null, c.retention.yearly)
    assert.are.equal("s3cr3t: with colon", c.secrets.database.password)
    assert.are.equal('pa"ss', c.secrets.encryption.passphrase)
    assert.are.equal(null, c.secrets.encryption.key_file)
    assert.are.equal("Restores are drilled weekly.\nAsk ops before changing.\n", c.notes)
  end)

  it("agrees with python3's yaml module on a handful of documents", function()
    local documents = {
      config,
      "a: &base {x: 1, y: [true, false, null]}\nb: *base\nc: [*base, *base]\n",
      "literal: |-\n  no trailing\n  newline\nkeep: |+\n  kept\n\nfolded: >\n  one\n  two\n\n  three\n"
        .. "stripped: >-\n  gone\n",
      'escapes: "tab\\tquote\\" \\u00e9 \\x41 \\\\"\nsingle: \'it\'\'s\'\n'
        .. "plain: multi\n  line plain\n  scalar\n",
      "unicode: \"Grüße, 世界 🐘\"\nключ: значение\n🔑: [ä, ö]\n",
      "? explicit key\n: value\nflow: {a: [1, 2, {b: c}], d: -17, e: 2.5, f: ''}\nempty_seq: []\nempty_map: {}\n",
      "- name: app\n  tables: [users, orders]\n- name: billing\n  tables:\n    - invoices\n    -\n",
      "%YAML 1.1\n--- # a directive and an explicit start\nlist:\n- 1\n- -2\n- 3.25\n- -0.5\n...\n",
      "",
    }
    for _, text in ipairs(documents) do
      assert.are.same(python_load(text), as_json(decode(text)), "document: " .. text)
    end
  end)

  it("ignores comments everywhere", function()
    assert.are.same({ a = 1, b = { 2, 3 } },
      decode("# head\na: 1 # trailing\n# between\nb: # after key\n  - 2 # item\n  # inside\n  - 3\n# tail"))
    assert.are.equal("value # not a comment", decode("k: 'value # not a comment'").k)
    assert.are.equal("a#b", decode("k: a#b").k)
  end)

  it("keeps unicode keys and values byte for byte", function()
    local t = decode("名前: \"Zoë\"\nemoji: 🐘\nescaped: \"\\u00fc\\U0001F418\"\n")
    assert.are.equal("Zoë", t["名前"])
    assert.are.equal("🐘", t.emoji)
    assert.are.equal("ü🐘", t.escaped)
  end)

  it("accepts a UTF-8 byte order mark", function()
    assert.are.same({ a = 1 }, decode("\239\187\191a: 1\n"))
  end)

  describe("resolves plain scalars with the YAML 1.2 core schema", function()
    it("null, Null, NULL, ~ and empty are yaml.null, kept as values of their keys", function()
      local t = decode("a: null\nb: Null\nc: NULL\nd: ~\ne:\nf: nULL\n")
      for _, k in ipairs{ "a", "b", "c", "d", "e" } do
        assert.are.equal(null, t[k], k)
      end
      assert.are.equal("nULL", t.f)
      assert.are.same({ null, null, "x" }, decode("[~, null, x]"))
    end)

    it("yaml.null is a unique userdata that prints as yaml.null", function()
      assert.are.equal("userdata", type(null))
      assert.are.equal("yaml.null", tostring(null))
      assert.are.equal(null, decode("~"))
    end)

    it("true and false in three spellings are booleans; yes/no/on/off stay strings", function()
      assert.are.same({ true, true, true, false, false, false, "yes", "no", "on", "off", "tRUE" },
        decode("[true, True, TRUE, false, False, FALSE, yes, no, on, off, tRUE]"))
    end)

    it("decimal, octal and hex integers are Lua integers", function()
      local t = decode("[-12, +3, 0, 007, 0o17, 0x1F, 0xff, 9223372036854775807, -9223372036854775808]")
      assert.are.same({ -12, 3, 0, 7, 15, 31, 255, math.maxinteger, math.mininteger }, t)
      for i, v in ipairs(t) do
        assert.are.equal("integer", math.type(v), "item " .. i)
      end
    end)

    it("integers outside 64 bits are an error, not a silently rounded float", function()
      assert.are.equal("yaml: line 1, column 4: a: integer out of range", failure("a: 9223372036854775808"))
      assert.matches("integer out of range", failure("[-9223372036854775809]"))
      assert.matches("integer out of range", failure("[0x10000000000000000]"))
    end)

    it("floats, infinities and NaN are Lua floats", function()
      local t = decode("[1.5, -.5, 1e3, 2.5E-1, +1., .inf, -.Inf, +.INF, .nan, .NaN, 0.0]")
      assert.are.same({ 1.5, -0.5, 1000.0, 0.25, 1.0, math.huge, -math.huge, math.huge },
        { table.unpack(t, 1, 8) })
      for i, v in ipairs(t) do
        assert.are.equal("float", math.type(v), "item " .. i)
      end
      assert.is_true(t[9] ~= t[9] and t[10] ~= t[10])
    end)

    it("anything else, and every quoted or block scalar, is a string", function()
      assert.are.same({ "1.2.3", "0x", "0o8", "-0x1F", "1e", ".", "12abc", "1_000", "1:30", "inf" },
        decode("[1.2.3, 0x, 0o8, -0x1F, 1e, ., 12abc, 1_000, 1:30, inf]"))
      local t = decode("a: '12'\nb: \"true\"\nc: 'null'\nd: |\n  42\ne: >-\n  1.5\nf: ''\n")
      assert.are.same({ a = "12", b = "true", c = "null", d = "42\n", e = "1.5", f = "" }, t)
    end)

    it("resolves mapping keys the same way", function()
      local t = decode("1: one\n'1': quoted one\ntrue: yes\n~: nothing\n")
      assert.are.equal("one", t[1])
      assert.are.equal("quoted one", t["1"])
      assert.are.equal("yes", t[true])
      assert.are.equal("nothing", t[null])
    end)
  end)

  describe("explicit tags", function()
    it("!!str forces a string, whatever the scalar looks like", function()
      assert.are.same({ "12", "true", "null", "", "1.5" },
        decode("[!!str 12, !!str true, !!str null, !!str , !!str 1.5]"))
    end)

    it("!!int, !!float, !!bool and !!null convert, even quoted", function()
      assert.are.same({ 12, 2.0, true, null, "x" },
        decode("[!!int '12', !!float 2, !!bool \"true\", !!null '', ! x]"))
      assert.are.equal("float", math.type(decode("!!float 2")))
    end)

    it("reject a value that does not fit the tag, and unknown tags", function()
      assert.are.equal("yaml: line 1, column 4: a: invalid !!int value", failure("a: !!int twelve"))
      assert.matches("^yaml: line 1, column 4: a: unsupported tag %(not shown: a plain value that starts with"
        .. " '!' is read as a tag; quote it%)$", failure("a: !vault abc"))
      assert.are.equal("yaml: line 1, column 1: unsupported tag !!set", failure("!!set {a, b}"))
    end)
  end)

  describe("anchors and aliases", function()
    it("an alias is the anchored value; for collections the very same table", function()
      local t = decode("base: &b {host: db, port: 5432}\nprimary: *b\nname: &n app\nnames: [*n, *n]\n")
      assert.is_true(rawequal(t.base, t.primary))
      assert.are.same({ "app", "app" }, t.names)
    end)

    it("treats the merge key << as an ordinary key", function()
      local t = decode("base: &b {a: 1}\nderived:\n  <<: *b\n  c: 2\n")
      assert.are.same({ ["<<"] = { a = 1 }, c = 2 }, t.derived)
    end)

    -- The classic: 9 levels of 9 aliases, 387 420 489 "lol"s from a few hundred bytes.
    local function billion_laughs(levels)
      local lines = { "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]" }
      for i = 1, levels do
        lines[#lines + 1] = string.format("a%d: &a%d [%s]", i, i, string.rep("*a" .. (i - 1), 9, ", "))
      end
      lines[#lines + 1] = "password: *a" .. levels
      return table.concat(lines, "\n") .. "\n"
    end

    it("refuses a billion-laughs document at once, saying where the aliases blow up", function()
      assert.are.equal(100000, yaml.max_alias_nodes)
      for _, levels in ipairs({ 8, 30 }) do
        local start = os.clock()
        local err = failure(billion_laughs(levels))
        assert.is_true(os.clock() - start < 0.1, "took " .. (os.clock() - start) .. " s")
        assert.are.equal('yaml: line 6, column 10: a5[0]: aliases stand for more than 100000 nodes '
          .. '(yaml.max_alias_nodes): refused as a "billion laughs"', err)
      end
      local file = util.scratch("yaml") .. "/laughs.yaml"
      util.write(file, billion_laughs(8))
      local value, err = yaml.decode_file(file)
      assert.is_nil(value)
      assert.matches("^yaml: " .. file:gsub("%p", "%%%0") .. ": line 6, column 10: .*billion laughs", err)
      local _, scalars_err = yaml.scalars(billion_laughs(8))
      assert.matches("billion laughs", scalars_err)
    end)

    it("counts each alias as the whole node it names, up to yaml.max_alias_nodes", function()
      -- an anchored sequence of 999 scalars is 1000 nodes; 100 aliases of it are the limit
      local base = "base: &b [" .. string.rep("x", 999, ", ") .. "]\n"
      local t = decode(base .. "uses: [" .. string.rep("*b", 100, ", ") .. "]\n")
      assert.are.equal(100, #t.uses)
      assert.is_true(rawequal(t.base, t.uses[100]))
      assert.are.equal("yaml: line 2, column 408: uses[100]: aliases stand for more than 100000 nodes "
        .. '(yaml.max_alias_nodes): refused as a "billion laughs"',
        failure(base .. "uses: [" .. string.rep("*b", 101, ", ") .. "]\n"))
    end)

    it("an undefined alias and a collection containing itself are errors", function()
      assert.are.equal("yaml: line 1, column 4: a: undefined alias (not shown: a plain value that starts with "
        .. "'*' is read as an alias; quote it)", failure("a: *nope"))
      assert.matches("^yaml: line 1, column 5: alias %*a refers to a collection that contains it$",
        failure("&a [*a]"))
    end)
  end)

  describe("rejects bad input with its line and column", function()
    it("a tab used for indentation, in words that say what to do", function()
      assert.are.equal("yaml: line 3, column 1: a tab character; YAML indents with spaces only",
        failure("connection:\n  host: x\n\tport: 1\n"))
      assert.are.equal("yaml: line 2, column 1: a tab character; YAML indents with spaces only",
        failure("connection:\n\thost: x\n"))
      assert.are.equal("yaml: line 2, column 3: a tab character; YAML indents with spaces only",
        failure("a:\n  \tb: 1\n"))
      -- other scanner errors keep libyaml's words; a tab inside a value is no error
      assert.matches("^yaml: line 1, column 4: found character that cannot start any token", failure("a: @x\n"))
      assert.are.same({ a = "x\ty" }, yaml.decode("a: x\ty\n"))
    end)

    it("an unclosed quote", function()
      assert.are.equal("yaml: line 3, column 1: found unexpected end of stream"
        .. " (while scanning a quoted scalar at line 2, column 4)", failure("a: 1\nb: \"never closed\n"))
    end)

    it("counts columns in characters, not bytes", function()
      assert.matches("^yaml: line 1, column 6: found unexpected end of stream", failure("é: 'x"))
    end)

    it("a duplicate key, also when spelled differently", function()
      assert.are.equal("yaml: line 4, column 3: duplicate key \"port\" (in the mapping at line 2, column 3)",
        failure("connection:\n  port: 1\n  host: x\n  port: 2\n"))
      assert.matches("line 1, column 14: duplicate key \"0x1\"", failure("{1: a, 2: b, 0x1: c}"))
      assert.matches("duplicate key", failure("'a': 1\n\"a\": 2"))
    end)

    it("a collection as a mapping key", function()
      assert.matches("^yaml: line 1, column 3: mapping keys must be scalars, not mappings$",
        failure("? {a: 1}\n: x"))
      assert.matches("mapping keys must be scalars %(alias %*s is a collection%)", failure("s: &s [1]\n*s : x"))
    end)

    it("more than one document", function()
      assert.are.equal("yaml: line 3, column 1: more than one document", failure("a: 1\nb: 2\n---\nc: 3\n"))
      assert.matches("more than one document", failure("--- 1\n--- 2\n"))
    end)

    it("bytes that are not UTF-8", function()
      assert.are.equal("yaml: line 2, column 4: invalid leading UTF-8 octet", failure("a: 1\nb: \255\n"))
    end)

    it("never quotes a value, a tag or an alias from the document: only the line and the key path", function()
      -- any of these may be a password: `password: !Secr3t` is a tag, `password: *Secr3t` an alias
      local cases = {
        { "db:\n  password: !!int hunter2plain\n", "line 2, column 13: db.password: invalid !!int value" },
        { "db:\n  - !!bool hunter2plain\n", "line 2, column 5: db[0]: invalid !!bool value" },
        { "pw: !!null hunter2plain\n", "line 1, column 5: pw: invalid !!null value" },
        { "pw: !!float hunter2plain\n", "line 1, column 5: pw: invalid !!float value" },
        { "pw: !hunter2plain\n", "line 1, column 5: pw: unsupported tag (not shown: " },
        { "pw: !!hunter2plain x\n", "line 1, column 5: pw: unsupported tag (not shown: " },
        { "pw: !<hunter2plain> x\n", "line 1, column 5: pw: unsupported tag (not shown: " },
        { "pw: !hunter2plain [x]\n", "line 1, column 5: pw: unsupported tag (not shown: " },
        { "pw: *hunter2plain\n", "line 1, column 5: pw: undefined alias (not shown: " },
        { "pw: 123456789012345678901234567890\n", "line 1, column 5: pw: integer out of range" },
        { "pw: hunter2\255plain\n", "line 1, column 12: invalid leading UTF-8 octet" },
        { '"k e\\ty": {pw: !!int hunter2plain}\n', 'line 1, column 16: ["k e\\x09y"].pw: invalid !!int value' },
      }
      for _, case in ipairs(cases) do
        local err = failure(case[1])
        assert.is_nil(err:find("hunter2", 1, true), err)
        assert.is_nil(err:find("1234567890", 1, true), err)
        assert.is_nil(err:find("0xff", 1, true), err)
        assert.are.equal("yaml: " .. case[2], err:sub(1, #case[2] + 6))
      end
    end)

    it("nesting deeper than yaml.max_depth, in flow and block style", function()
      assert.are.equal(200, yaml.max_depth)
      local ok = decode(string.rep("[", 200) .. "x" .. string.rep("]", 200))
      for _ = 1, 199 do ok = ok[1] end
      assert.are.same({ "x" }, ok)
      assert.are.equal("yaml: line 1, column 201: nesting deeper than 200 levels",
        failure(string.rep("[", 201) .. string.rep("]", 201)))
      local block = {}
      for i = 1, 201 do block[i] = string.rep(" ", i - 1) .. "k:" end
      assert.matches("^yaml: line 201, column 201: nesting deeper than 200 levels$",
        failure(table.concat(block, "\n") .. " v\n"))
      -- A hostile megabyte of brackets fails at the limit instead of exhausting the stack.
      assert.matches("nesting deeper than 200 levels", failure(string.rep("[", 1000000)))
    end)
  end)

  it("an empty document or a stream of only comments is yaml.null", function()
    assert.are.equal(null, decode(""))
    assert.are.equal(null, decode("# nothing here\n\n"))
    assert.are.equal(null, decode("---\n"))
  end)

  it("raises only for a non-string argument", function()
    assert.has_error(function() yaml.decode() end)
    assert.has_error(function() yaml.decode({}) end)
    assert.has_error(function() yaml.scalars(nil) end)
    assert.has_error(function() yaml.decode_file({}) end)
  end)
end)

describe("yaml.decode_file", function()
  it("decodes a file", function()
    local dir = util.scratch("yaml")
    util.write(dir .. "/bkr.yaml", config)
    assert.are.same(decode(config), yaml.decode_file(dir .. "/bkr.yaml"))
  end)

  it("returns nil and a message naming a missing file", function()
    local path = util.scratch("yaml") .. "/missing.yaml"
    local value, err = yaml.decode_file(path)
    assert.is_nil(value)
    assert.are.equal("yaml: " .. path .. ": No such file or directory", err)
  end)

  it("returns nil and a message for a directory", function()
    local dir = util.scratch("yaml")
    local value, err = yaml.decode_file(dir)
    assert.is_nil(value)
    assert.are.equal("yaml: " .. dir .. ": Is a directory", err)
  end)

  it("prefixes parse errors with the path", function()
    local dir = util.scratch("yaml")
    util.write(dir .. "/bad.yaml", "a: 1\nb:\n  c: [1, 2\n")
    local value, err = yaml.decode_file(dir .. "/bad.yaml")
    assert.is_nil(value)
    assert.matches("^yaml: " .. dir:gsub("%p", "%%%0")
      .. "/bad.yaml: line 4, column 1: did not find expected ',' or ']'", err)
  end)

  it("leaves no descriptor open, whatever the outcome", function()
    local dir = util.scratch("yaml")
    util.write(dir .. "/good.yaml", config)
    util.write(dir .. "/bad.yaml", "a: [")
    local before = util.fd_count()
    for _ = 1, 50 do
      assert.is_table(yaml.decode_file(dir .. "/good.yaml"))
      assert.is_nil(yaml.decode_file(dir .. "/bad.yaml"))
      assert.is_nil(yaml.decode_file(dir .. "/none.yaml"))
      assert.is_nil(yaml.decode_file(dir))
    end
    assert.are.equal(before, util.fd_count())
  end)
end)

describe("yaml.scalars", function()
  -- Multi-byte characters before most scalars check that offsets are bytes, not characters.
  local doc = table.concat({
    "# ünïcødé comment: not a scalar",
    "connection:",
    "  host: 'db-é.example'   # trailing comment",
    "  password: \"s3\\\"cr\u{e9}t\"",
    "databases:",
    "  - name: app",
    "    tables: [users, 'orders']",
    "  - name: bïlling",
    "notes: |",
    "  line one",
    "  line two",
    "motd: >-",
    "  folded",
    "  text",
    "anchored: &k !!str 42",
    "empty:",
    "",
  }, "\n")

  it("lists every scalar with its path, raw value, style, byte span and line", function()
    local list = assert(yaml.scalars(doc))
    local got = {}
    for i, s in ipairs(list) do
      got[i] = { path = s.path, value = s.value, style = s.style, text = doc:sub(s.start + 1, s.stop),
        line = s.line, is_key = s.is_key }
    end
    local function key(path, text, line)
      return { path = path, value = text, style = "plain", text = text, line = line, is_key = true }
    end
    assert.are.same({
      key({ "connection" }, "connection", 2),
      key({ "connection", "host" }, "host", 3),
      { path = { "connection", "host" }, value = "db-é.example", style = "single", text = "'db-é.example'",
        line = 3, is_key = false },
      key({ "connection", "password" }, "password", 4),
      { path = { "connection", "password" }, value = 's3"cré' .. "t", style = "double",
        text = '"s3\\"cr\u{e9}t"', line = 4, is_key = false },
      key({ "databases" }, "databases", 5),
      key({ "databases", 1, "name" }, "name", 6),
      { path = { "databases", 1, "name" }, value = "app", style = "plain", text = "app", line = 6,
        is_key = false },
      key({ "databases", 1, "tables" }, "tables", 7),
      { path = { "databases", 1, "tables", 1 }, value = "users", style = "plain", text = "users", line = 7,
        is_key = false },
      { path = { "databases", 1, "tables", 2 }, value = "orders", style = "single", text = "'orders'", line = 7,
        is_key = false },
      key({ "databases", 2, "name" }, "name", 8),
      { path = { "databases", 2, "name" }, value = "bïlling", style = "plain", text = "bïlling", line = 8,
        is_key = false },
      key({ "notes" }, "notes", 9),
      { path = { "notes" }, value = "line one\nline two\n", style = "literal",
        text = "|\n  line one\n  line two\n", line = 9, is_key = false },
      key({ "motd" }, "motd", 12),
      { path = { "motd" }, value = "folded text", style = "folded", text = ">-\n  folded\n  text\n", line = 12,
        is_key = false },
      key({ "anchored" }, "anchored", 15),
      { path = { "anchored" }, value = "42", style = "plain", text = "42", line = 15, is_key = false },
      key({ "empty" }, "empty", 16),
      { path = { "empty" }, value = "", style = "plain", text = "", line = 16, is_key = false },
    }, got)
    for _, s in ipairs(list) do
      assert.are.equal(count_lines(doc:sub(1, s.start)), s.line)
    end
  end)

  it("lets a value be rewritten in place, leaving the rest of the file byte for byte", function()
    local password
    for _, s in ipairs(assert(yaml.scalars(doc))) do
      if not s.is_key and s.path[1] == "connection" and s.path[2] == "password" then password = s end
    end
    local rewritten = doc:sub(1, password.start) .. "'ENC[aes256:Zm9v]'" .. doc:sub(password.stop + 1)
    local before, after = decode(doc), decode(rewritten)
    assert.are.equal("ENC[aes256:Zm9v]", after.connection.password)
    after.connection.password = before.connection.password
    assert.are.same(before, after)
  end)

  it("skips anchors, tags and comments before a value, even across lines", function()
    local text = "a: &x !!str   # why\n  value\nb: !!int &y\n  '7'\nc: [&z 1, !!str 2]\n"
    local list = assert(yaml.scalars(text))
    local spans = {}
    for _, s in ipairs(list) do
      if not s.is_key then spans[#spans + 1] = { text:sub(s.start + 1, s.stop), s.line } end
    end
    assert.are.same({ { "value", 2 }, { "'7'", 4 }, { "1", 5 }, { "2", 5 } }, spans)
  end)

  it("counts CRLF line ends as bytes", function()
    local text = "a: 1\r\nb: 'two'\r\nc: |\r\n  x\r\n"
    local list = assert(yaml.scalars(text))
    assert.are.equal("'two'", text:sub(list[4].start + 1, list[4].stop))
    assert.are.equal(2, list[4].line)
    assert.are.equal("|\r\n  x\r\n", text:sub(list[6].start + 1, list[6].stop))
  end)

  it("counts a byte order mark in the offsets", function()
    local text = "\239\187\191key: value\n"
    local list = assert(yaml.scalars(text))
    assert.are.equal("key", text:sub(list[1].start + 1, list[1].stop))
    assert.are.equal(3, list[1].start)
  end)

  it("does not list aliases, only the anchored scalar", function()
    local list = assert(yaml.scalars("a: &s x\nb: *s\n"))
    assert.are.equal(3, #list)
    assert.are.same({ "a", "a", "b" }, { list[1].path[1], list[2].path[1], list[3].path[1] })
  end)

  it("fails like decode on bad input", function()
    local value, err = yaml.scalars("a: 1\na: 2\n")
    assert.is_nil(value)
    assert.are.equal("yaml: line 2, column 1: duplicate key \"a\" (in the mapping at line 1, column 1)", err)
    assert.are.same({}, yaml.scalars(""))
  end)
end)
