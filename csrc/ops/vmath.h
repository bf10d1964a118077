/* Branch-free float math that compilers vectorise, for the OpenMP kernels (the
 * vectorised loops themselves live in simd_body.h, one copy per ISA level). */
#ifndef AVQ_VMATH_H
#define AVQ_VMATH_H

#include <stdint.h>
#include <string.h>

/* exp(x) as 2^n * p(r): degree-6 Taylor polynomial on |r| <= ln2/2, ~2 ulp; saturates to
 * 1.6e-38 / 1.6e38 outside [-87, 88] (softmax and SiLU never need more). */
static inline float avq_vexpf(float x) {
    x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
    float t = x * 1.44269504088896341f;
    float n = (t + 12582912.f) - 12582912.f; /* round to nearest */
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723e-06f;
    float p = 1.f / 720.f;
    p = p * r + 1.f / 120.f;
    p = p * r + 1.f / 24.f;
    p = p * r + 1.f / 6.f;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return p * s;
}

#endif
