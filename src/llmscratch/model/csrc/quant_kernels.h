// Row-range kernels of quant_kernels.cpp (see there for the layouts).
#pragma once
#include <cstdint>

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
