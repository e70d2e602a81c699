// Fused conv bias + GELU (exact erf) + BatchNorm2d for float32 CPU tensors, forward and
// backward, as the operator
//   kshare::bias_gelu_batch_norm(Tensor input, Tensor bias, Tensor weight, Tensor bn_bias,
//       Tensor(a!) running_mean, Tensor(b!) running_var, bool training, float momentum, float eps)
// = batch_norm(gelu(input + bias[c]), ...) with torch.nn.BatchNorm2d's semantics: training uses
// the batch statistics (biased variance to normalise) and updates the running stats in place
// with momentum (unbiased variance); eval uses the running stats.
//
// Why fused: in libtorch 1.13 the three ops are separate passes over the activation, and GELU
// on a channels-last tensor and its backward take the slow scalar path. Here each channel's
// data (or a block of channels-last rows) is processed while it is in cache, with one erf/exp
// per element: the training forward computes gelu(u) and gelu'(u) together and keeps both for
// the backward (as much memory as libtorch, which keeps the GELU input and the BN input), so
// the backward is two passes over memory with no erf; eval recomputes them from the input.
//
// Measured speed (bench/cpu-kernels.ts, 2-core AMD EPYC, 1 thread, float32, quiet machine,
// against python3-torch 1.13 in the same run, process CPU time; history in
// bench/cpu-kernels-notes.md), in ms, fused / libtorch's bias add + GELU + batch_norm, NCHW:
//   AVX-512  (32,64,16,16)  train fwd 0.34 / 0.96, bwd 0.17 / 0.52; eval fwd 0.19 / 0.29, bwd 0.28 / 0.48
//            (8,256,32,32)  train fwd 1.35 / 4.83, bwd 1.15 / 3.90; eval fwd 0.69 / 1.40, bwd 1.53 / 4.11
//   AVX2     (32,64,16,16)  train fwd 0.53 / 0.94, bwd 0.26 / 0.45; eval fwd 0.34 / 0.28, bwd 0.51 / 0.43
//            (8,256,32,32)  train fwd 2.09 / 4.55, bwd 1.15 / 3.53; eval fwd 1.35 / 1.44, bwd 2.15 / 3.71
// Channels-last: libtorch's GELU takes its scalar path there (2.0 ms train or eval forward at
// the demo shape); this kernel ran at ~0.5 ms in earlier versions (not rerun).
// The portable path is about 25x slower than the AVX2 one (scalar std::erfc / std::exp).
//
// Vectorised with AVX-512 (avx512f + avx512dq) or AVX2/FMA, the widest the CPU has (checked
// once at run time), otherwise a portable one-float-at-a-time path; KSHARE_NATIVE_ISA=avx2
// caps it at AVX2 and KSHARE_NATIVE_ISA=generic forces the portable path (tests, benchmarks).
// Channels are processed in parallel with at::parallel_for (libtorch's intra-op threads).
// Results do not depend on the thread count: every reduction has a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <immintrin.h>

#include "cpu_kernel_common.h"
#include "cpu_thread_pool.h"
#include "fused_gelu_bn.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

