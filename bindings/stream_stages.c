/*
 * stream_stages.c - the built-in stages of bkr.stream that need nothing but POSIX: file and
 * string sources, the atomic file sink (atomic_file.c), string, null and stdout sinks, and
 * the count, tail and progress filters. Each is one bkr_stage_ops (stream.h); the core in
 * stream.c knows none of them. Their Lua API is listed in stream.c's header.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"
#include "atomic_file.h"
#include "stream.h"

/* ================================================================ file source */

typedef struct file_source {
    int fd;
    char *path;
} file_source;

static int file_source_read(void *self, unsigned char *buf, size_t cap, size_t *len, int *eof,
                            bkr_error *err)
{
    file_source *fs = self;
    for (;;) {
        ssize_t n = read(fs->fd, buf, cap);
        if (n < 0 && errno == EINTR) {
            if (bkr_interrupted())
                return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted");
            continue;
        }
        if (n < 0)
            return bkr_error_errno(err, errno, "read %s", fs->path);
        *len = (size_t)n;
        *eof = n == 0;
        return 0;
    }
}

static void file_source_free(void *self)
{
    file_source *fs = self;
    if (fs->fd >= 0)
        close(fs->fd);
    free(fs->path);
    free(fs);
}

static const bkr_stage_ops file_source_ops = {
    .type = "file", .kind = BKR_SOURCE, .read = file_source_read, .free = file_source_free,
};

static int stream_from_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    const char *name = bkr_stage_optname(L, 2);
    int follow = bkr_opt_follow(L, 2);
    bkr_stage *st = bkr_stage_new(L, &file_source_ops);
    int fd = bkr_open_regular(path, follow);
    if (fd < 0)
        return bkr_push_open_failure(L, "stream.from_file", path, follow);
    file_source *fs = malloc(sizeof *fs);
    char *copy = strdup(path);
    if (fs == NULL || copy == NULL) {
        close(fd);
        free(fs);
        free(copy);
        return luaL_error(L, "stream.from_file: out of memory");
    }
    fs->fd = fd;
    fs->path = copy;
    bkr_stage_open(st, fs, name);
    return 1;
}

/* ================================================================ string source */

typedef struct string_source {
    const char *data; /* owned by the Lua string the stage keeps */
    size_t len, pos;
} string_source;

static int string_source_read(void *self, unsigned char *buf, size_t cap, size_t *len, int *eof,
                              bkr_error *err)
{
    string_source *ss = self;
    size_t n = ss->len - ss->pos < cap ? ss->len - ss->pos : cap;
    memcpy(buf, ss->data + ss->pos, n);
    ss->pos += n;
    *len = n;
    *eof = ss->pos == ss->len;
    return 0;
}

static const bkr_stage_ops string_source_ops = {
    .type = "string", .kind = BKR_SOURCE, .read = string_source_read, .free = free,
};

static int stream_from_string(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    const char *name = bkr_stage_optname(L, 2);
    bkr_stage *st = bkr_stage_new(L, &string_source_ops);
    string_source *ss = malloc(sizeof *ss);
    if (ss == NULL)
        return luaL_error(L, "stream.from_string: out of memory");
    ss->data = data;
    ss->len = len;
    ss->pos = 0;
    bkr_stage_keep(L, -1, 1);
    bkr_stage_open(st, ss, name);
    return 1;
}

/* ================================================================ atomic file sink */

/* The writer itself is atomic_file.c, shared with fs.write_file. */
typedef struct file_sink {
    atomic_file file;
} file_sink;

static int file_sink_write(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    file_sink *fs = self;
    int e = atomic_file_write(&fs->file, data, len);
    if (e == EINTR)
        return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted");
    if (e != 0)
        return bkr_error_errno(err, e, "write %s", fs->file.tmp);
    return 0;
}

static void file_sink_abort(void *self)
{
    file_sink *fs = self;
    if (fs->file.fd >= 0)
        close(fs->file.fd);
    fs->file.fd = -1;
    if (fs->file.tmp != NULL)
        unlink(fs->file.tmp);
    free(fs->file.tmp);
    fs->file.tmp = NULL;
}

