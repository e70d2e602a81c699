// Depthwise k x k convolution for float32 CPU tensors, registered as libtorch operators
// (kshare::depthwise_conv2d with autograd, kshare::depthwise_conv2d_backward), so that the
// addon's schema-driven `call` reaches them like any ATen operator.
//
// Scope: weight [C, 1, kh, kw] with odd kh and kw, stride 1, "same" padding (dilation*(k-1)/2
// a side), any dilation, NCHW or channels-last input (the output keeps the input's format).
// Grad input is the forward pass with the kernel flipped (stride 1, symmetric padding); grad
// weight correlates the padded input with grad output. Both run on zero-padded copies of the
// input (native/depthwise_conv_kernels.h), vectorised 16 floats wide with AVX-512, 8 with
// AVX2/FMA (checked at run time; KSHARE_NATIVE_ISA=avx2 caps), portable code otherwise. Work is
// split over batch x channels (channels for the weight gradient, which sums over the batch) with
// at::parallel_for.
// Routing of the forward and grad input (LibtorchForward): NCHW square kernels at dilation 1 run
// the plane kernel here (R output rows a block, each input load feeding R accumulators); oneDNN
// (through libtorch's convolution) reorders every NCHW input and output to its blocked layout
// and measured slower. Channels-last goes to oneDNN, faster there than this file's generic
// channels-last forward; other NCHW kernels up to 9 wide too, wider ones stay here (oneDNN's slow
// path). The weight gradient is always ours: libtorch 1.13 computes it in a slow per-channel loop.
//
// Measured speed (2-core AMD EPYC, 1 thread, against python3-torch 1.13 in the same run;
// bench/cpu-kernels-notes.md has every version):
//   weight gradient, AVX-512 (v6, `node dist/bench/depthwise.js --only "grad weight" --isa
//   default,avx2`, bench/results/depthwise-isa.json): (32,64,16,16) k5 NCHW 0.50 ms,
//   channels-last 0.46 ms; (8,256,32,32) k9 NCHW 5.4 ms, channels-last 5.8 ms; the AVX2 tier
//   in the same run 0.71, 0.71, 7.7, 6.8 ms; PyTorch 2.8-135 ms
//   v8, NCHW at dilation 1 with one or two vectors a row: each input row loaded once for up to
//   four grad rows (CorrelateBlock; the same sums bit for bit). 2-core Intel Xeon without AMX,
//   `node dist/bench/depthwise.js --only "grad weight" --threads 1 --rounds 3 --isa default,avx2`
//   against v6's build in turn: (32,64,16,16) k5 NCHW 0.438 ms against 0.590, (8,256,32,32) k9
//   NCHW 4.75 against 5.69; the AVX2 tier 0.665 against 0.679 and 6.90 against 7.11 (v7 is the
//   plane kernel below)
//   the backward a training step runs (input gradient by oneDNN + this weight gradient + bias),
//   v5: 1.13 ms (11.9x) and 12.6 ms (9.6x)
//   forward / forward + grad input, NCHW plane kernel against oneDNN (v7, `node
//   dist/bench/route-ab.js`, bench/results/route-ab.json, same process): (32,64,16,16) k5 0.25 /
//   0.51 ms against 0.28 / 0.67; (32,256,16,16) k5 1.02 / 2.14 against 2.36 / 4.76;
//   (8,256,32,32) k9 2.35 / 5.19 against 3.54 / 8.87; (1,256,32,32) k9 0.29 / 0.62 against
//   0.37 / 0.85; whole NCHW training steps at batch 32 1.09x (ConvMixer-64/4) and 1.13x
//   (ConvMixer-256/8: 224.5 against 254.0 ms) faster. With both capped at AVX2
//   (bench/results/route-ab-avx2.json, its command in the file; two runs) the plane kernel was
//   0.96-2.1x as fast as oneDNN on the forward and 1.05-2.0x on forward + grad input.
//   the fused depthwise half's training backward taking its grad output plane by plane from the
//   GELU/BN pass (BackwardFromPlanes, 2-core Intel Xeon, ConvMixer-256/8 shared step, alternating
//   processes against the stored grad output): 1 thread 258.7-266.2 ms against 266.6-271.5, 2
//   threads 135.2-141.8 against 140.4-142.8 (within the noise); and since the twenty-first
//   session with the weight gradient summed there too, channel range by channel range (the grad
//   output never stored; 2-core Xeon without AMX, the same step, one process alternating with the
//   previous code behind a throwaway switch, medians of 6 and 10 rounds): 1 thread ~274 against
//   ~278 ms (minimum x1.024), 2 threads ~141.9 against ~144.1 (minimum x1.016).
//
// Debugging switches (read at every call): KSHARE_NATIVE_POISON=1 fills outputs with NaN
// before the kernels write them (an element left unwritten then fails the parity tests);
// KSHARE_NATIVE_ISA=generic forces the portable kernels; KSHARE_NATIVE_DEPTHWISE_FORWARD=kshare
// or =onednn forces the forward and grad input to these kernels or to oneDNN.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <immintrin.h>

#include "cpu_kernel_common.h"
#include "cpu_thread_pool.h"
#include "depthwise_conv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace kshare_dw {

// ---- the kernels, built once per instruction set ----
// Vectors passed by value between inlined helpers: no ABI is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"
namespace generic {
constexpr int kLanes = 8, kMaxAcc = 12;
typedef float V __attribute__((vector_size(32)));
static inline V load(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
static inline void store(float* p, const V& v) { __builtin_memcpy(p, &v, sizeof(V)); }
static inline V add(const V& a, const V& b) { return a + b; }
static inline V fma(const V& a, const V& b, const V& c) { return a * b + c; }
static inline V vzero() { return V{0, 0, 0, 0, 0, 0, 0, 0}; }
static inline V bcast(float f) { return V{f, f, f, f, f, f, f, f}; }
#include "depthwise_conv_kernels.h"
}  // namespace generic

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kLanes = 8, kMaxAcc = 12;
typedef __m256 V;
static inline V load(const float* p) { return _mm256_loadu_ps(p); }
static inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
static inline V vzero() { return _mm256_setzero_ps(); }
static inline V bcast(float f) { return _mm256_set1_ps(f); }
#include "depthwise_conv_kernels.h"
}  // namespace avx2
#pragma GCC pop_options

