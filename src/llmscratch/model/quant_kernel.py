"""Our C++ kernel for quantized Linear layers at small batch (decode): y = x @ dequant(W)^T without making W float.

Built once with torch's C++ extension tools (`torch.utils.cpp_extension.load_inline`) at first use and cached
by torch (under ~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR). The AVX2 + FMA path is compiled when the
build machine has them (`-march=native`), a plain C++ loop otherwise; rows of the output are split over torch's
threads; AVX-512 paths when the CPU has it. For more than `MAX_ROWS` input rows (a prefill, compute-bound) the
kernel dequantizes the weight (in C++) and F.linear multiplies. When no C++ compiler is found, callers fall back
to the pure-PyTorch reference (dequantize, then F.linear) and `status()` says why.
Set LLMSCRATCH_QUANT_KERNEL=0 to use the reference only.
"""

from __future__ import annotations

import os
import threading

import torch

MAX_ROWS = 8  # above this many input rows, dequantize + F.linear (a float matmul) is faster
_lock = threading.Lock()
_module = None
_status = "not built yet"

CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#if defined(__AVX512F__)
#define LLMS_AVX512 1
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LLMS_AVX2 1
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#endif

// sum_k x[k] * w[k], w int8, K a multiple of 16
static inline float dot_i8(const float* x, const int8_t* w, int64_t K) {
#if defined(LLMS_AVX512)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w + k))));
        __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w + k + 16))));
        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + k + 16), a1);
    }
    for (; k < K; k += 16) {
        __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(w + k))));
        a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + k), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(LLMS_AVX2)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __m128i q = _mm_loadu_si128((const __m128i*)(w + k));
        __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
        __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + k + 8), a1);
    }
    return hsum8(_mm256_add_ps(a0, a1));
#else
    float a = 0.f;
    for (int64_t k = 0; k < K; ++k) a += x[k] * (float)w[k];
    return a;
#endif
}

// sum over groups g of scale[g] * sum_j n_j x_j + min[g] * xsum[g]; nibbles in GGUF block order
static inline float dot_q4(const float* x, const float* xsum, const uint8_t* w, const float* s, const float* m,
                           int64_t K, int64_t G) {
    const int64_t half = G / 2, groups = K / G;
    float tail = 0.f;
    for (int64_t g = 0; g < groups; ++g) tail += m[g] * xsum[g];
#if defined(LLMS_AVX512)
    const __m128i low = _mm_set1_epi8(0x0F);
    __m512 total = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
        const float* xg = x + g * G;
        const uint8_t* wg = w + g * half;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (int64_t b = 0; b < half; b += 16) {
            __m128i q = _mm_loadu_si128((const __m128i*)(wg + b));
            __m128i lo = _mm_and_si128(q, low), hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
            a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), _mm512_loadu_ps(xg + b), a0);
            a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), _mm512_loadu_ps(xg + half + b), a1);
        }
        total = _mm512_fmadd_ps(_mm512_add_ps(a0, a1), _mm512_set1_ps(s[g]), total);
    }
    return _mm512_reduce_add_ps(total) + tail;
#elif defined(LLMS_AVX2)
    const __m128i low = _mm_set1_epi8(0x0F);
    __m256 total = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
        const float* xg = x + g * G;
        const uint8_t* wg = w + g * half;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int64_t b = 0; b < half; b += 16) {
            __m128i q = _mm_loadu_si128((const __m128i*)(wg + b));
            __m128i lo = _mm_and_si128(q, low), hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
            a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(xg + b), a0);
            a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
                                 _mm256_loadu_ps(xg + b + 8), a1);
            a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(xg + half + b), a0);
            a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
                                 _mm256_loadu_ps(xg + half + b + 8), a1);
        }
        total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(s[g]), total);
    }
    return hsum8(total) + tail;
#else
    float a = 0.f;
    for (int64_t g = 0; g < groups; ++g) {
        float d = 0.f;
        for (int64_t j = 0; j < half; ++j) {
            uint8_t b = w[g * half + j];
            d += (float)(b & 0x0F) * x[g * G + j] + (float)(b >> 4) * x[g * G + half + j];
        }
        a += s[g] * d;
    }
    return a + tail;
#endif
}

torch::Tensor int8_linear(torch::Tensor x, torch::Tensor w, torch::Tensor s) {
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
    auto y = torch::empty({M, N}, x.options());
    const float* xp = x.data_ptr<float>(); const int8_t* wp = w.data_ptr<int8_t>();
    const float* sp = s.data_ptr<float>(); float* yp = y.data_ptr<float>();
    at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t r = 0; r < M; ++r) yp[r * N + n] = sp[n] * dot_i8(xp + r * K, wp + n * K, K);
    });
    return y;
}

