/*
 * yaml.c - bkr.yaml: YAML documents (the configuration file) through libyaml's event parser.
 *
 * Lua API
 *   yaml.decode(text)        -> value of the single document; or nil, "yaml: line L, column C: ..."
 *   yaml.decode_file(path)   -> same for a file; or nil, "yaml: PATH: line L, column C: ..." /
 *                               nil, "yaml: PATH: No such file or directory"
 *   yaml.scalars(text)       -> array of every scalar of the document, in document order:
 *                                 { path = {key or index, ...}, value = "raw text after unescaping",
 *                                   style = "plain"|"single"|"double"|"literal"|"folded",
 *                                   start = 0-based byte offset of the scalar's text,
 *                                   stop = byte offset just past it (text:sub(start + 1, stop)),
 *                                   line = 1-based line of start, is_key = boolean }
 *                               or nil, msg (the same errors as decode)
 *   yaml.null                   sentinel for null values (a userdata; tostring gives "yaml.null")
 *   yaml.max_depth              nesting limit for collections (200)
 *   yaml.max_alias_nodes        how many nodes the aliases of a document may stand for (100000)
 *
 * Scalars are resolved with the YAML 1.2 core schema when plain (unquoted): null / Null / NULL / ~ /
 * empty -> yaml.null; true / false (3 spellings each) -> booleans; [-+]?[0-9]+, 0o17, 0x1F ->
 * integers (out of range -> error); 1.5, -.5, 1e3, .inf, -.Inf, .nan -> floats; anything else,
 * and every quoted or block scalar, is a string. Tags !!str !!int !!float !!bool !!null !!map
 * !!seq and the non-specific "!" are honoured; any other tag is an error. Mapping keys are
 * resolved the same way and must be scalars; a duplicate key is an error. Aliases are the
 * anchored value itself (the same table for collections), so decoding copies nothing; but each
 * alias counts as the nodes it stands for, and a document whose aliases stand for more than
 * yaml.max_alias_nodes fails (a "billion laughs" would cost every walker of the tree). Merge
 * keys (<<) are ordinary keys. An empty stream is yaml.null; more than one document is an error.
 *
 * No message quotes the input's values, tags or undefined aliases (any of them may be a
 * secret written unquoted): a problem names its line, column and key path instead.
 *
 * Every failure of the input is returned as nil, message; only a non-string argument raises.
 * The input must be UTF-8 (a leading BOM is allowed); libyaml reports positions in characters,
 * which are converted to byte offsets here so that issue 4 can rewrite values in place.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <yaml.h>

#include "bkr.h"
#include "modules.h"

#define BKR_YAMLREADER "bkr.yaml.Reader"
#define BKR_YAMLNULL "bkr.yaml.null"
#define toreader(L, i) ((yaml_reader *)luaL_checkudata(L, i, BKR_YAMLREADER))

#define YAML_MAX_DEPTH 200
#define YAML_MSG_MAX 512
/* Nodes that aliases may stand for in one document, each alias counting as the whole node
 * it names (so a "billion laughs" is counted as what it expands to). The tree itself shares
 * the tables, but every caller that walks it pays for the expansion. */
#define YAML_MAX_ALIAS_NODES 100000
#define YAML_PATH_MSG_MAX 160

#define TAG_PREFIX "tag:yaml.org,2002:"

/* ================================================================ scalar resolution (pure C) */

typedef enum { YV_NULL, YV_BOOL, YV_INT, YV_FLOAT, YV_STRING } yaml_kind;

typedef struct yaml_value {
    yaml_kind kind;
    int boolean;
    lua_Integer integer;
    double number;
} yaml_value;

typedef enum { RESOLVE_OK, RESOLVE_RANGE, RESOLVE_MISMATCH, RESOLVE_TAG } resolve_status;

static int is_one_of(const char *s, size_t n, const char *const *words)
{
    for (; *words != NULL; words++)
        if (strlen(*words) == n && memcmp(s, *words, n) == 0)
            return 1;
    return 0;
}

static int is_digit_in(int c, int base)
{
    if (base == 16)
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    return c >= '0' && c < '0' + base;
}

static int digit_value(int c)
{
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* Core-schema integer: [-+]?[0-9]+ | 0o[0-7]+ | 0x[0-9a-fA-F]+. Returns 0 when s is not an
 * integer at all, 1 when it is one (in *out), -1 when it is one but outside lua_Integer. */
static int parse_int(const char *s, size_t n, lua_Integer *out)
{
    int base = 10, negative = 0;
    size_t i = 0;
    if (n > 2 && s[0] == '0' && (s[1] == 'o' || s[1] == 'x')) {
        base = s[1] == 'o' ? 8 : 16;
        i = 2;
    } else if (n > 0 && (s[0] == '-' || s[0] == '+')) {
        negative = s[0] == '-';
        i = 1;
    }
    if (i == n)
        return 0;
    for (size_t j = i; j < n; j++)
        if (!is_digit_in((unsigned char)s[j], base))
            return 0;
    /* Accumulate in unsigned so that LUA_MININTEGER itself is representable. */
    unsigned long long limit = negative ? (unsigned long long)LUA_MAXINTEGER + 1 : LUA_MAXINTEGER;
    unsigned long long v = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)digit_value((unsigned char)s[i]);
        if (v > (limit - d) / (unsigned)base)
            return -1;
        v = v * (unsigned)base + d;
    }
    *out = negative ? (lua_Integer)(0 - v) : (lua_Integer)v;
    return 1;
}

