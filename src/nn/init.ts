// PyTorch's default initialisers, written with the same floating-point expressions so that,
// for the same seed and draw order, kshare draws exactly the values PyTorch draws.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';

/** fan_in of a weight laid out [out, in, ...kernel] (PyTorch's _calculate_fan_in_and_fan_out). */
export function fanIn(w: Tensor): number {
  if (w.rank < 2) throw new Error(`fanIn: weight needs at least 2 dimensions, got [${w.shape}]`);
  let receptive = 1;
  for (let i = 2; i < w.rank; i++) receptive *= w.dim(i);
  return w.dim(1) * receptive;
}

/** calculate_gain('leaky_relu', a); a = 0 is ReLU's gain √2. */
export function leakyReluGain(a: number): number {
  return Math.sqrt(2.0 / (1 + a ** 2));
}

/** U(-b, b) with b = √3 · gain(a) / √fan_in. a = √5 is the Conv/Linear default (b = 1/√fan_in). */
export function kaimingUniform_(w: Tensor, a = 0): Tensor {
  const std = leakyReluGain(a) / Math.sqrt(fanIn(w));
  const bound = Math.sqrt(3.0) * std;
  return t.noGrad(() => t.uniform_(w, -bound, bound));
}

/** fan_out of a weight laid out [out, in, ...kernel]. */
export function fanOut(w: Tensor): number {
  return (w.dim(0) * fanIn(w)) / w.dim(1);
}

/** N(0, gain(a)² / fan), fan-in mode by default; torchvision's ResNet and MobileNetV2 use fan-out. */
export function kaimingNormal_(w: Tensor, a = 0, mode: 'fan_in' | 'fan_out' = 'fan_in'): Tensor {
  const std = leakyReluGain(a) / Math.sqrt(mode === 'fan_in' ? fanIn(w) : fanOut(w));
  return t.noGrad(() => t.normal_(w, 0, std));
}

/** Conv/Linear bias default: U(-1/√fan_in, 1/√fan_in) where fan_in is the weight's. */
export function defaultBias_(bias: Tensor, weight: Tensor): Tensor {
  const f = fanIn(weight);
  const bound = f > 0 ? 1 / Math.sqrt(f) : 0;
  return t.noGrad(() => t.uniform_(bias, -bound, bound));
}

/** A fresh trainable float32 tensor (values to be filled by an initialiser). */
export function parameter(shape: number[]): Tensor {
  return t.zeros(shape, { requiresGrad: true });
}
