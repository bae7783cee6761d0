#include "common/text.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/check.h"

void text_init(Text *t, size_t cap) {
    t->cap = cap ? cap : 64;
    t->s = dino_malloc(t->cap);
    t->s[0] = 0;
    t->n = 0;
}

void text_free(Text *t) {
    free(t->s);
    t->s = NULL;
    t->n = t->cap = 0;
}

void text_clear(Text *t) {
    t->n = 0;
    if (t->s) t->s[0] = 0;
}

void text_printf(Text *t, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->s + t->n, t->cap - t->n, fmt, ap);
        va_end(ap);
        DINO_ASSERT(k >= 0, "vsnprintf failed");
        if (t->n + (size_t)k < t->cap) {
            t->n += (size_t)k;
            return;
        }
        t->cap = (t->cap + (size_t)k + 1) * 2;
        t->s = dino_realloc(t->s, t->cap);
    }
}

void text_json_string(Text *t, const char *s) {
    text_printf(t, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') text_printf(t, "\\%c", ch);
        else if (ch == '\n') text_printf(t, "\\n");
        else if (ch == '\t') text_printf(t, "\\t");
        else if (ch < 0x20) text_printf(t, "\\u%04x", ch);
        else text_printf(t, "%c", ch);
    }
    text_printf(t, "\"");
}
