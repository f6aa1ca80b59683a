-- The directory the schedule's files go into: what is there, writing, removing. One rule:
-- bkr overwrites or removes only a regular file that carries its marker line
-- (schedule.MARKER, near the top), and never writes through a symlink.
--
--   target.survey(dir, files)            each planned file: its path and what is there now
--   target.install(dir, files, opts)     write what changed; nothing at all when one is in the way
--   target.remove(dir, files)            remove the planned files bkr wrote; report the others
--   target.strays(dir, files, same_kind) files bkr wrote that this schedule does not name
local lfs = require "lfs"
local fs = require "bkr.fs"
local schedule = require "lib.schedule"

local target = {}

-- The marker counts only near the top, where bkr writes it: not a file that quotes it.
local MARKER_WITHIN = 512
-- Generated files are small; anything larger at one of their names is not bkr's.
local MAX_BYTES = 1024 * 1024

-- What is at path: "absent", "symlink", "not_regular", "ours" (with the marker), "foreign",
-- or "unreadable"; the content when it was read; the message when it could not be.
function target.state(path)
  local mode = lfs.symlinkattributes(path, "mode")
  if not mode then return "absent" end
  if mode == "link" then return "symlink" end
  if mode ~= "file" then return "not_regular" end
  local data, err, kind = fs.read_file(path, { max = MAX_BYTES })
  if not data then
    if kind == "too_large" then return "foreign" end
    if kind == "missing" then return "absent" end
    if kind == "not_regular" then return "symlink" end
    return "unreadable", nil, err
  end
  if data:sub(1, MARKER_WITHIN):find(schedule.MARKER, 1, true) then return "ours", data end
  return "foreign", data
end

function target.survey(dir, files)
  local entries = {}
  for i, file in ipairs(files) do
    local path = dir .. "/" .. file.name
    local state, current, err = target.state(path)
    entries[i] = { file = file, path = path, state = state, same = current == file.content, error = err }
  end
  return entries
end

-- Why a file is in the way, in an admin's words (nil when it is not).
local function obstacle(entry)
  if entry.state == "symlink" then
    return entry.path .. " is a symlink: bkr never writes through one; remove it or choose another --dir"
  elseif entry.state == "not_regular" then
    return entry.path .. " is not a regular file; move it away or choose another --dir"
  elseif entry.state == "foreign" then
    return entry.path .. " exists and was not written by bkr (no '" .. schedule.MARKER
      .. "' line); move it away or choose another --dir"
  elseif entry.state == "unreadable" then
    return tostring(entry.error)
  end
end

-- Why remove leaves a file at a planned name where it is.
local function left_alone(entry)
  local why = {
    symlink = "is a symlink, not a file bkr wrote",
    not_regular = "is not a regular file",
    foreign = "was not written by bkr (no '" .. schedule.MARKER .. "' line)",
  }
  if entry.state == "unreadable" then return tostring(entry.error) .. ": left alone" end
  return entry.path .. " " .. why[entry.state] .. ": left alone"
end

-- Write every file that is new or changed (an unchanged file keeps its bytes and mtime).
-- Nothing is written when any planned name is taken by something bkr did not write.
-- opts.rename: replace by rename also where no file exists yet (file systems without hard
-- links, such as Windows drives under WSL). Returns { written = {paths}, unchanged = {paths} },
-- or nil and the list of problems.
function target.install(dir, files, opts)
  local entries = target.survey(dir, files)
  local problems = {}
  for _, entry in ipairs(entries) do problems[#problems + 1] = obstacle(entry) end
  if #problems > 0 then return nil, problems end

  -- the directory itself may be new, not its parent: a missing /mnt/c is no drive to write on
  if lfs.attributes(dir, "mode") == nil then
    local ok, err = lfs.mkdir(dir)
    if not ok then return nil, { dir .. ": cannot create it: " .. tostring(err) } end
  end
  local result = { written = {}, unchanged = {} }
  for _, entry in ipairs(entries) do
    if entry.state == "ours" and entry.same then
      result.unchanged[#result.unchanged + 1] = entry.path
    else
      local written, werr = fs.write_file(entry.path, entry.file.content, { mode = entry.file.mode,
        overwrite = entry.state == "ours" or (opts and opts.rename) or false })
      if not written then
        problems[#problems + 1] = werr
        return nil, problems, result
      end
      result.written[#result.written + 1] = entry.path
    end
  end
  return result
end

-- The planned files that `remove` would delete (bkr's own, at the names this schedule uses).
function target.removable(dir, files)
  local names = {}
  for _, entry in ipairs(target.survey(dir, files)) do
    if entry.state == "ours" then names[entry.file.name] = true end
  end
  return names
end

-- Remove each planned file that bkr wrote; leave anything else and say why.
-- Returns { removed = {paths}, left = {messages} }, and the failures.
function target.remove(dir, files)
  local result, failures = { removed = {}, left = {} }, {}
  for _, entry in ipairs(target.survey(dir, files)) do
    if entry.state == "ours" then
      local ok, err = os.remove(entry.path)
      if ok then
        result.removed[#result.removed + 1] = entry.path
      else
        failures[#failures + 1] = err
      end
    elseif entry.state ~= "absent" then
      result.left[#result.left + 1] = left_alone(entry)
    end
  end
  return result, failures
end

-- Files of the platform's kind (same_kind(name)) that carry bkr's marker but that this
-- schedule does not name: a job renamed or dropped since, or another configuration's.
-- Reported, never removed: bkr cannot tell which schedule wrote them.
function target.strays(dir, files, same_kind)
  local planned, found = {}, {}
  for _, file in ipairs(files) do planned[file.name] = true end
  if lfs.attributes(dir, "mode") ~= "directory" then return found end
  for name in lfs.dir(dir) do
    if not planned[name] and same_kind(name) and target.state(dir .. "/" .. name) == "ours" then
      found[#found + 1] = dir .. "/" .. name
    end
  end
  table.sort(found)
  return found
end

return target
