/*
 * fuzz_s3_xml.c - libFuzzer target for bkr.s3's readers of S3's XML responses
 * (bindings/s3_xml.c, on libxml2): error documents, ListObjectsV2 and ListMultipartUploads
 * pages, CreateMultipartUpload's UploadId, CompleteMultipartUpload's ETag, and the times they
 * carry. A response comes from the network: whatever it holds, the readers must stay in bounds,
 * free what they allocate, and answer within time (no entity expansion, no DTD loaded).
 *
 * Build and run: scripts/fuzz.sh s3_xml [SECONDS] (or make fuzz for every target).
 * fuzz-sources: bindings/s3_xml.c bindings/s3_sign.c -I/usr/include/libxml2 -lxml2 -lcurl */
/*
 * The whole input is given to every reader, in a buffer of its exact size (no NUL after it, so
 * ASan sees a read past the end). Beyond the sanitizers, it checks what s3.c relies on:
 * - an error code is NUL-terminated, fits its buffer, and holds only [A-Za-z0-9._-?];
 * - a listing's entries all have a key (and an upload id for uploads); two pages read into
 *   one listing give exactly the sum of the entries of each;
 * - a field, when found, is a non-empty string; when not, *value is NULL;
 * - s3_parse_time of the input (as a string) is -1 or a time after 1970.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>

#include "s3_internal.h"

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_s3_xml: check failed: %s\n", what);
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    xmlInitParser();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *xml = malloc(size ? size : 1);
    if (xml == NULL)
        return 0;
    memcpy(xml, data, size);

    char code[64];
    memset(code, 'x', sizeof code);
    if (s3_xml_error_code(xml, size, code, sizeof code) == 0 || code[0] == '\0') {
        check(memchr(code, '\0', sizeof code) != NULL, "error code terminated");
        for (char *p = code; *p; p++)
            check(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-?", *p) != NULL,
                  "error code characters");
    }

    char err[200];
    s3_listing one = {0}, two = {0};
    int rc1 = s3_xml_list(xml, size, &one, err, sizeof err);
    if (rc1 == 0) {
        for (size_t i = 0; i < one.n; i++)
            check(one.items[i].key != NULL, "listing entry has a key");
        int rc2 = s3_xml_list(xml, size, &two, err, sizeof err);
        check(rc2 == 0 && two.n == one.n, "a page reads the same twice");
        rc2 = s3_xml_list(xml, size, &two, err, sizeof err);
        check(rc2 == 0 && two.n == 2 * one.n, "pages add up");
    } else {
        check(memchr(err, '\0', sizeof err) != NULL, "reason terminated");
    }
    s3_listing_free(&one);
    s3_listing_free(&two);

    static const char *const fields[][2] = { { "InitiateMultipartUploadResult", "UploadId" },
                                             { "CompleteMultipartUploadResult", "ETag" } };
    for (int i = 0; i < 2; i++) {
        char *value = (char *)1;
        if (s3_xml_field(xml, size, fields[i][0], fields[i][1], &value, err, sizeof err) == 0)
            check(value != NULL && value[0] != '\0', "a field found is a string");
        else
            check(value == NULL, "no field: NULL");
        free(value);
    }

    char text[80];
    size_t n = size < sizeof text - 1 ? size : sizeof text - 1;
    memcpy(text, data, n);
    text[n] = '\0';
    int64_t t = s3_parse_time(text);
    check(t == -1 || t >= 0, "a time is -1 or after 1970");

    free(xml);
    return 0;
}
