-- Restoring: choosing a restore point, checking it before anything is touched, streaming it
-- into a database in one transaction, re-applying database properties, and comparing every
-- table with the manifest. Shared by `bkr restore` and `bkr drill`.
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local postgres = require "lib.postgres"
local stream = require "bkr.stream"
local codec = require "lib.codec"
local hash = require "bkr.hash"
local proc = require "bkr.proc"
local pg = require "bkr.pg"
local lfs = require "lfs"
local fs = require "bkr.fs"
local remote = require "lib.remote"
local tempdir = require "lib.tempdir"

local restore = {}

-- ------------------------------------------------------------------ reading backups

-- The first stages of every read of a backup's stored bytes: the file, or the object streamed
-- from the bucket through its SHA-256, which must be the manifest's (the sidecar agrees with
-- it: restore.check_backup). A mismatch fails the run at the end of the object, before any
-- sink finishes: psql never sees a clean end of its input, a file sink commits nothing.
local function stored_stages(entry)
  if entry.remote then
    return { remote.source(entry.store, entry), hash.sha256{ name = "stored", expect = entry.manifest.sha256 } }
  end
  local source, err = stream.from_file(entry.path)
  if not source then error(err, 0) end
  return { source }
end

-- ------------------------------------------------------------------ restore points

-- The offset east of UTC, in seconds, of a time's zone: "" and "Z" (UTC), or +HH, +HHMM,
-- +HH:MM (or -) up to 14 hours with minutes under 60; nil for anything else.
local function zone_offset(zone)
  if zone == "" or zone == "Z" then return 0 end
  local sign, hours, minutes = zone:match("^([%+%-])(%d%d):?(%d%d)$")
  if not sign then
    sign, hours = zone:match("^([%+%-])(%d%d)$")
    minutes = "00"
  end
  if not sign then return nil end
  local h, m = tonumber(hours), tonumber(minutes)
  if m > 59 or h * 60 + m > 14 * 60 then return nil end
  return (sign == "+" and 1 or -1) * (h * 3600 + m * 60)
end

-- A time given by the admin: YYYYMMDD_HHMMSS, or ISO 8601 (2026-11-29, 2026-11-29T02:00,
-- 2026-11-29 02:00:00Z, 2026-11-29T02:00:00.5+01:00, ...). UTC unless an offset is given.
-- Returns epoch seconds, or nil for anything else, impossible dates, times and offsets included.
function restore.parse_time(text)
  if type(text) ~= "string" then return nil end
  if text:match("^%d%d%d%d%d%d%d%d_%d%d%d%d%d%d$") then return repo.stamp_epoch(text) end
  local y, m, d, rest = text:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil end
  local H, M, S, zone = "00", "00", "00", ""
  if rest ~= "" then
    local h, mi, tail = rest:match("^[T ](%d%d):(%d%d)(.*)$")
    if not h then return nil end
    H, M, zone = h, mi, tail
    local s, after = tail:match("^:(%d%d)(.*)$")
    if s then
      S, zone = s, (after:gsub("^%.%d+", "", 1)) -- a fraction of a second is dropped
    end
  end
  local epoch, offset = repo.stamp_epoch(y .. m .. d .. "_" .. H .. M .. S), zone_offset(zone)
  if not epoch or not offset then return nil end
  return epoch - offset
end

local function parse_time_or_fail(flag, text)
  local epoch = restore.parse_time(text)
  if not epoch then
    cli.usage_error("%s: cannot read time '%s' (use YYYYMMDD_HHMMSS or ISO 8601, UTC unless an offset "
      .. "up to +/-14:00 is given)", flag, text)
  end
  return epoch
end

-- When the database's own dump started (its snapshot is from that moment): the manifest's
-- start_time. The file name's time is when the run started, and a run dumps its databases
-- one after the other, so for "before a bad change" only the dump's own time is right.
function restore.taken(entry)
  local start = entry.manifest and entry.manifest.start_time
  local y, mo, d, h, mi, sec = tostring(start):match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)Z$")
  if y then return repo.stamp_epoch(y .. mo .. d .. "_" .. h .. mi .. sec) end
  return entry.time
end

