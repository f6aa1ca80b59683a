-- compare_spec.lua - the table comparison after a restore: conn:digest_tables (bkr.pg, worker
-- threads with a connection each) and restore.compare_tables on top of it. The reference is
-- the sequential comparison bkr had before (conn:copy_out through dump.row_digest, one table
-- after another), and the manifest, whose digests pg_dump's output gave (dump.table_digests).

local pg = require "bkr.pg"
local stream = require "bkr.stream"
local dump = require "bkr.dump"
local util = require "support.util"
local json = require "dkjson"

local q, psql = util.quote, util.psql
local BKR = util.bkr_bin()

-- Several tables: large and small, empty, without columns, names with quotes, spaces and a
-- newline, values with newlines, tabs, backslashes and NULLs, types whose text depends on the
-- session settings, and a partitioned table (the manifest lists its partitions).
local SETUP = [[
create schema "Odd Schema";
create table big (id int primary key, note text, at timestamptz, f float8, b bytea);
insert into big select g, 'note ' || g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute',
  g / 7.0, decode(md5(g::text), 'hex') from generate_series(1, 20000) g;
create table medium (k text, v int);
insert into medium select 'k' || (g % 50), g from generate_series(1, 3000) g;
create table empty (x int);
create table nocols ();
insert into nocols default values; insert into nocols default values;
create table "Odd Schema"."Tab ""quoted""
with newline" ("col one" text, "Col""2" int);
insert into "Odd Schema"."Tab ""quoted""
with newline" values (E'line1\nline2', 1), (E'tab\there', 2), (E'back\\slash', 3), (null, null), ('dup', 5), ('dup', 5);
create table part (id int, v text) partition by range (id);
create table part_low partition of part for values from (0) to (100);
create table part_high partition of part for values from (100) to (1000);
insert into part select g, 'v' || g from generate_series(1, 500) g;
]]

local function connect(dbname)
  return assert(pg.connect{ dbname = dbname })
end

local function manifest_of(repo, file)
  return assert(json.decode(util.read(repo .. "/daily/" .. file .. ".json")))
end

local function session_sql(conn, manifest)
  local encoding = manifest.database_properties and manifest.database_properties.encoding or "UTF8"
  local sql = "set client_encoding = " .. conn:escape_literal(encoding)
    .. "; set datestyle = iso; set intervalstyle = postgres; set extra_float_digits = 3"
  if manifest.dump_timezone then sql = sql .. "; set timezone = " .. conn:escape_literal(manifest.dump_timezone) end
  return sql
end

