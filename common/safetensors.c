// safetensors reader and writer. The header is a small JSON object, parsed here by hand: the format
// only uses objects, arrays, strings and non-negative integers, and anything else is skipped or refused.
#include "common/safetensors.h"

#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"

#define ST_MAX_HEADER (256u << 20) // a header larger than this is corrupt, not a big model

static const char *dtype_names[] = {"F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL"};
static const size_t dtype_sizes[] = {4, 2, 2, 8, 8, 4, 1, 1};
#define N_DTYPES ((int)(sizeof dtype_sizes / sizeof dtype_sizes[0]))

size_t st_dtype_size(StDtype d) {
    DINO_ASSERT((int)d >= 0 && (int)d < N_DTYPES, "st_dtype_size: bad dtype %d", (int)d);
    return dtype_sizes[d];
}

// ---- a minimal JSON reader over the header bytes ----------------------------------------------------

typedef struct {
    const char *s, *begin, *end;
    const char *path; // for messages
    char *err;
    int failed;
} Json;

static int json_fail(Json *j, const char *what) {
    if (!j->failed)
        dino_seterr(j->err, "%s: bad safetensors header: %s (at header byte %td)", j->path, what,
                    j->s - j->begin);
    j->failed = 1;
    return -1;
}

static void json_ws(Json *j) {
    while (j->s < j->end && (*j->s == ' ' || *j->s == '\t' || *j->s == '\n' || *j->s == '\r')) j->s++;
}

static int json_expect(Json *j, char c) {
    json_ws(j);
    if (j->s >= j->end || *j->s != c) {
        char msg[48];
        snprintf(msg, sizeof msg, "expected '%c'", c);
        return json_fail(j, msg);
    }
    j->s++;
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static size_t utf8_put(char *o, unsigned cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

static int json_hex4(Json *j, unsigned *cp) {
    if (j->end - j->s < 4) return json_fail(j, "short \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->s[i]);
        if (h < 0) return json_fail(j, "bad \\u escape");
        v = v * 16 + (unsigned)h;
    }
    j->s += 4;
    *cp = v;
    return 0;
}

// Parses a string into a fresh malloc'd, NUL-terminated buffer (escapes decoded).
static char *json_string(Json *j) {
    if (json_expect(j, '"')) return NULL;
    // decoded length <= raw length
    const char *start = j->s;
    while (j->s < j->end && *j->s != '"') j->s += (*j->s == '\\') ? 2 : 1;
    if (j->s >= j->end) { json_fail(j, "unterminated string"); return NULL; }
    const char *stop = j->s;
    char *out = dino_malloc((size_t)(stop - start) + 1), *o = out;
    j->s = start;
    while (j->s < stop) {
        char c = *j->s++;
        if ((unsigned char)c < 0x20) { free(out); json_fail(j, "control character in string"); return NULL; }
        if (c != '\\') { *o++ = c; continue; }
        char e = *j->s++;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp;
            if (json_hex4(j, &cp)) { free(out); return NULL; }
            if (cp >= 0xD800 && cp < 0xDC00 && j->end - j->s >= 6 && j->s[0] == '\\' && j->s[1] == 'u') {
                j->s += 2;
                unsigned lo;
                if (json_hex4(j, &lo)) { free(out); return NULL; }
                if (lo < 0xDC00 || lo > 0xDFFF) { free(out); json_fail(j, "bad surrogate pair"); return NULL; }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            // \u escapes expand to at most as many bytes as their 6- or 12-byte spelling
            o += utf8_put(o, cp);
            break;
        }
        default: free(out); json_fail(j, "bad escape in string"); return NULL;
        }
    }
    *o = 0;
    j->s = stop + 1;
    return out;
}

static int json_uint(Json *j, int64_t *v) {
    json_ws(j);
    if (j->s >= j->end || *j->s < '0' || *j->s > '9') return json_fail(j, "expected a non-negative integer");
    int64_t x = 0;
    while (j->s < j->end && *j->s >= '0' && *j->s <= '9') {
        if (x > (INT64_MAX - 9) / 10) return json_fail(j, "integer too large");
        x = x * 10 + (*j->s++ - '0');
    }
    if (j->s < j->end && (*j->s == '.' || *j->s == 'e' || *j->s == 'E')) return json_fail(j, "expected an integer");
    *v = x;
    return 0;
}

// Skips any JSON value (for keys this reader does not use).
static int json_skip(Json *j, int depth) {
    if (depth > 64) return json_fail(j, "nesting too deep");
    json_ws(j);
    if (j->s >= j->end) return json_fail(j, "unexpected end");
    char c = *j->s;
    if (c == '"') {
        char *s = json_string(j);
        if (!s) return -1;
        free(s);
        return 0;
    }
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->s++;
        json_ws(j);
        if (j->s < j->end && *j->s == close) { j->s++; return 0; }
        for (;;) {
            if (c == '{') {
                char *k = json_string(j);
                if (!k) return -1;
                free(k);
                if (json_expect(j, ':')) return -1;
            }
            if (json_skip(j, depth + 1)) return -1;
            json_ws(j);
            if (j->s < j->end && *j->s == ',') { j->s++; continue; }
            return json_expect(j, close);
        }
    }
    // number, true, false, null
    const char *start = j->s;
    while (j->s < j->end && *j->s && strchr("+-.eE0123456789truefalsn", *j->s)) j->s++;
    if (j->s == start) return json_fail(j, "unexpected character");
    return 0;
}

