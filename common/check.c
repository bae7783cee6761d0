#include "common/check.h"

#include <stdarg.h>

void dino_seterr(char *err, const char *fmt, ...) {
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, DINO_ERRLEN, fmt, ap);
    va_end(ap);
}
