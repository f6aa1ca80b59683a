/*
 * pg_copy.c - the COPY stages of bkr.pg: conn:copy_out (a source) and conn:copy_in (a sink),
 * each one bkr_stage_ops (stream.h) driving libpq's COPY protocol on the connection.
 *
 *   conn:copy_out(sql[, opts])      -> source stage | nil, msg[, sqlstate]   (COPY ... TO STDOUT)
 *   conn:copy_in(sql[, opts])       -> sink stage | nil, msg[, sqlstate]     (COPY ... FROM STDIN)
 *       opts.name: key of the stage's result ({rows=, command=}) in stream.run's result table.
 *
 * A stage keeps its connection alive (bkr_stage_keep) and owns it while active: the
 * connection's other methods refuse to run until the COPY has ended (pgconn.copy). The
 * connection, its socket waits and its messages are pg.c's (pg_internal.h).
 */

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"
#include "pg_internal.h"
#include "stream.h"

typedef struct pgcopy {
    pgconn *pc;             /* kept alive by bkr_stage_keep */
    int in;                 /* 1 for COPY FROM STDIN, 0 for COPY TO STDOUT */
    int active;             /* the server is in COPY mode on our behalf */
    int ok;                 /* the COPY completed with COMMAND_OK */
    char *row;              /* copy_out: data from PQgetCopyData not yet handed over */
    int row_len, row_off;
    long long rows;
    char command[64];
} pgcopy;

/* The live connection of a COPY stage, or NULL with err set. */
static PGconn *copy_conn(pgcopy *cs, bkr_error *err)
{
    const char *who = cs->in ? "pg.copy_in" : "pg.copy_out";
    if (!cs->pc->conn) {
        bkr_error_set(err, "%s: the connection was closed", who);
        return NULL;
    }
    if (cs->pc->copy != cs) {
        bkr_error_set(err, "%s: this COPY is no longer active", who);
        return NULL;
    }
    return cs->pc->conn;
}

static void copy_release(pgcopy *cs)
{
    if (cs->row) {
        PQfreemem(cs->row);
        cs->row = NULL;
    }
    cs->active = 0;
    if (cs->pc->copy == cs)
        cs->pc->copy = NULL;
}

/* The COPY data is over: read the command's result. Returns 0 or -1 with err set. */
static int copy_end(pgcopy *cs, PGconn *c, bkr_error *err)
{
    const char *who = cs->in ? "pg.copy_in" : "pg.copy_out";
    int rc = 0;
    if (pg_await(c, 0) < 0) {
        pg_cancel(c);
        pg_drain(c);
        copy_release(cs);
        return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "%s: interrupted", who);
    }
    PGresult *res = PQgetResult(c);
    if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
        cs->ok = 1;
        cs->rows = strtoll(PQcmdTuples(res), NULL, 10);
        snprintf(cs->command, sizeof cs->command, "%s", PQcmdStatus(res));
    } else {
        char msg[PG_MSG];
        const char *state = pg_sqlstate(res);
        if (res)
            pg_resultmsg(res, 1, msg, sizeof msg);
        else
            pg_connmsg(c, msg, sizeof msg);
        rc = bkr_error_set(err, "%s: %s%s%s%s", who, msg, state ? " (SQLSTATE " : "",
                           state ? state : "", state ? ")" : "");
    }
    PQclear(res);
    pg_drain(c);
    copy_release(cs);
    return rc;
}

