// Batch-1..8 products y = x @ W^T for quantized (and float32) weights W (N, K), one range of output rows at a
// time (the caller splits rows over threads). Plain C++ with x86 intrinsics, no torch headers: it compiles in
// seconds. Paths: AVX-512 (F/BW/VL + F16C), AVX2 + FMA + F16C, plain C++; chosen at compile time (-march=native).
//
// Weights (see model/quant.py):
//   int8: int8 (N, K), scales (N, K / G) float32 or float16 (G = K: one scale per row), w = q * s
//   int4: uint8 (N, K / 2), group G: byte j of a group holds element j (low nibble) and j + G/2 (high nibble);
//         scales and mins (N, K / G) float32 or float16; w = n * s + m, or (n - 8) * s when mins is null
// x is (M, K) float32, y is (M, N) float32. K is a multiple of 16 (float32, int8) or of G (int4, G >= 32).
#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstring>
#include "quant_kernels.h"
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__F16C__)
#define LLMS_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LLMS_AVX2 1
#include <immintrin.h>
#endif

namespace {

float half_to_float(uint16_t h) {
#if defined(LLMS_AVX512) || defined(LLMS_AVX2)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) bits = sign | 0x7F800000 | (man << 13);  // inf, nan
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else {  // subnormal: normalize
        int e = -1; uint32_t m = man;
        do { ++e; m <<= 1; } while (!(m & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3FF) << 13);
    }
    float f; std::memcpy(&f, &bits, 4); return f;
#endif
}

inline float scale_at(const float* s, int64_t i) { return s[i]; }
inline float scale_at(const uint16_t* s, int64_t i) { return half_to_float(s[i]); }

// sum_g c[g] * xs[g] with c = mins (or -8 * scales when mins is null): the int4 minimum term of one row
template <typename S>
float min_term(const S* s, const S* mn, const float* xs, int64_t groups) {
    float t = 0.f;
    if (mn) for (int64_t g = 0; g < groups; ++g) t += scale_at(mn, g) * xs[g];
    else for (int64_t g = 0; g < groups; ++g) t -= 8.f * scale_at(s, g) * xs[g];
    return t;
}

#if defined(LLMS_AVX512)
using vec = __m512;
constexpr int W = 16;
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm512_add_ps(a, b); }
inline vec vset(float v) { return _mm512_set1_ps(v); }
inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
inline vec load_i8(const int8_t* p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p))); }
// 16 bytes -> low nibbles (elements j) and high nibbles (elements j + G/2), 16 floats each
inline void load_q4(const uint8_t* p, vec& lo, vec& hi) {
    const __m128i q = _mm_loadu_si128((const __m128i*)p), m = _mm_set1_epi8(0x0F);
    lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, m)));
    hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m)));
}
#elif defined(LLMS_AVX2)
using vec = __m256;
constexpr int W = 8;
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec vadd(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec vset(float v) { return _mm256_set1_ps(v); }
inline float vsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
inline vec load_i8(const int8_t* p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p))); }
// 8 bytes -> 8 low nibbles, 8 high nibbles
inline void load_q4(const uint8_t* p, vec& lo, vec& hi) {
    const __m128i q = _mm_loadl_epi64((const __m128i*)p), m = _mm_set1_epi8(0x0F);
    lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(q, m)));
    hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m)));
}
#endif

#if defined(LLMS_AVX512) || defined(LLMS_AVX2)
// float32: output rows n..n+R-1 one after another, each row's weights read in order, with C independent chains
// along k (4 for one input row, 2 for 2-3, 1 beyond) so the FMAs overlap; each weight load feeds all M input rows.
// Reading the weights as one stream, not R rows side by side, made float32 decode steps 1.16-1.22x faster on an
// AMD EPYC VM (session 10, alternated in one process): the hardware prefetcher keeps up with one stream per core.

template <int M> constexpr int chains() { return M == 1 ? 4 : M <= 3 ? 2 : 1; }

