// Pieces kshare's CPU kernels (depthwise_conv.cc, fused_gelu_bn.cc, batch_norm_relu.cc) share.
#pragma once
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>

namespace kshare {

// The dtype CPU autocast casts to: libtorch 2.4 asks per device (the per-function form is
// deprecated there), 1.13 per function.
inline at::ScalarType AutocastCpuDtype() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  return at::autocast::get_autocast_dtype(at::kCPU);
#else
  return at::autocast::get_autocast_cpu_dtype();
#endif
}

// kshare's environment switches, read at every call so tests and benchmarks can flip them:
// EnvSwitchOn is a path that is on unless the variable is "0" (KSHARE_NATIVE_AMX=0, say);
// EnvFlagSet a hook that is off unless the variable is set to something other than "" or "0".
inline bool EnvSwitchOn(const char* name) {
  const char* p = std::getenv(name);
  return !(p && std::strcmp(p, "0") == 0);
}
inline bool EnvFlagSet(const char* name) {
  const char* p = std::getenv(name);
  return p && *p && std::strcmp(p, "0") != 0;
}

// Test hook: KSHARE_NATIVE_POISON=1 fills every output with NaN before a kernel writes it, so an
// element a kernel leaves unwritten shows up in the parity tests. Read at every call.
inline bool PoisonOutputs() { return EnvFlagSet("KSHARE_NATIVE_POISON"); }

// A software prefetch of p's cache line (for writing: its line claimed for ownership) that GCC
// 12 cannot drop: at -O2 it deleted __builtin_prefetch and _mm_prefetch in a conditional loop over
// the row kernels' pointer arrays (no prefetch left in the binary).
inline void FetchLine(const float* p, bool forWriting) {
#if defined(__x86_64__) || defined(__i386__)
  if (forWriting) asm volatile("prefetchw %0" : : "m"(*reinterpret_cast<const char*>(p)));
  else asm volatile("prefetcht0 %0" : : "m"(*reinterpret_cast<const char*>(p)));
#else
  __builtin_prefetch(p, forWriting ? 1 : 0);
#endif
}

// The cap KSHARE_NATIVE_ISA puts on kshare's vector kernels (tests, benchmarks): avx2, generic (the
// portable code), or none (the widest the CPU has). Read at every call.
enum class IsaCap { kNone, kAvx2, kGeneric };
inline IsaCap NativeIsaCap() {
  const char* isa = std::getenv("KSHARE_NATIVE_ISA");
  if (isa && std::strcmp(isa, "generic") == 0) return IsaCap::kGeneric;
  if (isa && std::strcmp(isa, "avx2") == 0) return IsaCap::kAvx2;
  return IsaCap::kNone;
}

// The layout kshare's row kernels treat a 4-D tensor as: channels-last only where it is not also
// NCHW-contiguous (C == 1 or H * W == 1 counts as NCHW).
inline bool ChannelsLastOnly(const at::Tensor& x) { return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast); }
inline at::MemoryFormat LayoutOf(const at::Tensor& x) {
  return ChannelsLastOnly(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// An uninitialised output (NaN-filled under KSHARE_NATIVE_POISON).
inline at::Tensor NewOutput(at::IntArrayRef sizes, const at::TensorOptions& opts, at::MemoryFormat fmt) {
  at::Tensor t = at::empty(sizes, opts.memory_format(fmt));
  if (PoisonOutputs()) t.fill_(std::numeric_limits<float>::quiet_NaN());
  return t;
}

// A tensor held as its producer's BatchNorm output pass would write it, never stored: NCHW value
// fma(g, scale[c], shift[c]) for the kept GELU output g, one fused multiply-add a value, as the
// pass rounds it (native/conv_gelu_bn.cc's run of ConvMixer training blocks).
struct ChannelAffine {
  const float* scale;
  const float* shift;
};

// Receives one NCHW row (n, c) of a tensor that is produced row by row and never stored: index
// n * C + c and H * W contiguous floats, valid during the call. Called from libtorch's intra-op
// threads, rows in any order (the convolutions' outputs handed to the fused GELU/BN pass,
// native/conv_gelu_bn.cc).
using RowSink = std::function<void(int64_t, const float*)>;

// The backward's counterpart: writes NCHW row (n, c) (index n * C + c, H * W floats) of a
// gradient that is produced row by row into `out`, for a kernel that consumes it while in cache
// (the fused GELU/BN backward's rows handed to the 1x1 convolution's backward,
// native/conv_gelu_bn.cc). Called from libtorch's intra-op threads, rows in any order.
using RowProducer = std::function<void(int64_t, float*)>;

// One part (a row or a block of rows) of a channel's values: how many, their sum, and their
// squared deviations around `centre`, the part's mean rounded to float.
struct PartMoments {
  double count, sum, sq, centre;
};

// A channel's mean and biased variance over `total` values from its parts, part(i) for i in
// [0, parts), combined in part order (Chan et al.'s pairwise formula), so the result does not
// depend on how the parts were computed in parallel.
template <class Part>
inline void ChannelMoments(int64_t parts, double total, Part part, double* mean, double* var) {
  double sum = 0;
  for (int64_t i = 0; i < parts; i++) sum += part(i).sum;
  const double mu = sum / total;
  double m2 = 0;
  for (int64_t i = 0; i < parts; i++) {
    const PartMoments p = part(i);
    // p.sq is taken around the rounded part mean; shift it to the exact part mean, then to mu.
    const double pmu = p.sum / p.count, corr = pmu - p.centre, d = pmu - mu;
    m2 += p.sq - p.count * corr * corr + p.count * d * d;
  }
  *mean = mu;
  *var = m2 / total;
}

// ChannelMoments over the row blocks of channels-last data: R rows (pixels) in blocks of rb,
// each block's per-channel sum, squared deviations and centre in arrays [block][C]; channel c.
inline void RowBlockMoments(int64_t C, int64_t c, int64_t R, int64_t rb, double total, const float* sum, const float* sq,
                            const float* centre, double* mean, double* var) {
  ChannelMoments(
      (R + rb - 1) / rb, total,
      [&](int64_t k) {
        const double cnt = static_cast<double>(std::min(R, (k + 1) * rb) - k * rb);
        return PartMoments{cnt, sum[k * C + c], sq[k * C + c], centre[k * C + c]};
      },
      mean, var);
}

}  // namespace kshare
