/*
 * s3_stream.c - the stream stages of bkr.s3 (stream.h), methods of a client (s3.c):
 *
 *   client:sink(key[, { part_size = 8 MiB (at least 5 MiB), parts_in_flight = 4 (1 to 16),
 *                       headers = { name = value }, content_type = s, name = s }])
 *       A multipart upload. Each full part is PUT while the pipeline goes on, up to
 *       parts_in_flight at once through curl's multi interface, driven from the stage's write
 *       and finish callbacks: memory stays near (parts_in_flight + 1) x part_size. Each part
 *       carries its Content-MD5 and x-amz-content-sha256 and is retried from memory. finish
 *       sends CompleteMultipartUpload; an object smaller than one part is one PutObject. abort
 *       (any failure in the pipeline, SIGTERM) sends AbortMultipartUpload, bounded in time, so
 *       nothing appears under the key. headers go on CreateMultipartUpload or PutObject (Object
 *       Lock: x-amz-object-lock-mode, x-amz-object-lock-retain-until-date).
 *       Result: { key, size, etag, parts }.
 *   client:source(key[, { name = s }])
 *       A streaming GET into a bounded buffer (the transfer pauses while the buffer is full).
 *       A connection dropped mid-object is resumed with a Range request from the offset reached,
 *       If-Match the first response's ETag (the client's retries bound it). 404: kind missing.
 *
 * timeout bounds, for these transfers, the time without a byte moving, not the whole transfer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"
#include "s3_internal.h"
#include "stream.h"

#define MIN_PART (5 * 1024 * 1024)
#define DEFAULT_PART (8 * 1024 * 1024)
#define MAX_PART (1024 * 1024 * 1024)
#define MAX_PARTS 10000
#define MAX_IN_FLIGHT 16
#define ABORT_SECONDS 10.0

/* ===================================================================== */
/* Options shared by both stages                                          */
/* ===================================================================== */

/* Headers copied into C memory: a stage outlives the Lua call that made it. */
typedef struct owned_headers {
    char *names[16], *values[16];
    s3_pair pairs[16];
    size_t n;
} owned_headers;

static void owned_headers_free(owned_headers *h)
{
    for (size_t i = 0; i < h->n; i++) {
        free(h->names[i]);
        free(h->values[i]);
    }
    h->n = 0;
}

static int owned_headers_copy(owned_headers *h, const s3_pair *from, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h->names[i] = strndup(from[i].name, from[i].name_len);
        h->values[i] = strndup(from[i].value, from[i].value_len);
        h->n = i + 1;
        if (h->names[i] == NULL || h->values[i] == NULL)
            return -1;
        h->pairs[i] = (s3_pair){ h->names[i], h->values[i], from[i].name_len, from[i].value_len };
    }
    return 0;
}

/* ===================================================================== */
/* The sink: a multipart upload                                           */
/* ===================================================================== */

enum { SLOT_FREE = 0, SLOT_RUNNING, SLOT_WAITING };

typedef struct slot {
    int state;
    int number;
    unsigned char *data;
    size_t len;
    char md5[25];
    char partno[16];
    int attempts;
    double retry_at;
    s3_request req;
} slot;

typedef struct s3_sink {
    s3_config *cfg;
    char *key;
    owned_headers headers; /* for CreateMultipartUpload / PutObject, content-type included */
    size_t part_size;
    int in_flight;
    unsigned char *cur;    /* the part being filled */
    size_t cur_len;
    char *upload_id;
    int parts;             /* parts started so far (the next one is parts + 1) */
    char **etags;          /* etags[n - 1]: part n's ETag, as the server gave it */
    slot *slots;
    CURLM *multi;
    double last_drive;     /* when sink_drive last returned */
    unsigned char *spare;  /* a part buffer done with, for the next part */
    uint64_t size;
    char *etag;            /* the object's */
} s3_sink;

/* Part buffers come straight from mmap and go back with munmap: through malloc, glibc's
 * adaptive mmap threshold serves repeated multi-MiB buffers from the heap after the first is
 * freed and keeps what was freed, and a 64 MiB upload in 5 MiB parts peaked at 130 MB. */
