/* Dropout with a counter-based mask: the kernel behind trainer/models/dropout.py (CPU only).
 *
 * Element i of a call is kept when the top 24 bits of SplitMix64(seed, i) are at least
 * `threshold` (= round(p * 2^24)), and kept elements are multiplied by `scale` (= 1 / (1 - p)).
 * The mask is a pure function of (seed, i): the backward pass recomputes it instead of storing
 * it, and a call cut into chunks (`offset`) draws the same mask as one call.
 *
 * SplitMix64 (Steele, Lea & Flood 2014): state = seed + (i + 1) * golden gamma, output its
 * finaliser; it passes BigCrush. Written as a plain loop so that the compiler vectorises it
 * (-O3 -march=native: eight 64-bit lanes per AVX-512 instruction).
 */
#include <stdint.h>
#include <string.h>

static inline uint64_t splitmix64(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline int kept(uint64_t seed, uint64_t i, uint32_t threshold) {
    return (uint32_t)(splitmix64(seed, i) >> 40) >= threshold;
}

void dropout_f32(const float *x, float *y, int64_t n, uint64_t seed, int64_t offset,
                 uint32_t threshold, float scale) {
    for (int64_t j = 0; j < n; j++) {
        y[j] = kept(seed, (uint64_t)(offset + j), threshold) ? x[j] * scale : 0.0f;
    }
}

/* bfloat16 stored as uint16: widened to float, scaled, rounded to nearest even (NaN kept). */
void dropout_bf16(const uint16_t *x, uint16_t *y, int64_t n, uint64_t seed, int64_t offset,
                  uint32_t threshold, float scale) {
    for (int64_t j = 0; j < n; j++) {
        uint32_t bits = (uint32_t)x[j] << 16;
        float value;
        memcpy(&value, &bits, sizeof value);
        value = kept(seed, (uint64_t)(offset + j), threshold) ? value * scale : 0.0f;
        memcpy(&bits, &value, sizeof bits);
        if ((bits & 0x7fffffffU) > 0x7f800000U) {
            y[j] = (uint16_t)((bits >> 16) | 0x40);
        } else {
            y[j] = (uint16_t)((bits + 0x7fffU + ((bits >> 16) & 1U)) >> 16);
        }
    }
}
