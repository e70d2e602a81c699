// ConvMixer's two block halves as float32 CPU operators, a convolution and kshare's fused
// bias + GELU + BatchNorm2d (fused_gelu_bn.cc) in one autograd node each:
//   kshare::depthwise_gelu_bn_residual(input, weight, bias, dilation, bn_weight, bn_bias,
//       running_mean, running_var, training, momentum, eps)
//   = input + batch_norm(gelu(depthwise_conv2d(input, weight, bias, dilation)))
//   kshare::pointwise_gelu_bn(input, weight, bias, bn_weight, bn_bias, running_mean, running_var,
//       training, momentum, eps)      (built with oneDNN only, as the 1x1 operator)
//   = batch_norm(gelu(pointwise_conv2d(input, weight, bias)))
//   kshare::convmixer_block(input, dw_weight, dw_bias, dilation, bn1 ..., pw_weight, pw_bias,
//       bn2 ...)     (built with oneDNN only)
//   = pointwise_gelu_bn(depthwise_gelu_bn_residual(input, ...), ...), one autograd node a block
// with torch.nn.BatchNorm2d's semantics (as kshare::bias_gelu_batch_norm).
//
// Why: run apart, the residual costs two passes of their own over the activation (the add in the
// forward, and in the backward the autograd engine's sum of the two gradients that reach the
// block's input), and the convolution's output is written to memory and read back by the fused
// kernel's first pass. Here the forward adds the input in the pass that writes the BatchNorm
// output (fused_gelu_bn.cc's affine pass), and the backward adds the output gradient to each NCHW
// grad input plane as the depthwise kernel writes it (depthwise_conv.cc; channels-last input,
// which oneDNN's convolution serves, adds it in a pass of its own). In NCHW the convolution's
// output is not stored at all: each plane (depthwise, from the plane kernel, in L1) or each
// image's rows (1x1, one sgemm an image, or a block of output channels when there are fewer
// images than threads, into an L2-sized buffer) go straight into the fused
// kernel's first pass (GELU and the row's statistics in training, the whole output in eval). In
// the 1x1 half's NCHW training backward (with at least as many images as threads) the fused
// kernel's second pass writes each image's gradient rows into an L2-sized buffer that both of the
// 1x1's products (input and weight gradient) read at once, so that gradient is not stored either.
// The kernels are the operators' own, so the numbers are theirs bit for bit.
//
// Measured speed (2-core AMD EPYC, against the operators apart in the same process, best of 5
// alternating medians, `node dist/bench/route-ab.js --only blocks --threads 1,2 --rounds 5`,
// bench/results/blocks-ab.json; 1 thread / 2 threads): training steps at batch 32, ConvMixer-64/4
// shared NCHW 0.99x / 1.04x, channels-last 1.03x / 1.02x; ConvMixer-256/8 shared NCHW 1.05x /
// 1.00x, channels-last 1.03x / 1.01x; ConvMixer-256/16 shared inference at batch 1 1.04x / 1.05x,
// batch 32 1.17x / 1.26x. Each half's own share was measured only through throwaway switches
// (bench/cpu-kernels-notes.md, "Session of 2026-12-02, fifth"). The 1x1 half's backward hand-off,
// against the same code storing dz (2-core Intel Xeon, throwaway A/B of two builds, alternating
// processes): ConvMixer-256/8 shared step 279.6-281.4 against 289.1-297.8 ms at 1 thread,
// 155.1-159.6 against 161.0-164.8 at 2 ("Session of 2026-12-02, sixth").
//
// The whole block as one node (ConvMixerBlock below), against its two half operators in one
// process (`node dist/bench/route-ab.js --only block-node --threads 1,2 --rounds 4`,
// bench/results/block-node-ab.json, 2-core Intel Xeon; 1 thread / 2 threads): training steps
// at batch 32, ConvMixer-64/4 shared x1.00 / x1.04, ConvMixer-256/8 shared x0.99 / x1.05.
//
// Scope: what the operators they are built from accept (depthwise [C, 1, kh, kw] odd kernel,
// stride 1, "same" padding; 1x1 [out, in, 1, 1]; float32 CPU, NCHW or channels-last);
// src/nn/fused.ts routes the layers here where its conditions hold. No second derivative: a
// backward with create_graph fails with a message naming the fix.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "conv_gelu_bn.h"
#include "depthwise_conv.h"
#include "fused_gelu_bn.h"
#include "pointwise_conv.h"

#include <atomic>
#include <functional>
#include <initializer_list>
#include <vector>

