// common/check.h: fatal errors name the program that failed (not always "dinotrain").
#include <stdint.h>
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
    CHECK(strncmp(msg, "test_check: fatal", 17) == 0 && strstr(msg, "out of memory"), "message: %s", msg);
}
