-- PostgreSQL facts a backup needs: connections, which databases, which pg_dump, and the
-- database-level properties that a dump without --create leaves out.
local pg = require "bkr.pg"
local proc = require "bkr.proc"
local lfs = require "lfs"
local cli = require "lib.cli"
local config = require "lib.config"

local postgres = {}

function postgres.connect(cfg, dbname)
  local info = config.conninfo(cfg, dbname)
  local started = bkr.monotonic()
  local conn, err = pg.connect(info)
  if not conn and bkr.monotonic() - started >= info.connect_timeout then
    err = string.format("%s\n  (the server did not answer within %d s: connection.connect_timeout_seconds)",
      err, info.connect_timeout)
  end
  if not conn then
    -- root with no role named anywhere connects as role "root", which peer authentication
    -- and most servers refuse: say what to do instead of leaving the admin to guess
    local uid = require("bkr.fs").user()
    if uid == 0 and not info.user and not os.getenv("PGUSER") then
      err = err .. "\n  (bkr runs as root and so connects as role root: run it as postgres, "
        .. "sudo -u postgres bkr ..., or set connection.user)"
    end
    cli.fail(cli.EXIT_FAILED, "%s", err)
  end
  return conn
end

local function value(v)
  if v == pg.null then return nil end
  return v
end

-- Which databases count, with what a listing shows of each: not templates, ordered by name.
-- size is NULL (so absent) when the user may not see it (no CONNECT right and not
-- pg_read_all_stats), and for a database an interrupted DROP DATABASE left invalid
-- (datconnlimit -2), which also does not allow connections.
local DATABASES_SQL = [[
SELECT d.datname AS name, pg_catalog.pg_get_userbyid(d.datdba) AS owner,
       pg_catalog.pg_encoding_to_char(d.encoding) AS encoding,
       CASE WHEN d.datconnlimit <> -2 AND (pg_catalog.has_database_privilege(d.oid, 'CONNECT')
              OR pg_catalog.pg_has_role('pg_read_all_stats', 'MEMBER'))
            THEN pg_catalog.pg_database_size(d.oid) END AS size,
       d.datallowconn AND d.datconnlimit <> -2 AS allow_connections,
       d.datistemplate AS is_template
  FROM pg_catalog.pg_database d WHERE NOT d.datistemplate ORDER BY d.datname
]]

-- The cluster's databases: { {name=, owner=, encoding=, size=, allow_connections=,
-- is_template=}, ... }, or nil, message[, sqlstate]. A NULL is left out of its row.
function postgres.list_databases(conn)
  local rows, err, sqlstate = conn:query(DATABASES_SQL)
  if not rows then return nil, err, sqlstate end
  for _, row in ipairs(rows) do
    for key, v in pairs(row) do
      if v == pg.null then row[key] = nil end
    end
  end
  return rows
end

