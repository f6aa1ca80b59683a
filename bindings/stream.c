/*
 * stream.c - bkr.stream: the pipeline core, and the stages that need nothing but POSIX.
 *
 * Lua API
 *   stream.run{ source, filter..., sink } -> result
 *       Runs the pipeline to completion inside C. Raises an error naming the stage
 *       that failed ("stream.run: gunzip: corrupt gzip data ..."), after every stage
 *       was aborted: no file under a final name, children reaped. The result table:
 *         elapsed    seconds for the whole run
 *         bytes_in   bytes the source produced
 *         bytes_out  bytes the sink took
 *         stages     array of { name, type, bytes_in, bytes_out, seconds }
 *         [name]     each stage's own result under its name (sha256 -> hex digest, ...)
 *   stream.from_file(path[, opts])        source; nil, msg, kind if it cannot be opened. Only a
 *                                         regular file: a symlink (unless opts.follow), FIFO,
 *                                         device or directory gives kind "not_regular"
 *   stream.from_string(s[, opts])         source
 *   stream.to_file(path[, opts])          atomic file sink; opts.mode (default 0600),
 *                                         opts.overwrite (default false); result: path.
 *                                         nil, msg if the temporary file cannot be created
 *   stream.to_string([opts])              sink; result: the bytes (opts.max, default 256 MiB)
 *   stream.to_null([opts])                sink that discards
 *   stream.to_stdout([opts])              sink writing to standard output (restores by hand:
 *                                         `bkr decrypt FILE | psql`); a closed pipe fails the run
 *   stream.count([opts])                  pass-through filter; result: byte count
 *   stream.progress{label = "db", total = bytes_or_nil, interval = 0.5}
 *                                         pass-through filter: a progress line on stderr when
 *                                         stderr is a terminal (bytes, rate, share of total);
 *                                         silent otherwise; result: none
 *   stream.tail([{bytes = 256}])          pass-through filter; result: the last bytes seen
 *                                         (a dump's completion marker is at its very end)
 *   stage:close()                         release a stage that will not run (also __gc, __close)
 * Every opts table may carry `name`, the key of the stage's result.
 *
 * The loop (after pgBackRest's IoFilterGroup): read a chunk from the source, push
 * it through each filter in turn (a transforming filter may need several calls per
 * chunk when its output buffer fills), then flush filter by filter at end of input.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
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

#define tostage(L, i) ((bkr_stage *)luaL_checkudata(L, i, BKR_STAGE))

/* ================================================================ stage objects */

static void createmeta(lua_State *L);

bkr_stage *bkr_stage_new(lua_State *L, const bkr_stage_ops *ops)
{
    createmeta(L); /* the binding making the stage may be loaded before bkr.stream */
    bkr_stage *st = (bkr_stage *)lua_newuserdatauv(L, sizeof *st, 1);
    memset(st, 0, sizeof *st);
    st->ops = ops;
    st->state = BKR_STAGE_CLOSED;
    luaL_setmetatable(L, BKR_STAGE);
    return st;
}

void bkr_stage_open(bkr_stage *st, void *self, const char *name)
{
    st->self = self;
    st->state = BKR_STAGE_READY;
    snprintf(st->name, sizeof st->name, "%s", name ? name : st->ops->type);
}

void bkr_stage_keep(lua_State *L, int stage, int obj)
{
    stage = lua_absindex(L, stage);
    lua_pushvalue(L, obj);
    lua_setiuservalue(L, stage, 1);
}

const char *bkr_stage_optname(lua_State *L, int opts)
{
    if (lua_type(L, opts) != LUA_TTABLE)
        return NULL;
    lua_getfield(L, opts, "name");
    const char *name = lua_tostring(L, -1);
    lua_pop(L, 1); /* the string stays reachable from the options table */
    if (name != NULL && (strlen(name) == 0 || strlen(name) >= 64))
        luaL_error(L, "stage name must be 1 to 63 characters");
    return name;
}

/* close, __gc and __close: one function; a second call finds nothing to free. */
static int stage_close(lua_State *L)
{
    bkr_stage *st = tostage(L, 1);
    void *self = st->self;
    st->self = NULL;
    st->state = BKR_STAGE_CLOSED;
    if (self != NULL)
        st->ops->free(self);
    return 0;
}

static int stage_tostring(lua_State *L)
{
    bkr_stage *st = tostage(L, 1);
    static const char *kinds[] = {"?", "source", "filter", "sink"};
    lua_pushfstring(L, "bkr.stream %s %s (%s)%s", kinds[st->ops->kind], st->ops->type, st->name,
                    st->state == BKR_STAGE_CLOSED ? " closed" : "");
    return 1;
}

