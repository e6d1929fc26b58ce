// Python bindings of quant_kernels.cpp: checks, output tensors, and the split of output rows over threads
// (llms::parallel_for, thread_pool.cpp).
#include <torch/extension.h>
#include <optional>
#include <vector>
#include "quant_kernels.h"

namespace {

// rows per task: at least 32 KiB of weights, so small products run on one thread without a parallel region
int64_t grain(int64_t row_bytes) { return std::max<int64_t>(16, 32768 / std::max<int64_t>(row_bytes, 1)); }

bool is_half(const torch::Tensor& s) {
    TORCH_CHECK(s.scalar_type() == torch::kFloat || s.scalar_type() == torch::kHalf, "scales must be float32 or float16");
    TORCH_CHECK(s.is_contiguous(), "scales must be contiguous");
    return s.scalar_type() == torch::kHalf;
}

void check_x(const torch::Tensor& x, int64_t K) {
    TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(), "x must be (M, K) float32");
    TORCH_CHECK(x.size(1) == K && x.size(0) >= 1 && x.size(0) <= 8, "x must have K columns and 1..8 rows");
}

}  // namespace

torch::Tensor f32_linear(torch::Tensor x, torch::Tensor w) {
    const int64_t M = x.size(0), K = w.size(1), N = w.size(0);
    check_x(x, K);
    TORCH_CHECK(w.scalar_type() == torch::kFloat && w.is_contiguous() && K % 16 == 0, "w must be (N, K) float32, K % 16 == 0");
    auto y = torch::empty({M, N}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    llms::parallel_for(N, grain(K * 4), [&](int64_t n0, int64_t n1) { llms::f32_rows(xp, M, K, wp, yp, N, n0, n1); });
    return y;
}

// int8-dot path (x quantized per block of 32): the caller checked has_vnni() and the layout (K % 32 == 0; int4
// group 32; int8 group 32 or one scale per row)
torch::Tensor vnni_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& s,
                          const std::optional<torch::Tensor>& mn, bool q4, bool per_row, int64_t K, int64_t N) {
    const int64_t M = x.size(0), Kp = (K + 255) / 256 * 256, Bp = Kp / 32;
    TORCH_CHECK(K % 32 == 0, "the int8-dot path needs K % 32 == 0");
    std::vector<int8_t> q(M * Kp);
    std::vector<float> dx(M * Bp), xs(M * Bp);
    std::vector<int32_t> c(M * Bp);
    llms::XQ X;
    llms::quantize_x(x.data_ptr<float>(), M, K, X, q.data(), dx.data(), xs.data(), c.data());
    auto y = torch::empty({M, N}, x.options());
    const uint8_t* wp = (const uint8_t*)w.data_ptr();
    const void* sp = s.data_ptr();
    const void* mp = mn ? mn->data_ptr() : nullptr;
    const bool half = s.scalar_type() == torch::kHalf;
    float* yp = y.data_ptr<float>();
    llms::parallel_for(N, grain(q4 ? K / 2 : K), [&](int64_t n0, int64_t n1) {
        llms::vnni_rows(X, M, K, q4, wp, sp, mp, half, per_row, yp, N, n0, n1);
    });
    return y;
}

torch::Tensor q8_linear(torch::Tensor x, torch::Tensor w, torch::Tensor s, int64_t G, bool vnni) {
    const int64_t M = x.size(0), K = w.size(1), N = w.size(0);
    check_x(x, K);
    TORCH_CHECK(w.scalar_type() == torch::kChar && w.is_contiguous(), "w must be (N, K) int8");
    TORCH_CHECK(G % 16 == 0 && K % G == 0 && s.numel() == N * (K / G), "bad int8 group or scales");
    const bool half = is_half(s);
    if (vnni && llms::has_vnni() && K % 32 == 0 && (G == 32 || G == K)) return vnni_linear(x, w, s, {}, false, G == K, K, N);
    auto y = torch::empty({M, N}, x.options());
    const float* xp = x.data_ptr<float>();
    const int8_t* wp = w.data_ptr<int8_t>();
    const void* sp = s.data_ptr();
    float* yp = y.data_ptr<float>();
    llms::parallel_for(N, grain(K), [&](int64_t n0, int64_t n1) {
        llms::q8_rows(xp, M, K, G, wp, sp, half, yp, N, n0, n1);
    });
    return y;
}

