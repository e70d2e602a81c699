// The first half of a ConvMixer block as one float32 CPU operator:
//   kshare::depthwise_gelu_bn_residual(input, weight, bias, dilation, bn_weight, bn_bias,
//       running_mean, running_var, training, momentum, eps)
//   = input + batch_norm(gelu(depthwise_conv2d(input, weight, bias, dilation)))
// with torch.nn.BatchNorm2d's semantics (as kshare::bias_gelu_batch_norm).
//
// Why: run as three operators (depthwise conv, bias + GELU + BatchNorm, add), the residual costs
// two passes of their own over the activation: the add in the forward, and in the backward the
// autograd engine's sum of the two gradients that reach the block's input. Here the forward adds
// the input in the pass that writes the BatchNorm output (fused_gelu_bn.cc's affine pass), and
// the backward adds the output gradient to each NCHW grad input plane as the depthwise kernel
// writes it (depthwise_conv.cc; channels-last input, which oneDNN's convolution serves, adds it
// in a pass of its own as before). In NCHW the convolution's output is not even stored: each
// plane goes from the plane kernel, while in L1, into the fused kernel's first pass (GELU and
// the row's statistics in training, the whole output in eval). The kernels are the two
// operators' own, so the numbers are theirs bit for bit.
//
// Measured speed (2-core AMD EPYC, against the three operators apart in the same process, best of
// 5 alternating medians, `node dist/bench/route-ab.js --only residual --threads 1,2 --rounds 5`,
// bench/results/residual-ab.json; 1 thread / 2 threads): training steps at batch 32, ConvMixer-64/4
// shared NCHW 1.05x / 1.13x, channels-last 1.06x / 1.03x; ConvMixer-256/8 shared NCHW 1.02x /
// 1.23x, channels-last 1.03x / 1.04x; ConvMixer-256/16 shared inference at batch 1 1.04x / 0.98x.
// History in bench/cpu-kernels-notes.md ("Session of 2026-12-02, fifth").
//
// Scope: what both operators accept (depthwise [C, 1, kh, kw] odd kernel, stride 1, "same"
// padding, float32 CPU, NCHW or channels-last); src/nn/container.ts routes Residual(Sequential(
// depthwise Conv2d, GELU, BatchNorm2d)) here where its conditions hold. No second derivative:
// a backward with create_graph fails with a message naming the fix.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "depthwise_conv.h"
#include "fused_gelu_bn.h"

#include <functional>
#include <vector>

