// BatchNorm2d for float32 CPU tensors, NCHW or channels-last, forward and backward, in three forms:
//   kshare::batch_norm_relu(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean,
//       Tensor(b!) running_var, bool training, float momentum, float eps) -> Tensor
//   = relu(batch_norm(input, ...)) (the conv -> BN -> ReLU of the SE-ResNets);
//   kshare::batch_norm(same arguments) -> Tensor = batch_norm(input, ...) (every other
//   BatchNorm2d where it applies, see src/tensor/ops/norm.ts);
//   kshare::batch_norm_pool(same arguments) -> (Tensor, Tensor) = (batch_norm(input, ...), its
//   mean over each (n, c) plane as [N, C]) (an SE block's bn2 and the SE's pooling: the mean is
//   summed as the output is written, and its gradient joins dy inside the backward's passes).
// torch.nn.BatchNorm2d's semantics: training normalises with the batch statistics (biased
// variance) and updates the running stats in place with momentum (unbiased variance); eval uses
// the running stats.
//
// Why: libtorch 1.13's NCHW batch_norm forward takes ~1.6 ns an element here (a ConvMixer or
// SE-ResNet activation of 2M floats: ~3 ms), and ReLU is another pass. Here the forward is two
// passes over memory (row statistics, then normalise + clamp) and the backward two (sums, then
// dx). Rows are (n, c) planes in memory order; per-row partial sums are combined per channel
// in a fixed order (Chan et al.), so results do not depend on the thread count. The loops are
// portable C++ (plain loops over 8 lanes the compiler vectorises, and GCC 4-float vector
// extensions for the backward's masked loops); the passes are memory-bound. Autograd keeps the
// input, and with the ReLU the output (as libtorch keeps the BN input and the ReLU output);
// ReLU's gradient passes where the output is > 0, as libtorch's.
// Channels-last: rows are pixels (C floats each), cut into blocks of at most 64 rows whose
// per-channel partial sums (float) are combined per channel in block order, in double; the
// output keeps the input's memory format. Why: with channels-last activations oneDNN runs the
// SE-ResNets' convolutions without converting to and from its blocked layout (88 reorders, 59 ms
// of a 1-thread d=2 step in NCHW; ONEDNN_VERBOSE=1), but libtorch's channels-last batch_norm took
// that and more back (bench/cpu-kernels-notes.md, "Session of 2026-12-03, tenth").
//
// Measured (1 thread, quiet machine, in-process against libtorch's batch_norm + relu, training,
// median CPU ms): (32,64,32,32) forward 0.80 / 4.26, backward 1.89 / 2.78; (32,128,16,16)
// 0.38 / 1.71 and 0.57 / 1.01; (32,256,8,8) 0.28 / 0.80 and 0.32 / 0.22 (slower there). On the
// SE-ResNet d=2 step the difference was within this machine's run-to-run spread (with the
// kernel 0.92 and 1.00 x PyTorch, without 0.98, one sitting; bench/cpu-kernels-notes.md).
// With batch_norm and batch_norm_pool for bn2 and native/channel_scale_add.cc for the block's
// tail, the step went from 497-502 to 482-488 ms (1 thread, alternating builds; notes, "Session
// of 2026-12-02, seventh").
// KSHARE_NATIVE_POISON=1 fills outputs with NaN before they are written (tests).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

#include "cpu_kernel_common.h"
#include "cpu_thread_pool.h"

// The forward's passes are plain loops for the compiler to vectorise (baseline SSE2 is enough
// for memory-bound passes); -O2 leaves them scalar, so this file's code is built at -O3.
#pragma GCC optimize("O3")
#include "cpu_vec4.h"  // after the pragma, so its helpers are built at -O3 too

