#include "tests/harness.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TESTS 512
static struct { const char *name; TestFn fn; } tests[MAX_TESTS];
static int n_tests, n_failures;
static const char *current;

void test_register(const char *name, TestFn fn) {
    if (n_tests == MAX_TESTS) { fprintf(stderr, "too many tests\n"); exit(2); }
    tests[n_tests].name = name;
    tests[n_tests].fn = fn;
    n_tests++;
}

void test_fail_at(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s (%s:%d): ", current ? current : "?", file, line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    // Cap the noise of one case; the count is what matters.
    if (++n_failures > 50) { fprintf(stderr, "too many failures, stopping\n"); exit(1); }
}

void test_skip(const char *why) {
    printf("SKIP %s: %s\n", current ? current : "?", why);
    fflush(stdout);
    exit(77);
}

const char *test_src_path(const char *rel) {
    static char buf[8][4096];
    static int k;
    const char *root = getenv("DINO_SOURCE_DIR");
    if (!root) root = DINO_SOURCE_DIR;
    char *out = buf[k++ % 8];
    snprintf(out, 4096, "%s/%s", root, rel);
    return out;
}

const char *test_tmpdir(void) {
    static char dir[4096];
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/dinotest_%s_XXXXXX", base ? base : "/tmp", current ? current : "x");
    if (!mkdtemp(dir)) { perror("mkdtemp"); exit(2); }
    return dir;
}

static int run_one(int i) {
    current = tests[i].name;
    int before = n_failures;
    tests[i].fn();
    int failed = n_failures != before;
    printf("%s %s\n", failed ? "FAILED" : "ok", tests[i].name);
    fflush(stdout);
    return failed;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (int i = 0; i < n_tests; i++) printf("%s\n", tests[i].name);
        return 0;
    }
    int failed = 0, ran = 0;
    for (int i = 0; i < n_tests; i++) {
        if (argc > 1) {
            int wanted = 0;
            for (int a = 1; a < argc; a++) wanted |= strcmp(argv[a], tests[i].name) == 0;
            if (!wanted) continue;
        }
        failed += run_one(i);
        ran++;
    }
    if (ran == 0) { fprintf(stderr, "no test matched\n"); return 2; }
    return failed ? 1 : 0;
}

int test_run_child(void (*fn)(void *), void *arg, char *out, size_t cap) {
    int fd[2];
    if (cap) out[0] = 0;
    if (pipe(fd) != 0) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]), close(fd[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(fd[1], 2);
        close(fd[0]), close(fd[1]);
        fn(arg);
        fflush(stderr);
        _exit(0);
    }
    close(fd[1]);
    size_t len = 0;
    char sink[512];
    for (;;) { // to the end, so that the child never blocks on a full pipe
        ssize_t r = len + 1 < cap ? read(fd[0], out + len, cap - 1 - len) : read(fd[0], sink, sizeof sink);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        if (len + 1 < cap) len += (size_t)r;
    }
    if (cap) out[len] = 0;
    close(fd[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
}
