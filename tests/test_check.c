// common/check.h: fatal errors name the program that failed (not always "dinotrain").
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/check.h"
#include "tests/harness.h"

// An allocation that cannot succeed, in a child process: it must exit 1 with "test_check: fatal ... out of
// memory" on stderr (issue #15: dinoembed's out-of-memory message said "dinotrain").
static void impossible_allocation(void *arg) {
    volatile size_t huge = SIZE_MAX / 2;
    free(dino_malloc(huge));
}

TEST(out_of_memory_names_the_program) {
    char msg[1024];
    int st = test_run_child(impossible_allocation, NULL, msg, sizeof msg);
    CHECK(st == 1, "the child did not exit 1 (status %d)", st);
    // the program's own name: test_check, or san_check in the sanitizer suite (where ASan's warning about
    // the failed allocation comes first)
    char want[256];
    snprintf(want, sizeof want, "%s: fatal", program_invocation_short_name);
    const char *at = strstr(msg, want);
    CHECK(at && (at == msg || at[-1] == '\n') && strstr(at, "out of memory"), "message: %s", msg);
}
