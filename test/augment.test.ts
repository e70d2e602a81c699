// Augmentation: invariants (crop bounds, flips, boxes, mixed targets) and statistics of the
// random draws (op choice, magnitude, probabilities) over many images.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import { HostRandom, roundHalfEven } from '../src/train/augment/random.js';
import { drawCropFlip, applyCropFlip } from '../src/train/augment/crop-flip.js';
import { drawLayer, parseRandAugment, applyLayer, randAugment, RAND_INCREASING_OPS, opArgument } from '../src/train/augment/rand-augment.js';
import { drawErasing, applyErasing, drawCutout, applyCutout } from '../src/train/augment/erasing.js';
import { drawMix, applyMix, smoothOneHot } from '../src/train/augment/mixup.js';
import { TrainAugment, normalize, type AugmentConfig } from '../src/train/augment/pipeline.js';
import { loadRecipe } from '../src/train/recipe.js';

t.setNumThreads(1);
const rng = (seed: number) => new HostRandom(new t.Generator(seed));
const mean = (a: ArrayLike<number>) => Array.from(a).reduce((s, v) => s + v, 0) / a.length;
const std = (a: ArrayLike<number>) => {
  const m = mean(a);
  return Math.sqrt(Array.from(a).reduce((s, v) => s + (v - m) ** 2, 0) / a.length);
};

test('random crop with padding 4 and flip: each output pixel is the input at the drawn offset, or 0 in the padding', () => {
  const n = 64,
    size = 32,
    pad = 4;
  // Pixel value encodes its position: 1 + 32·y + x (0 is then unambiguous padding).
  const pos = Float32Array.from({ length: n * size * size }, (_, i) => 1 + (i % (size * size)));
  t.tidy(() => {
    const x = t.tensor(pos, [n, 1, size, size]);
    const p = drawCropFlip(rng(1), n, size, size, { padding: pad, flipProb: 0.5 });
    const out = applyCropFlip(x, p, { padding: pad, flipProb: 0.5 }).dataSync() as Float32Array;
    for (let i = 0; i < n; i++) {
      assert.ok(p.top[i]! >= 0 && p.top[i]! <= 2 * pad && p.left[i]! >= 0 && p.left[i]! <= 2 * pad);
      for (let r = 0; r < size; r++) {
        for (let c = 0; c < size; c++) {
          const cc = p.flipped[i] ? size - 1 - c : c;
          const sy = p.top[i]! + r - pad,
            sx = p.left[i]! + cc - pad;
          const want = sy >= 0 && sy < size && sx >= 0 && sx < size ? 1 + size * sy + sx : 0;
          assert.equal(out[i * size * size + r * size + c], want, `image ${i} pixel (${r}, ${c})`);
        }
      }
    }
  });
});

test('crop offsets are uniform over 0..8 and flips happen half the time', () => {
  const n = 9000;
  const p = drawCropFlip(rng(2), n, 32, 32, { padding: 4, flipProb: 0.5 });
  const counts = new Array(9).fill(0);
  for (const v of p.top) counts[v]++;
  for (const c of counts) assert.ok(Math.abs(c - n / 9) < 5 * Math.sqrt(n / 9), `offset counts ${counts}`);
  assert.ok(Math.abs(mean(p.flipped) - 0.5) < 0.03);
  assert.equal(mean(drawCropFlip(rng(3), 100, 32, 32, { padding: 4, flipProb: 0 }).flipped), 0);
});

