// Containers: Sequential and Residual.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module } from './module.js';
import { convGeluBatchNorm, convMixerBlock, convMixerBlocks, convMixerTrainingRun, depthwiseGeluBatchNormResidual } from './fused.js';

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
    // Conv2d → GELU → BatchNorm2d runs as one fused kernel where it applies, and a run of
    // ConvMixer blocks in inference as one operator (./fused.ts).
    let y = x;
    const layers = this.#layers;
    let declinedUntil = 0; // a run of blocks convMixerBlocks declined: its blocks one by one
    for (let i = 0; i < layers.length; i++) {
      const prev = y;
      const run = i >= declinedUntil ? convMixerBlockRun(layers, i) : [];
      const blocks = run.length > 0 ? (convMixerBlocks(run, prev) ?? convMixerTrainingRun(run, prev)) : null;
      if (blocks) {
        i += run.length - 1;
        y = blocks;
      } else {
        declinedUntil = Math.max(declinedUntil, i + run.length);
        const blockLayers = convMixerBlockLayers(layers[i]!);
        const block = blockLayers ? convMixerBlock(blockLayers, prev) : null;
        const fused = !block && i + 2 < layers.length ? convGeluBatchNorm(layers[i]!, layers[i + 1]!, layers[i + 2]!, prev) : null;
        if (fused) i += 2;
        const m = layers[i]!;
        y = block ?? fused ?? t.tidy(() => m.forward(prev));
      }
      if (prev !== x && prev !== y) prev.dispose();
    }
    return y;
  }
}

/**
 * The layers of each ConvMixer block from layers[start] on, for as long as they are blocks:
 * Sequential(Residual(Sequential(conv, gelu, bn)), conv, gelu, bn), none with a forward replaced
 * on the instance, as [conv, gelu, bn, conv, gelu, bn]. Whether they can run fused is
 * convMixerBlocks' (./fused.ts) to say.
 */
function convMixerBlockRun(layers: readonly Module[], start: number): Module[][] {
  const run: Module[][] = [];
  for (let i = start; i < layers.length; i++) {
    const block = convMixerBlockLayers(layers[i]!);
    if (!block) break;
    run.push(block);
  }
  return run;
}

/** A ConvMixer block's six layers, as convMixerBlockRun lists them, or null for another module. */
function convMixerBlockLayers(block: Module): Module[] | null {
  if (!(block instanceof Sequential) || block.length !== 4 || block.forwardReplaced) return null;
  const residual = block.at(0);
  if (!(residual instanceof Residual) || residual.forwardReplaced) return null;
  const fn = residual.fn;
  if (!(fn instanceof Sequential) || fn.length !== 3 || fn.forwardReplaced) return null;
  return [fn.at(0), fn.at(1), fn.at(2), block.at(1), block.at(2), block.at(3)];
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