/* ================================================================ the run */

typedef struct run {
    bkr_stage **stages;
    unsigned char **bufs; /* output buffer of each transforming filter; bufs[0] for the source */
    int n;
    bkr_error err;
} run;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Prefix a stage's error with its name, once, and record which stage failed. */
static int stage_failed(run *r, int i)
{
    char msg[sizeof r->err.msg];
    snprintf(msg, sizeof msg, "%s", r->err.msg);
    snprintf(r->err.msg, sizeof r->err.msg, "%s: %.1980s", r->stages[i]->name, msg);
    snprintf(r->err.stage, sizeof r->err.stage, "%s", r->stages[i]->name);
    r->err.reason_at = strlen(r->stages[i]->name) + 2;
    return -1;
}

static int push(run *r, int i, const unsigned char *data, size_t len);

static int push_filter(run *r, int i, const unsigned char *data, size_t len)
{
    bkr_stage *st = r->stages[i];
    const bkr_stage_ops *ops = st->ops;
    st->bytes_in += len;
    if (ops->observe != NULL) {
        double t0 = now_seconds();
        int rc = ops->observe(st->self, data, len, &r->err);
        st->seconds += now_seconds() - t0;
        if (rc != 0)
            return stage_failed(r, i);
        st->bytes_out += len;
        return push(r, i + 1, data, len);
    }
    while (len > 0) {
        size_t consumed = 0, produced = 0;
        int done = 0;
        double t0 = now_seconds();
        int rc = ops->process(st->self, data, len, &consumed, r->bufs[i], BKR_CHUNK, &produced, &done,
                              &r->err);
        st->seconds += now_seconds() - t0;
        if (rc != 0)
            return stage_failed(r, i);
        if (consumed == 0 && produced == 0)
            return bkr_error_set(&r->err, "%s: filter made no progress (bug)", st->name);
        data += consumed;
        len -= consumed;
        if (produced > 0) {
            st->bytes_out += produced;
            if (push(r, i + 1, r->bufs[i], produced) != 0)
                return -1;
        }
    }
    return 0;
}

static int push(run *r, int i, const unsigned char *data, size_t len)
{
    if (bkr_interrupted())
        return bkr_error_kind(&r->err, BKR_KIND_INTERRUPTED, "interrupted");
    if (i < r->n - 1)
        return push_filter(r, i, data, len);
    bkr_stage *sink = r->stages[i];
    double t0 = now_seconds();
    int rc = sink->ops->write(sink->self, data, len, &r->err);
    sink->seconds += now_seconds() - t0;
    if (rc != 0)
        return stage_failed(r, i);
    sink->bytes_in += len;
    return 0;
}

/* End of input: each filter in turn empties itself into the next. */
static int flush_from(run *r, int first)
{
    for (int i = first; i < r->n - 1; i++) {
        bkr_stage *st = r->stages[i];
        if (st->ops->observe != NULL) {
            if (st->ops->observe(st->self, NULL, 0, &r->err) != 0)
                return stage_failed(r, i);
            continue;
        }
        int done = 0;
        while (!done) {
            size_t consumed = 0, produced = 0;
            double t0 = now_seconds();
            int rc = st->ops->process(st->self, NULL, 0, &consumed, r->bufs[i], BKR_CHUNK, &produced,
                                      &done, &r->err);
            st->seconds += now_seconds() - t0;
            if (rc != 0)
                return stage_failed(r, i);
            if (!done && produced == 0)
                return bkr_error_set(&r->err, "%s: filter made no progress while flushing (bug)",
                                     st->name);
            if (produced > 0) {
                st->bytes_out += produced;
                if (push(r, i + 1, r->bufs[i], produced) != 0)
                    return -1;
            }
        }
    }
    return 0;
}

static int run_pipeline(run *r)
{
    bkr_stage *src = r->stages[0];
    int eof = 0;
    while (!eof) {
        if (bkr_interrupted())
            return bkr_error_kind(&r->err, BKR_KIND_INTERRUPTED, "interrupted");
        size_t len = 0;
        double t0 = now_seconds();
        int rc = src->ops->read(src->self, r->bufs[0], BKR_CHUNK, &len, &eof, &r->err);
        src->seconds += now_seconds() - t0;
        if (rc != 0)
            return stage_failed(r, 0);
        src->bytes_out += len;
        if (len > 0 && push(r, 1, r->bufs[0], len) != 0)
            return -1;
    }
    /* Did the producer succeed? Asked before flushing: a dump cut short by a dying
     * pg_dump must be reported as pg_dump's failure, not as a truncated gzip or COPY. */
    if (src->ops->finish != NULL && src->ops->finish(src->self, &r->err) != 0)
        return stage_failed(r, 0);
    src->state = BKR_STAGE_USED;
    if (flush_from(r, 1) != 0)
        return -1;
    /* The sink last: it commits. */
    for (int i = 1; i < r->n; i++) {
        bkr_stage *st = r->stages[i];
        if (st->ops->finish != NULL && st->ops->finish(st->self, &r->err) != 0)
            return stage_failed(r, i);
        st->state = BKR_STAGE_USED;
    }
    return 0;
}