test('RandAugment draws: 15 increasing ops equally likely, applied with p 0.5, magnitude N(9, 0.5) clipped to [0, 10]', () => {
  const cfg = parseRandAugment('rand-m9-mstd0.5-inc1', [124, 116, 104]);
  assert.deepEqual(cfg.ops, RAND_INCREASING_OPS);
  assert.equal(cfg.ops.length, 15);
  assert.equal(cfg.layers, 2);
  assert.equal(cfg.magnitude, 9);
  assert.equal(cfg.magnitudeStd, 0.5);
  const n = 30000;
  const d = drawLayer(rng(4), n, cfg);
  const applied = Array.from(d.op).filter((k) => k >= 0);
  assert.ok(Math.abs(applied.length / n - 0.5) < 0.01, `applied fraction ${applied.length / n}`);
  const counts = new Array(15).fill(0);
  for (const k of applied) counts[k]++;
  const expect = applied.length / 15;
  for (const c of counts) assert.ok(Math.abs(c - expect) < 5 * Math.sqrt(expect), `op counts ${counts}`);
  assert.ok(Math.abs(mean(d.magnitude) - 9) < 0.02, `magnitude mean ${mean(d.magnitude)}`);
  assert.ok(Math.abs(std(d.magnitude) - 0.5) < 0.02, `magnitude std ${std(d.magnitude)}`);
  assert.ok(Math.max(...d.magnitude) <= 10 && Math.min(...d.magnitude) >= 0);
  assert.ok(Math.abs(mean(d.negate) - 0.5) < 0.02);
  // timm's level → argument maps at magnitude 9.
  assert.equal(opArgument('Rotate', 9, false, 32, 32, 0.45), 27);
  assert.equal(opArgument('PosterizeIncreasing', 9, false, 32, 32, 0.45), 1);
  assert.equal(opArgument('SolarizeIncreasing', 9, false, 32, 32, 0.45), 256 - 230);
  assert.equal(opArgument('SolarizeAdd', 9, false, 32, 32, 0.45), 99);
  assert.ok(Math.abs(opArgument('ColorIncreasing', 9, true, 32, 32, 0.45) - 0.19) < 1e-12);
  assert.ok(Math.abs(opArgument('TranslateXRel', 10, true, 32, 32, 0.45) + 14.4) < 1e-12);
  assert.throws(() => parseRandAugment('rand-m9-x3', []), /unknown section 'x'/);
  assert.throws(() => parseRandAugment('auto-m9', []), /must start with 'rand'/);
});

/** Applies one op (by name) to every image of x with magnitude m and sign. */
function applyOp(x: t.Tensor, op: string, m: number, negate = false): Float32Array {
  const cfg = parseRandAugment('rand-m9-inc1', [124, 116, 104]);
  const k = cfg.ops.indexOf(op as never);
  assert.ok(k >= 0, op);
  const n = x.dim(0);
  const d = { op: new Int32Array(n).fill(k), magnitude: new Float64Array(n).fill(m), negate: new Uint8Array(n).fill(negate ? 1 : 0) };
  return t.tidy(() => applyLayer(x, d, cfg).dataSync() as Float32Array);
}

test("colour ops give PIL's values on known pixels", () => {
  const ramp = Float32Array.from({ length: 3 * 16 * 16 }, (_, i) => i % 256);
  t.tidy(() => {
    const x = t.tensor(ramp, [1, 3, 16, 16]);
    assert.deepEqual(Array.from(applyOp(x, 'Invert', 9).slice(0, 4)), [255, 254, 253, 252]);
    // PosterizeIncreasing at m 9 keeps 1 bit.
    const post = applyOp(x, 'PosterizeIncreasing', 9);
    assert.ok(post.every((v, i) => v === (ramp[i]! >= 128 ? 128 : 0)));
    // SolarizeIncreasing at m 9: threshold 26.
    const sol = applyOp(x, 'SolarizeIncreasing', 9);
    assert.ok(sol.every((v, i) => v === (ramp[i]! < 26 ? ramp[i] : 255 - ramp[i]!)));
    // SolarizeAdd at m 9 adds 99 below 128, clipped at 255.
    const sa = applyOp(x, 'SolarizeAdd', 9);
    assert.ok(sa.every((v, i) => v === (ramp[i]! < 128 ? Math.min(255, ramp[i]! + 99) : ramp[i])));
    // BrightnessIncreasing at m 10, negated: factor max(0.1, 1 − 0.9) = 0.1, truncated.
    const br = applyOp(x, 'BrightnessIncreasing', 10, true);
    assert.ok(
      br.every((v, i) => v === Math.floor(ramp[i]! * 0.1)),
      'brightness',
    );
    // ContrastIncreasing at m 5: blend with the mean grey level (int(mean + 0.5)) by factor 1.45.
    const grey = Math.floor(
      mean(
        Array.from({ length: 256 }, (_, i) => {
          const p = (k: number) => ramp[k * 256 + i]!;
          return Math.floor((19595 * p(0) + 38470 * p(1) + 7471 * p(2) + 32768) / 65536);
        }),
      ) + 0.5,
    );
    const ct = applyOp(x, 'ContrastIncreasing', 5);
    assert.ok(
      ct.every((v, i) => v === Math.floor(Math.min(255, Math.max(0, grey + 1.45 * (ramp[i]! - grey))))),
      'contrast',
    );
  });
  // AutoContrast stretches each channel's [min, max] to [0, 255].
  t.tidy(() => {
    const v = Float32Array.from({ length: 2 * 2 * 2 }, (_, i) => [10, 20, 30, 50, 7, 7, 7, 7][i]!);
    const out = applyOp(t.tensor(v, [1, 2, 2, 2]), 'AutoContrast', 9);
    assert.deepEqual(Array.from(out), [0, 63, 127, 255, 7, 7, 7, 7]);
  });
});

