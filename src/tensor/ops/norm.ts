// Batch normalisation.
import { runKernel } from '../kernels.js';
import type { Handle, KernelArg } from '../native.js';
import { Tensor, wrap, wrapList } from '../tensor.js';
import { adaptiveAvgPool2d } from './pool.js';
import { tensorArg, optTensorArg, floatArg, ShapeError, numberArg, describe } from '../validate.js';
import { cpuKernelsAllowed } from '../runtime.js';
import { isContiguous } from './convert.js';
import { relu } from './elementwise.js';

export interface BatchNormOptions {
  weight?: Tensor | null;
  bias?: Tensor | null;
  runningMean?: Tensor | null;
  runningVar?: Tensor | null;
  /** Training mode: normalise with batch statistics and update the running ones in place. */
  training: boolean;
  /** Running-statistics update factor, PyTorch's convention (new = (1-m)*old + m*batch). */
  momentum?: number;
  eps?: number;
}

/**
 * The arguments of kshare's BatchNorm kernels (native/batch_norm_relu.cc) where they take this
 * call, else null: kshare's CPU kernels allowed, options with a boolean 'training', a contiguous
 * (NCHW or channels-last) float32 CPU input of rank 4, and float32 CPU weight, bias and running
 * stats of shape [C]. Otherwise (CUDA, other strides, no affine or running stats, autocast, tracing) libtorch's
 * batch_norm runs, and batchNorm checks (and names) bad options.
 */
function nativeBatchNormArgs(x: Tensor, o: BatchNormOptions): KernelArg[] | null {
  const applies =
    o !== null &&
    typeof o === 'object' &&
    typeof o.training === 'boolean' &&
    cpuKernelsAllowed() &&
    x instanceof Tensor &&
    !x.isDisposed &&
    x.rank === 4 &&
    x.device === 'cpu' &&
    x.dtype === 'float32' &&
    (isContiguous(x) || isContiguous(x, 'channels_last')) &&
    [o.weight, o.bias, o.runningMean, o.runningVar].every(
      (p) => p instanceof Tensor && !p.isDisposed && p.device === 'cpu' && p.dtype === 'float32' && p.rank === 1 && p.dim(0) === x.dim(1) && isContiguous(p),
    );
  if (!applies) return null;
  if (o.training && x.size / x.dim(1) <= 1) throw new ShapeError(`batchNorm: expected more than 1 value per channel when training, got input [${x.shape}]`);
  const momentum = numberArg('batchNorm', 'momentum', o.momentum ?? 0.1);
  const eps = numberArg('batchNorm', 'eps', o.eps ?? 1e-5);
  return [x.handle, o.weight!.handle, o.bias!.handle, o.runningMean!.handle, o.runningVar!.handle, o.training, momentum, eps];
}

/**
 * Batch norm over dim 1 of an (N, C, ...) input; in kshare's CPU kernel where it applies
 * (nativeBatchNormArgs: libtorch 1.13's NCHW batch_norm makes several passes).
 */
export function batchNorm(x: Tensor, o: BatchNormOptions): Tensor {
  const op = 'batchNorm';
  if (o === null || typeof o !== 'object' || typeof o.training !== 'boolean') {
    throw new TypeError(`${op}: options must be an object with a boolean 'training', got ${describe(o)}`);
  }
  tensorArg(op, 'input', x);
  floatArg(op, 'input', x);
  if (x.rank < 2) throw new ShapeError(`${op}: input must be (N, C, ...), got shape [${x.shape}]`);
  const c = x.dim(1);
  const named: [string, Tensor | null][] = [
    ['weight', optTensorArg(op, 'weight', o.weight)],
    ['bias', optTensorArg(op, 'bias', o.bias)],
    ['runningMean', optTensorArg(op, 'runningMean', o.runningMean)],
    ['runningVar', optTensorArg(op, 'runningVar', o.runningVar)],
  ];
  for (const [name, t] of named) {
    if (t && (t.rank !== 1 || t.dim(0) !== c)) throw new ShapeError(`${op}: '${name}' must have shape [${c}] for input [${x.shape}], got [${t.shape}]`);
  }
  if (!o.training && (!o.runningMean || !o.runningVar)) throw new Error(`${op}: eval mode needs runningMean and runningVar`);
  if (o.training && x.size / c <= 1) throw new ShapeError(`${op}: expected more than 1 value per channel when training, got input [${x.shape}]`);
  const momentum = numberArg(op, 'momentum', o.momentum ?? 0.1);
  const eps = numberArg(op, 'eps', o.eps ?? 1e-5);
  const native = nativeBatchNormArgs(x, o);
  if (native) return wrap(runKernel(op, 'batchNormNative', native));
  return wrap(runKernel(op, 'batchNorm', [x.handle, ...named.map(([, t]) => t?.handle ?? null), o.training, momentum, eps, true]));
}