template <int C, int M>
inline float row_total(vec (&acc)[C][M], int m) {
    vec t = acc[0][m];
    for (int c = 1; c < C; ++c) t = vadd(t, acc[c][m]);
    return vsum(t);
}

// acc[p][m] += the weights k..end (read in order, W at a time as floats by load(k)) times x row m, in P chains
template <int P, int M, typename Load>
inline void chain_dot(const float* x, int64_t K, int64_t k, int64_t end, Load load, vec (&acc)[P][M]) {
    for (; k + P * W <= end; k += P * W)
        for (int p = 0; p < P; ++p) {
            const vec wv = load(k + p * W);
            for (int m = 0; m < M; ++m) acc[p][m] = vfma(wv, vload(x + m * K + k + p * W), acc[p][m]);
        }
    for (; k < end; k += W) {  // the rest: lengths are multiples of W
        const vec wv = load(k);
        for (int m = 0; m < M; ++m) acc[0][m] = vfma(wv, vload(x + m * K + k), acc[0][m]);
    }
}

template <int R, int M>
void f32_block(const float* x, int64_t K, const float* w, float* y, int64_t N, int64_t n) {
    constexpr int C = chains<M>();
    for (int r = 0; r < R; ++r) {
        const float* wr = w + (n + r) * K;
        vec acc[C][M];
        for (int c = 0; c < C; ++c) for (int m = 0; m < M; ++m) acc[c][m] = vzero();
        chain_dot<C, M>(x, K, 0, K, [wr](int64_t k) { return vload(wr + k); }, acc);
        for (int m = 0; m < M; ++m) y[m * N + n + r] = row_total(acc, m);
    }
}

// int8 and int4 with float activations, in the same order: rows one after another, each read in order. C groups
// in turn go to C accumulators, and within a group P chains run along k (int8 with one scale per row is one long
// group), so no FMA waits on the one before it.
template <int P, int M>
inline void q8_group(const float* x, int64_t K, int64_t G, const int8_t* wr, int64_t g, float scale, vec (&acc)[M]) {
    vec part[P][M];
    for (int p = 0; p < P; ++p) for (int m = 0; m < M; ++m) part[p][m] = vzero();
    chain_dot<P, M>(x, K, g * G, (g + 1) * G, [wr](int64_t k) { return load_i8(wr + k); }, part);
    const vec sc = vset(scale);
    for (int m = 0; m < M; ++m) {
        vec t = part[0][m];
        for (int p = 1; p < P; ++p) t = vadd(t, part[p][m]);
        acc[m] = vfma(t, sc, acc[m]);
    }
}

template <int M>
inline void q4_group(const float* x, int64_t K, int64_t G, const uint8_t* wr, int64_t g, float scale, vec (&acc)[M]) {
    const int64_t half = G / 2;
    vec part[M];
    for (int m = 0; m < M; ++m) part[m] = vzero();
    for (int64_t b = 0; b < half; b += W) {  // low nibbles: elements b.., high nibbles: elements half + b..
        const float* xg = x + g * G + b;
        vec lo, hi;
        load_q4(wr + g * half + b, lo, hi);
        for (int m = 0; m < M; ++m) part[m] = vfma(hi, vload(xg + m * K + half), vfma(lo, vload(xg + m * K), part[m]));
    }
    const vec sc = vset(scale);
    for (int m = 0; m < M; ++m) acc[m] = vfma(part[m], sc, acc[m]);
}

template <int R, int M, typename S>
void q8_block(const float* x, int64_t K, int64_t G, const int8_t* w, const S* s, float* y, int64_t N, int64_t n) {
    constexpr int C = chains<M>();
    const int64_t groups = K / G;
    for (int r = 0; r < R; ++r) {
        const int8_t* wr = w + (n + r) * K;
        const S* sr = s + (n + r) * groups;
        vec acc[C][M];
        for (int c = 0; c < C; ++c) for (int m = 0; m < M; ++m) acc[c][m] = vzero();
        int64_t g = 0;
        for (; g + C <= groups; g += C)
            for (int c = 0; c < C; ++c) q8_group<C, M>(x, K, G, wr, g + c, scale_at(sr, g + c), acc[c]);
        for (; g < groups; ++g) q8_group<C, M>(x, K, G, wr, g, scale_at(sr, g), acc[0]);
        for (int m = 0; m < M; ++m) y[m * N + n + r] = row_total(acc, m);
    }
}

