-- dump.refuse_meta_commands: the stage between a plain dump and psql. Forged dumps with psql
-- meta-commands hidden in every place psql's lexer would find them must fail the run (kind
-- corrupt) before psql could read the line; real pg_dump output, nasty content included, must
-- pass unchanged. psql itself is the independent check that the nasty dump is what we think.
local dump = require "bkr.dump"
local stream = require "bkr.stream"
local proc = require "bkr.proc"
local util = require "support.util"

local CHUNK = 128 * 1024

local function run(text)
  return stream.run{ stream.from_string(text), dump.refuse_meta_commands(), stream.to_string() }
end

-- The stage's result and the bytes it passed on; or nil and the error.
local function guard(text)
  local ok, r = pcall(run, text)
  if not ok then return nil, r end
  return r.psql_guard, r.string
end

-- Refused, with this reason (a plain substring) on this line.
local function assert_refused(text, line, reason)
  local result, err = guard(text)
  assert.is_nil(result, "not refused: " .. text)
  assert.are.equal("corrupt", err.kind, tostring(err))
  local want = "stream.run: psql_guard: line " .. line .. ": " .. reason
  assert.is_truthy(tostring(err):find(want, 1, true), "got: " .. tostring(err) .. "\nwanted: " .. want)
end

-- The same text with the 128 KiB chunk boundary at each of its offsets, by a padding comment line.
local function at_every_boundary(text, fn)
  for offset = 0, #text do
    local pad = "--" .. string.rep("p", CHUNK - offset - 3) .. "\n"
    fn(pad .. text, offset)
  end
end

local function assert_refused_anywhere(text, line, reason)
  assert_refused(text, line, reason)
  at_every_boundary(text, function(padded, offset)
    local result, err = guard(padded)
    if result or not tostring(err):find("line " .. (line + 1) .. ": " .. reason, 1, true) then
      error("boundary at offset " .. offset .. ": " .. tostring(err or "not refused"))
    end
  end)
end

local function assert_passes(text, meta, copies)
  local result, out = guard(text)
  assert.is_not_nil(result, tostring(out))
  assert.are.equal(text, out)
  if meta then assert.are.equal(meta, result.meta_commands) end
  if copies then assert.are.equal(copies, result.copy_sections) end
  return result
end

local NEVER = "a psql meta-command pg_dump never writes: "

