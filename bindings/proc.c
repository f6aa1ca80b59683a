/*
 * proc.c - child processes started from argv lists (module bkr.proc).
 *
 * Lua API:
 *   proc.spawn{ argv = {"pg_dump", "-d", "db"},          -- a list, never a shell string
 *               env = {PGPASSWORD = "s", UNWANTED = false}, -- adds/overrides; false removes
 *               cwd = "dir",
 *               stdin  = "null" | "pipe" | "inherit",               -- default "null"
 *               stdout = "pipe" | "capture" | "null" | "inherit",   -- default "pipe"
 *               stderr = "capture" | "null" | "inherit" }           -- default "capture"
 *       -> Process | nil, "proc.spawn: pg_dumpx: No such file or directory"
 *   proc.run{ argv = {...}, env = {...}, cwd = "dir", input = "stdin bytes" }
 *       -> { ok = bool, how = "exit"|"signal", code = n, stdout = s, stderr = s,
 *            stdout_truncated = bool } | nil, msg
 *   p:pid()            -> integer
 *   p:wait()           -> true|nil, "exit"|"signal", n   (like os.execute; cached)
 *                         raises "proc.wait: interrupted" after killing the child
 *   p:kill([sig])      -> true | nil, msg   (sig: number or name like "TERM", "SIGKILL")
 *   p:stderr()         -> captured stderr (the last 64 KiB)
 *   p:output()         -> captured stdout (stdout = "capture", the first 64 MiB), truncated flag
 *   p:source([opts])   -> stream source stage reading the child's stdout (stdout = "pipe")
 *   p:sink([opts])     -> stream sink stage writing the child's stdin (stdin = "pipe")
 *   p:close() / __gc / __close
 *                      -> terminates a still-running child (SIGTERM, SIGKILL after 2 s),
 *                         reaps it, closes every pipe
 *
 * The child starts with default signal dispositions and an empty signal mask, and
 * inherits none of our pipes (all of them are O_CLOEXEC). It dies with bkr: SIGKILL as its
 * parent-death signal, so a bkr killed outright leaves no pg_dump or pg_restore running. Captured pipes are drained
 * whenever we wait for the child or do I/O on any of its pipes, so a child that writes
 * a lot of stderr never blocks against us.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "bkr.h"
#include "modules.h"
#include "proc_spawn.h"
#include "stream.h"

extern char **environ;

#define BKR_PROCESS "bkr.proc.Process"
#define toproc(L, i) ((proc *)luaL_checkudata(L, i, BKR_PROCESS))


/* ===================================================================== */
/* Reading options                                                        */
/* ===================================================================== */

/* A string or number field of a table (numbers are converted); anchors the string in
 * the table at `anchor`. Raises on anything else or on an embedded NUL. */
static const char *anchored_string(lua_State *L, int anchor, const char *fn, const char *what)
{
    int t = lua_type(L, -1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        luaL_error(L, "%s: %s must be a string", fn, what);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len)
        luaL_error(L, "%s: %s contains a NUL byte", fn, what);
    lua_pushvalue(L, -1);
    lua_rawseti(L, anchor, (lua_Integer)luaL_len(L, anchor) + 1);
    return s;
}

static int get_mode(lua_State *L, int opts, const char *field, const char *const *names,
                    const int *modes, int dflt, const char *fn)
{
    int t = lua_getfield(L, opts, field);
    int mode = dflt;
    if (t != LUA_TNIL) {
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        int i;
        for (i = 0; s && names[i]; i++)
            if (strcmp(s, names[i]) == 0)
                break;
        if (!s || !names[i])
            luaL_error(L, "%s: bad %s mode '%s'", fn, field, luaL_tolstring(L, -1, NULL));
        mode = modes[i];
    }
    lua_pop(L, 1);
    return mode;
}

/*
 * Read argv, env and cwd from the options table at `opts` into sp, raising on misuse.
 * Everything it allocates stays on the Lua stack (userdata and an anchor table) until
 * the caller returns.
 */
