-- Copy backups between repositories, local or in S3-compatible storage, checked as they stream
-- (a local repository and its off-site copy, either way, or two of a kind). The runbook:
--   1. the two repositories: --from (default: the configured repository) and --to (default:
--      `offsite:` from the configuration); a local one must exist, and is locked while written
--   2. what the source holds: every complete backup (data, sidecar, valid manifest) and its
--      globals; an incomplete one (a backup still being written) is passed by
--   3. what the target lacks: a backup whose manifest is not there yet
--   4. each copy: the source's bytes through SHA-256 into the target, refused before it lands
--      unless the digest is the one the sidecar and manifest give; then the sidecar; then the
--      manifest, last: a backup counts as present only once its manifest is there
--   5. a target file under the same name with a different manifest is left alone and reported
-- Exit codes: 0 copied (or nothing to copy), 1 a copy failed (network, space, permission),
-- 2 usage or configuration, 3 a source backup failed its checksum (not copied).
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local store = require "lib.store"
local logging = require "lib.logging"
local stream = require "bkr.stream"
local hash = require "bkr.hash"

local options = cli.parse({ ... }, {
  name = "sync",
  usage = "bkr sync [--from REPO] [--to REPO] [--db NAME]... [--type TYPE] [--dry-run] [--config FILE]",
  summary = "Copy the backups the target repository lacks from the source, each checked against its\n"
    .. "SHA-256 as it streams, then its sidecar and manifest. A repository is a local directory or\n"
    .. "s3://BUCKET/PREFIX (object storage: the s3 section of the configuration, docs/offsite.md).",
  options = {
    { "--from", "REPO", "the source (default: the configured repository)" },
    { "--to", "REPO", "the target (default: offsite in the configuration)" },
    { "--db", "NAME", "only this database's backups (repeatable); globals still go with them", repeatable = true },
    { "--type", "TYPE", "only daily, weekly or monthly backups" },
    { "--dry-run", nil, "print what would be copied, copy nothing" },
    { "--config", "FILE", "configuration file" },
  },
  exit_codes = "0 copied, or nothing to copy, 1 a copy failed (network, space, permission; what was\n"
    .. "            copied stays), 2 usage or configuration error, 3 a source backup failed its checksum\n"
    .. "            (damaged: not copied; run bkr verify on the source)",
  see = "docs/offsite.md",
})
if not options then return cli.EXIT_OK end
if options.type and not repo.valid_type(options.type) then
  cli.usage_error("sync: --type must be daily, weekly or monthly, not '%s'", cli.printable(options.type))
end

local cfg = config.load(options, { remote = true })
local from = options.from or cfg.repository
local to = options.to or cfg.offsite
if not from then cli.usage_error("sync: no source: give --from REPO or set repository in the configuration") end
if not to then cli.usage_error("sync: no target: give --to REPO or set offsite in the configuration") end
config.check_repository_form(from, true)
config.check_repository_form(to, true)

-- ------------------------------------------------------------------ the copy

-- The two repositories (lib/store.lua); the target is locked while this run writes to it.
local source = store.open(cfg, from)
local target = store.open(cfg, to, { write = not options.dry_run })
if source.name == target.name then cli.usage_error("sync: --from and --to are the same repository (%s)", source.name) end
logging.use_repository(source.dir or target.dir)
logging.start()

local wanted = options.db and { db = options.db } or {}
-- (future: a backup dated ahead of this host's clock, taken on a host whose clock ran fast, is
-- a backup all the same; after a disaster it may be the newest there is)
local entries = source.scan({ db = wanted.db, type = options.type, globals = true, future = true })

-- The globals of a run go with its database backups: with --db, only the stamps those have.
local stamps = {}
for _, entry in ipairs(entries) do
  if entry.kind == "database" then stamps[entry.type .. "/" .. entry.stamp] = true end
end

local copied, present, damaged, failed, skipped = 0, 0, 0, 0, 0

-- One backup: bytes (checked against the digest they must have), sidecar, manifest.
local function copy(entry, relative, expected)
  local ok, result = pcall(stream.run, { source.source(entry), hash.sha256{ expect = expected },
    stream.progress{ label = relative, total = entry.stored_bytes }, target.sink(relative) })
  if not ok then
    -- (after SIGTERM, a remote target removes the partial copy again at exit: lib/store.lua)
    target.discard(relative)
    return nil, cli.reason(result), bkr.interrupted() and "interrupted" or cli.kind(result)
  end
  local fok, err, kind = target.finish(relative, expected, entry.manifest)
  if not fok then
    target.discard(relative)
    return nil, err, kind
  end
  return result
end

