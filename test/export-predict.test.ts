// `kshare predict` and its pieces: image preparation (decode, centre crop, area resampling,
// normalisation), top-k, and the command on .onnx models and checkpoints, bad input included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { PNG } from 'pngjs';
import { resizeToFit, normalise, prepareImage } from '../src/export/image-input.js';
import { softmax, topK } from '../src/export/predict.js';
import { saveWeights } from '../src/models/weights.js';
import { preparedModel } from './export-fixtures.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.resolve(HERE, '../src/cli/main.js');
const SAMPLES = path.resolve(HERE, '../../web/samples');
const SPEC = { channels: 3, height: 32, width: 32, mean: [0.5, 0.25, 0], std: [0.5, 0.25, 1] };

function pngBytes(width: number, height: number, pixel: (x: number, y: number) => [number, number, number]): Buffer {
  const png = new PNG({ width, height });
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) png.data.set([...pixel(x, y), 255], (y * width + x) * 4);
  return PNG.sync.write(png);
}

test('resizeToFit: same size passes through; area resampling averages; other aspect ratios are centre-cropped', () => {
  const img = { width: 2, height: 2, chw: Uint8Array.from([0, 10, 20, 30, 1, 2, 3, 4, 5, 6, 7, 8]) };
  assert.equal(resizeToFit(img, 2, 2), img);
  // 2x2 → 1x1: the mean of each channel.
  assert.deepEqual(Array.from(resizeToFit(img, 1, 1).chw), [15, 3, 7]);
  // A 4x2 image (left half 0, right half 200, middle columns 100) → 1x1 from the centred 2x2 crop.
  const wide = { width: 4, height: 2, chw: new Uint8Array(24) };
  for (let c = 0; c < 3; c++) for (let y = 0; y < 2; y++) wide.chw.set([0, 100, 100, 200], c * 8 + y * 4);
  assert.deepEqual(Array.from(resizeToFit(wide, 1, 1).chw), [100, 100, 100]);
  // Upscaling 1x1 → 3x3 replicates.
  assert.deepEqual(Array.from(resizeToFit({ width: 1, height: 1, chw: Uint8Array.from([9, 8, 7]) }, 3, 3).chw), [
    ...Array(9).fill(9),
    ...Array(9).fill(8),
    ...Array(9).fill(7),
  ]);
  // Non-integer factor (3x3 → 2x2): each output pixel covers 1.5 source pixels per axis.
  const rows = { width: 3, height: 3, chw: Uint8Array.from(Array.from({ length: 27 }, (_, i) => [0, 90, 180][i % 3]!)) };
  assert.deepEqual(Array.from(resizeToFit(rows, 2, 2).chw.subarray(0, 4)), [30, 150, 30, 150]);
});

test('normalise and prepareImage: (v/255 - mean)/std in CHW, with the resize reported', () => {
  const x = normalise({ width: 1, height: 1, chw: Uint8Array.from([255, 0, 51]) }, SPEC);
  assert.deepEqual(
    Array.from(x).map((v) => +v.toFixed(6)),
    [1, -1, 0.2],
  );
  const exact = prepareImage(
    pngBytes(32, 32, () => [255, 0, 51]),
    SPEC,
    'a.png',
  );
  assert.equal(exact.resizedFrom, undefined);
  assert.equal(exact.input.length, 3 * 32 * 32);
  assert.ok(Math.abs(exact.input[2048]! - 0.2) < 1e-6);
  const big = prepareImage(
    pngBytes(96, 64, (px) => (px < 16 || px >= 80 ? [0, 0, 0] : [255, 255, 255])),
    SPEC,
    'b.png',
  );
  assert.deepEqual(big.resizedFrom, { width: 96, height: 64 });
  // The centred 64x64 crop is columns 16..79: all white.
  assert.ok(big.input.subarray(0, 1024).every((v) => Math.abs(v - 1) < 1e-6));
  const jpeg = prepareImage(readFileSync(path.join(SAMPLES, 'cat.jpg')), SPEC, 'cat.jpg');
  assert.equal(jpeg.resizedFrom, undefined);
  assert.throws(() => prepareImage(new TextEncoder().encode('plain text'), SPEC, 'notes.txt'), /notes\.txt: not a PNG or JPEG image/);
  assert.throws(() => prepareImage(pngBytes(4, 4, () => [1, 2, 3]).subarray(0, 40), SPEC, 'cut.png'), /cut\.png: cannot decode PNG/);
});

test('softmax and topK: probabilities sum to 1, sorted, class names attached', () => {
  const p = softmax([1000, 1001, 999]);
  assert.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  assert.ok(Math.abs(p[1]! - Math.exp(1) / (1 + Math.exp(1) + Math.exp(-1))) < 1e-12);
  assert.deepEqual(
    topK([0.1, 3, -2, 3], ['a', 'b', 'c', 'd'], 3).map((x) => x.label),
    ['b', 'd', 'a'],
  );
  assert.throws(() => topK([1, 2], ['a'], 1), /gives 2 scores but names 1 classes/);
});

