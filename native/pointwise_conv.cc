// Pointwise (1x1, stride 1, no padding, groups 1) convolution for float32 CPU tensors as
// matrix products in oneDNN's sgemm (or, in NCHW with at least 128 channels each way on a CPU with
// AMX-BF16, on AMX tiles at float32 accuracy: amx_gemm.cc), registered as libtorch operators
// (kshare::pointwise_conv2d with autograd, kshare::pointwise_conv2d_backward), so that the
// addon's schema-driven `call` reaches them like any ATen operator.
//
// Why: libtorch 1.13 runs an NCHW 1x1 convolution through oneDNN's blocked layout, reordering
// input and output (and, in the backward, grad output) on every call: at ConvMixer-256/8's
// (32, 256, 16, 16) ~0.6 ms a reorder, 59 ms of reorders in one training step
// (`KSHARE_NATIVE_POINTWISE=0 node dist/bench/onednn-breakdown.js`; 29.5 ms with this operator).
// A 1x1 convolution needs no reorder: in NCHW each image is a (C, H*W) matrix, in channels-last
// the batch is one (N*H*W, C) matrix, so forward, grad input and grad weight are sgemm calls on
// the tensors as they lie. oneDNN's sgemm is AVX-512 where the CPU has it (libtorch's BLAS path,
// OpenBLAS here, is pinned to AVX2 by OPENBLAS_CORETYPE).
//
// Measured speed (2-core AMD EPYC, 1 thread, against python3-torch 1.13 in the same run,
// `node dist/bench/cpu-kernels.js --only 1x1`; bench/cpu-kernels-notes.md has the versions):
//   C -> C with bias, NCHW: (32,64,16,16) forward 0.58 ms (PyTorch 0.47: slower here, 32 small
//   products), backward 1.01 ms (1.07); (8,256,32,32) forward 7.7 ms (10.3), backward 11.6 ms
//   (21.9). In-process against libtorch's conv2d (`node dist/bench/route-ab.js`,
//   bench/results/route-ab.json, NCHW and channels-last): forward + backward 1.09-2.03x faster on
//   all ten shapes; the forward alone 0.92-0.94x at 64-128 channels except NCHW 128 (1.07), 0.99-1.92x
//   above. ConvMixer-256/8 training step, NCHW, 1 thread: 2.37-2.41x PyTorch before, 2.60-3.03x with it.
//
// Built only where oneDNN's headers are found (Debian: libdnnl-dev; native/build.sh defines
// KSHARE_HAVE_DNNL); without them the operators are not registered and conv2d keeps
// libtorch's convolution.
#ifdef KSHARE_HAVE_DNNL

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <dnnl.h>

#include <map>

#include "amx_gemm.h"
#include "cpu_kernel_common.h"
#include "cpu_thread_pool.h"
#include "pointwise_conv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace kshare_pw {

using kshare::NewOutput;

struct Geometry {
  int64_t n, cin, cout, hw;
  bool channelsLast;
};

Geometry Check(const char* op, const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got ", input.dim(), "-D");
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), op, ": input and weight must be CPU tensors");
  TORCH_CHECK(input.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, op,
              ": input and weight must be float32, got ", input.scalar_type(), " and ", weight.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == input.size(1) && weight.size(2) == 1 && weight.size(3) == 1, op,
              ": weight must be [out, ", input.size(1), ", 1, 1] for an input with ", input.size(1), " channels, got ",
              weight.sizes());
  Geometry g;
  g.n = input.size(0);
  g.cin = input.size(1);
  g.cout = weight.size(0);
  g.hw = input.size(2) * input.size(3);
  g.channelsLast = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return g;
}