describe("dump.refuse_meta_commands on forged dumps", function()
  it("refuses a shell escape at a line's start, after a statement, a string or a comment", function()
    assert_refused_anywhere("SET x = 1;\n\\! touch /tmp/pwned\n", 2, NEVER .. "\\!")
    assert_refused_anywhere("select 1; \\! id\n", 1, NEVER .. "\\!")
    assert_refused_anywhere("select 'it''s' \\! id\n", 1, NEVER .. "\\!")
    assert_refused_anywhere("select \"a\\\" \\! id\n", 1, NEVER .. "\\!")        -- "a\" is a whole identifier
    assert_refused_anywhere("select 1 /* a /* nested */ b */\\! id\n", 1, NEVER .. "\\!")
    assert_refused_anywhere("select $f$ ' $g$ $f$ \\! id\n", 1, NEVER .. "\\!")
    assert_refused_anywhere("select E'a\\'b' \\! id\n", 1, NEVER .. "\\!")      -- \' does not end E''
    assert_refused_anywhere("select e'\\\\' \\! id\n", 1, NEVER .. "\\!")       -- \\ then the end
    assert_refused_anywhere("select U&'\\' \\! id\n", 1, NEVER .. "\\!")        -- U&'' has no \ escapes
    assert_refused_anywhere("select $e'\\'' \\! id\n", 1, NEVER .. "\\!")       -- "$" then E'\''
    assert_refused_anywhere("select a$b$ from t; \\! id -- $b$\n", 1, NEVER .. "\\!") -- a$b$ is a name
    assert_refused_anywhere("select $1 \\! id\n", 1, NEVER .. "\\!")
    assert_refused_anywhere("select 1 -- c\n\\! id\n", 2, NEVER .. "\\!")
  end)

  it("refuses a shell escape right after COPY data ends, never inside it", function()
    local copy = "COPY public.t (a) FROM stdin;\n\\! in data\n\\\\.\n\\.x\n\\.\n"
    assert_refused_anywhere(copy .. "\\! id\n", 6, NEVER .. "\\!")
    assert_refused_anywhere("COPY t FROM stdout;\n\\! data\n\\.\r\n\\! id\n", 4, NEVER .. "\\!")
    -- no data follows these: psql reads the next lines as SQL
    assert_refused("COPY t TO stdout;\n\\! id\n", 2, NEVER .. "\\!")
    assert_refused("COPY t (stdin) TO stdout;\n\\! id\n", 2, NEVER .. "\\!")
    assert_refused("select 'COPY t FROM stdin;\n';\n\\! id\n", 3, NEVER .. "\\!")
    assert_refused("COPY t FROM stdin; select 1;\n1\n\\.\n", 1, "text after COPY ... FROM stdin; on its line")
    -- a COPY sent together with the statement before it (psql's BEGIN ... END heuristic)
    assert_refused("create function begin() returns int language sql return 1; copy t from stdin;\n'\n\\.\n\\! id\n';\n",
      1, "COPY after a \";\" psql does not split at")
  end)

  it("refuses every other meta-command, by its whole word, printably", function()
    for _, word in ipairs{ "o /tmp/x", "i /etc/passwd", "copy t from '/etc/passwd'", "set ON_ERROR_STOP 0",
                           "gexec", "g", "w /tmp/x", "setenv X y", "lo_import /etc/passwd", "ir x", ";", ":",
                           "restricted x", "connection x", "cd /", "q", "." } do
      local shown = word:match("^[^ ]*")
      assert_refused("select 1;\n\\" .. word .. "\n", 2, NEVER .. "\\" .. shown)
    end
    assert_refused("\\\a\27[2J\n", 1, NEVER .. "\\\\x07\\x1b[2J")
    assert_refused("\\" .. string.rep("x", 100), 1, NEVER .. "\\" .. string.rep("x", 11)) -- refused by its 11th byte
    assert_refused("\\! id", 1, NEVER .. "\\!")            -- a last line without its newline
    assert_refused("\\", 1, NEVER .. "\\")
  end)

  it("allows \\restrict, \\unrestrict and \\connect only as pg_dump writes them", function()
    assert_passes("\\restrict aB3\nselect 1;\n\\unrestrict aB3\n", 2)
    assert_passes("\\connect mydb\n\\connect \"My.Db\"\n\\c x\n", 3)
    assert_passes("\\encoding SQL_ASCII\n\\connect -reuse-previous=on \"dbname='we\\'ird \\\\ \"\"db\"\"'\"\n", 2)
    assert_refused("\\encoding SJIS\n", 1, "arguments pg_dump never writes after the psql meta-command: \\encoding")
    local args = "arguments pg_dump never writes after the psql meta-command: "
    assert_refused("\\restrict abc `touch /tmp/pwned`\n", 1, args .. "\\restrict")
    assert_refused("\\restrict abc \\! id\n", 1, args .. "\\restrict")
    assert_refused("\\restrict\n", 1, args .. "\\restrict")
    assert_refused("\\unrestrict :KEY\n", 1, args .. "\\unrestrict")
    assert_refused("\\connect `id`\n", 1, args .. "\\connect")
    assert_refused("\\connect :DBNAME\n", 1, args .. "\\connect")
    assert_refused("\\connect \"host=evil.example\"\n", 1, args .. "\\connect")
    assert_refused("\\connect -reuse-previous=on \"dbname=x host=evil.example\"\n", 1, args .. "\\connect")
    assert_refused("\\connect \"db\"x\n", 1, args .. "\\connect")
    assert_refused("\\c db user\n", 1, args .. "\\c")
    assert_refused("\\restrict abc\r\n", 1, args .. "\\restrict")
    assert_refused("select 1; \\restrict abc\n", 1, "a psql meta-command where pg_dump never writes one (not at a line's start): \\restrict")
    assert_refused(" \\connect db\n", 1, "a psql meta-command where pg_dump never writes one (not at a line's start): \\connect")
  end)

  it("refuses what psql may read otherwise than this lexer: session settings, versions, variables", function()
    -- standard_conforming_strings off (any statement can set it) makes \' an escaped quote
    assert_refused("SET standard_conforming_strings = off;\nselect 'a\\'';\n\\! id\n';\n", 2,
      "a quoted string with an odd run of backslashes before a quote")
    assert_refused("select 'C:\\';\n", 1, "a quoted string with an odd run of backslashes before a quote")
    -- psql up to 14 reads 1e'x' as 1 then E'x', 15 and later as junk then 'x'
    assert_refused("select 1e'\\'' \\! id';\n", 1, "a number run into a name")
    assert_refused("select .5e'x';\n", 1, "a number run into a name")
    -- psql expands :NAME and reads its value as input
    assert_refused("select :DBNAME;\n", 1, "a psql variable reference")
    -- psql ends a -- comment at a carriage return and reads the rest of the line
    assert_refused("select 1; -- c\r\\! id\n", 1, "a carriage return outside quoted text")
    assert_refused("select 1;\0 \\! id\n", 1, "a NUL byte")
    assert_refused("select $" .. string.rep("t", 65) .. "$ x", 1, "a dollar-quote tag longer than pg_dump writes")
  end)
end)

describe("dump.refuse_meta_commands on legitimate text", function()
  it("passes backslashes inside strings, names, comments, dollar quotes and COPY data, unchanged", function()
    assert_passes("select 'a\\b', '\\\\', 'x''\\\\', E'\\\\! x\\'', $$ \\! $$, $a$ $b$ \\! $a$, \"\\!\", U&'\\0041';\n"
      .. "-- \\! a comment\n/* \\! /* nested */ \\! */ select x::text, a[1:n], $1, 1.5e-3, 2.e5, b'01', X'ff';\n"
      .. "COPY public.t (a) FROM stdin;\n\\\\! x\n\\N\n\\.\\.\n\\.\nselect 'done';\n", 0, 1)
    assert_passes("", 0, 0)
    assert_passes("COPY t FROM stdin;", 0, 0)
  end)

  it("finds the same COPY blocks wherever the 128 KiB chunk boundaries fall", function()
    local text = "select E'\\'', $q$ ' $q$;\nCOPY s.\"t;\" (a) FROM stdin;\n\\! x\n\\.\n\\restrict k\n"
    at_every_boundary(text, function(padded, offset)
      local result, out = guard(padded)
      if not result or result.copy_sections ~= 1 or result.meta_commands ~= 1 or out ~= padded then
        error("boundary at offset " .. offset .. ": " .. (result and "wrong counts or bytes" or tostring(out)))
      end
    end)
  end)
end)

describe("dump.refuse_meta_commands on real pg_dump output", function()
  local db = string.format("bkr_guard_%d_%d", os.time(), math.random(1e6))
  local weird = db .. " we'ird \"db\" \\"
  local restored = db .. "_restored"

  local SETUP = [[
create schema "S;\ch""e
ma";
create table "S;\ch""e
ma"."t\! ""x""" ("c\o
l" text, "d;" text default 'a\b' check ("d;" ~ '^[\w\\]*$'), e text default E'tab\there');
insert into "S;\ch""e
ma"."t\! ""x""" values (E'\\! id\n\\.\nline\r\n', E'a\\\\b'), (E'\\.', ''), (null, E'\\');
comment on table "S;\ch""e
ma"."t\! ""x""" is 'it''s \! not a command /* -- $x$';
create table public.copy (stdin int, "from" text);
insert into public.copy values (1, E'COPY x FROM stdin;\n\\.');
create function public.f(a text) returns text language plpgsql as $body$
declare s text := E'\\! inside \'E\' string';
begin
  -- \! in a comment inside a body
  return $x$ \! $y$ ' " $x$ || s || '\' || a || $$\o /tmp/x$$;
end
$body$;
create function public.g(a int) returns int language sql
begin atomic
  select a + 1;
  select (a::text || '\!')::int;
end;
create view public.v as select '\!'::text as bang, E'\\x'::bytea as b, (array[1,2,3])[1:2] as sl;
create function public.p$q(x int) returns int language sql as 'select x /* \! */';
]]

  local function pg_dump(database, extra)
    local argv = { "pg_dump", "-d", database }
    for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
    local p <close> = assert(proc.spawn{ argv = argv })
    local r = stream.run{ p:source(), dump.table_digests(), dump.refuse_meta_commands{ name = "guard" },
                          stream.to_string() }
    assert(p:wait())
    return r
  end

  lazy_setup(function()
    util.psql("create database " .. db)
    util.psql(SETUP, db)
    util.psql('create database "' .. weird:gsub('"', '""') .. '"')
  end)

  lazy_teardown(function()
    util.psql("drop database if exists " .. db)
    util.psql("drop database if exists " .. restored)
    util.psql('drop database if exists "' .. weird:gsub('"', '""') .. '"')
  end)

  it("passes a dump of names, strings, bodies and COPY data full of backslashes, and psql restores it", function()
    local r = pg_dump(db)
    local text = r.string
    assert.is_truthy(text:find("\\restrict ", 1, true), "this pg_dump writes \\restrict")
    assert.are.equal(2, r.guard.meta_commands)
    assert.are.equal(#r.tables, r.guard.copy_sections)
    assert.are.equal(2, #r.tables)
    -- psql agrees: the same bytes restore (so they are what the lexer took them for)
    util.psql("create database " .. restored)
    local path = util.scratch("guard") .. "/dump.sql"
    util.write(path, text)
    local out, rc = util.sh("psql -X -q -v ON_ERROR_STOP=1 --single-transaction -d " .. restored
      .. " -f " .. util.quote(path) .. " 2>&1")
    assert.are.equal(0, rc, out)
    assert.are.equal("3", util.psql([[select count(*) from "S;\ch""e
ma"."t\! ""x"""]], restored))
    assert.are.equal(" \\! $y$ ' \" \\! inside 'E' string\\1\\o /tmp/x", util.psql("select public.f('1')", restored))
  end)

  it("passes --inserts, --create, --clean and data-only dumps", function()
    for _, extra in ipairs{ { "--inserts", "-T", '"S;\\ch""e\nma".*' }, { "--clean", "--if-exists" },
                            { "--data-only" }, { "--column-inserts", "-t", "public.copy" } } do
      assert.is_not_nil(pg_dump(db, extra).guard)
    end
    -- The known false refusal: --inserts writes the value \ as '\', which psql would read as an
    -- unfinished string with standard_conforming_strings off (bkr's backups use COPY).
    local ok, err = pcall(pg_dump, db, { "--inserts" })
    assert.is_false(ok)
    assert.matches("odd run of backslashes before a quote", tostring(err))
    local created = pg_dump(weird, { "--create" })
    -- \restrict, \unrestrict, \encoding SQL_ASCII, \connect, \restrict, \unrestrict
    assert.are.equal(6, created.guard.meta_commands)
    assert.is_truthy(created.string:find("\n\\connect -reuse-previous=on \"dbname='", 1, true))
  end)

  it("refuses the same dump with one forged line", function()
    local text = pg_dump(db).string
    local forged = text:gsub("\\restrict [%w]+\n", "", 1):gsub("\n\\unrestrict [%w]+\n", "\n", 1)
      :gsub("\nSET client_encoding", "\n\\! touch /tmp/pwned\nSET client_encoding", 1)
    local line = select(2, forged:sub(1, forged:find("\\! touch", 1, true)):gsub("\n", "")) + 1
    assert_refused(forged, line, NEVER .. "\\!")
  end)
end)

