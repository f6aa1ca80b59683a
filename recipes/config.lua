-- Configuration backups with secrets encrypted field by field: backup, restore, verify, list
-- One runbook per subcommand, below; docs/config-backup.md describes each. The steps call:
--   lib/config_files.lua    file formats (YAML, .env: lib/config_format_*.lua), the cipher,
--                           whole files
--   lib/config_repo.lua     REPO/config: names, finding backups, staging and publishing,
--                           rotation, the log
--   lib/config_check.lua    checking a stored backup (verify; restore and backup before they act)
--   lib/config_restore.lua  restoring all or nothing
-- Exit codes: 0 ok, 1 failed, 2 usage or configuration, 3 integrity.
local lfs = require "lfs"
local fs = require "bkr.fs"
local hash = require "bkr.hash"
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local json = require "lib.json"
local keys = require "lib.keys"
local files = require "lib.config_files"
local config_repo = require "lib.config_repo"
local check = require "lib.config_check"
local config_restore = require "lib.config_restore"
local logging = require "lib.logging"

local SEE = "docs/config-backup.md"
local EXIT_CODES = "0 ok, 1 failed, 2 usage or configuration error, 3 integrity check failed"

-- ------------------------------------------------------------------ backup

local function parse_backup(args)
  return cli.parse(args, {
    name = "config backup",
    usage = "bkr config backup [FILE...] [--repo DIR] [--config FILE] [--key-file KEY] [--encrypt-all] "
      .. "[--legacy-xor] [--no-rotate]",
    summary = "Save configuration files into REPO/config/config_backup_<UTC time>/: YAML and .env files\n"
      .. "with every value under a sensitive key encrypted in place (AES-256-GCM), other files copied\n"
      .. "as they are (or encrypted whole with --encrypt-all), a manifest.json and a SHA256SUMS.\n"
      .. "The backup is verified before it is published; then the oldest beyond retention.daily go.\n"
      .. "With no FILE, the files listed in config_backup.files are saved.",
    positional = "FILE",
    options = {
      { "--repo", "DIR", "repository directory (overrides the configuration)" },
      { "--config", "FILE", "configuration file" },
      { "--key-file", "KEY", "key file (bkr keygen); else encryption.key_file or encryption.key_env" },
      { "--encrypt-all", nil, "store non-YAML, non-.env files (and unparsable YAML) encrypted whole" },
      { "--legacy-xor", nil, "write the previous tool's XOR values (NOT encryption; compatibility only)" },
      { "--no-rotate", nil, "keep every older config backup" },
    },
    exit_codes = EXIT_CODES,
    see = SEE,
  })
end

