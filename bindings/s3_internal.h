/*
 * s3_internal.h - what the files of bkr.s3 share (not a Lua module of its own):
 *   s3_sign.c     AWS Signature Version 4, pure (no Lua, no network)
 *   s3_xml.c      S3's XML responses read with libxml2 (no Lua, no network; fuzzed)
 *   s3.c          the module, the client, one request with retries, the small requests
 *   s3_stream.c   the stream stages: a multipart upload sink, a streaming GET source
 */
#ifndef BKR_S3_INTERNAL_H
#define BKR_S3_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>
#include <lua.h>

#include "error.h"

#define BKR_S3_CLIENT "bkr.s3.Client"

/* Kinds of failure of bkr.s3 besides the runtime's (error.h): see s3.c's header. */
#define S3_KIND_TIMEOUT "timeout"
#define S3_KIND_REFUSED "refused"
#define S3_KIND_UNREACHABLE "unreachable"
#define S3_KIND_TLS "tls"
#define S3_KIND_REJECTED "rejected"
#define S3_KIND_SERVER "server"
#define S3_KIND_UNSUPPORTED "unsupported"

/* ===================================================================== */
/* A growing byte string                                                  */
/* ===================================================================== */

typedef struct s3_buf {
    char *data; /* NUL-terminated when not NULL */
    size_t len, cap;
    int failed; /* an allocation failed: the content is incomplete */
} s3_buf;