test('kshare predict: a checkpoint and its ONNX export give the same top-5; bad input is explained', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kshare-predict-'));
  const src = preparedModel('convmixer_64_4_k5_p2_shared', 4, { headScale: 3 });
  try {
    const ckpt = path.join(dir, 'model.safetensors');
    saveWeights(src.model, ckpt, { 'kshare.model': src.info.model, 'kshare.classes': JSON.stringify(src.info.classes) });
    const onnx = path.join(dir, 'model.onnx');
    const exp = spawnSync(process.execPath, [CLI, 'export', '--checkpoint', ckpt, '--out', onnx], { encoding: 'utf8' });
    assert.equal(exp.status, 0, exp.stderr);
    assert.match(exp.stdout, /exported convmixer_64_4_k5_p2_shared \(weights file model\.safetensors\)/);

    const images = ['cat.jpg', 'ship.jpg'].map((f) => path.join(SAMPLES, f));
    const run = (model: string, files: string[], extra: string[] = []) =>
      spawnSync(process.execPath, [CLI, 'predict', model, ...files, '--json', '--threads', '1', ...extra], { encoding: 'utf8' });
    const parse = (out: string) =>
      out
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { image: string; top: { class: string; probability: number }[]; error?: string });
    const viaOnnx = run(onnx, images);
    const viaCkpt = run(ckpt, images);
    assert.equal(viaOnnx.status, 0, viaOnnx.stderr);
    assert.equal(viaCkpt.status, 0, viaCkpt.stderr);
    const a = parse(viaOnnx.stdout),
      b = parse(viaCkpt.stdout);
    assert.equal(a.length, 2);
    for (let i = 0; i < 2; i++) {
      assert.equal(a[i]!.top.length, 5);
      assert.deepEqual(
        a[i]!.top.map((p) => p.class),
        b[i]!.top.map((p) => p.class),
      );
      for (let k = 0; k < 5; k++) assert.ok(Math.abs(a[i]!.top[k]!.probability - b[i]!.top[k]!.probability) < 1e-5);
    }
    assert.ok(
      Math.abs(a[0]!.top[0]!.probability - a[1]!.top[0]!.probability) > 1e-3 || a[0]!.top[0]!.class !== a[1]!.top[0]!.class,
      'different images, different answers',
    );

    // Table output, and a wrong-sized image is resized with a note.
    const wide = path.join(dir, 'wide.png');
    writeFileSync(
      wide,
      pngBytes(64, 40, (x, y) => [x * 4, y * 6, 90]),
    );
    const table = spawnSync(process.execPath, [CLI, 'predict', onnx, wide, '--top', '3'], { encoding: 'utf8' });
    assert.equal(table.status, 0, table.stderr);
    assert.match(table.stdout, /wide\.png \(64x40, centre-cropped and resized to 32x32\)\n( {2}\S+ +\d+\.\d\d%\n){3}$/);

    // Bad input: one line each, exit code 1, good images still reported.
    const notImage = path.join(dir, 'notes.txt');
    writeFileSync(notImage, 'hello');
    const mixed = spawnSync(process.execPath, [CLI, 'predict', onnx, notImage, images[0]!], { encoding: 'utf8' });
    assert.equal(mixed.status, 1);
    assert.match(mixed.stderr, /notes\.txt: not a PNG or JPEG image/);
    assert.match(mixed.stderr, /1 of 2 image\(s\) could not be classified/);
    assert.match(mixed.stdout, /cat\.jpg\n/);
    const corrupt = path.join(dir, 'corrupt.onnx');
    writeFileSync(corrupt, readFileSync(onnx).subarray(0, 3000));
    for (const [args, msg] of [
      [[corrupt, images[0]!], /corrupt\.onnx is not a valid ONNX file|ONNX Runtime cannot load .*corrupt\.onnx/],
      [[path.join(dir, 'none.onnx'), images[0]!], /cannot read ONNX model .*none\.onnx: no such file/],
      [[onnx, path.join(dir, 'missing.png')], /cannot read image .*missing\.png: no such file/],
      [[path.join(dir, 'model.txt'), images[0]!], /neither a \.onnx model nor a \.safetensors checkpoint/],
    ] as [string[], RegExp][]) {
      const r = spawnSync(process.execPath, [CLI, 'predict', ...args], { encoding: 'utf8' });
      assert.equal(r.status, 1, `${args.join(' ')}`);
      assert.match(r.stderr, msg);
      assert.ok(!/\n\s+at /.test(r.stderr), 'no stack trace');
    }
  } finally {
    src.model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});