namespace {

template <class F>
struct Pair {
  F nchw, cl;
};
using FwdGelu = void (*)(const float*, float*, float*, int64_t, const float*, float*, double*);
using SqDev = void (*)(const float*, int64_t, const float*, float*, double*);
using Affine = void (*)(const float*, float*, int64_t, const float*, const float*);
using FwdEval = void (*)(const float*, float*, int64_t, const float*, const float*, const float*);
using BwdSums = void (*)(const float*, const float*, int64_t, const float*, const float*, float*, double*, float*, double*);
using BwdPass2 = void (*)(const float*, const float*, const float*, float*, int64_t, const float*, const float*, const float*,
                          const float*, const float*, float*, double*);
using BwdEval = void (*)(const float*, const float*, float*, int64_t, const float*, const float*, const float*, const float*,
                         float*, double*, float*, double*, float*, double*);
using AffineAdd = void (*)(const float*, const float*, float*, int64_t, const float*, const float*);
using FwdEvalAdd = void (*)(const float*, const float*, float*, int64_t, const float*, const float*, const float*);
using AffineAddAffine = void (*)(const float*, const float*, float*, int64_t, const float*, const float*, const float*, const float*);
struct Kernels {
  Pair<FwdGelu> fwdGelu;
  Pair<SqDev> sqDev;
  Pair<Affine> affine;
  Pair<FwdEval> fwdEval;
  Pair<BwdSums> bwdSums;
  Pair<BwdPass2> bwdPass2;
  Pair<BwdEval> bwdEval;
  Pair<AffineAdd> affineAdd;
  Pair<FwdEvalAdd> fwdEvalAdd;
  Pair<AffineAddAffine> affineAddAffine;
};

// How far ahead (floats) the row kernels fetch their inputs and claim their outputs' lines
// (KSHARE_ROW_PREFETCH, RowPrefetchFloats below; stored here at each operator call, when the
// kernel table is looked up). A row is often short (an NCHW row of a 16 x 16 plane is 1 KiB) and
// the next one follows it in memory, but the hardware prefetcher starts over at each 4 KiB page
// and a row kernel runs once a row, between other work, so without this each row's first loads
// wait on memory. ConvMixer-256/8 shared training step (2-core Xeon, in one process): 2 threads
// 146.67 ms against 160.13 without (x1.09), 1 thread 285.61 against 295.77 (x1.04)
// (`node dist/bench/route-ab.js --only prefetch`, bench/results/prefetch-ab.json).
constexpr int64_t kDefaultRowPrefetch = 512;
std::atomic<int64_t> rowPrefetch{kDefaultRowPrefetch};
inline int64_t RowPrefetchAhead() { return rowPrefetch.load(std::memory_order_relaxed); }

using kshare::FetchLine;

namespace generic {
#define KS_SIMD 0
#include "fused_gelu_bn_simd.inc"
#undef KS_SIMD
}  // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define KS_SIMD 1
#include "fused_gelu_bn_simd.inc"
#undef KS_SIMD
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx2,fma")
namespace avx512 {
#define KS_SIMD 2
#include "fused_gelu_bn_simd.inc"
#undef KS_SIMD
}  // namespace avx512
#pragma GCC pop_options

// The widest instruction set the CPU has, capped by KSHARE_NATIVE_ISA (avx2 or generic).
const Kernels& kernels() {
  static const Kernels wide = avx512::table(), fast = avx2::table(), portable = generic::table();
  static const bool hasAvx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool hasAvx512 = hasAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  const kshare::IsaCap cap = kshare::NativeIsaCap();
  rowPrefetch.store(kshare_gbn::RowPrefetchFloats(), std::memory_order_relaxed);
  if (cap == kshare::IsaCap::kGeneric) return portable;
  if (cap == kshare::IsaCap::kAvx2) return hasAvx2 ? fast : portable;
  return hasAvx512 ? wide : hasAvx2 ? fast : portable;
}

at::Tensor newOutput(const at::Tensor& like, at::MemoryFormat fmt) { return kshare::NewOutput(like.sizes(), like.options(), fmt); }

// Geometry of an (N, C, H, W) float32 tensor in one of the two layouts the kernels handle.
struct Geom {
  int64_t N, C, HW, M;  // M = N * HW values per channel
  bool cl;
  at::MemoryFormat fmt;
};

Geom geomOf(const at::Tensor& x) {
  Geom g{x.size(0), x.size(1), x.size(2) * x.size(3), 0, false, at::MemoryFormat::Contiguous};
  g.M = g.N * g.HW;
  if (kshare::ChannelsLastOnly(x)) {
    g.cl = true;
    g.fmt = at::MemoryFormat::ChannelsLast;
  }
  return g;
}

// Channels-last data is cut into blocks of rows (pixels) small enough to stay in L1/L2 while
// several passes run over them; per-block partial sums are combined in a fixed order.
int64_t rowsPerBlock(int64_t C) { return std::max<int64_t>(1, 16384 / C); }

void checkArgs(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight, const at::Tensor& bnBias,
               const at::Tensor& rm, const at::Tensor& rv) {
  TORCH_CHECK(x.dim() == 4, "bias_gelu_batch_norm: input must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), "bias_gelu_batch_norm: input must be a float32 CPU tensor");
  const int64_t C = x.size(1);
  const std::pair<const char*, const at::Tensor*> params[] = {
      {"bias", &bias}, {"weight", &weight}, {"bn_bias", &bnBias}, {"running_mean", &rm}, {"running_var", &rv}};
  for (auto& [name, t] : params) {
    TORCH_CHECK(t->defined() && t->dim() == 1 && t->size(0) == C && t->scalar_type() == at::kFloat && t->device().is_cpu(),
                "bias_gelu_batch_norm: ", name, " must be a float32 CPU tensor of shape [", C, "]");
  }
  TORCH_CHECK(rm.is_contiguous() && rv.is_contiguous(), "bias_gelu_batch_norm: running stats must be contiguous");
}

using kshare_gbn::Forward;
using kshare_gbn::Grads;

Forward forwardImpl(const at::Tensor& xIn, const at::Tensor& biasIn, const at::Tensor& weightIn, const at::Tensor& bnBiasIn,
                    const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum, double eps, bool keep,
                    const at::Tensor& residualIn, const kshare_gbn::RowSource* rows, const kshare::ChannelAffine* residualAffine,
                    bool lazyOutput, bool deferOutput) {
  checkArgs(xIn, biasIn, weightIn, bnBiasIn, rm, rv);
  const Geom g = geomOf(xIn);
  TORCH_CHECK(!deferOutput || (training && keep && !g.cl && !lazyOutput),
              "bias_gelu_batch_norm: internal error: a deferred output outside the NCHW training forward");
  TORCH_CHECK((!residualAffine && !lazyOutput) || (training && keep && !g.cl && kshare_gbn::AffineIsFma()),
              "bias_gelu_batch_norm: internal error: a lazily held residual or output outside the NCHW training forward");
  TORCH_CHECK(!residualAffine || residualIn.defined(), "bias_gelu_batch_norm: internal error: a residual affine without a residual");
  TORCH_CHECK(!training || g.M > 1, "bias_gelu_batch_norm: expected more than 1 value per channel when training, got input ",
              xIn.sizes());
  TORCH_CHECK(!rows || !g.cl, "bias_gelu_batch_norm: internal error: a row source with a channels-last input");
  // With a row source, xIn only gives the shape: its rows come from `rows`.
  const at::Tensor x = rows ? xIn : xIn.contiguous(g.fmt);
  TORCH_CHECK(!residualIn.defined() || (residualIn.sizes() == xIn.sizes() && residualIn.scalar_type() == at::kFloat &&
                                        residualIn.device().is_cpu()),
              "bias_gelu_batch_norm: residual must be a float32 CPU tensor shaped like the input ", xIn.sizes());
  const at::Tensor residual = residualIn.defined() ? residualIn.contiguous(g.fmt) : at::Tensor();
  const float* resp = residual.defined() ? residual.data_ptr<float>() : nullptr;
  const at::Tensor bias = biasIn.contiguous(), weight = weightIn.contiguous(), bnBias = bnBiasIn.contiguous();
  // lazyOutput: y is left to the caller as scale * g + shift (kshare::ChannelAffine) and not written.
  at::Tensor y = lazyOutput ? at::Tensor() : newOutput(x, g.fmt);
  at::Tensor mean = at::empty({g.C}, x.options()), invstd = at::empty({g.C}, x.options());
  at::Tensor scale = at::empty({g.C}, x.options()), shift = at::empty({g.C}, x.options());
  const float *xp = rows ? nullptr : x.data_ptr<float>(), *bp = bias.data_ptr<float>(), *wp = weight.data_ptr<float>(),
              *bbp = bnBias.data_ptr<float>();
  float *yp = lazyOutput ? nullptr : y.data_ptr<float>(), *meanp = mean.data_ptr<float>(), *isp = invstd.data_ptr<float>();
  float *scp = scale.data_ptr<float>(), *shp = shift.data_ptr<float>();
  float *rmp = rm.data_ptr<float>(), *rvp = rv.data_ptr<float>();
  const Kernels& K = kernels();
  const int64_t N = g.N, C = g.C, HW = g.HW, M = g.M;
  // NCHW: body(r, row) for every (n, c) row r in parallel, from x or from the row source (only
  // that path goes through a std::function).
  auto forRows = [&](int64_t grain, const auto& body) {
    if (rows) {
      (*rows)(kshare::RowSink(body));
      return;
    }
    kshare::ParallelFor(0, N * C, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; r++) body(r, xp + r * HW);
    });
  };

