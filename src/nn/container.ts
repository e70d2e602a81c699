// Containers: Sequential and Residual.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module } from './module.js';
import { convGeluBatchNorm, depthwiseGeluBatchNormResidual } from './fused.js';

/** Applies its children in order; they are named '0', '1', ... as in PyTorch. */
export class Sequential extends Module {
  #layers: Module[] = [];

  constructor(...layers: Module[]) {
    super();
    for (const l of layers) this.append(l);
  }

  append(m: Module): this {
    this.registerModule(String(this.#layers.length), m);
    this.#layers.push(m);
    return this;
  }

  get layers(): readonly Module[] {
    return this.#layers;
  }

  get length(): number {
    return this.#layers.length;
  }

  at(i: number): Module {
    const m = this.#layers[i < 0 ? this.#layers.length + i : i];
    if (!m) throw new RangeError(`Sequential: no layer ${i} (length ${this.#layers.length})`);
    return m;
  }

  forward(x: Tensor): Tensor {
    // Each intermediate handle is released as soon as the next layer has consumed it, so an
    // eval pass over a deep model holds one activation at a time (autograd keeps what it needs).
    // Conv2d → GELU → BatchNorm2d runs as one fused kernel where it applies (./fused.ts).
    let y = x;
    const layers = this.#layers;
    for (let i = 0; i < layers.length; i++) {
      const prev = y;
      const fused = i + 2 < layers.length ? convGeluBatchNorm(layers[i]!, layers[i + 1]!, layers[i + 2]!, prev) : null;
      if (fused) i += 2;
      const m = layers[i]!;
      y = fused ?? t.tidy(() => m.forward(prev));
      if (prev !== x && prev !== y) prev.dispose();
    }
    return y;
  }
}

/** y = fn(x) + x; the wrapped module is the child 'fn'. */
export class Residual extends Module {
  constructor(readonly fn: Module) {
    super();
    this.registerModule('fn', fn);
  }

  forward(x: Tensor): Tensor {
    // fn = depthwise Conv2d → GELU → BatchNorm2d (ConvMixer) runs as one fused operator where it applies (./fused.ts).
    const fn = this.fn;
    if (fn instanceof Sequential && fn.length === 3 && !fn.forwardReplaced) {
      const fused = depthwiseGeluBatchNormResidual(fn.at(0), fn.at(1), fn.at(2), x);
      if (fused) return fused;
    }
    return t.tidy(() => t.add(fn.forward(x), x));
  }
}