template <int R, int M, typename S>
void q4_block(const float* x, const float* xs, int64_t K, int64_t G, const uint8_t* w, const S* s, const S* mn,
              float* y, int64_t N, int64_t n) {
    constexpr int C = chains<M>();
    const int64_t groups = K / G;
    for (int r = 0; r < R; ++r) {
        const uint8_t* wr = w + (n + r) * (K / 2);
        const S* sr = s + (n + r) * groups;
        vec acc[C][M];
        for (int c = 0; c < C; ++c) for (int m = 0; m < M; ++m) acc[c][m] = vzero();
        int64_t g = 0;
        for (; g + C <= groups; g += C)
            for (int c = 0; c < C; ++c) q4_group<M>(x, K, G, wr, g + c, scale_at(sr, g + c), acc[c]);
        for (; g < groups; ++g) q4_group<M>(x, K, G, wr, g, scale_at(sr, g), acc[0]);
        const S* mr = mn ? mn + (n + r) * groups : nullptr;
        for (int m = 0; m < M; ++m) y[m * N + n + r] = row_total(acc, m) + min_term(sr, mr, xs + m * groups, groups);
    }
}

#else  // plain C++: one output row at a time

template <int R, int M>
void f32_block(const float* x, int64_t K, const float* w, float* y, int64_t N, int64_t n) {
    for (int r = 0; r < R; ++r) for (int m = 0; m < M; ++m) {
        float a = 0.f;
        for (int64_t k = 0; k < K; ++k) a += w[(n + r) * K + k] * x[m * K + k];
        y[m * N + n + r] = a;
    }
}

template <int R, int M, typename S>
void q8_block(const float* x, int64_t K, int64_t G, const int8_t* w, const S* s, float* y, int64_t N, int64_t n) {
    const int64_t groups = K / G;
    for (int r = 0; r < R; ++r) for (int m = 0; m < M; ++m) {
        float a = 0.f;
        for (int64_t g = 0; g < groups; ++g) {
            float d = 0.f;
            for (int64_t k = g * G; k < (g + 1) * G; ++k) d += (float)w[(n + r) * K + k] * x[m * K + k];
            a += d * scale_at(s, (n + r) * groups + g);
        }
        y[m * N + n + r] = a;
    }
}

template <int R, int M, typename S>
void q4_block(const float* x, const float* xs, int64_t K, int64_t G, const uint8_t* w, const S* s, const S* mn,
              float* y, int64_t N, int64_t n) {
    const int64_t groups = K / G, half = G / 2;
    for (int r = 0; r < R; ++r) for (int m = 0; m < M; ++m) {
        const uint8_t* wr = w + (n + r) * (K / 2);
        const float* xm = x + m * K;
        float a = 0.f;
        for (int64_t g = 0; g < groups; ++g) {
            float d = 0.f;
            for (int64_t j = 0; j < half; ++j) {
                const uint8_t b = wr[g * half + j];
                d += (float)(b & 0x0F) * xm[g * G + j] + (float)(b >> 4) * xm[g * G + half + j];
            }
            a += d * scale_at(s, (n + r) * groups + g);
        }
        y[m * N + n + r] = a + min_term(s + (n + r) * groups, mn ? mn + (n + r) * groups : nullptr,
                                        xs + m * groups, groups);
    }
}
#endif

// R for M input rows: more output rows per pass when there are few input rows (registers: R * M * 2 <= 16)
template <int M> constexpr int rows_for() { return M == 1 ? 4 : M <= 3 ? 2 : 1; }

#define LLMS_DISPATCH_M(M, CALL) \
    switch (M) { case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break; case 4: CALL(4); break; \
                 case 5: CALL(5); break; case 6: CALL(6); break; case 7: CALL(7); break; default: CALL(8); }

