// Reductions over all elements or over chosen dims.
import { runKernel } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { tensorArg, dimArg, describe } from '../validate.js';

function dimsArg(op: string, x: Tensor, dims: number | number[]): number[] {
  const list = typeof dims === 'number' ? [dims] : dims;
  if (!Array.isArray(list)) throw new TypeError(`${op}: dims must be a number or an array of numbers, got ${describe(dims)}`);
  const norm = list.map((d) => dimArg(op, x, d));
  if (new Set(norm).size !== norm.length) throw new Error(`${op}: dims [${list}] repeat a dimension`);
  return norm;
}

export function sum(x: Tensor, dims?: number | number[], keepDim = false): Tensor {
  tensorArg('sum', 'x', x);
  if (dims === undefined) return wrap(runKernel('sum', 'sumAll', [x.handle]));
  return wrap(runKernel('sum', 'sumDim', [x.handle, dimsArg('sum', x, dims), keepDim]));
}

export function mean(x: Tensor, dims?: number | number[], keepDim = false): Tensor {
  tensorArg('mean', 'x', x);
  if (x.dtype === 'int64' || x.dtype === 'uint8' || x.dtype === 'bool' || x.dtype === 'int32') {
    throw new TypeError(`mean: needs a floating tensor, got ${x.dtype} (convert with .to('float32'))`);
  }
  if (dims === undefined) return wrap(runKernel('mean', 'meanAll', [x.handle]));
  return wrap(runKernel('mean', 'meanDim', [x.handle, dimsArg('mean', x, dims), keepDim]));
}

/** Maximum of all elements. */
export function max(x: Tensor): Tensor {
  tensorArg('max', 'x', x);
  if (x.size === 0) throw new Error('max: tensor is empty');
  return wrap(runKernel('max', 'maxAll', [x.handle]));
}

/** Maximum along a dim: [values, indices]. */
export function maxDim(x: Tensor, dim: number, keepDim = false): [Tensor, Tensor] {
  tensorArg('maxDim', 'x', x);
  const [v, i] = runKernel('maxDim', 'maxDim', [x.handle, dimArg('maxDim', x, dim), keepDim]) as unknown[];
  return [wrap(v), wrap(i)];
}

export function min(x: Tensor): Tensor {
  tensorArg('min', 'x', x);
  if (x.size === 0) throw new Error('min: tensor is empty');
  return wrap(runKernel('min', 'minAll', [x.handle]));
}

export function argmax(x: Tensor, dim: number, keepDim = false): Tensor {
  tensorArg('argmax', 'x', x);
  return wrap(runKernel('argmax', 'argmax', [x.handle, dimArg('argmax', x, dim), keepDim]));
}

export function argmin(x: Tensor, dim: number, keepDim = false): Tensor {
  tensorArg('argmin', 'x', x);
  return wrap(runKernel('argmin', 'argmin', [x.handle, dimArg('argmin', x, dim), keepDim]));
}

/** Vector p-norm of all elements (default 2). */
export function norm(x: Tensor, p = 2): Tensor {
  return wrap(runKernel('norm', 'norm', [tensorArg('norm', 'x', x).handle, p]));
}

export function variance(x: Tensor, dims: number | number[], correction = 1, keepDim = false): Tensor {
  tensorArg('variance', 'x', x);
  return wrap(runKernel('variance', 'var', [x.handle, dimsArg('variance', x, dims), correction, keepDim]));
}

/** Top-k along the last dim: [values, indices]. */
export function topk(x: Tensor, k: number, dim = -1): [Tensor, Tensor] {
  tensorArg('topk', 'x', x);
  const d = dimArg('topk', x, dim);
  if (!Number.isInteger(k) || k < 1 || k > x.dim(d)) throw new RangeError(`topk: k=${k} out of range for size ${x.dim(d)}`);
  const [v, i] = runKernel('topk', 'topk', [x.handle, k, d, true, true]) as unknown[];
  return [wrap(v), wrap(i)];
}

export function all(x: Tensor): Tensor {
  return wrap(runKernel('all', 'allAll', [tensorArg('all', 'x', x).handle]));
}
export function any(x: Tensor): Tensor {
  return wrap(runKernel('any', 'anyAll', [tensorArg('any', 'x', x).handle]));
}

/** Running sum along a dim (same shape as x). */
export function cumsum(x: Tensor, dim: number): Tensor {
  tensorArg('cumsum', 'x', x);
  return wrap(runKernel('cumsum', 'cumsum', [x.handle, dimArg('cumsum', x, dim), null]));
}

/** Maximum over dims (values only). */
export function amax(x: Tensor, dims: number | number[], keepDim = false): Tensor {
  tensorArg('amax', 'x', x);
  if (x.size === 0) throw new Error('amax: tensor is empty');
  return wrap(runKernel('amax', 'amax', [x.handle, dimsArg('amax', x, dims), keepDim]));
}

/** Minimum over dims (values only). */
export function amin(x: Tensor, dims: number | number[], keepDim = false): Tensor {
  tensorArg('amin', 'x', x);
  if (x.size === 0) throw new Error('amin: tensor is empty');
  return wrap(runKernel('amin', 'amin', [x.handle, dimsArg('amin', x, dims), keepDim]));
}