torch::Tensor q4_linear(torch::Tensor x, torch::Tensor w, torch::Tensor s, std::optional<torch::Tensor> mn, int64_t G,
                        bool vnni) {
    const int64_t M = x.size(0), K = w.size(1) * 2, N = w.size(0), groups = K / G;
    check_x(x, K);
    TORCH_CHECK(w.scalar_type() == torch::kByte && w.is_contiguous(), "w must be (N, K / 2) uint8");
    TORCH_CHECK(G >= 32 && G % 32 == 0 && K % G == 0 && s.numel() == N * groups, "bad int4 group or scales");
    const bool half = is_half(s);
    if (mn) TORCH_CHECK(mn->scalar_type() == s.scalar_type() && mn->is_contiguous() && mn->numel() == s.numel(), "bad mins");
    if (vnni && llms::has_vnni() && G == 32) return vnni_linear(x, w, s, mn, true, false, K, N);
    const float* xp = x.data_ptr<float>();
    std::vector<float> xs(M * groups);  // sums of x over each group, for the minimum term
    for (int64_t m = 0; m < M; ++m)
        for (int64_t g = 0; g < groups; ++g) {
            float t = 0.f;
            for (int64_t k = g * G; k < (g + 1) * G; ++k) t += xp[m * K + k];
            xs[m * groups + g] = t;
        }
    auto y = torch::empty({M, N}, x.options());
    const uint8_t* wp = w.data_ptr<uint8_t>();
    const void* sp = s.data_ptr();
    const void* mp = mn ? mn->data_ptr() : nullptr;
    float* yp = y.data_ptr<float>();
    llms::parallel_for(N, grain(K / 2), [&](int64_t n0, int64_t n1) {
        llms::q4_rows(xp, xs.data(), M, K, G, wp, sp, mp, half, yp, N, n0, n1);
    });
    return y;
}

torch::Tensor q8_dequant(torch::Tensor w, torch::Tensor s, int64_t G) {
    const int64_t N = w.size(0), K = w.size(1);
    const bool half = is_half(s);
    TORCH_CHECK(w.scalar_type() == torch::kChar && w.is_contiguous() && K % G == 0, "bad int8 weight");
    auto out = torch::empty({N, K}, torch::dtype(torch::kFloat));
    const int8_t* wp = w.data_ptr<int8_t>();
    const void* sp = s.data_ptr();
    float* op = out.data_ptr<float>();
    llms::parallel_for(N, 16, [&](int64_t n0, int64_t n1) { llms::q8_dequant_rows(wp, sp, half, K, G, op, n0, n1); });
    return out;
}

torch::Tensor q4_dequant(torch::Tensor w, torch::Tensor s, std::optional<torch::Tensor> mn, int64_t G) {
    const int64_t N = w.size(0), K = w.size(1) * 2;
    const bool half = is_half(s);
    TORCH_CHECK(w.scalar_type() == torch::kByte && w.is_contiguous() && K % G == 0, "bad int4 weight");
    auto out = torch::empty({N, K}, torch::dtype(torch::kFloat));
    const uint8_t* wp = w.data_ptr<uint8_t>();
    const void* sp = s.data_ptr();
    const void* mp = mn ? mn->data_ptr() : nullptr;
    float* op = out.data_ptr<float>();
    llms::parallel_for(N, 16, [&](int64_t n0, int64_t n1) { llms::q4_dequant_rows(wp, sp, mp, half, K, G, op, n0, n1); });
    return out;
}

// decode_ops.cpp
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps, bool plus_one);
torch::Tensor silu_mul(torch::Tensor gu);
torch::Tensor decode_attention(torch::Tensor qkv, torch::Tensor cos, torch::Tensor ssin, torch::Tensor kc,
                               torch::Tensor vc, torch::Tensor pos, int64_t nh, int64_t nkv);

// decode_layers.cpp
using DecodeLinear = std::tuple<int64_t, torch::Tensor, std::optional<torch::Tensor>, std::optional<torch::Tensor>,
                                int64_t, bool, std::optional<torch::Tensor>>;
using DecodeLayer = std::tuple<torch::Tensor, DecodeLinear, DecodeLinear, torch::Tensor, DecodeLinear, DecodeLinear>;
torch::Tensor llama_layers(torch::Tensor x, const std::vector<DecodeLayer>& layers, const std::vector<torch::Tensor>& kv,
                           torch::Tensor cos, torch::Tensor ssin, torch::Tensor pos, double eps, int64_t nh,
                           int64_t nkv);

std::string simd() { return std::string(llms::simd()) + (llms::has_vnni() ? " + VNNI int8 dot" : ""); }
bool has_vnni() { return llms::has_vnni(); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    const auto nogil = py::call_guard<py::gil_scoped_release>();  // other Python threads run meanwhile
    m.def("f32_linear", &f32_linear, nogil, "y = x @ w.T, float32, 1..8 rows");
    m.def("q8_linear", &q8_linear, nogil, "y = x @ dequant(int8 w).T, 1..8 rows");
    m.def("q4_linear", &q4_linear, nogil, "y = x @ dequant(int4 w).T, 1..8 rows");
    m.def("q8_dequant", &q8_dequant, nogil, "float32 weight of int8 w");
    m.def("q4_dequant", &q4_dequant, nogil, "float32 weight of int4 w");
    m.def("rms_norm", &rms_norm, nogil, "x / sqrt(mean(x^2) + eps) * w (or * (1 + w))");
    m.def("silu_mul", &silu_mul, nogil, "silu(gate) * up of [gate | up]");
    m.def("decode_attention", &decode_attention, nogil, "a decode step's attention: rotary, cache write, one query");
    m.def("llama_layers", &llama_layers, nogil, "a Llama-family decode step's layers, one call");
    m.def("simd", &simd, "the compiled SIMD path");
    m.def("has_vnni", &has_vnni, "whether the int8-dot (VNNI) path is compiled");
}
