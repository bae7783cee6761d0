// Running commands from tests (the built tools, the PyTorch checks): exit status, captured output, the
// Python interpreter ($DINO_TEST_PYTHON, default /usr/bin/python3) and a skip when its modules are missing.
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "common/check.h"
#include "tests/harness.h"

// cmd through the shell; its exit status (-1 when it did not exit).
static inline int run(const char *cmd) {
    fflush(stdout);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static inline const char *python(void) {
    const char *p = getenv("DINO_TEST_PYTHON");
    return p && *p ? p : "/usr/bin/python3";
}

// Skips the test unless python() imports `modules` (e.g. "torch, numpy").
static inline void need_python_modules(const char *modules) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s -c 'import %s' 2>/dev/null", python(), modules);
    if (run(cmd) != 0) {
        static char why[600];
        snprintf(why, sizeof why, "%s not importable", modules);
        test_skip(why);
    }
}

// cmd's standard output, the first 16 KiB (static storage, overwritten by the next call).
static inline char *capture(const char *cmd) {
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    CHECK(p != NULL, "popen %s", cmd);
    static char buf[16384];
    size_t n = p ? fread(buf, 1, sizeof buf - 1, p) : 0;
    buf[n] = 0;
    if (p) pclose(p);
    return buf;
}
