-- s3rver on loopback for the specs (tests/support/s3rver.js: s3rver with its own directory,
-- every signature checked with aws4, a request log, faults on demand).
local json = require "dkjson"
local util = require "support.util"
local R = require "support.restore_util"
local q = util.quote

local M = {}

M.SOURCE = os.getenv("BKR_SOURCE_DIR") or "."
M.BUCKET = "bkr-test"
M.ACCESS_KEY = "AKIDBKRTEST"
M.SECRET_KEY = "bkrSecret/Key+Zq9X7w3T5vY2mN8pL4kJ6hG1"
M.REGION = "us-east-1"

-- Start s3rver in dir (a new scratch directory unless given: a restart keeps its objects), on
-- port (0: a free one), over HTTPS with the key.pem and cert.pem of tls_dir when given.
function M.start(dir, port, tls_dir)
  dir = dir or util.scratch("s3rver")
  os.remove(dir .. "/port")
  util.sh("(S3RVER_PORT=" .. (port or 0) .. (tls_dir and " S3RVER_TLS=" .. q(tls_dir) or "")
    .. " node --openssl-legacy-provider "
    .. q(M.SOURCE .. "/tests/support/s3rver.js") .. " " .. q(dir) .. " " .. M.BUCKET .. " " .. M.ACCESS_KEY .. " "
    .. q(M.SECRET_KEY) .. " " .. M.REGION .. " >>" .. q(dir .. "/server.log") .. " 2>&1 & echo $! >" .. q(dir .. "/pid") .. ")")
  assert(R.wait_for(dir .. "/port", 30), "s3rver did not start: " .. util.read(dir .. "/server.log"))
  local server = { dir = dir, port = tonumber(util.read(dir .. "/port"):match("%d+")),
    pid = util.read(dir .. "/pid"):match("%d+") }
  server.endpoint = (tls_dir and "https" or "http") .. "://127.0.0.1:" .. server.port
  function server.stop(signal)
    util.sh("kill -" .. (signal or "TERM") .. " " .. server.pid .. " 2>/dev/null; for i in $(seq 50); do kill -0 "
      .. server.pid .. " 2>/dev/null || break; sleep 0.1; done; kill -KILL " .. server.pid .. " 2>/dev/null")
  end
  -- Every request s3rver received so far: { method, url, headers }.
  function server.requests()
    local list = {}
    local f = io.open(dir .. "/requests.log")
    if not f then return list end
    for line in f:lines() do list[#list + 1] = json.decode(line) end
    f:close()
    return list
  end
  -- Wait (at most 60 s) until the first part of a multipart upload under a key holding
  -- `fragment` has been sent: an upload under way, for a test to interrupt.
  function server.wait_for_first_part(fragment)
    return R.wait_until(function()
      for _, r in ipairs(server.requests()) do
        if r.method == "PUT" and r.url:find(fragment, 1, true) and r.url:find("partNumber=1", 1, true) then
          return true
        end
      end
      return false
    end, 60)
  end
  function server.fault(spec)
    util.write(dir .. "/fault", spec .. "\n")
  end
  -- Files of open multipart uploads in s3rver's store (its directory of uploads for the bucket).
  function server.open_uploads()
    local out = util.sh("find " .. q(dir .. "/data/" .. M.BUCKET) .. " -path '*_S3rver_uploads/*' -type f 2>/dev/null")
    local files = {}
    for line in out:gmatch("[^\n]+") do files[#files + 1] = line end
    return files
  end
  -- A bkr configuration for this server: the YAML lines of `top` first, then the s3 section
  -- (endpoint, region, the access key, the secret in a 0600 file, a 10 s timeout), then the
  -- lines of `after` (an indented line there is one more key of the s3 section). Returns its
  -- path and its directory.
  function server.config_file(top, after)
    local dir = util.scratch("s3-cfg")
    local secret = dir .. "/s3.secret"
    util.write(secret, M.SECRET_KEY .. "\n")
    util.sh("chmod 600 " .. q(secret))
    local path = dir .. "/bkr.yaml"
    util.write(path, ((top and top ~= "") and (top:gsub("\n?$", "\n")) or "") .. table.concat({
      "s3:",
      "  endpoint: " .. server.endpoint,
      "  region: " .. M.REGION,
      "  access_key_id: " .. M.ACCESS_KEY,
      "  secret_access_key_file: " .. secret,
      "  timeout_seconds: 10",
      after or "",
    }, "\n") .. "\n")
    return path, dir
  end
  -- The start of a script for `bkr run` that talks to this server: bkr.s3, bkr.stream and
  -- bkr.proc required, and `c` a client of the test bucket (`options`: more of s3.client's
  -- options, as Lua source, e.g. "retries = 2, timeout = 5").
  function server.client_script(options)
    return string.format('local s3 = require "bkr.s3"\nlocal stream = require "bkr.stream"\n'
      .. 'local proc = require "bkr.proc"\nlocal c = s3.client{ endpoint = %q, region = %q, bucket = %q, '
      .. 'access_key = %q, secret_key = %q%s }\n', server.endpoint, M.REGION, M.BUCKET, M.ACCESS_KEY, M.SECRET_KEY,
      options and (", " .. options) or "")
  end
  -- Copy local files into the bucket: pairs of (local path, key), one signed PutObject each,
  -- through bkr's own bkr.s3 (a script run by `bkr run`): what someone with write access to
  -- the bucket, or another tool, would put there.
  function server.put_objects(pairs_)
    local script = util.scratch("s3-put") .. "/put.lua"
    util.write(script, server.client_script() .. [[
local args = { ... }
for i = 1, #args, 2 do
  local f = assert(io.open(args[i], "rb"))
  local bytes = f:read("a")
  f:close()
  assert(c:put(args[i + 1], bytes))
end
]])
    local list = {}
    for _, item in ipairs(pairs_) do list[#list + 1] = q(item[1]) .. " " .. q(item[2]) end
    local out, rc = util.bkr("run " .. q(script) .. " " .. table.concat(list, " "))
    assert(rc == 0, out)
  end
  function server.put_text(key, text)
    local file = util.scratch("s3-obj") .. "/object"
    util.write(file, text)
    server.put_objects({ { file, key } })
  end
  -- The file s3rver stores an object's bytes in (checked with sha256sum), or nil.
  function server.object_file(key)
    local path = dir .. "/data/" .. M.BUCKET .. "/" .. key .. "._S3rver_object"
    local f = io.open(path)
    if f then f:close() end
    return f and path or nil
  end
  return server
end

return M