  // Per channel: normalisation from mean / var, and the running-stat update (as libtorch: in
  // double, running_var with the unbiased variance).
  auto finish = [&](int64_t c, double mu, double var) {
    double is = 1.0 / std::sqrt(var + eps);
    meanp[c] = static_cast<float>(mu);
    isp[c] = static_cast<float>(is);
    scp[c] = static_cast<float>(wp[c] * is);
    shp[c] = static_cast<float>(bbp[c] - mu * wp[c] * is);
    rmp[c] = static_cast<float>(momentum * mu + (1 - momentum) * rmp[c]);
    rvp[c] = static_cast<float>(momentum * var * M / (M - 1) + (1 - momentum) * rvp[c]);
  };

  if (!training) {
    kshare_gbn::EvalCoefficients(C, wp, bbp, rmp, rvp, eps, scp, shp, isp);
    std::copy(rmp, rmp + C, meanp);
    if (!g.cl) {
      forRows(1, [&](int64_t nc, const float* z) {
        const int64_t c = nc % C;
        if (resp) K.fwdEvalAdd.nchw(z, resp + nc * HW, yp + nc * HW, HW, bp + c, scp + c, shp + c);
        else K.fwdEval.nchw(z, yp + nc * HW, HW, bp + c, scp + c, shp + c);
      });
    } else {
      const int64_t R = N * HW, rb = rowsPerBlock(C);
      kshare::ParallelFor(0, (R + rb - 1) / rb, 1, [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; k++)
          for (int64_t r = k * rb; r < std::min(R, (k + 1) * rb); r++) {
            if (resp) K.fwdEvalAdd.cl(xp + r * C, resp + r * C, yp + r * C, C, bp, scp, shp);
            else K.fwdEval.cl(xp + r * C, yp + r * C, C, bp, scp, shp);
          }
      });
    }
    return {y, mean, invstd, {}, {}, scale, shift};
  }

  // With keep, gelu(u) and gelu'(u) go to tensors of their own for the backward (as libtorch
  // keeps the GELU and BatchNorm inputs), which then needs no erf; otherwise g is written to y
  // and normalised in place.
  at::Tensor gKept = keep ? newOutput(x, g.fmt) : at::Tensor(), dgKept = keep ? newOutput(x, g.fmt) : at::Tensor();
  float* gp = keep ? gKept.data_ptr<float>() : yp;
  float* dgp = keep ? dgKept.data_ptr<float>() : nullptr;
  if (!g.cl) {
    // Rows (one (n, c) plane each) in memory order, so the passes stream: per row, gelu and its
    // sum, then the squared deviations from the row's own mean while the row is in L1; rows are
    // combined per channel in a fixed order (Chan et al.), whatever the thread count. (Walking
    // one channel's N planes instead, C * H * W floats apart, measured slower: the planes
    // conflict in cache and defeat the prefetcher.)
    const int64_t nRows = N * C;
    std::vector<double> rsum(nRows), rsq(nRows);
    std::vector<float> rmean(nRows);
    forRows(16, [&](int64_t r, const float* z) {
      const int64_t c = r % C, o = r * HW;
      double sum = 0, sq = 0;
      K.fwdGelu.nchw(z, gp + o, dgp ? dgp + o : nullptr, HW, bp + c, nullptr, &sum);
      const float rm = static_cast<float>(sum / HW);
      K.sqDev.nchw(gp + o, HW, &rm, nullptr, &sq);
      rsum[r] = sum;
      rsq[r] = sq;
      rmean[r] = rm;
    });
    for (int64_t c = 0; c < C; c++) {
      double mu, var;
      kshare::ChannelMoments(
          N, M, [&](int64_t n) { const int64_t r = n * C + c; return kshare::PartMoments{double(HW), rsum[r], rsq[r], rmean[r]}; },
          &mu, &var);
      finish(c, mu, var);
    }
    // The pass writing y over rows [b, e); what it reads is captured by value (the tensors too), so
    // a deferred call after this function returns finds it all alive.
    const Kernels* Kp = &K;
    const float *resScale = residualAffine ? residualAffine->scale : nullptr, *resShift = residualAffine ? residualAffine->shift : nullptr;
    auto writeRows = [Kp, gp, resp, yp, scp, shp, resScale, resShift, C, HW](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; r++) {
        const int64_t c = r % C, o = r * HW;
        if (resScale) Kp->affineAddAffine.nchw(gp + o, resp + o, yp + o, HW, scp + c, shp + c, resScale + c, resShift + c);
        else if (resp) Kp->affineAdd.nchw(gp + o, resp + o, yp + o, HW, scp + c, shp + c);
        else Kp->affine.nchw(gp + o, yp + o, HW, scp + c, shp + c);
      }
    };
    if (deferOutput) {
      Forward f{y, mean, invstd, gKept, dgKept, scale, shift};
      // residualAffine's scale and shift belong to the caller, which keeps them until every image is written.
      f.writeImage = [writeRows, keepAlive = std::array<at::Tensor, 5>{y, gKept, residual, scale, shift}, C](int64_t n) {
        writeRows(n * C, (n + 1) * C);
      };
      return f;
    }
    if (!lazyOutput) kshare::ParallelFor(0, nRows, 16, writeRows);
  } else {
    // Blocks of rows: gelu + block sums, then the block's squared deviations from its own mean
    // while it is in cache; blocks are combined with Chan et al.'s pairwise formula.
    const int64_t R = N * HW, rb = rowsPerBlock(C), nb = (R + rb - 1) / rb;
    std::vector<float> bsum(nb * C, 0.0f), bsq(nb * C, 0.0f), bmean(nb * C);
    kshare::ParallelFor(0, nb, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; k++) {
        const int64_t r0 = k * rb, r1 = std::min(R, r0 + rb);
        float *s = &bsum[k * C], *q = &bsq[k * C], *bm = &bmean[k * C];
        for (int64_t r = r0; r < r1; r++) K.fwdGelu.cl(xp + r * C, gp + r * C, dgp ? dgp + r * C : nullptr, C, bp, s, nullptr);
        for (int64_t c = 0; c < C; c++) bm[c] = s[c] / static_cast<float>(r1 - r0);
        for (int64_t r = r0; r < r1; r++) K.sqDev.cl(gp + r * C, C, bm, q, nullptr);
      }
    });
    for (int64_t c = 0; c < C; c++) {
      double mu, var;
      kshare::RowBlockMoments(C, c, R, rb, M, bsum.data(), bsq.data(), bmean.data(), &mu, &var);
      finish(c, mu, var);
    }
    kshare::ParallelFor(0, nb, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; k++)
        for (int64_t r = k * rb; r < std::min(R, (k + 1) * rb); r++) {
          if (resp) K.affineAdd.cl(gp + r * C, resp + r * C, yp + r * C, C, scp, shp);
          else K.affine.cl(gp + r * C, yp + r * C, C, scp, shp);
        }
    });
  }
  return {y, mean, invstd, gKept, dgKept, scale, shift};
}

