-- fs_spec.lua - bkr.fs: durable, atomic file operations, locks, free space.
-- Results are checked with independent tools (sha256sum, stat, df, flock from
-- util-linux) and with other processes, never with bkr.fs itself.

local fs = require "bkr.fs"
local lfs = require "lfs"

local util = require "support.util"

local BKR = os.getenv("BKR_BIN") or "./bkr"
local q, read, write, names = util.quote, util.read, util.write, util.listdir

-- Output of a shell command, trailing newline removed.
local function sh(cmd)
    return (util.sh(cmd):gsub("\n$", ""))
end

-- True when the shell command exits 0.
local function ok(cmd)
    return os.execute(cmd) == true
end

local function exists(path)
    return lfs.symlinkattributes(path) ~= nil
end

local function perms(path)
    return sh("stat -c %a " .. q(path))
end

local function our_pid()
    return tonumber(util.pid())
end

-- Wait until path exists (another process signals with it), up to 10 s.
local function wait_for(path)
    for _ = 1, 200 do
        if exists(path) then return true end
        os.execute("sleep 0.05")
    end
    return false
end

-- The shell command that runs a Lua script in another bkr process.
local function bkr_command(dir, source, args, env)
    local script = dir .. "/script.lua"
    write(script, source)
    return (env or "") .. " " .. q(BKR) .. " run " .. q(script) .. " " .. (args or "")
end

-- Run a Lua script in another bkr process; returns its trimmed stdout.
local function bkr_run(dir, source, args, env)
    return sh(bkr_command(dir, source, args, env))
end

local dir
before_each(function()
    dir = sh("mktemp -d " .. q((os.getenv("BKR_TEST_TMP") or "/tmp") .. "/fs-spec.XXXXXX"))
end)
after_each(function()
    os.execute("rm -rf " .. q(dir))
end)

describe("fs.fsync", function()
    it("flushes a file and a directory", function()
        write(dir .. "/f", "data")
        assert.is_true(fs.fsync(dir .. "/f"))
        assert.is_true(fs.fsync(dir))
    end)

    it("returns nil and a message naming the path when it is missing", function()
        local r, msg = fs.fsync(dir .. "/missing")
        assert.is_nil(r)
        assert.equal("fs.fsync: " .. dir .. "/missing: No such file or directory", msg)
    end)
end)

describe("fs.rename", function()
    it("moves a file, also into another directory", function()
        write(dir .. "/a", "content")
        assert.is_true(lfs.mkdir(dir .. "/sub"))
        assert.is_true(fs.rename(dir .. "/a", dir .. "/b"))
        assert.is_false(exists(dir .. "/a"))
        assert.equal("content", read(dir .. "/b"))
        assert.is_true(fs.rename(dir .. "/b", dir .. "/sub/c"))
        assert.same({ "c" }, names(dir .. "/sub"))
        assert.equal("content", read(dir .. "/sub/c"))
    end)

    it("replaces the destination so that a concurrent reader never sees it missing or partial", function()
        local a, b = string.rep("A", 100000), string.rep("B", 100000)
        write(dir .. "/ref-a", a)
        write(dir .. "/ref-b", b)
        local hashes = { [util.sha256sum(dir .. "/ref-a")] = true, [util.sha256sum(dir .. "/ref-b")] = true }
        write(dir .. "/dest", a)
        -- a reader in another process hashes the destination over and over
        os.execute(("sh -c 'i=0; while [ ! -e %s ] && [ $i -lt 20000 ]; do sha256sum %s >>%s 2>&1; "
            .. "i=$((i+1)); done; touch %s' &"):format(q(dir .. "/stop"), q(dir .. "/dest"),
            q(dir .. "/log"), q(dir .. "/done")))
        assert.is_true(wait_for(dir .. "/log"))
        for i = 1, 400 do
            write(dir .. "/next", i % 2 == 0 and a or b)
            assert.is_true(fs.rename(dir .. "/next", dir .. "/dest"))
        end
        write(dir .. "/stop", "")
        assert.is_true(wait_for(dir .. "/done"))
        local lines = 0
        for line in io.lines(dir .. "/log") do
            lines = lines + 1
            local h = line:match("^(%x+)  ")
            assert(h and hashes[h], "reader saw: " .. line)
        end
        assert.is_true(lines > 1)
    end)

    it("returns nil and a message when the source is missing, leaving the destination", function()
        write(dir .. "/dest", "keep")
        local r, msg = fs.rename(dir .. "/nope", dir .. "/dest")
        assert.is_nil(r)
        assert.equal("fs.rename: " .. dir .. "/nope -> " .. dir .. "/dest: No such file or directory", msg)
        assert.equal("keep", read(dir .. "/dest"))
    end)
end)