-- The backup in the target: nil (no manifest there), "whole" (this backup's manifest, data
-- and sidecar), "partial" (this backup's manifest without its data or sidecar: copied again),
-- or "other" (another backup's manifest under this name: left alone).
local function in_target(entry, relative)
  if not target.has(relative) then return nil end
  local theirs = target.read_manifest(relative)
  if not (theirs and theirs.sha256 == entry.manifest.sha256) then return "other" end
  return target.complete(relative) and "whole" or "partial"
end

-- A backup the target lacks (or holds only in part): checked at the source, then completed
-- when its data is already there, left alone when something else has its name, else copied.
local function bring(entry, relative, shown)
  local expected, err, kind = source.expected(entry)
  if not expected then
    if kind == "corrupt" or kind == "not_regular" or kind == "missing" then
      damaged = damaged + 1
      io.stderr:write("bkr: sync: not copied, damaged: ", source.name, "/", shown, ": ", cli.printable(err), "\n")
    else
      failed = failed + 1
      io.stderr:write("bkr: sync: cannot read ", source.name, "/", shown, ": ", cli.printable(err), "\n")
    end
    return
  end
  if options.dry_run then
    cli.say("would copy %s (%s)", shown, cli.size(entry.stored_bytes or 0))
    copied = copied + 1
    return
  end
  -- (a local target hashes a file already under the name: once)
  local occupied = target.occupied and target.occupied(relative, expected)
  if occupied == "same" then
    local ok, ferr = target.finish(relative, expected, entry.manifest)
    if ok then
      copied = copied + 1
      cli.report("completed %s in %s (its data was there; sidecar and manifest written)", shown, target.name)
    else
      failed = failed + 1
      io.stderr:write("bkr: sync: completing ", shown, " in ", target.name, " failed: ", cli.printable(ferr), "\n")
    end
    return
  end
  if occupied then
    failed = failed + 1
    io.stderr:write("bkr: sync: left alone: ", target.name, "/", shown, ": ", occupied, "\n")
    return
  end
  local result, cerr, ckind = copy(entry, relative, expected)
  if result then
    copied = copied + 1
    cli.report("copied %s to %s (%s in %.1f s)", shown, target.name, cli.size(result.bytes_in), result.elapsed)
    logging.step("copy", { file = relative, to = target.name, bytes = result.bytes_in, seconds = result.elapsed })
  elseif ckind == "interrupted" then
    failed = failed + 1
    io.stderr:write("bkr: sync: copy of ", shown, " to ", target.name, " interrupted; nothing of it was left\n")
  elseif ckind == "corrupt" then
    damaged = damaged + 1
    io.stderr:write("bkr: sync: not copied, damaged: ", source.name, "/", shown, ": ", cli.printable(cerr), "\n")
    logging.step("copy", { file = relative, to = target.name, result = "failed", error = cerr, kind = ckind })
  else
    failed = failed + 1
    io.stderr:write("bkr: sync: copy of ", shown, " to ", target.name, " failed: ", cli.printable(cerr), "\n")
    logging.step("copy", { file = relative, to = target.name, result = "failed", error = cerr, kind = ckind })
  end
end

for _, entry in ipairs(entries) do
  if bkr.interrupted() then break end
  local relative = entry.type .. "/" .. entry.file
  local shown = cli.printable(relative)
  if entry.kind == "globals" and options.db and not stamps[entry.type .. "/" .. entry.stamp] then
    -- another run's globals: not asked for
  elseif not entry.manifest then
    skipped = skipped + 1
    cli.say("passed by %s: %s", shown, entry.manifest_kind == "missing" and "incomplete (no manifest yet)"
      or cli.printable(tostring(entry.manifest_error)))
  else
    local state = in_target(entry, relative)
    if state == "whole" then
      present = present + 1
    elseif state == "other" then
      failed = failed + 1
      io.stderr:write("bkr: sync: left alone: ", target.name, "/", shown,
        " holds another backup under this name (a different SHA-256)\n")
    else -- not there, or its manifest without its data or sidecar (a removal cut short)
      bring(entry, relative, shown)
    end
  end
end

cli.report("sync %s -> %s%s: %s %s, %s already there%s%s%s", source.name, target.name,
  bkr.interrupted() and " (interrupted)" or "",
  cli.plural(copied, "backup", "backups"), options.dry_run and "to copy" or "copied", present,
  damaged > 0 and (", " .. damaged .. " damaged") or "", failed > 0 and (", " .. failed .. " failed") or "",
  skipped > 0 and (", " .. skipped .. " incomplete") or "")
if failed > 0 then return cli.EXIT_FAILED end
if damaged > 0 then return cli.EXIT_INTEGRITY end
return cli.EXIT_OK
