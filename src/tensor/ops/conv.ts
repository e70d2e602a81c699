// 2-D convolution.
import { runKernel } from '../kernels.js';
import { cpuKernelsAllowed, runtimeInfo } from '../runtime.js';
import { recordsGraph } from '../engine.js';
import { Tensor, wrap } from '../tensor.js';
import { isContiguous } from './convert.js';
import { tensorArg, optTensorArg, rankArg, floatArg, sameDevice, pairArg, intArg, ShapeError, describe, optionsArg } from '../validate.js';

export interface Conv2dOptions {
  stride?: number | [number, number];
  /** Zero padding per side, or 'same' / 'valid' as in PyTorch. */
  padding?: number | [number, number] | 'same' | 'valid';
  dilation?: number | [number, number];
  groups?: number;
}

/** Output spatial size of a convolution, or an error naming the op if it would be empty. */
export function convOutputSize(op: string, inSize: number, k: number, s: number, p: number, d: number): number {
  const out = Math.floor((inSize + 2 * p - d * (k - 1) - 1) / s) + 1;
  if (out < 1) throw new ShapeError(`${op}: input size ${inSize} is too small for kernel ${k} (dilation ${d}, padding ${p})`);
  return out;
}

/** y = conv2d(x, weight, bias): x (N, C, H, W), weight (O, C/groups, kH, kW), bias (O). */
export function conv2d(x: Tensor, weight: Tensor, bias: Tensor | null = null, o: Conv2dOptions = {}): Tensor {
  const op = 'conv2d';
  o = optionsArg(op, o);
  tensorArg(op, 'input', x);
  tensorArg(op, 'weight', weight);
  optTensorArg(op, 'bias', bias);
  rankArg(op, 'input', x, 4);
  rankArg(op, 'weight', weight, 4);
  floatArg(op, 'input', x);
  sameDevice(op, ['input', x], ['weight', weight], ['bias', bias]);
  const groups = intArg(op, 'groups', o.groups ?? 1, 1);
  const stride = pairArg(op, 'stride', o.stride ?? 1, 1);
  const dilation = pairArg(op, 'dilation', o.dilation ?? 1, 1);
  const [, c, h, w] = x.shape as [number, number, number, number];
  const [oc, icg, kh, kw] = weight.shape as [number, number, number, number];
  if (c % groups !== 0 || oc % groups !== 0) {
    throw new ShapeError(`${op}: channels in ${c} and out ${oc} must both be divisible by groups ${groups}`);
  }
  if (icg * groups !== c) {
    throw new ShapeError(`${op}: weight [${weight.shape}] with groups ${groups} expects ${icg * groups} input channels, input [${x.shape}] has ${c}`);
  }
  if (bias && (bias.rank !== 1 || bias.dim(0) !== oc)) {
    throw new ShapeError(`${op}: bias must have shape [${oc}], got [${bias.shape}]`);
  }
  const padding = o.padding ?? 0;
  if (padding === 'same' || padding === 'valid') {
    if (padding === 'same' && (stride[0] !== 1 || stride[1] !== 1)) throw new ShapeError(`${op}: padding 'same' needs stride 1, got [${stride}]`);
    if (padding === 'valid') {
      convOutputSize(op, h, kh, stride[0], 0, dilation[0]);
      convOutputSize(op, w, kw, stride[1], 0, dilation[1]);
    }
    if (padding === 'same' && cpuFloat32(x, weight, bias) && fitsDepthwiseKernel(x, weight, groups, stride, null, dilation))
      return depthwise(x, weight, bias, dilation);
    // 'same' for a 3x3 kernel at stride 1 is padding 1 (conv2dKernel has checked the float32 CPU operands).
    if (padding === 'same' && conv2dKernel(x, weight, bias, { groups, stride, padding: [1, 1], dilation }) === 'conv3x3')
      return wrap(runKernel(op, 'conv3x3', [x.handle, weight.handle]));
    return wrap(runKernel(op, 'conv2dPadding', [x.handle, weight.handle, bias?.handle ?? null, stride, padding, dilation, groups]));
  }
  if (typeof padding === 'string') throw new TypeError(`${op}: padding must be a number, a pair, 'same' or 'valid', got ${describe(padding)}`);
  const pad = pairArg(op, 'padding', padding, 0);
  convOutputSize(op, h, kh, stride[0], pad[0], dilation[0]);
  convOutputSize(op, w, kw, stride[1], pad[1], dilation[1]);
  const kernel = conv2dKernel(x, weight, bias, { groups, stride, padding: pad, dilation });
  if (kernel === 'depthwise') return depthwise(x, weight, bias, dilation);
  if (kernel === 'pointwise') return wrap(runKernel(op, 'pointwiseConv2d', [x.handle, weight.handle, bias?.handle ?? null]));
  if (kernel === 'conv3x3') return wrap(runKernel(op, 'conv3x3', [x.handle, weight.handle]));
  if (cpuFloat32(x, weight, bias) && isPointwise(weight, groups, stride, pad) && oneDnnPointwiseApplies(x, weight, bias))
    return wrap(runKernel(op, 'mkldnnConv2d', [x.handle, weight.handle, bias?.handle ?? null, pad, stride, dilation, groups]));
  return wrap(runKernel(op, 'conv2d', [x.handle, weight.handle, bias?.handle ?? null, stride, pad, dilation, groups]));
}

