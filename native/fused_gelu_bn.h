// The fused bias + GELU + BatchNorm2d passes (fused_gelu_bn.cc) for other kernels that build on
// them: the ConvMixer residual block (conv_gelu_bn.cc).
#pragma once
#include <ATen/ATen.h>

#include "cpu_kernel_common.h"

#include <functional>

namespace kshare_gbn {

struct Forward {
  at::Tensor y, mean, invstd;  // mean / invstd: what normalised y (batch stats or running stats)
  at::Tensor g, dg;            // training with keep: gelu(u) and gelu'(u), for the backward
  at::Tensor scale, shift;     // y = g * scale + shift per channel (training: g as kept)
  // With ForwardImpl's deferOutput: writes the rows of image n of y (n * C to n * C + C - 1), which
  // the pass writing y left undone; the caller calls it once for every image (in parallel).
  std::function<void(int64_t)> writeImage;
};

// Calls the function it is given with every NCHW row (n * C + c, H * W floats) of the input, in
// parallel and in any order: input that is produced row by row and never stored as a tensor
// (the depthwise plane kernel's output, native/conv_gelu_bn.cc).
using RowSource = std::function<void(const kshare::RowSink&)>;

// y = batch_norm(gelu(x + bias[c])) (+ residual, when defined: same shape, added in the pass
// that writes y). Training updates running_mean / running_var in place; `keep` keeps g and dg.
// With `rows` (NCHW only), x gives only the shape and the rows come from `rows`.
// NCHW training with keep, where AffineIsFma(), also: `residualAffine` says the residual tensor
// holds g of a BatchNorm whose output is the residual (kshare::ChannelAffine), and `lazyOutput`
// leaves y undefined for the caller to form from g, scale and shift (the pass writing y is skipped).
// NCHW training with keep, `deferOutput`: y is allocated but its pass is left to the caller,
// image by image through Forward::writeImage, with the same kernel and numbers (the 1x1 forward
// writes each image just before its product reads it, so it reads it from cache).
Forward ForwardImpl(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight, const at::Tensor& bnBias,
                    const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum, double eps, bool keep,
                    const at::Tensor& residual, const RowSource* rows = nullptr,
                    const kshare::ChannelAffine* residualAffine = nullptr, bool lazyOutput = false, bool deferOutput = false);

// Whether this CPU's row kernels (KSHARE_NATIVE_ISA allowing) form g * scale + shift with one
// rounding (FMA), so that a reader of a kshare::ChannelAffine tensor using FMA gets the numbers
// of the stored tensor: the vector kernels do, the portable ones do not.
bool AffineIsFma();

struct Grads {
  at::Tensor dx, dbias, dweight, dbnBias;
};

// Calls the function it is given with a producer of the input gradient's NCHW rows, which it
// calls for every row, in parallel and in any order, to consume each while in cache: a gradient
// that is never stored as a tensor (the 1x1 convolution's backward, native/conv_gelu_bn.cc).
using RowDrain = std::function<void(const kshare::RowProducer&)>;

// The backward without the residual (whose gradient is dy itself). Training: from ForwardImpl's
// kept g and dg (x is not read); eval: recomputed from x (the GELU input before the bias) and bias.
// With `drain` (training, NCHW only) the input gradient's rows go to `drain` and Grads.dx is
// left undefined.
// With `rowSums` (training, NCHW only): its first N * C values are sum(dy) and its next N * C
// sum(dy * xhat) over each NCHW row, as RowSums computes them, so the first pass over dy is
// skipped (the caller produced dy and summed each row while it was in cache).
Grads BackwardImpl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight,
                   const at::Tensor& mean, const at::Tensor& invstd, bool training, const at::Tensor& gKept,
                   const at::Tensor& dgKept, const RowDrain* drain = nullptr, const double* rowSums = nullptr);

// The training backward's first pass over `rows` consecutive NCHW rows of HW floats (one image's
// channels): for each row r, sdy[r] = sum(dy) and sdyx[r] = sum(dy * (g - mean[r]) * invstd[r]),
// g the rows of the kept GELU output. BackwardImpl combines the rows of a channel in image order.
void RowSums(const float* g, const float* dy, int64_t rows, int64_t HW, const float* mean, const float* invstd, double* sdy,
             double* sdyx);

// RowSums for one row at a time, the kernel looked up once (when RowSumKernel is called):
// sum(dy) and sum(dy * (g - *mean) * *invstd) over HW floats into *sdy and *sdyx, as RowSums.
struct RowSummer {
  void (*sums)(const float*, const float*, int64_t, const float*, const float*, float*, double*, float*, double*);
  void operator()(const float* g, const float* dy, int64_t HW, const float* mean, const float* invstd, double* sdy,
                  double* sdyx) const {
    *sdy = 0;
    *sdyx = 0;
    sums(g, dy, HW, mean, invstd, nullptr, sdy, nullptr, sdyx);
  }
};
RowSummer RowSumKernel();

// KSHARE_ROW_PREFETCH: how many floats ahead the row kernels fetch their rows (0 = no software
// prefetch; default 512), read now, as each operator call reads it.
int64_t RowPrefetchFloats();

// Eval mode's per-channel coefficients, as ForwardImpl computes them (in double, rounded to
// float): scale = weight / sqrt(rv + eps), shift = bnBias - rm * scale, and 1 / sqrt(rv + eps)
// into invstd unless it is null.
void EvalCoefficients(int64_t C, const float* weight, const float* bnBias, const float* rm, const float* rv, double eps, float* scale,
                      float* shift, float* invstd = nullptr);

// ForwardImpl's eval kernels for one NCHW row of HW floats (bias, scale and shift point at the
// row's channel): plain(z, y, HW, bias, scale, shift) writes y = gelu(z + *bias) * *scale +
// *shift, add(z, residual, y, ...) adds the residual's row too. The widest the CPU has, as
// ForwardImpl picks them (fetch once per call, not per row: the choice reads the environment).
struct EvalRowKernels {
  void (*plain)(const float* z, float* y, int64_t HW, const float* bias, const float* scale, const float* shift);
  void (*add)(const float* z, const float* residual, float* y, int64_t HW, const float* bias, const float* scale,
              const float* shift);
};
EvalRowKernels EvalRows();

}  // namespace kshare_gbn
