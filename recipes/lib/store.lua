-- A repository that backups are read from and written to: a local directory (lib/repo.lua)
-- or a prefix in S3-compatible object storage (lib/remote.lua), with the same few steps, so
-- that `bkr backup` and `bkr sync` say what they do once, whichever kind it is.
--
--   store.open(cfg, location, opts)   opts.write: lock it for this run (and, local, create
--                                     its type directories; remote, abort the uploads a killed
--                                     run left open); opts.create: make a missing local
--                                     directory (--create-repo)
--   s.name, s.remote, s.dir (local), s.s3 (remote: lib/remote.lua's store)
--   s.path(relative)                  how a file of it is named in messages and logs
--   s.scan(filter)                    entries as repo.scan gives them, newest first
--   s.expected(entry)                 the SHA-256 its sidecar and manifest agree on
--   s.source(entry)                   a stream source of a backup's bytes
--   s.has(relative)                   whether the backup's manifest is there
--   s.complete(relative)              whether its data and sidecar are there too
--   s.read_manifest(relative)
--   s.sink(relative)                  a stream sink that lands under the name only whole
--   s.occupied(relative, expected)    local only: what already has the name (lib/sync)
--   s.finish(relative, digest, manifest)  the sidecar, then the manifest: the backup counts
--   s.discard(relative)               what this run wrote of a backup that failed: the data,
--                                     the sidecar and the manifest
--   s.highest_sequence(subdir, prefixes, second)   for repo.new_stamp
--   s.require_backups_of(names)       a --db without backups there is exit 2
--   s.databases_with_backups(filter)
-- A missing local directory is exit 2 (repo.open), a bad URL or no credentials too
-- (remote.open); a bucket that cannot be listed stops the run (exit 1: it says nothing about
-- the backups). s.name is the directory or the URL: lib/logging.lua writes no log for a URL,
-- so no command ever makes a local directory "s3:".
local cli = require "lib.cli"
local repo = require "lib.repo"
local remote = require "lib.remote"
local json = require "lib.json"
local stream = require "bkr.stream"
local hash = require "bkr.hash"
local lfs = require "lfs"

local store = {}

local function local_store(dir, opts)
  dir = repo.open(dir, { create = opts.create })
  local s = { name = dir, dir = dir, remote = false }
  function s.path(relative) return dir .. "/" .. relative end
  function s.scan(filter) return repo.scan(dir, filter) end
  function s.expected(entry) return repo.check_sidecars(entry) end
  function s.source(entry) return assert(stream.from_file(entry.path)) end
  function s.has(relative) return lfs.symlinkattributes(dir .. "/" .. relative .. ".json", "mode") ~= nil end
  function s.complete(relative)
    return lfs.symlinkattributes(dir .. "/" .. relative, "mode") == "file"
      and lfs.symlinkattributes(dir .. "/" .. relative .. ".sha256", "mode") == "file"
  end
  function s.read_manifest(relative) return repo.read_manifest(dir .. "/" .. relative .. ".json") end
  function s.sink(relative)
    local path = dir .. "/" .. relative
    return stream.to_file(path, repo.file_options(path))
  end
  -- What already has the backup's name (there is no manifest yet): nothing (nil); the same
  -- bytes, from a copy cut short before its manifest ("same": only the sidecar and manifest
  -- are written); or why it is left alone. bkr replaces nothing it cannot prove its own.
  function s.occupied(relative, expected)
    local path = dir .. "/" .. relative
    local sidecar = lfs.symlinkattributes(path .. ".sha256", "mode")
    if sidecar and sidecar ~= "file" then return "its sidecar's name is taken by something else (a symlink?)" end
    local mode = lfs.symlinkattributes(path, "mode")
    if mode == nil then return nil end
    if mode ~= "file" then return "its name is taken by something that is not a regular file (a symlink?)" end
    local digest = hash.sha256_file(path)
    if digest == expected then return "same" end
    return "its name is taken by another file (a different SHA-256)"
  end
  function s.finish(relative, digest, manifest)
    local path = dir .. "/" .. relative
    local ok, err, kind = repo.write_sidecar(path, digest)
    if ok then ok, err, kind = repo.write_manifest(path, manifest) end
    return ok, err, kind
  end
  function s.discard(relative)
    for _, suffix in ipairs({ "", ".sha256", ".json" }) do os.remove(dir .. "/" .. relative .. suffix) end
  end
  function s.highest_sequence(subdir, prefixes, second)
    return repo.highest_sequence(dir .. "/" .. subdir, prefixes, second)
  end
  if opts.write then
    s.lock = repo.lock(dir)
    repo.ensure(dir)
  end
  return s
end

local function remote_store(cfg, url, opts)
  local r = remote.open(cfg, url)
  local s = { name = r.url, s3 = r, remote = true }
  local present -- the keys there, listed once
  local function fail_listing(err, kind)
    cli.fail(cli.EXIT_FAILED, "cannot list %s: %s (%s)", r.url, cli.printable(tostring(err)), tostring(kind))
  end
  function s.path(relative) return remote.display(r, relative) end
  function s.scan(filter)
    local entries, err, kind = remote.scan(r, filter)
    if not entries then fail_listing(err, kind) end
    return entries
  end
  function s.expected(entry) return remote.check_sidecars(r, entry) end
  function s.source(entry) return remote.source(r, entry) end
  local function listed(key)
    if not present then
      present = {}
      local objects, err, kind = r.client:list(r.prefix == "" and "" or (r.prefix .. "/"))
      if not objects then fail_listing(err, kind) end
      for _, object in ipairs(objects) do present[object.key] = true end
    end
    return present[key] == true
  end
  function s.has(relative) return listed(remote.key(r, relative .. ".json")) end
  function s.complete(relative)
    return listed(remote.key(r, relative)) and listed(remote.key(r, relative .. ".sha256"))
  end
  function s.read_manifest(relative)
    local text, err, kind = r.client:get(remote.key(r, relative .. ".json"), { max = 4 * 1024 * 1024 })
    if not text then return nil, err, kind end
    return require("lib.manifest").parse(text, remote.display(r, relative .. ".json"))
  end
  function s.sink(relative) return remote.sink(r, relative) end
  function s.finish(relative, digest, manifest)
    local ok, err, kind = remote.put(r, relative .. ".sha256", repo.sums_line(digest, relative:match("[^/]+$")))
    if ok then ok, err, kind = remote.put(r, relative .. ".json", json.encode(manifest, true) .. "\n") end
    return ok, err, kind
  end
  -- The manifest first: a removal cut short leaves an incomplete backup, never one that looks
  -- whole. After SIGTERM requests are refused as interrupted, so the removal goes again from
  -- an at-exit function (an upload whose completion crossed the signal is under its key).
  local function remove(relative)
    for _, suffix in ipairs({ ".json", "", ".sha256" }) do remote.delete(r, relative .. suffix) end
  end
  function s.discard(relative)
    remove(relative)
    if bkr.interrupted() then bkr.at_exit(function() remove(relative) end) end
  end
  function s.highest_sequence(subdir, prefixes, second)
    local objects, err, kind = remote.objects(r, subdir)
    if not objects then fail_listing(err, kind) end
    local names = {}
    for _, object in ipairs(objects) do names[#names + 1] = object.name end
    return repo.highest_sequence_in(names, prefixes, second)
  end
  if opts.write then
    s.lock = remote.lock(r)
    local aborted, failures = remote.abort_stale_uploads(r)
    for _, key in ipairs(aborted) do
      io.stderr:write("bkr: aborted the open upload of s3://", r.bucket, "/", cli.printable(key),
        ", left by an interrupted run\n")
      repo.log(r.url, { event = "upload aborted", file = key, result = "removed" })
    end
    for _, message in ipairs(failures) do io.stderr:write("bkr: warning: ", cli.printable(message), "\n") end
  end
  return s
end

function store.open(cfg, location, opts)
  opts = opts or {}
  local s
  if remote.is_url(location) then s = remote_store(cfg, location, opts) else s = local_store(location, opts) end
  local function scan(_, filter) return s.scan(filter) end
  function s.require_backups_of(names) repo.require_backups_of(s.name, names, scan) end
  function s.databases_with_backups(filter) return repo.databases_with_backups(s.name, filter, scan) end
  return s
end

return store
