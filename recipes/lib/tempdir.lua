-- Private temporary directories outside the repository, for plaintext that must never be
-- stored there (an encrypted custom-format backup's archive before encryption, a decrypted
-- archive for pg_restore). fs.temp_dir makes them: PREFIX.PID.XXXXXX, mode 0700, under
-- $TMPDIR (else /tmp).
--
--   local dir, guard = tempdir.private("bkr-archive")  -- or a failure of the environment, raised
--   local _ <close> = guard                  -- gone when the scope ends: return, error, SIGTERM
--
-- Only a SIGKILL (or a power cut) can leave one behind. The next run that makes a directory
-- with the same prefix removes those leftovers first, and says so on stderr: directories of
-- this user whose pid names no live process, or, older than a day, no live bkr (a pid reused
-- since). Nothing that is not such a directory is touched.
local fs = require "bkr.fs"
local lfs = require "lfs"

local tempdir = {}

tempdir.STALE_SECONDS = 24 * 3600

-- Where fs.temp_dir makes its directories (the same rule).
function tempdir.base()
  local base = os.getenv("TMPDIR")
  if not base or base == "" then base = "/tmp" end
  return base
end

local function process_name(pid)
  local f = io.open("/proc/" .. pid .. "/comm", "r")
  if not f then return nil end
  local name = f:read("l")
  f:close()
  return name
end

-- Is the directory `name` in base, of prefix, the leftover of a run that is gone?
local function stale(base, name, prefix, uid, now)
  local pid = name:match("^" .. prefix:gsub("%p", "%%%0") .. "%.(%d+)%.%w+$")
  if not pid then return false end
  local path = base .. "/" .. name
  local attributes = lfs.symlinkattributes(path)
  if not attributes or attributes.mode ~= "directory" or attributes.uid ~= uid then return false end
  local running = process_name(pid)
  if not running then return true end
  return now - attributes.modification > tempdir.STALE_SECONDS and not running:match("^bkr")
end

-- Remove the leftovers of killed runs: { path, ... } of those removed.
function tempdir.sweep(prefix)
  local base = tempdir.base()
  local uid = fs.user()
  local removed, now = {}, os.time()
  local ok, iterator, state = pcall(lfs.dir, base)
  if not ok then return removed end
  for name in iterator, state do
    if stale(base, name, prefix, uid, now) then
      local path = base .. "/" .. name
      if fs.remove_tree(path) then
        io.stderr:write("bkr: removed ", path, ", left by an interrupted run\n")
        removed[#removed + 1] = path
      end
    end
  end
  return removed
end

-- A new private directory, after the sweep of earlier runs' leftovers, and its guard: a
-- to-be-closed value that removes it (and what is in it) when the caller's scope ends. An
-- interrupt raises once, wherever Lua code runs: between the directory's creation and the
-- caller's guard, or inside the guard's __close before it removes anything. So fs.temp_dir
-- writes the path into the guard from C before it returns, and an at-exit function (where
-- nothing is interrupted) removes what the guard could not.
function tempdir.private(prefix)
  tempdir.sweep(prefix)
  local guard = setmetatable({}, { __close = function(g)
    if g.path then
      fs.remove_tree(g.path)
      g.path = nil
    end
  end })
  bkr.at_exit(function()
    if guard.path then fs.remove_tree(guard.path) end
  end)
  local dir, err = fs.temp_dir(prefix, guard)
  if not dir then error(err, 0) end
  return dir, guard
end

return tempdir