-- The databases to back up: the configured list, or every database that accepts
-- connections (templates excluded), less config.exclude. Unknown names are kept: their
-- backup fails with a clear message while the others go on.
function postgres.databases(conn, cfg)
  if cfg.databases ~= "all" then return cfg.databases end
  local all, err = postgres.list_databases(conn)
  if not all then cli.fail(cli.EXIT_FAILED, "%s", err) end
  local excluded = {}
  for _, name in ipairs(cfg.exclude or {}) do excluded[name] = true end
  local names = {}
  for _, db in ipairs(all) do
    if db.allow_connections and not db.is_template and not excluded[db.name] then
      names[#names + 1] = db.name
    end
  end
  return names
end

-- ------------------------------------------------------------------ client programs

-- Major version of a PostgreSQL client program, from `prog --version`.
function postgres.program_version(path, env)
  local result = proc.run{ argv = { path, "--version" }, env = env }
  if not result or not result.ok then return nil end
  local version = result.stdout:match("%(PostgreSQL%)%s+(%S+)")
  if not version then return nil end
  return tonumber(version:match("^(%d+)")), version
end

-- Candidates: the configured bindir, Debian's per-version directories, then PATH.
local function candidates(name, cfg)
  local list = {}
  if cfg.pg_bindir then list[#list + 1] = cfg.pg_bindir .. "/" .. name end
  if lfs.attributes("/usr/lib/postgresql", "mode") == "directory" then
    for entry in lfs.dir("/usr/lib/postgresql") do
      local path = "/usr/lib/postgresql/" .. entry .. "/bin/" .. name
      if entry:match("^%d+$") and lfs.attributes(path, "mode") == "file" then list[#list + 1] = path end
    end
  end
  list[#list + 1] = name
  return list
end

-- The client program (pg_dump, pg_dumpall, psql) to use against a server of major version
-- server_major: the same major, else the oldest newer one. An older one is refused before
-- any work, naming the package to install.
function postgres.find_program(name, server_major, cfg)
  local best, best_major, best_version, newest_old
  local env = require("lib.config").without_secrets(cfg) -- (none of bkr's secrets, even for --version)
  for _, path in ipairs(candidates(name, cfg)) do
    local major, version = postgres.program_version(path, env)
    if major then
      if major >= server_major and (not best_major or major < best_major) then
        best, best_major, best_version = path, major, version
      elseif major < server_major then
        newest_old = math.max(newest_old or 0, major)
      end
    end
  end
  if best then return best, best_version end
  if newest_old then
    cli.fail(cli.EXIT_FAILED, "%s %d is older than the server (%d) and cannot dump it: install postgresql-client-%d",
      name, newest_old, server_major, server_major)
  end
  cli.fail(cli.EXIT_FAILED, "%s not found: install postgresql-client-%d", name, server_major)
end

-- ------------------------------------------------------------------ database properties

local PROPERTIES_SQL = [[
select d.datname, pg_get_userbyid(d.datdba) as owner, pg_encoding_to_char(d.encoding) as encoding,
       d.datcollate as collate, d.datctype as ctype, d.datacl::text as acl,
       d.datconnlimit as connection_limit,
       (select array_to_string(s.setconfig, E'\n') from pg_db_role_setting s
         where s.setdatabase = d.oid and s.setrole = 0) as settings
  from pg_database d where d.datname = $1
]]

local ROLE_SETTINGS_SQL = [[
select r.rolname as role, array_to_string(s.setconfig, E'\n') as settings
  from pg_db_role_setting s join pg_roles r on r.oid = s.setrole
  join pg_database d on d.oid = s.setdatabase
 where d.datname = $1 order by r.rolname
]]

local function split_lines(text)
  local out = {}
  for line in (text or ""):gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

-- What `pg_dump` without --create leaves out and a restore must re-apply: owner,
-- encoding, locale, ALTER DATABASE ... SET settings (also per role), privileges.
function postgres.database_properties(conn, dbname)
  local rows, err = conn:query(PROPERTIES_SQL, dbname)
  if not rows then return nil, err end
  if #rows == 0 then return nil, string.format('database "%s" does not exist', dbname) end
  local row = rows[1]
  local props = {
    owner = value(row.owner), encoding = value(row.encoding), collate = value(row.collate),
    ctype = value(row.ctype), acl = value(row.acl), connection_limit = value(row.connection_limit),
    settings = split_lines(value(row.settings)), role_settings = {},
  }
  -- (every role may read pg_db_role_setting: a failure here is the connection's, and a
  -- manifest without the settings would restore a database that quietly lacks them)
  local role_rows, rerr = conn:query(ROLE_SETTINGS_SQL, dbname)
  if not role_rows then return nil, "cannot read the database's role settings: " .. tostring(rerr) end
  for _, r in ipairs(role_rows) do
    props.role_settings[#props.role_settings + 1] = { role = r.role, settings = split_lines(value(r.settings)) }
  end
  return props
end

-- An encrypted backup's manifest stays in the clear beside it (in a bucket too: lists and
-- rotation read it without the key), and a database's settings may hold secrets (ALTER
-- DATABASE shop SET app.api_key = '...'). So with a key, each setting's value is sealed with it
-- (crypto.encrypt_value: AES-256-GCM, the setting's place as its authenticated context, so a
-- value cannot be moved to another setting or role), and so are the owner and the ACL; the
-- names stay readable. sealed says so. A restore of an encrypted backup applies only sealed
-- ones: a manifest without the seal was edited (or written before bkr sealed them).
local SEALED = "AES-256-GCM"

local function setting_context(role, name)
  return "database_properties." .. (role and ("role_settings." .. role .. ".") or "settings.") .. name
end

local function map_settings(props, fn)
  local out = {}
  for k, v in pairs(props) do out[k] = v end
  local function each(list, role)
    local mapped = {}
    for i, setting in ipairs(list or {}) do
      local name, value = setting:match("^([^=]*)=(.*)$")
      if not name then name, value = setting, "" end
      local result, err = fn(role, name, value)
      if not result then return nil, err end
      mapped[i] = name .. "=" .. result
    end
    return mapped
  end
  local err
  out.settings, err = each(props.settings)
  if not out.settings then return nil, err end
  out.role_settings = {}
  for i, entry in ipairs(props.role_settings or {}) do
    local settings, rerr = each(entry.settings, entry.role)
    if not settings then return nil, rerr end
    out.role_settings[i] = { role = entry.role, settings = settings }
  end
  return out
end

-- What a restore grants from the manifest, sealed too (a forged owner or ACL would hand the
-- restored database to someone else): owner and acl, each with its place as its context.
local GRANTS = { "owner", "acl" }

function postgres.seal_settings(props, key)
  local crypto = require "bkr.crypto"
  local sealed = assert(map_settings(props, function(role, name, value)
    return crypto.encrypt_value(key, value, setting_context(role, name))
  end))
  for _, field in ipairs(GRANTS) do
    if props[field] then sealed[field] = crypto.encrypt_value(key, props[field], "database_properties." .. field) end
  end
  sealed.sealed = SEALED
  return sealed
end

-- The settings with their values, for a restore with the backup's key; or nil, message, kind
-- ("auth": a value that does not authenticate, a manifest edited without the key).
function postgres.unseal_settings(props, key)
  if not props or props.sealed == nil then return props end
  if props.sealed ~= SEALED then return nil, "database settings sealed as " .. tostring(props.sealed), "corrupt" end
  local crypto = require "bkr.crypto"
  local kind
  local out, err = map_settings(props, function(role, name, value)
    local plain, derr, code = crypto.decrypt_value(key, value, setting_context(role, name))
    if not plain then
      kind = code == "key" and "key" or "corrupt"
      return nil, string.format("the sealed value of setting %s%s does not open with the key: %s",
        role and (role .. "/") or "", name, derr)
    end
    return plain
  end)
  if not out then return nil, err, kind end
  for _, field in ipairs(GRANTS) do
    if props[field] then
      local plain, derr, code = crypto.decrypt_value(key, props[field], "database_properties." .. field)
      if not plain then
        return nil, string.format("the sealed %s does not open with the key: %s", field, derr),
          code == "key" and "key" or "corrupt"
      end
      out[field] = plain
    end
  end
  out.sealed = nil
  return out
end

-- May this user read the cluster's globals (pg_dumpall --globals-only reads pg_authid)?
-- true or false when the server answered; nil, message, sqlstate when it could not be asked
-- (the connection is gone, the server is shutting down): that is no "not allowed", and the
-- caller must not skip the globals quietly on it.
function postgres.can_read_globals(conn)
  local rows, err, sqlstate = conn:query("select rolsuper from pg_roles where rolname = current_user")
  if not rows then return nil, err, sqlstate end
  return rows[1] ~= nil and rows[1].rolsuper == true
end

return postgres
