/*
 * s3.c - module bkr.s3: objects on S3-compatible storage (AWS S3, MinIO, ...) through libcurl,
 * signed with AWS Signature Version 4 (s3_sign.c), S3's XML read with libxml2 (s3_xml.c). The
 * stream stages (client:sink, client:source) are in s3_stream.c. docs/api/s3.md has the details.
 *
 * Lua API (require "bkr.s3"):
 *   s3.sign{ method, path, query = {{name, value}, ...}, headers = {{name, value}, ...},
 *            payload_hash, region, service, access_key, secret_key, session_token?,
 *            amz_date = "YYYYMMDDTHHMMSSZ", normalize_path = false }
 *       -> { canonical_request, string_to_sign, signature, authorization }   (pure)
 *   s3.client{ endpoint = "https://host[:port]" | "http://host:port", region, bucket,
 *              access_key, secret_key, session_token?, path_style = true|false,
 *              ca_file?, timeout? (30 s), connect_timeout? (10 s), retries? (3) } -> client
 *   client:put(key, bytes[, { headers = {name = value}, content_type = s }]) -> true
 *   client:get(key[, { max = bytes (16 MiB) }]) -> bytes
 *   client:head(key) -> { size, etag, last_modified, retain_until?, lock_mode? }
 *   client:delete(key) -> true   (also when there was no such key, as S3 answers)
 *   client:list(prefix[, { page_size = n }]) -> { { key, size, last_modified, etag }, ... }
 *   client:uploads(prefix) -> { { key, upload_id, initiated }, ... }
 *   client:abort_upload(key, upload_id) -> true
 *   client:sink(key[, opts]), client:source(key[, opts])  stream stages (s3_stream.c)
 *   client:close()  (also __gc, __close)
 * Every request returns nil, message, kind on failure. Kinds:
 *   missing (404: NoSuchKey, NoSuchBucket, NoSuchUpload), auth (403, SignatureDoesNotMatch,
 *   InvalidAccessKeyId), timeout, refused, unreachable, tls, rejected (any other 4xx or 3xx),
 *   server (5xx, 429 once the retries are spent), unsupported (501 NotImplemented), truncated
 *   (client:source: the object ended early), interrupted, io (anything else: a dropped connection
 *   once the retries are spent, a response that is not S3's). The message names the call, the
 *   key, the HTTP status and S3's <Code>.
 *
 * Retries: on 5xx, 429, 503 SlowDown, 400 RequestTimeout, a timeout, a refused or dropped
 * connection: up to `retries` more attempts, each after an exponential backoff with jitter
 * (0.2 s, 0.4 s, ... capped at 5 s, each between half and all of it). Never on another 4xx.
 *
 * Secrets: the secret key and session token live in C memory only (s3_config), are wiped when
 * the last holder lets go, and are in no URL, no message and no __tostring (the endpoint and
 * bucket only). TLS is always verified (ca_file trusts a private CA); an http:// endpoint is
 * allowed (a MinIO on a LAN, the tests) and sends everything but the secret key in clear text.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <curl/curl.h>
#include <libxml/parser.h>
#include <lua.h>
#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "bkr.h"
#include "curl_global.h"
#include "modules.h"
#include "s3_internal.h"

#define BKR_S3_REQUEST "bkr.s3.Request"
#define BKR_S3_XML_GLOBAL "bkr.s3.xml_global"

#define DEFAULT_TIMEOUT 30.0
#define DEFAULT_CONNECT_TIMEOUT 10.0
#define MAX_TIMEOUT 3600.0
#define DEFAULT_RETRIES 3
#define MAX_RETRIES 10
#define DEFAULT_GET_MAX (16 * 1024 * 1024)
#define MAX_GET_MAX (1024 * 1024 * 1024)
#define ERROR_BODY_MAX (64 * 1024)
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

typedef struct s3_client {
    s3_config *cfg; /* NULL once closed */
} s3_client;

#define toclient(L, i) ((s3_client *)luaL_checkudata(L, i, BKR_S3_CLIENT))

/* ===================================================================== */
/* Configuration                                                          */
/* ===================================================================== */

static void wipe_free(char *s)
{
    if (s != NULL) {
        OPENSSL_cleanse(s, strlen(s));
        free(s);
    }
}

void s3_config_ref(s3_config *c)
{
    c->refs++;
}

void s3_config_unref(s3_config *c)
{
    if (c == NULL || --c->refs > 0)
        return;
    free(c->scheme);
    free(c->host);
    free(c->hostport);
    free(c->base_path);
    free(c->region);
    free(c->bucket);
    free(c->access_key);
    wipe_free(c->secret_key);
    wipe_free(c->session_token);
    free(c->ca_file);
    if (c->share != NULL)
        curl_share_cleanup(c->share); /* every easy handle that used it is gone by now */
    free(c);
}

s3_config *s3_check_client(lua_State *L, int i)
{
    s3_client *c = toclient(L, i);
    if (c->cfg == NULL)
        luaL_error(L, "s3: the client is closed");
    return c->cfg;
}

/* ===================================================================== */
/* One request                                                            */
/* ===================================================================== */

void s3_request_reset(s3_request *req)
{
    if (req->easy != NULL) {
        CURL *e = req->easy;
        req->easy = NULL;
        curl_easy_cleanup(e);
    }
    if (req->headers != NULL) {
        struct curl_slist *h = req->headers;
        req->headers = NULL;
        curl_slist_free_all(h);
    }
    s3_buf_free(&req->response);
}

static size_t read_body(char *buffer, size_t size, size_t nitems, void *userdata)
{
    s3_request *req = userdata;
    size_t room = size * nitems, left = req->body_len - req->body_pos;
    size_t n = left < room ? left : room;
    if (n > 0)
        memcpy(buffer, req->body + req->body_pos, n);
    req->body_pos += n;
    return n;
}

/* libcurl rewinds an upload when a kept-alive connection turned out dead before the request. */
static int seek_body(void *userdata, curl_off_t offset, int origin)
{
    s3_request *req = userdata;
    if (origin != SEEK_SET || offset < 0 || (size_t)offset > req->body_len)
        return CURL_SEEKFUNC_CANTSEEK;
    req->body_pos = (size_t)offset;
    return CURL_SEEKFUNC_OK;
}

