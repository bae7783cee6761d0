// common/check.h: fatal errors name the program that failed (not always "dinotrain").
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/check.h"
#include "tests/harness.h"

// An allocation that cannot succeed, in a child process: it must exit 1 with "test_check: fatal ... out of
// memory" on stderr (issue #15: dinoembed's out-of-memory message said "dinotrain").
TEST(out_of_memory_names_the_program) {
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        volatile size_t huge = SIZE_MAX / 2;
        void *p = dino_malloc(huge);
        free(p);
        _exit(0);
    }
    close(fds[1]);
    char msg[1024];
    size_t n = 0;
    for (ssize_t k; n < sizeof msg - 1 && (k = read(fds[0], msg + n, sizeof msg - 1 - n)) > 0;) n += (size_t)k;
    msg[n] = 0;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "the child did not exit 1 (status %d)", status);
    CHECK(strncmp(msg, "test_check: fatal", 17) == 0 && strstr(msg, "out of memory"), "message: %s", msg);
}
