#include "common/fs.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "common/check.h"

int dino_mkdir_p(const char *path, char *err) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        dino_seterr(err, "path too long: %s", path);
        return -1;
    }
    for (char *p = buf + 1;; p++) {
        if (*p && *p != '/') continue;
        char keep = *p;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
            dino_seterr(err, "cannot create directory %s: %s", buf, strerror(errno));
            return -1;
        }
        *p = keep;
        if (!keep) break;
    }
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
        dino_seterr(err, "%s exists and is not a directory", buf);
        return -1;
    }
    return 0;
}
