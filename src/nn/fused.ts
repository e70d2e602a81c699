// Layer sequences that run as one fused kernel where it applies.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { Module } from './module.js';
import { Conv2d } from './conv.js';
import { GELU } from './activation.js';
import { BatchNorm2d } from './batchnorm.js';

/**
 * ConvMixer's block halves as one operator each (native/conv_gelu_bn.cc) unless
 * KSHARE_NATIVE_BLOCKS=0 (read at every call: the convolution, the fused GELU/BN kernel and the
 * residual add as separate operators, for tests and comparisons).
 */
function blocksEnabled(): boolean {
  return process.env.KSHARE_NATIVE_BLOCKS !== '0';
}

/**
 * A run of ConvMixer blocks in inference as one operator (convMixerBlocks) unless
 * KSHARE_NATIVE_BLOCK_RUN=0 (read at every call: each block's two halves as operators of their
 * own, for tests and bench/route-ab.ts). KSHARE_NATIVE_BLOCKS=0 turns this off too.
 */
function blockRunEnabled(): boolean {
  return blocksEnabled() && process.env.KSHARE_NATIVE_BLOCK_RUN !== '0';
}

/**
 * A run of ConvMixer blocks in training as one operator (convMixerTrainingRun) unless
 * KSHARE_NATIVE_TRAINING_RUN=0 (read at every call: a block node each, for tests and
 * bench/route-ab.ts). KSHARE_NATIVE_BLOCKS=0 and KSHARE_NATIVE_BLOCK_NODE=0 turn this off too.
 */
function trainingRunEnabled(): boolean {
  return blocksEnabled() && process.env.KSHARE_NATIVE_BLOCK_NODE !== '0' && process.env.KSHARE_NATIVE_TRAINING_RUN !== '0';
}

/**
 * A patch-embedding convolution (ConvMixer's stem) with its GELU and BatchNorm through the fused
 * 1x1 operator (patchAsPointwise) unless KSHARE_NATIVE_PATCH_STEM=0 (read at every call, for
 * bench/route-ab.ts); KSHARE_NATIVE_BLOCKS=0 turns this off too.
 */
function patchStemEnabled(): boolean {
  return blocksEnabled() && process.env.KSHARE_NATIVE_PATCH_STEM !== '0';
}

interface FusableParts {
  conv: Conv2d;
  bn: BatchNorm2d;
  /** kshare's convolution kernel conv2d runs the layer's convolution on for x (t.conv2dKernel). */
  kernel: ReturnType<typeof t.conv2dKernel>;
  /** The conv bias (added by the fused kernel, not by the convolution). */
  bias: Tensor;
  /** The BatchNorm's options for the fused kernel; counts the batch (call once, when fusing). */
  bnOptions(): t.BiasGeluBatchNormOptions;
}

/**
 * The parts of Conv2d (with bias) → exact GELU → BatchNorm2d when kshare's fused CPU kernels
 * apply to them and input x: not CPU float32, autocast, `KSHARE_NATIVE_KERNELS=0`, or a layer
 * configured differently give null, and the caller then runs the layers one by one.
 */
function fusableParts(conv: Module, gelu: Module, bn: Module, x: Tensor): FusableParts | null {
  if (!(conv instanceof Conv2d) || !(gelu instanceof GELU) || !(bn instanceof BatchNorm2d)) return null;
  // A layer whose forward was replaced on the instance (shape tracing in models/summary.ts,
  // a user's hook) must run as itself.
  if ([conv, gelu, bn].some((m) => m.forwardReplaced)) return null;
  const bias = conv.bias,
    weight = bn.weight,
    bnBias = bn.bias,
    runningMean = bn.runningMean,
    runningVar = bn.runningVar;
  if (gelu.approximate !== 'none' || !bias || !weight || !bnBias || !runningMean || !runningVar) return null;
  if (!t.cpuKernelsAllowed()) return null;
  if (x.rank !== 4 || x.device !== 'cpu' || x.dtype !== 'float32' || conv.weight.dtype !== 'float32') return null;
  for (const p of [bias, weight, bnBias, runningMean, runningVar]) if (p.device !== 'cpu' || p.dtype !== 'float32') return null;
  if (bn.numFeatures !== conv.outChannels) return null; // let BatchNorm2d raise its own error
  return {
    conv,
    bn,
    kernel: t.conv2dKernel(x, conv.weight, bias, { groups: conv.groups, stride: conv.stride, padding: conv.padding, dilation: conv.dilation }),
    bias,
    bnOptions: () => ({ weight, bias: bnBias, runningMean, runningVar, training: bn.training, momentum: bn.countBatch(), eps: bn.eps }),
  };
}