static int status_ok(long status)
{
    return status >= 200 && status < 300;
}

static size_t write_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    s3_request *req = userdata;
    size_t n = size * nmemb;
    long status = 0;
    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status_ok(status) && req->on_body != NULL)
        return req->on_body(data, size, nmemb, req->on_body_data);
    size_t max = status_ok(status) ? req->response_max : ERROR_BODY_MAX;
    if (req->response.len + n > max) {
        if (status_ok(status)) {
            req->too_large = 1;
            return 0; /* larger than the caller allows: CURLE_WRITE_ERROR */
        }
        return n;     /* an error document's tail is not needed */
    }
    s3_buf_add(&req->response, data, n);
    return req->response.failed ? 0 : n;
}

/* Copy a header's value (trimmed) into out when its name is name. */
static void header_value(const char *line, size_t len, const char *name, char *out, size_t out_size)
{
    size_t nl = strlen(name);
    if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return;
    const char *v = line + nl + 1;
    size_t vl = len - nl - 1;
    while (vl > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
    if (vl >= out_size)
        vl = out_size - 1;
    memcpy(out, v, vl);
    out[vl] = '\0';
}

static size_t on_header(char *line, size_t size, size_t nitems, void *userdata)
{
    s3_request *req = userdata;
    size_t len = size * nitems;
    if (len > 5 && strncmp(line, "HTTP/", 5) == 0) { /* a new response (after a 100): forget */
        req->etag[0] = req->last_modified[0] = req->retain_until[0] = req->lock_mode[0] = '\0';
        req->content_length = -1;
    }
    header_value(line, len, "ETag", req->etag, sizeof req->etag);
    header_value(line, len, "Last-Modified", req->last_modified, sizeof req->last_modified);
    header_value(line, len, "x-amz-object-lock-retain-until-date", req->retain_until, sizeof req->retain_until);
    header_value(line, len, "x-amz-object-lock-mode", req->lock_mode, sizeof req->lock_mode);
    char cl[32] = "";
    header_value(line, len, "Content-Length", cl, sizeof cl);
    if (cl[0] != '\0')
        req->content_length = strtoll(cl, NULL, 10);
    return len;
}

/* At least once a second: give up on SIGINT/SIGTERM, at the deadline, or (streams) after
 * timeout seconds without a byte moving either way. */
static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    s3_request *req = userdata;
    if (!req->no_interrupt && bkr_interrupted())
        return 1;
    double now = bkr_monotonic();
    if (req->stream_timeout) {
        if (dlnow + ulnow != req->last_bytes || req->paused) {
            req->last_bytes = dlnow + ulnow;
            req->last_progress = now;
        } else if (now - req->last_progress > (req->max_seconds > 0 ? req->max_seconds : req->cfg->timeout)) {
            req->timed_out = 1;
            return 1;
        }
    } else if (now > req->deadline) {
        req->timed_out = 1;
        return 1;
    }
    return 0;
}

/* The amz date of now: YYYYMMDDTHHMMSSZ. */
static void amz_now(char out[17])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