static void plan_read(lua_State *L, int opts, spawn_plan *sp, const char *fn)
{
    lua_newtable(L); /* anchor for converted strings */
    int anchor = lua_gettop(L);

    if (lua_getfield(L, opts, "argv") != LUA_TTABLE)
        luaL_error(L, "%s: argv must be a list of strings", fn);
    int argv_idx = lua_gettop(L);
    lua_Integer argc = luaL_len(L, argv_idx);
    if (argc < 1)
        luaL_error(L, "%s: argv must not be empty", fn);
    if (argc > 1000000)
        luaL_error(L, "%s: argv is too long", fn);
    char **argv = lua_newuserdatauv(L, ((size_t)argc + 1) * sizeof(char *), 0);
    for (lua_Integer i = 1; i <= argc; i++) {
        char what[32];
        snprintf(what, sizeof what, "argv[%lld]", (long long)i);
        lua_geti(L, argv_idx, i);
        argv[i - 1] = (char *)anchored_string(L, anchor, fn, what);
        lua_pop(L, 1);
    }
    argv[argc] = NULL;
    if (argv[0][0] == '\0')
        luaL_error(L, "%s: argv[1] must not be empty", fn);
    sp->argv = argv;

    int t = lua_getfield(L, opts, "env");
    int env_idx = lua_gettop(L);
    if (t == LUA_TNIL) {
        sp->envp = environ;
    } else if (t != LUA_TTABLE) {
        luaL_error(L, "%s: env must be a table", fn);
    } else {
        size_t nover = 0, nenv = 0;
        lua_pushnil(L);
        while (lua_next(L, env_idx)) {
            size_t klen;
            if (lua_type(L, -2) != LUA_TSTRING)
                luaL_error(L, "%s: env keys must be strings", fn);
            const char *k = lua_tolstring(L, -2, &klen);
            if (klen == 0 || strlen(k) != klen || strchr(k, '='))
                luaL_error(L, "%s: bad environment variable name '%s'", fn, k);
            int vt = lua_type(L, -1);
            if (!(vt == LUA_TSTRING || vt == LUA_TNUMBER || (vt == LUA_TBOOLEAN && !lua_toboolean(L, -1))))
                luaL_error(L, "%s: env.%s must be a string or false", fn, k);
            lua_pop(L, 1);
            nover++;
        }
        while (environ[nenv])
            nenv++;
        char **envp = lua_newuserdatauv(L, (nenv + nover + 1) * sizeof(char *), 0);
        size_t k = 0;
        for (size_t i = 0; i < nenv; i++) {
            const char *eq = strchr(environ[i], '=');
            if (!eq)
                continue;
            lua_pushlstring(L, environ[i], (size_t)(eq - environ[i]));
            int overridden = lua_rawget(L, env_idx) != LUA_TNIL;
            lua_pop(L, 1);
            if (!overridden)
                envp[k++] = environ[i];
        }
        lua_pushnil(L);
        while (lua_next(L, env_idx)) {
            if (lua_type(L, -1) != LUA_TBOOLEAN) {
                char what[96];
                snprintf(what, sizeof what, "env.%s", lua_tostring(L, -2));
                const char *v = anchored_string(L, anchor, fn, what);
                lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), v);
                envp[k++] = (char *)anchored_string(L, anchor, fn, what);
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        }
        envp[k] = NULL;
        sp->envp = envp;
    }

    sp->path = "/bin:/usr/bin"; /* what execvp assumes without PATH */
    for (size_t i = 0; sp->envp[i]; i++)
        if (strncmp(sp->envp[i], "PATH=", 5) == 0) {
            sp->path = sp->envp[i] + 5;
            break;
        }
    sp->pathbuf = lua_newuserdatauv(L, strlen(sp->path) + strlen(argv[0]) + 2, 0);

    sp->cwd = NULL;
    if (lua_getfield(L, opts, "cwd") != LUA_TNIL)
        sp->cwd = anchored_string(L, anchor, fn, "cwd");
    lua_pop(L, 1);
}

/* Push a new, closed Process userdata with its metatable. */
static proc *proc_newud(lua_State *L)
{
    proc *p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    p->closed = 1;
    p->fd_in = p->fd_out = p->fd_err = p->pidfd = -1;
    p->err.limit = PROC_STDERR_KEEP;
    p->err.keep_tail = 1;
    p->out.limit = PROC_STDOUT_KEEP;
    luaL_setmetatable(L, BKR_PROCESS);
    return p;
}