-- The directory DIR (relative to the current directory, or absolute) as an absolute path
-- without ".", ".." or symbolic links, as realpath(3) gives it: "./x", "../daily/x" and
-- "link/../x" mean what the kernel makes of them. nil when it cannot be resolved.
local function real_directory(dir)
  local todo, done, links = {}, {}, 0
  local start = dir:sub(1, 1) == "/" and dir or ((lfs.currentdir() or "") .. "/" .. dir)
  if start:sub(1, 1) ~= "/" then return nil end
  for part in start:gmatch("[^/]+") do todo[#todo + 1] = part end
  local i = 1
  while i <= #todo do
    local part = todo[i]
    i = i + 1
    if part == ".." then
      done[#done] = nil
    elseif part ~= "." then
      local path = "/" .. table.concat(done, "/") .. (#done > 0 and "/" or "") .. part
      local mode = lfs.symlinkattributes(path, "mode")
      if mode == "link" then
        links = links + 1
        local target = lfs.symlinkattributes(path, "target")
        if not target or links > 40 then return nil end
        local rest = {}
        for part_of_target in target:gmatch("[^/]+") do rest[#rest + 1] = part_of_target end
        for j = i, #todo do rest[#rest + 1] = todo[j] end
        if target:sub(1, 1) == "/" then done = {} end
        todo, i = rest, 1
      elseif mode == "directory" then
        done[#done + 1] = part
      else
        return nil
      end
    end
  end
  return "/" .. table.concat(done, "/")
end

-- The backup of `db` to restore, from the repository (restore.repository; not used for a
-- file): how = { latest = true } | { at = "TIME" } | { before = "TIME" } | { file = "PATH" }
-- (PATH: REPO/<type>/FILE, relative to the current directory or absolute: a local file only).
-- Times are read before anything else.
function restore.choose(repository, db, how)
  local at = how.at and parse_time_or_fail("--at", how.at)
  local before = how.before and parse_time_or_fail("--before", how.before)
  if how.file then
    -- The directory is resolved; the file's own name is not (a symbolic link there is refused
    -- when the file is opened, as everywhere in a repository).
    local dir_part, name = how.file:match("^(.*)/([^/]*)$")
    if not dir_part then dir_part, name = ".", how.file end
    local type_dir = real_directory(dir_part == "" and "/" or dir_part)
    local repo_dir, type_
    if type_dir then repo_dir, type_ = type_dir:match("^(.*)/([^/]+)$") end
    if type_ and name ~= "" and name ~= "." and name ~= ".." and repo.valid_type(type_) then
      for _, entry in ipairs(repo.scan(repo_dir == "" and "/" or repo_dir, { type = type_ })) do
        if entry.file == name then return entry end
      end
    end
    if remote.is_url(how.file) then
      cli.usage_error("restore: FILE is a local file; to restore from object storage give --repo %s with "
        .. "--latest, --at or --before", cli.printable(how.file:match("^(.*)/[^/]+/[^/]+$") or how.file))
    end
    cli.usage_error("restore: %s is not a backup in a bkr repository (REPO/daily|weekly|monthly/backup_*)",
      how.file)
  end
  -- a name without any backup is a usage error (exit 2) naming those that have some
  repository.require_backups_of({ db })
  local backups = repository.scan({ db = { db } })
  if #backups == 0 then cli.fail(cli.EXIT_FAILED, "restore: no backups of %s in %s", db, repository.name) end
  if at then
    local wanted = at
    for _, entry in ipairs(backups) do
      if entry.time == wanted or restore.taken(entry) == wanted then return entry end
    end
    cli.fail(cli.EXIT_FAILED, "restore: no backup of %s taken at %s (newest: %s)", db, repo.iso_time(wanted),
      repo.iso_time(backups[1].time))
  end
  if before then
    local limit = before
    local best
    for _, entry in ipairs(backups) do
      if restore.taken(entry) < limit and (not best or restore.taken(entry) > restore.taken(best)) then
        best = entry
      end
    end
    if best then return best end
    cli.fail(cli.EXIT_FAILED, "restore: no backup of %s before %s (oldest: %s)", db, repo.iso_time(limit),
      repo.iso_time(backups[#backups].time))
  end
  return backups[1]
end

-- ------------------------------------------------------------------ checks before

-- The file is what the sidecar and the manifest say it is. Returns nil, or the reason and,
-- when the check could not be made (a bucket that refuses or cannot be reached), "unchecked":
-- that says nothing about the backup. In object storage the sidecar and the manifest must
-- agree here; the object's bytes are checked against them as they stream (stored_stages),
-- before anything is committed, so that a plain backup is read once and never stored locally.
function restore.check_backup(entry)
  if entry.remote then
    local expected, err, kind = remote.check_sidecars(entry.store, entry)
    if expected then return nil end
    if kind ~= "corrupt" and kind ~= "missing" then return err, "unchecked" end
    return err
  end
  repo.require_readable(entry)
  local expected, err = repo.check_sidecars(entry)
  if not expected then return err end
  local actual, herr = hash.sha256_file(entry.path)
  if not actual then return herr end
  if actual ~= expected then
    return string.format("checksum mismatch: file has %s, sidecar says %s", actual, expected)
  end
  return nil
end

-- ------------------------------------------------------------------ databases

-- NAME + suffix, cutting NAME so the whole stays within PostgreSQL's 63-byte identifiers
-- (a longer name would be cut by the server, and the name printed would not exist). A UTF-8
-- NAME is cut between characters: half a character is not a valid name.
function restore.derived_name(name, suffix)
  local room = 63 - #suffix
  if #name <= room then return name .. suffix end
  local cut = room
  if utf8.len(name) then
    -- byte cut + 1 starts what is dropped: a continuation byte (10xxxxxx) there means the
    -- character it belongs to started before the cut
    while cut > 0 and name:byte(cut + 1) & 0xC0 == 0x80 do cut = cut - 1 end
  end
  return name:sub(1, cut) .. suffix
end

function restore.database_exists(conn, name)
  local rows = assert(conn:query("select 1 from pg_database where datname = $1", name))
  return #rows > 0
end

-- Sessions of clients in database `name` (an autovacuum worker is not one: it would make
-- --replace refuse, or need --force, at random).
function restore.active_connections(conn, name)
  local rows = assert(conn:query("select count(*) as n from pg_stat_activity where datname = $1"
    .. " and pid <> pg_backend_pid() and backend_type = 'client backend'", name))
  return rows[1].n
end

local function role_exists(conn, name)
  local rows = conn:query("select 1 from pg_roles where rolname = $1", name)
  return rows and #rows > 0
end

-- ------------------------------------------------------------------ databases bkr creates

-- How long a cleanup statement may take once it must run (after an interrupt too).
restore.CLEANUP_TIMEOUT = 10

local function quote_ident(name)
  return '"' .. name:gsub('"', '""') .. '"'
end

-- The command an admin runs to drop a database bkr could not drop: the name quoted for SQL,
-- then the statement quoted for the shell. The name is never given to psql as -d (a conninfo).
function restore.drop_command(name)
  return "psql -d postgres -c '" .. ("DROP DATABASE " .. quote_ident(name)):gsub("'", "'\\''") .. "'"
end

-- DROP DATABASE ... WITH (FORCE) as a cleanup statement: it runs even after an interrupt, and
-- gives up after CLEANUP_TIMEOUT seconds. Returns true, or nil, the reason and the SQLSTATE
-- ("3D000" when no database has that name).
function restore.drop_database(conn, name)
  return conn:exec("drop database " .. quote_ident(name) .. " with (force)",
    { cleanup_timeout = restore.CLEANUP_TIMEOUT })
end

-- A database this run creates, and must not leave behind. The guard exists before the
-- CREATE DATABASE is sent, so that nothing (an error, an interrupt) can come between the
-- database and its guard. It is a to-be-closed value: closed by an error or an interrupt
-- unwinding past it, it drops the database unless :keep() was called.
--
--   local created <close> = restore.new_database(conn, name, { label = "restore", on_leftover = f })
--   local ok, err = created:create(properties)
local Created = {}
Created.__index = Created

-- opts: label (the start of messages), on_leftover(name, reason): called when a drop fails,
-- to log what is left.
function restore.new_database(conn, name, opts)
  opts = opts or {}
  return setmetatable({ conn = conn, name = name, label = opts.label or "bkr", on_leftover = opts.on_leftover },
    Created)
end

-- CREATE DATABASE with the encoding and locale the backup was taken with (template0, so any
-- locale works). Returns true, or nil and the server's reason (then nothing was created).
-- Interrupted while the server works on it, the database may or may not exist: the guard
-- stays armed, and drops it if it does.
function Created:create(properties)
  local conn, p = self.conn, properties or {}
  local sql = { "create database " .. conn:escape_identifier(self.name), "template template0" }
  if p.encoding then sql[#sql + 1] = "encoding " .. conn:escape_literal(p.encoding) end
  if p.collate then sql[#sql + 1] = "lc_collate " .. conn:escape_literal(p.collate) end
  if p.ctype then sql[#sql + 1] = "lc_ctype " .. conn:escape_literal(p.ctype) end
  self.armed = true
  local ok, err = conn:exec(table.concat(sql, " "))
  if not ok then
    self.armed = false -- the server refused it (it may exist already): not ours to drop
    return nil, err
  end
  return true
end

-- Drop it now. Returns true and "NAME was dropped"; or nil and what is left, with the exact
-- command that removes it (and calls on_leftover). Later calls return the same answer.
function Created:drop()
  if self.outcome then return table.unpack(self.outcome) end
  if not self.armed then return true, self.name .. " was not created" end
  local ok, err, sqlstate
  for _ = 1, 3 do -- the interrupt hook raises once inside running Lua code: try again
    local ran, result, message, state = pcall(restore.drop_database, self.conn, self.name)
    if ran then
      ok, err, sqlstate = result, message, state
      break
    end
    err = tostring(result)
  end
  if ok then
    self.outcome = { true, self.name .. " was dropped" }
  elseif sqlstate == "3D000" then -- an interrupted CREATE that did not happen, a swap that did
    self.outcome = { true, "no database " .. self.name .. " exists (nothing to drop)" }
  else
    self.outcome = { nil, string.format("%s was NOT dropped (%s); drop it with: %s", self.name,
      tostring(err), restore.drop_command(self.name)) }
    if self.on_leftover then pcall(self.on_leftover, self.name, tostring(err)) end
  end
  return table.unpack(self.outcome)
end

-- The database holds what it should: it stays.
function Created:keep()
  self.outcome = self.outcome or { true, self.name .. " was kept" }
end

-- Drop it unless it was kept or dropped already, and say so on stderr: the end of a run that
-- stopped before the database was done with. Also the guard's __close.
function Created:close()
  if self.outcome or not self.armed then return end
  local _, said = self:drop()
  io.stderr:write("bkr: ", self.label, ": stopped before the end; ", said, "\n")
end
Created.__close = Created.close

-- ------------------------------------------------------------------ the stream

-- An error object as stream.run raises them (runtime/error.h), for a finding about the backup
-- made in Lua.
local function raise_damage(kind, stage, reason)
  error(setmetatable({ message = stage .. ": " .. reason, detail = stage .. ": " .. reason, reason = reason,
    kind = kind, stage = stage }, { __tostring = function(e) return e.message end }), 0)
end

-- The checks a plain dump's stream makes before its sink may finish (psql --single-transaction
-- commits at a clean end of its input): exactly the manifest's raw_bytes after decompression,
-- a byte too many stopped before it reaches psql, and pg_dump's completion marker (kind:
-- "database" or "globals") at the end, as verify checks them. They fail the run with kind
-- corrupt (more bytes) or truncated (fewer, no marker).
function restore.end_checks(entry, kind)
  local stages = {}
  local raw_bytes = entry.manifest and math.tointeger(entry.manifest.raw_bytes)
  if raw_bytes then stages[#stages + 1] = stream.count{ name = "size", expect = raw_bytes } end
  stages[#stages + 1] = stream.tail{ name = "completion marker", bytes = repo.COMPLETION_TAIL_BYTES,
    expect = repo.COMPLETION_TEXT[kind] }
  return stages
end

local function append(list, more)
  for _, item in ipairs(more) do list[#list + 1] = item end
  return list
end

-- psql reading the dump: one transaction, stop at the first error.
-- psql in restricted mode (`\restrict KEY`, from psql 13.22, 14.19, 15.14, 16.10, 17.6 and 18
-- on) refuses every backslash command by its own lexer, which no filter of the dump's text can
-- match in every case (a dump may switch psql to a client encoding that hides a quote from
-- any other reader). bkr restricts psql with a key of its own, before the dump's first line;
-- the dump's own \restrict and \unrestrict lines are taken out (dump.drop_restrict_lines).
local RESTRICT_SINCE = { [13] = 22, [14] = 19, [15] = 14, [16] = 10, [17] = 6 }

function restore.psql_restricts(version)
  local major, minor = tostring(version):match("^(%d+)%.(%d+)")
  major, minor = tonumber(major), tonumber(minor)
  if not major then
    major = tonumber(tostring(version):match("^(%d+)"))
    if not major then return false end
    return major >= 18
  end
  if major >= 18 then return true end
  return RESTRICT_SINCE[major] ~= nil and minor >= RESTRICT_SINCE[major]
end

-- psql's arguments: its options, then (when it can) bkr's own \restrict before the dump on
-- standard input.
local function psql_argv(run, options)
  local argv = { run.psql, "-X", "-q" }
  for _, option in ipairs(options) do argv[#argv + 1] = option end
  if run.restrict_key then
    for _, arg in ipairs({ "-c", "\\restrict " .. run.restrict_key, "-f", "-" }) do argv[#argv + 1] = arg end
  end
  return argv
end

-- The stages between a plain dump and psql: the guard, and, for a restricted psql, the
-- dump's own \restrict lines out.
local function psql_stages(run, stages)
  local dump = require "bkr.dump"
  -- psql runs its meta-commands (\! runs a shell): only those pg_dump writes may reach it, so
  -- a dump forged with its checksums recomputed cannot run commands on this host
  stages[#stages + 1] = dump.refuse_meta_commands()
  if run.restrict_key then stages[#stages + 1] = dump.drop_restrict_lines() end
  return stages
end

local function spawn_psql(run, target)
  return proc.spawn{
    argv = psql_argv(run, { "-v", "ON_ERROR_STOP=1", "--single-transaction", "--no-password" }),
    env = config.child_env(run.cfg, target),
    stdin = "pipe", stdout = "null", stderr = "capture",
  }
end

-- ------------------------------------------------------------------ custom-format archives

-- The key an encrypted backup needs, or a usage error (exit 2).
local function require_key(run, entry)
  if not run.key then
    cli.usage_error("restore: %s is encrypted: give --key-file FILE or set encryption.key_file", entry.file)
  end
  return run.key
end

-- fn(path, bytes) with the path of a custom-format archive pg_restore can seek in: the backup
-- file itself; or, when it is encrypted or in object storage, a copy made for this run (an
-- encrypted one decrypted, every chunk authenticated; one from the bucket checked against
-- its SHA-256 as it downloads: stored_stages) into a 0600 file in a private 0700 directory
-- under $TMPDIR (else /tmp), made by mkdtemp. pg_restore cannot read our encrypted format,
-- and -j needs a seekable file, not a pipe or a bucket. The directory and the file are
-- removed when fn returns, fails or is interrupted (only a SIGKILL can leave them:
-- bkr-archive.PID.XXXXXX). Returns what fn returns; raises what the download or the
-- decryption raises (kinds: auth, key, truncated, corrupt, interrupted; a failure of the
-- bucket's side has the stage "s3": remote.transfer_failed).
function restore.with_archive(run, entry, fn)
  if not entry.encrypted and not entry.remote then return fn(entry.path, lfs.symlinkattributes(entry.path, "size")) end
  local key = entry.encrypted and require_key(run, entry)
  -- (lib/tempdir.lua: removed whatever ends the scope, even an interrupt at any point)
  local dir, guard = tempdir.private("bkr-archive")
  local _ <close> = guard
  local path = dir .. "/" .. entry.file:gsub("%.enc$", "")
  local stages = stored_stages(entry)
  if key then stages[#stages + 1] = require("bkr.crypto").decrypt{ key = key } end
  local sink, serr = stream.to_file(path, { mode = "0600" })
  if not sink then error(serr, 0) end
  stages[#stages + 1] = sink
  local result = stream.run(stages)
  return fn(path, result.bytes_out)
end

-- How many pg_restore jobs: --jobs, else the configuration's threads, else the online cores.
function restore.jobs(run)
  return run.jobs or codec.threads(run.cfg)
end

-- "dbname='NAME'" for pg_restore --dbname, which takes a conninfo: a name is never given raw
-- (one holding '=' would be read as connection options).
local function dbname_conninfo(name)
  return "dbname='" .. name:gsub("[\\']", "\\%0") .. "'"
end

-- A custom-format backup into TARGET with pg_restore -j N (--exit-on-error; with one job, in
-- one transaction as psql's restore is). pg_restore -j cannot use one transaction: a failure
-- with several jobs may leave part of the data in TARGET (restore --create and --replace drop
-- the database they made). Raises on any failure.
local function pg_restore_into(run, entry, target)
  run.pg_restore = run.pg_restore or postgres.find_program("pg_restore", run.server_major, run.cfg)
  local jobs = restore.jobs(run)
  local started = bkr.monotonic()
  return restore.with_archive(run, entry, function(archive, bytes)
    -- the archive's size, as verify checks it (its checksum covers the stored bytes): a
    -- pg_restore -j that failed half way would have committed part of it
    local raw_bytes = entry.manifest and entry.manifest.raw_bytes
    if raw_bytes and bytes ~= raw_bytes then
      if not bytes then error("restore: cannot read the size of " .. archive, 0) end
      raise_damage(bytes < raw_bytes and "truncated" or "corrupt", "size",
        string.format("the archive has %d bytes, the manifest says %d", bytes, raw_bytes))
    end
    local argv = { run.pg_restore, "--no-password", "--exit-on-error", "--jobs=" .. jobs,
      "--dbname=" .. dbname_conninfo(target), archive }
    if jobs == 1 then table.insert(argv, 4, "--single-transaction") end
    local child <close>, err = proc.spawn{ argv = argv, env = config.child_env(run.cfg, target), stdout = "null",
      stderr = "capture" }
    if not child then error(err, 0) end
    local ok, how, code = child:wait()
    local said = child:stderr()
    child:close()
    if not ok then
      error(string.format("pg_restore failed (%s %s): %s", how, tostring(code),
        cli.printable((said:gsub("%s+$", ""):match("[^\n]*$")))), 0)
    end
    return { bytes_out = bytes or 0, elapsed = bkr.monotonic() - started, jobs = jobs }
  end)
end

-- One pass: file (or object, through its SHA-256) -> (decrypt) -> decompress (gzip or zstd,
-- lib/codec.lua) -> psql. Raises on any failure (nothing committed: psql's single transaction
-- is rolled back when its input stops short, and a failed run ends psql before it sees a
-- clean end of input). A custom-format archive goes to pg_restore -j instead (pg_restore_into).
function restore.stream_into(run, entry, target)
  local storage = codec.for_entry(entry)
  if storage.dump_format == "custom" then return pg_restore_into(run, entry, target) end
  local stages = stored_stages(entry)
  if entry.encrypted then
    local crypto = require "bkr.crypto"
    if not run.key then
      cli.usage_error("restore: %s is encrypted: give --key-file FILE or set encryption.key_file", entry.file)
    end
    stages[#stages + 1] = crypto.decrypt{ key = run.key }
  end
  stages[#stages + 1] = codec.decompress(codec.for_entry(entry))
  append(stages, restore.end_checks(entry, "database"))
  stages[#stages + 1] = stream.progress{ label = "restore " .. target, total = entry.manifest.raw_bytes }
  psql_stages(run, stages)
  local psql, err = spawn_psql(run, target)
  if not psql then error(err, 0) end
  stages[#stages + 1] = psql:sink{ name = "psql" }
  local result = stream.run(stages)
  psql:close()
  -- the dump's size as it was decompressed (psql got it less pg_dump's own \restrict lines)
  result.sql_bytes = result.size or result.bytes_out
  return result
end

-- The globals file of the run that made `entry`, beside it (in its directory or its bucket);
-- or nil and what follows "globals file " in the message ("NAME failed verification: missing: WHERE").
local function globals_of(entry)
  if entry.remote then
    local store = entry.store
    local listed, err = remote.scan(store, { type = entry.type, globals = true })
    if not listed then return nil, "of the same run could not be listed: " .. err end
    for _, candidate in ipairs(listed) do
      if candidate.kind == "globals" and candidate.stamp == entry.stamp and candidate.encrypted == entry.encrypted then
        return candidate
      end
    end
    local name = repo.globals_file(entry.type, entry.stamp, entry.encrypted):match("[^/]+$")
    return nil, name .. " failed verification: missing: " .. remote.display(store, entry.type .. "/" .. name)
  end
  local dir = entry.path:match("^(.*)/[^/]+/[^/]+$") or "."
  local globals, name = repo.globals_of(dir, entry.type, entry.stamp, entry.encrypted)
  if not globals then
    return nil, string.format("%s failed verification: missing: %s/%s/%s", name, dir, entry.type, name)
  end
  return globals
end

-- A globals file is applied statement by statement, not in one transaction, so all of it is
-- checked before any is applied: from a bucket, its bytes are fetched whole (small: roles and
-- tablespaces) through their SHA-256, and both passes read them from memory, never the bucket
-- again (an object replaced between the two would be applied unchecked).
restore.GLOBALS_MAX_BYTES = 64 * 1024 * 1024

local function fetch_whole(globals)
  local stages = stored_stages(globals)
  stages[#stages + 1] = stream.to_string{ name = "bytes", max = restore.GLOBALS_MAX_BYTES }
  return stream.run(stages).bytes
end

-- The globals file of the same run (roles first, so owners and grants resolve). Existing
-- roles are reported, not an error.
function restore.globals(run, entry)
  local globals, missing = globals_of(entry)
  if not globals then return nil, "globals file " .. missing end
  local problem, unchecked = restore.check_backup(globals)
  if problem then
    return nil, "globals file " .. globals.file .. (unchecked and " could not be read: " or " failed verification: ")
      .. problem
  end
  local stored
  if globals.remote then
    local fetched, bytes = pcall(fetch_whole, globals)
    if not fetched then
      local damaged = repo.DAMAGE_KINDS[cli.kind(bytes)] and not remote.transfer_failed(bytes)
      return nil, "globals file " .. globals.file .. (damaged and " failed verification: " or " could not be read: ")
        .. cli.detail(bytes)
    end
    stored = bytes
  end
  -- The file (or the bytes fetched) -> (decrypt) -> decompress stages, with the size and
  -- completion marker checks.
  local function read_stages()
    local source, err
    if stored then
      source = stream.from_string(stored)
    else
      source, err = stream.from_file(globals.path)
    end
    if not source then return nil, "no globals file from the same run: " .. err end
    local stages = { source }
    if entry.encrypted then stages[#stages + 1] = require("bkr.crypto").decrypt{ key = run.key } end
    stages[#stages + 1] = codec.decompress(globals.storage)
    return append(stages, restore.end_checks(globals, "globals"))
  end
  -- psql applies the globals statement by statement (a role that exists is an error that must
  -- not stop the rest), not in one transaction: the whole file is checked in a first pass, so
  -- that a file cut short or with statements appended is refused before any of it is applied.
  -- The pass that applies it checks again.
  local stages, err = read_stages()
  if not stages then return nil, err end
  stages[#stages + 1] = require("bkr.dump").refuse_meta_commands()
  stages[#stages + 1] = stream.to_null()
  local checked, failure = pcall(stream.run, stages)
  if not checked then
    if repo.DAMAGE_KINDS[cli.kind(failure)] then
      return nil, "globals file " .. globals.file .. " failed verification: " .. cli.detail(failure)
    end
    return nil, failure
  end
  stages, err = read_stages()
  if not stages then return nil, err end
  psql_stages(run, stages) -- (as a database's: stream_into)
  local psql = assert(proc.spawn{
    argv = psql_argv(run, { "--no-password" }),
    env = config.child_env(run.cfg, run.cfg.connection.dbname or "postgres"),
    stdin = "pipe", stdout = "null", stderr = "capture",
  })
  stages[#stages + 1] = psql:sink{ name = "psql" }
  local ok, result = pcall(stream.run, stages)
  local messages = psql:stderr()
  psql:close()
  if not ok then return nil, result end
  local existing, other = {}, {}
  for line in messages:gmatch("[^\n]+") do
    local role = line:match('role "([^"]+)" already exists')
    if role then existing[#existing + 1] = role
    elseif line:match("ERROR") then other[#other + 1] = line end
  end
  return { existing = existing, errors = other }
end

-- ------------------------------------------------------------------ properties

-- GUCs whose values are lists (pg_dump quotes each element separately, as here).
local LIST_SETTINGS = {
  search_path = true, temp_tablespaces = true, session_preload_libraries = true,
  local_preload_libraries = true, shared_preload_libraries = true,
}

-- "a, \"b c\"" -> { "a", "b c" }: the stored form of a list setting.
local function split_setting_list(value)
  local items, current, quoted, i = {}, {}, false, 1
  while i <= #value do
    local c = value:sub(i, i)
    if c == '"' then
      if quoted and value:sub(i + 1, i + 1) == '"' then
        current[#current + 1] = '"'
        i = i + 1
      else
        quoted = not quoted
      end
    elseif c == "," and not quoted then
      items[#items + 1] = table.concat(current):match("^%s*(.-)%s*$")
      current = {}
    else
      current[#current + 1] = c
    end
    i = i + 1
  end
  items[#items + 1] = table.concat(current):match("^%s*(.-)%s*$")
  return items
end

local function set_clause(conn, setting)
  local name, value = setting:match("^([^=]+)=(.*)$")
  if not name then return nil end
  if LIST_SETTINGS[name:lower()] then
    local quoted = {}
    for _, item in ipairs(split_setting_list(value)) do quoted[#quoted + 1] = conn:escape_literal(item) end
    return conn:escape_identifier(name) .. " to " .. table.concat(quoted, ", ")
  end
  return conn:escape_identifier(name) .. " to " .. conn:escape_literal(value)
end

-- Re-apply what a dump without --create leaves out: owner, ALTER DATABASE ... SET, per-role
-- settings in this database, and database privileges. Returns a list of warnings. The
-- settings of an encrypted backup are sealed with its key (postgres.seal_settings): key opens
-- them; sealed ones that do not open are not applied, and said.
function restore.apply_properties(conn, target, properties, key, encrypted)
  local warnings = {}
  if encrypted and properties and not properties.sealed then
    -- an encrypted backup's manifest seals what it grants: one without the seal was edited by
    -- someone without the key (or written before bkr sealed them): nothing of it is applied
    warnings[#warnings + 1] = "the database's owner, privileges and settings were not re-applied: this encrypted "
      .. "backup's manifest does not seal them (edited, or written by an older bkr); apply them by hand"
    return warnings
  end
  if properties and properties.sealed then
    local opened, err
    if key then opened, err = require("lib.postgres").unseal_settings(properties, key) end
    if not opened then
      warnings[#warnings + 1] = "the database's owner, privileges and settings were not re-applied: "
        .. (err or "they are sealed and no key was given")
      return warnings
    else
      properties = opened
    end
  end
  local db = conn:escape_identifier(target)
  local function exec(sql)
    local ok, err = conn:exec(sql)
    if not ok then warnings[#warnings + 1] = err end
  end
  local p = properties or {}
  if p.owner then
    if role_exists(conn, p.owner) then
      exec("alter database " .. db .. " owner to " .. conn:escape_identifier(p.owner))
    else
      warnings[#warnings + 1] = string.format('owner role "%s" does not exist (restore with --globals)', p.owner)
    end
  end
  for _, setting in ipairs(p.settings or {}) do
    local clause = set_clause(conn, setting)
    if clause then exec("alter database " .. db .. " set " .. clause) end
  end
  for _, entry in ipairs(p.role_settings or {}) do
    if role_exists(conn, entry.role) then
      for _, setting in ipairs(entry.settings or {}) do
        local clause = set_clause(conn, setting)
        if clause then
          exec("alter role " .. conn:escape_identifier(entry.role) .. " in database " .. db .. " set " .. clause)
        end
      end
    else
      warnings[#warnings + 1] = string.format('role "%s" does not exist: its settings were not re-applied', entry.role)
    end
  end
  if p.acl then
    -- The server reads its own aclitem text; every grantee must exist.
    local rows, err = conn:query([[
      select case when a.grantee = 0 then 'public' else quote_ident(pg_get_userbyid(a.grantee)) end as grantee,
             a.privilege_type, a.is_grantable
        from aclexplode($1::aclitem[]) a]], p.acl)
    if not rows then
      warnings[#warnings + 1] = "database privileges not re-applied: " .. err
    else
      exec("revoke all on database " .. db .. " from public")
      for _, r in ipairs(rows) do
        exec(string.format("grant %s on database %s to %s%s", r.privilege_type, db, r.grantee,
          r.is_grantable and " with grant option" or ""))
      end
    end
  end
  if p.connection_limit and p.connection_limit ~= -1 then
    exec(string.format("alter database %s connection limit %d", db, p.connection_limit))
  end
  return warnings
end

-- ------------------------------------------------------------------ checks after

-- pg_dump's session settings, so COPY writes rows exactly as in the dump: the SQL that sets them.
local function dump_session(conn, manifest)
  local properties = manifest.database_properties
  local encoding = properties and properties.encoding or "UTF8"
  local sql = "set client_encoding = " .. conn:escape_literal(encoding)
    .. "; set datestyle = iso; set intervalstyle = postgres; set extra_float_digits = 3"
  if manifest.dump_timezone then sql = sql .. "; set timezone = " .. conn:escape_literal(manifest.dump_timezone) end
  return sql
end

-- The statement that reads a manifest table back as the dump wrote it: its columns, in order.
local function copy_statement(conn, t)
  local qualified = conn:escape_identifier(t.schema) .. "." .. conn:escape_identifier(t.name)
  local columns = {}
  for i, c in ipairs(t.columns or {}) do columns[i] = conn:escape_identifier(c) end
  return "copy " .. qualified .. (#columns > 0 and (" (" .. table.concat(columns, ", ") .. ")") or "")
    .. " to stdout"
end

-- A table as found ({ rows =, digest = } or { error = }) against the manifest's entry.
local function judge_table(t, found)
  local item = { table = t.schema .. "." .. t.name, expected_rows = t.rows }
  if found.error then
    item.reason = found.error
  else
    item.rows, item.digest = found.rows, found.digest
    if item.rows ~= t.rows then
      item.reason = string.format("%s, the backup has %d", cli.plural(item.rows, "row", "rows"), t.rows)
    elseif item.digest ~= t.digest then
      item.reason = string.format("same %s but different contents (digest %s, backup %s)",
        cli.plural(item.rows, "row", "rows"), item.digest:sub(1, 12), t.digest:sub(1, 12))
    end
  end
  item.ok = item.reason == nil
  return item
end

-- Every table of the manifest, read back with COPY and digested in C on `run.cfg.threads`
-- connections and threads at once (default: one per online CPU), biggest tables first.
-- Returns a list, in manifest order, of { table = "schema.name", rows =, digest =, ok =,
-- reason =, expected_rows = }. A table that cannot be read is a difference with its reason.
-- When no connection can be made: nil, message (the caller says what that means for it).
function restore.compare_tables(run, target, manifest)
  local conn <close> = postgres.connect(run.cfg, target)
  local tables = manifest.tables or {}
  local copies, sizes = {}, {}
  for i, t in ipairs(tables) do
    copies[i], sizes[i] = copy_statement(conn, t), t.rows
  end
  local found, err = conn:digest_tables(copies, {
    jobs = run.cfg and run.cfg.threads, session = dump_session(conn, manifest), sizes = sizes,
  })
  if not found then return nil, "compare: " .. err end
  local results = {}
  for i, t in ipairs(tables) do results[i] = judge_table(t, found[i]) end
  return results
end

-- The programs and connection a restore needs.
function restore.prepare(cfg, key)
  local run = { cfg = cfg, key = key }
  run.conn = postgres.connect(cfg)
  local server_num = run.conn:server_version()
  run.server_major = server_num // 10000
  local version
  run.psql, version = postgres.find_program("psql", run.server_major, cfg)
  if restore.psql_restricts(version) then
    run.restrict_key = require("lib.keys").random_hex(16)
  end
  return run
end

restore.null = pg.null

return restore
