-- YAML configuration files (*.yaml, *.yml): every scalar value with a sensitive key anywhere on
-- its path is replaced in place by one token; every other byte stays as it was. A format
-- module of lib/config_files.lua (which describes the interface); docs/config-backup.md has
-- the rules.
--
-- Read with libyaml's event parser (bkr.yaml's yaml.scalars gives each scalar's path, style
-- and byte span), never by hand. A token seals the value's exact source text (quotes, block
-- indicators and all), so that putting it back gives the original file byte for byte.
local yaml = require "bkr.yaml"

local format = { kind = "yaml" }

-- Is a file of this name (its last component, in lower case) a YAML file?
function format.claims(name)
  return name:match("%.ya?ml$") ~= nil
end

-- The serialized form of a path prefix, to tell mapping keys from sequence indices
-- (yaml.scalars gives both as Lua values; a key `1:` is the integer 1).
local function prefix_id(path, depth)
  local parts = {}
  for i = 1, depth do
    local element = path[i]
    parts[i] = (math.type(element) and ("i" .. tostring(element)) or ("s" .. tostring(element))) .. "\0"
  end
  return table.concat(parts)
end

local function key_text(key)
  key = tostring(key)
  if key:match("^[%w_%-]+$") then return key end
  return '["' .. key:gsub('[%c"\\]', function(c)
    return c == '"' and '\\"' or c == "\\" and "\\\\" or string.format("\\u%04x", c:byte())
  end) .. '"]'
end