int s3_request_prepare(s3_request *req, bkr_error *err)
{
    s3_config *cfg = req->cfg;
    s3_request_reset(req);
    req->body_pos = 0;
    req->status = 0;
    req->timed_out = 0;
    req->too_large = 0;
    req->paused = 0;
    req->errbuf[0] = '\0';
    req->etag[0] = req->last_modified[0] = req->retain_until[0] = req->lock_mode[0] = '\0';
    req->content_length = -1;
    if (req->response_max == 0)
        req->response_max = S3_XML_MAX;

    /* The raw path and the host: path-style puts the bucket in the path. */
    s3_buf path = {0}, host = {0}, url = {0};
    s3_buf_str(&path, cfg->base_path);
    if (cfg->path_style) {
        s3_buf_printf(&path, "/%s", cfg->bucket);
        s3_buf_str(&host, cfg->hostport);
    } else {
        s3_buf_printf(&host, "%s.%s", cfg->bucket, cfg->hostport);
    }
    if (req->key != NULL)
        s3_buf_printf(&path, "/%s", req->key);
    else if (!cfg->path_style)
        s3_buf_str(&path, "/");

    char payload_hash[65], date[17], range[64];
    if (req->body_len > 0) {
        if (s3_sha256_hex(req->body, req->body_len, payload_hash) != 0) {
            ERR_clear_error();
            s3_buf_free(&path);
            s3_buf_free(&host);
            return bkr_error_set(err, "%s: OpenSSL failed to compute a digest", req->op);
        }
    } else {
        memcpy(payload_hash, EMPTY_SHA256, 65);
    }
    amz_now(date);

    s3_pair h[32];
    size_t n = 0;
#define PAIR(N, V) (h[n++] = (s3_pair){ (N), (V), strlen(N), strlen(V) })
    PAIR("host", host.data ? host.data : "");
    PAIR("x-amz-date", date);
    PAIR("x-amz-content-sha256", payload_hash);
    if (cfg->session_token != NULL)
        PAIR("x-amz-security-token", cfg->session_token);
    if (req->content_md5 != NULL)
        PAIR("content-md5", req->content_md5);
#undef PAIR
    for (size_t i = 0; i < req->nextra && n < sizeof h / sizeof h[0]; i++)
        h[n++] = req->extra[i];
    size_t nsigned = n;
    /* Range and If-Match go unsigned (S3 does not ask for them to be signed) */
    if (req->range_from > 0) {
        snprintf(range, sizeof range, "bytes=%lld-", (long long)req->range_from);
        h[n++] = (s3_pair){ "range", range, 5, strlen(range) };
    }
    if (req->if_match != NULL && req->if_match[0] != '\0')
        h[n++] = (s3_pair){ "if-match", req->if_match, 8, strlen(req->if_match) };

    s3_sign_in in = {
        .method = req->method, .path = path.data ? path.data : "/", .path_len = path.len,
        .query = req->query, .nquery = req->nquery, .headers = h, .nheaders = nsigned,
        .payload_hash = payload_hash, .region = cfg->region, .service = "s3",
        .access_key = cfg->access_key, .secret_key = cfg->secret_key, .amz_date = date,
    };
    s3_sign_out out;
    char why[256];
    int rc = -1;
    if (path.failed || host.failed) {
        bkr_error_set(err, "%s: out of memory", req->op);
        goto done;
    }
    if (s3_sign(&in, &out, why, sizeof why) != 0) {
        ERR_clear_error();
        bkr_error_set(err, "%s: cannot sign the request: %s", req->op, why);
        goto done;
    }
    s3_buf_printf(&url, "%s://%s%s%s%s", cfg->scheme, host.data, out.encoded_path, out.query_string[0] ? "?" : "",
                  out.query_string);

    struct curl_slist *list = NULL;
    int oom = url.failed;
    for (size_t i = 0; i < n && !oom; i++) {
        s3_buf line = {0};
        s3_buf_add(&line, h[i].name, h[i].name_len);
        s3_buf_str(&line, ": ");
        s3_buf_add(&line, h[i].value, h[i].value_len);
        struct curl_slist *next = line.failed ? NULL : curl_slist_append(list, line.data);
        s3_buf_free(&line);
        if (next == NULL)
            oom = 1;
        else
            list = next;
    }
    s3_buf auth = {0};
    s3_buf_printf(&auth, "Authorization: %s", out.authorization);
    struct curl_slist *next = NULL;
    if (!oom && !auth.failed && (next = curl_slist_append(list, auth.data)) != NULL)
        list = next;
    else
        oom = 1;
    s3_buf_free(&auth);
    /* no 100-continue round trip; no Content-Type that curl would make up for a POST */
    if (!oom && (next = curl_slist_append(list, "Expect:")) != NULL)
        list = next;
    else
        oom = 1;
    req->headers = list;
    s3_sign_out_free(&out);
    if (oom) {
        bkr_error_set(err, "%s: out of memory", req->op);
        goto done;
    }

    CURL *e = req->easy = curl_easy_init();
    if (e == NULL) {
        bkr_error_set(err, "%s: cannot create a transfer (out of memory)", req->op);
        goto done;
    }
    curl_easy_setopt(e, CURLOPT_URL, url.data);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)((cfg->connect_timeout < cfg->timeout ? cfg->connect_timeout : cfg->timeout) * 1000));
    double bound = req->max_seconds > 0 ? req->max_seconds : cfg->timeout;
    if (!req->stream_timeout)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(bound * 1000));
    req->deadline = bkr_monotonic() + bound;
    req->last_progress = bkr_monotonic();
    req->last_bytes = 0;
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (cfg->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, cfg->ca_file);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->errbuf);
    curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(e, CURLOPT_XFERINFODATA, req);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, req);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, req);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "bkr/" BKR_VERSION);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->headers);
    if (cfg->share != NULL)
        curl_easy_setopt(e, CURLOPT_SHARE, cfg->share);
    if (strcmp(req->method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (strcmp(req->method, "PUT") == 0) {
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, read_body);
        curl_easy_setopt(e, CURLOPT_READDATA, req);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, seek_body);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, req);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)req->body_len);
    } else if (strcmp(req->method, "POST") == 0) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body ? (const char *)req->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    } else if (strcmp(req->method, "DELETE") == 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
    }
    rc = 0;
done:
    s3_buf_free(&path);
    s3_buf_free(&host);
    s3_buf_free(&url);
    return rc;
}

/* A key as it may be shown: at most 200 bytes, control characters as '?'. */
void s3_printable_key(const char *key, char *out, size_t size)
{
    size_t i = 0;
    for (; key != NULL && key[i] && i + 1 < size && i < 200; i++)
        out[i] = ((unsigned char)key[i] < 0x20 || key[i] == 0x7f) ? '?' : key[i];
    out[i] = '\0';
}

static int transport_kind(s3_request *req, CURLcode rc, const char **kind)
{
    long os_errno = 0;
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        *kind = S3_KIND_TIMEOUT;
        return 1;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        *kind = S3_KIND_UNREACHABLE;
        return 0;
    case CURLE_COULDNT_CONNECT:
        curl_easy_getinfo(req->easy, CURLINFO_OS_ERRNO, &os_errno);
        *kind = os_errno == ECONNREFUSED ? S3_KIND_REFUSED : S3_KIND_UNREACHABLE;
        return 1;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
        *kind = S3_KIND_TLS;
        return 0;
    case CURLE_ABORTED_BY_CALLBACK:
        if (req->timed_out) {
            *kind = S3_KIND_TIMEOUT;
            return 1;
        }
        *kind = BKR_KIND_INTERRUPTED;
        return 0;
    case CURLE_SEND_ERROR:
    case CURLE_SEND_FAIL_REWIND:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        *kind = BKR_KIND_IO; /* a dropped connection */
        return 1;
    default:
        *kind = BKR_KIND_IO;
        return 0;
    }
}

int s3_request_outcome(s3_request *req, CURLcode rc, bkr_error *err, int *retry)
{
    char key[256] = "";
    char what[300] = "";
    *retry = 0;
    if (req->key != NULL) {
        s3_printable_key(req->key, key, sizeof key);
        snprintf(what, sizeof what, "key '%s': ", key);
    }
    if (rc != CURLE_OK) {
        const char *kind;
        *retry = transport_kind(req, rc, &kind);
        if (strcmp(kind, BKR_KIND_INTERRUPTED) == 0)
            return bkr_error_kind(err, kind, "%s: %sinterrupted", req->op, what);
        if (req->timed_out)
            return bkr_error_kind(err, kind, "%s: %sno answer within %g s", req->op, what,
                                  req->max_seconds > 0 ? req->max_seconds : req->cfg->timeout);
        if (req->too_large)
            return bkr_error_kind(err, S3_KIND_REJECTED, "%s: %slarger than %zu bytes", req->op, what,
                                  req->response_max);
        const char *reason = req->errbuf[0] ? req->errbuf : curl_easy_strerror(rc);
        size_t len = strlen(reason);
        while (len > 0 && (reason[len - 1] == '\n' || reason[len - 1] == '\r'))
            len--;
        return bkr_error_kind(err, kind, "%s: %s%s: %.*s", req->op, what, req->cfg->hostport, (int)len, reason);
    }
    curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &req->status);
    long status = req->status;
    if (status_ok(status))
        return 0;
    char code[128] = "";
    if (req->response.len > 0)
        s3_xml_error_code(req->response.data, req->response.len, code, sizeof code);
    const char *kind = S3_KIND_REJECTED;
    if (status == 404)
        kind = BKR_KIND_MISSING;
    else if (status == 403 || strcmp(code, "SignatureDoesNotMatch") == 0 || strcmp(code, "InvalidAccessKeyId") == 0
             || strcmp(code, "AccessDenied") == 0 || strcmp(code, "ExpiredToken") == 0)
        kind = BKR_KIND_AUTH;
    else if (status == 501 || strcmp(code, "NotImplemented") == 0)
        kind = S3_KIND_UNSUPPORTED;
    else if (status >= 500 || status == 429) {
        kind = S3_KIND_SERVER;
        *retry = 1;
    } else if (status == 400 && strcmp(code, "RequestTimeout") == 0) {
        kind = S3_KIND_TIMEOUT;
        *retry = 1;
    }
    if (status == 501)
        *retry = 0;
    return bkr_error_kind(err, kind, "%s: %sHTTP %ld%s%s", req->op, what, status, code[0] ? " " : "", code);
}