// Iterates "key": value pairs of an object; calls fn with the parser positioned at the value.
typedef int (*JsonMemberFn)(Json *j, const char *key, void *ctx);
static int json_object(Json *j, JsonMemberFn fn, void *ctx) {
    if (json_expect(j, '{')) return -1;
    json_ws(j);
    if (j->s < j->end && *j->s == '}') { j->s++; return 0; }
    for (;;) {
        char *key = json_string(j);
        if (!key) return -1;
        int rc = json_expect(j, ':') ? -1 : fn(j, key, ctx);
        free(key);
        if (rc) return -1;
        json_ws(j);
        if (j->s < j->end && *j->s == ',') { j->s++; continue; }
        return json_expect(j, '}');
    }
}

// ---- reader -----------------------------------------------------------------------------------------

typedef struct {
    StTensor *t;
    int64_t begin, end; // data_offsets
    int have_dtype, have_shape, have_offsets;
} TensorParse;

static int parse_tensor_member(Json *j, const char *key, void *ctx) {
    TensorParse *p = ctx;
    if (strcmp(key, "dtype") == 0) {
        char *s = json_string(j);
        if (!s) return -1;
        int found = -1;
        for (int i = 0; i < N_DTYPES; i++)
            if (strcmp(s, dtype_names[i]) == 0) found = i;
        if (found < 0) {
            dino_seterr(j->err, "%s: tensor '%s' has unsupported dtype '%s'", j->path, p->t->name, s);
            j->failed = 1;
            free(s);
            return -1;
        }
        free(s);
        p->t->dtype = (StDtype)found;
        p->have_dtype = 1;
        return 0;
    }
    if (strcmp(key, "shape") == 0) {
        if (json_expect(j, '[')) return -1;
        json_ws(j);
        int n = 0;
        if (j->s < j->end && *j->s == ']') {
            j->s++;
        } else {
            for (;;) {
                int64_t v;
                if (json_uint(j, &v)) return -1;
                if (n == 8) {
                    dino_seterr(j->err, "%s: tensor '%s' has more than 8 dimensions", j->path, p->t->name);
                    j->failed = 1;
                    return -1;
                }
                p->t->shape[n++] = v;
                json_ws(j);
                if (j->s < j->end && *j->s == ',') { j->s++; continue; }
                if (json_expect(j, ']')) return -1;
                break;
            }
        }
        p->t->ndim = n;
        p->have_shape = 1;
        return 0;
    }
    if (strcmp(key, "data_offsets") == 0) {
        if (json_expect(j, '[') || json_uint(j, &p->begin) || json_expect(j, ',') || json_uint(j, &p->end) ||
            json_expect(j, ']'))
            return -1;
        p->have_offsets = 1;
        return 0;
    }
    return json_skip(j, 1);
}

typedef struct {
    StFile *f;
    int64_t *begins, *ends;
    int cap, meta_cap;
} HeaderParse;