namespace {

std::atomic<int64_t> rowSumHandOffs{0}, runLazyInputs{0}, runRowSumHandOffs{0}, deferredOutputs{0};

// Which convolution runs before the fused kernel; a depthwise one also adds its input after it.
enum class ConvKind : int64_t { kDepthwise = 0, kPointwise = 1 };

const char* OpName(ConvKind k) {
  return k == ConvKind::kDepthwise ? "kshare::depthwise_gelu_bn_residual" : "kshare::pointwise_gelu_bn";
}

// The convolution without bias (the fused kernel adds it before GELU): row by row into `sink`
// where RowsApply, or as a tensor.
bool RowsApply(ConvKind k, const at::Tensor& x, const at::Tensor& w, at::IntArrayRef dilation) {
  if (k == ConvKind::kDepthwise) return kshare_dw::PlanesApply(x, w, dilation);
#ifdef KSHARE_HAVE_DNNL
  return kshare_pw::RowsApply(x, w);
#else
  return false;
#endif
}

// prepare (1x1 only): called for each image before its product reads it (kshare_pw::ForwardRows).
void ConvolveRows(ConvKind k, const at::Tensor& x, const at::Tensor& w, at::IntArrayRef dilation, const kshare::RowSink& sink,
                  const kshare::ChannelAffine* inputAffine, const std::function<void(int64_t)>* prepare = nullptr) {
  TORCH_CHECK(!prepare || k == ConvKind::kPointwise, OpName(k), ": internal error: an input prepared image by image");
  if (k == ConvKind::kDepthwise) return kshare_dw::ForwardPlanes(x, w, dilation, sink, inputAffine);
#ifdef KSHARE_HAVE_DNNL
  kshare_pw::ForwardRows(x, w, sink, prepare);
#endif
}

at::Tensor Convolve(ConvKind k, const at::Tensor& x, const at::Tensor& w, at::IntArrayRef dilation) {
  if (k == ConvKind::kDepthwise) return kshare_dw::ForwardCpu(x, w, c10::nullopt, dilation);
#ifdef KSHARE_HAVE_DNNL
  return kshare_pw::ForwardCpu(x, w, c10::nullopt);
#else
  TORCH_CHECK(false, OpName(k), ": not built (no oneDNN)");
#endif
}

// What a depthwise half in a run of training blocks (ConvMixerTrainingRun) adds: its input held as
// the previous block's BatchNorm output (kshare::ChannelAffine over the tensor it was given), and
// a sink for its input gradient's planes as they are finished (*planesSent: whether they were).
struct InputExtras {
  const kshare::ChannelAffine* affine = nullptr;
  const kshare::RowSink* gradPlanes = nullptr;
  bool* planesSent = nullptr;
};

// Input and weight gradients of the convolution from dz; the depthwise one adds `addend` (the
// residual's gradient) to the input gradient.
std::tuple<at::Tensor, at::Tensor> ConvolveBackward(ConvKind k, const at::Tensor& dz, const at::Tensor& x, const at::Tensor& w,
                                                    at::IntArrayRef dilation, bool needX, bool needW, const at::Tensor& addend,
                                                    const InputExtras& extras) {
  if (k == ConvKind::kDepthwise) {
    auto [gi, gw, unused] = kshare_dw::BackwardCpuPlus(dz, x, w, dilation, {needX, needW, false}, addend, extras.affine,
                                                       extras.gradPlanes, extras.planesSent);
    return {gi, gw};
  }
  TORCH_CHECK(!extras.affine && !extras.gradPlanes, OpName(k), ": internal error: input extras for a 1x1 half");
#ifdef KSHARE_HAVE_DNNL
  auto [gi, gw, unused] = kshare_pw::BackwardCpu(dz, x, w, {needX, needW, false});
  return {gi, gw};
#else
  TORCH_CHECK(false, OpName(k), ": not built (no oneDNN)");
#endif
}

// Whether the training backward hands the fused kernel's grad rows to the convolution's backward
// as they are produced: the 1x1 where kshare_pw::BackwardRowsApply (the depthwise half stores them:
// its plane-by-plane version measured no faster, bench/cpu-kernels-notes.md).
bool BackwardRowsApply(ConvKind k, const at::Tensor& x, const at::Tensor& w) {
#ifdef KSHARE_HAVE_DNNL
  return k == ConvKind::kPointwise && kshare_pw::BackwardRowsApply(x, w);
#else
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor> ConvolveBackwardRows(ConvKind k, const kshare::RowProducer& rows, const at::Tensor& x,
                                                        const at::Tensor& w, bool needX, bool needW) {
#ifdef KSHARE_HAVE_DNNL
  if (k == ConvKind::kPointwise) return kshare_pw::BackwardRows(rows, x, w, needX, needW);
#endif
  TORCH_CHECK(false, OpName(k), ": internal error: no row-by-row backward");
}

// needZ: keep the convolution's output in *z (an eval-mode backward recomputes GELU from it).
// deferOutput: the output's pass is left to kshare_gbn::Forward::writeImage (RowsApply only);
// prepareInput (1x1 with RowsApply only): called for each image of x before the product reads it.
kshare_gbn::Forward ForwardBoth(ConvKind k, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                at::IntArrayRef dilation, const at::Tensor& bnWeight, const at::Tensor& bnBias, const at::Tensor& rm,
                                const at::Tensor& rv, bool training, double momentum, double eps, bool keep, bool needZ,
                                at::Tensor* z, const kshare::ChannelAffine* inputAffine = nullptr, bool lazyOutput = false,
                                bool deferOutput = false, const std::function<void(int64_t)>* prepareInput = nullptr) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, OpName(k), ": input and weight must be 4-D, got ", x.sizes(), " and ",
              weight.sizes());
  const at::Tensor residual = k == ConvKind::kDepthwise ? x : at::Tensor();
  if (!needZ && RowsApply(k, x, weight, dilation)) {
    // The fused kernel's rows straight from the convolution. `shape` only carries the output's
    // NCHW shape (a stride-0 view of one float): with a row source its data is never read.
    const at::Tensor shape = at::empty({1, 1, 1, 1}, x.options()).expand({x.size(0), weight.size(0), x.size(2), x.size(3)});
    const kshare_gbn::RowSource rows = [&](const kshare::RowSink& body) {
      ConvolveRows(k, x, weight, dilation, body, inputAffine, prepareInput);
    };
    return kshare_gbn::ForwardImpl(shape, bias, bnWeight, bnBias, rm, rv, training, momentum, eps, keep, residual, &rows, inputAffine,
                                   lazyOutput, deferOutput);
  }
  TORCH_CHECK(!inputAffine && !lazyOutput && !deferOutput && !prepareInput, OpName(k),
              ": internal error: a lazily held or deferred input or output without the row kernels");
  *z = Convolve(k, x, weight, dilation);
  return kshare_gbn::ForwardImpl(*z, bias, bnWeight, bnBias, rm, rv, training, momentum, eps, keep, residual);
}

// What one half's backward needs from its forward: training keeps gelu and gelu' (a, b = g, dg),
// eval the convolution's output and bias (a, b = z, bias) to recompute them.
struct HalfSaved {
  ConvKind kind;
  bool training;
  std::vector<int64_t> dilation;
  at::Tensor x, weight, a, b, bnWeight, mean, invstd;
};

