-- Checking a config backup: what `bkr config verify` reports, what `bkr config restore`
-- requires before it writes anything, and what `bkr config backup` requires of its staged
-- backup before publishing it. The layout is lib/config_repo.lua's; docs/config-backup.md
-- (verify) lists the checks.
--
-- A backup is read as someone else may have written it (docs/RELIABILITY.md): the manifest's
-- every entry is checked before anything is read or written through it, and only regular files
-- in real directories are read (a symlink, FIFO, device or directory where a stored file or a
-- directory of files/ belongs is damage, reported as what it is, and nothing is read through it).
local lfs = require "lfs"
local cli = require "lib.cli"
local fs = require "bkr.fs"
local hash = require "bkr.hash"
local crypto = require "bkr.crypto"
local files = require "lib.config_files"
local config_repo = require "lib.config_repo"
local repo = require "lib.repo"

local check = {}

-- ------------------------------------------------------------------ paths and what stands there

local MODE_NAMES = { link = "a symlink", file = "a regular file", directory = "a directory",
  ["named pipe"] = "a named pipe", socket = "a socket", ["char device"] = "a character device",
  ["block device"] = "a block device" }

-- What an lfs mode names, for messages: "a symlink", "a named pipe", ...
function check.what(mode)
  return MODE_NAMES[mode] or ("a " .. mode)
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- A relative path that stays below its base: no empty, '.' or '..' component.
function check.safe_relative(path)
  if type(path) ~= "string" or path == "" or path:sub(1, 1) == "/" then return false end
  for part in (path .. "/"):gmatch("([^/]*)/") do
    if part == "" or part == "." or part == ".." then return false end
  end
  return true
end
local safe_relative = check.safe_relative

