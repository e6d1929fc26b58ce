// Row-range kernels of quant_kernels.cpp (see there for the layouts).
#pragma once
#include <cstdint>
#include <functional>

namespace llms {
void f32_rows(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, int64_t n0, int64_t n1);
void q8_rows(const float* x, int64_t M, int64_t K, int64_t G, const int8_t* w, const void* s, bool half, float* y,
             int64_t N, int64_t n0, int64_t n1);
void q4_rows(const float* x, const float* xs, int64_t M, int64_t K, int64_t G, const uint8_t* w, const void* s,
             const void* mn, bool half, float* y, int64_t N, int64_t n0, int64_t n1);
const char* simd();
}  // namespace llms

namespace llms {
void q8_dequant_rows(const int8_t* w, const void* s, bool half, int64_t K, int64_t G, float* out, int64_t n0,
                     int64_t n1);
void q4_dequant_rows(const uint8_t* w, const void* s, const void* mn, bool half, int64_t K, int64_t G, float* out,
                     int64_t n0, int64_t n1);
}  // namespace llms

namespace llms {
// x quantized per block of 32 for the int8-dot path: q (M, Kp) int8, dx, xs (sum of x), c (128 * sum of q) per
// block (M, Bp); Kp = K rounded up to 256, padding zero; xs = dx * sum(q): the sum of the rounded x
struct XQ { const int8_t* q; const float* dx; const float* xs; const int32_t* c; int64_t Kp, Bp; };
bool has_vnni();
void quantize_x(const float* x, int64_t M, int64_t K, XQ& X, int8_t* q, float* dx, float* xs, int32_t* c);
void vnni_rows(const XQ& X, int64_t M, int64_t K, bool q4, const uint8_t* w, const void* s, const void* mn,
               bool half, bool per_row, float* y, int64_t N, int64_t n0, int64_t n1);
}  // namespace llms

namespace llms {
// fn(n0, n1) over row ranges covering [0, n), on the caller and up to torch's thread count - 1 helpers, at least
// `grain` rows per range (thread_pool.cpp)
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);
}  // namespace llms