namespace {

constexpr int kLanes = 8;

using namespace kshare::vec4;

// BN's output gradient dz from dy plus the row's share `off` of the pooled output's gradient
// (0 without it): masked by ReLU (y > 0) after a fused ReLU; without the ReLU y is never read.
template <bool kRelu>
inline V4 Dz4(const float* g, const float* y, V4 off) {
  return kRelu ? WherePositive(Load4(g) + off, Load4(y)) : Load4(g) + off;
}
template <bool kRelu>
inline float Dz(float g, float y, float off) {
  return !kRelu || y > 0.0f ? g + off : 0.0f;
}

using kshare::ChannelsLastOnly;
using kshare::LayoutOf;

at::Tensor NewLike(const at::Tensor& x) { return kshare::NewOutput(x.sizes(), x.options(), LayoutOf(x)); }

// Channels-last rows (pixels) are cut into blocks of at most 64 rows (and 16384 floats), whose
// per-channel partial sums stay in cache.
int64_t RowsPerBlock(int64_t C) { return std::max<int64_t>(1, std::min<int64_t>(64, 16384 / std::max<int64_t>(C, 1))); }

void Check(const char* op, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm, const at::Tensor& rv) {
  TORCH_CHECK(x.dim() == 4, op, ": input must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && (x.is_contiguous() || ChannelsLastOnly(x)), op,
              ": input must be a contiguous (NCHW or channels-last) float32 CPU tensor");
  const int64_t c = x.size(1);
  const std::pair<const char*, const at::Tensor*> params[] = {
      {"weight", &w}, {"bias", &b}, {"running_mean", &rm}, {"running_var", &rv}};
  for (auto& [name, t] : params) {
    TORCH_CHECK(t->defined() && t->dim() == 1 && t->size(0) == c && t->scalar_type() == at::kFloat && t->device().is_cpu() &&
                    t->is_contiguous(),
                op, ": ", name, " must be a contiguous float32 CPU tensor of shape [", c, "]");
  }
}

// Sum of p[0, n) over 8 lanes (the compiler vectorises the lane loop).
inline double RowSum(const float* p, int64_t n) {
  float s[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; l++) s[l] += p[i + l];
  for (; i < n; i++) s[0] += p[i];
  double total = 0;
  for (int l = 0; l < kLanes; l++) total += s[l];
  return total;
}

// Sum of squared deviations of p[0, n) from m.
inline double RowSqDev(const float* p, int64_t n, float m) {
  float q[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; l++) {
      const float d = p[i + l] - m;
      q[l] += d * d;
    }
  for (; i < n; i++) {
    const float d = p[i] - m;
    q[0] += d * d;
  }
  double total = 0;
  for (int l = 0; l < kLanes; l++) total += q[l];
  return total;
}

struct Forward {
  at::Tensor y, mean, invstd, pooled;  // pooled: y's mean over each (n, c) plane, [N, C], when asked
};

template <bool kRelu>
Forward ForwardImpl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm, const at::Tensor& rv,
                    bool training, double momentum, double eps, bool pool = false) {
  const char* op = kRelu ? "kshare::batch_norm_relu" : "kshare::batch_norm";
  Check(op, x, w, b, rm, rv);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), M = N * HW, rows = N * C;
  TORCH_CHECK(!training || M > 1, op, ": expected more than 1 value per channel when training, got input ",
              x.sizes());
  at::Tensor y = NewLike(x);
  at::Tensor mean = at::empty({C}, x.options()), invstd = at::empty({C}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  float *rmp = rm.data_ptr<float>(), *rvp = rv.data_ptr<float>();
  const bool cl = ChannelsLastOnly(x);
  const int64_t R = N * HW, rb = RowsPerBlock(C), nb = (R + rb - 1) / rb;  // channels-last row blocks
  if (training && cl) {
    std::vector<float> bsum(nb * C, 0.0f), bsq(nb * C, 0.0f), bmean(nb * C);
    kshare::ParallelFor(0, nb, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t k = lo; k < hi; k++) {
        const int64_t r0 = k * rb, r1 = std::min(R, r0 + rb);
        float *sum = &bsum[k * C], *sq = &bsq[k * C], *bm = &bmean[k * C];
        for (int64_t r = r0; r < r1; r++) {
          const float* p = xp + r * C;
          for (int64_t c = 0; c < C; c++) sum[c] += p[c];
        }
        for (int64_t c = 0; c < C; c++) bm[c] = sum[c] / static_cast<float>(r1 - r0);
        for (int64_t r = r0; r < r1; r++) {
          const float* p = xp + r * C;
          for (int64_t c = 0; c < C; c++) {
            const float d = p[c] - bm[c];
            sq[c] += d * d;
          }
        }
      }
    });
    for (int64_t c = 0; c < C; c++) {
      double mu, var;
      kshare::RowBlockMoments(C, c, R, rb, M, bsum.data(), bsq.data(), bmean.data(), &mu, &var);
      mp[c] = static_cast<float>(mu);
      ip[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
      rmp[c] = static_cast<float>(momentum * mu + (1 - momentum) * rmp[c]);
      rvp[c] = static_cast<float>(momentum * var * M / (M - 1) + (1 - momentum) * rvp[c]);
    }
  } else if (training) {
    std::vector<double> rsum(rows), rsq(rows);
    std::vector<float> rmean(rows);
    kshare::ParallelFor(0, rows, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; r++) {
        rsum[r] = RowSum(xp + r * HW, HW);
        rmean[r] = static_cast<float>(rsum[r] / HW);
        rsq[r] = RowSqDev(xp + r * HW, HW, rmean[r]);
      }
    });
    for (int64_t c = 0; c < C; c++) {
      double mu, var;
      kshare::ChannelMoments(
          N, M, [&](int64_t n) { const int64_t r = n * C + c; return kshare::PartMoments{double(HW), rsum[r], rsq[r], rmean[r]}; },
          &mu, &var);
      mp[c] = static_cast<float>(mu);
      ip[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
      rmp[c] = static_cast<float>(momentum * mu + (1 - momentum) * rmp[c]);
      rvp[c] = static_cast<float>(momentum * var * M / (M - 1) + (1 - momentum) * rvp[c]);
    }
  } else {
    for (int64_t c = 0; c < C; c++) {
      mp[c] = rmp[c];
      ip[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(rvp[c]) + eps));
    }
  }
  at::Tensor pooled = pool ? kshare::NewOutput({N, C}, x.options(), at::MemoryFormat::Contiguous) : at::Tensor();
  float* pp = pool ? pooled.data_ptr<float>() : nullptr;
  std::vector<float> scale(C), shift(C);
  for (int64_t c = 0; c < C; c++) {
    scale[c] = wp[c] * ip[c];
    shift[c] = bp[c] - mp[c] * scale[c];
  }
  if (cl) {
    // y = x * scale + shift ([relu]) row by row; with the pool, image by image, each channel's
    // sum over blocks of the image's pixels in float, the blocks' sums in double, in order.
    const auto normalise = [&](const float* p, float* q) {
      if (kRelu)
        for (int64_t c = 0; c < C; c++) q[c] = std::max(p[c] * scale[c] + shift[c], 0.0f);
      else
        for (int64_t c = 0; c < C; c++) q[c] = p[c] * scale[c] + shift[c];
    };
    if (pp) {
      kshare::ParallelFor(0, N, 1, [&](int64_t lo, int64_t hi) {
        std::vector<double> acc(C);
        std::vector<float> part(C);
        for (int64_t n = lo; n < hi; n++) {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t r0 = n * HW; r0 < (n + 1) * HW; r0 += rb) {
            std::fill(part.begin(), part.end(), 0.0f);
            for (int64_t r = r0; r < std::min((n + 1) * HW, r0 + rb); r++) {
              float* q = yp + r * C;
              normalise(xp + r * C, q);
              for (int64_t c = 0; c < C; c++) part[c] += q[c];
            }
            for (int64_t c = 0; c < C; c++) acc[c] += part[c];
          }
          for (int64_t c = 0; c < C; c++) pp[n * C + c] = static_cast<float>(acc[c] / HW);
        }
      });
    } else {
      kshare::ParallelFor(0, nb, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo * rb; r < std::min(R, hi * rb); r++) normalise(xp + r * C, yp + r * C);
      });
    }
    return {y, mean, invstd, pooled};
  }
  kshare::ParallelFor(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      const float k = scale[r % C], s = shift[r % C];
      const float* p = xp + r * HW;
      float* q = yp + r * HW;
      if (kRelu)
        for (int64_t i = 0; i < HW; i++) q[i] = std::max(p[i] * k + s, 0.0f);
      else
        for (int64_t i = 0; i < HW; i++) q[i] = p[i] * k + s;
      if (pp) pp[r] = static_cast<float>(RowSum(q, HW) / HW);  // the row is still in L1
    }
  });
  return {y, mean, invstd, pooled};
}

