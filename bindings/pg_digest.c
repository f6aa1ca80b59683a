/*
 * pg_digest.c - conn:digest_tables: the row count and row digest of many tables at once, each
 * table read with its own COPY ... TO STDOUT on one of several connections, on worker threads.
 * The comparison after a restore reads every table of a database; one connection reads one
 * table at a time, on one core.
 *
 *   conn:digest_tables(copies[, opts]) -> results | nil, msg, kind
 *       copies: array of `COPY ... TO STDOUT` statements (text format)
 *       opts.jobs: connections and threads, an integer >= 1 (default: the number of online
 *           CPUs), never more than #copies nor 8 (a comparison must not take a server's
 *           connections from its applications)
 *       opts.session: SQL run first on each connection (the session settings the digest needs)
 *       opts.sizes: array of numbers parallel to copies (e.g. row counts): biggest first
 *       results: array parallel to copies, each { rows = n, digest = hex } or
 *           { error = "pg.digest_tables: ERROR:  ...", sqlstate = "42P01" } (sqlstate when the
 *           server gave one): a table that cannot be read fails alone.
 *   The workers that cannot connect (a role's or the server's connection limit) or whose
 *   opts.session fails drop out; the others read every table. nil, msg, "io" when none
 *   could (the first failure's message); raises an error
 *   object of kind "interrupted" on SIGINT/SIGTERM, after every COPY was cancelled, every
 *   thread joined and every connection closed.
 *
 * The digest is row_digest.h's, the code dump.row_digest runs: the same rows give the same
 * digest. Each extra connection has the parameters of conn (PQconninfo), database name never
 * expanded. Worker threads make no Lua call and touch no Lua value: they read the statements
 * (strings that the copies table keeps alive) and write plain C structs, which are turned
 * into Lua tables once every thread is joined and every connection closed. SIGINT and SIGTERM
 * stay blocked on the workers, so the host's handler runs on the Lua thread; workers see
 * bkr_interrupted() at their next wait (at most 250 ms).
 */

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"
#include "error.h"
#include "pg_internal.h"
#include "pg_redact.h"
#include "row_digest.h"

#define BKR_PGDIGESTS "bkr.pg.Digests" /* internal: holds a job's C memory while Lua tables are built */

#define DG_WHO "pg.digest_tables"
#define DG_MAX_JOBS 8

/* ---------------------------------------------------------------------------------------------
 * The job: what the threads share
 * ------------------------------------------------------------------------------------------- */

typedef struct dg_table {
    const char *sql;        /* owned by Lua: a string of the copies table (argument 2) */
    int done;               /* a worker filled the result */
    int failed;             /* ... and it is a failure: error (NULL if out of memory), sqlstate */
    uint64_t rows;
    uint64_t sum[4];
    char *error;            /* malloc'd; NULL when the table was read */
    char sqlstate[6];
} dg_table;

/* One entry of the queue. */
typedef struct dg_order {
    double size;
    size_t index;
} dg_order;

typedef struct dg_job {
    /* set before the threads start, read-only while they run */
    PQconninfoOption *conninfo;     /* PQconninfo of the caller's connection */
    const char **keys, **vals;      /* pointing into conninfo, NULL-terminated */
    const char *password;           /* in conninfo, or NULL: masked in every message */
    const char *session;            /* owned by Lua (opts.session) */
    dg_table *tables;
    size_t ntables;
    struct dg_order *order;         /* the tables, biggest first */
    pthread_t *threads;
    int nthreads;                   /* started */

    /* shared, under lock */
    pthread_mutex_t lock;
    pthread_cond_t settled_cond;
    int sync_ready;                 /* lock and cond were initialised */
    int nworkers;                   /* workers that will report whether they connected */
    int settled;                    /* workers that connected or failed to */
    size_t next;                    /* next position in order */
    int connected;                  /* workers connected, settings made: reading tables */
    int failed;                     /* no worker could connect: the call fails */
    char failmsg[PG_MSG];           /* the first worker's failure to connect */
    int interrupted;
} dg_job;

static void dg_job_free(dg_job *job)
{
    if (!job)
        return;
    for (size_t i = 0; job->tables && i < job->ntables; i++)
        free(job->tables[i].error);
    free(job->tables);
    free(job->order);
    free(job->threads);
    free(job->keys);
    free(job->vals);
    if (job->conninfo)
        PQconninfoFree(job->conninfo);
    if (job->sync_ready) {
        pthread_mutex_destroy(&job->lock);
        pthread_cond_destroy(&job->settled_cond);
    }
    free(job);
}