/**
 * Conv2d (with bias) → exact GELU → BatchNorm2d, as ConvMixer uses it: the convolution without
 * its bias, then kshare's fused bias + GELU + BatchNorm kernel (native/fused_gelu_bn.cc), which
 * is several times faster than libtorch's three ops on the CPU; a 1x1 convolution and the kernel
 * run as one operator (native/conv_gelu_bn.cc) that hands the convolution's output to the kernel
 * image by image instead of storing it. The parameters, buffers and running-stat updates are
 * exactly the layers' own. Returns null where the kernel does not apply (see fusableParts), and
 * the caller then runs the layers one by one.
 */
export function convGeluBatchNorm(conv: Module, gelu: Module, bn: Module, x: Tensor): Tensor | null {
  const p = fusableParts(conv, gelu, bn, x);
  if (!p) return null;
  if (p.kernel === 'pointwise' && blocksEnabled()) {
    if (p.bn.training && x.size / x.dim(1) <= 1) return null; // BatchNorm2d raises its usual error
    return t.pointwiseGeluBatchNorm(x, p.conv.weight, p.bias, p.bnOptions());
  }
  const patch = patchStemEnabled() ? patchAsPointwise(p, x) : null;
  if (patch) return patch;
  return t.tidy(() => {
    const z = p.conv.convolve(x, false);
    if (p.bn.training && z.size / z.dim(1) <= 1) return null; // BatchNorm2d raises its usual error
    return t.biasGeluBatchNorm(z, p.bias, p.bnOptions());
  });
}

/**
 * A patch embedding (ConvMixer's stem: kernel = stride = r, no padding, groups 1) is a 1x1
 * convolution of pixelUnshuffle(x, r) with the weight viewed as [out, in·r², 1, 1] (the same
 * channel order), so it runs through the fused 1x1 operator as well: its output is never stored
 * and oneDNN's reorders around the strided convolution go. ConvMixer-256/8's stem and its
 * GELU/BatchNorm took ~3.5 ms of a 1-thread training step as three operators. Null where that
 * does not apply (the caller then takes the generic route).
 */
function patchAsPointwise(p: FusableParts, x: Tensor): Tensor | null {
  const { conv } = p;
  const [kh, kw] = conv.kernelSize;
  const r = kh;
  if (r < 2 || kw !== r || conv.stride[0] !== r || conv.stride[1] !== r || conv.groups !== 1) return null;
  if (conv.padding[0] !== 0 || conv.padding[1] !== 0 || conv.dilation[0] !== 1 || conv.dilation[1] !== 1) return null;
  if (x.dim(2) % r || x.dim(3) % r || !t.isContiguous(x)) return null;
  if (p.bn.training && x.size / (x.dim(1) * r * r) <= 1) return null; // BatchNorm2d raises its usual error
  return t.tidy(() => {
    const xs = t.pixelUnshuffle(x, r);
    const w = conv.weight.view([conv.outChannels, conv.inChannels * r * r, 1, 1]);
    const route = t.conv2dKernel(xs, w, p.bias, { groups: 1, stride: [1, 1], padding: [0, 0], dilation: [1, 1] });
    return route === 'pointwise' ? t.pointwiseGeluBatchNorm(xs, w, p.bias, p.bnOptions()) : null;
  });
}

