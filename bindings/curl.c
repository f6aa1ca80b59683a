/*
 * curl.c - module bkr.curl: sending one e-mail over SMTP and one HTTP(S) POST, through
 * libcurl (no SMTP or HTTP client of our own). For notifications (recipes/lib/notify.lua).
 *
 * Lua API (require "bkr.curl"):
 *   curl.smtp_send{ url = "smtp://host:port[/ehlo-domain]" | "smtps://...",
 *                   starttls = true|false,        -- smtp:// only: require STARTTLS (default false)
 *                   username = s, password = s,   -- never in the URL; a password needs TLS
 *                   from = "a@b", to = {"c@d", ...},
 *                   message = RFC 5322 text with CRLF line ends (libcurl dot-stuffs it),
 *                   timeout = seconds, connect_timeout = seconds, ca_file = path }
 *       -> true | nil, message, kind
 *   curl.http_post{ url = "http(s)://...", body = s, content_type = "application/json",
 *                   headers = { ["X-Name"] = "value", ... },
 *                   timeout = seconds, connect_timeout = seconds, ca_file = path,
 *                   max_response = bytes (default 65536) }
 *       -> status, body (the first max_response bytes) | nil, message, kind
 *          A non-2xx status is data: it is returned, not a failure.
 *   curl.version() -> "libcurl/7.88.1 OpenSSL/3.0.x ..."
 *
 * Kinds of failure (code branches on them, never on the message):
 *   timeout       the transfer (timeout) or the connection (connect_timeout) took too long
 *   refused       nothing listens there (ECONNREFUSED)
 *   unreachable   the host name does not resolve, or the host or network cannot be reached
 *   auth          the server refused the user name and password
 *   tls           TLS failed: the certificate did not verify, STARTTLS was required but not
 *                 offered (nothing was sent in clear text), the handshake failed
 *   rejected      the SMTP server answered a command with an error (a sender or recipient
 *                 refused, the message refused)
 *   interrupted   SIGINT or SIGTERM arrived (never while the host runs at-exit functions)
 *   io            anything else (the connection dropped, a reply that makes no sense)
 *
 * Both calls are bounded in time (timeout: the whole transfer, default 30 s; connect_timeout:
 * default 10 s, at most timeout) and verify the server's certificate and name, always: there
 * is no option to turn verification off; ca_file names the CA certificates to trust instead
 * of the system's. Redirects are not followed. Credentials go to libcurl as options, never in
 * a URL, so no message can carry them; a URL with a user or password in it is refused.
 *
 * Misuse (a missing or mistyped option, an unknown option, a URL that is not one, a CR or LF
 * in an address or header) raises. Every C resource of a call lives in a userdata whose __gc
 * releases it, so raising (or a memory error) at any point leaks nothing.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"
#include "curl_global.h"
#include "modules.h"

#define BKR_CURL_REQUEST "bkr.curl.Request"
#define torequest(L, i) ((curl_request *)luaL_checkudata(L, i, BKR_CURL_REQUEST))

#define DEFAULT_TIMEOUT 30.0
#define DEFAULT_CONNECT_TIMEOUT 10.0
#define MAX_TIMEOUT 3600.0
#define DEFAULT_MAX_RESPONSE 65536
#define MAX_MAX_RESPONSE (16 * 1024 * 1024)

/* ===================================================================== */
/* The request: every C resource of one call                              */
/* ===================================================================== */

typedef struct curl_request {
    CURL *easy;
    CURLU *url;                 /* the parsed URL: scheme, host and port for messages */
    struct curl_slist *list;    /* SMTP recipients, or HTTP headers */
    const char *upload;         /* the message, anchored on the Lua stack during the call */
    size_t upload_len, upload_pos;
    char *response;             /* the first max_response bytes of an HTTP response */
    size_t response_len, response_max;
    char errbuf[CURL_ERROR_SIZE];
    double deadline;            /* bkr_monotonic() time the whole call must end by */
} curl_request;

static void request_release(curl_request *r)
{
    if (r->easy != NULL) {
        CURL *easy = r->easy;
        r->easy = NULL;
        curl_easy_cleanup(easy);
    }
    if (r->url != NULL) {
        CURLU *url = r->url;
        r->url = NULL;
        curl_url_cleanup(url);
    }
    if (r->list != NULL) {
        struct curl_slist *list = r->list;
        r->list = NULL;
        curl_slist_free_all(list);
    }
    free(r->response);
    r->response = NULL;
    r->response_len = 0;
}