/**
 * relu(batchNorm(x, o)), in one fused CPU kernel (native/batch_norm_relu.cc) where it applies
 * (as batchNorm's kernel); otherwise exactly relu(batchNorm(x, o)). Same arguments and checks as
 * batchNorm.
 */
export function batchNormRelu(x: Tensor, o: BatchNormOptions): Tensor {
  const native = nativeBatchNormArgs(x, o);
  return native ? wrap(runKernel('batchNorm', 'batchNormRelu', native)) : relu(batchNorm(x, o));
}

/**
 * [batchNorm(x, o), its mean over each (n, c) plane as [N, C]]: a squeeze-excitation block's
 * BatchNorm and pooling. Where batchNorm's kernel applies, one kernel computes both
 * (native/batch_norm_relu.cc: the mean summed as the output is written, and its gradient joined
 * to the output's inside the BatchNorm backward); otherwise batchNorm then adaptiveAvgPool2d.
 */
export function batchNormPool(x: Tensor, o: BatchNormOptions): [Tensor, Tensor] {
  rank4('batchNormPool', x);
  const native = nativeBatchNormArgs(x, o);
  if (native) {
    const [y, pooled] = wrapList(runKernel('batchNorm', 'batchNormPool', native));
    return [y!, pooled!];
  }
  const y = batchNorm(x, o);
  const pooled4 = adaptiveAvgPool2d(y, 1);
  const pooled = pooled4.view([x.dim(0), x.dim(1)]);
  pooled4.dispose();
  return [y, pooled];
}

export interface BiasGeluBatchNormOptions {
  weight: Tensor;
  bias: Tensor;
  runningMean: Tensor;
  runningVar: Tensor;
  /** Training mode: batch statistics, and the running ones updated in place. */
  training: boolean;
  momentum?: number;
  eps?: number;
}

/**
 * Checks the arguments the fused GELU + BatchNorm kernels share (input, conv bias and BN options
 * for `c` channels after the convolution; `fallback` names the ops to use where they do not
 * apply) and returns the BN tensors' handles in the kernels' order, with momentum and eps.
 */
function geluBatchNormArgs(op: string, x: Tensor, c: number, convBias: Tensor, o: BiasGeluBatchNormOptions, fallback: string) {
  if (o === null || typeof o !== 'object' || typeof o.training !== 'boolean') {
    throw new TypeError(`${op}: options must be an object with a boolean 'training', got ${describe(o)}`);
  }
  const named: [string, Tensor][] = [
    ['convBias', convBias],
    ['weight', o.weight],
    ['bias', o.bias],
    ['runningMean', o.runningMean],
    ['runningVar', o.runningVar],
  ];
  for (const [name, t] of [['input', x] as [string, Tensor], ...named]) {
    tensorArg(op, name, t);
    if (t.dtype !== 'float32' || t.device !== 'cpu') {
      throw new TypeError(`${op}: '${name}' must be a float32 CPU tensor, got ${t.dtype} on ${t.device} (use ${fallback} elsewhere)`);
    }
    if (t !== x && (t.rank !== 1 || t.dim(0) !== c)) throw new ShapeError(`${op}: '${name}' must have shape [${c}] for input [${x.shape}], got [${t.shape}]`);
  }
  if (o.training && x.size / x.dim(1) <= 1) throw new ShapeError(`${op}: expected more than 1 value per channel when training, got input [${x.shape}]`);
  const [convBiasHandle, ...bnHandles] = named.map(([, t]) => t.handle);
  return { convBias: convBiasHandle!, bn: bnHandles, momentum: numberArg(op, 'momentum', o.momentum ?? 0.1), eps: numberArg(op, 'eps', o.eps ?? 1e-5) };
}

