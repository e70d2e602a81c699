// A per-(image, channel) scale, a residual add and an optional ReLU in one pass, for float32
// CPU tensors (input and residual both NCHW or both channels-last), forward and backward, as
//   kshare::channel_scale_add(Tensor input, Tensor scale, Tensor residual, bool relu) -> Tensor
// = [relu](input * scale + residual), scale of shape (N, C, 1, 1): the tail of a
// squeeze-excitation residual block (SE-ResNet: relu(se(bn2(conv2 h)) + shortcut)).
//
// Why: libtorch runs it as mul, add and relu, three passes that write two temporaries; its
// backward as threshold_backward, two muls and a sum (six reads, three writes). Here the
// forward reads two tensors and writes one; the backward reads dy, the input and (with the ReLU)
// y, and writes the input's and the residual's gradients, with the scale's gradient summed
// per row on the way (8 float lanes per row, then in double).
//
// Measured: with it and batch_norm_relu.cc's batch_norm / batch_norm_pool for bn2, the SE-ResNet
// d=2 shared training step (batch 32, 1 thread) went from 497-502 to 482-488 ms, and the kernel
// itself took ~1.5 % of the step's samples (perf) for its backward and ~1 % for its forward
// (~17 GB/s); bench/cpu-kernels-notes.md, "Session of 2026-12-02, seventh". Channels-last
// (rows are pixels, C floats each) since the tenth session, for the SE-ResNets in that layout
// (batch_norm_relu.cc says why).
// KSHARE_NATIVE_POISON=1 fills outputs with NaN before they are written (tests).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu_kernel_common.h"
#include "cpu_thread_pool.h"

// Memory-bound passes for the compiler to vectorise; -O2 leaves them scalar.
#pragma GCC optimize("O3")
#include "cpu_vec4.h"  // after the pragma, so its helpers are built at -O3 too

namespace {

using namespace kshare::vec4;

constexpr const char* kOp = "kshare::channel_scale_add";

using kshare::ChannelsLastOnly;
using kshare::LayoutOf;

void Check(const at::Tensor& x, const at::Tensor& s, const at::Tensor& r) {
  const auto f32 = [](const at::Tensor& t) { return t.defined() && t.scalar_type() == at::kFloat && t.device().is_cpu(); };
  TORCH_CHECK(x.dim() == 4 && f32(x) && (x.is_contiguous() || ChannelsLastOnly(x)), kOp,
              ": input must be a contiguous (NCHW or channels-last) float32 CPU tensor of rank 4, got ", x.sizes());
  TORCH_CHECK(f32(s) && s.is_contiguous() && s.sizes() == at::IntArrayRef({x.size(0), x.size(1), 1, 1}), kOp,
              ": scale must be a contiguous float32 CPU tensor of shape [", x.size(0), ", ", x.size(1), ", 1, 1], got ", s.sizes());
  TORCH_CHECK(f32(r) && r.sizes() == x.sizes() && r.is_contiguous(LayoutOf(x)), kOp,
              ": residual must be a float32 CPU tensor of the input's shape ", x.sizes(), " and memory format, got ", r.sizes());
}

at::Tensor Forward(const at::Tensor& x, const at::Tensor& s, const at::Tensor& r, bool relu) {
  Check(x, s, r);
  const int64_t N = x.size(0), C = x.size(1), rows = N * C, HW = x.size(2) * x.size(3);
  at::Tensor y = kshare::NewOutput(x.sizes(), x.options(), LayoutOf(x));
  const float *xp = x.data_ptr<float>(), *sp = s.data_ptr<float>(), *rp = r.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (ChannelsLastOnly(x)) {
    // Rows are pixels: pixel r of image r / HW takes that image's C scales.
    kshare::ParallelFor(0, N * HW, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; r++) {
        const float *k = sp + (r / HW) * C, *xr = xp + r * C, *rr = rp + r * C;
        float* q = yp + r * C;
        if (relu)
          for (int64_t c = 0; c < C; c++) q[c] = std::max(xr[c] * k[c] + rr[c], 0.0f);
        else
          for (int64_t c = 0; c < C; c++) q[c] = xr[c] * k[c] + rr[c];
      }
    });
    return y;
  }
  kshare::ParallelFor(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; row++) {
      const float k = sp[row];
      const float *xr = xp + row * HW, *rr = rp + row * HW;
      float* q = yp + row * HW;
      if (relu)
        for (int64_t i = 0; i < HW; i++) q[i] = std::max(xr[i] * k + rr[i], 0.0f);
      else
        for (int64_t i = 0; i < HW; i++) q[i] = xr[i] * k + rr[i];
    }
  });
  return y;
}

struct Grads {
  at::Tensor dx, ds, dr;
};