static int copyout_read(void *self, unsigned char *buf, size_t cap, size_t *len, int *eof,
                        bkr_error *err)
{
    pgcopy *cs = self;
    size_t n = 0;
    *len = 0;
    *eof = 0;
    if (cs->ok) {
        *eof = 1;
        return 0;
    }
    PGconn *c = copy_conn(cs, err);
    if (!c)
        return -1;
    if (bkr_interrupted())
        return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "pg.copy_out: interrupted");
    while (n < cap) {
        if (cs->row) {
            size_t left = (size_t)(cs->row_len - cs->row_off);
            size_t take = left < cap - n ? left : cap - n;
            memcpy(buf + n, cs->row + cs->row_off, take);
            n += take;
            cs->row_off += (int)take;
            if (cs->row_off == cs->row_len) {
                PQfreemem(cs->row);
                cs->row = NULL;
            }
            continue;
        }
        char *row = NULL;
        int r = PQgetCopyData(c, &row, 1);
        if (r > 0) {
            cs->row = row;
            cs->row_len = r;
            cs->row_off = 0;
        } else if (r == 0) {
            /* nothing buffered: hand over what we have, or wait for the server */
            if (n == 0 && bkr_interrupted())
                return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "pg.copy_out: interrupted");
            int ev = pg_poll(c, POLLIN, n > 0 ? 0 : 250);
            if (ev == 0 && n > 0)
                break;
            if (ev != 0 && !PQconsumeInput(c)) {
                char msg[PG_MSG];
                return bkr_error_set(err, "pg.copy_out: %s", pg_connmsg(c, msg, sizeof msg));
            }
        } else if (r == -1) {
            if (copy_end(cs, c, err) < 0)
                return -1;
            *eof = 1;
            break;
        } else {
            char msg[PG_MSG];
            return bkr_error_set(err, "pg.copy_out: %s", pg_connmsg(c, msg, sizeof msg));
        }
    }
    *len = n;
    return 0;
}

static int copy_finish(void *self, bkr_error *err)
{
    pgcopy *cs = self;
    if (cs->ok)
        return 0;
    PGconn *c = copy_conn(cs, err);
    if (!c)
        return -1;
    if (!cs->in)
        return bkr_error_set(err, "pg.copy_out: finished before the end of the COPY data");
    int r;
    while ((r = PQputCopyEnd(c, NULL)) == 0) {
        if (bkr_interrupted())
            break;
        pg_poll(c, POLLOUT, 250);
    }
    if (r == 1)
        r = pg_flush_wait(c, 1, 0);
    else
        r = r < 0 ? -1 : -2;
    if (r == -2)
        return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "pg.copy_in: interrupted");
    if (r < 0) {
        char msg[PG_MSG];
        return bkr_error_set(err, "pg.copy_in: %s", pg_connmsg(c, msg, sizeof msg));
    }
    return copy_end(cs, c, err);
}

static int copyin_write(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    pgcopy *cs = self;
    PGconn *c = copy_conn(cs, err);
    if (!c)
        return -1;
    while (len > 0) {
        if (bkr_interrupted())
            return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "pg.copy_in: interrupted");
        int piece = len > 65536 ? 65536 : (int)len;
        int r = PQputCopyData(c, (const char *)data, piece);
        if (r == 1) {
            data += piece;
            len -= (size_t)piece;
            r = pg_flush_wait(c, 1, 0); /* bounds libpq's output buffer to one piece */
            if (r == -2)
                return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "pg.copy_in: interrupted");
        } else if (r == 0) {
            r = pg_poll(c, POLLOUT, 250) < 0 ? -1 : 0;
        }
        if (r < 0) {
            char msg[PG_MSG];
            return bkr_error_set(err, "pg.copy_in: %s", pg_connmsg(c, msg, sizeof msg));
        }
    }
    return 0;
}

static void copy_abort(void *self)
{
    pgcopy *cs = self;
    PGconn *c = cs->pc->conn;
    if (!cs->active || !c || cs->pc->copy != cs) {
        copy_release(cs);
        return;
    }
    if (cs->in) {
        /* The server may have stopped reading (a lock wait): cancel it if the end won't go out. */
        if (PQputCopyEnd(c, "bkr: pipeline aborted") == 1 && pg_flush_wait(c, 0, bkr_monotonic() + 2) == -2)
            pg_cancel(c);
    } else {
        pg_cancel(c);
    }
    pg_drain(c);
    copy_release(cs);
}

