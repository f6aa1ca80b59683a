-- Decrypt an encrypted backup to a file or stdout, emitting only authenticated bytes
--
-- The runbook:
--   1. find the key (--key-file, encryption.key_file or encryption.key_env)
--   2. to a file: one pass file -> decrypt [-> decompress] -> temporary file, renamed into place
--      only when every chunk authenticated (a damaged backup leaves no OUT behind)
--   3. to stdout: a first pass authenticates every chunk [and the gzip or zstd stream] writing
--      nothing; only then a second pass writes the plaintext
-- Exit 3 for a foreign file, a wrong key or any damage, with no plaintext written.
local cli = require "lib.cli"
local config = require "lib.config"
local keys = require "lib.keys"
local stream = require "bkr.stream"
local codec = require "lib.codec"
local repo = require "lib.repo"
local crypto = require "bkr.crypto"

local options = cli.parse({ ... }, {
  name = "decrypt",
  usage = "bkr decrypt FILE [--key-file K] [--out OUT|-] [--decompress] [--config FILE]",
  summary = "Write the plaintext of an encrypted backup (FILE.sql.gz.enc, FILE.sql.zst.enc) to OUT or to\n"
    .. "standard output: the compressed stream, or with --decompress the SQL\n"
    .. "(bkr decrypt F --key-file K --decompress | psql ...). Nothing is written unless every chunk authenticates.",
  positional = "FILE",
  options = {
    { "--key-file", "K", "the key (default: encryption.key_file or encryption.key_env of the configuration)" },
    { "--out", "OUT", "write here (mode 0600, never replacing a file); '-' or none: standard output" },
    { "--decompress", nil, "also decompress (gzip or zstd, as the file is stored): write SQL" },
    { "--gunzip", nil, "the same as --decompress (its older name; it also reads zstd)" },
    { "--config", "FILE", "configuration file" },
  },
  exit_codes = "0 written, 3 not a bkr encrypted file, wrong key or damaged, 1 other failures, 2 usage",
  see = "docs/encryption.md",
})
if not options then return cli.EXIT_OK end
if #options.args ~= 1 then cli.usage_error("decrypt: give exactly one FILE (see --help)") end
local file = options.args[1]
local to_stdout = options.out == nil or options.out == "-"

local cfg = config.load(options, { remote = true }) -- (it reads no repository: an s3:// one is fine)
local key, key_id = keys.require(cfg, options)

-- How FILE is stored: by its name, else by its manifest beside it (a renamed copy), else gzip
-- (what every bkr before zstd wrote).
local function storage_of(path)
  local storage = codec.by_suffix(path)
  if storage then return storage end
  local manifest = repo.read_manifest(path .. ".json")
  return manifest and codec.for_entry({ manifest = manifest }) or codec.named("gzip")
end

local decompress = options.decompress or options.gunzip
if decompress and storage_of(file).dump_format == "custom" then
  cli.usage_error("decrypt: %s is a pg_dump custom-format archive, not a compressed stream: decrypt it without "
    .. "--decompress and give the archive to pg_restore", file)
end

-- source -> decrypt [-> decompress] -> sink
local function pipeline(sink)
  -- the file the admin named: a symlink to it is followed; a FIFO or device is not read
  local source, err, kind = stream.from_file(file, { follow = true })
  if not source then cli.fail(cli.EXIT_FAILED, "decrypt: %s", cli.failure(err, kind, file)) end
  local stages = { source, crypto.decrypt{ key = key } }
  if decompress then stages[#stages + 1] = codec.decompress(storage_of(file)) end
  stages[#stages + 1] = sink
  return stages
end

-- What the file's bytes can be blamed for: an integrity failure (exit 3).
local INTEGRITY = { corrupt = true, truncated = true, auth = true, key = true }

-- Run one pass; a damaged or foreign file, or a wrong key, is an integrity failure (exit 3).
local function run_pass(stages)
  local ok, result = pcall(stream.run, stages)
  if ok then return result end
  if INTEGRITY[cli.kind(result)] then
    cli.fail(cli.EXIT_INTEGRITY, "decrypt: %s: %s", file, result.stage == "decrypt" and cli.reason(result)
      or cli.detail(result))
  end
  -- the output's fault, not the input's: name the output (--out is never replaced)
  if cli.kind(result) == "exists" and options.out then
    cli.fail(cli.EXIT_FAILED, "decrypt: %s: already exists; --out never replaces a file", options.out)
  end
  cli.fail(cli.EXIT_FAILED, "decrypt: %s: %s", file, cli.detail(result))
end

if to_stdout then
  run_pass(pipeline(stream.to_null()))
  run_pass(pipeline(stream.to_stdout()))
else
  local sink, err, kind = stream.to_file(options.out, { mode = tonumber("600", 8), overwrite = false })
  if not sink then cli.fail(cli.EXIT_FAILED, "decrypt: %s", cli.failure(err, kind, options.out)) end
  local result = run_pass(pipeline(sink))
  io.stderr:write(string.format("decrypted %s -> %s (%s, key id %s)\n", file, options.out,
    cli.plural(result.decrypt.chunks, "chunk", "chunks"), key_id))
end
return cli.EXIT_OK