/** x must be a 4-D tensor: (N, C, H, W). */
function rank4(op: string, x: Tensor): void {
  tensorArg(op, 'input', x);
  if (x.rank !== 4) throw new ShapeError(`${op}: input must be (N, C, H, W), got shape [${x.shape}]`);
}

/**
 * batchNorm(gelu(x + convBias[c])) in one fused CPU kernel (native/fused_gelu_bn.cc): exact
 * GELU, BatchNorm2d semantics (see batchNorm). x: float32 CPU (N, C, H, W), NCHW or
 * channels-last; every other tensor float32 CPU [C]. Autograd gives gradients for x,
 * convBias and the BN weight and bias.
 */
export function biasGeluBatchNorm(x: Tensor, convBias: Tensor, o: BiasGeluBatchNormOptions): Tensor {
  const op = 'biasGeluBatchNorm';
  rank4(op, x);
  const a = geluBatchNormArgs(op, x, x.dim(1), convBias, o, 'conv2d, gelu and batchNorm');
  return wrap(runKernel(op, 'biasGeluBatchNorm', [x.handle, a.convBias, ...a.bn, o.training, a.momentum, a.eps]));
}

export interface DepthwiseGeluBatchNormResidualOptions extends BiasGeluBatchNormOptions {
  /** The depthwise convolution's dilation (padding is "same": dilation·(k-1)/2 a side). */
  dilation?: [number, number];
}

/**
 * x + biasGeluBatchNorm(conv2d(x, dwWeight, no bias, "same" padding, groups C), convBias, o): the
 * first half of a ConvMixer block in one CPU operator (native/conv_gelu_bn.cc), which adds the
 * residual inside the kernels' own passes instead of in passes of its own. dwWeight: float32 CPU
 * [C, 1, kh, kw] with odd kh and kw; everything else as biasGeluBatchNorm.
 */
export function depthwiseGeluBatchNormResidual(x: Tensor, dwWeight: Tensor, convBias: Tensor, o: DepthwiseGeluBatchNormResidualOptions): Tensor {
  const op = 'depthwiseGeluBatchNormResidual';
  rank4(op, x);
  const a = geluBatchNormArgs(op, x, x.dim(1), convBias, o, 'conv2d, gelu, batchNorm and add');
  depthwiseWeightArg(op, x, dwWeight);
  const dilation = dilationArg(op, o.dilation);
  return wrap(runKernel(op, 'depthwiseGeluBatchNormResidual', [x.handle, dwWeight.handle, a.convBias, dilation, ...a.bn, o.training, a.momentum, a.eps]));
}

/** dwWeight: a float32 CPU [C, 1, kh, kw] with odd kh and kw for input x's C channels. */
function depthwiseWeightArg(op: string, x: Tensor, dwWeight: Tensor): void {
  tensorArg(op, 'dwWeight', dwWeight);
  const [oc, icg, kh, kw] = dwWeight.shape;
  if (dwWeight.rank !== 4 || oc !== x.dim(1) || icg !== 1 || kh! % 2 === 0 || kw! % 2 === 0) {
    throw new ShapeError(`${op}: 'dwWeight' must be [${x.dim(1)}, 1, kh, kw] with odd kh and kw for input [${x.shape}], got [${dwWeight.shape}]`);
  }
  if (dwWeight.dtype !== 'float32' || dwWeight.device !== 'cpu') {
    throw new TypeError(`${op}: 'dwWeight' must be a float32 CPU tensor, got ${dwWeight.dtype} on ${dwWeight.device}`);
  }
}