struct Grads {
  at::Tensor dx, dw, db;
};

// The backward's per-channel coefficients, dx = k1 * dz - k2 - k3 * (x - mean) in training and
// k1 * dz in eval, from each part's sums of dz and dz * (x - mean) (arrays [part][C], added up per
// channel in part order, in double); writes the BN bias and weight gradients.
struct Coefficients {
  std::vector<float> k1, k2, k3;
};
template <class T>
Coefficients BackwardCoefficients(int64_t C, int64_t parts, const T* dz, const T* dzx, int64_t M, const float* wp, const float* ip,
                                  bool training, float* dbp, float* dwp) {
  Coefficients k{std::vector<float>(C), std::vector<float>(C), std::vector<float>(C)};
  for (int64_t c = 0; c < C; c++) {
    double sdz = 0, sdzx = 0;
    for (int64_t p = 0; p < parts; p++) {
      sdz += dz[p * C + c];
      sdzx += dzx[p * C + c];
    }
    const double is = ip[c];
    dbp[c] = static_cast<float>(sdz);
    dwp[c] = static_cast<float>(sdzx * is);
    k.k1[c] = static_cast<float>(wp[c] * is);
    k.k2[c] = training ? static_cast<float>(wp[c] * is * sdz / M) : 0.0f;
    k.k3[c] = training ? static_cast<float>(wp[c] * is * is * is * sdzx / M) : 0.0f;
  }
  return k;
}