HalfSaved SaveHalf(ConvKind k, bool training, const std::vector<int64_t>& dilation, const at::Tensor& x, const at::Tensor& weight,
                   const at::Tensor& bias, const at::Tensor& bnWeight, const kshare_gbn::Forward& f, const at::Tensor& z) {
  return {k, training, dilation, x, weight, training ? f.g : z, training ? f.dg : bias, bnWeight, f.mean, f.invstd};
}

// The saved tensors of one half, in save_for_backward's order, and back from them (at offset `at`).
std::vector<at::Tensor> SavedList(const HalfSaved& h) { return {h.x, h.weight, h.a, h.b, h.bnWeight, h.mean, h.invstd}; }
HalfSaved FromSaved(ConvKind k, bool training, const std::vector<int64_t>& dilation, const std::vector<at::Tensor>& v, size_t at) {
  return {k, training, dilation, v[at], v[at + 1], v[at + 2], v[at + 3], v[at + 4], v[at + 5], v[at + 6]};
}

struct HalfGrads {
  at::Tensor dx, dweight, dbias, dbnWeight, dbnBias;
  bool nextSummed = false;  // the next half's first pass was done here (HalfBackward's `next`)
};

// Where the next half's training backward (the depthwise one of the same block) wants its first
// pass done here: its kept g, mean and invstd, and where RowSums' per-row sums of the input
// gradient go (2 * N * C doubles).
struct NextRowSums {
  at::Tensor g, mean, invstd;
  double* out;
};

// One half's backward. `rowSums`: this half's first pass, done by the half after it (kshare_gbn's
// BackwardImpl); `next`: do the next half's first pass on this half's input gradient, image by
// image while it is in cache, where the 1x1's row-by-row backward runs (nextSummed says whether
// it did; otherwise the caller leaves `rowSums` out of the next half's backward).
HalfGrads HalfBackward(const HalfSaved& s, const at::Tensor& dy, bool needX, bool needW, const double* rowSums,
                       const NextRowSums* next, const InputExtras& extras = {}) {
  HalfGrads out;
  const ConvKind k = s.kind;
  // Where it applies, the fused kernel's grad rows go straight into the convolution's backward
  // (the drain fills dx and dweight) and are never stored.
  const bool drained = s.training && (needX || needW) && BackwardRowsApply(k, s.x, s.weight);
  // The depthwise half's grad output planes go to the input gradient as they are produced
  // (kshare_dw::BackwardFromPlanes): not read back from memory, nor is the residual's gradient.
  const bool planesDrained =
      s.training && needX && k == ConvKind::kDepthwise && !kshare::ChannelsLastOnly(s.a) && kshare_dw::PlanesApply(s.x, s.weight, s.dilation);
#ifdef KSHARE_HAVE_DNNL
  const bool sumsHere = drained && needX && next;
  const kshare_pw::ImageSink imageSums = [&](int64_t n, const float* gin) {
    const float *gp = next->g.data_ptr<float>(), *mp = next->mean.data_ptr<float>(), *isp = next->invstd.data_ptr<float>();
    const int64_t C = s.x.size(1), HW = s.x.size(2) * s.x.size(3), rows = s.x.size(0) * C;
    kshare_gbn::RowSums(gp + n * C * HW, gin, C, HW, mp, isp, next->out + n * C, next->out + rows + n * C);
  };
#endif
  const kshare_gbn::RowDrain drain = [&](const kshare::RowProducer& rows) {
    if (k == ConvKind::kDepthwise) {
      std::tie(out.dx, out.dweight) = kshare_dw::BackwardFromPlanes(rows, s.x, s.weight, s.dilation, needW, dy.to(at::kFloat),
                                                                    extras.affine, extras.gradPlanes, extras.planesSent);
      return;
    }
#ifdef KSHARE_HAVE_DNNL
    if (k == ConvKind::kPointwise) {
      std::tie(out.dx, out.dweight) = kshare_pw::BackwardRows(rows, s.x, s.weight, needX, needW, sumsHere ? &imageSums : nullptr);
      out.nextSummed = sumsHere;
      return;
    }
#endif
    std::tie(out.dx, out.dweight) = ConvolveBackwardRows(k, rows, s.x, s.weight, needX, needW);
  };
  kshare_gbn::Grads gr = s.training ? kshare_gbn::BackwardImpl(dy, s.a, at::Tensor(), s.bnWeight, s.mean, s.invstd, true, s.a, s.b,
                                                               drained || planesDrained ? &drain : nullptr, rowSums)
                                    : kshare_gbn::BackwardImpl(dy, s.a, s.b, s.bnWeight, s.mean, s.invstd, false, at::Tensor(),
                                                               at::Tensor());
  if (!drained && !planesDrained && (needX || needW)) {
    // The residual's gradient (dy itself) joins the depthwise input gradient as the kernel writes it.
    const at::Tensor addend = k == ConvKind::kDepthwise && needX ? dy.to(at::kFloat) : at::Tensor();
    std::tie(out.dx, out.dweight) = ConvolveBackward(k, gr.dx, s.x, s.weight, s.dilation, needX, needW, addend, extras);
  }
  out.dbias = gr.dbias;
  out.dbnWeight = gr.dweight;
  out.dbnBias = gr.dbnBias;
  return out;
}

bool AnyRequiresGrad(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts)
    if (t->requires_grad()) return true;
  return false;
}

const char* kNoSecondDerivative =
    ": no second derivative (backward with create_graph); run with KSHARE_NATIVE_KERNELS=0 for higher derivatives";