// AVX-512 for the weight gradient only (the forward and grad input go to oneDNN): 16 lanes and
// 32 registers, so a k5 pass keeps all 25 taps in registers and reads grad output once.
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace avx512 {
constexpr int kLanes = 16, kMaxAcc = 25;
typedef __m512 V;
static inline V load(const float* p) { return _mm512_loadu_ps(p); }
static inline void store(float* p, V v) { _mm512_storeu_ps(p, v); }
static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
static inline V vzero() { return _mm512_setzero_ps(); }
static inline V bcast(float f) { return _mm512_set1_ps(f); }
#define KSHARE_DW_CORRELATE_ONLY
#include "depthwise_conv_kernels.h"
#undef KSHARE_DW_CORRELATE_ONLY
}  // namespace avx512
#pragma GCC pop_options

struct Kernels {
  // 8 lanes (the forward's slices are laid out 8 floats a vector).
  void (*forward)(const float*, int64_t, float*, int64_t, int64_t, int64_t, int64_t, const float*, const float*, int, int,
                  int64_t, int64_t);
  // correlateLanes floats a vector.
  void (*correlate)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t, int, int, int64_t, int64_t,
                    float*, float*);
  int64_t correlateLanes;
  int (*correlatePasses)(int kh, int kw);
  // NCHW forward of one plane for a square kernel at dilation 1 (nullptr for other sizes), and
  // its vector width and rows a block.
  void (*(*planeForward)(int k))(const float*, int64_t, float*, int64_t, int64_t, int64_t, const float*, float);
  int64_t planeLanes;
  int (*planeRows)(int k);
  void (*addInto)(float*, const float*, int64_t);
};

// The widest instruction set the CPU has, capped by KSHARE_NATIVE_ISA (avx2 or generic; read at
// every call, for tests and benchmarks).
const Kernels& Pick() {
  static const Kernels kGeneric{generic::Forward,      generic::Correlate,    generic::kLanes,
                                generic::CorrelatePasses, generic::PlaneForward, generic::kLanes,
                                generic::PlaneForwardRows, generic::AddInto};
  static const Kernels kAvx2{avx2::Forward,      avx2::Correlate,    avx2::kLanes, avx2::CorrelatePasses,
                             avx2::PlaneForward, avx2::kLanes,       avx2::PlaneForwardRows, avx2::AddInto};
  static const Kernels kAvx512{avx2::Forward,        avx512::Correlate,  avx512::kLanes, avx512::CorrelatePasses,
                               avx512::PlaneForward, avx512::kLanes,     avx512::PlaneForwardRows, avx512::AddInto};
  static const bool hasAvx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const bool hasAvx512 = hasAvx2 && __builtin_cpu_supports("avx512f");
  const kshare::IsaCap cap = kshare::NativeIsaCap();
  if (cap == kshare::IsaCap::kGeneric) return kGeneric;
  if (cap == kshare::IsaCap::kAvx2) return hasAvx2 ? kAvx2 : kGeneric;
  return hasAvx512 ? kAvx512 : hasAvx2 ? kAvx2 : kGeneric;
}

// Who runs the forward and grad input. KSHARE_NATIVE_DEPTHWISE_FORWARD=kshare forces these
// kernels and =onednn libtorch's convolution (tests, benchmarks: bench/route-ab.ts); unset, the
// choice below.
enum class ForwardRoute { kChoose, kOwn, kLibtorch };
ForwardRoute ForcedForwardRoute() {
  const char* p = std::getenv("KSHARE_NATIVE_DEPTHWISE_FORWARD");
  if (p && std::strcmp(p, "kshare") == 0) return ForwardRoute::kOwn;
  if (p && std::strcmp(p, "onednn") == 0) return ForwardRoute::kLibtorch;
  return ForwardRoute::kChoose;
}

using kshare::NewOutput;

constexpr int64_t kVec = 8;
inline int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Copies one image row (a few dozen floats) in fixed-size chunks the compiler inlines as vector
// moves; a std::memcpy of runtime length is a libc call per row (perf: 3% of a ConvMixer-64/4
// training step was in those calls; the step's A/B time moved within noise, ~1%).
inline void CopyRow(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) __builtin_memcpy(dst + i, src + i, 8 * sizeof(float));
  for (; i < n; i++) dst[i] = src[i];
}

// CopyRow of a kshare::ChannelAffine input: dst = fma(src, scale, shift), one rounding, as the
// BatchNorm pass that would have stored it (callers check kshare_gbn::AffineIsFma(); this CPU then
// has FMA).
__attribute__((target("avx2,fma"))) void CopyRowAffine(float* dst, const float* src, int64_t n, float scale, float shift) {
  const __m256 s = _mm256_set1_ps(scale), t = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_fmadd_ps(_mm256_loadu_ps(src + i), s, t));
  for (; i < n; i++) dst[i] = __builtin_fmaf(src[i], scale, shift);
}

// A plane of x (H rows of W floats from src) into the padded buffer's interior at dst (rows rowP
// apart): copied, or formed from a kshare::ChannelAffine input's g for channel c.
inline void CopyPlane(float* dst, int64_t rowP, const float* src, int64_t h, int64_t w, const kshare::ChannelAffine* affine, int64_t c) {
  if (affine) {
    for (int64_t y = 0; y < h; y++) CopyRowAffine(dst + y * rowP, src + y * w, w, affine->scale[c], affine->shift[c]);
  } else {
    for (int64_t y = 0; y < h; y++) CopyRow(dst + y * rowP, src + y * w, w);
  }
}

