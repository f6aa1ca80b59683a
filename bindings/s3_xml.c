/*
 * s3_xml.c - S3's XML responses for bkr.s3 (s3_internal.h), read with libxml2: error
 * documents, ListObjectsV2 and ListMultipartUploads pages, CreateMultipartUpload's UploadId and
 * CompleteMultipartUpload's ETag. No Lua, no network: fuzzed by tests/fuzz/fuzz_s3_xml.c.
 *
 * A response comes from the network, so the parser is bounded: at most S3_XML_MAX bytes, no
 * network access (XML_PARSE_NONET), no external DTD loaded and no entity substituted (neither
 * flag given), and a document with a DTD at all is refused (S3 never sends one, and an internal
 * subset is how entity expansion attacks start). Text is read from text and CDATA children
 * only, never through entity references. libxml2 bounds the nesting depth itself.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "s3_internal.h"

/* ===================================================================== */
/* Parsing a document                                                     */
/* ===================================================================== */

static xmlDocPtr parse(const char *xml, size_t len, char *err, size_t err_size)
{
    if (len == 0) {
        snprintf(err, err_size, "empty response");
        return NULL;
    }
    if (len > S3_XML_MAX) {
        snprintf(err, err_size, "response larger than %d bytes", S3_XML_MAX);
        return NULL;
    }
    xmlDocPtr doc = xmlReadMemory(xml, (int)len, NULL, NULL,
                                  XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_NOBLANKS);
    if (doc == NULL) {
        xmlResetLastError();
        snprintf(err, err_size, "response is not XML");
        return NULL;
    }
    if (doc->intSubset != NULL || doc->extSubset != NULL || xmlDocGetRootElement(doc) == NULL) {
        xmlFreeDoc(doc);
        snprintf(err, err_size, "response is not an S3 document (a DTD, or no root element)");
        return NULL;
    }
    return doc;
}

static int named(xmlNodePtr n, const char *name)
{
    return n != NULL && n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, name) == 0;
}

/* The text of an element: its text and CDATA children, malloc'd (NULL when out of memory). */
static char *text_of(xmlNodePtr n)
{
    s3_buf b = {0};
    s3_buf_add(&b, "", 0);
    for (xmlNodePtr c = n->children; c != NULL; c = c->next)
        if ((c->type == XML_TEXT_NODE || c->type == XML_CDATA_SECTION_NODE) && c->content != NULL)
            s3_buf_str(&b, (const char *)c->content);
    if (b.failed) {
        s3_buf_free(&b);
        return NULL;
    }
    return b.data;
}

/* The text of the first child element called name, into buf (truncated); 0 if found. */
static int child_text(xmlNodePtr parent, const char *name, char *buf, size_t size)
{
    for (xmlNodePtr c = parent->children; c != NULL; c = c->next)
        if (named(c, name)) {
            char *t = text_of(c);
            if (t == NULL)
                return -1;
            snprintf(buf, size, "%s", t);
            free(t);
            return 0;
        }
    return -1;
}

static char *child_dup(xmlNodePtr parent, const char *name)
{
    for (xmlNodePtr c = parent->children; c != NULL; c = c->next)
        if (named(c, name))
            return text_of(c);
    return NULL;
}

/* ===================================================================== */
/* Times                                                                  */
/* ===================================================================== */

static int64_t to_epoch(struct tm *tm)
{
    if (tm->tm_year < 70 || tm->tm_year > 8000 || tm->tm_mon < 0 || tm->tm_mon > 11 || tm->tm_mday < 1
        || tm->tm_mday > 31 || tm->tm_hour > 23 || tm->tm_min > 59 || tm->tm_sec > 60)
        return -1;
    return (int64_t)timegm(tm);
}

int64_t s3_parse_time(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (s == NULL || strlen(s) > 64)
        return -1;
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (end != NULL) {
        if (*end == '.') {
            end++;
            while (*end >= '0' && *end <= '9')
                end++;
        }
        if (strcmp(end, "Z") != 0 && strcmp(end, "+00:00") != 0)
            return -1;
        return to_epoch(&tm);
    }
    memset(&tm, 0, sizeof tm);
    end = strptime(s, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0')
        return -1;
    return to_epoch(&tm);
}

/* ===================================================================== */
/* Documents                                                              */
/* ===================================================================== */

int s3_xml_error_code(const char *xml, size_t len, char *code, size_t code_size)
{
    char ignored[64];
    code[0] = '\0';
    xmlDocPtr doc = parse(xml, len, ignored, sizeof ignored);
    if (doc == NULL)
        return -1;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    int rc = -1;
    if (named(root, "Error")) {
        rc = 0;
        if (child_text(root, "Code", code, code_size) != 0)
            code[0] = '\0';
        /* a code is a word: anything else (a newline, a quote) is not shown as it is */
        for (char *p = code; *p; p++)
            if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.'
                  || *p == '-' || *p == '_'))
                *p = '?';
    }
    xmlFreeDoc(doc);
    return rc;
}

void s3_listing_free(s3_listing *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].etag);
        free(l->items[i].upload_id);
    }
    free(l->items);
    free(l->next_token);
    free(l->next_key_marker);
    free(l->next_upload_id_marker);
    memset(l, 0, sizeof *l);
}

