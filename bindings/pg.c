/*
 * pg.c - bkr.pg: libpq connections, queries and COPY stages.
 *
 * Lua API (local pg = require "bkr.pg"):
 *
 *   pg.connect([conninfo])          -> conn | nil, msg
 *       conninfo: nil (PG* environment), a string (keyword=value or postgresql:// URI),
 *       or a table of libpq keywords ({host=, port=5432, dbname=, user=, password=, ...}),
 *       whose dbname is a database's name, never expanded as a conninfo.
 *       application_name defaults to "bkr". Interruptible; honours connect_timeout.
 *   pg.null                         the value of SQL NULL in rows (light userdata NULL,
 *                                   the same value as cjson.null)
 *
 *   conn:query(sql, ...)            -> rows, columns | nil, msg[, sqlstate]
 *       $1.. parameters: nil/pg.null -> NULL, booleans, numbers, strings.
 *   conn:exec(sql[, opts])          -> true, cmd_status | nil, msg[, sqlstate]
 *       one or more statements, simple query protocol, no parameters.
 *       opts.cleanup_timeout = seconds (<= 300): a cleanup statement, which runs even once bkr
 *       was interrupted, and is cancelled after that long (nil, msg, "57014").
 *   conn:server_version()           -> integer (150020), string ("15.20", first word of the
 *                                      server_version parameter)
 *   conn:database_size(name)        -> bytes | nil, msg[, sqlstate]
 *   conn:escape_identifier(s)       -> string
 *   conn:escape_literal(s)          -> string
 *   conn:notices()                  -> { "NOTICE:  ...", ... }, dropped
 *   conn:copy_out(sql[, opts])      -> source stage | nil, msg[, sqlstate]   (COPY ... TO STDOUT)
 *   conn:copy_in(sql[, opts])       -> sink stage | nil, msg[, sqlstate]     (COPY ... FROM STDIN)
 *       opts.name: key of the stage's result ({rows=, command=}) in stream.run's result table.
 *   conn:digest_tables(copies[, opts]) -> results | nil, msg, kind
 *       row counts and row digests of many COPY ... TO STDOUT statements, on opts.jobs worker
 *       threads with connections of their own (pg_digest.c has the details).
 *   conn:close()                    also __gc and __close; a second close is harmless.
 *
 * Every blocking wait polls the socket and gives up with "<who>: interrupted" once
 * bkr_interrupted() is true, cancelling the statement on the server first so that the
 * connection stays usable. The one exception is an exec with cleanup_timeout.
 *
 * This file holds the connection, its socket waits, queries and the module; the COPY stages
 * are in pg_copy.c (sharing pg_internal.h), the parallel table digests in pg_digest.c, and the
 * masking of passwords in messages in pg_redact.c.
 */

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"
#include "error.h"
#include "modules.h"
#include "pg_internal.h"
#include "pg_redact.h"

#define BKR_PGRESULT "bkr.pg.Result" /* internal: holds a PGresult while Lua tables are built */
#define BKR_PGMEM "bkr.pg.Mem"       /* internal: holds a string libpq allocated */

#define toconn(L, i) ((pgconn *)luaL_checkudata(L, i, BKR_PGCONN))

#define PG_MAX_NOTICE_LEN 1024

/* Type OIDs from catalog/pg_type.h (server headers are not needed for these few). */
#define PG_BOOLOID 16
#define PG_INT8OID 20
#define PG_INT2OID 21
#define PG_INT4OID 23
#define PG_OIDOID 26
#define PG_FLOAT4OID 700
#define PG_FLOAT8OID 701

/* ---------------------------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------------------------- */

/* Every message of bkr.pg keeps libpq's lines, as psql shows them, instead of running them
 * together ("...: No such file or directory Is the server running locally ..."): the first line
 * as it is, each further line indented by two spaces (PG_LINE_BREAK). The indentation also
 * means no line of a server's text can pass for a line of bkr's own output. */
#define PG_LINE_BREAK "\n  "

/* Copy src into dst (cap bytes) as lines joined by PG_LINE_BREAK: each line's own leading and
 * trailing blanks go, tabs become spaces, empty lines are dropped. Returns dst. */