static unsigned char *part_alloc(s3_sink *s)
{
    if (s->spare != NULL) {
        unsigned char *p = s->spare;
        s->spare = NULL;
        return p;
    }
    void *p = mmap(NULL, s->part_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void part_free(s3_sink *s, unsigned char *p)
{
    if (p == NULL)
        return;
    if (s->spare == NULL) {
        s->spare = p;
        return;
    }
    munmap(p, s->part_size);
}

/* The part being filled and the spare, back to the system (the stage may wait long for __gc). */
static void release_buffers(s3_sink *s)
{
    if (s->cur != NULL)
        munmap(s->cur, s->part_size);
    s->cur = NULL;
    s->cur_len = 0;
    if (s->spare != NULL)
        munmap(s->spare, s->part_size);
    s->spare = NULL;
}

static void slot_release(s3_sink *s, slot *sl)
{
    if (sl->req.easy != NULL && sl->state == SLOT_RUNNING)
        curl_multi_remove_handle(s->multi, sl->req.easy);
    s3_request_reset(&sl->req);
    part_free(s, sl->data);
    sl->data = NULL;
    sl->len = 0;
    sl->state = SLOT_FREE;
}

/* A request of this sink, on the client's configuration. */
static void sink_request(s3_sink *s, s3_request *req, const char *method)
{
    memset(req, 0, sizeof *req);
    req->cfg = s->cfg;
    req->op = "s3.sink";
    req->method = method;
    req->key = s->key;
}

static int create_upload(s3_sink *s, bkr_error *err)
{
    s3_request req;
    sink_request(s, &req, "POST");
    req.query[req.nquery++] = (s3_pair){ "uploads", "", 7, 0 };
    memcpy(req.extra, s->headers.pairs, sizeof(s3_pair) * s->headers.n);
    req.nextra = s->headers.n;
    int rc = s3_request_run(&req, err);
    if (rc == 0) {
        char why[200];
        if (s3_xml_field(req.response.data, req.response.len, "InitiateMultipartUploadResult", "UploadId",
                         &s->upload_id, why, sizeof why) != 0)
            rc = bkr_error_set(err, "s3.sink: CreateMultipartUpload: %s", why);
    }
    s3_request_reset(&req);
    return rc;
}

static int slot_start(s3_sink *s, slot *sl, bkr_error *err)
{
    s3_request *req = &sl->req;
    sink_request(s, req, "PUT");
    req->query[req->nquery++] = (s3_pair){ "partNumber", sl->partno, 10, strlen(sl->partno) };
    req->query[req->nquery++] = (s3_pair){ "uploadId", s->upload_id, 8, strlen(s->upload_id) };
    req->body = sl->data;
    req->body_len = sl->len;
    req->content_md5 = sl->md5;
    req->stream_timeout = 1;
    if (s3_request_prepare(req, err) != 0)
        return -1;
    if (curl_multi_add_handle(s->multi, req->easy) != CURLM_OK)
        return bkr_error_set(err, "s3.sink: cannot start part %d (out of memory)", sl->number);
    sl->state = SLOT_RUNNING;
    return 0;
}

/* Move transfers on: collect finished parts, restart the ones whose backoff is over, and wait
 * up to wait_ms for the sockets. -1 with err when a part failed for good or on SIGTERM. */
static int sink_drive_once(s3_sink *s, int wait_ms, bkr_error *err)
{
    int running = 0;
    if (curl_multi_perform(s->multi, &running) != CURLM_OK)
        return bkr_error_set(err, "s3.sink: curl_multi_perform failed");
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        slot *sl = NULL;
        for (int i = 0; i < s->in_flight; i++)
            if (s->slots[i].state == SLOT_RUNNING && s->slots[i].req.easy == msg->easy_handle)
                sl = &s->slots[i];
        if (sl == NULL)
            continue;
        CURLcode rc = msg->data.result;
        curl_multi_remove_handle(s->multi, sl->req.easy);
        sl->state = SLOT_WAITING; /* not in the multi any more */
        int retry = 0;
        if (s3_request_outcome(&sl->req, rc, err, &retry) == 0) {
            if (sl->req.etag[0] == '\0')
                return bkr_error_set(err, "s3.sink: key '%s': part %d: the server gave no ETag", s->key,
                                     sl->number);
            s->etags[sl->number - 1] = strdup(sl->req.etag);
            if (s->etags[sl->number - 1] == NULL)
                return bkr_error_set(err, "s3.sink: out of memory");
            slot_release(s, sl);
            continue;
        }
        if (!retry || sl->attempts >= s->cfg->retries) {
            size_t len = strlen(err->msg);
            snprintf(err->msg + len, sizeof err->msg - len, " (part %d, %d attempts)", sl->number, sl->attempts + 1);
            return -1;
        }
        sl->attempts++;
        sl->retry_at = bkr_monotonic() + s3_backoff_delay(sl->attempts);
        s3_request_reset(&sl->req);
    }
    double now = bkr_monotonic();
    for (int i = 0; i < s->in_flight; i++) {
        slot *sl = &s->slots[i];
        if (sl->state == SLOT_WAITING && now >= sl->retry_at && slot_start(s, sl, err) != 0)
            return -1;
    }
    if (wait_ms > 0 && curl_multi_poll(s->multi, NULL, 0, wait_ms, NULL) != CURLM_OK)
        return bkr_error_set(err, "s3.sink: curl_multi_poll failed");
    return 0;
}

static int sink_drive(s3_sink *s, int wait_ms, bkr_error *err)
{
    if (bkr_interrupted())
        return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted");
    /* Transfers move only while driven: the time the pipeline spent elsewhere (a producer that
     * paused) is no stall of theirs. */
    double gap = bkr_monotonic() - s->last_drive;
    if (s->last_drive > 0 && gap > 0.5)
        for (int i = 0; i < s->in_flight; i++)
            if (s->slots[i].state == SLOT_RUNNING)
                s->slots[i].req.last_progress += gap;
    int rc = sink_drive_once(s, wait_ms, err);
    s->last_drive = bkr_monotonic();
    return rc;
}

static slot *free_slot(s3_sink *s)
{
    for (int i = 0; i < s->in_flight; i++)
        if (s->slots[i].state == SLOT_FREE)
            return &s->slots[i];
    return NULL;
}

/* Hand the current buffer to a slot as the next part (waiting for a slot if all are busy). */
static int start_part(s3_sink *s, bkr_error *err)
{
    if (s->upload_id == NULL && create_upload(s, err) != 0)
        return -1;
    if (s->parts >= MAX_PARTS)
        return bkr_error_set(err, "s3.sink: more than %d parts: use a larger part_size", MAX_PARTS);
    slot *sl;
    while ((sl = free_slot(s)) == NULL)
        if (sink_drive(s, 200, err) != 0)
            return -1;
    sl->number = ++s->parts;
    snprintf(sl->partno, sizeof sl->partno, "%d", sl->number);
    sl->data = s->cur;
    sl->len = s->cur_len;
    sl->attempts = 0;
    s->cur = NULL;
    s->cur_len = 0;
    if (s3_content_md5(sl->data, sl->len, sl->md5) != 0)
        return bkr_error_set(err, "s3.sink: OpenSSL cannot compute an MD5");
    return slot_start(s, sl, err);
}

static int sink_write(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    s3_sink *s = self;
    while (len > 0) {
        if (s->cur == NULL) {
            s->cur = part_alloc(s);
            if (s->cur == NULL)
                return bkr_error_set(err, "s3.sink: out of memory (part_size %zu)", s->part_size);
        }
        size_t n = s->part_size - s->cur_len < len ? s->part_size - s->cur_len : len;
        memcpy(s->cur + s->cur_len, data, n);
        s->cur_len += n;
        s->size += n;
        data += n;
        len -= n;
        if (s->cur_len == s->part_size && start_part(s, err) != 0)
            return -1;
    }
    return s->upload_id != NULL ? sink_drive(s, 0, err) : 0;
}

static int put_whole(s3_sink *s, bkr_error *err)
{
    s3_request req;
    sink_request(s, &req, "PUT");
    memcpy(req.extra, s->headers.pairs, sizeof(s3_pair) * s->headers.n);
    req.nextra = s->headers.n;
    char md5[25];
    if (s3_content_md5(s->cur ? (const void *)s->cur : "", s->cur_len, md5) != 0)
        return bkr_error_set(err, "s3.sink: OpenSSL cannot compute an MD5");
    req.content_md5 = md5;
    req.body = s->cur;
    req.body_len = s->cur_len;
    req.stream_timeout = 1;
    int rc = s3_request_run(&req, err);
    if (rc == 0) {
        s->etag = strdup(req.etag);
        s->parts = 1;
        if (s->etag == NULL)
            rc = bkr_error_set(err, "s3.sink: out of memory");
    }
    s3_request_reset(&req);
    return rc;
}

static int complete_upload(s3_sink *s, bkr_error *err)
{
    s3_buf xml = {0};
    s3_buf_str(&xml, "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (int i = 0; i < s->parts; i++) {
        /* an ETag is hex in quotes; anything that could break the document is refused */
        const char *etag = s->etags[i];
        if (etag == NULL || strpbrk(etag, "<>&") != NULL) {
            s3_buf_free(&xml);
            return bkr_error_set(err, "s3.sink: key '%s': part %d has no usable ETag", s->key, i + 1);
        }
        s3_buf_printf(&xml, "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>", i + 1, etag);
    }
    s3_buf_str(&xml, "</CompleteMultipartUpload>");
    if (xml.failed) {
        s3_buf_free(&xml);
        return bkr_error_set(err, "s3.sink: out of memory");
    }
    s3_request req;
    sink_request(s, &req, "POST");
    req.query[req.nquery++] = (s3_pair){ "uploadId", s->upload_id, 8, strlen(s->upload_id) };
    req.extra[req.nextra++] = (s3_pair){ "content-type", "application/xml", 12, 15 };
    req.body = (const unsigned char *)xml.data;
    req.body_len = xml.len;
    int rc = s3_request_run(&req, err);
    if (rc == 0) {
        /* S3 may answer 200 and put an <Error> in the body */
        char why[200];
        char *etag = NULL;
        if (s3_xml_field(req.response.data, req.response.len, "CompleteMultipartUploadResult", "ETag", &etag, why,
                         sizeof why) != 0) {
            rc = bkr_error_kind(err, S3_KIND_SERVER, "s3.sink: key '%s': CompleteMultipartUpload: %s", s->key, why);
        } else {
            s->etag = etag;
        }
    }
    s3_request_reset(&req);
    s3_buf_free(&xml);
    return rc;
}

static int sink_finish(void *self, bkr_error *err)
{
    s3_sink *s = self;
    if (s->upload_id == NULL) {
        int rc = put_whole(s, err);
        release_buffers(s);
        return rc;
    }
    if (s->cur_len > 0 && start_part(s, err) != 0)
        return -1;
    for (;;) {
        int busy = 0;
        for (int i = 0; i < s->in_flight; i++)
            busy |= s->slots[i].state != SLOT_FREE;
        if (!busy)
            break;
        if (sink_drive(s, 200, err) != 0)
            return -1;
    }
    if (complete_upload(s, err) != 0)
        return -1;
    free(s->upload_id); /* done: nothing to abort any more */
    s->upload_id = NULL;
    release_buffers(s);
    return 0;
}

/* Stop every part, and tell the server to drop the upload (best effort, bounded in time, also
 * after SIGTERM). */
static void sink_abort(void *self)
{
    s3_sink *s = self;
    for (int i = 0; s->slots != NULL && i < s->in_flight; i++)
        slot_release(s, &s->slots[i]);
    if (s->upload_id != NULL) {
        double end = bkr_monotonic() + ABORT_SECONDS;
        for (int attempt = 0; attempt < 3; attempt++) {
            s3_request req;
            bkr_error err;
            int retry = 0;
            sink_request(s, &req, "DELETE");
            req.query[req.nquery++] = (s3_pair){ "uploadId", s->upload_id, 8, strlen(s->upload_id) };
            req.no_interrupt = 1;
            req.max_seconds = end - bkr_monotonic();
            if (req.max_seconds < 0.5)
                break;
            int ok = s3_request_prepare(&req, &err) == 0
                     && s3_request_outcome(&req, curl_easy_perform(req.easy), &err, &retry) == 0;
            s3_request_reset(&req);
            if (ok || !retry)
                break;
            if (s3_backoff(attempt + 1, 1) != 0)
                break;
        }
        free(s->upload_id);
        s->upload_id = NULL;
    }
    release_buffers(s);
}

static int sink_result(void *self, lua_State *L)
{
    s3_sink *s = self;
    lua_createtable(L, 0, 4);
    lua_pushstring(L, s->key);
    lua_setfield(L, -2, "key");
    lua_pushinteger(L, (lua_Integer)s->size);
    lua_setfield(L, -2, "size");
    const char *etag = s->etag ? s->etag : "";
    size_t len = strlen(etag);
    if (len >= 2 && etag[0] == '"' && etag[len - 1] == '"')
        lua_pushlstring(L, etag + 1, len - 2);
    else
        lua_pushstring(L, etag);
    lua_setfield(L, -2, "etag");
    lua_pushinteger(L, s->parts);
    lua_setfield(L, -2, "parts");
    return 1;
}

static void sink_free(void *self)
{
    s3_sink *s = self;
    sink_abort(s); /* a stage that never ran, or ran and failed: nothing stays open */
    if (s->multi != NULL)
        curl_multi_cleanup(s->multi);
    if (s->etags != NULL)
        for (int i = 0; i < MAX_PARTS; i++)
            free(s->etags[i]);
    free(s->etags);
    free(s->slots);
    free(s->etag);
    free(s->key);
    owned_headers_free(&s->headers);
    s3_config_unref(s->cfg);
    free(s);
}

static const bkr_stage_ops sink_ops = {
    .type = "s3", .kind = BKR_SINK, .write = sink_write, .finish = sink_finish, .abort = sink_abort,
    .result = sink_result, .free = sink_free,
};

static lua_Integer opt_integer(lua_State *L, int t, const char *fn, const char *key, lua_Integer fallback,
                               lua_Integer min, lua_Integer max)
{
    int type = lua_getfield(L, t, key);
    lua_Integer v = fallback;
    if (type != LUA_TNIL) {
        if (!lua_isinteger(L, -1))
            luaL_error(L, "%s: %s must be an integer", fn, key);
        v = lua_tointeger(L, -1);
        if (v < min || v > max)
            luaL_error(L, "%s: %s must be from %lld to %lld", fn, key, (long long)min, (long long)max);
    }
    lua_pop(L, 1);
    return v;
}

int s3_client_sink(lua_State *L)
{
    static const char *const keys[] = { "part_size", "parts_in_flight", "headers", "content_type", "name", NULL };
    const char *fn = "s3.sink";
    s3_config *cfg = s3_check_client(L, 1);
    size_t key_len;
    const char *key = luaL_checklstring(L, 2, &key_len);
    if (key_len == 0 || key_len > 1024 || strlen(key) != key_len)
        luaL_error(L, "%s: a key must be 1 to 1024 bytes, without NUL", fn);
    lua_settop(L, 3);
    lua_Integer part_size = DEFAULT_PART, in_flight = 4;
    s3_pair extra[16];
    size_t nextra = 0;
    const char *content_type = "application/octet-stream";
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        bkr_check_option_keys(L, 3, fn, keys);
        part_size = opt_integer(L, 3, fn, "part_size", DEFAULT_PART, MIN_PART, MAX_PART);
        in_flight = opt_integer(L, 3, fn, "parts_in_flight", 4, 1, MAX_IN_FLIGHT);
        s3_check_headers(L, 3, fn, extra, &nextra, 15);
        if (lua_getfield(L, 3, "content_type") != LUA_TNIL) {
            size_t cl;
            content_type = luaL_checklstring(L, -1, &cl);
            if (memchr(content_type, '\r', cl) || memchr(content_type, '\n', cl) || strlen(content_type) != cl)
                luaL_error(L, "%s: content_type must be one line", fn);
        }
    }
    extra[nextra++] = (s3_pair){ "content-type", content_type, 12, strlen(content_type) };
    const char *name = bkr_stage_optname(L, 3);

    bkr_stage *st = bkr_stage_new(L, &sink_ops);
    s3_sink *s = calloc(1, sizeof *s);
    if (s == NULL)
        return luaL_error(L, "%s: out of memory", fn);
    s->cfg = cfg;
    s3_config_ref(cfg);
    s->part_size = (size_t)part_size;
    s->in_flight = (int)in_flight;
    s->key = strdup(key);
    s->slots = calloc((size_t)in_flight, sizeof *s->slots);
    s->etags = calloc(MAX_PARTS, sizeof *s->etags);
    s->multi = curl_multi_init();
    if (s->key == NULL || s->slots == NULL || s->etags == NULL || s->multi == NULL
        || owned_headers_copy(&s->headers, extra, nextra) != 0) {
        sink_free(s);
        return luaL_error(L, "%s: out of memory", fn);
    }
    bkr_stage_open(st, s, name);
    return 1;
}

