/*
 * dump.c - bkr.dump: per-table row counts and order-independent digests of the COPY data in
 * pg_dump's plain-format output, and the same digest over the rows of one table.
 *
 * Lua API
 *   dump.table_digests([{name = ...}])  pass-through filter stage over pg_dump plain-format
 *                                 output (type "tables"); result: array, in dump order, of
 *                                 { schema = s, name = t, columns = {c1, ...}, rows = n,
 *                                   digest = hex } for every COPY section.
 *                                 The run fails if the dump ends inside a COPY section
 *                                 (truncated dump) or a pg_dump COPY header cannot be parsed.
 *   dump.row_digest([{name = ...}])   sink stage (type "rows") over exactly the rows of one
 *                                 table as `COPY ... TO STDOUT` emits them; result:
 *                                 { rows = n, digest = hex }. The run fails if the input
 *                                 ends with a row that has no terminating newline.
 *   dump.digest_rows(rows)        -> hex digest of an array of row strings (no newlines)
 *   dump.digest_add(hex, ...)     -> hex: the digest of the union (digests are additive, so
 *                                 sections of one table, or partitions, combine by adding)
 *   dump.refuse_meta_commands([{name = ...}])  pass-through filter stage that fails the run at
 *                                 any psql meta-command pg_dump never writes (psql_guard.c)
 *   dump.drop_restrict_lines([{name = ...}])  transforming filter: pg_dump's own \restrict and
 *                                 \unrestrict lines out, for a psql bkr restricts itself
 *                                 (psql_restrict.c)
 *
 * The digest (docs/api/dump.md, part of the manifest format): every row's SHA-256, read as a
 * 256-bit big-endian unsigned integer, summed modulo 2^256, as 64 lowercase hex digits. A sum
 * rather than XOR, so that duplicate rows count. Its one implementation is row_digest.c,
 * shared with bkr.pg's parallel comparison (conn:digest_tables).
 *
 * Recognising COPY sections. pg_dump writes every table's data as a TOC entry: a comment
 * block whose name line reads "-- Data for Name: T; Type: TABLE DATA; Schema: S; Owner: O",
 * perhaps "SET SESSION AUTHORIZATION ...;" and "ALTER TABLE ... DISABLE TRIGGER ALL;", then
 * "COPY S.T (cols) FROM stdin;" (more than one line if a quoted name holds a newline), the
 * rows, and "\.". A COPY header is accepted only as the first statement after such a comment
 * block; an INSERT there (--inserts) means the entry has none, and any other TOC name line
 * ("-- Name: ...") ends the wait. So a "COPY ... FROM stdin;" line in a function body (another
 * TOC entry) or in a string of an --inserts dump is not data. docs/api/dump.md lists what
 * could still fool this.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "bkr.h"
#include "psql_guard.h"
#include "psql_restrict.h"
#include "row_digest.h"
#include "stream.h"

/*
 * Longest COPY header kept. pg_dump's worst case is 1600 columns whose 63-byte names are
 * all double quotes (each written as 128 bytes plus ", "): about 210 KB. Longer lines
 * outside COPY data are skipped without being kept.
 */
#ifndef DUMP_HEADER_MAX
#define DUMP_HEADER_MAX (256 * 1024)
#endif

#define DATA_HEADER "-- Data for Name: "
#define NAME_HEADER "-- Name: "
#define TABLE_DATA "; Type: TABLE DATA; "
#define COPY_PREFIX "COPY "

/* ================================================================ the digest (row_digest.c) */

static int ssl_failed(bkr_error *err)
{
    unsigned long e = ERR_peek_last_error();
    char reason[256];
    if (e == 0)
        snprintf(reason, sizeof reason, "unknown OpenSSL error");
    else
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    return bkr_error_set(err, "SHA-256 failed: %s", reason);
}

/* ================================================================ COPY headers */

typedef struct table {
    char *names;     /* schema\0table\0col1\0...coln\0, malloc'd */
    int ncols;
    uint64_t rows;
    uint64_t sum[4];
} table;

/*
 * One identifier as pg_dump's fmtId writes it: "quoted" with "" for an embedded quote
 * (a quoted name may contain newlines), or bare (lower case letters, digits, _ and $;
 * upper case is folded as PostgreSQL would). Appends the name and a NUL at *out.
 * Returns the position after it, or NULL.
 */
