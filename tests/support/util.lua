-- Small helpers shared by the specs: shell out to independent tools, scratch directories,
-- descriptor counts. Independent tools (sha256sum, gzip, psql) check what bkr wrote.
local util = {}

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
util.quote = quote

-- Run a shell command (tests only: bkr itself never uses a shell); return stdout, exit code.
function util.sh(cmd)
  local p = assert(io.popen(cmd .. "; echo \"__rc=$?\"", "r"))
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)\n?$"))
  return out:gsub("__rc=%d+\n?$", ""), rc
end

function util.sha256sum(path)
  local out = util.sh("sha256sum " .. quote(path))
  return out:match("^(%x+)")
end

function util.gzip_ok(path)
  local _, rc = util.sh("gzip -t " .. quote(path) .. " 2>/dev/null")
  return rc == 0
end

function util.psql(sql, db)
  local out, rc = util.sh("psql -X -q -A -t -v ON_ERROR_STOP=1 -d " .. quote(db or "postgres")
    .. " -c " .. quote(sql) .. " 2>&1")
  assert(rc == 0, "psql failed: " .. out)
  return (out:gsub("\n$", ""))
end

function util.read(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  return data
end

-- Damage a file for a test: invert every bit of the byte at `offset` (0-based), so the byte
-- always changes (writing a fixed value would leave it as it was once in 256 files).
-- Point a backup's sidecar and manifest at the file's current bytes, as an attacker with
-- write access to the repository would: the sidecar, the manifest's sha256 and stored_bytes
-- recomputed; edit(manifest), when given, changes more first. Returns the manifest written.
function util.resign(path, edit)
  local json = require "dkjson"
  local dir, file = path:match("^(.*)/([^/]+)$")
  util.sh("cd " .. quote(dir) .. " && sha256sum " .. quote(file) .. " > " .. quote(file .. ".sha256"))
  local manifest = json.decode(util.read(path .. ".json"))
  manifest.sha256 = util.sha256sum(path)
  manifest.stored_bytes = tonumber(util.sh("stat -c %s " .. quote(path)):match("%d+"))
  if edit then edit(manifest) end
  util.write(path .. ".json", json.encode(manifest))
  return manifest
end

-- The names in REPO/<type> (default daily), hidden ones too, that match a Lua pattern, sorted.
function util.files(repo, pattern, type_)
  local out = util.sh("ls -A " .. quote(repo .. "/" .. (type_ or "daily")) .. " 2>/dev/null")
  local list = {}
  for name in out:gmatch("[^\n]+") do
    if name:match(pattern) then list[#list + 1] = name end
  end
  table.sort(list)
  return list
end

function util.flip_byte(path, offset)
  local f = assert(io.open(path, "r+b"))
  assert(f:seek("set", offset))
  local byte = assert(f:read(1), "offset beyond the end of " .. path)
  assert(f:seek("set", offset))
  f:write(string.char(byte:byte() ~ 0xFF))
  f:close()
end

function util.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- A fresh scratch directory under the test run's directory (removed with the run).
local counter = 0
function util.scratch(label)
  counter = counter + 1
  local base = os.getenv("BKR_TEST_TMP") or "/tmp"
  local dir = string.format("%s/%s-%d-%d", base, label or "t", counter, math.random(1e9))
  assert(os.execute("mkdir -p " .. quote(dir)))
  return dir
end

function util.listdir(dir)
  local names = {}
  local out = util.sh("ls -A " .. quote(dir))
  for name in out:gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- Open descriptors of this process (the directory handle lfs opens is counted every time).
function util.fd_count()
  local n = 0
  for _ in require("lfs").dir("/proc/self/fd") do n = n + 1 end
  return n
end

-- This process's pid (the bkr running the tests), read from /proc.
function util.pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("l"):match("^(%d+)")
  f:close()
  return pid
end

-- Children of the test process that are zombies (exited but not reaped).
function util.zombies()
  local out = util.sh("ps -o pid=,stat= --ppid " .. util.pid())
  local z = {}
  for pid, stat in out:gmatch("(%d+)%s+(%S+)") do
    if stat:sub(1, 1) == "Z" then z[#z + 1] = pid end
  end
  return z
end

function util.bkr_bin()
  return os.getenv("BKR_BIN") or "./bkr"
end

-- A directory with a pg_dump that stands in for the real one, to make pg_dump crash, pause
-- or report what it was given. `--version` answers as the real program does (so bkr picks
-- it); anything else runs `script`, a shell fragment in which $REAL_PG_DUMP is the real
-- program and $FAKEBIN this directory. Returns the directory and a Lua configuration file
-- that points pg_bindir at it.
function util.fake_pg_dump(script)
  local real = util.sh("ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1"):gsub("%s+$", "") .. "/pg_dump"
  local dir = util.scratch("fakebin")
  util.write(dir .. "/pg_dump", "#!/bin/sh\nREAL_PG_DUMP=" .. quote(real) .. "\nFAKEBIN=" .. quote(dir) .. "\n"
    .. 'if [ "$1" = --version ]; then exec "$REAL_PG_DUMP" --version; fi\n' .. script .. "\n")
  util.sh("chmod +x " .. quote(dir .. "/pg_dump"))
  util.write(dir .. "/bkr.lua", "return { pg_bindir = " .. string.format("%q", dir) .. " }\n")
  return dir, dir .. "/bkr.lua"
end

-- A stand-in backup file with its sidecar and a manifest that matches the schema of
-- docs/manifest.md (for rotation and list tests that need many backups quickly). fields
-- override or add manifest fields; a field set to false is left out.
function util.fake_backup(path, fields)
  local file = path:match("[^/]+$")
  util.write(path, "x")
  local digest = util.sha256sum(path)
  util.write(path .. ".sha256", digest .. "  " .. file .. "\n")
  local stamp = file:match("_(%d%d%d%d%d%d%d%d_%d%d%d%d%d%d)")
  local manifest = {
    format = "bkr-backup-1", kind = file:match("^globals_") and "globals" or "database",
    type = path:match("([^/]+)/[^/]+$"), file = file,
    start_time = stamp:gsub("^(%d%d%d%d)(%d%d)(%d%d)_(%d%d)(%d%d)(%d%d)$", "%1-%2-%3T%4:%5:%6Z"),
    raw_bytes = 1, stored_bytes = 1, sha256 = digest, encrypted = false, tables = {},
  }
  for k, v in pairs(fields or {}) do manifest[k] = v or nil end
  util.write(path .. ".json", require("dkjson").encode(manifest))
end

-- Every file under dir (relative), sorted: the repository's state, to compare before/after.
function util.tree(dir)
  local out = util.sh("cd " .. quote(dir) .. " 2>/dev/null && find . -type f ! -name bkr.log ! -name .lock | sort")
  return out
end

-- The backup files of db in REPO/<type> (default daily), as ls lists them.
function util.backups_of(repo, db, type_)
  local out = util.sh("ls " .. quote(repo .. "/" .. (type_ or "daily")) .. " 2>/dev/null")
  local list = {}
  for name in out:gmatch("[^\n]+") do
    if name:match("^backup_.*_" .. db:gsub("%p", "%%%0") .. "%.sql%.gz$") then list[#list + 1] = name end
  end
  return list
end

-- Back up db into repo (daily, no globals) with the bkr under test; returns the newest
-- backup file's name (the repository is created when missing). extra: more arguments, already quoted.
function util.backup_newest(repo, db, extra)
  local out, rc = util.bkr("backup --no-globals --create-repo --repo " .. quote(repo) .. " --db " .. db .. " " .. (extra or ""))
  assert(rc == 0, out)
  return (util.sh("ls " .. quote(repo .. "/daily") .. " | grep '_" .. db .. ".sql.gz$' | tail -n 1"):gsub("\n", ""))
end

-- Run the bkr under test with arguments (already quoted as needed) and an optional shell
-- prefix such as "PGUSER=x"; return stdout and stderr together, and the exit code.
function util.bkr(args, env)
  return util.sh((env or "") .. " " .. quote(util.bkr_bin()) .. " " .. args .. " 2>&1")
end

-- A new database in the test cluster, named PREFIX_<n>_<random>, set up with `sql` (run by
-- psql from a file, so it may hold several statements).
local databases = 0
function util.new_database(prefix, sql)
  databases = databases + 1
  local name = string.format("%s_%d_%d", prefix, databases, math.random(1e6))
  util.psql("create database " .. name)
  if sql then
    local file = util.scratch("sql") .. "/setup.sql"
    util.write(file, sql)
    local out, rc = util.sh("psql -X -q -v ON_ERROR_STOP=1 -d " .. name .. " -f " .. quote(file) .. " 2>&1")
    assert(rc == 0, out)
  end
  return name
end

return util