test("Equalize matches PIL's LUT rule computed independently", () => {
  const n = 3,
    c = 3,
    hw = 64;
  const g = new t.Generator(7);
  const x = t.tidy(() => t.floor(t.mul(t.pow(t.rand([n, c, 8, 8], { generator: g }), 2), 200)));
  const got = applyOp(x, 'Equalize', 9);
  const src = x.dataSync() as Float32Array;
  x.dispose();
  for (let ch = 0; ch < n * c; ch++) {
    const px = Array.from(src.slice(ch * hw, (ch + 1) * hw));
    const h = new Array(256).fill(0);
    for (const v of px) h[v]++;
    const nonzero = h.filter((v) => v > 0);
    const step = Math.floor((px.length - nonzero[nonzero.length - 1]) / 255);
    const lut: number[] = [];
    if (nonzero.length <= 1 || step === 0) for (let i = 0; i < 256; i++) lut.push(i);
    else {
      let acc = Math.floor(step / 2);
      for (let i = 0; i < 256; i++) {
        lut.push(Math.min(255, Math.floor(acc / step)));
        acc += h[i];
      }
    }
    px.forEach((v, i) => assert.equal(got[ch * hw + i], lut[v], `channel ${ch} pixel ${i}`));
  }
});

test('geometric ops: integer translations are exact shifts with the fill colour, 180° rotation is a double flip', () => {
  const size = 8;
  const vals = Float32Array.from({ length: 3 * size * size }, (_, i) => (i * 37) % 251);
  t.tidy(() => {
    const x = t.tensor(vals, [1, 3, size, size]);
    // TranslateXRel at magnitude m moves by m/10 · 0.45 · W pixels: m = 2 / (0.45 · 8) · 10 gives 2 pixels.
    const m = (2 / (0.45 * size)) * 10;
    const out = applyOp(x, 'TranslateXRel', m);
    for (let ch = 0; ch < 3; ch++) {
      for (let r = 0; r < size; r++) {
        for (let cc = 0; cc < size; cc++) {
          const sx = cc + 2;
          const want = sx < size ? vals[ch * 64 + r * size + sx] : [124, 116, 104][ch];
          assert.equal(out[ch * 64 + r * size + cc], want, `translate ch ${ch} (${r}, ${cc})`);
        }
      }
    }
  });
  t.tidy(() => {
    const x = t.tensor(vals, [1, 3, size, size]);
    // Rotate by 180° (PIL maps pixel centres to pixel centres): the image flipped both ways.
    const d = { op: Int32Array.of(3), magnitude: Float64Array.of(10), negate: Uint8Array.of(0) };
    const cfg = parseRandAugment('rand-m10-inc1', [0, 0, 0]);
    // Rotate is 3° per magnitude unit; clipping to 10 happens in drawLayer, so 60 gives 180°.
    d.magnitude[0] = 60;
    const out = applyLayer(x, d, cfg).dataSync() as Float32Array;
    for (let ch = 0; ch < 3; ch++) {
      for (let r = 0; r < size; r++) {
        for (let cc = 0; cc < size; cc++) {
          assert.equal(out[ch * 64 + r * size + cc], vals[ch * 64 + (size - 1 - r) * size + (size - 1 - cc)], `rotate ch ${ch} (${r}, ${cc})`);
        }
      }
    }
  });
});

