-- Helpers for the restore and drill specs: a psql that holds or fails on cue, bkr in the
-- background (to send it signals), and psql/pg_database checks that take any database name.
local util = require "support.util"
local q = util.quote

local M = {}

-- psql connected to database `name` through PGDATABASE, which libpq never reads as a
-- conninfo (psql -d does): for names such as "dbname=x" or "host=/tmp".
function M.psql_in(name, sql)
  local out, rc = util.sh("PGDATABASE=" .. q(name) .. " psql -X -q -A -t -v ON_ERROR_STOP=1 -c " .. q(sql) .. " 2>&1")
  assert(rc == 0, "psql failed: " .. out)
  return (out:gsub("\n$", ""))
end

-- A literal SQL string, for database names in queries of pg_database.
function M.literal(s)
  return "'" .. s:gsub("'", "''") .. "'"
end

function M.ident(s)
  return '"' .. s:gsub('"', '""') .. '"'
end

function M.exists(name)
  return util.psql("select count(*) from pg_database where datname = " .. M.literal(name)) == "1"
end

-- Names of databases matching a LIKE pattern, sorted, joined by ",".
function M.databases_like(pattern)
  return util.psql("select coalesce(string_agg(datname, ',' order by datname), '') from pg_database where datname like "
    .. M.literal(pattern))
end

-- A directory with a psql standing in for the real one: `--version` answers as the real one
-- (so bkr picks it); any other run creates DIR/started, waits until DIR/go exists, then exits 3
-- if DIR/fail exists, else runs the real psql. Returns the directory and a configuration file
-- that points pg_bindir at it.
function M.held_psql()
  local real = util.sh("ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1"):gsub("%s+$", "") .. "/psql"
  local dir = util.scratch("heldpsql")
  util.write(dir .. "/psql", "#!/bin/sh\nREAL=" .. q(real) .. "\nDIR=" .. q(dir) .. "\n"
    .. 'if [ "$1" = --version ]; then exec "$REAL" --version; fi\n'
    .. 'touch "$DIR/started"\n'
    .. 'while [ ! -f "$DIR/go" ]; do sleep 0.05; done\n'
    .. 'if [ -f "$DIR/fail" ]; then echo "psql: the stand-in fails on cue" >&2; exit 3; fi\n'
    .. 'exec "$REAL" "$@"\n')
  util.sh("chmod +x " .. q(dir .. "/psql"))
  util.write(dir .. "/bkr.lua", "return { pg_bindir = " .. string.format("%q", dir) .. " }\n")
  return dir, dir .. "/bkr.lua"
end

-- Wait until `path` exists (true) or `seconds` passed (false).
function M.wait_for(path, seconds)
  for _ = 1, seconds * 20 do
    local f = io.open(path)
    if f then
      f:close()
      return true
    end
    util.sh("sleep 0.05")
  end
  return false
end

-- Wait until f() is true, polling every 20 ms for at most `seconds`.
function M.wait_until(f, seconds)
  local deadline = os.time() + seconds
  repeat
    if f() then return true end
    util.sh("sleep 0.02")
  until os.time() > deadline
  return false
end

-- Start bkr with `args` in the background. Returns a handle: pid (bkr's own), kill(signal),
-- wait(seconds) -> exit code or nil, output() -> stdout and stderr together.
function M.start_bkr(args, env)
  local dir = util.scratch("bg")
  os.execute("(" .. (env or "") .. " " .. q(util.bkr_bin()) .. " " .. args .. " >" .. q(dir .. "/out") .. " 2>&1 & echo $! >"
    .. q(dir .. "/pid.tmp") .. "; mv " .. q(dir .. "/pid.tmp") .. " " .. q(dir .. "/pid") .. "; wait $!; echo $? >"
    .. q(dir .. "/rc.tmp") .. "; mv " .. q(dir .. "/rc.tmp") .. " " .. q(dir .. "/rc") .. ") >/dev/null 2>&1 &")
  assert(M.wait_for(dir .. "/pid", 10), "bkr did not start")
  local handle = { pid = util.read(dir .. "/pid"):match("%d+") }
  function handle.kill(signal)
    util.sh("kill -" .. (signal or "TERM") .. " " .. handle.pid)
  end
  function handle.wait(seconds)
    if not M.wait_for(dir .. "/rc", seconds or 60) then return nil end
    return tonumber(util.read(dir .. "/rc"):match("%d+"))
  end
  function handle.output()
    return util.read(dir .. "/out")
  end
  return handle
end

return M