// Prefetches `count` floats from each of a and b into the cache.
inline void PrefetchPlanes(const float* a, const float* b, int64_t count) {
  for (int64_t i = 0; i < count; i += 16) {
    __builtin_prefetch(a + i);
    __builtin_prefetch(b + i);
  }
}

struct Geometry {
  int64_t n, c, h, w;
  int kh, kw;
  int64_t dh, dw;
  int64_t ph, pw;  // padding a side
  bool channelsLast;
};

Geometry Check(const char* op, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D (N, C, H, W), got ", input.dim(), "-D");
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), op, ": input and weight must be CPU tensors");
  TORCH_CHECK(input.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat, op,
              ": input and weight must be float32, got ", input.scalar_type(), " and ", weight.scalar_type());
  const int64_t c = input.size(1);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == c && weight.size(1) == 1, op, ": weight must be [", c,
              ", 1, kh, kw] for an input with ", c, " channels, got ", weight.sizes());
  TORCH_CHECK(weight.size(2) % 2 == 1 && weight.size(3) % 2 == 1, op, ": kernel size must be odd, got ",
              weight.size(2), "x", weight.size(3));
  TORCH_CHECK(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1, op,
              ": dilation must be two integers >= 1, got ", dilation);
  Geometry g;
  g.n = input.size(0);
  g.c = c;
  g.h = input.size(2);
  g.w = input.size(3);
  g.kh = static_cast<int>(weight.size(2));
  g.kw = static_cast<int>(weight.size(3));
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.ph = g.dh * (g.kh - 1) / 2;
  g.pw = g.dw * (g.kw - 1) / 2;
  g.channelsLast = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return g;
}