function dilationArg(op: string, dilation: [number, number] | undefined): [number, number] {
  const d = dilation ?? [1, 1];
  if (!Array.isArray(d) || d.length !== 2 || !d.every((v) => Number.isInteger(v) && v >= 1)) {
    throw new RangeError(`${op}: dilation must be two positive integers, got ${describe(d)}`);
  }
  return d;
}

/** weight: a float32 CPU 1x1 kernel [out, C, 1, 1] for input x's C channels. */
function pointwiseWeightArg(op: string, x: Tensor, weight: Tensor, name = 'weight'): void {
  tensorArg(op, name, weight);
  if (weight.rank !== 4 || weight.dim(1) !== x.dim(1) || weight.dim(2) !== 1 || weight.dim(3) !== 1) {
    throw new ShapeError(`${op}: '${name}' must be [out, ${x.dim(1)}, 1, 1] for input [${x.shape}], got [${weight.shape}]`);
  }
  if (weight.dtype !== 'float32' || weight.device !== 'cpu') {
    throw new TypeError(`${op}: '${name}' must be a float32 CPU tensor, got ${weight.dtype} on ${weight.device}`);
  }
}

/**
 * biasGeluBatchNorm(conv2d(x, weight) with no bias, convBias, o) for a 1x1 convolution
 * (weight float32 CPU [out, C, 1, 1]): the second half of a ConvMixer block in one CPU operator
 * (native/conv_gelu_bn.cc; built with oneDNN only, as the 1x1 operator), which in NCHW hands each
 * image's output rows to the fused kernel's first pass instead of storing them. Every BN tensor
 * and convBias have shape [out]; everything else as biasGeluBatchNorm.
 */
export function pointwiseGeluBatchNorm(x: Tensor, weight: Tensor, convBias: Tensor, o: BiasGeluBatchNormOptions): Tensor {
  const op = 'pointwiseGeluBatchNorm';
  rank4(op, x);
  pointwiseWeightArg(op, x, weight);
  const a = geluBatchNormArgs(op, x, weight.dim(0), convBias, o, 'conv2d, gelu and batchNorm');
  return wrap(runKernel(op, 'pointwiseGeluBatchNorm', [x.handle, weight.handle, a.convBias, ...a.bn, o.training, a.momentum, a.eps]));
}

/** One ConvMixer block's parameters for convMixerBlock: the depthwise convolution's dilation too. */
export interface ConvMixerBlockOptions extends ConvMixerBlockParams {
  dilation?: [number, number];
}

/**
 * pointwiseGeluBatchNorm(depthwiseGeluBatchNormResidual(x, dwWeight, dwBias, bn1), pwWeight,
 * pwBias, bn2): a whole ConvMixer block as one CPU operator with autograd (native/conv_gelu_bn.cc,
 * built with oneDNN only), the same numbers bit for bit. In the NCHW training backward the
 * depthwise half's BatchNorm sums its output gradient as the 1x1 half's backward writes it,
 * instead of in a pass of its own. Arguments as those two ops; both BatchNorms in the same mode.
 */