static int copy_result(void *self, lua_State *L)
{
    pgcopy *cs = self;
    if (!cs->ok)
        return 0;
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)cs->rows);
    lua_setfield(L, -2, "rows");
    lua_pushstring(L, cs->command);
    lua_setfield(L, -2, "command");
    return 1;
}

static void copy_free(void *self)
{
    pgcopy *cs = self;
    copy_abort(cs);
    free(cs);
}

static const bkr_stage_ops copyout_ops = {
    .type = "copy",
    .kind = BKR_SOURCE,
    .read = copyout_read,
    .finish = copy_finish,
    .abort = copy_abort,
    .result = copy_result,
    .free = copy_free,
};

static const bkr_stage_ops copyin_ops = {
    .type = "copy",
    .kind = BKR_SINK,
    .write = copyin_write,
    .finish = copy_finish,
    .abort = copy_abort,
    .result = copy_result,
    .free = copy_free,
};

/* conn:copy_out / conn:copy_in: start the COPY now, so that a bad statement is reported here. */
static int pg_copy(lua_State *L, int in)
{
    const char *who = in ? "pg.copy_in" : "pg.copy_out";
    pgconn *pc = pg_checkidle(L, who);
    const char *sql = pg_checksql(L, 2);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    const char *name = lua_istable(L, 3) ? bkr_stage_optname(L, 3) : NULL;
    lua_settop(L, 3);

    bkr_stage *st = bkr_stage_new(L, in ? &copyin_ops : &copyout_ops); /* 4 */
    pgcopy *cs = calloc(1, sizeof *cs);
    if (!cs)
        return luaL_error(L, "%s: out of memory", who);
    cs->pc = pc;
    cs->in = in;
    bkr_stage_open(st, cs, name);
    bkr_stage_keep(L, 4, 1);

    PGconn *c = pc->conn;
    char msg[PG_MSG];
    if (bkr_interrupted())
        return bkr_raise_interrupted(L, who);
    if (!PQsendQueryParams(c, sql, 0, NULL, NULL, NULL, NULL, 0))
        return bkr_pushfail(L, NULL, "%s: %s", who, pg_connmsg(c, msg, sizeof msg));
    if (pg_await(c, 0) < 0) {
        pg_cancel(c);
        pg_drain(c);
        return bkr_raise_interrupted(L, who);
    }
    PGresult *res = PQgetResult(c);
    ExecStatusType status = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (status == (in ? PGRES_COPY_IN : PGRES_COPY_OUT)) {
        PQclear(res);
        if (in && PQsetnonblocking(c, 1) != 0) {
            pg_drain(c);
            return bkr_pushfail(L, NULL, "%s: %s", who, pg_connmsg(c, msg, sizeof msg));
        }
        cs->active = 1;
        pc->copy = cs;
        lua_settop(L, 4);
        return 1;
    }
    if (status == PGRES_FATAL_ERROR || status == PGRES_BAD_RESPONSE) {
        char state[8] = "";
        if (res) {
            pg_resultmsg(res, 0, msg, sizeof msg);
            snprintf(state, sizeof state, "%s", pg_sqlstate(res) ? pg_sqlstate(res) : "");
        } else {
            pg_connmsg(c, msg, sizeof msg);
        }
        PQclear(res);
        pg_drain(c);
        return bkr_pushfail(L, *state ? state : NULL, "%s: %s", who, msg);
    }
    PQclear(res);
    if (status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH)
        pg_cancel(c);
    pg_drain(c);
    return luaL_error(L, "%s: not a COPY ... %s statement", who, in ? "FROM STDIN" : "TO STDOUT");
}

int pgconn_copy_out(lua_State *L)
{
    return pg_copy(L, 0);
}

int pgconn_copy_in(lua_State *L)
{
    return pg_copy(L, 1);
}