at::MemoryFormat Format(const Geometry& g) {
  return g.channelsLast ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Gathers channels [c0, c0 + lanes) of an (H, W, C) image into `dst`: pixel (y, x) at
// y * dstRow + x * vec (lanes past `lanes` are left alone). Full blocks are fixed-size copies
// that the compiler inlines; the vector of one pixel is `vec` of its C channels.
void GatherBlock(float* dst, int64_t dstRow, int64_t vec, const float* src, int64_t h, int64_t w, int64_t c, int64_t lanes) {
  for (int64_t y = 0; y < h; y++) {
    float* d = dst + y * dstRow;
    const float* s = src + y * w * c;
    if (lanes == 16 && vec == 16) {
      for (int64_t x = 0; x < w; x++) std::memcpy(d + x * 16, s + x * c, 16 * sizeof(float));
    } else if (lanes == 8 && vec == 8) {
      for (int64_t x = 0; x < w; x++) std::memcpy(d + x * 8, s + x * c, 8 * sizeof(float));
    } else {
      for (int64_t x = 0; x < w; x++) std::memcpy(d + x * vec, s + x * c, lanes * sizeof(float));
    }
  }
}

// The plane kernel's convolution of one NCHW plane, with its scratch: the plane padded into
// [roundup(H, R) + K - 1][roundup(W, L) + K - 1] (zeros around, past W and below the last row
// block; each call overwrites the interior), the result written dense to dst (through a
// [H][roundup(W, L)] slice where W is not a multiple of L), then addend added and the plane handed
// to sink. Shared by ConvolveInto and BackwardFromPlanes (its input gradient: the kernel flipped),
// so both make the same calls and get the same numbers.
struct PlaneConvolution {
  const Kernels& k;
  const Geometry& g;
  void (*plane)(const float*, int64_t, float*, int64_t, int64_t, int64_t, const float*, float);
  const int64_t L, wv, rowP;
  std::vector<float> pad, tmp;
  PlaneConvolution(const Kernels& kernels, const Geometry& geometry)
      : k(kernels),
        g(geometry),
        plane(kernels.planeForward(geometry.kh)),
        L(kernels.planeLanes),
        wv(RoundUp(geometry.w, L)),
        rowP(wv + 2 * geometry.pw),
        pad((RoundUp(geometry.h, kernels.planeRows(geometry.kh)) + 2 * geometry.ph) * rowP),
        tmp(geometry.w == wv ? 0 : geometry.h * wv) {}
  // Plane t (channel c = t % C) of the output: src convolved with w (k x k) plus bias.
  void Into(int64_t t, const float* src, const float* w, float bias, float* dst, const float* addend, const kshare::RowSink* sink) {
    CopyPlane(&pad[g.ph * rowP + g.pw], rowP, src, g.h, g.w, nullptr, t % g.c);
    if (tmp.empty()) {
      plane(pad.data(), rowP, dst, g.w, g.h, wv / L, w, bias);
    } else {
      plane(pad.data(), rowP, tmp.data(), wv, g.h, wv / L, w, bias);
      for (int64_t y = 0; y < g.h; y++) CopyRow(dst + y * g.w, &tmp[y * wv], g.w);
    }
    if (addend) k.addInto(dst, addend, g.h * g.w);
    if (sink) (*sink)(t, dst);
  }
};

// out = depthwise correlation of `x` with `w` ([C][kh][kw], contiguous) plus bias (or none);
// x and out are dense in g's format. Used for the forward pass and, with w flipped, grad input.
// NCHW only: `addend` (or nullptr), dense like out, is added to each plane just written.
// planeSink (NCHW only) receives each finished plane (index n * C + c), addend included.
void ConvolveInto(const Geometry& g, const float* x, const float* w, const float* bias, float* out,
                  const float* addend = nullptr, const kshare::RowSink* planeSink = nullptr) {
  const Kernels& k = Pick();
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
  const auto plane = !g.channelsLast && g.kh == g.kw && g.dh == 1 && g.dw == 1 ? k.planeForward(g.kh) : nullptr;
  if (plane) {
    const int64_t hw = g.h * g.w;
    kshare::ParallelFor(0, g.n * g.c, 1, [&](int64_t begin, int64_t end) {
      PlaneConvolution conv(k, g);
      for (int64_t t = begin; t < end; t++) {
        const int64_t c = t % g.c;
        conv.Into(t, x + t * hw, w + c * kk, bias ? bias[c] : 0.f, out + t * hw, addend ? addend + t * hw : nullptr, planeSink);
      }
    });
    return;
  }
  if (!g.channelsLast) {
    // One task per (n, c) plane: pad it into [H + 2ph][roundup(W, 8) + 2pw] (zeros around and
    // past the last vector), convolve, write rows straight out when W is a multiple of 8.
    const int64_t wv = RoundUp(g.w, kVec), rowP = wv + 2 * g.pw, rowsP = g.h + 2 * g.ph;
    kshare::ParallelFor(0, g.n * g.c, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> pad(rowsP * rowP), wexp(kk * kVec), tmp(g.w == wv ? 0 : g.h * wv);
      alignas(32) float b8[kVec];
      for (int64_t t = begin; t < end; t++) {
        const int64_t c = t % g.c;
        const float* src = x + t * g.h * g.w;
        // The border (and the tail past W) is zero from allocation; each task overwrites the interior.
        for (int64_t y = 0; y < g.h; y++) CopyRow(&pad[(y + g.ph) * rowP + g.pw], src + y * g.w, g.w);
        for (int64_t q = 0; q < kk; q++) std::fill_n(&wexp[q * kVec], kVec, w[c * kk + q]);
        std::fill_n(b8, kVec, bias ? bias[c] : 0.f);
        float* dst = out + t * g.h * g.w;
        if (tmp.empty()) {
          k.forward(pad.data(), rowP, dst, g.w, kVec, g.h, wv / kVec, wexp.data(), b8, g.kh, g.kw, g.dh * rowP, g.dw);
        } else {
          k.forward(pad.data(), rowP, tmp.data(), wv, kVec, g.h, wv / kVec, wexp.data(), b8, g.kh, g.kw, g.dh * rowP, g.dw);
          for (int64_t y = 0; y < g.h; y++) CopyRow(dst + y * g.w, &tmp[y * wv], g.w);
        }
        if (addend) k.addInto(dst, addend + t * g.h * g.w, g.h * g.w);
        if (planeSink) (*planeSink)(t, dst);
      }
    });
    return;
  }
  TORCH_CHECK(!addend && !planeSink, "kshare::depthwise_conv2d: internal error: an addend or plane sink with a channels-last grad input");
  // Channels-last: one task per (n, block of 8 channels); the block is gathered into a padded
  // [H + 2ph][W + 2pw][8] slice (lanes past C stay zero) and written back at pixel stride C.
  const int64_t blocks = (g.c + kVec - 1) / kVec, rowP = (g.w + 2 * g.pw) * kVec, rowsP = g.h + 2 * g.ph;
  kshare::ParallelFor(0, g.n * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pad(rowsP * rowP), wexp(kk * kVec), tmp(g.h * g.w * kVec);
    alignas(32) float b8[kVec];
    for (int64_t t = begin; t < end; t++) {
      const int64_t n = t / blocks, c0 = (t % blocks) * kVec, lanes = std::min(kVec, g.c - c0);
      const float* src = x + n * g.h * g.w * g.c + c0;
      // Zero border from allocation; a partial block also needs its unused lanes zero.
      if (lanes < kVec) std::fill(pad.begin(), pad.end(), 0.f);
      GatherBlock(&pad[g.ph * rowP + g.pw * kVec], rowP, kVec, src, g.h, g.w, g.c, lanes);
      std::fill(wexp.begin(), wexp.end(), 0.f);
      for (int64_t l = 0; l < lanes; l++)
        for (int64_t q = 0; q < kk; q++) wexp[q * kVec + l] = w[(c0 + l) * kk + q];
      std::fill_n(b8, kVec, 0.f);
      if (bias) for (int64_t l = 0; l < lanes; l++) b8[l] = bias[c0 + l];
      float* dst = out + n * g.h * g.w * g.c + c0;
      if (lanes == kVec) {
        k.forward(pad.data(), rowP, dst, g.w * g.c, g.c, g.h, g.w, wexp.data(), b8, g.kh, g.kw, g.dh * rowP, g.dw * kVec);
      } else {
        k.forward(pad.data(), rowP, tmp.data(), g.w * kVec, kVec, g.h, g.w, wexp.data(), b8, g.kh, g.kw, g.dh * rowP, g.dw * kVec);
        for (int64_t p = 0; p < g.h * g.w; p++) std::memcpy(dst + p * g.c, &tmp[p * kVec], lanes * sizeof(float));
      }
    }
  });
}