static int add_item(s3_listing *l, xmlNodePtr n, int uploads)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        s3_object *grown = realloc(l->items, cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        l->items = grown;
        l->cap = cap;
    }
    s3_object *o = &l->items[l->n];
    memset(o, 0, sizeof *o);
    o->size = -1;
    o->last_modified = -1;
    o->key = child_dup(n, "Key");
    if (o->key == NULL)
        return -2; /* no key: not an entry (or out of memory) */
    l->n++;
    char text[128];
    if (uploads) {
        o->upload_id = child_dup(n, "UploadId");
        if (child_text(n, "Initiated", text, sizeof text) == 0)
            o->last_modified = s3_parse_time(text);
        return o->upload_id == NULL ? -2 : 0;
    }
    o->etag = child_dup(n, "ETag");
    if (child_text(n, "LastModified", text, sizeof text) == 0)
        o->last_modified = s3_parse_time(text);
    if (child_text(n, "Size", text, sizeof text) == 0) {
        char *end;
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (errno == 0 && end != text && *end == '\0' && v >= 0)
            o->size = v;
    }
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A key of a listing asked for with encoding-type=url, decoded in place: "%XX" is a byte and
 * "+" a space (S3 encodes a "+" of the key as "%2B"). -1 for a broken escape, or a NUL (no key
 * holds one, and it would cut the key short). */
static int url_decode(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r == '+') {
            *w++ = ' ';
        } else if (*r == '%') {
            int hi = hex_value(r[1]), lo = hi < 0 ? -1 : hex_value(r[2]);
            if (lo < 0 || (hi == 0 && lo == 0))
                return -1;
            *w++ = (char)(hi * 16 + lo);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return 0;
}

int s3_xml_list(const char *xml, size_t len, s3_listing *out, char *err, size_t err_size)
{
    xmlDocPtr doc = parse(xml, len, err, err_size);
    if (doc == NULL)
        return -1;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    int uploads = named(root, "ListMultipartUploadsResult");
    int rc = 0;
    if (!uploads && !named(root, "ListBucketResult")) {
        snprintf(err, err_size, "response is not a listing (root element %.40s)", (const char *)root->name);
        xmlFreeDoc(doc);
        return -1;
    }
    free(out->next_token);
    free(out->next_key_marker);
    free(out->next_upload_id_marker);
    out->next_token = out->next_key_marker = out->next_upload_id_marker = NULL;
    out->truncated = 0;
    size_t first = out->n;
    int url_encoded = 0;
    for (xmlNodePtr c = root->children; c != NULL && rc == 0; c = c->next) {
        if (named(c, uploads ? "Upload" : "Contents")) {
            int r = add_item(out, c, uploads);
            if (r == -1) {
                snprintf(err, err_size, "out of memory");
                rc = -1;
            } else if (r == -2) {
                snprintf(err, err_size, "an entry of the listing has no %s", uploads ? "Key or UploadId" : "Key");
                rc = -1;
            }
        } else if (named(c, "IsTruncated")) {
            char t[16];
            out->truncated = child_text(root, "IsTruncated", t, sizeof t) == 0 && strcmp(t, "true") == 0;
        } else if (named(c, "NextContinuationToken") && out->next_token == NULL) {
            out->next_token = text_of(c);
        } else if (named(c, "NextKeyMarker") && out->next_key_marker == NULL) {
            out->next_key_marker = text_of(c);
        } else if (named(c, "NextUploadIdMarker") && out->next_upload_id_marker == NULL) {
            out->next_upload_id_marker = text_of(c);
        } else if (named(c, "EncodingType")) {
            char t[16];
            url_encoded = child_text(root, "EncodingType", t, sizeof t) == 0 && strcmp(t, "url") == 0;
        }
    }
    /* Keys (and the marker that is a key) come URL-encoded when the server honoured
     * encoding-type=url: a key holding a byte XML cannot carry (a control character) would
     * otherwise make the whole page unreadable. A server that ignores it says no EncodingType. */
    for (size_t i = first; rc == 0 && url_encoded && i < out->n; i++) {
        if (url_decode(out->items[i].key) != 0) {
            snprintf(err, err_size, "a key of the listing is not URL-encoded as asked");
            rc = -1;
        }
    }
    if (rc == 0 && url_encoded && out->next_key_marker != NULL && url_decode(out->next_key_marker) != 0) {
        snprintf(err, err_size, "the listing's NextKeyMarker is not URL-encoded as asked");
        rc = -1;
    }
    xmlFreeDoc(doc);
    return rc;
}

int s3_xml_field(const char *xml, size_t len, const char *root_name, const char *name, char **value, char *err,
                 size_t err_size)
{
    *value = NULL;
    xmlDocPtr doc = parse(xml, len, err, err_size);
    if (doc == NULL)
        return -1;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    int rc = -1;
    if (named(root, "Error")) {
        char code[128] = "";
        child_text(root, "Code", code, sizeof code);
        for (char *p = code; *p; p++)
            if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
                *p = '?';
        snprintf(err, err_size, "S3 error %s", code[0] ? code : "(no code)");
    } else if (!named(root, root_name)) {
        snprintf(err, err_size, "response is not a %s", root_name);
    } else {
        *value = child_dup(root, name);
        if (*value == NULL || (*value)[0] == '\0') {
            free(*value);
            *value = NULL;
            snprintf(err, err_size, "response has no %s", name);
        } else {
            rc = 0;
        }
    }
    xmlFreeDoc(doc);
    return rc;
}