/* The userdata owning a job: the collector frees it if building the result raises. It is
 * only ever collected once the threads are joined (no Lua runs while they are alive). */
static int dg_holder_gc(lua_State *L)
{
    dg_job **h = luaL_checkudata(L, 1, BKR_PGDIGESTS);
    dg_job *job = *h;
    *h = NULL;
    dg_job_free(job);
    return 0;
}

static void dg_interrupt(dg_job *job)
{
    pthread_mutex_lock(&job->lock);
    job->interrupted = 1;
    pthread_mutex_unlock(&job->lock);
}

/* A table's failure: "pg.digest_tables: msg", and its SQLSTATE if any. */
static void dg_table_error(dg_table *t, const char *msg, const char *sqlstate)
{
    size_t len = strlen(DG_WHO) + 2 + strlen(msg) + 1;
    free(t->error);
    t->error = malloc(len);
    if (t->error)
        snprintf(t->error, len, "%s: %s", DG_WHO, msg);
    snprintf(t->sqlstate, sizeof t->sqlstate, "%s", sqlstate ? sqlstate : "");
    t->done = 1;
    t->failed = 1;
}

/* ---------------------------------------------------------------------------------------------
 * On a worker thread: no Lua from here to the end of the section
 * ------------------------------------------------------------------------------------------- */

/* Extra connections' notices are not wanted (libpq would print them on stderr). */
static void dg_ignore_notice(void *arg, const char *message)
{
}

/* Run opts.session: 0, -1 with msg set, -2 when interrupted (the statement cancelled). */
static int dg_session(PGconn *c, const char *sql, char *msg, size_t cap)
{
    if (!PQsendQuery(c, sql)) {
        pg_connmsg(c, msg, cap);
        return -1;
    }
    int rc = 0;
    for (;;) {
        if (pg_await(c, 0) < 0) {
            pg_cancel(c);
            return -2;
        }
        PGresult *res = PQgetResult(c);
        if (!res)
            break;
        ExecStatusType st = PQresultStatus(res);
        if (rc == 0 && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
            rc = -1;
            if (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE)
                pg_resultmsg(res, 0, msg, cap);
            else
                snprintf(msg, cap, "opts.session must not return %s", PQresStatus(st));
        }
        PQclear(res);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            if (st != PGRES_COPY_IN)
                pg_cancel(c);
            pg_drain(c);
            break;
        }
    }
    return rc;
}

/* The end of a COPY's data: its command result. */
static void dg_copy_end(PGconn *c, dg_table *t, const rowsum *sum)
{
    char msg[PG_MSG];
    PGresult *res = PQgetResult(c);
    if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
        if (rowsum_open(sum)) {
            snprintf(msg, sizeof msg, "the COPY data ends inside row %llu (no newline after it)",
                     (unsigned long long)sum->count + 1);
            dg_table_error(t, msg, NULL);
        } else {
            t->rows = sum->count;
            memcpy(t->sum, sum->sum, sizeof t->sum);
            t->done = 1;
        }
    } else if (res) {
        dg_table_error(t, pg_resultmsg(res, 1, msg, sizeof msg), pg_sqlstate(res));
    } else {
        dg_table_error(t, pg_connmsg(c, msg, sizeof msg), NULL);
    }
    PQclear(res);
    pg_drain(c);
}

/* Read one table. Returns 0 (t->done set: its digest or its error); -1 when, besides, the
 * connection is no longer usable (a read failed in the middle of the COPY); -2 when
 * interrupted: the COPY was cancelled on the server, and the connection is only fit to be
 * closed. */