/* Spawn with the plan; pushes the Process (return 1) or nil, msg (return 2). */
static int proc_push_spawned(lua_State *L, const spawn_plan *sp, const char *fn)
{
    proc *p = proc_newud(L);
    const char *base = strrchr(sp->argv[0], '/');
    base = base ? base + 1 : sp->argv[0];
    size_t blen = strlen(base);
    if (blen >= sizeof p->name)
        blen = sizeof p->name - 1;
    memcpy(p->name, base, blen);
    p->name[blen] = '\0';
    p->in_mode = sp->in_mode;
    p->out_mode = sp->out_mode;
    p->err_mode = sp->err_mode;

    char msg[1024];
    if (proc_start(p, sp, msg, sizeof msg) < 0)
        return bkr_pushfail(L, NULL, "%s: %s", fn, msg);
    p->closed = 0;
    return 1;
}

/* ===================================================================== */
/* Module functions                                                       */
/* ===================================================================== */

static const char *const in_names[] = { "null", "pipe", "inherit", NULL };
static const int in_modes[] = { MODE_NULL, MODE_PIPE, MODE_INHERIT };
static const char *const out_names[] = { "pipe", "capture", "null", "inherit", NULL };
static const int out_modes[] = { MODE_PIPE, MODE_CAPTURE, MODE_NULL, MODE_INHERIT };
static const char *const err_names[] = { "capture", "null", "inherit", NULL };
static const int err_modes[] = { MODE_CAPTURE, MODE_NULL, MODE_INHERIT };

static int l_spawn(lua_State *L)
{
    static const char *const keys[] = { "argv", "env", "cwd", "stdin", "stdout", "stderr", NULL };
    const char *fn = "proc.spawn";
    spawn_plan sp;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    bkr_check_option_keys(L, 1, fn, keys);
    sp.in_mode = get_mode(L, 1, "stdin", in_names, in_modes, MODE_NULL, fn);
    sp.out_mode = get_mode(L, 1, "stdout", out_names, out_modes, MODE_PIPE, fn);
    sp.err_mode = get_mode(L, 1, "stderr", err_names, err_modes, MODE_CAPTURE, fn);
    plan_read(L, 1, &sp, fn);
    return proc_push_spawned(L, &sp, fn);
}

static void proc_push_tail(lua_State *L, const pbuf *b)
{
    size_t len;
    const char *s = pbuf_view(b, &len);
    lua_pushlstring(L, s, len);
}

static int proc_pushstatus(lua_State *L, const proc *p)
{
    int st = p->wstatus;
    if (WIFSIGNALED(st)) {
        luaL_pushfail(L);
        lua_pushliteral(L, "signal");
        lua_pushinteger(L, WTERMSIG(st));
    } else {
        int code = WIFEXITED(st) ? WEXITSTATUS(st) : 255;
        if (code == 0)
            lua_pushboolean(L, 1);
        else
            luaL_pushfail(L);
        lua_pushliteral(L, "exit");
        lua_pushinteger(L, code);
    }
    return 3;
}