torch::Tensor int4_linear(torch::Tensor x, torch::Tensor w, torch::Tensor s, torch::Tensor m, int64_t G) {
    const int64_t M = x.size(0), K = x.size(1), N = w.size(0), groups = K / G;
    auto y = torch::empty({M, N}, x.options());
    auto xsum = x.reshape({M, groups, G}).sum(2).contiguous();  // (M, groups)
    const float* xp = x.data_ptr<float>(); const uint8_t* wp = w.data_ptr<uint8_t>();
    const float* sp = s.data_ptr<float>(); const float* mp = m.data_ptr<float>();
    const float* xs = xsum.data_ptr<float>(); float* yp = y.data_ptr<float>();
    at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t r = 0; r < M; ++r)
                yp[r * N + n] = dot_q4(xp + r * K, xs + r * groups, wp + n * (K / 2), sp + n * groups,
                                       mp + n * groups, K, G);
    });
    return y;
}

// float32 (N, K) weights, for products of many rows (a prefill): then a float matmul is the fast way
torch::Tensor int8_dequant(torch::Tensor w, torch::Tensor s) {
    const int64_t N = w.size(0), K = w.size(1);
    auto out = torch::empty({N, K}, s.options());
    const int8_t* wp = w.data_ptr<int8_t>(); const float* sp = s.data_ptr<float>(); float* op = out.data_ptr<float>();
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t k = 0; k < K; ++k) op[n * K + k] = sp[n] * (float)wp[n * K + k];
    });
    return out;
}

torch::Tensor int4_dequant(torch::Tensor w, torch::Tensor s, torch::Tensor m, int64_t G) {
    const int64_t N = w.size(0), K = w.size(1) * 2, half = G / 2, groups = K / G;
    auto out = torch::empty({N, K}, s.options());
    const uint8_t* wp = w.data_ptr<uint8_t>(); const float* sp = s.data_ptr<float>();
    const float* mp = m.data_ptr<float>(); float* op = out.data_ptr<float>();
    at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t g = 0; g < groups; ++g) {
                const float sc = sp[n * groups + g], mn = mp[n * groups + g];
                const uint8_t* b = wp + n * (K / 2) + g * half;
                float* o = op + n * K + g * G;
                for (int64_t j = 0; j < half; ++j) {
                    o[j] = (float)(b[j] & 0x0F) * sc + mn;
                    o[half + j] = (float)(b[j] >> 4) * sc + mn;
                }
            }
    });
    return out;
}

bool has_avx512() {
#ifdef LLMS_AVX512
    return true;
#else
    return false;
#endif
}

bool has_avx2() {
#ifdef LLMS_AVX2
    return true;
#else
    return false;
#endif
}
"""


def _build():
    """Compile (or load from torch's cache) the extension; None with `_status` set when that fails."""
    global _module, _status
    if os.environ.get("LLMSCRATCH_QUANT_KERNEL", "1") == "0":
        _status = "off (LLMSCRATCH_QUANT_KERNEL=0): pure-PyTorch reference"
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        _module = load_inline(
            name="llmscratch_quant_v2", cpp_sources=[CPP],
            functions=["int8_linear", "int4_linear", "int8_dequant", "int4_dequant", "has_avx2", "has_avx512"],
            extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
        )
        simd = "AVX-512" if _module.has_avx512() else "AVX2+FMA" if _module.has_avx2() else "plain C++ (no AVX2)"
        _status = f"C++ kernel, {simd}"
    except Exception as e:  # no compiler, no headers, a failed build: the reference still works
        _module = None
        _status = f"pure-PyTorch reference (C++ kernel build failed: {str(e).splitlines()[0][:200]})"
    return _module


def kernel():
    """The compiled extension module, built on first call; None when it cannot be built (see `status`)."""
    global _status
    if _module is None and _status == "not built yet":
        with _lock:
            if _module is None and _status == "not built yet":
                _status = "building"
                _build()
    return _module


def status() -> str:
    """Which kernel quantized layers use, in words (builds the kernel first if needed)."""
    kernel()
    return _status


def linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """x (..., in) float32 CPU through `layer`'s (a QuantLinear) kernel; None when the caller must use the
    reference (no kernel, or more than MAX_ROWS rows)."""
    rows = x.numel() // x.shape[-1]
    mod = kernel()
    if mod is None or x.shape[-1] % 32:
        return None
    if rows > MAX_ROWS:  # compute-bound: make the float weight (fast, in C++) and let F.linear multiply
        if layer.fmt == "int8":
            w = mod.int8_dequant(layer.qweight, layer.scales)
        else:
            w = mod.int4_dequant(layer.qweight, layer.scales, layer._kernel_mins, layer.group)
        return torch.nn.functional.linear(x, w, layer.bias)
    x2 = x.reshape(rows, x.shape[-1]).contiguous()  # (rows, in)
    if layer.fmt == "int8":
        y = mod.int8_linear(x2, layer.qweight, layer.scales)
    else:
        y = mod.int4_linear(x2, layer.qweight, layer.scales, layer._kernel_mins, layer.group)
    if layer.bias is not None:
        y += layer.bias
    return y.reshape(*x.shape[:-1], layer.out_features)  # (..., out)
