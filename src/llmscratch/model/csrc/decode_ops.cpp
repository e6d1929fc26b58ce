// The small operations of an inference step on the CPU in float32, each one call instead of several PyTorch ops:
// an RMSNorm, SwiGLU's silu(gate) * up, and a decode step's attention with the rotary embedding and the KV-cache
// write folded in. At batch 1 a SmolLM2 step is ~300 such ops, so their per-call overhead, not their arithmetic,
// is what costs. The PyTorch reference of each: RMSNorm.reference_forward, SwiGLU (model/llama.py), and
// CausalSelfAttention's own path (model/attention.py); tests compare them.
#include <torch/extension.h>
#include "quant_kernels.h"
#include <cmath>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#define LLMS_ATTEND_HEADS 1  // the vectorized attention below
#endif

namespace {

void check_f32(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == torch::kFloat && t.is_contiguous() && t.device().is_cpu(), name,
                " must be a contiguous float32 CPU tensor");
}

// x * cos + roll(x, hd / 2) * signed_sin (model/attention.py: rotate), one head of hd values
inline void rotate(const float* x, const float* c, const float* s, float* out, int64_t hd) {
    const int64_t half = hd / 2;
    for (int64_t i = 0; i < hd; ++i) out[i] = x[i] * c[i] + x[i < half ? i + half : i - half] * s[i];
}

// q . k over hd values in 16 running sums (one vector register: the compiler vectorizes the inner loop, where a
// single running sum is a chain of dependent adds, about 8x slower here), then the rest one by one
inline float dot(const float* q, const float* k, int64_t hd) {
    float acc[16] = {0.f};
    int64_t e = 0;
    for (; e + 16 <= hd; e += 16)
        for (int l = 0; l < 16; ++l) acc[l] += q[e + l] * k[e + l];
    float d = 0.f;
    for (int l = 0; l < 16; ++l) d += acc[l];
    for (; e < hd; ++e) d += q[e] * k[e];
    return d;
}

// One query head's attention over n keys and values (n, hd) of its kv head, into out (hd): the plain loop, for
// any hd and any CPU; w is scratch of n floats
void attend_one(const float* qh, const float* keys, const float* vals, int64_t n, int64_t hd, float scale,
                std::vector<float>& w, float* out) {
    w.resize(n);
    float top = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
        w[j] = dot(qh, keys + j * hd, hd) * scale;
        top = std::max(top, w[j]);
    }
    float total = 0.f;
    for (int64_t j = 0; j < n; ++j) total += (w[j] = std::exp(w[j] - top));
    std::fill(out, out + hd, 0.f);
    for (int64_t j = 0; j < n; ++j) {
        const float a = w[j] / total;
        for (int64_t e = 0; e < hd; ++e) out[e] += a * vals[j * hd + e];
    }
}

#if defined(LLMS_ATTEND_HEADS)
// exp of 16 floats: 2^n * p(r), x = n ln2 + r, |r| <= ln2 / 2, p a degree-6 polynomial (Cephes' expf, ~1 ulp)
inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 in two parts: r exact to float
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

// w[0..n) = exp(w - top); returns their sum
inline float exp_shifted(float* w, int64_t n, float top) {
    const __m512 t = _mm512_set1_ps(top);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 m = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, w + j), t)));
        _mm512_mask_storeu_ps(w + j, m, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

// R (1..4) query heads q (R, hd) of one kv head over its n keys and values (n, hd), hd % 16 == 0, into out (R, hd):
// each key and value row is loaded once for the R heads. w is scratch of R * n floats
template <int R>
void attend_heads(const float* q, const float* keys, const float* vals, int64_t n, int64_t hd, float scale,
                  std::vector<float>& w, float* out) {
    w.resize(R * n);
    float top[R], inv[R];
    for (int r = 0; r < R; ++r) top[r] = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {  // scores
        __m512 acc[R];
        for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t e = 0; e < hd; e += 16) {
            const __m512 k = _mm512_loadu_ps(keys + j * hd + e);
            for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(k, _mm512_loadu_ps(q + r * hd + e), acc[r]);
        }
        for (int r = 0; r < R; ++r) {
            const float sc = _mm512_reduce_add_ps(acc[r]) * scale;
            w[r * n + j] = sc;
            top[r] = std::max(top[r], sc);
        }
    }
    for (int r = 0; r < R; ++r) inv[r] = 1.f / exp_shifted(&w[r * n], n, top[r]);  // softmax
    for (int64_t e0 = 0; e0 < hd; e0 += 64) {  // out = w @ vals, 64 columns (4 vectors per head) at a time
        const int c = (int)std::min<int64_t>(4, (hd - e0) / 16);
        __m512 o[R][4];
        for (int r = 0; r < R; ++r) for (int i = 0; i < 4; ++i) o[r][i] = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; ++j) {
            const float* v = vals + j * hd + e0;
            for (int i = 0; i < c; ++i) {
                const __m512 vv = _mm512_loadu_ps(v + 16 * i);
                for (int r = 0; r < R; ++r) o[r][i] = _mm512_fmadd_ps(_mm512_set1_ps(w[r * n + j]), vv, o[r][i]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int i = 0; i < c; ++i)
                _mm512_storeu_ps(out + r * hd + e0 + 16 * i, _mm512_mul_ps(o[r][i], _mm512_set1_ps(inv[r])));
    }
}
#endif

}  // namespace