// Eval mode: x (the conv output) and bias; training: gKept and dgKept from the forward.
Grads backwardImpl(const at::Tensor& dyIn, const at::Tensor& xIn, const at::Tensor& bias, const at::Tensor& weight,
                   const at::Tensor& mean, const at::Tensor& invstd, bool training, const at::Tensor& gKept,
                   const at::Tensor& dgKept, const kshare_gbn::RowDrain* drain, const double* rowSums = nullptr) {
  TORCH_CHECK(!training || (gKept.defined() && dgKept.defined()),
              "bias_gelu_batch_norm: the training-mode backward needs the activations its forward keeps under grad mode");
  const Geom g = geomOf(xIn);
  TORCH_CHECK(!drain || (training && !g.cl), "bias_gelu_batch_norm: internal error: a row drain outside the NCHW training backward");
  TORCH_CHECK(!rowSums || (training && !g.cl), "bias_gelu_batch_norm: internal error: row sums outside the NCHW training backward");
  const at::Tensor x = xIn.contiguous(g.fmt), dy = dyIn.to(at::kFloat).contiguous(g.fmt);
  at::Tensor dx = drain ? at::Tensor() : newOutput(x, g.fmt);
  const int64_t N = g.N, C = g.C, HW = g.HW, M = g.M;
  auto opts = x.options();
  at::Tensor dbias = at::empty({C}, opts), dweight = at::empty({C}, opts), dbnBias = at::empty({C}, opts);
  if (kshare::PoisonOutputs()) for (auto* t : {&dbias, &dweight, &dbnBias}) t->fill_(std::numeric_limits<float>::quiet_NaN());
  const float *xp = x.data_ptr<float>(), *dyp = dy.data_ptr<float>(), *wp = weight.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;  // eval only
  const float *mp = mean.data_ptr<float>(), *isp = invstd.data_ptr<float>();
  float *dxp = drain ? nullptr : dx.data_ptr<float>(), *dbp = dbias.data_ptr<float>(), *dwp = dweight.data_ptr<float>(), *dbbp = dbnBias.data_ptr<float>();
  const Kernels& K = kernels();
  std::vector<float> k1(C);
  for (int64_t c = 0; c < C; c++) k1[c] = wp[c] * isp[c];
  const int64_t R = N * HW, rb = rowsPerBlock(C), nb = (R + rb - 1) / rb;

  if (!training) {
    if (!g.cl) {
      kshare::ParallelFor(0, C, 1, [&](int64_t b, int64_t e) {
        for (int64_t c = b; c < e; c++) {
          double sdy = 0, sdyx = 0, sdz = 0;
          for (int64_t n = 0; n < N; n++) {
            int64_t o = (n * C + c) * HW;
            K.bwdEval.nchw(xp + o, dyp + o, dxp + o, HW, bp + c, &k1[c], mp + c, isp + c, nullptr, &sdy, nullptr, &sdyx, nullptr, &sdz);
          }
          dbbp[c] = static_cast<float>(sdy);
          dwp[c] = static_cast<float>(sdyx);
          dbp[c] = static_cast<float>(sdz);
        }
      });
    } else {
      std::vector<float> acc(3 * nb * C, 0.0f);
      kshare::ParallelFor(0, nb, 1, [&](int64_t b, int64_t e) {
        for (int64_t k = b; k < e; k++) {
          float *a0 = &acc[(3 * k) * C], *a1 = a0 + C, *a2 = a1 + C;
          for (int64_t r = k * rb; r < std::min(R, (k + 1) * rb); r++)
            K.bwdEval.cl(xp + r * C, dyp + r * C, dxp + r * C, C, bp, k1.data(), mp, isp, a0, nullptr, a1, nullptr, a2, nullptr);
        }
      });
      for (int64_t c = 0; c < C; c++) {
        double s[3] = {0, 0, 0};
        for (int64_t k = 0; k < nb; k++)
          for (int j = 0; j < 3; j++) s[j] += acc[(3 * k + j) * C + c];
        dbbp[c] = static_cast<float>(s[0]);
        dwp[c] = static_cast<float>(s[1]);
        dbp[c] = static_cast<float>(s[2]);
      }
    }
    return {dx, dbias, dweight, dbnBias};
  }

  // Training: pass 1 reduces sum(dy) and sum(dy * xhat) from the kept g; pass 2 forms dx from
  // dy, g and gelu' and reduces sum(dx).
  const at::Tensor gk = gKept.contiguous(g.fmt), dgk = dgKept.contiguous(g.fmt);
  const float *gp = gk.data_ptr<float>(), *dgp = dgk.data_ptr<float>();
  if (!g.cl) {
    // Rows in memory order, per-row sums combined per channel in a fixed order (as the forward).
    const int64_t rows = N * C;
    std::vector<double> rdy(rowSums ? 0 : rows), rdyx(rowSums ? 0 : rows), rdz(rows);
    if (!rowSums) {
      kshare::ParallelFor(0, rows, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; r++) {
          const int64_t c = r % C, o = r * HW;
          K.bwdSums.nchw(gp + o, dyp + o, HW, mp + c, isp + c, nullptr, &rdy[r], nullptr, &rdyx[r]);
        }
      });
    }
    const double *sumDy = rowSums ? rowSums : rdy.data(), *sumDyx = rowSums ? rowSums + rows : rdyx.data();
    std::vector<float> mdy(C), mdyx(C);
    for (int64_t c = 0; c < C; c++) {
      double s0 = 0, s1 = 0;
      for (int64_t n = 0; n < N; n++) {
        s0 += sumDy[n * C + c];
        s1 += sumDyx[n * C + c];
      }
      dbbp[c] = static_cast<float>(s0);
      dwp[c] = static_cast<float>(s1);
      mdy[c] = static_cast<float>(s0 / M);
      mdyx[c] = static_cast<float>(s1 / M);
    }
    auto pass2 = [&](int64_t r, float* out) {
      const int64_t c = r % C, o = r * HW;
      double sdz = 0;
      K.bwdPass2.nchw(dyp + o, gp + o, dgp + o, out, HW, &k1[c], &mdy[c], &mdyx[c], mp + c, isp + c, nullptr, &sdz);
      rdz[r] = sdz;
    };
    if (drain) {
      (*drain)(kshare::RowProducer(pass2));
    } else {
      kshare::ParallelFor(0, rows, 16, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; r++) pass2(r, dxp + r * HW);
      });
    }
    for (int64_t c = 0; c < C; c++) {
      double s = 0;
      for (int64_t n = 0; n < N; n++) s += rdz[n * C + c];
      dbp[c] = static_cast<float>(s);
    }
  } else {
    std::vector<float> acc(2 * nb * C, 0.0f), accDz(nb * C, 0.0f);
    kshare::ParallelFor(0, nb, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; k++) {
        float *a0 = &acc[(2 * k) * C], *a1 = a0 + C;
        for (int64_t r = k * rb; r < std::min(R, (k + 1) * rb); r++)
          K.bwdSums.cl(gp + r * C, dyp + r * C, C, mp, isp, a0, nullptr, a1, nullptr);
      }
    });
    std::vector<float> mdy(C), mdyx(C);
    for (int64_t c = 0; c < C; c++) {
      double s0 = 0, s1 = 0;
      for (int64_t k = 0; k < nb; k++) {
        s0 += acc[(2 * k) * C + c];
        s1 += acc[(2 * k + 1) * C + c];
      }
      dbbp[c] = static_cast<float>(s0);
      dwp[c] = static_cast<float>(s1);
      mdy[c] = static_cast<float>(s0 / M);
      mdyx[c] = static_cast<float>(s1 / M);
    }
    kshare::ParallelFor(0, nb, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; k++)
        for (int64_t r = k * rb; r < std::min(R, (k + 1) * rb); r++)
          K.bwdPass2.cl(dyp + r * C, gp + r * C, dgp + r * C, dxp + r * C, C, k1.data(), mdy.data(), mdyx.data(), mp, isp,
                        &accDz[k * C], nullptr);
    });
    for (int64_t c = 0; c < C; c++) {
      double s = 0;
      for (int64_t k = 0; k < nb; k++) s += accDz[k * C + c];
      dbp[c] = static_cast<float>(s);
    }
  }
  return {dx, dbias, dweight, dbnBias};
}