at::MemoryFormat Format(const Geometry& g) {
  return g.channelsLast ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// NCHW runs one sgemm per image. With several threads the images are shared out in one parallel
// region (oneDNN's sgemm then runs single-threaded inside it): letting each small sgemm start its
// own parallel region cost a wake-up of the sleeping worker per image (OMP_WAIT_POLICY=PASSIVE),
// and measured 58.6 ms against 25.7 ms at 1 thread for a ConvMixer-64/4 step at 2 threads.
// With fewer images than threads (batch-1 inference) each image's columns (pixels) are split
// into one panel a thread instead. At 2 threads (`node dist/bench/route-ab.js --threads 2`,
// bench/results/route-ab-2t.json, a quiet run): (1,256,32,32) forward 0.349 ms against 0.416
// with oneDNN's own threading, forward + input gradient 0.671 against 0.736; channels-last
// 1.04-1.16x on all six shapes; NCHW batch 32 unchanged (the same code); batch-1
// ConvMixer-256/16 inference 10.29 against 10.15 ms (within noise; two earlier throwaway
// alternations on a noisier machine gave 11.1-11.4 against 12.0-12.2).
int64_t ImageShares(int64_t images) { return std::max<int64_t>(1, std::min<int64_t>(images, at::get_num_threads())); }

// Splitting into panels is on unless KSHARE_NATIVE_POINTWISE_PANELS=0 (read at every call; for
// bench/route-ab.ts, which times it against oneDNN's own threading of one sgemm).
bool PanelsEnabled() { return kshare::EnvSwitchOn("KSHARE_NATIVE_POINTWISE_PANELS"); }

// f(n, c0, c1) for pixel columns [c0, c1) of image n, over all images and columns.
template <class F>
void ForEachPanel(int64_t images, int64_t hw, const F& f) {
  const int64_t threads = at::get_num_threads();
  if (threads == 1) {
    for (int64_t n = 0; n < images; n++) f(n, 0, hw);
    return;
  }
  // Panels a multiple of 16 columns wide (whole cache lines), at most one a thread per image.
  const int64_t split = images >= threads || !PanelsEnabled() ? 1 : (threads + images - 1) / images;
  const int64_t width = std::max<int64_t>(16, (hw + split - 1) / split + 15) / 16 * 16;
  const int64_t panels = (hw + width - 1) / width;
  kshare::ParallelFor(0, images * panels, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      const int64_t n = i / panels, c0 = (i % panels) * width;
      f(n, c0, std::min(hw, c0 + width));
    }
  });
}

// Channels-last: f(r0, r1) for row panels [r0, r1) of the (N*H*W)-row matrix, one a thread,
// each a single-threaded sgemm in one parallel region: faster than oneDNN's own threading of
// the whole product (see ForEachPanel).
template <class F>
void ForEachRowPanel(int64_t rows, const F& f) {
  const int64_t threads = at::get_num_threads();
  if (threads == 1 || !PanelsEnabled()) {
    f(0, rows);
    return;
  }
  const int64_t height = std::max<int64_t>(16, (rows + threads - 1) / threads);
  const int64_t panels = (rows + height - 1) / height;
  kshare::ParallelFor(0, panels, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) f(i * height, std::min(rows, (i + 1) * height));
  });
}

// C = alpha op(A) op(B) + beta C, row-major; oneDNN reports bad arguments as a status.
void Sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
           float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const dnnl_status_t s = dnnl_sgemm(ta, tb, m, n, k, 1.f, a, lda, b, ldb, beta, c, ldc);
  TORCH_CHECK(s == dnnl_success, "kshare::pointwise_conv2d: oneDNN sgemm failed with status ", static_cast<int>(s), " (m ", m,
              ", n ", n, ", k ", k, ")");
}

// NCHW products on AMX tiles (amx_gemm.cc) where kshare_amx::Enabled() and both channel counts are
// at least 128: the weight side is packed once a call, each image's activation or gradient per
// product, into a per-thread scratch. Below 128 channels the packing ate the gain: ConvMixer-64/4's
// training step took x0.97-1.02 the sgemm's time (`node dist/bench/route-ab.js --only amx`), and
// its weight gradient alone, packing + product, 19.4 us against sgemm's 13.6 (64 x 64 over 256
// pixels, a throwaway C program; 256 x 256: 159 against 186).
bool UseAmx(const Geometry& g) { return kshare_amx::Enabled() && std::min(g.cin, g.cout) >= 128; }

// The forward (ForwardCpu and the row tasks alike, so fused and unfused give the same numbers) on
// AMX from batch 2 only: at batch 1 the row tasks split an image into channel blocks and every
// thread packed the whole image (ConvMixer-256/16 inference at 2 threads x0.95 against sgemm,
// `node dist/bench/route-ab.js --only amx`); sgemm at batch 1 also keeps the results the same at any
// thread count (AMX and sgemm differ in the last bits).
bool UseAmxForward(const Geometry& g) { return UseAmx(g) && g.n >= 2; }