struct ConvGeluBn : public torch::autograd::Function<ConvGeluBn> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, int64_t kind, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias, std::vector<int64_t> dilation, const at::Tensor& bnWeight,
                            const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum,
                            double eps, bool keep, bool gradient) {
    const ConvKind k = static_cast<ConvKind>(kind);
    at::Tensor z;
    kshare_gbn::Forward f =
        ForwardBoth(k, x, weight, bias, dilation, bnWeight, bnBias, rm, rv, training, momentum, eps, keep, !training && gradient, &z);
    ctx->save_for_backward(SavedList(SaveHalf(k, training, dilation, x, weight, bias, bnWeight, f, z)));
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["training"] = training;
    ctx->saved_data["dilation"] = c10::IValue(dilation);
    return f.y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const at::Tensor& dy = grads[0];
    torch::autograd::variable_list out(14);
    if (!dy.defined()) return out;
    const ConvKind k = static_cast<ConvKind>(ctx->saved_data["kind"].toInt());
    TORCH_CHECK(!c10::GradMode::is_enabled(), OpName(k), kNoSecondDerivative);
    const HalfSaved s =
        FromSaved(k, ctx->saved_data["training"].toBool(), ctx->saved_data["dilation"].toIntVector(), ctx->get_saved_variables(), 0);
    // needs_input_grad counts the tensor inputs only (x 0, weight 1, ...), not `kind`.
    HalfGrads g = HalfBackward(s, dy, ctx->needs_input_grad(0), ctx->needs_input_grad(1), nullptr, nullptr);
    out[1] = g.dx;
    out[2] = g.dweight;
    out[3] = g.dbias;
    out[5] = g.dbnWeight;
    out[6] = g.dbnBias;
    return out;
  }
};

#ifdef KSHARE_HAVE_DNNL
// A whole ConvMixer block, both halves in one autograd node:
//   kshare::convmixer_block(input, dw_weight, dw_bias, dilation, bn1 ..., pw_weight, pw_bias, bn2 ...)
//   = pointwise_gelu_bn(depthwise_gelu_bn_residual(input, ...), ...)
// with the same kernels, so the same numbers bit for bit. Why one node: in the NCHW training
// backward, the 1x1 half's input gradient is the depthwise half's output gradient, and here its
// rows are summed for the depthwise half's BatchNorm (RowSums) as the 1x1 backward writes them,
// in cache, instead of in a pass of their own over memory (reading it and the kept GELU output:
// 16 MiB at (32,256,16,16)). The half's output never leaves the node, so nothing else can add
// to its gradient.
struct ConvMixerBlock : public torch::autograd::Function<ConvMixerBlock> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& dwWeight,
                            const at::Tensor& dwBias, std::vector<int64_t> dilation, const at::Tensor& bn1Weight,
                            const at::Tensor& bn1Bias, const at::Tensor& rm1, const at::Tensor& rv1, const at::Tensor& pwWeight,
                            const at::Tensor& pwBias, const at::Tensor& bn2Weight, const at::Tensor& bn2Bias, const at::Tensor& rm2,
                            const at::Tensor& rv2, bool training, double momentum1, double momentum2, double eps1, double eps2,
                            bool keep, bool gradient) {
    at::Tensor z1, z2;
    const bool needZ = !training && gradient;
    kshare_gbn::Forward f1 = ForwardBoth(ConvKind::kDepthwise, x, dwWeight, dwBias, dilation, bn1Weight, bn1Bias, rm1, rv1, training,
                                         momentum1, eps1, keep, needZ, &z1);
    kshare_gbn::Forward f2 = ForwardBoth(ConvKind::kPointwise, f1.y, pwWeight, pwBias, {1, 1}, bn2Weight, bn2Bias, rm2, rv2, training,
                                         momentum2, eps2, keep, needZ, &z2);
    const HalfSaved h1 = SaveHalf(ConvKind::kDepthwise, training, dilation, x, dwWeight, dwBias, bn1Weight, f1, z1);
    const HalfSaved h2 = SaveHalf(ConvKind::kPointwise, training, {1, 1}, f1.y, pwWeight, pwBias, bn2Weight, f2, z2);
    std::vector<at::Tensor> saved = SavedList(h1);
    for (const at::Tensor& t : SavedList(h2)) saved.push_back(t);
    ctx->save_for_backward(saved);
    ctx->saved_data["training"] = training;
    ctx->saved_data["dilation"] = c10::IValue(dilation);
    return f2.y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const at::Tensor& dy = grads[0];
    torch::autograd::variable_list out(21);
    if (!dy.defined()) return out;
    TORCH_CHECK(!c10::GradMode::is_enabled(), "kshare::convmixer_block", kNoSecondDerivative);
    auto v = ctx->get_saved_variables();
    const bool training = ctx->saved_data["training"].toBool();
    const HalfSaved h1 = FromSaved(ConvKind::kDepthwise, training, ctx->saved_data["dilation"].toIntVector(), v, 0);
    const HalfSaved h2 = FromSaved(ConvKind::kPointwise, training, {1, 1}, v, 7);
    // `out` is indexed by argument: 0 x, 1 dw weight, 2 dw bias, 4 bn1 weight, 5 bn1 bias; 8 pw
    // weight, 9 pw bias, 10 bn2 weight, 11 bn2 bias. needs_input_grad by tensor input (the
    // dilation is not one): 0 x, 1 dw weight, 2 dw bias, 3 bn1 weight, 4 bn1 bias, 7 pw weight.
    bool needFirst = false;
    for (int i : {0, 1, 2, 3, 4}) needFirst = needFirst || ctx->needs_input_grad(i);
    // The depthwise half's first pass, per NCHW row, from the 1x1 half's input gradient.
    const bool rows = training && needFirst && h1.a.is_contiguous();
    std::vector<double> sums(rows ? 2 * h1.x.size(0) * h1.x.size(1) : 0);
    const NextRowSums next{h1.a, h1.mean, h1.invstd, sums.data()};
    HalfGrads g2 = HalfBackward(h2, dy, needFirst, ctx->needs_input_grad(7), nullptr, rows ? &next : nullptr);
    out[8] = g2.dweight;
    out[9] = g2.dbias;
    out[10] = g2.dbnWeight;
    out[11] = g2.dbnBias;
    if (!needFirst) return out;
    if (g2.nextSummed) rowSumHandOffs.fetch_add(1, std::memory_order_relaxed);
    HalfGrads g1 = HalfBackward(h1, g2.dx, ctx->needs_input_grad(0), ctx->needs_input_grad(1), g2.nextSummed ? sums.data() : nullptr,
                                nullptr);
    out[0] = g1.dx;
    out[1] = g1.dweight;
    out[2] = g1.dbias;
    out[4] = g1.dbnWeight;
    out[5] = g1.dbnBias;
    return out;
  }
};