static char *pg_lines(char *dst, size_t cap, const char *src)
{
    size_t n = 0, brk = strlen(PG_LINE_BREAK);
    if (cap == 0)
        return dst;
    while (*src && n + 1 < cap) {
        while (*src == ' ' || *src == '\t')
            src++;
        size_t len = strcspn(src, "\r\n");
        while (len > 0 && (src[len - 1] == ' ' || src[len - 1] == '\t'))
            len--;
        if (len > 0) {
            if (n > 0) {
                if (n + brk + 1 >= cap)
                    break;
                memcpy(dst + n, PG_LINE_BREAK, brk);
                n += brk;
            }
            for (size_t i = 0; i < len && n + 1 < cap; i++)
                dst[n++] = src[i] == '\t' ? ' ' : src[i];
        }
        src += strcspn(src, "\r\n");
        while (*src == '\r' || *src == '\n')
            src++;
    }
    dst[n] = '\0';
    return dst;
}

/* The connection's last error, as lines. */
char *pg_connmsg(PGconn *c, char *buf, size_t cap)
{
    const char *m = c ? PQerrorMessage(c) : "out of memory";
    pg_lines(buf, cap, m && *m ? m : "unknown error");
    return buf;
}

/* An error result as lines: "ERROR:  primary", "  DETAIL:  ...", ["  CONTEXT:  ..."]. */
char *pg_resultmsg(const PGresult *res, int with_context, char *buf, size_t cap)
{
    char tmp[PG_MSG];
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    const char *context = with_context ? PQresultErrorField(res, PG_DIAG_CONTEXT) : NULL;
    if (primary) {
        snprintf(tmp, sizeof tmp, "%s:  %s%s%s%s%s", sev ? sev : "ERROR", primary,
                 detail ? "\nDETAIL:  " : "", detail ? detail : "",
                 context ? "\nCONTEXT:  " : "", context ? context : "");
    } else {
        const char *m = PQresultErrorMessage(res);
        snprintf(tmp, sizeof tmp, "%s", m && *m ? m : PQresStatus(PQresultStatus(res)));
    }
    return pg_lines(buf, cap, tmp);
}

const char *pg_sqlstate(const PGresult *res)
{
    return res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
}

/* Collect server notices instead of letting libpq print them on stderr. Bounded. */
static void pg_notice(void *arg, const char *message)
{
    pgconn *pc = arg;
    char tmp[PG_MAX_NOTICE_LEN];
    if (pc->nnotices >= PG_MAX_NOTICES) {
        pc->dropped++;
        return;
    }
    pg_lines(tmp, sizeof tmp, message);
    char *s = strdup(tmp);
    if (!s) {
        pc->dropped++;
        return;
    }
    pc->notices[pc->nnotices++] = s;
}

static void pg_notices_free(pgconn *pc)
{
    for (int i = 0; i < pc->nnotices; i++)
        free(pc->notices[i]);
    pc->nnotices = 0;
}

/* ---------------------------------------------------------------------------------------------
 * Waiting on the socket
 * ------------------------------------------------------------------------------------------- */



/* Poll the connection's socket: returns revents, 0 on timeout or signal, -1 on error. */
int pg_poll(PGconn *c, short events, int timeout_ms)
{
    struct pollfd p = { .fd = PQsocket(c), .events = events, .revents = 0 };
    if (p.fd < 0)
        return -1;
    int r = poll(&p, 1, timeout_ms);
    if (r < 0)
        return errno == EINTR ? 0 : -1;
    if (r == 0)
        return 0;
    return p.revents ? p.revents : 0;
}

/* Wait until PQgetResult will not block. Returns 0, -1 when interrupted, -2 once the deadline
 * (monotonic seconds) passed. deadline 0: no deadline, and an interrupt stops the wait; with a
 * deadline (a cleanup statement) an interrupt does not. A broken connection returns 0 too:
 * PQgetResult then reports it. */
int pg_await(PGconn *c, double deadline)
{
    while (PQisBusy(c)) {
        if (deadline <= 0 && bkr_interrupted())
            return -1;
        if (deadline > 0 && bkr_monotonic() > deadline)
            return -2;
        if (pg_poll(c, POLLIN, 250) < 0)
            return 0;
        if (!PQconsumeInput(c))
            return 0;
    }
    return 0;
}

/* Flush output in nonblocking mode. Returns 0 when all is sent, -1 on a connection error,
 * -2 when interrupted (if interruptible) or when the deadline (seconds, 0 = none) passed. */