kshare_amx::Packed& Scratch(int which) {
  thread_local kshare_amx::Packed scratch[2];
  return scratch[which];
}

// At most this many pixels go into one packed per-thread operand (6 bytes a value: 1.5 MiB at 256
// channels); wider images go through in blocks of pixels.
constexpr int64_t kAmxPixels = 1024;

// Rows [r0, r1) of c (columns [0, cols), row stride ldc) = left * B + beta c on AMX, B read from b
// (k rows, row stride ldb) in blocks of columns; fallback(j0, j1) computes columns [j0, j1) with
// a float32 sgemm where the block or the left operand holds an infinity or NaN.
template <class Fallback>
void AmxColumns(const kshare_amx::Packed& left, const float* b, int64_t k, int64_t cols, int64_t ldb, float* c, int64_t ldc, float beta,
                int64_t r0, int64_t r1, const Fallback& fallback, kshare_amx::Prefetch prefetch = {}) {
  kshare_amx::Packed& right = Scratch(0);
  for (int64_t j = 0; j < cols; j += kAmxPixels) {
    const int64_t w = std::min(kAmxPixels, cols - j);
    kshare_amx::PackRight(b + j, k, w, ldb, 1, &right);
    if (left.finite && right.finite) kshare_amx::Gemm(left, right, c + j, ldc, beta, r0, r1, j == 0 ? prefetch : kshare_amx::Prefetch{});
    else fallback(j, j + w);
  }
}

// The packs a WeightPackScope keeps on this thread, by the weight's data (nullptr: no scope).
struct PackCache {
  std::map<const void*, std::shared_ptr<const kshare_amx::Packed>> plain, transposed;
};
thread_local PackCache* packCache = nullptr;

// make() packed once per weight while a WeightPackScope is alive on this thread.
template <class Make>
std::shared_ptr<const kshare_amx::Packed> Cached(bool transposed, const at::Tensor& weight, const Make& make) {
  if (!packCache) return make();
  auto& slot = (transposed ? packCache->transposed : packCache->plain)[weight.data_ptr()];
  if (!slot) slot = make();
  return slot;
}

std::shared_ptr<const kshare_amx::Packed> PackWeightUncached(const at::Tensor& weight);
std::shared_ptr<const kshare_amx::Packed> PackWeightTransposedUncached(const at::Tensor& weight);
std::shared_ptr<const kshare_amx::Packed> PackWeight(const at::Tensor& weight) {
  return Cached(false, weight, [&] { return PackWeightUncached(weight); });
}
std::shared_ptr<const kshare_amx::Packed> PackWeightTransposed(const at::Tensor& weight) {
  return Cached(true, weight, [&] { return PackWeightTransposedUncached(weight); });
}

std::shared_ptr<const kshare_amx::Packed> PackWeightUncached(const at::Tensor& weight) {
  auto packed = std::make_shared<kshare_amx::Packed>();
  const at::Tensor w = weight.contiguous();
  kshare_amx::PackLeft(w.data_ptr<float>(), w.size(0), w.size(1), w.size(1), 1, packed.get());
  return packed;
}

// W^T (in x out) for the input gradient, from W (out x in): transposed first, since the packing
// reads rows fastest, in 16 x 16 register blocks (ATen's strided copy took ~94 us at 256 x 256,
// ~0.5 % of a 2-thread ConvMixer-256/8 step on the calling thread alone; perf).
std::shared_ptr<const kshare_amx::Packed> PackWeightTransposedUncached(const at::Tensor& weight) {
  auto packed = std::make_shared<kshare_amx::Packed>();
  const at::Tensor w = weight.contiguous();
  const int64_t out = w.size(0), in = w.size(1);
  std::unique_ptr<float[]> wt(new float[std::max<int64_t>(in * out, 1)]);
  const float* parts[1] = {w.data_ptr<float>()};
  kshare_amx::TransposeSum(parts, 1, out, in, wt.get(), 0, out);
  kshare_amx::PackLeft(wt.get(), in, out, out, 1, packed.get());
  return packed;
}