at::Tensor BlockAutograd(const at::Tensor& x, const at::Tensor& dwWeight, const at::Tensor& dwBias, at::IntArrayRef dilation,
                         const at::Tensor& bn1Weight, const at::Tensor& bn1Bias, const at::Tensor& rm1, const at::Tensor& rv1,
                         const at::Tensor& pwWeight, const at::Tensor& pwBias, const at::Tensor& bn2Weight, const at::Tensor& bn2Bias,
                         const at::Tensor& rm2, const at::Tensor& rv2, bool training, double momentum1, double momentum2, double eps1,
                         double eps2) {
  const bool gradient = at::GradMode::is_enabled() &&
                        AnyRequiresGrad({&x, &dwWeight, &dwBias, &bn1Weight, &bn1Bias, &pwWeight, &pwBias, &bn2Weight, &bn2Bias});
  return ConvMixerBlock::apply(x, dwWeight, dwBias, dilation.vec(), bn1Weight, bn1Bias, rm1.detach(), rv1.detach(), pwWeight, pwBias,
                               bn2Weight, bn2Bias, rm2.detach(), rv2.detach(), training, momentum1, momentum2, eps1, eps2,
                               training && gradient, gradient);
}

at::Tensor BlockCpu(const at::Tensor& x, const at::Tensor& dwWeight, const at::Tensor& dwBias, at::IntArrayRef dilation,
                    const at::Tensor& bn1Weight, const at::Tensor& bn1Bias, const at::Tensor& rm1, const at::Tensor& rv1,
                    const at::Tensor& pwWeight, const at::Tensor& pwBias, const at::Tensor& bn2Weight, const at::Tensor& bn2Bias,
                    const at::Tensor& rm2, const at::Tensor& rv2, bool training, double momentum1, double momentum2, double eps1,
                    double eps2) {
  at::Tensor z;
  const at::Tensor y1 = ForwardBoth(ConvKind::kDepthwise, x, dwWeight, dwBias, dilation, bn1Weight, bn1Bias, rm1, rv1, training,
                                    momentum1, eps1, false, false, &z)
                            .y;
  return ForwardBoth(ConvKind::kPointwise, y1, pwWeight, pwBias, {1, 1}, bn2Weight, bn2Bias, rm2, rv2, training, momentum2, eps2, false,
                     false, &z)
      .y;
}

// A run of ConvMixer blocks in training, one autograd node for the run:
//   kshare::convmixer_training_blocks(input, params, running_stats, dilation, momentum, eps)
// params: 8 a block (dw weight, dw bias, bn1 weight, bn1 bias, pw weight, pw bias, bn2 weight,
// bn2 bias); running_stats: 4 a block (bn1 mean, var, bn2 mean, var), updated in place;
// momentum and eps: 2 a block. Each block is convmixer_block in training, with its kernels, so
// the numbers are those of convmixer_block a block, bit for bit.
//
// Why: between two blocks of a run nothing else reads a block's output, so it need not be stored.
// Each block's 1x1 half leaves its output as its kept GELU output g with the BatchNorm's scale and
// shift (kshare::ChannelAffine), and the next block forms fma(g, scale, shift) where it reads its
// input (the depthwise plane copy, the residual add, the depthwise weight gradient): the 1x1 half's
// output pass over memory goes. In the backward, the next block's depthwise input gradient, which
// is that BatchNorm's output gradient, is summed row by row for it as each plane is finished (in
// L1), so that BatchNorm's first backward pass over memory goes too. Where the lazy input does not
// apply (the portable row kernels, a depthwise kernel the plane kernel lacks) a block's output is
// stored as convmixer_block stores it.
//
// Measured speed (2-core Intel Xeon, against convmixer_block a block in one process, `node
// dist/bench/route-ab.js --only training-run --threads 1,2 --rounds 4`; 1 thread / 2 threads):
// training steps at batch 32, ConvMixer-64/4 shared x1.06 / x1.06, ConvMixer-256/8 shared x1.07
// (334.2 against 357.4 ms) / x1.06 (181.7 against 192.2). The bound measured before building it
// (the two passes skipped outright, wrong numbers): ~6-7 % (bench/cpu-kernels-notes.md,
// fourteenth session). The row sums still read the kept GELU output from memory, so the hand-off
// saves the pass's read of the gradient only.
//
// Each block's residual-half output r (the 1x1's input, kept for the 1x1's weight gradient) is
// written image by image just before the 1x1 product reads that image (kshare_gbn::Forward's
// writeImage, kshare_pw::ForwardRows' prepare), by the thread that multiplies it, so the product
// reads r from L2 instead of memory (a standalone sgemm took 191.8 us on a hot image, 206.6
// streaming). Same kernels, same numbers. ConvMixer-256/8 shared step, one process alternating
// with a throwaway switch that wrote r in a pass of its own (2-core Xeon, twenty-second session):
// 1 thread 251.7-272.1 ms against 259.6-275.0 (faster in 5 rounds of 6), 2 threads faster in 17
// rounds of 26 (medians 143.3 against 146.0 in the longer set, 16 rounds of 8 steps).
constexpr int64_t kRunParams = 8, kRunStats = 4, kRunSaved = 16;