static const char *parse_ident(const char *p, const char *end, char **out)
{
    char *o = *out, *start = *out;
    if (p < end && *p == '"') {
        for (p++;; p++) {
            if (p == end)
                return NULL;
            if (*p == '"') {
                if (p + 1 < end && p[1] == '"')
                    p++;
                else
                    break;
            }
            if (*p == '\0')
                return NULL;
            *o++ = *p;
        }
        p++;
    } else {
        while (p < end) {
            unsigned char c = (unsigned char)*p;
            if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '$' || c >= 0x80)
                *o++ = (char)c;
            else if (c >= 'A' && c <= 'Z')
                *o++ = (char)(c - 'A' + 'a');
            else
                break;
            p++;
        }
    }
    if (o == start)
        return NULL; /* PostgreSQL has no zero-length identifiers */
    *o++ = '\0';
    *out = o;
    return p;
}

static const char *skip_spaces(const char *p, const char *end)
{
    while (p < end && *p == ' ')
        p++;
    return p;
}

/*
 * "COPY schema.table (col, ...) FROM stdin;" or, for a table without columns,
 * "COPY schema.table  FROM stdin;". Fills t (names malloc'd). Returns 0, -1 if the line
 * has another shape, -2 when out of memory.
 */
static int parse_copy_header(const char *line, size_t len, table *t)
{
    static const char tail[] = "FROM stdin;";
    const char *p = line + strlen(COPY_PREFIX), *end = line + len;
    char *names = malloc(len + 2), *o = names;
    if (names == NULL)
        return -2;
    memset(t, 0, sizeof *t);
    if ((p = parse_ident(p, end, &o)) == NULL || p == end || *p++ != '.'
        || (p = parse_ident(p, end, &o)) == NULL || p == end || *p != ' ')
        goto bad;
    p = skip_spaces(p, end);
    if (p < end && *p == '(') {
        p++;
        for (;;) {
            p = skip_spaces(p, end);
            if ((p = parse_ident(p, end, &o)) == NULL)
                goto bad;
            t->ncols++;
            p = skip_spaces(p, end);
            if (p < end && *p == ',') {
                p++;
                continue;
            }
            if (p < end && *p == ')') {
                p++;
                break;
            }
            goto bad;
        }
        if (p == end || *p != ' ')
            goto bad;
        p = skip_spaces(p, end);
    }
    if ((size_t)(end - p) != strlen(tail) || memcmp(p, tail, strlen(tail)) != 0)
        goto bad;
    t->names = names;
    return 0;
bad:
    free(names);
    t->ncols = 0;
    return -1;
}

/* ================================================================ table_digests filter */

/*
 * Lines outside COPY data: LINE_KEEP collects a line that may matter (a TOC comment, or any
 * line while a COPY header may come); LINE_FULL has kept DUMP_HEADER_MAX bytes of a longer
 * one and drops the rest; LINE_SKIP drops a line that cannot matter.
 */
enum { LINE_START, LINE_KEEP, LINE_FULL, LINE_SKIP };

typedef struct tables {
    rowstate row;
    int in_copy;            /* between an accepted COPY header and its "\." */
    int armed;              /* a TABLE DATA TOC entry began and its COPY header may still come */
    int quote;              /* while armed: 0, or '"' / '\'' inside a name or literal of the preamble */
    int line_state;
    char *line;             /* the kept line, up to DUMP_HEADER_MAX bytes */
    size_t line_len, line_cap;
    int line_quotes;        /* parity of '"' in the kept line: odd inside a quoted name */
    uint64_t lineno;        /* number of the current line, from 1 */
    uint64_t line_first;    /* number of the kept line's first line (for messages) */
    table *tabs;
    size_t ntabs, tabs_cap;
    int finished;
} tables;

static void tables_free(void *self)
{
    tables *t = self;
    rowhash_release(&t->row.h);
    for (size_t i = 0; i < t->ntabs; i++)
        free(t->tabs[i].names);
    free(t->tabs);
    free(t->line);
    free(t);
}

static tables *tables_new(void)
{
    tables *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->lineno = 1;
    if (rowhash_init(&t->row.h) != 0) {
        tables_free(t);
        return NULL;
    }
    return t;
}

/* "schema.table" of the current section, for messages. */
static const char *current_name(tables *t, char *buf, size_t len)
{
    const char *schema = t->tabs[t->ntabs - 1].names;
    snprintf(buf, len, "%.200s.%.200s", schema, schema + strlen(schema) + 1);
    return buf;
}

