// safetensors reader and writer. The reader parses the header with json-c (common/json.h) and then
// applies the format's rules (export-formats.md B.4); the writer prints the header itself.
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
#include "common/json.h"

#define ST_MAX_HEADER 100000000u // the format's MAX_HEADER_SIZE

static const char *dtype_names[] = {"F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL"};
static const size_t dtype_sizes[] = {4, 2, 2, 8, 8, 4, 1, 1};
#define N_DTYPES ((int)(sizeof dtype_sizes / sizeof dtype_sizes[0]))

size_t st_dtype_size(StDtype d) {
    DINO_ASSERT((int)d >= 0 && (int)d < N_DTYPES, "st_dtype_size: bad dtype %d", (int)d);
    return dtype_sizes[d];
}

// ---- reader -----------------------------------------------------------------------------------------

static int dtype_of(const char *s) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtype_names[i]) == 0) return i;
    return -1;
}

// One tensor entry {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}; other members are
// ignored (as the reference reader does).
static int parse_tensor(json_object *v, StTensor *t, int64_t *begin, int64_t *end, const char *path, char *err) {
    if (!json_object_is_type(v, json_type_object)) {
        dino_seterr(err, "%s: tensor '%s' is %s, not an object", path, t->name, json_kind(v));
        return -1;
    }
    json_object *dt, *shape, *off;
    const char *lacks = !json_object_object_get_ex(v, "dtype", &dt)        ? "dtype"
                        : !json_object_object_get_ex(v, "shape", &shape)   ? "shape"
                        : !json_object_object_get_ex(v, "data_offsets", &off) ? "data_offsets"
                                                                            : NULL;
    if (lacks) {
        dino_seterr(err, "%s: tensor '%s' lacks %s", path, t->name, lacks);
        return -1;
    }
    const char *ds = json_as_string(dt);
    int d = ds ? dtype_of(ds) : -1;
    if (d < 0) {
        dino_seterr(err, "%s: tensor '%s' has unsupported dtype '%s'", path, t->name,
                    ds ? ds : json_object_to_json_string_ext(dt, JSON_C_TO_STRING_PLAIN));
        return -1;
    }
    t->dtype = (StDtype)d;
    if (!json_object_is_type(shape, json_type_array)) {
        dino_seterr(err, "%s: tensor '%s': shape is %s, not a list of non-negative integers", path, t->name,
                    json_kind(shape));
        return -1;
    }
    size_t nd = json_object_array_length(shape);
    if (nd > 8) {
        dino_seterr(err, "%s: tensor '%s' has more than 8 dimensions", path, t->name);
        return -1;
    }
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_object *e = json_object_array_get_idx(shape, i);
        if (json_as_int64(e, &t->shape[i]) || t->shape[i] < 0) {
            dino_seterr(err, "%s: tensor '%s': shape[%zu] is %s, not a non-negative integer", path, t->name, i,
                        json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN));
            return -1;
        }
    }
    // (json-c asserts that what it indexes is an array: the type first)
    if (!json_object_is_type(off, json_type_array) || json_object_array_length(off) != 2 ||
        json_as_int64(json_object_array_get_idx(off, 0), begin) || json_as_int64(json_object_array_get_idx(off, 1), end) ||
        *begin < 0 || *end < 0) {
        dino_seterr(err, "%s: tensor '%s': data_offsets %s is not two non-negative integers [begin, end]", path,
                    t->name, json_object_to_json_string_ext(off, JSON_C_TO_STRING_PLAIN));
        return -1;
    }
    return 0;
}

static int parse_metadata(StFile *f, json_object *meta, const char *path, char *err) {
    if (!json_object_is_type(meta, json_type_object)) {
        dino_seterr(err, "%s: __metadata__ is %s, not an object of strings", path, json_kind(meta));
        return -1;
    }
    int n = json_object_object_length(meta);
    f->meta_keys = dino_calloc((size_t)(n ? n : 1), sizeof(char *));
    f->meta_vals = dino_calloc((size_t)(n ? n : 1), sizeof(char *));
    json_object_object_foreach(meta, key, val) {
        const char *s = json_as_string(val);
        if (!s) {
            dino_seterr(err, "%s: __metadata__ value of '%s' is not a string", path, key);
            return -1;
        }
        f->meta_keys[f->n_meta] = strdup(key);
        f->meta_vals[f->n_meta] = strdup(s);
        if (!f->meta_keys[f->n_meta] || !f->meta_vals[f->n_meta]) DINO_DIE("out of memory");
        f->n_meta++;
    }
    return 0;
}

typedef struct { int64_t begin, end; } Span;