// Whether block b's input can be held lazily: its depthwise half reads it through the plane
// kernel, and the row kernels use fused multiply-adds as that reader does.
bool RunLazyInput(const at::Tensor& x, const at::Tensor& dwWeight, at::IntArrayRef dilation) {
  return kshare_gbn::AffineIsFma() && x.dim() == 4 && x.is_contiguous() && kshare_dw::PlanesApply(x, dwWeight, dilation);
}

void CheckRun(const char* op, const at::Tensor& x, at::TensorList params, at::TensorList stats, at::ArrayRef<double> momentum,
              at::ArrayRef<double> eps) {
  const int64_t blocks = static_cast<int64_t>(params.size()) / kRunParams;
  TORCH_CHECK(blocks >= 1 && static_cast<int64_t>(params.size()) == blocks * kRunParams, op, ": params must hold ", kRunParams,
              " tensors a block, got ", params.size());
  TORCH_CHECK(static_cast<int64_t>(stats.size()) == blocks * kRunStats, op, ": running_stats must hold ", kRunStats,
              " tensors a block (", blocks * kRunStats, "), got ", stats.size());
  TORCH_CHECK(static_cast<int64_t>(momentum.size()) == 2 * blocks && static_cast<int64_t>(eps.size()) == 2 * blocks, op,
              ": momentum and eps must hold 2 values a block (", 2 * blocks, "), got ", momentum.size(), " and ", eps.size());
  TORCH_CHECK(x.dim() == 4, op, ": input must be (N, C, H, W), got ", x.sizes());
  for (int64_t b = 0; b < blocks; b++) {
    const at::Tensor& pw = params[b * kRunParams + 4];
    TORCH_CHECK(pw.dim() == 4 && pw.size(0) == x.size(1) && pw.size(1) == x.size(1), op, ": block ", b,
                "'s 1x1 weight must be [C, C, 1, 1] for input ", x.sizes(), ", got ", pw.sizes());
  }
}

// sum += g, element by element (the same float additions as at::add): a plain loop where both
// are dense float32, since ATen's add of a 256 x 256 gradient wakes libgomp's threads at 2 threads.
// sum is a gradient this backward made, not yet returned.
void AddInto(at::Tensor& sum, const at::Tensor& g) {
  if (sum.scalar_type() != at::kFloat || g.scalar_type() != at::kFloat || !sum.is_contiguous() || !g.is_contiguous() ||
      sum.sizes() != g.sizes()) {
    sum.add_(g);
    return;
  }
  float* s = sum.data_ptr<float>();
  const float* p = g.data_ptr<float>();
  for (int64_t i = 0, n = sum.numel(); i < n; i++) s[i] += p[i];
}