void s3_buf_add(s3_buf *b, const void *data, size_t len);
void s3_buf_str(s3_buf *b, const char *s);
void s3_buf_printf(s3_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void s3_buf_free(s3_buf *b);

/* ===================================================================== */
/* Signing (s3_sign.c)                                                    */
/* ===================================================================== */

typedef struct s3_pair {
    const char *name, *value; /* raw bytes (not percent-encoded); value may be "" */
    size_t name_len, value_len;
} s3_pair;

typedef struct s3_sign_in {
    const char *method;
    const char *path;         /* raw (decoded) absolute path, e.g. "/bucket/a key" */
    size_t path_len;
    const s3_pair *query;     /* raw names and values, any order */
    size_t nquery;
    const s3_pair *headers;   /* every header to sign, host included, any order and case */
    size_t nheaders;
    const char *payload_hash; /* hex SHA-256 of the body, or "UNSIGNED-PAYLOAD" */
    const char *region, *service, *access_key, *secret_key, *amz_date; /* YYYYMMDDTHHMMSSZ */
    int normalize_path;       /* other services: remove dot segments and empty segments, encode
                                 twice; S3: 0 (the path is used as it is, encoded once) */
} s3_sign_in;

typedef struct s3_sign_out {
    char *canonical_request, *string_to_sign, *authorization; /* malloc'd, owned by the caller */
    char *query_string;       /* the canonical query, also usable as the URL's query */
    char *encoded_path;       /* the path as encoded for the URL (encoded once) */
    char signature[65];
} s3_sign_out;

/* Sign a request. 0, or -1 with a message in err (out of memory, an invalid date or header
 * name). Frees whatever it allocated on failure; on success free out with s3_sign_out_free. */
int s3_sign(const s3_sign_in *in, s3_sign_out *out, char *err, size_t err_size);
void s3_sign_out_free(s3_sign_out *out);

/* Percent-encode s as SigV4 does (RFC 3986 unreserved kept, %XX uppercase); '/' kept when
 * keep_slash. */
void s3_uri_encode(s3_buf *b, const char *s, size_t len, int keep_slash);

/* Lowercase hex SHA-256 of data into out[65]. 0, or -1 (OpenSSL failed). */
int s3_sha256_hex(const void *data, size_t len, char out[65]);

/* ===================================================================== */
/* XML responses (s3_xml.c)                                               */
/* ===================================================================== */

/* Responses larger than this are not parsed (a ListObjectsV2 page of 1000 long keys is
 * well under it). */
#define S3_XML_MAX (8 * 1024 * 1024)

typedef struct s3_object {
    char *key, *etag;
    int64_t size;
    int64_t last_modified;    /* seconds since the epoch, -1 when absent or unreadable */
    char *upload_id;          /* ListMultipartUploads only */
} s3_object;

typedef struct s3_listing {
    s3_object *items;
    size_t n, cap;
    int truncated;
    char *next_token;         /* NextContinuationToken (v2) */
    char *next_key_marker, *next_upload_id_marker; /* ListMultipartUploads */
} s3_listing;

/* <Error><Code>..</Code></Error>: the code into code (truncated to its size, "" when none).
 * Returns 0 when the body is an S3 error document, -1 otherwise. */
int s3_xml_error_code(const char *xml, size_t len, char *code, size_t code_size);

/* ListBucketResult (ListObjectsV2) or ListMultipartUploadsResult, appended to out (which may
 * already hold earlier pages). 0, or -1 with a reason in err (not XML, not that document, out
 * of memory). */
int s3_xml_list(const char *xml, size_t len, s3_listing *out, char *err, size_t err_size);
void s3_listing_free(s3_listing *l);

/* InitiateMultipartUploadResult's UploadId, or CompleteMultipartUploadResult's ETag (name =
 * "UploadId" or "ETag", under a root element named root): malloc'd into *value. 0, or -1 with
 * a reason in err (an <Error> document gives its code there). */
int s3_xml_field(const char *xml, size_t len, const char *root, const char *name, char **value,
                 char *err, size_t err_size);

/* "2026-01-31T12:00:00.000Z" (ISO 8601 as S3 writes it) or "Sat, 31 Jan 2026 12:00:00 GMT"
 * (HTTP dates) to seconds since the epoch; -1 when it is neither. */
int64_t s3_parse_time(const char *s);

/* ===================================================================== */
/* The client (s3.c) and its requests, used by the stream stages           */
/* ===================================================================== */

/* The configuration of a client, shared by the client userdata and the stages it made
 * (reference counted: a stage may outlive client:close()). Secrets live here only, and are
 * wiped when the last reference goes. */
typedef struct s3_config {
    int refs;
    char *scheme, *host, *hostport; /* hostport: as in the Host header (port when not default) */
    char *base_path;                /* the endpoint's path, "" or "/prefix" without a final / */
    char *region, *bucket, *access_key, *secret_key, *session_token, *ca_file;
    int path_style;
    double timeout, connect_timeout;
    int retries;
    CURLSH *share;                  /* connections, TLS sessions and DNS kept between requests */
} s3_config;

void s3_config_ref(s3_config *c);
void s3_config_unref(s3_config *c);

/* One HTTP request to S3, performed by one easy handle (blocking, or inside a multi). */
typedef struct s3_request {
    s3_config *cfg;
    const char *op;             /* the Lua-visible name, "s3.put", for messages */
    const char *method;
    const char *key;            /* NULL for requests on the bucket */
    s3_pair query[6]; /* the most a request sends: a listing's five */
    size_t nquery;
    s3_pair extra[16];          /* headers to send and sign besides the ones added here */
    size_t nextra;
    const unsigned char *body;  /* not owned */
    size_t body_len;
    const char *content_md5;    /* base64, or NULL */
    int stream_timeout;         /* timeout bounds time without progress, not the whole request */
    int no_interrupt;           /* abort requests: keep going after SIGTERM (bounded in time) */
    int64_t range_from;         /* GET: Range: bytes=N- when > 0 */
    const char *if_match;       /* GET: If-Match */
    /* the writer of the response body, NULL to collect it in response (up to response_max) */
    size_t (*on_body)(char *data, size_t size, size_t nmemb, void *userdata);
    void *on_body_data;

    /* state of one attempt */
    CURL *easy;
    struct curl_slist *headers;
    size_t body_pos;
    s3_buf response;
    size_t response_max;
    char etag[256], last_modified[64], retain_until[64], lock_mode[32];
    int64_t content_length;     /* -1 when not given */
    long status;
    char errbuf[CURL_ERROR_SIZE];
    double deadline, last_progress;
    curl_off_t last_bytes;
    int timed_out;
    int too_large;              /* the body was larger than response_max */
    int paused;                 /* the reader paused the transfer: no stall while paused */
    double max_seconds;         /* bound of this request instead of the client's timeout (0: that) */
} s3_request;

/* Set up req->easy for one attempt (signing with the current time). 0 or -1 with err set. */
int s3_request_prepare(s3_request *req, bkr_error *err);

/* Classify a finished attempt: 0 when the status is 2xx; else -1 with err set (message and
 * kind) and *retry set when another attempt may succeed. rc is the transfer's CURLcode. */
int s3_request_outcome(s3_request *req, CURLcode rc, bkr_error *err, int *retry);

/* Release an attempt's easy handle, headers and response (the request may be prepared again). */
void s3_request_reset(s3_request *req);

/* Prepare, perform and classify with the client's retries and backoff: 0, or -1 with err. */
int s3_request_run(s3_request *req, bkr_error *err);

/* The wait before attempt number attempt (1, 2, ...): exponential (0.2 s doubling, at most 5 s),
 * with jitter (between half and all of it). */
double s3_backoff_delay(int attempt);

/* Sleep s3_backoff_delay(attempt) in short steps that end early on SIGINT/SIGTERM (then -1). */
int s3_backoff(int attempt, int no_interrupt);

/* The headers option of the table at index opts (name = value) into extra (up to max), names
 * checked (bkr's own are refused), values one line. The strings stay anchored in opts. Raises
 * on misuse. */
void s3_check_headers(lua_State *L, int opts, const char *fn, s3_pair *extra, size_t *n, size_t max);

/* base64 of the MD5 of data (Content-MD5), into out. 0 or -1. */
int s3_content_md5(const void *data, size_t len, char out[25]);

/* "KEY" as a message may show it: at most 200 bytes, control characters as '?'. */
void s3_printable_key(const char *key, char *out, size_t size);

/* client:sink and client:source (s3_stream.c), methods of the client. */
int s3_client_sink(lua_State *L);
int s3_client_source(lua_State *L);

/* The client userdata at index i (raises when it is not one, or closed). */
s3_config *s3_check_client(lua_State *L, int i);

#endif