/* Core-schema float: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?, [-+]?.inf, .nan. */
static int parse_float(const char *s, size_t n, double *out)
{
    static const char *const inf[] = {".inf", ".Inf", ".INF", NULL};
    static const char *const nan[] = {".nan", ".NaN", ".NAN", NULL};
    size_t i = 0, digits = 0;
    if (is_one_of(s, n, nan)) {
        *out = NAN;
        return 1;
    }
    if (n > 0 && (s[0] == '-' || s[0] == '+'))
        i = 1;
    if (is_one_of(s + i, n - i, inf)) {
        *out = s[0] == '-' ? -HUGE_VAL : HUGE_VAL;
        return 1;
    }
    while (i < n && is_digit_in((unsigned char)s[i], 10))
        i++, digits++;
    if (i < n && s[i] == '.') {
        size_t fraction = 0;
        for (i++; i < n && is_digit_in((unsigned char)s[i], 10); i++)
            fraction++;
        if (digits == 0 && fraction == 0)
            return 0;
        digits += fraction;
    }
    if (digits == 0)
        return 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t exponent = 0;
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        for (; i < n && is_digit_in((unsigned char)s[i], 10); i++)
            exponent++;
        if (exponent == 0)
            return 0;
    }
    if (i != n || n > 400)
        return 0;
    /* Validated above, so strtod sees only [-+0-9.eE]; the host never calls setlocale, so the
     * decimal point is '.'. The copy adds the terminator strtod needs. */
    char buf[401];
    memcpy(buf, s, n);
    buf[n] = '\0';
    *out = strtod(buf, NULL);
    return 1;
}

static int parse_null(const char *s, size_t n)
{
    static const char *const words[] = {"", "~", "null", "Null", "NULL", NULL};
    return is_one_of(s, n, words);
}

static int parse_bool(const char *s, size_t n, int *out)
{
    static const char *const yes[] = {"true", "True", "TRUE", NULL};
    static const char *const no[] = {"false", "False", "FALSE", NULL};
    if (is_one_of(s, n, yes))
        return *out = 1, 1;
    if (is_one_of(s, n, no))
        return *out = 0, 1;
    return 0;
}

/* The core schema's implicit resolution of a plain scalar. */
static resolve_status resolve_plain(const char *s, size_t n, yaml_value *v)
{
    int r;
    if (parse_null(s, n))
        v->kind = YV_NULL;
    else if (parse_bool(s, n, &v->boolean))
        v->kind = YV_BOOL;
    else if ((r = parse_int(s, n, &v->integer)) != 0) {
        if (r < 0)
            return RESOLVE_RANGE;
        v->kind = YV_INT;
    } else if (parse_float(s, n, &v->number))
        v->kind = YV_FLOAT;
    else
        v->kind = YV_STRING;
    return RESOLVE_OK;
}

/*
 * Resolve a scalar of any style with its tag (NULL when it has none). An explicit tag names the
 * type, whatever the style: !!int "12" is 12. A quoted or block scalar without a tag is a string.
 */
static resolve_status resolve_scalar(const char *tag, int plain, const char *s, size_t n, yaml_value *v)
{
    if (tag == NULL)
        return plain ? resolve_plain(s, n, v) : (v->kind = YV_STRING, RESOLVE_OK);
    if (strcmp(tag, "!") == 0 || strcmp(tag, TAG_PREFIX "str") == 0) {
        v->kind = YV_STRING;
        return RESOLVE_OK;
    }
    if (strcmp(tag, TAG_PREFIX "null") == 0) {
        v->kind = YV_NULL;
        return parse_null(s, n) ? RESOLVE_OK : RESOLVE_MISMATCH;
    }
    if (strcmp(tag, TAG_PREFIX "bool") == 0) {
        v->kind = YV_BOOL;
        return parse_bool(s, n, &v->boolean) ? RESOLVE_OK : RESOLVE_MISMATCH;
    }
    if (strcmp(tag, TAG_PREFIX "int") == 0) {
        int r = parse_int(s, n, &v->integer);
        v->kind = YV_INT;
        return r > 0 ? RESOLVE_OK : r < 0 ? RESOLVE_RANGE : RESOLVE_MISMATCH;
    }
    if (strcmp(tag, TAG_PREFIX "float") == 0) {
        lua_Integer i;
        v->kind = YV_FLOAT;
        if (parse_float(s, n, &v->number))
            return RESOLVE_OK;
        if (parse_int(s, n, &i) > 0)
            return v->number = (double)i, RESOLVE_OK;
        return RESOLVE_MISMATCH;
    }
    return RESOLVE_TAG;
}

