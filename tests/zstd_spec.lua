-- bkr.zstd: the zstd filter stages, checked against the zstd command-line tool.
local stream = require "bkr.stream"
local zstd = require "bkr.zstd"
local util = require "support.util"
local q = util.quote

-- Bytes that compress, but not to nothing: numbers in a shuffled order.
local function sample(n)
  local parts = {}
  for i = 1, n do parts[i] = tostring(i * 7919 % 100003) end
  return table.concat(parts, ",")
end

local function compress(data, opts)
  return stream.run{ stream.from_string(data), zstd.compress(opts), stream.to_string{ name = "out" } }.out
end

local function decompress(data)
  return pcall(stream.run, { stream.from_string(data), zstd.decompress(), stream.to_string{ name = "out" } })
end

describe("bkr.zstd", function()
  it("writes frames with a content checksum that zstd -t accepts and zstd -dc reads back", function()
    local data = sample(200000)
    for _, opts in ipairs({ {}, { level = 1 }, { level = 19 }, { level = 3, threads = 2 } }) do
      local path = util.scratch("zstd") .. "/out.zst"
      util.write(path, compress(data, opts))
      assert.are.equal(0, select(2, util.sh("zstd -q -t " .. q(path))))
      assert.matches("XXH64", util.sh("zstd -lv " .. q(path) .. " 2>&1"))
      assert.are.equal(data, util.sh("zstd -q -dc " .. q(path)))
    end
  end)

  it("writes the same content whatever the number of threads, over several of zstd's jobs", function()
    local data = string.rep(sample(200000), 16) -- about 20 MB: several of zstd's jobs (8 MiB at level 3)
    local dir = util.scratch("zstd-threads")
    util.write(dir .. "/data", data)
    for _, threads in ipairs({ 1, 2, 4 }) do
      local path = dir .. "/t" .. threads .. ".zst"
      local r = stream.run{ stream.from_string(data), zstd.compress{ level = 3, threads = threads }, stream.to_file(path) }
      assert.are.equal(#data, r.bytes_in)
      assert.are.equal(0, select(2, util.sh("zstd -q -t " .. q(path))))
      assert.are.equal(util.sha256sum(dir .. "/data"), util.sh("zstd -q -dc " .. q(path) .. " | sha256sum"):match("^%x+"))
    end
  end)

  it("decompresses what zstd made, concatenated frames too", function()
    local dir = util.scratch("zstd")
    util.write(dir .. "/a", sample(50000))
    util.write(dir .. "/b", "second part\n")
    util.sh("zstd -q -c " .. q(dir .. "/a") .. " > " .. q(dir .. "/ab.zst") .. " && zstd -q -19 -c " .. q(dir .. "/b")
      .. " >> " .. q(dir .. "/ab.zst"))
    local ok, r = decompress(util.read(dir .. "/ab.zst"))
    assert.is_true(ok, tostring(r))
    assert.are.equal(sample(50000) .. "second part\n", r.out)
  end)

  it("fails with kind corrupt on a damaged frame and on data after the last frame", function()
    local good = compress(sample(20000))
    local damaged = good:sub(1, #good // 2) .. string.char(good:byte(#good // 2 + 1) ~ 0xFF) .. good:sub(#good // 2 + 2)
    local ok, err = decompress(damaged)
    assert.is_false(ok)
    assert.are.equal("corrupt", err.kind)
    ok, err = decompress(good .. "not zstd at all")
    assert.is_false(ok)
    assert.are.equal("corrupt", err.kind)
    assert.matches("after the last zstd frame", err.message)
  end)

  it("fails with kind truncated on a frame cut short and on empty input", function()
    local good = compress(sample(20000))
    for _, cut in ipairs({ 1, 10, #good // 2, #good - 1 }) do
      local ok, err = decompress(good:sub(1, cut))
      assert.is_false(ok, cut)
      assert.are.equal("truncated", err.kind, cut)
    end
    local ok, err = decompress("")
    assert.is_false(ok)
    assert.are.equal("truncated", err.kind)
  end)

  it("refuses levels and thread counts out of range", function()
    assert.has_error(function() zstd.compress{ level = 0 } end)
    assert.has_error(function() zstd.compress{ level = 20 } end)
    assert.has_error(function() zstd.compress{ threads = -1 } end)
    assert.are.equal(19, zstd.MAX_LEVEL)
  end)
end)