int pg_flush_wait(PGconn *c, int interruptible, double deadline)
{
    for (;;) {
        int r = PQflush(c);
        if (r == 0)
            return 0;
        if (r < 0)
            return -1;
        if (interruptible && bkr_interrupted())
            return -2;
        if (deadline > 0 && bkr_monotonic() > deadline)
            return -2;
        int ev = pg_poll(c, POLLIN | POLLOUT, 250);
        if (ev < 0)
            return -1;
        if ((ev & POLLIN) && !PQconsumeInput(c))
            return -1;
    }
}

/* Ask the server to cancel the running statement. Best effort. */
void pg_cancel(PGconn *c)
{
    char errbuf[256];
    PGcancel *cancel = PQgetCancel(c);
    if (cancel) {
        PQcancel(cancel, errbuf, sizeof errbuf);
        PQfreeCancel(cancel);
    }
}

/* Read and discard what is left of the current command so the connection can take the next
 * one: COPY data is skipped, a COPY FROM STDIN is failed. Blocks; call pg_cancel first when
 * the statement may run long. */
void pg_drain(PGconn *c)
{
    int copies = 0;
    if (PQisnonblocking(c)) {
        pg_flush_wait(c, 0, bkr_monotonic() + 10);
        PQsetnonblocking(c, 0);
    }
    for (;;) {
        PGresult *res = PQgetResult(c);
        if (!res)
            break;
        ExecStatusType st = PQresultStatus(res);
        PQclear(res);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            /* A dead connection stays in COPY state forever: do not loop on it. */
            if (PQstatus(c) == CONNECTION_BAD || ++copies > 8)
                break;
            if (st != PGRES_COPY_OUT)
                PQputCopyEnd(c, "bkr: COPY abandoned");
            if (st != PGRES_COPY_IN) {
                char *buf = NULL;
                int r;
                while ((r = PQgetCopyData(c, &buf, 0)) > 0) {
                    PQfreemem(buf);
                    buf = NULL;
                }
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Results held by a userdata, so that a memory error while building Lua tables cannot leak them
 * ------------------------------------------------------------------------------------------- */

static PGresult **pg_newholder(lua_State *L)
{
    PGresult **h = lua_newuserdatauv(L, sizeof *h, 0);
    *h = NULL;
    luaL_setmetatable(L, BKR_PGRESULT);
    return h;
}

static int pgresult_gc(lua_State *L)
{
    PGresult **h = luaL_checkudata(L, 1, BKR_PGRESULT);
    if (*h) {
        PGresult *res = *h;
        *h = NULL;
        PQclear(res);
    }
    return 0;
}

static void pg_release(PGresult **h)
{
    PGresult *res = *h;
    *h = NULL;
    PQclear(res);
}

/* ---------------------------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------------------------- */

static pgconn *pg_checkopen(lua_State *L)
{
    pgconn *pc = toconn(L, 1);
    if (!pc->conn)
        luaL_error(L, "pg: attempt to use a closed connection");
    return pc;
}

/* An open connection that is free for a new command. */
pgconn *pg_checkidle(lua_State *L, const char *who)
{
    pgconn *pc = pg_checkopen(L);
    if (pc->copy)
        luaL_error(L, "%s: a COPY is in progress on this connection", who);
    return pc;
}

static int pgconn_close(lua_State *L)
{
    pgconn *pc = toconn(L, 1);
    if (pc->conn) {
        PGconn *c = pc->conn;
        pc->conn = NULL;
        PQfinish(c);
    }
    pg_notices_free(pc);
    return 0;
}

static int pgconn_tostring(lua_State *L)
{
    pgconn *pc = toconn(L, 1);
    if (!pc->conn)
        lua_pushliteral(L, "pg.Conn (closed)");
    else
        lua_pushfstring(L, "pg.Conn (%s@%s:%s/%s)", PQuser(pc->conn), PQhost(pc->conn),
                        PQport(pc->conn), PQdb(pc->conn));
    return 1;
}

/* Appends each secret pg_conninfo_secrets finds to the table at absolute index t. */
typedef struct pg_secret_list {
    lua_State *L;
    int t;
} pg_secret_list;

static void pg_add_secret(void *arg, const char *ptr, size_t len)
{
    pg_secret_list *list = arg;
    lua_pushlstring(list->L, ptr, len);
    lua_rawseti(list->L, list->t, (lua_Integer)lua_rawlen(list->L, list->t) + 1);
}

/* Secrets of a conninfo string, pushed into the table at absolute index t: the password
 * libpq parses, whatever else looks like one (pg_redact.c), and for strings libpq cannot
 * parse, t.quoted (its syntax errors quote pieces of the string: hide them all). */
static void pg_secrets_of(lua_State *L, int t, const char *s)
{
    size_t len = strlen(s);
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(s, &err);
    if (err)
        PQfreemem(err);
    if (!opts && pg_conninfo_may_hold_secret(s, len)) {
        lua_pushboolean(L, 1);
        lua_setfield(L, t, "quoted");
    }
    if (opts) {
        for (PQconninfoOption *o = opts; o->keyword; o++)
            if (strcmp(o->keyword, "password") == 0 && o->val && *o->val) {
                lua_pushstring(L, o->val);
                lua_rawseti(L, t, (lua_Integer)lua_rawlen(L, t) + 1);
            }
        PQconninfoFree(opts);
    }
    pg_secret_list list = { L, t };
    pg_conninfo_secrets(s, len, pg_add_secret, &list);
}

/* Push msg with every secret of the table at index t masked as "***" (and, if t.quoted,
 * everything between double quotes). */
static void pg_push_redacted(lua_State *L, int t, const char *msg)
{
    int base = lua_gettop(L);
    lua_getfield(L, t, "quoted");
    int quoted = lua_toboolean(L, -1);
    lua_pop(L, 1);
    size_t n = lua_rawlen(L, t);
    pg_secret *secrets = lua_newuserdatauv(L, (n > 0 ? n : 1) * sizeof *secrets, 0); /* base + 1 */
    if (n > INT_MAX - 20)
        luaL_error(L, "pg.connect: too many secrets");
    luaL_checkstack(L, (int)n + 20, "pg.connect: too many secrets");
    for (size_t i = 0; i < n; i++) { /* on the stack, so that their pointers stay valid */
        lua_rawgeti(L, t, (lua_Integer)i + 1);
        secrets[i].ptr = lua_tolstring(L, -1, &secrets[i].len);
        if (!secrets[i].ptr)
            secrets[i].len = 0;
    }
    size_t len = strlen(msg);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, PG_REDACT_CAP(len));
    luaL_pushresultsize(&b, pg_redact(out, PG_REDACT_CAP(len), msg, len, secrets, n, quoted));
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
}

/* Value of a libpq option as libpq resolved it (explicit, environment or default). */
static int pg_option_int(PGconn *c, const char *keyword)
{
    int v = 0;
    PQconninfoOption *opts = PQconninfo(c);
    if (!opts)
        return 0;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (strcmp(o->keyword, keyword) == 0 && o->val)
            v = atoi(o->val);
    PQconninfoFree(opts);
    return v;
}

/* Finish a connection PQconnectStart* began: 0 when connected, -1 with the reason in msg, -2
 * once bkr_interrupted(). connect_timeout bounds the whole attempt. No Lua: worker threads
 * (pg_digest.c) connect with it too. */
int pg_connect_wait(PGconn *c, char *msg, size_t cap)
{
    if (PQstatus(c) == CONNECTION_BAD) {
        pg_connmsg(c, msg, cap);
        return -1;
    }
    int timeout = pg_option_int(c, "connect_timeout");
    double deadline = timeout > 0 ? bkr_monotonic() + (timeout < 2 ? 2 : timeout) : 0;
    PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
    while (ps != PGRES_POLLING_OK && ps != PGRES_POLLING_FAILED) {
        if (bkr_interrupted())
            return -2;
        if (deadline > 0 && bkr_monotonic() > deadline) {
            snprintf(msg, cap, "timeout expired");
            return -1;
        }
        int ev = pg_poll(c, ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, 250);
        if (ev == 0)
            continue;
        if (ev < 0) {
            snprintf(msg, cap, "lost the connection's socket");
            return -1;
        }
        ps = PQconnectPoll(c);
    }
    if (ps == PGRES_POLLING_FAILED || PQstatus(c) != CONNECTION_OK) {
        pg_connmsg(c, msg, cap);
        return -1;
    }
    return 0;
}

/* A conninfo table value as a string pushed on the stack. */
static const char *pg_optvalue(lua_State *L, int idx, const char *key)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        lua_pushvalue(L, idx);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
        else
            lua_pushfstring(L, "%f", (LUAI_UACNUMBER)lua_tonumber(L, idx));
        break;
    default:
        luaL_error(L, "pg.connect: conninfo.%s must be a string or a number, not %s", key,
                   luaL_typename(L, idx));
    }
    return lua_tostring(L, -1);
}