static int request_gc(lua_State *L)
{
    request_release(torequest(L, 1));
    return 0;
}

/* A zeroed request with its metatable, left on the stack, before anything is acquired. */
static curl_request *request_new(lua_State *L)
{
    curl_request *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    luaL_setmetatable(L, BKR_CURL_REQUEST);
    r->easy = curl_easy_init();
    if (r->easy == NULL)
        luaL_error(L, "curl: cannot create a transfer (out of memory)");
    return r;
}

/* A list item for r->list, or a memory error (r still owns what it had). */
static void request_append(lua_State *L, curl_request *r, const char *item)
{
    struct curl_slist *next = curl_slist_append(r->list, item);
    if (next == NULL)
        luaL_error(L, "curl: out of memory");
    r->list = next;
}

/* ===================================================================== */
/* Reading options                                                        */
/* ===================================================================== */

/* opts[key] as a string, left on the stack (so it stays anchored for the whole call even if
 * a metamethod made it), or NULL when absent and not required. */
static const char *opt_string(lua_State *L, const char *fn, const char *key, int required, size_t *len)
{
    int t = lua_getfield(L, 1, key);
    if (t == LUA_TNIL && !required)
        return NULL;
    if (t != LUA_TSTRING)
        luaL_error(L, "%s: %s must be a string", fn, key);
    return lua_tolstring(L, -1, len);
}

static double opt_seconds(lua_State *L, const char *fn, const char *key, double fallback)
{
    int t = lua_getfield(L, 1, key);
    double value = fallback;
    if (t != LUA_TNIL) {
        if (t != LUA_TNUMBER)
            luaL_error(L, "%s: %s must be a number of seconds", fn, key);
        value = lua_tonumber(L, -1);
        if (!(value > 0 && value <= MAX_TIMEOUT))
            luaL_error(L, "%s: %s must be more than 0 and at most %d seconds", fn, key, (int)MAX_TIMEOUT);
    }
    lua_pop(L, 1);
    return value;
}

/* A line of a protocol (an address, a header): no CR, LF or NUL, which would end it early. */
static int single_line(const char *s, size_t len)
{
    return memchr(s, '\r', len) == NULL && memchr(s, '\n', len) == NULL && strlen(s) == len;
}

/* Parse and check the URL into r->url: one of the schemes, no credentials in it (they would
 * show up in libcurl's messages). The scheme is copied to scheme_out. Raises on misuse. */