namespace {

constexpr const char* kOp = "kshare::depthwise_gelu_bn_residual";

// needZ: keep the convolution's output in *z (an eval-mode backward recomputes GELU from it).
kshare_gbn::Forward ForwardBoth(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::IntArrayRef dilation,
                                const at::Tensor& bnWeight, const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv,
                                bool training, double momentum, double eps, bool keep, bool needZ, at::Tensor* z) {
  TORCH_CHECK(x.dim() == 4, kOp, ": input must be (N, C, H, W), got ", x.sizes());
  // The conv bias goes to the fused kernel (added before GELU there), not to the convolution.
  if (!needZ && kshare_dw::PlanesApply(x, weight, dilation)) {
    // NCHW plane kernel: each convolved plane goes straight from L1 into the fused kernel's
    // first pass (GELU and the row's statistics, or the whole eval output), so the
    // convolution's output is never written to memory.
    const kshare_gbn::RowSource rows = [&](const std::function<void(int64_t, const float*)>& body) {
      kshare_dw::ForwardPlanes(x, weight, dilation, body);
    };
    return kshare_gbn::ForwardImpl(x, bias, bnWeight, bnBias, rm, rv, training, momentum, eps, keep, x, &rows);
  }
  *z = kshare_dw::ForwardCpu(x, weight, c10::nullopt, dilation);
  return kshare_gbn::ForwardImpl(*z, bias, bnWeight, bnBias, rm, rv, training, momentum, eps, keep, x);
}

struct DepthwiseGeluBnResidual : public torch::autograd::Function<DepthwiseGeluBnResidual> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, std::vector<int64_t> dilation, const at::Tensor& bnWeight,
                            const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum,
                            double eps, bool keep, bool gradient) {
    at::Tensor z;
    kshare_gbn::Forward f =
        ForwardBoth(x, weight, bias, dilation, bnWeight, bnBias, rm, rv, training, momentum, eps, keep, !training && gradient, &z);
    // Training keeps gelu and gelu' (f.g, f.dg); eval recomputes them from z.
    if (training) ctx->save_for_backward({x, weight, f.g, f.dg, bnWeight, f.mean, f.invstd});
    else ctx->save_for_backward({x, weight, z, bias, bnWeight, f.mean, f.invstd});
    ctx->saved_data["training"] = training;
    ctx->saved_data["dilation"] = c10::IValue(dilation);
    return f.y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const at::Tensor& dy = grads[0];
    torch::autograd::variable_list out(13);
    if (!dy.defined()) return out;
    TORCH_CHECK(!c10::GradMode::is_enabled(), kOp,
                ": no second derivative (backward with create_graph); run with KSHARE_NATIVE_KERNELS=0 for higher derivatives");
    auto s = ctx->get_saved_variables();
    const bool training = ctx->saved_data["training"].toBool();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const at::Tensor &x = s[0], &weight = s[1], &bnWeight = s[4], &mean = s[5], &invstd = s[6];
    kshare_gbn::Grads gr = training ? kshare_gbn::BackwardImpl(dy, s[2], at::Tensor(), bnWeight, mean, invstd, true, s[2], s[3])
                                    : kshare_gbn::BackwardImpl(dy, s[2], s[3], bnWeight, mean, invstd, false, at::Tensor(), at::Tensor());
    const bool needX = ctx->needs_input_grad(0), needW = ctx->needs_input_grad(1);
    if (needX || needW) {
      // The residual's gradient (dy itself) joins the input gradient as the kernel writes it.
      auto [gi, gw, unused] = kshare_dw::BackwardCpuPlus(gr.dx, x, weight, dilation, {needX, needW, false},
                                                         needX ? dy.to(at::kFloat) : at::Tensor());
      out[0] = gi;
      out[1] = gw;
    }
    out[2] = gr.dbias;
    out[4] = gr.dweight;
    out[5] = gr.dbnBias;
    return out;
  }
};

at::Tensor Autograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::IntArrayRef dilation,
                    const at::Tensor& bnWeight, const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv, bool training,
                    double momentum, double eps) {
  // gelu and gelu' are kept only when a backward can follow; the running stats are updated in
  // place but never differentiated, so they stay out of the autograd inputs.
  const bool gradient = at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad() || bias.requires_grad() ||
                                                       bnWeight.requires_grad() || bnBias.requires_grad());
  return DepthwiseGeluBnResidual::apply(x, weight, bias, dilation.vec(), bnWeight, bnBias, rm.detach(), rv.detach(), training,
                                        momentum, eps, training && gradient, gradient);
}

at::Tensor Cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::IntArrayRef dilation,
               const at::Tensor& bnWeight, const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv, bool training,
               double momentum, double eps) {
  at::Tensor z;
  return ForwardBoth(x, weight, bias, dilation, bnWeight, bnBias, rm, rv, training, momentum, eps, false, false, &z).y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kshare, m) {
  m.def(
      "depthwise_gelu_bn_residual(Tensor input, Tensor weight, Tensor bias, int[2] dilation, Tensor bn_weight, Tensor bn_bias, "
      "Tensor(a!) running_mean, Tensor(b!) running_var, bool training, float momentum, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(kshare, CPU, m) { m.impl("depthwise_gelu_bn_residual", Cpu); }
TORCH_LIBRARY_IMPL(kshare, Autograd, m) { m.impl("depthwise_gelu_bn_residual", Autograd); }
