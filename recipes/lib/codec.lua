-- How a backup file is stored: the one owner of "which compression, which dump format, which
-- file suffix". Plain SQL is compressed by bkr (gzip or zstd); a custom-format archive
-- (`format: custom`) is compressed by pg_dump itself and stored as it is. Backup, verify,
-- restore, decrypt, list, rotation, drill and repo's name patterns ask here instead of
-- spelling ".sql.gz" or gzip themselves.
--
--   codec.STORAGES               every way bkr stores a dump, each { name, suffix, dump_format,
--                                algorithm, levels = {low, high, default} }
--   codec.named(name)            the storage called name ("gzip", "zstd"), or nil
--   codec.by_suffix(file)        the storage whose suffix ends file (".enc" removed first), or nil
--   codec.for_entry(entry)       by the entry's name, else by its manifest (a renamed copy)
--   codec.for_config(cfg)        the plain storage of compression: (globals, plain dumps)
--   codec.for_backup(cfg)        the storage a run's database dumps get, from format: too
--   codec.pg_dump_compress(cfg, major)  pg_dump's --compress value for a custom archive, or nil
--                                and why pg_dump of that major version cannot
--   codec.compress(storage, cfg) the compressing filter stage, named "compress"
--   codec.decompress(storage)    the decompressing filter stage, named "decompress"
--   codec.facts(storage, cfg)    what the manifest says: compression = {algorithm, level}
--   codec.level(storage, cfg)    the level a run uses: compression_level, else the default
--   codec.threads(cfg)           worker threads: `threads`, else the online cores
local codec = {}

-- Plain SQL from pg_dump (and every globals file), compressed by bkr. The levels are those
-- `compression_level` accepts with each algorithm, and its default.
codec.STORAGES = {
  { name = "gzip", suffix = ".sql.gz", dump_format = "plain", algorithm = "gzip",
    levels = { 0, 9, default = 6 } },
  { name = "zstd", suffix = ".sql.zst", dump_format = "plain", algorithm = "zstd",
    levels = { 1, 19, default = 3 } },
  -- pg_dump --format=custom: compressed by pg_dump with the configured algorithm (no fixed
  -- one: algorithm nil), read back by pg_restore; bkr never decompresses it
  { name = "custom", suffix = ".dump", dump_format = "custom", algorithm = nil },
}

-- The values `format:` takes.
codec.DUMP_FORMATS = { "plain", "custom" }

-- The values `compression:` takes, in the order the documentation gives them.
codec.ALGORITHMS = { "gzip", "zstd" }

function codec.named(name)
  for _, storage in ipairs(codec.STORAGES) do
    if storage.name == name then return storage end
  end
  return nil
end

-- The storage of a file name (with or without ".enc"): the longest suffix that ends it.
function codec.by_suffix(file)
  local base = file:gsub("%.enc$", "")
  local best
  for _, storage in ipairs(codec.STORAGES) do
    if base:sub(-#storage.suffix) == storage.suffix and (not best or #storage.suffix > #best.suffix) then
      best = storage
    end
  end
  return best
end

-- A backup's storage: by its name; a renamed copy's by its manifest (dump_format and
-- compression); nil when neither tells.
function codec.for_entry(entry)
  local storage = entry.file and codec.by_suffix(entry.file)
  if storage then return storage end
  local m = entry.manifest
  if not m then return nil end
  local format = m.dump_format or "plain"
  local algorithm = type(m.compression) == "table" and m.compression.algorithm or "gzip"
  for _, candidate in ipairs(codec.STORAGES) do
    local same_algorithm = candidate.algorithm == nil or candidate.algorithm == algorithm
    if candidate.dump_format == format and same_algorithm then
      return candidate
    end
  end
  return nil
end

-- The plain storage of the configured compression (the globals file's, and a plain dump's).
function codec.for_config(cfg)
  return codec.named(cfg.compression or "gzip")
end

function codec.for_backup(cfg)
  if cfg.format == "custom" then return codec.named("custom") end
  return codec.for_config(cfg)
end

-- The level a run uses: compression_level (config.load fills in the algorithm's default).
function codec.level(storage, cfg)
  local plain = storage.levels and storage or codec.for_config(cfg)
  return cfg.compression_level or plain.levels.default
end

-- Which pg_dump first compresses custom archives with each algorithm.
local PG_DUMP_SINCE = { gzip = 8, zstd = 16 }

-- pg_dump's --compress for a custom archive with the configured compression, or nil and why
-- this pg_dump (major version) cannot write it.
function codec.pg_dump_compress(cfg, major)
  local algorithm = cfg.compression or "gzip"
  local level = codec.level(codec.named("custom"), cfg)
  if major < PG_DUMP_SINCE[algorithm] then
    return nil, string.format("format: custom with compression: %s needs pg_dump %d or later; "
      .. "this pg_dump is %d "
      .. "(use compression: gzip, or format: plain)", algorithm, PG_DUMP_SINCE[algorithm], major)
  end
  if algorithm == "gzip" then return tostring(level) end
  return algorithm .. ":" .. level
end

-- The worker threads of compression and restores: `threads`, else the online cores (whose
-- one owner is bkr.gzip's default_threads).
function codec.threads(cfg)
  return cfg.threads or require("bkr.gzip").default_threads()
end

-- Compression on `threads` worker threads: gzip in 1 MiB blocks through libdeflate, zstd
-- with its own workers (ZSTD_c_nbWorkers).
function codec.compress(storage, cfg)
  assert(storage.dump_format == "plain", "codec.compress: a custom archive is compressed by pg_dump")
  local level = codec.level(storage, cfg)
  if storage.algorithm == "zstd" then
    return require("bkr.zstd").compress{ name = "compress", level = level, threads = codec.threads(cfg) }
  end
  return require("bkr.gzip").compress{ name = "compress", level = level, threads = cfg.threads }
end

function codec.decompress(storage)
  assert(storage.dump_format == "plain", "codec.decompress: a custom archive is read by pg_restore")
  if storage.algorithm == "zstd" then return require("bkr.zstd").decompress{ name = "decompress" } end
  return require("bkr.gzip").decompress{ name = "decompress" }
end

function codec.facts(storage, cfg)
  return { algorithm = storage.algorithm or cfg.compression or "gzip", level = codec.level(storage, cfg) }
end

-- The manifest's `compression`: nil when sound, else what is wrong (lib/manifest.lua asks).
function codec.check_facts(compression)
  for _, storage in ipairs(codec.STORAGES) do
    if storage.algorithm == compression.algorithm then
      local level = compression.level
      if math.type(level) == "integer" or (type(level) == "number" and level == math.floor(level)) then
        if level >= storage.levels[1] and level <= storage.levels[2] then return nil end
      end
      return string.format("compression: not %s at a level %d-%d", storage.algorithm, storage.levels[1],
        storage.levels[2])
    end
  end
  return "compression: not " .. table.concat(codec.ALGORITHMS, " or ")
end

return codec
