// Fused BatchNorm2d + ReLU for float32 NCHW (contiguous) CPU tensors, forward and backward, as
//   kshare::batch_norm_relu(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean,
//       Tensor(b!) running_var, bool training, float momentum, float eps) -> Tensor
// = relu(batch_norm(input, ...)) with torch.nn.BatchNorm2d's semantics: training normalises with
// the batch statistics (biased variance) and updates the running stats in place with momentum
// (unbiased variance); eval uses the running stats. The conv -> BN -> ReLU of the SE-ResNets.
//
// Why: libtorch 1.13's NCHW batch_norm forward takes ~1.6 ns an element here (a ConvMixer or
// SE-ResNet activation of 2M floats: ~3 ms), and ReLU is another pass. Here the forward is two
// passes over memory (row statistics, then normalise + clamp) and the backward two (sums, then
// dx). Rows are (n, c) planes in memory order; per-row partial sums are combined per channel
// in a fixed order (Chan et al.), so results do not depend on the thread count. The loops are
// portable C++ (plain loops over 8 lanes the compiler vectorises, and GCC 4-float vector
// extensions for the backward's masked loops); the passes are memory-bound. Autograd keeps the input and the output (as libtorch keeps the BN input and
// the ReLU output); ReLU's gradient passes where the output is > 0, as libtorch's.
//
// Measured (1 thread, quiet machine, in-process against libtorch's batch_norm + relu, training,
// median CPU ms): (32,64,32,32) forward 0.80 / 4.26, backward 1.89 / 2.78; (32,128,16,16)
// 0.38 / 1.71 and 0.57 / 1.01; (32,256,8,8) 0.28 / 0.80 and 0.32 / 0.22 (slower there). On the
// SE-ResNet d=2 step the difference was within this machine's run-to-run spread (with the
// kernel 0.92 and 1.00 x PyTorch, without 0.98, one sitting; bench/cpu-kernels-notes.md).
// KSHARE_NATIVE_POISON=1 fills outputs with NaN before they are written (tests).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "cpu_kernel_common.h"

// The forward's passes are plain loops for the compiler to vectorise (baseline SSE2 is enough
// for memory-bound passes); -O2 leaves them scalar, so this file's code is built at -O3.
#pragma GCC optimize("O3")

namespace {

constexpr int kLanes = 8;

// 4-float vectors (GCC vector extensions: SSE2 on x86-64, NEON on arm64) for the backward's
// masked loops, which GCC leaves scalar and branchy when written with a ?: or a bool cast.
typedef float V4 __attribute__((vector_size(16)));
typedef int I4 __attribute__((vector_size(16)));
inline V4 Load4(const float* p) {
  V4 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void Store4(float* p, V4 v) { __builtin_memcpy(p, &v, sizeof v); }
// g where y > 0, else 0 (ReLU's gradient mask).
inline V4 WherePositive(V4 g, V4 y) {
  const I4 m = y > V4{0, 0, 0, 0};
  return reinterpret_cast<V4>(reinterpret_cast<I4>(g) & m);
}
inline V4 Splat(float v) { return V4{v, v, v, v}; }

at::Tensor NewLike(const at::Tensor& x) { return kshare::NewOutput(x.sizes(), x.options(), at::MemoryFormat::Contiguous); }

void Check(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm, const at::Tensor& rv) {
  const char* op = "kshare::batch_norm_relu";
  TORCH_CHECK(x.dim() == 4, op, ": input must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && x.is_contiguous(), op,
              ": input must be a contiguous (NCHW) float32 CPU tensor");
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
  at::Tensor y, mean, invstd;
};

Forward ForwardImpl(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm, const at::Tensor& rv,
                    bool training, double momentum, double eps) {
  Check(x, w, b, rm, rv);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), M = N * HW, rows = N * C;
  TORCH_CHECK(!training || M > 1, "kshare::batch_norm_relu: expected more than 1 value per channel when training, got input ",
              x.sizes());
  at::Tensor y = NewLike(x);
  at::Tensor mean = at::empty({C}, x.options()), invstd = at::empty({C}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  float *rmp = rm.data_ptr<float>(), *rvp = rv.data_ptr<float>();
  if (training) {
    std::vector<double> rsum(rows), rsq(rows);
    std::vector<float> rmean(rows);
    at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
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
  std::vector<float> scale(C), shift(C);
  for (int64_t c = 0; c < C; c++) {
    scale[c] = wp[c] * ip[c];
    shift[c] = bp[c] - mp[c] * scale[c];
  }
  at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      const float k = scale[r % C], s = shift[r % C];
      const float* p = xp + r * HW;
      float* q = yp + r * HW;
      for (int64_t i = 0; i < HW; i++) q[i] = std::max(p[i] * k + s, 0.0f);
    }
  });
  return {y, mean, invstd};
}

struct Grads {
  at::Tensor dx, dw, db;
};