static int dg_copy(PGconn *c, dg_table *t, rowsum *sum)
{
    char msg[PG_MSG];
    rowsum_reset(sum);
    if (bkr_interrupted())
        return -2;
    if (!PQsendQueryParams(c, t->sql, 0, NULL, NULL, NULL, NULL, 0)) {
        dg_table_error(t, pg_connmsg(c, msg, sizeof msg), NULL);
        return 0;
    }
    if (pg_await(c, 0) < 0) {
        pg_cancel(c);
        return -2;
    }
    PGresult *res = PQgetResult(c);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COPY_OUT) {
        if (res && (st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE))
            dg_table_error(t, pg_resultmsg(res, 0, msg, sizeof msg), pg_sqlstate(res));
        else if (!res)
            dg_table_error(t, pg_connmsg(c, msg, sizeof msg), NULL);
        else
            dg_table_error(t, "not a COPY ... TO STDOUT statement", NULL);
        PQclear(res);
        if (st == PGRES_COPY_BOTH)
            pg_cancel(c);
        pg_drain(c);
        return 0;
    }
    PQclear(res);
    int hash_failed = 0;
    for (;;) {
        char *row = NULL;
        int r = PQgetCopyData(c, &row, 1);
        if (r > 0) {
            if (!hash_failed && rowsum_write(sum, (const unsigned char *)row, (size_t)r) != 0)
                hash_failed = 1; /* read on to the end: the connection must stay usable */
            PQfreemem(row);
        } else if (r == 0) {
            if (bkr_interrupted()) {
                pg_cancel(c);
                return -2;
            }
            int ev = pg_poll(c, POLLIN, 250);
            if (ev != 0 && !PQconsumeInput(c)) {
                dg_table_error(t, pg_connmsg(c, msg, sizeof msg), NULL);
                return -1;
            }
        } else if (r == -1) {
            if (pg_await(c, 0) < 0) {
                pg_cancel(c);
                return -2;
            }
            dg_copy_end(c, t, sum);
            if (hash_failed)
                dg_table_error(t, "SHA-256 failed", NULL);
            return 0;
        } else {
            dg_table_error(t, pg_connmsg(c, msg, sizeof msg), NULL);
            return -1;
        }
    }
}

/* Connect and run the session settings, then take tables from the queue until it is empty.
 * A worker that cannot connect drops out: the others take its share. */
static void *dg_worker(void *arg)
{
    dg_job *job = arg;
    char msg[PG_MSG];
    int rc = -1;
    rowsum sum;
    int have_sum = rowsum_init(&sum) == 0;
    PGconn *c = PQconnectStartParams(job->keys, job->vals, 0);
    if (!have_sum) {
        snprintf(msg, sizeof msg, "cannot set up SHA-256");
    } else if (!c) {
        snprintf(msg, sizeof msg, "out of memory");
    } else {
        PQsetNoticeProcessor(c, dg_ignore_notice, NULL);
        rc = pg_connect_wait(c, msg, sizeof msg);
        if (rc == 0 && job->session && *job->session)
            rc = dg_session(c, job->session, msg, sizeof msg);
    }

    pthread_mutex_lock(&job->lock);
    if (rc == -2)
        job->interrupted = 1;
    else if (rc != 0 && job->failmsg[0] == '\0')
        snprintf(job->failmsg, sizeof job->failmsg, "%s", msg);
    else if (rc == 0)
        job->connected++;
    job->settled++;
    pthread_mutex_unlock(&job->lock);

    while (rc == 0) {
        pthread_mutex_lock(&job->lock);
        int stop = job->failed || job->interrupted || job->next >= job->ntables;
        dg_table *t = stop ? NULL : &job->tables[job->order[job->next++].index];
        pthread_mutex_unlock(&job->lock);
        if (!t)
            break;
        int done = dg_copy(c, t, &sum);
        if (done == -2) {
            dg_interrupt(job);
            break;
        }
        if (done < 0 || PQstatus(c) == CONNECTION_BAD)
            break; /* this connection is lost: the other workers take the rest */
    }
    if (c)
        PQfinish(c);
    rowsum_release(&sum);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * On the Lua thread
 * ------------------------------------------------------------------------------------------- */

/* Biggest first; equal sizes in the caller's order. */
static int dg_bigger_first(const void *a, const void *b)
{
    const dg_order *x = a, *y = b;
    if (x->size != y->size)
        return x->size > y->size ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Push msg with the connection's password masked. */
static void dg_push_redacted(lua_State *L, const dg_job *job, const char *msg)
{
    size_t len = strlen(msg);
    pg_secret secret = { job->password, job->password ? strlen(job->password) : 0 };
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, PG_REDACT_CAP(len));
    luaL_pushresultsize(&b, pg_redact(out, PG_REDACT_CAP(len), msg, len, &secret, job->password ? 1 : 0, 0));
}

/* The number of online CPUs, at least 1. */
static int dg_online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > DG_MAX_JOBS ? DG_MAX_JOBS : (int)n;
}