static void check_url(lua_State *L, curl_request *r, const char *fn, const char *url,
                      const char *const *schemes, char *scheme_out, size_t scheme_size)
{
    r->url = curl_url();
    if (r->url == NULL)
        luaL_error(L, "curl: out of memory");
    if (curl_url_set(r->url, CURLUPART_URL, url, 0) != CURLUE_OK)
        luaL_error(L, "%s: url is not a valid URL", fn);
    char *part = NULL;
    int has_credentials = 0;
    if (curl_url_get(r->url, CURLUPART_USER, &part, 0) == CURLUE_OK) {
        has_credentials = 1;
        curl_free(part);
    }
    if (curl_url_get(r->url, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK) {
        has_credentials = 1;
        curl_free(part);
    }
    if (has_credentials)
        luaL_error(L, "%s: url must not carry a user or password (give them as options)", fn);
    if (curl_url_get(r->url, CURLUPART_SCHEME, &part, 0) != CURLUE_OK)
        luaL_error(L, "%s: url has no scheme", fn);
    int known = 0;
    for (int i = 0; schemes[i]; i++)
        if (strcmp(part, schemes[i]) == 0)
            known = 1;
    snprintf(scheme_out, scheme_size, "%s", part);
    curl_free(part);
    if (!known)
        luaL_error(L, "%s: url must start with %s:// or %s://", fn, schemes[0], schemes[1]);
}

/* "host:port" of the URL, for messages (the path may hold a token, so it is never shown). */
static void url_where(curl_request *r, char *out, size_t size)
{
    char *host = NULL, *port = NULL;
    curl_url_get(r->url, CURLUPART_HOST, &host, 0);
    curl_url_get(r->url, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
    snprintf(out, size, "%s:%s", host ? host : "?", port ? port : "?");
    curl_free(host);
    curl_free(port);
}

/* ===================================================================== */
/* Transfers                                                              */
/* ===================================================================== */

static size_t read_upload(char *buffer, size_t size, size_t nitems, void *userdata)
{
    curl_request *r = userdata;
    size_t room = size * nitems, left = r->upload_len - r->upload_pos;
    size_t n = left < room ? left : room;
    memcpy(buffer, r->upload + r->upload_pos, n);
    r->upload_pos += n;
    return n;
}

/* Keep the first response_max bytes; read and drop the rest (the timeout bounds it). */
static size_t write_response(char *data, size_t size, size_t nmemb, void *userdata)
{
    curl_request *r = userdata;
    size_t n = size * nmemb;
    size_t room = r->response_max - r->response_len;
    size_t keep = n < room ? n : room;
    if (keep > 0) {
        if (r->response == NULL) {
            r->response = malloc(r->response_max);
            if (r->response == NULL)
                return 0; /* CURLE_WRITE_ERROR: reported as io */
        }
        memcpy(r->response + r->response_len, data, keep);
        r->response_len += keep;
    }
    return n;
}

/* Called by libcurl at least once a second: give up when SIGINT or SIGTERM arrived (the
 * host says no while it runs the at-exit functions, so a notification still goes out). */
static int check_interrupt(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                           curl_off_t ulnow)
{
    curl_request *r = userdata;
    /* CURLOPT_TIMEOUT does not bound every wait: libcurl 7.88 waits its own 120 s for an SMTP
     * server's reply to the end of the message. The deadline here bounds the call whatever
     * libcurl is waiting for. */
    return bkr_interrupted() || bkr_monotonic() > r->deadline ? 1 : 0;
}

static void set_common(curl_request *r, const char *url, double timeout, double connect_timeout,
                       const char *ca_file, const char *protocols)
{
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, protocols);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L); /* no SIGALRM: the host owns the signals */
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    /* an SMTP or HTTP server's reply, each one: no longer than the whole call may take */
    curl_easy_setopt(e, CURLOPT_SERVER_RESPONSE_TIMEOUT, (long)timeout + 1);
    r->deadline = bkr_monotonic() + timeout;
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)((connect_timeout < timeout ? connect_timeout : timeout) * 1000));
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, check_interrupt);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, r);
}

/* The kind of a failed transfer (see the header). smtp: an error reply means "rejected". */
static const char *failure_kind(curl_request *r, CURLcode rc, int smtp)
{
    long os_errno = 0, reply = 0;
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "unreachable";
    case CURLE_COULDNT_CONNECT:
        curl_easy_getinfo(r->easy, CURLINFO_OS_ERRNO, &os_errno);
        return os_errno == ECONNREFUSED ? "refused" : "unreachable";
    case CURLE_LOGIN_DENIED:
    case CURLE_AUTH_ERROR:
        return "auth";
    case CURLE_USE_SSL_FAILED:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
        return "tls";
    case CURLE_ABORTED_BY_CALLBACK:
        return bkr_interrupted() ? "interrupted" : "timeout";
    default:
        break;
    }
    if (smtp && curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &reply) == CURLE_OK && reply >= 400)
        return "rejected";
    return "io";
}

/* nil, "FN: HOST:PORT: reason", kind. The reason is libcurl's error buffer (no URL path, no
 * credentials: neither is ever in what libcurl is given to print) or its code's text. */
static int push_failure(lua_State *L, curl_request *r, const char *fn, CURLcode rc, int smtp)
{
    char where[512];
    url_where(r, where, sizeof where);
    const char *kind = failure_kind(r, rc, smtp);
    const char *reason = r->errbuf[0] != '\0' ? r->errbuf : curl_easy_strerror(rc);
    if (strcmp(kind, "interrupted") == 0) {
        bkr_interrupt_delivered(L); /* the caller hears it here, and may clean up */
        reason = "interrupted";
    }
    size_t len = strlen(reason);
    while (len > 0 && (reason[len - 1] == '\n' || reason[len - 1] == '\r'))
        len--;
    return bkr_pushfail(L, kind, "%s: %s: %.*s", fn, where, (int)len, reason);
}

