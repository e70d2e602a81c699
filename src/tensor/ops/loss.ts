// Losses.
import { runKernel } from '../kernels.js';
import { Tensor, wrap } from '../tensor.js';
import { tensorArg, rankArg, floatArg, ShapeError, numberArg, optionsArg } from '../validate.js';

export type Reduction = 'none' | 'mean' | 'sum';
const REDUCTIONS: Record<Reduction, number> = { none: 0, mean: 1, sum: 2 };

export interface CrossEntropyOptions {
  reduction?: Reduction;
  /** Mixes targets with the uniform distribution: (1 - s) * target + s / classes. */
  labelSmoothing?: number;
}

/**
 * Cross-entropy of logits (N, C) against hard labels (N, int64 in [0, C)) or soft targets
 * (N, C, rows summing to 1), as PyTorch's F.cross_entropy.
 */
export function crossEntropy(logits: Tensor, target: Tensor, o: CrossEntropyOptions = {}): Tensor {
  const op = 'crossEntropy';
  o = optionsArg(op, o);
  tensorArg(op, 'logits', logits);
  tensorArg(op, 'target', target);
  rankArg(op, 'logits', logits, 2);
  floatArg(op, 'logits', logits);
  const [n, c] = logits.shape as [number, number];
  if (target.dtype === 'int64') {
    if (target.rank !== 1 || target.dim(0) !== n) throw new ShapeError(`${op}: hard labels must have shape [${n}], got [${target.shape}]`);
  } else if (target.rank === 2) {
    floatArg(op, 'target', target);
    if (target.dim(0) !== n || target.dim(1) !== c) throw new ShapeError(`${op}: soft targets must have shape [${n}, ${c}], got [${target.shape}]`);
  } else {
    throw new TypeError(`${op}: target must be int64 labels [${n}] or float probabilities [${n}, ${c}], got ${target.dtype} [${target.shape}]`);
  }
  const s = numberArg(op, 'labelSmoothing', o.labelSmoothing ?? 0);
  if (s < 0 || s > 1) throw new RangeError(`${op}: labelSmoothing must be in [0, 1], got ${s}`);
  const red = o.reduction ?? 'mean';
  if (!(red in REDUCTIONS)) throw new TypeError(`${op}: reduction must be 'none', 'mean' or 'sum', got '${red}'`);
  return wrap(runKernel(op, 'crossEntropy', [logits.handle, target.handle, null, REDUCTIONS[red], -100, s]));
}

export function mseLoss(a: Tensor, b: Tensor): Tensor {
  tensorArg('mseLoss', 'a', a);
  tensorArg('mseLoss', 'b', b);
  const d = a.sub(b);
  const sq = d.mul(d);
  const m = sq.mean();
  d.dispose();
  sq.dispose();
  return m;
}
