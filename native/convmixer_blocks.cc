// A run of ConvMixer blocks in eval mode as one float32 CPU operator (built with oneDNN only, as
// the 1x1 operator):
//   kshare::convmixer_blocks(Tensor input, Tensor[] params, float[] eps) -> Tensor
// params: 12 tensors a block, in order: depthwise weight [C, 1, k, k] (odd k, stride 1, "same"
// padding, dilation 1) and bias, BatchNorm weight, bias, running mean, running var; 1x1 weight
// [C, C, 1, 1] and bias, BatchNorm weight, bias, running mean, running var. eps: 2 a block.
// Each block is
//   x = x + batch_norm(gelu(depthwise_conv2d(x) + bias))   (running stats: eval)
//   x = batch_norm(gelu(pointwise_conv2d(x) + bias))
// with exactly the kernels and the numbers of kshare::depthwise_gelu_bn_residual and
// kshare::pointwise_gelu_bn in eval (conv_gelu_bn.cc), bit for bit.
//
// Why: at batch 1 with 2 threads each block half is a parallel region of a few hundred
// microseconds, and between two operator calls (~20 us of JavaScript and dispatch) libgomp's
// worker stops spinning (GOMP_SPINCOUNT=1000 is ~9 us where PAUSE takes ~9 ns) and sleeps, so
// every call paid ~70-85 us to wake it (bench/cpu-kernels-notes.md, seventh session; with
// OMP_WAIT_POLICY=active the batch-1 inference ran in 11.6 ms instead of 14.8). Here the whole
// run of blocks is one parallel region: the threads meet at a barrier between halves that spins
// for up to 50 us before it sleeps, and nothing runs between the halves.
//
// Measured speed (2-core Intel Xeon with AVX-512, ConvMixer-256/16 shared inference, NCHW,
// against two operators a block in the same process, best of 3 alternating medians, `node
// dist/bench/route-ab.js --only block-run --threads 1,2 --rounds 3`,
// bench/results/block-run-ab.json), 1 thread / 2 threads: batch 1 19.80 against 21.18 ms
// (x1.07) / 10.76 against 11.74 ms (x1.09); batch 32 x1.02 / x1.02. That is with kshare's own
// thread pool (cpu_thread_pool.cc), which spares the two operators a block most of their
// wake-ups too; before it: batch 1 x1.08 / x1.31 (10.68 against 14.00 ms), batch 32 x1.02 /
// x1.04, and beside one busy process (throwaway A/B, 2 threads, batch 1) 21.6-21.8 against
// 22.4-23.3 ms.
//
// Scope: NCHW contiguous input with at least one pixel, square odd depthwise kernels. Where
// kshare's plane kernel does not serve a block's depthwise convolution (a kernel size it lacks on
// this CPU, KSHARE_NATIVE_DEPTHWISE_FORWARD=onednn) the blocks run as the two operators each. No
// autograd: the Autograd kernel refuses inputs that require grad under grad mode
// (src/nn/fused.ts routes inference only).
#ifdef KSHARE_HAVE_DNNL

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <omp.h>

#include "cpu_kernel_common.h"
#include "cpu_thread_pool.h"
#include "depthwise_conv.h"
#include "fused_gelu_bn.h"
#include "pointwise_conv.h"

#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <vector>


namespace {

constexpr const char* kOp = "kshare::convmixer_blocks";
constexpr int64_t kPerBlock = 12;

// A barrier for the threads of one parallel region that spins for a while before it sleeps:
// libgomp's own barrier sleeps after GOMP_SPINCOUNT pauses (~9 us here), and waking a sleeping
// thread costs more than the wait itself at most barriers of a call.
class SpinBarrier {
 public:
  // Called by every thread of the team, with the team's size, before its first Wait (the same
  // value from all: no ordering needed, and no libgomp barrier, which would sleep, to share it).
  void Join(int threads) { threads_.store(threads, std::memory_order_relaxed); }

