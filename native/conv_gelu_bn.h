// What native/conv_gelu_bn.cc (ConvMixer's block operators) reports to runtimeInfo().
#pragma once
#include <cstdint>

namespace kshare_block {

// How many kshare::convmixer_block backwards summed the depthwise half's BatchNorm rows inside the
// 1x1 half's backward (the hand-off the operator exists for) since the addon loaded: for the tests.
int64_t RowSumHandOffs();

// kshare::convmixer_training_blocks since the addon loaded: blocks whose forward read their input
// as the previous block's kept GELU output and BatchNorm (the output never stored), and block
// backwards whose 1x1 BatchNorm took its row sums from the next block's input gradient.
int64_t RunLazyInputs();
int64_t RunRowSumHandOffs();
// Blocks of a training run whose residual half's output was written image by image just before
// the 1x1 product read it (kshare_gbn::Forward::writeImage), so far in this process.
int64_t RunDeferredOutputs();

}  // namespace kshare_block
