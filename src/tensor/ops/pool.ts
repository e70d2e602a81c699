// Pooling.
import { runKernel } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { tensorArg, rankArg, pairArg } from '../validate.js';

/** Averages (N, C, H, W) into (N, C, outH, outW) bins, PyTorch's bin edges. */
export function adaptiveAvgPool2d(x: Tensor, outputSize: number | [number, number] = 1): Tensor {
  tensorArg('adaptiveAvgPool2d', 'input', x);
  rankArg('adaptiveAvgPool2d', 'input', x, 3, 4);
  return wrap(runKernel('adaptiveAvgPool2d', 'adaptiveAvgPool2d', [x.handle, pairArg('adaptiveAvgPool2d', 'outputSize', outputSize, 1)]));
}

export function avgPool2d(x: Tensor, kernel: number | [number, number], stride?: number | [number, number], padding: number | [number, number] = 0): Tensor {
  tensorArg('avgPool2d', 'input', x);
  rankArg('avgPool2d', 'input', x, 3, 4);
  const k = pairArg('avgPool2d', 'kernel', kernel, 1);
  return wrap(runKernel('avgPool2d', 'avgPool2d', [x.handle, k, pairArg('avgPool2d', 'stride', stride ?? k, 1), pairArg('avgPool2d', 'padding', padding)]));
}

/** Max over kernel windows (padding counts as -inf), PyTorch's max_pool2d without ceil mode. */
export function maxPool2d(x: Tensor, kernel: number | [number, number], stride?: number | [number, number], padding: number | [number, number] = 0): Tensor {
  const op = 'maxPool2d';
  tensorArg(op, 'input', x);
  rankArg(op, 'input', x, 3, 4);
  const k = pairArg(op, 'kernel', kernel, 1);
  const p = pairArg(op, 'padding', padding);
  if (p[0] * 2 > k[0] || p[1] * 2 > k[1]) throw new RangeError(`${op}: padding [${p}] must be at most half the kernel [${k}]`);
  return wrap(runKernel(op, 'maxPool2d', [x.handle, k, pairArg(op, 'stride', stride ?? k, 1), p, [1, 1], false]));
}