// BackwardImpl's channels-last passes (rows are pixels, C floats each; off: each (n, c)'s share
// of the pooled output's gradient, [N, C]): per row block, float sums of dz and dz * (x - mean)
// per channel, combined per channel in block order in double; then dx row by row.
template <bool kRelu>
void BackwardChannelsLast(int64_t N, int64_t C, int64_t HW, const float* xp, const float* yp, const float* gp, const float* wp,
                          const float* mp, const float* ip, const float* off, bool training, float* dxp, float* dwp, float* dbp) {
  const int64_t R = N * HW, M = R, rb = RowsPerBlock(C), nb = (R + rb - 1) / rb;
  std::vector<float> bdz(nb * C, 0.0f), bdzx(nb * C, 0.0f);
  kshare::ParallelFor(0, nb, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; k++) {
      float *sdz = &bdz[k * C], *sdzx = &bdzx[k * C];
      for (int64_t r = k * rb; r < std::min(R, (k + 1) * rb); r++) {
        const float *xr = xp + r * C, *yr = yp + r * C, *gr = gp + r * C, *o = off + (r / HW) * C;
        int64_t c = 0;
        for (; c + 4 <= C; c += 4) {
          const V4 d = Dz4<kRelu>(gr + c, yr + c, Load4(o + c));
          Store4(sdz + c, Load4(sdz + c) + d);
          Store4(sdzx + c, Load4(sdzx + c) + d * (Load4(xr + c) - Load4(mp + c)));
        }
        for (; c < C; c++) {
          const float d = Dz<kRelu>(gr[c], yr[c], o[c]);
          sdz[c] += d;
          sdzx[c] += d * (xr[c] - mp[c]);
        }
      }
    }
  });
  const Coefficients k = BackwardCoefficients(C, nb, bdz.data(), bdzx.data(), M, wp, ip, training, dbp, dwp);
  const std::vector<float>&k1 = k.k1, &k2 = k.k2, &k3 = k.k3;
  kshare::ParallelFor(0, nb, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo * rb; r < std::min(R, hi * rb); r++) {
      const float *xr = xp + r * C, *yr = yp + r * C, *gr = gp + r * C, *o = off + (r / HW) * C;
      float* out = dxp + r * C;
      int64_t c = 0;
      for (; c + 4 <= C; c += 4) {
        const V4 d = Dz4<kRelu>(gr + c, yr + c, Load4(o + c));
        Store4(out + c, Load4(k1.data() + c) * d - Load4(k2.data() + c) - Load4(k3.data() + c) * (Load4(xr + c) - Load4(mp + c)));
      }
      for (; c < C; c++) out[c] = k1[c] * Dz<kRelu>(gr[c], yr[c], o[c]) - k2[c] - k3[c] * (xr[c] - mp[c]);
    }
  });
}