static int pg_connect(lua_State *L)
{
    int arg = lua_type(L, 1);
    if (arg != LUA_TNONE && arg != LUA_TNIL && arg != LUA_TSTRING && arg != LUA_TTABLE)
        luaL_typeerror(L, 1, "nil, string or table");
    lua_settop(L, 1);

    /* Keyword arrays live in userdata; their strings in table `strs`, secrets in `secrets`. */
    lua_newtable(L); /* 2: strs */
    lua_newtable(L); /* 3: secrets */
    const char *env_pw = getenv("PGPASSWORD");
    if (env_pw && *env_pw) {
        lua_pushstring(L, env_pw);
        lua_rawseti(L, 3, 1);
    }
    int n = 0, max = 3;
    if (arg == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            lua_pop(L, 1);
            max++;
        }
    }
    const char **keys = lua_newuserdatauv(L, sizeof(char *) * (size_t)max, 0);   /* 4 */
    const char **vals = lua_newuserdatauv(L, sizeof(char *) * (size_t)max, 0);   /* 5 */
    keys[n] = "fallback_application_name";
    vals[n++] = "bkr";
    if (arg == LUA_TSTRING) {
        const char *s = lua_tostring(L, 1);
        pg_secrets_of(L, 3, s);
        keys[n] = "dbname";
        vals[n++] = s;
    } else if (arg == LUA_TTABLE) {
        lua_getfield(L, 1, "dbname");
        if (!lua_isnil(L, -1)) {
            keys[n] = "dbname";
            vals[n++] = pg_optvalue(L, -1, "dbname");
            pg_secrets_of(L, 3, vals[n - 1]);
            lua_rawseti(L, 2, n);
        }
        lua_pop(L, 1);
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                luaL_error(L, "pg.connect: conninfo keys must be strings");
            const char *k = lua_tostring(L, -2);
            if (strcmp(k, "dbname") != 0) {
                keys[n] = k;
                vals[n++] = pg_optvalue(L, -1, k);
                if (strcmp(k, "password") == 0) {
                    lua_pushvalue(L, -1);
                    lua_rawseti(L, 3, (lua_Integer)lua_rawlen(L, 3) + 1);
                }
                lua_rawseti(L, 2, n);
            }
            lua_pop(L, 1);
        }
    }
    keys[n] = NULL;
    vals[n] = NULL;

    pgconn *pc = lua_newuserdatauv(L, sizeof *pc, 0);
    memset(pc, 0, sizeof *pc);
    luaL_setmetatable(L, BKR_PGCONN);
    int ud = lua_gettop(L);

    /* A string is a conninfo, so it is expanded; in a table, dbname is a database's name and
     * never read as a conninfo (a database may be named "dbname=x" or "host=/tmp"). */
    PGconn *c = PQconnectStartParams(keys, vals, arg == LUA_TSTRING);
    if (!c)
        return luaL_error(L, "pg.connect: out of memory");
    pc->conn = c; /* owned by the userdata from here: a raise cannot leak it */
    PQsetNoticeProcessor(c, pg_notice, pc);

    char msg[PG_MSG];
    int rc = pg_connect_wait(c, msg, sizeof msg);
    if (rc == -2) {
        pc->conn = NULL;
        PQfinish(c);
        return bkr_raise_interrupted(L, "pg.connect");
    }
    int failed = rc != 0;
    if (failed) {
        pc->conn = NULL;
        PQfinish(c);
        lua_pushnil(L);
        pg_push_redacted(L, 3, msg);
        lua_pushfstring(L, "pg.connect: %s", lua_tostring(L, -1));
        lua_remove(L, -2);
        return 2;
    }
    lua_pushvalue(L, ud);
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * Queries
 * ------------------------------------------------------------------------------------------- */

