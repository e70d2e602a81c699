// Linear (fully connected) layer.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module } from './module.js';
import { kaimingUniform_, defaultBias_, parameter } from './init.js';

/** y = x Wᵀ + b with weight [out, in]; PyTorch's default init. */
export class Linear extends Module {
  constructor(
    readonly inFeatures: number,
    readonly outFeatures: number,
    o: { bias?: boolean } = {},
  ) {
    super();
    for (const [n, v] of [
      ['inFeatures', inFeatures],
      ['outFeatures', outFeatures],
    ] as const) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`Linear: ${n} must be a positive integer, got ${v}`);
    }
    const w = parameter([outFeatures, inFeatures]);
    kaimingUniform_(w, Math.sqrt(5));
    this.registerParameter('weight', w);
    let b: Tensor | null = null;
    if (o.bias ?? true) {
      b = parameter([outFeatures]);
      defaultBias_(b, w);
    }
    this.registerParameter('bias', b);
  }

  get weight(): Tensor {
    return this.getParameter('weight')!;
  }

  get bias(): Tensor | null {
    return this.getParameter('bias');
  }

  forward(x: Tensor): Tensor {
    return t.linear(x, this.weight, this.bias);
  }

  describe(): string {
    return `${this.inFeatures}, ${this.outFeatures}${this.bias ? '' : ', bias=false'}`;
  }
}