// dz = dy (+ the pooled output's gradient / (H * W)) where y > 0 (everywhere without the ReLU); training: dx = w * invstd * (dz - mean(dz) - xhat * mean(dz * xhat));
// eval: dx = dz * w * invstd. dw = sum(dz * xhat), db = sum(dz) in both.
template <bool kRelu>
Grads BackwardImpl(const at::Tensor& dyIn, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w, const at::Tensor& mean,
                   const at::Tensor& invstd, bool training, const at::Tensor& dpooled = at::Tensor()) {
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), M = N * HW, rows = N * C;
  // An output the loss does not use arrives undefined: its gradient is zero.
  const bool cl = ChannelsLastOnly(x);
  const at::Tensor dy = dyIn.defined() ? dyIn.to(at::kFloat).contiguous(LayoutOf(x)) : at::zeros_like(x);
  std::vector<float> off(rows, 0.0f);  // each row's share of the pooled output's gradient
  if (dpooled.defined()) {
    const at::Tensor dp = dpooled.to(at::kFloat).contiguous();
    const float* dpp = dp.data_ptr<float>();
    for (int64_t r = 0; r < rows; r++) off[r] = static_cast<float>(dpp[r] / static_cast<double>(HW));
  }
  at::Tensor dx = NewLike(x), dw = at::empty({C}, x.options()), db = at::empty({C}, x.options());
  const float *xp = x.data_ptr<float>(), *gp = dy.data_ptr<float>(), *wp = w.data_ptr<float>();
  const float* yp = kRelu ? y.data_ptr<float>() : gp;  // not read without the ReLU
  const float *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  float *dxp = dx.data_ptr<float>(), *dwp = dw.data_ptr<float>(), *dbp = db.data_ptr<float>();
  if (cl) {
    BackwardChannelsLast<kRelu>(N, C, HW, xp, yp, gp, wp, mp, ip, off.data(), training, dxp, dwp, dbp);
    return {dx, dw, db};
  }
  // Pass 1, per row: sum(dz) and sum(dz * (x - mean)).
  std::vector<double> rdz(rows), rdzx(rows);
  kshare::ParallelFor(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      const float m = mp[r % C];
      const float *xr = xp + r * HW, *yr = yp + r * HW, *gr = gp + r * HW;
      V4 s0 = Splat(0), s1 = Splat(0), t0 = Splat(0), t1 = Splat(0);
      const V4 mv = Splat(m), ov = Splat(off[r]);
      int64_t i = 0;
      for (; i + 8 <= HW; i += 8) {
        const V4 d0 = Dz4<kRelu>(gr + i, yr + i, ov), d1 = Dz4<kRelu>(gr + i + 4, yr + i + 4, ov);
        s0 += d0;
        s1 += d1;
        t0 += d0 * (Load4(xr + i) - mv);
        t1 += d1 * (Load4(xr + i + 4) - mv);
      }
      double a = 0, c2 = 0;
      for (int l = 0; l < 4; l++) {
        a += s0[l] + s1[l];
        c2 += t0[l] + t1[l];
      }
      for (; i < HW; i++) {
        const float dz = Dz<kRelu>(gr[i], yr[i], off[r]);
        a += dz;
        c2 += dz * (xr[i] - m);
      }
      rdz[r] = a;
      rdzx[r] = c2;
    }
  });
  const Coefficients k = BackwardCoefficients(C, N, rdz.data(), rdzx.data(), M, wp, ip, training, dbp, dwp);
  const std::vector<float>&k1 = k.k1, &k2 = k.k2, &k3 = k.k3;
  kshare::ParallelFor(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      const int64_t c = r % C;
      const float a = k1[c], bb = k2[c], cc = k3[c], m = mp[c];
      const float *xr = xp + r * HW, *yr = yp + r * HW, *gr = gp + r * HW;
      float* out = dxp + r * HW;
      const V4 av = Splat(a), bv = Splat(bb), cv = Splat(cc), mv = Splat(m), ov = Splat(off[r]);
      int64_t i = 0;
      for (; i + 4 <= HW; i += 4) Store4(out + i, av * Dz4<kRelu>(gr + i, yr + i, ov) - bv - cv * (Load4(xr + i) - mv));
      for (; i < HW; i++) {
        const float dz = Dz<kRelu>(gr[i], yr[i], off[r]);
        out[i] = a * dz - bb - cc * (xr[i] - m);
      }
    }
  });
  return {dx, dw, db};
}