/* ===================================================================== */
/* smtp_send                                                              */
/* ===================================================================== */

static int l_smtp_send(lua_State *L)
{
    static const char *const keys[] = { "url", "starttls", "username", "password", "from", "to", "message",
                                         "timeout", "connect_timeout", "ca_file", NULL };
    static const char *const schemes[] = { "smtp", "smtps", NULL };
    const char *fn = "curl.smtp_send";
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    bkr_check_option_keys(L, 1, fn, keys);
    luaL_checkstack(L, 16, fn);

    size_t len;
    const char *url = opt_string(L, fn, "url", 1, NULL);
    const char *username = opt_string(L, fn, "username", 0, NULL);
    const char *password = opt_string(L, fn, "password", 0, NULL);
    const char *from = opt_string(L, fn, "from", 1, &len);
    if (len == 0 || !single_line(from, len))
        luaL_error(L, "%s: from must be one address on one line", fn);
    const char *message = opt_string(L, fn, "message", 1, &len);
    size_t message_len = len;
    const char *ca_file = opt_string(L, fn, "ca_file", 0, NULL);
    lua_getfield(L, 1, "starttls");
    int starttls = lua_toboolean(L, -1);
    double timeout = opt_seconds(L, fn, "timeout", DEFAULT_TIMEOUT);
    double connect_timeout = opt_seconds(L, fn, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    if (password != NULL && username == NULL)
        luaL_error(L, "%s: a password needs a username", fn);

    curl_request *r = request_new(L);
    char scheme[16];
    check_url(L, r, fn, url, schemes, scheme, sizeof scheme);
    int tls = strcmp(scheme, "smtps") == 0 || starttls;
    if (password != NULL && !tls)
        luaL_error(L, "%s: a password is never sent without TLS (smtps:// or starttls = true)", fn);

    if (lua_getfield(L, 1, "to") != LUA_TTABLE)
        luaL_error(L, "%s: to must be a list of addresses", fn);
    lua_Integer count = luaL_len(L, -1);
    if (count < 1)
        luaL_error(L, "%s: to must name at least one address", fn);
    for (lua_Integer i = 1; i <= count; i++) {
        if (lua_geti(L, -1, i) != LUA_TSTRING)
            luaL_error(L, "%s: to[%d] must be a string", fn, (int)i);
        const char *to = lua_tolstring(L, -1, &len);
        if (len == 0 || !single_line(to, len))
            luaL_error(L, "%s: to[%d] must be one address on one line", fn, (int)i);
        request_append(L, r, to);
        lua_pop(L, 1);
    }

    set_common(r, url, timeout, connect_timeout, ca_file, "smtp,smtps");
    CURL *e = r->easy;
    if (strcmp(scheme, "smtp") == 0 && starttls)
        curl_easy_setopt(e, CURLOPT_USE_SSL, (long)CURLUSESSL_ALL);
    if (username != NULL)
        curl_easy_setopt(e, CURLOPT_USERNAME, username);
    if (password != NULL)
        curl_easy_setopt(e, CURLOPT_PASSWORD, password);
    curl_easy_setopt(e, CURLOPT_MAIL_FROM, from);
    curl_easy_setopt(e, CURLOPT_MAIL_RCPT, r->list);
    r->upload = message;
    r->upload_len = message_len;
    curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(e, CURLOPT_READFUNCTION, read_upload);
    curl_easy_setopt(e, CURLOPT_READDATA, r);
    curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)message_len);

    CURLcode rc = curl_easy_perform(e);
    if (rc != CURLE_OK)
        return push_failure(L, r, fn, rc, 1);
    request_release(r);
    lua_pushboolean(L, 1);
    return 1;
}

/* ===================================================================== */
/* http_post                                                              */
/* ===================================================================== */

/* A header name: an HTTP token (RFC 9110), so "Name: value" cannot be anything else. */
static int header_name(const char *s, size_t len)
{
    if (len == 0 || len > 256)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || strchr("!#$%&'*+-.^_`|~", c) != NULL) || c == '\0')
            return 0;
    }
    return 1;
}

