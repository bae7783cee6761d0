// A growable text buffer with printf and JSON string quoting: the JSON and YAML writers (checkpoint
// state, metrics lines, resolved configs) share it.
#pragma once
#include <stddef.h>

typedef struct {
    char *s; // NUL-terminated once anything was written
    size_t n, cap;
} Text;

void text_init(Text *t, size_t cap);
void text_free(Text *t);
void text_clear(Text *t);
void text_printf(Text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// A JSON string literal: quotes, backslash escapes, control characters as \uXXXX.
void text_json_string(Text *t, const char *s);