// dz = dy where y > 0; training: dx = w * invstd * (dz - mean(dz) - xhat * mean(dz * xhat));
// eval: dx = dz * w * invstd. dw = sum(dz * xhat), db = sum(dz) in both.
Grads BackwardImpl(const at::Tensor& dyIn, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w, const at::Tensor& mean,
                   const at::Tensor& invstd, bool training) {
  const at::Tensor dy = dyIn.to(at::kFloat).contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3), M = N * HW, rows = N * C;
  at::Tensor dx = NewLike(x), dw = at::empty({C}, x.options()), db = at::empty({C}, x.options());
  const float *xp = x.data_ptr<float>(), *yp = y.data_ptr<float>(), *gp = dy.data_ptr<float>(), *wp = w.data_ptr<float>();
  const float *mp = mean.data_ptr<float>(), *ip = invstd.data_ptr<float>();
  float *dxp = dx.data_ptr<float>(), *dwp = dw.data_ptr<float>(), *dbp = db.data_ptr<float>();
  // Pass 1, per row: sum(dz) and sum(dz * (x - mean)).
  std::vector<double> rdz(rows), rdzx(rows);
  at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      const float m = mp[r % C];
      const float *xr = xp + r * HW, *yr = yp + r * HW, *gr = gp + r * HW;
      V4 s0 = Splat(0), s1 = Splat(0), t0 = Splat(0), t1 = Splat(0);
      const V4 mv = Splat(m);
      int64_t i = 0;
      for (; i + 8 <= HW; i += 8) {
        const V4 d0 = WherePositive(Load4(gr + i), Load4(yr + i)), d1 = WherePositive(Load4(gr + i + 4), Load4(yr + i + 4));
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
        const float dz = yr[i] > 0.0f ? gr[i] : 0.0f;
        a += dz;
        c2 += dz * (xr[i] - m);
      }
      rdz[r] = a;
      rdzx[r] = c2;
    }
  });
  std::vector<float> k1(C), k2(C), k3(C);
  for (int64_t c = 0; c < C; c++) {
    double sdz = 0, sdzx = 0;
    for (int64_t n = 0; n < N; n++) {
      sdz += rdz[n * C + c];
      sdzx += rdzx[n * C + c];
    }
    const double is = ip[c];
    dbp[c] = static_cast<float>(sdz);
    dwp[c] = static_cast<float>(sdzx * is);
    // dx = k1 * dz - k2 - k3 * (x - mean) (training); dx = k1 * dz (eval)
    k1[c] = static_cast<float>(wp[c] * is);
    k2[c] = training ? static_cast<float>(wp[c] * is * sdz / M) : 0.0f;
    k3[c] = training ? static_cast<float>(wp[c] * is * is * is * sdzx / M) : 0.0f;
  }
  at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      const int64_t c = r % C;
      const float a = k1[c], bb = k2[c], cc = k3[c], m = mp[c];
      const float *xr = xp + r * HW, *yr = yp + r * HW, *gr = gp + r * HW;
      float* out = dxp + r * HW;
      const V4 av = Splat(a), bv = Splat(bb), cv = Splat(cc), mv = Splat(m);
      int64_t i = 0;
      for (; i + 4 <= HW; i += 4) Store4(out + i, av * WherePositive(Load4(gr + i), Load4(yr + i)) - bv - cv * (Load4(xr + i) - mv));
      for (; i < HW; i++) {
        const float dz = yr[i] > 0.0f ? gr[i] : 0.0f;
        out[i] = a * dz - bb - cc * (xr[i] - m);
      }
    }
  });
  return {dx, dw, db};
}

struct BatchNormRelu : public torch::autograd::Function<BatchNormRelu> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                            const at::Tensor& rm, const at::Tensor& rv, bool training, double momentum, double eps) {
    Forward f = ForwardImpl(x, w, b, rm, rv, training, momentum, eps);
    ctx->save_for_backward({x, f.y, w, f.mean, f.invstd});
    ctx->saved_data["training"] = training;
    return f.y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    Grads g = BackwardImpl(grads[0], s[0], s[1], s[2], s[3], s[4], ctx->saved_data["training"].toBool());
    return {g.dx, g.dw, g.db, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor BatchNormReluAutograd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm,
                                 const at::Tensor& rv, bool training, double momentum, double eps) {
  // The running stats are updated in place, never differentiated.
  return BatchNormRelu::apply(x, w, b, rm.detach(), rv.detach(), training, momentum, eps);
}

at::Tensor BatchNormReluCpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& rm,
                            const at::Tensor& rv, bool training, double momentum, double eps) {
  return ForwardImpl(x, w, b, rm, rv, training, momentum, eps).y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kshare, m) {
  m.def(
      "batch_norm_relu(Tensor input, Tensor weight, Tensor bias, Tensor(a!) running_mean, Tensor(b!) running_var, "
      "bool training, float momentum, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(kshare, CPU, m) { m.impl("batch_norm_relu", BatchNormReluCpu); }
TORCH_LIBRARY_IMPL(kshare, Autograd, m) { m.impl("batch_norm_relu", BatchNormReluAutograd); }