at::Tensor ForwardCpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  const char* op = "kshare::pointwise_conv2d";
  const Geometry g = Check(op, input, weight);
  const bool hasBias = bias.has_value() && bias->defined();
  if (hasBias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.cout && bias->scalar_type() == at::kFloat && bias->device().is_cpu(), op,
                ": bias must be a float32 CPU tensor of shape [", g.cout, "], got ", bias->sizes());
  }
  const at::Tensor x = input.contiguous(Format(g));
  const at::Tensor w = weight.contiguous();  // [out][in]
  at::Tensor out = NewOutput({g.n, g.cout, input.size(2), input.size(3)}, input.options(), Format(g));
  if (out.numel() == 0) return out;
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = out.data_ptr<float>();
  const at::Tensor b = hasBias ? bias->contiguous() : at::Tensor();
  const float* bp = hasBias ? b.data_ptr<float>() : nullptr;
  if (g.channelsLast) {
    // Y (NHW x out) = X (NHW x in) W^T, in row panels; the bias is written first and accumulated
    // onto (beta 1).
    ForEachRowPanel(g.n * g.hw, [&](int64_t r0, int64_t r1) {
      if (bp) {
        for (int64_t r = r0; r < r1; r++) std::copy(bp, bp + g.cout, yp + r * g.cout);
      }
      Sgemm('N', 'T', r1 - r0, g.cout, g.cin, xp + r0 * g.cin, g.cin, wp, g.cin, bp ? 1.f : 0.f, yp + r0 * g.cout, g.cout);
    });
    return out;
  }
  // NCHW: Y[n] (out x HW) = W (out x in) X[n] (in x HW), image by image (or panel by panel).
  const std::shared_ptr<const kshare_amx::Packed> packed = UseAmxForward(g) ? PackWeight(w) : nullptr;
  ForEachPanel(g.n, g.hw, [&](int64_t n, int64_t c0, int64_t c1) {
    float* yn = yp + n * g.cout * g.hw + c0;
    if (bp) {
      for (int64_t o = 0; o < g.cout; o++) std::fill_n(yn + o * g.hw, c1 - c0, bp[o]);
    }
    const float* xn = xp + n * g.cin * g.hw + c0;
    const float beta = bp ? 1.f : 0.f;
    auto sgemm = [&](int64_t j0, int64_t j1) { Sgemm('N', 'N', g.cout, j1 - j0, g.cin, wp, g.cin, xn + j0, g.hw, beta, yn + j0, g.hw); };
    if (packed) AmxColumns(*packed, xn, g.cin, c1 - c0, g.hw, yn, g.hw, beta, 0, g.cout, sgemm);
    else sgemm(0, c1 - c0);
  });
  return out;
}

bool RowsApply(const Geometry& g, const at::Tensor& input) {
  return !g.channelsLast && input.is_contiguous() && g.n * g.hw * g.cout * g.cin > 0;
}

bool RowsApply(const at::Tensor& input, const at::Tensor& weight) {
  return RowsApply(Check("kshare::pointwise_conv2d", input, weight), input);
}

RowTasks ForwardRowTasks(const at::Tensor& input, const at::Tensor& weight, int64_t threads) {
  const Geometry g = Check("kshare::pointwise_conv2d", input, weight);
  // One image a task, as ForwardCpu at batch >= threads; with fewer images than threads (batch-1
  // inference) each image's output channels are split instead (whole rows for the sink, where
  // ForwardCpu splits pixel columns).
  const int64_t split = g.n >= threads ? 1 : (threads + g.n - 1) / g.n;
  RowTasks t;
  t.block = (g.cout + split - 1) / split;
  // On AMX, channel blocks start at multiples of 32, and each thread packs the whole image for its
  // block.
  t.amx = UseAmxForward(g);
  if (t.amx) t.block = std::min(g.cout, (t.block + 31) / 32 * 32);
  t.parts = (g.cout + t.block - 1) / t.block;
  t.count = g.n * t.parts;
  t.bufferFloats = t.block * g.hw;
  return t;
}