/**
 * Which of kshare's CPU convolution kernels conv2d runs for these operands and (numeric)
 * options: 'depthwise' (native/depthwise_conv.cc), 'pointwise' (the 1x1 operator,
 * native/pointwise_conv.cc, where built and not KSHARE_NATIVE_POINTWISE=0), 'conv3x3' (the 3x3
 * operator on AMX tiles, native/amx_conv3x3.cc: see fitsConv3x3Kernel), or null (libtorch's or
 * oneDNN's convolution). Fused layers (src/nn/fused.ts) build on the same kernels, so they ask
 * here rather than repeat the conditions.
 */
export function conv2dKernel(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  o: { groups: number; stride: [number, number]; padding: [number, number]; dilation: [number, number] },
): 'depthwise' | 'pointwise' | 'conv3x3' | null {
  if (x.rank !== 4 || weight.rank !== 4 || weight.dim(1) * o.groups !== x.dim(1) || !cpuFloat32(x, weight, bias)) return null;
  if (fitsDepthwiseKernel(x, weight, o.groups, o.stride, o.padding, o.dilation)) return 'depthwise';
  if (isPointwise(weight, o.groups, o.stride, o.padding) && buildInfo().pointwiseKernel && process.env.KSHARE_NATIVE_POINTWISE !== '0') return 'pointwise';
  if (fitsConv3x3Kernel(x, weight, bias, o)) return 'conv3x3';
  return null;
}

/**
 * Above this many input x output channels the 3x3 operator's packed weight (9 C O x 6 bytes) no
 * longer pays for its reads from L3 or memory: native/amx_conv3x3.cc's kMaxChannelProduct, where
 * it is measured.
 */
const CONV3X3_MAX_CHANNEL_PRODUCT = 256 * 256;

/**
 * Whether a convolution goes to kshare's 3x3 operator (native/amx_conv3x3.cc, an autograd
 * operator whose products run on AMX tiles at float32 accuracy): a CPU with AMX-BF16, a 3 x 3
 * kernel with stride 1, padding 1, dilation 1, groups 1 and no bias, input and output channels
 * multiples of 32 and their product at most 256 x 256 (CONV3X3_MAX_CHANNEL_PRODUCT), an NCHW or
 * channels-last contiguous input. SE-ResNet's training step on CPU spends ~80 % of its
 * time in such convolutions, which otherwise run through oneDNN as in PyTorch. KSHARE_NATIVE_AMX=0
 * or KSHARE_NATIVE_CONV3X3=0 (read at every call) keeps them on libtorch's convolution.
 */
function fitsConv3x3Kernel(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  o: { groups: number; stride: [number, number]; padding: [number, number]; dilation: [number, number] },
): boolean {
  const [oc, ic, kh, kw] = weight.shape as [number, number, number, number];
  if (kh !== 3 || kw !== 3 || o.groups !== 1 || bias || ic % 32 !== 0 || oc % 32 !== 0 || ic * oc > CONV3X3_MAX_CHANNEL_PRODUCT) return false;
  if (o.stride[0] !== 1 || o.stride[1] !== 1 || o.padding[0] !== 1 || o.padding[1] !== 1 || o.dilation[0] !== 1 || o.dilation[1] !== 1) return false;
  if (!buildInfo().amxSupported || process.env.KSHARE_NATIVE_AMX === '0' || process.env.KSHARE_NATIVE_CONV3X3 === '0') return false;
  return x.size > 0 && (isContiguous(x) || isContiguous(x, 'channels_last'));
}

