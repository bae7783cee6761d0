// A TIFF of an RGB image in any of the layouts the decoder must read: strips (16 rows, the last partial) or
// 32 x 16 tiles (clipped at the right and bottom), contiguous or separate planes, grey / RGB / RGB +
// unassociated alpha (a pattern of transparent and opaque parts), any orientation and compression. Shared
// by the decoder's tests and the fuzzers' seeds.
#pragma once
#include <stdint.h>
#include <string.h>
#include <tiffio.h>

#include "common/check.h"
#include "data/image.h"
#include "tests/harness.h"

static void write_tiff_layout(const char *path, const Image *im, int tiled, int spp, int planar, int orientation,
                              int compression) {
    TIFF *t = TIFFOpen(path, "w");
    CHECK(t != NULL, "cannot create %s", path);
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, im->w);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, im->h);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, spp);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, spp >= 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, planar);
    TIFFSetField(t, TIFFTAG_COMPRESSION, compression);
    TIFFSetField(t, TIFFTAG_ORIENTATION, orientation);
    if (spp == 4) {
        uint16_t extra = EXTRASAMPLE_UNASSALPHA;
        TIFFSetField(t, TIFFTAG_EXTRASAMPLES, 1, &extra);
    }
    int nplanes = planar == PLANARCONFIG_SEPARATE ? spp : 1, per = nplanes > 1 ? 1 : spp;
    // sample s of pixel (x, y): the image's channels, alpha a pattern with transparent and opaque parts
    #define SAMPLE(x, y, s) ((s) < 3 ? im->px[3 * ((size_t)(y) * im->w + (x)) + ((spp == 1) ? 0 : (s))] \
                                     : (uint8_t)(((x) / 7 + (y) / 5) % 3 * 127))
    if (tiled) {
        const int tw = 32, th = 16;
        TIFFSetField(t, TIFFTAG_TILEWIDTH, tw);
        TIFFSetField(t, TIFFTAG_TILELENGTH, th);
        uint8_t *tile = dino_malloc((size_t)tw * th * per);
        for (int p = 0; p < nplanes; p++)
            for (int ty = 0; ty < im->h; ty += th)
                for (int tx = 0; tx < im->w; tx += tw) {
                    memset(tile, 0, (size_t)tw * th * per);
                    for (int y = 0; y < th && ty + y < im->h; y++)
                        for (int x = 0; x < tw && tx + x < im->w; x++)
                            for (int s = 0; s < per; s++)
                                tile[((size_t)y * tw + x) * per + s] = SAMPLE(tx + x, ty + y, nplanes > 1 ? p : s);
                    CHECK(TIFFWriteTile(t, tile, tx, ty, 0, (uint16_t)p) >= 0, "%s: tile write failed", path);
                }
        free(tile);
    } else {
        TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 16);
        uint8_t *row = dino_malloc((size_t)im->w * per);
        for (int p = 0; p < nplanes; p++)
            for (int y = 0; y < im->h; y++) {
                for (int x = 0; x < im->w; x++)
                    for (int s = 0; s < per; s++) row[(size_t)x * per + s] = SAMPLE(x, y, nplanes > 1 ? p : s);
                CHECK(TIFFWriteScanline(t, row, (uint32_t)y, (uint16_t)p) >= 0, "%s: row write failed", path);
            }
        free(row);
    }
    #undef SAMPLE
    TIFFClose(t);
}
