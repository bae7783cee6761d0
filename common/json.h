// Reading JSON. Every JSON file the project reads (safetensors headers, checkpoint state.json, an
// export's config.json / preprocessor_config.json, timm's pretrained_cfg) is parsed by one library,
// json-c (Debian's libjson-c-dev): it keeps 64-bit integers exact and tells integers from other numbers,
// which state.json and the safetensors offsets need. This header adds what every reader wants on top:
// a strict, length-bounded parse whose errors name the document and the byte, and typed lookups with
// ranges whose errors name the document and the key. Writing JSON stays with common/text.h.
//
// Leniencies of json-c 0.16 even in strict mode: member names in single quotes are accepted, integers
// past the 64-bit range saturate (json_as_int64 refuses those above INT64_MAX), NaN and Infinity are
// numbers (the typed lookups below refuse non-finite values).
// json-c keeps the last of two members with the same name (as serde_json, which the reference
// safetensors reader uses); readers that must refuse repeated names check what the repeat would leave
// behind (safetensors: bytes that no tensor owns).
#pragma once
#include <json-c/json_object.h>
#include <json-c/linkhash.h> // json_object_object_foreach
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64

// Parses text[0, len) (no NUL needed at the end) as one JSON document: strict RFC 8259 (double-quoted
// strings, no comments, no trailing commas, no leading zeros), valid UTF-8, nested at most
// JSON_MAX_DEPTH deep, nothing but white space after it. Returns the root (release it with
// json_object_put), or NULL with err "<what>: bad JSON at byte N: <reason>".
json_object *json_parse(const char *text, size_t len, const char *what, char *err);
// Reads and parses a file of at most max_bytes; messages name the file.
json_object *json_parse_file(const char *path, size_t max_bytes, char *err);

// The value at a dotted path of object members ("crop_size.height"), or NULL when a step is missing or
// not an object. For keys without dots (configs); names with dots (tensors) go through the json-c API.
json_object *json_find(json_object *obj, const char *path);
// "an object", "an array", "a string", "an integer", "a number", "true or false", "null": for messages.
const char *json_kind(const json_object *v);
// An integer value representable in int64 (not a number with a fraction or exponent, not a string).
// Returns 0, or -1 when v is something else.
int json_as_int64(const json_object *v, int64_t *out);
// A string value without embedded NUL bytes. Returns it (owned by v), or NULL.
const char *json_as_string(const json_object *v);

// Typed members at a dotted path under obj. Each returns 1 when the member is absent (out untouched),
// 0 when it is present and valid, and -1 with err "<what>: <path>: <problem>" (naming the file and the
// key) when it has the wrong type or lies outside [lo, hi]. Numbers must be finite; an integer is also a
// number.
int json_get_int(json_object *obj, const char *path, int64_t lo, int64_t hi, int64_t *out, const char *what,
                 char *err);
int json_get_number(json_object *obj, const char *path, double lo, double hi, double *out, const char *what,
                    char *err);
int json_get_bool(json_object *obj, const char *path, int *out, const char *what, char *err);
int json_get_string(json_object *obj, const char *path, const char **out, const char *what, char *err);
// An array of exactly n numbers, each in [lo, hi].
int json_get_numbers(json_object *obj, const char *path, int n, double lo, double hi, double *out,
                     const char *what, char *err);
