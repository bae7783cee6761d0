// Minimal test harness: each TEST(name) is one ctest case (CMake greps the TEST lines), so a failure
// names itself. Run a test binary with a case name to run that case, with no argument to run them all.
#pragma once
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus // the CUDA execution layer's self-tests are C++ (tests/cudaemu/)
extern "C" {
#define TEST_NORETURN [[noreturn]]
#else
#define TEST_NORETURN _Noreturn
#endif
typedef void (*TestFn)(void);
void test_register(const char *name, TestFn fn);
void test_fail_at(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// Ends the current case as skipped (ctest shows "Not Run (skipped)"), with the reason printed.
TEST_NORETURN void test_skip(const char *why);
// Path of a file inside the source tree (fixtures, configs), stable whatever the working directory.
const char *test_src_path(const char *rel);
// A fresh empty directory for this case's files.
const char *test_tmpdir(void);
// Runs fn(arg) in a forked child whose stderr is captured into out (NUL-terminated; read to the end, the
// rest dropped past cap); returns the child's exit status (0 when fn returns), 128 + the signal when it
// was killed, -1 when the child could not be started. For code that must end the process.
int test_run_child(void (*fn)(void *), void *arg, char *out, size_t cap);
#ifdef __cplusplus
}
#endif

#define TEST(name)                                                                                 \
    static void test_##name(void);                                                                 \
    __attribute__((constructor)) static void test_reg_##name(void) { test_register(#name, test_##name); } \
    static void test_##name(void)

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) test_fail_at(__FILE__, __LINE__, __VA_ARGS__);                                \
    } while (0)

// |a - b| <= atol + rtol * |b|, and never NaN.
#define CHECK_CLOSE(a, b, atol, rtol)                                                              \
    do {                                                                                           \
        double a_ = (a), b_ = (b);                                                                 \
        if (!(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_)))                                        \
            test_fail_at(__FILE__, __LINE__, "%s = %.9g, expected %s = %.9g", #a, a_, #b, b_);     \
    } while (0)