-- dump.drop_restrict_lines: pg_dump's own \restrict (among the comments before the first
-- statement) and \unrestrict (the last line) out, everything else unchanged, whatever the
-- chunking; bkr's own restricted psql then refuses any other backslash command itself.
describe("dump.drop_restrict_lines", function()
  local function drop(text)
    local r = stream.run{ stream.from_string(text), dump.drop_restrict_lines(), stream.to_string() }
    return r.string, r.restrict_lines.dropped
  end

  local HEAD = "--\n-- PostgreSQL database dump\n--\n\n\\restrict Abc123xyz\n\n-- Dumped by pg_dump\n\n"
  local BODY = "SET statement_timeout = 0;\nCOPY public.t (x) FROM stdin;\n\\\\restrict in data\n1\n\\.\n"
  local TAIL = "--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict Abc123xyz\n\n"

  it("takes out exactly pg_dump's two lines, with the 128 KiB chunk boundary at every offset", function()
    local text = HEAD .. BODY .. TAIL
    local want = (HEAD:gsub("\\restrict Abc123xyz\n", "")) .. BODY .. (TAIL:gsub("\\unrestrict Abc123xyz\n\n$", ""))
    local out, dropped = drop(text)
    assert.are.equal(want, out)
    assert.are.equal(2, dropped)
    at_every_boundary(text, function(padded, offset)
      local pad = padded:sub(1, #padded - #text)
      out, dropped = drop(padded)
      assert.are.equal(pad .. want, out, "offset " .. offset)
      assert.are.equal(2, dropped, "offset " .. offset)
    end)
  end)

  it("leaves every other backslash line for psql to refuse: a \\restrict after the first statement, an "
    .. "\\unrestrict with more after it, a \\! anywhere, a key line with a carriage return", function()
    for _, text in ipairs({
      "SET x = 1;\n\\restrict Abc\nselect 1;\n",
      "select 1;\n\\unrestrict Abc\nselect 2;\n",
      "select 1;\n\\unrestrict Abc\n\n\\! id\n",
      "\\! id\nselect 1;\n",
      "\\restrict Abc\r\nselect 1;\n",
      "\\restrict Abc;id\nselect 1;\n",
      "select 1;\n\\" .. string.rep("x", 300) .. "\n",
    }) do
      local out, dropped = drop(text)
      assert.are.equal(text, out)
      assert.are.equal(0, dropped)
    end
  end)

  it("drops a last \\unrestrict line without a newline, and keeps a second one", function()
    local out, dropped = drop("select 1;\n\\unrestrict K1\n\\unrestrict K2")
    assert.are.equal("select 1;\n\\unrestrict K1\n", out)
    assert.are.equal(1, dropped)
  end)

  it("passes a real dump through bkr's restricted psql: a forged \\! is refused by psql itself", function()
    local psql = util.sh("ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1"):gsub("%s+$", "") .. "/psql"
    local function through_psql(text)
      local p = assert(proc.spawn{ argv = { psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
        "-c", "\\restrict bkrOwnKey42", "-f", "-" }, stdin = "pipe", stdout = "null", stderr = "capture" })
      local ok, err = pcall(stream.run, { stream.from_string(text), dump.drop_restrict_lines(), p:sink() })
      local said = p:stderr()
      p:close()
      return ok, said .. tostring(err)
    end
    local ok, said = through_psql(HEAD .. "select 1;\n" .. TAIL)
    assert.is_true(ok, said)
    ok, said = through_psql(HEAD .. "select 1;\n\\! echo ran\n" .. TAIL)
    assert.is_false(ok)
    assert.matches("backslash commands are restricted", said, 1, true)
  end)
end)