static int l_run(lua_State *L)
{
    static const char *const keys[] = { "argv", "env", "cwd", "input", NULL };
    const char *fn = "proc.run";
    spawn_plan sp;
    size_t in_len = 0;
    const char *input = NULL;
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    bkr_check_option_keys(L, 1, fn, keys);
    if (lua_getfield(L, 1, "input") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: input must be a string", fn);
        input = lua_tolstring(L, -1, &in_len); /* anchored by the options table */
    }
    lua_pop(L, 1);
    sp.in_mode = input ? MODE_PIPE : MODE_NULL;
    sp.out_mode = MODE_CAPTURE;
    sp.err_mode = MODE_CAPTURE;
    plan_read(L, 1, &sp, fn);
    if (proc_push_spawned(L, &sp, fn) != 1)
        return 2;
    proc *p = toproc(L, -1);

    size_t pos = 0;
    int interrupted = 0;
    while (p->fd_in >= 0 && pos < in_len) {
        if (bkr_interrupted()) {
            interrupted = 1;
            break;
        }
        int rev = proc_pump(p, p->fd_in, POLLOUT, PROC_TICK_MS, 0);
        if (rev < 0)
            break;
        if (!rev)
            continue;
        ssize_t n = write(p->fd_in, input + pos, in_len - pos);
        if (n > 0)
            pos += (size_t)n;
        else if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        else
            break; /* EPIPE: it stopped reading; its status tells the rest */
    }
    proc_close_fd(&p->fd_in);
    int r = interrupted ? 2 : proc_reap(p, -1, 1);
    if (r != 0) {
        int e = errno;
        proc_release(p); /* kills and reaps */
        if (r == 2)
            return bkr_raise_interrupted(L, fn);
        return bkr_pusherrno(L, e, "%s: waiting for %s", fn, p->name);
    }

    lua_createtable(L, 0, 6);
    int st = p->wstatus;
    lua_pushboolean(L, proc_exited_ok(p));
    lua_setfield(L, -2, "ok");
    lua_pushstring(L, WIFSIGNALED(st) ? "signal" : "exit");
    lua_setfield(L, -2, "how");
    lua_pushinteger(L, WIFSIGNALED(st) ? WTERMSIG(st) : WIFEXITED(st) ? WEXITSTATUS(st) : 255);
    lua_setfield(L, -2, "code");
    proc_push_tail(L, &p->out);
    lua_setfield(L, -2, "stdout");
    proc_push_tail(L, &p->err);
    lua_setfield(L, -2, "stderr");
    lua_pushboolean(L, p->out.truncated);
    lua_setfield(L, -2, "stdout_truncated");
    proc_release(p);
    return 1;
}

/* ===================================================================== */
/* Process methods                                                        */
/* ===================================================================== */

static proc *checkproc(lua_State *L, int i)
{
    proc *p = toproc(L, i);
    if (p->closed)
        luaL_error(L, "proc: attempt to use a closed process");
    return p;
}

static int m_pid(lua_State *L)
{
    proc *p = checkproc(L, 1);
    lua_pushinteger(L, p->pid);
    return 1;
}

static int m_wait(lua_State *L)
{
    proc *p = checkproc(L, 1);
    proc_close_fd(&p->fd_in);
    int r = proc_reap(p, -1, 1);
    if (r == 2) {
        proc_terminate(p);
        return bkr_raise_interrupted(L, "proc.wait");
    }
    if (r < 0)
        return bkr_pusherrno(L, errno, "proc.wait: %s", p->name);
    return proc_pushstatus(L, p);
}

static const struct {
    const char *name;
    int sig;
} signames[] = {
    { "HUP", SIGHUP },   { "INT", SIGINT },   { "QUIT", SIGQUIT }, { "KILL", SIGKILL },
    { "USR1", SIGUSR1 }, { "USR2", SIGUSR2 }, { "PIPE", SIGPIPE }, { "ALRM", SIGALRM },
    { "TERM", SIGTERM }, { "CHLD", SIGCHLD }, { "CONT", SIGCONT }, { "STOP", SIGSTOP },
    { "TSTP", SIGTSTP }, { NULL, 0 },
};

static int m_kill(lua_State *L)
{
    proc *p = checkproc(L, 1);
    int sig = SIGTERM;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Integer n = luaL_checkinteger(L, 2);
        if (n < 0 || n >= NSIG)
            return luaL_argerror(L, 2, "bad signal number");
        sig = (int)n;
    } else if (!lua_isnoneornil(L, 2)) {
        const char *s = luaL_checkstring(L, 2);
        if (strncmp(s, "SIG", 3) == 0)
            s += 3;
        int i;
        for (i = 0; signames[i].name; i++)
            if (strcmp(s, signames[i].name) == 0)
                break;
        if (!signames[i].name)
            return luaL_argerror(L, 2, lua_pushfstring(L, "unknown signal '%s'", lua_tostring(L, 2)));
        sig = signames[i].sig;
    }
    if (!p->running)
        return bkr_pushfail(L, NULL, "proc.kill: %s (pid %d) has already exited", p->name, (int)p->pid);
    if (kill(p->pid, sig) < 0)
        return bkr_pusherrno(L, errno, "proc.kill: %s", p->name);
    lua_pushboolean(L, 1);
    return 1;
}