/* ================================================================ event source (pure C) */

/*
 * The parser, its current event and the input, owned by a userdata so that a memory error
 * raised by the Lua API while they are live still frees them (through __gc).
 */
typedef struct yaml_reader {
    yaml_parser_t parser;
    yaml_event_t event;
    int parser_live, event_live;
    unsigned char *owned;          /* decode_file's buffer; NULL for a Lua string */
    const unsigned char *text;     /* the input, UTF-8 */
    size_t len;
    size_t cursor_char, cursor_byte; /* last character index converted to a byte offset */
} yaml_reader;

static void reader_release(yaml_reader *r)
{
    if (r->event_live) {
        r->event_live = 0;
        yaml_event_delete(&r->event);
    }
    if (r->parser_live) {
        r->parser_live = 0;
        yaml_parser_delete(&r->parser);
    }
    free(r->owned);
    r->owned = NULL;
    r->text = NULL;
}

static int reader_start(yaml_reader *r, const unsigned char *text, size_t len)
{
    if (!yaml_parser_initialize(&r->parser))
        return -1;
    r->parser_live = 1;
    r->text = text;
    r->len = len;
    r->cursor_char = r->cursor_byte = 0;
    /* Forced, not detected: libyaml then counts a BOM as one character like any other, so
     * character indexes map to byte offsets of the text as given. */
    yaml_parser_set_encoding(&r->parser, YAML_UTF8_ENCODING);
    yaml_parser_set_input_string(&r->parser, text, len);
    return 0;
}

/*
 * Byte offset of libyaml's character index `index`. libyaml validated the UTF-8 up to every
 * mark it reports, so characters are the bytes that are not continuation bytes. Events come in
 * document order, so a cursor makes the whole walk linear.
 */
static size_t reader_offset(yaml_reader *r, size_t index)
{
    if (index < r->cursor_char)
        r->cursor_char = r->cursor_byte = 0;
    size_t c = r->cursor_char, b = r->cursor_byte;
    while (c < index && b < r->len) {
        b++;
        while (b < r->len && (r->text[b] & 0xC0) == 0x80)
            b++;
        c++;
    }
    r->cursor_char = c;
    r->cursor_byte = b;
    return b;
}

static int is_anchor_char(int c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '-';
}

/* Length of the line break at p (\r\n, \r, \n, NEL, LS, PS as libyaml counts them), or 0. */
static size_t break_length(const unsigned char *p, const unsigned char *end)
{
    if (p >= end)
        return 0;
    if (p[0] == '\r')
        return p + 1 < end && p[1] == '\n' ? 2 : 1;
    if (p[0] == '\n')
        return 1;
    if (p[0] == 0xC2 && p + 1 < end && p[1] == 0x85)
        return 2;
    if (p[0] == 0xE2 && p + 2 < end && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9))
        return 3;
    return 0;
}

/*
 * A scalar event's span begins at its properties (&anchor, !tag), which may be followed by
 * spaces, comments and line breaks. Skip `properties` of them so that the span is the scalar's
 * own text, the part issue 4 will rewrite. Returns the new start; counts line breaks in *line.
 */
static size_t skip_properties(const unsigned char *text, size_t start, size_t stop, int properties,
                              size_t *line)
{
    const unsigned char *p = text + start, *end = text + stop;
    for (; properties > 0 && p < end; properties--) {
        if (*p == '!' && p + 1 < end && p[1] == '<') {
            while (p < end && *p != '>')
                p++;
            if (p < end)
                p++;
        }
        if (*p == '&') { /* anchor names are [0-9A-Za-z_-]+ in libyaml */
            p++;
            while (p < end && (is_anchor_char(*p)))
                p++;
        } else { /* a tag shorthand ends at a blank, a break or a flow indicator */
            while (p < end && *p != ' ' && *p != '\t' && break_length(p, end) == 0 && *p != ',' &&
                   *p != '[' && *p != ']' && *p != '{' && *p != '}')
                p++;
        }
        for (;;) {
            size_t b;
            if (p < end && (*p == ' ' || *p == '\t')) {
                p++;
            } else if ((b = break_length(p, end)) > 0) {
                p += b;
                (*line)++;
            } else if (p < end && *p == '#') {
                while (p < end && break_length(p, end) == 0)
                    p++;
            } else {
                break;
            }
        }
    }
    return (size_t)(p - text);
}