export function convMixerBlock(x: Tensor, b: ConvMixerBlockOptions): Tensor {
  const op = 'convMixerBlock';
  rank4(op, x);
  if (b === null || typeof b !== 'object') throw new TypeError(`${op}: expected an object of block parameters, got ${describe(b)}`);
  depthwiseWeightArg(op, x, b.dwWeight);
  pointwiseWeightArg(op, x, b.pwWeight, 'pwWeight');
  const a1 = geluBatchNormArgs(`${op}, bn1`, x, x.dim(1), b.dwBias, b.bn1, 'the layers one by one');
  const a2 = geluBatchNormArgs(`${op}, bn2`, x, b.pwWeight.dim(0), b.pwBias, b.bn2, 'the layers one by one');
  if (b.bn1.training !== b.bn2.training) throw new TypeError(`${op}: 'bn1' and 'bn2' must both train or both evaluate`);
  const dilation = dilationArg(op, b.dilation);
  return wrap(
    runKernel(op, 'convMixerBlock', [
      x.handle,
      b.dwWeight.handle,
      a1.convBias,
      dilation,
      ...a1.bn,
      b.pwWeight.handle,
      a2.convBias,
      ...a2.bn,
      b.bn1.training,
      a1.momentum,
      a2.momentum,
      a1.eps,
      a2.eps,
    ]),
  );
}

/**
 * A run of ConvMixer blocks in training as one CPU operator with autograd
 * (native/conv_gelu_bn.cc, built with oneDNN only): convMixerBlock block after block, the same
 * numbers bit for bit, in one autograd node. Between two blocks of the run nothing else reads a
 * block's output, so the operator does not store it: the next block forms it from the kept GELU
 * output where it reads it, and sums the BatchNorm's backward rows as it writes its own input
 * gradient. x: float32 CPU (N, C, H, W), NCHW contiguous; each block maps C channels to C (1x1
 * weight [C, C, 1, 1]); every BatchNorm in training mode (its running stats updated in place).
 * A tensor given to several blocks (a shared kernel) gets its gradients summed once.
 */
export function convMixerTrainingBlocks(x: Tensor, blocks: readonly ConvMixerBlockOptions[]): Tensor {
  const op = 'convMixerTrainingBlocks';
  checkBlockRun(op, x, blocks);
  const c = x.dim(1);
  const params: Handle[] = [];
  const stats: Handle[] = [];
  const momentum: number[] = [];
  const eps: number[] = [];
  let dilation: [number, number] | undefined;
  blocks.forEach((b, i) => {
    const at = `${op} (block ${i})`;
    if (b === null || typeof b !== 'object') throw new TypeError(`${at}: expected an object of block parameters, got ${describe(b)}`);
    depthwiseWeightArg(at, x, b.dwWeight);
    pointwiseWeightArg(at, x, b.pwWeight, 'pwWeight');
    if (b.pwWeight.dim(0) !== c) throw new ShapeError(`${at}: 'pwWeight' must be [${c}, ${c}, 1, 1] for input [${x.shape}], got [${b.pwWeight.shape}]`);
    const d = dilationArg(at, b.dilation);
    if (dilation && (d[0] !== dilation[0] || d[1] !== dilation[1])) {
      throw new RangeError(`${at}: every block of a run must have the same dilation, got [${d}] after [${dilation}] (use convMixerBlock a block)`);
    }
    dilation = d;
    for (const [bn, name] of [
      [b.bn1, 'bn1'],
      [b.bn2, 'bn2'],
    ] as const) {
      if (bn === null || typeof bn !== 'object' || bn.training !== true) {
        throw new TypeError(`${at}: '${name}' must be in training mode (training true): for inference use convMixerBlocks`);
      }
    }
    const a1 = geluBatchNormArgs(`${at}, bn1`, x, c, b.dwBias, b.bn1, 'convMixerBlock a block');
    const a2 = geluBatchNormArgs(`${at}, bn2`, x, c, b.pwBias, b.bn2, 'convMixerBlock a block');
    const [w1, b1, rm1, rv1] = a1.bn;
    const [w2, b2, rm2, rv2] = a2.bn;
    params.push(b.dwWeight.handle, a1.convBias, w1!, b1!, b.pwWeight.handle, a2.convBias, w2!, b2!);
    stats.push(rm1!, rv1!, rm2!, rv2!);
    momentum.push(a1.momentum, a2.momentum);
    eps.push(a1.eps, a2.eps);
  });
  return wrap(runKernel(op, 'convMixerTrainingBlocks', [x.handle, params, stats, dilation!, momentum, eps]));
}