static int m_stderr(lua_State *L)
{
    proc *p = checkproc(L, 1);
    proc_drain_all(p, 64);
    proc_push_tail(L, &p->err);
    return 1;
}

static int m_output(lua_State *L)
{
    proc *p = checkproc(L, 1);
    proc_drain_all(p, 64);
    proc_push_tail(L, &p->out);
    lua_pushboolean(L, p->out.truncated);
    return 2;
}

static int m_close(lua_State *L)
{
    proc *p = toproc(L, 1);
    proc_release(p); /* harmless on a closed or never-started process */
    return 0;
}

static int m_tostring(lua_State *L)
{
    proc *p = toproc(L, 1);
    if (p->closed)
        lua_pushliteral(L, "bkr.proc.Process (closed)");
    else
        lua_pushfstring(L, "bkr.proc.Process (%s, pid %d)", p->name, (int)p->pid);
    return 1;
}

/* ===================================================================== */
/* Stream stages                                                          */
/* ===================================================================== */

/* Wait for the child after its stream ended; fail unless it exited 0. */
static int stage_wait_ok(proc *p, bkr_error *err)
{
    int r = proc_reap(p, -1, 1);
    if (r == 2)
        return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted");
    if (r < 0)
        return bkr_error_errno(err, errno, "waiting for %s", p->name);
    if (proc_exited_ok(p))
        return 0;
    char msg[sizeof err->msg];
    proc_describe(p, "", msg, sizeof msg);
    return bkr_error_kind(err, BKR_KIND_CHILD_FAILED, "%s", msg);
}

static int source_read(void *self, unsigned char *buf, size_t cap, size_t *len, int *eof,
                       bkr_error *err)
{
    proc *p = self;
    *len = 0;
    *eof = 0;
    if (p->closed)
        return bkr_error_set(err, "%s: the process is closed", p->name);
    for (;;) {
        if (p->fd_out < 0) {
            *eof = 1;
            return 0;
        }
        if (bkr_interrupted())
            return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted");
        int rev = proc_pump(p, p->fd_out, POLLIN, PROC_TICK_MS, 0);
        if (rev < 0)
            return bkr_error_errno(err, errno, "%s: poll", p->name);
        if (!rev)
            continue;
        ssize_t n = read(p->fd_out, buf, cap);
        if (n > 0) {
            *len = (size_t)n;
            return 0;
        }
        if (n == 0) {
            proc_close_fd(&p->fd_out);
            *eof = 1;
            return 0;
        }
        if (errno == EINTR || errno == EAGAIN)
            continue;
        return bkr_error_errno(err, errno, "reading the output of %s", p->name);
    }
}

static int source_finish(void *self, bkr_error *err)
{
    proc *p = self;
    if (p->closed)
        return bkr_error_set(err, "%s: the process is closed", p->name);
    proc_close_fd(&p->fd_out);
    proc_close_fd(&p->fd_in);
    return stage_wait_ok(p, err);
}

static void source_abort(void *self)
{
    proc *p = self;
    proc_close_fd(&p->fd_out);
    proc_close_fd(&p->fd_in);
    proc_terminate(p); /* keeps draining stderr, so p:stderr() still tells what happened */
}

/* The Process owns the child and the pipes; the stage only borrows it. */
static void stage_free(void *self)
{
    (void)self;
}

static const bkr_stage_ops source_ops = {
    .type = "process",
    .kind = BKR_SOURCE,
    .read = source_read,
    .finish = source_finish,
    .abort = source_abort,
    .free = stage_free,
};

/* The child closed its stdin (EPIPE): say why, with its status if it exits soon. */
static int sink_broken(proc *p, bkr_error *err)
{
    proc_close_fd(&p->fd_in);
    int r = proc_reap(p, PROC_EPIPE_WAIT_MS, 1);
    if (r == 2)
        return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted");
    if (r == 1)
        return bkr_error_kind(err, BKR_KIND_CHILD_FAILED, "%s closed its input but is still running", p->name);
    if (r < 0)
        return bkr_error_errno(err, errno, "waiting for %s", p->name);
    char msg[sizeof err->msg];
    proc_describe(p, " before reading all its input", msg, sizeof msg);
    return bkr_error_kind(err, BKR_KIND_CHILD_FAILED, "%s", msg);
}