test("Rotate is counter-clockwise for positive degrees, as PIL's Image.rotate", () => {
  const size = 6;
  const vals = Float32Array.from({ length: size * size }, (_, i) => i + 1);
  t.tidy(() => {
    const x = t.tensor(vals, [1, 1, size, size]);
    const cfg = parseRandAugment('rand-m10-inc1', [0]);
    const out = applyLayer(x, { op: Int32Array.of(3), magnitude: Float64Array.of(30), negate: Uint8Array.of(0) }, cfg).dataSync() as Float32Array;
    // 90° counter-clockwise: the right column becomes the top row.
    for (let r = 0; r < size; r++) for (let c = 0; c < size; c++) assert.equal(out[r * size + c], vals[c * size + (size - 1 - r)], `(${r}, ${c})`);
  });
});

test('RandAugment keeps every image at its index and pixel values integral in [0, 255]', () => {
  const cfg = parseRandAugment('rand-m9-mstd0.5-inc1', [124, 116, 104]);
  t.tidy(() => {
    const x = t.floor(t.mul(t.rand([64, 3, 32, 32], { generator: new t.Generator(3) }), 256));
    const d = drawLayer(rng(5), 64, cfg);
    const out = applyLayer(x, d, cfg);
    const a = out.dataSync() as Float32Array,
      b = x.dataSync() as Float32Array;
    assert.ok(a.every((v) => Number.isInteger(v) && v >= 0 && v <= 255));
    for (let i = 0; i < 64; i++) {
      const same = a.subarray(i * 3072, (i + 1) * 3072).every((v, j) => v === b[i * 3072 + j]);
      if (d.op[i]! < 0) assert.ok(same, `image ${i} was not to be touched`);
    }
    const changed = Array.from(d.op).filter((k) => k >= 0).length;
    assert.ok(changed > 16, `only ${changed} images drew an op`);
    const y = randAugment(x, rng(6), cfg);
    assert.deepEqual(y.shape, [64, 3, 32, 32]);
  });
});

test('random erasing: p 0.25 of images, box area 2%–33% of the image, N(0, 1) pixels inside, nothing outside', () => {
  const n = 4000;
  const opts = { prob: 0.25, minArea: 0.02, maxArea: 1 / 3, minAspect: 0.3, mode: 'pixel' as const };
  const [b] = drawErasing(rng(8), n, 32, 32, opts);
  const erased = Array.from(b!.h).map((h, i) => (h > 0 && b!.w[i]! > 0 ? 1 : 0));
  assert.ok(Math.abs(mean(erased) - 0.25) < 0.025, `erased fraction ${mean(erased)}`);
  const areas: number[] = [];
  for (let i = 0; i < n; i++) {
    if (!erased[i]) continue;
    assert.ok(b!.top[i]! >= 0 && b!.top[i]! + b!.h[i]! <= 32 && b!.left[i]! >= 0 && b!.left[i]! + b!.w[i]! <= 32);
    areas.push((b!.h[i]! * b!.w[i]!) / 1024);
  }
  // Rounded sides can leave the range a little; the bulk must be inside and the mean near the middle.
  assert.ok(
    areas.every((a) => a > 0.005 && a < 0.45),
    `areas ${Math.min(...areas)}..${Math.max(...areas)}`,
  );
  assert.ok(Math.abs(mean(areas) - (0.02 + 1 / 3) / 2) < 0.03, `mean area ${mean(areas)}`);
  t.tidy(() => {
    const m = 200;
    const boxes = drawErasing(rng(9), m, 32, 32, { ...opts, prob: 1 });
    const x = t.full([m, 3, 32, 32], 5);
    const out = applyErasing(x, boxes, 'pixel', new t.Generator(1)).dataSync() as Float32Array;
    const inside: number[] = [];
    let fives = 0,
      total = 0;
    const bb = boxes[0]!;
    for (let i = 0; i < m; i++) {
      for (let ch = 0; ch < 3; ch++) {
        for (let r = 0; r < 32; r++) {
          for (let c = 0; c < 32; c++) {
            const v = out[((i * 3 + ch) * 32 + r) * 32 + c]!;
            const inBox = r >= bb.top[i]! && r < bb.top[i]! + bb.h[i]! && c >= bb.left[i]! && c < bb.left[i]! + bb.w[i]!;
            if (inBox) inside.push(v);
            else {
              total++;
              if (v === 5) fives++;
            }
          }
        }
      }
    }
    assert.equal(fives, total, 'pixels outside the boxes are unchanged');
    assert.ok(Math.abs(mean(inside)) < 0.02 && Math.abs(std(inside) - 1) < 0.02, `erased pixels mean ${mean(inside)}, std ${std(inside)}`);
  });
});

