// The small operations of an inference step on the CPU in float32, each one call instead of several PyTorch ops:
// an RMSNorm, SwiGLU's silu(gate) * up, and a decode step's attention with the rotary embedding and the KV-cache
// write folded in. At batch 1 a SmolLM2 step is ~300 such ops, so their per-call overhead, not their arithmetic,
// is what costs. The PyTorch reference of each: RMSNorm.reference_forward, SwiGLU (model/llama.py), and
// CausalSelfAttention's own path (model/attention.py); tests compare them.
#include <torch/extension.h>
#include "quant_kernels.h"
#include <cmath>
#include <vector>

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
// share one). Returns y (B, nh hd).
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
    int64_t work = 0;
    for (int64_t b = 0; b < B; ++b) work += (pp[b] + 1) * hd * nh;
    llms::parallel_for(B * nh, work > (1 << 18) ? 1 : B * nh, [&](int64_t i0, int64_t i1) {
        std::vector<float> w;
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / nh, h = i % nh, g = h / rep, n = pp[b] + 1;
            const float* qh = &q[i * hd];
            const float* keys = kp + (b * nkv + g) * S * hd;
            const float* vals = vp + (b * nkv + g) * S * hd;
            w.resize(n);
            float top = -INFINITY;
            for (int64_t j = 0; j < n; ++j) {
                w[j] = dot(qh, keys + j * hd, hd) * scale;
                top = std::max(top, w[j]);
            }
            float total = 0.f;
            for (int64_t j = 0; j < n; ++j) total += (w[j] = std::exp(w[j] - top));
            float* out = yp + b * nh * hd + h * hd;
            std::fill(out, out + hd, 0.f);
            for (int64_t j = 0; j < n; ++j) {
                const float a = w[j] / total;
                for (int64_t e = 0; e < hd; ++e) out[e] += a * vals[j * hd + e];
            }
        }
    });
    return y;
}
