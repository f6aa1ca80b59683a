-- bkr.dump: per-table row counts and digests gathered from real pg_dump output as it streams,
-- checked against PostgreSQL itself (count(*), COPY TO STDOUT) and a digest computed here in
-- Lua (hash.sha256_string per row, 256-bit addition below), independent of dump.c.
local dump = require "bkr.dump"
local stream = require "bkr.stream"
local gzip = require "bkr.gzip"
local hash = require "bkr.hash"
local proc = require "bkr.proc"
local pg = require "bkr.pg"
local util = require "support.util"

local ZERO = string.rep("0", 64)

-- pg_dump runs its COPYs with these settings; a check of the same rows must use them too.
local DUMP_SETTINGS = "-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3"

-- The digest, written again in Lua: the sum of the rows' SHA-256 read as big-endian
-- numbers, modulo 2^256. 16 limbs of 16 bits, least significant first.
local function lua_digest(rows)
  local acc = {}
  for i = 1, 16 do acc[i] = 0 end
  for _, row in ipairs(rows) do
    local h = hash.sha256_string(row)
    local carry = 0
    for i = 1, 16 do
      local s = acc[i] + tonumber(h:sub(65 - 4 * i, 68 - 4 * i), 16) + carry
      acc[i] = s & 0xffff
      carry = s >> 16
    end
  end
  local parts = {}
  for i = 16, 1, -1 do parts[#parts + 1] = string.format("%04x", acc[i]) end
  return table.concat(parts)
end

local function split_rows(text)
  assert(text == "" or text:sub(-1) == "\n", "COPY output ends with a newline")
  local rows = {}
  for row in text:gmatch("([^\n]*)\n") do rows[#rows + 1] = row end
  return rows
end

local function quote_ident(s)
  return '"' .. s:gsub('"', '""') .. '"'
end

-- The tables of the test database, as the test expects pg_dump to present them.
local TABLES = {
  { schema = "My Schema", name = 'Tab"le', columns = { "Col 1", "b" } },
  { schema = "public", name = "a\nb", columns = { "c\nd", 'e"f' } },
  { schema = "public", name = "invoices", columns = { "id", "supplier", "amount", "ratio", "note", "at" } },
  { schema = "public", name = "invoices_reversed", columns = { "id", "supplier", "amount", "ratio", "note", "at" } },
  { schema = "s2", name = "big", columns = { "id", "label", "ts" } },
  { schema = "s2", name = "bin", columns = { "b" } },
  { schema = "s2", name = "dups", columns = { "v" } },
  { schema = "s2", name = "empty", columns = { "x" } },
  { schema = "s2", name = "gen", columns = { "a" } },          -- b is generated: not dumped
  { schema = "s2", name = "nocols", columns = {} },
  { schema = "s2", name = "p1", columns = { "k", "v" } },      -- partitions of s2.parted
  { schema = "s2", name = "p2", columns = { "k", "v" } },
  { schema = "s2", name = "single", columns = { "v" } },
  { schema = "s2", name = "tricky", columns = { "v" } },
}

local SETUP = [[
create schema s2;
create schema "My Schema";
create table "My Schema"."Tab""le" ("Col 1" text, b int);
insert into "My Schema"."Tab""le" values ('ünïcødé ✓', 1), (E'tab\there', 2), (null, null);
create table public."a
b" ("c
d" int, "e""f" text);
insert into public."a
b" values (1, E'x\ny');
create table public.invoices (id int primary key, supplier text, amount numeric, ratio float8,
                              note text, at timestamptz);
insert into public.invoices
  select g, 'supplier ' || g, g * 1.25, g / 3.0, case when g % 5 = 0 then null
         else E'line1\nline2\ttab\\back ' || repeat('é', g % 7) end,
         timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
  from generate_series(1, 300) g;
create table public.invoices_reversed (like public.invoices);
insert into public.invoices_reversed select * from public.invoices order by id desc;
create table s2.big (id int, label text, ts timestamp);
insert into s2.big select g, md5(g::text), timestamp '2020-01-01' + g * interval '1 second'
  from generate_series(1, 100000) g;
create table s2.bin (b bytea);
insert into s2.bin values ('\x00ff0a5c'), (''), (null), (decode(repeat('ab', 300), 'hex'));
create table s2.dups (v text);
insert into s2.dups values ('same'), ('same');
create table s2.single (v text);
insert into s2.single values ('same');
create table s2.empty (x int);
create table s2.gen (a int, b int generated always as (a * 2) stored);
insert into s2.gen (a) values (1), (2), (3);
create table s2.nocols ();
insert into s2.nocols default values;
insert into s2.nocols default values;
create table s2.parted (k int, v text) partition by range (k);
create table s2.p1 partition of s2.parted for values from (0) to (10);
create table s2.p2 partition of s2.parted for values from (10) to (20);
insert into s2.parted values (1, 'a'), (2, 'b'), (15, 'c');
create table s2.tricky (v text);
insert into s2.tricky values (E'x\nCOPY public.fake (a) FROM stdin;\ny\n\\.\nz');
create function s2.copy_in_body() returns void language sql as $f$
COPY public.invoices (id) FROM stdin;
$f$;
]]

local function run_pg_dump(db, extra)
  local argv = { "pg_dump", "-d", db }
  for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
  local p <close> = assert(proc.spawn{ argv = argv })
  local r = stream.run{ p:source(), dump.table_digests(), stream.to_string() }
  assert(p:wait())
  return r.tables, r.string
end

local function digests_of(text, opts)
  return stream.run{ stream.from_string(text), dump.table_digests(opts), stream.to_null() }.tables
end

local function copy_sql(t)
  local cols = {}
  for i, c in ipairs(t.columns) do cols[i] = quote_ident(c) end
  local list = #cols > 0 and " (" .. table.concat(cols, ", ") .. ")" or ""
  return "COPY " .. quote_ident(t.schema) .. "." .. quote_ident(t.name) .. list .. " TO STDOUT"
end

-- COPY TO STDOUT through psql into a file, with pg_dump's settings; returns path and text.
local function psql_copy(db, sql, dir)
  local path = dir .. "/copy-" .. math.random(1e9)
  local out, rc = util.sh("PGOPTIONS=" .. util.quote(DUMP_SETTINGS) .. " psql -X -q -v ON_ERROR_STOP=1 -d "
    .. util.quote(db) .. " -c " .. util.quote(sql) .. " -o " .. util.quote(path) .. " 2>&1")
  assert(rc == 0, "psql failed: " .. out)
  return path, util.read(path)
end

local function find(tables, schema, name)
  for _, t in ipairs(tables) do
    if t.schema == schema and t.name == name then return t end
  end
end

describe("dump.table_digests on real pg_dump output", function()
  local db = string.format("bkr_dump_%d_%d", os.time(), math.random(1e6))
  local restored = db .. "_restored"
  local tables, text, dir

  lazy_setup(function()
    util.psql("create database " .. db)
    util.psql(SETUP, db)
    dir = util.scratch("dump")
    tables, text = run_pg_dump(db)
  end)

  lazy_teardown(function()
    util.psql("drop database if exists " .. db)
    util.psql("drop database if exists " .. restored)
  end)

  it("lists every COPY section in dump order, with unquoted names and the dumped columns", function()
    -- pg_dump's own TOC comments say which table's data comes next (newlines become spaces).
    local toc = {}
    for name, schema in text:gmatch("\n%-%- Data for Name: ([^\n]-); Type: TABLE DATA; Schema: ([^\n]-); Owner:") do
      toc[#toc + 1] = schema .. "." .. name
    end
    local got = {}
    for i, t in ipairs(tables) do got[i] = t.schema .. "." .. t.name:gsub("\n", " ") end
    assert.are.same(toc, got)
    assert.are.equal(#TABLES, #tables)
    for _, want in ipairs(TABLES) do
      local t = find(tables, want.schema, want.name)
      assert.is_not_nil(t, want.schema .. "." .. want.name)
      assert.are.same(want.columns, t.columns)
    end
  end)

  it("counts each table's rows as PostgreSQL does", function()
    for _, t in ipairs(tables) do
      local count = util.psql("select count(*) from only " .. quote_ident(t.schema) .. "." .. quote_ident(t.name), db)
      assert.are.equal(tonumber(count), t.rows, t.schema .. "." .. t.name)
    end
    assert.are.equal(100000, find(tables, "s2", "big").rows)
    assert.are.equal(2, find(tables, "s2", "nocols").rows)
    assert.are.equal(0, find(tables, "s2", "empty").rows)
    assert.are.equal(ZERO, find(tables, "s2", "empty").digest)
  end)

  it("gives every table the digest of its COPY TO STDOUT rows, computed independently", function()
    for _, t in ipairs(tables) do
      local path, copied = psql_copy(db, copy_sql(t), dir)
      local rows = split_rows(copied)
      assert.are.equal(t.rows, #rows, t.name)
      assert.are.equal(lua_digest(rows), t.digest, t.schema .. "." .. t.name)
      local r = stream.run{ stream.from_file(path), dump.row_digest() }
      assert.are.same({ rows = t.rows, digest = t.digest }, r.rows)
      assert.are.equal(t.digest, dump.digest_rows(rows))
    end
  end)

  it("gives the same digest for the same rows in another physical order", function()
    local a, b = find(tables, "public", "invoices"), find(tables, "public", "invoices_reversed")
    assert.are_not.equal(text:match("COPY public.invoices [^\n]*\n([^\n]*)"),
                         text:match("COPY public.invoices_reversed [^\n]*\n([^\n]*)"))
    assert.are.equal(300, a.rows)
    assert.are.equal(a.digest, b.digest)
  end)

  it("counts duplicate rows: two equal rows differ from one", function()
    local dups, single = find(tables, "s2", "dups"), find(tables, "s2", "single")
    assert.are.equal(2, dups.rows)
    assert.are_not.equal(single.digest, dups.digest)
    assert.are.equal(dump.digest_add(single.digest, single.digest), dups.digest)
  end)

  it("ignores COPY lines inside a function body and inside --inserts data", function()
    assert.is_truthy(text:find("\nCOPY public.invoices (id) FROM stdin;\n$", 1, true))
    local copy_lines = 0
    for _ in text:gmatch("\nCOPY ") do copy_lines = copy_lines + 1 end
    assert.are.equal(#TABLES + 1, copy_lines) -- the function body's line is not a section
    local inserts, inserts_text = run_pg_dump(db, { "--inserts", "-t", "s2.tricky", "-t", "s2.dups" })
    assert.is_truthy(inserts_text:find("\nCOPY public.fake (a) FROM stdin;\n", 1, true))
    assert.are.same({}, inserts)
  end)

  it("reads data-only dumps with --disable-triggers the same way", function()
    local data_only = run_pg_dump(db, { "--data-only", "--disable-triggers" })
    assert.are.same(tables, data_only)
  end)

  it("digests --load-via-partition-root sections, which add up to the partitioned table", function()
    local via_root = run_pg_dump(db, { "--load-via-partition-root", "-t", "s2.p*" })
    assert.are.equal(2, #via_root)
    assert.are.same({ "s2", "parted", "s2", "parted" },
      { via_root[1].schema, via_root[1].name, via_root[2].schema, via_root[2].name })
    local _, copied = psql_copy(db, "COPY (SELECT k, v FROM s2.parted) TO STDOUT", dir)
    assert.are.equal(lua_digest(split_rows(copied)), dump.digest_add(via_root[1].digest, via_root[2].digest))
    assert.are.equal(dump.digest_add(find(tables, "s2", "p1").digest, find(tables, "s2", "p2").digest),
                     dump.digest_add(via_root[1].digest, via_root[2].digest))
  end)

  it("finds the same sections wherever the 128 KiB chunk boundaries fall", function()
    local small = select(2, run_pg_dump(db, { "-t", '"My Schema".*', "-t", "public.a?b", "-t", "s2.bin",
                                               "-t", "s2.nocols", "-t", "s2.dups", "-t", "s2.empty" }))
    local reference = digests_of(small)
    assert.are.equal(6, #reference)
    -- Put the boundary at every offset from the first TOC data comment to the end, by
    -- prepending a padding line (a kept comment line or a skipped one, alternately).
    local first = assert(small:find("\n%-%- Data for Name:")) - 40
    local chunk = 128 * 1024
    for offset = first, #small do
      local pad = chunk - offset
      local line = (offset % 2 == 0 and "--" or "XX") .. string.rep("p", pad - 3) .. "\n"
      local got = digests_of(line .. small)
      if #got ~= #reference then
        assert.are.same(reference, got, "boundary at dump offset " .. offset)
      end
      for i = 1, #got do
        if got[i].digest ~= reference[i].digest or got[i].rows ~= reference[i].rows
           or got[i].name ~= reference[i].name then
          assert.are.same(reference[i], got[i], "boundary at dump offset " .. offset)
        end
      end
    end
  end)

  it("runs in the backup pipeline, and a restore checked with row_digest matches the manifest", function()
    local p <close> = assert(proc.spawn{ argv = { "pg_dump", "-d", db, "-T", "s2.big" } })
    local r = stream.run{ p:source(), hash.sha256{ name = "raw" }, dump.table_digests{ name = "manifest" },
                          gzip.compress{ level = 1 }, stream.to_file(dir .. "/db.sql.gz") }
    local manifest = r.manifest
    assert.are.equal(#TABLES - 1, #manifest)
    assert.are.equal(util.sh("gunzip -c " .. dir .. "/db.sql.gz | sha256sum"):match("^%x+"), r.raw)

    util.psql("create database " .. restored)
    local _, rc = util.sh("gunzip -c " .. dir .. "/db.sql.gz | psql -X -q -v ON_ERROR_STOP=1 -d " .. restored .. " >/dev/null 2>&1")
    assert.are.equal(0, rc)
    local conn <close> = assert(pg.connect{ dbname = restored })
    assert(conn:exec("SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3"))
    local function check(t)
      local cols = {}
      for i, c in ipairs(t.columns) do cols[i] = conn:escape_identifier(c) end
      local sql = "COPY " .. conn:escape_identifier(t.schema) .. "." .. conn:escape_identifier(t.name)
        .. (#cols > 0 and " (" .. table.concat(cols, ", ") .. ")" or "") .. " TO STDOUT"
      return stream.run{ assert(conn:copy_out(sql)), dump.row_digest() }.rows
    end
    for _, t in ipairs(manifest) do
      assert.are.same({ rows = t.rows, digest = t.digest }, check(t), t.schema .. "." .. t.name)
    end
    assert(conn:exec("UPDATE public.invoices SET amount = amount + 0.01 WHERE id = 7"))
    local invoices = find(manifest, "public", "invoices")
    local after = check(invoices)
    assert.are.equal(invoices.rows, after.rows)
    assert.are_not.equal(invoices.digest, after.digest)
  end)

  it("fails on a dump truncated inside COPY data, naming the table, and leaves no file", function()
    local big_copy = assert(text:find("\nCOPY s2.big ", 1, true))
    for _, cut in ipairs{ 1000, 50000, 1500000 } do
      local ok, err = pcall(digests_of, text:sub(1, big_copy + cut))
      assert.is_false(ok)
      assert.matches("stream.run: tables: dump ends inside the COPY data of s2.big %(truncated dump%?%)", err)
    end
    -- a header cut before its newline, and one cut in the middle
    local header_end = text:find("\n", big_copy + 1, true)
    local ok, err = pcall(digests_of, text:sub(1, header_end - 1))
    assert.is_false(ok)
    assert.matches("dump ends inside the COPY data of s2.big", err)
    ok, err = pcall(digests_of, text:sub(1, big_copy + 15))
    assert.is_false(ok)
    assert.matches("not a COPY header as pg_dump writes it: COPY s2.big %(id", err)

    local out = util.scratch("dump-trunc")
    local p <close> = assert(proc.spawn{ argv = { "sh", "-c", "pg_dump -d " .. db .. " | head -c 3000000" } })
    ok, err = pcall(stream.run, { p:source(), dump.table_digests(), gzip.compress(), stream.to_file(out .. "/db.sql.gz") })
    assert.is_false(ok)
    assert.matches("dump ends inside the COPY data of s2.big", err)
    assert.are.same({}, util.listdir(out))
    p:close()
    assert.are.same({}, util.zombies())
  end)
end)

describe("dump.table_digests on crafted input", function()
  local HEADER = "--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: postgres\n--\n\n"

  it("accepts pg_dump's header shapes: quoted names, no columns, names spanning lines", function()
    local t = digests_of(HEADER .. 'COPY "S ""x"""."T" ("a b", c$, "\n") FROM stdin;\nrow\n\\.\n'
      .. HEADER .. "COPY public.t  FROM stdin;\n\n\\.\n"
      .. HEADER .. 'COPY public."a\n\nb" (Mixed, "x""\n""y") FROM stdin;\n\\.\n')
    assert.are.same({
      { schema = 'S "x"', name = "T", columns = { "a b", "c$", "\n" }, rows = 1, digest = lua_digest{ "row" } },
      { schema = "public", name = "t", columns = {}, rows = 1, digest = lua_digest{ "" } },
      { schema = "public", name = "a\n\nb", columns = { "mixed", 'x"\n"y' }, rows = 0, digest = ZERO },
    }, t)
  end)

  it("fails on a COPY header it cannot parse right after a TABLE DATA comment", function()
    for _, bad in ipairs{
      "COPY public.t (a, FROM stdin;",
      "COPY public.t (a) FROM stdout;",
      "COPY t (a) FROM stdin;",
      'COPY public."t (a) FROM stdin;',
      'COPY public."" (a) FROM stdin;',
      "COPY public.t (a) WITH OIDS FROM stdin;",
    } do
      local ok, err = pcall(digests_of, HEADER .. bad .. "\n1\n\\.\n")
      assert.is_false(ok, bad)
      local want = "stream.run: tables: line 5: not a COPY header as pg_dump writes it: " .. bad
      assert.is_truthy(tostring(err):find(want, 1, true), tostring(err))
      assert.are.equal("corrupt", err.kind)
    end
  end)

  it("accepts a COPY header only as the first statement of a TABLE DATA entry", function()
    local copy = "COPY public.t (a) FROM stdin;\n1\n\\.\n"
    assert.are.equal(1, #digests_of(HEADER .. copy))
    assert.are.equal(1, #digests_of(HEADER .. "ALTER TABLE public.t DISABLE TRIGGER ALL;\n\n" .. copy))
    -- quoted names and roles in the preamble may span lines and contain quotes
    local preamble = "SET SESSION AUTHORIZATION 'we\"ird\nCOPY x.y (z) FROM stdin;\n-- Name: r''ole';\n\n"
      .. 'ALTER TABLE public."t\nINSERT ""x" DISABLE TRIGGER ALL;\n\n'
    assert.are.same({ "t" }, { digests_of(HEADER .. preamble .. copy)[1].name, digests_of(HEADER .. preamble .. copy)[2] })
    assert.are.same({}, digests_of(copy))
    assert.are.same({}, digests_of(HEADER .. "INSERT INTO public.t VALUES (1);\n" .. copy))
    assert.are.same({}, digests_of(HEADER:gsub("TABLE DATA", "SEQUENCE SET") .. copy))
    local twice = digests_of(HEADER .. "COPY public.t (a) FROM stdin;\n\\.\n" .. copy)
    assert.are.same({ 0 }, { twice[1].rows, twice[2] }) -- one section: the second COPY has no TOC comment
    assert.are.same({}, digests_of(HEADER .. "--\n-- Name: f; Type: FUNCTION; Schema: public; Owner: x\n--\n" .. copy))
  end)

  it("does not keep a long line and skips lines longer than 256 KiB", function()
    local long = "--" .. string.rep("x", 600 * 1024) .. "\n"
    local t = digests_of(long .. HEADER .. "COPY public.t (a) FROM stdin;\n1\n\\.\n" .. long)
    assert.are.equal(1, #t)
    local ok, err = pcall(digests_of, HEADER .. "COPY public.t (" .. string.rep("a", 300 * 1024) .. ") FROM stdin;\n")
    assert.is_false(ok)
    assert.matches("stream.run: tables: line 5: COPY header longer than 262144 bytes", err)
  end)

  it("puts its result under the stage's name", function()
    local r = stream.run{ stream.from_string(""), dump.table_digests{ name = "manifest" }, stream.to_null() }
    assert.are.same({}, r.manifest)
    assert.is_nil(r.tables)
  end)
end)

describe("dump.row_digest", function()
  it("digests rows however they are split across chunks", function()
    local rows = {}
    for i = 1, 20000 do rows[i] = string.rep("r", i % 97) .. "\t" .. i end
    rows[#rows + 1] = ""
    local data = table.concat(rows, "\n") .. "\n"
    assert.is_true(#data > 8 * 128 * 1024)
    local r = stream.run{ stream.from_string(data), dump.row_digest() }
    assert.are.same({ rows = #rows, digest = lua_digest(rows) }, r.rows)
    local g = stream.run{ stream.from_string(gzip.compress_string(data)), gzip.decompress(), dump.row_digest{ name = "check" } }
    assert.are.same(r.rows, g.check)
  end)

  it("gives zero rows and the zero digest for no input, and counts empty rows", function()
    assert.are.same({ rows = 0, digest = ZERO }, stream.run{ stream.from_string(""), dump.row_digest() }.rows)
    assert.are.same({ rows = 2, digest = lua_digest{ "", "" } }, stream.run{ stream.from_string("\n\n"), dump.row_digest() }.rows)
  end)

  it("fails when the last row has no newline", function()
    local ok, err = pcall(stream.run, { stream.from_string("a\nb\nc"), dump.row_digest() })
    assert.is_false(ok)
    assert.matches("stream.run: rows: input ends inside row 3 %(no newline after it%)", err)
  end)
end)

describe("dump.digest_rows and dump.digest_add", function()
  it("compute the manifest digest: sums of SHA-256 modulo 2^256", function()
    assert.are.equal(ZERO, dump.digest_rows{})
    assert.are.equal(util.sh("printf abc | sha256sum"):match("^%x+"), dump.digest_rows{ "abc" })
    assert.are.equal(lua_digest{ "a", "b", "a" }, dump.digest_rows{ "a", "b", "a" })
    assert.are.equal(dump.digest_rows{ "b", "a", "a" }, dump.digest_rows{ "a", "b", "a" })
    assert.are.equal(dump.digest_rows{ "a", "b" }, dump.digest_add(dump.digest_rows{ "a" }, dump.digest_rows{ "b" }))
    -- carries cross every 64-bit limb and wrap at 2^256
    assert.are.equal(ZERO, dump.digest_add(string.rep("f", 64), ZERO:sub(2) .. "1"))
    assert.are.equal(string.rep("0", 47) .. "1" .. string.rep("0", 16),
                     dump.digest_add(string.rep("0", 48) .. string.rep("f", 16), ZERO:sub(2) .. "1"))
    assert.are.equal("1" .. string.rep("0", 63), dump.digest_add("0" .. string.rep("F", 63), ZERO:sub(2) .. "1"))
    assert.are.equal(ZERO, dump.digest_add())
  end)

  it("refuse what is not a list of strings or a digest", function()
    assert.has_error(function() dump.digest_rows{ "a", 1 } end, "dump.digest_rows: row 2 is a number, not a string")
    assert.has_error(function() dump.digest_rows("a") end)
    assert.has_error(function() dump.digest_add("xyz") end)
    assert.has_error(function() dump.digest_add(string.rep("g", 64)) end)
  end)
end)

describe("bkr.dump stages", function()
  it("leak no descriptors or children over many runs, failed ones included", function()
    local before = util.fd_count()
    for _ = 1, 30 do
      local p <close> = assert(proc.spawn{ argv = { "pg_dump", "-d", "postgres" } })
      stream.run{ p:source(), dump.table_digests(), stream.to_null() }
      pcall(stream.run, { stream.from_string("--\n-- Data for Name: t; Type: TABLE DATA; Schema: s; Owner: o\nCOPY s.t (a) FROM stdin;\n1\n"),
                          dump.table_digests(), stream.to_null() })
      pcall(stream.run, { stream.from_string("x"), dump.row_digest() })
      dump.table_digests():close()
      local unused = dump.row_digest()
      unused:close()
      unused:close()
    end
    collectgarbage(); collectgarbage()
    assert.are.equal(before, util.fd_count())
    assert.are.same({}, util.zombies())
  end)
end)