// The NCHW plane path of ConvolveInto (square kernel, dilation 1, no bias) with each finished
// plane, H * W contiguous floats in a per-thread buffer still in L1, handed to sink(n * C + c,
// plane) instead of written out: a caller consuming the output plane by plane never makes it a
// tensor (native/conv_gelu_bn.cc). The caller checked that the plane kernel applies.
// Planes [begin, end) (index n * C + c) convolved one at a time into L1-sized scratch, each
// handed to `sink`.
// With `affine`, x holds a kshare::ChannelAffine input's g.
void ConvolvePlaneRange(const Geometry& g, const float* x, const float* w, int64_t begin, int64_t end, const kshare::RowSink& sink,
                        const kshare::ChannelAffine* affine = nullptr) {
  const Kernels& k = Pick();
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
  const auto plane = k.planeForward(g.kh);
  const int64_t L = k.planeLanes, R = k.planeRows(g.kh);
  const int64_t wv = RoundUp(g.w, L), rowP = wv + 2 * g.pw, rowsP = RoundUp(g.h, R) + 2 * g.ph;
  std::vector<float> pad(rowsP * rowP), tmp(g.h * wv), dense(g.w == wv ? 0 : g.h * g.w);
  for (int64_t t = begin; t < end; t++) {
    const int64_t c = t % g.c;
    CopyPlane(&pad[g.ph * rowP + g.pw], rowP, x + t * g.h * g.w, g.h, g.w, affine, c);
    plane(pad.data(), rowP, tmp.data(), wv, g.h, wv / L, w + c * kk, 0.f);
    const float* out = tmp.data();
    if (!dense.empty()) {
      for (int64_t y = 0; y < g.h; y++) CopyRow(&dense[y * g.w], &tmp[y * wv], g.w);
      out = dense.data();
    }
    sink(t, out);
  }
}

void ConvolvePlanes(const Geometry& g, const float* x, const float* w, const kshare::RowSink& sink, const kshare::ChannelAffine* affine) {
  kshare::ParallelFor(0, g.n * g.c, 1, [&](int64_t begin, int64_t end) { ConvolvePlaneRange(g, x, w, begin, end, sink, affine); });
}

// The NCHW weight gradient's correlation of one plane, with its scratch: the input plane padded
// into [H + 2ph][roundup(W, L) + 2pw], the grad output plane copied to a [H][roundup(W, L)] slice
// with zeros past W (unless W is a multiple of L) so the padded lanes add nothing. Shared by
// WeightGradInto and BackwardFromPlanes, so both make the same calls and the same numbers.
struct PlaneCorrelation {
  const Kernels& k;
  const Geometry& g;
  const int64_t L, wv, rowP;
  std::vector<float> pad, gbuf;
  PlaneCorrelation(const Kernels& kernels, const Geometry& geometry)
      : k(kernels),
        g(geometry),
        L(kernels.correlateLanes),
        wv(RoundUp(geometry.w, L)),
        rowP(wv + 2 * geometry.pw),
        pad((geometry.h + 2 * geometry.ph) * rowP),
        gbuf(geometry.w == wv ? 0 : geometry.h * wv, 0.f) {}
  // acc (k x k taps by L lanes) += the terms of input plane x (channel c; with `affine`, a
  // kshare::ChannelAffine input's g) against grad output plane gy (dense); gsum (L) += gy's
  // lanes where not null.
  void Add(const float* x, const float* gy, int64_t c, const kshare::ChannelAffine* affine, float* acc, float* gsum) {
    CopyPlane(&pad[g.ph * rowP + g.pw], rowP, x, g.h, g.w, affine, c);
    const float* gp = gy;
    int64_t gRow = g.w;
    if (!gbuf.empty()) {
      for (int64_t y = 0; y < g.h; y++) CopyRow(&gbuf[y * wv], gy + y * g.w, g.w);
      gp = gbuf.data();
      gRow = wv;
    }
    k.correlate(pad.data(), rowP, gp, gRow, L, g.h, wv / L, g.kh, g.kw, g.dh * rowP, g.dw, acc, gsum);
  }
  // gw[q] = the sum of acc's L lanes of tap q, lane by lane in order.
  void SumLanes(const float* acc, float* gw) const {
    const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
    for (int64_t q = 0; q < kk; q++) {
      float s = 0;
      for (int64_t l = 0; l < L; l++) s += acc[q * L + l];
      gw[q] = s;
    }
  }
};

