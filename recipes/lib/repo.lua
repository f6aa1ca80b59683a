-- The backup repository: where files go, how they are named, how they are found again.
--
--   REPO/.lock                                   held by a run that writes or rotates
--   REPO/bkr.log                                 one JSON line per database per run
--   REPO/<type>/backup_YYYYMMDD_HHMMSS_<db>.sql.gz        the dump (type: daily|weekly|monthly);
--       .sql.zst with `compression: zstd`, .dump (pg_dump's archive) with `format: custom`:
--       lib/codec.lua owns the suffixes, and every one of them is found
--   REPO/<type>/backup_..._<db>.sql.gz.sha256              sidecar for `sha256sum -c`
--   REPO/<type>/backup_..._<db>.sql.gz.json                manifest (docs/manifest.md)
--   REPO/<type>/globals_YYYYMMDD_HHMMSS.sql.gz (+ .sha256, .json)   roles and tablespaces
--   REPO/<type>/backup_..._<db>.sql.gz.enc, globals_....sql.gz.enc   the same, encrypted
--       (docs/format.md); sidecars are named after the stored file: FILE.enc.sha256, FILE.enc.json
--
-- A repository is an existing directory (bkr init or backup --create-repo makes one; no marker
-- file): every command but those two refuses a path where there is none (repo.open), so a
-- typo is an error, not a new empty repository. When bkr runs as root on a repository that
-- belongs to another user, everything it creates there is given to that user (repo.owner_for).
--
-- Timestamps are UTC. A database name unsafe in a file name is escaped reversibly (%XX).
-- A run's stamp is its UTC second, YYYYMMDD_HHMMSS; when an earlier run of the same second
-- already used that stamp in the directory, the run takes YYYYMMDD_HHMMSS-2, -3, ... instead
-- (repo.new_stamp), so runs never collide on names and stay ordered by (time, sequence).
local lfs = require "lfs"
local fs = require "bkr.fs"
local cli = require "lib.cli"
local json = require "lib.json"
local manifest_schema = require "lib.manifest"
local codec = require "lib.codec"

local repo = {}

repo.TYPES = { "daily", "weekly", "monthly" }

-- The last line pg_dump (pg_dumpall) writes: a dump without it was cut short, whatever its
-- exit status. backup refuses to keep such a dump and verify fails it.
-- COMPLETION_TEXT is the line as plain text (stream.tail{expect = ...}), COMPLETION_MARKERS
-- the same as Lua patterns (string.find).
repo.COMPLETION_TEXT = {
  database = "\n-- PostgreSQL database dump complete\n",
  globals = "\n-- PostgreSQL database cluster dump complete\n",
}
repo.COMPLETION_MARKERS = {}
for kind, text in pairs(repo.COMPLETION_TEXT) do
  repo.COMPLETION_MARKERS[kind] = text:gsub("%p", "%%%0")
end
-- How many of a dump's last bytes hold its completion marker: pg_dump 15.14 and later write a
-- \unrestrict line after it.
repo.COMPLETION_TAIL_BYTES = 1024

-- The kinds of errors (runtime/error.h) that are findings about a backup's bytes, when they
-- come from reading it: the backup is damaged. Every other kind (io, no_space, permission,
-- child_failed, interrupted, ...) is the environment's and says nothing about the backup.
repo.DAMAGE_KINDS = { corrupt = true, truncated = true, not_regular = true, auth = true }
-- The stamp in a name: the UTC second, then an optional "-N" (N >= 2) sequence.
local STAMP = "(%d%d%d%d%d%d%d%d_%d%d%d%d%d%d%-?%d*)"

-- A name's Lua pattern with one storage's suffix (lib/codec.lua owns the suffixes), plain
-- and with ".enc" appended for an encrypted backup.
local function suffix_pattern(storage, encrypted)
  return (storage.suffix:gsub("%p", "%%%0")) .. (encrypted and "%.enc" or "") .. "$"
end

-- name -> stamp[, escaped], encrypted, storage over every storage and both encryptions; nil.
local function match_name(file, head, captures_db)
  for _, storage in ipairs(codec.STORAGES) do
    for _, encrypted in ipairs({ false, true }) do
      local pattern = head .. suffix_pattern(storage, encrypted)
      if captures_db then
        local stamp, escaped = file:match(pattern)
        if stamp then return stamp, escaped, encrypted, storage end
      else
        local stamp = file:match(pattern)
        if stamp then return stamp, nil, encrypted, storage end
      end
    end
  end
  return nil
end

-- The UTC second and the sequence (1 when there is none) of a stamp in a name; nil for
-- anything else ("-1", "-02", "-" are not written by bkr).
function repo.parse_stamp(token)
  local second, suffix = token:match("^(%d%d%d%d%d%d%d%d_%d%d%d%d%d%d)(.*)$")
  if not second then return nil end
  local epoch = repo.stamp_epoch(second)
  if not epoch then return nil end
  if suffix == "" then return epoch, 1 end
  local n = suffix:match("^%-([1-9]%d*)$")
  if not n or tonumber(n) < 2 then return nil end
  return epoch, tonumber(n)
end

-- A database backup's file name: stamp, escaped database name, encrypted (boolean), storage
-- (lib/codec.lua: how it is stored); or nil.
function repo.match_backup(file)
  local stamp, escaped, encrypted, storage = match_name(file, "^backup_" .. STAMP .. "_(.+)", true)
  if stamp and repo.parse_stamp(stamp) then return stamp, escaped, encrypted, storage end
  return nil
end

-- A globals file's name: stamp, encrypted (boolean), storage; or nil.
function repo.match_globals(file)
  local stamp, _, encrypted, storage = match_name(file, "^globals_" .. STAMP, false)
  if stamp and repo.parse_stamp(stamp) then return stamp, encrypted, storage end
  return nil
end

function repo.valid_type(t)
  for _, known in ipairs(repo.TYPES) do
    if t == known then return true end
  end
  return false
end

-- ------------------------------------------------------------------ names

-- Letters, digits, '_', '-' and '.' (not leading) stay; everything else becomes %XX.
function repo.escape_name(name)
  local escaped = name:gsub("[^%w_%-%.]", function(c) return string.format("%%%02X", c:byte()) end)
  return (escaped:gsub("^%.", "%%2E"))
end

function repo.unescape_name(escaped)
  return (escaped:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

function repo.stamp(epoch)
  return os.date("!%Y%m%d_%H%M%S", epoch)
end

-- The stamp for a new run at `epoch`: YYYYMMDD_HHMMSS, or, when runs of that second exist
-- already, one more than the highest sequence they used (never a lower free one: a new run
-- must sort after every earlier one, or --latest and rotation would take it for older).
-- highest(second) returns that sequence, 0 when none. The caller holds the lock that keeps
-- the answer true until it has written its files.
function repo.new_stamp(epoch, highest)
  local second = repo.stamp(epoch)
  local used = highest(second)
  if used == 0 then return second end
  return second .. "-" .. (used + 1)
end

-- The highest sequence of `second` among `names` (a list) that start with one of the
-- prefixes ("backup_", "globals_", "config_backup_", "drill_"): 1 for a plain stamp, N for
-- "-N", 0 when no name has that second.
function repo.highest_sequence_in(names, prefixes, second)
  local highest = 0
  for _, file in ipairs(names) do
    for _, prefix in ipairs(prefixes) do
      local head = prefix .. second
      if file:sub(1, #head) == head then
        local rest = file:sub(#head + 1)
        local n = rest:match("^%-(%d+)") or (rest:match("^[^%d%-]") or rest == "") and "1"
        if n and tonumber(n) > highest then highest = tonumber(n) end
      end
    end
  end
  return highest
end

-- The same among the names in the directory `dir`.
function repo.highest_sequence(dir, prefixes, second)
  if lfs.symlinkattributes(dir, "mode") ~= "directory" then return 0 end
  local ok, _, kind = fs.access(dir, "rx")
  if not ok and kind == "permission" then repo.permission_failure(dir) end
  local names = {}
  for file in lfs.dir(dir) do names[#names + 1] = file end
  return repo.highest_sequence_in(names, prefixes, second)
end

local DAYS_IN_MONTH = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function days_in_month(y, m)
  if m == 2 and (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then return 29 end
  return DAYS_IN_MONTH[m]
end

-- Seconds since the epoch for a UTC stamp YYYYMMDD_HHMMSS (days-from-civil, no local time);
-- nil for anything else, impossible dates and times included (2026-02-30, 25:61).
function repo.stamp_epoch(stamp)
  local y, m, d, H, M, S = stamp:match("^(%d%d%d%d)(%d%d)(%d%d)_(%d%d)(%d%d)(%d%d)$")
  if not y then return nil end
  y, m, d, H, M, S = tonumber(y), tonumber(m), tonumber(d), tonumber(H), tonumber(M), tonumber(S)
  if m < 1 or m > 12 or d < 1 or d > days_in_month(y, m) or H > 23 or M > 59 or S > 59 then return nil end
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m > 2 and m - 3 or m + 9) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + H * 3600 + M * 60 + S
end

function repo.iso_time(epoch)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(epoch))
end

-- stamp: the run's (repo.new_stamp); encrypted: true for an encrypted backup (".enc" appended);
-- storage: how it is stored (lib/codec.lua; default gzip, ".sql.gz").
function repo.backup_file(type_, stamp, db, encrypted, storage)
  storage = storage or codec.named("gzip")
  return string.format("%s/backup_%s_%s%s%s", type_, stamp, repo.escape_name(db), storage.suffix,
    encrypted and ".enc" or "")
end

-- The globals file of the run with this stamp, as repo.backup_file.
function repo.globals_file(type_, stamp, encrypted, storage)
  storage = storage or codec.named("gzip")
  return string.format("%s/globals_%s%s%s", type_, stamp, storage.suffix, encrypted and ".enc" or "")
end

-- ------------------------------------------------------------------ opening

-- The repositories this run works on: dir -> the owner ({uid, gid, name}) to give new files
-- to, or false when they keep bkr's own user.
local opened = {}

local function strip_slashes(dir)
  return (dir:gsub("(.)/+$", "%1"))
end

-- When bkr runs as root on a repository directory owned by another user, every file and
-- directory it creates there goes to that owner (and the directory's group), so the user
-- who operates bkr (postgres) can read them later. Said once per repository.
local function adopt(dir)
  if opened[dir] ~= nil then return opened[dir] or nil end
  opened[dir] = false
  local euid = fs.user()
  local uid, gid, name = fs.owner(dir)
  if euid == 0 and uid and uid ~= 0 then
    name = name or tostring(uid)
    opened[dir] = { uid = uid, gid = gid, name = name }
    io.stderr:write(string.format("bkr: running as root on a repository owned by %s: files will be owned by %s\n",
      name, name))
  end
  return opened[dir] or nil
end

-- The repository `dir` for a command that uses one: it must exist (a path that does not is a
-- usage error, exit 2, with the command that creates one) and be a directory bkr may enter
-- and read (else exit 1, cli.permission_failure). Returns dir without trailing slashes.
-- opts.create: make it first when it is missing (bkr backup --create-repo), mode 0750,
-- owned by the invoking user.
function repo.open(dir, opts)
  opts = opts or {}
  dir = strip_slashes(dir)
  local uid, err, kind = fs.owner(dir)
  if not uid and kind == "missing" and opts.create then
    local ok, merr, mkind = fs.mkdirs(dir, tonumber("750", 8))
    if not ok then
      -- (root makes it, for the user that will use it: chown of a path that is not there fixes nothing)
      if mkind == "permission" then
        cli.permission_failure(dir, { verb = "create", fix = "sudo bkr init --repo " .. dir .. " --owner USER" })
      end
      cli.fail(cli.EXIT_FAILED, "cannot create the repository %s: %s", dir, cli.failure(merr, mkind, dir))
    end
    cli.say("created the repository %s", dir)
    uid, err, kind = fs.owner(dir)
  end
  if not uid then
    if kind == "missing" then
      cli.usage_error("no repository at %s (create one with: bkr init --repo %s)", dir, dir)
    end
    if kind == "permission" then cli.permission_failure(dir) end
    cli.fail(cli.EXIT_FAILED, "repository %s: %s", dir, cli.failure(err, kind, dir))
  end
  if lfs.attributes(dir, "mode") ~= "directory" then
    cli.usage_error("repository %s is not a directory", dir)
  end
  local ok, _, akind = fs.access(dir, "rx")
  if not ok and akind == "permission" then cli.permission_failure(dir, { fix_tree = dir }) end
  adopt(dir)
  return dir
end

-- The owner ({uid, gid}, as the writers' opts.owner) a new file or directory at `path` gets:
-- that of the repository it is in, when bkr runs as root on another user's repository; else
-- nil (bkr's own user, as usual).
function repo.owner_for(path)
  for dir, owner in pairs(opened) do
    if owner and path:sub(1, #dir + 1) == dir .. "/" then return { owner.uid, owner.gid } end
  end
  return nil
end

-- Writer options (fs.write_file, stream.to_file, fs.mkdirs) for `path`: opts with the owner
-- repo.owner_for gives.
function repo.file_options(path, opts)
  opts = opts or {}
  opts.owner = repo.owner_for(path)
  return opts
end

-- The repository a file in it belongs to (the fix of a permission message gives it all back
-- to bkr's user at once), or nil.
local function repository_of(path)
  for dir in pairs(opened) do
    if path:sub(1, #dir + 1) == dir .. "/" then return dir end
  end
  return nil
end

-- Stop the run, exit 1: bkr may not read (or write: verb) `path` in a repository.
function repo.permission_failure(path, verb)
  cli.permission_failure(path, { verb = verb, fix_tree = repository_of(path) })
end

-- The message of repo.permission_failure, for a listing that goes on.
function repo.permission_message(path)
  return cli.permission_message(path, { fix_tree = repository_of(path) })
end

-- ------------------------------------------------------------------ scanning

local function exists(path)
  return lfs.attributes(path, "mode") ~= nil
end

-- A backup's manifest, read as a regular file and checked against its schema (lib/manifest.lua);
-- or nil, the reason, a kind ("missing", "permission", "not_regular", "corrupt", ...).
function repo.read_manifest(path)
  local text, err, kind = fs.read_file(path)
  if not text then
    if kind == "missing" then return nil, "missing manifest " .. path, kind end
    return nil, string.format("unreadable manifest %s: %s", path, cli.REASONS[kind] or err), kind
  end
  return manifest_schema.parse(text, path)
end

-- The manifest of `entry`, when it is about that backup: the same kind and database. A
-- renamed copy (verify PATH) keeps its manifest's file name, so the name is not compared.
function repo.load_manifest(entry)
  local m, err, kind = repo.read_manifest(entry.manifest_path)
  if not m then return nil, err, kind end
  return repo.manifest_matches(entry, m)
end

-- m, when the manifest (already valid by its schema) describes `entry`; or nil, why, "corrupt".
-- Also for a repository in object storage (lib/remote.lua).
function repo.manifest_matches(entry, m)
  if m.kind ~= entry.kind then
    return nil, string.format("%s: the manifest describes a %s backup, not a %s one", entry.manifest_path,
      m.kind, entry.kind), "corrupt"
  end
  if entry.kind == "database" and entry.database and m.database ~= entry.database then
    return nil, string.format("%s: the manifest is of another database", entry.manifest_path), "corrupt"
  end
  -- The name says how the file is stored; the manifest must say the same (a .sql.zst whose
  -- manifest says gzip was renamed or edited).
  local storage = entry.file and codec.by_suffix(entry.file)
  local algorithm = type(m.compression) == "table" and m.compression.algorithm or "gzip"
  if storage and not entry.original_file and ((storage.algorithm and storage.algorithm ~= algorithm)
      or storage.dump_format ~= (m.dump_format or "plain")) then
    local described = (m.dump_format or "plain") == "custom" and "custom-format" or cli.printable(algorithm)
    return nil, string.format("%s: the manifest describes a %s backup, the file name a %s one", entry.manifest_path,
      described, storage.name == "custom" and "custom-format" or storage.name), "corrupt"
  end
  -- In a repository the manifest names its own file and type; a copy elsewhere keeps the
  -- original's (entry.original_file), so only there may they differ.
  if not entry.original_file and (m.file ~= entry.file or (repo.valid_type(entry.type) and m.type ~= entry.type)) then
    return nil, string.format("%s: the manifest describes another file (%s/%s)", entry.manifest_path,
      cli.printable(m.type), cli.printable(m.file)), "corrupt"
  end
  return m
end

-- The first of a backup's files (itself, its sidecar, its manifest) that bkr may not read,
-- or nil. Such a backup is unreadable, not damaged: a permission problem (exit 1).
function repo.unreadable_file(entry)
  for _, path in ipairs({ entry.path, entry.sidecar, entry.manifest_path }) do
    if lfs.symlinkattributes(path, "mode") == "file" then
      local ok, _, kind = fs.access(path, "r")
      if not ok and kind == "permission" then return path end
    elseif lfs.symlinkattributes(path, "mode") == nil then
      -- not even its attributes can be read when the directory may not be entered
      local ok, _, kind = fs.owner(path)
      if not ok and kind == "permission" then return path end
    end
  end
  return nil
end

-- Every backup that is to be read must be readable: else the run stops (exit 1) naming the
-- file, its owner and mode, bkr's user and the fix.
function repo.require_readable(entry)
  local path = entry.unreadable or repo.unreadable_file(entry)
  if path then repo.permission_failure(path) end
end

-- One backup (or globals) file with what is known about it from its sidecars.
local function describe(dir, type_, file, stamp, db, kind, encrypted, storage)
  local path = dir .. "/" .. type_ .. "/" .. file
  local time, sequence = repo.parse_stamp(stamp)
  local entry = {
    path = path, file = file, type = type_, stamp = stamp, time = time, sequence = sequence,
    database = db, kind = kind, encrypted = encrypted, storage = storage, repo = dir,
    sidecar = path .. ".sha256", manifest_path = path .. ".json",
    -- a symlink, FIFO or directory with a backup's name is not a backup: it is damaged
    regular = lfs.symlinkattributes(path, "mode") == "file",
  }
  entry.stored_bytes = entry.regular and lfs.symlinkattributes(path, "size") or nil
  entry.has_sidecar = exists(entry.sidecar)
  entry.manifest, entry.manifest_error, entry.manifest_kind = repo.load_manifest(entry)
  entry.unreadable = repo.unreadable_file(entry)
  return entry
end

-- Newest first: by time, then by sequence within one second, then by path.
function repo.newer(a, b)
  if a.time ~= b.time then return a.time > b.time end
  if a.sequence ~= b.sequence then return a.sequence > b.sequence end
  return a.path < b.path
end

-- REPO/<type> when it is a real directory; nil when it is missing, or a symlink (which would
-- let rotation remove, and backups write, outside the repository: it is warned about once).
local warned_symlinks = {}
function repo.type_dir(dir, type_)
  local subdir = dir .. "/" .. type_
  local mode = lfs.symlinkattributes(subdir, "mode")
  if mode == "directory" then
    -- a directory bkr may not list is a permission problem (exit 1), never "no backups"
    local ok, _, kind = fs.access(subdir, "rx")
    if not ok and kind == "permission" then repo.permission_failure(subdir) end
    return subdir
  end
  if mode == nil then
    local ok, _, kind = fs.owner(subdir)
    if not ok and kind == "permission" then repo.permission_failure(subdir) end
  end
  if mode ~= nil and not warned_symlinks[subdir] then
    warned_symlinks[subdir] = true
    io.stderr:write("bkr: ", subdir, " is not a real directory (a symlink?): left alone\n")
  end
  return nil
end

-- The backup or globals file REPO/<type>/<file> as a scan would describe it, or nil when
-- the name is not a bkr backup's.
function repo.entry(dir, type_, file)
  local stamp, escaped, encrypted, storage = repo.match_backup(file)
  if stamp then
    return describe(dir, type_, file, stamp, repo.unescape_name(escaped), "database", encrypted, storage)
  end
  stamp, encrypted, storage = repo.match_globals(file)
  if stamp then return describe(dir, type_, file, stamp, nil, "globals", encrypted, storage) end
  return nil
end

-- The globals file of the run with this stamp in REPO/<type>, however it is stored (a run's
-- globals are compressed as configured, whatever the format of its database dumps), as
-- repo.entry describes it; or nil and the name it would have with gzip.
function repo.globals_of(dir, type_, stamp, encrypted)
  for _, storage in ipairs(codec.STORAGES) do
    local file = repo.globals_file(type_, stamp, encrypted, storage):match("[^/]+$")
    if lfs.symlinkattributes(dir .. "/" .. type_ .. "/" .. file, "mode") then return repo.entry(dir, type_, file) end
  end
  return nil, repo.globals_file(type_, stamp, encrypted):match("[^/]+$")
end

-- The checks every reader of a backup makes before trusting its bytes: a regular file, a
-- readable sidecar naming it, a valid manifest, and the two agreeing on the SHA-256.
-- Returns the expected SHA-256, or nil, the reason and its kind.
-- read_sidecar: how to read the sidecar's text (for a repository in object storage,
-- lib/remote.lua); by default the local file, which must then be a regular file.
function repo.check_sidecars(entry, read_sidecar)
  if not read_sidecar then
    if not lfs.symlinkattributes(entry.path, "mode") then return nil, "missing: " .. entry.path, "missing" end
    if not entry.regular then
      return nil, "damaged: not a regular file (a symlink, FIFO, device or directory has the backup's name)",
        "not_regular"
    end
  end
  local expected, err, kind = repo.read_sidecar(entry, read_sidecar)
  if not expected then return nil, err, kind end
  if not entry.manifest then
    -- a manifest that is missing or invalid is damage; one that could not be read (a bucket
    -- that dropped the connection) keeps the reader's kind: the environment's
    local manifest_kind = entry.manifest_kind
    local damage = manifest_kind == nil or manifest_kind == "missing" or manifest_kind == "corrupt"
      or manifest_kind == "not_regular" or manifest_kind == "too_large"
    return nil, entry.manifest_error, damage and "corrupt" or manifest_kind
  end
  if entry.manifest.sha256 ~= expected then
    return nil, "manifest mismatch: sidecar and manifest disagree on the SHA-256", "corrupt"
  end
  return expected
end

-- A backup dated more than this beyond now (clock skew, a copied file, a forged name) is
-- "future-dated": flagged by list and verify, never the newest for --latest, rotation or
-- the drill, and never removed by rotation.
repo.FUTURE_TOLERANCE = 3600

-- By its name, or by when its manifest says it was taken.
function repo.is_future(entry, now)
  local limit = (now or os.time()) + repo.FUTURE_TOLERANCE
  if entry.time > limit then return true end
  local start = entry.manifest and entry.manifest.start_time
  local y, mo, d, h, mi, s = tostring(start):match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$")
  local taken = y and repo.stamp_epoch(y .. mo .. d .. "_" .. h .. mi .. s)
  return taken ~= nil and taken > limit
end

-- A scan's selection, one owner for a directory and a bucket (lib/remote.lua): a collector
-- that takes (type, file) names, makes an entry of each backup (and globals) file `filter`
-- asks for with describe(type_, file, stamp, db, kind, encrypted, storage), flags it future
-- or not, and keeps it unless it is future-dated and filter.future is not set. Its result
-- is the entries, newest first (repo.newer).
function repo.collector(filter, describe_entry)
  filter = filter or {}
  local wanted_db
  if filter.db then
    wanted_db = {}
    for _, name in ipairs(filter.db) do wanted_db[name] = true end
  end
  local entries, now = {}, os.time()
  local collector = {}
  function collector.add(type_, file)
    if filter.type and filter.type ~= type_ then return end
    local stamp, escaped, encrypted, storage = repo.match_backup(file)
    local entry
    if stamp then
      local db = repo.unescape_name(escaped)
      if not wanted_db or wanted_db[db] then
        entry = describe_entry(type_, file, stamp, db, "database", encrypted, storage)
      end
    elseif filter.globals then
      stamp, encrypted, storage = repo.match_globals(file)
      if stamp then entry = describe_entry(type_, file, stamp, nil, "globals", encrypted, storage) end
    end
    if entry then
      entry.future = repo.is_future(entry, now)
      if filter.future or not entry.future then entries[#entries + 1] = entry end
    end
  end
  function collector.result()
    table.sort(entries, repo.newer)
    return entries
  end
  return collector
end

-- Every backup in the repository, newest first (repo.newer). Future-dated ones are left out
-- unless filter.future (list and verify show them, flagged). filter: { db = {names} | nil, type = t | nil,
-- globals = true to include globals files }.
function repo.scan(dir, filter)
  local collect = repo.collector(filter, function(...) return describe(dir, ...) end)
  for _, type_ in ipairs(repo.TYPES) do
    local subdir = (not (filter and filter.type) or filter.type == type_) and repo.type_dir(dir, type_)
    if subdir then
      for file in lfs.dir(subdir) do collect.add(type_, file) end
    end
  end
  return collect.result()
end

-- The databases that have at least one backup in the repository (any type; future-dated
-- too, unless `filter`, repo.scan's, says otherwise), sorted. scan(dir, filter): how to list
-- it (default repo.scan; a repository in object storage gives its own).
function repo.databases_with_backups(dir, filter, scan)
  local seen, names = {}, {}
  for _, entry in ipairs((scan or repo.scan)(dir, filter or { future = true })) do
    if not seen[entry.database] then
      seen[entry.database] = true
      names[#names + 1] = entry.database
    end
  end
  table.sort(names)
  return names
end

-- A --db that matches no backup is a usage error (exit 2) naming the databases that have
-- some: a typo must not look like "nothing to do". scan: as for databases_with_backups.
function repo.require_backups_of(dir, names, scan)
  if not names then return end
  local have = repo.databases_with_backups(dir, nil, scan)
  local present = {}
  for _, name in ipairs(have) do present[name] = true end
  local missing = {}
  for _, name in ipairs(names) do
    if not present[name] then missing[#missing + 1] = cli.printable(name) end
  end
  if #missing == 0 then return end
  local shown = {}
  for i, name in ipairs(have) do shown[i] = cli.printable(name) end
  cli.usage_error("no backups of %s in %s; databases with backups: %s", table.concat(missing, ", "), dir,
    #shown > 0 and table.concat(shown, ", ") or "none")
end

-- The verdict of the last verify, from the manifest: "passed", "failed" or nil.
function repo.verified(entry)
  local v = entry.manifest and entry.manifest.verification
  return v and v.result or nil
end

-- ------------------------------------------------------------------ writing

-- REPO/name (drills, config), made when missing (mode, given to the repository's owner), and
-- a directory of its own: a symlink there would let whoever owns the repository send a root
-- run's files anywhere. Returns its path; stops the run (exit 1) otherwise.
function repo.real_subdir(dir, name, mode)
  local subdir = dir .. "/" .. name
  local ok, err, kind = fs.mkdirs(subdir, mode, repo.file_options(subdir))
  if not ok and kind == "permission" then repo.permission_failure(subdir, "create") end
  if not ok and lfs.symlinkattributes(subdir, "mode") ~= "link" then
    cli.fail(cli.EXIT_FAILED, "repository %s: %s", dir, err)
  end
  if lfs.symlinkattributes(subdir, "mode") ~= "directory" then
    cli.fail(cli.EXIT_FAILED, "repository %s: %s is not a directory of its own (a symlink?); bkr writes only in "
      .. "real directories inside the repository", dir, subdir)
  end
  return subdir
end

function repo.ensure(dir)
  for _, type_ in ipairs(repo.TYPES) do
    local subdir = dir .. "/" .. type_
    local ok, err, kind = fs.mkdirs(subdir, tonumber("750", 8), repo.file_options(subdir))
    if not ok and kind == "permission" then repo.permission_failure(subdir, "create") end
    if not ok then cli.fail(cli.EXIT_FAILED, "repository %s: %s", dir, err) end
    if not repo.type_dir(dir, type_) then
      cli.fail(cli.EXIT_FAILED, "repository %s: %s/%s is not a directory of its own (a symlink?); bkr keeps "
        .. "backups only in real directories inside the repository", dir, dir, type_)
    end
  end
end

-- Temporary files bkr's atomic writer (bindings/atomic_file.c) leaves when a run is killed
-- outright (SIGKILL, power loss): ".bkr-tmp.<name>.XXXXXX", a prefix nobody else uses. Also
-- the names of bkr before 0.2, ".backup_<stamp>_<db>.sql.gz[...].tmp.XXXXXX" and the same
-- for globals: specific enough that no one else's file matches.
repo.TEMPORARY_PREFIX = ".bkr-tmp."

-- A temporary name for `path` (REPO/<type>/NAME) that only this run uses: its directory,
-- the prefix, NAME (the run's stamp is in it), `label` and 12 random hex digits, so that no
-- one can plant a symlink or a directory at it beforehand. Rotation and the next lock remove it.
function repo.temporary_path(path, label)
  local dir, name = path:match("^(.*)/([^/]+)$")
  local suffix = require("lib.keys").random_hex(6)
  return dir .. "/" .. repo.TEMPORARY_PREFIX .. name .. "." .. label .. "." .. suffix
end

function repo.is_temporary(file)
  if file:sub(1, #repo.TEMPORARY_PREFIX) == repo.TEMPORARY_PREFIX then return true end
  local name = file:match("^%.(.+)%.tmp%.%w%w%w%w%w%w$")
  if not name then return false end
  local base = name:gsub("%.sha256$", ""):gsub("%.json$", "")
  return repo.match_backup(base) ~= nil or repo.match_globals(base) ~= nil
end

-- Leftover temporary files in the type directories, as full paths. Only regular files:
-- a symlink or directory with such a name is not bkr's.
function repo.temporaries(dir)
  local found = {}
  for _, type_ in ipairs(repo.TYPES) do
    local subdir = repo.type_dir(dir, type_)
    if subdir then
      for file in lfs.dir(subdir) do
        local path = subdir .. "/" .. file
        if repo.is_temporary(file) and lfs.symlinkattributes(path, "mode") == "file" then
          found[#found + 1] = path
        end
      end
    end
  end
  table.sort(found)
  return found
end

-- Take the repository lock or fail fast naming the holder. Holding it proves that no other
-- run is writing, so the temporary files of killed runs are removed at once.
function repo.lock(dir)
  dir = strip_slashes(dir)
  adopt(dir)
  local lock, err, code = fs.lock(dir .. "/.lock", repo.file_options(dir .. "/.lock"))
  if not lock then
    if code == "locked" then cli.fail(cli.EXIT_FAILED, "repository %s is busy: %s", dir, err) end
    if code == "permission" then
      repo.permission_failure(lfs.symlinkattributes(dir .. "/.lock", "mode") and dir .. "/.lock" or dir, "write")
    end
    cli.fail(cli.EXIT_FAILED, "repository %s cannot be locked: %s", dir, err)
  end
  for _, path in ipairs(repo.temporaries(dir)) do
    if os.remove(path) then
      io.stderr:write("bkr: removed ", path, ", left by an interrupted run\n")
      repo.log(dir, { event = "temporary removed", file = path, result = "removed" })
    end
  end
  return lock
end

function repo.write_manifest(entry_path, manifest)
  return fs.write_file(entry_path .. ".json", json.encode(manifest, true) .. "\n",
    repo.file_options(entry_path, { mode = tonumber("600", 8), overwrite = true }))
end

-- One line as GNU sha256sum writes it, "<hex>  <name>\n". A name with a '\' or a newline is
-- escaped sha256sum's way: the line starts with '\', and the name has '\\' and '\n' for them.
-- The one writer of the format: sidecars and config backups' SHA256SUMS.
function repo.sums_line(digest, name)
  if name:find("[\\\n]") then
    return "\\" .. digest .. "  " .. name:gsub("\\", "\\\\"):gsub("\n", "\\n") .. "\n"
  end
  return digest .. "  " .. name .. "\n"
end

-- One line of sha256sum's output (without its newline), as `sha256sum -c` reads it: the
-- digest (64 hex digits, returned in lower case), one space, ' ' (text) or '*' (binary), the
-- name, unescaped when the line starts with '\'. Returns digest, name; or nil.
-- The one reader of the format: sidecars and config backups' SHA256SUMS.
function repo.parse_sums_line(line)
  local escaped = line:sub(1, 1) == "\\"
  if escaped then line = line:sub(2) end
  local digest, name = line:match("^(%x+) [ %*](.+)$")
  if not digest or #digest ~= 64 then return nil end
  if escaped then
    name = name:gsub("\\(.)", function(c) return c == "n" and "\n" or c end)
  end
  return digest:lower(), name
end

-- The sidecar `sha256sum -c` reads, run from the file's directory: "<hex>  <name>".
function repo.write_sidecar(entry_path, digest)
  local name = entry_path:match("([^/]+)$")
  return fs.write_file(entry_path .. ".sha256", repo.sums_line(digest, name),
    repo.file_options(entry_path, { mode = tonumber("600", 8), overwrite = true }))
end


-- The digest a sidecar names; or nil, message, kind ("missing", "permission", "not_regular",
-- "corrupt"...).
function repo.read_sidecar(entry, read)
  -- (a renamed copy's sidecar still names the original file: entry.original_file)
  local text, err, kind
  if read then text, err, kind = read() else text, err, kind = fs.read_file(entry.sidecar, { max = 4096 }) end
  if not text then
    if kind == "missing" then return nil, "missing sidecar " .. entry.sidecar, kind end
    return nil, string.format("unreadable sidecar %s: %s", entry.sidecar, cli.REASONS[kind] or err), kind
  end
  local digest, name = repo.parse_sums_line(text:match("^[^\n]*"))
  if not digest then return nil, "unreadable sidecar " .. entry.sidecar, "corrupt" end
  if name ~= entry.file and name ~= entry.original_file then
    return nil, "sidecar " .. entry.sidecar .. " names another file: " .. name, "corrupt"
  end
  return digest
end

-- Remove a backup and its sidecars together.
-- Only regular files: bkr never removes a symlink or a directory, whatever its name.
function repo.remove(entry)
  local errors = {}
  for _, path in ipairs({ entry.path, entry.sidecar, entry.manifest_path }) do
    if lfs.symlinkattributes(path, "mode") == "file" then
      local ok, err = os.remove(path)
      if not ok then errors[#errors + 1] = err end
    end
  end
  fs.fsync(entry.path:match("^(.*)/[^/]+$"))
  if #errors > 0 then return nil, table.concat(errors, "; ") end
  return true
end

-- One JSON line per event in REPO/bkr.log, for the admin and for monitoring. The log names
-- databases and errors, so it is private: 0600, or 0640 when the repository's group may read
-- the repository (a backup group). A log left world-readable by bkr 0.1 is tightened.
-- One record in the run log (lib/logging.lua owns where it goes and what it carries).
function repo.log(dir, record)
  require("lib.logging").write(dir, record)
end

return repo
