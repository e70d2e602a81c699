// Softmax family and dropout (elementwise activations are in elementwise.ts).
import { runKernel } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { tensorArg, dimArg, floatArg, numberArg } from '../validate.js';

export function softmax(x: Tensor, dim = -1): Tensor {
  tensorArg('softmax', 'x', x);
  floatArg('softmax', 'x', x);
  return wrap(runKernel('softmax', 'softmax', [x.handle, dimArg('softmax', x, dim), null]));
}

export function logSoftmax(x: Tensor, dim = -1): Tensor {
  tensorArg('logSoftmax', 'x', x);
  floatArg('logSoftmax', 'x', x);
  return wrap(runKernel('logSoftmax', 'logSoftmax', [x.handle, dimArg('logSoftmax', x, dim), null]));
}

/** Zeroes elements with probability p and scales the rest by 1/(1-p); identity when not training. */
export function dropout(x: Tensor, p: number, training: boolean): Tensor {
  tensorArg('dropout', 'x', x);
  numberArg('dropout', 'p', p);
  if (p < 0 || p > 1) throw new RangeError(`dropout: p must be in [0, 1], got ${p}`);
  return wrap(runKernel('dropout', 'dropout', [x.handle, p, training]));
}