static void abort_all(run *r)
{
    for (int i = r->n - 1; i >= 0; i--) {
        bkr_stage *st = r->stages[i];
        if (st->self != NULL && st->ops->abort != NULL)
            st->ops->abort(st->self);
        st->state = BKR_STAGE_USED;
    }
}

static void check_stage(lua_State *L, int i, int n, bkr_stage *st)
{
    bkr_stage_kind want = i == 0 ? BKR_SOURCE : i == n - 1 ? BKR_SINK : BKR_FILTER;
    static const char *kinds[] = {"?", "a source", "a filter", "a sink"};
    if (st->ops->kind != want)
        luaL_error(L, "stream.run: stage %d (%s) is %s where %s belongs", i + 1, st->ops->type,
                   kinds[st->ops->kind], kinds[want]);
    if (st->state != BKR_STAGE_READY)
        luaL_error(L, "stream.run: stage %d (%s) is %s; a stage runs once", i + 1, st->ops->type,
                   st->state == BKR_STAGE_CLOSED ? "closed" : "already used");
}

static void push_result(lua_State *L, run *r, double elapsed)
{
    lua_createtable(L, 0, 8 + r->n);
    lua_pushnumber(L, elapsed);
    lua_setfield(L, -2, "elapsed");
    lua_pushinteger(L, (lua_Integer)r->stages[0]->bytes_out);
    lua_setfield(L, -2, "bytes_in");
    lua_pushinteger(L, (lua_Integer)r->stages[r->n - 1]->bytes_in);
    lua_setfield(L, -2, "bytes_out");
    lua_createtable(L, r->n, 0);
    for (int i = 0; i < r->n; i++) {
        bkr_stage *st = r->stages[i];
        lua_createtable(L, 0, 5);
        lua_pushstring(L, st->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, st->ops->type);
        lua_setfield(L, -2, "type");
        lua_pushinteger(L, (lua_Integer)st->bytes_in);
        lua_setfield(L, -2, "bytes_in");
        lua_pushinteger(L, (lua_Integer)st->bytes_out);
        lua_setfield(L, -2, "bytes_out");
        lua_pushnumber(L, st->seconds);
        lua_setfield(L, -2, "seconds");
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "stages");
    for (int i = 0; i < r->n; i++) {
        bkr_stage *st = r->stages[i];
        if (st->ops->result != NULL && st->ops->result(st->self, L) == 1)
            lua_setfield(L, -2, st->name);
    }
}

