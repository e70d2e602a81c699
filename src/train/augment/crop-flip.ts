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
  const hp = h + 2 * pad,
    wp = w + 2 * pad;
  const dev = x.device;
  return t.tidy(() => {
    // One gather from the flattened padded image: source index (top + i)·Wp + left + j',
    // where j' = size − 1 − j for flipped images.
    const padded = pad > 0 ? t.pad(x, [pad, pad, pad, pad]) : x;
    const perImage = (a: ArrayLike<number>) => t.tensor(Float32Array.from(a), [n, 1, 1], { device: dev });
    const top = perImage(p.top),
      left = perImage(p.left);
    const flip = perImage(p.flipped);
    const i = t.arange(0, size, 1, { dtype: 'float32', device: dev }).reshape([1, size, 1]);
    const j = t.arange(0, size, 1, { dtype: 'float32', device: dev }).reshape([1, 1, size]);
    const col = j.add(flip.mul(j.mul(-2).add(size - 1)));
    const flat = top
      .add(i)
      .mul(wp)
      .add(left)
      .add(col)
      .to('int64')
      .reshape([n, 1, size * size]);
    const out = t.gather(padded.reshape([n, c, hp * wp]), 2, t.expand(flat, [n, c, size * size]));
    return out.reshape([n, c, size, size]);
  });
}

export function randomCropFlip(x: Tensor, rng: HostRandom, o: CropFlipOptions): Tensor {
  const p = drawCropFlip(rng, x.dim(0), x.dim(2), x.dim(3), o);
  return applyCropFlip(x, p, o);
}