double s3_backoff_delay(int attempt)
{
    double base = 0.2;
    for (int i = 1; i < attempt && base < 5.0; i++)
        base *= 2;
    if (base > 5.0)
        base = 5.0;
    /* jitter spreads the retries of many clients: from the kernel, not an unseeded rand() that
     * every bkr process would draw the same from */
    uint16_t bits = 0;
    if (getrandom(&bits, sizeof bits, GRND_NONBLOCK) != (ssize_t)sizeof bits)
        bits = (uint16_t)(bkr_monotonic() * 1e6);
    double r = bits / 65535.0;
    return base / 2 + base / 2 * r;
}

int s3_backoff(int attempt, int no_interrupt)
{
    double end = bkr_monotonic() + s3_backoff_delay(attempt);
    while (bkr_monotonic() < end) {
        if (!no_interrupt && bkr_interrupted())
            return -1;
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    return 0;
}

int s3_request_run(s3_request *req, bkr_error *err)
{
    for (int attempt = 0;; attempt++) {
        if (s3_request_prepare(req, err) != 0)
            return -1;
        CURLcode rc = curl_easy_perform(req->easy);
        int retry = 0;
        if (s3_request_outcome(req, rc, err, &retry) == 0)
            return 0;
        if (!retry || attempt >= req->cfg->retries) {
            if (attempt > 0) {
                size_t len = strlen(err->msg);
                snprintf(err->msg + len, sizeof err->msg - len, " (after %d attempts)", attempt + 1);
            }
            return -1;
        }
        if (s3_backoff(attempt + 1, req->no_interrupt) != 0)
            return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "%s: interrupted", req->op);
    }
}

/* ===================================================================== */
/* Requests from Lua: each held by a userdata, so raising frees it       */
/* ===================================================================== */

static int request_gc(lua_State *L)
{
    s3_request *req = luaL_checkudata(L, 1, BKR_S3_REQUEST);
    s3_request_reset(req);
    if (req->cfg != NULL) {
        s3_config *cfg = req->cfg;
        req->cfg = NULL;
        s3_config_unref(cfg);
    }
    return 0;
}

static s3_request *request_new(lua_State *L, s3_config *cfg, const char *op, const char *method, const char *key)
{
    s3_request *req = lua_newuserdatauv(L, sizeof *req, 0);
    memset(req, 0, sizeof *req);
    luaL_setmetatable(L, BKR_S3_REQUEST);
    s3_config_ref(cfg);
    req->cfg = cfg;
    req->op = op;
    req->method = method;
    req->key = key;
    return req;
}

/* Run it; on failure push nil, message, kind (telling the host an interrupt was delivered). */
static int request_run_or_fail(lua_State *L, s3_request *req)
{
    bkr_error err;
    memset(&err, 0, sizeof err);
    if (s3_request_run(req, &err) == 0)
        return 0;
    s3_request_reset(req);
    if (err.kind != NULL && strcmp(err.kind, BKR_KIND_INTERRUPTED) == 0)
        bkr_interrupt_delivered(L);
    return bkr_pushfail(L, err.kind, "%s", err.msg);
}

static const char *check_key(lua_State *L, int i, const char *fn)
{
    size_t len;
    const char *key = luaL_checklstring(L, i, &len);
    if (len == 0 || len > 1024 || strlen(key) != len)
        luaL_error(L, "%s: a key must be 1 to 1024 bytes, without NUL", fn);
    return key;
}

/* The headers option (a table name = value) into req->extra; strings stay anchored in the
 * options table on the stack. Names bkr sets itself are refused. */
void s3_check_headers(lua_State *L, int opts, const char *fn, s3_pair *extra, size_t *n, size_t max)
{
    static const char *const reserved[] = { "host", "authorization", "x-amz-date", "x-amz-content-sha256",
                                             "x-amz-security-token", "content-length", "content-md5", "expect",
                                             "range", "if-match", "transfer-encoding",
                                             "content-type" /* the content_type option */, NULL };
    if (lua_getfield(L, opts, "headers") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "%s: headers must be a table of name = value", fn);
    int t = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, t)) {
        size_t nl, vl;
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: headers must map names (strings) to values (strings)", fn);
        const char *name = lua_tolstring(L, -2, &nl);
        const char *value = lua_tolstring(L, -1, &vl);
        int ok = nl > 0 && nl < 128;
        for (size_t i = 0; i < nl && ok; i++) {
            unsigned char c = (unsigned char)name[i];
            ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
        }
        if (!ok)
            luaL_error(L, "%s: a header name must be letters, digits and -", fn);
        for (int i = 0; reserved[i]; i++)
            if (strcasecmp(name, reserved[i]) == 0)
                luaL_error(L, "%s: header %s is set by bkr.s3 itself", fn, reserved[i]);
        if (memchr(value, '\r', vl) || memchr(value, '\n', vl) || strlen(value) != vl || vl > 2048)
            luaL_error(L, "%s: header values must be one line", fn);
        if (*n >= max)
            luaL_error(L, "%s: at most %d headers", fn, (int)max);
        extra[(*n)++] = (s3_pair){ name, value, nl, vl };
        lua_pop(L, 1);
    }
    /* the headers table stays on the stack: its strings are anchored */
}

