// Fuzz harness: image decoding (data/decode.h). Input: one image file (JPEG, PNG, TIFF or anything else).
//
// decode_image_mem_budget with a 4-megapixel budget and a reduced-scale hint that depends on the input's
// length (so both the full and the scaled JPEG paths run). Promises checked: an error leaves the image
// empty; a decoded image has a positive size within the budget and its pixels are all readable; and after a
// failure this thread still decodes a good JPEG to the same pixels (a TurboJPEG handle left broken by a bad
// stream made every later tile fail: docs/status.md, Hardening).
#include <stdint.h>
#include <string.h>

#include "common/check.h"
#include "data/decode.h"
#include "tests/fuzz/fuzz.h"

#define BUDGET ((int64_t)1 << 22)

static uint8_t *good_jpeg;
static size_t good_len;
static Image good_ref;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_init_process();
    Image im;
    image_alloc(&im, 24, 16);
    for (int i = 0; i < 24 * 16 * 3; i++) im.px[i] = (uint8_t)(i * 7 + (i / 72) * 13);
    char err[DINO_ERRLEN];
    FUZZ_SETUP(encode_jpeg(&im, 90, &good_jpeg, &good_len, err) == 0, "encode_jpeg");
    FUZZ_SETUP(decode_image_mem(good_jpeg, good_len, 0, &good_ref, err) == 0, "decode of the reference JPEG");
    image_free(&im);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const int min_sides[4] = {0, 8, 33, 200};
    const int min_side = min_sides[size % 4];
    char err[DINO_ERRLEN] = "";
    Image out;
    int rc = decode_image_mem_budget(data, size, min_side, BUDGET, &out, err);
    if (rc != 0) {
        FUZZ_NOTE("decode: %s", err);
        FUZZ_CHECK(rc == -1 && out.px == NULL && out.w == 0 && out.h == 0, "failed decode left an image (%d)", rc);
        FUZZ_CHECK(err[0] != 0, "error without a message");
        Image again;
        FUZZ_CHECK(decode_image_mem(good_jpeg, good_len, 0, &again, err) == 0, "good JPEG after a failure: %s", err);
        FUZZ_CHECK(again.w == good_ref.w && again.h == good_ref.h &&
                       memcmp(again.px, good_ref.px, (size_t)again.w * again.h * 3) == 0,
                   "good JPEG decodes differently after a failure");
        image_free(&again);
        return 0;
    }
    FUZZ_NOTE("decode: %d x %d", out.w, out.h);
    FUZZ_CHECK(out.w > 0 && out.h > 0 && (int64_t)out.w * out.h <= BUDGET, "decoded %d x %d", out.w, out.h);
    unsigned sum = 0;
    for (size_t i = 0; i < (size_t)out.w * out.h * 3; i++) sum += out.px[i]; // every pixel readable (ASan)
    if (image_format_sniff(data, size) == IMAGE_FORMAT_JPEG) {
        int w, h, sw, sh;
        FUZZ_CHECK(jpeg_read_size(data, size, &w, &h, err) == 0, "header unreadable after a decode: %s", err);
        jpeg_scaled_size(w, h, min_side, &sw, &sh);
        FUZZ_CHECK(sw == out.w && sh == out.h, "decoded %d x %d, header says %d x %d at min side %d", out.w, out.h, sw,
                   sh, min_side);
    }
    image_free(&out);
    return (int)(sum & 0);
}