/* ===================================================================== */
/* The source: a streaming GET                                            */
/* ===================================================================== */

#define SOURCE_BUFFER (1024 * 1024)

typedef struct s3_source {
    s3_config *cfg;
    char *key;
    CURLM *multi;
    s3_request req;
    int active;          /* req.easy is in the multi */
    int done;            /* the transfer ended; result holds how */
    CURLcode result;
    unsigned char *buf;
    size_t start, len;
    int64_t received;    /* bytes of the object received so far */
    int64_t total;       /* the object's size, -1 until known, -2 when the server gave none */
    int64_t attempt_from;/* received when this attempt started */
    char etag[256];
    int attempts;        /* retries in a row without a byte delivered in between */
    int range_ignored;
    double last_read;    /* when source_read last returned */
} s3_source;

static size_t source_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    s3_source *s = userdata;
    size_t n = size * nmemb;
    if (s->req.range_from > 0) {
        long status = 0;
        curl_easy_getinfo(s->req.easy, CURLINFO_RESPONSE_CODE, &status);
        if (status != 206) {
            s->range_ignored = 1;
            return 0;
        }
    }
    if (s->total == -1) {
        s->total = s->req.content_length >= 0 ? s->req.range_from + s->req.content_length : -2;
        if (s->etag[0] == '\0')
            snprintf(s->etag, sizeof s->etag, "%s", s->req.etag);
    }
    if (SOURCE_BUFFER - s->start - s->len < n) {
        memmove(s->buf, s->buf + s->start, s->len);
        s->start = 0;
    }
    if (SOURCE_BUFFER - s->len < n) {
        s->req.paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    }
    memcpy(s->buf + s->start + s->len, data, n);
    s->len += n;
    s->received += (int64_t)n;
    return n;
}