/** The checks both runs of blocks share: a 4-D NCHW-contiguous input and a non-empty array of blocks. */
function checkBlockRun(op: string, x: Tensor, blocks: unknown): void {
  rank4(op, x);
  if (!Array.isArray(blocks) || blocks.length === 0) throw new TypeError(`${op}: blocks must be a non-empty array, got ${describe(blocks)}`);
  if (!isContiguous(x)) throw new TypeError(`${op}: input must be NCHW contiguous, got a tensor of shape [${x.shape}] in another layout`);
}

/** One ConvMixer block's parameters for convMixerBlocks (each BatchNorm in eval mode). */
export interface ConvMixerBlockParams {
  /** The residual half: depthwise weight [C, 1, k, k] (odd k), its bias [C], then its BatchNorm. */
  dwWeight: Tensor;
  dwBias: Tensor;
  bn1: BiasGeluBatchNormOptions;
  /** The 1x1 half: weight [C, C, 1, 1], its bias [C], then its BatchNorm. */
  pwWeight: Tensor;
  pwBias: Tensor;
  bn2: BiasGeluBatchNormOptions;
}

/**
 * A run of ConvMixer blocks for inference in one CPU operator (native/convmixer_blocks.cc, built
 * with oneDNN only): for each block, x = depthwiseGeluBatchNormResidual(x, ...) then x =
 * pointwiseGeluBatchNorm(x, ...), the same numbers bit for bit, in one parallel region instead of
 * two operator calls a block. x: float32 CPU (N, C, H, W), NCHW contiguous; every BatchNorm in
 * eval mode (training false); no gradient flows through it (run under noGrad).
 */
export function convMixerBlocks(x: Tensor, blocks: readonly ConvMixerBlockParams[]): Tensor {
  const op = 'convMixerBlocks';
  checkBlockRun(op, x, blocks);
  const c = x.dim(1);
  const handles: Handle[] = [];
  const eps: number[] = [];
  blocks.forEach((b, i) => {
    const at = `${op} (block ${i})`;
    if (b === null || typeof b !== 'object') throw new TypeError(`${at}: expected an object of block parameters, got ${describe(b)}`);
    for (const [name, w, shape] of [
      ['dwWeight', b.dwWeight, [c, 1]],
      ['pwWeight', b.pwWeight, [c, c, 1, 1]],
    ] as const) {
      tensorArg(at, name, w);
      const ok = w.rank === 4 && shape.every((d, j) => w.dim(j) === d) && (name === 'pwWeight' || (w.dim(2) === w.dim(3) && w.dim(2) % 2 === 1));
      if (!ok)
        throw new ShapeError(
          `${at}: '${name}' must be ${name === 'dwWeight' ? `[${c}, 1, k, k] with odd k` : `[${c}, ${c}, 1, 1]`} for input [${x.shape}], got [${w.shape}]`,
        );
      if (w.dtype !== 'float32' || w.device !== 'cpu') throw new TypeError(`${at}: '${name}' must be a float32 CPU tensor, got ${w.dtype} on ${w.device}`);
    }
    const halves = [
      [b.dwWeight, geluBatchNormArgs(`${at}, bn1`, x, c, b.dwBias, b.bn1, 'the layers one by one')],
      [b.pwWeight, geluBatchNormArgs(`${at}, bn2`, x, c, b.pwBias, b.bn2, 'the layers one by one')],
    ] as const;
    for (const [bn, name] of [
      [b.bn1, 'bn1'],
      [b.bn2, 'bn2'],
    ] as const) {
      if (bn.training) throw new TypeError(`${at}: '${name}' must be in eval mode (training false): convMixerBlocks is for inference`);
    }
    for (const [w, a] of halves) {
      handles.push(w.handle, a.convBias, ...a.bn);
      eps.push(a.eps);
    }
  });
  return wrap(runKernel(op, 'convMixerBlocks', [x.handle, handles, eps]));
}
