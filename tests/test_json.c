// common/json.h: the strict parse over json-c (what it refuses, where it says the problem is) and the
// typed lookups (exact 64-bit integers, ranges, messages naming the file and the key).
#include <stdint.h>
#include <string.h>

#include "common/check.h"
#include "common/json.h"
#include "tests/harness.h"

static json_object *parse(const char *text, size_t len, char *err) { return json_parse(text, len, "doc.json", err); }

TEST(parse_is_strict_and_names_the_place) {
    char err[DINO_ERRLEN];
    struct { const char *text; const char *want; } bad[] = {
        {"{\"a\": 1,}", "bad JSON at byte"},                 // trailing comma
        {"{\"a\": 01}", "bad JSON at byte"},                 // leading zero
        {"{\"a\": 1} x", "bad JSON at byte"},                // something after the document
        {"{\"a\": 1 /* c */}", "bad JSON at byte"},          // comment
        {"{\"a\": \"\xff\"}", "invalid utf-8"},              // not UTF-8
        {"{\"a\": [1, 2", "ends early"},                     // truncated
        {"", "ends early"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        json_object *v = parse(bad[i].text, strlen(bad[i].text), err);
        CHECK(v == NULL, "accepted %s", bad[i].text);
        if (v) json_object_put(v);
        CHECK(strstr(err, "doc.json") && strstr(err, bad[i].want), "%s: message '%s' lacks '%s'", bad[i].text, err,
              bad[i].want);
    }
    // a NUL byte ends json-c's input: what follows it must still be only white space
    const char nul[] = "{\"a\": 1}\0{";
    json_object *v = parse(nul, sizeof nul - 1, err);
    CHECK(v == NULL && strstr(err, "trailing bytes"), "NUL then more accepted: %s", err);
    if (v) json_object_put(v);
    // white space around the document is fine, and the length bounds the input (no NUL needed)
    const char *ok = "  {\"a\": {\"b\": [1, 2.5]}}  \n{{{{";
    v = parse(ok, strlen(ok) - 4, err);
    CHECK(v != NULL, "valid document refused: %s", err);
    if (v) json_object_put(v);
    // nesting is bounded
    char deep[2 * JSON_MAX_DEPTH + 8];
    size_t n = 0;
    for (int i = 0; i < JSON_MAX_DEPTH + 1; i++) deep[n++] = '[';
    for (int i = 0; i < JSON_MAX_DEPTH + 1; i++) deep[n++] = ']';
    v = parse(deep, n, err);
    CHECK(v == NULL && strstr(err, "nesting"), "deep nesting: %s", err);
    if (v) json_object_put(v);
}

TEST(integers_are_exact_and_typed) {
    char err[DINO_ERRLEN];
    const char *t = "{\"max\": 9223372036854775807, \"min\": -9223372036854775808, \"big\": 9223372036854775808,"
                    " \"f\": 1.0, \"e\": 1e3, \"s\": \"7\", \"nul\": \"a\\u0000b\", \"str\": \"x\"}";
    json_object *v = parse(t, strlen(t), err);
    CHECK(v != NULL, "%s", err);
    if (!v) return;
    int64_t x = 0;
    CHECK(json_as_int64(json_find(v, "max"), &x) == 0 && x == INT64_MAX, "INT64_MAX");
    CHECK(json_as_int64(json_find(v, "min"), &x) == 0 && x == INT64_MIN, "INT64_MIN");
    CHECK(json_as_int64(json_find(v, "big"), &x) != 0, "2^63 read as an int64");
    CHECK(json_as_int64(json_find(v, "f"), &x) != 0 && json_as_int64(json_find(v, "e"), &x) != 0, "1.0 / 1e3 as int");
    CHECK(json_as_int64(json_find(v, "s"), &x) != 0, "a string read as an integer");
    CHECK(json_as_string(json_find(v, "nul")) == NULL, "a string with a NUL byte");
    CHECK(json_as_string(json_find(v, "str")) && !strcmp(json_as_string(json_find(v, "str")), "x"), "string");
    json_object_put(v);
}

TEST(typed_lookups_check_ranges_and_name_the_key) {
    char err[DINO_ERRLEN];
    const char *t = "{\"size\": {\"shortest_edge\": 100000, \"h\": 224}, \"std\": [0.2, 0, 0.2], \"nan\": NaN,"
                    " \"flag\": true, \"name\": 3, \"mean\": [0.5, 0.5], \"x\": 0.25}";
    json_object *v = parse(t, strlen(t), err);
    CHECK(v != NULL, "%s", err);
    if (!v) return;
    int64_t i = -1;
    double d = -1, arr[3];
    int b = -1;
    const char *s = NULL;
    CHECK(json_get_int(v, "size.h", 1, 8192, &i, "doc.json", err) == 0 && i == 224, "size.h");
    CHECK(json_get_int(v, "size.missing", 1, 8192, &i, "doc.json", err) == 1 && i == 224, "absent: 1, untouched");
    CHECK(json_get_int(v, "size.shortest_edge", 1, 8192, &i, "doc.json", err) == -1 &&
              strstr(err, "doc.json: size.shortest_edge must be an integer in [1, 8192], got 100000"),
          "range: %s", err);
    CHECK(json_get_int(v, "x", 0, 10, &i, "doc.json", err) == -1 && strstr(err, "x must be an integer"), "%s", err);
    CHECK(json_get_number(v, "x", 0, 1, &d, "doc.json", err) == 0 && d == 0.25, "number");
    CHECK(json_get_number(v, "size.h", 0, 1000, &d, "doc.json", err) == 0 && d == 224, "an integer is a number");
    CHECK(json_get_number(v, "nan", -1e9, 1e9, &d, "doc.json", err) == -1 && strstr(err, "doc.json: nan"), "%s", err);
    CHECK(json_get_numbers(v, "std", 3, 1e-6, 10, arr, "doc.json", err) == -1 && strstr(err, "doc.json: std[1]"),
          "zero std: %s", err);
    CHECK(json_get_numbers(v, "mean", 3, 0, 1, arr, "doc.json", err) == -1 && strstr(err, "array of 3"), "%s", err);
    CHECK(json_get_bool(v, "flag", &b, "doc.json", err) == 0 && b == 1, "bool");
    CHECK(json_get_bool(v, "x", &b, "doc.json", err) == -1 && strstr(err, "x must be true or false"), "%s", err);
    CHECK(json_get_string(v, "name", &s, "doc.json", err) == -1 && strstr(err, "name must be a string, got an integer"),
          "%s", err);
    json_object_put(v);
}