static int sink_write(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    proc *p = self;
    if (p->closed)
        return bkr_error_set(err, "%s: the process is closed", p->name);
    while (len > 0) {
        if (p->fd_in < 0)
            return bkr_error_set(err, "%s: its input is already closed", p->name);
        if (bkr_interrupted())
            return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted");
        int rev = proc_pump(p, p->fd_in, POLLOUT, PROC_TICK_MS, 0);
        if (rev < 0)
            return bkr_error_errno(err, errno, "%s: poll", p->name);
        if (!rev)
            continue;
        ssize_t n = write(p->fd_in, data, len);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        } else if (n < 0 && errno == EPIPE) {
            return sink_broken(p, err);
        } else {
            return bkr_error_errno(err, errno, "writing to %s", p->name);
        }
    }
    return 0;
}

static int sink_finish(void *self, bkr_error *err)
{
    proc *p = self;
    if (p->closed)
        return bkr_error_set(err, "%s: the process is closed", p->name);
    proc_close_fd(&p->fd_in);
    return stage_wait_ok(p, err);
}

static void sink_abort(void *self)
{
    proc *p = self;
    /* The signal before the end of input: a child that takes a clean end of its input as
     * "all done" (psql --single-transaction commits then) must never see one when the run
     * failed. A fatal signal is pending once kill returns; the child dies before it reads. */
    if (p->running)
        kill(p->pid, SIGTERM);
    proc_close_fd(&p->fd_in);
    proc_terminate(p);
}

static const bkr_stage_ops sink_ops = {
    .type = "process",
    .kind = BKR_SINK,
    .write = sink_write,
    .finish = sink_finish,
    .abort = sink_abort,
    .free = stage_free,
};

static const char *stage_name_opt(lua_State *L, int opts, const char *fn)
{
    if (lua_isnoneornil(L, opts))
        return NULL;
    if (!lua_istable(L, opts))
        luaL_error(L, "%s: options must be a table", fn);
    return bkr_stage_optname(L, opts);
}

static int m_source(lua_State *L)
{
    proc *p = checkproc(L, 1);
    const char *name = stage_name_opt(L, 2, "proc.source");
    if (p->out_mode != MODE_PIPE)
        return luaL_error(L, "proc.source: %s was not spawned with stdout = \"pipe\"", p->name);
    if (p->has_source)
        return luaL_error(L, "proc.source: %s already has a source stage", p->name);
    bkr_stage *st = bkr_stage_new(L, &source_ops);
    bkr_stage_keep(L, lua_gettop(L), 1);
    bkr_stage_open(st, p, name);
    p->has_source = 1;
    return 1;
}

static int m_sink(lua_State *L)
{
    proc *p = checkproc(L, 1);
    const char *name = stage_name_opt(L, 2, "proc.sink");
    if (p->in_mode != MODE_PIPE)
        return luaL_error(L, "proc.sink: %s was not spawned with stdin = \"pipe\"", p->name);
    if (p->has_sink)
        return luaL_error(L, "proc.sink: %s already has a sink stage", p->name);
    bkr_stage *st = bkr_stage_new(L, &sink_ops);
    bkr_stage_keep(L, lua_gettop(L), 1);
    bkr_stage_open(st, p, name);
    p->has_sink = 1;
    return 1;
}

/* ===================================================================== */
/* Registration                                                           */
/* ===================================================================== */

static const luaL_Reg proc_methods[] = {
    { "pid", m_pid },       { "wait", m_wait },     { "kill", m_kill },
    { "stderr", m_stderr }, { "output", m_output }, { "source", m_source },
    { "sink", m_sink },     { "close", m_close },   { NULL, NULL },
};

static const luaL_Reg proc_meta[] = {
    { "__gc", m_close },
    { "__close", m_close },
    { "__tostring", m_tostring },
    { NULL, NULL },
};

static const luaL_Reg proc_funcs[] = {
    { "spawn", l_spawn },
    { "run", l_run },
    { NULL, NULL },
};

int luaopen_bkr_proc(lua_State *L)
{
    bkr_createmeta(L, BKR_PROCESS, proc_meta, proc_methods);
    luaL_newlib(L, proc_funcs);
    return 1;
}