static int source_start(s3_source *s, bkr_error *err)
{
    s3_request *req = &s->req;
    memset(req, 0, sizeof *req);
    req->cfg = s->cfg;
    req->op = "s3.source";
    req->method = "GET";
    req->key = s->key;
    req->stream_timeout = 1;
    req->on_body = source_body;
    req->on_body_data = s;
    req->range_from = s->received;
    req->if_match = s->etag[0] ? s->etag : NULL;
    s->done = 0;
    s->range_ignored = 0;
    s->attempt_from = s->received;
    if (s3_request_prepare(req, err) != 0)
        return -1;
    if (curl_multi_add_handle(s->multi, req->easy) != CURLM_OK)
        return bkr_error_set(err, "s3.source: cannot start the transfer (out of memory)");
    s->active = 1;
    return 0;
}

static void source_stop(s3_source *s)
{
    if (s->active && s->req.easy != NULL)
        curl_multi_remove_handle(s->multi, s->req.easy);
    s->active = 0;
    s3_request_reset(&s->req);
}

static int source_read_once(s3_source *s, unsigned char *out, size_t cap, size_t *out_len, int *eof,
                            bkr_error *err)
{
    for (;;) {
        if (bkr_interrupted())
            return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted");
        if (s->len > 0) {
            size_t n = s->len < cap ? s->len : cap;
            memcpy(out, s->buf + s->start, n);
            s->start += n;
            s->len -= n;
            if (s->len == 0)
                s->start = 0;
            *out_len = n;
            if (s->req.paused && s->active && SOURCE_BUFFER - s->len >= 2 * CURL_MAX_WRITE_SIZE) {
                s->req.paused = 0;
                curl_easy_pause(s->req.easy, CURLPAUSE_CONT); /* may deliver (or pause) at once */
            }
            return 0;
        }
        if (s->done) {
            int retry = 0;
            int rc = s->range_ignored
                         ? bkr_error_set(err, "s3.source: the server ignored a Range request")
                         : s3_request_outcome(&s->req, s->result, err, &retry);
            if (rc != 0 && s->result != CURLE_OK && !s->range_ignored && s->total >= 0
                && s->received == s->total)
                rc = 0; /* the connection failed after the last byte: nothing is missing (a Range
                         * from the end would only get 416) */
            if (rc == 0 && s->total >= 0 && s->received != s->total) {
                rc = bkr_error_kind(err, BKR_KIND_TRUNCATED, "s3.source: key '%s': %lld of %lld bytes", s->key,
                                    (long long)s->received, (long long)s->total);
                retry = 1;
            }
            if (rc == 0) {
                source_stop(s);
                *eof = 1;
                return 0;
            }
            source_stop(s);
            if (s->received > s->attempt_from)
                s->attempts = 0; /* that attempt got somewhere: the retries count anew */
            if (!retry || s->attempts >= s->cfg->retries)
                return -1;
            s->attempts++;
            if (s3_backoff(s->attempts, 0) != 0)
                return bkr_error_kind(err, BKR_KIND_INTERRUPTED, "interrupted");
            if (source_start(s, err) != 0)
                return -1;
            continue;
        }
        if (!s->active && source_start(s, err) != 0)
            return -1;
        int running = 0;
        if (curl_multi_perform(s->multi, &running) != CURLM_OK)
            return bkr_error_set(err, "s3.source: curl_multi_perform failed");
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(s->multi, &left)) != NULL)
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == s->req.easy) {
                s->done = 1;
                s->result = msg->data.result;
            }
        if (s->len == 0 && !s->done && curl_multi_poll(s->multi, NULL, 0, 200, NULL) != CURLM_OK)
            return bkr_error_set(err, "s3.source: curl_multi_poll failed");
    }
}

