-- Configuration: one file, Lua (returns a table) or YAML (parsed by libyaml), same schema,
-- chosen by extension. Validated once, at load, with the key's path in every message.
-- Command-line flags (--repo, --db) override the file; with no file at all, a one-off run
-- takes its connection from the standard PG* variables. See docs/configuration.md.
local cli = require "lib.cli"
local codec = require "lib.codec"

local config = {}

config.DEFAULT_FILES = { "./bkr.yaml", "/etc/bkr/bkr.yaml" }

-- How long any connection bkr makes, or a child it starts makes, may take to be answered: a
-- server that accepts and never answers (stopped, overloaded, a firewall) fails the run
-- instead of holding the repository lock forever.
config.CONNECT_TIMEOUT_SECONDS = 10

local defaults = {
  -- connection.connect_timeout_seconds: config.CONNECT_TIMEOUT_SECONDS when none is given
  connection = {},
  databases = "all",
  exclude = {},
  repository = nil,
  compression = "gzip",
  format = "plain",
  -- compression_level: the algorithm's default (lib/codec.lua) when none is given
  lock_wait_seconds = 600,
  retention = { daily = 7, weekly = 4, monthly = 0 },
}

-- ------------------------------------------------------------------ validators

local function fail(path, fmt, ...)
  cli.usage_error("configuration: %s: " .. fmt, path, ...)
end

local function is_null(value)
  local ok, yaml = pcall(require, "bkr.yaml")
  return value == nil or (ok and value == yaml.null)
end

local function string_value(value, path)
  if type(value) ~= "string" or value == "" then fail(path, "expected a non-empty string") end
  return value
end

local function integer_in(low, high)
  return function(value, path)
    if math.type(value) ~= "integer" or value < low or (high and value > high) then
      if high then
        fail(path, "expected an integer from %d to %d", low, high)
      end
      fail(path, low == 0 and "expected a non-negative integer" or "expected an integer >= %d", low)
    end
    return value
  end
end

local function list_of_strings(value, path)
  if type(value) ~= "table" then fail(path, "expected a list of names") end
  local out = {}
  for i, item in ipairs(value) do
    out[i] = string_value(item, path .. "[" .. i .. "]")
  end
  for key in pairs(value) do
    if math.type(key) ~= "integer" then fail(path, "expected a list of names") end
  end
  return out
end

-- Files named for a run that has no working directory of its own (a scheduled job).
local function list_of_absolute_paths(value, path)
  local out = list_of_strings(value, path)
  for i, item in ipairs(out) do
    if item:sub(1, 1) ~= "/" then fail(path .. "[" .. i .. "]", "expected an absolute path") end
  end
  return out
end

-- A list of queries for every database, or a mapping from database name to its own list.
local function smoke_queries_value(value, path)
  if type(value) == "table" and value[1] == nil and next(value) ~= nil then
    local out = {}
    for db, queries in pairs(value) do
      out[tostring(db)] = list_of_strings(queries, path .. "." .. tostring(db))
    end
    return out
  end
  return list_of_strings(value, path)
end