  void Wait() {
    const unsigned gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_.load(std::memory_order_relaxed) - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.fetch_add(1, std::memory_order_release);
      }
      if (sleepers_.load(std::memory_order_acquire) > 0) wake_.notify_all();
      return;
    }
    // 50 us for this barrier: batch-1 ConvMixer-256/16 inference at 2 threads (2-core
    // Intel Xeon, throwaway A/B against two operators a block, medians of 40, three rounds), ms
    // for a limit of 0 / 10 / 50 / 200 us: quiet 11.6-12.2 / 11.8-12.2 / 10.6-10.9 / 11.2-11.5
    // (two operators a block 13.8-15.1); beside one busy process 19.9-20.1 / 20.4-20.7 /
    // 21.6-21.8 / 26.4-26.7 (22.4-23.3).
    auto released = [&] { return generation_.load(std::memory_order_acquire) != gen; };
    if (kshare::SpinUntil(released, std::chrono::microseconds(50))) return;
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1, std::memory_order_acq_rel);
    wake_.wait(lock, released);
    sleepers_.fetch_sub(1, std::memory_order_acq_rel);
  }

 private:
  std::atomic<int> threads_{1};
  std::atomic<int> arrived_{0};
  std::atomic<unsigned> generation_{0};
  std::atomic<int> sleepers_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
};

// [begin, end) of thread `tid`'s share of [0, total), as at::parallel_for shares a range.
std::pair<int64_t, int64_t> Share(int64_t total, int64_t tid, int64_t threads) {
  const int64_t chunk = (total + threads - 1) / threads;
  const int64_t b = std::min(total, tid * chunk);
  return {b, std::min(total, b + chunk)};
}

struct Block {
  at::Tensor dwWeight, dwBias, pwWeight, pwBias;
  std::vector<float> scale1, shift1, scale2, shift2;  // the two BatchNorms' eval coefficients
};

void CheckVector(const at::Tensor& t, int64_t c, int64_t block, int64_t index) {
  TORCH_CHECK(t.defined() && t.dim() == 1 && t.size(0) == c && t.scalar_type() == at::kFloat && t.device().is_cpu(), kOp,
              ": params[", block * kPerBlock + index, "] (block ", block, ") must be a float32 CPU tensor of shape [", c,
              "], got ", t.defined() ? t.sizes() : at::IntArrayRef{}, " ", t.defined() ? t.scalar_type() : at::kFloat);
}

std::vector<Block> PrepareBlocks(const at::Tensor& input, at::TensorList params, at::ArrayRef<double> eps) {
  TORCH_CHECK(params.size() % kPerBlock == 0 && !params.empty(), kOp, ": params must hold ", kPerBlock,
              " tensors a block (at least one block), got ", params.size());
  const int64_t blocks = static_cast<int64_t>(params.size()) / kPerBlock;
  TORCH_CHECK(static_cast<int64_t>(eps.size()) == 2 * blocks, kOp, ": eps must hold 2 values a block (", 2 * blocks, "), got ",
              eps.size());
  const int64_t c = input.size(1);
  std::vector<Block> out(blocks);
  for (int64_t b = 0; b < blocks; b++) {
    const at::Tensor* p = &params[b * kPerBlock];
    const at::Tensor &dw = p[0], &pw = p[6];
    TORCH_CHECK(dw.dim() == 4 && dw.size(0) == c && dw.size(1) == 1 && dw.scalar_type() == at::kFloat && dw.device().is_cpu(), kOp,
                ": params[", b * kPerBlock, "] (block ", b, "'s depthwise weight) must be a float32 CPU tensor [", c,
                ", 1, k, k], got ", dw.sizes());
    TORCH_CHECK(dw.size(2) % 2 == 1 && dw.size(2) == dw.size(3), kOp, ": block ", b, "'s depthwise kernel must be square and odd, got ",
                dw.sizes());
    TORCH_CHECK(pw.dim() == 4 && pw.size(0) == c && pw.size(1) == c && pw.size(2) == 1 && pw.size(3) == 1 &&
                    pw.scalar_type() == at::kFloat && pw.device().is_cpu(),
                kOp, ": params[", b * kPerBlock + 6, "] (block ", b, "'s 1x1 weight) must be a float32 CPU tensor [", c, ", ", c,
                ", 1, 1], got ", pw.sizes());
    for (int64_t i : {1, 2, 3, 4, 5, 7, 8, 9, 10, 11}) CheckVector(p[i], c, b, i);
    TORCH_CHECK(eps[2 * b] >= 0 && eps[2 * b + 1] >= 0, kOp, ": eps must be >= 0, got ", eps[2 * b], " and ", eps[2 * b + 1],
                " for block ", b);
    Block& k = out[b];
    k.dwWeight = dw.contiguous();
    k.dwBias = p[1].contiguous();
    k.pwWeight = pw.contiguous();
    k.pwBias = p[7].contiguous();
    auto coefficients = [&](int64_t first, double e, std::vector<float>* scale, std::vector<float>* shift) {
      const at::Tensor w = p[first].contiguous(), bb = p[first + 1].contiguous(), rm = p[first + 2].contiguous(),
                       rv = p[first + 3].contiguous();
      scale->resize(c);
      shift->resize(c);
      kshare_gbn::EvalCoefficients(c, w.data_ptr<float>(), bb.data_ptr<float>(), rm.data_ptr<float>(), rv.data_ptr<float>(), e,
                                   scale->data(), shift->data());
    };
    coefficients(2, eps[2 * b], &k.scale1, &k.shift1);
    coefficients(8, eps[2 * b + 1], &k.scale2, &k.shift2);
  }
  return out;
}

