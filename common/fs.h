// Small file-system helpers shared by the programs and the library.
#pragma once

// mkdir -p: creates path and its missing parents. Returns 0, or -1 with err naming the directory.
int dino_mkdir_p(const char *path, char *err);