static int source_read(void *self, unsigned char *out, size_t cap, size_t *out_len, int *eof, bkr_error *err)
{
    s3_source *s = self;
    *out_len = 0;
    *eof = 0;
    /* The transfer moves only while read is called: time the pipeline spent downstream is no
     * stall of the server's. */
    double gap = bkr_monotonic() - s->last_read;
    if (s->active && s->last_read > 0 && gap > 0.5)
        s->req.last_progress += gap;
    int rc = source_read_once(s, out, cap, out_len, eof, err);
    s->last_read = bkr_monotonic();
    return rc;
}

static void source_abort(void *self)
{
    source_stop(self);
}

static void source_free(void *self)
{
    s3_source *s = self;
    source_stop(s);
    if (s->multi != NULL)
        curl_multi_cleanup(s->multi);
    free(s->buf);
    free(s->key);
    s3_config_unref(s->cfg);
    free(s);
}

static const bkr_stage_ops source_ops = {
    .type = "s3", .kind = BKR_SOURCE, .read = source_read, .abort = source_abort, .free = source_free,
};

int s3_client_source(lua_State *L)
{
    static const char *const keys[] = { "name", NULL };
    const char *fn = "s3.source";
    s3_config *cfg = s3_check_client(L, 1);
    size_t key_len;
    const char *key = luaL_checklstring(L, 2, &key_len);
    if (key_len == 0 || key_len > 1024 || strlen(key) != key_len)
        luaL_error(L, "%s: a key must be 1 to 1024 bytes, without NUL", fn);
    lua_settop(L, 3);
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        bkr_check_option_keys(L, 3, fn, keys);
    }
    const char *name = bkr_stage_optname(L, 3);
    bkr_stage *st = bkr_stage_new(L, &source_ops);
    s3_source *s = calloc(1, sizeof *s);
    if (s == NULL)
        return luaL_error(L, "%s: out of memory", fn);
    s->cfg = cfg;
    s3_config_ref(cfg);
    s->total = -1;
    s->key = strdup(key);
    s->buf = malloc(SOURCE_BUFFER);
    s->multi = curl_multi_init();
    if (s->key == NULL || s->buf == NULL || s->multi == NULL) {
        source_free(s);
        return luaL_error(L, "%s: out of memory", fn);
    }
    bkr_stage_open(st, s, name);
    return 1;
}