/* Data on disk under the temporary name first, then the name, then the name on disk. */
static int file_sink_finish(void *self, bkr_error *err)
{
    file_sink *fs = self;
    const char *what = "";
    int e = atomic_file_commit(&fs->file, &what);
    if (e == 0)
        return 0;
    if (e == EEXIST)
        return bkr_error_errno(err, e, "%s", fs->file.path);
    return bkr_error_errno(err, e, "%s %s", what, fs->file.path);
}

static int file_sink_result(void *self, lua_State *L)
{
    file_sink *fs = self;
    lua_pushstring(L, fs->file.path);
    return 1;
}

static void file_sink_free(void *self)
{
    file_sink *fs = self;
    atomic_file_abort(&fs->file);
    free(fs);
}

static const bkr_stage_ops file_sink_ops = {
    .type = "file", .kind = BKR_SINK, .write = file_sink_write, .finish = file_sink_finish,
    .abort = file_sink_abort, .result = file_sink_result, .free = file_sink_free,
};

static int stream_to_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    const char *name = bkr_stage_optname(L, 2);
    atomic_file_opts opts;
    atomic_file_checkopts(L, 2, "stream.to_file", &opts);
    bkr_stage *st = bkr_stage_new(L, &file_sink_ops);
    file_sink *fs = calloc(1, sizeof *fs);
    if (fs == NULL)
        return luaL_error(L, "stream.to_file: out of memory");
    int e = atomic_file_open(&fs->file, path, &opts);
    if (e != 0) {
        free(fs);
        if (e == ENOMEM)
            return luaL_error(L, "stream.to_file: out of memory");
        return bkr_pusherrno(L, e, "stream.to_file: cannot create a file beside %s", path);
    }
    bkr_stage_open(st, fs, name);
    return 1;
}

/* ================================================================ string sink */

typedef struct string_sink {
    char *data;
    size_t len, cap, max;
} string_sink;

static int string_sink_write(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    string_sink *ss = self;
    if (len > ss->max - ss->len)
        return bkr_error_set(err, "output exceeds %zu bytes", ss->max);
    if (ss->len + len > ss->cap) {
        size_t cap = ss->cap ? ss->cap : 4096;
        while (cap < ss->len + len)
            cap *= 2;
        char *grown = realloc(ss->data, cap);
        if (grown == NULL)
            return bkr_error_set(err, "out of memory");
        ss->data = grown;
        ss->cap = cap;
    }
    memcpy(ss->data + ss->len, data, len);
    ss->len += len;
    return 0;
}

static int string_sink_result(void *self, lua_State *L)
{
    string_sink *ss = self;
    lua_pushlstring(L, ss->data ? ss->data : "", ss->len);
    return 1;
}

static void string_sink_free(void *self)
{
    string_sink *ss = self;
    free(ss->data);
    free(ss);
}

static const bkr_stage_ops string_sink_ops = {
    .type = "string", .kind = BKR_SINK, .write = string_sink_write, .result = string_sink_result,
    .free = string_sink_free,
};

static int stream_to_string(lua_State *L)
{
    const char *name = bkr_stage_optname(L, 1);
    lua_Integer max = 256 * 1024 * 1024;
    if (lua_istable(L, 1)) {
        lua_getfield(L, 1, "max");
        max = luaL_optinteger(L, -1, max);
        lua_pop(L, 1);
    }
    luaL_argcheck(L, max > 0, 1, "max must be positive");
    bkr_stage *st = bkr_stage_new(L, &string_sink_ops);
    string_sink *ss = calloc(1, sizeof *ss);
    if (ss == NULL)
        return luaL_error(L, "stream.to_string: out of memory");
    ss->max = (size_t)max;
    bkr_stage_open(st, ss, name);
    return 1;
}

/* ================================================================ null sink, counter */

typedef struct counter {
    uint64_t bytes;
    int has_expect;  /* stream.count{expect = N}: exactly N bytes must pass */
    uint64_t expect;
} counter;

static int null_write(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    return 0;
}

static int stdout_write(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    int e = bkr_write_all(STDOUT_FILENO, data, len);
    if (e != 0)
        return e == EINTR ? bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted")
                          : bkr_error_errno(err, e, "write to stdout");
    return 0;
}

static const bkr_stage_ops stdout_sink_ops = {
    .type = "stdout", .kind = BKR_SINK, .write = stdout_write, .free = free,
};

static const bkr_stage_ops null_sink_ops = {
    .type = "null", .kind = BKR_SINK, .write = null_write, .free = free,
};

