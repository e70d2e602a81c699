// Per-image augmentation parameters (op choices, magnitudes, boxes) are a few numbers per
// image, so they are drawn on the host, from a libtorch Generator whose state goes into
// checkpoints. Pixels are never drawn here: per-pixel noise comes from a device generator.
import * as t from '../../tensor/index.js';
import type { Generator } from '../../tensor/index.js';

export class HostRandom {
  constructor(readonly generator: Generator) {}

  /** n values uniform in [0, 1). */
  uniform(n: number): Float64Array {
    if (n === 0) return new Float64Array(0);
    return t.tidy(() => t.rand([n], { generator: this.generator, dtype: 'float64' }).dataSync() as Float64Array);
  }

  /** n values uniform in [low, high). */
  uniformIn(n: number, low: number, high: number): Float64Array {
    const u = this.uniform(n);
    for (let i = 0; i < n; i++) u[i] = low + (high - low) * u[i]!;
    return u;
  }

  /** n standard normal values. */
  normal(n: number): Float64Array {
    if (n === 0) return new Float64Array(0);
    return t.tidy(() => t.randn([n], { generator: this.generator, dtype: 'float64' }).dataSync() as Float64Array);
  }

  /** n integers uniform in [low, high] (both inclusive, like Python's random.randint). */
  intInclusive(n: number, low: number, high: number): Int32Array {
    if (high < low) throw new RangeError(`intInclusive: high ${high} < low ${low}`);
    const u = this.uniform(n);
    const out = new Int32Array(n);
    const span = high - low + 1;
    for (let i = 0; i < n; i++) out[i] = low + Math.min(span - 1, Math.floor(u[i]! * span));
    return out;
  }

  /** n Beta(a, b) values, as the ratio of two Gamma draws (numpy's method for a, b <= 1 differs; the law is the same). */
  beta(n: number, a: number, b: number): Float64Array {
    if (!(a > 0) || !(b > 0)) throw new RangeError(`beta: parameters must be > 0, got ${a}, ${b}`);
    if (n === 0) return new Float64Array(0);
    const g = t.tidy(() => {
      const alpha = t.tensor(
        Float64Array.from({ length: 2 * n }, (_, i) => (i < n ? a : b)),
        [2 * n],
      );
      return t.standardGamma(alpha, this.generator).dataSync() as Float64Array;
    });
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const x = g[i]!,
        y = g[n + i]!;
      // Both gammas can underflow to 0 for tiny alphas; the limit law puts the mass at 0 or 1.
      out[i] = x + y > 0 ? x / (x + y) : x >= y ? 1 : 0;
    }
    return out;
  }
}

/** Python 3's round(): halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}
