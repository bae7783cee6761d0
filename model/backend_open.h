// Opening a backend by the name a user types (programs' --backend, configs' backend).
#pragma once
#include "model/backend.h"

// "cpu", "cuda" (device 0) or "auto" (cuda when built with it and a device is visible, else cpu).
// Returns NULL with err set when it cannot (unknown name, no CUDA in this build, no device).
Backend *backend_open(const char *name, char *err);
