// Elementwise arithmetic (with broadcasting), activations, comparisons and selection.
import { runKernel, runKernelInPlace, type KernelName } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { tensorArg, numberArg, sameDevice, describe, ShapeError } from '../validate.js';
import { cpuKernelsAllowed } from '../runtime.js';
import { isContiguous } from './convert.js';

type Operand = Tensor | number;

function broadcastShape(op: string, a: number[], b: number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`${op}: shapes [${a}] and [${b}] cannot be broadcast together`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

function binary(op: string, tk: KernelName, sk: KernelName, a: Tensor, b: Operand): Tensor {
  tensorArg(op, 'a', a);
  if (typeof b === 'number') return wrap(runKernel(op, sk, [a.handle, b]));
  tensorArg(op, 'b', b);
  broadcastShape(op, a.shape, b.shape);
  if (b.rank > 0 && a.rank > 0) sameDevice(op, ['a', a], ['b', b]);
  return wrap(runKernel(op, tk, [a.handle, b.handle]));
}

export function add(a: Tensor, b: Operand, alpha = 1): Tensor {
  if (alpha !== 1) {
    if (typeof b === 'number') return binary('add', 'add', 'addScalar', a, b * alpha);
    tensorArg('add', 'a', a);
    tensorArg('add', 'b', b);
    broadcastShape('add', a.shape, b.shape);
    if (b.rank > 0 && a.rank > 0) sameDevice('add', ['a', a], ['b', b]);
    return wrap(runKernel('add', 'add', [a.handle, b.handle, alpha]));
  }
  return binary('add', 'add', 'addScalar', a, b);
}
export const sub = (a: Tensor, b: Operand): Tensor => binary('sub', 'sub', 'subScalar', a, b);
export const mul = (a: Tensor, b: Operand): Tensor => binary('mul', 'mul', 'mulScalar', a, b);
export const div = (a: Tensor, b: Operand): Tensor => binary('div', 'div', 'divScalar', a, b);
export const eq = (a: Tensor, b: Operand): Tensor => binary('eq', 'eq', 'eqScalar', a, b);
export const ne = (a: Tensor, b: Operand): Tensor => binary('ne', 'ne', 'neScalar', a, b);
export const lt = (a: Tensor, b: Operand): Tensor => binary('lt', 'lt', 'ltScalar', a, b);
export const le = (a: Tensor, b: Operand): Tensor => binary('le', 'le', 'leScalar', a, b);
export const gt = (a: Tensor, b: Operand): Tensor => binary('gt', 'gt', 'gtScalar', a, b);
export const ge = (a: Tensor, b: Operand): Tensor => binary('ge', 'ge', 'geScalar', a, b);

export function maximum(a: Tensor, b: Tensor): Tensor {
  tensorArg('maximum', 'a', a);
  tensorArg('maximum', 'b', b);
  broadcastShape('maximum', a.shape, b.shape);
  if (b.rank > 0 && a.rank > 0) sameDevice('maximum', ['a', a], ['b', b]);
  return wrap(runKernel('maximum', 'maximum', [a.handle, b.handle]));
}
export function minimum(a: Tensor, b: Tensor): Tensor {
  tensorArg('minimum', 'a', a);
  tensorArg('minimum', 'b', b);
  broadcastShape('minimum', a.shape, b.shape);
  if (b.rank > 0 && a.rank > 0) sameDevice('minimum', ['a', a], ['b', b]);
  return wrap(runKernel('minimum', 'minimum', [a.handle, b.handle]));
}

export function pow(a: Tensor, exponent: number): Tensor {
  numberArg('pow', 'exponent', exponent);
  return wrap(runKernel('pow', 'pow', [tensorArg('pow', 'a', a).handle, exponent]));
}

function unary(op: string, k: KernelName) {
  return (x: Tensor): Tensor => wrap(runKernel(op, k, [tensorArg(op, 'x', x).handle]));
}
export const neg = unary('neg', 'neg');
export const exp = unary('exp', 'exp');
export const log = unary('log', 'log');
export const sqrt = unary('sqrt', 'sqrt');
export const rsqrt = unary('rsqrt', 'rsqrt');
export const abs = unary('abs', 'abs');
export const tanh = unary('tanh', 'tanh');
export const sigmoid = unary('sigmoid', 'sigmoid');
export const relu = unary('relu', 'relu');
export const floor = unary('floor', 'floor');
export const round = unary('round', 'round');
export const sign = unary('sign', 'sign');
export const isfinite = unary('isfinite', 'isfinite');
export const logicalNot = unary('logicalNot', 'logicalNot');

export function logicalAnd(a: Tensor, b: Tensor): Tensor {
  return wrap(runKernel('logicalAnd', 'logicalAnd', [tensorArg('logicalAnd', 'a', a).handle, tensorArg('logicalAnd', 'b', b).handle]));
}

/** GELU; 'none' is the exact erf form (PyTorch's default), 'tanh' the approximation. */
export function gelu(x: Tensor, approximate: 'none' | 'tanh' = 'none'): Tensor {
  if (approximate !== 'none' && approximate !== 'tanh') throw new TypeError(`gelu: approximate must be 'none' or 'tanh', got ${describe(approximate)}`);
  return wrap(runKernel('gelu', 'gelu', [tensorArg('gelu', 'x', x).handle, approximate]));
}

export function clamp(x: Tensor, min: number | null, max: number | null = null): Tensor {
  tensorArg('clamp', 'x', x);
  if (min !== null) numberArg('clamp', 'min', min);
  if (max !== null) numberArg('clamp', 'max', max);
  if (min === null && max === null) throw new TypeError('clamp: at least one of min and max is required');
  if (min !== null && max !== null && min > max) throw new RangeError(`clamp: min (${min}) is greater than max (${max})`);
  return wrap(runKernel('clamp', 'clamp', [x.handle, min, max]));
}

/** cond ? a : b elementwise (b may be a number). */
export function where(cond: Tensor, a: Tensor, b: Tensor | number): Tensor {
  tensorArg('where', 'cond', cond);
  tensorArg('where', 'a', a);
  if (cond.dtype !== 'bool') throw new TypeError(`where: 'cond' must be a bool tensor, got ${cond.dtype}`);
  if (typeof b === 'number') {
    broadcastShape('where', cond.shape, a.shape);
    return wrap(runKernel('where', 'whereScalar', [cond.handle, a.handle, b]));
  }
  tensorArg('where', 'b', b);
  broadcastShape('where', broadcastShape('where', cond.shape, a.shape), b.shape);
  return wrap(runKernel('where', 'where', [cond.handle, a.handle, b.handle]));
}

export function maskedFill(x: Tensor, mask: Tensor, value: number): Tensor {
  tensorArg('maskedFill', 'x', x);
  tensorArg('maskedFill', 'mask', mask);
  if (mask.dtype !== 'bool') throw new TypeError(`maskedFill: 'mask' must be a bool tensor, got ${mask.dtype}`);
  return wrap(runKernel('maskedFill', 'maskedFill', [x.handle, mask.handle, value]));
}

// ---- in place (optimizers, initialisers, running statistics) ----
export function add_(a: Tensor, b: Operand, alpha = 1): Tensor {
  tensorArg('add_', 'a', a);
  if (typeof b === 'number') runKernelInPlace('add_', 'addScalar_', [a.handle, b * alpha]);
  else runKernelInPlace('add_', 'add_', [a.handle, tensorArg('add_', 'b', b).handle, alpha]);
  return a;
}
export function mul_(a: Tensor, b: Operand): Tensor {
  tensorArg('mul_', 'a', a);
  if (typeof b === 'number') runKernelInPlace('mul_', 'mulScalar_', [a.handle, b]);
  else runKernelInPlace('mul_', 'mul_', [a.handle, tensorArg('mul_', 'b', b).handle]);
  return a;
}
export function div_(a: Tensor, b: Operand): Tensor {
  tensorArg('div_', 'a', a);
  if (typeof b === 'number') runKernelInPlace('div_', 'divScalar_', [a.handle, b]);
  else runKernelInPlace('div_', 'div_', [a.handle, tensorArg('div_', 'b', b).handle]);
  return a;
}
export function addcmul_(a: Tensor, t1: Tensor, t2: Tensor, value = 1): Tensor {
  runKernelInPlace('addcmul_', 'addcmul_', [
    tensorArg('addcmul_', 'a', a).handle,
    tensorArg('addcmul_', 't1', t1).handle,
    tensorArg('addcmul_', 't2', t2).handle,
    value,
  ]);
  return a;
}
export function addcdiv_(a: Tensor, t1: Tensor, t2: Tensor, value = 1): Tensor {
  runKernelInPlace('addcdiv_', 'addcdiv_', [
    tensorArg('addcdiv_', 'a', a).handle,
    tensorArg('addcdiv_', 't1', t1).handle,
    tensorArg('addcdiv_', 't2', t2).handle,
    value,
  ]);
  return a;
}
export function lerp_(a: Tensor, end: Tensor, weight: number): Tensor {
  runKernelInPlace('lerp_', 'lerp_', [tensorArg('lerp_', 'a', a).handle, tensorArg('lerp_', 'end', end).handle, weight]);
  return a;
}

/**
 * [relu](x * scale + residual) for an (N, C, H, W) input, a per-(image, channel) scale of shape
 * [N, C, 1, 1] and a residual of the input's shape: the tail of a squeeze-excitation residual
 * block. One pass each way in kshare's CPU kernel (native/channel_scale_add.cc) where it applies
 * (kshare's CPU kernels allowed, float32 CPU tensors, input and residual both NCHW or both
 * channels-last, a contiguous scale); exactly libtorch's
 * mul, add and relu otherwise.
 */
export function channelScaleAdd(x: Tensor, scale: Tensor, residual: Tensor, o: { relu: boolean }): Tensor {
  const op = 'channelScaleAdd';
  tensorArg(op, 'input', x);
  tensorArg(op, 'scale', scale);
  tensorArg(op, 'residual', residual);
  if (o === null || typeof o !== 'object' || typeof o.relu !== 'boolean')
    throw new TypeError(`${op}: options must be an object with a boolean 'relu', got ${describe(o)}`);
  if (x.rank !== 4) throw new ShapeError(`${op}: input must be (N, C, H, W), got shape [${x.shape}]`);
  const [n, c] = x.shape as [number, number];
  if (scale.rank !== 4 || scale.dim(0) !== n || scale.dim(1) !== c || scale.dim(2) !== 1 || scale.dim(3) !== 1) {
    throw new ShapeError(`${op}: scale must have shape [${n}, ${c}, 1, 1] for input [${x.shape}], got [${scale.shape}]`);
  }
  if (residual.shape.join() !== x.shape.join()) throw new ShapeError(`${op}: residual must have the input's shape [${x.shape}], got [${residual.shape}]`);
  sameDevice(op, ['input', x], ['scale', scale], ['residual', residual]);
  // Input and residual both NCHW or both channels-last; the scale [N, C, 1, 1] is contiguous either way.
  const sameLayout = (isContiguous(x) && isContiguous(residual)) || (isContiguous(x, 'channels_last') && isContiguous(residual, 'channels_last'));
  const native = cpuKernelsAllowed() && sameLayout && isContiguous(scale) && [x, scale, residual].every((v) => v.device === 'cpu' && v.dtype === 'float32');
  if (native) return wrap(runKernel(op, 'channelScaleAdd', [x.handle, scale.handle, residual.handle, o.relu]));
  const scaled = mul(x, scale);
  const y = add(scaled, residual);
  scaled.dispose();
  if (!o.relu) return y;
  const out = relu(y);
  y.dispose();
  return out;
}