static int parse_meta_member(Json *j, const char *key, void *ctx) {
    HeaderParse *h = ctx;
    StFile *f = h->f;
    json_ws(j);
    if (j->s >= j->end || *j->s != '"') {
        dino_seterr(j->err, "%s: __metadata__ value of '%s' is not a string", j->path, key);
        j->failed = 1;
        return -1;
    }
    char *val = json_string(j);
    if (!val) return -1;
    if (f->n_meta == h->meta_cap) {
        h->meta_cap = h->meta_cap ? 2 * h->meta_cap : 16;
        f->meta_keys = dino_realloc(f->meta_keys, sizeof(char *) * (size_t)h->meta_cap);
        f->meta_vals = dino_realloc(f->meta_vals, sizeof(char *) * (size_t)h->meta_cap);
    }
    f->meta_keys[f->n_meta] = strdup(key);
    f->meta_vals[f->n_meta] = val;
    if (!f->meta_keys[f->n_meta]) DINO_DIE("out of memory");
    f->n_meta++;
    return 0;
}

static int parse_header_member(Json *j, const char *key, void *ctx) {
    HeaderParse *h = ctx;
    StFile *f = h->f;
    if (strcmp(key, "__metadata__") == 0) return json_object(j, parse_meta_member, h);
    if (f->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 64;
        f->t = dino_realloc(f->t, sizeof(StTensor) * (size_t)h->cap);
        h->begins = dino_realloc(h->begins, sizeof(int64_t) * (size_t)h->cap);
        h->ends = dino_realloc(h->ends, sizeof(int64_t) * (size_t)h->cap);
    }
    StTensor *t = &f->t[f->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(key);
    if (!t->name) DINO_DIE("out of memory");
    f->n++; // counted now so st_close frees the name if parsing fails below
    TensorParse p = {.t = t};
    if (json_object(j, parse_tensor_member, &p)) return -1;
    if (!p.have_dtype || !p.have_shape || !p.have_offsets) {
        dino_seterr(j->err, "%s: tensor '%s' lacks %s", j->path, key,
                    !p.have_dtype ? "dtype" : !p.have_shape ? "shape" : "data_offsets");
        j->failed = 1;
        return -1;
    }
    h->begins[f->n - 1] = p.begin;
    h->ends[f->n - 1] = p.end;
    return 0;
}

static int cmp_by_begin(const void *a, const void *b, void *ctx) {
    const int64_t *begins = ctx;
    int64_t x = begins[*(const int *)a], y = begins[*(const int *)b];
    return (x > y) - (x < y);
}

int st_open(StFile *f, const char *path, char *err) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        dino_seterr(err, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        dino_seterr(err, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (st.st_size < 8) {
        dino_seterr(err, "%s: not a safetensors file (only %lld bytes)", path, (long long)st.st_size);
        close(fd);
        return -1;
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        dino_seterr(err, "%s: cannot mmap: %s", path, strerror(errno));
        return -1;
    }
    f->map = map;
    f->map_len = len;
    const unsigned char *bytes = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | bytes[i];
    if (hlen > ST_MAX_HEADER || hlen > len - 8) {
        dino_seterr(err, "%s: header length %llu does not fit in the file (%zu bytes): truncated or not "
                    "safetensors", path, (unsigned long long)hlen, len);
        st_close(f);
        return -1;
    }
    const char *hdr = (const char *)bytes + 8;
    size_t data_start = 8 + (size_t)hlen, data_len = len - data_start;

    Json j = {.s = hdr, .begin = hdr, .end = hdr + hlen, .path = path, .err = err};
    HeaderParse h = {.f = f};
    int rc = json_object(&j, parse_header_member, &h);
    if (rc == 0) {
        json_ws(&j);
        if (j.s != j.end) rc = json_fail(&j, "trailing bytes after the JSON object");
    }
    if (rc == 0) {
        for (int i = 0; i < f->n && rc == 0; i++) {
            StTensor *t = &f->t[i];
            size_t n = st_dtype_size(t->dtype);
            int overflow = 0;
            for (int d = 0; d < t->ndim; d++) {
                if (t->shape[d] != 0 && n > SIZE_MAX / (size_t)t->shape[d]) overflow = 1;
                else n *= (size_t)t->shape[d];
            }
            t->nbytes = n;
            if (overflow) {
                dino_seterr(err, "%s: tensor '%s': shape too large", path, t->name);
                rc = -1;
            } else if (h.begins[i] > h.ends[i] || (uint64_t)h.ends[i] > data_len) {
                dino_seterr(err, "%s: tensor '%s': data_offsets [%lld, %lld] outside the data section (%zu "
                            "bytes): truncated file or bad header", path, t->name, (long long)h.begins[i],
                            (long long)h.ends[i], data_len);
                rc = -1;
            } else if ((uint64_t)(h.ends[i] - h.begins[i]) != n) {
                dino_seterr(err, "%s: tensor '%s': %lld data bytes but dtype %s x shape needs %zu", path, t->name,
                            (long long)(h.ends[i] - h.begins[i]), dtype_names[t->dtype], n);
                rc = -1;
            } else {
                t->data = (const char *)bytes + data_start + h.begins[i];
            }
            for (int k = 0; k < i && rc == 0; k++)
                if (strcmp(f->t[k].name, t->name) == 0) {
                    dino_seterr(err, "%s: tensor '%s' appears twice", path, t->name);
                    rc = -1;
                }
        }
    }
    if (rc == 0 && f->n > 1) { // tensors must not overlap
        int *order = dino_malloc(sizeof(int) * (size_t)f->n), m = 0;
        for (int i = 0; i < f->n; i++)
            if (f->t[i].nbytes > 0) order[m++] = i; // empty tensors occupy no bytes
        qsort_r(order, (size_t)m, sizeof(int), cmp_by_begin, h.begins);
        for (int i = 1; i < m && rc == 0; i++)
            if (h.begins[order[i]] < h.ends[order[i - 1]]) {
                dino_seterr(err, "%s: tensors '%s' and '%s' overlap", path, f->t[order[i - 1]].name,
                            f->t[order[i]].name);
                rc = -1;
            }
        free(order);
    }
    free(h.begins);
    free(h.ends);
    if (rc != 0) {
        st_close(f);
        return -1;
    }
    return 0;
}

void st_close(StFile *f) {
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    if (f->map) munmap(f->map, f->map_len);
    memset(f, 0, sizeof *f);
}

const StTensor *st_get(const StFile *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}

const char *st_meta(const StFile *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

// ---- writer -----------------------------------------------------------------------------------------

struct StWriter {
    StTensor *t;
    int n, cap;
    char **keys, **vals;
    int n_meta, meta_cap;
};

StWriter *st_writer_new(void) { return dino_calloc(1, sizeof(StWriter)); }

void st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape, const void *data) {
    DINO_ASSERT((int)dtype >= 0 && (int)dtype < N_DTYPES, "st_writer_add %s: bad dtype", name);
    DINO_ASSERT(ndim >= 0 && ndim <= 8, "st_writer_add %s: ndim %d", name, ndim);
    DINO_ASSERT(strcmp(name, "__metadata__") != 0, "st_writer_add: reserved name __metadata__");
    for (int i = 0; i < w->n; i++) DINO_ASSERT(strcmp(w->t[i].name, name) != 0, "st_writer_add: duplicate %s", name);
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->t = dino_realloc(w->t, sizeof(StTensor) * (size_t)w->cap);
    }
    StTensor *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) DINO_DIE("out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    t->nbytes = dtype_sizes[dtype];
    for (int d = 0; d < ndim; d++) {
        DINO_ASSERT(shape[d] >= 0, "st_writer_add %s: negative dimension", name);
        t->shape[d] = shape[d];
        t->nbytes *= (size_t)shape[d];
    }
    DINO_ASSERT(data || t->nbytes == 0, "st_writer_add %s: NULL data", name);
    t->data = data;
}

void st_writer_meta(StWriter *w, const char *key, const char *value) {
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->keys[i], key) == 0) { // last value wins
            free(w->vals[i]);
            w->vals[i] = strdup(value);
            if (!w->vals[i]) DINO_DIE("out of memory");
            return;
        }
    if (w->n_meta == w->meta_cap) {
        w->meta_cap = w->meta_cap ? 2 * w->meta_cap : 16;
        w->keys = dino_realloc(w->keys, sizeof(char *) * (size_t)w->meta_cap);
        w->vals = dino_realloc(w->vals, sizeof(char *) * (size_t)w->meta_cap);
    }
    w->keys[w->n_meta] = strdup(key);
    w->vals[w->n_meta] = strdup(value);
    if (!w->keys[w->n_meta] || !w->vals[w->n_meta]) DINO_DIE("out of memory");
    w->n_meta++;
}

