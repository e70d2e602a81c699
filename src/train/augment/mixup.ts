// timm's Mixup in 'batch' mode: one λ per batch, the partner of image i is image n−1−i (the
// batch flipped), CutMix or Mixup chosen per batch; targets are label-smoothed one-hots mixed
// with the same λ (CutMix's λ corrected to the clipped box area).
import * as t from '../../tensor/index.js';
import type { Tensor } from '../../tensor/index.js';
import type { HostRandom } from './random.js';

export interface MixupOptions {
  mixupAlpha: number;
  cutmixAlpha: number;
  /** Probability that a batch is mixed at all. */
  prob: number;
  /** Probability of CutMix rather than Mixup when both alphas are > 0. */
  switchProb: number;
  /** Recompute λ from the clipped CutMix box (timm's correct_lam). */
  correctLam: boolean;
}

export interface MixDraw {
  kind: 'none' | 'mixup' | 'cutmix';
  /** Weight of each image's own label. */
  lam: number;
  /** CutMix box: rows [y0, y1), columns [x0, x1). */
  box?: [number, number, number, number];
}

export function drawMix(rng: HostRandom, height: number, width: number, o: MixupOptions): MixDraw {
  const u = rng.uniform(2);
  if (!(u[0]! < o.prob)) return { kind: 'none', lam: 1 };
  let cutmix: boolean;
  if (o.mixupAlpha > 0 && o.cutmixAlpha > 0) cutmix = u[1]! < o.switchProb;
  else if (o.cutmixAlpha > 0) cutmix = true;
  else if (o.mixupAlpha > 0) cutmix = false;
  else return { kind: 'none', lam: 1 };
  const alpha = cutmix ? o.cutmixAlpha : o.mixupAlpha;
  let lam = rng.beta(1, alpha, alpha)[0]!;
  if (!cutmix) return { kind: 'mixup', lam };
  // timm's rand_bbox: cut sides int(S·√(1−λ)), centre uniform over pixels, box clipped.
  const ratio = Math.sqrt(1 - lam);
  const cutH = Math.trunc(height * ratio),
    cutW = Math.trunc(width * ratio);
  const c = rng.uniform(2);
  const cy = Math.min(height - 1, Math.floor(c[0]! * height));
  const cx = Math.min(width - 1, Math.floor(c[1]! * width));
  const clip = (v: number, hi: number) => Math.max(0, Math.min(hi, v));
  const y0 = clip(cy - Math.floor(cutH / 2), height),
    y1 = clip(cy + Math.floor(cutH / 2), height);
  const x0 = clip(cx - Math.floor(cutW / 2), width),
    x1 = clip(cx + Math.floor(cutW / 2), width);
  if (o.correctLam) lam = 1 - ((y1 - y0) * (x1 - x0)) / (height * width);
  return { kind: 'cutmix', lam, box: [y0, y1, x0, x1] };
}

/** Label-smoothed one-hot targets: off = s/K, on = 1 − s + s/K. */
export function smoothOneHot(labels: Tensor, classes: number, smoothing: number): Tensor {
  const off = smoothing / classes;
  const on = 1 - smoothing + off;
  return t.tidy(() =>
    t
      .oneHot(labels, classes)
      .to('float32')
      .mul(on - off)
      .add(off),
  );
}

/** Mixes images x (n, C, H, W) and returns soft targets (n, classes). */
export function applyMix(x: Tensor, labels: Tensor, classes: number, smoothing: number, d: MixDraw): { x: Tensor; target: Tensor } {
  return t.tidy(() => {
    const y1 = smoothOneHot(labels, classes, smoothing);
    if (d.kind === 'none') return { x: x.clone(), target: y1 };
    const target = y1.mul(d.lam).add(t.flip(y1, [0]).mul(1 - d.lam));
    const partner = t.flip(x, [0]);
    if (d.kind === 'mixup') return { x: x.mul(d.lam).add(partner.mul(1 - d.lam)), target };
    const [y0, yEnd, x0, xEnd] = d.box!;
    const [, , h, w] = x.shape as [number, number, number, number];
    const inBox = new Uint8Array(h * w);
    for (let r = y0; r < yEnd; r++) inBox.fill(1, r * w + x0, r * w + xEnd);
    const mask = t.tensor(inBox, [1, 1, h, w], { dtype: 'bool', device: x.device });
    return { x: t.where(mask, partner, x), target };
  });
}