test('cutout zeroes the box [max(0, c − 8), min(31, c + 8)) on each axis', () => {
  const b = drawCutout(rng(10), 500, 32, 32, 16);
  for (let i = 0; i < 500; i++) {
    assert.ok(b.h[i]! <= 16 && b.w[i]! <= 16 && b.top[i]! + b.h[i]! <= 31 && b.left[i]! + b.w[i]! <= 31);
  }
  t.tidy(() => {
    const out = applyCutout(t.ones([500, 1, 32, 32]), b).dataSync() as Float32Array;
    for (let i = 0; i < 500; i += 50) {
      let zeros = 0;
      for (let j = 0; j < 1024; j++) if (out[i * 1024 + j] === 0) zeros++;
      assert.equal(zeros, b.h[i]! * b.w[i]!);
    }
  });
});

test('Mixup/CutMix: λ ~ Beta(0.5, 0.5), CutMix half the time, targets sum to 1 and match the pasted area', () => {
  const o = { mixupAlpha: 0.5, cutmixAlpha: 0.5, prob: 1, switchProb: 0.5, correctLam: true };
  const r = rng(11);
  const draws = Array.from({ length: 4000 }, () => drawMix(r, 32, 32, o));
  const cut = draws.filter((d) => d.kind === 'cutmix').length / draws.length;
  assert.ok(Math.abs(cut - 0.5) < 0.03, `cutmix fraction ${cut}`);
  const lams = draws.filter((d) => d.kind === 'mixup').map((d) => d.lam);
  assert.ok(Math.abs(mean(lams) - 0.5) < 0.02 && Math.abs(std(lams) ** 2 - 0.125) < 0.01, `Beta(0.5, 0.5): mean ${mean(lams)}, var ${std(lams) ** 2}`);
  for (const d of draws.filter((x) => x.kind === 'cutmix')) {
    const [y0, y1, x0, x1] = d.box!;
    assert.ok(y0 >= 0 && y1 <= 32 && x0 >= 0 && x1 <= 32 && y0 <= y1 && x0 <= x1);
    assert.ok(Math.abs(d.lam - (1 - ((y1 - y0) * (x1 - x0)) / 1024)) < 1e-12, 'λ corrected to the box area');
  }
  t.tidy(() => {
    const n = 8,
      classes = 10;
    const labels = t.tensor([0, 1, 2, 3, 4, 5, 6, 7], [n], { dtype: 'int64' });
    // Image i is constant i, so the pasted area can be counted.
    const x = t.reshape(t.arange(0, n, 1, { dtype: 'float32' }), [n, 1, 1, 1]).mul(t.ones([1, 3, 32, 32]));
    const cm = draws.find((d) => d.kind === 'cutmix' && d.lam > 0.3 && d.lam < 0.9)!;
    const { x: xc, target } = applyMix(x, labels, classes, 0.1, cm);
    const rows = t.sum(target, 1).dataSync() as Float32Array;
    for (const s of rows) assert.ok(Math.abs(s - 1) < 1e-5);
    const img0 = (xc.dataSync() as Float32Array).subarray(0, 3072);
    const fromPartner = Array.from(img0).filter((v) => v === 7).length / 3072;
    assert.ok(Math.abs(fromPartner - (1 - cm.lam)) < 1e-9, `pasted fraction ${fromPartner} vs 1 − λ ${1 - cm.lam}`);
    const tg = target.dataSync() as Float32Array;
    assert.ok(Math.abs(tg[0]! - (cm.lam * 0.91 + (1 - cm.lam) * 0.01)) < 1e-5);
    assert.ok(Math.abs(tg[7]! - ((1 - cm.lam) * 0.91 + cm.lam * 0.01)) < 1e-5);
    const mx = draws.find((d) => d.kind === 'mixup')!;
    const mixed = applyMix(x, labels, classes, 0, mx);
    const v = (mixed.x.dataSync() as Float32Array)[0]!;
    assert.ok(Math.abs(v - (1 - mx.lam) * 7) < 1e-5, 'mixup blends with the reversed batch');
    const smooth = smoothOneHot(labels, classes, 0.1).dataSync() as Float32Array;
    assert.ok(Math.abs(smooth[0]! - 0.91) < 1e-6 && Math.abs(smooth[1]! - 0.01) < 1e-6);
  });
});