template <int M>
void f32_range(const float* x, int64_t K, const float* w, float* y, int64_t N, int64_t n0, int64_t n1) {
    constexpr int R = rows_for<M>();
    int64_t n = n0;
    for (; n + R <= n1; n += R) f32_block<R, M>(x, K, w, y, N, n);
    for (; n < n1; ++n) f32_block<1, M>(x, K, w, y, N, n);
}

template <int M, typename S>
void q8_range(const float* x, int64_t K, int64_t G, const int8_t* w, const S* s, float* y, int64_t N, int64_t n0,
              int64_t n1) {
    constexpr int R = rows_for<M>();
    int64_t n = n0;
    for (; n + R <= n1; n += R) q8_block<R, M, S>(x, K, G, w, s, y, N, n);
    for (; n < n1; ++n) q8_block<1, M, S>(x, K, G, w, s, y, N, n);
}

template <int M, typename S>
void q4_range(const float* x, const float* xs, int64_t K, int64_t G, const uint8_t* w, const S* s, const S* mn,
              float* y, int64_t N, int64_t n0, int64_t n1) {
    constexpr int R = rows_for<M>();
    int64_t n = n0;
    for (; n + R <= n1; n += R) q4_block<R, M, S>(x, xs, K, G, w, s, mn, y, N, n);
    for (; n < n1; ++n) q4_block<1, M, S>(x, xs, K, G, w, s, mn, y, N, n);
}

}  // namespace