/* 1-based line and column of a byte offset (for reader errors, which carry only an offset). */
static void position_of(const unsigned char *text, size_t len, size_t offset, size_t *line, size_t *column)
{
    const unsigned char *p = text, *end = text + (offset < len ? offset : len);
    *line = 1;
    *column = 1;
    while (p < end) {
        size_t b = break_length(p, end);
        if (b > 0) {
            p += b;
            (*line)++;
            *column = 1;
        } else {
            p++;
            while (p < end && (*p & 0xC0) == 0x80)
                p++;
            (*column)++;
        }
    }
}

/* ================================================================ tree builder (Lua) */

/* One walk over the event stream: builds the document's value and, for scalars(), the list. */
typedef struct walk {
    lua_State *L;
    yaml_reader *r;
    int null_idx;      /* yaml.null */
    int anchors_idx;   /* anchor name -> value, or false while its collection is being built */
    int sizes_idx;     /* anchor name -> nodes in the anchored node, its aliases expanded */
    int path_idx;      /* keys / indices leading to the current node, 1..path_len */
    int path_len;
    unsigned char is_index[YAML_MAX_DEPTH + 2]; /* path element i is a sequence index */
    lua_Integer nodes;       /* nodes so far, each alias counted as the node it names */
    lua_Integer alias_nodes; /* the part of `nodes` that aliases stand for */
    int out_idx;       /* scalars() result, or 0 when decoding */
    lua_Integer out_len;
    char msg[YAML_MSG_MAX]; /* the failure, "line L, column C: ..." */
} walk;

