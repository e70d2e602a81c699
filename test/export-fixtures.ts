// Shared set-up for the ONNX export tests: registered models with non-trivial eval-mode state
// (a fresh BatchNorm is the identity, which would hide a wrong BN export), and kshare's own
// eval outputs to compare ONNX Runtime against.
import * as t from '../src/tensor/index.js';
import type { Module } from '../src/nn/module.js';
import { BatchNorm2d } from '../src/nn/batchnorm.js';
import { Linear } from '../src/nn/linear.js';
import { modelFromRegistry, type ModelSource } from '../src/export/model-source.js';

/**
 * A registered model in a trained-like eval state: its BatchNorms hold the statistics of a
 * calibration batch (as after training; fresh running statistics would let the signal fade
 * through a deep model, so every input would give the same output) and random affine
 * parameters, and its classifier is scaled up so that classes differ clearly.
 */
export function preparedModel(name: string, seed = 0, o: { headScale?: number; calibration?: Float32Array } = {}): ModelSource {
  t.manualSeed(seed);
  const src = modelFromRegistry(name);
  const bns = src.model.modules().filter((m): m is BatchNorm2d => m instanceof BatchNorm2d);
  // momentum null = cumulative average, so one training-mode pass sets the running statistics
  // to that batch's statistics exactly (BatchNorm2d keeps the momentum as a plain field).
  const momenta = bns.map((bn) => bn.momentum);
  for (const bn of bns) (bn as { momentum: number | null }).momentum = null;
  const calibration = o.calibration ?? randomInput(4, seed + 100);
  src.model.train();
  t.tidy(() => t.noGrad(() => src.model.forward(t.tensor(calibration, [calibration.length / 3072, 3, 32, 32]))));
  src.model.eval();
  t.noGrad(() => {
    bns.forEach((bn, i) => {
      (bn as { momentum: number | null }).momentum = momenta[i]!;
      t.uniform_(bn.weight!, 0.5, 1.5);
      t.normal_(bn.bias!, 0, 0.2);
    });
    const heads = src.model.modules().filter((m): m is Linear => m instanceof Linear);
    t.mul_(heads[heads.length - 1]!.weight, o.headScale ?? 1);
  });
  return src;
}

/** kshare's eval-mode logits for a batch given as flat NCHW floats. */
export function kshareLogits(model: Module, input: Float32Array, shape: [number, number, number, number]): Float32Array {
  model.eval();
  return t.tidy(() => t.noGrad(() => model.forward(t.tensor(input, shape)).toFloat32Array()));
}

/** A deterministic pseudo-random batch (not libtorch's RNG, so it does not move other draws). */
export function randomInput(n: number, seed = 1): Float32Array {
  const out = new Float32Array(n * 3 * 32 * 32);
  let s = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32) * 4 - 2;
  }
  return out;
}