-- Each name once, in the order first given: a database listed twice is backed up once
-- (twice would collide on its file name and fail every run).
local function unique(names)
  local seen, out = {}, {}
  for _, name in ipairs(names) do
    if not seen[name] then
      seen[name] = true
      out[#out + 1] = name
    end
  end
  return out
end

-- What a list of names looks like, for a message about a string written where a list belongs
-- (`databases: shop, billing`): that text as a list when it is a plain comma list of simple
-- names, else a generic example. Nothing else of the text is shown (the same message style
-- serves keys whose values may be secrets).
local function list_example(value)
  local names = {}
  if type(value) == "string" and #value <= 200 then
    for item in (value .. ","):gmatch("([^,]*),") do
      item = item:match("^%s*(.-)%s*$")
      if not item:match("^[%a_][%w_%-]*$") or #item > 63 then
        names = {}
        break
      end
      names[#names + 1] = item
    end
  end
  if #names == 0 then names = { "appdb", "crm" } end
  return "[" .. table.concat(names, ", ") .. "]"
end

-- A list of database names (databases, exclude): as list_of_strings, and a string in its place
-- is answered with the list it probably meant.
local function names_value(value, path)
  if type(value) == "string" then fail(path, "expected a list of names, e.g. %s", list_example(value)) end
  return list_of_strings(value, path)
end

local function databases_value(value, path)
  if value == "all" then return "all" end
  return unique(names_value(value, path))
end

-- One of a few words; a typo is answered with the closest ("compression: expected gzip or
-- zstd; did you mean zstd?"), never with the value itself.
local function one_of(words)
  return function(value, path)
    for _, word in ipairs(words) do
      if value == word then return value end
    end
    fail(path, "expected %s%s", table.concat(words, " or "),
      type(value) == "string" and cli.did_you_mean(value, words) or "")
  end
end

-- An integer whose range another key decides (compression_level: check_compression_level).
local function any_integer(value, path)
  if math.type(value) ~= "integer" then fail(path, "expected an integer") end
  return value
end

-- A table with known keys: each key's validator; unknown keys are errors, with the known key
-- the typo is closest to ("retension: unknown key; did you mean retention?").
local function section(fields)
  local known = {}
  for key in pairs(fields) do known[#known + 1] = key end
  return function(value, path)
    if type(value) ~= "table" or (value[1] ~= nil and path == "") then
      fail(path == "" and "(top level)" or path, "expected a mapping of settings")
    end
    local out = {}
    for key, item in pairs(value) do
      local child = path == "" and tostring(key) or (path .. "." .. tostring(key))
      local validate = fields[key]
      if not validate then fail(child, "unknown key%s", cli.did_you_mean(key, known)) end
      if not is_null(item) then out[key] = validate(item, child) end
    end
    return out
  end
end

-- The NAME of an environment variable (password_env, key_env, url_env, ...). A secret pasted
-- where its variable's name belongs is the likely mistake: it is refused without being shown,
-- since the message lands on stderr, in bkr.log and in notifications.
local function env_name(value, path)
  if type(value) ~= "string" or not value:match("^[%a_][%w_]*$") then
    fail(path, "expected the name of an environment variable (letters, digits, _), not a value: "
      .. "the value is not shown")
  end
  return value
end

-- connection.host: a host name, an address or a socket directory, which libpq and pg_dump take
-- as one word. A conninfo fragment ("db.example.com password=..."), a URI with user:password@ or
-- quotes would be passed on and quoted back in connection errors: refused, without being shown.
local function host_value(value, path)
  if type(value) ~= "string" or value == "" or value:find("[=@%s'\"`]") then
    fail(path, "expected a host name, an address or a socket directory (no '=', '@', spaces or quotes): "
      .. "the value is not shown")
  end
  return value
end

-- A list whose every element passes `item` (a validator), named "a list of WHAT" in its
-- message; at_least_one: an empty list is refused too.
local function list_of(item, what, at_least_one)
  local expected = what and ("expected a list of " .. what) or "expected a list"
  return function(value, path)
    if type(value) ~= "table" or (next(value) ~= nil and value[1] == nil) then fail(path, "%s", expected) end
    for key in pairs(value) do
      if math.type(key) ~= "integer" then fail(path, "%s", expected) end
    end
    local out = {}
    for i, element in ipairs(value) do out[i] = item(element, path .. "[" .. i .. "]") end
    if at_least_one and #out == 0 then fail(path, "expected at least one item") end
    return out
  end
end

-- The validators, for the sections whose schema lives beside the code that uses them
-- (schedule, notify, logging): one way to validate, one message style.
config.validators = {
  fail = fail,
  is_null = is_null,
  section = section,
  string_value = string_value,
  integer_in = integer_in,
  list_of_strings = list_of_strings,
  list_of = list_of,
  env_name = env_name,
}

-- A section validated by its owner module (required only when the key is present).
local function owned_by(module)
  return function(value, path)
    return require(module).validate(value, path, config.validators)
  end
end

config.schema = section{
  connection = section{
    host = host_value,
    port = integer_in(1, 65535),
    user = string_value,
    dbname = string_value,
    password_env = env_name,
    passfile = string_value,
    sslmode = string_value,
    connect_timeout_seconds = integer_in(1, 3600),
  },
  databases = databases_value,
  exclude = names_value,
  repository = string_value,
  compression = one_of(codec.ALGORITHMS),
  format = one_of(codec.DUMP_FORMATS),   -- plain SQL, or pg_dump's custom archive (docs/backup.md)
  compression_level = any_integer,   -- its range depends on compression: check_compression_level
  threads = integer_in(1, 256),  -- compression workers, restore jobs; default: the online cores
  lock_wait_seconds = integer_in(1, 86400),
  retention = section{
    daily = integer_in(0),
    weekly = integer_in(0),
    monthly = integer_in(0),
  },
  -- the off-site copy's own (bkr rotate --repo s3://...); each count defaults to retention's
  offsite_retention = section{
    daily = integer_in(0),
    weekly = integer_in(0),
    monthly = integer_in(0),
  },
  pg_bindir = string_value,
  -- encrypted backups and configuration backups (docs/encryption.md)
  encryption = section{
    key_file = string_value,
    key_env = env_name,
  },
  config_backup = section{
    sensitive_keys = list_of_strings,
    files = list_of_absolute_paths,  -- what `bkr config backup` saves when it names no FILE
  },
  -- recovery drills (docs/drill.md)
  drill = section{
    rto_seconds = integer_in(1),
    rpo_seconds = integer_in(1),
    smoke_queries = smoke_queries_value,
    steps = list_of_strings,
    interval_days = integer_in(1, 366),   -- how old the last drill may be (bkr check)
  },
  -- running on a schedule (docs/schedule.md), telling a person (docs/notify.md), the log
  -- (docs/logging.md)
  schedule = owned_by("lib.schedule"),
  notify = owned_by("lib.notify"),
  logging = owned_by("lib.logging"),
  check = owned_by("lib.check"),   -- monitoring thresholds (docs/check.md)
  -- the off-site copy in S3-compatible object storage (docs/offsite.md)
  s3 = owned_by("lib.remote"),
  offsite = function(value, path) return require("lib.remote").check_url(value, path, config.validators) end,
}

-- ------------------------------------------------------------------ database names as keys

-- Each key of the drill.smoke_queries mapping names a database: one that is not in `names` (the
-- configured list, or with `databases: all` the databases the drill would drill) is a typo that
-- would leave that database without its smoke queries and let the drill pass. Exit 2, naming
-- the key, the databases it may name, and the closest of them.
function config.check_smoke_query_databases(cfg, names)
  local queries = cfg.drill and cfg.drill.smoke_queries
  if type(queries) ~= "table" or queries[1] ~= nil then return end
  local known, shown = {}, {}
  for _, name in ipairs(names) do
    known[name] = true
    if #shown < 20 then shown[#shown + 1] = cli.printable(name) end
  end
  if #names > #shown then shown[#shown + 1] = "..." end
  local keys = {}
  for key in pairs(queries) do keys[#keys + 1] = key end
  table.sort(keys)
  for _, key in ipairs(keys) do
    if not known[key] then
      fail("drill.smoke_queries." .. cli.printable(key), "no such database (databases: %s)%s",
        #shown > 0 and table.concat(shown, ", ") or "none", cli.did_you_mean(key, names))
    end
  end
end

-- compression_level within the range of the configured algorithm (gzip 0-9, zstd 1-19), or
-- that algorithm's default (gzip 6, zstd 3) when none is given.
function config.check_compression_level(cfg)
  local storage = codec.named(cfg.compression or "gzip")
  local low, high = storage.levels[1], storage.levels[2]
  local level = cfg.compression_level
  if level == nil then
    cfg.compression_level = storage.levels.default
  elseif level < low or level > high then
    fail("compression_level", "expected an integer from %d to %d (compression: %s)", low, high, storage.name)
  end
end

-- ------------------------------------------------------------------ loading

-- Exists at all (readable or not: an unreadable configuration is an error, not "no file").
-- A file in a directory bkr may not enter cannot be told from a missing one by stat: that is
-- a permission problem, said as one (exit 2: the configuration cannot be read), never "no
-- such file" nor, for the default files, silently no configuration.
local function file_exists(path)
  local mode, _, code = require("lfs").attributes(path, "mode")
  if mode then return true end
  if code == 13 then -- EACCES
    cli.usage_error("configuration: %s", cli.permission_message(path))
  end
  return false
end

local function read_lua(path)
  -- A config is data: no access to the outside world from inside it.
  local chunk, err = loadfile(path, "t", {})
  if not chunk then cli.usage_error("configuration: %s", err) end
  local ok, value = pcall(chunk)
  if not ok then cli.usage_error("configuration: %s", tostring(value)) end
  if type(value) ~= "table" then cli.usage_error("configuration: %s must return a table", path) end
  return value
end

local function read_yaml(path)
  local yaml = require "bkr.yaml"
  local value, err = yaml.decode_file(path)
  if err then cli.usage_error("configuration: %s", err) end
  if is_null(value) then return {} end
  return value
end

local function merge_defaults(value)
  local out = {}
  for key, default in pairs(defaults) do
    if type(default) == "table" and type(value[key]) == "table" and next(default) and not default[1] then
      local merged = {}
      for k, v in pairs(default) do merged[k] = v end
      for k, v in pairs(value[key]) do merged[k] = v end
      out[key] = merged
    elseif value[key] ~= nil then
      out[key] = value[key]
    else
      out[key] = default
    end
  end
  for key, v in pairs(value) do
    if out[key] == nil then out[key] = v end
  end
  return out
end

-- Find, read and validate the configuration; apply command-line overrides.
-- options: the recipe's parsed flags (config, repo, db). how.notify = false: this recipe
-- only reads or reports (check, list, schedule, init), and its failures are the admin's to
-- see at once, not a notification's (a monitoring check that warns is no failed job).
function config.load(options, how)
  options = options or {}
  local path = options.config
  if path then
    if not file_exists(path) then cli.usage_error("configuration: %s: no such file", path) end
  else
    for _, candidate in ipairs(config.DEFAULT_FILES) do
      if file_exists(candidate) then path = candidate break end
    end
  end
  local raw = {}
  if path then
    if path:match("%.lua$") then
      raw = read_lua(path)
    elseif path:match("%.ya?ml$") then
      raw = read_yaml(path)
    else
      cli.usage_error("configuration: %s: expected a .yaml, .yml or .lua file", path)
    end
  end
  local cfg = merge_defaults(config.schema(raw, ""))
  local offsite_retention = {}
  for key, count in pairs(cfg.retention) do offsite_retention[key] = count end
  for key, count in pairs(cfg.offsite_retention or {}) do offsite_retention[key] = count end
  cfg.offsite_retention = offsite_retention
  config.check_compression_level(cfg)
  if cfg.databases ~= "all" then config.check_smoke_query_databases(cfg, cfg.databases) end
  cfg.file = path
  if options.repo then cfg.repository = options.repo end
  config.check_repository_form(cfg.repository, how and how.remote)
  if options.db then cfg.databases = unique(options.db) end
  require("lib.logging").configure(cfg)
  if cfg.notify and not (how and how.notify == false) then require("lib.notify").arm(cfg) end
  return cfg
end

-- A repository is a local directory, or (for the commands that read and write object storage:
-- how.remote in config.load) an s3:// URL. Any other URL (file://, sftp://, ...), and s3:// for
-- the others, is refused before anything uses it: taken as a path, "s3://bkr/site1" would
-- quietly become a local directory "s3:" beside the working directory, and the admin would
-- believe the backups off-site.
function config.check_repository_form(value, remote_allowed)
  if type(value) ~= "string" then return end
  local scheme = value:match("^(%a[%w+.-]*)://")
  if not scheme then return end
  scheme = scheme:lower()
  if scheme == "s3" and remote_allowed then return end
  if scheme == "s3" then
    cli.usage_error("repository %s: this command works on a local repository; an s3:// repository is "
      .. "used by bkr backup, restore, drill, verify, list, rotate, check and sync (docs/offsite.md)",
      cli.printable(value))
  end
  cli.usage_error("repository %s: bkr does not support %s:// repositories; give a local directory "
    .. "(an absolute path such as /var/backups/bkr) or s3://BUCKET/PREFIX", cli.printable(value),
    cli.printable(scheme))
end

-- The repository, or a usage error saying how to give one.
function config.repository(cfg)
  if not cfg.repository or cfg.repository == "" then
    cli.usage_error("no repository: give --repo DIR or set repository in the configuration")
  end
  return cfg.repository
end

-- The password, when the configuration names an environment variable for it.
local function password(cfg)
  local name = cfg.connection.password_env
  if not name then return nil end
  local value = os.getenv(name)
  if not value then
    cli.usage_error("configuration: connection.password_env: environment variable %s is not set", name)
  end
  return value
end

-- Seconds a connection may take to be answered (connection.connect_timeout_seconds).
function config.connect_timeout(cfg)
  return (cfg.connection or {}).connect_timeout_seconds or config.CONNECT_TIMEOUT_SECONDS
end

-- libpq keywords for bkr's own connection to database `dbname` (default: the maintenance
-- database). Unset keys fall back to the PG* environment inside libpq.
function config.conninfo(cfg, dbname)
  local c = cfg.connection
  return {
    host = c.host, port = c.port, user = c.user, sslmode = c.sslmode, passfile = c.passfile,
    password = password(cfg),
    dbname = dbname or c.dbname or os.getenv("PGDATABASE") or "postgres",
    application_name = "bkr",
    connect_timeout = config.connect_timeout(cfg),
  }
end

-- Environment for pg_dump/psql children: the password travels here, never in argv.
-- The variables that may hold bkr's secrets: every variable the configuration names (the
-- values of its *_env keys, anywhere in it) and the AWS secret and session token. Children
-- (pg_dump, psql...) do not get them: any process of the same user can read a process's
-- environment, and they need none of them.
local function secret_variables(value, key, into)
  if type(value) == "table" then
    for k, v in pairs(value) do
      secret_variables(v, type(k) == "string" and k:match("_env$") and k or key, into)
    end
  elseif type(value) == "string" and key then
    into[value] = false
  end
  return into
end

-- An environment for a child that needs nothing of bkr's: its secrets removed (proc.spawn's
-- env: false removes a variable).
function config.without_secrets(cfg)
  return secret_variables(cfg, nil, { AWS_SECRET_ACCESS_KEY = false, AWS_SESSION_TOKEN = false })
end

function config.child_env(cfg, dbname)
  local c = cfg.connection
  local env = config.without_secrets(cfg)
  env.PGAPPNAME, env.PGCONNECT_TIMEOUT = "bkr", tostring(config.connect_timeout(cfg))
  if c.host then env.PGHOST = c.host end
  if c.port then env.PGPORT = tostring(c.port) end
  if c.user then env.PGUSER = c.user end
  if c.sslmode then env.PGSSLMODE = c.sslmode end
  if c.passfile then env.PGPASSFILE = c.passfile end
  local secret = password(cfg)
  if secret then env.PGPASSWORD = secret end
  if dbname then env.PGDATABASE = dbname end
  return env
end

return config
