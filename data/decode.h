// Image decoding (JPEG through TurboJPEG, PNG through libpng, TIFF through libtiff) into 8-bit RGB, and
// JPEG encoding. Thread-safe: each thread keeps its own TurboJPEG handles (a decompressor that failed is
// replaced by a fresh one: TurboJPEG 2.x does not reset it).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "data/image.h"

typedef enum { IMAGE_FORMAT_UNKNOWN = 0, IMAGE_FORMAT_JPEG, IMAGE_FORMAT_PNG, IMAGE_FORMAT_TIFF } ImageFormat;

// Recognises the format from the first bytes (magic numbers), not from a file name.
ImageFormat image_format_sniff(const uint8_t *buf, size_t n);
// True when the file name ends in an extension this module decodes (.jpg .jpeg .png .tif .tiff).
int image_path_is_supported(const char *path);

// Pixel budget: every decoder reads the image's width and height from its header and refuses an image of
// more than max_pixels pixels (width x height) before it allocates anything for it; TIFFs are then
// decoded a strip or a tile row at a time into the budget-checked output. The default, 8192 x 8192,
// suits tiles and slide regions; the trainer sets data.max_image_pixels. An image over the budget, like a
// truncated, corrupt or unsupported one, is an error (return -1, err says what), never an abort.
#define DECODE_DEFAULT_MAX_PIXELS ((int64_t)1 << 26)

// Decodes an image held in memory into *out (allocated by the call). `min_side` > 0 lets a JPEG be
// decoded at a reduced scale (TurboJPEG's DCT scaling factors 1/8..1): the smallest scale whose shorter
// side is still >= min_side; other formats ignore it. `max_pixels` is the pixel budget (<= 0: the
// default). Returns 0, or -1 with err for truncated, corrupt, oversized or unsupported data (out is left
// empty then).
int decode_image_mem_budget(const uint8_t *buf, size_t n, int min_side, int64_t max_pixels, Image *out, char *err);
// Reads and decodes a file; err names the file. A file larger than any image within the budget could be
// (16 bytes per pixel) is refused before it is read.
int decode_image_file_budget(const char *path, int min_side, int64_t max_pixels, Image *out, char *err);
// The same with the default budget (DECODE_DEFAULT_MAX_PIXELS).
int decode_image_mem(const uint8_t *buf, size_t n, int min_side, Image *out, char *err);
int decode_jpeg_mem(const uint8_t *buf, size_t n, int min_side, Image *out, char *err);
int decode_png_mem(const uint8_t *buf, size_t n, Image *out, char *err);
int decode_tiff_mem(const uint8_t *buf, size_t n, Image *out, char *err);
int decode_image_file(const char *path, int min_side, Image *out, char *err);

// Reads the JPEG header only: full-size width and height (both > 0 on success; a stream that ends before
// its frame header is an error).
int jpeg_read_size(const uint8_t *buf, size_t n, int *w, int *h, char *err);
// The size a JPEG of w x h decodes to for `min_side` (see decode_image_mem).
void jpeg_scaled_size(int w, int h, int min_side, int *sw, int *sh);

// Encodes RGB to JPEG (4:2:0 chroma subsampling, quality 1..100). *out is malloc'd (free it).
int encode_jpeg(const Image *im, int quality, uint8_t **out, size_t *out_size, char *err);

// Reads a whole file into a malloc'd buffer. err names the file.
int read_file_bytes(const char *path, uint8_t **buf, size_t *n, char *err);
