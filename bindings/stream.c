/*
 * stream.c - bkr.stream: the pipeline core (the run loop and the stage contract of
 * stream.h). The built-in stages that need nothing but POSIX are in stream_stages.c.
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
 *                                         opts.overwrite (default false), opts.owner
 *                                         ({uid, gid}, set before the rename); result: path.
 *                                         nil, msg if the temporary file cannot be created
 *   stream.to_string([opts])              sink; result: the bytes (opts.max, default 256 MiB)
 *   stream.to_null([opts])                sink that discards
 *   stream.to_stdout([opts])              sink writing to standard output (restores by hand:
 *                                         `bkr decrypt FILE | psql`); a closed pipe fails the run
 *   stream.count([{expect = N}])          pass-through filter; result: byte count. With
 *                                         expect: a byte more fails at once (kind corrupt),
 *                                         fewer fail at the end of input (truncated)
 *   stream.progress{label = "db", total = bytes_or_nil, interval = 0.5}
 *                                         pass-through filter: a progress line on stderr when
 *                                         stderr is a terminal (bytes, rate, share of total);
 *                                         silent otherwise; result: none
 *   stream.tail([{bytes = 256, expect = s}])
 *                                         pass-through filter; result: the last bytes seen
 *                                         (a dump's completion marker is at its very end).
 *                                         With expect (plain text): fails at the end of input,
 *                                         kind truncated, unless the last bytes contain it
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
        double t0 = bkr_monotonic();
        int rc = ops->observe(st->self, data, len, &r->err);
        st->seconds += bkr_monotonic() - t0;
        if (rc != 0)
            return stage_failed(r, i);
        st->bytes_out += len;
        return push(r, i + 1, data, len);
    }
    while (len > 0) {
        size_t consumed = 0, produced = 0;
        int done = 0;
        double t0 = bkr_monotonic();
        int rc = ops->process(st->self, data, len, &consumed, r->bufs[i], BKR_CHUNK, &produced, &done,
                              &r->err);
        st->seconds += bkr_monotonic() - t0;
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
    double t0 = bkr_monotonic();
    int rc = sink->ops->write(sink->self, data, len, &r->err);
    sink->seconds += bkr_monotonic() - t0;
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
            double t0 = bkr_monotonic();
            int rc = st->ops->process(st->self, NULL, 0, &consumed, r->bufs[i], BKR_CHUNK, &produced,
                                      &done, &r->err);
            st->seconds += bkr_monotonic() - t0;
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
        double t0 = bkr_monotonic();
        int rc = src->ops->read(src->self, r->bufs[0], BKR_CHUNK, &len, &eof, &r->err);
        src->seconds += bkr_monotonic() - t0;
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
    double t0 = bkr_monotonic();
    if (!failed)
        failed = run_pipeline(r) != 0;
    double elapsed = bkr_monotonic() - t0;
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

/* ================================================================ module */

static const luaL_Reg stage_methods[] = {
    {"close", stage_close},
    {NULL, NULL},
};

static const luaL_Reg stage_metamethods[] = {
    {"__gc", stage_close},
    {"__close", stage_close},
    {"__tostring", stage_tostring},
    {NULL, NULL},
};

static const luaL_Reg stream_functions[] = {
    {"run", stream_run},
    {NULL, NULL},
};

/* Every binding that makes stages needs the metatable; creating it twice is harmless. */
static void createmeta(lua_State *L)
{
    bkr_createmeta(L, BKR_STAGE, stage_metamethods, stage_methods);
}

int luaopen_bkr_stream(lua_State *L)
{
    luaL_newlib(L, stream_functions);
    luaL_setfuncs(L, bkr_stream_stages, 0); /* from_file, to_file, ...: stream_stages.c */
    createmeta(L);
    return 1;
}
