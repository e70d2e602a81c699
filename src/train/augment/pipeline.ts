// The training-time transform of a recipe, applied to a whole uint8 batch on its device:
// random crop + flip → RandAugment → scale to [0, 1] and normalise → random erasing → cutout
// → Mixup/CutMix with label smoothing. Evaluation only normalises.
import * as t from '../../tensor/index.js';
import type { Tensor, Generator } from '../../tensor/index.js';
import { HostRandom } from './random.js';
import { drawCropFlip, applyCropFlip } from './crop-flip.js';
import { parseRandAugment, randAugment, type RandAugmentConfig } from './rand-augment.js';
import { drawErasing, applyErasing, drawCutout, applyCutout, type RandomErasingOptions } from './erasing.js';
import { drawMix, applyMix, smoothOneHot, type MixupOptions } from './mixup.js';

export interface AugmentConfig {
  /** Zero padding of the random crop (the crop has the image's own size); 0 with `crop: false`. */
  cropPadding: number;
  crop: boolean;
  /** Probability of a horizontal flip. */
  hflip: number;
  /** timm RandAugment config string such as 'rand-m9-mstd0.5-inc1', or null. */
  randAugment: string | null;
  mean: number[];
  std: number[];
  randomErasing: RandomErasingOptions | null;
  /** Cutout box side in pixels (SE-ResNet trainer); 0 or 1 turns it off. */
  cutout: number;
  mixup: MixupOptions | null;
  /** Folded into the (soft) targets. */
  labelSmoothing: number;
}

/** uint8 (B, C, H, W) → float32 normalised with per-channel mean/std (ToTensor + Normalize). */
export function normalize(images: Tensor, mean: number[], std: number[]): Tensor {
  const c = images.dim(1);
  if (mean.length !== c || std.length !== c) throw new Error(`normalize: mean/std have ${mean.length}/${std.length} values for ${c} channels`);
  return t.tidy(() => {
    const scale = t.tensor(
      Float32Array.from(std, (s) => 1 / (255 * s)),
      [1, c, 1, 1],
      { device: images.device },
    );
    const shift = t.tensor(
      Float32Array.from(mean, (m, i) => m / std[i]!),
      [1, c, 1, 1],
      { device: images.device },
    );
    return images.to('float32').mul(scale).sub(shift);
  });
}

export interface AugmentedBatch {
  x: Tensor;
  /** int64 labels (n), or float32 soft targets (n, classes) when mixing or smoothing. */
  target: Tensor;
}

export class TrainAugment {
  readonly randAugment: RandAugmentConfig | null;
  readonly host: HostRandom;

  /**
   * @param params draws crop corners, op choices, boxes and λ (a CPU generator)
   * @param noise draws per-pixel erasing noise on the training device
   */
  constructor(
    readonly cfg: AugmentConfig,
    readonly classes: number,
    params: Generator,
    readonly noise: Generator,
  ) {
    validateAugment(cfg);
    this.host = new HostRandom(params);
    const fill = cfg.mean.map((m) => Math.min(255, Math.round(255 * m)));
    this.randAugment = cfg.randAugment ? parseRandAugment(cfg.randAugment, fill) : null;
  }

  get softTargets(): boolean {
    return this.cfg.mixup !== null || this.cfg.labelSmoothing > 0;
  }

