-- bkr.crypto: encrypted values, the legacy XOR scheme, base64, and the chunked AES-256-GCM
-- stream format, checked against independent tools (sha256sum, base64, Python's cryptography)
-- and against the worked example in docs/format.md.
local crypto = require "bkr.crypto"
local stream = require "bkr.stream"
local proc = require "bkr.proc"
local util = require "support.util"
local q = util.quote

local SOURCE = os.getenv("BKR_SOURCE_DIR") or "."
local INDEPENDENT = SOURCE .. "/tests/decrypt_independent.py"
local HEADER = 27
local TAG = 16

local function tohex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function fromhex(h)
  return (h:gsub("%s", ""):gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

-- A key file as bkr keygen writes it (mode 0600), for the independent tools.
local function key_file(key)
  local path = util.scratch("key") .. "/key"
  util.write(path, crypto.base64_encode(key) .. "\n")
  util.sh("chmod 600 " .. q(path))
  return path
end

local function encrypt_string(key, data, chunk_size)
  return stream.run{ stream.from_string(data), crypto.encrypt{ key = key, chunk_size = chunk_size },
    stream.to_string() }
end

local function decrypt_string(key, data)
  return stream.run{ stream.from_string(data), crypto.decrypt{ key = key }, stream.to_string() }
end

-- Bytes that compress badly and differ everywhere (random, 1 MiB at a time).
local function random_data(n)
  local parts, left = {}, n
  while left > 0 do
    local k = math.min(left, 1024 * 1024)
    parts[#parts + 1] = crypto.random_bytes(k)
    left = left - k
  end
  return table.concat(parts)
end

-- Python's cryptography, independently: AESGCM(key).decrypt/encrypt with explicit inputs.
local function python(code, ...)
  local args = {}
  for _, a in ipairs({ ... }) do args[#args + 1] = q(a) end
  local out, rc = util.sh("python3 -c " .. q(code) .. " " .. table.concat(args, " ") .. " 2>&1")
  assert(rc == 0, out)
  return (out:gsub("\n$", ""))
end

describe("crypto values", function()
  local key = crypto.random_bytes(32)

  it("names a key by the first 8 bytes of SHA-256 of its raw bytes, as sha256sum computes", function()
    local path = util.scratch("kid") .. "/raw"
    util.write(path, key)
    assert.are.equal(util.sha256sum(path):sub(1, 16), crypto.key_id(key))
    assert.matches("^%x+$", crypto.key_id(key))
    assert.are.equal(16, #crypto.key_id(key))
  end)

  it("round-trips values, empty and binary ones included, each with a fresh nonce", function()
    for _, value in ipairs({ "", "s3cret", "pässwörd ✓", "\0\1\2\255 binary", string.rep("x", 100000) }) do
      local text = crypto.encrypt_value(key, value, "database.password")
      assert.matches("^ENCRYPTED:v2:[A-Za-z0-9+/]+=*$", text)
      assert.are.equal(value, crypto.decrypt_value(key, text, "database.password"))
    end
    local a, b = crypto.encrypt_value(key, "same", "p"), crypto.encrypt_value(key, "same", "p")
    assert.are_not.equal(a, b)
  end)

  it("writes the documented layout: Python's AESGCM decrypts it with the field path as aad", function()
    local text = crypto.encrypt_value(key, "tell no one", "app.db.password")
    local blob = crypto.base64_decode(text:sub(#"ENCRYPTED:v2:" + 1))
    assert.are.equal(crypto.key_id(key), tohex(blob:sub(1, 8)))
    local plain = python([[
import sys, base64
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key, blob = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
print(AESGCM(key).decrypt(blob[8:20], blob[20:], sys.argv[3].encode()).decode())
]], tohex(key), tohex(blob), "app.db.password")
    assert.are.equal("tell no one", plain)
  end)

  it("decrypts the value of the worked example in docs/format.md", function()
    local doc = util.read(SOURCE .. "/docs/format.md")
    local example = doc:match("(ENCRYPTED:v2:[A-Za-z0-9+/=]+)")
    local doc_key = crypto.base64_decode(doc:match("key file text `([A-Za-z0-9+/=]+)`"))
    assert.are.equal("s3cret", crypto.decrypt_value(doc_key, example, "database.password"))
  end)

  it("names both key ids when the key is not the one the value was encrypted with", function()
    local other = crypto.random_bytes(32)
    local text = crypto.encrypt_value(key, "v", "f")
    local value, msg, code = crypto.decrypt_value(other, text, "f")
    assert.is_nil(value)
    assert.are.equal("key", code)
    assert.are.equal("crypto.decrypt_value: encrypted with key " .. crypto.key_id(key)
      .. ", the key given is " .. crypto.key_id(other), msg)
  end)

  it("refuses a value moved to another field (the path is authenticated)", function()
    local text = crypto.encrypt_value(key, "v", "database.password")
    local value, msg, code = crypto.decrypt_value(key, text, "smtp.password")
    assert.is_nil(value)
    assert.are.equal("auth", code)
    assert.matches("authentication failed %(tampered value or wrong field%)", msg)
  end)

  it("refuses a value with any byte of its nonce, ciphertext or tag changed", function()
    local text = crypto.encrypt_value(key, "a secret value", "f")
    local blob = crypto.base64_decode(text:sub(14))
    for i = 9, #blob do
      local bad = blob:sub(1, i - 1) .. string.char(blob:byte(i) ~ 0x01) .. blob:sub(i + 1)
      local value, _, code = crypto.decrypt_value(key, "ENCRYPTED:v2:" .. crypto.base64_encode(bad), "f")
      assert.is_nil(value, "byte " .. i)
      assert.are.equal("auth", code)
    end
    -- a changed key id is recognised as another key
    local bad = string.char(blob:byte(1) ~ 0x80) .. blob:sub(2)
    local _, _, code = crypto.decrypt_value(key, "ENCRYPTED:v2:" .. crypto.base64_encode(bad), "f")
    assert.are.equal("key", code)
  end)

  it("tells a value that is not ENCRYPTED:v2 from a damaged one", function()
    for _, text in ipairs({ "plain", "ENCRYPTED:abcd", "ENCRYPTED:v2:not base64!", "ENCRYPTED:v2:",
      "ENCRYPTED:v2:" .. crypto.base64_encode(string.rep("a", 35)) }) do
      local value, msg, code = crypto.decrypt_value(key, text, "f")
      assert.is_nil(value, text)
      assert.are.equal("format", code, text)
      assert.matches("ENCRYPTED:v2", msg)
    end
  end)

  it("raises for a key that is not 32 bytes, without quoting it", function()
    local ok, err = pcall(crypto.encrypt_value, "short key material", "v", "f")
    assert.is_false(ok)
    assert.matches("key must be 32 raw bytes", err)
    assert.not_matches("short key material", err)
    assert.has_error(function() crypto.key_id(string.rep("k", 33)) end)
    assert.has_error(function() crypto.encrypt{ key = "k" } end)
    assert.has_error(function() crypto.decrypt{} end)
  end)

  it("reads legacy XOR values exactly as an independent implementation computes them", function()
    local value = "old p@ssword, longer than the thirty-two byte key ✓"
    local legacy = python([[
import sys, base64
key, value = bytes.fromhex(sys.argv[1]), sys.argv[2].encode()
print("ENCRYPTED:" + base64.b64encode(bytes(b ^ key[i % 32] for i, b in enumerate(value))).decode())
]], tohex(key), value)
    assert.are.equal(value, crypto.xor_value(key, legacy))
    assert.are.equal(value, crypto.xor_value(key, legacy:sub(#"ENCRYPTED:" + 1)))
    assert.are.equal(legacy, crypto.xor_encrypt_value(key, value))
    local bad, msg, code = crypto.xor_value(key, "ENCRYPTED:%%%")
    assert.is_nil(bad)
    assert.are.equal("format", code)
    assert.matches("invalid base64", msg)
  end)

  it("encodes base64 as the base64 tool does and decodes only canonical, padded base64", function()
    local vectors = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==", foobar = "Zm9vYmFy" }
    for plain, encoded in pairs(vectors) do
      assert.are.equal(encoded, crypto.base64_encode(plain))
      assert.are.equal(plain, crypto.base64_decode(encoded))
    end
    local data = crypto.random_bytes(1000)
    local path = util.scratch("b64") .. "/data"
    util.write(path, data)
    assert.are.equal(util.sh("base64 -w0 " .. q(path)), crypto.base64_encode(data))
    assert.are.equal(data, crypto.base64_decode(crypto.base64_encode(data)))
    -- ("Zh==" and "Zm9=" leave padding bits set: they would be a second text for "f" and "fo")
    for _, bad in ipairs({ "Zg", "Zg=", "Z===", "Zm9v\n", " Zm9v", "Zm9v!", "Zg==Zg==", "=Zm9", "Zm=v", "Zm9-", "Zh==", "Zm9=" }) do
      local value, msg = crypto.base64_decode(bad)
      assert.is_nil(value, bad)
      assert.matches("invalid base64", msg)
    end
  end)

  it("draws random bytes of the length asked", function()
    assert.are.equal(0, #crypto.random_bytes(0))
    assert.are.equal(4096, #crypto.random_bytes(4096))
    assert.are_not.equal(crypto.random_bytes(16), crypto.random_bytes(16))
    assert.has_error(function() crypto.random_bytes(-1) end)
  end)
end)

describe("crypto.encrypt and crypto.decrypt stages", function()
  local key = crypto.random_bytes(32)
  local CS = 65536

  it("round-trip every size around the chunk boundaries, with the documented stored size", function()
    for _, n in ipairs({ 0, 1, CS - 1, CS, CS + 1, 3 * CS, 3 * CS + 17 }) do
      local data = random_data(n)
      local enc = encrypt_string(key, data)
      local chunks = math.max(1, math.ceil(n / CS))
      assert.are.equal(chunks, enc.encrypt.chunks, n)
      assert.are.equal(crypto.key_id(key), enc.encrypt.key_id)
      assert.are.equal(HEADER + n + TAG * chunks, #enc.string, n)
      assert.are.equal("BKRENC\1\0\0\1\0\0", enc.string:sub(1, 12))
      local dec = decrypt_string(key, enc.string)
      assert.is_true(dec.string == data, "size " .. n)
      assert.are.same({ key_id = crypto.key_id(key), chunks = chunks, chunk_size = CS }, dec.decrypt)
    end
  end)

  it("round-trip with small and odd chunk sizes, and draw a fresh nonce prefix per file", function()
    local data = random_data(100000)
    for _, cs in ipairs({ 1, 7, 16, 4096, 99999, 100000, 100001 }) do
      local enc = encrypt_string(key, data, cs)
      assert.are.equal(math.ceil(100000 / cs), enc.encrypt.chunks)
      assert.is_true(decrypt_string(key, enc.string).string == data, "chunk size " .. cs)
    end
    local a, b = encrypt_string(key, "x").string, encrypt_string(key, "x").string
    assert.are_not.equal(a:sub(21, 27), b:sub(21, 27))
  end)

  it("decrypt the worked example of docs/format.md", function()
    local doc = util.read(SOURCE .. "/docs/format.md")
    local file_hex = doc:match("the file %(70 bytes%):\n(.-)\n```")
    local doc_key = crypto.base64_decode(doc:match("key file text `([A-Za-z0-9+/=]+)`"))
    local dec = decrypt_string(doc_key, fromhex(file_hex))
    assert.are.equal("hello, bkr\n", dec.string)
    assert.are.same({ key_id = "630dcd2966c43366", chunks = 2, chunk_size = 8 }, dec.decrypt)
  end)

  it("write files that the independent decrypter (written from the format page) reads", function()
    local dir = util.scratch("indep")
    local kf = key_file(key)
    for _, case in ipairs({ { 0, CS }, { CS, CS }, { 3 * CS + 5, CS }, { 1000, 7 } }) do
      local data = random_data(case[1])
      util.write(dir .. "/plain", data)
      stream.run{ stream.from_string(data), crypto.encrypt{ key = key, chunk_size = case[2] },
        stream.to_file(dir .. "/enc", { overwrite = true }) }
      local out, rc = util.sh("python3 " .. q(INDEPENDENT) .. " " .. q(kf) .. " " .. q(dir .. "/enc") .. " "
        .. q(dir .. "/dec") .. " 2>&1")
      assert.are.equal(0, rc, out)
      assert.are.equal(util.sha256sum(dir .. "/plain"), util.sha256sum(dir .. "/dec"))
    end
  end)

  -- Every form of damage fails the run with a message that says what, and the file sink
  -- leaves nothing behind.
  describe("refuse damaged input", function()
    local data = random_data(3 * CS + 1000) -- chunks 0, 1, 2 full, chunk 3 final (1000 bytes)
    local enc = encrypt_string(key, data).string
    local FULL = CS + TAG
    local function chunk(i) return enc:sub(HEADER + i * FULL + 1, HEADER + (i + 1) * FULL) end
    local header = enc:sub(1, HEADER)
    local function flip(s, pos) return s:sub(1, pos - 1) .. string.char(s:byte(pos) ~ 0x10) .. s:sub(pos + 1) end

    local cases = {
      { "a flipped magic byte", flip(enc, 2), "not a bkr encrypted file" },
      { "another version", flip(enc, 7), "not a bkr encrypted file: format version" },
      { "a changed chunk size", flip(enc, 11), "chunk 0 failed authentication" },
      { "a flipped key id byte", flip(enc, 13), "encrypted with key " },
      { "a flipped nonce prefix byte", flip(enc, 21), "chunk 0 failed authentication" },
      { "a flipped byte in chunk 0's ciphertext", flip(enc, HEADER + 100), "chunk 0 failed authentication" },
      { "a flipped byte in chunk 1's tag", flip(enc, HEADER + 2 * FULL - 3), "chunk 1 failed authentication" },
      { "a flipped byte in the final chunk", flip(enc, #enc - 500), "chunk 3 failed authentication" },
      { "a flipped last byte", flip(enc, #enc), "chunk 3 failed authentication" },
      { "truncation at a chunk boundary", enc:sub(1, HEADER + 3 * FULL), "truncated: no final chunk" },
      { "truncation after the header", header, "truncated: no final chunk" },
      { "truncation inside a chunk", enc:sub(1, HEADER + 2 * FULL + 100), "chunk 2 failed authentication" },
      { "truncation inside the header", enc:sub(1, 20), "not a bkr encrypted file %(truncated header%)" },
      { "an empty file", "", "not a bkr encrypted file %(empty%)" },
      { "chunks 0 and 1 swapped", header .. chunk(1) .. chunk(0) .. enc:sub(HEADER + 2 * FULL + 1),
        "chunk 0 failed authentication" },
      { "chunk 0 dropped", header .. enc:sub(HEADER + FULL + 1), "chunk 0 failed authentication" },
      { "chunk 1 repeated", header .. chunk(0) .. chunk(1) .. chunk(1) .. enc:sub(HEADER + 2 * FULL + 1),
        "chunk 2 failed authentication" },
      { "garbage appended", enc .. "garbage", "chunk 3 failed authentication" },
      { "a whole chunk appended", enc .. chunk(0), "chunk 3 failed authentication" },
      { "a plain gzip file", util.sh("echo hello | gzip"), "not a bkr encrypted file" },
    }
    for _, case in ipairs(cases) do
      it("fails on " .. case[1] .. " and writes no output file", function()
        local dir = util.scratch("dmg")
        local ok, err = pcall(stream.run, { stream.from_string(case[2]), crypto.decrypt{ key = key },
          stream.to_file(dir .. "/out") })
        assert.is_false(ok)
        assert.matches("stream%.run: decrypt: " .. case[3], err)
        assert.are.same({}, util.listdir(dir))
      end)
    end

    it("fails on data after a final chunk of full length, naming it", function()
      local exact = encrypt_string(key, random_data(2 * CS)).string
      local ok, err = pcall(decrypt_string, key, exact .. exact:sub(HEADER + 1, HEADER + FULL))
      assert.is_false(ok)
      assert.matches("decrypt: data after the final chunk", err)
    end)

    it("fails with the wrong key, naming both key ids and never the key", function()
      local other = crypto.random_bytes(32)
      local ok, err = pcall(decrypt_string, other, enc)
      assert.is_false(ok)
      assert.matches("decrypt: encrypted with key " .. crypto.key_id(key) .. ", the key given is "
        .. crypto.key_id(other), err, 1, true)
      assert.not_matches(tohex(other), err, 1, true)
      assert.is_nil(tostring(err):find(other, 1, true))
      assert.are.equal("key", err.kind)
      assert.are.equal("decrypt", err.stage)
    end)

    -- What leaves the filter reaches a process that keeps everything it is given, even as
    -- the failed run terminates it: only whole chunks that authenticated, never a byte more.
    local function emitted(input)
      local dir = util.scratch("emit")
      local out = dir .. "/received"
      local child = assert(proc.spawn{ argv = { "sh", "-c", "trap '' TERM; : > \"$0\"; exec cat >> \"$0\"", out },
        stdin = "pipe" })
      for _ = 1, 200 do -- until it ignores SIGTERM
        if io.open(out) then break end
        util.sh("sleep 0.01")
      end
      local ok = pcall(stream.run, { stream.from_string(input), crypto.decrypt{ key = key }, child:sink() })
      child:close()
      return ok, util.read(out)
    end

    it("passes on only authenticated chunks: nothing of a damaged chunk or what follows it", function()
      local ok, got = emitted(flip(enc, HEADER + 10))
      assert.is_false(ok)
      assert.are.equal(0, #got)
      -- (how many of the good chunks before the damage get through depends on buffering)
      ok, got = emitted(flip(enc, HEADER + 2 * FULL + 10))
      assert.is_false(ok)
      assert.is_true(#got <= 2 * CS and #got % CS == 0, "received " .. #got .. " bytes")
      assert.is_true(got == data:sub(1, #got))
      ok, got = emitted(enc:sub(1, #enc - 1))
      assert.is_false(ok)
      assert.is_true(#got <= 3 * CS and #got % CS == 0, "received " .. #got .. " bytes")
      assert.is_true(got == data:sub(1, #got))
      ok, got = emitted(enc)
      assert.is_true(ok)
      assert.is_true(got == data)
    end)
  end)

  it("releases stages that never ran, without leaking descriptors", function()
    collectgarbage()
    local before = util.fd_count()
    for _ = 1, 50 do
      local e = crypto.encrypt{ key = key }
      local d <close> = crypto.decrypt{ key = key }
      e:close()
      e:close()
    end
    collectgarbage()
    assert.are.equal(before, util.fd_count())
  end)
end)