local function copy_sql(conn, t)
  local cols = {}
  for i, c in ipairs(t.columns or {}) do cols[i] = conn:escape_identifier(c) end
  return "copy " .. conn:escape_identifier(t.schema) .. "." .. conn:escape_identifier(t.name)
    .. (#cols > 0 and (" (" .. table.concat(cols, ", ") .. ")") or "") .. " to stdout"
end

-- The comparison as bkr did it before it ran on threads: one connection, one table after
-- another, COPY through the dump.row_digest sink; the same result shape.
local function sequential_compare(dbname, manifest)
  local cli = require "lib.cli"
  local conn <close> = connect(dbname)
  assert(conn:exec(session_sql(conn, manifest)))
  local results = {}
  for _, t in ipairs(manifest.tables or {}) do
    local item = { table = t.schema .. "." .. t.name, expected_rows = t.rows }
    local source, err = conn:copy_out(copy_sql(conn, t))
    if not source then
      item.reason = err
    else
      local result = stream.run{ source, dump.row_digest{ name = "rows" } }
      item.rows, item.digest = result.rows.rows, result.rows.digest
      if item.rows ~= t.rows then
        item.reason = string.format("%s, the backup has %d", cli.plural(item.rows, "row", "rows"), t.rows)
      elseif item.digest ~= t.digest then
        item.reason = string.format("same %s but different contents (digest %s, backup %s)",
          cli.plural(item.rows, "row", "rows"), item.digest:sub(1, 12), t.digest:sub(1, 12))
      end
    end
    item.ok = item.reason == nil
    results[#results + 1] = item
  end
  return results
end

local function compare(dbname, manifest, threads)
  local restore = require "lib.restore"
  return restore.compare_tables({ cfg = { connection = {}, threads = threads } }, dbname, manifest)
end

describe("conn:digest_tables", function()
  local db, repo, manifest
  setup(function()
    db = util.new_database("cmp", SETUP)
    repo = util.scratch("repo")
    manifest = manifest_of(repo, util.backup_newest(repo, db))
  end)

  it("the manifest has every table with data, the partitions among them", function()
    local names = {}
    for _, t in ipairs(manifest.tables) do names[#names + 1] = t.schema .. "." .. t.name end
    table.sort(names)
    assert.are.same({ 'Odd Schema.Tab "quoted"\nwith newline', "public.big", "public.empty", "public.medium",
      "public.nocols", "public.part_high", "public.part_low" }, names)
  end)

  it("gives every table the rows and digest of copy_out through dump.row_digest, with 1, 2 and 4 jobs", function()
    local conn <close> = connect(db)
    local session = session_sql(conn, manifest)
    assert(conn:exec(session))
    local copies, sizes, expected = {}, {}, {}
    for i, t in ipairs(manifest.tables) do
      copies[i], sizes[i] = copy_sql(conn, t), t.rows
      local r = stream.run{ assert(conn:copy_out(copies[i])), dump.row_digest{ name = "rows" } }.rows
      expected[i] = { rows = r.rows, digest = r.digest }
      -- and the manifest (pg_dump's output through dump.table_digests) agrees
      assert.are.same({ rows = t.rows, digest = t.digest }, expected[i], t.name)
    end
    for _, jobs in ipairs({ 1, 2, 4 }) do
      local found, err, kind = conn:digest_tables(copies, { jobs = jobs, session = session, sizes = sizes })
      assert.is_nil(err)
      assert.is_nil(kind)
      assert.are.same(expected, found, "jobs = " .. jobs)
    end
    -- without sizes and without jobs (one per online CPU) too
    assert.are.same(expected, conn:digest_tables(copies, { session = session }))
    -- the calling connection is left as it was, and usable
    assert.are.equal(1, conn:query("select 1 as x")[1].x)
  end)

  it("reports a table that cannot be read as that table's failure, and reads the others", function()
    local conn <close> = connect(db)
    local found = assert(conn:digest_tables({
      "copy public.medium (k, v) to stdout",
      "copy public.no_such_table to stdout",
      "select 1",
      "copy (select 1/0) to stdout",
      "copy public.empty (x) to stdout",
    }, { jobs = 2 }))
    assert.are.equal(5, #found)
    assert.are.equal(3000, found[1].rows)
    assert.are.same({ error = 'pg.digest_tables: ERROR:  relation "public.no_such_table" does not exist',
      sqlstate = "42P01" }, found[2])
    assert.are.same({ error = "pg.digest_tables: not a COPY ... TO STDOUT statement" }, found[3])
    assert.are.equal("22012", found[4].sqlstate)
    assert.matches("division by zero", found[4].error, 1, true)
    assert.are.same({ rows = 0, digest = string.rep("0", 64) }, found[5])
    assert.are.same({}, conn:digest_tables({}))
  end)

  it("when the server ends a connection, fails the table it was reading; the other connections read the rest", function()
    local conn <close> = connect(db)
    local kill = "select pg_terminate_backend(pg_backend_pid())"
    local medium = "copy public.medium (k, v) to stdout"
    local found = assert(conn:digest_tables({ kill, medium, medium, medium }, { jobs = 2 }))
    assert.are.equal("57P01", found[1].sqlstate)
    assert.matches("terminating connection", found[1].error, 1, true)
    for i = 2, 4 do assert.are.equal(3000, found[i].rows) end
    -- with no connection left, the tables not read yet are failures too, not a raised error
    found = assert(conn:digest_tables({ kill, medium }, { jobs = 1 }))
    assert.are.equal("57P01", found[1].sqlstate)
    assert.are.same({ error = "pg.digest_tables: not read: every connection to the server was lost" }, found[2])
  end)

  it("reads every table on the connections it can make when a connection limit refuses the rest", function()
    psql("drop role if exists cmp_two; create role cmp_two login connection limit 2")
    psql("grant select on all tables in schema public to cmp_two", db)
    local conn <close> = assert(pg.connect{ dbname = db, user = "cmp_two" })
    local medium = "copy public.medium (k, v) to stdout"
    local found = assert(conn:digest_tables({ medium, medium, medium, medium }, { jobs = 4 }))
    for i = 1, 4 do assert.are.equal(3000, found[i].rows, tostring(found[i].error)) end
    conn:close()
    psql("revoke all on all tables in schema public from cmp_two", db)
    psql("drop role cmp_two")
  end)

  it("returns nil, message, 'io' when no connection can be made, naming no password", function()
    psql("drop role if exists cmp_limited; create role cmp_limited login connection limit 1")
    psql("grant select on all tables in schema public to cmp_limited", db)
    local conn <close> = assert(pg.connect{ dbname = db, user = "cmp_limited", password = "pw-Sekr1t-xyz" })
    local found, err, kind = conn:digest_tables({ "copy public.empty (x) to stdout" }, { jobs = 1 })
    assert.is_nil(found)
    assert.are.equal("io", kind)
    assert.matches("^pg%.digest_tables: ", err)
    assert.matches("too many connections", err, 1, true)
    assert.is_nil(err:find("pw-Sekr1t-xyz", 1, true))
    conn:close()
    psql("revoke all on all tables in schema public from cmp_limited", db)
    psql("drop role cmp_limited")
  end)

  it("raises for misuse: a statement that is not a string, a bad jobs, an unknown option", function()
    local conn <close> = connect(db)
    assert.has_error(function() conn:digest_tables({ 1 }) end, "pg.digest_tables: copies[1] is a number, not a string")
    assert.has_error(function() conn:digest_tables({ "x" }, { jobs = 0 }) end,
      "pg.digest_tables: opts.jobs must be an integer, at least 1")
    assert.has_error(function() conn:digest_tables({ "x" }, { jobs = 1.5 }) end)
    assert.has_error(function() conn:digest_tables({ "x" }, { job = 1 }) end)
    assert.has_error(function() conn:digest_tables({ "x\0y" }) end)
    assert.has_error(function() conn:digest_tables({ "x" }, { sizes = { "big" } }) end)
    conn:close()
    assert.has_error(function() conn:digest_tables({}) end, "pg: attempt to use a closed connection")
  end)

  it("gives up promptly on SIGTERM, cancelling every COPY on the server", function()
    local dir = util.scratch("cmp-int")
    local script = dir .. "/child.lua"
    util.write(script, string.format([[
      local f = assert(io.open(%q, "w"))
      f:write(io.open("/proc/self/stat"):read("l"):match("^%%d+")); f:close()
      local conn = assert(require("bkr.pg").connect())
      io.stderr:write("ready\n")
      local slow = "copy (select g, pg_sleep(case when g = 1000 then 60 else 0 end), 'spec_dg_marker'"
        .. " from generate_series(1, 1000) g) to stdout"
      local ok, err = pcall(conn.digest_tables, conn, { slow, slow, slow }, { jobs = 3 })
      io.stderr:write("result: ", tostring(ok), " ", tostring(err), " ", tostring(type(err) == "table" and err.kind), "\n")
    ]], dir .. "/pid"))
    local out, rcfile = dir .. "/out", dir .. "/rc"
    os.execute(string.format("(%s run %s >%s 2>&1; echo $? >%s) &", q(BKR), q(script), q(out), q(rcfile)))
    local function running()
      return tonumber(psql("select count(*) from pg_stat_activity where pid <> pg_backend_pid()"
        .. " and query like '%spec_dg_marker%'"))
    end
    for _ = 1, 200 do
      if running() == 3 then break end
      os.execute("sleep 0.05")
    end
    assert.are.equal(3, running())
    local t0 = bkr.monotonic()
    os.execute("kill -TERM " .. util.read(dir .. "/pid"))
    local rc
    for _ = 1, 200 do
      local f = io.open(rcfile)
      rc = f and f:read("a")
      if f then f:close() end
      if rc and rc ~= "" then break end
      os.execute("sleep 0.05")
    end
    assert.are.equal("143\n", rc)
    assert.is_true(bkr.monotonic() - t0 < 3)
    assert.matches("result: false pg.digest_tables: interrupted interrupted", util.read(out), 1, true)
    local gone = false
    for _ = 1, 100 do
      if running() == 0 then gone = true break end
      os.execute("sleep 0.05")
    end
    assert.is_true(gone, "the COPYs still run on the server")
  end)
end)

describe("restore.compare_tables", function()
  local db, repo, file, manifest
  setup(function()
    db = util.new_database("cmpr", SETUP)
    repo = util.scratch("repo")
    file = util.backup_newest(repo, db)
    manifest = manifest_of(repo, file)
  end)

  it("returns what the sequential comparison returned, in manifest order, with threads 1 and 4 and the default", function()
    local expected = sequential_compare(db, manifest)
    assert.are.equal(#manifest.tables, #expected)
    for _, item in ipairs(expected) do assert.is_true(item.ok, item.table) end
    for _, threads in ipairs({ 1, 4, false }) do
      assert.are.same(expected, compare(db, manifest, threads or nil), "threads = " .. tostring(threads))
    end
  end)

  it("reports a table with other contents, one with other rows, and a missing table, and matches the rest", function()
    local target = db .. "_x"
    local out, rc = util.bkr("restore --repo " .. q(repo) .. " --db " .. db .. " --latest --into " .. target .. " --create")
    assert.are.equal(0, rc, out)
    assert.matches("compare: 7 of 7 tables match the backup", out, 1, true)
    psql("update medium set v = v + 1 where v = 17; insert into part values (5, 'extra'); drop table empty", target)
    local expected = sequential_compare(target, manifest)
    local got = compare(target, manifest, 2)
    local by_name = {}
    for i, item in ipairs(got) do
      by_name[item.table] = item
      -- the sequential comparison says the same, except for the prefix of a server's message
      local seq = expected[i]
      if seq.reason and seq.reason:match("^pg%.copy_out: ") then
        assert.are.equal(seq.reason:gsub("^pg%.copy_out: ", "pg.digest_tables: "), item.reason)
        seq.reason = item.reason
      end
      assert.are.same(seq, item)
    end
    assert.is_false(by_name["public.medium"].ok)
    assert.matches("^same 3000 rows but different contents", by_name["public.medium"].reason)
    assert.is_false(by_name["public.part_low"].ok)
    assert.are.equal("100 rows, the backup has 99", by_name["public.part_low"].reason)
    assert.is_false(by_name["public.empty"].ok)
    assert.are.equal('pg.digest_tables: ERROR:  relation "public.empty" does not exist', by_name["public.empty"].reason)
    assert.is_nil(by_name["public.empty"].rows)
    local ok = 0
    for _, item in ipairs(got) do if item.ok then ok = ok + 1 end end
    assert.are.equal(4, ok)
  end)
end)

describe("bkr restore when the comparison cannot connect", function()
  it("says the data was committed and keeps it, exit 1; --create keeps the database", function()
    util.psql("drop role if exists cmp_one; create role cmp_one login createdb")
    -- owned by the role that restores it, so that its ALTER ... OWNER TO works
    local src = util.new_database("cq", "create table t (x int); insert into t select generate_series(1, 50); "
      .. "alter table t owner to cmp_one;")
    local repo = util.scratch("cmp-repo")
    local out, rc = util.bkr("backup --no-globals --create-repo --repo " .. q(repo) .. " --db " .. src)
    assert.are.equal(0, rc, out)
    -- a role that may hold two connections: the restore's own and psql's (then the comparison's
    -- first), none left for the comparison's readers
    util.psql("alter role cmp_one connection limit 2")
    local target = src .. "_r"
    out, rc = util.bkr("restore --repo " .. q(repo) .. " --db " .. src .. " --latest --into " .. target
      .. " --create", "PGUSER=cmp_one")
    assert.are.equal(1, rc, out)
    assert.matches(target .. " was restored and committed, but its tables could not be compared", out, 1, true)
    assert.are.equal("50", util.psql("select count(*) from t", target):match("%d+"))
    util.psql("drop database " .. target)
    util.psql("drop database " .. src)
    util.psql("drop role cmp_one")
  end)
end)