static int keep(tables *t, const unsigned char *p, size_t n)
{
    if (t->line_len + n > t->line_cap) {
        size_t cap = t->line_cap ? t->line_cap : 1024;
        while (cap < t->line_len + n)
            cap *= 2;
        if (cap > DUMP_HEADER_MAX)
            cap = DUMP_HEADER_MAX;
        char *grown = realloc(t->line, cap);
        if (grown == NULL)
            return -1;
        t->line = grown;
        t->line_cap = cap;
    }
    memcpy(t->line + t->line_len, p, n);
    t->line_len += n;
    for (size_t i = 0; i < n; i++)
        t->line_quotes ^= p[i] == '"';
    return 0;
}

static int starts_with(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(s, prefix, n) == 0;
}

/* The kept line starts a statement of a TABLE DATA entry and is a COPY. */
static int copy_line_expected(tables *t)
{
    return t->armed && t->quote == 0 && starts_with(t->line, t->line_len, COPY_PREFIX);
}

/*
 * Follow quotes through what pg_dump may write between a TABLE DATA entry's comment block
 * and its COPY: "ALTER TABLE ... DISABLE TRIGGER ALL;", "SET SESSION AUTHORIZATION '...';".
 * A quoted name or role may contain newlines; a line inside one starts no statement.
 */
static void preamble_line(tables *t, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (t->quote == 0 && (s[i] == '"' || s[i] == '\''))
            t->quote = s[i];
        else if (s[i] == t->quote)
            t->quote = 0;
    }
}

/* A whole kept line (without its newline; truncated if LINE_FULL). */
static int header_line(tables *t, bkr_error *err)
{
    const char *s = t->line;
    size_t len = t->line_len;
    if (t->armed && t->quote != 0) {
        preamble_line(t, s, len);
    } else if (starts_with(s, len, NAME_HEADER)) {
        t->armed = 0;
    } else if (starts_with(s, len, DATA_HEADER)) {
        t->armed = memmem(s, len, TABLE_DATA, strlen(TABLE_DATA)) != NULL;
        t->quote = 0;
    } else if (copy_line_expected(t)) {
        table tab;
        if (t->line_state == LINE_FULL)
            return bkr_error_kind(err, BKR_KIND_CORRUPT, "line %llu: COPY header longer than %d bytes",
                                 (unsigned long long)t->line_first, DUMP_HEADER_MAX);
        int rc = parse_copy_header(s, len, &tab);
        if (rc == -2)
            return bkr_error_set(err, "out of memory");
        if (rc != 0)
            return bkr_error_kind(err, BKR_KIND_CORRUPT, "line %llu: not a COPY header as pg_dump writes it: %.*s",
                                 (unsigned long long)t->line_first, (int)(len < 200 ? len : 200), s);
        if (t->ntabs == t->tabs_cap) {
            size_t cap = t->tabs_cap ? 2 * t->tabs_cap : 16;
            table *grown = realloc(t->tabs, cap * sizeof *grown);
            if (grown == NULL) {
                free(tab.names);
                return bkr_error_set(err, "out of memory");
            }
            t->tabs = grown;
            t->tabs_cap = cap;
        }
        t->tabs[t->ntabs++] = tab;
        t->armed = 0;
        t->in_copy = 1;
    } else if (t->armed && !starts_with(s, len, "--")) {
        /* The INSERTs of --inserts mean this entry has no COPY; so does a line too long
         * to follow. Other statements are the preamble. */
        if (starts_with(s, len, "INSERT ") || t->line_state == LINE_FULL)
            t->armed = 0;
        else
            preamble_line(t, s, len);
    }
    return 0;
}

/* COPY data: hash rows as they pass; returns bytes used (all, or up to the "\." line). */
static int copy_data(tables *t, const unsigned char *p, size_t n, size_t *used, bkr_error *err)
{
    const unsigned char *start = p, *end = p + n;
    table *tab = &t->tabs[t->ntabs - 1];
    while (p < end) {
        if (!t->row.open && row_start(&t->row) != 0)
            return ssl_failed(err);
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        const unsigned char *stop = nl ? nl : end;
        if (row_bytes(&t->row, p, (size_t)(stop - p)) != 0)
            return ssl_failed(err);
        if (nl == NULL) {
            p = end;
            break;
        }
        p = nl + 1;
        t->lineno++;
        if (t->row.len == 2 && t->row.head[0] == '\\' && t->row.head[1] == '.') {
            t->row.open = 0;
            t->in_copy = 0;
            break;
        }
        if (row_end(&t->row, tab->sum) != 0)
            return ssl_failed(err);
        tab->rows++;
    }
    *used = (size_t)(p - start);
    return 0;
}

