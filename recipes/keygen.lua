-- Make a new encryption key: 32 random bytes, base64, in a new file of mode 0600
--
-- The runbook:
--   1. draw 32 bytes from OpenSSL's random generator
--   2. write their base64 and a newline to --out, mode 0600, never replacing a file; with
--      --owner USER (root), the file belongs to USER from the moment it has its name
--   3. print the key id (never the key): backups name their key by it
-- Root without --owner gets a key only root can read: keygen says so, with the fix.
-- Keep a copy of the key away from the backups: without it they cannot be restored.
local cli = require "lib.cli"
local keys = require "lib.keys"
local crypto = require "bkr.crypto"
local fs = require "bkr.fs"

local options = cli.parse({ ... }, {
  name = "keygen",
  usage = "bkr keygen --out FILE [--owner USER]",
  summary = "Write a new random 32-byte key (base64) to FILE with mode 0600 and print its key id.\n"
    .. "An existing FILE is never overwritten. Use it with encryption.key_file or --key-file.\n"
    .. "Run as root, give the key to the user that runs bkr: --owner postgres.",
  options = {
    { "--out", "FILE", "the new key file (required; the key is never printed)" },
    { "--owner", "USER", "the key file belongs to USER (and USER's group); root only, for another user" },
  },
  exit_codes = "0 written, 1 the file exists or cannot be written, 2 usage",
  see = "docs/encryption.md",
})
if not options then return cli.EXIT_OK end
if not options.out or options.out == "" or options.out == "-" then
  cli.usage_error("keygen: give --out FILE (a key is written to a file of mode 0600, never printed)")
end

-- --owner: the user bkr runs as must be able to read the key, so it is theirs (0600)
local my_uid = fs.user()
local owner, owner_name
if options.owner then
  local uid, gid, name = fs.user(options.owner)
  if not uid then cli.usage_error("keygen: --owner %s: no such user", options.owner) end
  if my_uid ~= 0 and uid ~= my_uid then
    cli.usage_error("keygen: --owner %s: only root can give a file to another user", options.owner)
  end
  owner, owner_name = { uid, gid }, name
end

local key = crypto.random_bytes(keys.KEY_BYTES)
local ok, err, kind = fs.write_file(options.out, keys.encode(key) .. "\n",
  { mode = "0600", overwrite = false, owner = owner })
if not ok then
  if kind == "exists" then
    cli.fail(cli.EXIT_FAILED, "keygen: %s already exists; a key file is never overwritten "
      .. "(backups encrypted with it need it to be restored)", options.out)
  end
  cli.fail(cli.EXIT_FAILED, "keygen: %s", cli.failure(err, kind, options.out))
end
print(string.format("wrote a new key to %s (mode 0600%s), key id %s", options.out,
  owner_name and (", owner " .. owner_name) or "", crypto.key_id(key)))
if my_uid == 0 and not owner then
  cli.warn("keygen", "%s belongs to root (mode 0600): bkr run as postgres cannot read it; fix: chown postgres: %s "
    .. "(or next time: bkr keygen --out FILE --owner postgres)", options.out, options.out)
end
print("keep a copy of it away from the backups: without it they cannot be restored")
return cli.EXIT_OK