/*
 * Send sql and wait, interruptibly, for all its results. Pushes a result holder and returns the
 * result that matters (the first error, else the last result; NULL only when nothing could be
 * sent: the message is then in PQerrorMessage). multi: simple query protocol, several
 * statements, no parameters. Raises (after cleaning up) on interrupt and on COPY statements.
 * timeout > 0 (seconds) makes it a cleanup statement: it runs even once bkr was interrupted,
 * and is cancelled when the time is up; *timed_out is then set and the result is NULL.
 */
static PGresult *pg_run(lua_State *L, pgconn *pc, const char *who, const char *sql, int nparams,
                        const char *const *values, int multi, double timeout, int *timed_out)
{
    PGconn *c = pc->conn;
    /* Once interrupted, nothing new is sent (a quick statement would run before the cancel
     * reached it, while the caller is told it was interrupted); only cleanup statements are. */
    if (timeout <= 0 && bkr_interrupted())
        bkr_raise_interrupted(L, who);
    PGresult **holder = pg_newholder(L);
    double deadline = timeout > 0 ? bkr_monotonic() + timeout : 0;
    int sent = multi ? PQsendQuery(c, sql)
                     : PQsendQueryParams(c, sql, nparams, NULL, values, NULL, NULL, 0);
    if (!sent)
        return NULL;
    PGresult *err = NULL, *last = NULL;
    int stray_copy = 0;
    for (;;) {
        int waited = pg_await(c, deadline);
        if (waited < 0) {
            pg_cancel(c);
            pg_drain(c);
            PQclear(err);
            PQclear(last);
            if (waited == -2) {
                *timed_out = 1;
                return NULL;
            }
            bkr_raise_interrupted(L, who);
        }
        PGresult *res = PQgetResult(c);
        if (!res)
            break;
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            PQclear(res);
            stray_copy = 1;
            if (st != PGRES_COPY_IN)
                pg_cancel(c);
            pg_drain(c);
            break;
        }
        if ((st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE) && !err) {
            err = res;
        } else {
            PQclear(last);
            last = res;
        }
    }
    if (stray_copy) {
        PQclear(err);
        PQclear(last);
        luaL_error(L, "%s: COPY ... STDIN/STDOUT needs conn:copy_in or conn:copy_out", who);
    }
    if (err) {
        PQclear(last);
        last = err;
    }
    if (!last)
        last = PQmakeEmptyPGresult(c, PGRES_EMPTY_QUERY);
    *holder = last;
    return last;
}

