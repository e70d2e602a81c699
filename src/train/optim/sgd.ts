// SGD with momentum, Nesterov and (coupled) weight decay, as torch.optim.SGD.
import { Tensor, clone, detach } from '../../tensor/index.js';
import { foreach } from './foreach.js';
import { Optimizer, type ParamGroup, type ParamGroupInput } from './optimizer.js';

export interface SGDOptions extends Record<string, number | boolean | number[]> {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
}

export class SGD extends Optimizer<SGDOptions> {
  constructor(params: ParamGroupInput<SGDOptions>, o: Partial<SGDOptions> & { lr: number }) {
    super(params, { momentum: 0, dampening: 0, weightDecay: 0, nesterov: false, ...o }, 'SGD');
  }

  protected validate(h: SGDOptions): void {
    if (!(h.lr >= 0)) throw new RangeError(`SGD: lr must be >= 0, got ${h.lr}`);
    if (!(h.momentum >= 0)) throw new RangeError(`SGD: momentum must be >= 0, got ${h.momentum}`);
    if (!(h.weightDecay >= 0)) throw new RangeError(`SGD: weightDecay must be >= 0, got ${h.weightDecay}`);
    if (h.nesterov && (h.momentum <= 0 || h.dampening !== 0)) throw new Error('SGD: Nesterov momentum needs momentum > 0 and dampening 0');
  }

  protected updateGroup(g: ParamGroup<SGDOptions>, params: Tensor[], grads: Tensor[]): void {
    const { lr, momentum, dampening, weightDecay, nesterov } = g.options;
    let d = grads;
    if (weightDecay !== 0) {
      d = grads.map((gr) => gr.clone());
      foreach.addList_(d, params, weightDecay);
    }
    if (momentum !== 0) {
      const bufs: Tensor[] = [];
      const fresh: boolean[] = [];
      params.forEach((p, i) => {
        let isNew = false;
        const s = this.stateOf(p, () => {
          isNew = true;
          return { momentumBuffer: detach(clone(d[i]!)) };
        });
        bufs.push(s.momentumBuffer!);
        fresh.push(isNew);
      });
      const old = bufs.filter((_, i) => !fresh[i]);
      const oldD = d.filter((_, i) => !fresh[i]);
      if (old.length) {
        foreach.mulScalar_(old, momentum);
        foreach.addList_(old, oldD, 1 - dampening);
      }
      if (nesterov) {
        d = d.map((x) => x.clone());
        foreach.addList_(d, bufs, momentum);
      } else {
        d = bufs;
      }
    }
    foreach.addList_(params, d, -lr);
  }
}
