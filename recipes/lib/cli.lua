-- Command-line parsing and failures with exit codes, shared by every recipe.
--
--   local options = cli.parse(args, {
--     usage = "bkr backup [options]",
--     summary = "Back up databases ...",
--     options = {
--       { "--config", "FILE", "configuration file" },
--       { "--db", "NAME", "database to back up (repeatable)", repeatable = true },
--       { "--dry-run", nil, "show what would be done" },
--     },
--     positional = "PATH",          -- optional: name of positional arguments, collected in options.args
--     exit_codes = "0 ok, 1 ...",   -- shown by --help
--   })
-- Returns nil after printing help for --help (the recipe then returns 0).
-- Option values land under their name without dashes, '-' turned into '_': options.dry_run.
--
-- Every recipe also takes the global options (cli.GLOBAL_OPTIONS), added to each spec and
-- its --help by cli.parse: --quiet (cli.say prints nothing; errors, warnings and
-- cli.report lines still show) and --log-level LEVEL (what goes to the log file, read by
-- lib/logging.lua through cli.globals: options are parsed before the configuration).
local cli = {}

-- The global options as this run gave them: { quiet = true|nil, log_level = "debug"|...|nil }.
cli.globals = {}

-- The exit codes are the host's (runtime/bkr.h, as bkr.exit_codes): one owner.
cli.EXIT_OK = bkr.exit_codes.ok
cli.EXIT_FAILED = bkr.exit_codes.failed
cli.EXIT_USAGE = bkr.exit_codes.usage
cli.EXIT_INTEGRITY = bkr.exit_codes.integrity

local failure_meta = { __tostring = function(e) return e.message end }

-- Stop the run with an exit code and a one-line message (printed by the host as "bkr: message").
function cli.fail(exit_code, fmt, ...)
  local message = select("#", ...) > 0 and string.format(fmt, ...) or fmt
  error(setmetatable({ exit_code = exit_code, message = message }, failure_meta), 0)
end

function cli.usage_error(fmt, ...)
  cli.fail(cli.EXIT_USAGE, fmt, ...)
end

-- Progress and results for the admin: one line on stdout, flushed (a scheduler's log shows
-- it in order with stderr). --quiet silences it.
function cli.say(fmt, ...)
  if cli.globals.quiet then return end
  io.stdout:write(string.format(fmt, ...), "\n")
  io.stdout:flush()
end

-- A line on stdout that --quiet keeps: a failure, a difference or a warning that belongs with
-- a recipe's results (what went wrong is never silenced).
function cli.report(fmt, ...)
  io.stdout:write(string.format(fmt, ...), "\n")
  io.stdout:flush()
end

-- A recipe with subcommands (bkr config backup, bkr schedule show): --help prints the overview;
-- a missing or unknown subcommand prints it on stderr and is a usage error; else the
-- subcommand's function runs with the remaining arguments and its result is returned.
function cli.subcommand(recipe, args, overview, subcommands)
  local name = args[1]
  if name == "--help" or name == "-h" then
    print(overview)
    return cli.EXIT_OK
  end
  if not name or not subcommands[name] then
    io.stderr:write(overview, "\n")
    cli.usage_error("%s: %s", recipe, name and ("unknown subcommand '" .. cli.printable(name) .. "'")
      or "name a subcommand")
  end
  return subcommands[name]({ table.unpack(args, 2) })
end

-- A warning or a failure that does not stop the run: one line on stderr, "bkr NAME: ...".
function cli.warn(name, fmt, ...)
  io.stderr:write("bkr ", name, ": ", string.format(fmt, ...), "\n")
end

local function key_of(flag)
  return (flag:gsub("^%-%-", ""):gsub("%-", "_"))
end

-- Options every recipe takes; cli.parse adds them to each spec (a spec that names one itself
-- keeps its own).
cli.GLOBAL_OPTIONS = {
  { "--quiet", nil, "no progress lines (errors, warnings and failures still show)" },
  { "--log-level", "LEVEL", "debug, info, warning or error: what the log file gets (overrides logging.level)" },
}

