-- pg_spec.lua - bkr.pg: connections, queries and COPY stages against a real PostgreSQL.
-- Needs the throwaway cluster of scripts/run-tests.sh (PGHOST, PGPORT, PGUSER, PGDATABASE).
-- What bkr.pg wrote or read is checked with psql, gzip and wc, not with bkr.pg itself.

local pg = require "bkr.pg"
local stream = require "bkr.stream"
local gzip = require "bkr.gzip"
local util = require "support.util"

local q, psql = util.quote, util.psql
local BKR = util.bkr_bin()
local PGHOST, PGPORT = os.getenv("PGHOST"), os.getenv("PGPORT")

local function connect()
  return assert(pg.connect())
end

-- psql's COPY output of a query (the independent reference for copy_out).
local function psql_copy(sql)
  return (util.sh("psql -X -q -d postgres -c " .. q("\\copy (" .. sql .. ") to stdout")))
end

-- Run a Lua script in a child bkr in the background; returns the files that will hold its
-- output and its exit code. The child writes its pid to dir/pid first.
local function spawn_script(dir, code)
  local script = dir .. "/child.lua"
  util.write(script, string.format([[
    local f = assert(io.open(%q, "w"))
    f:write(io.open("/proc/self/stat"):read("l"):match("^%%d+")); f:close()
  ]], dir .. "/pid") .. code)
  local out, rcfile = dir .. "/out", dir .. "/rc"
  os.execute(string.format("(%s run %s >%s 2>&1; echo $? >%s) &", q(BKR), q(script), q(out), q(rcfile)))
  return out, rcfile
end

local function wait_file(path, seconds)
  for _ = 1, seconds * 20 do
    local f = io.open(path)
    if f then
      local s = f:read("a")
      f:close()
      if s ~= "" then return s end
    end
    os.execute("sleep 0.05")
  end
  return nil
end