/**
 * x + BatchNorm2d(GELU(depthwise Conv2d(x))), the residual half of a ConvMixer block, in one
 * operator (native/conv_gelu_bn.cc) that adds the residual inside the kernels' own passes.
 * Applies where convGeluBatchNorm does and conv2d would run the convolution on kshare's depthwise
 * kernel (t.conv2dKernel: one odd k x k filter per channel, stride 1, "same" padding); null
 * otherwise.
 */
export function depthwiseGeluBatchNormResidual(conv: Module, gelu: Module, bn: Module, x: Tensor): Tensor | null {
  if (!blocksEnabled()) return null;
  const p = fusableParts(conv, gelu, bn, x);
  if (!p || p.kernel !== 'depthwise') return null;
  if (p.bn.training && x.size / x.dim(1) <= 1) return null; // BatchNorm2d raises its usual error
  return t.depthwiseGeluBatchNormResidual(x, p.conv.weight, p.bias, { ...p.bnOptions(), dilation: p.conv.dilation });
}

/**
 * A run of ConvMixer blocks for inference as one operator (native/convmixer_blocks.cc): each
 * block's six layers [depthwise Conv2d, GELU, BatchNorm2d, 1x1 Conv2d, GELU, BatchNorm2d] (the
 * Residual covering the first three), given by the caller. Applies where both halves would take
 * their fused operators (depthwiseGeluBatchNormResidual, convGeluBatchNorm's pointwise route),
 * with a square kernel at dilation 1, NCHW contiguous input, every BatchNorm in eval mode and no
 * gradient to record (no grad mode, or nothing requiring grad); null otherwise, and the caller
 * runs the blocks one by one. The numbers are those of the two operators a block, bit for bit;
 * the gain is one parallel region for the whole run instead of two operator calls a block
 * (batch-1 inference at 2 threads: bench/cpu-kernels-notes.md).
 */
export function convMixerBlocks(blocks: readonly (readonly Module[])[], x: Tensor): Tensor | null {
  // Training (any BatchNorm) declines first: that is every training step's forward.
  if (blocks.length === 0 || blocks.some((l) => l.length !== 6 || !isEvalBatchNorm(l[2]) || !isEvalBatchNorm(l[5]))) return null;
  if (!blockRunEnabled() || !t.cpuKernelsAllowed()) return null;
  if (x.rank !== 4 || x.device !== 'cpu' || x.dtype !== 'float32' || !t.isContiguous(x)) return null;
  const params: t.ConvMixerBlockParams[] = [];
  for (const layers of blocks) {
    const dw = fusableParts(layers[0]!, layers[1]!, layers[2]!, x);
    const pw = fusableParts(layers[3]!, layers[4]!, layers[5]!, x);
    if (!dw || !pw || dw.kernel !== 'depthwise' || pw.kernel !== 'pointwise') return null;
    if (pw.conv.outChannels !== x.dim(1)) return null;
    const [, , kh, kw] = dw.conv.weight.shape;
    if (kh !== kw || dw.conv.dilation[0] !== 1 || dw.conv.dilation[1] !== 1) return null;
    params.push({ dwWeight: dw.conv.weight, dwBias: dw.bias, bn1: dw.bnOptions(), pwWeight: pw.conv.weight, pwBias: pw.bias, bn2: pw.bnOptions() });
  }
  const inputs = params.flatMap((p) => [p.dwWeight, p.dwBias, p.pwWeight, p.pwBias, p.bn1.weight, p.bn1.bias, p.bn2.weight, p.bn2.bias]);
  if (t.recordsGraph([x, ...inputs])) return null;
  return t.convMixerBlocks(x, params);
}

/**
 * A run of two or more ConvMixer blocks in training as one operator with autograd
 * (t.convMixerTrainingBlocks, native/conv_gelu_bn.cc): each block's layers as convMixerBlocks
 * takes them. Applies where every block would take convMixerBlock, every BatchNorm trains, a
 * gradient is recorded, x is NCHW contiguous and the blocks share one dilation; the numbers are
 * convMixerBlock's bit for bit, and no block's output but the last is stored. Null otherwise (the
 * caller runs the blocks one by one).
 */
