// One AdamW step (decoupled weight decay, amsgrad off) over a list of float32 CPU parameters, as
//   kshare::adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg,
//       Tensor(c!)[] exp_avg_sq, float lr, float beta1, float beta2, float eps,
//       float weight_decay, int step) -> ()
// with torch.optim.AdamW's arithmetic (step counted from 1, already incremented):
//   p *= 1 - lr * wd;  m = m * b1 + (1 - b1) * g;  v = v * b2 + (1 - b2) * g * g;
//   p += -(lr / (1 - b1^step)) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
// each factor rounded to float as libtorch's scalar ops round it, the operations in the order of
// the multi-tensor ops src/train/optim/adamw.ts ran before (and runs off the CPU), without fused
// multiply-adds, so the result does not depend on the instruction set.
//
// Why: those are ten _foreach_ ops, and on CPU libtorch 1.13 runs each as one dispatched op per
// tensor: ~400 dispatches and ten passes over the state for a ConvMixer-256/8 with ~40 parameter
// tensors, 3.25 ms of a training step (measured in /work/prof/phases.mjs, throwaway), all on the
// calling thread. Here one call and one pass, in parallel over chunks of the parameters.
// Measured speed: bench/cpu-kernels-notes.md, "Session of 2026-12-03, twelfth".
#include <ATen/ATen.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "cpu_thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// No contraction into fused multiply-adds (SSE2 has none either), so every build rounds the same.
#pragma GCC optimize("-ffp-contract=off")

namespace {

constexpr const char* kOp = "kshare::adamw_";

struct Factors {
  float decay, beta1, oneMinusBeta1, beta2, oneMinusBeta2, sqrtBias2, eps, negStepSize;
};

// One element in float, operation by operation, as the SSE lanes below.
inline void UpdateOne(float* p, const float* g, float* m, float* v, const Factors& f) {
  const float mi = *m * f.beta1 + f.oneMinusBeta1 * *g;
  const float vi = *v * f.beta2 + f.oneMinusBeta2 * *g * *g;
  const float denom = std::sqrt(vi) / f.sqrtBias2 + f.eps;
  *p = *p * f.decay + f.negStepSize * mi / denom;
  *m = mi;
  *v = vi;
}

void UpdateRange(float* p, const float* g, float* m, float* v, int64_t n, const Factors& f) {
  int64_t i = 0;
#if defined(__x86_64__)
  // Four lanes of SSE (every x86-64 has it): the update is memory-bound, wider vectors gain nothing.
  const __m128 decay = _mm_set1_ps(f.decay), b1 = _mm_set1_ps(f.beta1), c1 = _mm_set1_ps(f.oneMinusBeta1);
  const __m128 b2 = _mm_set1_ps(f.beta2), c2 = _mm_set1_ps(f.oneMinusBeta2), sb2 = _mm_set1_ps(f.sqrtBias2);
  const __m128 eps = _mm_set1_ps(f.eps), step = _mm_set1_ps(f.negStepSize);
  for (; i + 4 <= n; i += 4) {
    const __m128 gi = _mm_loadu_ps(g + i);
    const __m128 mi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(m + i), b1), _mm_mul_ps(c1, gi));
    const __m128 vi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), b2), _mm_mul_ps(_mm_mul_ps(c2, gi), gi));
    const __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), sb2), eps);
    const __m128 pi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(p + i), decay), _mm_div_ps(_mm_mul_ps(step, mi), denom));
    _mm_storeu_ps(p + i, pi);
    _mm_storeu_ps(m + i, mi);
    _mm_storeu_ps(v + i, vi);
  }
#endif
  for (; i < n; i++) UpdateOne(p + i, g + i, m + i, v + i, f);
}

// Parameters (and their states) whose memory can be walked as one flat array in the same element
// order: dense and non-overlapping, with the same strides (a channels-last weight and its
// channels-last states, say).
bool SameDenseLayout(const at::Tensor& a, const at::Tensor& b) {
  return a.is_non_overlapping_and_dense() && a.strides() == b.strides() && a.sizes() == b.sizes();
}