-- Backends (other than psql's own) running a statement that contains `text`.
local function backends_running(text)
  return tonumber(psql("select count(*) from pg_stat_activity where pid <> pg_backend_pid()"
    .. " and query like " .. "'%" .. text .. "%'"))
end

local function eventually_zero(f)
  for _ = 1, 100 do
    if f() == 0 then return true end
    os.execute("sleep 0.05")
  end
  return false
end

describe("pg.connect", function()
  it("connects with the PG* environment and names itself bkr", function()
    local conn <close> = connect()
    local rows = conn:query("select current_database() as db, current_user as u,"
      .. " current_setting('application_name') as app")
    assert.are.same({ db = "postgres", u = "postgres", app = "bkr" }, rows[1])
  end)

  it("connects with a keyword=value string and with a postgresql:// URI", function()
    local conn <close> = assert(pg.connect(string.format(
      "host=%s port=%s dbname=template1 user=postgres application_name=spec_kv", PGHOST, PGPORT)))
    assert.are.same({ db = "template1", app = "spec_kv" },
      conn:query("select current_database() as db, current_setting('application_name') as app")[1])
    local uri <close> = assert(pg.connect(string.format("postgresql://postgres@/template1?host=%s&port=%s",
      PGHOST:gsub("/", "%%2F"), PGPORT)))
    assert.are.equal("template1", uri:query("select current_database() as db")[1].db)
  end)

  it("connects with a table of libpq keywords, numbers allowed", function()
    local conn <close> = assert(pg.connect{ host = PGHOST, port = tonumber(PGPORT), dbname = "template1",
      user = "postgres", application_name = "spec_table" })
    assert.are.same({ db = "template1", app = "spec_table" },
      conn:query("select current_database() as db, current_setting('application_name') as app")[1])
  end)

  it("reads a table's dbname as a database's name, never as a conninfo", function()
    -- databases named like conninfo strings: libpq would connect to x_r, or to /nonexistent
    for _, name in ipairs({ "dbname=x_r", "host=/nonexistent", "postgresql://h/x" }) do
      psql('create database "' .. name .. '"')
      local conn <close> = assert(pg.connect{ dbname = name })
      assert.are.equal(name, conn:query("select current_database() as db")[1].db)
      conn:close()
      psql('drop database "' .. name .. '"')
    end
    local none, msg = pg.connect{ dbname = "dbname=template1" }
    assert.is_nil(none)
    assert.is_truthy(msg:find('database "dbname=template1" does not exist', 1, true), msg)
  end)

  it("returns nil and a message with libpq's lines for an unreachable server, a bad conninfo, a wrong database",
    function()
    local cases = {
      { "host=/nonexistent-dir", "No such file or directory" },
      { "host=" .. PGHOST .. " frobnicate=1", 'invalid connection option "frobnicate"' },
      { { dbname = "no_such_database_xyz" }, 'database "no_such_database_xyz" does not exist' },
      { "postgresql://[::1/x", "IPv6" },
    }
    for _, case in ipairs(cases) do
      local conn, msg = pg.connect(case[1])
      assert.is_nil(conn)
      assert.is_truthy(msg:find("^pg%.connect: "), msg)
      assert.is_truthy(msg:find(case[2], 1, true), msg)
      -- each further line of libpq's is a line of its own, indented; none is empty or blank-ended
      for line in msg:gmatch("\n([^\n]*)") do assert.matches("^  %S", line) end
      assert.is_falsy(msg:find("%s\n") or msg:find("%s$"), msg)
    end
    local _, msg = pg.connect("host=/nonexistent-dir")
    assert.matches(": No such file or directory\n  Is the server running locally and accepting connections on that "
      .. "socket?", msg, 1, true)
    -- a server error's DETAIL and CONTEXT go on lines of their own, as psql shows them
    local conn = assert(pg.connect())
    local ok, err = conn:exec("do $$ begin raise exception 'boom' using detail = 'first' || chr(10) || 'second'; end $$")
    assert.is_nil(ok)
    assert.are.equal("pg.exec: ERROR:  boom\n  DETAIL:  first\n  second", err)
    conn:close()
  end)

  it("never puts the password in an error message", function()
    local secret = "Sekr1tPw"
    local cases = {
      "host=/nonexistent-dir password=" .. secret,
      "host=/nonexistent-dir password='" .. secret .. " with spaces'",
      "host=/nonexistent-dir password=" .. secret .. " Sekr1tTail",  -- a space-broken password
      "postgresql://postgres:" .. secret .. "@[::1/x",                 -- libpq quotes the whole URI
      "postgresql://postgres:" .. secret .. "@/db?host=/nonexistent-dir",
      { host = "/nonexistent-dir", password = secret },
      { password = secret, bogus_option = "1" },
      { password = secret, port = secret },                             -- libpq quotes a bad port
      "host=/nonexistent-dir password=" .. secret .. " sslmode=" .. secret,
      { dbname = "host=/nonexistent-dir password=" .. secret },
      -- one password the start of another: the shorter must not unmask the rest of the longer
      "host=/nonexistent-dir port=" .. secret .. " password=" .. secret .. " password=Sekr",
      "postgresql://postgres:" .. secret .. "@/db?host=/nonexistent-dir&port=" .. secret .. "&password=Sekr",
    }
    for i, case in ipairs(cases) do
      local conn, msg = pg.connect(case)
      assert.is_nil(conn, "case " .. i)
      assert.is_falsy(msg:find("Sekr1t", 1, true), "case " .. i .. ": " .. msg)
      assert.is_falsy(msg:find("1tPw", 1, true), "case " .. i .. ": " .. msg)
    end
  end)

  it("raises for a conninfo of the wrong type", function()
    assert.has_error(function() pg.connect(42) end)
    assert.has_error(function() pg.connect{ host = {} } end)
  end)

  it("collects server notices for conn:notices() instead of printing them", function()
    local dir = util.scratch("pg-notice")
    local out, rcfile = spawn_script(dir, [[
      local pg = require "bkr.pg"
      local conn = assert(pg.connect())
      assert(conn:exec("do $$ begin raise notice 'hello %', 42; end $$"))
      local n = conn:notices()
      io.write(#n, "|", n[1], "|", #conn:notices(), "\n")
      assert(conn:exec("do $$ begin for i in 1..150 loop raise notice 'n%', i; end loop; end $$"))
      local many, dropped = conn:notices()
      io.write(#many, "|", dropped, "|", many[100], "\n")
    ]])
    assert.are.equal("0\n", wait_file(rcfile, 20))
    assert.are.equal("1|NOTICE:  hello 42|0\n100|50|NOTICE:  n100\n", util.read(out))
  end)
end)

describe("conn:query", function()
  local conn
  before_each(function() conn = connect() end)
  after_each(function() conn:close() end)

  it("passes parameters: nil as NULL, unicode text, bytea as text, numbers, booleans", function()
    local rows = conn:query("select $1::text is null as isnull, $2::text as u, length($2::text) as chars,"
      .. " $3::bytea as b, length($3::bytea) as blen, $4::int + 1 as i, $5::float8 as f,"
      .. " $6::boolean as bo, $7::text as whole, $8::text as frac, $9::text as int_float",
      nil, "ünïcødé ✓", "\\x00ff10", 41, 0.1, true, 7, 1.25, 3.0)
    assert.are.same({ isnull = true, u = "ünïcødé ✓", chars = 9, b = "\\x00ff10", blen = 3, i = 42,
      f = 0.1, bo = true, whole = "7", frac = "1.25", int_float = "3" }, rows[1])
    local r2 = conn:query("select $1::text as a, $2::text as b", pg.null, false)
    assert.are.equal(pg.null, r2[1].a)
    assert.are.equal("false", r2[1].b)
  end)

  it("converts integers, floats, booleans; keeps numeric and others as text; NULL is pg.null", function()
    local rows, columns = conn:query([[select 1::int2 as i2, 2147483647::int4 as i4,
      9223372036854775807::int8 as i8, 4294967295::oid as o, 1.5::float4 as f4, 'Infinity'::float8 as inf,
      12345678901234567890.123::numeric as num, false as b, '2024-01-02'::date as d, null::int as n,
      '{1,2}'::int[] as arr]])
    local r = rows[1]
    assert.are.same({ "i2", "i4", "i8", "o", "f4", "inf", "num", "b", "d", "n", "arr" }, columns)
    assert.are.equal(1, r.i2); assert.are.equal("integer", math.type(r.i2))
    assert.are.equal(2147483647, r.i4)
    assert.are.equal(math.maxinteger, r.i8); assert.are.equal("integer", math.type(r.i8))
    assert.are.equal(4294967295, r.o)
    assert.are.equal(1.5, r.f4); assert.are.equal("float", math.type(r.f4))
    assert.are.equal(math.huge, r.inf)
    assert.are.equal("12345678901234567890.123", r.num)
    assert.are.equal(false, r.b)
    assert.are.equal("2024-01-02", r.d)
    assert.are.equal(pg.null, r.n)
    assert.are.equal("{1,2}", r.arr)
    assert.are.equal(require("cjson").null, pg.null)
  end)

  it("returns every row, in order, with columns for an empty result too", function()
    local rows = conn:query("select g as n from generate_series(1, 1000) g order by g")
    assert.are.equal(1000, #rows)
    assert.are.equal(1000, rows[1000].n)
    local none, columns = conn:query("select 1 as a, 2 as b where false")
    assert.are.same({}, none)
    assert.are.same({ "a", "b" }, columns)
  end)

  it("returns nil, the server's message and the SQLSTATE on an SQL error", function()
    local rows, msg, state = conn:query("select * from no_such_table")
    assert.is_nil(rows)
    assert.are.equal('pg.query: ERROR:  relation "no_such_table" does not exist', msg)
    assert.are.equal("42P01", state)
    local _, msg2, state2 = conn:query("select $1::int", "abc")
    assert.are.equal("22P02", state2)
    assert.is_truthy(msg2:find('invalid input syntax for type integer: "abc"', 1, true))
    -- the connection carries on
    assert.are.equal(1, conn:query("select 1 as x")[1].x)
  end)

  it("raises for parameters it cannot pass and for a COPY, and the connection carries on", function()
    assert.has_error(function() conn:query("select $1", {}) end)
    assert.has_error(function() conn:query("select $1", "a\0b") end)
    assert.has_error(function() conn:query("copy (select 1) to stdout") end)
    assert.has_error(function() conn:exec("create temp table c(a int); copy c from stdin") end)
    assert.are.equal(2, conn:query("select 2 as x")[1].x)
  end)

  it("gives up on a long query when interrupted and cancels it on the server", function()
    local dir = util.scratch("pg-int")
    local out, rcfile = spawn_script(dir, [[
      local conn = assert(require("bkr.pg").connect())
      io.stderr:write("ready\n")
      conn:query("select pg_sleep(60) as spec_interrupt_marker")
    ]])
    assert.are.equal("ready\n", wait_file(out, 10))
    os.execute("sleep 0.5")
    local t0 = os.time()
    os.execute("kill -TERM " .. util.read(dir .. "/pid"))
    assert.are.equal("143\n", wait_file(rcfile, 10))
    assert.is_true(os.time() - t0 < 5)
    assert.is_truthy(util.read(out):find("interrupted", 1, true))
    -- a disconnect alone leaves pg_sleep running; the cancel stops it
    assert.is_true(eventually_zero(function() return backends_running("spec_interrupt_marker") end))
  end)
end)

describe("conn:exec", function()
  local conn
  before_each(function() conn = connect() end)
  after_each(function() conn:close() end)

  it("runs a statement with cleanup_timeout after an interrupt, and only that one", function()
    local dir = util.scratch("pg-cleanup")
    local name = "spec_cleanup_" .. math.random(1e6)
    psql("create table " .. name .. " (x int)")
    local out, rcfile = spawn_script(dir, string.format([[
      local conn = assert(require("bkr.pg").connect())
      io.stderr:write("ready\n")
      -- the host raises "interrupted by SIGTERM" once in running Lua code: here
      pcall(function() pcall(conn.query, conn, "select pg_sleep(60)") end)
      local plain = { pcall(conn.exec, conn, "insert into %s values (1)") }
      io.stderr:write("plain exec: ", tostring(plain[2]), "\n")
      local done = { pcall(conn.exec, conn, "insert into %s values (2)", { cleanup_timeout = 5 }) }
      io.stderr:write("cleanup exec: ", tostring(done[2]), " ", tostring(done[3]), "\n")
      local slow = { pcall(conn.exec, conn, "select pg_sleep(60)", { cleanup_timeout = 0.5 }) }
      io.stderr:write("slow cleanup: ", tostring(slow[2]), " ", tostring(slow[3]), " ", tostring(slow[4]), "\n")
    ]], name, name))
    assert.are.equal("ready\n", wait_file(out, 10))
    os.execute("sleep 0.5")
    os.execute("kill -TERM " .. util.read(dir .. "/pid"))
    assert.are.equal("143\n", wait_file(rcfile, 20))
    local text = util.read(out)
    assert.matches("plain exec: pg.exec: interrupted", text, 1, true)
    assert.matches("cleanup exec: true INSERT 0 1", text, 1, true)
    assert.matches("slow cleanup: nil pg.exec: no result after 0.5 s (cleanup_timeout): cancelled 57014", text, 1, true)
    -- only the cleanup statement ran; the slow one was cancelled on the server
    assert.are.equal("2", psql("select string_agg(x::text, ',') from " .. name))
    assert.is_true(eventually_zero(function() return backends_running("pg_sleep(60)") end))
    psql("drop table " .. name)
  end)

  it("refuses a cleanup_timeout that is not a number of seconds up to 300", function()
    assert.has_error(function() conn:exec("select 1", { cleanup_timeout = 0 }) end)
    assert.has_error(function() conn:exec("select 1", { cleanup_timeout = 301 }) end)
    assert.has_error(function() conn:exec("select 1", { cleanup_timeout = "5" .. "x" }) end)
    assert.has_error(function() conn:exec("select 1", 5) end)
    assert.are.same({ true, "SELECT 1" }, { conn:exec("select 1", { cleanup_timeout = 5 }) })
  end)

  it("runs several statements and returns the last command's status", function()
    assert.are.same({ true, "INSERT 0 3" }, { conn:exec(
      "create table exec_multi(a int); insert into exec_multi values (1), (2), (3)") })
    assert.are.equal("6", psql("select sum(a) from exec_multi"))
    assert.are.same({ true, "DROP TABLE" }, { conn:exec("drop table exec_multi") })
  end)

  it("runs a multi-statement string as one transaction: an error undoes the earlier statements", function()
    local ok, msg, state = conn:exec("create table exec_atomic(a int); select 1/0")
    assert.is_nil(ok)
    assert.are.equal("pg.exec: ERROR:  division by zero", msg)
    assert.are.equal("22012", state)
    assert.are.equal("", psql("select to_regclass('exec_atomic')"))
  end)
end)

describe("conn information", function()
  local conn
  before_each(function() conn = connect() end)
  after_each(function() conn:close() end)

  it("reports the server version as a number and as text", function()
    local num, text = conn:server_version()
    assert.are.equal(tonumber(psql("show server_version_num")), num)
    assert.are.equal(psql("show server_version"):match("^%S+"), text)
    assert.is_truthy(text:match("^%d+%.%d+$"))
  end)

  it("gives a database's size, and nil, the message and the SQLSTATE for an unknown one", function()
    psql("create database bkr_spec_size")
    local size = conn:database_size("bkr_spec_size")
    local expected = tonumber(psql("select pg_database_size('bkr_spec_size')"))
    psql("drop database bkr_spec_size")
    assert.are.equal(expected, size)
    local none, msg, state = conn:database_size("bkr_spec_size")
    assert.is_nil(none)
    assert.are.equal("3D000", state)
    assert.is_truthy(msg:find('database "bkr_spec_size" does not exist', 1, true))
  end)
  it("escapes identifiers and literals so the server reads them back unchanged", function()
    local weird = "it's a \"name\" \\ ünï"
    local name = conn:escape_identifier(weird)
    assert(conn:exec("create temp table " .. name .. "(v text)"))
    assert(conn:exec("insert into " .. name .. " values (" .. conn:escape_literal(weird) .. ")"))
    local rows = conn:query("select v from " .. name)
    assert.are.equal(weird, rows[1].v)
    assert.has_error(function() conn:escape_literal("bad \xff utf-8") end)
  end)
end)

describe("lib.postgres databases", function()
  local conn, postgres
  setup(function()
    package.path = os.getenv("BKR_SOURCE_DIR") .. "/recipes/?.lua;" .. package.path
    postgres = require "lib.postgres"
  end)
  before_each(function() conn = connect() end)
  after_each(function() conn:close() end)

  local function with_databases(names, f)
    for _, name in ipairs(names) do psql("create database " .. name) end
    local ok, err = pcall(f)
    for _, name in ipairs(names) do psql("drop database " .. name) end
    assert(ok, err)
  end

  it("lists databases with owner, encoding and size, templates excluded, ordered by name", function()
    with_databases({ "bkr_spec_b", "bkr_spec_a" }, function()
      local dbs = assert(postgres.list_databases(conn))
      local names, byname = {}, {}
      for _, d in ipairs(dbs) do names[#names + 1] = d.name; byname[d.name] = d end
      local sorted = { table.unpack(names) }
      table.sort(sorted)
      assert.are.same(sorted, names)
      assert.is_nil(byname.template0); assert.is_nil(byname.template1)
      local a = byname.bkr_spec_a
      assert.are.same({ name = "bkr_spec_a", owner = "postgres", encoding = "UTF8",
        size = tonumber(psql("select pg_database_size('bkr_spec_a')")), allow_connections = true,
        is_template = false }, a)
      assert.is_truthy(byname.bkr_spec_b)
      assert.are.equal(a.size, conn:database_size("bkr_spec_a"))
    end)
  end)

  it("leaves out the size of a database the user may not connect to", function()
    local role = "bkr_spec_nostats_" .. math.random(1e6)
    psql("create role " .. role .. " login")
    with_databases({ "bkr_spec_private" }, function()
      psql("revoke connect on database bkr_spec_private from public")
      local limited <close> = assert(pg.connect{ host = PGHOST, port = PGPORT, dbname = "postgres", user = role })
      local byname = {}
      for _, d in ipairs(assert(postgres.list_databases(limited))) do byname[d.name] = d end
      assert.is_nil(byname.bkr_spec_private.size)
      assert.are.equal("postgres", byname.bkr_spec_private.owner)
      assert.are.equal("integer", math.type(byname.postgres.size))
    end)
    psql("drop role " .. role)
  end)

  it("backs up every database that allows connections, less the excluded ones, or the configured list", function()
    with_databases({ "bkr_spec_keep", "bkr_spec_skip", "bkr_spec_closed" }, function()
      psql("alter database bkr_spec_closed allow_connections false")
      -- only this test's databases: others may come and go meanwhile (a drill's scratch
      -- database being dropped by an earlier test's background run)
      local names = {}
      for _, name in ipairs(postgres.databases(conn, { databases = "all", exclude = { "bkr_spec_skip" } })) do
        if name:match("^bkr_spec_") then names[#names + 1] = name end
      end
      assert.are.same({ "bkr_spec_keep" }, names)
      assert.is_true(#postgres.databases(conn, { databases = "all" }) > 1)
      assert.are.same({ "x", "y" }, postgres.databases(conn, { databases = { "x", "y" } }))
    end)
  end)
end)

describe("conn:copy_out", function()
  local conn
  setup(function()
    psql([[create table copy_src(id int, label text, amount numeric, note text);
      insert into copy_src select g, 'ünï ' || g, g / 7.0, case when g % 3 = 0 then null
        else E'tab\there back\\slash' end from generate_series(1, 2000) g]])
  end)
  teardown(function() psql("drop table copy_src") end)
  before_each(function() conn = connect() end)
  after_each(function() conn:close() end)

  it("streams a table exactly as psql's \\copy writes it", function()
    local r = stream.run{ assert(conn:copy_out("copy copy_src to stdout")), stream.to_string() }
    local expected = psql_copy("select * from copy_src")
    assert.are.equal(#expected, #r.string)
    assert.are.equal(expected, r.string)
    assert.are.same({ rows = 2000, command = "COPY 2000" }, r.copy)
  end)

  it("streams 100k rows through gzip into a file that gzip -t and wc -l accept", function()
    local dir = util.scratch("pg-copy")
    local path = dir .. "/big.tsv.gz"
    local r = stream.run{
      assert(conn:copy_out("copy (select g, md5(g::text) from generate_series(1, 100000) g) to stdout",
        { name = "dump" })),
      gzip.compress{ level = 6 },
      stream.to_file(path),
    }
    assert.is_true(util.gzip_ok(path))
    assert.are.equal("100000", util.sh("gunzip -c " .. q(path) .. " | wc -l"):match("%d+"))
    local reference = "\\copy (select g, md5(g::text) from generate_series(1, 100000) g) to stdout"
    assert.are.equal(util.sh("gunzip -c " .. q(path) .. " | sha256sum"),
      util.sh("psql -X -q -d postgres -c " .. q(reference) .. " | sha256sum"))
    assert.are.equal(100000, r.dump.rows)
  end)

  it("returns nil, message and SQLSTATE for a failing statement; raises for a non-COPY", function()
    local st, msg, state = conn:copy_out("copy no_such_table to stdout")
    assert.is_nil(st)
    assert.are.equal('pg.copy_out: ERROR:  relation "no_such_table" does not exist', msg)
    assert.are.equal("42P01", state)
    assert.has_error(function() conn:copy_out("select 1") end,
      "pg.copy_out: not a COPY ... TO STDOUT statement")
    assert.has_error(function() conn:copy_out("copy copy_src from stdin") end)
    assert.are.equal(1, conn:query("select 1 as x")[1].x)
  end)

  it("fails the run with the server's message when the COPY fails midway", function()
    local st = assert(conn:copy_out(
      "copy (select 1 / (1000 - g) from generate_series(1, 2000) g) to stdout"))
    local ok, err = pcall(stream.run, { st, stream.to_null() })
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("division by zero", 1, true), tostring(err))
    assert.is_truthy(tostring(err):find("22012", 1, true), tostring(err))
    assert.are.equal(1, conn:query("select 1 as x")[1].x)
  end)

  it("leaves the connection usable when the pipeline aborts (a sink that fails)", function()
    -- 10 GB of rows: only a cancel on the server ends this quickly
    local st = assert(conn:copy_out("copy (select g, repeat('x', 100) as spec_abort_marker"
      .. " from generate_series(1, 100000000) g) to stdout"))
    local t0 = os.time()
    local ok, err = pcall(stream.run, { st, stream.to_string{ max = 100000 } })
    assert.is_false(ok, err)
    assert.is_truthy(tostring(err):find("string", 1, true), tostring(err))
    assert.are.same({ { x = 1 } }, conn:query("select 1 as x"))
    assert.is_true(os.time() - t0 < 10)
    assert.is_true(eventually_zero(function() return backends_running("spec_abort_marker") end))
  end)

  it("owns the connection while active: queries and a second COPY raise until it ends", function()
    local st = assert(conn:copy_out("copy copy_src to stdout"))
    assert.has_error(function() conn:query("select 1") end,
      "pg.query: a COPY is in progress on this connection")
    assert.has_error(function() conn:copy_out("copy copy_src to stdout") end)
    st:close() -- never run: closing it ends the COPY
    assert.are.equal(1, conn:query("select 1 as x")[1].x)
  end)

  it("fails cleanly when its connection was closed", function()
    local st = assert(conn:copy_out("copy copy_src to stdout"))
    conn:close()
    local ok, err = pcall(stream.run, { st, stream.to_string() })
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("the connection was closed", 1, true), tostring(err))
  end)

  it("gives up promptly when interrupted and cancels the COPY on the server", function()
    local dir = util.scratch("pg-copy-int")
    local out, rcfile = spawn_script(dir, [[
      local stream = require "bkr.stream"
      local conn = assert(require("bkr.pg").connect())
      -- rows first (the server sends them once its 8 kB buffer fills), then a long wait
      local st = assert(conn:copy_out("copy (select g, repeat('x', 100), case when g = 1000 then"
        .. " pg_sleep(60) end as spec_copy_marker from generate_series(1, 1000) g) to stdout"))
      io.stderr:write("ready\n")
      stream.run{ st, stream.to_null() }
    ]])
    assert.are.equal("ready\n", wait_file(out, 10))
    os.execute("sleep 0.5")
    os.execute("kill -TERM " .. util.read(dir .. "/pid"))
    assert.are.equal("143\n", wait_file(rcfile, 10))
    assert.is_truthy(util.read(out):find("interrupted", 1, true))
    assert.is_true(eventually_zero(function() return backends_running("spec_copy_marker") end))
  end)
end)

describe("conn:copy_in", function()
  local conn
  before_each(function()
    psql("create table copy_dst(id int, label text)")
    conn = connect()
  end)
  after_each(function()
    conn:close()
    psql("drop table copy_dst")
  end)

  local function rows_text(n)
    local t = {}
    for i = 1, n do t[i] = i .. "\tünï " .. i .. "\n" end
    return table.concat(t)
  end

  it("loads rows from a string source", function()
    local r = stream.run{ stream.from_string(rows_text(5000)),
      assert(conn:copy_in("copy copy_dst from stdin")) }
    assert.are.same({ rows = 5000, command = "COPY 5000" }, r.copy)
    assert.are.equal("5000|12502500", psql("select count(*), sum(id) from copy_dst"))
    assert.are.equal("ünï 77", psql("select label from copy_dst where id = 77"))
  end)

  it("loads 100k rows from a gzip file, as a restore does", function()
    local dir = util.scratch("pg-copy-in")
    local path = dir .. "/rows.tsv"
    util.write(path, rows_text(100000))
    os.execute("gzip " .. q(path))
    local r = stream.run{ assert(stream.from_file(path .. ".gz")), gzip.decompress(),
      assert(conn:copy_in("copy copy_dst from stdin", { name = "load" })) }
    assert.are.equal(100000, r.load.rows)
    assert.are.equal("100000|5000050000", psql("select count(*), sum(id) from copy_dst"))
  end)

  it("fails with the SQLSTATE on a bad row and leaves the table unchanged", function()
    psql("insert into copy_dst values (1, 'kept')")
    local data = rows_text(1000) .. "oops\tbad\n" .. rows_text(10)
    local ok, err = pcall(stream.run, { stream.from_string(data),
      assert(conn:copy_in("copy copy_dst from stdin")) })
    assert.is_false(ok)
    assert.is_truthy(tostring(err):find("22P02", 1, true), tostring(err))
    assert.is_truthy(tostring(err):find("line 1001", 1, true), tostring(err))
    assert.matches("\n  CONTEXT:  COPY copy_dst, line 1001", tostring(err), 1, true)
    assert.are.equal("1|kept", psql("select count(*), max(label) from copy_dst"))
    assert.are.equal(1, conn:query("select 1 as x")[1].x)
  end)

  it("rolls back what it sent when the source fails midway, and the connection carries on", function()
    local gz = gzip.compress_string(rows_text(50000))
    local truncated = gz:sub(1, #gz // 2)
    local ok, err = pcall(stream.run, { stream.from_string(truncated), gzip.decompress(),
      assert(conn:copy_in("copy copy_dst from stdin")) })
    assert.is_false(ok)
    assert.is_falsy(tostring(err):find("copy:", 1, true), tostring(err)) -- the failing stage is gzip, not the COPY
    assert.are.equal("0", psql("select count(*) from copy_dst"))
    assert.are.equal(1, conn:query("select 1 as x")[1].x)
    assert.are.same({}, conn:notices())
  end)

  it("returns nil, message and SQLSTATE for a bad statement; raises for a non-COPY", function()
    local st, msg, state = conn:copy_in("copy no_such_table from stdin")
    assert.is_nil(st)
    assert.are.equal("42P01", state)
    assert.is_truthy(msg:find("^pg%.copy_in: ERROR:  relation"), msg)
    assert.has_error(function() conn:copy_in("copy copy_dst to stdout") end)
    assert.has_error(function() conn:copy_in("select 1") end)
    assert.are.equal(1, conn:query("select 1 as x")[1].x)
  end)
end)

describe("conn:close", function()
  it("is harmless twice; methods on a closed connection raise", function()
    local conn = connect()
    conn:close()
    conn:close()
    assert.has_error(function() conn:query("select 1") end, "pg: attempt to use a closed connection")
    assert.has_error(function() conn:exec("select 1") end, "pg: attempt to use a closed connection")
    assert.has_error(function() conn:copy_out("copy x to stdout") end,
      "pg: attempt to use a closed connection")
    assert.are.equal("pg.Conn (closed)", tostring(conn))
  end)

  it("closes the server session", function()
    local conn = connect()
    assert(conn:exec("set application_name = 'spec_close_session'"))
    local sessions = "select count(*) from pg_stat_activity where application_name = 'spec_close_session'"
    assert.are.equal("1", psql(sessions))
    conn:close()
    assert.is_true(eventually_zero(function() return tonumber(psql(sessions)) end))
  end)

  it("leaks no descriptors over many connects, failed connects, queries and COPYs", function()
    collectgarbage()
    local before = util.fd_count()
    for i = 1, 60 do
      local conn = connect()
      conn:query("select $1::int as i", i)
      if i % 10 == 0 then
        stream.run{ assert(conn:copy_out("copy (select 1) to stdout")), stream.to_null() }
        assert(conn:copy_out("copy (select 1) to stdout")) -- left to the collector
      end
      if i % 2 == 0 then conn:close() end                 -- the others by __gc
      assert.is_nil(pg.connect("host=/nonexistent-dir"))
      assert.is_nil(pg.connect{ dbname = "no_such_database_xyz" })
    end
    collectgarbage(); collectgarbage()
    assert.are.equal(before, util.fd_count())
  end)
end)
