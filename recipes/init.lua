-- Create a repository: the directory backups go into, mode 0750, and nothing else
--
-- The runbook:
--   1. the repository from --repo or the configuration
--   2. already a directory: say so, change nothing (exit 0)
--   3. else create it (missing parents 0755), mode 0750, owned by the invoking user, or by
--      --owner USER (root only): the user that will run bkr (postgres)
-- No marker file is written: a repository is an existing directory. Every other command
-- refuses one that does not exist (`no repository at DIR`), so a typo never starts a new,
-- empty repository; `bkr backup --create-repo` is the other way to make one.
local cli = require "lib.cli"
local config = require "lib.config"
local fs = require "bkr.fs"
local lfs = require "lfs"

local options = cli.parse({ ... }, {
  name = "init",
  usage = "bkr init --repo DIR [--config FILE] [--owner USER]",
  summary = "Create the repository directory DIR (mode 0750) for bkr backup, and nothing in it.\n"
    .. "An existing directory is left as it is. Run as root, --owner postgres gives the new\n"
    .. "repository to the user that runs bkr.",
  options = {
    { "--repo", "DIR", "the repository to create (overrides the configuration)" },
    { "--config", "FILE", "configuration file (its repository)" },
    { "--owner", "USER", "the repository belongs to USER and USER's group (root only, for another user)" },
  },
  exit_codes = "0 created, or already a repository, 1 it cannot be created, 2 usage or configuration error",
  see = "docs/backup.md#bkr-init",
})
if not options then return cli.EXIT_OK end

local cfg = config.load(options, { notify = false })
local dir = (config.repository(cfg):gsub("(.)/+$", "%1"))

-- The owner of a new repository: --owner, else the invoking user.
local my_uid, _, my_name = fs.user()
local owner, owner_name = nil, my_name or tostring(my_uid)
if options.owner then
  local uid, gid, name = fs.user(options.owner)
  if not uid then cli.usage_error("init: --owner %s: no such user", options.owner) end
  if my_uid ~= 0 and uid ~= my_uid then
    cli.usage_error("init: --owner %s: only root can give a directory to another user", options.owner)
  end
  owner, owner_name = { uid, gid }, name
end

-- Already there: nothing to do.
local uid, err, kind = fs.owner(dir)
if uid then
  if lfs.attributes(dir, "mode") ~= "directory" then cli.usage_error("init: %s exists and is not a directory", dir) end
  local _, _, name = fs.owner(dir)
  cli.say("%s is already a repository (owner %s, mode %04o): nothing to do", dir, name or tostring(uid),
    fs.mode(dir) or 0)
  return cli.EXIT_OK
end
if kind == "permission" then cli.permission_failure(dir, { verb = "create" }) end
if kind ~= "missing" then cli.fail(cli.EXIT_FAILED, "init: %s", cli.failure(err, kind, dir)) end

-- Its parents as mkdir -p makes them (0755 less the umask), the repository itself 0750 exactly.
local parent = dir:match("^(.+)/[^/]+$")
local ok, merr, mkind = true, nil, nil
if parent then ok, merr, mkind = fs.mkdirs(parent) end
if ok then ok, merr, mkind = fs.mkdirs(dir, "0750", { owner = owner }) end
if ok then ok, merr, mkind = fs.chmod(dir, "0750") end
if not ok then
  -- (root makes it, for the user that will use it: chown of a path that is not there fixes nothing)
  if mkind == "permission" then
    cli.permission_failure(dir, { verb = "create", fix = "sudo bkr init --repo " .. dir .. " --owner USER" })
  end
  cli.fail(cli.EXIT_FAILED, "init: cannot create %s: %s", dir, cli.failure(merr, mkind, dir))
end
cli.say("created the repository %s (mode 0750, owner %s)", dir, owner_name)
if my_uid == 0 and not owner then
  cli.warn("init", "%s belongs to root: bkr run as postgres cannot use it; fix: chown postgres: %s "
    .. "(or: bkr init --repo DIR --owner postgres)", dir, dir)
end
return cli.EXIT_OK
