// Error handling shared by every part of dinotrain: a failed call names the file, the line and what
// was being done; errors from user input name the input (file, key) and the problem.
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

// Fatal: internal invariant or unrecoverable system failure. The message names the program that
// failed (dinotrain, dinoembed, a test, ...): glibc's program_invocation_short_name.
#define DINO_DIE(...)                                                                              \
    do {                                                                                           \
        fprintf(stderr, "%s: fatal (%s:%d): ", program_invocation_short_name, __FILE__, __LINE__); \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        exit(1);                                                                                   \
    } while (0)

#define DINO_ASSERT(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond)) DINO_DIE(__VA_ARGS__);                                                        \
    } while (0)

// Checked allocation: never returns NULL.
static inline void *dino_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) DINO_DIE("out of memory allocating %zu bytes", n);
    return p;
}
static inline void *dino_calloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) DINO_DIE("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}
static inline void *dino_realloc(void *q, size_t n) {
    void *p = realloc(q, n ? n : 1);
    if (!p) DINO_DIE("out of memory reallocating %zu bytes", n);
    return p;
}

// Recoverable errors are reported into a caller-provided buffer; functions return 0 on success, -1 on
// error. `err` may be NULL when the caller does not care about the message.
#define DINO_ERRLEN 512
void dino_seterr(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