#if defined(LLMS_AVX512) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define LLMS_VNNI 1
// int8 activations (llama.cpp's Q8 idea): x quantized per block of 32 (scale dx = max|x| / 127), then 32 weights
// times 32 activations are one vpdpbusd (u8 x s8 -> int32) instead of conversions and float FMAs. 8 blocks at a
// time, their 8 int32 sums gathered into one vector by a tree of horizontal adds.
namespace {

// Software prefetch of the weights, this many bytes ahead of the ones being multiplied (each weight is read once
// per product, from memory). On an Intel Xeon VM (session 9) it made whole int8 decode steps 1.28x faster and gguf
// steps 1.19x (1.5 KB ahead: 1.14x for int8; 6 KB no better than 3 KB). On an AMD EPYC (session 8) a prefetch a
// page ahead was neutral for int8 and 9-14% slower for gguf, so AMD CPUs leave it to the hardware. 0: none.
const int64_t kPrefetchBytes = [] {
    __builtin_cpu_init();  // a static initializer may run before the CPU model is read
    return __builtin_cpu_is("amd") ? 0 : 3072;
}();

inline __m256i sum8(const __m256i* d) {  // (8 vectors of 8 int32) -> their 8 sums
    const __m256i ab = _mm256_hadd_epi32(_mm256_hadd_epi32(d[0], d[1]), _mm256_hadd_epi32(d[2], d[3]));
    const __m256i cd = _mm256_hadd_epi32(_mm256_hadd_epi32(d[4], d[5]), _mm256_hadd_epi32(d[6], d[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(ab, cd, 0x20), _mm256_permute2x128_si256(ab, cd, 0x31));
}

inline __m256 load8(const float* p, __mmask8 k) { return _mm256_maskz_loadu_ps(k, p); }
inline __m256 load8(const uint16_t* p, __mmask8 k) { return _mm256_cvtph_ps(_mm_maskz_loadu_epi16(k, p)); }
inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

// one output row n; int4 group 32 (scales/mins per block) or int8 (grouped 32, or one scale per row)
template <int M, bool Q4, typename S>
void vnni_row(const llms::XQ& X, int64_t K, const uint8_t* w, const S* s, const S* mn, bool per_row, float* y,
              int64_t N, int64_t n) {
    const int64_t B = K / 32, bw = Q4 ? 16 : 32;
    const uint8_t* wr = w + n * B * bw;
    const S* sr = per_row ? s : s + n * B;
    const S* mr = mn ? mn + n * B : nullptr;
    __m256 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    const __m128i low = _mm_set1_epi8(0x0F);
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    const int64_t ahead = kPrefetchBytes;
    for (int64_t b0 = 0; b0 < B; b0 += 8) {
        const int nb = (int)(B - b0 < 8 ? B - b0 : 8);
        if (ahead)  // the weight bytes `ahead` further on (past this row: the next rows'; a prefetch never faults)
            for (int j = 0; j < nb * bw; j += 64) _mm_prefetch((const char*)(wr + b0 * bw + j + ahead), _MM_HINT_T0);
        const __mmask8 k = (__mmask8)((1u << nb) - 1);
        __m256i u[8];
        for (int j = 0; j < 8; ++j) {
            if (j >= nb) { u[j] = _mm256_setzero_si256(); continue; }
            if (Q4) {  // 16 bytes -> 32 nibbles as u8: elements 0..15 (low), 16..31 (high)
                const __m128i q = _mm_loadu_si128((const __m128i*)(wr + (b0 + j) * 16));
                u[j] = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low), _mm_and_si128(q, low));
            } else {  // int8 w + 128 as u8 (the 128 * sum(xq) it adds is taken off below)
                u[j] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(wr + (b0 + j) * 32)), flip);
            }
        }
        __m256 sw = _mm256_setzero_ps(), mw = _mm256_setzero_ps();
        if (!per_row) sw = load8(sr + b0, k);
        if (Q4) mw = mr ? load8(mr + b0, k) : _mm256_mul_ps(sw, _mm256_set1_ps(-8.f));
        for (int m = 0; m < M; ++m) {
            const int8_t* xq = X.q + m * X.Kp + b0 * 32;
            __m256i d[8];
            for (int j = 0; j < 8; ++j)
                d[j] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u[j], _mm256_loadu_si256((const __m256i*)(xq + j * 32)));
            __m256i t = sum8(d);
            if (!Q4) t = _mm256_sub_epi32(t, _mm256_loadu_si256((const __m256i*)(X.c + m * X.Bp + b0)));
            const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(t), _mm256_loadu_ps(X.dx + m * X.Bp + b0));
            acc[m] = per_row ? _mm256_add_ps(f, acc[m]) : _mm256_fmadd_ps(f, sw, acc[m]);
            if (Q4) acc[m] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(X.xs + m * X.Bp + b0), acc[m]);
        }
    }
    const float rs = per_row ? scale_at(s, n) : 1.f;
    for (int m = 0; m < M; ++m) y[m * N + n] = rs * hsum8(acc[m]);
}