/**
 * kshare's CPU kernels allowed now (enabled, not under autocast, not while tracing), and every
 * operand a float32 CPU tensor: the condition for every route below. Everything else, and
 * everything with KSHARE_NATIVE_KERNELS=0, goes to libtorch's conv2d.
 */
function cpuFloat32(x: Tensor, weight: Tensor, bias: Tensor | null): boolean {
  if (!cpuKernelsAllowed() || x.device !== 'cpu') return false;
  return x.dtype === 'float32' && weight.dtype === 'float32' && (!bias || bias.dtype === 'float32');
}

/**
 * Whether a convolution fits kshare's depthwise kernel (native/depthwise_conv.cc, an autograd
 * operator): one filter per channel (groups = in = out channels, weight [C, 1, kh, kw]) of odd
 * size, stride 1, "same" padding (`pad` null means 'same').
 */
function fitsDepthwiseKernel(
  x: Tensor,
  weight: Tensor,
  groups: number,
  stride: [number, number],
  pad: [number, number] | null,
  dilation: [number, number],
): boolean {
  const c = x.shape[1]!;
  const [oc, icg, kh, kw] = weight.shape as [number, number, number, number];
  if (groups !== c || oc !== c || icg !== 1 || kh % 2 === 0 || kw % 2 === 0 || stride[0] !== 1 || stride[1] !== 1) return false;
  return pad === null || (pad[0] === (dilation[0] * (kh - 1)) / 2 && pad[1] === (dilation[1] * (kw - 1)) / 2);
}

function depthwise(x: Tensor, weight: Tensor, bias: Tensor | null, dilation: [number, number]): Tensor {
  return wrap(runKernel('conv2d', 'depthwiseConv2d', [x.handle, weight.handle, bias?.handle ?? null, dilation]));
}

let built: { mkldnn: boolean; pointwiseKernel: boolean; amxSupported: boolean } | undefined;
/**
 * What this build has, asked once: oneDNN in libtorch (not every build has it), and kshare's 1x1
 * operator (native/pointwise_conv.cc: matrix products in oneDNN's sgemm on the tensors as they
 * lie, with autograd; built only against oneDNN's headers). 1x1 convolutions go to that operator
 * where it is built, instead of libtorch 1.13's convolution, which reorders NCHW input, output and
 * grad output to oneDNN's blocked layout on every call. KSHARE_NATIVE_POINTWISE=0 (read at every
 * call) takes the route a build without it takes, for tests and comparisons. And whether the CPU
 * and OS allow AMX, for the 3x3 operator's route.
 */
function buildInfo(): { mkldnn: boolean; pointwiseKernel: boolean; amxSupported: boolean } {
  if (!built) {
    const info = runtimeInfo();
    built = { mkldnn: info.mkldnn, pointwiseKernel: info.pointwiseKernel, amxSupported: info.amxSupported };
  }
  return built;
}

/** A 1x1 convolution: groups 1, stride 1, no padding (dilation does not matter). */
function isPointwise(weight: Tensor, groups: number, stride: [number, number], pad: [number, number]): boolean {
  const [, , kh, kw] = weight.shape as [number, number, number, number];
  return kh === 1 && kw === 1 && groups === 1 && stride[0] === 1 && stride[1] === 1 && pad[0] === 0 && pad[1] === 0;
}

/** Below this many multiply-adds a 1x1 convolution stays on libtorch's choice (BLAS measured as fast). */
const POINTWISE_ONEDNN_MIN_MACS = 8 << 20;

/**
 * Where kshare's 1x1 operator is not built: whether a 1x1 convolution goes straight to oneDNN
 * (aten::mkldnn_convolution) instead of libtorch 1.13's choice. For a batch under 16 on one
 * thread libtorch picks its BLAS path, which measured 1.7x slower here at ConvMixer-256's
 * (1, 256, 32, 32) (1.26 ms against 0.73 ms: OpenBLAS runs its AVX2 kernels, oneDNN AVX-512
 * where the CPU has it). Inference only (no gradient recorded), oneDNN present.
 */
function oneDnnPointwiseApplies(x: Tensor, weight: Tensor, bias: Tensor | null): boolean {
  if (!buildInfo().mkldnn) return false;
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const oc = weight.shape[0]!;
  if (n >= 16 || n * h * w * c * oc < POINTWISE_ONEDNN_MIN_MACS) return false;
  return !recordsGraph([x, weight, bias]);
}
