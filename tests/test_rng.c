#include <string.h>

#include "common/rng.h"
#include "tests/harness.h"

TEST(rng_keyed_streams_repeat_and_differ) {
    Rng a = rng_make(7, 1, 2, 3), b = rng_make(7, 1, 2, 3), c = rng_make(7, 1, 2, 4);
    int same = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t x = rng_u64(&a), y = rng_u64(&b), z = rng_u64(&c);
        CHECK(x == y, "same key must give the same stream");
        same += x == z;
    }
    CHECK(same == 0, "different keys collided %d times", same);
}

TEST(rng_uniform_and_normal_moments) {
    Rng r = rng_make(1, 0, 0, 0);
    double s = 0, s2 = 0, n1 = 0, n2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double u = rng_uniform(&r);
        CHECK(u >= 0 && u < 1, "uniform out of range: %g", u);
        s += u;
        s2 += u * u;
        double g = rng_normal(&r);
        n1 += g;
        n2 += g * g;
    }
    CHECK_CLOSE(s / n, 0.5, 0.005, 0);
    CHECK_CLOSE(s2 / n - (s / n) * (s / n), 1.0 / 12, 0.002, 0);
    CHECK_CLOSE(n1 / n, 0.0, 0.01, 0);
    CHECK_CLOSE(n2 / n, 1.0, 0.02, 0);
}

TEST(rng_permutation_and_subset) {
    Rng r = rng_make(3, 0, 0, 0);
    int perm[50], seen[50] = {0};
    rng_permutation(&r, perm, 50);
    for (int i = 0; i < 50; i++) seen[perm[i]]++;
    for (int i = 0; i < 50; i++) CHECK(seen[i] == 1, "value %d seen %d times", i, seen[i]);
    int sub[20];
    rng_subset_sorted(&r, sub, 20, 50);
    for (int i = 1; i < 20; i++) CHECK(sub[i] > sub[i - 1], "subset not sorted/distinct at %d", i);
    // every index is picked with probability k/n
    int hits[10] = {0};
    for (int t = 0; t < 20000; t++) {
        int s3[3];
        rng_subset_sorted(&r, s3, 3, 10);
        for (int i = 0; i < 3; i++) hits[s3[i]]++;
    }
    for (int i = 0; i < 10; i++) CHECK_CLOSE(hits[i] / 20000.0, 0.3, 0.02, 0);
    uint32_t counts[7] = {0};
    for (int t = 0; t < 70000; t++) counts[rng_below(&r, 7)]++;
    for (int i = 0; i < 7; i++) CHECK_CLOSE(counts[i] / 70000.0, 1.0 / 7, 0.01, 0);
}
