// Dense layers and matrix products.
import { runKernel } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { tensorArg, optTensorArg, rankArg, sameDevice, ShapeError } from '../validate.js';

/** y = x W^T + b: x (..., in), weight (out, in), bias (out). */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null = null): Tensor {
  const op = 'linear';
  tensorArg(op, 'input', x);
  tensorArg(op, 'weight', weight);
  optTensorArg(op, 'bias', bias);
  rankArg(op, 'weight', weight, 2);
  sameDevice(op, ['input', x], ['weight', weight], ['bias', bias]);
  if (x.rank < 1 || x.dim(-1) !== weight.dim(1)) {
    throw new ShapeError(`${op}: input [${x.shape}] does not match weight [${weight.shape}] (last dim must be ${weight.dim(1)})`);
  }
  if (bias && (bias.rank !== 1 || bias.dim(0) !== weight.dim(0))) throw new ShapeError(`${op}: bias must have shape [${weight.dim(0)}], got [${bias.shape}]`);
  return wrap(runKernel(op, 'linear', [x.handle, weight.handle, bias?.handle ?? null]));
}

export function matmul(a: Tensor, b: Tensor): Tensor {
  tensorArg('matmul', 'a', a);
  tensorArg('matmul', 'b', b);
  if (a.rank === 0 || b.rank === 0) throw new ShapeError('matmul: both operands need at least one dimension');
  const k1 = a.dim(-1),
    k2 = b.rank === 1 ? b.dim(0) : b.dim(-2);
  if (k1 !== k2) throw new ShapeError(`matmul: shapes [${a.shape}] and [${b.shape}] are not aligned (${k1} != ${k2})`);
  sameDevice('matmul', ['a', a], ['b', b]);
  return wrap(runKernel('matmul', 'matmul', [a.handle, b.handle]));
}
