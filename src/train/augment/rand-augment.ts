// timm's RandAugment (0.5.4 semantics), batched. Per image and per layer: one op drawn
// uniformly (with replacement) from the op list, applied with probability `prob`, with a
// magnitude drawn from N(m, mstd) and clipped to [0, 10] each time it is applied; signed
// ops flip sign with probability ½. Images that picked the same op are processed together,
// and the five geometric ops share one grid_sample call.
import * as t from '../../tensor/index.js';
import type { Tensor } from '../../tensor/index.js';
import type { HostRandom } from './random.js';
import * as C from './color-ops.js';
import { warpAffine, rotate, shearX, shearY, translate, type PilAffine } from './affine.js';

/** timm's _RAND_INCREASING_TRANSFORMS, in timm's order. */
export const RAND_INCREASING_OPS = [
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'PosterizeIncreasing',
  'SolarizeIncreasing',
  'SolarizeAdd',
  'ColorIncreasing',
  'ContrastIncreasing',
  'BrightnessIncreasing',
  'SharpnessIncreasing',
  'ShearX',
  'ShearY',
  'TranslateXRel',
  'TranslateYRel',
] as const;
/** timm's _RAND_TRANSFORMS (the non-increasing variants), for `inc0`. */
export const RAND_OPS = [
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'SolarizeAdd',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateXRel',
  'TranslateYRel',
] as const;
export type RandOp = (typeof RAND_INCREASING_OPS)[number] | (typeof RAND_OPS)[number];

const GEOMETRIC = new Set<RandOp>(['Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel']);
const MAX_LEVEL = 10;

export interface RandAugmentConfig {
  ops: readonly RandOp[];
  /** Ops per image. */
  layers: number;
  magnitude: number;
  /** Std of the per-application magnitude noise (0: fixed magnitude). */
  magnitudeStd: number;
  /** Probability that a drawn op is applied. */
  prob: number;
  /** Fill colour of geometric ops, 0..255 per channel (timm: the normalisation mean). */
  fill: number[];
  /** Fraction of the image width/height for TranslateXRel/YRel at magnitude 10. */
  translatePct: number;
}

/** Parses timm's config string, e.g. 'rand-m9-mstd0.5-inc1'. */
export function parseRandAugment(spec: string, fill: number[]): RandAugmentConfig {
  const parts = spec.split('-');
  if (parts[0] !== 'rand') throw new Error(`RandAugment: config '${spec}' must start with 'rand'`);
  const cfg: RandAugmentConfig = { ops: RAND_OPS, layers: 2, magnitude: 10, magnitudeStd: 0, prob: 0.5, fill, translatePct: 0.45 };
  for (const part of parts.slice(1)) {
    const m = /^([a-z]+)(\d.*)$/.exec(part);
    if (!m) throw new Error(`RandAugment: cannot read '${part}' in '${spec}' (expected e.g. m9, n2, mstd0.5, inc1)`);
    const [, key, raw] = m;
    const val = Number(raw);
    if (!Number.isFinite(val)) throw new Error(`RandAugment: '${part}' in '${spec}' has a non-numeric value`);
    if (key === 'm') cfg.magnitude = val;
    else if (key === 'n') cfg.layers = val;
    else if (key === 'mstd')
      cfg.magnitudeStd = val > 100 ? Infinity : val; // timm: mstd > 100 means uniform in [0, m]
    else if (key === 'inc') cfg.ops = val ? RAND_INCREASING_OPS : RAND_OPS;
    else if (key === 'p') cfg.prob = val;
    else throw new Error(`RandAugment: unknown section '${key}' in '${spec}' (known: m, n, mstd, inc, p)`);
  }
  if (!Number.isInteger(cfg.layers) || cfg.layers < 0) throw new Error(`RandAugment: n must be a non-negative integer in '${spec}'`);
  if (cfg.prob < 0 || cfg.prob > 1) throw new Error(`RandAugment: p must be in [0, 1] in '${spec}'`);
  return cfg;
}

/** One layer's draws for a batch: the op index per image (−1: not applied), its magnitude and sign. */
export interface LayerDraw {
  op: Int32Array;
  magnitude: Float64Array;
  negate: Uint8Array;
}

export function drawLayer(rng: HostRandom, n: number, cfg: RandAugmentConfig): LayerDraw {
  const k = cfg.ops.length;
  const u = rng.uniform(3 * n);
  const uniformMagnitude = cfg.magnitudeStd === Infinity;
  const noise = uniformMagnitude ? rng.uniform(n) : cfg.magnitudeStd > 0 ? rng.normal(n) : new Float64Array(n);
  const op = new Int32Array(n);
  const magnitude = new Float64Array(n);
  const negate = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const choice = Math.min(k - 1, Math.floor(u[i]! * k));
    // timm skips the op when random() > prob.
    op[i] = u[n + i]! > cfg.prob ? -1 : choice;
    const mag = uniformMagnitude ? noise[i]! * cfg.magnitude : cfg.magnitude + cfg.magnitudeStd * noise[i]!;
    magnitude[i] = Math.max(0, Math.min(MAX_LEVEL, mag));
    negate[i] = u[2 * n + i]! > 0.5 ? 1 : 0;
  }
  return { op, magnitude, negate };
}