describe("fs.read_file", function()
    it("reads a whole regular file, binary included", function()
        write(dir .. "/f", "a\0b\nc")
        assert.equal("a\0b\nc", fs.read_file(dir .. "/f"))
        write(dir .. "/empty", "")
        assert.equal("", fs.read_file(dir .. "/empty"))
    end)

    it("refuses a symlink (unless follow), a FIFO, a device and a directory, with kind not_regular", function()
        write(dir .. "/real", "secret")
        sh("ln -s real " .. q(dir .. "/link") .. " && mkfifo " .. q(dir .. "/fifo"))
        for _, path in ipairs({ dir .. "/link", dir .. "/fifo", "/dev/zero", dir }) do
            local data, msg, kind = fs.read_file(path)
            assert.is_nil(data, path)
            assert.matches("not a regular file", msg)
            assert.equal("not_regular", kind)
        end
        assert.equal("secret", fs.read_file(dir .. "/link", { follow = true }))
    end)

    it("refuses a file larger than opts.max, and names a missing file's kind", function()
        write(dir .. "/big", string.rep("x", 5000))
        local data, msg, kind = fs.read_file(dir .. "/big", { max = 4096 })
        assert.is_nil(data)
        assert.matches("larger than 4096 bytes", msg)
        assert.equal("too_large", kind)
        assert.equal(5000, #fs.read_file(dir .. "/big", { max = 5000 }))
        data, msg, kind = fs.read_file(dir .. "/none")
        assert.is_nil(data)
        assert.equal("fs.read_file: " .. dir .. "/none: No such file or directory", msg)
        assert.equal("missing", kind)
    end)
end)

describe("fs.write_file", function()
    it("writes exactly the given bytes, binary included", function()
        local parts = {}
        for i = 0, 300000 do parts[#parts + 1] = string.char((i * 7 + (i >> 8)) % 256) end
        local data = table.concat(parts)
        write(dir .. "/reference", data)
        assert.is_true(fs.write_file(dir .. "/out", data))
        assert.equal(util.sha256sum(dir .. "/reference"), util.sha256sum(dir .. "/out"))
        assert.is_true(fs.write_file(dir .. "/empty", ""))
        assert.equal("0", sh("stat -c %s " .. q(dir .. "/empty")))
    end)

    it("applies the mode given, 0600 by default (as stream.to_file)", function()
        assert.is_true(fs.write_file(dir .. "/secret", "x", { mode = "0600" }))
        assert.equal("600", perms(dir .. "/secret"))
        assert.is_true(fs.write_file(dir .. "/shared", "x", { mode = tonumber("640", 8) }))
        assert.equal("640", perms(dir .. "/shared"))
        assert.is_true(fs.write_file(dir .. "/plain", "x"))
        assert.equal("600", perms(dir .. "/plain"))
    end)

    it("applies the mode exactly whatever the umask", function()
        local out = bkr_run(dir, [[
            local fs = require "bkr.fs"
            assert(fs.write_file(arg[1] .. "/default", "x"))
            assert(fs.write_file(arg[1] .. "/loose", "x", {mode = "0666"}))
            print("written")
        ]], q(dir), "umask 077;")
        assert.equal("written", out)
        assert.equal("600", perms(dir .. "/default"))
        assert.equal("666", perms(dir .. "/loose"))
    end)

    it("with overwrite = true replaces an existing file and leaves no temporary file behind", function()
        write(dir .. "/f", "old content that is longer")
        assert.is_true(fs.write_file(dir .. "/f", "new", { overwrite = true }))
        assert.is_true(fs.write_file(dir .. "/g", "other"))
        assert.equal("new", read(dir .. "/f"))
        assert.same({ "f", "g" }, names(dir))
    end)

    it("refuses an existing file by default and leaves it unchanged", function()
        write(dir .. "/f", "precious")
        local before = util.sha256sum(dir .. "/f")
        local r, msg, kind = fs.write_file(dir .. "/f", "clobber")
        assert.is_nil(r)
        assert.equal("fs.write_file: " .. dir .. "/f: File exists", msg)
        assert.equal("exists", kind)
        assert.equal(before, util.sha256sum(dir .. "/f"))
        assert.same({ "f" }, names(dir))
    end)

    it("with overwrite = false creates a new file", function()
        assert.is_true(fs.write_file(dir .. "/new", "fresh", { overwrite = false, mode = "0600" }))
        assert.equal("fresh", read(dir .. "/new"))
        assert.equal("600", perms(dir .. "/new"))
        assert.same({ "new" }, names(dir))
    end)

    it("fails with nil and a message in a directory that does not exist, creating nothing", function()
        local r, msg = fs.write_file(dir .. "/nodir/f", "x")
        assert.is_nil(r)
        assert.equal("fs.write_file: " .. dir .. "/nodir/f: No such file or directory", msg)
        assert.same({}, names(dir))
    end)

    it("fails with nil and a message when the parent is a regular file", function()
        write(dir .. "/file", "keep")
        local r, msg = fs.write_file(dir .. "/file/f", "x")
        assert.is_nil(r)
        assert.equal("fs.write_file: " .. dir .. "/file/f: Not a directory", msg)
        assert.equal("keep", read(dir .. "/file"))
        assert.same({ "file" }, names(dir))
    end)

    it("removes its temporary file when the final rename fails", function()
        assert.is_true(lfs.mkdir(dir .. "/target"))
        write(dir .. "/target/inside", "keep")
        local r, msg = fs.write_file(dir .. "/target", string.rep("x", 100000), { overwrite = true })
        assert.is_nil(r)
        assert.equal("fs.write_file: " .. dir .. "/target: Is a directory", msg)
        assert.same({ "target" }, names(dir))
        assert.same({ "inside" }, names(dir .. "/target"))
    end)

    it("raises for a mode Lua wrote in decimal or a bad option", function()
        assert.has_error(function() fs.write_file(dir .. "/f", "x", { mode = 600 }) end)
        assert.has_error(function() fs.write_file(dir .. "/f", "x", { mode = "rw" }) end)
        assert.has_error(function() fs.write_file(dir .. "/f", "x", { overwrite = "no" }) end)
        assert.has_error(function() fs.write_file(dir .. "/f", {}) end)
        assert.same({}, names(dir))
    end)
end)

describe("fs.lock", function()
    local path
    before_each(function() path = dir .. "/lock" end)

    local function free_for_others()
        return ok("flock -n " .. q(path) .. " -c true")
    end

    it("holds an exclusive lock that other processes cannot take until it is closed", function()
        local lock = assert(fs.lock(path))
        assert.is_false(free_for_others())
        assert.is_true(lock:close())
        assert.is_true(free_for_others())
    end)

    it("writes our pid into the file and empties it (leaving it in place) when released", function()
        local lock = assert(fs.lock(path))
        assert.equal(our_pid(), lock:pid())
        assert.equal(our_pid() .. "\n", read(path))
        lock:close()
        assert.equal("", read(path))
    end)

    it("is released by garbage collection", function()
        local lock = assert(fs.lock(path))
        assert.is_false(free_for_others())
        lock = nil -- luacheck: ignore
        collectgarbage()
        collectgarbage()
        assert.is_true(free_for_others())
    end)

    it("is released at the end of a to-be-closed scope", function()
        do
            local lock <close> = assert(fs.lock(path))
            assert.is_false(free_for_others())
        end
        assert.is_true(free_for_others())
    end)

    it("names the pid of another bkr process that holds it", function()
        local started = os.execute(bkr_command(dir, [[
            local fs = require "bkr.fs"
            local lock = assert(fs.lock(arg[1]))
            local f = io.open(arg[2] .. ".tmp", "w"); f:write(lock:pid()); f:close()
            os.rename(arg[2] .. ".tmp", arg[2])
            for _ = 1, 200 do
                if io.open(arg[3]) then break end
                os.execute("sleep 0.05")
            end
            lock:close()
        ]], q(path) .. " " .. q(dir .. "/ready") .. " " .. q(dir .. "/stop") .. " &"))
        assert.is_true(started)
        assert.is_true(wait_for(dir .. "/ready"))
        local pid = read(dir .. "/ready")
        local r, msg, code = fs.lock(path)
        write(dir .. "/stop", "")
        assert.is_nil(r)
        assert.equal("fs.lock: " .. path .. " is held by process " .. pid, msg)
        assert.equal("locked", code)
        -- once the holder has let go, the lock is ours
        local lock
        for _ = 1, 200 do
            lock = fs.lock(path)
            if lock then break end
            os.execute("sleep 0.05")
        end
        assert.is_truthy(lock)
        lock:close()
    end)

    it("says 'another process' when the holder wrote no pid", function()
        os.execute(("flock %s sh -c 'touch %s; i=0; while [ ! -e %s ] && [ $i -lt 200 ]; do sleep 0.05; "
            .. "i=$((i+1)); done' &"):format(q(path), q(dir .. "/ready"), q(dir .. "/stop")))
        assert.is_true(wait_for(dir .. "/ready"))
        local r, msg, code = fs.lock(path)
        write(dir .. "/stop", "")
        assert.is_nil(r)
        assert.equal("fs.lock: " .. path .. " is held by another process", msg)
        assert.equal("locked", code)
    end)

    it("cannot be taken twice, even by the same process", function()
        local lock = assert(fs.lock(path))
        local r, msg, code = fs.lock(path)
        assert.is_nil(r)
        assert.equal("fs.lock: " .. path .. " is held by process " .. our_pid(), msg)
        assert.equal("locked", code)
        lock:close()
    end)

    it("returns nil, a message and the errno's kind, not 'locked', when the file cannot be opened", function()
        local r, msg, code = fs.lock(dir .. "/nodir/lock")
        assert.is_nil(r)
        assert.equal("fs.lock: " .. dir .. "/nodir/lock: No such file or directory", msg)
        assert.equal("missing", code)
    end)

    it("can be closed twice, and raises when used after close", function()
        local lock = assert(fs.lock(path))
        assert.is_true(lock:close())
        assert.is_true(lock:close())
        assert.has_error(function() lock:pid() end, "attempt to use a closed lock")
        assert.equal("bkr.fs.Lock (closed)", tostring(lock))
    end)
end)

describe("fs.free_space", function()
    it("reports available and total bytes as df does", function()
        local avail, total = fs.free_space(dir)
        assert.is_true(math.type(avail) == "integer" and avail > 0)
        assert.is_true(math.type(total) == "integer" and total >= avail)
        local df_avail = tonumber(sh("df -B1 --output=avail " .. q(dir) .. " | tail -n 1"))
        local df_total = tonumber(sh("df -B1 --output=size " .. q(dir) .. " | tail -n 1"))
        assert.is_true(math.abs(avail - df_avail) <= df_avail / 100)
        assert.is_true(math.abs(total - df_total) <= df_total / 100)
    end)

    it("returns nil and a message for a missing path", function()
        local r, msg = fs.free_space(dir .. "/missing")
        assert.is_nil(r)
        assert.equal("fs.free_space: " .. dir .. "/missing: No such file or directory", msg)
    end)
end)

describe("fs.chmod and fs.mode", function()
    it("set and read permission bits", function()
        write(dir .. "/f", "x")
        assert.is_true(fs.chmod(dir .. "/f", "0640"))
        assert.equal("640", perms(dir .. "/f"))
        assert.equal(tonumber("640", 8), fs.mode(dir .. "/f"))
        assert.is_true(fs.chmod(dir .. "/f", tonumber("600", 8)))
        assert.equal("600", perms(dir .. "/f"))
        assert.is_true(fs.chmod(dir, "0711"))
        assert.equal(tonumber("711", 8), fs.mode(dir))
    end)

    it("return nil and a message for a missing path", function()
        local r, msg = fs.chmod(dir .. "/missing", "0600")
        assert.is_nil(r)
        assert.equal("fs.chmod: " .. dir .. "/missing: No such file or directory", msg)
        r, msg = fs.mode(dir .. "/missing")
        assert.is_nil(r)
        assert.equal("fs.mode: " .. dir .. "/missing: No such file or directory", msg)
    end)

    it("raise for a decimal or out-of-range mode", function()
        write(dir .. "/f", "x")
        assert.has_error(function() fs.chmod(dir .. "/f", 644) end)
        assert.has_error(function() fs.chmod(dir .. "/f", "4755") end)
        assert.has_error(function() fs.chmod(dir .. "/f", "9") end)
        assert.equal("644", perms(dir .. "/f"))
    end)
end)

describe("fs.mkdirs", function()
    it("creates every missing directory with the mode given", function()
        assert.is_true(fs.mkdirs(dir .. "/a/b//c/", "0700"))
        for _, p in ipairs({ "/a", "/a/b", "/a/b/c" }) do
            assert.equal("directory", lfs.attributes(dir .. p, "mode"))
            assert.equal("700", perms(dir .. p))
        end
    end)

    it("uses 0755 less the umask by default", function()
        local umask = tonumber(sh("umask"), 8)
        assert.is_true(fs.mkdirs(dir .. "/d"))
        assert.equal(tonumber("755", 8) & ~umask, fs.mode(dir .. "/d"))
        assert.equal(string.format("%o", tonumber("755", 8) & ~umask), perms(dir .. "/d"))
    end)

    it("accepts directories that exist, leaving them as they are", function()
        assert.is_true(lfs.mkdir(dir .. "/x"))
        write(dir .. "/x/keep", "k")
        assert.is_true(fs.mkdirs(dir .. "/x"))
        assert.is_true(fs.mkdirs(dir .. "/x/y"))
        assert.equal("k", read(dir .. "/x/keep"))
        assert.same({ "keep", "y" }, names(dir .. "/x"))
    end)

    it("fails with nil and a message naming the component that is a file", function()
        write(dir .. "/file", "x")
        local r, msg = fs.mkdirs(dir .. "/file/sub/deeper")
        assert.is_nil(r)
        assert.equal("fs.mkdirs: " .. dir .. "/file: Not a directory", msg)
        r, msg = fs.mkdirs(dir .. "/file")
        assert.is_nil(r)
        assert.equal("fs.mkdirs: " .. dir .. "/file: Not a directory", msg)
        assert.same({ "file" }, names(dir))
    end)
end)

describe("fs.owner, fs.chown, fs.user and the owner option", function()
    -- postgres exists on every machine the suite runs on (the test cluster runs as it)
    local pg_uid = tonumber(sh("id -u postgres"))
    local pg_gid = tonumber(sh("id -g postgres"))
    local function owner(path) return sh("stat -c %U:%G " .. q(path)) end

    it("reads the owner of a path itself, never a symlink's target, with the user's name", function()
        write(dir .. "/f", "x")
        sh("chown postgres:postgres " .. q(dir .. "/f") .. " && ln -s f " .. q(dir .. "/link"))
        local uid, gid, name = fs.owner(dir .. "/f")
        assert.same({ pg_uid, pg_gid, "postgres" }, { uid, gid, name })
        uid, gid, name = fs.owner(dir .. "/link")
        assert.same({ 0, 0, "root" }, { uid, gid, name })
        local r, msg, kind = fs.owner(dir .. "/missing")
        assert.is_nil(r)
        assert.equal("fs.owner: " .. dir .. "/missing: No such file or directory", msg)
        assert.equal("missing", kind)
        sh("chown 54321:54321 " .. q(dir .. "/f"))
        uid, gid, name = fs.owner(dir .. "/f")
        assert.same({ 54321, 54321 }, { uid, gid })
        assert.is_nil(name)
    end)

    it("chowns a path, and a symlink itself rather than its target", function()
        write(dir .. "/f", "x")
        sh("ln -s f " .. q(dir .. "/link"))
        assert.is_true(fs.chown(dir .. "/f", pg_uid, pg_gid))
        assert.equal("postgres:postgres", owner(dir .. "/f"))
        assert.is_true(fs.chown(dir .. "/link", 0, 0))
        assert.equal("postgres:postgres", owner(dir .. "/f"))
        assert.equal("root:root", sh("stat -c %U:%G " .. q(dir .. "/link")))
        local r, msg, kind = fs.chown(dir .. "/missing", 0, 0)
        assert.is_nil(r)
        assert.equal("missing", kind)
        assert.matches("^fs.chown: ", msg)
        assert.has_error(function() fs.chown(dir .. "/f", -1, 0) end)
    end)

    it("names the user bkr runs as, and looks a user up by name", function()
        local uid, gid, name = fs.user()
        assert.same({ tonumber(sh("id -u")), tonumber(sh("id -g")), sh("id -un") }, { uid, gid, name })
        uid, gid, name = fs.user("postgres")
        assert.same({ pg_uid, pg_gid, "postgres" }, { uid, gid, name })
        local r, msg, kind = fs.user("no-such-user-here")
        assert.is_nil(r)
        assert.equal("fs.user: no user named no-such-user-here", msg)
        assert.equal("missing", kind)
    end)

    it("gives what write_file, to_file, append, lock and mkdirs create to opts.owner", function()
        local opts = { owner = { pg_uid, pg_gid } }
        assert.is_true(fs.mkdirs(dir .. "/r/daily", "0750", opts))
        assert.equal("postgres:postgres", owner(dir .. "/r"))
        assert.equal("postgres:postgres", owner(dir .. "/r/daily"))
        assert.is_true(fs.write_file(dir .. "/r/daily/m.json", "{}", opts))
        assert.is_true(fs.write_file(dir .. "/r/daily/m.json", "{ }", { owner = opts.owner, overwrite = true }))
        assert.equal("postgres:postgres", owner(dir .. "/r/daily/m.json"))
        local stream = require "bkr.stream"
        assert(stream.run{ stream.from_string("dump"), stream.to_file(dir .. "/r/daily/b.sql.gz", opts) })
        assert.equal("postgres:postgres", owner(dir .. "/r/daily/b.sql.gz"))
        write(dir .. "/r/bkr.log", "old\n")
        assert.is_true(fs.append(dir .. "/r/bkr.log", "line\n", opts))
        assert.equal("postgres:postgres", owner(dir .. "/r/bkr.log"))
        local lock = assert(fs.lock(dir .. "/r/.lock", opts))
        assert.equal("postgres:postgres", owner(dir .. "/r/.lock"))
        lock:close()
        -- mkdirs gives away only what it created
        assert.is_true(fs.mkdirs(dir .. "/r/daily/x", "0750", { owner = { 0, 0 } }))
        assert.equal("postgres:postgres", owner(dir .. "/r/daily"))
        -- postgres can read every file, as the repository's owner must
        sh("chmod 755 " .. q(dir))
        assert.equal("{ }", sh("runuser -u postgres -- cat " .. q(dir .. "/r/daily/m.json")))
        assert.has_error(function() fs.write_file(dir .. "/r/x", "x", { owner = { "postgres" } }) end)
    end)

    it("chowns the temporary file before the final name exists (strace: fchown precedes link)", function()
        if sh("command -v strace") == "" then return pending("strace not installed") end
        local script = dir .. "/w.lua"
        write(script, "local fs = require 'bkr.fs'\nassert(fs.write_file(arg[1], 'x', { owner = { "
            .. pg_uid .. ", " .. pg_gid .. " } }))\n")
        local trace = util.sh("strace -f -e trace=fchown,link,rename " .. q(BKR) .. " run " .. q(script) .. " "
            .. q(dir .. "/final") .. " 2>&1")
        local chown_at = trace:find("fchown%(")
        local link_at = trace:find("link%([^\n]*final")
        assert.is_truthy(chown_at, trace)
        assert.is_truthy(link_at, trace)
        assert.is_true(chown_at < link_at, trace)
    end)
end)

describe("fs.temp_dir and fs.remove_tree", function()
    it("temp_dir makes a new private directory under $TMPDIR with the prefix", function()
        local out = bkr_run(dir, [[
            local fs = require "bkr.fs"
            print(fs.temp_dir("backup"))
            print(fs.temp_dir())
        ]], "", "TMPDIR=" .. q(dir))
        local first, second = out:match("^(.-)\n(.*)$")
        -- PREFIX.PID.XXXXXX: the pid tells a later run whether the one that made it is gone
        assert.is_truthy(first:match("^" .. dir:gsub("%p", "%%%0") .. "/backup%.%d+%.[%w]+$"), first)
        assert.is_truthy(second:match("^" .. dir:gsub("%p", "%%%0") .. "/bkr%.%d+%.[%w]+$"), second)
        assert.equal("700", perms(first))
        assert.same({}, names(first))
    end)

    it("temp_dir uses /tmp when $TMPDIR is unset, and each call is a new directory", function()
        local tmpdir = os.getenv("TMPDIR")
        local base = (tmpdir and tmpdir ~= "") and tmpdir or "/tmp"
        local a = fs.temp_dir("bkr-spec")
        local b = fs.temp_dir("bkr-spec")
        local unset = bkr_run(dir, [[print(require("bkr.fs").temp_dir("bkr-spec"))]], "", "env -u TMPDIR")
        finally(function() os.execute("rmdir " .. q(a) .. " " .. q(b) .. " " .. q(unset)) end)
        assert.equal(base .. "/bkr-spec.", a:sub(1, #base + 10))
        assert.is_truthy(unset:match("^/tmp/bkr%-spec%.%d+%.%w+$"))
        assert.equal("directory", lfs.attributes(unset, "mode"))
        assert.are_not.equal(a, b)
        assert.equal("directory", lfs.attributes(a, "mode"))
        assert.has_error(function() fs.temp_dir("a/b") end)
    end)

    it("temp_dir puts the path into a holder table, raw, before it returns (for cleanup that an interrupt cannot skip)", function()
        local writes = 0
        local holder = setmetatable({}, { __newindex = function(t, k, v) writes = writes + 1; rawset(t, k, v) end })
        local path = fs.temp_dir("bkr-spec", holder)
        finally(function() os.execute("rmdir " .. q(path)) end)
        assert.equal(path, rawget(holder, "path"))
        assert.equal(0, writes)
        assert.has_error(function() fs.temp_dir("bkr-spec", "not a table") end)
    end)

    it("remove_tree removes files, subdirectories and symlinks without following them", function()
        local tree = dir .. "/tree"
        assert.is_true(ok("mkdir -p " .. q(tree .. "/a/b/c") .. " " .. q(dir .. "/outside")))
        write(tree .. "/f", "x")
        write(tree .. "/a/b/c/deep", "x")
        write(tree .. "/a/.hidden", "x")
        write(dir .. "/outside/precious", "keep")
        assert.is_true(ok("ln -s " .. q(dir .. "/outside") .. " " .. q(tree .. "/a/link")))
        assert.is_true(ok("ln -s /nonexistent " .. q(tree .. "/dangling")))
        assert.is_true(ok("mkfifo " .. q(tree .. "/fifo")))
        assert.is_true(ok("chmod 000 " .. q(tree .. "/a/b")))
        assert.is_true(fs.remove_tree(tree))
        assert.is_false(exists(tree))
        assert.equal("keep", read(dir .. "/outside/precious"))
    end)

    it("remove_tree removes a single file, and a symlink rather than its target", function()
        write(dir .. "/f", "x")
        assert.is_true(fs.remove_tree(dir .. "/f"))
        assert.is_true(lfs.mkdir(dir .. "/target"))
        write(dir .. "/target/keep", "k")
        assert.is_true(ok("ln -s target " .. q(dir .. "/link")))
        assert.is_true(fs.remove_tree(dir .. "/link"))
        assert.same({ "target" }, names(dir))
        assert.same({ "keep" }, names(dir .. "/target"))
    end)

    it("remove_tree returns nil and a message for a missing path", function()
        local r, msg = fs.remove_tree(dir .. "/missing")
        assert.is_nil(r)
        assert.equal("fs.remove_tree: " .. dir .. "/missing: No such file or directory", msg)
    end)

    it("remove_tree refuses to remove / or an empty path", function()
        assert.has_error(function() fs.remove_tree("/") end)
        assert.has_error(function() fs.remove_tree("///") end)
        assert.has_error(function() fs.remove_tree("") end)
    end)
end)

describe("bkr.fs", function()
    it("leaks no file descriptors, whether operations succeed or fail", function()
        collectgarbage()
        collectgarbage()
        local before = util.fd_count()
        for i = 1, 50 do
            local p = dir .. "/f" .. i
            fs.write_file(p, "data")
            fs.write_file(p, "data", { overwrite = false })
            fs.write_file(dir .. "/nodir/f", "x")
            fs.fsync(p)
            fs.fsync(dir .. "/missing")
            fs.rename(p, p .. ".moved")
            fs.rename(p, p .. ".again")
            local lock = assert(fs.lock(dir .. "/lock"))
            assert.is_nil(fs.lock(dir .. "/lock"))
            lock:close()
            local unclosed = fs.lock(dir .. "/lock2") -- luacheck: ignore
            unclosed = nil -- luacheck: ignore
            fs.lock(dir .. "/nodir/lock")
            fs.free_space(dir)
            fs.mkdirs(dir .. "/t" .. i .. "/a/b")
            fs.mkdirs(p .. ".moved/x")
            fs.remove_tree(dir .. "/t" .. i)
            fs.remove_tree(dir .. "/missing")
        end
        collectgarbage()
        collectgarbage()
        assert.equal(before, util.fd_count())
    end)
end)
