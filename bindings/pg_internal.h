/*
 * pg_internal.h - what the files of bkr.pg share: the connection object and the helpers that
 * wait on its socket, describe its failures, and check the arguments of its methods.
 *
 * pg.c owns the connection (pg.connect, queries, the module) and defines every helper below;
 * pg_copy.c builds the COPY stages on top of them, pg_digest.c the parallel table digests. Nothing outside bkr.pg includes this.
 */
#ifndef BKR_PG_INTERNAL_H
#define BKR_PG_INTERNAL_H

#include <stddef.h>

#include <libpq-fe.h>

#include <lua.h>

#define BKR_PGCONN "bkr.pg.Conn"

/* Size of a message buffer (connection and server errors). */
#define PG_MSG 2048

#define PG_MAX_NOTICES 100

struct pgcopy; /* pg_copy.c: a COPY stage's state */

/* The userdata behind a bkr.pg.Conn. */
typedef struct pgconn {
    PGconn *conn;           /* NULL once closed */
    struct pgcopy *copy;    /* the COPY stage that owns the connection, or NULL */
    char *notices[PG_MAX_NOTICES];
    int nnotices;
    lua_Integer dropped;    /* notices that did not fit */
} pgconn;

/* ---- Arguments (these raise on misuse, as luaL_check* do) ---- */

/* The connection at stack index 1, open and free for a new command; raises "pg: attempt to
 * use a closed connection", or "<who>: a COPY is in progress on this connection". The
 * userdata is owned by Lua. */
pgconn *pg_checkidle(lua_State *L, const char *who);

/* The string at idx as SQL: raises when it is not a string or holds a zero byte. The string
 * is owned by Lua (valid while it stays on the stack). */
const char *pg_checksql(lua_State *L, int idx);

/* ---- Messages: each writes into the caller's buffer and returns it ---- */

/* The connection's last error, libpq's lines joined by "\n  " (c NULL: "out of memory"). */
char *pg_connmsg(PGconn *c, char *buf, size_t cap);

/* An error result: "ERROR:  primary", then "\n  DETAIL:  ...", and "\n  CONTEXT:  ..." if
 * with_context. */
char *pg_resultmsg(const PGresult *res, int with_context, char *buf, size_t cap);

/* The SQLSTATE of a result, or NULL. Owned by res: valid until PQclear(res). */
const char *pg_sqlstate(const PGresult *res);

/* ---- Waiting on the socket; every wait gives up once bkr_interrupted() is true ---- */

/* Finish a connection PQconnectStart* began: 0 when connected, -1 with libpq's reason in msg
 * (not redacted: the caller masks the password), -2 once interrupted. connect_timeout bounds
 * the whole attempt. No Lua calls: safe on a worker thread. */
int pg_connect_wait(PGconn *c, char *msg, size_t cap);

/* Poll the connection's socket for events: revents, 0 on timeout or signal, -1 on error. */
int pg_poll(PGconn *c, short events, int timeout_ms);

/* Wait until PQgetResult will not block: 0, -1 when interrupted (deadline 0), -2 once the
 * deadline (monotonic seconds; 0 = none) passed. A broken connection returns 0 too. */
int pg_await(PGconn *c, double deadline);

/* Flush output in nonblocking mode: 0 when all is sent, -1 on a connection error, -2 when
 * interrupted (if interruptible) or once the deadline (seconds; 0 = none) passed. */
int pg_flush_wait(PGconn *c, int interruptible, double deadline);

/* Ask the server to cancel the running statement. Best effort. */
void pg_cancel(PGconn *c);

/* Read and discard the rest of the current command so the connection can take the next one
 * (COPY data skipped, a COPY FROM STDIN failed). Blocks: pg_cancel first if it may run long. */
void pg_drain(PGconn *c);

/* ---- The COPY stages (pg_copy.c), methods of bkr.pg.Conn ---- */

int pgconn_copy_out(lua_State *L);
int pgconn_copy_in(lua_State *L);

/* ---- Many tables' row digests on worker threads (pg_digest.c), a method of bkr.pg.Conn ---- */

int pgconn_digest_tables(lua_State *L);

/* Create the metatable of pg_digest.c's internal userdata (luaopen_bkr_pg calls it). */
void pg_digest_createmeta(lua_State *L);

#endif