-- What stands at DIR/RELATIVE, as bkr reads a backup: every directory on the way a real
-- directory and the file itself a regular file; a symlink, FIFO, device or directory in their
-- place means the backup is damaged (someone else may have written it). Returns nil,
-- "missing", or the problem ("files/etc: a symlink where a directory belongs").
-- O_NOFOLLOW in the readers covers the last component; this covers the ones above it.
function check.stored_file_problem(dir, relative)
  local parts = {}
  for part in relative:gmatch("[^/]+") do parts[#parts + 1] = part end
  local path = dir
  for i, part in ipairs(parts) do
    path = path .. "/" .. part
    local mode = lfs.symlinkattributes(path, "mode")
    if not mode then return "missing" end
    local want = i < #parts and "directory" or "file"
    if mode ~= want then
      return string.format("%s: %s where %s belongs", table.concat(parts, "/", 1, i), check.what(mode),
        MODE_NAMES[want])
    end
  end
  return nil
end

-- Files under files/ that the manifest does not name.
local function unexpected_files(dir, expected)
  local found = {}
  local function walk(relative)
    local path = dir .. "/" .. relative
    for name in lfs.dir(path) do
      if name ~= "." and name ~= ".." then
        local child = relative .. "/" .. name
        local mode = lfs.symlinkattributes(dir .. "/" .. child, "mode")
        if mode == "directory" then
          walk(child)
        elseif not expected[child] then
          found[#found + 1] = child
        end
      end
    end
  end
  local stored_dir = config_repo.STORED_DIR
  if lfs.symlinkattributes(dir .. "/" .. stored_dir, "mode") == "directory" then walk(stored_dir) end
  return found
end

-- ------------------------------------------------------------------ the manifest

local STORED_PREFIX = config_repo.STORED_DIR .. "/"

-- The shape of one manifest entry, before anything is read or written through it.
local function entry_problem(file)
  if type(file) ~= "table" then return "an entry is not an object" end
  if type(file.path) ~= "string" or file.path:sub(1, 1) ~= "/" or not safe_relative(file.path:sub(2)) then
    return "an entry has an unsafe original path: " .. tostring(file.path)
  end
  if not safe_relative(file.stored) or file.stored:sub(1, #STORED_PREFIX) ~= STORED_PREFIX then
    return file.path .. ": unsafe stored path " .. tostring(file.stored)
  end
  if not files.known_kind(file.kind) then
    return file.path .. ": unknown kind " .. tostring(file.kind)
  end
  for _, field in ipairs({ "sha256", "stored_sha256" }) do
    if type(file[field]) ~= "string" or not file[field]:match("^%x+$") or #file[field] ~= 64 then
      return file.path .. ": manifest lacks a valid " .. field
    end
  end
  local mode = type(file.mode) == "string" and tonumber(file.mode, 8)
  if not mode or mode > tonumber("777", 8) then
    return file.path .. ": invalid mode " .. tostring(file.mode)
  end
  if type(file.encrypted_fields or {}) ~= "table" then return file.path .. ": invalid encrypted_fields" end
  return nil
end

-- The manifest as a whole: its format, every entry, and no original path or stored copy listed
-- twice (restore would write one over the other) or both as a file and as a directory.
-- Returns nil or the problem.
function check.manifest_problem(manifest)
  if type(manifest) ~= "table" or manifest.format ~= config_repo.FORMAT or type(manifest.files) ~= "table" then
    return string.format("%s is not a bkr config backup manifest (format %s)", config_repo.MANIFEST,
      cli.printable(type(manifest) == "table" and tostring(manifest.format) or type(manifest)))
  end
  local paths, stored = {}, {}
  for _, file in ipairs(manifest.files) do
    local bad = entry_problem(file)
    if bad then return "manifest: " .. bad end
    if paths[file.path] then return "manifest: " .. file.path .. " is listed twice" end
    if stored[file.stored] then return "manifest: stored copy " .. file.stored .. " is listed twice" end
    paths[file.path], stored[file.stored] = true, true
  end
  for path in pairs(paths) do
    local parent = dirname(path)
    while parent ~= "" do
      if paths[parent] then return "manifest: " .. parent .. " is listed as a file and as a directory" end
      parent = dirname(parent)
    end
  end
  return nil
end

-- Whether a manifest entry holds anything sealed (a value, or the whole file).
function check.has_secrets(file)
  return file.whole_file_encrypted == true or #(file.encrypted_fields or {}) > 0
end

-- ------------------------------------------------------------------ checking a backup

local Report = {}
Report.__index = Report

-- Note a problem, once.
function Report:problem(fmt, ...)
  local text = string.format(fmt, ...)
  if not self.said[text] then self.problems[#self.problems + 1] = text end
  self.said[text] = true
end

-- 1. The backup directory and its manifest. Returns the manifest, or nil (reported).
local function read_manifest(report, dir)
  local mode = lfs.symlinkattributes(dir, "mode")
  if mode ~= "directory" then
    report:problem("%s is %s, not a backup directory", dir, MODE_NAMES[mode] or "missing")
    return nil
  end
  local manifest, err = config_repo.read_manifest(dir)
  if not manifest then
    report:problem("manifest: %s", err)
    return nil
  end
  local bad = check.manifest_problem(manifest)
  if bad then
    report:problem("%s", bad)
    return nil
  end
  return manifest
end

-- 2. SHA256SUMS, and the stored copies against it and against the manifest; a stored copy that
-- is not a regular file in real directories is reported once, as what it is. Returns the set
-- of the manifest's entries whose stored copy is intact.
local function check_stored(report, dir, manifest)
  local SUMS, MANIFEST = config_repo.SUMS, config_repo.MANIFEST
  local actual, misplaced = {}, {}
  local function digest_of(relative)
    if actual[relative] == nil then
      local wrong = check.stored_file_problem(dir, relative)
      if wrong and wrong ~= "missing" then
        report:problem("%s", wrong)
        misplaced[relative] = true
      end
      actual[relative] = not wrong and hash.sha256_file(dir .. "/" .. relative) or false
    end
    return actual[relative]
  end

  local listed = {}
  local sums_text, serr, skind = fs.read_file(dir .. "/" .. SUMS)
  local sums, perr
  if sums_text then
    sums, perr = config_repo.parse_sums(sums_text)
  else
    perr = string.format("%s %s (%s)", skind == "missing" and "missing" or "unreadable", SUMS, serr)
  end
  if not sums then
    report:problem("%s", perr)
    sums = {}
  end
  for _, line in ipairs(sums) do
    if not safe_relative(line.name) then
      report:problem("%s names an unsafe path %s", SUMS, line.name)
    else
      listed[line.name] = line.digest
      local digest = digest_of(line.name)
      if not digest then
        if not misplaced[line.name] then report:problem("%s: missing", line.name) end
      elseif digest ~= line.digest then
        report:problem("%s: SHA-256 mismatch (%s says %s, the file is %s)", line.name, SUMS, line.digest,
          digest)
      end
    end
  end
  if sums_text and not listed[MANIFEST] then report:problem("%s does not cover %s", SUMS, MANIFEST) end

  local expected, intact = {}, {}
  for _, file in ipairs(manifest.files) do
    expected[file.stored] = true
    local digest = digest_of(file.stored)
    if not digest then
      if not listed[file.stored] and not misplaced[file.stored] then
        report:problem("%s: stored copy %s is missing", file.path, file.stored)
      end
    elseif digest ~= file.stored_sha256 then
      -- (a mismatch with SHA256SUMS was reported above)
      if not listed[file.stored] or listed[file.stored] == digest then
        report:problem("%s: manifest says the stored copy's SHA-256 is %s, the file is %s", file.path,
          file.stored_sha256, digest)
      end
    elseif sums_text and not listed[file.stored] then
      report:problem("%s: stored copy %s is not listed in %s", file.path, file.stored, SUMS)
    else
      intact[file] = true
    end
  end
  for _, relative in ipairs(unexpected_files(dir, expected)) do
    -- (a symlinked directory on the way to a stored copy was reported above, as what it is)
    local shown = false
    for name in pairs(misplaced) do
      if name:sub(1, #relative + 1) == relative .. "/" then shown = true end
    end
    if not shown then report:problem("%s: not part of the backup (not in the manifest)", relative) end
  end
  return intact
end

-- 3. The content of one intact stored copy: what the original was, opened with the cipher when
-- it holds secrets. A file opened field by field is kept in report.plain, for restore.
local function check_content(report, dir, file, key, cipher)
  local secret = check.has_secrets(file)
  local stored_path = dir .. "/" .. file.stored
  if secret and not cipher then
    report.unchecked = report.unchecked + 1
  elseif file.whole_file_encrypted or file.kind == "other" then
    local digest, err = files.read_whole(stored_path, { key = file.whole_file_encrypted and key or nil })
    if not digest then
      report:problem("%s: %s", file.path, err)
    elseif digest ~= file.sha256 then
      report:problem("%s: content does not match the original's SHA-256", file.path)
    end
  else
    local stored, rerr = fs.read_file(stored_path)
    local plain, err = stored, nil
    if not stored then
      err = rerr
    elseif secret then
      plain, err = files.reveal(file.kind, stored, file.encrypted_fields, cipher)
    end
    if not plain then
      report:problem("%s: %s", file.path, err)
    elseif hash.sha256_string(plain) ~= file.sha256 then
      report:problem("%s: the restored content does not match the original's SHA-256%s", file.path,
        secret and " (a legacy value opened with the wrong key?)" or "")
    else
      report.plain[file] = plain
    end
  end
end

-- Every directory and file of a backup must be one bkr may read: else the run stops (exit 1)
-- naming the first that is not, its owner and mode, bkr's user and the fix. A permission
-- problem is not damage: it is said before any check, never as a failed check.
function check.require_readable(dir)
  local function walk(path)
    local mode = lfs.symlinkattributes(path, "mode")
    if mode == "directory" then
      local ok, _, kind = fs.access(path, "rx")
      if not ok and kind == "permission" then repo.permission_failure(path) end
      for name in lfs.dir(path) do
        if name ~= "." and name ~= ".." then walk(path .. "/" .. name) end
      end
    elseif mode == "file" then
      local ok, _, kind = fs.access(path, "r")
      if not ok and kind == "permission" then repo.permission_failure(path) end
    end
  end
  walk(dir)
end

-- Check a backup directory. Without a key, only what needs none: SHA256SUMS, the manifest,
-- and the files that hold no secret. With the key, also the key id, every sealed value and
-- every file's SHA-256 after opening. Returns a report:
--   { manifest, problems = {...}, plain = { [file entry] = original text }, unchecked = n }
-- (manifest is nil when it could not be trusted; unchecked counts files with secrets left
-- unchecked for want of a key).
function check.backup(dir, key)
  local report = setmetatable({ problems = {}, plain = {}, unchecked = 0, said = {} }, Report)
  local manifest = read_manifest(report, dir)
  if not manifest then return report end
  report.manifest = manifest
  local intact = check_stored(report, dir, manifest)
  local cipher
  if key then
    local given = crypto.key_id(key)
    if manifest.key_id and manifest.key_id ~= given then
      report:problem("backup was encrypted with key %s, the key given is %s", manifest.key_id, given)
      return report
    end
    cipher = files.cipher(key)
  end
  for _, file in ipairs(manifest.files) do
    if intact[file] then check_content(report, dir, file, key, cipher) end
  end
  return report
end

return check