static int cmp_spans(const void *a, const void *b, void *ctx) {
    const Span *s = ctx;
    const Span *x = &s[*(const int *)a], *y = &s[*(const int *)b];
    if (x->begin != y->begin) return (x->begin > y->begin) - (x->begin < y->begin);
    return (x->end > y->end) - (x->end < y->end);
}

// The header's tensors, then the format's layout rules: every tensor's bytes inside the data section and
// matching dtype x shape, and the tensors, sorted by offset, covering the data section exactly (from 0,
// no gaps, no overlaps, ending at the end of the file).
static int parse_header(StFile *f, const char *hdr, size_t hlen, size_t data_len, const char *path, char *err) {
    if (hlen == 0 || hdr[0] != '{') {
        dino_seterr(err, "%s: bad safetensors header: it must start with '{'", path);
        return -1;
    }
    char what[4200];
    snprintf(what, sizeof what, "%s (safetensors header)", path);
    json_object *root = json_parse(hdr, hlen, what, err);
    if (!root) return -1;
    int rc = 0, cap = json_object_object_length(root);
    f->t = dino_calloc((size_t)(cap ? cap : 1), sizeof(StTensor));
    Span *span = dino_calloc((size_t)(cap ? cap : 1), sizeof(Span));
    json_object_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if ((rc = parse_metadata(f, val, path, err))) break;
            continue;
        }
        StTensor *t = &f->t[f->n];
        t->name = strdup(key);
        if (!t->name) DINO_DIE("out of memory");
        f->n++; // counted now so st_close frees the name if parsing fails below
        if ((rc = parse_tensor(val, t, &span[f->n - 1].begin, &span[f->n - 1].end, path, err))) break;
    }
    json_object_put(root);
    for (int i = 0; i < f->n && rc == 0; i++) {
        StTensor *t = &f->t[i];
        const Span *s = &span[i];
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
        } else if (s->begin > s->end || (uint64_t)s->end > data_len) {
            dino_seterr(err, "%s: tensor '%s': data_offsets [%lld, %lld] outside the data section (%zu bytes): "
                        "truncated file or bad header", path, t->name, (long long)s->begin, (long long)s->end, data_len);
            rc = -1;
        } else if ((uint64_t)(s->end - s->begin) != n) {
            dino_seterr(err, "%s: tensor '%s': %lld data bytes but dtype %s x shape needs %zu", path, t->name,
                        (long long)(s->end - s->begin), dtype_names[t->dtype], n);
            rc = -1;
        }
    }
    if (rc == 0) {
        int *order = dino_malloc(sizeof(int) * (size_t)(f->n ? f->n : 1));
        for (int i = 0; i < f->n; i++) order[i] = i;
        qsort_r(order, (size_t)f->n, sizeof(int), cmp_spans, span);
        int64_t at = 0; // end of the bytes owned so far
        for (int k = 0; k < f->n && rc == 0; k++) {
            const Span *s = &span[order[k]];
            if (s->begin < at) {
                dino_seterr(err, "%s: tensors '%s' and '%s' overlap", path, f->t[order[k - 1]].name,
                            f->t[order[k]].name);
                rc = -1;
            } else if (s->begin > at) {
                // json-c keeps the last of two entries with one name: the first one's bytes show up here
                dino_seterr(err, "%s: data bytes [%lld, %lld) belong to no tensor (a gap in the data section, or a "
                            "tensor name given twice)", path, (long long)at, (long long)s->begin);
                rc = -1;
            }
            at = s->end;
        }
        if (rc == 0 && (uint64_t)at != data_len) {
            dino_seterr(err, "%s: %lld data bytes after the last tensor's (the data section must end with it)", path,
                        (long long)(data_len - (uint64_t)at));
            rc = -1;
        }
        free(order);
    }
    for (int i = 0; i < f->n && rc == 0; i++) f->t[i].data = (const char *)hdr + hlen + span[i].begin;
    free(span);
    return rc;
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
    if (hlen > len - 8) {
        dino_seterr(err, "%s: header length %llu does not fit in the file (%zu bytes): truncated or not "
                    "safetensors", path, (unsigned long long)hlen, len);
        st_close(f);
        return -1;
    }
    if (hlen > ST_MAX_HEADER) {
        dino_seterr(err, "%s: header length %llu is more than the format allows (%u)", path, (unsigned long long)hlen,
                    ST_MAX_HEADER);
        st_close(f);
        return -1;
    }
    if (parse_header(f, (const char *)bytes + 8, (size_t)hlen, len - 8 - (size_t)hlen, path, err)) {
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