// y = x / sqrt(mean(x^2) + eps) * w over the last axis (plus_one: * (1 + w), Gemma's norm)
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps, bool plus_one) {
    check_f32(x, "x");
    check_f32(w, "w");
    const int64_t D = w.numel();
    TORCH_CHECK(D > 0 && x.size(-1) == D, "x's last axis must match w");
    const int64_t M = x.numel() / D;
    auto y = torch::empty_like(x);
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    llms::parallel_for(M, std::max<int64_t>(1, 65536 / D), [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m) {
            const float* r = xp + m * D;
            double part[8] = {0.0};  // 8 running sums in double precision: the loop vectorizes, the sum is exact
            int64_t k = 0;
            for (; k + 8 <= D; k += 8)
                for (int j = 0; j < 8; ++j) part[j] += static_cast<double>(r[k + j]) * r[k + j];
            double ss = 0.0;
            for (int j = 0; j < 8; ++j) ss += part[j];
            for (; k < D; ++k) ss += static_cast<double>(r[k]) * r[k];
            const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
            float* o = yp + m * D;
            if (plus_one)
                for (int64_t i = 0; i < D; ++i) o[i] = r[i] * inv * (1.f + wp[i]);
            else
                for (int64_t i = 0; i < D; ++i) o[i] = r[i] * inv * wp[i];
        }
    });
    return y;
}

// gu (..., 2H) = [gate | up] -> silu(gate) * up (..., H)
torch::Tensor silu_mul(torch::Tensor gu) {
    check_f32(gu, "gate_up");
    const int64_t H = gu.size(-1) / 2, M = gu.numel() / (2 * H);
    auto sizes = gu.sizes().vec();
    sizes.back() = H;
    auto y = torch::empty(sizes, gu.options());
    const float* g = gu.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    llms::parallel_for(M, std::max<int64_t>(1, 65536 / H), [&](int64_t m0, int64_t m1) {
        for (int64_t m = m0; m < m1; ++m)
            for (int64_t i = 0; i < H; ++i) {
                const float a = g[m * 2 * H + i];
                yp[m * H + i] = a / (1.f + std::exp(-a)) * g[m * 2 * H + H + i];
            }
    });
    return y;
}

