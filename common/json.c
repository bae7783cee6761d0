// JSON reading through json-c: see json.h.
#include "common/json.h"

#include <fcntl.h>
#include <json-c/json_tokener.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"

json_object *json_parse(const char *text, size_t len, const char *what, char *err) {
    if (len > INT_MAX) { // json-c takes an int length
        dino_seterr(err, "%s: %zu bytes of JSON is more than this reader takes (%d)", what, len, INT_MAX);
        return NULL;
    }
    json_tokener *tok = json_tokener_new_ex(JSON_MAX_DEPTH);
    if (!tok) DINO_DIE("out of memory creating a JSON parser");
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *root = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error e = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!root || e != json_tokener_success) {
        if (root) json_object_put(root);
        if (e == json_tokener_continue || (e == json_tokener_success && !root))
            dino_seterr(err, "%s: bad JSON: the document ends early (%zu bytes: truncated?)", what, len);
        else
            dino_seterr(err, "%s: bad JSON at byte %zu: %s", what, end, json_tokener_error_desc(e));
        return NULL;
    }
    // json-c stops at a NUL byte; the rest may only be white space
    for (size_t i = end; i < len; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\n' && text[i] != '\r') {
            dino_seterr(err, "%s: bad JSON at byte %zu: trailing bytes after the document", what, i);
            json_object_put(root);
            return NULL;
        }
    return root;
}

json_object *json_parse_file(const char *path, size_t max_bytes, char *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        dino_seterr(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        dino_seterr(err, "%s: not a readable file", path);
        close(fd);
        return NULL;
    }
    if ((uint64_t)st.st_size > max_bytes) {
        dino_seterr(err, "%s: %lld bytes, more than the %zu a file of this kind may have", path, (long long)st.st_size,
                    max_bytes);
        close(fd);
        return NULL;
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *text = dino_malloc(n ? n : 1);
    while (got < n) {
        ssize_t k = read(fd, text + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            dino_seterr(err, "%s: read failed: %s", path, k < 0 ? strerror(errno) : "short read");
            free(text);
            close(fd);
            return NULL;
        }
        got += (size_t)k;
    }
    close(fd);
    json_object *root = json_parse(text, n, path, err);
    free(text);
    return root;
}

json_object *json_find(json_object *obj, const char *path) {
    char step[256];
    while (obj && *path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof step || !json_object_is_type(obj, json_type_object)) return NULL;
        memcpy(step, path, n);
        step[n] = 0;
        json_object *next = NULL;
        if (!json_object_object_get_ex(obj, step, &next)) return NULL;
        obj = next;
        path += n + (dot != NULL);
    }
    return obj;
}

const char *json_kind(const json_object *v) {
    switch (json_object_get_type(v)) {
    case json_type_object: return "an object";
    case json_type_array: return "an array";
    case json_type_string: return "a string";
    case json_type_int: return "an integer";
    case json_type_double: return "a number";
    case json_type_boolean: return "true or false";
    default: return "null";
    }
}

int json_as_int64(const json_object *v, int64_t *out) {
    if (!json_object_is_type(v, json_type_int)) return -1;
    int64_t x = json_object_get_int64(v);
    if (x == INT64_MAX && json_object_get_uint64(v) > (uint64_t)INT64_MAX) return -1; // past int64
    *out = x;
    return 0;
}

const char *json_as_string(const json_object *v) {
    if (!json_object_is_type(v, json_type_string)) return NULL;
    const char *s = json_object_get_string((json_object *)v);
    return strlen(s) == (size_t)json_object_get_string_len(v) ? s : NULL;
}

// The number a value holds (integers included); -1 when it holds none.
static int as_number(const json_object *v, double *out) {
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double)) return -1;
    *out = json_object_get_double(v);
    return 0;
}

// A value as a message shows it: numbers as written, anything else by its kind.
static const char *shown(json_object *v) {
    double x;
    return as_number(v, &x) == 0 ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN) : json_kind(v);
}

int json_get_int(json_object *obj, const char *path, int64_t lo, int64_t hi, int64_t *out, const char *what,
                 char *err) {
    json_object *v = json_find(obj, path);
    int64_t x;
    if (!v) return 1;
    if (json_as_int64(v, &x) == 0 && x >= lo && x <= hi) return *out = x, 0;
    dino_seterr(err, "%s: %s must be an integer in [%lld, %lld], got %s", what, path, (long long)lo, (long long)hi,
                shown(v));
    return -1;
}

int json_get_number(json_object *obj, const char *path, double lo, double hi, double *out, const char *what,
                    char *err) {
    json_object *v = json_find(obj, path);
    double x;
    if (!v) return 1;
    if (as_number(v, &x) == 0 && isfinite(x) && x >= lo && x <= hi) return *out = x, 0;
    dino_seterr(err, "%s: %s must be a number in [%g, %g], got %s", what, path, lo, hi, shown(v));
    return -1;
}

int json_get_bool(json_object *obj, const char *path, int *out, const char *what, char *err) {
    json_object *v = json_find(obj, path);
    if (!v) return 1;
    if (!json_object_is_type(v, json_type_boolean)) {
        dino_seterr(err, "%s: %s must be true or false, got %s", what, path, json_kind(v));
        return -1;
    }
    *out = json_object_get_boolean(v);
    return 0;
}

int json_get_string(json_object *obj, const char *path, const char **out, const char *what, char *err) {
    json_object *v = json_find(obj, path);
    if (!v) return 1;
    const char *s = json_as_string(v);
    if (!s) {
        dino_seterr(err, "%s: %s must be a string, got %s", what, path,
                    json_object_is_type(v, json_type_string) ? "one with a NUL byte" : json_kind(v));
        return -1;
    }
    *out = s;
    return 0;
}

int json_get_numbers(json_object *obj, const char *path, int n, double lo, double hi, double *out,
                     const char *what, char *err) {
    json_object *v = json_find(obj, path);
    if (!v) return 1;
    if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) != (size_t)n) {
        dino_seterr(err, "%s: %s must be an array of %d numbers, got %s", what, path, n,
                    json_object_is_type(v, json_type_array) ? "another length" : json_kind(v));
        return -1;
    }
    double tmp[16];
    DINO_ASSERT(n <= 16, "json_get_numbers: %d values", n);
    for (int i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(v, (size_t)i);
        if (as_number(e, &tmp[i]) || !isfinite(tmp[i]) || tmp[i] < lo || tmp[i] > hi) {
            dino_seterr(err, "%s: %s[%d] must be a number in [%g, %g], got %s", what, path, i, lo, hi, shown(e));
            return -1;
        }
    }
    memcpy(out, tmp, sizeof(double) * (size_t)n);
    return 0;
}