static int fail_at(walk *w, size_t line, size_t column, const char *fmt, ...)
{
    int n = snprintf(w->msg, sizeof w->msg, "line %zu, column %zu: ", line, column);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < sizeof w->msg)
        vsnprintf(w->msg + n, sizeof w->msg - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

#define fail_mark(w, mark, ...) fail_at(w, (mark).line + 1, (mark).column + 1, __VA_ARGS__)

/*
 * Append the current node's place to buf as a key path ("database.password", "tokens[2]",
 * indices 0-based, as jq and config_files.lua write them), cut to fit. Keys are names, which a
 * message may show; values never are (docs/config-backup.md: a message names the file, the
 * key path and the line, never a value, since any value may be a secret).
 */
static void append_path(walk *w, char *buf, size_t size)
{
    lua_State *L = w->L;
    size_t n = strlen(buf), limit = n + YAML_PATH_MSG_MAX < size ? n + YAML_PATH_MSG_MAX : size - 1;
    int cut = 0;
    for (int i = 1; i <= w->path_len && !cut; i++) {
        char part[128];
        lua_rawgeti(L, w->path_idx, i);
        if (w->is_index[i]) {
            snprintf(part, sizeof part, "[%lld]", (long long)lua_tointeger(L, -1) - 1);
        } else {
            size_t len;
            const char *key = luaL_tolstring(L, -1, &len); /* pushes; popped below */
            int bare = len > 0 && len <= 40;
            for (size_t j = 0; j < len && bare; j++)
                bare = is_anchor_char((unsigned char)key[j]);
            if (bare) {
                snprintf(part, sizeof part, "%s%s", i > 1 ? "." : "", key);
            } else { /* ["key"], with anything unprintable as \xNN, at most 24 bytes of it */
                size_t k = 0;
                part[k++] = '[';
                part[k++] = '"';
                for (size_t j = 0; j < len; j++) { /* at most 2 + 24 * 4 + 3 bytes: fits */
                    unsigned char c = (unsigned char)key[j];
                    if (j == 24) {
                        k += (size_t)snprintf(part + k, sizeof part - k, "...");
                        break;
                    }
                    if (c < 0x20 || c == 0x7f || c == '"' || c == '\\')
                        k += (size_t)snprintf(part + k, sizeof part - k, "\\x%02x", c);
                    else
                        part[k++] = (char)c;
                }
                snprintf(part + k, sizeof part - k, "\"]");
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        size_t m = strlen(part);
        if (n + m > limit) { /* room for "..." is kept: limit is at most size - 1 */
            m = limit - n > 3 ? limit - n - 3 : 0;
            cut = 1;
        }
        memcpy(buf + n, part, m);
        n += m;
        if (cut && n + 3 < size) {
            memcpy(buf + n, "...", 3);
            n += 3;
        }
        buf[n] = '\0';
    }
}

/* A failure about the current node's content: "line L, column C: KEY.PATH: problem". Never the
 * text of the value, nor of a tag or an alias written where a value goes (an unquoted password
 * "!Secr3t" is read as a tag, "*Secr3t" as an alias). */
static int fail_node(walk *w, yaml_mark_t mark, const char *fmt, ...)
{
    int n = snprintf(w->msg, sizeof w->msg, "line %zu, column %zu: ", mark.line + 1, mark.column + 1);
    if (w->path_len > 0 && n >= 0 && (size_t)n < sizeof w->msg) {
        append_path(w, w->msg, sizeof w->msg);
        n = (int)strlen(w->msg);
        n += snprintf(w->msg + n, sizeof w->msg - (size_t)n, ": ");
    }
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < sizeof w->msg)
        vsnprintf(w->msg + n, sizeof w->msg - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int parser_error(walk *w)
{
    yaml_parser_t *p = &w->r->parser;
    switch (p->error) {
    case YAML_MEMORY_ERROR:
        return fail_at(w, 1, 1, "out of memory");
    case YAML_READER_ERROR: {
        size_t line, column;
        /* (not p->problem_value: that is a byte of the input, perhaps of a secret) */
        position_of(w->r->text, w->r->len, p->problem_offset, &line, &column);
        return fail_at(w, line, column, "%s", p->problem);
    }
    case YAML_SCANNER_ERROR:
    case YAML_PARSER_ERROR:
        /* libyaml's words for a tab ("found character that cannot start any token", "found a tab
         * character that violates indentation") do not say what to do. Only the character at
         * the problem mark is looked at, never shown. */
        if (p->error == YAML_SCANNER_ERROR && p->problem_mark.index < w->r->len) {
            size_t at = reader_offset(w->r, p->problem_mark.index);
            if (at < w->r->len && w->r->text[at] == '\t')
                return fail_mark(w, p->problem_mark, "a tab character; YAML indents with spaces only");
        }
        if (p->context != NULL && p->context_mark.index == p->problem_mark.index)
            return fail_mark(w, p->problem_mark, "%s (%s)", p->problem, p->context);
        if (p->context != NULL)
            return fail_mark(w, p->problem_mark, "%s (%s at line %zu, column %zu)", p->problem, p->context,
                             p->context_mark.line + 1, p->context_mark.column + 1);
        return fail_mark(w, p->problem_mark, "%s", p->problem ? p->problem : "syntax error");
    default:
        return fail_at(w, 1, 1, "%s", p->problem ? p->problem : "cannot parse");
    }
}

/* Replace the current event by the next one. */
static int next_event(walk *w)
{
    yaml_reader *r = w->r;
    if (r->event_live) {
        r->event_live = 0;
        yaml_event_delete(&r->event);
    }
    if (!yaml_parser_parse(&r->parser, &r->event))
        return parser_error(w);
    r->event_live = 1;
    return 0;
}

/* A key for an error message: its text, shortened, or the alias it came from. */
static void describe_key(const yaml_event_t *ev, char *buf, size_t size)
{
    if (ev->type == YAML_ALIAS_EVENT) {
        snprintf(buf, size, "*%.40s", (const char *)ev->data.alias.anchor);
    } else if (ev->type == YAML_SCALAR_EVENT) {
        size_t n = ev->data.scalar.length;
        snprintf(buf, size, "\"%.*s%s\"", (int)(n > 40 ? 40 : n), (const char *)ev->data.scalar.value,
                 n > 40 ? "..." : "");
    } else {
        snprintf(buf, size, "?");
    }
}

static const char *style_name(yaml_scalar_style_t style)
{
    switch (style) {
    case YAML_SINGLE_QUOTED_SCALAR_STYLE: return "single";
    case YAML_DOUBLE_QUOTED_SCALAR_STYLE: return "double";
    case YAML_LITERAL_SCALAR_STYLE: return "literal";
    case YAML_FOLDED_SCALAR_STYLE: return "folded";
    default: return "plain";
    }
}

/*
 * An unsupported tag, named only when it is one of the YAML 1.1 types of the yaml.org
 * repository (!!set, !!binary ...): any other tag may be a value written unquoted, since
 * `password: !Secr3t` is the tag !Secr3t on an empty scalar.
 */
static int fail_tag(walk *w, yaml_mark_t mark, const char *tag)
{
    static const char *const known[] = {"binary", "merge", "omap", "pairs", "set", "timestamp", "value",
                                        "yaml", "str", "int", "float", "bool", "null", "map", "seq", NULL};
    size_t prefix = strlen(TAG_PREFIX);
    if (strncmp(tag, TAG_PREFIX, prefix) == 0 && is_one_of(tag + prefix, strlen(tag + prefix), known))
        return fail_node(w, mark, "unsupported tag !!%s", tag + prefix);
    return fail_node(w, mark, "unsupported tag (not shown: a plain value that starts with '!' is read "
                              "as a tag; quote it)");
}

/* Tags a collection may carry: none, "!", or its own core tag. */
static int check_collection_tag(walk *w, const yaml_event_t *ev, const yaml_char_t *tag, const char *own)
{
    if (tag == NULL || strcmp((const char *)tag, "!") == 0 || strcmp((const char *)tag, own) == 0)
        return 0;
    return fail_tag(w, ev->start_mark, (const char *)tag);
}

/* Append the current scalar event, whose value is at the top of the stack, to scalars()'s list. */
static void record_scalar(walk *w, int is_key)
{
    lua_State *L = w->L;
    yaml_reader *r = w->r;
    const yaml_event_t *ev = &r->event;
    size_t start = reader_offset(r, ev->start_mark.index);
    size_t stop = reader_offset(r, ev->end_mark.index);
    size_t line = ev->start_mark.line + 1;
    int properties = (ev->data.scalar.anchor != NULL) + (ev->data.scalar.tag != NULL);
    if (stop < start)
        stop = start;
    start = skip_properties(r->text, start, stop, properties, &line);

    lua_createtable(L, 0, 7);
    lua_createtable(L, w->path_len + is_key, 0);
    for (int i = 1; i <= w->path_len; i++) {
        lua_rawgeti(L, w->path_idx, i);
        lua_rawseti(L, -2, i);
    }
    if (is_key) {
        lua_pushvalue(L, -3);
        lua_rawseti(L, -2, w->path_len + 1);
    }
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, (const char *)ev->data.scalar.value, ev->data.scalar.length);
    lua_setfield(L, -2, "value");
    lua_pushstring(L, style_name(ev->data.scalar.style));
    lua_setfield(L, -2, "style");
    lua_pushinteger(L, (lua_Integer)start);
    lua_setfield(L, -2, "start");
    lua_pushinteger(L, (lua_Integer)stop);
    lua_setfield(L, -2, "stop");
    lua_pushinteger(L, (lua_Integer)line);
    lua_setfield(L, -2, "line");
    lua_pushboolean(L, is_key);
    lua_setfield(L, -2, "is_key");
    lua_rawseti(L, w->out_idx, ++w->out_len);
}

static int walk_scalar(walk *w, int is_key)
{
    lua_State *L = w->L;
    const yaml_event_t *ev = &w->r->event;
    const char *s = (const char *)ev->data.scalar.value, *tag = (const char *)ev->data.scalar.tag;
    size_t n = ev->data.scalar.length;
    yaml_value v;
    switch (resolve_scalar(tag, ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE, s, n, &v)) {
    case RESOLVE_OK:
        break;
    case RESOLVE_RANGE:
        return fail_node(w, ev->start_mark, "integer out of range");
    case RESOLVE_MISMATCH: /* only the core tags resolve_scalar knows get here */
        return fail_node(w, ev->start_mark, "invalid !!%s value", tag + strlen(TAG_PREFIX));
    case RESOLVE_TAG:
        return fail_tag(w, ev->start_mark, tag);
    }
    switch (v.kind) {
    case YV_NULL: lua_pushvalue(L, w->null_idx); break;
    case YV_BOOL: lua_pushboolean(L, v.boolean); break;
    case YV_INT: lua_pushinteger(L, v.integer); break;
    case YV_FLOAT:
        if (is_key && isnan(v.number))
            return fail_node(w, ev->start_mark, "a mapping key cannot be NaN");
        lua_pushnumber(L, v.number);
        break;
    case YV_STRING: lua_pushlstring(L, s, n); break;
    }
    w->nodes++;
    if (ev->data.scalar.anchor != NULL) {
        lua_pushvalue(L, -1);
        lua_setfield(L, w->anchors_idx, (const char *)ev->data.scalar.anchor);
        lua_pushinteger(L, 1);
        lua_setfield(L, w->sizes_idx, (const char *)ev->data.scalar.anchor);
    }
    if (w->out_idx != 0)
        record_scalar(w, is_key);
    return 0;
}

static int walk_alias(walk *w, int is_key)
{
    lua_State *L = w->L;
    const yaml_event_t *ev = &w->r->event;
    const char *name = (const char *)ev->data.alias.anchor;
    int type = lua_getfield(L, w->anchors_idx, name);
    if (type == LUA_TNIL) /* not named: `password: *Secr3t` is an alias */
        return fail_node(w, ev->start_mark, "undefined alias (not shown: a plain value that starts with "
                                            "'*' is read as an alias; quote it)");
    if (type == LUA_TBOOLEAN)
        return fail_mark(w, ev->start_mark, "alias *%.100s refers to a collection that contains it", name);
    if (is_key && type == LUA_TTABLE)
        return fail_mark(w, ev->start_mark, "mapping keys must be scalars (alias *%.100s is a collection)",
                         name);
    /* Every caller that walks the tree pays for the expansion: bound it here. */
    lua_getfield(L, w->sizes_idx, name);
    lua_Integer size = lua_tointeger(L, -1);
    lua_pop(L, 1);
    w->nodes += size;
    w->alias_nodes += size;
    if (w->alias_nodes > YAML_MAX_ALIAS_NODES)
        return fail_node(w, ev->start_mark, "aliases stand for more than %d nodes (yaml.max_alias_nodes): "
                         "refused as a \"billion laughs\"", YAML_MAX_ALIAS_NODES);
    return 0;
}

static int walk_node(walk *w, int depth, int is_key);

/* Push the anchor of the collection that starts at the current event (or nil) and mark it as
 * under construction, so that an alias inside it is reported instead of building a cycle.
 * Counts the collection as a node; returns the count before it, for anchor_end. */
static lua_Integer anchor_begin(walk *w, const yaml_char_t *anchor)
{
    lua_State *L = w->L;
    lua_Integer before = w->nodes++;
    if (anchor == NULL) {
        lua_pushnil(L);
        return before;
    }
    lua_pushstring(L, (const char *)anchor);
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 0);
    lua_rawset(L, w->anchors_idx);
    return before;
}

/* The collection is at the top, its anchor (or nil) below: register it with its size (the
 * nodes counted since `before`), drop the anchor. */
static void anchor_end(walk *w, lua_Integer before)
{
    lua_State *L = w->L;
    if (!lua_isnil(L, -2)) {
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, w->anchors_idx);
        lua_pushvalue(L, -2);
        lua_pushinteger(L, w->nodes - before);
        lua_rawset(L, w->sizes_idx);
    }
    lua_remove(L, -2);
}

static int walk_sequence(walk *w, int depth)
{
    lua_State *L = w->L;
    const yaml_event_t *ev = &w->r->event;
    if (check_collection_tag(w, ev, ev->data.sequence_start.tag, TAG_PREFIX "seq") != 0)
        return -1;
    lua_Integer before = anchor_begin(w, ev->data.sequence_start.anchor);
    lua_newtable(L);
    int t = lua_gettop(L);
    for (lua_Integer i = 1;; i++) {
        if (next_event(w) != 0)
            return -1;
        if (w->r->event.type == YAML_SEQUENCE_END_EVENT)
            break;
        lua_pushinteger(L, i);
        lua_rawseti(L, w->path_idx, ++w->path_len);
        w->is_index[w->path_len] = 1;
        if (walk_node(w, depth, 0) != 0)
            return -1;
        w->path_len--;
        lua_rawseti(L, t, i);
    }
    anchor_end(w, before);
    return 0;
}

static int walk_mapping(walk *w, int depth)
{
    lua_State *L = w->L;
    const yaml_event_t *ev = &w->r->event;
    if (check_collection_tag(w, ev, ev->data.mapping_start.tag, TAG_PREFIX "map") != 0)
        return -1;
    yaml_mark_t start = ev->start_mark;
    lua_Integer before = anchor_begin(w, ev->data.mapping_start.anchor);
    lua_newtable(L);
    int t = lua_gettop(L);
    for (;;) {
        if (next_event(w) != 0)
            return -1;
        if (ev->type == YAML_MAPPING_END_EVENT)
            break;
        yaml_mark_t key_mark = ev->start_mark;
        char key[64];
        describe_key(ev, key, sizeof key);
        if (walk_node(w, depth, 1) != 0)
            return -1;
        lua_pushvalue(L, -1);
        if (lua_rawget(L, t) != LUA_TNIL)
            return fail_mark(w, key_mark, "duplicate key %s (in the mapping at line %zu, column %zu)", key,
                             start.line + 1, start.column + 1);
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, w->path_idx, ++w->path_len);
        w->is_index[w->path_len] = 0;
        if (next_event(w) != 0 || walk_node(w, depth, 0) != 0)
            return -1;
        w->path_len--;
        lua_rawset(L, t);
    }
    anchor_end(w, before);
    return 0;
}

