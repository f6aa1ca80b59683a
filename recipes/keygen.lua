-- Make a new encryption key: 32 random bytes, base64, in a new file of mode 0600
--
-- The runbook:
--   1. draw 32 bytes from OpenSSL's random generator
--   2. write their base64 and a newline to --out, mode 0600, never replacing a file
--   3. print the key id (never the key): backups name their key by it
-- Keep a copy of the key away from the backups: without it they cannot be restored.
local cli = require "lib.cli"
local keys = require "lib.keys"
local crypto = require "bkr.crypto"
local fs = require "bkr.fs"

local options = cli.parse({ ... }, {
  name = "keygen",
  usage = "bkr keygen --out FILE",
  summary = "Write a new random 32-byte key (base64) to FILE with mode 0600 and print its key id.\n"
    .. "An existing FILE is never overwritten. Use it with encryption.key_file or --key-file.",
  options = {
    { "--out", "FILE", "the new key file (required; the key is never printed)" },
  },
  exit_codes = "0 written, 1 the file exists or cannot be written, 2 usage",
  see = "docs/encryption.md",
})
if not options then return cli.EXIT_OK end
if not options.out or options.out == "" or options.out == "-" then
  cli.usage_error("keygen: give --out FILE (a key is written to a file of mode 0600, never printed)")
end

local key = crypto.random_bytes(keys.KEY_BYTES)
local ok, err, kind = fs.write_file(options.out, keys.encode(key) .. "\n", { mode = "0600", overwrite = false })
if not ok then
  if kind == "exists" then
    cli.fail(cli.EXIT_FAILED, "keygen: %s already exists; a key file is never overwritten "
      .. "(backups encrypted with it need it to be restored)", options.out)
  end
  cli.fail(cli.EXIT_FAILED, "keygen: %s", cli.failure(err, kind, options.out))
end
print(string.format("wrote a new key to %s (mode 0600), key id %s", options.out, crypto.key_id(key)))
print("keep a copy of it away from the backups: without it they cannot be restored")
return cli.EXIT_OK