void st_writer_free(StWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->keys[i]);
        free(w->vals[i]);
    }
    free(w->keys);
    free(w->vals);
    free(w);
}

// A growing text buffer for the header.
typedef struct { char *s; size_t n, cap; } Buf;

static void buf_put(Buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        while (b->n + n + 1 > b->cap) b->cap = b->cap ? 2 * b->cap : 4096;
        b->s = dino_realloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
static void buf_str(Buf *b, const char *s) { buf_put(b, s, strlen(s)); }
static void buf_json_string(Buf *b, const char *s) {
    buf_str(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\'; esc[1] = (char)*p;
            buf_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            buf_str(b, esc);
        } else {
            buf_put(b, (const char *)p, 1);
        }
    }
    buf_str(b, "\"");
}

static int write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t k = write(fd, c, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static int cmp_for_layout(const void *a, const void *b, void *ctx) {
    const StTensor *t = ctx;
    const StTensor *x = &t[*(const int *)a], *y = &t[*(const int *)b];
    // wider dtypes first so every tensor stays aligned to its element size
    size_t sx = dtype_sizes[x->dtype], sy = dtype_sizes[y->dtype];
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

int st_writer_write(StWriter *w, const char *path, char *err) {
    int *order = dino_malloc(sizeof(int) * (size_t)(w->n ? w->n : 1));
    for (int i = 0; i < w->n; i++) order[i] = i;
    qsort_r(order, (size_t)w->n, sizeof(int), cmp_for_layout, w->t);

    Buf b = {0};
    buf_str(&b, "{");
    int first = 1;
    if (w->n_meta > 0) {
        buf_str(&b, "\"__metadata__\":{");
        for (int i = 0; i < w->n_meta; i++) {
            if (i) buf_str(&b, ",");
            buf_json_string(&b, w->keys[i]);
            buf_str(&b, ":");
            buf_json_string(&b, w->vals[i]);
        }
        buf_str(&b, "}");
        first = 0;
    }
    size_t offset = 0;
    for (int k = 0; k < w->n; k++) {
        const StTensor *t = &w->t[order[k]];
        char num[64];
        if (!first) buf_str(&b, ",");
        first = 0;
        buf_json_string(&b, t->name);
        buf_str(&b, ":{\"dtype\":\"");
        buf_str(&b, dtype_names[t->dtype]);
        buf_str(&b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            buf_str(&b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%zu,%zu]}", offset, offset + t->nbytes);
        buf_str(&b, num);
        offset += t->nbytes;
    }
    buf_str(&b, "}");
    while (b.n % 8) buf_str(&b, " "); // the format allows trailing spaces; keeps the data 8-byte aligned

    char *tmp = dino_malloc(strlen(path) + 5);
    sprintf(tmp, "%s.tmp", path);
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        dino_seterr(err, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    unsigned char lenbytes[8];
    for (int i = 0; i < 8; i++) lenbytes[i] = (unsigned char)((uint64_t)b.n >> (8 * i));
    int ok = write_all(fd, lenbytes, 8) == 0 && write_all(fd, b.s, b.n) == 0;
    for (int k = 0; k < w->n && ok; k++) ok = write_all(fd, w->t[order[k]].data, w->t[order[k]].nbytes) == 0;
    if (!ok) {
        dino_seterr(err, "%s: write failed: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto done;
    }
    if (fsync(fd) != 0) {
        dino_seterr(err, "%s: fsync failed: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto done;
    }
    if (close(fd) != 0) {
        dino_seterr(err, "%s: close failed: %s", tmp, strerror(errno));
        unlink(tmp);
        goto done;
    }
    if (rename(tmp, path) != 0) {
        dino_seterr(err, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        unlink(tmp);
        goto done;
    }
    // make the rename itself durable
    char *dircopy = strdup(path);
    if (dircopy) {
        int dfd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dircopy);
    }
    rc = 0;
done:
    free(tmp);
    free(b.s);
    free(order);
    return rc;
}