/* Start the workers with SIGINT and SIGTERM blocked (they inherit the mask): the host's
 * handler then runs on this thread, which is where it may touch the Lua state. Returns the
 * number started; on a failure to start one, errno_out is set and fewer run. */
static int dg_start(dg_job *job, int jobs, int *errno_out)
{
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    job->nworkers = jobs;
    int started = 0;
    for (; started < jobs; started++) {
        int e = pthread_create(&job->threads[started], NULL, dg_worker, job);
        if (e != 0) {
            *errno_out = e;
            pthread_mutex_lock(&job->lock);
            job->nworkers = started; /* the started ones must not wait for the rest */
            pthread_cond_broadcast(&job->settled_cond);
            pthread_mutex_unlock(&job->lock);
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    job->nthreads = started;
    return started;
}

static const char *const dg_option_keys[] = { "jobs", "session", "sizes", NULL };

int pgconn_digest_tables(lua_State *L)
{
    pgconn *pc = pg_checkidle(L, DG_WHO);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        bkr_check_option_keys(L, 3, DG_WHO, dg_option_keys);
    }
    lua_settop(L, 3);

    /* Everything is checked before any C memory is taken: misuse raises with nothing held. */
    lua_Unsigned n = lua_rawlen(L, 2);
    if (n > (lua_Unsigned)INT32_MAX)
        return luaL_error(L, "%s: too many statements", DG_WHO);
    for (lua_Unsigned i = 1; i <= n; i++) {
        if (lua_rawgeti(L, 2, (lua_Integer)i) != LUA_TSTRING)
            return luaL_error(L, "%s: copies[%I] is a %s, not a string", DG_WHO, (lua_Integer)i,
                              luaL_typename(L, -1));
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (strlen(s) != len)
            return luaL_error(L, "%s: copies[%I] contains a zero byte", DG_WHO, (lua_Integer)i);
        lua_pop(L, 1);
    }
    int jobs = dg_online_cpus();
    const char *session = NULL;
    int has_sizes = 0;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "jobs");
        if (!lua_isnil(L, -1)) {
            int isint;
            lua_Integer j = lua_tointegerx(L, -1, &isint);
            if (!isint || j < 1)
                return luaL_error(L, "%s: opts.jobs must be an integer, at least 1", DG_WHO);
            jobs = j > DG_MAX_JOBS ? DG_MAX_JOBS : (int)j;
        }
        lua_pop(L, 1);
        if (lua_getfield(L, 3, "session") != LUA_TNIL) { /* stays on the stack: Lua owns it */
            size_t len;
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "%s: opts.session must be a string of SQL", DG_WHO);
            session = lua_tolstring(L, -1, &len);
            if (strlen(session) != len)
                return luaL_error(L, "%s: opts.session contains a zero byte", DG_WHO);
        }
        lua_getfield(L, 3, "sizes");
        if (!lua_isnil(L, -1)) {
            if (!lua_istable(L, -1))
                return luaL_error(L, "%s: opts.sizes must be an array of numbers", DG_WHO);
            for (lua_Unsigned i = 1; i <= n; i++) {
                int type = lua_rawgeti(L, -1, (lua_Integer)i);
                if (type != LUA_TNUMBER && type != LUA_TNIL)
                    return luaL_error(L, "%s: opts.sizes must be an array of numbers", DG_WHO);
                lua_pop(L, 1);
            }
            has_sizes = 1;
        }
        /* the sizes table stays at the top */
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    int sizes_idx = lua_gettop(L);
    if (bkr_interrupted())
        return bkr_raise_interrupted(L, DG_WHO);

    dg_job **holder = lua_newuserdatauv(L, sizeof *holder, 0);
    *holder = NULL;
    luaL_setmetatable(L, BKR_PGDIGESTS);
    int holder_idx = lua_gettop(L);
    dg_job *job = calloc(1, sizeof *job);
    if (!job)
        return luaL_error(L, "%s: out of memory", DG_WHO);
    *holder = job;
    job->ntables = (size_t)n;
    job->session = session;
    if (jobs > (int)n)
        jobs = (int)n;
    job->tables = calloc(n ? n : 1, sizeof *job->tables);
    job->order = calloc(n ? n : 1, sizeof *job->order);
    job->threads = calloc(jobs ? (size_t)jobs : 1, sizeof *job->threads);
    job->conninfo = PQconninfo(pc->conn);
    if (!job->tables || !job->order || !job->threads || !job->conninfo)
        return luaL_error(L, "%s: out of memory", DG_WHO);
    size_t nopts = 0;
    for (PQconninfoOption *o = job->conninfo; o->keyword; o++)
        nopts++;
    job->keys = calloc(nopts + 1, sizeof *job->keys);
    job->vals = calloc(nopts + 1, sizeof *job->vals);
    if (!job->keys || !job->vals)
        return luaL_error(L, "%s: out of memory", DG_WHO);
    size_t k = 0;
    for (PQconninfoOption *o = job->conninfo; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        job->keys[k] = o->keyword;
        job->vals[k] = o->val;
        k++;
        if (strcmp(o->keyword, "password") == 0)
            job->password = o->val;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        job->tables[i].sql = lua_tostring(L, -1); /* kept alive by the copies table */
        lua_pop(L, 1);
        if (has_sizes) {
            lua_rawgeti(L, sizes_idx, (lua_Integer)i + 1);
            job->order[i].size = lua_isnumber(L, -1) ? (double)lua_tonumber(L, -1) : 0;
            lua_pop(L, 1);
        }
        job->order[i].index = i;
    }
    if (has_sizes && n > 1)
        qsort(job->order, n, sizeof *job->order, dg_bigger_first);
    if (pthread_mutex_init(&job->lock, NULL) != 0)
        return luaL_error(L, "%s: cannot create a mutex", DG_WHO);
    if (pthread_cond_init(&job->settled_cond, NULL) != 0) {
        pthread_mutex_destroy(&job->lock);
        return luaL_error(L, "%s: cannot create a condition variable", DG_WHO);
    }
    job->sync_ready = 1;

    /* From here to the joins, no Lua call: nothing may raise while threads are running. */
    int start_errno = 0;
    if (n > 0 && dg_start(job, jobs, &start_errno) == 0) {
        *holder = NULL;
        dg_job_free(job);
        return bkr_pushfail(L, BKR_KIND_IO, "%s: cannot start a thread: %s", DG_WHO, strerror(start_errno));
    }
    for (int i = 0; i < job->nthreads; i++)
        pthread_join(job->threads[i], NULL);
    if (n > 0 && job->connected == 0)
        job->failed = 1;

    if (job->interrupted) {
        *holder = NULL;
        dg_job_free(job);
        return bkr_raise_interrupted(L, DG_WHO);
    }
    if (job->failed) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: ", DG_WHO);
        dg_push_redacted(L, job, job->failmsg);
        lua_concat(L, 2);
        lua_pushstring(L, BKR_KIND_IO);
        *holder = NULL;
        dg_job_free(job);
        return 3;
    }
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        dg_table *t = &job->tables[i];
        if (!t->done) /* every connection was lost before this table's turn */
            dg_table_error(t, "not read: every connection to the server was lost", NULL);
        if (!t->failed) {
            char hex[65];
            lua_createtable(L, 0, 2);
            lua_pushinteger(L, (lua_Integer)t->rows);
            lua_setfield(L, -2, "rows");
            row_digest_hex(t->sum, hex);
            lua_pushstring(L, hex);
            lua_setfield(L, -2, "digest");
        } else {
            lua_createtable(L, 0, 2);
            dg_push_redacted(L, job, t->error ? t->error : DG_WHO ": out of memory");
            lua_setfield(L, -2, "error");
            if (t->sqlstate[0]) {
                lua_pushstring(L, t->sqlstate);
                lua_setfield(L, -2, "sqlstate");
            }
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    *holder = NULL;
    dg_job_free(job);
    lua_replace(L, holder_idx);
    lua_settop(L, holder_idx);
    return 1;
}

static const luaL_Reg dg_holder_metamethods[] = {
    { "__gc", dg_holder_gc },
    { NULL, NULL },
};

/* Called by luaopen_bkr_pg. */
void pg_digest_createmeta(lua_State *L)
{
    bkr_createmeta(L, BKR_PGDIGESTS, dg_holder_metamethods, NULL);
}