export function convMixerTrainingRun(blocks: readonly (readonly Module[])[], x: Tensor): Tensor | null {
  if (blocks.length < 2 || blocks.some((l) => l.length !== 6 || !isTrainingBatchNorm(l[2]) || !isTrainingBatchNorm(l[5]))) return null;
  if (!trainingRunEnabled() || !t.cpuKernelsAllowed()) return null;
  if (x.rank !== 4 || x.device !== 'cpu' || x.dtype !== 'float32' || !t.isContiguous(x) || x.size / x.dim(1) <= 1) return null;
  const halves: [FusableParts, FusableParts][] = [];
  for (const layers of blocks) {
    const dw = fusableParts(layers[0]!, layers[1]!, layers[2]!, x);
    const pw = fusableParts(layers[3]!, layers[4]!, layers[5]!, x);
    if (!dw || !pw || dw.kernel !== 'depthwise' || pw.kernel !== 'pointwise' || pw.conv.outChannels !== x.dim(1)) return null;
    const [d0, d1] = dw.conv.dilation;
    const first = halves[0]?.[0].conv.dilation;
    if (first && (first[0] !== d0 || first[1] !== d1)) return null;
    halves.push([dw, pw]);
  }
  const differentiable = halves.flatMap(([dw, pw]) => [dw.conv.weight, dw.bias, dw.bn.weight, dw.bn.bias, pw.conv.weight, pw.bias, pw.bn.weight, pw.bn.bias]);
  if (!t.recordsGraph([x, ...differentiable])) return null;
  // blockOptions counts the batch: only once the run is sure to go ahead.
  return t.convMixerTrainingBlocks(
    x,
    halves.map(([dw, pw]) => blockOptions(dw, pw)),
  );
}

/** A block's operator options from its two halves' parts (counts each BatchNorm's batch: call once, when fusing). */
function blockOptions(dw: FusableParts, pw: FusableParts): t.ConvMixerBlockOptions {
  return {
    dwWeight: dw.conv.weight,
    dwBias: dw.bias,
    dilation: dw.conv.dilation,
    bn1: dw.bnOptions(),
    pwWeight: pw.conv.weight,
    pwBias: pw.bias,
    bn2: pw.bnOptions(),
  };
}

/**
 * One ConvMixer block [depthwise Conv2d, GELU, BatchNorm2d, 1x1 Conv2d, GELU, BatchNorm2d] (the
 * Residual covering the first three) as one operator with autograd (t.convMixerBlock,
 * native/conv_gelu_bn.cc) unless KSHARE_NATIVE_BLOCK_NODE=0 (read at every call, for
 * bench/route-ab.ts; KSHARE_NATIVE_BLOCKS=0 turns it off too). Applies where both halves would
 * take their fused operators; the numbers are theirs bit for bit, and in the NCHW training
 * backward one pass over memory a block goes. Null otherwise (the caller runs the block's layers).
 */
export function convMixerBlock(layers: readonly Module[], x: Tensor): Tensor | null {
  if (!blocksEnabled() || process.env.KSHARE_NATIVE_BLOCK_NODE === '0' || layers.length !== 6) return null;
  const dw = fusableParts(layers[0]!, layers[1]!, layers[2]!, x);
  // The 1x1 half's input has x's shape, dtype and device, all fusableParts looks at.
  const pw = dw && dw.kernel === 'depthwise' ? fusableParts(layers[3]!, layers[4]!, layers[5]!, x) : null;
  if (!dw || !pw || pw.kernel !== 'pointwise' || dw.bn.training !== pw.bn.training) return null;
  if (dw.bn.training && x.size / x.dim(1) <= 1) return null; // BatchNorm2d raises its usual error
  return t.convMixerBlock(x, blockOptions(dw, pw));
}

function isEvalBatchNorm(m: Module | undefined): boolean {
  return m instanceof BatchNorm2d && !m.training;
}

function isTrainingBatchNorm(m: Module | undefined): boolean {
  return m instanceof BatchNorm2d && m.training;
}