/* Outside COPY data: keep lines that may matter, skip the rest. */
static int other_lines(tables *t, const unsigned char *p, size_t n, size_t *used, bkr_error *err)
{
    const unsigned char *start = p, *end = p + n;
    while (p < end && !t->in_copy) {
        if (t->line_state == LINE_START) {
            /* Only a TOC comment can start a TABLE DATA entry; once one has, every line counts. */
            t->line_state = t->armed || *p == '-' ? LINE_KEEP : LINE_SKIP;
            t->line_len = 0;
            t->line_quotes = 0;
            t->line_first = t->lineno;
        }
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        const unsigned char *stop = nl ? nl : end;
        if (t->line_state == LINE_KEEP) {
            size_t k = (size_t)(stop - p), room = DUMP_HEADER_MAX - t->line_len;
            if (k > room) {
                k = room;
                t->line_state = LINE_FULL;
            }
            if (keep(t, p, k) != 0)
                return bkr_error_set(err, "out of memory");
        }
        if (nl == NULL) {
            p = end;
            break;
        }
        p = nl + 1;
        t->lineno++;
        if (t->line_state == LINE_KEEP && t->line_quotes && copy_line_expected(t)) {
            /* pg_dump quotes a name containing a newline, so a COPY header can span lines. */
            if (t->line_len < DUMP_HEADER_MAX) {
                if (keep(t, nl, 1) != 0)
                    return bkr_error_set(err, "out of memory");
                continue;
            }
            t->line_state = LINE_FULL;
        }
        if ((t->line_state == LINE_KEEP || t->line_state == LINE_FULL) && header_line(t, err) != 0)
            return -1;
        t->line_state = LINE_START;
    }
    *used = (size_t)(p - start);
    return 0;
}

static int tables_observe(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    tables *t = self;
    char name[512];
    if (data == NULL) {
        /* A last line without a newline still counts (a truncated COPY header fails). */
        if (!t->in_copy && (t->line_state == LINE_KEEP || t->line_state == LINE_FULL)
            && header_line(t, err) != 0)
            return -1;
        t->line_state = LINE_START;
        if (t->in_copy)
            return bkr_error_kind(err, BKR_KIND_TRUNCATED, "dump ends inside the COPY data of %s (truncated dump?)",
                                 current_name(t, name, sizeof name));
        t->finished = 1;
        return 0;
    }
    while (len > 0) {
        size_t used = 0;
        int rc = t->in_copy ? copy_data(t, data, len, &used, err) : other_lines(t, data, len, &used, err);
        if (rc != 0)
            return -1;
        data += used;
        len -= used;
    }
    return 0;
}

static void push_table(lua_State *L, const table *tab)
{
    char hex[65];
    const char *s = tab->names;
    lua_createtable(L, 0, 5);
    lua_pushstring(L, s);
    lua_setfield(L, -2, "schema");
    s += strlen(s) + 1;
    lua_pushstring(L, s);
    lua_setfield(L, -2, "name");
    s += strlen(s) + 1;
    lua_createtable(L, tab->ncols, 0);
    for (int i = 0; i < tab->ncols; i++) {
        lua_pushstring(L, s);
        lua_rawseti(L, -2, i + 1);
        s += strlen(s) + 1;
    }
    lua_setfield(L, -2, "columns");
    lua_pushinteger(L, (lua_Integer)tab->rows);
    lua_setfield(L, -2, "rows");
    row_digest_hex(tab->sum, hex);
    lua_pushstring(L, hex);
    lua_setfield(L, -2, "digest");
}

