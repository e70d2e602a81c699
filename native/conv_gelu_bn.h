// What native/conv_gelu_bn.cc (ConvMixer's block operators) reports to runtimeInfo().
#pragma once
#include <cstdint>

namespace kshare_block {

// How many kshare::convmixer_block backwards summed the depthwise half's BatchNorm rows inside the
// 1x1 half's backward (the hand-off the operator exists for) since the addon loaded: for the tests.
int64_t RowSumHandOffs();

}  // namespace kshare_block