// grad weight [C][kh][kw] (and grad bias [C] when gb != nullptr) from input x and grad output
// gy, both dense in g's format. The bias gradient is summed by the correlation pass, in float
// per image and vector lane, then in double over lanes and images.
// With `affine` (NCHW only), x holds a kshare::ChannelAffine input's g.
void WeightGradInto(const Geometry& g, const float* x, const float* gy, float* gw, float* gb, const kshare::ChannelAffine* affine = nullptr) {
  const Kernels& k = Pick();
  const int64_t L = k.correlateLanes;
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw;
  if (!g.channelsLast) {
    // One task per channel, summing over the batch.
    kshare::ParallelFor(0, g.c, 1, [&](int64_t begin, int64_t end) {
      PlaneCorrelation plane(k, g);
      std::vector<float> acc(kk * L), gsum(L);
      for (int64_t c = begin; c < end; c++) {
        std::fill(acc.begin(), acc.end(), 0.f);
        double bsum = 0;
        for (int64_t n = 0; n < g.n; n++) {
          const float* src = x + (n * g.c + c) * g.h * g.w;
          const float* gsrc = gy + (n * g.c + c) * g.h * g.w;
          // The next image's planes are a whole channel stride away, where the hardware prefetcher
          // does not look: fetch them while this one is correlated (perf: the first load of each
          // grad output line stalled for ~60% of the kernel's time at (8,256,32,32) k9).
          if (n + 1 < g.n) PrefetchPlanes(src + g.c * g.h * g.w, gsrc + g.c * g.h * g.w, g.h * g.w);
          std::fill(gsum.begin(), gsum.end(), 0.f);
          plane.Add(src, gsrc, c, affine, acc.data(), gb ? gsum.data() : nullptr);
          if (gb) for (int64_t l = 0; l < L; l++) bsum += gsum[l];
        }
        plane.SumLanes(acc.data(), gw + c * kk);
        if (gb) gb[c] = static_cast<float>(bsum);
      }
    });
    return;
  }
  TORCH_CHECK(!affine, "kshare::depthwise_conv2d: internal error: a channel affine with a channels-last input");
  // Channels-last: each task takes a range of blocks of L channels (with AVX-512 one 64-byte
  // cache line of each pixel) and walks the batch once, image by image, so neighbouring blocks'
  // lines are read one after another. Input is gathered into a zero-padded slice; grad output is
  // read in place (pixel stride C) when the correlation reads it once, and gathered into a dense
  // slice when it reads it several times (strided re-reads measured up to 1.6x slower) or the
  // block is partial.
  const int64_t blocks = (g.c + L - 1) / L, rowP = (g.w + 2 * g.pw) * L, rowsP = g.h + 2 * g.ph;
  const bool gatherGrad = k.correlatePasses(g.kh, g.kw) > 1;
  kshare::ParallelFor(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t nb = end - begin;
    std::vector<float> pad(rowsP * rowP), acc(nb * kk * L, 0.f), gbuf(g.h * g.w * L, 0.f), gsum(L);
    std::vector<double> bsum(nb * L, 0.0);
    for (int64_t n = 0; n < g.n; n++) {
      for (int64_t b = begin; b < end; b++) {
        const int64_t c0 = b * L, lanes = std::min(L, g.c - c0);
        const float* src = x + n * g.h * g.w * g.c + c0;
        const float* gsrc = gy + n * g.h * g.w * g.c + c0;
        // Lanes past C must be zero in both slices (a partial block is always the last one).
        if (lanes < L) std::fill(pad.begin(), pad.end(), 0.f);
        GatherBlock(&pad[g.ph * rowP + g.pw * L], rowP, L, src, g.h, g.w, g.c, lanes);
        const float* gp = gsrc;
        int64_t gRow = g.w * g.c, gVec = g.c;
        if (lanes < L || gatherGrad) {
          GatherBlock(gbuf.data(), g.w * L, L, gsrc, g.h, g.w, g.c, lanes);
          gp = gbuf.data();
          gRow = g.w * L;
          gVec = L;
        }
        std::fill(gsum.begin(), gsum.end(), 0.f);
        k.correlate(pad.data(), rowP, gp, gRow, gVec, g.h, g.w, g.kh, g.kw, g.dh * rowP, g.dw * L, &acc[(b - begin) * kk * L],
                    gb ? gsum.data() : nullptr);
        if (gb) for (int64_t l = 0; l < lanes; l++) bsum[(b - begin) * L + l] += gsum[l];
      }
    }
    for (int64_t b = begin; b < end; b++) {
      const int64_t c0 = b * L, lanes = std::min(L, g.c - c0);
      const float* ab = &acc[(b - begin) * kk * L];
      for (int64_t l = 0; l < lanes; l++) {
        for (int64_t q = 0; q < kk; q++) gw[(c0 + l) * kk + q] = ab[q * L + l];
        if (gb) gb[c0 + l] = static_cast<float>(bsum[(b - begin) * L + l]);
      }
    }
  });
}

// NCHW with a square kernel at dilation 1 runs the plane kernel: faster than oneDNN, which
// reorders every NCHW input and output to its blocked layout (bench/route-ab.json: forward and
// grad input at (32,256,16,16) k5 1.8x, at (8,256,32,32) k9 1.4x; with both capped at AVX2
// 1.0-1.3x). Channels-last goes to oneDNN (no reorders there; faster than the generic kernels),
// and so do other NCHW kernels up to 9 wide; wider ones stay here (oneDNN's slow path:
// (4,64,31,17) k15 13 ms against 1.4 ms).
bool LibtorchForward(const Geometry& g) {
  switch (ForcedForwardRoute()) {
    case ForwardRoute::kOwn: return false;
    case ForwardRoute::kLibtorch: return true;
    case ForwardRoute::kChoose: break;
  }
  if (g.channelsLast) return true;
  if (g.kh == g.kw && g.dh == 1 && g.dw == 1 && Pick().planeForward(g.kh)) return false;
  return std::max(g.kh, g.kw) <= 9;
}

// ---- operators ----

