// Box augmentations applied after normalisation: timm's RandomErasing and the SE-ResNet
// trainer's Cutout. Boxes are drawn per image on the host; the pixels are written in one
// masked `where` over the batch.
import * as t from '../../tensor/index.js';
import type { Tensor, Generator } from '../../tensor/index.js';
import { roundHalfEven, type HostRandom } from './random.js';

/** Per image: box rows [top, top + h), columns [left, left + w); h = 0 means no box. */
export interface Boxes {
  top: Int32Array;
  left: Int32Array;
  h: Int32Array;
  w: Int32Array;
}

export interface RandomErasingOptions {
  prob: number;
  minArea: number;
  maxArea: number;
  minAspect: number;
  /** Defaults to 1 / minAspect, as timm. */
  maxAspect?: number;
  /** 'pixel': per-pixel N(0, 1); 'const': zeros (timm's default mode); 'rand': N(0, 1) per channel. */
  mode: 'pixel' | 'const' | 'rand';
  /** Boxes per erased image (timm's min_count = max_count). */
  count?: number;
}

const ATTEMPTS = 10;

/**
 * timm's RandomErasing draws: with probability `prob`, `count` boxes per image, each from up to
 * 10 attempts of area U(minArea, maxArea)·HW/count and log-uniform aspect ratio, accepted when
 * it fits (h < H and w < W); the corner is then uniform over the valid positions.
 */
export function drawErasing(rng: HostRandom, n: number, height: number, width: number, o: RandomErasingOptions): Boxes[] {
  const count = o.count ?? 1;
  const logLo = Math.log(o.minAspect);
  const logHi = Math.log(o.maxAspect ?? 1 / o.minAspect);
  const boxes: Boxes[] = Array.from({ length: count }, () => ({ top: new Int32Array(n), left: new Int32Array(n), h: new Int32Array(n), w: new Int32Array(n) }));
  const apply = rng.uniform(n);
  const area = height * width;
  for (let i = 0; i < n; i++) {
    if (apply[i]! > o.prob) continue;
    for (let b = 0; b < count; b++) {
      const u = rng.uniform(4 * ATTEMPTS);
      for (let a = 0; a < ATTEMPTS; a++) {
        const target = ((o.minArea + (o.maxArea - o.minArea) * u[4 * a]!) * area) / count;
        const aspect = Math.exp(logLo + (logHi - logLo) * u[4 * a + 1]!);
        const h = roundHalfEven(Math.sqrt(target * aspect));
        const w = roundHalfEven(Math.sqrt(target / aspect));
        if (w < width && h < height) {
          boxes[b]!.h[i] = h;
          boxes[b]!.w[i] = w;
          boxes[b]!.top[i] = Math.min(height - h, Math.floor(u[4 * a + 2]! * (height - h + 1)));
          boxes[b]!.left[i] = Math.min(width - w, Math.floor(u[4 * a + 3]! * (width - w + 1)));
          break;
        }
      }
    }
  }
  return boxes;
}

/** (n, 1, H, W) bool mask of the boxes. */
export function boxMask(b: Boxes, height: number, width: number, device: string): Tensor {
  const n = b.h.length;
  const per = (a: Int32Array) => t.tensor(Float32Array.from(a), [n, 1, 1, 1], { device });
  return t.tidy(() => {
    const rows = t.arange(0, height, 1, { dtype: 'float32', device }).reshape([1, 1, height, 1]);
    const cols = t.arange(0, width, 1, { dtype: 'float32', device }).reshape([1, 1, 1, width]);
    const top = per(b.top),
      left = per(b.left);
    const inRows = t.logicalAnd(t.ge(rows, top), t.lt(rows, top.add(per(b.h))));
    const inCols = t.logicalAnd(t.ge(cols, left), t.lt(cols, left.add(per(b.w))));
    return t.logicalAnd(inRows, inCols);
  });
}

/** Fills the boxes of x (n, C, H, W; normalised) per the mode; noise comes from `noise` (device generator). */
export function applyErasing(x: Tensor, boxes: Boxes[], mode: RandomErasingOptions['mode'], noise: Generator): Tensor {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  let y = x.clone();
  for (const b of boxes) {
    if (!b.h.some((v) => v > 0)) continue;
    const next = t.tidy(() => {
      const mask = boxMask(b, h, w, x.device);
      const fill =
        mode === 'pixel'
          ? t.randn([n, c, h, w], { generator: noise, device: x.device, dtype: x.dtype })
          : mode === 'rand'
            ? t.expand(t.randn([n, c, 1, 1], { generator: noise, device: x.device, dtype: x.dtype }), [n, c, h, w])
            : t.zerosLike(x);
      return t.where(mask, fill, y);
    });
    y.dispose();
    y = next;
  }
  return y;
}

/**
 * The SE-ResNet trainer's Cutout (after normalisation, so zero is the channel mean): centre
 * uniform over pixels, box [max(0, c − s//2), min(S − 1, c + s//2)) on each axis. Off for size <= 1.
 */
export function drawCutout(rng: HostRandom, n: number, height: number, width: number, size: number): Boxes {
  const cx = rng.intInclusive(n, 0, width - 1);
  const cy = rng.intInclusive(n, 0, height - 1);
  const half = Math.floor(size / 2);
  const b: Boxes = { top: new Int32Array(n), left: new Int32Array(n), h: new Int32Array(n), w: new Int32Array(n) };
  for (let i = 0; i < n; i++) {
    const x0 = Math.max(0, cx[i]! - half),
      x1 = Math.min(width - 1, cx[i]! + half);
    const y0 = Math.max(0, cy[i]! - half),
      y1 = Math.min(height - 1, cy[i]! + half);
    b.left[i] = x0;
    b.w[i] = Math.max(0, x1 - x0);
    b.top[i] = y0;
    b.h[i] = Math.max(0, y1 - y0);
  }
  return b;
}

export function applyCutout(x: Tensor, b: Boxes): Tensor {
  return t.tidy(() => t.maskedFill(x, boxMask(b, x.dim(2), x.dim(3), x.device), 0));
}