/* With an expected size, a byte too many fails at once, before it goes on to the next stage
 * (a sink that commits never sees it), and too few fail at the end of input, before any sink
 * finishes. */
static int count_observe(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    counter *c = self;
    if (data == NULL) {
        if (c->has_expect && c->bytes < c->expect)
            return bkr_error_kind(err, BKR_KIND_TRUNCATED, "%llu bytes, %llu expected (the data ends early)",
                                  (unsigned long long)c->bytes, (unsigned long long)c->expect);
        return 0;
    }
    c->bytes += len;
    if (c->has_expect && c->bytes > c->expect)
        return bkr_error_kind(err, BKR_KIND_CORRUPT, "more than the %llu bytes expected (at least %llu)",
                              (unsigned long long)c->expect, (unsigned long long)c->bytes);
    return 0;
}

static int count_result(void *self, lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)((counter *)self)->bytes);
    return 1;
}

static const bkr_stage_ops count_ops = {
    .type = "count", .kind = BKR_FILTER, .observe = count_observe, .result = count_result,
    .free = free,
};

static int new_counter_stage(lua_State *L, const bkr_stage_ops *ops, int opts)
{
    const char *name = bkr_stage_optname(L, opts);
    bkr_stage *st = bkr_stage_new(L, ops);
    counter *c = calloc(1, sizeof *c);
    if (c == NULL)
        return luaL_error(L, "stream: out of memory");
    bkr_stage_open(st, c, name);
    return 1;
}

static int stream_to_null(lua_State *L)
{
    return new_counter_stage(L, &null_sink_ops, 1);
}

static int stream_to_stdout(lua_State *L)
{
    /* Lua's io.stdout buffers: what a recipe printed must come before the stream's bytes. */
    fflush(stdout);
    return new_counter_stage(L, &stdout_sink_ops, 1);
}

static int stream_count(lua_State *L)
{
    int has_expect = 0;
    lua_Integer expect = 0;
    if (lua_istable(L, 1)) {
        lua_getfield(L, 1, "expect");
        if (!lua_isnil(L, -1)) {
            int isnum = 0;
            expect = lua_tointegerx(L, -1, &isnum);
            luaL_argcheck(L, isnum && expect >= 0, 1, "count expect must be a whole number of bytes >= 0");
            has_expect = 1;
        }
        lua_pop(L, 1);
    } else {
        luaL_argcheck(L, lua_isnoneornil(L, 1), 1, "options must be a table");
    }
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &count_ops);
    counter *c = calloc(1, sizeof *c);
    if (c == NULL)
        return luaL_error(L, "stream.count: out of memory");
    c->has_expect = has_expect;
    c->expect = (uint64_t)expect;
    bkr_stage_open(st, c, name);
    return 1;
}

/* ================================================================ tail */

typedef struct tail {
    size_t cap, len;
    size_t expect_len;       /* stream.tail{expect = s}: 0 for none */
    unsigned char *expect;   /* inside data, after the cap bytes kept */
    unsigned char data[];
} tail;

static int tail_observe(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    tail *t = self;
    if (data == NULL) {
        /* At the end of input, before any sink finishes: a dump without its completion
         * marker never reaches a commit. */
        if (t->expect_len > 0 && memmem(t->data, t->len, t->expect, t->expect_len) == NULL)
            return bkr_error_kind(err, BKR_KIND_TRUNCATED, "the expected end is not in the last %zu bytes "
                                  "(the data was cut short?)", t->cap);
        return 0;
    }
    if (len >= t->cap) {
        memcpy(t->data, data + len - t->cap, t->cap);
        t->len = t->cap;
        return 0;
    }
    size_t keep = t->len + len > t->cap ? t->cap - len : t->len;
    memmove(t->data, t->data + t->len - keep, keep);
    memcpy(t->data + keep, data, len);
    t->len = keep + len;
    return 0;
}

static int tail_result(void *self, lua_State *L)
{
    tail *t = self;
    lua_pushlstring(L, (const char *)t->data, t->len);
    return 1;
}

static const bkr_stage_ops tail_ops = {
    .type = "tail", .kind = BKR_FILTER, .observe = tail_observe, .result = tail_result, .free = free,
};

