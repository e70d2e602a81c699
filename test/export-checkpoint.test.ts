// `kshare export --checkpoint` on a training checkpoint as `kshare train` writes it: the model,
// its class names and its recipe's normalisation reach the ONNX file, and the exported model
// computes what the checkpoint's model computes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import * as t from '../src/tensor/index.js';
import { SGD } from '../src/train/optim/index.js';
import { saveCheckpoint } from '../src/train/checkpoint.js';
import { loadRecipe } from '../src/train/recipe.js';
import { decodeModel } from '../src/export/onnx-schema.js';
import { infoFromModel } from '../src/export/model-info.js';
import { sharedConvWeights } from '../src/export/onnx-inspect.js';
import { maxRelError } from './helpers/python.js';
import { kshareLogits, preparedModel, randomInput } from './export-fixtures.js';

const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');

test('a training checkpoint exports with its classes and normalisation, and the same outputs', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kshare-ckpt-export-'));
  const name = 'se_resnet_d_2_full_shared';
  const src = preparedModel(name, 6, { headScale: 3 });
  const classes = ['cat', 'dog', 'bird', 'fish', 'frog', 'horse', 'ship', 'truck', 'plane', 'car'];
  const opt = new SGD(src.model.parameters(), { lr: 0.1, momentum: 0.9 });
  const recipe = loadRecipe('seresnet');
  const rng = t.getRngState();
  const gen = () => t.zeros([16], { dtype: 'uint8' });
  const rngSnap = { globalCpu: rng.cpu, globalCuda: null, shuffle: gen(), params: gen(), noise: gen() };
  try {
    const ckpt = path.join(dir, 'checkpoint.safetensors');
    saveCheckpoint(ckpt, {
      model: src.model,
      optimizer: opt,
      rng: rngSnap,
      scalerState: null,
      meta: {
        modelName: name,
        modelConfig: null,
        classes,
        dataset: 'test',
        datasetSpec: null,
        recipe,
        seed: 6,
        epoch: 1,
        stepInEpoch: 0,
        globalStep: 10,
        itersPerEpoch: 10,
        partial: null,
        bestAcc: 0.5,
        history: [],
        reason: 'epoch',
      },
    });
    const out = path.join(dir, 'model.onnx');
    const r = spawnSync(process.execPath, [CLI, 'export', '--checkpoint', ckpt, '--out', out], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const bytes = readFileSync(out);
    const proto = decodeModel(bytes);
    const info = infoFromModel(proto, out);
    assert.equal(info.model, name);
    assert.deepEqual(info.classes, classes);
    assert.equal(info.source, 'checkpoint checkpoint.safetensors: 1 epoch(s) on test, best test accuracy 50.00%');
    assert.equal(info.params, 1_223_002);
    assert.deepEqual(info.input.mean, [0.4914, 0.4822, 0.4465]);
    assert.deepEqual(info.input.std, [0.2023, 0.1994, 0.201]);
    assert.equal(sharedConvWeights(proto).length, 3);

    const input = randomInput(2, 21);
    const ref = kshareLogits(src.model, input, [2, 3, 32, 32]);
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const got = (await session.run({ input: new ort.Tensor('float32', input, [2, 3, 32, 32]) })).logits!.data as Float32Array;
    await session.release();
    const err = maxRelError(got, ref);
    // Measured 3.4e-7; 2e-6 leaves room for rounding but not for a BatchNorm export slip (4e-5).
    assert.ok(err < 2e-6, `exported checkpoint vs the model it was saved from: ${err}`);
  } finally {
    t.dispose([rngSnap.globalCpu, rngSnap.shuffle, rngSnap.params, rngSnap.noise]);
    src.model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});