-- What will be saved: each FILE as an absolute path (or, with none, config_backup.files), its
-- kind and mode; each a regular file (a symlink is followed), a file named twice saved once.
-- Anything else is a usage error. A configured file is named by its key, not its value.
local function files_to_save(args, cfg)
  local words, names = args, {}
  if #args == 0 then
    words = (cfg.config_backup and cfg.config_backup.files) or {}
    for i = 1, #words do names[i] = "config_backup.files[" .. i .. "]" end
  end
  if #words == 0 then
    cli.usage_error("config backup: name at least one FILE, or list them in config_backup.files (see --help)")
  end
  local sources, seen = {}, {}
  for i, word in ipairs(words) do
    local name = names[i] or word
    local path = cli.absolute(word)
    local mode = lfs.attributes(path, "mode")
    if not mode then cli.usage_error("config backup: %s: no such file", name) end
    if mode ~= "file" then cli.usage_error("config backup: %s is a %s, not a regular file", name, mode) end
    if path:find("[\\\n]") then cli.usage_error("config backup: %s: unsupported character in the path", name) end
    if not seen[path] then
      seen[path] = true
      local source = { path = path, kind = files.kind(path), mode = fs.mode(path) & tonumber("777", 8) }
      -- With an ACL (the setfacl docs/config-backup.md suggests), the group bits are the ACL's
      -- mask: restored as a plain mode they would open the file to its group. They are left
      -- out, and the restore says the ACL is the admin's to put back.
      if fs.has_acl(path) then
        source.mode = source.mode & ~tonumber("070", 8)
        source.note = "had a POSIX ACL: not stored; the group bits, the ACL's mask, left out"
      end
      sources[#sources + 1] = source
    end
  end
  return sources
end

-- How this run seals secrets: the key (required), the sensitive keys (config_backup.sensitive_keys
-- or the default list), the cipher, and the options that change what is sealed how.
local function sealing(cfg, options)
  local seal = { encrypt_all = options.encrypt_all == true, legacy_xor = options.legacy_xor == true }
  seal.key, seal.key_id = keys.require(cfg, options)
  seal.patterns = (cfg.config_backup and cfg.config_backup.sensitive_keys) or files.DEFAULT_SENSITIVE_KEYS
  seal.sensitive = files.sensitive_matcher(seal.patterns)
  seal.cipher = files.cipher(seal.key, { legacy_xor = seal.legacy_xor })
  seal.cipher_name = seal.legacy_xor and "xor-legacy" or "aes-256-gcm"
  if seal.legacy_xor then
    cli.warn("config backup", "WARNING: --legacy-xor writes secrets XOR-ed with a repeating key: "
      .. "that is NOT encryption. Anyone who knows or guesses one value can recover the key and read "
      .. "every other value. Use it only for a tool that cannot read ENCRYPTED:v2 values.")
  end
  return seal
end

-- Why an application's file could not be read: a permission problem says whose it is and the
-- fix that leaves the file's owner and mode alone (the application still needs them): an ACL.
local function unreadable_source(path, message, kind)
  if kind ~= "permission" then return message end
  return cli.permission_message(path, { fix = "sudo setfacl -m u:USER:r " .. path .. " (docs/config-backup.md)" })
end

-- One file into the staged backup: a YAML or .env file with its secrets sealed field by field;
-- one that cannot be, refused (or with --encrypt-all sealed whole, with a note saying why);
-- any other file copied, or sealed whole with --encrypt-all. Returns its manifest entry;
-- raises on failure (the caller discards the staged backup).
local function store_file(staged, source, seal)
  local entry = { path = source.path, kind = source.kind, mode = string.format("%04o", source.mode),
    encrypted_fields = {}, whole_file_encrypted = false, note = source.note }

  if source.kind ~= "other" then
    -- the admin's own file: a symlink to it is followed, a FIFO is not (as files.store_whole)
    local text, rerr, rkind = fs.read_file(source.path, { follow = true })
    if not text then error(unreadable_source(source.path, rerr, rkind), 0) end
    local sealed, fields = files.protect(source.kind, text, seal.cipher, seal.sensitive)
    if sealed then
      local stored = config_repo.stored_name(source.path, false)
      local path = staged:file(stored)
      local ok, err = fs.write_file(path, sealed, repo.file_options(path, { mode = source.mode, overwrite = false }))
      if not ok then error(err, 0) end
      entry.size, entry.sha256 = #text, hash.sha256_string(text)
      entry.stored, entry.stored_sha256 = stored, hash.sha256_string(sealed)
      entry.encrypted_fields = fields
      return entry
    end
    local why = fields
    if not seal.encrypt_all then
      error(string.format("%s: %s; its secrets cannot be sealed field by field (--encrypt-all stores such "
        .. "a file encrypted whole)", source.path, why), 0)
    end
    entry.note = (entry.note and (entry.note .. "; ") or "") .. "encrypted whole: " .. why
  end

  local whole = seal.encrypt_all
  local stored = config_repo.stored_name(source.path, whole)
  local path = staged:file(stored)
  local result, err, kind = files.store_whole(source.path, path,
    { mode = source.mode, key = whole and seal.key or nil, owner = repo.owner_for(path) })
  -- (the staged directory is bkr's own: a permission problem is the source's)
  if not result then error(kind == "permission" and unreadable_source(source.path, err, kind) or (source.path .. ": " .. err), 0) end
  entry.size, entry.sha256 = result.size, result.sha256
  entry.stored, entry.stored_sha256 = stored, result.stored_sha256
  entry.whole_file_encrypted = whole
  return entry
end

local function backup(args)
  local options = parse_backup(args)
  if not options then return cli.EXIT_OK end

  -- 1. the configuration, the files to save (named, else configured), the key and how
  --    secrets are sealed
  local cfg = config.load(options)
  local sources = files_to_save(options.args, cfg)
  local root = repo.open(config.repository(cfg))
  logging.start("config backup")
  local seal = sealing(cfg, options)

  -- 2. lock the repository (what a crashed run left is removed); begin under a temporary name
  local lock <close> = config_repo.lock(root)
  logging.step("lock", { level = "debug" })
  local staged = config_repo.stage(root, os.time())

  -- 3. store every file, then manifest.json and SHA256SUMS; verify the whole backup as
  --    `config verify` does with the key; publish it under its name in one rename.
  --    On any failure or interrupt the staged backup is removed: nothing is written.
  local built, result = pcall(function()
    local entries = {}
    for _, source in ipairs(sources) do
      if bkr.interrupted() then error("interrupted", 0) end
      entries[#entries + 1] = store_file(staged, source, seal)
    end
    local manifest = staged:write_manifest({ key_id = seal.key_id, cipher = seal.cipher_name,
      sensitive_keys = seal.patterns, files = entries })
    local report = check.backup(staged.path, seal.key)
    if #report.problems > 0 then
      error("the new backup failed its own verification: " .. table.concat(report.problems, "; "), 0)
    end
    staged:publish()
    return manifest
  end)
  if not built then
    staged:discard()
    local message = cli.detail(result)
    config_repo.log(root, "failed", nil, { error = message })
    cli.fail(cli.EXIT_FAILED, "config backup failed, nothing written: %s", message)
  end

  -- 4. say what was saved, and log it
  local manifest = result
  local fields, whole = config_repo.counts(manifest)
  for _, entry in ipairs(manifest.files) do
    local detail = #entry.encrypted_fields > 0 and (cli.plural(#entry.encrypted_fields, "field", "fields") .. " encrypted")
      or entry.whole_file_encrypted and "encrypted whole" or "copied"
    cli.say("  %s (%s): %s", entry.path, entry.kind, detail)
  end
  cli.say("config backup %s: %s, %s, %s encrypted whole (key %s)", staged.final,
    cli.plural(#manifest.files, "file", "files"), cli.plural(fields, "encrypted field", "encrypted fields"),
    cli.plural(whole, "file", "files"), seal.key_id)
  config_repo.log(root, "ok", staged.name, { files = #manifest.files, encrypted_fields = fields })

  -- 5. rotate: the config backups beyond retention.daily go, never the newest
  if not options.no_rotate then
    local removed, errors = config_repo.rotate(root, cfg.retention, staged.final)
    logging.step("rotate", { removed = #removed, errors = errors[1] and errors, level = errors[1] and "error" or nil })
    for _, path in ipairs(removed) do cli.say("removed %s (beyond retention)", path) end
    if #errors > 0 then
      cli.warn("config backup", "rotation: %s", table.concat(errors, "; "))
      return cli.EXIT_FAILED
    end
  end
  return cli.EXIT_OK
end

-- ------------------------------------------------------------------ restore

local function parse_restore(args)
  return cli.parse(args, {
    name = "config restore",
    usage = "bkr config restore (BACKUP | --latest) --to DIR [--key-file KEY] [--overwrite] "
      .. "[--repo DIR] [--config FILE]",
    summary = "Restore every file of a config backup to DIR/<original path>, with its mode and its\n"
      .. "secrets decrypted (ENCRYPTED:v2 values, and the previous tool's XOR values with that key).\n"
      .. "BACKUP is a backup directory or its name (config_backup_YYYYMMDD_HHMMSS in REPO/config).\n"
      .. "All or nothing: every file is checked (each value authenticated, each file's SHA-256 equal\n"
      .. "to the original's) and staged beside its target before any is put in place; existing files\n"
      .. "are kept unless --overwrite; nothing is written through a symlink below DIR.",
    positional = "BACKUP",
    options = {
      { "--to", "DIR", "where to restore (required; / restores in place, with --overwrite)" },
      { "--latest", nil, "the newest config backup in the repository" },
      { "--key-file", "KEY", "key file; else encryption.key_file or encryption.key_env" },
      { "--overwrite", nil, "replace files that already exist" },
      { "--repo", "DIR", "repository directory (for --latest or a backup name)" },
      { "--config", "FILE", "configuration file" },
    },
    exit_codes = EXIT_CODES .. " (nothing written)",
    see = SEE,
  })
end

-- The one backup BACKUP or --latest names.
local function chosen_backup(options, what)
  if options.latest and #options.args > 0 then cli.usage_error("%s: give BACKUP or --latest, not both", what) end
  if options.latest then return config_repo.latest(options, what) end
  if #options.args ~= 1 then cli.usage_error("%s: give one BACKUP (or --latest); see --help", what) end
  return config_repo.resolve(options, options.args[1], what)
end

local function restore(args)
  local options = parse_restore(args)
  if not options then return cli.EXIT_OK end
  if not options.to then cli.usage_error("config restore: --to DIR is required") end
  local dir = chosen_backup(options, "config restore")
  local cfg = config.load(options)
  logging.start("config restore")
  local key = keys.load(cfg, options)

  -- 1. check everything first (a backup with secrets needs the key); a file bkr may not read
  --    is a permission problem (exit 1, with the fix), not damage
  check.require_readable(dir)
  local report = check.backup(dir, key)
  if report.unchecked > 0 then keys.require(cfg, options) end
  if #report.problems > 0 then
    for _, p in ipairs(report.problems) do cli.warn("config restore", "%s", p) end
    cli.fail(cli.EXIT_INTEGRITY, "config restore: %s failed its checks; nothing was restored", dir)
  end
  local manifest = report.manifest
  logging.step("check", { backup = dir, result = "passed" })

  -- 2. where each file goes: nothing written through a symlink, nothing replaced without --overwrite
  local plan = config_restore.plan(manifest, (options.to:gsub("/+$", "")), options.overwrite == true)

  -- 3. stage every file beside its target, then move them all into place (or none)
  config_restore.apply(plan, dir, key, report.plain)
  for _, step in ipairs(plan.steps) do
    cli.say("restored %s -> %s (mode %s)", step.file.path, step.target, step.file.mode)
    if step.file.note and step.file.note:find("POSIX ACL", 1, true) then
      cli.warn("config restore", "%s had a POSIX ACL when it was backed up; it is restored without it: "
        .. "set it again (setfacl -m u:postgres:r %s)", cli.printable(step.file.path), cli.printable(step.target))
    end
  end
  logging.step("apply", { backup = dir, files = #manifest.files, to = options.to })
  cli.say("restored %s from %s", cli.plural(#manifest.files, "file", "files"), dir)
  return cli.EXIT_OK
end

-- ------------------------------------------------------------------ verify

local function parse_verify(args)
  return cli.parse(args, {
    name = "config verify",
    usage = "bkr config verify [BACKUP... | --latest | --all] [--key-file KEY] [--repo DIR] [--config FILE]",
    summary = "Check config backups: SHA256SUMS, the manifest against every stored file, and, when a key\n"
      .. "is given or configured, that every encrypted value authenticates and every file opens to\n"
      .. "its original's SHA-256. Without a key, encrypted files are reported as not checked.\n"
      .. "Default: --latest.",
    positional = "BACKUP",
    options = {
      { "--latest", nil, "the newest config backup (default)" },
      { "--all", nil, "every config backup in the repository" },
      { "--key-file", "KEY", "key file; else encryption.key_file or encryption.key_env" },
      { "--repo", "DIR", "repository directory" },
      { "--config", "FILE", "configuration file" },
    },
    exit_codes = "0 all passed, 3 a backup failed, 1 could not run, 2 usage or configuration error",
    see = SEE,
  })
end

-- The backups to verify: --all, those named, or the newest.
local function backups_to_verify(options)
  local dirs = {}
  if options.all then
    for _, b in ipairs(config_repo.scan(config_repo.dir(repo.open(config.repository(config.load(options)))))) do
      dirs[#dirs + 1] = b.path
    end
  elseif #options.args > 0 then
    for _, word in ipairs(options.args) do dirs[#dirs + 1] = config_repo.resolve(options, word, "config verify") end
  else
    dirs[1] = config_repo.latest(options, "config verify")
  end
  return dirs
end

local function verify(args)
  local options = parse_verify(args)
  if not options then return cli.EXIT_OK end

  -- 1. which backups, and the key when there is one (without it, files with secrets are not checked)
  local dirs = backups_to_verify(options)
  local key = keys.load(config.load(options), options)
  logging.start("config verify")

  -- 2. check each; report its problems, or what was checked
  local failed = 0
  for _, dir in ipairs(dirs) do
    check.require_readable(dir)
  end
  for _, dir in ipairs(dirs) do
    local report = check.backup(dir, key)
    if #report.problems > 0 then
      failed = failed + 1
      cli.report("%s: FAILED", dir)
      for _, p in ipairs(report.problems) do cli.report("  %s", p) end
      logging.step("check", { backup = dir, result = "failed", error = table.concat(report.problems, "; ") })
    else
      local fields = config_repo.counts(report.manifest)
      local note = report.unchecked > 0
        and string.format("; %s with secrets not checked: no key", cli.plural(report.unchecked, "file", "files")) or ""
      cli.say("%s: ok (%s, %s%s)", dir, cli.plural(#report.manifest.files, "file", "files"),
        cli.plural(fields, "encrypted field", "encrypted fields"), note)
      logging.step("check", { backup = dir, result = "passed", unchecked = report.unchecked })
    end
  end
  if #dirs == 0 then cli.say("no config backups") end
  return failed > 0 and cli.EXIT_INTEGRITY or cli.EXIT_OK
end

-- ------------------------------------------------------------------ list

local function parse_list(args)
  return cli.parse(args, {
    name = "config list",
    usage = "bkr config list [--json] [--repo DIR] [--config FILE]",
    summary = "Config backups, newest first: time, name, files, encrypted fields, key id.",
    options = {
      { "--json", nil, "one JSON array, for scripts" },
      { "--repo", "DIR", "repository directory" },
      { "--config", "FILE", "configuration file" },
    },
    exit_codes = "0 listed (also when empty), 1 a manifest cannot be read (a permission problem: the fix is\n"
      .. "            printed), 2 usage or configuration error (no repository at DIR)",
    see = SEE,
  })
end

local function list(args)
  local options = parse_list(args)
  if not options then return cli.EXIT_OK end

  -- 1. every config backup, newest first, with what its manifest says (or why it cannot be read)
  local dir = config_repo.dir(repo.open(config.repository(config.load(options))))
  local rows, unreadable = {}, nil
  for _, b in ipairs(config_repo.scan(dir)) do
    local manifest, err, kind = config_repo.read_manifest(b.path)
    if not manifest and kind == "permission" then
      unreadable = unreadable or (b.path .. "/" .. config_repo.MANIFEST)
      err = "unreadable"
    end
    -- the same schema check as verify's, so a malformed manifest is reported, never a crash
    local bad = manifest and check.manifest_problem(manifest)
    if bad then manifest, err = nil, bad end
    local row = { name = b.name, time = repo.iso_time(b.time), path = b.path }
    if manifest then
      row.files = #(manifest.files or {})
      row.encrypted_fields, row.whole_files_encrypted = config_repo.counts(manifest)
      row.key_id, row.cipher = manifest.key_id, manifest.cipher
    else
      row.error = err
    end
    rows[#rows + 1] = row
  end

  -- 2. as JSON for scripts, or as a table for people
  -- a manifest bkr may not read ends the run after the listing, with the fix (exit 1)
  local function done()
    io.stdout:flush()
    if unreadable then repo.permission_failure(unreadable) end
    return cli.EXIT_OK
  end
  if options.json then
    print(json.encode(rows, true))
    return done()
  end
  if #rows == 0 then
    print("no config backups in " .. dir)
    return cli.EXIT_OK
  end
  -- the header style of `bkr list`: upper-case names, UTC said once, two spaces between columns
  print(string.format("%-20s  %-30s  %5s  %16s  %s", "TIME (UTC)", "NAME", "FILES", "ENCRYPTED FIELDS", "KEY"))
  for _, row in ipairs(rows) do
    if row.error == "unreadable" then
      print(string.format("%-20s  %-30s  %s", row.time, row.name, "unreadable (a permission problem)"))
    elseif row.error then
      print(string.format("%-20s  %-30s  %s", row.time, row.name, "unreadable manifest: " .. row.error))
    else
      print(string.format("%-20s  %-30s  %5d  %16d  %s%s", row.time, row.name, row.files, row.encrypted_fields,
        row.key_id or "-", row.cipher == "xor-legacy" and " (legacy XOR)" or ""))
    end
  end
  return done()
end

-- ------------------------------------------------------------------ dispatch

local SUBCOMMANDS = { backup = backup, restore = restore, verify = verify, list = list }

local OVERVIEW = [[
usage: bkr config SUBCOMMAND [options]

Configuration backups with field-level encryption of secrets.

subcommands:
  backup [FILE...]       save files (default: config_backup.files) into REPO/config/config_backup_<UTC time>/
  restore BACKUP --to D  restore every file of a backup under D, secrets decrypted
  verify [BACKUP]        check checksums, manifest and (with the key) every encrypted value
  list [--json]          config backups, newest first

`bkr config SUBCOMMAND --help` describes each.
exit codes: 0 ok, 1 failed, 2 usage or configuration error, 3 integrity check failed
documentation: docs/config-backup.md]]

return cli.subcommand("config", { ... }, OVERVIEW, SUBCOMMANDS)
