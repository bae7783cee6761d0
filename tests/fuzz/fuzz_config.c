// Fuzz harness: run configs (train/config.h, docs/configuration.md). Input: parts separated by FUZZ_SEP
// (tests/fuzz/fuzz.h): config.yaml, then base.yaml (a config may say `base: base.yaml`), then up to 8
// command-line overrides ("key=value", each up to its first NUL).
//
// config_load as dinotrain calls it, then what the trainer does with a valid config: the resolved YAML
// (config_to_yaml) and the modules' settings (config_to_vit, config_to_ssl, config_to_loader,
// config_to_schedule). Promises checked: a valid config's resolved YAML reads back to an equal config
// (config.h: "reading it back gives an equal Config"), and a config that validates maps onto a model and a
// training step without error.
#include <stdint.h>
#include <string.h>

#include "common/check.h"
#include "tests/fuzz/fuzz.h"
#include "train/config.h"

#define MAX_OVERRIDES 8

static char cfg_path[1024], base_path[1024], back_path[1024];
static Config cfg, back; // large (paths): not on the stack

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_init_process();
    snprintf(cfg_path, sizeof cfg_path, "%s/config.yaml", fuzz_dir());
    snprintf(base_path, sizeof base_path, "%s/base.yaml", fuzz_dir());
    snprintf(back_path, sizeof back_path, "%s/resolved.yaml", fuzz_dir());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FuzzPart part[2 + MAX_OVERRIDES];
    int n = fuzz_split(data, size, part, 2 + MAX_OVERRIDES);
    fuzz_write(cfg_path, part[0].p, part[0].n);
    if (n > 1) fuzz_write(base_path, part[1].p, part[1].n);
    else unlink(base_path);
    char *ovr[MAX_OVERRIDES];
    int n_ovr = 0;
    for (int i = 2; i < n; i++) ovr[n_ovr++] = strndup((const char *)part[i].p, part[i].n);

    char err[DINO_ERRLEN] = "";
    int rc = config_load(&cfg, cfg_path, n_ovr, ovr, err);
    for (int i = 0; i < n_ovr; i++) free(ovr[i]);
    if (rc != 0) {
        FUZZ_NOTE("config_load: %s", err);
        FUZZ_CHECK(rc == -1 && err[0] != 0, "config_load returned %d, message '%s'", rc, err);
        return 0;
    }
    FUZZ_NOTE("config: valid (%d overrides)", n_ovr);
    // the resolved config reads back equal
    char *yaml = config_to_yaml(&cfg);
    fuzz_write(back_path, yaml, strlen(yaml));
    FUZZ_CHECK(config_load(&back, back_path, 0, NULL, err) == 0, "the resolved config does not load: %s\n%s", err, yaml);
    const char *diff = NULL;
    FUZZ_CHECK(config_equal(&cfg, &back, &diff), "the resolved config reads back different at '%s'\n%s",
               diff ? diff : "?", yaml);
    free(yaml);
    // what the trainer builds from it
    VitConfig vc;
    SslConfig ssl;
    LoaderConfig lc;
    FUZZ_CHECK(config_to_vit(&cfg, &vc, err) == 0, "valid config, no model: %s", err);
    FUZZ_CHECK(config_to_ssl(&cfg, &ssl, err) == 0, "valid config, no training step: %s", err);
    config_to_loader(&cfg, 0, 1, &lc);
    config_to_schedule(&cfg, 1);
    return 0;
}