  apply(images: Tensor, labels: Tensor): AugmentedBatch {
    // On CPU these are many small ops on a ~400k-value batch: one intra-op thread runs them
    // fastest, and avoids the thread pool's spin-waits when other processes share the cores.
    if (images.device === 'cpu') return singleThreaded(() => this.#apply(images, labels));
    return this.#apply(images, labels);
  }

  #apply(images: Tensor, labels: Tensor): AugmentedBatch {
    const c = this.cfg;
    const [n, ch, h, w] = images.shape as [number, number, number, number];
    if (c.mixup && n % 2 !== 0) throw new Error(`Mixup/CutMix needs an even batch size, got a batch of ${n}`);
    return t.tidy(() => {
      let x = images;
      if (c.crop || c.hflip > 0) {
        const p = drawCropFlip(this.host, n, h, w, { padding: c.crop ? c.cropPadding : 0, flipProb: c.hflip });
        x = applyCropFlip(x, p, { padding: c.crop ? c.cropPadding : 0, flipProb: c.hflip });
      }
      if (this.randAugment) {
        if (ch !== 3 && ch !== 1) throw new Error(`RandAugment needs 1 or 3 channels, got ${ch}`);
        x = randAugment(x.to('float32'), this.host, { ...this.randAugment, fill: this.randAugment.fill.slice(0, ch) });
      }
      x = normalize(x, c.mean, c.std);
      if (c.randomErasing && c.randomErasing.prob > 0) {
        x = applyErasing(x, drawErasing(this.host, n, h, w, c.randomErasing), c.randomErasing.mode, this.noise);
      }
      if (c.cutout > 1) x = applyCutout(x, drawCutout(this.host, n, h, w, c.cutout));
      if (c.mixup) {
        const d = drawMix(this.host, h, w, c.mixup);
        return applyMix(x, labels, this.classes, c.labelSmoothing, d);
      }
      if (c.labelSmoothing > 0) return { x, target: smoothOneHot(labels, this.classes, c.labelSmoothing) };
      return { x, target: labels.clone() };
    });
  }
}

function singleThreaded<T>(fn: () => T): T {
  const prev = t.runtimeInfo().numThreads;
  if (prev === 1) return fn();
  t.setNumThreads(1);
  try {
    return fn();
  } finally {
    t.setNumThreads(prev);
  }
}

export function validateAugment(c: AugmentConfig): void {
  const bad = (msg: string) => {
    throw new Error(`augment: ${msg}`);
  };
  if (!Number.isInteger(c.cropPadding) || c.cropPadding < 0) bad(`cropPadding must be a non-negative integer, got ${c.cropPadding}`);
  if (!(c.hflip >= 0 && c.hflip <= 1)) bad(`hflip must be a probability, got ${c.hflip}`);
  if (!Array.isArray(c.mean) || !Array.isArray(c.std) || c.mean.length !== c.std.length || c.mean.length < 1)
    bad('mean and std must be lists of one value per channel');
  if (c.std.some((s) => !(s > 0))) bad(`std values must be > 0, got [${c.std}]`);
  if (!(c.labelSmoothing >= 0 && c.labelSmoothing < 1)) bad(`labelSmoothing must be in [0, 1), got ${c.labelSmoothing}`);
  if (!Number.isInteger(c.cutout) || c.cutout < 0) bad(`cutout must be a non-negative integer, got ${c.cutout}`);
  const e = c.randomErasing;
  if (e) {
    if (!(e.prob >= 0 && e.prob <= 1)) bad(`randomErasing.prob must be a probability, got ${e.prob}`);
    if (!(e.minArea > 0 && e.minArea <= e.maxArea && e.maxArea < 1))
      bad(`randomErasing areas must satisfy 0 < minArea <= maxArea < 1, got ${e.minArea}, ${e.maxArea}`);
    if (!(e.minAspect > 0)) bad(`randomErasing.minAspect must be > 0, got ${e.minAspect}`);
    if (!['pixel', 'const', 'rand'].includes(e.mode)) bad(`randomErasing.mode must be pixel, const or rand, got ${JSON.stringify(e.mode)}`);
    if (e.count !== undefined && (!Number.isInteger(e.count) || e.count < 1)) bad(`randomErasing.count must be a positive integer, got ${e.count}`);
  }
  const m = c.mixup;
  if (m) {
    if (!(m.mixupAlpha >= 0) || !(m.cutmixAlpha >= 0)) bad('mixup alphas must be >= 0');
    if (!(m.prob >= 0 && m.prob <= 1) || !(m.switchProb >= 0 && m.switchProb <= 1)) bad('mixup prob and switchProb must be probabilities');
  }
  if (c.randAugment !== null && typeof c.randAugment !== 'string') bad('randAugment must be a config string such as "rand-m9-mstd0.5-inc1" or null');
  if (c.randAugment)
    parseRandAugment(
      c.randAugment,
      c.mean.map(() => 0),
    );
}