// Where the plane kernel does not serve a block's depthwise convolution (a kernel size it lacks
// on this CPU, KSHARE_NATIVE_DEPTHWISE_FORWARD=onednn): the two operators a block.
at::Tensor BlockByBlock(const at::Tensor& input, at::TensorList params, at::ArrayRef<double> eps) {
  static auto residualHalf =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("kshare::depthwise_gelu_bn_residual", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double, double)>();
  static auto pointwiseHalf = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("kshare::pointwise_gelu_bn", "")
                                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, double, double)>();
  at::Tensor x = input;
  for (size_t b = 0; b * kPerBlock < params.size(); b++) {
    const at::Tensor* p = &params[b * kPerBlock];
    x = residualHalf.call(x, p[0], p[1], {1, 1}, p[2], p[3], p[4], p[5], false, 0.0, eps[2 * b]);
    x = pointwiseHalf.call(x, p[6], p[7], p[8], p[9], p[10], p[11], false, 0.0, eps[2 * b + 1]);
  }
  return x;
}

at::Tensor ConvMixerBlocksCpu(const at::Tensor& input, at::TensorList params, at::ArrayRef<double> eps) {
  TORCH_CHECK(input.dim() == 4 && input.scalar_type() == at::kFloat && input.device().is_cpu(), kOp,
              ": input must be a float32 CPU tensor (N, C, H, W), got ", input.sizes(), " ", input.scalar_type());
  TORCH_CHECK(input.is_contiguous() && input.numel() > 0, kOp, ": input must be NCHW contiguous and not empty, got ", input.sizes());
  const std::vector<Block> blocks = PrepareBlocks(input, params, eps);
  bool planes = true;
  for (const Block& k : blocks) planes = planes && kshare_dw::PlanesApply(input, k.dwWeight, {1, 1});
  if (!planes) return BlockByBlock(input, params, eps);
  const int64_t n = input.size(0), c = input.size(1), hw = input.size(2) * input.size(3);
  // Two activations in turn: the depthwise half writes `mid`, the 1x1 half `out`.
  at::Tensor mid = kshare::NewOutput(input.sizes(), input.options(), at::MemoryFormat::Contiguous);
  at::Tensor out = kshare::NewOutput(input.sizes(), input.options(), at::MemoryFormat::Contiguous);
  const float* xp = input.data_ptr<float>();
  float *midp = mid.data_ptr<float>(), *outp = out.data_ptr<float>();
  const int threads = static_cast<int>(at::get_num_threads());
  const kshare_pw::RowTasks tasks = kshare_pw::ForwardRowTasks(mid, blocks[0].pwWeight, threads);
  std::vector<std::shared_ptr<const kshare_amx::Packed>> packed(blocks.size());
  // A 1x1 kernel shared between blocks (what kernel sharing is) is packed once.
  for (size_t b = 0; tasks.amx && b < blocks.size(); b++) {
    for (size_t e = 0; e < b && !packed[b]; e++)
      if (blocks[e].pwWeight.is_same(blocks[b].pwWeight)) packed[b] = packed[e];
    if (!packed[b]) packed[b] = kshare_pw::PackWeight(blocks[b].pwWeight);
  }
  const kshare_gbn::EvalRowKernels rowKernels = kshare_gbn::EvalRows();

  std::atomic<bool> failed{false};
  std::exception_ptr error;
  SpinBarrier barrier;
#pragma omp parallel num_threads(threads)
  {
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    barrier.Join(team);
    // A thread that fails stops working but keeps meeting the barrier, so no thread waits forever.
    auto guarded = [&](const auto& work) {
      if (failed.load(std::memory_order_relaxed)) return;
      try {
        work();
      } catch (...) {
#pragma omp critical(kshare_convmixer_blocks_error)
        if (!failed.exchange(true)) error = std::current_exception();
      }
    };
    std::unique_ptr<float[]> buffer(new float[tasks.bufferFloats]);
    const std::pair<int64_t, int64_t> planes = Share(n * c, tid, team), rowTasks = Share(tasks.count, tid, team);
    const float* x = xp;
    const at::Tensor* xTensor = &input;
    for (size_t b = 0; b < blocks.size(); b++) {
      const Block& k = blocks[b];
      guarded([&] {
        const float *bias = k.dwBias.data_ptr<float>(), *scale = k.scale1.data(), *shift = k.shift1.data();
        kshare_dw::ForwardPlaneRange(*xTensor, k.dwWeight, planes.first, planes.second, [&](int64_t row, const float* z) {
          const int64_t ch = row % c;
          rowKernels.add(z, x + row * hw, midp + row * hw, hw, bias + ch, scale + ch, shift + ch);
        });
      });
      barrier.Wait();
      guarded([&] {
        const float *bias = k.pwBias.data_ptr<float>(), *scale = k.scale2.data(), *shift = k.shift2.data();
        kshare_pw::ForwardRowRange(
            mid, k.pwWeight, tasks, rowTasks.first, rowTasks.second, buffer.get(),
            [&](int64_t row, const float* z) {
              const int64_t ch = row % c;
              rowKernels.plain(z, outp + row * hw, hw, bias + ch, scale + ch, shift + ch);
            },
            packed[b].get());
      });
      if (b + 1 < blocks.size()) barrier.Wait();  // the region's end joins after the last block
      x = outp;
      xTensor = &out;
    }
  }
  if (error) std::rethrow_exception(error);
  return out;
}

at::Tensor ConvMixerBlocksAutograd(const at::Tensor& input, at::TensorList params, at::ArrayRef<double> eps) {
  bool needsGrad = input.requires_grad();
  for (const at::Tensor& p : params) needsGrad = needsGrad || (p.defined() && p.requires_grad());
  TORCH_CHECK(!c10::GradMode::is_enabled() || !needsGrad, kOp,
              ": inference only: no gradient flows through it; run under no-grad, or let the layers run one by one");
  return ConvMixerBlocksCpu(input, params, eps);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(kshare, m) { m.def("convmixer_blocks(Tensor input, Tensor[] params, float[] eps) -> Tensor"); }
TORCH_LIBRARY_IMPL(kshare, CPU, m) { m.impl("convmixer_blocks", ConvMixerBlocksCpu); }
TORCH_LIBRARY_IMPL(kshare, Autograd, m) { m.impl("convmixer_blocks", ConvMixerBlocksAutograd); }

#endif  // KSHARE_HAVE_DNNL