// g = dy where y > 0 (dy itself without the ReLU); dx = g * scale, dscale = sum over the row of
// g * x, dresidual = g (dy itself without the ReLU: no copy).
template <bool kRelu>
Grads Backward(const at::Tensor& dyIn, const at::Tensor& x, const at::Tensor& s, const at::Tensor& y) {
  const at::MemoryFormat fmt = LayoutOf(x);
  const at::Tensor dy = dyIn.to(at::kFloat).contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1), rows = N * C, HW = x.size(2) * x.size(3);
  at::Tensor dx = kshare::NewOutput(x.sizes(), x.options(), fmt);
  at::Tensor ds = kshare::NewOutput(s.sizes(), s.options(), at::MemoryFormat::Contiguous);
  at::Tensor dr = kRelu ? kshare::NewOutput(x.sizes(), x.options(), fmt) : dy;
  const float *gp = dy.data_ptr<float>(), *xp = x.data_ptr<float>(), *sp = s.data_ptr<float>();
  const float* yp = kRelu ? y.data_ptr<float>() : gp;  // not read without the ReLU
  float *dxp = dx.data_ptr<float>(), *dsp = ds.data_ptr<float>(), *drp = dr.data_ptr<float>();
  if (fmt == at::MemoryFormat::ChannelsLast) {
    // Image by image (rows are pixels): each channel's sum of g * x over blocks of 64 pixels in
    // float, the blocks' sums in double, in pixel order.
    constexpr int64_t kBlock = 64;
    kshare::ParallelFor(0, N, 1, [&](int64_t lo, int64_t hi) {
      std::vector<double> acc(C);
      std::vector<float> part(C);
      for (int64_t n = lo; n < hi; n++) {
        std::fill(acc.begin(), acc.end(), 0.0);
        const float* k = sp + n * C;
        for (int64_t r0 = n * HW; r0 < (n + 1) * HW; r0 += kBlock) {
          std::fill(part.begin(), part.end(), 0.0f);
          for (int64_t r = r0; r < std::min((n + 1) * HW, r0 + kBlock); r++) {
            const float *gr = gp + r * C, *xr = xp + r * C, *yr = yp + r * C;
            float *dxr = dxp + r * C, *drr = drp + r * C, *pa = part.data();
            int64_t c = 0;
            for (; c + 4 <= C; c += 4) {
              V4 g = Load4(gr + c);
              if (kRelu) {
                g = WherePositive(g, Load4(yr + c));
                Store4(drr + c, g);
              }
              Store4(dxr + c, g * Load4(k + c));
              Store4(pa + c, Load4(pa + c) + g * Load4(xr + c));
            }
            for (; c < C; c++) {
              const float g = !kRelu || yr[c] > 0.0f ? gr[c] : 0.0f;
              if (kRelu) drr[c] = g;
              dxr[c] = g * k[c];
              pa[c] += g * xr[c];
            }
          }
          for (int64_t c = 0; c < C; c++) acc[c] += part[c];
        }
        for (int64_t c = 0; c < C; c++) dsp[n * C + c] = static_cast<float>(acc[c]);
      }
    });
    return {dx, ds, dr};
  }
  kshare::ParallelFor(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t row = lo; row < hi; row++) {
      const float k = sp[row];
      const V4 kv = Splat(k);
      const float *gr = gp + row * HW, *xr = xp + row * HW, *yr = yp + row * HW;
      float *dxr = dxp + row * HW, *drr = drp + row * HW;
      V4 a0 = Splat(0), a1 = Splat(0);
      int64_t i = 0;
      for (; i + 8 <= HW; i += 8) {
        V4 g0 = Load4(gr + i), g1 = Load4(gr + i + 4);
        if (kRelu) {
          g0 = WherePositive(g0, Load4(yr + i));
          g1 = WherePositive(g1, Load4(yr + i + 4));
          Store4(drr + i, g0);
          Store4(drr + i + 4, g1);
        }
        Store4(dxr + i, g0 * kv);
        Store4(dxr + i + 4, g1 * kv);
        a0 += g0 * Load4(xr + i);
        a1 += g1 * Load4(xr + i + 4);
      }
      double sum = static_cast<double>(Sum(a0)) + Sum(a1);
      for (; i < HW; i++) {
        const float g = !kRelu || yr[i] > 0.0f ? gr[i] : 0.0f;
        if (kRelu) drr[i] = g;
        dxr[i] = g * k;
        sum += g * xr[i];
      }
      dsp[row] = static_cast<float>(sum);
    }
  });
  return {dx, ds, dr};
}

struct ChannelScaleAdd : public torch::autograd::Function<ChannelScaleAdd> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& s, const at::Tensor& r,
                            bool relu) {
    at::Tensor y = Forward(x, s, r, relu);
    // Without the ReLU the backward never reads y: keep it out of the graph's memory.
    ctx->save_for_backward({x, s, relu ? y : at::Tensor()});
    ctx->saved_data["relu"] = relu;
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto v = ctx->get_saved_variables();
    Grads g = ctx->saved_data["relu"].toBool() ? Backward<true>(grads[0], v[0], v[1], v[2]) : Backward<false>(grads[0], v[0], v[1], v[2]);
    return {g.dx, g.ds, g.dr, at::Tensor()};
  }
};

at::Tensor ChannelScaleAddAutograd(const at::Tensor& x, const at::Tensor& s, const at::Tensor& r, bool relu) {
  return ChannelScaleAdd::apply(x, s, r, relu);
}

at::Tensor ChannelScaleAddCpu(const at::Tensor& x, const at::Tensor& s, const at::Tensor& r, bool relu) {
  return Forward(x, s, r, relu);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kshare, m) { m.def("channel_scale_add(Tensor input, Tensor scale, Tensor residual, bool relu) -> Tensor"); }
TORCH_LIBRARY_IMPL(kshare, CPU, m) { m.impl("channel_scale_add", ChannelScaleAddCpu); }
TORCH_LIBRARY_IMPL(kshare, Autograd, m) { m.impl("channel_scale_add", ChannelScaleAddAutograd); }
