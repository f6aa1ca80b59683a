-- Restoring a config backup, all or nothing: where each file goes, checked before anything is
-- written, then every file staged beside its target and renamed into place, or on any
-- failure everything this run wrote removed. Used by `bkr config restore` (recipes/config.lua)
-- after lib/config_check.lua found the whole backup sound; docs/config-backup.md (restore).
local lfs = require "lfs"
local fs = require "bkr.fs"
local cli = require "lib.cli"
local repo = require "lib.repo"
local files = require "lib.config_files"
local check = require "lib.config_check"

local config_restore = {}

-- The mode of the directories a restore creates (docs/config-backup.md: ownership is not
-- recorded or restored).
local PRIVATE = tonumber("700", 8)

-- Where each file of the backup goes, checked before anything is written: TO/<original path>.
-- Below TO (the caller's own choice), every component that exists must be a real directory:
-- restore never writes through a symlink it did not create (`OUT/tmp -> /tmp/victim`). A target
-- that exists is refused without --overwrite, and even with it unless it is a regular file.
-- Returns { steps = { {file, target, replaces}, ... }, create = {directories, parents first} }
-- or stops the run (exit 1) with one line naming every offending path.
function config_restore.plan(manifest, to, overwrite)
  local plan, links, existing, seen = { steps = {}, create = {} }, {}, {}, {}
  local function note(list, item)
    if not seen[item] then list[#list + 1] = item end
    seen[item] = true
  end
  -- TO and its missing parents (TO's own components are the caller's: followed)
  local path = to:sub(1, 1) == "/" and "" or nil
  for part in to:gmatch("[^/]+") do
    path = path and (path .. "/" .. part) or part
    if not lfs.attributes(path, "mode") then note(plan.create, path) end
  end
  for _, file in ipairs(manifest.files) do
    local parts = {}
    for part in file.path:gmatch("[^/]+") do parts[#parts + 1] = part end
    local path, blocked = to, false
    for i = 1, #parts - 1 do
      path = path .. "/" .. parts[i]
      local mode = lfs.symlinkattributes(path, "mode")
      if mode == nil then
        note(plan.create, path)
      elseif mode ~= "directory" then
        note(links, string.format("%s is %s", path, check.what(mode)))
        blocked = true
        break
      end
    end
    local target = to .. file.path
    local mode = not blocked and lfs.symlinkattributes(target, "mode")
    if mode and not overwrite then
      existing[#existing + 1] = target
    elseif mode and mode ~= "file" then
      note(links, string.format("%s is %s, not a regular file", target, check.what(mode)))
    end
    plan.steps[#plan.steps + 1] = { file = file, target = target, replaces = mode and true or false }
  end
  if #links > 0 then
    cli.fail(cli.EXIT_FAILED, "config restore: %s: restore does not write through or over what it did not "
      .. "create; nothing was restored", table.concat(links, "; "))
  end
  if #existing > 0 then
    cli.fail(cli.EXIT_FAILED, "config restore: refusing to replace existing files (use --overwrite): %s; "
      .. "nothing was restored", table.concat(existing, ", "))
  end
  return plan
end

-- A name beside `target` for its staged copy: bkr's temporary prefix, so that a leftover of a
-- killed run is recognisably bkr's, a random part, so that it is new, and the file's number in
-- the plan, so that two long names cut to the same prefix stay apart.
local function staging_name(target, token, number)
  local directory, base = target:match("^(.*)/([^/]+)$")
  return string.format("%s/%s%s.restore-%s-%d", directory, repo.TEMPORARY_PREFIX, base:sub(1, 180), token,
    number)
end

-- Write every file of the plan under a staged name beside its target, check it, then rename
-- each into place. dir: the backup; key: its key (or nil); plain: the files check.backup opened
-- field by field ({ [entry] = original text }); the others are read again from the backup,
-- opened whole with the key when they were sealed whole. On any failure (no space, a stored
-- file that changed, an interruption) remove the staged files, the files it had put in place
-- that were new and the directories it created, and stop the run: the restore directory is as
-- it was, except for files already replaced by a failed rename in the last step (named in the
-- message).
function config_restore.apply(plan, dir, key, plain)
  local created, staged, placed = {}, {}, {}
  local token = require("lib.keys").random_hex(6)
  local ok, failure = pcall(function()
    for _, path in ipairs(plan.create) do
      -- lfs.mkdir, not fs.mkdirs: it fails on anything already there (a symlink that appeared
      -- since the plan), so every directory in `created` is one this run made
      local made, err = lfs.mkdir(path)
      if not made then error(path .. ": " .. tostring(err), 0) end
      created[#created + 1] = path
      made, err = fs.chmod(path, PRIVATE)
      if not made then error(err, 0) end
    end
    for number, step in ipairs(plan.steps) do
      if bkr.interrupted() then error("interrupted", 0) end
      local file, mode = step.file, tonumber(step.file.mode, 8)
      step.staged = staging_name(step.target, token, number)
      local done, err
      if plain[file] then
        done, err = fs.write_file(step.staged, plain[file], { mode = mode })
      else
        done, err = files.read_whole(dir .. "/" .. file.stored, {
          key = file.whole_file_encrypted and key or nil, target = step.staged, mode = mode })
        if done and done ~= file.sha256 then
          staged[#staged + 1] = step.staged
          cli.fail(cli.EXIT_INTEGRITY, "%s changed while restoring (SHA-256 mismatch)", file.stored)
        end
      end
      if not done then error(file.path .. ": " .. err, 0) end
      staged[#staged + 1] = step.staged
    end
    for _, step in ipairs(plan.steps) do
      if not step.replaces and lfs.symlinkattributes(step.target, "mode") then
        error(step.target .. " appeared while restoring", 0)
      end
      local moved, err = fs.rename(step.staged, step.target)
      if not moved then error(step.target .. ": " .. err, 0) end
      placed[#placed + 1] = step
    end
  end)
  if ok then return end

  local replaced = {}
  for i = #placed, 1, -1 do
    if placed[i].replaces then replaced[#replaced + 1] = placed[i].target else os.remove(placed[i].target) end
  end
  for _, path in ipairs(staged) do os.remove(path) end
  for i = #created, 1, -1 do os.remove(created[i]) end -- (rmdir: only if still empty)
  -- (a failure raised with cli.fail carries its exit code; any other error exits 1)
  local code = type(failure) == "table" and failure.exit_code or cli.EXIT_FAILED
  local message = cli.detail(failure)
  if #replaced > 0 then
    cli.fail(code, "config restore: %s; already replaced (the others were not): %s", message,
      table.concat(replaced, ", "))
  end
  cli.fail(code, "config restore: %s; nothing was restored", message)
end

return config_restore
