// Checkpoints: see checkpoint.h and docs/checkpoint-format.md.
#include "train/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/check.h"
#include "common/text.h"
#include "common/fs.h"

#define TENSORS_FILE "tensors.safetensors"
#define STATE_FILE "state.json"
#define FORMAT_NAME "dinotrain-checkpoint"

// ---- CRC-32 (reflected polynomial 0xEDB88320), slicing by 8 for ~GB/s -------------------------------

static uint32_t crc_table[8][256];

static void crc_init(void) {
    static int done;
    if (done) return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int i = 0; i < 256; i++) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
    done = 1;
}

uint32_t ckpt_crc32(uint32_t crc, const void *data, size_t n) {
    crc_init();
    const unsigned char *p = data;
    crc = ~crc;
    while (n >= 8) { // little-endian host (as the safetensors data itself)
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
              crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
              crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

// ---- a small JSON reader (objects, strings, numbers, literals) for state.json -----------------------

typedef enum { J_OBJ, J_STR, J_NUM, J_LIT, J_ARR } JType;
typedef struct JNode {
    JType type;
    char *key;  // member name inside an object
    char *text; // string value, number or literal text
    struct JNode *kids;
    int n;
} JNode;

typedef struct {
    const char *p, *end;
    int depth;
} JParser;

static void jfree(JNode *n) {
    for (int i = 0; i < n->n; i++) jfree(&n->kids[i]);
    free(n->kids);
    free(n->key);
    free(n->text);
}

static void jws(JParser *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t')) j->p++;
}

static char *jstring(JParser *j) {
    if (j->p >= j->end || *j->p != '"') return NULL;
    j->p++;
    Text t;
    text_init(&t, 32);
    while (j->p < j->end && *j->p != '"') {
        char ch = *j->p++;
        if (ch != '\\') { text_printf(&t, "%c", ch); continue; }
        if (j->p >= j->end) break;
        char e = *j->p++;
        switch (e) {
        case 'n': text_printf(&t, "\n"); break;
        case 't': text_printf(&t, "\t"); break;
        case 'r': text_printf(&t, "\r"); break;
        case 'b': text_printf(&t, "\b"); break;
        case 'f': text_printf(&t, "\f"); break;
        case 'u': {
            if (j->end - j->p < 4) { free(t.s); return NULL; }
            char hex[5] = {j->p[0], j->p[1], j->p[2], j->p[3], 0};
            char *endp;
            long cp = strtol(hex, &endp, 16);
            if (*endp || cp > 0x7F) { free(t.s); return NULL; } // we only write \u00XX control characters
            text_printf(&t, "%c", (char)cp);
            j->p += 4;
            break;
        }
        default: text_printf(&t, "%c", e); break;
        }
    }
    if (j->p >= j->end) { free(t.s); return NULL; }
    j->p++;
    return t.s;
}

static int jvalue(JParser *j, JNode *out) {
    memset(out, 0, sizeof *out);
    jws(j);
    if (j->p >= j->end || ++j->depth > 16) return -1;
    int rc = -1;
    if (*j->p == '{' || *j->p == '[') {
        int obj = *j->p == '{';
        out->type = obj ? J_OBJ : J_ARR;
        j->p++;
        jws(j);
        if (j->p < j->end && *j->p == (obj ? '}' : ']')) { j->p++; rc = 0; goto done; }
        for (;;) {
            char *key = NULL;
            if (obj) {
                jws(j);
                if (!(key = jstring(j))) goto done;
                jws(j);
                if (j->p >= j->end || *j->p != ':') { free(key); goto done; }
                j->p++;
            }
            out->kids = dino_realloc(out->kids, sizeof(JNode) * (size_t)(out->n + 1));
            JNode *kid = &out->kids[out->n];
            if (jvalue(j, kid)) { free(key); jfree(kid); goto done; }
            kid->key = key;
            out->n++;
            jws(j);
            if (j->p < j->end && *j->p == ',') { j->p++; continue; }
            if (j->p < j->end && *j->p == (obj ? '}' : ']')) { j->p++; rc = 0; }
            goto done;
        }
    } else if (*j->p == '"') {
        out->type = J_STR;
        rc = (out->text = jstring(j)) ? 0 : -1;
    } else {
        const char *s = j->p;
        while (j->p < j->end && (strchr("+-.eE", *j->p) || (*j->p >= '0' && *j->p <= '9') || (*j->p >= 'a' && *j->p <= 'z')))
            j->p++;
        if (j->p == s) goto done;
        out->type = (*s == '-' || (*s >= '0' && *s <= '9')) ? J_NUM : J_LIT;
        out->text = dino_malloc((size_t)(j->p - s) + 1);
        memcpy(out->text, s, (size_t)(j->p - s));
        out->text[j->p - s] = 0;
        rc = 0;
    }
done:
    j->depth--;
    return rc;
}

static const JNode *jget(const JNode *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (strcmp(obj->kids[i].key, key) == 0) return &obj->kids[i];
    return NULL;
}

static int jint(const JNode *n, int64_t *out) {
    if (!n || n->type != J_NUM) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(n->text, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

// ---- files and directories --------------------------------------------------------------------------

static int write_all_fsync(const char *path, const char *data, size_t len, char *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        dino_seterr(err, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, data + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
            dino_seterr(err, "cannot write %s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0) {
        dino_seterr(err, "cannot fsync %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (close(fd) != 0) {
        dino_seterr(err, "cannot close %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}


// Removes a checkpoint directory: its files, then itself (checkpoints hold no subdirectories).
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[PATH_MAX];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

// "ckpt_000001234" -> 1234; anything else (".tmp", ".old", other files) -> -1.
static int64_t parse_ckpt_name(const char *name) {
    if (strncmp(name, "ckpt_", 5) != 0 || !name[5]) return -1;
    int64_t v = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9' || v > INT64_MAX / 10) return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int ckpt_list(const char *output_dir, int64_t **iterations) {
    char root[PATH_MAX];
    snprintf(root, sizeof root, "%s/%s", output_dir, CKPT_DIR);
    *iterations = NULL;
    DIR *d = opendir(root);
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t it = parse_ckpt_name(e->d_name);
        if (it < 0) continue;
        if (n == cap) cap = cap ? cap * 2 : 16, *iterations = dino_realloc(*iterations, sizeof(int64_t) * (size_t)cap);
        (*iterations)[n++] = it;
    }
    closedir(d);
    if (n) qsort(*iterations, (size_t)n, sizeof(int64_t), cmp_i64);
    return n;
}

static void ckpt_path(char *out, size_t cap, const char *output_dir, int64_t it, const char *suffix) {
    snprintf(out, cap, "%s/%s/ckpt_%09" PRId64 "%s", output_dir, CKPT_DIR, it, suffix);
}

// ---- writer -----------------------------------------------------------------------------------------

typedef struct {
    char *name;
    int ndim;
    int64_t shape[8];
    const float *data;
    size_t nbytes;
} WTensor;

struct CkptWriter {
    WTensor *t;
    int n_t;
    CkptValue *v;
    int n_v;
};

CkptWriter *ckpt_writer_new(void) { return dino_calloc(1, sizeof(CkptWriter)); }

void ckpt_writer_tensor(CkptWriter *w, const char *name, int ndim, const int64_t *shape, const float *data) {
    DINO_ASSERT(ndim >= 0 && ndim <= 8, "checkpoint tensor %s: ndim %d", name, ndim);
    for (int i = 0; i < w->n_t; i++) DINO_ASSERT(strcmp(w->t[i].name, name) != 0, "checkpoint tensor %s added twice", name);
    w->t = dino_realloc(w->t, sizeof(WTensor) * (size_t)(w->n_t + 1));
    WTensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->ndim = ndim;
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i], numel *= (size_t)shape[i];
    t->data = data;
    t->nbytes = numel * sizeof(float);
}

void ckpt_writer_param_table(CkptWriter *w, const char *prefix, const ParamTable *tab, const float *flat) {
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        char name[PARAM_NAME_MAX + 64];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        ckpt_writer_tensor(w, name, t->ndim, t->shape, flat + t->offset);
    }
}

static CkptValue *add_value(CkptWriter *w, const char *key, CkptValueType type) {
    for (int i = 0; i < w->n_v; i++) DINO_ASSERT(strcmp(w->v[i].key, key) != 0, "checkpoint value %s set twice", key);
    w->v = dino_realloc(w->v, sizeof(CkptValue) * (size_t)(w->n_v + 1));
    CkptValue *v = &w->v[w->n_v++];
    memset(v, 0, sizeof *v);
    v->key = strdup(key);
    v->type = type;
    return v;
}
void ckpt_writer_int(CkptWriter *w, const char *key, int64_t x) { add_value(w, key, CKPT_INT)->i = x; }
void ckpt_writer_float(CkptWriter *w, const char *key, double x) { add_value(w, key, CKPT_FLOAT)->f = x; }
void ckpt_writer_str(CkptWriter *w, const char *key, const char *s) { add_value(w, key, CKPT_STR)->s = strdup(s); }

void ckpt_writer_free(CkptWriter *w) {
    if (!w) return;
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    for (int i = 0; i < w->n_v; i++) free(w->v[i].key), free(w->v[i].s);
    free(w->t);
    free(w->v);
    free(w);
}

static void fmt_double(char *out, size_t cap, double x) {
    if (isnan(x)) { snprintf(out, cap, "\"nan\""); return; }
    if (isinf(x)) { snprintf(out, cap, "\"%sinf\"", x < 0 ? "-" : ""); return; }
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, x);
        if (strtod(out, NULL) == x) break;
    }
}

static char *state_json(const CkptWriter *w, int64_t iteration, size_t tensor_bytes, const uint32_t *crcs) {
    Text t;
    text_init(&t, 1024);
    text_printf(&t, "{\n  \"format\": \"%s\",\n  \"format_version\": %d,\n  \"iteration\": %" PRId64 ",\n", FORMAT_NAME,
            CKPT_FORMAT_VERSION, iteration);
    text_printf(&t, "  \"tensors_file\": \"%s\",\n  \"tensors_bytes\": %zu,\n  \"crc32\": {", TENSORS_FILE, tensor_bytes);
    for (int i = 0; i < w->n_t; i++) {
        text_printf(&t, "%s\n    ", i ? "," : "");
        text_json_string(&t, w->t[i].name);
        text_printf(&t, ": \"%08" PRIx32 "\"", crcs[i]);
    }
    static const char *sections[] = {"ints", "floats", "strings"};
    for (int s = 0; s < 3; s++) {
        text_printf(&t, "\n  },\n  \"%s\": {", sections[s]);
        int first = 1;
        for (int i = 0; i < w->n_v; i++) {
            const CkptValue *v = &w->v[i];
            if ((int)v->type != s) continue;
            text_printf(&t, "%s\n    ", first ? "" : ",");
            first = 0;
            text_json_string(&t, v->key);
            text_printf(&t, ": ");
            char num[64];
            if (v->type == CKPT_INT) text_printf(&t, "%" PRId64, v->i);
            else if (v->type == CKPT_FLOAT) fmt_double(num, sizeof num, v->f), text_printf(&t, "%s", num);
            else text_json_string(&t, v->s);
        }
    }
    text_printf(&t, "\n  }\n}\n");
    return t.s;
}

int ckpt_save(CkptWriter *w, const char *output_dir, int64_t iteration, int keep_last, char *path_out, char *err) {
    DINO_ASSERT(iteration >= 0 && keep_last >= 1, "ckpt_save: iteration %lld keep_last %d", (long long)iteration, keep_last);
    char root[PATH_MAX], tmp[PATH_MAX], final[PATH_MAX], old[PATH_MAX], file[PATH_MAX + 32];
    snprintf(root, sizeof root, "%s/%s", output_dir, CKPT_DIR);
    if (dino_mkdir_p(root, err)) return -1;
    ckpt_path(tmp, sizeof tmp, output_dir, iteration, ".tmp");
    ckpt_path(final, sizeof final, output_dir, iteration, "");
    ckpt_path(old, sizeof old, output_dir, iteration, ".old");
    remove_dir(tmp); // a crashed earlier attempt at the same iteration
    if (mkdir(tmp, 0755) != 0) {
        dino_seterr(err, "cannot create checkpoint directory %s: %s", tmp, strerror(errno));
        return -1;
    }

    // tensors
    StWriter *sw = st_writer_new();
    uint32_t *crcs = dino_malloc(sizeof(uint32_t) * (size_t)(w->n_t ? w->n_t : 1));
    for (int i = 0; i < w->n_t; i++) {
        const WTensor *t = &w->t[i];
        st_writer_add(sw, t->name, ST_F32, t->ndim, t->shape, t->data);
        crcs[i] = ckpt_crc32(0, t->data, t->nbytes);
    }
    char itbuf[32];
    snprintf(itbuf, sizeof itbuf, "%" PRId64, iteration);
    st_writer_meta(sw, "format", FORMAT_NAME);
    st_writer_meta(sw, "iteration", itbuf);
    snprintf(file, sizeof file, "%s/%s", tmp, TENSORS_FILE);
    int rc = st_writer_write(sw, file, err);
    st_writer_free(sw);
    struct stat sb;
    if (rc == 0 && stat(file, &sb) != 0) {
        dino_seterr(err, "cannot stat %s: %s", file, strerror(errno));
        rc = -1;
    }
    if (rc) {
        free(crcs);
        remove_dir(tmp);
        return -1;
    }

    // state, then the commit: one rename of the whole directory
    char *json = state_json(w, iteration, (size_t)sb.st_size, crcs);
    free(crcs);
    snprintf(file, sizeof file, "%s/%s", tmp, STATE_FILE);
    rc = write_all_fsync(file, json, strlen(json), err);
    free(json);
    if (rc) {
        remove_dir(tmp);
        return -1;
    }
    fsync_dir(tmp);
    struct stat fb;
    int replaced = stat(final, &fb) == 0;
    if (replaced) { // the same iteration saved again (e.g. after a resume): keep it until the new one is in
        remove_dir(old);
        if (rename(final, old) != 0) {
            dino_seterr(err, "cannot move %s aside: %s", final, strerror(errno));
            remove_dir(tmp);
            return -1;
        }
    }
    if (rename(tmp, final) != 0) {
        dino_seterr(err, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
        if (replaced) rename(old, final);
        remove_dir(tmp);
        return -1;
    }
    fsync_dir(root);
    if (replaced) remove_dir(old);
    if (path_out) snprintf(path_out, PATH_MAX, "%s", final);

    // keep this one and the newest keep_last - 1 others (this one may not be the newest: a run resumed
    // past a damaged newer checkpoint must not delete what it just wrote); drop interrupted saves
    int64_t *its;
    int n = ckpt_list(output_dir, &its), kept = 1;
    for (int i = n - 1; i >= 0; i--) {
        if (its[i] == iteration) continue;
        if (kept < keep_last) { kept++; continue; }
        char p[PATH_MAX];
        ckpt_path(p, sizeof p, output_dir, its[i], "");
        remove_dir(p);
    }
    free(its);
    DIR *d = opendir(root);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t len = strlen(e->d_name);
            if (strncmp(e->d_name, "ckpt_", 5) != 0 || len < 4) continue;
            if (strcmp(e->d_name + len - 4, ".tmp") != 0 && strcmp(e->d_name + len - 4, ".old") != 0) continue;
            char p[PATH_MAX + 256];
            snprintf(p, sizeof p, "%s/%s", root, e->d_name);
            remove_dir(p);
        }
        closedir(d);
    }
    fsync_dir(root);
    return 0;
}

// ---- reader -----------------------------------------------------------------------------------------

static int read_whole(const char *path, char **out, size_t *len, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        dino_seterr(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    Text t;
    text_init(&t, 4096);
    size_t r;
    while ((r = fread(t.s + t.n, 1, t.cap - t.n - 1, f)) > 0) {
        t.n += r;
        if (t.cap - t.n < 2) t.cap *= 2, t.s = dino_realloc(t.s, t.cap);
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        dino_seterr(err, "%s: read error", path);
        free(t.s);
        return -1;
    }
    t.s[t.n] = 0;
    *out = t.s;
    *len = t.n;
    return 0;
}

static int load_values(Ckpt *c, const JNode *root, const char *path, char *err) {
    static const char *sections[] = {"ints", "floats", "strings"};
    for (int s = 0; s < 3; s++) {
        const JNode *sec = jget(root, sections[s]);
        if (!sec) continue;
        if (sec->type != J_OBJ) {
            dino_seterr(err, "%s: \"%s\" is not an object", path, sections[s]);
            return -1;
        }
        for (int i = 0; i < sec->n; i++) {
            const JNode *n = &sec->kids[i];
            CkptValue v = {.key = NULL, .type = (CkptValueType)s};
            char *end = NULL;
            int ok;
            if (s == 0) ok = jint(n, &v.i) == 0;
            else if (s == 1) ok = (n->type == J_NUM || n->type == J_STR) && (v.f = strtod(n->text, &end), !*end);
            else ok = n->type == J_STR;
            if (!ok) {
                dino_seterr(err, "%s: value \"%s\" in \"%s\" has the wrong type", path, n->key, sections[s]);
                return -1;
            }
            v.key = strdup(n->key);
            if (s == 2) v.s = strdup(n->text);
            c->values = dino_realloc(c->values, sizeof(CkptValue) * (size_t)(c->n_values + 1));
            c->values[c->n_values++] = v;
        }
    }
    return 0;
}

int ckpt_open(Ckpt *c, const char *ckpt_dir, char *err) {
    memset(c, 0, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "%s", ckpt_dir);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", ckpt_dir, STATE_FILE);
    char *text;
    size_t len;
    if (read_whole(path, &text, &len, err)) return -1;
    JParser jp = {text, text + len, 0};
    JNode root;
    int rc = -1;
    int parsed = jvalue(&jp, &root) == 0;
    jws(&jp);
    if (!parsed || root.type != J_OBJ || jp.p != jp.end) {
        dino_seterr(err, "%s: not a complete JSON object (truncated or corrupt)", path);
        jfree(&root);
        free(text);
        return -1;
    }
    const JNode *fmt = jget(&root, "format");
    int64_t version = 0, tensor_bytes = 0;
    if (!fmt || fmt->type != J_STR || strcmp(fmt->text, FORMAT_NAME) != 0) {
        dino_seterr(err, "%s: not a dinotrain checkpoint (no \"format\": \"%s\")", path, FORMAT_NAME);
        goto out;
    }
    if (jint(jget(&root, "format_version"), &version) || version != CKPT_FORMAT_VERSION) {
        dino_seterr(err, "%s: format version %lld, this build reads version %d", path, (long long)version,
                    CKPT_FORMAT_VERSION);
        goto out;
    }
    if (jint(jget(&root, "iteration"), &c->iteration) || c->iteration < 0 ||
        jint(jget(&root, "tensors_bytes"), &tensor_bytes)) {
        dino_seterr(err, "%s: missing or bad \"iteration\"/\"tensors_bytes\"", path);
        goto out;
    }
    if (load_values(c, &root, path, err)) goto out;

    snprintf(path, sizeof path, "%s/%s", ckpt_dir, TENSORS_FILE);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        dino_seterr(err, "%s: %s", path, strerror(errno));
        goto out;
    }
    if ((int64_t)sb.st_size != tensor_bytes) {
        dino_seterr(err, "%s: %lld bytes, state.json says %lld (truncated or replaced)", path, (long long)sb.st_size,
                    (long long)tensor_bytes);
        goto out;
    }
    if (st_open(&c->st, path, err)) goto out;
    const JNode *crcs = jget(&root, "crc32");
    if (!crcs || crcs->type != J_OBJ || crcs->n != c->st.n) {
        dino_seterr(err, "%s: crc32 table lists %d tensors, the tensor file holds %d", c->dir, crcs ? crcs->n : 0, c->st.n);
        goto out;
    }
    for (int i = 0; i < c->st.n; i++) {
        const StTensor *t = &c->st.t[i];
        const JNode *want = jget(crcs, t->name);
        if (t->dtype != ST_F32) {
            dino_seterr(err, "%s: tensor '%s' is not F32", path, t->name);
            goto out;
        }
        uint32_t got = ckpt_crc32(0, t->data, t->nbytes);
        char hex[16];
        snprintf(hex, sizeof hex, "%08" PRIx32, got);
        if (!want || want->type != J_STR || strcmp(want->text, hex) != 0) {
            dino_seterr(err, "%s: tensor '%s' fails its CRC32 check (stored %s, computed %s)", path, t->name,
                        want && want->type == J_STR ? want->text : "none", hex);
            goto out;
        }
    }
    rc = 0;
out:
    jfree(&root);
    free(text);
    if (rc) ckpt_close(c);
    return rc;
}

void ckpt_close(Ckpt *c) {
    st_close(&c->st);
    for (int i = 0; i < c->n_values; i++) free(c->values[i].key), free(c->values[i].s);
    free(c->values);
    char dir[sizeof c->dir];
    memcpy(dir, c->dir, sizeof dir);
    memset(c, 0, sizeof *c);
    memcpy(c->dir, dir, sizeof dir); // keep the name for messages
}

int ckpt_open_latest(Ckpt *c, const char *output_dir, FILE *log, char *err) {
    memset(c, 0, sizeof *c);
    int64_t *its;
    int n = ckpt_list(output_dir, &its);
    if (n == 0) {
        free(its);
        return 0;
    }
    for (int i = n - 1; i >= 0; i--) {
        char p[PATH_MAX], why[DINO_ERRLEN];
        ckpt_path(p, sizeof p, output_dir, its[i], "");
        if (ckpt_open(c, p, why) == 0) {
            if (c->iteration != its[i]) {
                snprintf(why, sizeof why, "state.json says iteration %lld", (long long)c->iteration);
                ckpt_close(c);
            } else {
                free(its);
                return 1;
            }
        }
        if (log) fprintf(log, "dinotrain: checkpoint %s is not valid, skipping it: %s\n", p, why);
    }
    dino_seterr(err, "%s/%s holds %d checkpoint(s) and none is valid (see the messages above); move them away to start "
                "afresh", output_dir, CKPT_DIR, n);
    free(its);
    return -1;
}

const StTensor *ckpt_tensor(const Ckpt *c, const char *name) { return st_get(&c->st, name); }

int ckpt_read_tensor(const Ckpt *c, const char *name, int ndim, const int64_t *shape, float *dst, char *err) {
    const StTensor *t = ckpt_tensor(c, name);
    if (!t) {
        dino_seterr(err, "checkpoint %s has no tensor '%s'", c->dir, name);
        return -1;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[128] = "", b[128] = "";
        for (int i = 0; i < t->ndim; i++) snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", i ? "," : "", (long long)t->shape[i]);
        for (int i = 0; i < ndim; i++) snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", i ? "," : "", (long long)shape[i]);
        dino_seterr(err, "checkpoint %s: tensor '%s' has shape [%s], expected [%s]", c->dir, name, a, b);
        return -1;
    }
    memcpy(dst, t->data, t->nbytes);
    return 0;
}

int ckpt_read_param_table(const Ckpt *c, const char *prefix, const ParamTable *tab, float *flat, char *err) {
    for (int i = 0; i < tab->n; i++) {
        const TensorSpec *t = &tab->t[i];
        char name[PARAM_NAME_MAX + 64];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        if (ckpt_read_tensor(c, name, t->ndim, t->shape, flat + t->offset, err)) return -1;
    }
    return 0;
}

static const CkptValue *find_value(const Ckpt *c, const char *key) {
    for (int i = 0; i < c->n_values; i++)
        if (strcmp(c->values[i].key, key) == 0) return &c->values[i];
    return NULL;
}

int ckpt_get_int(const Ckpt *c, const char *key, int64_t *out, char *err) {
    const CkptValue *v = find_value(c, key);
    if (!v || v->type != CKPT_INT) {
        dino_seterr(err, "checkpoint %s has no integer '%s'", c->dir, key);
        return -1;
    }
    *out = v->i;
    return 0;
}

int ckpt_get_float(const Ckpt *c, const char *key, double *out, char *err) {
    const CkptValue *v = find_value(c, key);
    if (!v || v->type != CKPT_FLOAT) {
        dino_seterr(err, "checkpoint %s has no float '%s'", c->dir, key);
        return -1;
    }
    *out = v->f;
    return 0;
}

const char *ckpt_get_str(const Ckpt *c, const char *key) {
    const CkptValue *v = find_value(c, key);
    return v && v->type == CKPT_STR ? v->s : NULL;
}
