// RandomCrop(size, padding) with zero padding followed by RandomHorizontalFlip, as
// torchvision's, for a whole batch in two gathers (the flip is folded into the column index).
import * as t from '../../tensor/index.js';
import type { Tensor } from '../../tensor/index.js';
import type { HostRandom } from './random.js';

export interface CropFlipParams {
  /** Top-left corner of each crop in the padded image, in [0, H + 2·padding − size]. */
  top: Int32Array;
  left: Int32Array;
  flipped: Uint8Array;
}

export interface CropFlipOptions {
  /** Output side (square crops); default: the input size. */
  size?: number;
  padding: number;
  /** Probability of a horizontal flip. */
  flipProb: number;
}

/** Draws each image's crop corner and flip. */
export function drawCropFlip(rng: HostRandom, n: number, h: number, w: number, o: CropFlipOptions): CropFlipParams {
  const size = o.size ?? h;
  const maxTop = h + 2 * o.padding - size;
  const maxLeft = w + 2 * o.padding - size;
  if (maxTop < 0 || maxLeft < 0) throw new RangeError(`randomCrop: crop ${size} is larger than the padded image ${h + 2 * o.padding}x${w + 2 * o.padding}`);
  const top = rng.intInclusive(n, 0, maxTop);
  const left = rng.intInclusive(n, 0, maxLeft);
  const u = rng.uniform(n);
  const flipped = Uint8Array.from(u, (v) => (v < o.flipProb ? 1 : 0));
  return { top, left, flipped };
}

/** Applies drawn crops/flips to x (N, C, H, W) of any dtype; pixels from the padding are 0. */
export function applyCropFlip(x: Tensor, p: CropFlipParams, o: CropFlipOptions): Tensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const size = o.size ?? h;
  const pad = o.padding;
  const rows = new BigInt64Array(n * size);
  const cols = new BigInt64Array(n * size);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < size; j++) {
      rows[i * size + j] = BigInt(p.top[i]! + j);
      cols[i * size + j] = BigInt(p.left[i]! + (p.flipped[i] ? size - 1 - j : j));
    }
  }
  return t.tidy(() => {
    const padded = pad > 0 ? t.pad(x, [pad, pad, pad, pad]) : x;
    const wp = w + 2 * pad;
    const rowIdx = t.expand(t.tensor(rows, [n, 1, size, 1], { device: x.device }), [n, c, size, wp]);
    const byRows = t.gather(padded, 2, rowIdx);
    const colIdx = t.expand(t.tensor(cols, [n, 1, 1, size], { device: x.device }), [n, c, size, size]);
    return t.gather(byRows, 3, colIdx);
  });
}

export function randomCropFlip(x: Tensor, rng: HostRandom, o: CropFlipOptions): Tensor {
  const p = drawCropFlip(rng, x.dim(0), x.dim(2), x.dim(3), o);
  return applyCropFlip(x, p, o);
}
