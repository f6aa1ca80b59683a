-- .env files (.env, *.env, .env.*): line by line, the value of every assignment to a
-- sensitive key is replaced by one token; comments, blank lines, `export`, other keys and
-- line endings stay as they were. A line that names a sensitive key in a form this module
-- cannot read is refused, never stored as it is. A format module of lib/config_files.lua
-- (which describes the interface); docs/config-backup.md has the rules.

local format = { kind = "env" }

-- Is a file of this name (its last component, in lower case) a .env file?
function format.claims(name)
  return name == ".env" or name:match("%.env$") ~= nil or name:match("^%.env%.") ~= nil
end

local function as_set(list)
  local set = {}
  for _, item in ipairs(list or {}) do set[item] = true end
  return set
end

-- The assignments dotenv libraries read (python-dotenv, ruby dotenv, docker compose):
-- KEY=VALUE, KEY = VALUE (spaces or tabs), KEY: VALUE and KEY:VALUE, each also after `export `.
-- A key has no '=' or ':' in it, so the first separator after it decides the form, in the
-- original and in the stored text alike (a token's base64 may end with '=').
local KEY = "[%w_][%w_%.%-]*"
local FORMS = {
  "^[ \t]*export[ \t]+(" .. KEY .. ")[ \t]*[=:][ \t]*()",
  "^[ \t]*(" .. KEY .. ")[ \t]*[=:][ \t]*()",
}
-- Lines with nothing to seal: blank, a comment, a bare KEY or `export KEY`.
local NOTHING = {
  "^[ \t]*$", "^[ \t]*#", "^[ \t]*" .. KEY .. "[ \t]*$", "^[ \t]*export[ \t]+" .. KEY .. "[ \t]*$",
}

-- Split into lines, each with its terminator ("\n", "\r\n" or "" at the end).
local function lines_of(text)
  local lines = {}
  local pos = 1
  while pos <= #text do
    local nl = text:find("\n", pos, true)
    local line = nl and text:sub(pos, nl) or text:sub(pos)
    lines[#lines + 1] = line
    pos = pos + #line
  end
  return lines
end

-- KEY and the byte offsets (1-based, within the line) of the value, or nil.
local function assignment(line)
  local body = line:gsub("\r?\n$", "")
  for _, form in ipairs(FORMS) do
    local key, value_at = body:match(form)
    if key then return key, value_at, #body end
  end
  return nil
end

local function holds_nothing(line)
  local body = line:gsub("\r?\n$", "")
  for _, pattern in ipairs(NOTHING) do
    if body:find(pattern) then return true end
  end
  return false
end

-- Where a quoted value that opens on line i closes: the index of that line, or i.
local function closing_line(lines, i, value_at)
  local first = lines[i]
  local quote = first:sub(value_at, value_at)
  if quote ~= '"' and quote ~= "'" then return i end
  local function closes(s, from)
    local pos = from
    while true do
      local q = s:find(quote, pos, true)
      if not q then return false end
      if quote == "'" then return true end
      local backslashes = 0
      local b = q - 1
      while b >= from and s:sub(b, b) == "\\" do
        backslashes = backslashes + 1
        b = b - 1
      end
      if backslashes % 2 == 0 then return true end
      pos = q + 1
    end
  end
  if closes((first:gsub("\r?\n$", "")), value_at + 1) then return i end
  for j = i + 1, #lines do
    if closes(lines[j], 1) then return j end
  end
  return i -- never closed: the value is this line's rest, as most parsers read it
end

-- Seal the values of sensitive keys in a .env file: the text after the separator (and its
-- spaces) up to the end of the line, or to the line of the closing quote of a multi-line quoted
-- value. Returns the stored text and the list of sealed keys (a key may appear twice).
-- A line that is none of the forms above but names a sensitive key (`db/password=...`,
-- `DB PASSWORD x`) is refused rather than stored as it is: nil and a message naming its line
-- (never its text).
function format.protect(text, cipher, sensitive)
  local lines = lines_of(text)
  local out, fields = {}, {}
  local i = 1
  while i <= #lines do
    local line = lines[i]
    local key, value_at, body_end = assignment(line)
    local last = i
    if key and value_at <= body_end then last = closing_line(lines, i, value_at) end
    if key and sensitive(key) and value_at <= body_end
      and not cipher.is_token(line:sub(value_at, body_end)) then
      local tail = lines[last]:match("\r?\n$") or ""
      local value = line:sub(value_at)
      for j = i + 1, last do value = value .. lines[j] end
      value = value:sub(1, #value - #tail)
      out[#out + 1] = line:sub(1, value_at - 1) .. cipher.seal(value, key) .. tail
      fields[#fields + 1] = key
    elseif not key and not holds_nothing(line) and sensitive(line) then
      return nil, string.format("line %d names a sensitive key but is not KEY=VALUE, KEY: VALUE or "
        .. "export KEY=VALUE", i)
    else
      -- (a quoted value over several lines is copied whole: its lines are not assignments)
      for j = i, last do out[#out + 1] = lines[j] end
    end
    i = last + 1
  end
  return table.concat(out), fields
end

-- Put the sealed values of a stored .env file back. fields: the keys the manifest lists.
-- Returns the original text, or nil and a message naming the key (and crypto's code, when a
-- value does not open).
function format.reveal(stored, fields, cipher)
  local wanted, found = as_set(fields), {}
  local out = {}
  for _, line in ipairs(lines_of(stored)) do
    local key, value_at, body_end = assignment(line)
    local value = key and line:sub(value_at, body_end)
    if key and wanted[key] and cipher.is_token(value) then
      local plain, err, code = cipher.open(value, key)
      if not plain then return nil, key .. ": " .. err, code end
      out[#out + 1] = line:sub(1, value_at - 1) .. plain .. line:sub(body_end + 1)
      found[key] = true
    else
      out[#out + 1] = line
    end
  end
  for _, field in ipairs(fields or {}) do
    if not found[field] then return nil, field .. ": sealed field missing from the stored file" end
  end
  return table.concat(out)
end

return format