static int stream_tail(lua_State *L)
{
    const char *name = bkr_stage_optname(L, 1);
    lua_Integer bytes = 256;
    const char *expect = NULL;
    size_t expect_len = 0;
    if (lua_istable(L, 1)) {
        lua_getfield(L, 1, "bytes");
        bytes = luaL_optinteger(L, -1, 256);
        lua_getfield(L, 1, "expect");
        expect = luaL_optlstring(L, -1, NULL, &expect_len);
        lua_pop(L, 2); /* the string stays reachable from the options table */
    }
    luaL_argcheck(L, bytes > 0 && bytes <= 1024 * 1024, 1, "tail bytes must be 1 to 1048576");
    luaL_argcheck(L, expect == NULL || (expect_len > 0 && expect_len <= (size_t)bytes), 1,
                  "tail expect must be 1 to `bytes` bytes long");
    bkr_stage *st = bkr_stage_new(L, &tail_ops);
    tail *t = calloc(1, sizeof *t + (size_t)bytes + expect_len);
    if (t == NULL)
        return luaL_error(L, "stream.tail: out of memory");
    t->cap = (size_t)bytes;
    if (expect != NULL) {
        t->expect = t->data + t->cap;
        memcpy(t->expect, expect, expect_len);
        t->expect_len = expect_len;
    }
    bkr_stage_open(st, t, name);
    return 1;
}

/* ================================================================ progress */

typedef struct progress {
    char label[128];
    double total, interval, start, last;
    uint64_t bytes;
    int shown;
} progress;

static void progress_print(progress *p, int final)
{
    double elapsed = bkr_monotonic() - p->start;
    double mib = (double)p->bytes / (1024.0 * 1024.0);
    double rate = elapsed > 0 ? mib / elapsed : 0;
    char line[256];
    int n;
    if (p->total > 0)
        n = snprintf(line, sizeof line, "\r%s: %.1f MiB, %.1f MiB/s, ~%.0f%% of ~%.0f MiB", p->label, mib,
                     rate, 100.0 * (double)p->bytes / p->total, p->total / (1024.0 * 1024.0));
    else
        n = snprintf(line, sizeof line, "\r%s: %.1f MiB, %.1f MiB/s", p->label, mib, rate);
    if (n > 0 && write(STDERR_FILENO, line, strlen(line)) < 0)
        return;
    /* Clear what a longer previous line left, end the line at the end of the run. */
    if (write(STDERR_FILENO, final ? "\033[K\n" : "\033[K", final ? 4 : 3) < 0)
        return;
    p->shown = 1;
}

static int progress_observe(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    progress *p = self;
    if (p->interval < 0)
        return 0;
    if (data == NULL) {
        if (p->shown)
            progress_print(p, 1);
        return 0;
    }
    p->bytes += len;
    double now = bkr_monotonic();
    if (now - p->last >= p->interval) {
        p->last = now;
        progress_print(p, 0);
    }
    return 0;
}

static const bkr_stage_ops progress_ops = {
    .type = "progress", .kind = BKR_FILTER, .observe = progress_observe, .free = free,
};

static int stream_progress(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "label");
    const char *label = luaL_optstring(L, -1, "progress");
    lua_getfield(L, 1, "total");
    double total = luaL_optnumber(L, -1, 0);
    lua_getfield(L, 1, "interval");
    double interval = luaL_optnumber(L, -1, 0.5);
    lua_pop(L, 3); /* the label stays reachable from the options table */
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &progress_ops);
    progress *p = calloc(1, sizeof *p);
    if (p == NULL)
        return luaL_error(L, "stream.progress: out of memory");
    snprintf(p->label, sizeof p->label, "%s", label);
    p->total = total;
    /* No terminal, no progress noise (cron, systemd, pipes). */
    p->interval = isatty(STDERR_FILENO) ? interval : -1;
    p->start = p->last = bkr_monotonic();
    bkr_stage_open(st, p, name);
    return 1;
}

/* ================================================================ constructors */

const luaL_Reg bkr_stream_stages[] = {
    {"from_file", stream_from_file},
    {"from_string", stream_from_string},
    {"to_file", stream_to_file},
    {"to_string", stream_to_string},
    {"to_null", stream_to_null},
    {"to_stdout", stream_to_stdout},
    {"count", stream_count},
    {"tail", stream_tail},
    {"progress", stream_progress},
    {NULL, NULL},
};
