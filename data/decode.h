// Image decoding (JPEG through TurboJPEG, PNG through libpng, TIFF through libtiff) into 8-bit RGB, and
// JPEG encoding. Thread-safe: each thread keeps its own TurboJPEG handles.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "data/image.h"

typedef enum { IMAGE_FORMAT_UNKNOWN = 0, IMAGE_FORMAT_JPEG, IMAGE_FORMAT_PNG, IMAGE_FORMAT_TIFF } ImageFormat;

// Recognises the format from the first bytes (magic numbers), not from a file name.
ImageFormat image_format_sniff(const uint8_t *buf, size_t n);
// True when the file name ends in an extension this module decodes (.jpg .jpeg .png .tif .tiff).
int image_path_is_supported(const char *path);

// Decodes an image held in memory into *out (allocated by the call). `min_side` > 0 lets a JPEG be
// decoded at a reduced scale (TurboJPEG's DCT scaling factors 1/8..1): the smallest scale whose shorter
// side is still >= min_side; other formats ignore it. Returns 0, or -1 with err for truncated, corrupt
// or unsupported data (out is left empty then).
int decode_image_mem(const uint8_t *buf, size_t n, int min_side, Image *out, char *err);
int decode_jpeg_mem(const uint8_t *buf, size_t n, int min_side, Image *out, char *err);
int decode_png_mem(const uint8_t *buf, size_t n, Image *out, char *err);
int decode_tiff_mem(const uint8_t *buf, size_t n, Image *out, char *err);
// Reads and decodes a file; err names the file.
int decode_image_file(const char *path, int min_side, Image *out, char *err);

// Reads the JPEG header only: full-size width and height.
int jpeg_read_size(const uint8_t *buf, size_t n, int *w, int *h, char *err);
// The size a JPEG of w x h decodes to for `min_side` (see decode_image_mem).
void jpeg_scaled_size(int w, int h, int min_side, int *sw, int *sh);

// Encodes RGB to JPEG (4:2:0 chroma subsampling, quality 1..100). *out is malloc'd (free it).
int encode_jpeg(const Image *im, int quality, uint8_t **out, size_t *out_size, char *err);

// Reads a whole file into a malloc'd buffer. err names the file.
int read_file_bytes(const char *path, uint8_t **buf, size_t *n, char *err);