-- The spec's options followed by the global ones it does not name itself.
local function all_options(spec)
  local list, named = {}, {}
  for _, option in ipairs(spec.options) do
    list[#list + 1] = option
    named[option[1]] = true
  end
  for _, option in ipairs(cli.GLOBAL_OPTIONS) do
    if not named[option[1]] then list[#list + 1] = option end
  end
  return list
end

local function print_help(spec)
  local lines = { "usage: " .. spec.usage, "" }
  if spec.summary then
    lines[#lines + 1] = spec.summary
    lines[#lines + 1] = ""
  end
  lines[#lines + 1] = "options:"
  for _, option in ipairs(all_options(spec)) do
    local left = option[1] .. (option[2] and (" " .. option[2]) or "")
    lines[#lines + 1] = string.format("  %-22s %s", left, option[3])
  end
  lines[#lines + 1] = string.format("  %-22s %s", "--help", "show this help")
  if spec.exit_codes then
    lines[#lines + 1] = ""
    lines[#lines + 1] = "exit codes: " .. spec.exit_codes
  end
  if spec.see then
    lines[#lines + 1] = "documentation: " .. spec.see
  end
  print(table.concat(lines, "\n"))
end

function cli.parse(args, spec)
  local by_flag = {}
  for _, option in ipairs(all_options(spec)) do
    by_flag[option[1]] = option
  end
  local options = { args = {} }
  local i = 1
  while i <= #args do
    local word = args[i]
    local flag, inline = word:match("^(%-%-[%w%-]+)=(.*)$")
    flag = flag or word
    if word == "--help" or word == "-h" then
      print_help(spec)
      return nil
    elseif word == "--" then
      for j = i + 1, #args do options.args[#options.args + 1] = args[j] end
      break
    elseif flag:sub(1, 1) == "-" and #flag > 1 then
      local option = by_flag[flag]
      if not option then
        cli.usage_error("%s: unknown option %s (see --help)", spec.name or "bkr", flag)
      end
      local key = key_of(flag)
      local value = true
      if option[2] then
        value = inline
        if value == nil then
          i = i + 1
          value = args[i]
          -- "--db --no-globals" is a forgotten value, not a database named "--no-globals"
          -- (a value that starts with "--" can still be given as --db=--odd)
          if value and value:sub(1, 2) == "--" then value = nil end
        end
        if value == nil or value == "" then
          cli.usage_error("%s: %s needs a value (%s)", spec.name or "bkr", flag, option[2])
        end
      elseif inline then
        cli.usage_error("%s: %s takes no value", spec.name or "bkr", flag)
      end
      if option.repeatable then
        options[key] = options[key] or {}
        table.insert(options[key], value)
      else
        options[key] = value
      end
    else
      if not spec.positional then
        cli.usage_error("%s: unexpected argument '%s' (see --help)", spec.name or "bkr", word)
      end
      options.args[#options.args + 1] = word
    end
    i = i + 1
  end
  -- the levels are lib/logging.lua's (loaded only when a level is given)
  if options.log_level and not require("lib.logging").RANK[options.log_level] then
    cli.usage_error("%s: --log-level must be debug, info, warning or error, not '%s'", spec.name or "bkr",
      cli.printable(options.log_level))
  end
  cli.globals = { quiet = options.quiet, log_level = options.log_level }
  return options
end

-- A path from the command line as an absolute path, '.' and '..' resolved lexically (as
-- `realpath -s` does: symlinks are kept), for what outlives this run's working directory.
function cli.absolute(path)
  if path:sub(1, 1) ~= "/" then path = require("lfs").currentdir() .. "/" .. path end
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." then
      parts[#parts] = nil
    elseif part ~= "." then
      parts[#parts + 1] = part
    end
  end
  return "/" .. table.concat(parts, "/")
end

-- What went wrong, for people, from an error object (stream.run's: "STAGE: reason"), or
-- any other error value as it prints.
function cli.detail(err)
  if type(err) == "table" and err.detail then return err.detail end
  return tostring(err)
end

-- What went wrong, without the stage's name (when the caller names the step itself).
function cli.reason(err)
  if type(err) == "table" and err.reason then return err.reason end
  return tostring(err)
end

-- What an environmental failure (nil, message, kind) of `path` means, in an admin's words,
-- chosen by its kind; a kind without words of its own keeps the binding's message.
cli.REASONS = {
  missing = "no such file or directory",
  permission = "permission denied",
  not_regular = "not a regular file (a symlink, FIFO, device or directory where a file belongs)",
  exists = "already exists",
  no_space = "no space left on the device",
  too_large = "far larger than it can be",
}

function cli.failure(message, kind, path)
  local reason = cli.REASONS[kind]
  if reason then return path .. ": " .. reason end
  return tostring(message)
end

-- A file bkr may not read (or write) is a permission problem, never damage: one line that
-- names the file, who owns it and its mode, the user bkr runs as, and the fix. When the file
-- itself cannot even be looked at, its nearest directory that can is described instead.
-- opts.verb ("read" by default, "write"), opts.fix_tree: the directory the fix gives to bkr's
-- user as a whole (the repository: `chown -R`); without it the fix names the file alone.
-- opts.fix: the fix in words instead (USER stands for bkr's user). A file of another user
-- who is not root is that user's to use: the fix is to run bkr as that user.
function cli.permission_message(path, opts)
  opts = opts or {}
  local fs = require "bkr.fs"
  local my_uid, _, me = fs.user()
  me = me or tostring(my_uid)
  local subject = path
  local uid, _, owner = fs.owner(subject)
  while not uid and subject:find("/[^/]*[^/]") do
    subject = subject:match("^(.*)/[^/]*$")
    if subject == "" then subject = "/" end
    uid, _, owner = fs.owner(subject)
  end
  local described = "owned by ?"
  if uid then
    local mode = fs.mode(subject)
    described = string.format("owned by %s%s", owner or tostring(uid), mode and string.format(", mode %04o", mode) or "")
  end
  if subject ~= path then described = "its directory " .. subject .. " is " .. described end
  local fix = opts.fix
  if fix then
    fix = fix:gsub("USER", me)
  elseif uid and uid ~= 0 and uid ~= my_uid and my_uid ~= 0 then
    -- another user's file (the operating user's, to a monitoring user): the fix is to be that
    -- user, not to take the file away from it
    fix = string.format("run bkr as %s (sudo -u %s bkr ...)", owner or tostring(uid), owner or tostring(uid))
  elseif uid == my_uid then
    fix = opts.fix_tree and ("chmod -R u+rwX " .. opts.fix_tree) or ("chmod u+rw " .. path)
  else
    fix = string.format("sudo chown %s%s: %s", opts.fix_tree and "-R " or "", me, opts.fix_tree or path)
  end
  return string.format("cannot %s %s: %s, bkr runs as %s; fix: %s", opts.verb or "read", path, described, me, fix)
end

-- Stop the run (exit 1) with cli.permission_message.
function cli.permission_failure(path, opts)
  cli.fail(cli.EXIT_FAILED, "%s", cli.permission_message(path, opts))
end

-- The kind of an error object (runtime/error.h), or nil for a plain message.
function cli.kind(err)
  return type(err) == "table" and err.kind or nil
end

-- A name (database, table, file) as it may appear in one line of human-readable output:
-- control characters, a newline above all, are shown escaped (\n, \x1b), so a crafted name
-- can neither split a line nor fake a row; a backslash is doubled so the escape is
-- unambiguous. JSON output keeps names as they are (JSON escapes them itself).
function cli.printable(name)
  return (tostring(name):gsub("[%c\\]", function(c)
    if c == "\\" then return "\\\\" end
    if c == "\n" then return "\\n" end
    if c == "\t" then return "\\t" end
    if c == "\r" then return "\\r" end
    return string.format("\\x%02x", c:byte())
  end))
end

-- A count with its noun, singular for one: cli.plural(1, "query", "queries") -> "1 query".
function cli.plural(n, singular, plural)
  return string.format("%d %s", n, n == 1 and singular or plural)
end

-- Edits (insert, delete, replace, swap two neighbours) that turn a into b.
local function distance(a, b)
  local previous, current, before = {}, {}, nil
  for j = 0, #b do previous[j] = j end
  for i = 1, #a do
    current = { [0] = i }
    for j = 1, #b do
      local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
      current[j] = math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
      if before and i > 1 and j > 1 and a:sub(i, i) == b:sub(j - 1, j - 1) and a:sub(i - 1, i - 1) == b:sub(j, j) then
        current[j] = math.min(current[j], before[j - 2] + 1)
      end
    end
    before, previous = previous, current
  end
  return previous[#b]
end

-- The candidate closest to a mistyped word, when one is close enough to be what was meant
-- (at most 2 edits, and fewer than half the word): "retension" -> "retention". Ties go to the
-- first in sorted order, so the suggestion is the same on every run.
function cli.closest(word, candidates)
  word = tostring(word)
  local sorted = {}
  for _, candidate in ipairs(candidates) do sorted[#sorted + 1] = tostring(candidate) end
  table.sort(sorted)
  local best, best_distance = nil, math.huge
  for _, candidate in ipairs(sorted) do
    local d = distance(word:lower(), candidate:lower())
    if d < best_distance then best, best_distance = candidate, d end
  end
  if best and best_distance <= 2 and best_distance * 2 < #word then return best end
  return nil
end

-- "; did you mean X?" for a message about a mistyped word, or "" when nothing is close.
function cli.did_you_mean(word, candidates)
  local best = cli.closest(word, candidates)
  return best and ("; did you mean " .. cli.printable(best) .. "?") or ""
end

-- Human-readable sizes for listings and progress: 1536 -> "1.5 KiB".
function cli.size(bytes)
  local units = { "B", "KiB", "MiB", "GiB", "TiB" }
  local value, unit = bytes, 1
  while value >= 1024 and unit < #units do
    value = value / 1024
    unit = unit + 1
  end
  if unit == 1 then return string.format("%d B", bytes) end
  return string.format("%.1f %s", value, units[unit])
end

return cli