// One decode step's attention for B rows, each at its own slot pos[b]:
// qkv (B, (nh + 2 nkv) hd) the fused projection; cos, ssin (B or 1, hd) rotary tables at the rows' positions, or
// empty tensors (no rotary, GPT-2); kc, vc (>= B, nkv, S, hd) the layer's cache. Rotates q and k, writes k and v
// at slot pos[b] of row b, and attends each query head to slots 0..pos[b] of its kv head (nh / nkv query heads
// share one). Returns y (B, nh hd). With AVX-512 and hd % 16 == 0, up to 4 heads of a kv head go together
// (attend_heads: each key and value row read once for them, exp vectorized): SmolLM2 at 110 slots, 12.8 -> 4.4 us
// per layer from cache.
torch::Tensor decode_attention(torch::Tensor qkv, torch::Tensor cos, torch::Tensor ssin, torch::Tensor kc,
                               torch::Tensor vc, torch::Tensor pos, int64_t nh, int64_t nkv) {
    check_f32(qkv, "qkv");
    check_f32(kc, "k cache");
    check_f32(vc, "v cache");
    TORCH_CHECK(kc.dim() == 4 && kc.sizes() == vc.sizes() && kc.size(1) == nkv && nh % nkv == 0, "bad cache");
    const int64_t B = qkv.size(0), S = kc.size(2), hd = kc.size(3), rep = nh / nkv;
    TORCH_CHECK(qkv.dim() == 2 && qkv.size(1) == (nh + 2 * nkv) * hd && kc.size(0) >= B, "bad qkv");
    TORCH_CHECK(pos.scalar_type() == torch::kLong && pos.is_contiguous() && pos.numel() == B, "pos must be (B,) int64");
    const bool rotary = cos.numel() > 0;
    if (rotary) {
        check_f32(cos, "cos");
        check_f32(ssin, "sin");
        TORCH_CHECK(cos.size(-1) == hd && cos.sizes() == ssin.sizes() && (cos.numel() == hd || cos.numel() == B * hd),
                    "bad rotary tables");
    }
    const int64_t* pp = pos.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) TORCH_CHECK(pp[b] >= 0 && pp[b] < S, "position past the cache");
    const float* in = qkv.data_ptr<float>();
    float *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>();
    std::vector<float> q(B * nh * hd);
    for (int64_t b = 0; b < B; ++b) {  // rotate q into q, k into the cache; copy v into the cache
        const float* row = in + b * (nh + 2 * nkv) * hd;
        const int64_t t = rotary && cos.numel() == B * hd ? b : 0;
        const float *c = rotary ? cos.data_ptr<float>() + t * hd : nullptr, *s = rotary ? ssin.data_ptr<float>() + t * hd : nullptr;
        for (int64_t h = 0; h < nh; ++h) {
            if (rotary) rotate(row + h * hd, c, s, &q[(b * nh + h) * hd], hd);
            else std::copy(row + h * hd, row + (h + 1) * hd, &q[(b * nh + h) * hd]);
        }
        for (int64_t g = 0; g < nkv; ++g) {
            float* kd = kp + ((b * nkv + g) * S + pp[b]) * hd;
            if (rotary) rotate(row + (nh + g) * hd, c, s, kd, hd);
            else std::copy(row + (nh + g) * hd, row + (nh + g + 1) * hd, kd);
            const float* v = row + (nh + nkv + g) * hd;
            std::copy(v, v + hd, vp + ((b * nkv + g) * S + pp[b]) * hd);
        }
    }
    auto y = torch::empty({B, nh * hd}, qkv.options());
    float* yp = y.data_ptr<float>();
    const float scale = 1.f / std::sqrt(static_cast<float>(hd));
    // tasks: up to 4 query heads of one kv head of one row (they share its keys and values)
    const int64_t per = std::min<int64_t>(rep, 4), tasks_per_kv = (rep + per - 1) / per, tasks = B * nkv * tasks_per_kv;
    int64_t work = 0;
    for (int64_t b = 0; b < B; ++b) work += (pp[b] + 1) * hd * nh;
    llms::parallel_for(tasks, work > (1 << 16) ? 1 : tasks, [&](int64_t i0, int64_t i1) {
        std::vector<float> w;
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / (nkv * tasks_per_kv), g = i / tasks_per_kv % nkv, h0 = g * rep + i % tasks_per_kv * per;
            const int64_t heads = std::min(per, (g + 1) * rep - h0), n = pp[b] + 1;
            const float* keys = kp + (b * nkv + g) * S * hd;
            const float* vals = vp + (b * nkv + g) * S * hd;
            const float* qh = &q[(b * nh + h0) * hd];
            float* out = yp + (b * nh + h0) * hd;
#if defined(LLMS_ATTEND_HEADS)
            if (hd % 16 == 0) {
                switch (heads) {
                    case 1: attend_heads<1>(qh, keys, vals, n, hd, scale, w, out); break;
                    case 2: attend_heads<2>(qh, keys, vals, n, hd, scale, w, out); break;
                    case 3: attend_heads<3>(qh, keys, vals, n, hd, scale, w, out); break;
                    default: attend_heads<4>(qh, keys, vals, n, hd, scale, w, out);
                }
                continue;
            }
#endif
            for (int64_t r = 0; r < heads; ++r) attend_one(qh + r * hd, keys, vals, n, hd, scale, w, out + r * hd);
        }
    });
    return y;
}
