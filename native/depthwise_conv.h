// The depthwise convolution's CPU entry points (depthwise_conv.cc) for kernels built on it: the
// ConvMixer residual block (conv_gelu_bn.cc). Same scope and checks as the operators.
#pragma once
#include <ATen/ATen.h>

#include "cpu_kernel_common.h"

#include <array>
#include <tuple>

namespace kshare_dw {

// kshare::depthwise_conv2d on CPU (no autograd).
at::Tensor ForwardCpu(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      at::IntArrayRef dilation);

// kshare::depthwise_conv2d_backward on CPU, with gradInputAddend (when defined: shaped like the
// input) added to the input gradient, in the pass that writes it where these kernels run.
// inputAffine (NCHW contiguous input only): input holds a kshare::ChannelAffine tensor's g.
// gradInputPlanes receives each NCHW plane of the input gradient as it is finished (addend
// included, still in cache), where the NCHW kernels write it; *gradInputPlanesSent says whether
// they did (not where oneDNN computes the input gradient).
std::tuple<at::Tensor, at::Tensor, at::Tensor> BackwardCpuPlus(const at::Tensor& gradOutput, const at::Tensor& input,
                                                               const at::Tensor& weight, at::IntArrayRef dilation,
                                                               std::array<bool, 3> mask, const at::Tensor& gradInputAddend,
                                                               const kshare::ChannelAffine* inputAffine = nullptr,
                                                               const kshare::RowSink* gradInputPlanes = nullptr,
                                                               bool* gradInputPlanesSent = nullptr);

// Whether ForwardPlanes runs for this convolution: NCHW contiguous input, a square kernel at
// dilation 1 that the plane kernel covers, and that route chosen (not KSHARE_NATIVE_DEPTHWISE_FORWARD=onednn).
bool PlanesApply(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef dilation);

// The forward without bias, each output plane handed to `sink` while in cache and never
// written out as a tensor.
// With inputAffine, input holds a kshare::ChannelAffine tensor's g.
void ForwardPlanes(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef dilation, const kshare::RowSink& sink,
                   const kshare::ChannelAffine* inputAffine = nullptr);

// BackwardCpuPlus where PlanesApply, the input gradient always wanted, with the grad output
// produced plane by plane by `gradPlanes` (index n * C + c, into a per-thread buffer): each plane
// goes on to the input gradient and to its channel's weight-gradient sums while it is in cache,
// with the addend's plane, which the producer has just read too, so the grad output is never
// stored. The numbers are BackwardCpuPlus's bit for bit.
std::tuple<at::Tensor, at::Tensor> BackwardFromPlanes(const kshare::RowProducer& gradPlanes, const at::Tensor& input,
                                                      const at::Tensor& weight, at::IntArrayRef dilation,
                                                      bool needWeight, const at::Tensor& gradInputAddend,
                                                      const kshare::ChannelAffine* inputAffine = nullptr,
                                                      const kshare::RowSink* gradInputPlanes = nullptr,
                                                      bool* gradInputPlanesSent = nullptr);

// ForwardPlanes for planes [begin, end) only (index n * C + c), on the calling thread, for a
// caller that shares the planes out itself (native/convmixer_blocks.cc). Dilation 1; weight
// contiguous; the caller has checked PlanesApply.
void ForwardPlaneRange(const at::Tensor& input, const at::Tensor& weight, int64_t begin, int64_t end, const kshare::RowSink& sink);

}  // namespace kshare_dw