void AdamW(at::TensorList params, at::TensorList grads, at::TensorList expAvg, at::TensorList expAvgSq, double lr, double beta1,
           double beta2, double eps, double weightDecay, int64_t step) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && expAvg.size() == n && expAvgSq.size() == n, kOp, ": expected as many grads (", grads.size(),
              "), exp_avg (", expAvg.size(), ") and exp_avg_sq (", expAvgSq.size(), ") as params (", n, ")");
  TORCH_CHECK(step >= 1, kOp, ": step counts from 1, got ", step);
  TORCH_CHECK(lr >= 0 && eps >= 0 && weightDecay >= 0 && beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, kOp,
              ": expected lr, eps, weight_decay >= 0 and betas in [0, 1), got lr ", lr, ", eps ", eps, ", weight_decay ",
              weightDecay, ", betas (", beta1, ", ", beta2, ")");
  const auto f32 = [](const at::Tensor& t) { return t.defined() && t.scalar_type() == at::kFloat && t.device().is_cpu(); };
  const char* names[] = {"grads", "exp_avg", "exp_avg_sq"};
  for (size_t i = 0; i < n; i++) {
    TORCH_CHECK(f32(params[i]), kOp, ": params[", i, "] must be a float32 CPU tensor");
    const at::Tensor* others[] = {&grads[i], &expAvg[i], &expAvgSq[i]};
    for (int k = 0; k < 3; k++) {
      TORCH_CHECK(f32(*others[k]) && others[k]->sizes() == params[i].sizes(), kOp, ": ", names[k], "[", i,
                  "] must be a float32 CPU tensor of params[", i, "]'s shape ", params[i].sizes());
    }
  }
  const double bias1 = 1 - std::pow(beta1, static_cast<double>(step)), bias2 = 1 - std::pow(beta2, static_cast<double>(step));
  const Factors f{static_cast<float>(1 - lr * weightDecay), static_cast<float>(beta1), static_cast<float>(1 - beta1),
                  static_cast<float>(beta2),                static_cast<float>(1 - beta2), static_cast<float>(std::sqrt(bias2)),
                  static_cast<float>(eps),                  static_cast<float>(-(lr / bias1))};

  // Flat views: a tensor that shares its parameter's dense layout is used in place; otherwise it
  // is updated through a contiguous copy that is written back (grads are only read).
  struct Item {
    at::Tensor p, g, m, v;  // what the kernel reads and writes
  };
  std::vector<Item> items(n);
  for (size_t i = 0; i < n; i++) {
    const at::Tensor pw = params[i].is_non_overlapping_and_dense() ? params[i] : params[i].contiguous();
    auto like = [&](const at::Tensor& t) { return SameDenseLayout(pw, t) ? t : at::empty_like(pw).copy_(t); };
    items[i] = {pw, like(grads[i]), like(expAvg[i]), like(expAvgSq[i])};
  }

  // Chunks of at most kChunk values, each within one tensor, run in parallel where there are at
  // least kParallelValues values: below that, waking the pool's other threads costs more than
  // they save (ConvMixer-256/8 shared, 87,050 values: 0.13 ms a step at 1 thread, 0.41 at 2;
  // bench/cpu-kernels-notes.md, thirteenth session). The chunks are independent, so the split
  // does not change the numbers.
  constexpr int64_t kChunk = 16384, kParallelValues = int64_t(1) << 20;
  std::vector<std::pair<size_t, int64_t>> chunks;  // (item, offset)
  int64_t values = 0;
  for (size_t i = 0; i < n; i++) {
    values += items[i].p.numel();
    for (int64_t o = 0; o < items[i].p.numel(); o += kChunk) chunks.emplace_back(i, o);
  }
  const int64_t count = static_cast<int64_t>(chunks.size());
  kshare::ParallelFor(0, count, values < kParallelValues ? count : 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; c++) {
      const auto [i, o] = chunks[c];
      const Item& it = items[i];
      UpdateRange(it.p.data_ptr<float>() + o, it.g.data_ptr<float>() + o, it.m.data_ptr<float>() + o, it.v.data_ptr<float>() + o,
                  std::min(kChunk, it.p.numel() - o), f);
    }
  });

  // Written back where a copy was updated; the version counters move as libtorch's in-place
  // ops move them, so a graph that saved one of these tensors refuses to run backward.
  for (size_t i = 0; i < n; i++) {
    const Item& it = items[i];
    const std::pair<const at::Tensor*, const at::Tensor*> updated[] = {
        {&params[i], &it.p}, {&expAvg[i], &it.m}, {&expAvgSq[i], &it.v}};
    for (auto [dst, src] : updated) {
      if (!src->is_same(*dst)) dst->copy_(*src);
      else torch::autograd::impl::bump_version(*dst);
    }
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kshare, m) {
  m.def(
      "adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg, Tensor(c!)[] exp_avg_sq, float lr, float beta1, "
      "float beta2, float eps, float weight_decay, int step) -> ()");
}
TORCH_LIBRARY_IMPL(kshare, CPU, m) { m.impl("adamw_", AdamW); }