at::Tensor ForwardCpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      at::IntArrayRef dilation) {
  const char* op = "kshare::depthwise_conv2d";
  Geometry g = Check(op, input, weight, dilation);
  const bool hasBias = bias.has_value() && bias->defined();
  if (hasBias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.c && bias->scalar_type() == at::kFloat && bias->device().is_cpu(),
                op, ": bias must be a float32 CPU tensor of shape [", g.c, "], got ", bias->sizes());
  }
  at::Tensor x = input.contiguous(Format(g));
  at::Tensor w = weight.contiguous();
  at::Tensor b = hasBias ? bias->contiguous() : at::Tensor();
  if (LibtorchForward(g)) {
    return at::convolution(x, w, hasBias ? c10::optional<at::Tensor>(b) : c10::nullopt, {1, 1}, {g.ph, g.pw}, {g.dh, g.dw}, false,
                           {0, 0}, g.c);
  }
  at::Tensor out = NewOutput(input.sizes(), input.options(), Format(g));
  if (out.numel() > 0) ConvolveInto(g, x.data_ptr<float>(), w.data_ptr<float>(), hasBias ? b.data_ptr<float>() : nullptr, out.data_ptr<float>());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> BackwardCpuPlus(const at::Tensor& gradOutput, const at::Tensor& input,
                                                               const at::Tensor& weight, at::IntArrayRef dilation,
                                                               std::array<bool, 3> mask, const at::Tensor& gradInputAddend,
                                                               const kshare::ChannelAffine* inputAffine, const kshare::RowSink* gradInputPlanes,
                                                               bool* gradInputPlanesSent) {
  const char* op = "kshare::depthwise_conv2d_backward";
  Geometry g = Check(op, input, weight, dilation);
  if (gradInputPlanesSent) *gradInputPlanesSent = false;
  TORCH_CHECK(!inputAffine || (!g.channelsLast && input.is_contiguous()), op, ": internal error: a channel affine input that is not NCHW");
  TORCH_CHECK(gradOutput.sizes() == input.sizes() && gradOutput.scalar_type() == at::kFloat && gradOutput.device().is_cpu(), op,
              ": grad_output must be a float32 CPU tensor shaped like the input ", input.sizes(), ", got ", gradOutput.sizes());
  at::Tensor x = input.contiguous(Format(g));
  at::Tensor gy = gradOutput.contiguous(Format(g));
  at::Tensor w = weight.contiguous();
  const bool plus = mask[0] && gradInputAddend.defined();
  TORCH_CHECK(!plus || gradInputAddend.sizes() == input.sizes(), op, ": the grad input addend must be shaped like the input ",
              input.sizes(), ", got ", gradInputAddend.sizes());
  at::Tensor gi, gw, gb;
  if (mask[0] && LibtorchForward(g)) {
    gi = std::get<0>(at::convolution_backward(gy, x, w, c10::nullopt, {1, 1}, {g.ph, g.pw}, {g.dh, g.dw}, false, {0, 0}, g.c,
                                              {true, false, false}));
    if (plus) gi.add_(gradInputAddend);
  } else if (mask[0]) {
    // Stride 1 and symmetric padding: grad input is the forward pass of grad output with the
    // kernel rotated by 180 degrees.
    at::Tensor flipped = w.flip({2, 3}).contiguous();
    gi = NewOutput(input.sizes(), input.options(), Format(g));
    // NCHW adds the addend plane by plane as each is written; channels-last in a pass of its own.
    at::Tensor addend = plus && !g.channelsLast ? gradInputAddend.contiguous(Format(g)) : at::Tensor();
    const kshare::RowSink* planes = g.channelsLast ? nullptr : gradInputPlanes;
    if (gi.numel() > 0)
      ConvolveInto(g, gy.data_ptr<float>(), flipped.data_ptr<float>(), nullptr, gi.data_ptr<float>(),
                   addend.defined() ? addend.data_ptr<float>() : nullptr, planes);
    if (gradInputPlanesSent) *gradInputPlanesSent = planes && gi.numel() > 0;
    if (plus && g.channelsLast) gi.add_(gradInputAddend);
  }
  if (mask[1] || mask[2]) {
    gw = NewOutput(weight.sizes(), weight.options(), at::MemoryFormat::Contiguous);
    if (mask[2]) gb = NewOutput({g.c}, weight.options(), at::MemoryFormat::Contiguous);
    if (x.numel() > 0) {
      WeightGradInto(g, x.data_ptr<float>(), gy.data_ptr<float>(), gw.data_ptr<float>(), mask[2] ? gb.data_ptr<float>() : nullptr,
                     inputAffine);
    } else {
      gw.zero_();
      if (mask[2]) gb.zero_();
    }
    if (!mask[1]) gw = at::Tensor();
    // The weight's own memory format, as libtorch returns it.
    else if (weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast) gw = gw.contiguous(at::MemoryFormat::ChannelsLast);
  }
  return {gi, gw, gb};
}

bool PlanesApply(const Geometry& g, const at::Tensor& input) {
  return !g.channelsLast && input.is_contiguous() && g.kh == g.kw && g.dh == 1 && g.dw == 1 && Pick().planeForward(g.kh) &&
         !LibtorchForward(g) && input.numel() > 0;
}

bool PlanesApply(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef dilation) {
  return PlanesApply(Check("kshare::depthwise_conv2d", input, weight, dilation), input);
}

void ForwardPlanes(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef dilation, const kshare::RowSink& sink,
                   const kshare::ChannelAffine* inputAffine) {
  const Geometry g = Check("kshare::depthwise_conv2d", input, weight, dilation);
  TORCH_CHECK(PlanesApply(g, input), "kshare::depthwise_conv2d: internal error: the plane kernel does not apply");
  const at::Tensor w = weight.contiguous();
  ConvolvePlanes(g, input.data_ptr<float>(), w.data_ptr<float>(), sink, inputAffine);
}

std::tuple<at::Tensor, at::Tensor> BackwardFromPlanes(const kshare::RowProducer& gradPlanes, const at::Tensor& input,
                                                      const at::Tensor& weight, at::IntArrayRef dilation,
                                                      bool needWeight, const at::Tensor& gradInputAddend,
                                                      const kshare::ChannelAffine* inputAffine, const kshare::RowSink* gradInputPlanes,
                                                      bool* gradInputPlanesSent) {
  const char* op = "kshare::depthwise_conv2d_backward";
  const Geometry g = Check(op, input, weight, dilation);
  TORCH_CHECK(PlanesApply(g, input), op, ": internal error: the plane kernel does not apply");
  TORCH_CHECK(!gradInputAddend.defined() || gradInputAddend.sizes() == input.sizes(), op,
              ": the grad input addend must be shaped like the input ", input.sizes(), ", got ", gradInputAddend.sizes());
  if (gradInputPlanesSent) *gradInputPlanesSent = false;
  const Kernels& k = Pick();
  const int64_t kk = static_cast<int64_t>(g.kh) * g.kw, hw = g.h * g.w;
  const at::Tensor w = weight.contiguous(), flipped = w.flip({2, 3}).contiguous();
  const at::Tensor addend = gradInputAddend.defined() ? gradInputAddend.contiguous() : at::Tensor();
  at::Tensor gi = NewOutput(input.sizes(), input.options(), at::MemoryFormat::Contiguous);
  at::Tensor gw = needWeight ? NewOutput(weight.sizes(), weight.options(), at::MemoryFormat::Contiguous) : at::Tensor();
  const float *fp = flipped.data_ptr<float>(), *ap = addend.defined() ? addend.data_ptr<float>() : nullptr;
  float* gip = gi.data_ptr<float>();
  const float* xp = input.data_ptr<float>();
  float* gwp = needWeight ? gw.data_ptr<float>() : nullptr;
  // Each thread takes a range of channels and walks the batch image by image: a grad output plane
  // goes to the input gradient and to its channel's weight-gradient sums while it is in cache, so
  // it is never stored, and each channel's sums take the images in order on one thread, lane by
  // lane, as WeightGradInto's do (the same numbers at any thread count). The input plane the weight
  // gradient reads is the one gradInputPlanes (the previous block's row sums) reads next.
  kshare::ParallelFor(0, g.c, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> dz(hw);
    PlaneConvolution inputGrad(k, g);  // ConvolveInto's plane path with the kernel flipped
    PlaneCorrelation correlation(k, g);
    const int64_t accPerChannel = kk * correlation.L;
    std::vector<float> acc(needWeight ? (c1 - c0) * accPerChannel : 0, 0.f);
    for (int64_t n = 0; n < g.n; n++) {
      for (int64_t c = c0; c < c1; c++) {
        const int64_t t = n * g.c + c;
        gradPlanes(t, dz.data());
        if (needWeight) correlation.Add(xp + t * hw, dz.data(), c, inputAffine, &acc[(c - c0) * accPerChannel], nullptr);
        inputGrad.Into(t, dz.data(), fp + c * kk, 0.f, gip + t * hw, ap ? ap + t * hw : nullptr, gradInputPlanes);
      }
    }
    if (needWeight)
      for (int64_t c = c0; c < c1; c++) correlation.SumLanes(&acc[(c - c0) * accPerChannel], gwp + c * kk);
  });
  if (gradInputPlanesSent) *gradInputPlanesSent = gradInputPlanes != nullptr;
  if (needWeight && weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast) gw = gw.contiguous(at::MemoryFormat::ChannelsLast);
  return {gi, gw};
}

