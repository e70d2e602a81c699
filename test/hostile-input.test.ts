// Hostile files cost no more than they are worth (issue 10): image bombs and truncated images,
// oversized safetensors headers, checkpoint configs that do not fit their tensors, NaN weights,
// garbage ONNX metadata, one-class datasets and a JPEG archive with links. Every bomb is
// generated here and is a few kilobytes; each bad case must fail with a clear error, fast, and
// without the gigabytes it used to allocate.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, openSync, ftruncateSync, closeSync, existsSync, symlinkSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import jpeg from 'jpeg-js';
import * as t from '../src/tensor/index.js';
import { decodeImage, readImageFolder, extractJpegCopy, CIFAR10_JPEG_ARCHIVE, setMaxImagePixels, MAX_PIXELS_ENV, DataError } from '../src/data/index.js';
import { readSafetensorsHeader, createModel, saveWeights } from '../src/models/index.js';
import { saveCheckpoint, readCheckpoint, readCheckpointMeta } from '../src/train/checkpoint.js';
import { loadRecipe } from '../src/train/recipe.js';
import { loadSplits } from '../src/train/datasets.js';
import { SGD } from '../src/train/optim/index.js';
import { modelFromCheckpoint } from '../src/export/model-source.js';
import { infoFromModel } from '../src/export/model-info.js';
import { topK } from '../src/export/predict.js';
import type { ModelProto } from '../src/export/onnx-schema.js';
import { skipUnless } from './helpers/prerequisites.js';
import { pngClaiming, writeManyEntrySafetensors, rewriteCheckpointMeta, rewriteHeader } from './helpers/hostile-files.js';