template <bool kRelu>
struct BatchNormAct : public torch::autograd::Function<BatchNormAct<kRelu>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                            const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum, double eps) {
    Forward f = ForwardImpl<kRelu>(x, w, b, rm, rv, training, momentum, eps);
    // Without the ReLU the backward never reads y: keep it out of the graph's memory.
    ctx->save_for_backward({x, kRelu ? f.y : at::Tensor(), w, f.mean, f.invstd});
    ctx->saved_data["training"] = training;
    return f.y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    Grads g = BackwardImpl<kRelu>(grads[0], s[0], s[1], s[2], s[3], s[4], ctx->saved_data["training"].toBool());
    return {g.dx, g.dw, g.db, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// BatchNorm that also returns its output's mean over each (n, c) plane, [N, C] (a
// squeeze-excitation block's pooling of bn2's output, summed in the same pass that writes it; in
// the backward the pooled gradient joins dy inside the BN backward's passes instead of being
// spread over a tensor and added to dy).
struct BatchNormPool : public torch::autograd::Function<BatchNormPool> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                                                const at::Tensor& b, const at::Tensor& rm, const at::Tensor& rv, bool training,
                                                double momentum, double eps) {
    Forward f = ForwardImpl<false>(x, w, b, rm, rv, training, momentum, eps, /*pool=*/true);
    ctx->save_for_backward({x, w, f.mean, f.invstd});
    ctx->saved_data["training"] = training;
    return {f.y, f.pooled};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    Grads g = BackwardImpl<false>(grads[0], s[0], at::Tensor(), s[1], s[2], s[3], ctx->saved_data["training"].toBool(), grads[1]);
    return {g.dx, g.dw, g.db, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> BatchNormPoolAutograd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                                         const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum,
                                                         double eps) {
  auto out = BatchNormPool::apply(x, w, b, rm.detach(), rv.detach(), training, momentum, eps);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> BatchNormPoolCpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                                    const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum,
                                                    double eps) {
  Forward f = ForwardImpl<false>(x, w, b, rm, rv, training, momentum, eps, /*pool=*/true);
  return {f.y, f.pooled};
}

template <bool kRelu>
at::Tensor BatchNormActAutograd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm,
                                const at::Tensor& rv, bool training, double momentum, double eps) {
  // The running stats are updated in place, never differentiated.
  return BatchNormAct<kRelu>::apply(x, w, b, rm.detach(), rv.detach(), training, momentum, eps);
}

template <bool kRelu>
at::Tensor BatchNormActCpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm,
                           const at::Tensor& rv, bool training, double momentum, double eps) {
  return ForwardImpl<kRelu>(x, w, b, rm, rv, training, momentum, eps).y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kshare, m) {
  m.def(
      "batch_norm_relu(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean, Tensor(b!) running_var, "
      "bool training, float momentum, float eps) -> Tensor");
  m.def(
      "batch_norm(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean, Tensor(b!) running_var, "
      "bool training, float momentum, float eps) -> Tensor");
  m.def(
      "batch_norm_pool(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean, Tensor(b!) running_var, "
      "bool training, float momentum, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kshare, CPU, m) {
  m.impl("batch_norm_relu", BatchNormActCpu<true>);
  m.impl("batch_norm", BatchNormActCpu<false>);
  m.impl("batch_norm_pool", BatchNormPoolCpu);
}
TORCH_LIBRARY_IMPL(kshare, Autograd, m) {
  m.impl("batch_norm_relu", BatchNormActAutograd<true>);
  m.impl("batch_norm", BatchNormActAutograd<false>);
  m.impl("batch_norm_pool", BatchNormPoolAutograd);
}
