// Small synthetic image datasets for training tests: each class is a distinct colour
// gradient plus noise, so a tiny model learns it within an epoch or two.
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { PNG } from 'pngjs';
import type { ImageDataset } from '../../src/data/types.js';

/** A deterministic pseudo-random stream (tests need fixed data, not good randomness). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

export function syntheticDataset(o: { count: number; classes?: number; size?: number; seed?: number; split?: 'train' | 'test'; name?: string }): ImageDataset {
  const classes = o.classes ?? 10;
  const size = o.size ?? 32;
  const rnd = lcg(o.seed ?? 1);
  const per = 3 * size * size;
  const images = new Uint8Array(o.count * per);
  const labels = new Int32Array(o.count);
  for (let i = 0; i < o.count; i++) {
    const label = i % classes;
    labels[i] = label;
    const hue = (label / classes) * 2 * Math.PI;
    const base = [Math.cos(hue), Math.cos(hue + 2.1), Math.cos(hue + 4.2)].map((v) => 128 + 80 * v);
    const dir = label % 2 === 0 ? 1 : -1;
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < size; y++) {
        for (let x = 0; x < size; x++) {
          const grad = dir * ((label % 3 === 0 ? x : y) - size / 2) * 2;
          const v = base[c]! + grad + (rnd() - 0.5) * 60;
          images[i * per + c * size * size + y * size + x] = Math.max(0, Math.min(255, Math.round(v)));
        }
      }
    }
  }
  return {
    name: o.name ?? 'synthetic gradients',
    split: o.split ?? 'train',
    images,
    labels,
    classes: Array.from({ length: classes }, (_, k) => `class${k}`),
    count: o.count,
    channels: 3,
    height: size,
    width: size,
  };
}

/** <dir>/{train,test}/<class>/<i>.png: synthetic 16x16 images (default 200 + 50 of 4 classes) for CLI tests. */
export function writeImageFolder(dir: string, { train = 200, test = 50, classes = 4 } = {}): string {
  for (const [split, count, seed] of [
    ['train', train, 1],
    ['test', test, 2],
  ] as const) {
    const ds = syntheticDataset({ count, classes, size: 16, seed, split });
    for (let i = 0; i < ds.count; i++) {
      const cls = path.join(dir, split, ds.classes[ds.labels[i]!]!);
      mkdirSync(cls, { recursive: true });
      const png = new PNG({ width: 16, height: 16 });
      for (let p = 0; p < 256; p++) {
        for (let c = 0; c < 3; c++) png.data[p * 4 + c] = ds.images[i * 768 + c * 256 + p]!;
        png.data[p * 4 + 3] = 255;
      }
      writeFileSync(path.join(cls, `${i}.png`), PNG.sync.write(png));
    }
  }
  return dir;
}