/* base64 of the MD5 of data, into out (25 bytes). */
int s3_content_md5(const void *data, size_t len, char out[25])
{
    unsigned char md[16];
    unsigned int md_len = 0;
    if (EVP_Digest(data, len, md, &md_len, EVP_md5(), NULL) != 1 || md_len != 16) {
        ERR_clear_error();
        return -1;
    }
    EVP_EncodeBlock((unsigned char *)out, md, 16);
    return 0;
}

/* An ETag without its quotes, as S3 compares them. */
static void push_etag(lua_State *L, const char *etag)
{
    size_t len = strlen(etag);
    if (len >= 2 && etag[0] == '"' && etag[len - 1] == '"')
        lua_pushlstring(L, etag + 1, len - 2);
    else
        lua_pushstring(L, etag);
}

static int l_put(lua_State *L)
{
    static const char *const keys[] = { "headers", "content_type", NULL };
    s3_config *cfg = s3_check_client(L, 1);
    const char *key = check_key(L, 2, "s3.put");
    size_t len;
    const char *bytes = luaL_checklstring(L, 3, &len);
    lua_settop(L, 4);
    s3_request *req = request_new(L, cfg, "s3.put", "PUT", key);
    const char *content_type = "application/octet-stream";
    if (!lua_isnil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        bkr_check_option_keys(L, 4, "s3.put", keys);
        s3_check_headers(L, 4, "s3.put", req->extra, &req->nextra, 12);
        if (lua_getfield(L, 4, "content_type") != LUA_TNIL) {
            size_t cl;
            content_type = luaL_checklstring(L, -1, &cl);
            if (memchr(content_type, '\r', cl) || memchr(content_type, '\n', cl) || strlen(content_type) != cl)
                luaL_error(L, "s3.put: content_type must be one line");
        }
    }
    req->extra[req->nextra++] = (s3_pair){ "content-type", content_type, 12, strlen(content_type) };
    char md5[25];
    if (s3_content_md5(bytes, len, md5) != 0)
        return luaL_error(L, "s3.put: OpenSSL cannot compute an MD5");
    req->content_md5 = md5;
    req->body = (const unsigned char *)bytes;
    req->body_len = len;
    if (request_run_or_fail(L, req) != 0)
        return 3;
    s3_request_reset(req);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_get(lua_State *L)
{
    static const char *const keys[] = { "max", NULL };
    s3_config *cfg = s3_check_client(L, 1);
    const char *key = check_key(L, 2, "s3.get");
    lua_settop(L, 3);
    lua_Integer max = DEFAULT_GET_MAX;
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        bkr_check_option_keys(L, 3, "s3.get", keys);
        lua_getfield(L, 3, "max");
        max = luaL_optinteger(L, -1, max);
        if (max < 0 || max > MAX_GET_MAX)
            luaL_error(L, "s3.get: max must be from 0 to %d", MAX_GET_MAX);
    }
    s3_request *req = request_new(L, cfg, "s3.get", "GET", key);
    req->response_max = max > 0 ? (size_t)max : 1;
    if (request_run_or_fail(L, req) != 0)
        return 3;
    lua_pushlstring(L, req->response.data ? req->response.data : "", req->response.len);
    s3_request_reset(req);
    return 1;
}

static void set_time_field(lua_State *L, const char *field, const char *value)
{
    int64_t t = value[0] ? s3_parse_time(value) : -1;
    if (t >= 0) {
        lua_pushinteger(L, (lua_Integer)t);
        lua_setfield(L, -2, field);
    }
}

static int l_head(lua_State *L)
{
    s3_config *cfg = s3_check_client(L, 1);
    const char *key = check_key(L, 2, "s3.head");
    lua_settop(L, 2);
    s3_request *req = request_new(L, cfg, "s3.head", "HEAD", key);
    if (request_run_or_fail(L, req) != 0)
        return 3;
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)req->content_length);
    lua_setfield(L, -2, "size");
    push_etag(L, req->etag);
    lua_setfield(L, -2, "etag");
    set_time_field(L, "last_modified", req->last_modified);
    set_time_field(L, "retain_until", req->retain_until);
    if (req->lock_mode[0]) {
        lua_pushstring(L, req->lock_mode);
        lua_setfield(L, -2, "lock_mode");
    }
    s3_request_reset(req);
    return 1;
}