void ForwardRowRange(const at::Tensor& input, const at::Tensor& weight, const RowTasks& tasks, int64_t begin, int64_t end,
                     float* buffer, const kshare::RowSink& sink, const kshare_amx::Packed* packed, const ImagePrep* prepare) {
  const Geometry g = Check("kshare::pointwise_conv2d", input, weight);
  TORCH_CHECK(!tasks.amx || packed, "kshare::pointwise_conv2d: internal error: AMX tasks without a packed weight");
  TORCH_CHECK(!prepare || tasks.parts == 1, "kshare::pointwise_conv2d: internal error: images prepared per task with split images");
  const float *xp = input.data_ptr<float>(), *wp = weight.data_ptr<float>();
  for (int64_t i = begin; i < end; i++) {
    const int64_t n = i / tasks.parts, o0 = (i % tasks.parts) * tasks.block, o1 = std::min(g.cout, o0 + tasks.block);
    if (prepare) (*prepare)(n);
    const float* xn = xp + n * g.cin * g.hw;
    auto sgemm = [&](int64_t j0, int64_t j1) {
      Sgemm('N', 'N', o1 - o0, j1 - j0, g.cin, wp + o0 * g.cin, g.cin, xn + j0, g.hw, 0.f, buffer + j0, g.hw);
    };
    // The buffer holds rows [o0, o1): row o at buffer + (o - o0) * hw.
    if (tasks.amx) AmxColumns(*packed, xn, g.cin, g.hw, g.hw, buffer - o0 * g.hw, g.hw, 0.f, o0, o1, sgemm);
    else sgemm(0, g.hw);
    for (int64_t o = o0; o < o1; o++) sink(n * g.cout + o, buffer + (o - o0) * g.hw);
  }
}

void ForwardRows(const at::Tensor& input, const at::Tensor& weight, const kshare::RowSink& sink, const ImagePrep* prepare) {
  const char* op = "kshare::pointwise_conv2d";
  TORCH_CHECK(RowsApply(Check(op, input, weight), input), op, ": internal error: row by row does not apply");
  const at::Tensor w = weight.contiguous();
  // Y[n] (out x HW, e.g. 256 KiB at 256 channels and 16x16) goes to a per-thread buffer that
  // stays in L2 while its rows are consumed.
  const RowTasks tasks = ForwardRowTasks(input, w, at::get_num_threads());
  const std::shared_ptr<const kshare_amx::Packed> packed = tasks.amx ? PackWeight(w) : nullptr;
  // Images split between threads (fewer images than threads): every image prepared first.
  const bool perTask = prepare && tasks.parts == 1;
  if (prepare && !perTask) kshare::ParallelFor(0, input.size(0), 1, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; n++) (*prepare)(n);
    });
  kshare::ParallelFor(0, tasks.count, 1, [&](int64_t b, int64_t e) {
    std::unique_ptr<float[]> y(new float[tasks.bufferFloats]);
    ForwardRowRange(input, w, tasks, b, e, y.get(), sink, packed.get(), perTask ? prepare : nullptr);
  });
}

// NCHW weight gradient: gW = sum_n gY[n] (out x HW) X[n]^T (HW x in), accumulated image by image
// (beta 1 after the first) into one partial sum per thread's share of the batch, added up in
// thread order, so the sum does not depend on which kernel produced gY. f(p, n, dst, beta) adds
// image n's product into dst (p: the share, one a thread). With `transposed` (the AMX products,
// AddGradWeight), dst holds gW^T (in x out), each share's partial sum is transposed as it is
// added up.
template <class F>
void ForEachImageShare(const Geometry& g, float* gwp, bool transposed, const F& f) {
  const int64_t parts = ImageShares(g.n), size = g.cout * g.cin;
  const int64_t own = transposed ? parts : parts - 1;  // partial sums not written straight into gwp
  // Not zeroed: each share's first image writes its partial sum whole (beta 0).
  std::unique_ptr<float[]> partial(new float[std::max<int64_t>(own * size, 1)]);
  kshare::ParallelFor(0, parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; p++) {
      float* dst = transposed ? &partial[p * size] : p == 0 ? gwp : &partial[(p - 1) * size];
      const int64_t n0 = p * g.n / parts, n1 = (p + 1) * g.n / parts;
      for (int64_t n = n0; n < n1; n++) f(p, n, dst, n == n0 ? 0.f : 1.f);
    }
  });
  if (!transposed) {
    for (int64_t p = 1; p < parts; p++) {
      const float* src = &partial[(p - 1) * size];
      for (int64_t i = 0; i < size; i++) gwp[i] += src[i];
    }
    return;
  }
  // gW[o][i] = sum over shares of gW^T[i][o], in share order (as above), in 16 x 16 register
  // blocks, the rows of gW^T shared out between the threads: 8 calls a ConvMixer-256/8 step took
  // ~1.1 ms on the calling thread alone with scalar loops.
  std::vector<const float*> sums(parts);
  for (int64_t p = 0; p < parts; p++) sums[p] = &partial[p * size];
  kshare::ParallelFor(0, (g.cin + 15) / 16, 4, [&](int64_t b, int64_t e) {
    kshare_amx::TransposeSum(sums.data(), parts, g.cin, g.cout, gwp, b * 16, e * 16);
  });
}

