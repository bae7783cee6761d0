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
#include "common/fs.h"
#include "common/json.h"
#include "common/text.h"

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
    if (x == 0 && signbit(x)) { snprintf(out, cap, "-0.0"); return; } // "-0" would read back as the integer 0
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

#define STATE_MAX_BYTES (64u << 20) // a state.json larger than this is not one of ours

// The "ints", "floats" and "strings" sections. Floats are numbers, or the strings "nan", "inf", "-inf".
static int load_values(Ckpt *c, json_object *root, const char *path, char *err) {
    static const char *sections[] = {"ints", "floats", "strings"};
    for (int s = 0; s < 3; s++) {
        json_object *sec = json_find(root, sections[s]);
        if (!sec) continue;
        if (!json_object_is_type(sec, json_type_object)) {
            dino_seterr(err, "%s: \"%s\" is not an object", path, sections[s]);
            return -1;
        }
        json_object_object_foreach(sec, key, n) {
            CkptValue v = {.key = NULL, .type = (CkptValueType)s};
            const char *text = json_as_string(n);
            char *end = NULL;
            int ok;
            if (s == 0) ok = json_as_int64(n, &v.i) == 0;
            else if (s == 1 && text) ok = (v.f = strtod(text, &end), *text && !*end);
            else if (s == 1) ok = json_object_is_type(n, json_type_double) || json_object_is_type(n, json_type_int),
                             v.f = json_object_get_double(n);
            else ok = text != NULL;
            if (!ok) {
                dino_seterr(err, "%s: value \"%s\" in \"%s\" has the wrong type", path, key, sections[s]);
                return -1;
            }
            v.key = strdup(key);
            if (s == 2) v.s = strdup(text);
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
    if (access(path, R_OK) != 0) {
        dino_seterr(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    char why[DINO_ERRLEN];
    json_object *root = json_parse_file(path, STATE_MAX_BYTES, why);
    if (!root || !json_object_is_type(root, json_type_object)) {
        size_t k = strlen(path);
        const char *detail = !root ? (strncmp(why, path, k) == 0 && why[k] == ':' ? why + k + 2 : why) : "not an object";
        dino_seterr(err, "%s: not a complete JSON object (truncated or corrupt): %.200s", path, detail);
        if (root) json_object_put(root);
        return -1;
    }
    int rc = -1;
    const char *fmt = NULL;
    int64_t version = 0, tensor_bytes = 0;
    if (json_get_string(root, "format", &fmt, path, NULL) != 0 || strcmp(fmt, FORMAT_NAME) != 0) {
        dino_seterr(err, "%s: not a dinotrain checkpoint (no \"format\": \"%s\")", path, FORMAT_NAME);
        goto out;
    }
    if (json_as_int64(json_find(root, "format_version"), &version) || version != CKPT_FORMAT_VERSION) {
        dino_seterr(err, "%s: format version %lld, this build reads version %d", path, (long long)version,
                    CKPT_FORMAT_VERSION);
        goto out;
    }
    if (json_as_int64(json_find(root, "iteration"), &c->iteration) || c->iteration < 0 ||
        json_as_int64(json_find(root, "tensors_bytes"), &tensor_bytes)) {
        dino_seterr(err, "%s: missing or bad \"iteration\"/\"tensors_bytes\"", path);
        goto out;
    }
    if (load_values(c, root, path, err)) goto out;

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
    json_object *crcs = json_find(root, "crc32");
    int n_crcs = crcs && json_object_is_type(crcs, json_type_object) ? json_object_object_length(crcs) : 0;
    if (n_crcs != c->st.n) {
        dino_seterr(err, "%s: crc32 table lists %d tensors, the tensor file holds %d", c->dir, n_crcs, c->st.n);
        goto out;
    }
    for (int i = 0; i < c->st.n; i++) {
        const StTensor *t = &c->st.t[i];
        json_object *want_v = NULL;
        json_object_object_get_ex(crcs, t->name, &want_v);
        const char *want = json_as_string(want_v);
        if (t->dtype != ST_F32) {
            dino_seterr(err, "%s: tensor '%s' is not F32", path, t->name);
            goto out;
        }
        uint32_t got = ckpt_crc32(0, t->data, t->nbytes);
        char hex[16];
        snprintf(hex, sizeof hex, "%08" PRIx32, got);
        if (!want || strcmp(want, hex) != 0) {
            dino_seterr(err, "%s: tensor '%s' fails its CRC32 check (stored %s, computed %s)", path, t->name,
                        want ? want : "none", hex);
            goto out;
        }
    }
    rc = 0;
out:
    json_object_put(root);
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