static int l_delete(lua_State *L)
{
    s3_config *cfg = s3_check_client(L, 1);
    const char *key = check_key(L, 2, "s3.delete");
    lua_settop(L, 2);
    s3_request *req = request_new(L, cfg, "s3.delete", "DELETE", key);
    if (request_run_or_fail(L, req) != 0)
        return 3;
    s3_request_reset(req);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_abort_upload(lua_State *L)
{
    s3_config *cfg = s3_check_client(L, 1);
    const char *key = check_key(L, 2, "s3.abort_upload");
    size_t len;
    const char *id = luaL_checklstring(L, 3, &len);
    lua_settop(L, 3);
    s3_request *req = request_new(L, cfg, "s3.abort_upload", "DELETE", key);
    req->query[req->nquery++] = (s3_pair){ "uploadId", id, 8, len };
    if (request_run_or_fail(L, req) != 0)
        return 3;
    s3_request_reset(req);
    lua_pushboolean(L, 1);
    return 1;
}

/* A listing: s3_listing is C memory, so it lives in a userdata whose __gc frees it. */
#define BKR_S3_LISTING "bkr.s3.Listing"

static int listing_gc(lua_State *L)
{
    s3_listing_free(luaL_checkudata(L, 1, BKR_S3_LISTING));
    return 0;
}

#define MAX_PAGES 100000
#define MAX_ENTRIES 1000000 /* a listing's memory is bounded too */

/* GET pages of a listing until the last one. uploads: ListMultipartUploads, else
 * ListObjectsV2. Pushes the array, or nil, message, kind. */
static int list_pages(lua_State *L, s3_config *cfg, const char *op, const char *prefix, size_t prefix_len,
                      int uploads, lua_Integer page_size)
{
    s3_listing *l = lua_newuserdatauv(L, sizeof *l, 0);
    memset(l, 0, sizeof *l);
    luaL_setmetatable(L, BKR_S3_LISTING);
    int listing = lua_gettop(L);
    char max_keys[32];
    snprintf(max_keys, sizeof max_keys, "%lld", (long long)page_size);
    for (int page = 0;; page++) {
        if (page >= MAX_PAGES)
            return bkr_pushfail(L, BKR_KIND_IO, "%s: more than %d pages: the server's listing does not end", op,
                                MAX_PAGES);
        s3_request *req = request_new(L, cfg, op, "GET", NULL);
        if (uploads) {
            req->query[req->nquery++] = (s3_pair){ "uploads", "", 7, 0 };
            if (l->next_key_marker != NULL) {
                req->query[req->nquery++] = (s3_pair){ "key-marker", l->next_key_marker, 10,
                                                       strlen(l->next_key_marker) };
                if (l->next_upload_id_marker != NULL)
                    req->query[req->nquery++] = (s3_pair){ "upload-id-marker", l->next_upload_id_marker, 16,
                                                           strlen(l->next_upload_id_marker) };
            }
        } else {
            req->query[req->nquery++] = (s3_pair){ "list-type", "2", 9, 1 };
            if (l->next_token != NULL)
                req->query[req->nquery++] = (s3_pair){ "continuation-token", l->next_token, 18,
                                                       strlen(l->next_token) };
            if (page_size > 0)
                req->query[req->nquery++] = (s3_pair){ "max-keys", max_keys, 8, strlen(max_keys) };
        }
        req->query[req->nquery++] = (s3_pair){ "prefix", prefix, 6, prefix_len };
        /* keys with bytes XML 1.0 cannot carry come back escaped (s3_xml_list decodes them) */
        req->query[req->nquery++] = (s3_pair){ "encoding-type", "url", 13, 3 };
        if (request_run_or_fail(L, req) != 0)
            return 3;
        char why[200];
        size_t before = l->n;
        int rc = s3_xml_list(req->response.data, req->response.len, l, why, sizeof why);
        s3_request_reset(req);
        lua_pop(L, 1); /* the request */
        if (rc != 0)
            return bkr_pushfail(L, BKR_KIND_IO, "%s: page %d: %s", op, page + 1, why);
        if (!l->truncated)
            break;
        if (l->n > MAX_ENTRIES)
            return bkr_pushfail(L, BKR_KIND_IO, "%s: more than %d entries: name a narrower prefix", op,
                                MAX_ENTRIES);
        int progress = uploads ? l->next_key_marker != NULL : (l->next_token != NULL && l->next_token[0]);
        if (!progress || l->n == before)
            return bkr_pushfail(L, BKR_KIND_IO, "%s: page %d says more follow but gives no way to them", op,
                                page + 1);
    }
    lua_createtable(L, (int)(l->n < 1000000 ? l->n : 1000000), 0);
    for (size_t i = 0; i < l->n; i++) {
        s3_object *o = &l->items[i];
        lua_createtable(L, 0, 4);
        lua_pushstring(L, o->key);
        lua_setfield(L, -2, "key");
        if (uploads) {
            lua_pushstring(L, o->upload_id);
            lua_setfield(L, -2, "upload_id");
            if (o->last_modified >= 0) {
                lua_pushinteger(L, (lua_Integer)o->last_modified);
                lua_setfield(L, -2, "initiated");
            }
        } else {
            lua_pushinteger(L, (lua_Integer)o->size);
            lua_setfield(L, -2, "size");
            if (o->last_modified >= 0) {
                lua_pushinteger(L, (lua_Integer)o->last_modified);
                lua_setfield(L, -2, "last_modified");
            }
            if (o->etag != NULL) {
                push_etag(L, o->etag);
                lua_setfield(L, -2, "etag");
            }
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    s3_listing_free(l);
    lua_remove(L, listing);
    return 1;
}

static int l_list(lua_State *L)
{
    static const char *const keys[] = { "page_size", NULL };
    s3_config *cfg = s3_check_client(L, 1);
    size_t len;
    const char *prefix = luaL_optlstring(L, 2, "", &len);
    lua_settop(L, 3);
    lua_Integer page_size = 0;
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        bkr_check_option_keys(L, 3, "s3.list", keys);
        lua_getfield(L, 3, "page_size");
        page_size = luaL_optinteger(L, -1, 0);
        if (page_size < 0 || page_size > 1000)
            luaL_error(L, "s3.list: page_size must be from 1 to 1000");
        lua_pop(L, 1);
    }
    return list_pages(L, cfg, "s3.list", prefix, len, 0, page_size);
}

static int l_uploads(lua_State *L)
{
    s3_config *cfg = s3_check_client(L, 1);
    size_t len;
    const char *prefix = luaL_optlstring(L, 2, "", &len);
    lua_settop(L, 2);
    return list_pages(L, cfg, "s3.uploads", prefix, len, 1, 0);
}

/* ===================================================================== */
/* The client                                                             */
/* ===================================================================== */

static char *opt_dup(lua_State *L, int t, const char *fn, const char *key, int required)
{
    int type = lua_getfield(L, t, key);
    if (type == LUA_TNIL && !required) {
        lua_pop(L, 1);
        return NULL;
    }
    if (type != LUA_TSTRING)
        luaL_error(L, "%s: %s must be a string", fn, key);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len || len == 0 || len > 4096)
        luaL_error(L, "%s: %s must be 1 to 4096 bytes without NUL", fn, key);
    char *copy = strdup(s);
    lua_pop(L, 1);
    if (copy == NULL)
        luaL_error(L, "%s: out of memory", fn);
    return copy;
}

static double opt_seconds(lua_State *L, int t, const char *fn, const char *key, double fallback)
{
    int type = lua_getfield(L, t, key);
    double value = fallback;
    if (type != LUA_TNIL) {
        if (type != LUA_TNUMBER)
            luaL_error(L, "%s: %s must be a number of seconds", fn, key);
        value = lua_tonumber(L, -1);
        if (!(value > 0 && value <= MAX_TIMEOUT))
            luaL_error(L, "%s: %s must be more than 0 and at most %d seconds", fn, key, (int)MAX_TIMEOUT);
    }
    lua_pop(L, 1);
    return value;
}

static int client_close(lua_State *L)
{
    s3_client *c = toclient(L, 1);
    s3_config *cfg = c->cfg;
    c->cfg = NULL;
    s3_config_unref(cfg);
    return 0;
}

static int client_tostring(lua_State *L)
{
    s3_client *c = toclient(L, 1);
    if (c->cfg == NULL)
        lua_pushliteral(L, "bkr.s3 client (closed)");
    else
        lua_pushfstring(L, "bkr.s3 client %s://%s bucket %s", c->cfg->scheme, c->cfg->hostport, c->cfg->bucket);
    return 1;
}

/* A bucket name as S3 allows (3-63 of a-z 0-9 . -), which also keeps it out of URL syntax. */
static int bucket_ok(const char *b)
{
    size_t len = strlen(b);
    if (len < 3 || len > 63)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((b[i] >= 'a' && b[i] <= 'z') || (b[i] >= '0' && b[i] <= '9') || b[i] == '.' || b[i] == '-'))
            return 0;
    return 1;
}