static int tables_result(void *self, lua_State *L)
{
    tables *t = self;
    if (!t->finished)
        return 0;
    lua_createtable(L, t->ntabs > INT32_MAX ? 0 : (int)t->ntabs, 0);
    for (size_t i = 0; i < t->ntabs; i++) {
        push_table(L, &t->tabs[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static const bkr_stage_ops tables_ops = {
    .type = "tables", .kind = BKR_FILTER, .observe = tables_observe, .result = tables_result,
    .free = tables_free,
};

static int dump_table_digests(lua_State *L)
{
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &tables_ops);
    tables *t = tables_new();
    if (t == NULL)
        return luaL_error(L, "dump.table_digests: cannot set up SHA-256");
    bkr_stage_open(st, t, name);
    return 1;
}

/* ================================================================ row_digest sink */

typedef struct rows {
    rowsum sum;
    int finished;
} rows;

static void rows_free(void *self)
{
    rows *r = self;
    rowsum_release(&r->sum);
    free(r);
}

static int rows_write(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    rows *r = self;
    return rowsum_write(&r->sum, data, len) == 0 ? 0 : ssl_failed(err);
}

static int rows_finish(void *self, bkr_error *err)
{
    rows *r = self;
    if (rowsum_open(&r->sum))
        return bkr_error_kind(err, BKR_KIND_TRUNCATED, "input ends inside row %llu (no newline after it)",
                             (unsigned long long)r->sum.count + 1);
    r->finished = 1;
    return 0;
}

static int rows_result(void *self, lua_State *L)
{
    rows *r = self;
    char hex[65];
    if (!r->finished)
        return 0;
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)r->sum.count);
    lua_setfield(L, -2, "rows");
    row_digest_hex(r->sum.sum, hex);
    lua_pushstring(L, hex);
    lua_setfield(L, -2, "digest");
    return 1;
}

static const bkr_stage_ops rows_ops = {
    .type = "rows", .kind = BKR_SINK, .write = rows_write, .finish = rows_finish,
    .result = rows_result, .free = rows_free,
};

static int dump_row_digest(lua_State *L)
{
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &rows_ops);
    rows *r = calloc(1, sizeof *r);
    if (r == NULL || rowsum_init(&r->sum) != 0) {
        if (r != NULL)
            rows_free(r);
        return luaL_error(L, "dump.row_digest: cannot set up SHA-256");
    }
    bkr_stage_open(st, r, name);
    return 1;
}

/* ================================================================ helpers */

static int dump_digest_rows(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Unsigned n = lua_rawlen(L, 1);
    /* Check every element before the hash context exists: raising later would leak it. */
    for (lua_Unsigned i = 1; i <= n; i++) {
        if (lua_rawgeti(L, 1, (lua_Integer)i) != LUA_TSTRING)
            return luaL_error(L, "dump.digest_rows: row %I is a %s, not a string", (lua_Integer)i,
                              luaL_typename(L, -1));
        lua_pop(L, 1);
    }
    rowstate r = {0};
    uint64_t sum[4] = {0, 0, 0, 0};
    int ok = rowhash_init(&r.h) == 0;
    for (lua_Unsigned i = 1; ok && i <= n; i++) {
        size_t len;
        lua_rawgeti(L, 1, (lua_Integer)i);
        const char *s = lua_tolstring(L, -1, &len);
        ok = row_start(&r) == 0 && row_bytes(&r, (const unsigned char *)s, len) == 0
             && row_end(&r, sum) == 0;
        lua_pop(L, 1);
    }
    rowhash_release(&r.h);
    ERR_clear_error();
    if (!ok)
        return luaL_error(L, "dump.digest_rows: SHA-256 failed");
    char hex[65];
    row_digest_hex(sum, hex);
    lua_pushstring(L, hex);
    return 1;
}

static int dump_digest_add(lua_State *L)
{
    int n = lua_gettop(L);
    uint64_t sum[4] = {0, 0, 0, 0};
    for (int i = 1; i <= n; i++) {
        size_t len;
        uint64_t add[4];
        const char *s = luaL_checklstring(L, i, &len);
        luaL_argcheck(L, row_digest_parse(s, len, add) == 0, i, "digest must be 64 hex digits");
        row_digest_add(sum, add);
    }
    char hex[65];
    row_digest_hex(sum, hex);
    lua_pushstring(L, hex);
    return 1;
}

static const luaL_Reg dump_functions[] = {
    {"table_digests", dump_table_digests},
    {"row_digest", dump_row_digest},
    {"digest_rows", dump_digest_rows},
    {"digest_add", dump_digest_add},
    {NULL, NULL},
};

int luaopen_bkr_dump(lua_State *L)
{
    luaL_newlib(L, dump_functions);
    luaL_setfuncs(L, bkr_dump_psql_guard, 0); /* refuse_meta_commands: psql_guard.c */
    luaL_setfuncs(L, bkr_dump_psql_restrict, 0); /* drop_restrict_lines: psql_restrict.c */
    return 1;
}
