-- Reading a repository in object storage beyond what lib/remote.lua offers today: the objects
-- under a "directory" of the prefix, a small object by its name in the repository, and the
-- backups whose manifest is there but whose data is not. `bkr check --repo s3://...` needs
-- them (recipes/check.lua).
--
-- These belong in lib/remote.lua (one owner for the bucket's layout); they live here only
-- because that file had another owner when they were written. Move them there, and let
-- manifest_entry share remote.lua's describe().
--
--   remote_read.objects(store, relative_dir)  { {name, key, size, last_modified}, ... } of
--                                             PREFIX/relative_dir/NAME (direct children only);
--                                             or nil, message, kind
--   remote_read.get(store, relative, max)     the text of PREFIX/relative (at most max bytes);
--                                             or nil, message, kind
--   remote_read.manifests_without_data(store) entries (as remote.scan's) of the backups whose
--                                             manifest exists without their data object; or nil,
--                                             message, kind
local repo = require "lib.repo"
local remote = require "lib.remote"
local manifest_schema = require "lib.manifest"

local remote_read = {}

-- The key prefix of a directory of the repository: "PREFIX/dir/" (or "dir/" without a prefix,
-- or "PREFIX/" for the repository itself).
local function directory_key(store, relative_dir)
  if relative_dir == "" then return store.prefix == "" and "" or (store.prefix .. "/") end
  return remote.key(store, relative_dir) .. "/"
end

function remote_read.objects(store, relative_dir)
  local base = directory_key(store, relative_dir)
  local listed, err, kind = store.client:list(base)
  if not listed then return nil, err, kind end
  local objects = {}
  for _, object in ipairs(listed) do
    local name = object.key:sub(#base + 1)
    if name ~= "" and not name:find("/", 1, true) then
      objects[#objects + 1] = { name = name, key = object.key, size = object.size, last_modified = object.last_modified }
    end
  end
  return objects
end

function remote_read.get(store, relative, max)
  return store.client:get(remote.key(store, relative), { max = max })
end

-- A manifest larger than this is not one bkr wrote (lib/remote.lua reads manifests with the
-- same bound).
local MAX_MANIFEST_BYTES = 4 * 1024 * 1024

-- The entry of the backup TYPE/FILE known only by its manifest (its data object is missing):
-- regular = false, as lib/repo.lua describes a backup whose file is not a regular file.
local function manifest_entry(store, type_, file)
  local stamp, escaped, encrypted, storage = repo.match_backup(file)
  local relative = type_ .. "/" .. file
  local time, sequence = repo.parse_stamp(stamp)
  local path = remote.display(store, relative)
  local entry = {
    path = path, file = file, type = type_, stamp = stamp, time = time, sequence = sequence,
    database = repo.unescape_name(escaped), kind = "database", encrypted = encrypted, storage = storage,
    repo = store.url, sidecar = path .. ".sha256", manifest_path = path .. ".json", relative = relative,
    key = remote.key(store, relative), regular = false, remote = true, store = store,
  }
  local text, err, kind = remote_read.get(store, relative .. ".json", MAX_MANIFEST_BYTES)
  if not text then
    entry.manifest_error, entry.manifest_kind = string.format("unreadable manifest %s: %s", entry.manifest_path,
      err), kind
    return entry
  end
  local m, merr, mkind = manifest_schema.parse(text, entry.manifest_path)
  if m then m, merr, mkind = repo.manifest_matches(entry, m) end
  entry.manifest, entry.manifest_error, entry.manifest_kind = m, merr, mkind
  return entry
end

function remote_read.manifests_without_data(store)
  local base = directory_key(store, "")
  local listed, err, kind = store.client:list(base)
  if not listed then return nil, err, kind end
  local present = {}
  for _, object in ipairs(listed) do present[object.key:sub(#base + 1)] = true end
  local entries = {}
  for relative in pairs(present) do
    local type_, stored = relative:match("^([^/]+)/([^/]+)%.json$")
    if type_ and repo.valid_type(type_) and repo.match_backup(stored) and not present[type_ .. "/" .. stored] then
      entries[#entries + 1] = manifest_entry(store, type_, stored)
    end
  end
  table.sort(entries, repo.newer)
  return entries
end

return remote_read