static int l_client(lua_State *L)
{
    static const char *const keys[] = { "endpoint", "region", "bucket", "access_key", "secret_key",
                                         "session_token", "path_style", "ca_file", "timeout", "connect_timeout",
                                         "retries", NULL };
    const char *fn = "s3.client";
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    bkr_check_option_keys(L, 1, fn, keys);
    s3_client *c = lua_newuserdatauv(L, sizeof *c, 0);
    c->cfg = NULL;
    luaL_setmetatable(L, BKR_S3_CLIENT);
    s3_config *cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL)
        return luaL_error(L, "%s: out of memory", fn);
    cfg->refs = 1;
    c->cfg = cfg; /* from here the userdata owns it: raising frees it */
    cfg->share = curl_share_init();
    if (cfg->share == NULL)
        return luaL_error(L, "%s: out of memory", fn);
    /* one Lua state, one thread: no lock functions needed */
    curl_share_setopt(cfg->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    curl_share_setopt(cfg->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(cfg->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);

    cfg->region = opt_dup(L, 1, fn, "region", 1);
    cfg->bucket = opt_dup(L, 1, fn, "bucket", 1);
    if (!bucket_ok(cfg->bucket))
        luaL_error(L, "%s: bucket must be 3 to 63 of a-z, 0-9, '.', '-'", fn);
    cfg->access_key = opt_dup(L, 1, fn, "access_key", 1);
    cfg->secret_key = opt_dup(L, 1, fn, "secret_key", 1);
    cfg->session_token = opt_dup(L, 1, fn, "session_token", 0);
    cfg->ca_file = opt_dup(L, 1, fn, "ca_file", 0);
    for (const char *p = cfg->region; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
            luaL_error(L, "%s: region must be of a-z, 0-9, '-'", fn);
    for (const char *p = cfg->access_key; *p; p++)
        if (*p <= ' ' || *p == '/' || *p == 0x7f)
            luaL_error(L, "%s: access_key must be printable, without '/' or spaces", fn);
    lua_getfield(L, 1, "path_style");
    cfg->path_style = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
    lua_pop(L, 1);
    cfg->timeout = opt_seconds(L, 1, fn, "timeout", DEFAULT_TIMEOUT);
    cfg->connect_timeout = opt_seconds(L, 1, fn, "connect_timeout", DEFAULT_CONNECT_TIMEOUT);
    lua_getfield(L, 1, "retries");
    lua_Integer retries = luaL_optinteger(L, -1, DEFAULT_RETRIES);
    if (retries < 0 || retries > MAX_RETRIES)
        luaL_error(L, "%s: retries must be from 0 to %d", fn, MAX_RETRIES);
    cfg->retries = (int)retries;
    lua_pop(L, 1);

    /* The endpoint: scheme, host, port; no credentials, query or fragment in it. */
    if (lua_getfield(L, 1, "endpoint") != LUA_TSTRING)
        luaL_error(L, "%s: endpoint must be a string (https://host[:port])", fn);
    const char *endpoint = lua_tostring(L, -1);
    CURLU *u = curl_url();
    if (u == NULL)
        luaL_error(L, "%s: out of memory", fn);
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *user = NULL, *query = NULL;
    const char *bad = NULL;
    if (curl_url_set(u, CURLUPART_URL, endpoint, 0) != CURLUE_OK)
        bad = "endpoint is not a URL";
    else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK
             || (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0))
        bad = "endpoint must start with https:// or http://";
    else if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK)
        bad = "endpoint must not carry a user or password (give access_key and secret_key)";
    else if (curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK)
        bad = "endpoint must not have a query";
    else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        bad = "endpoint has no host";
    else if (curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
        bad = "endpoint has no path";
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    if (bad == NULL) {
        size_t pl = strlen(path);
        while (pl > 0 && path[pl - 1] == '/')
            pl--;
        cfg->scheme = strdup(scheme);
        cfg->host = strdup(host);
        cfg->base_path = strndup(path, pl);
        size_t hl = strlen(host) + (port ? strlen(port) : 0) + 2;
        cfg->hostport = malloc(hl);
        if (cfg->hostport != NULL)
            snprintf(cfg->hostport, hl, "%s%s%s", host, port ? ":" : "", port ? port : "");
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(user);
    curl_free(query);
    curl_url_cleanup(u);
    if (bad != NULL)
        luaL_error(L, "%s: %s", fn, bad);
    if (cfg->scheme == NULL || cfg->host == NULL || cfg->base_path == NULL || cfg->hostport == NULL)
        luaL_error(L, "%s: out of memory", fn);
    lua_pop(L, 1);
    return 1;
}

/* ===================================================================== */
/* s3.sign                                                                */
/* ===================================================================== */

/* A list {{name, value}, ...} at index t into a malloc'd array held by a userdata at the top. */
static s3_pair *pairs_of(lua_State *L, int t, const char *fn, const char *field, size_t *n)
{
    *n = 0;
    if (lua_getfield(L, t, field) == LUA_TNIL) {
        lua_pop(L, 1);
        return lua_newuserdatauv(L, sizeof(s3_pair), 0);
    }
    if (!lua_istable(L, -1))
        luaL_error(L, "%s: %s must be a list of {name, value}", fn, field);
    lua_Integer count = luaL_len(L, -1);
    if (count < 0 || count > 1000)
        luaL_error(L, "%s: %s has too many entries", fn, field);
    int list = lua_gettop(L);
    s3_pair *p = lua_newuserdatauv(L, sizeof *p * (size_t)(count ? count : 1), 0);
    for (lua_Integer i = 1; i <= count; i++) {
        lua_geti(L, list, i);
        if (!lua_istable(L, -1) || lua_geti(L, -1, 1) != LUA_TSTRING || lua_geti(L, -2, 2) != LUA_TSTRING)
            luaL_error(L, "%s: %s[%d] must be {name, value} (strings)", fn, field, (int)i);
        p[i - 1].name = lua_tolstring(L, -2, &p[i - 1].name_len);
        p[i - 1].value = lua_tolstring(L, -1, &p[i - 1].value_len);
        lua_pop(L, 3); /* the strings stay anchored in the list */
    }
    *n = (size_t)count;
    lua_remove(L, list); /* the list stays anchored in the options table */
    return p;
}

static const char *field_string(lua_State *L, int t, const char *fn, const char *key, int required)
{
    int type = lua_getfield(L, t, key);
    if (type == LUA_TNIL && !required) {
        lua_pop(L, 1);
        return NULL;
    }
    if (type != LUA_TSTRING)
        luaL_error(L, "%s: %s must be a string", fn, key);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* anchored in the options table */
    return s;
}

static int l_sign(lua_State *L)
{
    static const char *const keys[] = { "method", "path", "query", "headers", "payload_hash", "region", "service",
                                         "access_key", "secret_key", "session_token", "amz_date",
                                         "normalize_path", NULL };
    const char *fn = "s3.sign";
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    bkr_check_option_keys(L, 1, fn, keys);
    s3_sign_in in;
    memset(&in, 0, sizeof in);
    in.method = field_string(L, 1, fn, "method", 1);
    in.path = field_string(L, 1, fn, "path", 1);
    in.path_len = strlen(in.path);
    in.payload_hash = field_string(L, 1, fn, "payload_hash", 1);
    in.region = field_string(L, 1, fn, "region", 1);
    in.service = field_string(L, 1, fn, "service", 1);
    in.access_key = field_string(L, 1, fn, "access_key", 1);
    in.secret_key = field_string(L, 1, fn, "secret_key", 1);
    in.amz_date = field_string(L, 1, fn, "amz_date", 1);
    const char *token = field_string(L, 1, fn, "session_token", 0);
    lua_getfield(L, 1, "normalize_path");
    in.normalize_path = lua_toboolean(L, -1);
    lua_pop(L, 1);
    in.query = pairs_of(L, 1, fn, "query", &in.nquery);
    size_t nh;
    s3_pair *given = pairs_of(L, 1, fn, "headers", &nh);
    s3_pair *h = lua_newuserdatauv(L, sizeof *h * (nh + 1), 0);
    memcpy(h, given, sizeof *h * nh);
    if (token != NULL)
        h[nh++] = (s3_pair){ "x-amz-security-token", token, 20, strlen(token) };
    in.headers = h;
    in.nheaders = nh;

    s3_sign_out out;
    char why[256];
    if (s3_sign(&in, &out, why, sizeof why) != 0) {
        ERR_clear_error();
        return luaL_error(L, "%s: %s", fn, why);
    }
    /* out is C memory: copy it into Lua strings, free, then build the table (no raise between) */
    lua_checkstack(L, 8);
    lua_createtable(L, 0, 4);
    lua_pushstring(L, out.canonical_request);
    lua_setfield(L, -2, "canonical_request");
    lua_pushstring(L, out.string_to_sign);
    lua_setfield(L, -2, "string_to_sign");
    lua_pushstring(L, out.signature);
    lua_setfield(L, -2, "signature");
    lua_pushstring(L, out.authorization);
    lua_setfield(L, -2, "authorization");
    s3_sign_out_free(&out);
    return 1;
}

/* ===================================================================== */
/* Module                                                                 */
/* ===================================================================== */

/* libxml2's global state, like libcurl's (curl_global.c): set up once per Lua state, torn
 * down when the state closes, through a sentinel of its own in the registry. */
static int xml_setup(void)
{
    xmlInitParser();
    return 0;
}

static int xml_cleanup(lua_State *L)
{
    (void)L;
    xmlCleanupParser();
    return 0;
}

static void global_init(lua_State *L)
{
    bkr_curl_global_init(L);
    bkr_global_once(L, BKR_S3_XML_GLOBAL, xml_setup, xml_cleanup, "xmlInitParser");
}

static const luaL_Reg client_methods[] = {
    {"put", l_put},
    {"get", l_get},
    {"head", l_head},
    {"delete", l_delete},
    {"list", l_list},
    {"uploads", l_uploads},
    {"abort_upload", l_abort_upload},
    {"sink", s3_client_sink},
    {"source", s3_client_source},
    {"close", client_close},
    {NULL, NULL},
};

static const luaL_Reg client_metamethods[] = {
    {"__gc", client_close},
    {"__close", client_close},
    {"__tostring", client_tostring},
    {NULL, NULL},
};

static const luaL_Reg request_metamethods[] = {
    {"__gc", request_gc},
    {"__close", request_gc},
    {NULL, NULL},
};

static const luaL_Reg listing_metamethods[] = {
    {"__gc", listing_gc},
    {NULL, NULL},
};

static const luaL_Reg s3_funcs[] = {
    {"sign", l_sign},
    {"client", l_client},
    {NULL, NULL},
};

int luaopen_bkr_s3(lua_State *L)
{
    global_init(L);
    bkr_createmeta(L, BKR_S3_CLIENT, client_metamethods, client_methods);
    bkr_createmeta(L, BKR_S3_REQUEST, request_metamethods, NULL);
    bkr_createmeta(L, BKR_S3_LISTING, listing_metamethods, NULL);
    luaL_newlib(L, s3_funcs);
    return 1;
}