/* Push nil, "who: message"[, sqlstate] for a failed pg_run (res NULL: not sent). */
static int pg_fail(lua_State *L, pgconn *pc, const char *who, const PGresult *res)
{
    char msg[PG_MSG];
    if (!res || PQresultStatus(res) == PGRES_EMPTY_QUERY)
        return bkr_pushfail(L, NULL, "%s: %s", who, pg_connmsg(pc->conn, msg, sizeof msg));
    return bkr_pushfail(L, pg_sqlstate(res), "%s: %s", who, pg_resultmsg(res, 0, msg, sizeof msg));
}

static int pg_failed(const PGresult *res)
{
    if (!res)
        return 1;
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;
}

/* Push field (i, j) of res as the Lua value its type suggests; NULL as pg.null. */
static void pg_pushvalue(lua_State *L, const PGresult *res, int i, int j)
{
    if (PQgetisnull(res, i, j)) {
        lua_pushlightuserdata(L, NULL);
        return;
    }
    const char *v = PQgetvalue(res, i, j);
    switch (PQftype(res, j)) {
    case PG_INT2OID:
    case PG_INT4OID:
    case PG_INT8OID:
    case PG_OIDOID:
        lua_pushinteger(L, (lua_Integer)strtoll(v, NULL, 10));
        break;
    case PG_FLOAT4OID:
    case PG_FLOAT8OID:
        lua_pushnumber(L, (lua_Number)strtod(v, NULL));
        break;
    case PG_BOOLOID:
        lua_pushboolean(L, v[0] == 't');
        break;
    default:
        lua_pushlstring(L, v, (size_t)PQgetlength(res, i, j));
        break;
    }
}