// Image n's weight-gradient product added into dst with beta: without AMX, dst (out x in) =
// beta dst + gY[n] X[n]^T (sgemm); with AMX, dst (in x out) = beta dst + X[n] gY[n]^T, the
// transpose (ForEachImageShare transposes the sum once a call). Why transposed on AMX: the
// right operand's packing transposes its matrix, and this way that falls on gY[n], which has just
// been produced (in L2), instead of X[n], read from memory; the left operand, X[n], packs by rows.
// Packing + product, 256 channels and pixels, X spread over 16 MiB (throwaway C program, 2-core
// Xeon): 178-185 us an image against 192-197. gyn: image n's grad output (out x HW, rows HW apart).
void AddGradWeight(const Geometry& g, const float* gyn, const float* xp, int64_t n, float* dst, float beta, bool amx) {
  const float* xn = xp + n * g.cin * g.hw;
  if (!amx) return Sgemm('N', 'T', g.cout, g.cin, g.hw, gyn, g.hw, xn, g.hw, beta, dst, g.cin);
  // The pixels are the sum's index here: blocks of them are added up in order.
  kshare_amx::Packed &left = Scratch(0), &right = Scratch(1);
  for (int64_t p = 0; p < g.hw; p += kAmxPixels) {
    const int64_t w = std::min(kAmxPixels, g.hw - p);
    const float b = p == 0 ? beta : 1.f;
    kshare_amx::PackLeft(xn + p, g.cin, w, g.hw, 1, &left);
    kshare_amx::PackRight(gyn + p, w, g.cout, 1, g.hw, &right);
    if (left.finite && right.finite) kshare_amx::Gemm(left, right, dst, g.cout, b, 0, g.cin);
    else Sgemm('N', 'T', g.cin, g.cout, w, xn + p, g.hw, gyn + p, g.hw, b, dst, g.cout);
  }
}