// The same for one input row (a decode step), written for it: each activation vector is loaded beside the weight
// bytes it meets, and the scales only where the format has them. On an AMD EPYC VM (session 11, alternated in one
// process against vnni_row<1>, same results to the bit, medians of 14 rounds) SmolLM2 decode steps were 1.05x
// (int8) and 1.01x (gguf) faster; the int8 head product alone 1.16x. Reading two rows side by side instead was 2x
// slower there (as for float32 in session 10).
template <bool Q4, typename S>
void vnni_row1(const llms::XQ& X, int64_t K, const uint8_t* w, const S* s, const S* mn, bool per_row, float* y,
               int64_t n) {
    const int64_t B = K / 32, bw = Q4 ? 16 : 32;
    const uint8_t* wr = w + n * B * bw;
    const __m128i low = _mm_set1_epi8(0x0F);
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    const int64_t ahead = kPrefetchBytes;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < B; b0 += 8) {
        const int nb = (int)(B - b0 < 8 ? B - b0 : 8);
        if (ahead)
            for (int j = 0; j < nb * bw; j += 64) _mm_prefetch((const char*)(wr + b0 * bw + j + ahead), _MM_HINT_T0);
        const int8_t* xq = X.q + b0 * 32;
        __m256i d[8];
        for (int j = 0; j < 8; ++j) {
            if (j >= nb) {
                d[j] = _mm256_setzero_si256();
                continue;
            }
            __m256i u;
            if (Q4) {  // 16 bytes -> 32 nibbles as u8: elements 0..15 (low), 16..31 (high)
                const __m128i q = _mm_loadu_si128((const __m128i*)(wr + (b0 + j) * 16));
                u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low), _mm_and_si128(q, low));
            } else {  // int8 w + 128 as u8 (the 128 * sum(xq) it adds is taken off below)
                u = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(wr + (b0 + j) * 32)), flip);
            }
            d[j] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, _mm256_loadu_si256((const __m256i*)(xq + j * 32)));
        }
        __m256i t = sum8(d);
        if (!Q4) t = _mm256_sub_epi32(t, _mm256_loadu_si256((const __m256i*)(X.c + b0)));
        const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(t), _mm256_loadu_ps(X.dx + b0));
        if (per_row) {
            acc = _mm256_add_ps(f, acc);
        } else {
            const __mmask8 k = (__mmask8)((1u << nb) - 1);
            const __m256 sw = load8(s + n * B + b0, k);
            acc = _mm256_fmadd_ps(f, sw, acc);
            if (Q4) {
                const __m256 mw = mn ? load8(mn + n * B + b0, k) : _mm256_mul_ps(sw, _mm256_set1_ps(-8.f));
                acc = _mm256_fmadd_ps(mw, _mm256_loadu_ps(X.xs + b0), acc);
            }
        }
    }
    y[n] = (per_row ? scale_at(s, n) : 1.f) * hsum8(acc);
}

template <int M, bool Q4, typename S>
void vnni_range(const llms::XQ& X, int64_t K, const uint8_t* w, const S* s, const S* mn, bool per_row, float* y,
                int64_t N, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
        if constexpr (M == 1) vnni_row1<Q4, S>(X, K, w, s, mn, per_row, y, n);
        else vnni_row<M, Q4, S>(X, K, w, s, mn, per_row, y, N, n);
    }
}

}  // namespace
#endif

namespace llms {

bool has_vnni() {
#if defined(LLMS_VNNI)
    return true;
#else
    return false;
#endif
}

void quantize_x(const float* x, int64_t M, int64_t K, XQ& X, int8_t* q, float* dx, float* xs, int32_t* c) {
    X.Kp = (K + 255) / 256 * 256;
    X.Bp = X.Kp / 32;
    X.q = q, X.dx = dx, X.xs = xs, X.c = c;
    for (int64_t m = 0; m < M; ++m)
        for (int64_t b = 0; b < X.Bp; ++b) {
            int8_t* qb = q + m * X.Kp + b * 32;
            const int64_t i = m * X.Bp + b;
            if (b * 32 >= K) {
                std::memset(qb, 0, 32);
                dx[i] = 0.f, xs[i] = 0.f, c[i] = 0;
                continue;
            }
            const float* xb = x + m * K + b * 32;
            float amax = 0.f;
            for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
            const float d = amax / 127.f;
            int32_t qs = 0;
            for (int j = 0; j < 32; ++j) {
                qb[j] = d > 0.f ? (int8_t)std::nearbyint(xb[j] / d) : 0;
                qs += qb[j];
            }
            dx[i] = d, xs[i] = d * (float)qs, c[i] = 128 * qs;  // xs: the sum of the rounded x, as the weights see it
        }
}

void vnni_rows(const XQ& X, int64_t M, int64_t K, bool q4, const uint8_t* w, const void* s, const void* mn,
               bool half, bool per_row, float* y, int64_t N, int64_t n0, int64_t n1) {
#if defined(LLMS_VNNI)
#define LLMS_V(m, Q, T) vnni_range<m, Q, T>(X, K, w, (const T*)s, (const T*)mn, per_row, y, N, n0, n1)
#define LLMS_CALL(m) \
    if (q4 && half) LLMS_V(m, true, uint16_t); else if (q4) LLMS_V(m, true, float); \
    else if (half) LLMS_V(m, false, uint16_t); else LLMS_V(m, false, float)
    LLMS_DISPATCH_M(M, LLMS_CALL)
#undef LLMS_CALL
#undef LLMS_V
#else
    (void)X, (void)M, (void)K, (void)q4, (void)w, (void)s, (void)mn, (void)half, (void)per_row, (void)y, (void)N;
    (void)n0, (void)n1;
#endif
}

}  // namespace llms