/* A query parameter as text (pushed on the stack when converted), or NULL for SQL NULL. */
static const char *pg_param(lua_State *L, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return NULL;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return NULL; /* pg.null */
        break;
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? "true" : "false";
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, idx));
        else {
            /* the shortest text that reads back as the same double */
            char buf[64];
            lua_Number x = lua_tonumber(L, idx);
            for (int prec = 15; prec <= 17; prec++) {
                snprintf(buf, sizeof buf, "%.*g", prec, (double)x);
                if (strtod(buf, NULL) == x)
                    break;
            }
            return lua_pushstring(L, buf);
        }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (strlen(s) != len)
            luaL_argerror(L, idx, "string contains a zero byte");
        return s;
    }
    default:
        break;
    }
    luaL_argerror(L, idx, lua_pushfstring(L, "cannot pass a %s as a query parameter",
                                          luaL_typename(L, idx)));
    return NULL;
}

const char *pg_checksql(lua_State *L, int idx)
{
    size_t len;
    const char *sql = luaL_checklstring(L, idx, &len);
    if (strlen(sql) != len)
        luaL_argerror(L, idx, "SQL contains a zero byte");
    return sql;
}

static int pgconn_query(lua_State *L)
{
    pgconn *pc = pg_checkidle(L, "pg.query");
    const char *sql = pg_checksql(L, 2);
    int nparams = lua_gettop(L) - 2;
    if (nparams > 65535)
        return luaL_error(L, "pg.query: too many parameters (%d)", nparams);
    luaL_checkstack(L, nparams + 20, "pg.query: too many parameters");
    const char **values = NULL;
    if (nparams > 0) {
        values = lua_newuserdatauv(L, sizeof(char *) * (size_t)nparams, 0);
        for (int k = 0; k < nparams; k++)
            values[k] = pg_param(L, 3 + k);
    }
    PGresult *res = pg_run(L, pc, "pg.query", sql, nparams, values, 0, 0, NULL);
    if (pg_failed(res))
        return pg_fail(L, pc, "pg.query", res);
    PGresult **holder = lua_touserdata(L, -1);
    int nrows = PQntuples(res), ncols = PQnfields(res);
    lua_createtable(L, nrows, 0);
    for (int i = 0; i < nrows; i++) {
        lua_createtable(L, 0, ncols);
        for (int j = 0; j < ncols; j++) {
            pg_pushvalue(L, res, i, j);
            lua_setfield(L, -2, PQfname(res, j));
        }
        lua_rawseti(L, -2, i + 1);
    }
    lua_createtable(L, ncols, 0);
    for (int j = 0; j < ncols; j++) {
        lua_pushstring(L, PQfname(res, j));
        lua_rawseti(L, -2, j + 1);
    }
    pg_release(holder);
    return 2;
}

/* The longest cleanup_timeout: a cleanup must end soon after an interrupt. */
#define PG_MAX_CLEANUP_TIMEOUT 300

static int pgconn_exec(lua_State *L)
{
    pgconn *pc = pg_checkidle(L, "pg.exec");
    const char *sql = pg_checksql(L, 2);
    double timeout = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "cleanup_timeout");
        if (!lua_isnil(L, -1)) {
            int isnum;
            timeout = (double)lua_tonumberx(L, -1, &isnum);
            if (!isnum || !(timeout > 0 && timeout <= PG_MAX_CLEANUP_TIMEOUT))
                luaL_argerror(L, 3, "cleanup_timeout must be a number of seconds, > 0 and <= 300");
        }
        lua_pop(L, 1);
    }
    lua_settop(L, 2);
    int timed_out = 0;
    PGresult *res = pg_run(L, pc, "pg.exec", sql, 0, NULL, 1, timeout, &timed_out);
    if (timed_out) /* 57014 query_canceled: the statement was cancelled on the server */
        return bkr_pushfail(L, "57014", "pg.exec: no result after %.14g s (cleanup_timeout): cancelled",
                            timeout);
    if (pg_failed(res))
        return pg_fail(L, pc, "pg.exec", res);
    lua_pushboolean(L, 1);
    lua_pushstring(L, PQcmdStatus(res));
    pg_release(lua_touserdata(L, -3));
    return 2;
}

static int pgconn_server_version(lua_State *L)
{
    pgconn *pc = pg_checkopen(L);
    const char *v = PQparameterStatus(pc->conn, "server_version");
    lua_pushinteger(L, PQserverVersion(pc->conn));
    if (v) /* "15.20 (Debian 15.20-0+deb12u1)": the version is the first word */
        lua_pushlstring(L, v, strcspn(v, " "));
    else
        lua_pushnil(L);
    return 2;
}

