// Multi-tensor in-place updates: one dispatch per list instead of one per tensor.
import { Tensor } from '../../tensor/index.js';
import { runKernel, runKernelInPlace } from '../../tensor/kernels.js';
import { wrapList } from '../../tensor/tensor.js';

/** The hyperparameters and step count of one AdamW step (native/adamw.cc derives its factors from them). */
export interface AdamWStepArgs {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step: number;
}

const h = (xs: Tensor[]) => xs.map((t) => t.handle);

export const foreach = {
  mulScalar_(xs: Tensor[], s: number): void {
    runKernelInPlace('foreach.mul_', 'foreachMulScalar_', [h(xs), s]);
  },
  mulList_(xs: Tensor[], ys: Tensor[]): void {
    runKernelInPlace('foreach.mul_', 'foreachMulList_', [h(xs), h(ys)]);
  },
  addScalar_(xs: Tensor[], s: number): void {
    runKernelInPlace('foreach.add_', 'foreachAddScalar_', [h(xs), s]);
  },
  addList_(xs: Tensor[], ys: Tensor[], alpha = 1): void {
    runKernelInPlace('foreach.add_', 'foreachAddList_', [h(xs), h(ys), alpha]);
  },
  addcmul_(xs: Tensor[], a: Tensor[], b: Tensor[], value: number): void {
    runKernelInPlace('foreach.addcmul_', 'foreachAddcmulScalar_', [h(xs), h(a), h(b), value]);
  },
  addcdiv_(xs: Tensor[], a: Tensor[], b: Tensor[], value: number): void {
    runKernelInPlace('foreach.addcdiv_', 'foreachAddcdivScalar_', [h(xs), h(a), h(b), value]);
  },
  divScalar_(xs: Tensor[], s: number): void {
    runKernelInPlace('foreach.div_', 'foreachDivScalar_', [h(xs), s]);
  },
  sqrt(xs: Tensor[]): Tensor[] {
    return wrapList(runKernel('foreach.sqrt', 'foreachSqrt', [h(xs)]));
  },
  /**
   * One AdamW step over float32 CPU tensors in one call and one pass (native/adamw.cc), the same
   * arithmetic as the multi-tensor ops `AdamW.updateGroup` runs otherwise; `step` counts from 1.
   */
  adamw_(params: Tensor[], grads: Tensor[], expAvg: Tensor[], expAvgSq: Tensor[], o: AdamWStepArgs): void {
    const args = [h(params), h(grads), h(expAvg), h(expAvgSq), o.lr, o.beta1, o.beta2, o.eps, o.weightDecay, o.step];
    runKernelInPlace('AdamW', 'adamw_', args);
  },
  norm(xs: Tensor[], p = 2): Tensor[] {
    return wrapList(runKernel('foreach.norm', 'foreachNorm', [h(xs), p]));
  },
};