// gX[n] (in x HW) = W^T (in x out) gY[n] (out x HW), pixel columns [c0, c1); packedT: W^T packed
// (PackWeightTransposed) for AMX, or null.
void GradInputImage(const Geometry& g, const float* wp, const float* gyn, float* gin, int64_t c0, int64_t c1,
                    const kshare_amx::Packed* packedT, kshare_amx::Prefetch prefetch = {}) {
  auto sgemm = [&](int64_t j0, int64_t j1) {
    Sgemm('T', 'N', g.cin, j1 - j0, g.cout, wp, g.cin, gyn + c0 + j0, g.hw, 0.f, gin + c0 + j0, g.hw);
  };
  if (packedT) AmxColumns(*packedT, gyn + c0, g.cout, c1 - c0, g.hw, gin + c0, g.hw, 0.f, 0, g.cin, sgemm, prefetch);
  else sgemm(0, c1 - c0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> BackwardCpu(const at::Tensor& gradOutput, const at::Tensor& input,
                                                           const at::Tensor& weight, std::array<bool, 3> mask) {
  const char* op = "kshare::pointwise_conv2d_backward";
  const Geometry g = Check(op, input, weight);
  TORCH_CHECK(gradOutput.dim() == 4 && gradOutput.size(0) == g.n && gradOutput.size(1) == g.cout &&
                  gradOutput.size(2) == input.size(2) && gradOutput.size(3) == input.size(3) &&
                  gradOutput.scalar_type() == at::kFloat && gradOutput.device().is_cpu(),
              op, ": grad_output must be a float32 CPU tensor of shape [", g.n, ", ", g.cout, ", ", input.size(2), ", ",
              input.size(3), "], got ", gradOutput.sizes());
  const at::Tensor x = input.contiguous(Format(g));
  const at::Tensor gy = gradOutput.contiguous(Format(g));
  const at::Tensor w = weight.contiguous();
  const float* xp = x.data_ptr<float>();
  const float* gp = gy.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  at::Tensor gi, gw, gb;
  if (mask[0]) {
    gi = NewOutput(input.sizes(), input.options(), Format(g));
    float* gip = gi.data_ptr<float>();
    if (g.channelsLast) {
      // gX (NHW x in) = gY (NHW x out) W (out x in), in row panels
      ForEachRowPanel(g.n * g.hw, [&](int64_t r0, int64_t r1) {
        Sgemm('N', 'N', r1 - r0, g.cin, g.cout, gp + r0 * g.cout, g.cout, wp, g.cin, 0.f, gip + r0 * g.cin, g.cin);
      });
    } else {
      // gX[n] (in x HW) = W^T (in x out) gY[n] (out x HW)
      const auto packedT = UseAmx(g) ? PackWeightTransposed(w) : nullptr;
      ForEachPanel(g.n, g.hw, [&](int64_t n, int64_t c0, int64_t c1) {
        GradInputImage(g, wp, gp + n * g.cout * g.hw, gip + n * g.cin * g.hw, c0, c1, packedT.get());
      });
    }
  }
  if (mask[1]) {
    gw = NewOutput({g.cout, g.cin, 1, 1}, weight.options(), at::MemoryFormat::Contiguous);
    float* gwp = gw.data_ptr<float>();
    if (g.n * g.hw == 0) {
      gw.zero_();
    } else if (g.channelsLast) {
      // gW (out x in) = gY^T (out x NHW) X (NHW x in)
      Sgemm('T', 'N', g.cout, g.cin, g.n * g.hw, gp, g.cout, xp, g.cin, 0.f, gwp, g.cin);
    } else {
      const bool amx = UseAmx(g);
      ForEachImageShare(g, gwp, amx, [&](int64_t, int64_t n, float* dst, float beta) {
        AddGradWeight(g, gp + n * g.cout * g.hw, xp, n, dst, beta, amx);
      });
    }
    // The weight's own memory format, as libtorch returns it.
    if (weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast) gw = gw.contiguous(at::MemoryFormat::ChannelsLast);
  }
  if (mask[2]) gb = gy.sum({0, 2, 3});
  return {gi, gw, gb};
}

bool BackwardRowsApply(const Geometry& g, const at::Tensor& input) { return RowsApply(g, input) && g.n >= at::get_num_threads(); }

bool BackwardRowsApply(const at::Tensor& input, const at::Tensor& weight) {
  return BackwardRowsApply(Check("kshare::pointwise_conv2d_backward", input, weight), input);
}

std::tuple<at::Tensor, at::Tensor> BackwardRows(const kshare::RowProducer& gradRows, const at::Tensor& input, const at::Tensor& weight,
                                                bool needInput, bool needWeight, const ImageSink* inputGradImage) {
  const char* op = "kshare::pointwise_conv2d_backward";
  const Geometry g = Check(op, input, weight);
  TORCH_CHECK(BackwardRowsApply(g, input), op, ": internal error: row by row does not apply");
  const at::Tensor w = weight.contiguous();
  const float *xp = input.data_ptr<float>(), *wp = w.data_ptr<float>();
  at::Tensor gi = needInput ? NewOutput(input.sizes(), input.options(), at::MemoryFormat::Contiguous) : at::Tensor();
  at::Tensor gw = NewOutput({g.cout, g.cin, 1, 1}, weight.options(), at::MemoryFormat::Contiguous);
  float* gip = needInput ? gi.data_ptr<float>() : nullptr;
  // Each image's grad output (out x HW, e.g. 256 KiB at 256 channels and 16x16) is produced into a
  // per-thread buffer and read from L2 by both products; the shares of the batch and the order of
  // the sums are BackwardCpu's (with at least as many images as threads, one image a panel), so
  // the numbers are the same bit for bit.
  const at::Tensor bufs = at::empty({ImageShares(g.n), g.cout * g.hw}, input.options());
  const bool amx = UseAmx(g);
  const auto packedT = amx && gip ? PackWeightTransposed(w) : nullptr;
  ForEachImageShare(g, gw.data_ptr<float>(), amx && needWeight, [&](int64_t p, int64_t n, float* dst, float beta) {
    float* buf = bufs.data_ptr<float>() + p * g.cout * g.hw;
    for (int64_t o = 0; o < g.cout; o++) gradRows(n * g.cout + o, buf + o * g.hw);
    if (gip) {
      // The weight gradient packs this image's input next, read from memory (the input was stored in
      // the forward): fetched toward L2 while the input gradient's product keeps the tile unit busy.
      // ConvMixer-256/8's step x0.987 at 1 thread (faster in 28 of 30 alternating steps) and x0.989
      // at 2 (36 of 60) in a throwaway A/B (bench/cpu-kernels-notes.md, twenty-sixth session).
      const kshare_amx::Prefetch input =
          needWeight && amx ? kshare_amx::Prefetch{xp + n * g.cin * g.hw, g.cin * g.hw * 4} : kshare_amx::Prefetch{};
      GradInputImage(g, wp, buf, gip + n * g.cin * g.hw, 0, g.hw, packedT.get(), input);
      if (inputGradImage) (*inputGradImage)(n, gip + n * g.cin * g.hw);
    }
    if (needWeight) AddGradWeight(g, buf, xp, n, dst, beta, amx);
  });
  if (!needWeight) gw = at::Tensor();
  else if (weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast) gw = gw.contiguous(at::MemoryFormat::ChannelsLast);
  return {gi, gw};
}

WeightPackScope::WeightPackScope() : previous_(packCache), cache_(new PackCache) { packCache = static_cast<PackCache*>(cache_); }

WeightPackScope::~WeightPackScope() {
  delete static_cast<PackCache*>(cache_);
  packCache = static_cast<PackCache*>(previous_);
}

at::Tensor CallForward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("kshare::pointwise_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&)>();
  return op.call(input, weight, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> CallBackward(const at::Tensor& gradOutput, const at::Tensor& input,
                                                            const at::Tensor& weight, std::array<bool, 3> mask) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("kshare::pointwise_conv2d_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                std::array<bool, 3>)>();
  return op.call(gradOutput, input, weight, mask);
}

class PointwiseConv2dFunction : public torch::autograd::Function<PointwiseConv2dFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return CallForward(input, weight, bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const bool hasBias = ctx->saved_data["has_bias"].toBool();
    std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), hasBias && ctx->needs_input_grad(2)};
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    at::Tensor gi, gw, gb;
    if (c10::GradMode::is_enabled()) {
      // create_graph: libtorch's differentiable convolution backward, so higher derivatives work.
      std::tie(gi, gw, gb) = at::convolution_backward(grad, input, weight, c10::IntArrayRef{weight.size(0)}, {1, 1}, {0, 0},
                                                      {1, 1}, false, {0, 0}, 1, mask);
    } else {
      std::tie(gi, gw, gb) = CallBackward(grad, input, weight, mask);
    }
    return {gi, gw, gb};
  }
};

at::Tensor ForwardAutograd(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  return PointwiseConv2dFunction::apply(input, weight, bias);
}

// Under CPU autocast the operator behaves like aten::conv2d does: bfloat16 through libtorch.
at::Tensor ForwardAutocastCpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  c10::impl::ExcludeDispatchKeyGuard noAutocast(c10::DispatchKey::AutocastCPU);
  const auto to = kshare::AutocastCpuDtype();
  auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(to, t, c10::DeviceType::CPU); };
  c10::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = cast(*bias);
  return at::conv2d(cast(input), cast(weight), b);
}

}  // namespace kshare_pw

TORCH_LIBRARY_FRAGMENT(kshare, m) {
  m.def("pointwise_conv2d(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("pointwise_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kshare, CPU, m) {
  m.impl("pointwise_conv2d", kshare_pw::ForwardCpu);
  m.impl("pointwise_conv2d_backward", kshare_pw::BackwardCpu);
}

TORCH_LIBRARY_IMPL(kshare, Autograd, m) { m.impl("pointwise_conv2d", kshare_pw::ForwardAutograd); }

TORCH_LIBRARY_IMPL(kshare, AutocastCPU, m) { m.impl("pointwise_conv2d", kshare_pw::ForwardAutocastCpu); }

#endif  // KSHARE_HAVE_DNNL
