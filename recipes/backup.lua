-- Back up databases: pg_dump -> gzip or zstd -> SHA-256 -> file, with sidecar, manifest and rotation
--
-- The runbook, step by step:
--   1. read the configuration and the command line
--   2. lock the repository (a directory, or an s3:// prefix: lib/store.lua), connect, choose
--      the pg_dump that matches the server
--   3. check there is room for the backups before starting any (a local repository)
--   4. per database: dump it in one pass through the per-table digests, compression (gzip or
--      zstd: lib/codec.lua), encryption
--      (when a key is configured: docs/encryption.md) and SHA-256 into the repository (in
--      object storage: a multipart upload while the dump goes on, no local copy), then write
--      its .sha256 sidecar and .json manifest, last: a backup counts once its manifest is there
--   5. dump the cluster's globals (roles, tablespaces) when allowed
--   6. rotate, when every backup succeeded
-- A failed database is reported and the others still run; the exit status says so.
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local store = require "lib.store"
local postgres = require "lib.postgres"
local rotation = require "lib.rotation"
local keys = require "lib.keys"
local stream = require "bkr.stream"
local codec = require "lib.codec"
local hash = require "bkr.hash"
local dump = require "bkr.dump"
local proc = require "bkr.proc"
local fs = require "bkr.fs"
local crypto = require "bkr.crypto"
local logging = require "lib.logging"
local tempdir = require "lib.tempdir"

-- pg_dump ends with its completion marker, then (since 15.14) a \unrestrict line: keep
-- enough of the end to find the marker whatever short trailer follows it.
local TAIL_BYTES = 1024

local function parse_arguments(args)
  return cli.parse(args, {
    name = "backup",
    usage = "bkr backup [--config FILE] [--db NAME]... [--type daily|weekly|monthly] [--repo DIR|s3://B/P] [--key-file FILE]\n"
      .. "                  [--no-rotate] [--no-globals] [--create-repo]",
    summary = "Dump each database with pg_dump into REPO/<type>/backup_<UTC time>_<db>.sql.gz\n"
      .. "(.sql.zst with compression: zstd) with a .sha256 sidecar and a .json manifest, in one pass;\n"
      .. "then rotate; with format: custom, pg_dump's archive (.dump). With a key (--key-file or\n"
      .. "encryption.key_file), the dump is encrypted: .sql.gz.enc.",
    options = {
      { "--config", "FILE", "configuration file (default ./bkr.yaml, then /etc/bkr/bkr.yaml)" },
      { "--db", "NAME", "database to back up (repeatable; default: from the configuration, else all)", repeatable = true },
      { "--type", "TYPE", "daily (default), weekly or monthly" },
      { "--repo", "DIR", "repository directory or s3://BUCKET/PREFIX (overrides the configuration); a directory must exist" },
      { "--create-repo", nil, "create the repository directory when it does not exist (else: bkr init)" },
      { "--no-rotate", nil, "do not apply the retention policy afterwards" },
      { "--no-globals", nil, "do not dump roles and tablespaces" },
      { "--key-file", "FILE", "encrypt with this key (bkr keygen; overrides encryption.key_file)" },
    },
    exit_codes = "0 all backed up, 1 a backup failed, 2 usage or configuration error (no repository at DIR,\n"
      .. "            a --db that is not on the server)",
    see = "docs/backup.md",
  })
end

-- ------------------------------------------------------------------ steps

local say = cli.say
local function warn(fmt, ...) cli.warn("backup", fmt, ...) end

-- Refuse to start when the repository cannot hold the run: for each database, its last
-- backup's stored size plus 20%, or, with no backup yet, its size in the cluster. (Object
-- storage has no free space to check; only the private directory a custom-format archive
-- waits in before its upload.)
local function check_free_space(run)
  if run.store.remote and not run.private_dir then return nil, nil end
  local needed, largest, detail = 0, 0, {}
  for _, db in ipairs(run.databases) do
    local last = run.store.scan({ db = { db } })[1]
    local estimate
    if last and last.stored_bytes then
      estimate = math.ceil(last.stored_bytes * 1.2)
    else
      estimate = run.conn:database_size(db) or 0
    end
    needed = needed + estimate
    -- a custom-format archive is written once as a temporary file, then copied to its name:
    -- beside it, or, encrypted, in the private directory (one archive at a time)
    if run.storage.dump_format == "custom" then
      if run.private_dir then
        largest = math.max(largest, estimate)
      else
        needed = needed + estimate
      end
    end
    detail[#detail + 1] = db
  end
  local available, err
  if not run.store.remote then available, err = fs.free_space(run.repo) end
  if not run.store.remote and not available then cli.fail(cli.EXIT_FAILED, "%s", err) end
  if available and available < needed then
    cli.fail(cli.EXIT_FAILED, "not enough free space in %s: %s available, about %s needed for %s",
      run.repo, cli.size(available), cli.size(needed), table.concat(detail, ", "))
  end
  if run.private_dir then
    local room, rerr = fs.free_space(run.private_dir)
    if not room then cli.fail(cli.EXIT_FAILED, "%s", rerr) end
    if room < largest then
      cli.fail(cli.EXIT_FAILED, "not enough free space in %s for the %s archive of the largest "
        .. "database: %s available, about %s needed (set TMPDIR to a private directory with more room)",
        tempdir.base(), run.key and "unencrypted" or "pg_dump", cli.size(room), cli.size(largest))
    end
  end
  return available, needed
end

-- With a key, the compressed stream is encrypted before it is hashed and stored.
local function add_encryption(run, stages)
  if run.key then stages[#stages + 1] = crypto.encrypt{ key = run.key, chunk_size = run.chunk_size } end
end

-- What the manifest says about encryption: the key id, never the key.
local function encryption_facts(run)
  if not run.key then return false, nil end
  return true, { algorithm = "AES-256-GCM", format = "bkr-chunked-1", chunk_size = run.chunk_size,
    key_id = run.key_id }
end

-- Timestamps with time zone are dumped in UTC, so a restore check on any server (whatever
-- its TimeZone) reads the rows back exactly as they are in the dump.
local DUMP_TIMEZONE = "UTC"

-- pg_dump of one database, streamed through digests, gzip and encryption into the repository.
local function dump_database(run, db, relative, size)
  local env = config.child_env(run.cfg, db)
  env.PGTZ = DUMP_TIMEZONE
  local child, err = proc.spawn{
    -- a table locked by another session fails the backup after lock_wait_seconds, instead of
    -- waiting forever while the repository lock keeps every other run out
    argv = { run.pg_dump, "--format=plain", "--no-password",
      "--lock-wait-timeout=" .. (run.cfg.lock_wait_seconds * 1000) },
    env = env,
    stdout = "pipe", stderr = "capture",
  }
  if not child then error(err, 0) end
  local stages = {
    child:source{ name = "pg_dump" },
    dump.table_digests{ name = "tables" },
    stream.tail{ name = "tail", bytes = TAIL_BYTES },
    stream.progress{ label = db, total = size },
    codec.compress(run.storage, run.cfg),
  }
  add_encryption(run, stages)
  stages[#stages + 1] = hash.sha256{ name = "sha256" }
  stages[#stages + 1] = run.store.sink(relative)
  local result = stream.run(stages)
  child:close()
  return result
end

-- A to-be-closed value that removes `path` when it goes out of scope: the temporary archive
-- of a custom-format dump is gone whatever ends its database's backup (an error, SIGTERM).
local function removed_on_close(path)
  return setmetatable({}, { __close = function() os.remove(path) end })
end

-- Run a child to its end; nil and what it said when it failed. (An interrupt raises, after
-- the child is killed: proc.wait.)
local function run_child(what, spec)
  local child <close>, err = proc.spawn(spec)
  if not child then return nil, err end
  local ok, how, code = child:wait()
  local said = child:stderr()
  child:close()
  if ok then return true end
  return nil, string.format("%s failed (%s %s): %s", what, how, tostring(code),
    cli.printable((said:gsub("%s+$", ""):match("[^\n]*$"))))
end

-- Where pg_dump writes the archive of a custom-format backup: beside the backup (".bkr-tmp."
-- prefix and a random suffix, 0600; the next run's lock removes it after a SIGKILL); or, when
-- the backup is encrypted or goes to object storage, in the run's private directory outside
-- the repository, since the archive is plaintext until bkr encrypts it (a copy of the
-- repository taken meanwhile must not hold it).
local function archive_path(run, relative)
  if run.private_dir then return run.private_dir .. "/" .. relative:match("[^/]+$"):gsub("%.enc$", "") end
  return repo.temporary_path(run.store.path(relative), "pg_dump")
end

-- pg_dump --format=custom of one database. pg_restore -j needs an archive it can seek in,
-- with the data offsets pg_dump writes only into a file: so pg_dump writes a temporary file
-- (archive_path, removed whatever happens). The archive must list (pg_restore -l); pg_restore --data-only
-- reads it back as SQL for the per-table digests (the same parser and the same digests as a
-- plain dump's); then it is copied, encrypted when a key is set, with its SHA-256, into its
-- final name atomically.
local function dump_database_custom(run, db, relative, size)
  local env = config.child_env(run.cfg, db)
  env.PGTZ = DUMP_TIMEZONE
  local temporary = archive_path(run, relative)
  local _ <close> = removed_on_close(temporary)
  -- created 0600 before pg_dump opens it (it truncates the file and keeps its mode)
  local created, cerr = fs.write_file(temporary, "",
    run.private_dir and { mode = "0600" } or repo.file_options(temporary, { mode = "0600" }))
  if not created then error(cerr, 0) end
  local started = bkr.monotonic()
  local ok, err = run_child("pg_dump", {
    argv = { run.pg_dump, "--format=custom", "--compress=" .. run.pg_dump_compress, "--no-password",
      "--lock-wait-timeout=" .. (run.cfg.lock_wait_seconds * 1000), "--file=" .. temporary },
    env = env, stdout = "null", stderr = "capture",
  })
  if not ok then error(err, 0) end
  ok, err = run_child("pg_restore --list", {
    argv = { run.pg_restore, "--list", "--file=/dev/null", temporary }, stdout = "null", stderr = "capture",
  })
  if not ok then error("the archive pg_dump wrote does not list: " .. err, 0) end
  local reader <close>, rerr = proc.spawn{
    argv = { run.pg_restore, "--data-only", "--file=-", temporary }, stdout = "pipe", stderr = "capture",
  }
  if not reader then error(rerr, 0) end
  local read = stream.run{
    reader:source{ name = "pg_restore" },
    dump.table_digests{ name = "tables" },
    stream.tail{ name = "tail", bytes = TAIL_BYTES },
    stream.to_null(),
  }
  reader:close()
  local source, serr = stream.from_file(temporary)
  if not source then error(serr, 0) end
  local stages = { source, stream.progress{ label = db, total = size } }
  add_encryption(run, stages)
  stages[#stages + 1] = hash.sha256{ name = "sha256" }
  stages[#stages + 1] = run.store.sink(relative)
  local result = stream.run(stages)
  -- raw_bytes: the archive's own size (what decryption gives back); the tables and the
  -- completion marker from pg_restore's reading of it
  result.tables, result.tail = read.tables, read.tail
  result.elapsed = bkr.monotonic() - started
  return result
end

-- What a failed or interrupted database leaves is removed: the file and whichever sidecars
-- were written (the run's stamp is its own, so these names are this run's). A backup is
-- kept only whole, or reported as failed and gone.
local function remove_partial(run, relative)
  run.store.discard(relative)
end

local function backup_database(run, db, relative)
  local started = os.time()
  local properties, err = postgres.database_properties(run.conn, db)
  if not properties then error(err, 0) end
  if run.key then properties = postgres.seal_settings(properties, run.key) end
  local size = run.conn:database_size(db)

  local dump_into = run.storage.dump_format == "custom" and dump_database_custom or dump_database
  local result = dump_into(run, db, relative, size)
  if not result.tail:find(repo.COMPLETION_MARKERS.database) then
    remove_partial(run, relative)
    error("pg_dump output lacks its completion marker (truncated dump)", 0)
  end

  local encrypted, encryption = encryption_facts(run)
  local manifest = {
    format = "bkr-backup-1",
    kind = "database",
    database = db,
    type = run.type,
    file = relative:match("[^/]+$"),
    start_time = repo.iso_time(started),
    end_time = repo.iso_time(os.time()),
    seconds = result.elapsed,
    bkr_version = bkr.version,
    pg_dump_version = run.pg_dump_version,
    server_version = run.server_version,
    raw_bytes = result.bytes_in,
    stored_bytes = result.bytes_out,
    sha256 = result.sha256,
    compression = codec.facts(run.storage, run.cfg),
    dump_format = run.storage.dump_format,
    encrypted = encrypted,
    encryption = encryption,
    database_properties = properties,
    dump_timezone = DUMP_TIMEZONE,
    tables = result.tables,
  }
  local ok, werr = run.store.finish(relative, manifest.sha256, manifest)
  if not ok then
    remove_partial(run, relative)
    error(werr, 0)
  end
  return manifest
end

local function backup_globals(run)
  local allowed, why = postgres.can_read_globals(run.conn)
  if allowed == nil then return nil, "could not ask the server whether the user may read roles: " .. why end
  if not allowed then
    warn("skipping roles and tablespaces: user may not read them (pg_dumpall needs a superuser)")
    logging.step("globals", { level = "warning", result = "skipped", reason = "the user may not read roles" })
    return true
  end
  local relative = repo.globals_file(run.type, run.stamp, run.key ~= nil, run.globals_storage)
  local started = os.time()
  local child, err = proc.spawn{
    argv = { run.pg_dumpall, "--globals-only", "--no-password" },
    env = config.child_env(run.cfg, run.cfg.connection.dbname),
  }
  if not child then return nil, err end
  local stages = {
    child:source{ name = "pg_dumpall" },
    stream.tail{ name = "tail", bytes = TAIL_BYTES },
    codec.compress(run.globals_storage, run.cfg),
  }
  add_encryption(run, stages)
  stages[#stages + 1] = hash.sha256{ name = "sha256" }
  stages[#stages + 1] = run.store.sink(relative)
  local ok, result = pcall(stream.run, stages)
  child:close()
  if not ok then return nil, result end
  if not result.tail:find(repo.COMPLETION_MARKERS.globals) then
    remove_partial(run, relative)
    return nil, "pg_dumpall output lacks its completion marker"
  end
  local manifest = {
    format = "bkr-backup-1", kind = "globals", type = run.type, file = relative:match("[^/]+$"),
    start_time = repo.iso_time(started), end_time = repo.iso_time(os.time()), seconds = result.elapsed,
    bkr_version = bkr.version, pg_dump_version = run.pg_dump_version, server_version = run.server_version,
    raw_bytes = result.bytes_in, stored_bytes = result.bytes_out, sha256 = result.sha256,
    compression = codec.facts(run.globals_storage, run.cfg), dump_format = "plain",
  }
  manifest.encrypted, manifest.encryption = encryption_facts(run)
  local wok, werr = run.store.finish(relative, manifest.sha256, manifest)
  if not wok then
    remove_partial(run, relative)
    return nil, werr
  end
  run.written[#run.written + 1] = run.store.path(relative)
  logging.step("globals", { result = "ok", file = relative, bytes = result.bytes_out, seconds = result.elapsed })
  say("backed up globals: %s", relative)
  return true
end

-- Databases named with --db must be on the server, or nothing is dumped (not even the
-- globals): a typo is a usage error, exit 2, that lists the server's databases. (A name from
-- the configuration that is gone fails that database alone; the others still run.)
local function check_named_databases(run, named)
  if not named then return end
  local all, err = postgres.list_databases(run.conn)
  if not all then cli.fail(cli.EXIT_FAILED, "%s", err) end
  local present, names = {}, {}
  for _, db in ipairs(all) do
    present[db.name] = true
    names[#names + 1] = cli.printable(db.name)
  end
  local missing = {}
  for _, name in ipairs(named) do
    if not present[name] then missing[#missing + 1] = cli.printable(name) end
  end
  if #missing > 0 then
    cli.usage_error("backup: no database %s on the server; its databases: %s", table.concat(missing, ", "),
      #names > 0 and table.concat(names, ", ") or "(none)")
  end
end

-- ------------------------------------------------------------------ the run

local options = parse_arguments({ ... })
if not options then return cli.EXIT_OK end

local run = { cfg = config.load(options, { remote = true }), written = {} }
run.type = options.type or "daily"
if not repo.valid_type(run.type) then
  cli.usage_error("backup: --type must be daily, weekly or monthly, not '%s'", run.type)
end
local location = config.repository(run.cfg)
logging.start()
run.key, run.key_id = keys.load(run.cfg, options)
run.chunk_size = 65536
run.storage = codec.for_backup(run.cfg)        -- the databases'
run.globals_storage = codec.for_config(run.cfg) -- plain SQL from pg_dumpall, compressed by bkr
-- Locked for this run (lib/store.lua): a directory's lock file, or this host's lock on an
-- s3:// prefix (and the uploads a killed run left open there are aborted).
run.store = store.open(run.cfg, location, { write = true, create = options.create_repo })
run.repo = run.store.name
local lock <close> = run.store.lock
logging.step("lock", { level = "debug" })
-- An encrypted custom-format backup's archive is plaintext until bkr encrypts it: it waits in
-- a private directory (0700) under $TMPDIR, never in the repository, gone when the run ends;
-- so does any archive bound for object storage (pg_dump writes it to a file first).
local private_guard
if run.storage.dump_format == "custom" and (run.key or run.store.remote) then
  run.private_dir, private_guard = tempdir.private("bkr-archive")
end
local _ <close> = private_guard

run.conn = postgres.connect(run.cfg)
local server_num, server_version = run.conn:server_version()
run.server_version = server_version
local server_major = server_num // 10000
run.pg_dump, run.pg_dump_version = postgres.find_program("pg_dump", server_major, run.cfg)
if run.storage.dump_format == "custom" then
  local why
  run.pg_dump_compress, why = codec.pg_dump_compress(run.cfg, tonumber(run.pg_dump_version:match("^(%d+)")))
  if not run.pg_dump_compress then cli.usage_error("configuration: %s", why) end
  run.pg_restore = postgres.find_program("pg_restore", server_major, run.cfg)
end
if not options.no_globals then run.pg_dumpall = postgres.find_program("pg_dumpall", server_major, run.cfg) end
logging.step("connect", { server_version = server_version, pg_dump = run.pg_dump, pg_dump_version = run.pg_dump_version })
check_named_databases(run, options.db)
run.databases = postgres.databases(run.conn, run.cfg)
logging.step("databases", { level = "debug", databases = run.databases })
if #run.databases == 0 then cli.fail(cli.EXIT_FAILED, "backup: no databases to back up") end
local available, needed = check_free_space(run)
logging.step("free_space", { available_bytes = available, needed_bytes = needed })
-- One stamp for every file of this run; a run in the same second as the last one gets "-2".
run.stamp = repo.new_stamp(os.time(), function(second)
  return run.store.highest_sequence(run.type, { "backup_", "globals_" }, second)
end)

if (run.cfg.retention[run.type] or 0) == 0 and not options.no_rotate then
  warn("retention.%s is 0: the next rotation removes this backup unless it is the newest verified one;"
    .. " set retention.%s to keep %s backups", run.type, run.type, run.type)
end

local failed, attempted, done = 0, #run.databases, 0
for _, db in ipairs(run.databases) do
  if bkr.interrupted() then break end
  local started = bkr.monotonic()
  local relative = repo.backup_file(run.type, run.stamp, db, run.key ~= nil, run.storage)
  local ok, manifest = pcall(backup_database, run, db, relative)
  -- An interrupt may land after the last file is in place: then the run says "interrupted",
  -- so nothing of this database may stay (a backup is whole and reported, or gone).
  if ok and bkr.interrupted() then ok, manifest = false, "interrupted" end
  done = done + 1
  if ok then
    run.written[#run.written + 1] = run.store.path(relative)
    say("backed up %s: %s, %s raw -> %s stored (%.1fx) in %.1f s", cli.printable(db), relative,
      cli.size(manifest.raw_bytes), cli.size(manifest.stored_bytes),
      manifest.raw_bytes / math.max(manifest.stored_bytes, 1), manifest.seconds)
    repo.log(run.repo, { step = "dump", database = db, type = run.type, result = "ok", file = relative,
      bytes = manifest.stored_bytes, raw_bytes = manifest.raw_bytes, seconds = manifest.seconds })
  else
    failed = failed + 1
    remove_partial(run, relative)
    local message = cli.detail(manifest)
    warn('database "%s" failed: %s', cli.printable(db), cli.printable(message))
    repo.log(run.repo, { step = "dump", database = db, type = run.type,
      result = bkr.interrupted() and "interrupted" or "failed", error = message, seconds = bkr.monotonic() - started })
  end
end

if not options.no_globals and not bkr.interrupted() then
  attempted = attempted + 1
  local called, ok, err = pcall(backup_globals, run)
  if not called or bkr.interrupted() then ok, err = nil, called and "interrupted" or ok end
  if not ok then
    remove_partial(run, repo.globals_file(run.type, run.stamp, run.key ~= nil, run.globals_storage))
    failed = failed + 1
    warn("globals failed: %s", cli.detail(err))
    repo.log(run.repo, { step = "globals", database = "(globals)", type = run.type, result = "failed",
      error = cli.detail(err) })
  end
end
run.conn:close()

if bkr.interrupted() then
  warn("interrupted: %s backed up, the rest skipped; rotation skipped", cli.plural(done - failed, "database", "databases"))
  return cli.EXIT_FAILED
end
if failed > 0 then
  warn("%d of %d backups failed; rotation skipped", failed, attempted)
  return cli.EXIT_FAILED
end
if not options.no_rotate then
  local removed, errors
  if run.store.remote then
    removed, errors = rotation.run_remote(run.store.s3, run.cfg.retention, { protect = run.written })
  else
    removed, errors = rotation.run(run.repo, run.cfg, { protect = run.written })
  end
  logging.step("rotate", { removed = removed, errors = errors[1] and errors, level = errors[1] and "error" or nil })
  if #errors > 0 then
    warn("rotation: %s", table.concat(errors, "; "))
    return cli.EXIT_FAILED
  end
end
return cli.EXIT_OK
