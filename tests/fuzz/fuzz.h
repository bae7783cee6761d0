// Shared by the fuzz harnesses (tests/fuzz/fuzz_<name>.c, docs/fuzzing.md): the libFuzzer entry points,
// inputs that stand for several files, a scratch directory, and invariant checks.
//
// A harness is one LLVMFuzzerTestOneInput calling the library's public entry points (the ones the
// programs call) on the input, then checking what they promise: an error is fine, a crash, a sanitizer
// report, a leak, a hang or a broken promise (FUZZ_CHECK) is a finding. The same harness is built twice:
// by clang with libFuzzer (fuzz.<name>, tests/fuzz/CMakeLists.txt) and by the normal compiler against the
// ASan/UBSan library with tests/fuzz/replay.c as main (fuzz.replay.<name>: every seed and every committed
// regression input, no clang needed).
#pragma once
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

// A broken promise of the library: printed, then abort() (libFuzzer saves the input as a crash).
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FUZZ_CHECK failed (%s:%d): %s: ", __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

// A failure of the harness itself (cannot write its scratch files): not a finding, but nothing to go on.
#define FUZZ_SETUP(cond, what)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            perror(what);                                                                          \
            exit(2);                                                                               \
        }                                                                                          \
    } while (0)

// With DINO_FUZZ_VERBOSE=1 in the environment, harnesses say how far each input got (the error that
// stopped it): for checking that seeds reach past the first checks. Silent otherwise (fuzzing speed).
static inline int fuzz_verbose(void) {
    static int v = -1;
    if (v < 0) v = getenv("DINO_FUZZ_VERBOSE") && atoi(getenv("DINO_FUZZ_VERBOSE")) > 0;
    return v;
}
#define FUZZ_NOTE(...)                                                                             \
    do {                                                                                           \
        if (fuzz_verbose()) {                                                                      \
            fprintf(stderr, "  ");                                                                 \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

// ---- inputs made of several files ---------------------------------------------------------------------
// Parts are separated by this line; a harness documents what each part is (e.g. the checkpoint harness:
// state.json, then tensors.safetensors). A separator is unlikely inside real files, and a mutation that
// breaks one merges two parts, which is just another input.
#define FUZZ_SEP "\n--dino-fuzz-next-file--\n"
#define FUZZ_SEP_LEN (sizeof FUZZ_SEP - 1)

typedef struct {
    const uint8_t *p;
    size_t n;
} FuzzPart;

// Splits data into at most max parts (the last one keeps any further separators). Returns the count (>= 1).
static inline int fuzz_split(const uint8_t *data, size_t size, FuzzPart *parts, int max) {
    int k = 0;
    const uint8_t *p = data, *end = data + size;
    while (k < max - 1) {
        const uint8_t *s = size ? memmem(p, (size_t)(end - p), FUZZ_SEP, FUZZ_SEP_LEN) : NULL;
        if (!s) break;
        parts[k++] = (FuzzPart){p, (size_t)(s - p)};
        p = s + FUZZ_SEP_LEN;
    }
    parts[k++] = (FuzzPart){p, (size_t)(end - p)};
    return k;
}

// ---- scratch files ----------------------------------------------------------------------------------------
static char fuzz_scratch[512];

static inline void fuzz_rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if ((size_t)snprintf(p, sizeof p, "%s/%s", dir, e->d_name) >= sizeof p) continue;
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) fuzz_rm_tree(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static inline void fuzz_rm_scratch(void) {
    if (fuzz_scratch[0]) fuzz_rm_tree(fuzz_scratch);
}

// A private directory for this process, in memory where possible (/dev/shm), removed at exit (not after a
// crash: then it stays for a look, named dinofuzz_<pid>_*).
static inline const char *fuzz_dir(void) {
    if (fuzz_scratch[0]) return fuzz_scratch;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(fuzz_scratch, sizeof fuzz_scratch, "%s/dinofuzz_%ld_XXXXXX", base, (long)getpid());
    FUZZ_SETUP(mkdtemp(fuzz_scratch) != NULL, "mkdtemp");
    atexit(fuzz_rm_scratch);
    return fuzz_scratch;
}

// Writes n bytes to path (replacing it).
static inline void fuzz_write(const char *path, const void *p, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    FUZZ_SETUP(fd >= 0, path);
    const char *c = p;
    while (n > 0) {
        ssize_t k = write(fd, c, n);
        FUZZ_SETUP(k > 0, path);
        c += k, n -= (size_t)k;
    }
    close(fd);
}

// A file held in memory (memfd) with these bytes, for readers that take a path: returns "/proc/self/fd/N"
// (one file per process, rewritten by each call).
static inline const char *fuzz_memfile(const void *p, size_t n) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("dinofuzz", MFD_CLOEXEC);
        FUZZ_SETUP(fd >= 0, "memfd_create");
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    FUZZ_SETUP(ftruncate(fd, 0) == 0, "ftruncate");
    const char *c = p;
    off_t off = 0;
    while (n > 0) {
        ssize_t k = pwrite(fd, c, n, off);
        FUZZ_SETUP(k > 0, "pwrite");
        c += k, n -= (size_t)k, off += k;
    }
    return path;
}

// What every harness does once: no input from a terminal (a config naming /dev/stdin as its base must not
// wait for one), one thread for OpenMP and OpenBLAS (set in the environment by the ctest cases too).
static inline void fuzz_init_process(void) {
    int fd = open("/dev/null", O_RDONLY);
    if (fd >= 0) {
        dup2(fd, 0);
        if (fd != 0) close(fd);
    }
    setenv("OMP_NUM_THREADS", "1", 0);
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
}
