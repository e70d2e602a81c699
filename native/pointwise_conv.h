// The 1x1 convolution's CPU entry points (pointwise_conv.cc, built with oneDNN only) for kernels
// built on it: the ConvMixer block's second half (conv_gelu_bn.cc). Same scope and checks as the
// operators.
#pragma once
#ifdef KSHARE_HAVE_DNNL
#include <ATen/ATen.h>

#include "amx_gemm.h"
#include "cpu_kernel_common.h"

#include <array>
#include <functional>
#include <memory>
#include <tuple>

namespace kshare_pw {

// While one is alive on the calling thread, the 1x1 operators pack each weight for AMX once (by
// its data) and reuse the pack: for a caller whose weights cannot change while it runs and which
// uses one several times (conv_gelu_bn.cc's run of training blocks with a shared 1x1 kernel).
class WeightPackScope {
 public:
  WeightPackScope();
  ~WeightPackScope();
  WeightPackScope(const WeightPackScope&) = delete;
  WeightPackScope& operator=(const WeightPackScope&) = delete;

 private:
  void* previous_;
  void* cache_;
};

// kshare::pointwise_conv2d and its backward on CPU (no autograd).
at::Tensor ForwardCpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor> BackwardCpu(const at::Tensor& gradOutput, const at::Tensor& input,
                                                           const at::Tensor& weight, std::array<bool, 3> mask);

// Whether ForwardRows runs: an NCHW contiguous, non-empty input.
bool RowsApply(const at::Tensor& input, const at::Tensor& weight);

// The forward without bias, image by image (or, with fewer images than threads, a block of output
// channels at a time) into a per-thread buffer, each output row handed to `sink` while in cache
// and never written out as a tensor.
// With `prepare`, prepare(n) is called once for each image n, on the thread that then multiplies
// it, before its product reads image n of `input` (which prepare may write): an input formed
// image by image just before it is read (conv_gelu_bn.cc's training run), so it is read from cache.
using ImagePrep = std::function<void(int64_t)>;
void ForwardRows(const at::Tensor& input, const at::Tensor& weight, const kshare::RowSink& sink, const ImagePrep* prepare = nullptr);

// ForwardRows' tasks for `threads` threads (an image, or a block of an image's output channels,
// each), for a caller that shares them out itself (native/convmixer_blocks.cc) with
// ForwardRowRange: tasks [begin, end) on the calling thread, through `buffer` (bufferFloats
// floats). The caller has checked RowsApply; weight contiguous.
// With tasks.amx the products run on AMX tiles (amx_gemm.h) from `packed`, the weight as
// PackWeight packs it (then the channel blocks are multiples of 32).
struct RowTasks {
  int64_t count, block, parts, bufferFloats;
  bool amx;
};
RowTasks ForwardRowTasks(const at::Tensor& input, const at::Tensor& weight, int64_t threads);
std::shared_ptr<const kshare_amx::Packed> PackWeight(const at::Tensor& weight);
void ForwardRowRange(const at::Tensor& input, const at::Tensor& weight, const RowTasks& tasks, int64_t begin, int64_t end,
                     float* buffer, const kshare::RowSink& sink, const kshare_amx::Packed* packed, const ImagePrep* prepare = nullptr);

// Whether BackwardRows runs: an NCHW contiguous, non-empty input with at least as many images as
// threads.
bool BackwardRowsApply(const at::Tensor& input, const at::Tensor& weight);

// Input and weight gradients (as BackwardCpu) from a grad output that is produced row by row by
// `gradRows`, image by image into a per-thread buffer, and never written out as a tensor.
// With `inputGradImage` (and needInput), it is called with each image n's input gradient (in x HW
// floats, in cache) as soon as it is written: in parallel, each image once.
using ImageSink = std::function<void(int64_t, const float*)>;
std::tuple<at::Tensor, at::Tensor> BackwardRows(const kshare::RowProducer& gradRows, const at::Tensor& input, const at::Tensor& weight,
                                                bool needInput, bool needWeight, const ImageSink* inputGradImage = nullptr);

}  // namespace kshare_pw
#endif  // KSHARE_HAVE_DNNL
