-- List backups, newest first: time, type, database, size, ratio, verified, encrypted
local cli = require "lib.cli"
local config = require "lib.config"
local repo = require "lib.repo"
local json = require "lib.json"
local remote = require "lib.remote"

local options = cli.parse({ ... }, {
  name = "list",
  usage = "bkr list [--db NAME]... [--type daily|weekly|monthly] [--globals] [--json] [--repo DIR|s3://B/P] [--config FILE]",
  summary = "Every backup in the repository, newest first, with its verification state. The repository\n"
    .. "may be an off-site copy in object storage (s3://BUCKET/PREFIX, docs/offsite.md).",
  options = {
    { "--db", "NAME", "only this database (repeatable)", repeatable = true },
    { "--type", "TYPE", "only daily, weekly or monthly backups" },
    { "--globals", nil, "include the globals (roles, tablespaces) files" },
    { "--json", nil, "one JSON array, for scripts" },
    { "--repo", "DIR", "repository directory or s3://BUCKET/PREFIX (overrides the configuration)" },
    { "--config", "FILE", "configuration file" },
  },
  exit_codes = "0 listed (also when empty), 1 a backup cannot be read (a permission problem: the fix is\n"
    .. "            printed; object storage that cannot be reached), 2 usage or configuration error (no\n"
    .. "            repository at DIR, a --db without backups, no credentials for s3://)",
  see = "docs/list.md",
})
if not options then return cli.EXIT_OK end
if options.type and not repo.valid_type(options.type) then
  cli.usage_error("list: --type must be daily, weekly or monthly, not '%s'", options.type)
end

local cfg = config.load(options, { notify = false, remote = true })
local dir, backups = config.repository(cfg), nil
local filter = { db = options.db, type = options.type, globals = options.globals, future = true }
if remote.is_url(dir) then
  local store = remote.open(cfg, dir)
  dir = store.url
  local err, kind
  backups, err, kind = remote.scan(store, filter)
  if not backups then cli.fail(cli.EXIT_FAILED, "cannot list %s: %s (%s)", dir, err, kind) end
  if options.db and #backups == 0 then
    cli.usage_error("no backups of %s in %s", table.concat(options.db, ", "), dir)
  end
else
  dir = repo.open(dir)
  repo.require_backups_of(dir, options.db)
  backups = repo.scan(dir, filter)
end

-- The verification column: the last verdict, or why there can be none. A backup bkr may not
-- read is "unreadable" (a permission problem), never "incomplete" or "damaged".
local function verified(entry)
  if entry.unreadable then return "unreadable" end
  if not entry.regular then return "damaged" end
  local v = entry.manifest and entry.manifest.verification
  if v then return v.result end
  if entry.manifest then return "never" end
  if entry.manifest_kind == "missing" then return "incomplete" end
  return "damaged"
end

-- One row per backup, the same facts for people and for scripts.
local function describe(entry)
  local m = entry.manifest or {}
  local verification = m.verification or {}
  return {
    time = repo.iso_time(entry.time),
    type = entry.type,
    database = entry.database or "(globals)",
    file = entry.type .. "/" .. entry.file,
    stored_bytes = entry.stored_bytes,
    raw_bytes = m.raw_bytes,
    ratio = m.raw_bytes and entry.stored_bytes and entry.stored_bytes > 0
      and math.floor(m.raw_bytes / entry.stored_bytes * 10 + 0.5) / 10 or nil,
    verified = verified(entry),
    verified_time = verification.time,
    problem = (entry.unreadable and repo.permission_message(entry.unreadable))
      or (not entry.regular and "not a regular file") or entry.manifest_error,
    future = entry.future or nil,
    encrypted = m.encrypted == true or entry.encrypted == true,
    -- how it is stored (lib/codec.lua): gzip or zstd; plain SQL or pg_dump's custom archive
    compression = (type(m.compression) == "table" and m.compression.algorithm)
      or (entry.storage and entry.storage.algorithm) or nil,
    dump_format = entry.storage and entry.storage.dump_format or nil,
  }
end

local rows, unreadable = {}, nil
for _, entry in ipairs(backups) do
  rows[#rows + 1] = describe(entry)
  unreadable = unreadable or entry.unreadable
end

-- After the listing, a backup bkr may not read ends the run with the fix (exit 1).
local function done()
  if unreadable then repo.permission_failure(unreadable) end
  return cli.EXIT_OK
end

if options.json then
  print(json.encode(rows, true))
  return done()
end
if #rows == 0 then
  print("no backups in " .. dir)
  return cli.EXIT_OK
end
print(string.format("%-20s  %-7s  %-20s  %10s  %6s  %-13s  %s", "TIME (UTC)", "TYPE", "DATABASE", "SIZE",
  "RATIO", "VERIFIED", "ENCRYPTED"))
for _, row in ipairs(rows) do
  print(string.format("%-20s  %-7s  %-20s  %10s  %6s  %-13s  %s%s", row.time, row.type, cli.printable(row.database),
    row.stored_bytes and cli.size(row.stored_bytes) or "?", row.ratio and (row.ratio .. "x") or "-",
    row.verified, row.encrypted and "yes" or "no",
    row.future and "  DATED IN THE FUTURE: not counted as newest (clock skew or a copied file?)" or ""))
end
io.stdout:flush()
return done()
