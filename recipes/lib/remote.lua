-- A repository in S3-compatible object storage, s3://BUCKET[/PREFIX]: the off-site copy
-- (docs/offsite.md). It has the layout of a local repository, PREFIX/<type>/<file> with the
-- .sha256 sidecar and the .json manifest beside each backup, so any S3 tool can read it and
-- `bkr sync` can bring it back to a local repository for a restore. A backup there counts as
-- present only once its manifest exists: sync writes the data, then the sidecar, then the
-- manifest.
--
--   remote.is_url(value)          "s3://..." (any case of the scheme)
--   remote.parse(url)             bucket, prefix ("" or "a/b"); or nil, why
--   remote.same(a, b)             two URLs of one bucket and prefix
--   remote.validate(...)          the `s3:` configuration section (config.lua's owned_by)
--   remote.check_url(value, path) the `offsite:` key: an s3:// URL bkr can use
--   remote.open(cfg, url)         a store: { url, bucket, prefix, client, cfg }; exit 2 when the
--                                 URL or the credentials are wrong, before any request
--   remote.scan(store, filter)    entries as repo.scan gives them (filter: db, type, globals,
--                                 future), newest first; or nil, message, kind
--   remote.check_sidecars(store, entry)  the expected SHA-256 (repo.check_sidecars' checks)
--   remote.source(store, entry)   a stream source of the backup's bytes
--   remote.transfer_failed(err)   whether a failed run's error came from the bucket's side
--   remote.sink(store, relative)  a stream sink writing PREFIX/relative (a multipart upload,
--                                 aborted if the run fails: nothing appears under the key)
--   remote.put(store, relative, bytes)  a small object (sidecar, manifest)
--   remote.delete(store, relative)
--   remote.lock(store)            this host's lock on the prefix, held while bkr writes to it
--   remote.abort_stale_uploads(store)  uploads of backups that a killed run left open, aborted
--   remote.objects(store, dir)    the objects directly under PREFIX/dir/ ({name, key, size, ...})
--   remote.get(store, relative, max)  a small object's text
--   remote.manifests_without_data(store)  backups whose manifest is there, their data gone
local cli = require "lib.cli"
local repo = require "lib.repo"
local manifest_schema = require "lib.manifest"
local secrets = require "lib.secrets"

local remote = {}

function remote.is_url(value)
  return type(value) == "string" and value:match("^[sS]3://") ~= nil
end

-- S3's rules for bucket names (3 to 63 lower-case letters, digits, dots and hyphens, starting
-- and ending with a letter or digit), and a prefix of plain segments: no empty, "." or ".."
-- segment and no control character, so that a key means one thing to every S3 tool.
function remote.parse(url)
  local rest = url:match("^[sS]3://(.*)$")
  if not rest then return nil, "not an s3:// URL" end
  local bucket, prefix = rest:match("^([^/]*)/?(.*)$")
  if #bucket < 3 or #bucket > 63 or not bucket:match("^[a-z0-9][a-z0-9.-]*[a-z0-9]$") then
    return nil, "the bucket name must be 3 to 63 lower-case letters, digits, dots and hyphens"
  end
  prefix = prefix:gsub("/+$", "")
  if prefix:find("%c") then return nil, "the prefix holds a control character" end
  if prefix ~= "" then
    for segment in (prefix .. "/"):gmatch("([^/]*)/") do
      if segment == "" or segment == "." or segment == ".." then
        return nil, "the prefix has an empty, '.' or '..' segment"
      end
    end
  end
  return bucket, prefix
end

-- Whether two s3:// URLs name the same bucket and prefix ("s3://b/p/" is "s3://b/p").
function remote.same(a, b)
  local bucket_a, prefix_a = remote.parse(a)
  local bucket_b, prefix_b = remote.parse(b)
  return bucket_a ~= nil and bucket_a == bucket_b and prefix_a == prefix_b
end

-- ------------------------------------------------------------------ configuration

local function boolean_value(v)
  return function(value, path)
    if type(value) ~= "boolean" then v.fail(path, "expected true or false") end
    return value
  end
end

local function absolute_path(v)
  return function(value, path)
    value = v.string_value(value, path)
    if value:sub(1, 1) ~= "/" then v.fail(path, "expected an absolute path") end
    return value
  end
end

local function endpoint_value(v)
  return function(value, path)
    value = v.string_value(value, path)
    if not value:match("^https?://[%w.%-]+:?%d*/?$") and not value:match("^https?://%[[%x:.]+%]:?%d*/?$") then
      v.fail(path, "expected http(s)://HOST[:PORT], with no path, user or password")
    end
    return (value:gsub("/$", ""))
  end
end

local function one_of(v, words)
  return function(value, path)
    for _, word in ipairs(words) do
      if value == word then return value end
    end
    v.fail(path, "expected one of %s", table.concat(words, ", "))
  end
end

function remote.validate(value, path, v)
  local s3 = v.section{
    endpoint = endpoint_value(v),
    region = v.string_value,
    access_key_id = v.string_value,
    access_key_id_env = v.env_name,
    secret_access_key_file = absolute_path(v),
    secret_access_key_env = v.env_name,
    session_token_env = v.env_name,
    path_style = boolean_value(v),
    ca_file = absolute_path(v),
    part_size_mib = v.integer_in(5, 5120),
    parts_in_flight = v.integer_in(1, 16),
    timeout_seconds = v.integer_in(1, 3600),
    object_lock = v.section{
      mode = one_of(v, { "governance", "compliance" }),
      days = v.integer_in(1, 36500),
    },
  }(value, path)
  if s3.access_key_id and s3.access_key_id_env then
    v.fail(path, "give access_key_id or access_key_id_env, not both")
  end
  if s3.secret_access_key_file and s3.secret_access_key_env then
    v.fail(path, "give secret_access_key_file or secret_access_key_env, not both")
  end
  if s3.object_lock and not (s3.object_lock.mode and s3.object_lock.days) then
    v.fail(path .. ".object_lock", "needs both mode and days")
  end
  return s3
end

function remote.check_url(value, path, v)
  value = v.string_value(value, path)
  if not remote.is_url(value) then v.fail(path, "expected an s3://BUCKET/PREFIX URL") end
  local bucket, why = remote.parse(value)
  if not bucket then v.fail(path, "%s", why) end
  return value
end

-- ------------------------------------------------------------------ credentials

-- Where each credential comes from: the configuration (a value, or for the secret a private
-- file), else the variable it names, else the standard AWS variable; else a usage error that
-- names where it looked. A secret is read from a private file or the environment, never from
-- the configuration itself, and never appears in a message.
local function credential(what, given, env_key, default_env, s3)
  if given.value then return given.value end
  if given.file then
    local value, err = secrets.from_file(given.file, "configuration: s3." .. given.file_key)
    if not value then cli.usage_error("%s", err) end
    return value
  end
  local name = s3[env_key] or default_env
  local value = os.getenv(name)
  if not value or value == "" then
    cli.usage_error("s3: no %s: set %s in the configuration, or the environment variable %s", what,
      given.hint, name)
  end
  return value
end

local function credentials(s3)
  local access_key = credential("access key", { value = s3.access_key_id,
    hint = "s3.access_key_id (or s3.access_key_id_env)" }, "access_key_id_env", "AWS_ACCESS_KEY_ID", s3)
  local secret_key = credential("secret key", { file = s3.secret_access_key_file, file_key = "secret_access_key_file",
    hint = "s3.secret_access_key_file (or s3.secret_access_key_env)" }, "secret_access_key_env",
    "AWS_SECRET_ACCESS_KEY", s3)
  local token = os.getenv(s3.session_token_env or "AWS_SESSION_TOKEN")
  if token == "" then token = nil end
  return access_key, secret_key, token
end

local function region_of(s3)
  return s3.region or os.getenv("AWS_REGION") or os.getenv("AWS_DEFAULT_REGION") or "us-east-1"
end

-- The endpoint, and whether it was chosen (MinIO, Ceph...: path-style by default) or is AWS's.
local function endpoint_of(s3, region)
  local chosen = s3.endpoint or os.getenv("AWS_ENDPOINT_URL_S3") or os.getenv("AWS_ENDPOINT_URL")
  if chosen and chosen ~= "" then return (chosen:gsub("/$", "")), true end
  return "https://s3." .. region .. ".amazonaws.com", false
end

function remote.open(cfg, url)
  local bucket, prefix = remote.parse(url)
  if not bucket then cli.usage_error("repository %s: %s", cli.printable(url), prefix) end
  local s3cfg = cfg.s3 or {}
  local region = region_of(s3cfg)
  local endpoint, chosen = endpoint_of(s3cfg, region)
  local access_key, secret_key, token = credentials(s3cfg)
  local path_style = s3cfg.path_style
  if path_style == nil then path_style = chosen end
  local ok, client = pcall(require("bkr.s3").client, {
    endpoint = endpoint, region = region, bucket = bucket,
    access_key = access_key, secret_key = secret_key, session_token = token,
    path_style = path_style, ca_file = s3cfg.ca_file,
    timeout = s3cfg.timeout_seconds,
  })
  if not ok then cli.usage_error("repository %s: %s", cli.printable(url), tostring(client)) end
  return {
    url = "s3://" .. bucket .. (prefix ~= "" and ("/" .. prefix) or ""),
    bucket = bucket, prefix = prefix, client = client, cfg = s3cfg, endpoint = endpoint,
  }
end

-- ------------------------------------------------------------------ keys

function remote.key(store, relative)
  return store.prefix == "" and relative or (store.prefix .. "/" .. relative)
end

local function display(store, relative)
  return store.url .. "/" .. relative
end

-- ------------------------------------------------------------------ reading

-- A small object's text; or nil, message, kind.
local function get_text(store, key, max)
  return store.client:get(key, { max = max })
end

-- The text of PREFIX/relative, at most max bytes; or nil, message, kind.
function remote.get(store, relative, max)
  return get_text(store, remote.key(store, relative), max)
end

-- A manifest larger than this is not one bkr wrote.
local MAX_MANIFEST_BYTES = 4 * 1024 * 1024

-- An entry of TYPE/FILE as repo.scan describes one (database, stamp, names), without its
-- manifest yet.
local function new_entry(store, type_, file, stamp, db, kind, encrypted, storage)
  local relative = type_ .. "/" .. file
  local key = remote.key(store, relative)
  local time, sequence = repo.parse_stamp(stamp)
  local path = display(store, relative)
  return {
    path = path, file = file, type = type_, stamp = stamp, time = time, sequence = sequence,
    database = db, kind = kind, encrypted = encrypted, storage = storage, repo = store.url,
    sidecar = path .. ".sha256", manifest_path = path .. ".json",
    key = key, sidecar_key = key .. ".sha256", manifest_key = key .. ".json", relative = relative,
    remote = true, store = store,
  }
end

-- The entry's manifest, read and checked against the entry (repo.manifest_matches); or why not
-- in entry.manifest_error and entry.manifest_kind.
local function read_manifest(store, entry)
  local text, err, kind = get_text(store, entry.manifest_key, MAX_MANIFEST_BYTES)
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

local function describe(store, objects, type_, file, stamp, db, kind, encrypted, storage, size)
  local entry = new_entry(store, type_, file, stamp, db, kind, encrypted, storage)
  entry.regular, entry.stored_bytes = true, size
  entry.has_sidecar = objects[entry.sidecar_key] ~= nil
  if not objects[entry.manifest_key] then
    entry.manifest_error, entry.manifest_kind = "missing manifest " .. entry.manifest_path, "missing"
    return entry
  end
  return read_manifest(store, entry)
end

-- The key prefix of a directory of the repository: "PREFIX/dir/" (or "dir/" without a prefix,
-- or "PREFIX/" for the repository itself).
local function directory_key(store, relative_dir)
  if relative_dir == "" then return store.prefix == "" and "" or (store.prefix .. "/") end
  return remote.key(store, relative_dir) .. "/"
end

-- The objects directly under PREFIX/relative_dir/: { {name, key, size, last_modified}, ... };
-- or nil, message, kind.
function remote.objects(store, relative_dir)
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

-- The backups whose manifest is there without their data object (entries as remote.scan's,
-- regular = false, as repo.scan describes a backup whose file is not a regular file), newest
-- first; or nil, message, kind. bkr check reports them.
function remote.manifests_without_data(store)
  local base = directory_key(store, "")
  local listed, err, kind = store.client:list(base)
  if not listed then return nil, err, kind end
  local present = {}
  for _, object in ipairs(listed) do present[object.key:sub(#base + 1)] = true end
  local entries = {}
  for relative in pairs(present) do
    local type_, stored = relative:match("^([^/]+)/([^/]+)%.json$")
    local stamp, escaped, encrypted, storage
    if type_ and repo.valid_type(type_) then stamp, escaped, encrypted, storage = repo.match_backup(stored) end
    if stamp and not present[type_ .. "/" .. stored] then
      local entry = new_entry(store, type_, stored, stamp, repo.unescape_name(escaped), "database", encrypted, storage)
      entry.regular = false
      entries[#entries + 1] = read_manifest(store, entry)
    end
  end
  table.sort(entries, repo.newer)
  return entries
end

function remote.scan(store, filter)
  local base = store.prefix == "" and "" or (store.prefix .. "/")
  local listed, err, kind = store.client:list(base)
  if not listed then return nil, err, kind end
  local objects = {}
  for _, object in ipairs(listed) do objects[object.key] = object end
  local collect = repo.collector(filter, function(type_, file, stamp, db, kind, encrypted, storage)
    local size = objects[remote.key(store, type_ .. "/" .. file)].size
    return describe(store, objects, type_, file, stamp, db, kind, encrypted, storage, size)
  end)
  for _, object in ipairs(listed) do
    local type_, file = object.key:sub(#base + 1):match("^([^/]+)/([^/]+)$")
    if type_ and repo.valid_type(type_) then collect.add(type_, file) end
  end
  return collect.result()
end

-- The digest the sidecar names, after repo.check_sidecars' checks: a sidecar naming this
-- file, a valid manifest, and the two agreeing. Or nil, message, kind.
function remote.check_sidecars(store, entry)
  return repo.check_sidecars(entry, function() return get_text(store, entry.sidecar_key, 4096) end)
end

function remote.source(store, entry)
  return store.client:source(entry.key)
end

-- Did the bucket's side of a transfer fail (a refused key, a connection dropped again and
-- again, an unreachable server)? That says nothing about the backup's bytes, whatever the
-- error's kind ("auth" there is S3's 403, not a forged chunk): the source's stage is "s3".
function remote.transfer_failed(err)
  return type(err) == "table" and err.stage == "s3"
end

-- ------------------------------------------------------------------ writing

-- Object Lock retention for what bkr uploads (s3.object_lock): the retain-until date is
-- computed per upload, days from now.
function remote.upload_headers(store, now)
  local lock = store.cfg.object_lock
  if not lock then return nil end
  return {
    ["x-amz-object-lock-mode"] = lock.mode:upper(),
    ["x-amz-object-lock-retain-until-date"] = os.date("!%Y-%m-%dT%H:%M:%SZ", (now or os.time()) + lock.days * 86400),
  }
end

function remote.sink(store, relative)
  return store.client:sink(remote.key(store, relative), {
    part_size = (store.cfg.part_size_mib or 8) * 1024 * 1024,
    parts_in_flight = store.cfg.parts_in_flight,
    headers = remote.upload_headers(store),
  })
end

function remote.put(store, relative, bytes)
  return store.client:put(remote.key(store, relative), bytes, { headers = remote.upload_headers(store) })
end

function remote.delete(store, relative)
  return store.client:delete(remote.key(store, relative))
end

function remote.display(store, relative)
  return display(store, relative)
end

-- ------------------------------------------------------------------ one writer per prefix

-- Object storage has no lock bkr can rely on everywhere, so a prefix is written by one host
-- (docs/offsite.md), and on that host by one run at a time: this lock, a file named after the
-- bucket and prefix in /run/lock (shared by every systemd unit, which each get their own
-- /tmp: PrivateTmp), else in $TMPDIR. Not after the endpoint: one bucket reached as
-- 127.0.0.1 and as localhost is one bucket. Any user's run takes it (a root run's file is
-- locked read-only by the next user: fs.lock). Held while the run writes; released at its end.
local function lock_dir()
  local lfs = require "lfs"
  if lfs.symlinkattributes("/run/lock", "mode") == "directory" and require("bkr.fs").access("/run/lock", "wx") then
    return "/run/lock"
  end
  return require("lib.tempdir").base()
end

function remote.lock_path(store)
  local id = require("bkr.hash").sha256_string(store.url):sub(1, 16)
  return lock_dir() .. "/bkr-s3-" .. id .. ".lock"
end

function remote.lock(store)
  local path = remote.lock_path(store)
  local lock, err, kind = require("bkr.fs").lock(path, { shared = true })
  if not lock then
    if kind == "locked" then cli.fail(cli.EXIT_FAILED, "repository %s is busy: %s", store.url, err) end
    local owner = require("bkr.fs").owner(path)
    if kind == "permission" and owner and owner ~= require("bkr.fs").user() then
      cli.fail(cli.EXIT_FAILED, "repository %s cannot be locked: its lock file %s belongs to user %d and may not "
        .. "be read; remove it (it holds nothing but a process id)", store.url, path, owner)
    end
    cli.fail(cli.EXIT_FAILED, "repository %s cannot be locked (%s): %s", store.url, path, err)
  end
  return lock
end

-- A run killed with SIGKILL, or one whose abort could not reach the server, leaves its
-- multipart upload open: invisible, but billed. Under the lock no other run of this host is
-- uploading, so every open upload of a backup's name under the prefix is a leftover: abort
-- it. Only bkr's names (PREFIX/<type>/backup_... or globals_...); anything else is left
-- alone. A server without ListMultipartUploads is no error (its lifecycle rule is the
-- backstop). Returns the keys aborted, and the failures as messages.
function remote.abort_stale_uploads(store)
  local base = store.prefix == "" and "" or (store.prefix .. "/")
  local open, err, kind = store.client:uploads(base)
  if not open then
    if kind == "unsupported" then return {}, {} end
    return {}, { string.format("cannot list the open uploads of %s: %s", store.url, err) }
  end
  local aborted, failures = {}, {}
  for _, upload in ipairs(open) do
    local type_, file = upload.key:sub(#base + 1):match("^([^/]+)/([^/]+)$")
    if type_ and repo.valid_type(type_) and (repo.match_backup(file) or repo.match_globals(file)) then
      local ok, aerr = store.client:abort_upload(upload.key, upload.upload_id)
      if ok then
        aborted[#aborted + 1] = upload.key
      else
        failures[#failures + 1] = string.format("cannot abort the open upload of %s: %s", display(store, type_ .. "/" .. file), aerr)
      end
    end
  end
  return aborted, failures
end

return remote