/** timm's level → argument functions. */
export function opArgument(op: RandOp, level: number, negate: boolean, w: number, h: number, translatePct: number): number {
  const sign = negate ? -1 : 1;
  switch (op) {
    case 'Rotate':
      return sign * (level / MAX_LEVEL) * 30;
    case 'ShearX':
    case 'ShearY':
      return sign * (level / MAX_LEVEL) * 0.3;
    case 'TranslateXRel':
      return sign * (level / MAX_LEVEL) * translatePct * w;
    case 'TranslateYRel':
      return sign * (level / MAX_LEVEL) * translatePct * h;
    case 'Posterize':
      return Math.trunc((level / MAX_LEVEL) * 4);
    case 'PosterizeIncreasing':
      return 4 - Math.trunc((level / MAX_LEVEL) * 4);
    case 'Solarize':
      return Math.trunc((level / MAX_LEVEL) * 256);
    case 'SolarizeIncreasing':
      return 256 - Math.trunc((level / MAX_LEVEL) * 256);
    case 'SolarizeAdd':
      return Math.trunc((level / MAX_LEVEL) * 110);
    case 'Color':
    case 'Contrast':
    case 'Brightness':
    case 'Sharpness':
      return (level / MAX_LEVEL) * 1.8 + 0.1;
    case 'ColorIncreasing':
    case 'ContrastIncreasing':
    case 'BrightnessIncreasing':
    case 'SharpnessIncreasing':
      return Math.max(0.1, 1 + sign * (level / MAX_LEVEL) * 0.9);
    default:
      return 0; // AutoContrast, Equalize, Invert take no argument
  }
}

function affineFor(op: RandOp, arg: number, w: number, h: number): PilAffine {
  switch (op) {
    case 'Rotate':
      return rotate(arg, w, h);
    case 'ShearX':
      return shearX(arg);
    case 'ShearY':
      return shearY(arg);
    case 'TranslateXRel':
      return translate(arg, 0);
    case 'TranslateYRel':
      return translate(0, arg);
    default:
      throw new Error(`affineFor: ${op} is not geometric`);
  }
}

function applyColorOp(op: RandOp, x: Tensor, args: number[]): Tensor {
  const perImage = () => t.tensor(Float32Array.from(args), [args.length, 1, 1, 1], { device: x.device });
  switch (op) {
    case 'AutoContrast':
      return C.autoContrast(x);
    case 'Equalize':
      return C.equalize(x);
    case 'Invert':
      return C.invert(x);
    case 'Posterize':
    case 'PosterizeIncreasing': {
      // bits >= 8 leaves the image unchanged (quantum 1); 0 bits gives black (quantum 256).
      const q = t.tensor(
        Float32Array.from(args, (b) => 2 ** (8 - Math.min(8, b))),
        [args.length, 1, 1, 1],
        { device: x.device },
      );
      return t.tidy(() => C.posterize(x, q));
    }
    case 'Solarize':
    case 'SolarizeIncreasing':
      return t.tidy(() => C.solarize(x, perImage()));
    case 'SolarizeAdd':
      return t.tidy(() => C.solarizeAdd(x, perImage()));
    case 'Color':
    case 'ColorIncreasing':
      return t.tidy(() => C.color(x, perImage()));
    case 'Contrast':
    case 'ContrastIncreasing':
      return t.tidy(() => C.contrast(x, perImage()));
    case 'Brightness':
    case 'BrightnessIncreasing':
      return t.tidy(() => C.brightness(x, perImage()));
    case 'Sharpness':
    case 'SharpnessIncreasing':
      return t.tidy(() => C.sharpness(x, perImage()));
    default:
      throw new Error(`RandAugment: no colour op '${op}'`);
  }
}

/**
 * Applies one drawn layer to x (n, C, H, W; float pixel values 0..255). Untouched images are
 * copied through; every image's result lands back at its own index.
 */
export function applyLayer(x: Tensor, d: LayerDraw, cfg: RandAugmentConfig): Tensor {
  const [n, , h, w] = x.shape as [number, number, number, number];
  const groups = new Map<string, number[]>();
  const untouched: number[] = [];
  for (let i = 0; i < n; i++) {
    const k = d.op[i]!;
    if (k < 0) {
      untouched.push(i);
      continue;
    }
    const op = cfg.ops[k]!;
    const key = GEOMETRIC.has(op) ? 'geometric' : op;
    const g = groups.get(key);
    if (g) g.push(i);
    else groups.set(key, [i]);
  }
  if (groups.size === 0) return x.clone();
  return t.tidy(() => {
    const parts: Tensor[] = [];
    const order: number[] = [];
    const pick = (idx: number[]) => t.indexSelect(x, 0, t.tensor(BigInt64Array.from(idx, BigInt), [idx.length], { device: x.device }));
    for (const [key, idx] of groups) {
      const sub = pick(idx);
      const args = idx.map((i) => opArgument(cfg.ops[d.op[i]!]!, d.magnitude[i]!, d.negate[i] === 1, w, h, cfg.translatePct));
      if (key === 'geometric') {
        const maps = idx.map((i, j) => affineFor(cfg.ops[d.op[i]!]!, args[j]!, w, h));
        parts.push(warpAffine(sub, maps, cfg.fill));
      } else {
        parts.push(applyColorOp(key as RandOp, sub, args));
      }
      order.push(...idx);
    }
    if (untouched.length) {
      parts.push(pick(untouched));
      order.push(...untouched);
    }
    // Row j of the concatenation holds image order[j]; invert that permutation.
    const inverse = new BigInt64Array(n);
    order.forEach((img, j) => {
      inverse[img] = BigInt(j);
    });
    return t.indexSelect(t.cat(parts, 0), 0, t.tensor(inverse, [n], { device: x.device }));
  });
}

/** All layers: draws then applies each in turn (ops see the previous op's rounded pixels, as with PIL). */
export function randAugment(x: Tensor, rng: HostRandom, cfg: RandAugmentConfig): Tensor {
  let y = x.clone();
  for (let l = 0; l < cfg.layers; l++) {
    const d = drawLayer(rng, x.dim(0), cfg);
    const next = applyLayer(y, d, cfg);
    y.dispose();
    y = next;
  }
  return y;
}
