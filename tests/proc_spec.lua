-- proc_spec.lua - bkr.proc: child processes from argv lists, their pipes as stream stages.
-- Results are checked with independent tools (sha256sum, env, ls, /proc), never with
-- bkr.proc itself. `sh -c` appears here only to make test children misbehave.

local proc = require "bkr.proc"
local stream = require "bkr.stream"
local lfs = require "lfs"

local function q(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Output of a shell command, trailing newline removed.
local function sh(cmd)
    local p = assert(io.popen(cmd))
    local out = p:read("a")
    p:close()
    return (out:gsub("\n$", ""))
end

local BKR = sh("realpath " .. q(os.getenv("BKR_BIN") or "./bkr"))

local function read(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return s
end

local function write(path, data)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
end

local function sha256_file(path)
    return sh("sha256sum " .. q(path)):match("^(%x+)")
end

local function count_fds()
    local n = 0
    for _ in lfs.dir("/proc/self/fd") do n = n + 1 end
    return n
end

local function our_pid()
    return tonumber(read("/proc/self/stat"):match("^(%d+)"))
end

-- State letter of a process ("R", "S", "Z", ...), or nil when it no longer exists.
local function proc_state(pid)
    local stat = read("/proc/" .. pid .. "/stat")
    return stat and stat:match("%) (%a)")
end

-- Pids of our own children (zombies included), from /proc.
local function our_children()
    local me, kids = our_pid(), {}
    for name in lfs.dir("/proc") do
        if name:match("^%d+$") then
            local stat = read("/proc/" .. name .. "/stat")
            local ppid = stat and tonumber(stat:match("%) %a (%d+)"))
            if ppid == me then kids[#kids + 1] = tonumber(name) end
        end
    end
    return kids
end

-- Deterministic bytes that are not all alike (so a reordering or a loss changes the digest).
local function pattern(n)
    local parts, i = {}, 0
    while #parts * 16 < n do
        i = i + 1
        parts[#parts + 1] = string.format("%015d\n", i * 7919)
    end
    return table.concat(parts):sub(1, n)
end

-- Run a Lua script in another bkr under `timeout`, so that a deadlock fails the test
-- instead of hanging the suite. Returns the exit status and the output.
local function bkr_with_timeout(dir, script, seconds)
    write(dir .. "/guarded.lua", "package.path = " .. string.format("%q", package.path) .. "\n" .. script)
    local out = sh(("cd %s && timeout -k 5 %d %s run guarded.lua 2>&1; echo \"rc=$?\"")
        :format(q(dir), seconds or 30, q(BKR)))
    local rc = tonumber(out:match("rc=(%d+)$"))
    return rc, (out:gsub("\n?rc=%d+$", ""))
end

local function spawn_in_function(argv)
    local p = assert(proc.spawn { argv = argv })
    return p:pid()
end

local dir
before_each(function()
    dir = sh("mktemp -d " .. q((os.getenv("BKR_TEST_TMP") or "/tmp") .. "/bkr-proc-spec.XXXXXX"))
end)
after_each(function()
    os.execute("rm -rf " .. q(dir))
end)

describe("proc.spawn and p:wait", function()
    it("returns what os.execute returns: true, 'exit', 0 for success", function()
        local p = assert(proc.spawn { argv = { "true" } })
        assert.same({ true, "exit", 0 }, { p:wait() })
        p:close()
    end)

    it("returns nil, 'exit', code for a non-zero exit", function()
        local p = assert(proc.spawn { argv = { "false" } })
        assert.same({ nil, "exit", 1 }, { p:wait() })
        local p7 = assert(proc.spawn { argv = { "sh", "-c", "exit 7" } })
        assert.same({ nil, "exit", 7 }, { p7:wait() })
        p:close()
        p7:close()
    end)

    it("returns nil, 'signal', n for a child killed by a signal", function()
        local p = assert(proc.spawn { argv = { "sh", "-c", "kill -9 $$" } })
        assert.same({ nil, "signal", 9 }, { p:wait() })
        p:close()
    end)

    it("returns the same cached result when waited for again", function()
        local p = assert(proc.spawn { argv = { "sh", "-c", "exit 3" } })
        local pid = p:pid()
        assert.same({ nil, "exit", 3 }, { p:wait() })
        assert.same({ nil, "exit", 3 }, { p:wait() })
        assert.equal(pid, p:pid())
        p:close()
    end)

    it("returns nil and a message naming the program when it does not exist", function()
        local before, kids = count_fds(), our_children()
        local p, msg = proc.spawn { argv = { "pg_dumpx-no-such-program", "-d", "db" } }
        assert.is_nil(p)
        assert.equal("proc.spawn: pg_dumpx-no-such-program: No such file or directory", msg)
        assert.equal(before, count_fds())
        assert.same(kids, our_children())
    end)

    it("returns nil and a message when the program is not executable", function()
        write(dir .. "/not-exec", "#!/bin/sh\necho hi\n")
        local p, msg = proc.spawn { argv = { dir .. "/not-exec" } }
        assert.is_nil(p)
        assert.equal("proc.spawn: " .. dir .. "/not-exec: Permission denied", msg)
    end)

    it("returns nil and a message when the working directory is missing", function()
        local kids = our_children()
        local p, msg = proc.spawn { argv = { "true" }, cwd = dir .. "/missing" }
        assert.is_nil(p)
        assert.equal("proc.spawn: cannot change directory to '" .. dir .. "/missing': No such file or directory", msg)
        assert.same(kids, our_children())
    end)

    it("runs the child in cwd", function()
        local r = assert(proc.run { argv = { "pwd" }, cwd = dir })
        assert.equal(dir .. "\n", r.stdout)
    end)

    it("passes argv literally, without a shell", function()
        local args = { "a b", "'single'", '"double"', "x; touch " .. dir .. "/pwned", "$HOME", "*", "`id`", "" }
        local argv = { "printf", "[%s]\\n" }
        for _, a in ipairs(args) do argv[#argv + 1] = a end
        local r = assert(proc.run { argv = argv })
        assert.is_true(r.ok)
        local want = {}
        for _, a in ipairs(args) do want[#want + 1] = "[" .. a .. "]\n" end
        assert.equal(table.concat(want), r.stdout)
        assert.is_nil(read(dir .. "/pwned"))
    end)

    it("adds, overrides and removes environment variables (checked with env)", function()
        local r = assert(proc.run {
            argv = { "env" },
            env = { BKR_SECRET = "s3cr3t with spaces", HOME = "/elsewhere", PATH = os.getenv("PATH"),
                    USER = false, BKR_NUM = 5432 },
        })
        assert.is_true(r.ok)
        local vars = {}
        for name, value in r.stdout:gmatch("([^=\n]+)=([^\n]*)") do vars[name] = value end
        assert.equal("s3cr3t with spaces", vars.BKR_SECRET)
        assert.equal("/elsewhere", vars.HOME)
        assert.equal("5432", vars.BKR_NUM)
        assert.is_nil(vars.USER)
        -- and the rest of our environment is still there
        assert.equal(os.getenv("PATH"), vars.PATH)
    end)

    it("removes a variable that is set in our environment", function()
        assert.is_not_nil(os.getenv("PATH"))
        local r = assert(proc.run { argv = { "/usr/bin/env" }, env = { PATH = false } })
        assert.is_nil(r.stdout:match("\nPATH=") or r.stdout:match("^PATH="))
    end)

    it("looks the program up in the PATH of the child's environment", function()
        lfs.mkdir(dir .. "/bin")
        write(dir .. "/bin/bkr-test-tool", "#!/bin/sh\necho found \"$1\"\n")
        os.execute("chmod +x " .. q(dir .. "/bin/bkr-test-tool"))
        local r = assert(proc.run { argv = { "bkr-test-tool", "x" }, env = { PATH = dir .. "/bin:/usr/bin:/bin" } })
        assert.equal("found x\n", r.stdout)
        local p, msg = proc.spawn { argv = { "bkr-test-tool" } }
        assert.is_nil(p)
        assert.matches("bkr-test-tool: No such file or directory", msg, 1, true)
    end)

    it("starts children with default signal dispositions and an empty signal mask", function()
        local r_status
        -- the host ignores SIGPIPE and catches SIGINT/SIGTERM; none of that may leak
        -- (signals 32 and 33 are glibc's own: sigaction refuses them, so whatever started the
        -- test run passes their state through to every process; they are left out)
        local glibc_reserved = 0x180000000
        local function mask(field)
            return tonumber(r_status:match(field .. ":%s*(%x+)"), 16) & ~glibc_reserved
        end
        local r = assert(proc.run { argv = { "cat", "/proc/self/status" } })
        r_status = r.stdout
        assert.equal(0, mask("SigIgn"))
        assert.equal(0, mask("SigBlk"))
        assert.equal(0, mask("SigCgt"))
    end)

    it("does not let children inherit the pipes of other children", function()
        local function pipes(listing)
            local t = {}
            for fd, target in listing:gmatch(" (%d+) %-> (pipe:[^\n]+)") do t[target] = tonumber(fd) end
            return t
        end
        local inherited = pipes(sh("ls -l /proc/" .. our_pid() .. "/fd"))
        local holder = assert(proc.spawn { argv = { "cat" }, stdin = "pipe", stdout = "pipe" })
        local ours = pipes(sh("ls -l /proc/" .. our_pid() .. "/fd"))
        local r = assert(proc.run { argv = { "ls", "-l", "/proc/self/fd" } })
        assert.is_true(r.ok)
        local n = 0
        for target in pairs(ours) do
            if not inherited[target] then
                n = n + 1
                assert.is_nil(pipes(r.stdout)[target], "the child inherited " .. target)
            end
        end
        assert.is_true(n >= 3) -- the holder's stdin, stdout and stderr pipes
        holder:close()
    end)

    it("raises for misuse: empty argv, a shell string, unknown options and modes", function()
        local kids = our_children()
        assert.has_error(function() proc.spawn { argv = {} } end, "proc.spawn: argv must not be empty")
        assert.has_error(function() proc.spawn { argv = "ls -l" } end, "proc.spawn: argv must be a list of strings")
        assert.has_error(function() proc.spawn { argv = { "ls" }, stdot = "pipe" } end,
            "proc.spawn: unknown option 'stdot'")
        assert.has_error(function() proc.spawn { argv = { "ls" }, stderr = "pipe" } end,
            "proc.spawn: bad stderr mode 'pipe'")
        assert.has_error(function() proc.spawn { argv = { "ls" }, env = { X = true } } end,
            "proc.spawn: env.X must be a string or false")
        assert.same(kids, our_children())
    end)
end)

describe("captured output", function()
    it("keeps the last 64 KiB of stderr and never deadlocks on a child writing megabytes of it", function()
        local rc, out = bkr_with_timeout(dir, [[
            local proc = require "bkr.proc"
            local p = assert(proc.spawn {
                argv = { "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' e >&2; echo END >&2" },
            })
            local ok, how, code = p:wait()
            local err = p:stderr()
            print(ok, how, code, #err, err:sub(-8))
        ]])
        assert.equal(0, rc, out)
        assert.equal("true\texit\t0\t65536\teeeeEND\n", out)
    end)

    it("captures stdout in full with stdout = 'capture'", function()
        local data = pattern(3 * 1024 * 1024 + 5)
        write(dir .. "/in", data)
        local p = assert(proc.spawn { argv = { "cat", dir .. "/in" }, stdout = "capture" })
        assert.is_true(p:wait())
        local out, truncated = p:output()
        assert.equal(#data, #out)
        assert.is_true(out == data)
        assert.is_false(truncated)
        assert.equal("", p:stderr())
        p:close()
    end)

    it("discards output with 'null'", function()
        local p = assert(proc.spawn { argv = { "sh", "-c", "echo out; echo err >&2" }, stdout = "null", stderr = "null" })
        assert.is_true(p:wait())
        assert.equal("", p:stderr())
        p:close()
    end)
end)

describe("proc.run", function()
    it("feeds input and collects both outputs without deadlocking on big data", function()
        local rc, out = bkr_with_timeout(dir, [[
            local proc = require "bkr.proc"
            local data = string.rep("0123456789abcde\n", 5 * 65536)
            local r = assert(proc.run { argv = { "sh", "-c", "cat; head -c 2000000 /dev/zero >&2" }, input = data })
            print(r.ok, r.how, r.code, r.stdout == data, #r.stderr, r.stdout_truncated)
        ]])
        assert.equal(0, rc, out)
        assert.equal("true\texit\t0\ttrue\t65536\tfalse", out)
    end)

    it("reports a failure in ok, how and code", function()
        local r = assert(proc.run { argv = { "sh", "-c", "echo nope >&2; exit 9" } })
        assert.same({ ok = false, how = "exit", code = 9, stdout = "", stderr = "nope\n", stdout_truncated = false }, r)
        r = assert(proc.run { argv = { "sh", "-c", "kill -TERM $$" } })
        assert.is_false(r.ok)
        assert.equal("signal", r.how)
        assert.equal(15, r.code)
    end)

    it("copes with a child that does not read its input", function()
        local r = assert(proc.run { argv = { "true" }, input = pattern(4 * 1024 * 1024) })
        assert.is_true(r.ok)
    end)

    it("returns nil and a message when the program cannot be started", function()
        local r, msg = proc.run { argv = { "no-such-prog-bkr" }, input = "x" }
        assert.is_nil(r)
        assert.equal("proc.run: no-such-prog-bkr: No such file or directory", msg)
    end)
end)

describe("p:source", function()
    it("streams the child's stdout through a pipeline", function()
        local data = pattern(2 * 1024 * 1024 + 3)
        write(dir .. "/in", data)
        local p = assert(proc.spawn { argv = { "cat", dir .. "/in" } })
        local r = stream.run { p:source(), stream.to_file(dir .. "/out") }
        assert.is_table(r)
        assert.equal(sha256_file(dir .. "/in"), sha256_file(dir .. "/out"))
        assert.same({ true, "exit", 0 }, { p:wait() })
        p:close()
    end)

    it("delivers a small output to a string sink", function()
        local p = assert(proc.spawn { argv = { "printf", "hello" } })
        local r = stream.run { p:source(), stream.to_string() }
        assert.equal("hello", r.string)
        p:close()
    end)

    it("makes stream.run fail with the exit status and the tail of stderr", function()
        local p = assert(proc.spawn {
            argv = { "sh", "-c", "echo partial; echo 'pg_dump: error: connection refused' >&2; exit 1" },
        })
        local ok, err = pcall(stream.run, { p:source(), stream.to_string() })
        assert.is_false(ok)
        assert.matches("sh exited with status 1: pg_dump: error: connection refused", tostring(err), 1, true)
        assert.same({ nil, "exit", 1 }, { p:wait() })
        p:close()
    end)

    it("quotes at most about 1000 characters of a long stderr", function()
        local p = assert(proc.spawn {
            argv = { "sh", "-c", "i=0; while [ $i -lt 500 ]; do echo line $i >&2; i=$((i+1)); done; exit 2" },
        })
        local ok, err = pcall(stream.run, { p:source(), stream.to_null() })
        assert.is_false(ok)
        err = tostring(err)
        assert.matches("exited with status 2: ...", err, 1, true)
        assert.matches("line 499$", err)
        assert.is_nil(err:find("line 1\n", 1, true))
        assert.is_true(#err < 1200)
        p:close()
    end)

    it("makes stream.run fail when the child is killed by a signal", function()
        local p = assert(proc.spawn { argv = { "sh", "-c", "echo x; kill -9 $$" } })
        local ok, err = pcall(stream.run, { p:source(), stream.to_null() })
        assert.is_false(ok)
        assert.matches("sh was killed by signal 9", tostring(err), 1, true)
        p:close()
    end)

    it("terminates and reaps the child when another stage fails", function()
        local p = assert(proc.spawn { argv = { "sh", "-c", "exec yes" } })
        local pid = p:pid()
        local reader = assert(proc.spawn { argv = { "sh", "-c", "head -c 100000 >/dev/null; exit 4" },
                                           stdin = "pipe" })
        local ok, err = pcall(stream.run, { p:source(), reader:sink() })
        assert.is_false(ok)
        assert.matches("sh exited with status 4 before reading all its input", tostring(err), 1, true)
        assert.is_nil(proc_state(pid))
        local ok2, how, sig = p:wait()
        assert.is_nil(ok2)
        assert.equal("signal", how)
        assert.is_true(sig == 13 or sig == 15) -- SIGPIPE from its closed stdout, or our SIGTERM
        p:close()
    end)

    it("keeps the process alive as long as the stage", function()
        local src = assert(proc.spawn { argv = { "printf", "kept" } }):source()
        collectgarbage()
        collectgarbage()
        assert.equal("kept", stream.run { src, stream.to_string() }.string)
    end)

    it("raises unless stdout is 'pipe', and when asked twice", function()
        local p = assert(proc.spawn { argv = { "true" }, stdout = "capture" })
        assert.has_error(function() p:source() end, 'proc.source: true was not spawned with stdout = "pipe"')
        p:close()
        local p2 = assert(proc.spawn { argv = { "true" } })
        p2:source()
        assert.has_error(function() p2:source() end, "proc.source: true already has a source stage")
        p2:close()
    end)
end)

describe("p:sink", function()
    it("feeds a pipeline into the child's stdin (checked with sha256sum)", function()
        local data = pattern(6 * 1024 * 1024 + 11)
        write(dir .. "/ref", data)
        local p = assert(proc.spawn { argv = { "sha256sum" }, stdin = "pipe", stdout = "capture" })
        stream.run { stream.from_string(data), p:sink() }
        assert.same({ true, "exit", 0 }, { p:wait() })
        assert.equal(sha256_file(dir .. "/ref"), p:output():match("^(%x+)"))
        p:close()
    end)

    it("drains a child that prints a lot while it reads (like psql)", function()
        local data = pattern(3 * 1024 * 1024)
        write(dir .. "/ref", data)
        local rc, out = bkr_with_timeout(dir, [[
            local proc = require "bkr.proc"
            local stream = require "bkr.stream"
            local p = assert(proc.spawn {
                argv = { "sh", "-c", "tee /dev/stderr > copy" }, stdin = "pipe", stdout = "capture",
            })
            stream.run { stream.from_file("ref"), p:sink() }
            print(p:wait(), #p:stderr())
        ]])
        assert.equal(0, rc, out)
        assert.equal("true\t65536", out)
        assert.equal(sha256_file(dir .. "/ref"), sha256_file(dir .. "/copy"))
    end)

    it("fails with the child's status and stderr when it stops reading", function()
        local p = assert(proc.spawn {
            argv = { "sh", "-c", "head -c 10 >/dev/null; echo 'ERROR: syntax error' >&2; exit 3" },
            stdin = "pipe",
        })
        local ok, err = pcall(stream.run, { stream.from_string(pattern(4 * 1024 * 1024)), p:sink() })
        assert.is_false(ok)
        assert.matches("sh exited with status 3", tostring(err), 1, true)
        assert.matches("ERROR: syntax error", tostring(err), 1, true)
        p:close()
    end)

    it("fails in finish when the child exits non-zero after reading everything", function()
        local p = assert(proc.spawn { argv = { "sh", "-c", "cat >/dev/null; echo bad >&2; exit 5" }, stdin = "pipe" })
        local ok, err = pcall(stream.run, { stream.from_string("all of it"), p:sink() })
        assert.is_false(ok)
        assert.matches("sh exited with status 5: bad", tostring(err), 1, true)
        p:close()
    end)

    it("terminates and reaps the child when the source fails", function()
        local p = assert(proc.spawn { argv = { "sleep", "30" }, stdin = "pipe" })
        local pid = p:pid()
        local failing = assert(proc.spawn { argv = { "sh", "-c", "echo some; exit 1" } })
        local ok, err = pcall(stream.run, { failing:source(), p:sink() })
        assert.is_false(ok)
        assert.matches("sh exited with status 1", tostring(err), 1, true)
        assert.is_nil(proc_state(pid))
        p:close()
    end)

    it("raises unless stdin is 'pipe'", function()
        local p = assert(proc.spawn { argv = { "true" } })
        assert.has_error(function() p:sink() end, 'proc.sink: true was not spawned with stdin = "pipe"')
        p:close()
    end)
end)

describe("p:kill", function()
    it("sends SIGTERM by default, or a signal given by number or name", function()
        local p = assert(proc.spawn { argv = { "sleep", "30" } })
        assert.is_true(p:kill())
        assert.same({ nil, "signal", 15 }, { p:wait() })
        p:close()
        p = assert(proc.spawn { argv = { "sleep", "30" } })
        assert.is_true(p:kill("KILL"))
        assert.same({ nil, "signal", 9 }, { p:wait() })
        p:close()
        p = assert(proc.spawn { argv = { "sleep", "30" } })
        assert.is_true(p:kill(2))
        assert.same({ nil, "signal", 2 }, { p:wait() })
        p:close()
    end)

    it("returns nil and a message once the child has been reaped", function()
        local p = assert(proc.spawn { argv = { "true" } })
        p:wait()
        local r, msg = p:kill()
        assert.is_nil(r)
        assert.matches("^proc.kill: true %(pid %d+%) has already exited$", msg)
        assert.has_error(function() p:kill("NOPE") end)
        p:close()
    end)
end)

describe("cleanup", function()
    it("close terminates and reaps a running child: no zombie is left", function()
        local p = assert(proc.spawn { argv = { "sleep", "30" }, stdin = "pipe" })
        local pid = p:pid()
        assert.is_not_nil(proc_state(pid))
        p:close()
        assert.is_nil(proc_state(pid))
        p:close() -- harmless
        assert.has_error(function() p:wait() end, "proc: attempt to use a closed process")
    end)

    it("close kills a child that ignores SIGTERM after the grace period", function()
        local p = assert(proc.spawn { argv = { "sh", "-c", "trap '' TERM; exec sleep 30" } })
        local pid = p:pid()
        -- let sh install the trap before we signal it
        for _ = 1, 100 do
            if read("/proc/" .. pid .. "/comm") == "sleep\n" then break end
            os.execute("sleep 0.02")
        end
        local t0 = os.time()
        p:close()
        assert.is_nil(proc_state(pid))
        assert.is_true(os.time() - t0 <= 4)
    end)

    it("the garbage collector reaps a forgotten child", function()
        local pid = spawn_in_function { "sleep", "30" }
        assert.is_not_nil(proc_state(pid))
        collectgarbage()
        collectgarbage()
        assert.is_nil(proc_state(pid))
    end)

    it("a to-be-closed process is reaped at the end of its scope", function()
        local pid
        do
            local p <close> = assert(proc.spawn { argv = { "sleep", "30" } })
            pid = p:pid()
        end
        assert.is_nil(proc_state(pid))
    end)

    it("leaves no descriptor and no child behind", function()
        local before, kids = count_fds(), our_children()
        for _, modes in ipairs {
            { stdin = "pipe", stdout = "pipe", stderr = "capture" },
            { stdin = "null", stdout = "capture", stderr = "null" },
            { stdin = "inherit", stdout = "null", stderr = "inherit" },
        } do
            local p = assert(proc.spawn { argv = { "true" }, stdin = modes.stdin, stdout = modes.stdout,
                                          stderr = modes.stderr })
            p:wait()
            p:close()
        end
        local p = assert(proc.spawn { argv = { "printf", "abc" }, stdin = "pipe" })
        stream.run { p:source(), stream.to_string() }
        p:close()
        assert.is_nil(proc.spawn { argv = { "no-such-prog-bkr" }, stdin = "pipe" })
        proc.run { argv = { "cat" }, input = "x" }
        assert.equal(before, count_fds())
        assert.same(kids, our_children())
    end)
end)

describe("interrupts", function()
    -- Runs script in another bkr, sends it SIGTERM once it has written its child's pid,
    -- and returns bkr's exit status, its output and the child's pid.
    local function interrupt(script)
        write(dir .. "/script.lua", script)
        local result = sh(("cd %s && (%s run script.lua >out 2>&1 & b=$!; i=0; "
            .. "while [ ! -s pid ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
            .. "sleep 0.2; t0=$(date +%%s%%N); kill -TERM $b; wait $b; rc=$?; "
            .. "echo $rc $(( ($(date +%%s%%N) - t0) / 1000000 )))"):format(q(dir), q(BKR)))
        local status, ms = result:match("^(%d+) (%d+)$")
        return tonumber(status), read(dir .. "/out"), tonumber(read(dir .. "/pid")), tonumber(ms)
    end

    it("p:wait kills and reaps the child and raises 'proc.wait: interrupted'", function()
        local status, out, pid, ms = interrupt [[
            local proc = require "bkr.proc"
            local p = assert(proc.spawn { argv = { "sleep", "30" } })
            local f = assert(io.open("pid", "w")); f:write(p:pid()); f:close()
            p:wait()
            print("not reached")
        ]]
        assert.is_number(pid)
        assert.equal(143, status)
        assert.matches("proc.wait: interrupted", out, 1, true)
        assert.is_nil(out:find("not reached", 1, true))
        assert.is_nil(proc_state(pid))
        assert.is_true(ms < 5000, "took " .. ms .. " ms")
    end)

    it("a source stage stops promptly and its child is reaped", function()
        local status, out, pid, ms = interrupt [[
            local proc = require "bkr.proc"
            local stream = require "bkr.stream"
            local p = assert(proc.spawn { argv = { "sleep", "30" } })
            local f = assert(io.open("pid", "w")); f:write(p:pid()); f:close()
            stream.run { p:source(), stream.to_null() }
            print("not reached")
        ]]
        assert.is_number(pid)
        assert.equal(143, status)
        assert.is_nil(out:find("not reached", 1, true))
        assert.is_nil(proc_state(pid))
        assert.is_true(ms < 5000, "took " .. ms .. " ms")
    end)
end)

describe("a killed bkr", function()
    it("takes its children with it: SIGKILL of bkr ends a long-running child within a second", function()
        write(dir .. "/script.lua", [[
            local proc = require "bkr.proc"
            local p = assert(proc.spawn { argv = { "sleep", "300" } })
            local f = assert(io.open("killed-pid", "w")); f:write(p:pid()); f:close()
            p:wait()
        ]])
        os.remove(dir .. "/killed-pid")
        local result = sh(("cd %s && (%s run script.lua >/dev/null 2>&1 & b=$!; i=0; "
            .. "while [ ! -s killed-pid ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
            .. "kill -KILL $b; wait $b; echo $?)"):format(q(dir), q(BKR)))
        assert.equal("137", result)
        local pid = tonumber(read(dir .. "/killed-pid"))
        assert.is_number(pid)
        -- gone, or a zombie waiting for whoever adopted it: not running, in any case
        local state
        for _ = 1, 20 do
            state = proc_state(pid)
            if state == nil or state == "Z" then break end
            os.execute("sleep 0.05")
        end
        assert.is_true(state == nil or state == "Z", "the child still runs: state " .. tostring(state))
    end)
end)