/* Push the value of the node that starts at the current event; depth counts enclosing collections. */
static int walk_node(walk *w, int depth, int is_key)
{
    const yaml_event_t *ev = &w->r->event;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        return walk_scalar(w, is_key);
    case YAML_ALIAS_EVENT:
        return walk_alias(w, is_key);
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
        if (is_key)
            return fail_mark(w, ev->start_mark, "mapping keys must be scalars, not %s",
                             ev->type == YAML_SEQUENCE_START_EVENT ? "sequences" : "mappings");
        if (depth >= YAML_MAX_DEPTH)
            return fail_mark(w, ev->start_mark, "nesting deeper than %d levels", YAML_MAX_DEPTH);
        /* Raising here is safe: the reader userdata frees the parser. */
        luaL_checkstack(w->L, 8, "yaml: nesting too deep");
        if (ev->type == YAML_SEQUENCE_START_EVENT)
            return walk_sequence(w, depth + 1);
        return walk_mapping(w, depth + 1);
    default:
        return fail_mark(w, ev->start_mark, "unexpected event %d", (int)ev->type);
    }
}

/* The whole stream: nothing (-> yaml.null) or exactly one document. Pushes its value. */
static int walk_stream(walk *w)
{
    const yaml_event_t *ev = &w->r->event;
    if (next_event(w) != 0 || next_event(w) != 0) /* STREAM-START, then a document or the end */
        return -1;
    if (ev->type == YAML_STREAM_END_EVENT) {
        lua_pushvalue(w->L, w->null_idx);
        return 0;
    }
    if (next_event(w) != 0 || walk_node(w, 0, 0) != 0)
        return -1;
    if (next_event(w) != 0 || next_event(w) != 0) /* DOCUMENT-END, then the stream's end */
        return -1;
    if (ev->type == YAML_DOCUMENT_START_EVENT)
        return fail_mark(w, ev->start_mark, "more than one document");
    if (ev->type != YAML_STREAM_END_EVENT)
        return fail_mark(w, ev->start_mark, "unexpected event %d", (int)ev->type);
    return 0;
}