static int stream_run(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int n = (int)luaL_len(L, 1);
    if (n < 2)
        return luaL_error(L, "stream.run: a pipeline needs at least a source and a sink");
    if (bkr_interrupted()) {
        bkr_interrupt_delivered(L);
        bkr_push_error(L, "stream.run: interrupted", BKR_KIND_INTERRUPTED, NULL);
        return lua_error(L);
    }

    /* Lua-owned scratch: freed by the collector whatever happens. */
    run *r = (run *)lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    r->n = n;
    r->stages = (bkr_stage **)lua_newuserdatauv(L, sizeof(bkr_stage *) * (size_t)n, 0);
    for (int i = 0; i < n; i++) {
        lua_geti(L, 1, i + 1);
        r->stages[i] = (bkr_stage *)luaL_testudata(L, -1, BKR_STAGE);
        if (r->stages[i] == NULL)
            return luaL_error(L, "stream.run: element %d is not a stream stage", i + 1);
        lua_pop(L, 1); /* the table keeps it alive */
        check_stage(L, i, n, r->stages[i]);
        for (int j = 0; j < i; j++)
            if (r->stages[j] == r->stages[i])
                return luaL_error(L, "stream.run: stage %d appears twice", i + 1);
    }
    for (int i = 0; i < n; i++) {
        r->stages[i]->bytes_in = r->stages[i]->bytes_out = 0;
        r->stages[i]->seconds = 0;
        r->stages[i]->state = BKR_STAGE_USED;
    }

    /* From here on, C holds buffers: no raising until they are freed. */
    int failed = 0;
    r->bufs = calloc((size_t)n, sizeof *r->bufs);
    if (r->bufs == NULL)
        failed = bkr_error_set(&r->err, "out of memory");
    for (int i = 0; i < n - 1 && !failed; i++) {
        if (i == 0 || r->stages[i]->ops->process != NULL) {
            r->bufs[i] = malloc(BKR_CHUNK);
            if (r->bufs[i] == NULL)
                failed = bkr_error_set(&r->err, "out of memory");
        }
    }
    double t0 = now_seconds();
    if (!failed)
        failed = run_pipeline(r) != 0;
    double elapsed = now_seconds() - t0;
    if (failed)
        abort_all(r);
    if (r->bufs != NULL)
        for (int i = 0; i < n; i++)
            free(r->bufs[i]);
    free(r->bufs);
    r->bufs = NULL;
    if (failed) {
        /* Everything C held is released by now: raise the error object. */
        if (bkr_interrupted())
            bkr_interrupt_delivered(L);
        lua_pushfstring(L, "stream.run: %s", r->err.msg);
        bkr_push_error(L, lua_tostring(L, -1), bkr_interrupted() ? BKR_KIND_INTERRUPTED : r->err.kind,
                       r->err.stage);
        lua_pushstring(L, r->err.msg); /* "STAGE: what went wrong", for people */
        lua_setfield(L, -2, "detail");
        lua_pushstring(L, r->err.msg + (r->err.reason_at < strlen(r->err.msg) ? r->err.reason_at : 0));
        lua_setfield(L, -2, "reason");
        return lua_error(L);
    }
    push_result(L, r, elapsed);
    return 1;
}

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
    if (fd < 0) {
        int e = errno;
        if (e == ELOOP)
            return bkr_pushfail(L, "not_regular", "stream.from_file: %s: not a regular file%s", path,
                                follow ? "" : " (a symlink, FIFO or device)");
        return bkr_pusherrno(L, e, "stream.from_file: %s", path);
    }
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
    mode_t mode;
    int overwrite;
    atomic_file_checkopts(L, 2, "stream.to_file", &mode, &overwrite);
    bkr_stage *st = bkr_stage_new(L, &file_sink_ops);
    file_sink *fs = calloc(1, sizeof *fs);
    if (fs == NULL)
        return luaL_error(L, "stream.to_file: out of memory");
    int e = atomic_file_open(&fs->file, path, mode, overwrite);
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

static int count_observe(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    ((counter *)self)->bytes += len;
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
    return new_counter_stage(L, &count_ops, 1);
}

/* ================================================================ tail */

typedef struct tail {
    size_t cap, len;
    unsigned char data[];
} tail;

static int tail_observe(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    tail *t = self;
    if (data == NULL)
        return 0;
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
    if (lua_istable(L, 1)) {
        lua_getfield(L, 1, "bytes");
        bytes = luaL_optinteger(L, -1, 256);
        lua_pop(L, 1);
    }
    luaL_argcheck(L, bytes > 0 && bytes <= 1024 * 1024, 1, "tail bytes must be 1 to 1048576");
    bkr_stage *st = bkr_stage_new(L, &tail_ops);
    tail *t = calloc(1, sizeof *t + (size_t)bytes);
    if (t == NULL)
        return luaL_error(L, "stream.tail: out of memory");
    t->cap = (size_t)bytes;
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
    double elapsed = now_seconds() - p->start;
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
    double now = now_seconds();
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
    p->start = p->last = now_seconds();
    bkr_stage_open(st, p, name);
    return 1;
}

/* ================================================================ module */

static const luaL_Reg stage_methods[] = {
    {"close", stage_close},
    {NULL, NULL},
};

static const luaL_Reg stage_metamethods[] = {
    {"__gc", stage_close},
    {"__close", stage_close},
    {"__tostring", stage_tostring},
    {"__index", NULL},
    {NULL, NULL},
};

static const luaL_Reg stream_functions[] = {
    {"run", stream_run},
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

/* Every binding that makes stages needs the metatable; creating it twice is harmless. */
static void createmeta(lua_State *L)
{
    if (luaL_newmetatable(L, BKR_STAGE)) {
        luaL_setfuncs(L, stage_metamethods, 0);
        luaL_newlibtable(L, stage_methods);
        luaL_setfuncs(L, stage_methods, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
}

int luaopen_bkr_stream(lua_State *L)
{
    luaL_newlib(L, stream_functions);
    createmeta(L);
    return 1;
}