test("the recipes' pipelines: shapes, normalisation, soft targets, determinism per seed, no leaks", () => {
  const cm = loadRecipe('convmixer').augment;
  const se = loadRecipe('seresnet').augment;
  const images = t.keep(t.randint(0, 256, [32, 3, 32, 32], { dtype: 'uint8', generator: new t.Generator(1) }));
  const labels = t.keep(t.randint(0, 10, [32], { generator: new t.Generator(2) }));
  const live = t.liveTensors();
  const run = (cfg: AugmentConfig, seed: number) =>
    t.tidy(() => {
      const aug = new TrainAugment(cfg, 10, new t.Generator(seed), new t.Generator(seed + 1));
      const { x, target } = aug.apply(images, labels);
      return { x: x.dataSync() as Float32Array, target: target.toArray(), shape: target.shape };
    });
  const a = run(cm, 5),
    b = run(cm, 5),
    c = run(cm, 6);
  assert.deepEqual(a.shape, [32, 10]);
  assert.ok(a.x.every(Number.isFinite));
  for (let i = 0; i < 32; i++) assert.ok(Math.abs(a.target.slice(i * 10, i * 10 + 10).reduce((s, v) => s + v, 0) - 1) < 1e-5);
  assert.deepEqual(a.x, b.x, 'same seed, same batch');
  assert.notDeepEqual(a.x, c.x, 'another seed, another batch');
  const s = run(se, 5);
  assert.deepEqual(s.shape, [32], 'hard labels without mixing or smoothing');
  // Crop/flip only: every value is a normalised uint8 or the normalised zero padding.
  const allowed = new Set<number>();
  t.tidy(() => {
    const all = t.reshape(t.arange(0, 256, 1, { dtype: 'uint8' }), [1, 1, 1, 256]).to('float32');
    for (let ch = 0; ch < 3; ch++) {
      const v = normalize(t.expand(all.to('uint8'), [1, 3, 1, 256]), se.mean, se.std).dataSync() as Float32Array;
      for (let k = 0; k < 256; k++) allowed.add(v[ch * 256 + k]!);
    }
  });
  assert.ok(s.x.every((v) => allowed.has(v)));
  assert.equal(t.liveTensors(), live);
  images.dispose();
  labels.dispose();
  assert.equal(roundHalfEven(2.5), 2);
  assert.equal(roundHalfEven(3.5), 4);
  assert.equal(roundHalfEven(2.4999), 2);
});