/* ================================================================ Lua API */

static int reader_gc(lua_State *L)
{
    reader_release(toreader(L, 1));
    return 0;
}

/* A closed reader; it owns what reader_start and decode_file acquire from then on. */
static yaml_reader *reader_new(lua_State *L)
{
    yaml_reader *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    luaL_setmetatable(L, BKR_YAMLREADER);
    return r;
}

/*
 * Walk the text held by reader r (at the top of the stack). Returns the document's value, or
 * the scalars list when `scalars` is set, or nil, "yaml: [PATH: ]line L, column C: ...".
 */
static int run(lua_State *L, yaml_reader *r, const char *path, int scalars)
{
    walk w;
    memset(&w, 0, sizeof w);
    w.L = L;
    w.r = r;
    w.null_idx = lua_upvalueindex(1);
    lua_newtable(L);
    w.anchors_idx = lua_gettop(L);
    lua_newtable(L);
    w.sizes_idx = lua_gettop(L);
    lua_newtable(L);
    w.path_idx = lua_gettop(L);
    if (scalars) {
        lua_newtable(L);
        w.out_idx = lua_gettop(L);
    }
    int status = reader_start(r, r->text, r->len) != 0 ? fail_at(&w, 1, 1, "out of memory") : walk_stream(&w);
    reader_release(r);
    if (status != 0)
        return bkr_pushfail(L, NULL, "yaml: %s%s%s", path ? path : "", path ? ": " : "", w.msg);
    if (scalars)
        lua_pushvalue(L, w.out_idx);
    return 1;
}