-- A field's name ("database.password", "tokens[2]" with 0-based indices, as jq and yq
-- write them) and whether any mapping key on its path is sensitive.
local function yaml_field(path, keys, sensitive)
  local out, secret = {}, false
  for depth, element in ipairs(path) do
    -- (a key written as an alias, `*k: v`, is not listed among the keys: not an index either)
    if keys[prefix_id(path, depth)] or not math.type(element) then
      local text = key_text(element)
      out[#out + 1] = (#out > 0 and not text:find("^%[")) and ("." .. text) or text
      if sensitive(element) then secret = true end
    else
      out[#out + 1] = "[" .. tostring(element - 1) .. "]"
    end
  end
  return table.concat(out), secret
end

-- The scalars of a document with, for each value, its field name and sensitivity.
local function yaml_values(text, sensitive)
  local scalars, err = yaml.scalars(text)
  if not scalars then return nil, err end
  local keys = {}
  for _, s in ipairs(scalars) do
    if s.is_key then keys[prefix_id(s.path, #s.path)] = true end
  end
  local values = {}
  for _, s in ipairs(scalars) do
    if not s.is_key then
      s.field, s.secret = yaml_field(s.path, keys, sensitive or function() return false end)
      values[#values + 1] = s
    end
  end
  return values
end

-- Every value of the decoded document that sits under a sensitive key must be a token (or
-- null). One that is not got there through an alias (`db_password: *pw`) of an anchor defined
-- outside any sensitive key. Appends every such leaf, { place =, value = }, to `found`: all of
-- them at once, so that sealing takes one more pass, not one per anchor (a file with thousands
-- of aliased passwords took minutes under the repository lock). The walk visits an aliased
-- table once per alias: bkr.yaml bounds that (yaml.max_alias_nodes).
local function unsealed_leaves(value, sensitive, is_token, under_secret, where, found)
  if type(value) == "table" then
    for k, v in pairs(value) do
      local child = where == "" and tostring(k) or (where .. "." .. tostring(k))
      local secret = under_secret or (type(k) == "string" and sensitive(k))
      unsealed_leaves(v, sensitive, is_token, secret, child, found)
    end
  elseif under_secret and value ~= yaml.null and not is_token(value) then
    found[#found + 1] = { place = where, value = value }
  end
  return found
end

-- Is the scalar anchored (`&name value`, `&name !!str value`, `!!str &name value`)?
local function anchored(text, s)
  local before = text:sub(math.max(1, s.start - 256), s.start)
  return before:find("&[^%s%[%]{},]+[ \t]+$") or before:find("&[^%s%[%]{},]+[ \t]+![^%s]*[ \t]+$")
end

-- Replace the chosen scalars by tokens. Returns the stored text and the sealed field names.
local function seal_scalars(text, values, chosen, cipher)
  local pieces, fields, at = {}, {}, 0
  for _, s in ipairs(values) do
    if chosen[s] then
      local source = text:sub(s.start + 1, s.stop)
      -- a block scalar's span runs through its trailing line breaks: they stay outside the
      -- token, so the next line keeps its own line
      local body = source:gsub("[\r\n]+$", "")
      pieces[#pieces + 1] = text:sub(at + 1, s.start)
      pieces[#pieces + 1] = cipher.seal(body, s.field)
      at = s.start + #body
      fields[#fields + 1] = s.field
    end
  end
  pieces[#pieces + 1] = text:sub(at + 1)
  return table.concat(pieces), fields
end

-- Seal the secrets of a YAML document: every scalar value with a sensitive key anywhere on
-- its path, and an anchored scalar that an alias under a sensitive key refers to (sealed once,
-- where it is defined, under its own path). Values that already are tokens stay as they are.
-- Returns the stored text and the list of sealed field names, or nil and a message.
function format.protect(text, cipher, sensitive)
  local is_token = cipher.is_token
  local values, err = yaml_values(text, sensitive)
  if not values then return nil, err end
  local chosen = {}
  for _, s in ipairs(values) do
    if s.secret and s.start < s.stop and not is_token(s.value) then chosen[s] = true end
  end
  while true do
    local stored, fields = seal_scalars(text, values, chosen, cipher)
    -- the stored document must parse, with each token where it was put ...
    local check, cerr = yaml_values(stored, sensitive)
    if not check then return nil, "the document with its secrets sealed does not parse: " .. cerr end
    local sealed = {}
    for _, s in ipairs(check) do
      if is_token(s.value) and s.style == "plain" then sealed[s.field] = true end
    end
    for _, field in ipairs(fields) do
      if not sealed[field] then
        return nil, field .. ": the sealed value does not read back as one plain scalar"
      end
    end
    -- ... and nothing under a sensitive key may be left in the clear through an alias
    local leaves = unsealed_leaves(yaml.decode(stored), sensitive, is_token, false, "", {})
    if #leaves == 0 then return stored, fields end
    local wanted = {}
    for _, leaf in ipairs(leaves) do wanted[tostring(leaf.value)] = true end
    local found = false
    for _, s in ipairs(values) do
      if not chosen[s] and s.start < s.stop and wanted[s.value] and anchored(text, s) then
        chosen[s], found = true, true
      end
    end
    if not found then
      return nil, leaves[1].place .. ": the value under a sensitive key comes from an alias of a "
        .. "collection or value that cannot be found to seal in place"
    end
  end
end

local function as_set(list)
  local set = {}
  for _, item in ipairs(list or {}) do set[item] = true end
  return set
end

-- Put the sealed fields of a stored YAML document back. fields: the names the manifest lists.
-- Returns the original text, or nil and a message naming the field (and crypto's code, when
-- a value does not open).
function format.reveal(stored, fields, cipher)
  local values, err = yaml_values(stored)
  if not values then return nil, err end
  local wanted, found = as_set(fields), {}
  local pieces, at = {}, 0
  for _, s in ipairs(values) do
    if wanted[s.field] then
      if s.style ~= "plain" or not cipher.is_token(s.value) then
        return nil, s.field .. ": expected a sealed value, found none"
      end
      local plain, perr, code = cipher.open(s.value, s.field)
      if not plain then return nil, s.field .. ": " .. perr, code end
      pieces[#pieces + 1] = stored:sub(at + 1, s.start)
      pieces[#pieces + 1] = plain
      at = s.stop
      found[s.field] = true
    end
  end
  for _, field in ipairs(fields or {}) do
    if not found[field] then return nil, field .. ": sealed field missing from the stored file" end
  end
  pieces[#pieces + 1] = stored:sub(at + 1)
  return table.concat(pieces)
end

return format