static int pgconn_database_size(lua_State *L)
{
    pgconn *pc = pg_checkidle(L, "pg.database_size");
    const char *name = pg_checksql(L, 2);
    const char *values[1] = { name };
    PGresult *res = pg_run(L, pc, "pg.database_size", "SELECT pg_catalog.pg_database_size($1::name)",
                           1, values, 0, 0, NULL);
    if (pg_failed(res))
        return pg_fail(L, pc, "pg.database_size", res);
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        lua_pushnil(L);
    else
        lua_pushinteger(L, (lua_Integer)strtoll(PQgetvalue(res, 0, 0), NULL, 10));
    pg_release(lua_touserdata(L, -2));
    return 1;
}

static int pgmem_gc(lua_State *L)
{
    char **h = luaL_checkudata(L, 1, BKR_PGMEM);
    if (*h) {
        char *m = *h;
        *h = NULL;
        PQfreemem(m);
    }
    return 0;
}

static int pg_escape(lua_State *L, int literal)
{
    const char *who = literal ? "pg.escape_literal" : "pg.escape_identifier";
    pgconn *pc = pg_checkopen(L);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    char **h = lua_newuserdatauv(L, sizeof *h, 0); /* owns libpq's string: pushing it may raise */
    *h = NULL;
    luaL_setmetatable(L, BKR_PGMEM);
    *h = literal ? PQescapeLiteral(pc->conn, s, len) : PQescapeIdentifier(pc->conn, s, len);
    if (!*h) {
        char msg[PG_MSG];
        return luaL_error(L, "%s: %s", who, pg_connmsg(pc->conn, msg, sizeof msg));
    }
    lua_pushstring(L, *h);
    char *m = *h; /* free it now rather than at the next collection */
    *h = NULL;
    PQfreemem(m);
    return 1;
}

static int pgconn_escape_identifier(lua_State *L)
{
    return pg_escape(L, 0);
}

static int pgconn_escape_literal(lua_State *L)
{
    return pg_escape(L, 1);
}

static int pgconn_notices(lua_State *L)
{
    pgconn *pc = pg_checkopen(L);
    lua_createtable(L, pc->nnotices, 0);
    for (int i = 0; i < pc->nnotices; i++) {
        lua_pushstring(L, pc->notices[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushinteger(L, pc->dropped);
    pg_notices_free(pc);
    pc->dropped = 0;
    return 2;
}

/* ---------------------------------------------------------------------------------------------
 * Module
 * ------------------------------------------------------------------------------------------- */

static const luaL_Reg pgconn_methods[] = {
    { "query", pgconn_query },
    { "exec", pgconn_exec },
    { "server_version", pgconn_server_version },
    { "database_size", pgconn_database_size },
    { "escape_identifier", pgconn_escape_identifier },
    { "escape_literal", pgconn_escape_literal },
    { "notices", pgconn_notices },
    { "copy_out", pgconn_copy_out },
    { "copy_in", pgconn_copy_in },
    { "digest_tables", pgconn_digest_tables },
    { "close", pgconn_close },
    { NULL, NULL },
};

static const luaL_Reg pgconn_metamethods[] = {
    { "__gc", pgconn_close },
    { "__close", pgconn_close },
    { "__tostring", pgconn_tostring },
    { NULL, NULL },
};

static const luaL_Reg pg_functions[] = {
    { "connect", pg_connect },
    { NULL, NULL },
};

static const luaL_Reg pgresult_metamethods[] = {
    { "__gc", pgresult_gc },
    { NULL, NULL },
};

static const luaL_Reg pgmem_metamethods[] = {
    { "__gc", pgmem_gc },
    { NULL, NULL },
};

static void createmeta(lua_State *L)
{
    bkr_createmeta(L, BKR_PGCONN, pgconn_metamethods, pgconn_methods);
    bkr_createmeta(L, BKR_PGRESULT, pgresult_metamethods, NULL);
    bkr_createmeta(L, BKR_PGMEM, pgmem_metamethods, NULL);
    pg_digest_createmeta(L);
}

int luaopen_bkr_pg(lua_State *L)
{
    createmeta(L);
    luaL_newlib(L, pg_functions);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