static int yaml_decode_text(lua_State *L, int scalars)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    yaml_reader *r = reader_new(L);
    r->text = (const unsigned char *)text; /* anchored at stack index 1 */
    r->len = len;
    return run(L, r, NULL, scalars);
}

static int yaml_decode(lua_State *L)
{
    return yaml_decode_text(L, 0);
}

static int yaml_scalars(lua_State *L)
{
    return yaml_decode_text(L, 1);
}

/* Read a whole file into r->owned; returns 0 or an errno. No Lua calls while the fd is open. */
static int read_file(yaml_reader *r, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    struct stat st;
    size_t cap = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 4096, len = 0;
    int err = 0;
    r->owned = malloc(cap);
    if (r->owned == NULL)
        err = ENOMEM;
    while (err == 0) {
        if (len == cap) {
            unsigned char *bigger = cap > SIZE_MAX / 2 ? NULL : realloc(r->owned, cap * 2);
            if (bigger == NULL) {
                err = ENOMEM;
                break;
            }
            r->owned = bigger;
            cap *= 2;
        }
        ssize_t n = read(fd, r->owned + len, cap - len);
        if (n < 0 && errno == EINTR && !bkr_interrupted())
            continue;
        if (n < 0)
            err = errno;
        else if (n == 0)
            break;
        else
            len += (size_t)n;
    }
    close(fd);
    r->text = r->owned;
    r->len = len;
    return err;
}

static int yaml_decode_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    yaml_reader *r = reader_new(L);
    int err = read_file(r, path);
    if (err != 0) {
        reader_release(r);
        return bkr_pusherrno(L, err, "yaml: %s", path);
    }
    return run(L, r, path, 0);
}

static int null_tostring(lua_State *L)
{
    lua_pushliteral(L, "yaml.null");
    return 1;
}

static const luaL_Reg reader_metamethods[] = {
    {"__gc", reader_gc},
    {"__close", reader_gc},
    {NULL, NULL},
};

static const luaL_Reg yaml_functions[] = {
    {"decode", yaml_decode},
    {"decode_file", yaml_decode_file},
    {"scalars", yaml_scalars},
    {NULL, NULL},
};

int luaopen_bkr_yaml(lua_State *L)
{
    bkr_createmeta(L, BKR_YAMLREADER, reader_metamethods, NULL);

    luaL_newlibtable(L, yaml_functions);
    lua_newuserdatauv(L, 0, 0); /* yaml.null: unique, and not a table, so type() tells it apart */
    if (luaL_newmetatable(L, BKR_YAMLNULL)) {
        lua_pushcfunction(L, null_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "null");
    luaL_setfuncs(L, yaml_functions, 1); /* every function keeps yaml.null as upvalue 1 */
    lua_pushinteger(L, YAML_MAX_DEPTH);
    lua_setfield(L, -2, "max_depth");
    lua_pushinteger(L, YAML_MAX_ALIAS_NODES);
    lua_setfield(L, -2, "max_alias_nodes");
    return 1;
}
