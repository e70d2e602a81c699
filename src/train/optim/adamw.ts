// AdamW (decoupled weight decay), as torch.optim.AdamW (amsgrad off).
import { Tensor, zerosLike, nativeKernelsEnabled } from '../../tensor/index.js';
import { foreach } from './foreach.js';
import { Optimizer, type ParamGroup, type ParamGroupInput } from './optimizer.js';

export interface AdamWOptions extends Record<string, number | boolean | number[]> {
  lr: number;
  betas: number[];
  eps: number;
  weightDecay: number;
}

export class AdamW extends Optimizer<AdamWOptions> {
  /** Per-group step counts live in the base `stepCount` (all params step together). */
  constructor(params: ParamGroupInput<AdamWOptions>, o: Partial<AdamWOptions> = {}) {
    super(params, { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 1e-2, ...o }, 'AdamW');
  }

  protected validate(h: AdamWOptions): void {
    if (!(h.lr >= 0)) throw new RangeError(`AdamW: lr must be >= 0, got ${h.lr}`);
    if (!(h.eps >= 0)) throw new RangeError(`AdamW: eps must be >= 0, got ${h.eps}`);
    const [b1, b2] = h.betas;
    if (h.betas.length !== 2 || !(b1! >= 0 && b1! < 1) || !(b2! >= 0 && b2! < 1))
      throw new RangeError(`AdamW: betas must be two numbers in [0, 1), got [${h.betas}]`);
    if (!(h.weightDecay >= 0)) throw new RangeError(`AdamW: weightDecay must be >= 0, got ${h.weightDecay}`);
  }

  protected updateGroup(g: ParamGroup<AdamWOptions>, params: Tensor[], grads: Tensor[]): void {
    const { lr, eps, weightDecay } = g.options;
    const [beta1, beta2] = g.options.betas as [number, number];
    const step = this.stepCount;
    const m: Tensor[] = [];
    const v: Tensor[] = [];
    for (const p of params) {
      const s = this.stateOf(p, () => ({ expAvg: zerosLike(p), expAvgSq: zerosLike(p) }));
      m.push(s.expAvg!);
      v.push(s.expAvgSq!);
    }
    if (fusedStepApplies([params, grads, m, v])) {
      foreach.adamw_(params, grads, m, v, { lr, beta1, beta2, eps, weightDecay, step });
      return;
    }
    if (weightDecay !== 0) foreach.mulScalar_(params, 1 - lr * weightDecay);
    foreach.mulScalar_(m, beta1);
    foreach.addList_(m, grads, 1 - beta1);
    foreach.mulScalar_(v, beta2);
    foreach.addcmul_(v, grads, grads, 1 - beta2);
    const bc1 = 1 - beta1 ** step;
    const bc2 = 1 - beta2 ** step;
    const stepSize = lr / bc1;
    const denom = foreach.sqrt(v);
    foreach.divScalar_(denom, Math.sqrt(bc2));
    foreach.addScalar_(denom, eps);
    foreach.addcdiv_(params, m, denom, -stepSize);
  }
}

/**
 * Whether kshare's one-pass AdamW step (native/adamw.cc) applies: kshare's kernels enabled, not
 * switched off with KSHARE_NATIVE_ADAMW=0 (read at every step), and every tensor float32 on the
 * CPU. Otherwise libtorch's multi-tensor ops run, ten dispatches a tensor.
 */
function fusedStepApplies(lists: Tensor[][]): boolean {
  if (!nativeKernelsEnabled() || process.env.KSHARE_NATIVE_ADAMW === '0') return false;
  return lists.every((l) => l.every((x) => x.device === 'cpu' && x.dtype === 'float32'));
}