static int l_http_post(lua_State *L)
{
    static const char *const keys[] = { "url", "body", "content_type", "headers", "timeout", "connect_timeout",
                                         "ca_file", "max_response", NULL };
    static const char *const schemes[] = { "http", "https", NULL };
    const char *fn = "curl.http_post";
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    bkr_check_option_keys(L, 1, fn, keys);
    luaL_checkstack(L, 16, fn);

    size_t body_len, len;
    const char *url = opt_string(L, fn, "url", 1, NULL);
    const char *body = opt_string(L, fn, "body", 1, &body_len);
    const char *content_type = opt_string(L, fn, "content_type", 0, &len);
    if (content_type == NULL) {
        content_type = "application/json";
        len = strlen(content_type);
    }
    if (!single_line(content_type, len))
        luaL_error(L, "%s: content_type must be one line", fn);
    const char *ca_file = opt_string(L, fn, "ca_file", 0, NULL);
    double timeout = opt_seconds(L, fn, "timeout", DEFAULT_TIMEOUT);
    double connect_timeout = opt_seconds(L, fn, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    lua_Integer max_response = DEFAULT_MAX_RESPONSE;
    if (lua_getfield(L, 1, "max_response") != LUA_TNIL) {
        if (!lua_isinteger(L, -1))
            luaL_error(L, "%s: max_response must be an integer", fn);
        max_response = lua_tointeger(L, -1);
        if (max_response < 0 || max_response > MAX_MAX_RESPONSE)
            luaL_error(L, "%s: max_response must be from 0 to %d", fn, MAX_MAX_RESPONSE);
    }
    lua_pop(L, 1);

    curl_request *r = request_new(L);
    int request = lua_gettop(L);
    char scheme[16];
    check_url(L, r, fn, url, schemes, scheme, sizeof scheme);
    r->response_max = (size_t)max_response;

    lua_pushfstring(L, "Content-Type: %s", content_type);
    request_append(L, r, lua_tostring(L, -1));
    lua_pop(L, 1);
    request_append(L, r, "Expect:"); /* no 100-continue round trip */
    int headers_type = lua_getfield(L, 1, "headers");
    if (headers_type != LUA_TNIL) {
        if (headers_type != LUA_TTABLE)
            luaL_error(L, "%s: headers must be a table of name = value", fn);
        int headers = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, headers)) {
            size_t name_len, value_len;
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "%s: headers must map names (strings) to values (strings)", fn);
            const char *name = lua_tolstring(L, -2, &name_len);
            const char *value = lua_tolstring(L, -1, &value_len);
            if (!header_name(name, name_len))
                luaL_error(L, "%s: a header name must be a token (letters, digits, -)", fn);
            if (!single_line(value, value_len))
                luaL_error(L, "%s: header values must be one line", fn);
            lua_pushfstring(L, "%s: %s", name, value);
            request_append(L, r, lua_tostring(L, -1));
            lua_pop(L, 2);
        }
    }
    lua_settop(L, request);

    set_common(r, url, timeout, connect_timeout, ca_file, "http,https");
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->list);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body); /* anchored in the options table */
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "bkr/" BKR_VERSION);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_response);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);

    CURLcode rc = curl_easy_perform(e);
    if (rc != CURLE_OK)
        return push_failure(L, r, fn, rc, 0);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    lua_pushinteger(L, (lua_Integer)status);
    lua_pushlstring(L, r->response != NULL ? r->response : "", r->response_len);
    request_release(r);
    return 2;
}

static int l_version(lua_State *L)
{
    lua_pushstring(L, curl_version());
    return 1;
}

/* ===================================================================== */
/* Module                                                                 */
/* ===================================================================== */

static const luaL_Reg request_metamethods[] = {
    {"__gc", request_gc},
    {"__close", request_gc},
    {NULL, NULL},
};

static const luaL_Reg curl_funcs[] = {
    {"smtp_send", l_smtp_send},
    {"http_post", l_http_post},
    {"version", l_version},
    {NULL, NULL},
};

int luaopen_bkr_curl(lua_State *L)
{
    bkr_curl_global_init(L);
    bkr_createmeta(L, BKR_CURL_REQUEST, request_metamethods, NULL);
    luaL_newlib(L, curl_funcs);
    return 1;
}
