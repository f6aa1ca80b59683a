-- The e-mail of a notification: RFC 5322 text with CRLF line ends. No value can add or break
-- a header: every header value is one line (control characters, CR and LF above all, become
-- spaces), bounded, and RFC 2047-encoded when it is not ASCII; the body is quoted-printable,
-- so its lines stay short and 7-bit whatever the databases and errors are called.
--
--   notify_email.message{ from, to = {...}, subject, body, host, time, event } -> text
--   notify_email.one_line(text, max)        a header-safe line of at most max bytes
--   notify_email.date(epoch)                an RFC 5322 date, in UTC
--   notify_email.quoted_printable(text)     a body, encoded (RFC 2045)
local crypto = require "bkr.crypto"

local notify_email = {}

-- Bytes 0x80-0xBF continue a UTF-8 character: never cut before one.
local function continues(byte)
  return byte ~= nil and byte >= 0x80 and byte < 0xC0
end

-- The first `max` bytes or fewer of text, ending on a UTF-8 character boundary.
local function cut_utf8(text, max)
  if #text <= max then return text end
  local cut = max
  while cut > 0 and continues(text:byte(cut + 1)) do cut = cut - 1 end
  return text:sub(1, cut)
end
notify_email.cut_utf8 = cut_utf8

function notify_email.one_line(text, max)
  local line = tostring(text):gsub("%c", " "):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if #line > max then line = cut_utf8(line, max - 3) .. "..." end
  return line
end

local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }

-- English names whatever the locale (strftime's %a and %b are not).
function notify_email.date(epoch)
  local t = os.date("!*t", epoch)
  return string.format("%s, %02d %s %04d %02d:%02d:%02d +0000", DAYS[t.wday], t.day, MONTHS[t.month], t.year,
    t.hour, t.min, t.sec)
end

-- A header value as RFC 2047 encoded-words when it has non-ASCII bytes: each word at most 75
-- characters (45 bytes of text), folded onto continuation lines.
local function encode_header(text)
  if not text:find("[\128-\255]") then return text end
  local words, i = {}, 1
  while i <= #text do
    local j = math.min(i + 44, #text)
    while j > i and continues(text:byte(j + 1)) do j = j - 1 end
    words[#words + 1] = "=?UTF-8?B?" .. crypto.base64_encode(text:sub(i, j)) .. "?="
    i = j + 1
  end
  return table.concat(words, "\r\n ")
end

-- One encoded line, cut into pieces of at most 76 characters with soft line breaks ("="),
-- never inside an "=XX".
local function soft_breaks(encoded, out)
  while #encoded > 76 do
    local cut = 75
    if encoded:sub(75, 75) == "=" then
      cut = 74
    elseif encoded:sub(74, 74) == "=" then
      cut = 73
    end
    out[#out + 1] = encoded:sub(1, cut) .. "="
    encoded = encoded:sub(cut + 1)
  end
  out[#out + 1] = encoded
end

function notify_email.quoted_printable(text)
  local out = {}
  for line in (text:gsub("\r\n", "\n") .. "\n"):gmatch("([^\n]*)\n") do
    local encoded = line:gsub("[^\33-\60\62-\126 \t]", function(c) return string.format("=%02X", c:byte()) end)
    encoded = encoded:gsub("[ \t]$", function(c) return string.format("=%02X", c:byte()) end)
    soft_breaks(encoded, out)
  end
  return table.concat(out, "\r\n")
end

-- An address checked once more (the configuration was validated): one printable ASCII word.
local function address(value)
  assert(type(value) == "string" and value:match("^[!-~]+$") and not value:find("[<>,\"]"),
    "notify_email: not a plain address")
  return value
end

local function random_hex(bytes)
  local out = {}
  for i = 1, bytes do out[i] = string.format("%02x", math.random(0, 255)) end
  return table.concat(out)
end

function notify_email.message(m)
  local to = {}
  for i, item in ipairs(m.to) do to[i] = address(item) end
  local headers = {
    "From: bkr <" .. address(m.from) .. ">",
    "To: " .. table.concat(to, ", "),
    "Subject: " .. encode_header(notify_email.one_line(m.subject, 200)),
    "Date: " .. notify_email.date(m.time),
    string.format("Message-ID: <%d.%s@%s>", m.time, random_hex(8), address(m.host)),
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: quoted-printable",
    "Auto-Submitted: auto-generated",
    "X-Bkr-Event: " .. notify_email.one_line(m.event, 32),
  }
  return table.concat(headers, "\r\n") .. "\r\n\r\n" .. notify_email.quoted_printable(m.body) .. "\r\n"
end

return notify_email