const dir = mkdtempSync(path.join(tmpdir(), 'kshare-hostile-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string) => path.join(dir, name);

/**
 * Runs `fn`, which must throw an error matching `re`, and checks it took under `ms` and grew
 * the resident set by under `mb` megabytes. The bounds are far below what these files cost
 * before (tens of seconds, gigabytes) and far above what the checks cost on a loaded machine.
 */
async function refusedQuickly(fn: () => unknown, re: RegExp, ms = 1500, mb = 150): Promise<Error> {
  const rss0 = process.memoryUsage().rss;
  const t0 = performance.now();
  let err: unknown = null;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  const took = performance.now() - t0;
  const grew = (process.memoryUsage().rss - rss0) / 2 ** 20;
  assert.ok(err instanceof Error, `expected an error matching ${re}, got none`);
  assert.match(err.message, re);
  assert.ok(took < ms, `took ${took.toFixed(0)} ms (limit ${ms}): ${err.message}`);
  assert.ok(grew < mb, `resident memory grew by ${grew.toFixed(0)} MB (limit ${mb}): ${err.message}`);
  return err;
}

// ---- images ----

test('a PNG whose header claims 20000x20000 is refused by its header, naming the file and the limit', async () => {
  const bomb = pngClaiming(20000, 20000, { rows: 1, fill: 0 });
  assert.ok(bomb.length < 1000, `${bomb.length} bytes`);
  await refusedQuickly(
    () => decodeImage(bomb, 'bomb.png'),
    /^bomb\.png: PNG of 20000x20000 \(400\.0 megapixels\) exceeds the 40\.0-megapixel limit.*--max-image-pixels/,
    200,
    20,
  );
  // 30000x30000 RGBA (the 3.5 MB file of the issue: here its header alone).
  await refusedQuickly(() => decodeImage(pngClaiming(30000, 30000, { rows: 1, alpha: true }), 'rgba.png'), /rgba\.png: PNG of 30000x30000/, 200, 20);
});

test('a truncated or short PNG is an error naming the file, never zero-filled rows', async () => {
  const whole = pngClaiming(64, 48);
  assert.equal(decodeImage(whole, 'ok.png').chw.length, 3 * 64 * 48);
  // Cut before IEND, cut inside the data, and a complete file whose data holds one row of 48.
  await refusedQuickly(
    () => decodeImage(whole.subarray(0, whole.length - 12), 'cut.png'),
    /^cut\.png: cannot decode PNG: the file is corrupt or truncated \(no IEND chunk/,
    200,
    20,
  );
  await refusedQuickly(
    () => decodeImage(whole.subarray(0, 60), 'cut2.png'),
    /^cut2\.png: cannot decode PNG: the file is corrupt or truncated \(chunk IDAT of \d+ bytes runs past the end/,
    200,
    20,
  );
  await refusedQuickly(
    () => decodeImage(pngClaiming(64, 48, { rows: 1, fill: 0 }), 'short.png'),
    /^short\.png: cannot decode PNG: the file is corrupt or truncated \(its image data holds 193 bytes, a 64x48 image needs 9264\)/,
    200,
    20,
  );
  // Under the limit but big: refused after one bounded inflate, not after a 1-GB decode.
  await refusedQuickly(
    () => decodeImage(pngClaiming(6000, 6000, { rows: 1, fill: 0 }), 'big.png'),
    /big\.png: cannot decode PNG: the file is corrupt or truncated \(its image data holds 18001 bytes/,
    1500,
    100,
  );
});

test('interlaced PNGs (Adam7) still decode', () => {
  for (const [w, h] of [
    [5, 3],
    [1, 1],
    [9, 17],
    [32, 32],
  ] as const) {
    const img = decodeImage(pngClaiming(w, h, { interlace: true, fill: 77 }), `i${w}x${h}.png`);
    assert.equal(img.width, w);
    assert.ok(
      img.chw.every((v) => v === 77),
      `${w}x${h}`,
    );
  }
  assert.throws(() => decodeImage(pngClaiming(9, 17, { interlace: true, rows: 5 }), 'i.png'), /i\.png: cannot decode PNG: the file is corrupt or truncated/);
});

test('the limit can be raised (option or environment) and applies to JPEG too; a truncated JPEG is an error', async () => {
  const old = process.env[MAX_PIXELS_ENV];
  try {
    const claim = pngClaiming(3000, 3000, { rows: 1, fill: 0 });
    setMaxImagePixels(1_000_000);
    assert.throws(() => decodeImage(claim, 'a.png'), /a\.png: PNG of 3000x3000 \(9\.0 megapixels\) exceeds the 1\.0-megapixel limit/);
    const raw = { width: 40, height: 30, data: Buffer.alloc(40 * 30 * 4, 128) };
    const jpg = jpeg.encode(raw, 90).data;
    setMaxImagePixels(1000);
    assert.throws(() => decodeImage(jpg, 'b.jpg'), /b\.jpg: JPEG of 40x30 \(0\.0 megapixels\) exceeds/);
    process.env[MAX_PIXELS_ENV] = '20000000';
    assert.throws(
      () => decodeImage(claim, 'a.png'),
      /a\.png: cannot decode PNG: the file is corrupt or truncated/,
      'raised: now the truncation is what is wrong',
    );
    assert.equal(decodeImage(jpg, 'b.jpg').width, 40);
    await refusedQuickly(
      () => decodeImage(jpg.subarray(0, jpg.length - 40), 'cut.jpg'),
      /cut\.jpg: cannot decode JPEG: the file is corrupt or truncated \(no end-of-image marker/,
      200,
      20,
    );
    // A JPEG frame header claiming 30000x30000: refused before jpeg-js allocates.
    const big = Buffer.from(jpg);
    const sof = big.indexOf(Buffer.from([0xff, 0xc0]));
    big.writeUInt16BE(30000, sof + 5);
    big.writeUInt16BE(30000, sof + 7);
    await refusedQuickly(() => decodeImage(big, 'big.jpg'), /big\.jpg: JPEG of 30000x30000/, 200, 20);
    process.env[MAX_PIXELS_ENV] = 'lots';
    assert.throws(() => decodeImage(jpg, 'b.jpg'), /KSHARE_MAX_IMAGE_PIXELS must be a positive integer, got 'lots'/);
  } finally {
    if (old === undefined) delete process.env[MAX_PIXELS_ENV];
    else process.env[MAX_PIXELS_ENV] = old;
  }
});

function imageFolder(name: string, files: Record<string, Buffer>): string {
  const root = file(name);
  for (const [rel, bytes] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    writeFileSync(path.join(root, rel), bytes);
  }
  return root;
}

test('a bad image in a dataset folder gives its name and the reason (main thread and decoder threads)', async () => {
  const good = pngClaiming(8, 8);
  const root = imageFolder('bombs', {
    'train/a/0.png': pngClaiming(20000, 20000, { rows: 1, fill: 0 }),
    'train/a/1.png': good,
    'train/b/0.png': good,
    'test/a/0.png': good,
    'test/b/0.png': good,
    'test/b/1.png': pngClaiming(8, 8, { truncate: 50 }),
  });
  await refusedQuickly(() => readImageFolder(root, 'train', { cache: false }), /bombs\/train\/a\/0\.png: PNG of 20000x20000 .* exceeds/, 1500, 50);
  await refusedQuickly(() => readImageFolder(root, 'train', { cache: false, resize: 8 }), /bombs\/train\/a\/0\.png: PNG of 20000x20000/, 1500, 50);
  await refusedQuickly(
    () => readImageFolder(root, 'test', { cache: false, workers: 1 }),
    /bombs\/test\/b\/1\.png: cannot decode PNG: the file is corrupt or truncated/,
    3000,
    80,
  );
});

test('a dataset folder too big to hold decoded is refused by name before allocating', async () => {
  const old = process.env[MAX_PIXELS_ENV];
  try {
    setMaxImagePixels(400_000_000);
    const root = imageFolder('huge', { 'train/a/0.png': pngClaiming(20000, 20000, { rows: 1, fill: 0 }), 'train/b/0.png': pngClaiming(8, 8) });
    // With resize the first image's size does not matter, but 2 images of 40000x40000 would be 9 GiB.
    await refusedQuickly(
      () => readImageFolder(root, 'train', { cache: false, resize: 40000 }),
      /huge\/train\/a\/0\.png: 2 images of 40000x40000 \(the resize option\) would take 8\.9 GiB decoded, more than the 4 GiB one array can hold/,
      500,
      20,
    );
  } finally {
    if (old === undefined) delete process.env[MAX_PIXELS_ENV];
    else process.env[MAX_PIXELS_ENV] = old;
  }
});

test('a dataset with fewer than two classes is refused for training', async () => {
  const px = pngClaiming(8, 8);
  const root = imageFolder('oneclass', { 'train/cat/0.png': px, 'train/cat/1.png': px, 'test/cat/0.png': px });
  await assert.rejects(loadSplits(root, { log: () => {} }), /oneclass: a classifier needs at least two classes, the training split has 1 \('cat'\)/);
});

// ---- safetensors headers ----

test('a header with a million entries or of 90 MB fails in well under a second', async () => {
  const many = file('many.safetensors');
  writeManyEntrySafetensors(many, 70_000); // 3.7 MB header (the issue's was 1.4 M entries, 91 MB)
  await refusedQuickly(
    () => readSafetensorsHeader(many),
    /many\.safetensors: not a valid safetensors file: the header lists more than 65536 tensors/,
    1000,
    60,
  );
  // A 91 MB header claim on a sparse file (a few bytes on disk).
  const big = file('big.safetensors');
  const fd = openSync(big, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(91_000_000n);
  writeFileSync(fd, len);
  ftruncateSync(fd, 91_000_008);
  closeSync(fd);
  await refusedQuickly(
    () => readSafetensorsHeader(big),
    /big\.safetensors: not a valid safetensors file: header of 91000000 bytes exceeds the 16777216-byte limit/,
    200,
    20,
  );
  rmSync(big);
  const meta = file('meta.safetensors');
  const md = Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`k${i}`, 'v']));
  const json = Buffer.from(JSON.stringify({ __metadata__: md }));
  const l2 = Buffer.alloc(8);
  l2.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(meta, Buffer.concat([l2, json]));
  assert.throws(() => readSafetensorsHeader(meta), /__metadata__ has 2000 keys, more than the 1024 allowed/);
});

// ---- checkpoints: configs, recipes, values ----

const MODEL = 'convmixer_16_2_k3_p4_shared';
function writeCheckpoint(name: string, o: { nan?: boolean } = {}): string {
  t.manualSeed(0);
  const model = createModel(MODEL, { classes: 3 });
  if (o.nan) t.noGrad(() => t.fill_(model.stateDict().get('3.1.weight')!, NaN));
  const opt = new SGD(model.parameters(), { lr: 0.1 });
  const rng = t.getRngState();
  const gen = () => t.zeros([16], { dtype: 'uint8' });
  const snap = { globalCpu: rng.cpu, globalCuda: null, shuffle: gen(), params: gen(), noise: gen() };
  const f = file(name);
  try {
    saveCheckpoint(f, {
      model,
      optimizer: opt,
      rng: snap,
      scalerState: null,
      meta: {
        modelName: MODEL,
        modelConfig: null,
        classes: ['a', 'b', 'c'],
        dataset: 'test',
        datasetSpec: null,
        recipe: loadRecipe('convmixer'),
        seed: 0,
        epoch: 1,
        stepInEpoch: 0,
        globalStep: 5,
        itersPerEpoch: 5,
        partial: null,
        bestAcc: 0.5,
        history: [],
        reason: 'epoch',
      },
    });
  } finally {
    t.dispose([rng.cpu, snap.shuffle, snap.params, snap.noise]);
    opt.dispose();
    model.dispose();
  }
  return f;
}

test('a checkpoint records the thread count and its metadata is read without loading its tensors', () => {
  const f = writeCheckpoint('good.safetensors');
  const live = t.liveTensors();
  const { meta, header } = readCheckpointMeta(f);
  assert.equal(t.liveTensors(), live, 'no tensor loaded');
  assert.equal(meta.threads, t.runtimeInfo().numThreads);
  assert.ok(header.entries.size > 5);
  const src = modelFromCheckpoint(f);
  assert.deepEqual(src.info.classes, ['a', 'b', 'c']);
  src.model.dispose();
});

test("a stored config that does not fit the file's tensors is refused before anything is built", async () => {
  const good = writeCheckpoint('base.safetensors');
  const evil = file('evil.safetensors');
  // The issue's case: an unregistered model with dim 40000 (it built 12.7 GB in 109 s first).
  rewriteCheckpointMeta(good, evil, (m) => {
    m.modelName = 'mystery';
    m.modelConfig = { architecture: 'convmixer', dim: 4000, depth: 16, kernelSize: 9, patchSize: 1, sharing: 'none' };
  });
  const live = t.liveTensors();
  await refusedQuickly(
    () => modelFromCheckpoint(evil),
    /evil\.safetensors: model 'mystery': the config \(ConvMixer-4000\/16, kernel 9, patch 1, no sharing, 3 classes\) needs '0\.weight' of shape \[4000,3,1,1\], the file holds \[16,3,4,4\]/,
    1000,
    50,
  );
  await refusedQuickly(() => readCheckpoint(evil), /needs '0\.weight' of shape \[4000,3,1,1\]/, 1000, 50);
  assert.equal(t.liveTensors(), live);
  rewriteCheckpointMeta(good, evil, (m) => {
    m.modelConfig = { architecture: 'convmixer', dim: 40000, depth: 16 };
  });
  await refusedQuickly(() => modelFromCheckpoint(evil), /'dim' must be an integer in \[1, 8192\], got 40000/, 1000, 50);
  rewriteCheckpointMeta(good, evil, (m) => {
    m.modelConfig = { architecture: 'convmixer', dim: 16, depth: 1, kernelSize: 3, patchSize: 4, sharing: 'both' };
  });
  assert.throws(
    () => readCheckpointMeta(evil),
    /needs '6\.weight' of shape \[3,16\], the file holds \[3,16\]|needs tensor '6\.weight'|more blocks than the config \(ConvMixer-16\/1/,
  );
  rewriteCheckpointMeta(good, evil, (m) => {
    m.classes = Array.from({ length: 200_000 }, (_, i) => `c${i}`);
  });
  assert.throws(() => readCheckpointMeta(evil), /'classes' must be a list of 1 to 100000 class names, got "200000 entries"/);
  rewriteCheckpointMeta(good, evil, (m) => {
    m.classes = ['a', 'b'];
  });
  assert.throws(() => readCheckpointMeta(evil), /needs '7\.weight' of shape \[2,16\], the file holds \[3,16\]/);
  // A registry-style name is a config too: convmixer_40000_16 in a weights file.
  t.manualSeed(0);
  const m = createModel(MODEL);
  const w = file('w.safetensors');
  saveWeights(m, w, { 'kshare.model': 'convmixer_4000_16' });
  m.dispose();
  await refusedQuickly(
    () => modelFromCheckpoint(w),
    /w\.safetensors: model 'convmixer_4000_16': the config \(ConvMixer-4000\/16, kernel 9, patch 1, no sharing, 10 classes\) needs '0\.weight' of shape \[4000,3,1,1\]/,
    1000,
    50,
  );
  rewriteHeader(w, w, (h) => {
    (h.__metadata__ as Record<string, string>)['kshare.classes'] = '1000000000';
  });
  await refusedQuickly(() => modelFromCheckpoint(w), /metadata 'kshare\.classes' must be a class count \(at most 100000\)/, 500, 20);
});

test('an empty or broken recipe in a checkpoint is validated like any recipe', () => {
  const good = writeCheckpoint('base2.safetensors');
  const bad = file('recipe.safetensors');
  rewriteCheckpointMeta(good, bad, (m) => {
    m.recipe = {};
  });
  assert.throws(() => readCheckpointMeta(bad), /recipe\.safetensors: the checkpoint's recipe: 'name' must be a non-empty string/);
  assert.throws(() => modelFromCheckpoint(bad), /the checkpoint's recipe/);
  rewriteCheckpointMeta(good, bad, (m) => {
    (m.recipe as { augment: { std: number[] } }).augment.std = [0, 0, 0];
  });
  assert.throws(() => readCheckpointMeta(bad), /std values must be > 0/);
  rewriteCheckpointMeta(good, bad, (m) => {
    m.epoch = -1;
  });
  assert.throws(() => readCheckpointMeta(bad), /'epoch' must be a non-negative integer, got -1/);
});

test('NaN weights are refused with the tensor named (checkpoint and weights file)', () => {
  const f = writeCheckpoint('nan.safetensors', { nan: true });
  const live = t.liveTensors();
  assert.throws(() => readCheckpoint(f), /nan\.safetensors: tensor 'model\/3\.1\.weight' holds NaN or infinite values/);
  assert.throws(() => modelFromCheckpoint(f), /holds NaN or infinite values/);
  assert.equal(t.liveTensors(), live, 'nothing leaked');
  // Two same-size tensors with their data swapped: a BN running_var of zeros gives inf after
  // normalisation only at run time, but a float tensor read as another dtype is NaN at once.
  t.manualSeed(0);
  const m = createModel(MODEL);
  t.noGrad(() => t.fill_(m.stateDict().get('0.bias')!, Infinity));
  const w = file('inf.safetensors');
  saveWeights(m, w, { 'kshare.model': MODEL });
  m.dispose();
  assert.throws(() => modelFromCheckpoint(w), /inf\.safetensors: tensor '0\.bias' holds NaN or infinite values/);
});

test('predict refuses non-finite scores instead of printing NaN%', () => {
  assert.throws(() => topK([1, NaN, 2], ['a', 'b', 'c']), /the model's score for class 1 \('b'\) is NaN/);
  assert.throws(() => topK([Infinity, 0], ['a', 'b']), /is Infinity/);
  assert.equal(topK([0, 1], ['a', 'b'])[0]!.label, 'b');
});

// ---- ONNX metadata ----

function onnxWith(props: Record<string, string>, inputDims?: number[]): ModelProto {
  const dims = inputDims?.map((d) => ({ dimValue: d }));
  return {
    graph: {
      name: 'g',
      node: [],
      initializer: [],
      input: [{ name: 'x', type: { tensorType: { elemType: 1, shape: { dim: dims ?? [] } } } }],
      output: [{ name: 'y', type: { tensorType: { elemType: 1, shape: { dim: [{ dimParam: 'N' }, { dimValue: 10 }] } } } }],
    },
    metadataProps: Object.entries(props).map(([key, value]) => ({ key, value })),
  } as unknown as ModelProto;
}

test('ONNX metadata kshare.input is checked: size bounds, std > 0, a garbage or partial spec', async () => {
  const spec = { channels: 3, height: 32, width: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] };
  assert.deepEqual(infoFromModel(onnxWith({ 'kshare.input': JSON.stringify(spec) }, [1, 3, 32, 32]), 'm.onnx').input, spec);
  assert.equal(infoFromModel(onnxWith({ 'kshare.model': 'se_resnet_d_2' }), 'm.onnx').input.height, 32, 'missing: the default');
  await refusedQuickly(
    () => infoFromModel(onnxWith({ 'kshare.input': JSON.stringify({ ...spec, height: 15000, width: 15000 }) }), 'm.onnx'),
    /m\.onnx: metadata 'kshare\.input': 'height' must be an integer from 1 to 4096, got 15000/,
    100,
    10,
  );
  assert.throws(
    () => infoFromModel(onnxWith({ 'kshare.input': JSON.stringify({ ...spec, std: [0, 1, 1] }) }), 'm.onnx'),
    /'std' must be 3 finite positive numbers \(one per channel\), got \[0,1,1\]/,
  );
  assert.throws(
    () => infoFromModel(onnxWith({ 'kshare.input': '{}' }), 'm.onnx'),
    /m\.onnx: metadata 'kshare\.input': 'channels' must be an integer from 1 to 4, got undefined/,
  );
  assert.throws(() => infoFromModel(onnxWith({ 'kshare.input': '"garbage"' }), 'm.onnx'), /metadata 'kshare\.input' must be an object/);
  assert.throws(() => infoFromModel(onnxWith({ 'kshare.input': '[1' }), 'm.onnx'), /metadata 'kshare\.input' is not valid JSON/);
  assert.throws(
    () => infoFromModel(onnxWith({ 'kshare.input': JSON.stringify({ ...spec, height: 64, width: 64 }) }, [1, 3, 32, 32]), 'm.onnx'),
    /claims input 3x64x64, the graph's input is 3x32x32/,
  );
  assert.throws(() => infoFromModel(onnxWith({ 'kshare.classes': '{"a":1}' }), 'm.onnx'), /'kshare\.classes' must be a non-empty list of class names/);
});

// ---- the JPEG copy's archive ----

function tarXz(name: string, build: (root: string) => void): string {
  const src = file(`${name}-src`);
  mkdirSync(path.join(src, 'cifar10-jpeg', 'train', 'cat'), { recursive: true });
  mkdirSync(path.join(src, 'cifar10-jpeg', 'test', 'cat'), { recursive: true });
  writeFileSync(path.join(src, 'cifar10-jpeg', 'test', 'cat', '0001.png'), pngClaiming(4, 4));
  build(src);
  const out = path.join(file(name), CIFAR10_JPEG_ARCHIVE);
  mkdirSync(path.dirname(out), { recursive: true });
  execFileSync('tar', ['-cJf', out, '-C', src, 'cifar10-jpeg']);
  return out;
}

const needTar = skipUnless(
  ['tar', 'xz'].every((p) => spawnSync(p, ['--version']).status === 0),
  'tar and xz',
  'install tar and xz-utils (scripts/setup.sh does)',
);

test("the JPEG copy's archive: a checksum mismatch refuses unless asked; links and other member types are refused", { skip: needTar }, async () => {
  const clean = tarXz('clean', (r) => writeFileSync(path.join(r, 'cifar10-jpeg', 'train', 'cat', '0001.png'), pngClaiming(4, 4)));
  const dest = file('clean-out');
  await assert.rejects(extractJpegCopy(clean, dest), (e: Error) => {
    assert.ok(e instanceof DataError);
    assert.match(
      e.message,
      /cifar10-jpeg\.tar\.xz: SHA-256 is [0-9a-f]{64}, the published copy's is e8ef80f7.*pass --allow-checksum-mismatch to use it anyway/,
    );
    return true;
  });
  assert.ok(!existsSync(path.join(dest, 'cifar10-jpeg')));
  const notes: string[] = [];
  const got = await extractJpegCopy(clean, dest, (m) => notes.push(m), { allowChecksumMismatch: true });
  assert.ok(lstatSync(path.join(got, 'train', 'cat', '0001.png')).isFile());
  assert.match(notes.join('\n'), /warning: .* has sha256 [0-9a-f]{64}, expected .* \(using it anyway, as asked\)/);

  const linked = tarXz('linked', (r) => symlinkSync('/etc/passwd', path.join(r, 'cifar10-jpeg', 'train', 'cat', '0001.jpg')));
  const dest2 = file('linked-out');
  await assert.rejects(
    extractJpegCopy(linked, dest2, () => {}, { allowChecksumMismatch: true }),
    /refusing to use this archive: member 'cifar10-jpeg\/train\/cat\/0001\.jpg' is a symbolic link to '\/etc\/passwd' \(links are not allowed\)/,
  );
  assert.ok(!existsSync(path.join(dest2, 'cifar10-jpeg')), 'nothing left behind');

  const fifo = tarXz('fifo', (r) => execFileSync('mkfifo', [path.join(r, 'cifar10-jpeg', 'train', 'cat', 'pipe.jpg')]));
  await assert.rejects(
    extractJpegCopy(fifo, file('fifo-out'), () => {}, { allowChecksumMismatch: true }),
    /member 'cifar10-jpeg\/train\/cat\/pipe\.jpg' has type FIFO \(only files and folders are allowed\)/,
  );
});

test('kshare eval and predict refuse a weights file with infinite values instead of printing NaN', () => {
  const CLI = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../src/cli/main.js');
  const px = pngClaiming(16, 16, { fill: 90 });
  const root = imageFolder('evalset', { 'train/a/0.png': px, 'train/b/0.png': px, 'test/a/0.png': px, 'test/b/0.png': px });
  t.manualSeed(0);
  const m = createModel(MODEL, { classes: 2 });
  t.noGrad(() => t.fill_(m.stateDict().get('0.bias')!, -Infinity));
  const w = file('eval-inf.safetensors');
  saveWeights(m, w, { 'kshare.model': MODEL, 'kshare.classes': '2' });
  m.dispose();
  const ev = spawnSync(process.execPath, [CLI, 'eval', '--checkpoint', w, '--model', MODEL, '--recipe', 'convmixer', '--dataset', root, '--threads', '1'], {
    encoding: 'utf8',
  });
  assert.equal(ev.status, 1, ev.stdout);
  assert.match(ev.stderr, /eval-inf\.safetensors: tensor '0\.bias' holds NaN or infinite values/);
  const pr = spawnSync(process.execPath, [CLI, 'predict', w, path.join(root, 'test/a/0.png')], { encoding: 'utf8' });
  assert.equal(pr.status, 1, pr.stdout);
  assert.doesNotMatch(pr.stdout, /NaN%/);
  assert.match(pr.stderr, /eval-inf\.safetensors: tensor '0\.bias' holds NaN or infinite values/);
});
