-- Verify backups: checksum, gzip or zstd integrity, size, completion marker, per-table digests
--
-- The runbook, per backup file:
--   1. the .sha256 sidecar and the .json manifest exist and agree with each other
--   2. one pass over the file: SHA-256 of the stored bytes, (an encrypted backup: decrypt,
--      authenticating every chunk), decompress all of it (gzip or zstd: lib/codec.lua), the
--      raw size, the per-table row
--      counts and digests, and the last bytes of the dump. An encrypted backup without a
--      key gets the SHA-256 check only, and its verdict says so ("checksum-only")
--   3. compare: stored SHA-256 with sidecar and manifest, raw size and tables with the
--      manifest, and pg_dump's completion marker at the very end (a truncated dump is not
--      a backup)
--   4. record the verdict (time, result, reason) in the manifest; a weaker verdict never
--      replaces a stronger one that still holds: a checksum-only pass of a backup that
--      passed in full keeps "passed" (and notes the time of the checksum check)
-- --latest checks the newest backup of each database and the globals file of the same run.
-- A file bkr may not read is a permission problem: exit 1 with the fix, never "FAILED".
-- Only a finding about the backup's bytes is "failed" (judge and DAMAGE_KINDS below); a check
-- the environment stopped (no temporary directory, a full disk, pg_restore killed) records
-- nothing and exits 1, an interrupt exits 130/143.
-- An off-site copy in object storage (--repo s3://...) is checked the same way, streamed from
-- the bucket (a custom-format archive there is downloaded, checked as it comes, into a private
-- temporary file for pg_restore: restore.with_archive).
-- Exit 0 when every file passes, 3 when any fails.
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local stream = require "bkr.stream"
local codec = require "lib.codec"
local hash = require "bkr.hash"
local dump = require "bkr.dump"
local crypto = require "bkr.crypto"
local keys = require "lib.keys"
local logging = require "lib.logging"

local lfs = require "lfs"
local proc = require "bkr.proc"
local restore = require "lib.restore"
local postgres = require "lib.postgres"
local remote = require "lib.remote"
local json = require "lib.json"

-- The configuration, for finding pg_restore (set once loaded).
local cfg_for_restore

-- pg_restore for an archive of pg_dump `version` ("15.20"): the same major, else the oldest
-- newer one (postgres.find_program), found once per major.
local pg_restore_paths = {}
local function pg_restore_program(version)
  local major = tonumber(tostring(version):match("^(%d+)")) or 0
  pg_restore_paths[major] = pg_restore_paths[major] or postgres.find_program("pg_restore", major, cfg_for_restore)
  return pg_restore_paths[major]
end

local function parse_arguments(args)
  return cli.parse(args, {
    name = "verify",
    usage = "bkr verify [PATH | --latest | --all] [--db NAME]... [--repo DIR|s3://B/P] [--config FILE] [--key-file FILE]",
    summary = "Check backups end to end and record the verdict in each manifest.\n"
      .. "PATH is a backup file; --latest (the default) checks the newest backup of each database\n"
      .. "and the globals file of the same run; --all checks every backup in the repository.\n"
      .. "Encrypted backups are authenticated chunk by chunk with the key (--key-file or\n"
      .. "encryption.key_file); without a key only their SHA-256 is checked.",
    positional = "PATH",
    options = {
      { "--latest", nil, "the newest backup of each database and its run's globals (default)" },
      { "--all", nil, "every backup in the repository, globals included" },
      { "--db", "NAME", "only backups of this database (repeatable)", repeatable = true },
      { "--repo", "DIR", "repository directory or s3://BUCKET/PREFIX (overrides the configuration)" },
      { "--config", "FILE", "configuration file" },
      { "--key-file", "FILE", "key of encrypted backups (overrides encryption.key_file)" },
      { "--no-record", nil, "do not write the verdict into the manifests" },
    },
    exit_codes = "0 all passed, 3 a backup failed verification, 1 verification could not run (a file bkr\n"
      .. "            may not read: the fix is printed; no temporary directory, a full disk, pg_restore\n"
      .. "            killed: nothing recorded), 2 usage (no repository at DIR, a --db without backups)",
    see = "docs/verify.md",
  })
end

-- ------------------------------------------------------------------ what to verify

-- PATH as given: a backup in a repository, or a copy anywhere under any name, told apart
-- by the manifest beside it (PATH.json, whose `file` is the original name).
local function describe_path(path)
  local dir, file = path:match("^(.*)/([^/]+)$")
  if not dir then dir, file = ".", path end
  local type_dir, type_ = dir:match("^(.-)/?([^/]*)$")
  local stamp, escaped, encrypted = repo.match_backup(file)
  local kind = stamp and "database"
  if not stamp then
    stamp, encrypted = repo.match_globals(file)
    kind = stamp and "globals"
  end
  if stamp and repo.valid_type(type_) then
    for _, entry in ipairs(repo.scan(type_dir ~= "" and type_dir or ".", { type = type_, globals = true, future = true })) do
      if entry.file == file then return entry end
    end
  end
  if not lfs.symlinkattributes(path) then cli.usage_error("verify: %s: no such file", path) end
  local entry = {
    path = path, file = file, type = type_ ~= "" and type_ or ".", stamp = stamp,
    sidecar = path .. ".sha256", manifest_path = path .. ".json",
    regular = lfs.symlinkattributes(path, "mode") == "file",
    kind = kind or "database", encrypted = encrypted or file:match("%.enc$") ~= nil,
    database = escaped and repo.unescape_name(escaped),
  }
  local manifest, err, kind = repo.read_manifest(entry.manifest_path)
  if manifest and not kind then
    -- a renamed copy: what it is comes from its manifest
    entry.kind, entry.database, entry.encrypted = manifest.kind, manifest.database, manifest.encrypted == true
  end
  if manifest then
    entry.original_file = manifest.file
    entry.manifest, entry.manifest_error, entry.manifest_kind = repo.load_manifest(entry)
  else
    entry.manifest_error, entry.manifest_kind = err, kind
  end
  if stamp then entry.time, entry.sequence = repo.parse_stamp(stamp) end
  entry.future = entry.time ~= nil and repo.is_future(entry)
  return entry
end

local remote_lock -- this host's lock on an s3:// prefix whose manifests get verdicts

local function select_backups(options, cfg)
  if #options.args > 0 then
    local list = {}
    for _, path in ipairs(options.args) do list[#list + 1] = describe_path(path) end
    return list
  end
  local dir, scan = config.repository(cfg), repo.scan
  if remote.is_url(dir) then
    local store = remote.open(cfg, dir)
    -- Recording verdicts rewrites manifests in the bucket: not while this host's backup or
    -- rotation changes the prefix (a verdict written for a backup rotation just removed would
    -- leave a manifest without its data). The lock is taken before the listing, and released
    -- when the run ends. No log there.
    if not options.no_record then remote_lock = remote.lock(store) end
    dir = nil
    scan = function(_, filter)
      local entries, err, kind = remote.scan(store, filter)
      if not entries then cli.fail(cli.EXIT_FAILED, "verify: cannot list %s: %s (%s)", store.url, err, kind) end
      return entries
    end
    if options.db and #scan(nil, { db = options.db }) == 0 then
      cli.usage_error("no backups of %s in %s", cli.printable(table.concat(options.db, ", ")), store.url)
    end
  else
    dir = repo.open(dir)
    repo.require_backups_of(dir, options.db)
  end
  if options.all then
    return scan(dir, { db = options.db, globals = not options.db, future = true }), dir
  end
  -- The newest backup of each database, then the globals of the same run(s): rotation keeps
  -- the newest verified globals, so they must be verified with the databases.
  local all = scan(dir, { db = options.db, globals = true })
  local newest, seen, runs = {}, {}, {}
  for _, entry in ipairs(all) do
    if entry.kind == "database" and not seen[entry.database] then
      seen[entry.database] = true
      newest[#newest + 1] = entry
      runs[entry.type .. "/" .. entry.stamp] = true
    end
  end
  for _, entry in ipairs(all) do
    if entry.kind == "globals" and runs[entry.type .. "/" .. entry.stamp] then newest[#newest + 1] = entry end
  end
  return newest, dir
end

-- ------------------------------------------------------------------ the checks

-- Compare the tables gathered from the file with the manifest's.
local function compare_tables(found, recorded)
  local by_name = {}
  for _, t in ipairs(recorded or {}) do by_name[t.schema .. "." .. t.name] = t end
  if #found ~= #(recorded or {}) then
    return string.format("manifest mismatch: %s in the dump, %d in the manifest", cli.plural(#found, "table", "tables"),
      #(recorded or {}))
  end
  for _, t in ipairs(found) do
    local r = by_name[t.schema .. "." .. t.name]
    if not r then return "manifest mismatch: table " .. t.schema .. "." .. t.name .. " not in the manifest" end
    if r.rows ~= t.rows or r.digest ~= t.digest then
      return string.format("manifest mismatch: table %s.%s has %s (digest %s), manifest says %d (%s)",
        t.schema, t.name, cli.plural(t.rows, "row", "rows"), t.digest:sub(1, 12), r.rows, tostring(r.digest):sub(1, 12))
    end
  end
  return nil
end

-- What a failed pipeline means for the admin, by the error's kind (runtime/error.h).
local function explain(err)
  local kind = cli.kind(err)
  if kind == "key" then return "wrong key: " .. cli.reason(err) end
  if kind == "truncated" then return "truncated: " .. cli.detail(err) end
  if kind == "corrupt" then return "corrupt: " .. cli.detail(err) end
  return cli.detail(err)
end

-- ------------------------------------------------------------------ damage or not

-- A check ends in one outcome:
--   { result = "passed" } / { result = "checksum-only" }  sound (recorded)
--   { result = "failed", reason = R }       a finding about the backup's bytes (recorded, exit 3)
--   { result = "wrong_key", reason = R }    says nothing about the backup (not recorded, exit 3)
--   { result = "unverified", reason = R }   the environment stopped the check: a temporary
--                                           directory missing or full, an I/O error, a child
--                                           killed by a signal or that could not start
--                                           (not recorded: the last verdict stays; exit 1)
--   { result = "interrupted" }              SIGINT/SIGTERM (not recorded; exit 130/143)
local PASSED, INTERRUPTED = { result = "passed" }, { result = "interrupted" }

local function failed(reason) return { result = "failed", reason = reason } end
local function unverified(reason) return { result = "unverified", reason = reason } end

-- The kinds of errors that are findings about the bytes read from the backup (repo.DAMAGE_KINDS,
-- shared with restore). Every other kind (io, no_space, permission, missing, exists,
-- child_failed, usage, an error without a kind) is the environment's; a missing sidecar,
-- manifest or completion marker, a checksum, size or table mismatch are findings the checks
-- name themselves (failed(...)).
local DAMAGE_KINDS = repo.DAMAGE_KINDS

-- The outcome of an error raised while reading a backup (from a pipeline, a pcall). `child`:
-- the process that read the data (pg_restore), if any. A child killed by a signal (SIGKILL,
-- the OOM killer, a shutdown) is the environment's whatever its cut-short output made the
-- next stage say; a child that exited with its own non-zero status read the data and found
-- it bad. (A pg_restore still running when the digests found its output malformed is ended by
-- the pipeline's abort, with a signal too: reported as not verified, which records nothing,
-- rather than risk calling a sound backup damaged.)
local function judge(err, child)
  local kind = cli.kind(err)
  -- an interrupt may arrive as the host's plain "interrupted by SIGTERM", raised by its hook
  -- inside whatever Lua code ran: never a finding
  if kind == "interrupted" or bkr.interrupted() then return INTERRUPTED end
  if kind == "key" then return { result = "wrong_key", reason = explain(err) } end
  if child then
    local ok, _, how = pcall(child.wait, child)
    if ok and how == "signal" then
      return unverified("pg_restore was killed by a signal: " .. cli.detail(err))
    end
    if ok and how == "exit" and kind == "child_failed" then return failed(explain(err)) end
  end
  if DAMAGE_KINDS[kind] then return failed(explain(err)) end
  return unverified(explain(err))
end

-- A file of the backup that cannot be opened or read (nil, message, kind from a binding):
-- gone or not a regular file is damage; anything else (EIO, EMFILE...) the environment's.
local function unreadable(message, kind)
  if kind == "interrupted" or bkr.interrupted() then return INTERRUPTED end
  if kind == "missing" or kind == "not_regular" then return failed("missing: " .. tostring(message)) end
  return unverified(tostring(message))
end

-- The SHA-256 of the stored bytes: of the file, or streamed from the bucket.
local function stored_sha256(entry)
  if not entry.remote then return hash.sha256_file(entry.path) end
  local ok, result = pcall(stream.run, { remote.source(entry.store, entry), hash.sha256{ name = "sha256" },
    stream.to_null() })
  if not ok then return nil, cli.detail(result), cli.kind(result) end
  return result.sha256
end

-- Only the SHA-256 of the stored bytes: an encrypted backup when no key was given.
local function check_checksum_only(entry, expected)
  local digest, err, kind = stored_sha256(entry)
  if not digest then return unreadable(err, kind) end
  if digest ~= expected then
    return failed(string.format("checksum mismatch: file has %s, sidecar says %s", digest, expected))
  end
  return { result = "checksum-only" }
end

-- pg_restore --data-only reading the archive back as SQL through the per-table digests.
local function read_back_archive(entry, archive)
  local reader, err = proc.spawn{
    argv = { pg_restore_program(entry.manifest.pg_dump_version), "--data-only", "--file=-", archive },
    stdout = "pipe", stderr = "capture",
  }
  if not reader then return unverified("pg_restore could not start: " .. tostring(err)) end
  local done, result = pcall(stream.run, { reader:source{ name = "pg_restore" },
    dump.table_digests{ name = "tables" }, stream.tail{ name = "tail", bytes = 1024 }, stream.to_null() })
  local said = reader:stderr()
  local outcome
  if not done then
    outcome = judge(result, reader)
    if outcome.result == "failed" then
      outcome = failed("corrupt: pg_restore cannot read the archive: "
        .. cli.printable((said:gsub("%s+$", ""):match("[^\n]*$") or "")) .. " (" .. cli.detail(result) .. ")")
    end
  end
  reader:close()
  if outcome then return outcome end
  if not result.tail:find(repo.COMPLETION_MARKERS.database) then
    return failed("truncated: pg_restore's reading of the archive does not end with the completion marker")
  end
  local mismatch = compare_tables(result.tables, entry.manifest.tables)
  return mismatch and failed(mismatch) or PASSED
end

-- A custom-format archive (format: custom): the SHA-256 of the stored bytes first, then
-- (decrypted to a private temporary file when encrypted: restore.with_archive) the archive's
-- size, and pg_restore --data-only reading it back as SQL through the per-table digests, to
-- compare with the manifest as a plain dump's are. pg_restore must succeed and its output
-- end with the completion marker.
local function check_custom(entry, key, expected)
  -- (from a bucket, the download is checked against the manifest's SHA-256 as it streams:
  -- restore.with_archive; the sidecar agrees with it, remote.check_sidecars)
  if not entry.remote then
    local digest, herr, hkind = hash.sha256_file(entry.path)
    if not digest then return unreadable(herr, hkind) end
    if digest ~= expected then
      return failed(string.format("checksum mismatch: file has %s, sidecar says %s", digest, expected))
    end
  end
  local run = { cfg = cfg_for_restore, key = key }
  local ok, outcome = pcall(restore.with_archive, run, entry, function(archive, bytes)
    if entry.manifest.raw_bytes ~= bytes then
      return failed(string.format("manifest mismatch: the archive has %d bytes, manifest says %d", bytes,
        entry.manifest.raw_bytes))
    end
    return read_back_archive(entry, archive)
  end)
  if not ok and remote.transfer_failed(outcome) and cli.kind(outcome) ~= "interrupted" and not bkr.interrupted() then
    return unverified(cli.detail(outcome)) -- the bucket's side failed: nothing about the bytes
  end
  if not ok then return judge(outcome) end
  return outcome
end

-- The outcome of checking one backup (see above).
local function check(entry, key)
  local expected, err, kind
  if entry.remote then
    expected, err, kind = remote.check_sidecars(entry.store, entry)
    -- a bucket that refuses or cannot be reached says nothing about the backup (its "auth" is
    -- a refused key, not a forged chunk): only a missing or wrong sidecar or manifest is damage
    if not expected and kind ~= "corrupt" and kind ~= "missing" then return unverified(err) end
  else
    expected, err = repo.check_sidecars(entry)
  end
  if not expected then return failed(err) end
  local manifest = entry.manifest

  if entry.encrypted and not key then return check_checksum_only(entry, expected) end
  local storage = codec.for_entry(entry)
  if storage and storage.dump_format == "custom" then return check_custom(entry, key, expected) end

  local source, open_err, open_kind
  if entry.remote then
    source = remote.source(entry.store, entry)
  else
    source, open_err, open_kind = stream.from_file(entry.path)
  end
  if not source then return unreadable(open_err, open_kind) end
  local stages = { source, hash.sha256{ name = "stored" } }
  if entry.encrypted then stages[#stages + 1] = crypto.decrypt{ key = key } end
  if not storage then return failed("damaged: neither its name nor its manifest says how it is stored") end
  stages[#stages + 1] = codec.decompress(storage)
  -- a psql meta-command pg_dump never writes (\! runs a shell): a forged dump, refused by
  -- restore too, so it fails here
  stages[#stages + 1] = dump.refuse_meta_commands()
  if entry.kind == "database" then stages[#stages + 1] = dump.table_digests{ name = "tables" } end
  stages[#stages + 1] = stream.tail{ name = "tail", bytes = 1024 }
  stages[#stages + 1] = stream.to_null()

  -- The checksum is judged first: a flipped byte is a checksum mismatch even when gunzip
  -- notices it too, and a file cut short is "truncated".
  local ok, result = pcall(stream.run, stages)
  if not ok and entry.remote and remote.transfer_failed(result) then
    -- the bucket's side of the transfer failed (network, access): not a finding about the bytes
    if cli.kind(result) == "interrupted" or bkr.interrupted() then return judge(result) end
    return unverified(cli.detail(result))
  end
  if not ok then
    local outcome = judge(result)
    if outcome.result ~= "failed" and outcome.result ~= "unverified" then return outcome end
    if cli.kind(result) ~= "truncated" then
      local digest = stored_sha256(entry)
      if digest and digest ~= expected then return failed("checksum mismatch: " .. explain(result)) end
    end
    return outcome
  end
  if result.stored ~= expected then
    return failed(string.format("checksum mismatch: file has %s, sidecar says %s", result.stored, expected))
  end
  local raw_bytes = 0
  for _, stage in ipairs(result.stages) do
    if stage.name == "decompress" then raw_bytes = stage.bytes_out end
  end
  if manifest.raw_bytes ~= raw_bytes then
    return failed(string.format("manifest mismatch: %d bytes after decompression, manifest says %d",
      raw_bytes, manifest.raw_bytes))
  end
  if not result.tail:find(repo.COMPLETION_MARKERS[entry.kind]) then
    return failed("truncated: the dump does not end with pg_dump's completion marker")
  end
  if entry.kind == "database" then
    local mismatch = compare_tables(result.tables, manifest.tables)
    if mismatch then return failed(mismatch) end
  end
  return PASSED
end

-- The verdict to record, from the last one and this run's outcome (passed, checksum-only or
-- failed: the others record nothing). A failure always counts (a file that fails its checksum
-- is failed). A checksum-only pass of a backup whose last verdict is "passed" keeps that
-- verdict, with its time: the stored bytes are still those a full check passed; the checksum
-- check's own time is kept beside it (checksum_only_time).
local function verdict_to_record(previous, outcome, now)
  if outcome.result == "checksum-only" and previous and previous.result == "passed" then
    return { time = previous.time, result = "passed", checksum_only_time = now }
  end
  return { time = now, result = outcome.result, reason = outcome.reason }
end

-- What is recorded for each outcome: a finding about the backup, or nothing.
local RECORDED = { passed = true, ["checksum-only"] = true, failed = true }

-- Returns the verdict recorded (nil when there is none to record), or nil, the error.
local function record(entry, outcome)
  if not entry.manifest then return end
  -- A wrong key, or a check the environment stopped, says nothing about the backup: keep its
  -- last verdict.
  if not RECORDED[outcome.result] then return end
  local recorded = verdict_to_record(entry.manifest.verification, outcome, repo.iso_time(os.time()))
  entry.manifest.verification = recorded
  -- An unrecorded "passed" would leave the backup unprotected from rotation: say so.
  local ok, err
  if entry.remote then
    ok, err = remote.put(entry.store, entry.relative .. ".json", json.encode(entry.manifest, true) .. "\n")
  else
    ok, err = repo.write_manifest(entry.path, entry.manifest)
  end
  if not ok then return nil, err end
  return recorded
end

-- ------------------------------------------------------------------ the run

local options = parse_arguments({ ... })
if not options then return cli.EXIT_OK end
if options.latest and options.all then cli.usage_error("verify: --latest and --all exclude each other") end

local cfg = config.load(options, { remote = true })
cfg_for_restore = cfg
logging.start()
local backups, dir = select_backups(options, cfg)
if #backups == 0 then cli.fail(cli.EXIT_FAILED, "verify: no backups found%s", dir and (" in " .. dir) or "") end

-- Recording verdicts writes manifests: not while a backup or rotation changes the repository,
-- whether the backups were found by scanning it or given as paths inside it. (The locks are
-- released when the run ends.)
local locks = {}
if not options.no_record then
  local repos, sorted = {}, {}
  if dir then repos[dir] = true end
  for _, entry in ipairs(backups) do
    if entry.repo and not entry.remote then repos[entry.repo] = true end
  end
  for name in pairs(repos) do sorted[#sorted + 1] = name end
  table.sort(sorted)
  for _, name in ipairs(sorted) do locks[#locks + 1] = repo.lock(name) end
  logging.step("lock", { level = "debug", repositories = sorted })
end

-- A file bkr may not read stops the run before any verdict (exit 1, with the fix): it says
-- nothing about the backup.
for _, entry in ipairs(backups) do
  if not entry.remote then repo.require_readable(entry) end
end

-- The key, read once, and only when an encrypted backup is to be checked.
local key
for _, entry in ipairs(backups) do
  if entry.encrypted then
    key = keys.load(cfg, options)
    break
  end
end

local failures, partial_count, unrecorded, unverified_count = 0, 0, 0, 0
for _, entry in ipairs(backups) do
  if bkr.interrupted() then break end
  local outcome = check(entry, key)
  if outcome.result == "interrupted" or bkr.interrupted() then break end
  local recorded
  if not options.no_record then
    local rerr
    recorded, rerr = record(entry, outcome)
    if recorded == nil and rerr then
      unrecorded = unrecorded + 1
      cli.warn("verify", "the verdict for %s was not recorded: %s", cli.printable(entry.file), rerr)
    end
  end
  local label = cli.printable(entry.type .. "/" .. entry.file)
  if outcome.result == "unverified" then
    unverified_count = unverified_count + 1
    print(string.format("ERROR   %s: could not be verified (its last verdict is kept): %s", label,
      cli.printable(outcome.reason)))
  elseif outcome.reason then
    failures = failures + 1
    print(string.format("FAILED  %s: %s", label, cli.printable(outcome.reason)))
  elseif outcome.result == "checksum-only" then
    partial_count = partial_count + 1
    local holds = recorded and recorded.result == "passed"
      and string.format("; it passed in full at %s, which still holds", recorded.time) or ""
    print(string.format("ok      %s (checksum only: no key to authenticate the chunks%s)", label, holds))
  else
    print(string.format("ok      %s", label))
  end
  if entry.future then
    print(string.format("        %s is dated in the future (clock skew or a copied file?): "
      .. "--latest, the drill and rotation pass it by", label))
  end
  if dir then
    local result = outcome.result == "wrong_key" and "failed" or outcome.result
    repo.log(dir, { step = "check", database = entry.database or "(globals)", file = label,
      result = result, error = outcome.reason })
  end
end
if partial_count > 0 then
  io.stderr:write(string.format("bkr verify: %s not decrypted: no key given "
    .. "(--key-file FILE or encryption.key_file)\n", cli.plural(partial_count, "encrypted backup", "encrypted backups")))
end
if failures > 0 then
  io.stderr:write(string.format("bkr verify: %d of %d backups failed verification\n", failures, #backups))
  return cli.EXIT_INTEGRITY
end
if unverified_count > 0 then
  -- nothing is known about these backups: neither "failed" (exit 3) nor all passed
  cli.fail(cli.EXIT_FAILED, "verify: %s could not be verified (nothing recorded for %s); fix the cause "
    .. "above and run verify again", cli.plural(unverified_count, "backup", "backups"),
    unverified_count == 1 and "it" or "them")
end
if unrecorded > 0 then
  -- rotation protects only a recorded "passed": the run did not do all it was asked
  cli.warn("verify", "%s could not be recorded; rotation will not know these backups passed",
    cli.plural(unrecorded, "verdict", "verdicts"))
  return cli.EXIT_FAILED
end
return cli.EXIT_OK