void ForwardPlaneRange(const at::Tensor& input, const at::Tensor& weight, int64_t begin, int64_t end, const kshare::RowSink& sink) {
  const Geometry g = Check("kshare::depthwise_conv2d", input, weight, {1, 1});
  TORCH_CHECK(PlanesApply(g, input) && weight.is_contiguous() && begin >= 0 && end <= g.n * g.c,
              "kshare::depthwise_conv2d: internal error: a plane range the plane kernel does not cover");
  ConvolvePlaneRange(g, input.data_ptr<float>(), weight.data_ptr<float>(), begin, end, sink);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> BackwardCpu(const at::Tensor& gradOutput, const at::Tensor& input,
                                                           const at::Tensor& weight, at::IntArrayRef dilation,
                                                           std::array<bool, 3> mask) {
  return BackwardCpuPlus(gradOutput, input, weight, dilation, mask, at::Tensor());
}

at::Tensor CallForward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("kshare::depthwise_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, at::IntArrayRef)>();
  return op.call(input, weight, bias, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> CallBackward(const at::Tensor& gradOutput, const at::Tensor& input,
                                                            const at::Tensor& weight, at::IntArrayRef dilation,
                                                            std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("kshare::depthwise_conv2d_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                             at::IntArrayRef, std::array<bool, 3>)>();
  return op.call(gradOutput, input, weight, dilation, mask);
}

class DepthwiseConv2dFunction : public torch::autograd::Function<DepthwiseConv2dFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, std::vector<int64_t> dilation) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({input, weight});
    ctx->saved_data["dilation"] = c10::IValue(dilation);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return CallForward(input, weight, bias, dilation);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const bool hasBias = ctx->saved_data["has_bias"].toBool();
    std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), hasBias && ctx->needs_input_grad(2)};
    at::Tensor grad = grads[0];
    if (!grad.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    at::Tensor gi, gw, gb;
    if (c10::GradMode::is_enabled()) {
      // create_graph: libtorch's differentiable convolution backward, so higher derivatives work.
      const int64_t c = input.size(1);
      std::vector<int64_t> pad{dilation[0] * (weight.size(2) - 1) / 2, dilation[1] * (weight.size(3) - 1) / 2};
      std::tie(gi, gw, gb) = at::convolution_backward(grad, input, weight, c10::IntArrayRef{c}, {1, 1}, pad, dilation, false,
                                                      {0, 0}, c, mask);
    } else {
      std::tie(gi, gw, gb) = CallBackward(grad, input, weight, dilation, mask);
    }
    return {gi, gw, gb, at::Tensor()};
  }
};

at::Tensor ForwardAutograd(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef dilation) {
  return DepthwiseConv2dFunction::apply(input, weight, bias, dilation.vec());
}

// Under CPU autocast the operator behaves like aten::conv2d does: bfloat16 through libtorch.
at::Tensor ForwardAutocastCpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              at::IntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard noAutocast(c10::DispatchKey::AutocastCPU);
  const auto to = kshare::AutocastCpuDtype();
  auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(to, t, c10::DeviceType::CPU); };
  std::vector<int64_t> pad{dilation[0] * (weight.size(2) - 1) / 2, dilation[1] * (weight.size(3) - 1) / 2};
  c10::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = cast(*bias);
  return at::conv2d(cast(input), cast(weight), b, {1, 1}, pad, dilation, input.size(1));
}

}  // namespace kshare_dw

TORCH_LIBRARY(kshare, m) {
  m.def("depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias=None, int[2] dilation=1) -> Tensor");
  m.def("depthwise_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] dilation, bool[3] output_mask) -> "
        "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(kshare, CPU, m) {
  m.impl("depthwise_conv2d", kshare_dw::ForwardCpu);
  m.impl("depthwise_conv2d_backward", kshare_dw::BackwardCpu);
}

TORCH_LIBRARY_IMPL(kshare, Autograd, m) { m.impl("depthwise_conv2d", kshare_dw::ForwardAutograd); }

TORCH_LIBRARY_IMPL(kshare, AutocastCPU, m) { m.impl("depthwise_conv2d", kshare_dw::ForwardAutocastCpu); }