namespace llms {

void f32_rows(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, int64_t n0, int64_t n1) {
#define LLMS_CALL(m) f32_range<m>(x, K, w, y, N, n0, n1)
    LLMS_DISPATCH_M(M, LLMS_CALL)
#undef LLMS_CALL
}

void q8_rows(const float* x, int64_t M, int64_t K, int64_t G, const int8_t* w, const void* s, bool half, float* y,
             int64_t N, int64_t n0, int64_t n1) {
    if (half) {
#define LLMS_CALL(m) q8_range<m, uint16_t>(x, K, G, w, (const uint16_t*)s, y, N, n0, n1)
        LLMS_DISPATCH_M(M, LLMS_CALL)
#undef LLMS_CALL
    } else {
#define LLMS_CALL(m) q8_range<m, float>(x, K, G, w, (const float*)s, y, N, n0, n1)
        LLMS_DISPATCH_M(M, LLMS_CALL)
#undef LLMS_CALL
    }
}

void q4_rows(const float* x, const float* xs, int64_t M, int64_t K, int64_t G, const uint8_t* w, const void* s,
             const void* mn, bool half, float* y, int64_t N, int64_t n0, int64_t n1) {
    if (half) {
#define LLMS_CALL(m) q4_range<m, uint16_t>(x, xs, K, G, w, (const uint16_t*)s, (const uint16_t*)mn, y, N, n0, n1)
        LLMS_DISPATCH_M(M, LLMS_CALL)
#undef LLMS_CALL
    } else {
#define LLMS_CALL(m) q4_range<m, float>(x, xs, K, G, w, (const float*)s, (const float*)mn, y, N, n0, n1)
        LLMS_DISPATCH_M(M, LLMS_CALL)
#undef LLMS_CALL
    }
}

const char* simd() {
#if defined(LLMS_AVX512)
    return "AVX-512";
#elif defined(LLMS_AVX2)
    return "AVX2+FMA";
#else
    return "plain C++ (no AVX2)";
#endif
}

}  // namespace llms

namespace llms {

// float32 weights of rows n0..n1 (for products of many input rows, where a float matmul is the fast way)
void q8_dequant_rows(const int8_t* w, const void* s, bool half, int64_t K, int64_t G, float* out, int64_t n0,
                     int64_t n1) {
    const int64_t groups = K / G;
    for (int64_t n = n0; n < n1; ++n)
        for (int64_t g = 0; g < groups; ++g) {
            const float sc = half ? scale_at((const uint16_t*)s, n * groups + g) : scale_at((const float*)s, n * groups + g);
            for (int64_t k = g * G; k < (g + 1) * G; ++k) out[n * K + k] = sc * (float)w[n * K + k];
        }
}

void q4_dequant_rows(const uint8_t* w, const void* s, const void* mn, bool half, int64_t K, int64_t G, float* out,
                     int64_t n0, int64_t n1) {
    const int64_t groups = K / G, h = G / 2;
    for (int64_t n = n0; n < n1; ++n)
        for (int64_t g = 0; g < groups; ++g) {
            const int64_t i = n * groups + g;
            const float sc = half ? scale_at((const uint16_t*)s, i) : scale_at((const float*)s, i);
            const float lo = mn ? (half ? scale_at((const uint16_t*)mn, i) : scale_at((const float*)mn, i)) : -8.f * sc;
            const uint8_t* b = w + n * (K / 2) + g * h;
            float* o = out + n * K + g * G;
            for (int64_t j = 0; j < h; ++j) {
                o[j] = (float)(b[j] & 0x0F) * sc + lo;
                o[h + j] = (float)(b[j] >> 4) * sc + lo;
            }
        }
}

}  // namespace llms