struct ConvMixerTrainingRun : public torch::autograd::Function<ConvMixerTrainingRun> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, at::TensorList params,
                            std::vector<at::Tensor> stats, std::vector<int64_t> dilation, std::vector<double> momentum,
                            std::vector<double> eps) {
    const int64_t blocks = static_cast<int64_t>(params.size()) / kRunParams;
    std::vector<bool> lazyIn(blocks, false);
    for (int64_t b = 1; b < blocks; b++) lazyIn[b] = RunLazyInput(x, params[b * kRunParams], dilation);
    std::vector<at::Tensor> saved;
    saved.reserve(blocks * kRunSaved);
    const kshare_pw::WeightPackScope packs;  // a shared 1x1 kernel packed once for the run
    at::Tensor in = x, inScale, inShift;
    for (int64_t b = 0; b < blocks; b++) {
      const at::Tensor* p = &params[b * kRunParams];
      const at::Tensor* st = &stats[b * kRunStats];
      const kshare::ChannelAffine affine{lazyIn[b] ? inScale.data_ptr<float>() : nullptr, lazyIn[b] ? inShift.data_ptr<float>() : nullptr};
      const bool lazyOut = b + 1 < blocks && lazyIn[b + 1];
      at::Tensor z1, z2;
      // The residual half's output, the 1x1's input, is written image by image just before the
      // 1x1 product reads it (from cache instead of memory), where both halves take their row
      // kernels (same kernels, same numbers).
      const bool defer = RowsApply(ConvKind::kDepthwise, in, p[0], dilation) && RowsApply(ConvKind::kPointwise, in, p[4], {1, 1});
      kshare_gbn::Forward f1 = ForwardBoth(ConvKind::kDepthwise, in, p[0], p[1], dilation, p[2], p[3], st[0], st[1], true,
                                           momentum[2 * b], eps[2 * b], true, false, &z1, lazyIn[b] ? &affine : nullptr, false, defer);
      kshare_gbn::Forward f2 = ForwardBoth(ConvKind::kPointwise, f1.y, p[4], p[5], {1, 1}, p[6], p[7], st[2], st[3], true,
                                           momentum[2 * b + 1], eps[2 * b + 1], true, false, &z2, nullptr, lazyOut, false,
                                           defer ? &f1.writeImage : nullptr);
      if (defer) deferredOutputs.fetch_add(1, std::memory_order_relaxed);
      for (const at::Tensor& t : SavedList(SaveHalf(ConvKind::kDepthwise, true, dilation, in, p[0], p[1], p[2], f1, z1))) saved.push_back(t);
      for (const at::Tensor& t : SavedList(SaveHalf(ConvKind::kPointwise, true, {1, 1}, f1.y, p[4], p[5], p[6], f2, z2))) saved.push_back(t);
      saved.push_back(lazyIn[b] ? inScale : at::Tensor());
      saved.push_back(lazyIn[b] ? inShift : at::Tensor());
      if (lazyIn[b]) runLazyInputs.fetch_add(1, std::memory_order_relaxed);
      in = lazyOut ? f2.g : f2.y;
      inScale = f2.scale;
      inShift = f2.shift;
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["dilation"] = c10::IValue(dilation);
    // A parameter given more than once (a kernel shared between blocks): the first position of
    // each, so the backward can sum its gradients itself.
    std::vector<int64_t> first(params.size());
    for (size_t j = 0; j < params.size(); j++) {
      first[j] = static_cast<int64_t>(j);
      for (size_t i = 0; i < j; i++)
        if (params[i].unsafeGetTensorImpl() == params[j].unsafeGetTensorImpl()) {
          first[j] = static_cast<int64_t>(i);
          break;
        }
    }
    ctx->saved_data["first"] = c10::IValue(first);
    return in;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    const auto v = ctx->get_saved_variables();
    const int64_t blocks = static_cast<int64_t>(v.size()) / kRunSaved, nParams = blocks * kRunParams;
    // Inputs: input, the params one by one, then running_stats, dilation, momentum, eps.
    torch::autograd::variable_list out(1 + nParams + 4);
    at::Tensor dy = grads[0];
    if (!dy.defined()) return out;
    TORCH_CHECK(!c10::GradMode::is_enabled(), "kshare::convmixer_training_blocks", kNoSecondDerivative);
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    std::vector<at::Tensor> g(nParams);
    std::vector<double> handed;  // this block's 1x1 BatchNorm row sums, from the next block's backward
    bool haveHanded = false;
    const kshare_pw::WeightPackScope packs;
    for (int64_t b = blocks - 1; b >= 0; b--) {
      const HalfSaved h1 = FromSaved(ConvKind::kDepthwise, true, dilation, v, b * kRunSaved);
      const HalfSaved h2 = FromSaved(ConvKind::kPointwise, true, {1, 1}, v, b * kRunSaved + 7);
      const at::Tensor &inScale = v[b * kRunSaved + 14], &inShift = v[b * kRunSaved + 15];
      const int64_t N = h1.x.size(0), C = h1.x.size(1), HW = h1.x.size(2) * h1.x.size(3), rows = N * C;
      // The 1x1 half, summing the depthwise half's BatchNorm rows as convmixer_block does.
      const bool rowsHere = h1.a.is_contiguous();
      std::vector<double> sums(rowsHere ? 2 * rows : 0);
      const NextRowSums next{h1.a, h1.mean, h1.invstd, sums.data()};
      if (haveHanded) runRowSumHandOffs.fetch_add(1, std::memory_order_relaxed);
      HalfGrads g2 = HalfBackward(h2, dy, true, true, haveHanded ? handed.data() : nullptr, rowsHere ? &next : nullptr);
      // The depthwise half; with a lazily held input, its input gradient is the previous block's
      // 1x1 BatchNorm output gradient, summed here plane by plane.
      std::vector<double> prevSums;
      bool sent = false;
      kshare::ChannelAffine affine{nullptr, nullptr};
      kshare::RowSink planeSums;
      InputExtras extras;
      if (inScale.defined()) {
        const HalfSaved prev = FromSaved(ConvKind::kPointwise, true, {1, 1}, v, (b - 1) * kRunSaved + 7);
        const float *gp = prev.a.data_ptr<float>(), *mp = prev.mean.data_ptr<float>(), *isp = prev.invstd.data_ptr<float>();
        prevSums.resize(2 * rows);
        const kshare_gbn::RowSummer summer = kshare_gbn::RowSumKernel();
        planeSums = [&, gp, mp, isp, summer](int64_t r, const float* plane) {
          const int64_t c = r % C;
          summer(gp + r * HW, plane, HW, mp + c, isp + c, &prevSums[r], &prevSums[rows + r]);
        };
        affine = {inScale.data_ptr<float>(), inShift.data_ptr<float>()};
        extras = {&affine, &planeSums, &sent};
      }
      const bool needX = b > 0 || ctx->needs_input_grad(0);
      HalfGrads g1 = HalfBackward(h1, g2.dx, needX, true, g2.nextSummed ? sums.data() : nullptr, nullptr, extras);
      at::Tensor* gb = &g[b * kRunParams];
      gb[0] = g1.dweight;
      gb[1] = g1.dbias;
      gb[2] = g1.dbnWeight;
      gb[3] = g1.dbnBias;
      gb[4] = g2.dweight;
      gb[5] = g2.dbias;
      gb[6] = g2.dbnWeight;
      gb[7] = g2.dbnBias;
      dy = g1.dx;
      handed = std::move(prevSums);
      haveHanded = sent;
    }
    out[0] = dy;
    // A parameter given more than once gets one gradient, summed here in the order the autograd
    // engine adds the blocks' gradients when each block is a node of its own (the last block's
    // first), so the numbers are those of convmixer_block a block.
    const std::vector<int64_t> first = ctx->saved_data["first"].toIntVector();
    for (int64_t f = 0; f < nParams; f++) {
      if (first[f] != f) continue;
      at::Tensor sum;
      for (int64_t j = nParams - 1; j >= f; j--)
        if (first[j] == f && g[j].defined()) {
          if (sum.defined()) AddInto(sum, g[j]);
          else sum = g[j];
        }
      out[1 + f] = sum;
    }
    return out;
  }
};

at::Tensor TrainingRunCpu(const at::Tensor& x, at::TensorList params, at::TensorList stats, at::IntArrayRef dilation,
                          at::ArrayRef<double> momentum, at::ArrayRef<double> eps) {
  const char* op = "kshare::convmixer_training_blocks";
  CheckRun(op, x, params, stats, momentum, eps);
  at::Tensor y = x;
  for (size_t b = 0; b * kRunParams < params.size(); b++) {
    const at::Tensor* p = &params[b * kRunParams];
    const at::Tensor* st = &stats[b * kRunStats];
    y = BlockCpu(y, p[0], p[1], dilation, p[2], p[3], st[0], st[1], p[4], p[5], p[6], p[7], st[2], st[3], true, momentum[2 * b],
                 momentum[2 * b + 1], eps[2 * b], eps[2 * b + 1]);
  }
  return y;
}

