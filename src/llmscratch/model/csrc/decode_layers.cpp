// The layers of a Llama-family decode step in one call: for each layer
//     x = x + proj(attention(qkv(rms_norm(x))))
//     x = x + down(silu(gate) * up, of gate_up(rms_norm(x)))
// calling the same C++ functions, in the same order, as the Python blocks of model/llama.py call one by one in
// a decode step (rms_norm, the products of quant_bind.cpp, decode_attention), so the result is the same to the
// bit (tests/test_decode_paths.py) and a step runs no Python per layer. model/llama.py: Llama.hidden_states
// decides when it applies and builds the arguments.
#include <torch/extension.h>
#include <optional>
#include <tuple>
#include <vector>

// quant_bind.cpp and decode_ops.cpp
torch::Tensor f32_linear(torch::Tensor x, torch::Tensor w);
torch::Tensor q8_linear(torch::Tensor x, torch::Tensor w, torch::Tensor s, int64_t G, bool vnni);
torch::Tensor q4_linear(torch::Tensor x, torch::Tensor w, torch::Tensor s, std::optional<torch::Tensor> mn, int64_t G,
                        bool vnni);
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps, bool plus_one);
torch::Tensor silu_mul(torch::Tensor gu);
torch::Tensor decode_attention(torch::Tensor qkv, torch::Tensor cos, torch::Tensor ssin, torch::Tensor kc,
                               torch::Tensor vc, torch::Tensor pos, int64_t nh, int64_t nkv);

// One Linear (quant_kernel.kernel_args): kind 0 float32 (w), 1 int8 (w, scales, group G), 2 int4 (w, scales,
// mins or None, G); whether x goes in as int8 (VNNI); the bias or None
using Linear = std::tuple<int64_t, torch::Tensor, std::optional<torch::Tensor>, std::optional<torch::Tensor>, int64_t,
                          bool, std::optional<torch::Tensor>>;
// One layer: norm1 weight, qkv, proj, norm2 weight, gate_up, down
using Layer = std::tuple<torch::Tensor, Linear, Linear, torch::Tensor, Linear, Linear>;

namespace {

torch::Tensor run_linear(const Linear& lin, const torch::Tensor& x) {
    const auto& [kind, w, s, mn, G, vnni, bias] = lin;
    torch::Tensor y = kind == 0   ? f32_linear(x, w)
                      : kind == 1 ? q8_linear(x, w, *s, G, vnni)
                                  : q4_linear(x, w, *s, mn, G, vnni);
    if (bias) y += *bias;
    return y;
}

}  // namespace

// x (B, D) float32 after the embedding; kv: each layer's key and value buffers (B, nkv, S, hd); cos, ssin: the
// step's rotary rows (1 or B, hd); pos (B,) each row's slot. Returns x (B, D) after the last layer (not normed).
torch::Tensor llama_layers(torch::Tensor x, const std::vector<Layer>& layers, const std::vector<torch::Tensor>& kv,
                           torch::Tensor cos, torch::Tensor ssin, torch::Tensor pos, double eps, int64_t nh,
                           int64_t nkv) {
    TORCH_CHECK(x.dim() == 2 && kv.size() == 2 * layers.size(), "x must be (B, D), with two cache buffers per layer");
    for (size_t i = 0; i < layers.size(); ++i) {
        const auto& [norm1, qkv, proj, norm2, gate_up, down] = layers[i];
        const torch::Tensor h = run_linear(qkv, rms_norm(x, norm1, eps, false));  // (B, (nh + 2 nkv) hd)
        const torch::Tensor a = decode_attention(h, cos, ssin, kv[2 * i], kv[2 * i + 1], pos, nh, nkv);  // (B, nh hd)
        x = x + run_linear(proj, a);
        x = x + run_linear(down, silu_mul(run_linear(gate_up, rms_norm(x, norm2, eps, false))));
    }
    return x;
}
