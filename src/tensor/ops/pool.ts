// Pooling.
import { runKernel } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { tensorArg, rankArg, pairArg } from '../validate.js';
import { cpuKernelsAllowed } from '../runtime.js';
import { sum } from './reduce.js';
import { div } from './elementwise.js';

/** Averages (N, C, H, W) into (N, C, outH, outW) bins, PyTorch's bin edges. */
export function adaptiveAvgPool2d(x: Tensor, outputSize: number | [number, number] = 1): Tensor {
  tensorArg('adaptiveAvgPool2d', 'input', x);
  rankArg('adaptiveAvgPool2d', 'input', x, 3, 4);
  const size = pairArg('adaptiveAvgPool2d', 'outputSize', outputSize, 1);
  // To one bin on CPU, libtorch computes mean(x, [-2, -1], keepdim), which is sum then divide; so
  // is this, the same numbers both ways, but its backward divides the (N, C, 1, 1) gradient and
  // expands it as a view, where mean's divides the expanded gradient element by element, a
  // broadcasting loop ~3x the cost of the copy it replaces at ConvMixer-256's head (a throwaway
  // harness, bench/cpu-kernels-notes.md, nineteenth session; no bench/ row times the head alone).
  if (size[0] === 1 && size[1] === 1 && x.shape.length === 4 && x.dtype === 'float32' && x.device === 'cpu' && cpuKernelsAllowed()) {
    const s = sum(x, [2, 3], true);
    try {
      return div(s, x.shape[2]! * x.shape[3]!);
    } finally {
      s.dispose();
    }
  }
  return wrap(runKernel('adaptiveAvgPool2d', 'adaptiveAvgPool2d', [x.handle, size]));
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