at::Tensor TrainingRunAutograd(const at::Tensor& x, at::TensorList params, at::TensorList stats, at::IntArrayRef dilation,
                               at::ArrayRef<double> momentum, at::ArrayRef<double> eps) {
  const char* op = "kshare::convmixer_training_blocks";
  CheckRun(op, x, params, stats, momentum, eps);
  bool gradient = at::GradMode::is_enabled() && x.requires_grad();
  for (const at::Tensor& p : params) gradient = gradient || (at::GradMode::is_enabled() && p.requires_grad());
  if (!gradient) return TrainingRunCpu(x, params, stats, dilation, momentum, eps);
  // The running stats are updated in place but never differentiated: out of the autograd inputs.
  std::vector<at::Tensor> detached;
  for (const at::Tensor& t : stats) detached.push_back(t.detach());
  return ConvMixerTrainingRun::apply(x, params, detached, dilation.vec(), momentum.vec(), eps.vec());
}
#endif

at::Tensor Autograd(ConvKind k, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::IntArrayRef dilation,
                    const at::Tensor& bnWeight, const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv, bool training,
                    double momentum, double eps) {
  // gelu and gelu' are kept only when a backward can follow; the running stats are updated in
  // place but never differentiated, so they stay out of the autograd inputs.
  const bool gradient = at::GradMode::is_enabled() && AnyRequiresGrad({&x, &weight, &bias, &bnWeight, &bnBias});
  return ConvGeluBn::apply(static_cast<int64_t>(k), x, weight, bias, dilation.vec(), bnWeight, bnBias, rm.detach(), rv.detach(),
                           training, momentum, eps, training && gradient, gradient);
}

at::Tensor Cpu(ConvKind k, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::IntArrayRef dilation,
               const at::Tensor& bnWeight, const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv, bool training,
               double momentum, double eps) {
  at::Tensor z;
  return ForwardBoth(k, x, weight, bias, dilation, bnWeight, bnBias, rm, rv, training, momentum, eps, false, false, &z).y;
}

at::Tensor DepthwiseAutograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::IntArrayRef dilation,
                             const at::Tensor& bnWeight, const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv,
                             bool training, double momentum, double eps) {
  return Autograd(ConvKind::kDepthwise, x, weight, bias, dilation, bnWeight, bnBias, rm, rv, training, momentum, eps);
}

at::Tensor DepthwiseCpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::IntArrayRef dilation,
                        const at::Tensor& bnWeight, const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv, bool training,
                        double momentum, double eps) {
  return Cpu(ConvKind::kDepthwise, x, weight, bias, dilation, bnWeight, bnBias, rm, rv, training, momentum, eps);
}

#ifdef KSHARE_HAVE_DNNL
at::Tensor PointwiseAutograd(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& bnWeight,
                             const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum,
                             double eps) {
  return Autograd(ConvKind::kPointwise, x, weight, bias, {1, 1}, bnWeight, bnBias, rm, rv, training, momentum, eps);
}

at::Tensor PointwiseCpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& bnWeight,
                        const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum, double eps) {
  return Cpu(ConvKind::kPointwise, x, weight, bias, {1, 1}, bnWeight, bnBias, rm, rv, training, momentum, eps);
}
#endif

}  // namespace

int64_t kshare_block::RowSumHandOffs() { return rowSumHandOffs.load(std::memory_order_relaxed); }
int64_t kshare_block::RunLazyInputs() { return runLazyInputs.load(std::memory_order_relaxed); }
int64_t kshare_block::RunRowSumHandOffs() { return runRowSumHandOffs.load(std::memory_order_relaxed); }
int64_t kshare_block::RunDeferredOutputs() { return deferredOutputs.load(std::memory_order_relaxed); }

TORCH_LIBRARY_FRAGMENT(kshare, m) {
  m.def(
      "depthwise_gelu_bn_residual(Tensor input, Tensor weight, Tensor bias, int[2] dilation, Tensor bn_weight, Tensor bn_bias, "
      "Tensor(a!) running_mean, Tensor(b!) running_var, bool training, float momentum, float eps) -> Tensor");
#ifdef KSHARE_HAVE_DNNL
  m.def(
      "pointwise_gelu_bn(Tensor input, Tensor weight, Tensor bias, Tensor bn_weight, Tensor bn_bias, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, bool training, float momentum, float eps) -> Tensor");
  m.def(
      "convmixer_block(Tensor input, Tensor dw_weight, Tensor dw_bias, int[2] dilation, Tensor bn1_weight, Tensor bn1_bias, "
      "Tensor(a!) running_mean1, Tensor(b!) running_var1, Tensor pw_weight, Tensor pw_bias, Tensor bn2_weight, Tensor bn2_bias, "
      "Tensor(c!) running_mean2, Tensor(d!) running_var2, bool training, float momentum1, float momentum2, float eps1, float eps2) "
      "-> Tensor");
  m.def(
      "convmixer_training_blocks(Tensor input, Tensor[] params, Tensor(a!)[] running_stats, int[2] dilation, float[] momentum, "
      "float[] eps) -> Tensor");
#endif
}

TORCH_LIBRARY_IMPL(kshare, CPU, m) {
  m.impl("depthwise_gelu_bn_residual", DepthwiseCpu);
#ifdef KSHARE_HAVE_DNNL
  m.impl("pointwise_gelu_bn", PointwiseCpu);
  m.impl("convmixer_block", BlockCpu);
  m.impl("convmixer_training_blocks", TrainingRunCpu);
#endif
}

TORCH_LIBRARY_IMPL(kshare, Autograd, m) {
  m.impl("depthwise_gelu_bn_residual", DepthwiseAutograd);
#ifdef KSHARE_HAVE_DNNL
  m.impl("pointwise_gelu_bn", PointwiseAutograd);
  m.impl("convmixer_block", BlockAutograd);
  m.impl("convmixer_training_blocks", TrainingRunAutograd);
#endif
}
