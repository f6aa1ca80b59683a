-- bkr.stream, bkr.gzip, bkr.hash: the pipeline core and its POSIX stages, checked against
-- gzip, gunzip and sha256sum.
local stream = require "bkr.stream"
local gzip = require "bkr.gzip"
local hash = require "bkr.hash"
local util = require "support.util"

local function sample(n)
  local lines = {}
  for i = 1, n do
    lines[i] = string.format("%d\tinvoice-%d\t%.2f\tünïcødé\t%s\n", i, i * 7, i / 3, string.rep("x", i % 50))
  end
  return table.concat(lines)
end

describe("stream.run", function()
  it("writes a gzip file that gzip -t accepts and whose SHA-256 equals sha256sum's", function()
    local dir = util.scratch("stream")
    local data = sample(50000)
    local path = dir .. "/out.gz"
    local r = stream.run{
      stream.from_string(data),
      hash.sha256{ name = "raw" },
      gzip.compress{ level = 6 },
      hash.sha256{ name = "stored" },
      stream.to_file(path),
    }
    assert.is_true(util.gzip_ok(path))
    assert.are.equal(util.sha256sum(path), r.stored)
    assert.are.equal(util.sh("gunzip -c " .. path .. " | sha256sum"):match("^%x+"), r.raw)
    assert.are.equal(#data, r.bytes_in)
    assert.are.equal(util.sh("stat -c %s " .. path):match("%d+"), tostring(r.bytes_out))
    assert.are.equal(path, r.file)
  end)

  it("reports bytes in and out for every stage, in order", function()
    local r = stream.run{ stream.from_string(string.rep("a", 100000)), gzip.compress(), stream.count(), stream.to_null() }
    assert.are.same({ "string", "gzip", "count", "null" },
      { r.stages[1].name, r.stages[2].name, r.stages[3].name, r.stages[4].name })
    assert.are.equal(100000, r.stages[2].bytes_in)
    assert.is_true(r.stages[2].bytes_out < 1000)
    assert.are.equal(r.stages[2].bytes_out, r.count)
    assert.are.equal(r.count, r.stages[4].bytes_in)
    assert.is_true(r.elapsed >= 0)
  end)

  it("round-trips bytes of every value through gzip", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local data = string.rep(table.concat(bytes), 3000)
    local r = stream.run{ stream.from_string(data), gzip.compress{ level = 1 }, gzip.decompress(), stream.to_string() }
    assert.are.equal(data, r.string)
  end)

  it("decompresses a file gzip made, and concatenated members", function()
    local dir = util.scratch("stream")
    util.write(dir .. "/a", "first part\n")
    util.write(dir .. "/b", sample(1000))
    util.sh("gzip -c " .. dir .. "/a > " .. dir .. "/ab.gz; gzip -9 -c " .. dir .. "/b >> " .. dir .. "/ab.gz")
    local r = stream.run{ stream.from_file(dir .. "/ab.gz"), gzip.decompress(), hash.sha256(), stream.to_null() }
    assert.are.equal(util.sh("cat " .. dir .. "/a " .. dir .. "/b | sha256sum"):match("^%x+"), r.sha256)
  end)

  it("fails on corrupt gzip and leaves no file under the final name or a temporary one", function()
    local dir = util.scratch("stream")
    local good = gzip.compress_string(sample(20000))
    local corrupt = good:sub(1, 2000) .. string.char((good:byte(2001) + 1) % 256) .. good:sub(2002)
    local ok, err = pcall(stream.run, { stream.from_string(corrupt), gzip.decompress(), stream.to_file(dir .. "/out") })
    assert.is_false(ok)
    assert.matches("gunzip: ", err)
    assert.are.same({}, util.listdir(dir))
  end)

  it("fails on truncated gzip", function()
    local good = gzip.compress_string(sample(20000))
    local ok, err = pcall(stream.run, { stream.from_string(good:sub(1, #good - 10)), gzip.decompress(), stream.to_null() })
    assert.is_false(ok)
    assert.matches("truncated", err)
  end)

  it("fails on data after the last gzip member", function()
    local ok, err = pcall(stream.run, { stream.from_string(gzip.compress_string("x") .. "junk!"), gzip.decompress(), stream.to_null() })
    assert.is_false(ok)
    assert.matches("trailing data", err)
  end)

  it("fails when the disk is full and leaves nothing behind", function()
    local dir = util.scratch("full")
    local _, rc = util.sh("mount -t tmpfs -o size=256k tmpfs " .. dir .. " 2>&1")
    assert.are.equal(0, rc, "these tests run as root and mount a small tmpfs")
    finally(function() util.sh("umount " .. dir) end)
    local random = util.sh("head -c 1000000 /dev/urandom | base64 -w0")
    local ok, err = pcall(stream.run, { stream.from_string(random), gzip.compress{ level = 0 }, stream.to_file(dir .. "/big.gz") })
    assert.is_false(ok)
    assert.matches("No space left on device", err)
    assert.are.same({}, util.listdir(dir))
  end)

  it("never replaces an existing file unless asked to", function()
    local dir = util.scratch("stream")
    util.write(dir .. "/f", "precious")
    local ok, err = pcall(stream.run, { stream.from_string("new"), stream.to_file(dir .. "/f") })
    assert.is_false(ok)
    assert.matches("File exists", err)
    assert.are.equal("precious", util.read(dir .. "/f"))
    assert.are.same({ "f" }, util.listdir(dir))
    stream.run{ stream.from_string("new"), stream.to_file(dir .. "/f", { overwrite = true }) }
    assert.are.equal("new", util.read(dir .. "/f"))
  end)

  it("creates files with mode 0600 unless told otherwise", function()
    local dir = util.scratch("stream")
    stream.run{ stream.from_string("secret"), stream.to_file(dir .. "/a") }
    stream.run{ stream.from_string("public"), stream.to_file(dir .. "/b", { mode = tonumber("644", 8) }) }
    assert.are.equal("600", util.sh("stat -c %a " .. dir .. "/a"):match("%d+"))
    assert.are.equal("644", util.sh("stat -c %a " .. dir .. "/b"):match("%d+"))
  end)

  it("reports an unwritable directory when the sink is created", function()
    local dir = util.scratch("stream")
    util.write(dir .. "/file", "")
    local sink, err = stream.to_file(dir .. "/file/sub/out.gz")
    assert.is_nil(sink)
    assert.matches("stream.to_file: .*file/sub/out.gz: Not a directory", err)
    assert.is_nil((stream.to_file("/nonexistent-dir/x")))
  end)

  it("raises an error object: the message as before, the failed stage, and a kind to branch on", function()
    local cases = {
      { "corrupt", string.rep("not gzip at all ", 10) },
      { "truncated", (function()
        local z = gzip.compress_string(string.rep("abc", 10000))
        return z:sub(1, #z // 2)
      end)() },
    }
    for _, case in ipairs(cases) do
      local ok, err = pcall(stream.run, { stream.from_string(case[2]), gzip.decompress{ name = "gunzip" },
        stream.to_null() })
      assert.is_false(ok)
      assert.are.equal(case[1], err.kind)
      assert.are.equal("gunzip", err.stage)
      assert.matches("^stream%.run: gunzip: ", tostring(err))
      assert.are.equal(tostring(err), err.message)
      assert.are.equal("gunzip: " .. err.reason, err.detail)
    end
    local dir = util.scratch("stream")
    util.write(dir .. "/f", "old")
    local ok, err = pcall(stream.run, { stream.from_string("new"), stream.to_file(dir .. "/f") })
    assert.is_false(ok)
    assert.are.equal("exists", err.kind)
    assert.are.equal("file", err.stage)
  end)

  it("reports a missing source file, with its kind", function()
    local src, err, kind = stream.from_file("/nonexistent/file.gz")
    assert.is_nil(src)
    assert.are.equal("stream.from_file: /nonexistent/file.gz: No such file or directory", err)
    assert.are.equal("missing", kind)
  end)

  it("reads only regular files: a symlink (unless follow), FIFO, device or directory is refused at once", function()
    local dir = util.scratch("stream")
    util.write(dir .. "/real", "data")
    util.sh("ln -s real " .. dir .. "/link && mkfifo " .. dir .. "/fifo && mkdir " .. dir .. "/sub")
    for _, path in ipairs({ dir .. "/link", dir .. "/fifo", "/dev/null", dir .. "/sub" }) do
      local src, err, kind = stream.from_file(path)
      assert.is_nil(src, path)
      assert.matches("not a regular file", err)
      assert.are.equal("not_regular", kind)
      local digest, herr, hkind = hash.sha256_file(path)
      assert.is_nil(digest, path)
      assert.matches("not a regular file", herr)
      assert.are.equal("not_regular", hkind)
    end
    local r = stream.run{ assert(stream.from_file(dir .. "/link", { follow = true })), stream.to_string() }
    assert.are.equal("data", r.string)
    assert.is_nil((stream.from_file(dir .. "/fifo", { follow = true })))
  end)

  it("removes the temporary file of a sink that never ran once it is closed or collected", function()
    local dir = util.scratch("stream")
    local sink = stream.to_file(dir .. "/never")
    assert.are.equal(1, #util.listdir(dir))
    sink:close()
    sink:close()
    assert.are.same({}, util.listdir(dir))
    do local _ = stream.to_file(dir .. "/never2") end
    collectgarbage(); collectgarbage()
    assert.are.same({}, util.listdir(dir))
  end)

  it("refuses misuse: wrong order, reuse, closed stages", function()
    assert.has_error(function() stream.run{ stream.to_null(), stream.from_string("x") } end)
    assert.has_error(function() stream.run{ stream.from_string("x") } end)
    local src = stream.from_string("x")
    stream.run{ src, stream.to_null() }
    assert.has_error(function() stream.run{ src, stream.to_null() } end, "stream.run: stage 1 (string) is already used; a stage runs once")
    local closed = gzip.compress()
    closed:close()
    assert.has_error(function() stream.run{ stream.from_string("x"), closed, stream.to_null() } end)
    assert.has_error(function() gzip.compress{ level = 10 } end)
  end)

  it("keeps the last bytes of a stream, across chunk boundaries", function()
    local data = sample(40000) .. "-- PostgreSQL database dump complete\n"
    local r = stream.run{ stream.from_string(data), stream.tail{ bytes = 100 }, stream.to_null() }
    assert.are.equal(data:sub(-100), r.tail)
    r = stream.run{ stream.from_string("short"), stream.tail{ bytes = 100 }, stream.to_null() }
    assert.are.equal("short", r.tail)
    for _, size in ipairs({ 131071, 131072, 131073, 262100 }) do
      local s = string.rep("ab", size // 2 + 1):sub(1, size)
      r = stream.run{ stream.from_string(s), gzip.compress(), gzip.decompress(), stream.tail{ bytes = 7 }, stream.to_null() }
      assert.are.equal(s:sub(-7), r.tail)
    end
  end)

  it("count{expect = N} fails a stream of another size before the sink commits (kinds corrupt, truncated)", function()
    local dir = util.scratch("count")
    local data = sample(5000) -- several chunks
    local r = stream.run{ stream.from_string(data), stream.count{ expect = #data }, stream.to_null() }
    assert.are.equal(#data, r.count)
    -- fewer bytes: at the end of input, and the file sink never renames its file into place
    local ok, err = pcall(stream.run, { stream.from_string(data), stream.count{ expect = #data + 1 },
      assert(stream.to_file(dir .. "/short")) })
    assert.is_false(ok)
    assert.are.equal("truncated", err.kind)
    assert.matches(#data .. " bytes, " .. (#data + 1) .. " expected", err.message)
    assert.is_nil(io.open(dir .. "/short"))
    -- more bytes: at once, and the chunk that holds them never reaches the sink
    local proc = require "bkr.proc"
    local cat = assert(proc.spawn{ argv = { "sh", "-c", "cat > " .. util.quote(dir .. "/long") }, stdin = "pipe" })
    ok, err = pcall(stream.run, { stream.from_string(string.rep("x", 200000)), stream.count{ expect = 150000 },
      cat:sink() })
    cat:close()
    assert.is_false(ok)
    assert.are.equal("corrupt", err.kind)
    assert.matches("more than the 150000 bytes expected", err.message)
    assert.is_true(#util.read(dir .. "/long") <= 150000)
    assert.has_error(function() stream.count{ expect = -1 } end)
    assert.has_error(function() stream.count{ expect = 1.5 } end)
  end)

  it("tail{expect = s} fails at the end of input unless the last bytes hold s (kind truncated)", function()
    local dir = util.scratch("tail")
    local marker = "\n-- PostgreSQL database dump complete\n"
    local data = sample(40000) .. marker .. "--\n\n"
    local r = stream.run{ stream.from_string(data), stream.tail{ bytes = 256, expect = marker }, stream.to_null() }
    assert.are.equal(data:sub(-256), r.tail)
    -- a % or other pattern character is plain text here
    r = stream.run{ stream.from_string("a.b%"), stream.tail{ bytes = 8, expect = "%" }, stream.to_null() }
    assert.are.equal("a.b%", r.tail)
    local ok, err = pcall(stream.run, { stream.from_string(data:sub(1, 200000)),
      stream.tail{ bytes = 256, expect = marker }, assert(stream.to_file(dir .. "/cut")) })
    assert.is_false(ok)
    assert.are.equal("truncated", err.kind)
    assert.is_nil(io.open(dir .. "/cut"))
    -- the marker further back than `bytes` does not count
    ok, err = pcall(stream.run, { stream.from_string(marker .. string.rep("x", 300)),
      stream.tail{ bytes = 256, expect = marker }, stream.to_null() })
    assert.is_false(ok)
    assert.are.equal("truncated", err.kind)
    assert.has_error(function() stream.tail{ bytes = 4, expect = "longer" } end)
    assert.has_error(function() stream.tail{ expect = "" } end)
  end)

  it("writes to standard output for restores by hand, and fails when the reader goes away", function()
    local dir = util.scratch("stdout")
    util.write(dir .. "/s.lua", [[
local stream, gzip = require "bkr.stream", require "bkr.gzip"
io.write("first\n")
stream.run{ stream.from_string(gzip.compress_string(("line\n"):rep(...))), gzip.decompress(), stream.to_stdout() }
]])
    local out, rc = util.sh(util.quote(util.bkr_bin()) .. " run " .. dir .. "/s.lua 3")
    assert.are.equal(0, rc)
    assert.are.equal("first\nline\nline\nline\n", out)
    out, rc = util.sh("bash -c " .. util.quote(util.quote(util.bkr_bin()) .. " run " .. dir .. "/s.lua 2000000 2>" .. dir .. "/err | head -c 10 >/dev/null; exit ${PIPESTATUS[0]}"))
    assert.are.equal(1, rc)
    assert.matches("stdout: write to stdout: Broken pipe", util.read(dir .. "/err"))
  end)

  it("limits what a string sink collects", function()
    local ok, err = pcall(stream.run, { stream.from_string(string.rep("x", 5000)), stream.to_string{ max = 4096 } })
    assert.is_false(ok)
    assert.matches("exceeds 4096 bytes", err)
  end)

  it("leaks no descriptors over many runs, failed ones included", function()
    local dir = util.scratch("stream")
    local before = util.fd_count()
    for i = 1, 50 do
      stream.run{ stream.from_string("abc"), gzip.compress(), stream.to_file(dir .. "/f" .. i) }
      stream.run{ stream.from_file(dir .. "/f" .. i), gzip.decompress(), stream.to_null() }
      pcall(stream.run, { stream.from_file(dir .. "/f" .. i), stream.to_file(dir .. "/f" .. i) })
    end
    collectgarbage(); collectgarbage()
    assert.are.equal(before, util.fd_count())
    assert.are.equal(50, #util.listdir(dir))
  end)
end)

describe("bkr.hash", function()
  it("hashes strings and files like sha256sum", function()
    local dir = util.scratch("hash")
    local data = sample(3000)
    util.write(dir .. "/f", data)
    local digest, size = hash.sha256_file(dir .. "/f")
    assert.are.equal(util.sha256sum(dir .. "/f"), digest)
    assert.are.equal(#data, size)
    assert.are.equal(digest, hash.sha256_string(data))
    assert.are.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", hash.sha256_string(""))
  end)

  it("fails the run before the sink commits when the digest is not the expected one", function()
    local dir = util.scratch("expect")
    local data = sample(5000)
    local right = hash.sha256_string(data)
    local wrong = hash.sha256_string(data .. "x")
    local ok, err = pcall(stream.run, { stream.from_string(data), hash.sha256{ expect = wrong },
      stream.to_file(dir .. "/copy") })
    assert.is_false(ok)
    assert.are.equal("corrupt", err.kind)
    assert.matches("checksum mismatch: read " .. right .. ", expected " .. wrong, err.message)
    assert.are.same({}, util.listdir(dir))
    local r = stream.run{ stream.from_string(data), hash.sha256{ expect = right:upper() }, stream.to_file(dir .. "/copy") }
    assert.are.equal(right, r.sha256)
    assert.are.same({ "copy" }, util.listdir(dir))
    assert.has_error(function() hash.sha256{ expect = "abc" } end)
    assert.has_error(function() hash.sha256{ expect = string.rep("g", 64) } end)
  end)

  it("returns nil and a message for a missing file", function()
    local digest, err = hash.sha256_file("/nonexistent")
    assert.is_nil(digest)
    assert.are.equal("hash.sha256_file: /nonexistent: No such file or directory", err)
  end)
end)

describe("bkr.gzip strings", function()
  it("compresses what gunzip reads and reads what gzip writes", function()
    local dir = util.scratch("gz")
    local data = sample(2000)
    util.write(dir .. "/f.gz", gzip.compress_string(data, 9))
    assert.are.equal(util.sha256sum(dir .. "/f.gz"):len(), 64)
    assert.are.equal(hash.sha256_string(data), util.sh("gunzip -c " .. dir .. "/f.gz | sha256sum"):match("^%x+"))
    util.write(dir .. "/g", data)
    util.sh("gzip -k " .. dir .. "/g")
    assert.are.equal(data, gzip.decompress_string(util.read(dir .. "/g.gz")))
  end)

  it("returns nil and a message for corrupt input", function()
    local out, err = gzip.decompress_string("not gzip at all")
    assert.is_nil(out)
    assert.matches("^gzip.decompress_string: ", err)
  end)
end)

describe("bkr.gzip on worker threads", function()
  -- Several blocks of 1 MiB, text and incompressible bytes mixed, and a partial last block.
  local function mixed(mib)
    local parts, random = {}, util.sh("head -c 300000 /dev/urandom | base64 -w 0")
    while #table.concat(parts) < mib * 1048576 do
      parts[#parts + 1] = sample(3000)
      parts[#parts + 1] = random
    end
    return table.concat(parts):sub(1, mib * 1048576 + 12345)
  end

  local function compress(data, threads, path)
    return stream.run{ stream.from_string(data), gzip.compress{ level = 6, threads = threads },
      stream.to_file(path) }
  end

  it("writes the same bytes whatever the number of threads, which gzip, gunzip and pigz read", function()
    local dir = util.scratch("pgz")
    local data = mixed(5)
    util.write(dir .. "/data", data)
    local results = {}
    for _, threads in ipairs({ 1, 2, 4 }) do
      local path = dir .. "/t" .. threads .. ".gz"
      results[threads] = compress(data, threads, path)
      assert.is_true(util.gzip_ok(path))
      assert.are.equal(util.sha256sum(dir .. "/data"), util.sh("gunzip -c " .. path .. " | sha256sum"):match("^%x+"))
      assert.are.equal(util.sha256sum(dir .. "/data"), util.sh("pigz -dc " .. path .. " | sha256sum"):match("^%x+"))
    end
    assert.are.equal(util.sha256sum(dir .. "/t1.gz"), util.sha256sum(dir .. "/t2.gz"))
    assert.are.equal(util.sha256sum(dir .. "/t1.gz"), util.sha256sum(dir .. "/t4.gz"))
    -- one member per started MiB, compressed on as many workers as asked for
    assert.are.equal(6, results[4].gzip.blocks)
    assert.are.equal(4, results[4].gzip.threads)
    assert.are.equal(1, results[1].gzip.threads)
    -- and bkr's own reader agrees
    local r = stream.run{ stream.from_file(dir .. "/t2.gz"), gzip.decompress(), hash.sha256(), stream.to_null() }
    assert.are.equal(hash.sha256_string(data), r.sha256)
  end)

  -- Rows like the benchmark's (a real dump's mix): ids, amounts, words in random order.
  -- (On very repetitive text, such as sample()'s, libdeflate's level 6 can be 3% larger.)
  local function invoice_rows(n)
    local words = { "invoice", "supplier", "net", "gross", "vat", "due", "paid", "order", "line", "item",
      "qty", "unit", "price", "total", "remark", "delivery", "late", "credit", "note", "account" }
    local state, lines = 12345, {}
    local function random(k)
      state = (state * 1103515245 + 12345) % 2147483648
      return state % k
    end
    for i = 1, n do
      local body = {}
      for j = 1, 40 do body[j] = words[random(#words) + 1] .. random(1000) end
      lines[i] = string.format("%d\t%d.%02d\t%s\n", i, random(100000), random(100), table.concat(body, " "))
    end
    return table.concat(lines)
  end

  it("stores rows like a dump's no larger than gzip -6 does", function()
    local dir = util.scratch("pgz-size")
    local data = invoice_rows(15000)
    util.write(dir .. "/data", data)
    local r = compress(data, 2, dir .. "/b.gz")
    local gzip6 = tonumber(util.sh("gzip -6 -c " .. dir .. "/data | wc -c"):match("%d+"))
    assert.is_true(r.bytes_out <= gzip6, r.bytes_out .. " > " .. gzip6)
  end)

  it("makes a valid gzip file of empty input and of exactly one block", function()
    local dir = util.scratch("pgz-edge")
    for name, data in pairs({ empty = "", one = string.rep("z", 1048576), one_more = string.rep("z", 1048577) }) do
      local path = dir .. "/" .. name .. ".gz"
      compress(data, 2, path)
      assert.is_true(util.gzip_ok(path), name)
      assert.are.equal(#data, tonumber(util.sh("gunzip -c " .. path .. " | wc -c"):match("%d+")), name)
    end
  end)

  it("fails on a damaged block in the middle and leaves no file", function()
    local dir = util.scratch("pgz-bad")
    local data = mixed(3)
    compress(data, 2, dir .. "/good.gz")
    local bytes = util.read(dir .. "/good.gz")
    local second = bytes:find("\31\139\8", 2, true) -- the second member's header
    assert.is_truthy(second)
    util.flip_byte(dir .. "/good.gz", second + 5000)
    assert.is_false(util.gzip_ok(dir .. "/good.gz"))
    local ok, err = pcall(stream.run, { stream.from_file(dir .. "/good.gz"), gzip.decompress(), stream.to_file(dir .. "/out") })
    assert.is_false(ok)
    assert.are.equal("corrupt", err.kind)
    assert.are.same({ "good.gz" }, util.listdir(dir))
  end)

  it("refuses a thread count out of range", function()
    assert.has_error(function() gzip.compress{ threads = 0 } end)
    assert.has_error(function() gzip.compress{ threads = 257 } end)
    assert.is_true(gzip.default_threads() >= 1)
  end)
end)
