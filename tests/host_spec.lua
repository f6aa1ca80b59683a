-- The bkr host: recipe path, help, errors and exit codes, signals.
local util = require "support.util"
local q = util.quote
local bkr = util.bkr_bin()

-- Run bkr with a shell-level environment prefix; return stdout+stderr, exit code.
local function run(args, env)
  return util.sh((env or "") .. " " .. q(bkr) .. " " .. args .. " 2>&1")
end

describe("bkr host", function()
  it("prints its version", function()
    local out, rc = run("--version")
    assert.are.equal(0, rc)
    assert.matches("^bkr %d+%.%d+%.%d+", out)
  end)

  it("lists the recipes on the path with their one-line descriptions", function()
    local dir = util.scratch("recipes")
    util.write(dir .. "/hello.lua", "-- Say hello to the admin\nprint('hello')\n")
    local out, rc = run("--help", "BKR_RECIPE_PATH=" .. q(dir))
    assert.are.equal(0, rc)
    assert.matches("hello%s+Say hello to the admin", out)
    assert.matches("Exit codes", out)
  end)

  it("runs a recipe from BKR_RECIPE_PATH, which shadows the built-in ones, with its arguments", function()
    local dir = util.scratch("recipes")
    util.write(dir .. "/demo.lua", "-- shadowed demo\nprint('custom demo', ...)\nreturn 0\n")
    local out, rc = run("demo a 'b c'", "BKR_RECIPE_PATH=" .. q(dir))
    assert.are.equal(0, rc)
    assert.are.equal("custom demo\ta\tb c\n", out)
  end)

  it("lets recipes require shadowable library modules from the recipe path", function()
    local dir = util.scratch("recipes")
    assert(os.execute("mkdir -p " .. q(dir .. "/lib")))
    util.write(dir .. "/lib/greeting.lua", "return { text = 'from lib' }\n")
    util.write(dir .. "/greet.lua", "-- greet\nprint(require('lib.greeting').text)\n")
    local out, rc = run("greet", "BKR_RECIPE_PATH=" .. q(dir))
    assert.are.equal(0, rc)
    assert.are.equal("from lib\n", out)
  end)

  it("exits 2 naming an unknown recipe", function()
    local out, rc = run("no-such-recipe")
    assert.are.equal(2, rc)
    assert.matches("no recipe named 'no%-such%-recipe'", out)
  end)

  it("reports a Lua error in one line without the recipe's file and line, exit 1; --debug keeps them", function()
    local dir = util.scratch("err")
    util.write(dir .. "/bad.lua", "local x = 1\nlocal function step() error('the step failed') end\n"
      .. "local ok, err = pcall(step)\nerror(err)\n")
    local out, rc = run("run " .. q(dir .. "/bad.lua"))
    assert.are.equal(1, rc)
    assert.are.equal("bkr: the step failed\n", out)
    out, rc = run("run " .. q(dir .. "/bad.lua"), "BKR_DEBUG=1")
    assert.are.equal(1, rc)
    assert.matches("^bkr: " .. dir:gsub("%p", "%%%0") .. "/bad.lua:4: [^\n]*bad.lua:2: the step failed\n", out)
  end)

  it("names the recipe line for errors raised inside native functions only with --debug", function()
    local dir = util.scratch("err")
    util.write(dir .. "/native.lua", "local stream = require 'bkr.stream'\n\nstream.run{ stream.from_string('x') }\n")
    local out, rc = run("run " .. q(dir .. "/native.lua"))
    assert.are.equal(1, rc)
    assert.are.equal("bkr: stream.run: a pipeline needs at least a source and a sink\n", out)
    out, rc = run("--debug run " .. q(dir .. "/native.lua"))
    assert.are.equal(1, rc)
    assert.matches("^bkr: [^\n]*native.lua:3: stream.run: a pipeline needs at least a source and a sink\n", out)
  end)

  it("keeps a message that only looks like a position (host:port: ...)", function()
    local dir = util.scratch("err")
    util.write(dir .. "/port.lua", "error('db.example:5432: connection refused', 0)\n")
    local out = run("run " .. q(dir .. "/port.lua"))
    assert.are.equal("bkr: db.example:5432: connection refused\n", out)
  end)

  it("adds a traceback only with --debug", function()
    local dir = util.scratch("err")
    util.write(dir .. "/bad.lua", "local function step() error('deep') end\nstep()\n")
    local out = run("--debug run " .. q(dir .. "/bad.lua"))
    assert.matches("stack traceback", out)
    out = run("run " .. q(dir .. "/bad.lua"))
    assert.not_matches("traceback", out)
  end)

  it("uses the exit code of an error object and of the returned value", function()
    local dir = util.scratch("err")
    util.write(dir .. "/integrity.lua", "error({ exit_code = 3, message = 'checksum mismatch in x.sql.gz' })\n")
    local out, rc = run("run " .. q(dir .. "/integrity.lua"))
    assert.are.equal(3, rc)
    assert.are.equal("bkr: checksum mismatch in x.sql.gz\n", out)
    util.write(dir .. "/ret.lua", "return 3\n")
    local _, rc2 = run("run " .. q(dir .. "/ret.lua"))
    assert.are.equal(3, rc2)
  end)

  it("on SIGTERM inside Lua code says 'interrupted by SIGTERM' without a script path, exits 143", function()
    local dir = util.scratch("sig")
    util.write(dir .. "/spin.lua", "local f = io.open(..., 'w') f:write('started') f:close()\nwhile true do end\n")
    local pid = util.sh(q(util.bkr_bin()) .. " run " .. q(dir .. "/spin.lua") .. " " .. q(dir .. "/started") .. " > "
      .. q(dir .. "/out") .. " 2>&1 & echo $!"):gsub("%s", "")
    util.sh("for i in $(seq 200); do [ -e " .. q(dir .. "/started") .. " ] && break; sleep 0.05; done")
    util.sh("kill -TERM " .. pid)
    util.sh("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    assert.are.equal("bkr: interrupted by SIGTERM\n", util.read(dir .. "/out"))
  end)

  it("after SIGTERM, an error a script raises on its way out is reported as the interrupt, without its line", function()
    local dir = util.scratch("sig")
    util.write(dir .. "/late.lua", "local f = io.open(..., 'w') f:write('started') f:close()\n"
      .. "pcall(function() while true do end end)\nerror('cleanup went wrong')\n")
    local pid = util.sh(q(util.bkr_bin()) .. " run " .. q(dir .. "/late.lua") .. " " .. q(dir .. "/started") .. " > "
      .. q(dir .. "/out") .. " 2>&1 & echo $!"):gsub("%s", "")
    util.sh("for i in $(seq 200); do [ -e " .. q(dir .. "/started") .. " ] && break; sleep 0.05; done")
    util.sh("kill -TERM " .. pid .. "; while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    assert.are.equal("bkr: interrupted by SIGTERM\n", util.read(dir .. "/out"))
  end)

  it("bkr.sleep waits without a shell and wakes at once on SIGTERM", function()
    local dir = util.scratch("sleep")
    util.write(dir .. "/nap.lua", "local t = bkr.monotonic()\nassert(bkr.sleep(0.2))\n"
      .. "assert(bkr.monotonic() - t >= 0.19)\nlocal f = io.open(..., 'w') f:write('napping') f:close()\n"
      .. "local ok, why = bkr.sleep(60)\nprint(ok, why)\n")
    local started = os.time()
    local pid = util.sh(q(util.bkr_bin()) .. " run " .. q(dir .. "/nap.lua") .. " " .. q(dir .. "/napping") .. " > "
      .. q(dir .. "/out") .. " 2>&1 & echo $!"):gsub("%s", "")
    util.sh("for i in $(seq 200); do [ -e " .. q(dir .. "/napping") .. " ] && break; sleep 0.05; done")
    util.sh("kill -TERM " .. pid .. "; while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    assert.is_true(os.time() - started < 30)
    assert.matches("^nil\tinterrupted\n", util.read(dir .. "/out"))
  end)

  it("exits 2 for a script that does not compile", function()
    local dir = util.scratch("err")
    util.write(dir .. "/syntax.lua", "local = 1\n")
    local out, rc = run("run " .. q(dir .. "/syntax.lua"))
    assert.are.equal(2, rc)
    assert.matches("syntax.lua:1:", out)
  end)

  it("on SIGTERM stops the pipeline, kills and reaps its child, removes the temporary file, exits 143", function()
    local dir = util.scratch("sig")
    util.write(dir .. "/slow.lua", [[
local proc = require "bkr.proc"
local stream = require "bkr.stream"
local dir = ...
local child = assert(proc.spawn{ argv = { "sh", "-c", "echo $$ > " .. dir .. "/child.pid; head -c 100000 /dev/zero; exec sleep 60" } })
stream.run{ child:source(), stream.to_file(dir .. "/out") }
]])
    local pidfile = dir .. "/bkr.pid"
    util.sh(q(bkr) .. " run " .. q(dir .. "/slow.lua") .. " " .. q(dir) .. " > " .. q(dir .. "/log") .. " 2>&1 & echo $! > " .. q(pidfile))
    local pid = util.read(pidfile):match("%d+")
    -- wait until the child is running and bytes have arrived
    for _ = 1, 100 do
      if #util.listdir(dir) >= 5 then break end
      util.sh("sleep 0.05")
    end
    local child = util.read(dir .. "/child.pid"):match("%d+")
    util.sh("kill -TERM " .. pid)
    local rc
    for _ = 1, 100 do
      local _, alive = util.sh("kill -0 " .. pid .. " 2>/dev/null")
      if alive ~= 0 then break end
      util.sh("sleep 0.05")
    end
    local _, child_alive = util.sh("kill -0 " .. child .. " 2>/dev/null")
    assert.are_not.equal(0, child_alive, "the child process must be gone")
    assert.are.same({ "bkr.pid", "child.pid", "log", "slow.lua" }, util.listdir(dir))
    assert.matches("interrupted", util.read(dir .. "/log"))
    -- the exit status, through a waiting shell this time
    util.sh("rm -f " .. q(dir .. "/child.pid"))
    local out
    out, rc = util.sh("(" .. q(bkr) .. " run " .. q(dir .. "/slow.lua") .. " " .. q(dir) .. " & p=$!; "
      .. "while [ ! -s " .. q(dir .. "/child.pid") .. " ]; do sleep 0.05; done; sleep 0.2; kill -TERM $p; wait $p) 2>&1")
    assert.are.equal(143, rc, out)
  end)
end)