// Autograd: input, conv bias, BN weight and BN bias get gradients; the running stats none.
struct BiasGeluBatchNorm : public torch::autograd::Function<BiasGeluBatchNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& bias,
                            const at::Tensor& weight, const at::Tensor& bnBias, const at::Tensor& rm, const at::Tensor& rv,
                            bool training, double momentum, double eps, bool keep) {
    Forward f = forwardImpl(x, bias, weight, bnBias, rm, rv, training, momentum, eps, keep, at::Tensor(), nullptr, nullptr, false, false);
    // Training keeps gelu and gelu' (f.g, f.dg), eval recomputes them from x.
    if (training) ctx->save_for_backward({f.g, f.dg, weight, f.mean, f.invstd});
    else ctx->save_for_backward({x, bias, weight, f.mean, f.invstd});
    ctx->saved_data["training"] = training;
    return f.y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    const bool training = ctx->saved_data["training"].toBool();
    Grads gr = training ? backwardImpl(grads[0], s[0], at::Tensor(), s[2], s[3], s[4], true, s[0], s[1], nullptr)
                        : backwardImpl(grads[0], s[0], s[1], s[2], s[3], s[4], false, at::Tensor(), at::Tensor(), nullptr);
    return {gr.dx,        gr.dbias,     gr.dweight,   gr.dbnBias,  at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor biasGeluBatchNormAutograd(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight, const at::Tensor& bnBias,
                                     const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum, double eps) {
  // The running stats are updated in place but never differentiated: keep them out of the
  // autograd inputs (they are plain buffers).
  // gelu and gelu' are kept only when a backward can follow.
  const bool keep = training && at::GradMode::is_enabled() &&
                    (x.requires_grad() || bias.requires_grad() || weight.requires_grad() || bnBias.requires_grad());
  return BiasGeluBatchNorm::apply(x, bias, weight, bnBias, rm.detach(), rv.detach(), training, momentum, eps, keep);
}

at::Tensor biasGeluBatchNormCpu(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight, const at::Tensor& bnBias,
                                const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum, double eps) {
  return forwardImpl(x, bias, weight, bnBias, rm, rv, training, momentum, eps, false, at::Tensor(), nullptr, nullptr, false, false).y;
}

}  // namespace

namespace kshare_gbn {

int64_t RowPrefetchFloats() {
  const char* p = std::getenv("KSHARE_ROW_PREFETCH");
  if (!p || !*p) return kDefaultRowPrefetch;
  char* end = nullptr;
  const long long v = std::strtoll(p, &end, 10);
  // native.ts rejects anything else when kshare loads; a bad value set later counts as unset.
  if (*end != '\0' || v < 0 || v > 65536) return kDefaultRowPrefetch;
  return v;
}

Forward ForwardImpl(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight, const at::Tensor& bnBias,
                    const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum, double eps, bool keep,
                    const at::Tensor& residual, const RowSource* rows, const kshare::ChannelAffine* residualAffine,
                    bool lazyOutput, bool deferOutput) {
  return forwardImpl(x, bias, weight, bnBias, rm, rv, training, momentum, eps, keep, residual, rows, residualAffine, lazyOutput,
                     deferOutput);
}

Grads BackwardImpl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& bias, const at::Tensor& weight,
                   const at::Tensor& mean, const at::Tensor& invstd, bool training, const at::Tensor& gKept,
                   const at::Tensor& dgKept, const RowDrain* drain, const double* rowSums) {
  return backwardImpl(dy, x, bias, weight, mean, invstd, training, gKept, dgKept, drain, rowSums);
}

void RowSums(const float* g, const float* dy, int64_t rows, int64_t HW, const float* mean, const float* invstd, double* sdy,
             double* sdyx) {
  // The kernel table once a call, not once a row: it reads KSHARE_NATIVE_ISA (65,536 getenv
  // calls a ConvMixer-256/8 training step when it was looked up per row, 0.37 % of the step).
  const BwdSums sums = kernels().bwdSums.nchw;
  for (int64_t r = 0; r < rows; r++) {
    sdy[r] = 0;
    sdyx[r] = 0;
    sums(g + r * HW, dy + r * HW, HW, mean + r, invstd + r, nullptr, sdy + r, nullptr, sdyx + r);
  }
}

RowSummer RowSumKernel() { return RowSummer{kernels().bwdSums.nchw}; }

// The portable rows compute a * b + c with two roundings; the vector ones with one (FMA), as
// kshare::ChannelAffine's readers do.
bool AffineIsFma() { return kernels().affine.nchw != &generic::affine<false>; }

void EvalCoefficients(int64_t C, const float* weight, const float* bnBias, const float* rm, const float* rv, double eps, float* scale,
                      float* shift, float* invstd) {
  for (int64_t c = 0; c < C; c++) {
    const double is = 1.0 / std::sqrt(static_cast<double>(rv[c]) + eps);
    scale[c] = static_cast<float>(weight[c] * is);
    shift[c] = static_cast<float>(bnBias[c] - rm[c] * weight[c] * is);
    if (invstd) invstd[c] = static_cast<float>(is);
  }
}

EvalRowKernels EvalRows() {
  const Kernels& K = kernels();
  return {K.fwdEval.nchw, K.fwdEvalAdd.nchw};
}

}  // namespace kshare_gbn

TORCH_LIBRARY_FRAGMENT(kshare, m) {
  m.def(
      "bias_gelu_batch_norm(Tensor input, Tensor bias, Tensor weight, Tensor bn_bias, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, bool training, float momentum, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(kshare, CPU, m) { m.impl("bias_gelu_batch_norm", biasGeluBatchNormCpu); }
TORCH_LIBRARY_IMPL(kshare, Autograd, m) { m.impl("bias_gelu_batch_norm", biasGeluBatchNormAutograd); }
