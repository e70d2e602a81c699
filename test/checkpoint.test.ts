// Checkpoint files: round trip of model (shared kernels once), optimiser and generator states;
// atomic replacement; clear errors for files that are not checkpoints or are damaged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as t from '../src/tensor/index.js';
import { createModel, saveWeights, readSafetensorsHeader } from '../src/models/index.js';
import { buildOptimizer } from '../src/train/build-optimizer.js';
import { saveCheckpoint, readCheckpoint, restoreModel, restoreOptimizer, type CheckpointParts } from '../src/train/checkpoint.js';
import { loadRecipe } from '../src/train/recipe.js';
import { scratchDir } from './helpers/scratch-dir.js';

t.setNumThreads(1);
const dir = scratchDir('ckpt');
const recipe = loadRecipe('convmixer');
const MODEL = 'convmixer_16_2_k3_p4_shared';

function trainedParts(seed: number) {
  t.manualSeed(seed);
  const model = createModel(MODEL, { classes: 10 });
  const opt = buildOptimizer(model, recipe.optimizer);
  t.tidy(() => {
    const loss = t.crossEntropy(model.forward(t.randn([4, 3, 32, 32])), t.tensor([1, 2, 3, 4], [4], { dtype: 'int64' }));
    loss.backward();
    opt.step();
    opt.zeroGrad();
  });
  // The three generators a run keeps, each in its own state (other seeds, other draws).
  const gens = { shuffle: new t.Generator(seed), params: new t.Generator(seed + 10), noise: new t.Generator(seed + 20) };
  Object.values(gens).forEach((g, i) => t.tidy(() => t.rand([5 + i], { generator: g })));
  return { model, opt, gens };
}

const SLOTS = ['shuffle', 'params', 'noise'] as const;

function parts({ model, opt, gens }: ReturnType<typeof trainedParts>): CheckpointParts {
  const global = t.getRngState();
  return {
    model,
    optimizer: opt,
    scalerState: null,
    rng: { globalCpu: global.cpu, globalCuda: null, shuffle: gens.shuffle.getState(), params: gens.params.getState(), noise: gens.noise.getState() },
    meta: {
      modelName: MODEL,
      modelConfig: null,
      classes: Array.from({ length: 10 }, (_, i) => `class ${i}`),
      dataset: 'test data',
      datasetSpec: null,
      recipe,
      seed: 3,
      epoch: 2,
      stepInEpoch: 0,
      globalStep: 10,
      itersPerEpoch: 5,
      partial: null,
      bestAcc: 0.5,
      history: [],
      reason: 'epoch',
    },
  };
}

/** Saves `a` as `name` in the test folder; returns the file and the parts it was saved from. */
function saveParts(a: ReturnType<typeof trainedParts>, name: string): { file: string; p: CheckpointParts } {
  const file = path.join(dir, name);
  const p = parts(a);
  saveCheckpoint(file, p);
  return { file, p };
}

test('a checkpoint restores model, optimiser and generator state exactly; shared kernels are stored once', () => {
  const a = trainedParts(1);
  const { file, p } = saveParts(a, 'a.safetensors');
  const header = readSafetensorsHeader(file);
  const modelKeys = [...header.entries.keys()].filter((k) => k.startsWith('model/'));
  const unique = new Set(a.model.stateDict().values()).size;
  assert.equal(modelKeys.length, unique, 'each distinct tensor once');
  assert.ok(a.model.stateDict().size > unique, 'the model does share tensors');

  const b = trainedParts(2);
  const ck = readCheckpoint(file);
  restoreModel(b.model, ck);
  restoreOptimizer(b.opt, ck);
  // Each slot restores its own generator: the saved states differ, so a slot returned for
  // another one would continue another stream.
  const saved = SLOTS.map((k) => Array.from(p.rng[k].toArray()));
  assert.equal(new Set(saved.map((st) => st.join())).size, 3, 'three different generator states were saved');
  SLOTS.forEach((k, i) => {
    assert.deepEqual(Array.from(ck.rng[k].toArray()), saved[i], `the '${k}' generator state`);
    b.gens[k].setState(ck.rng[k]);
  });
  assert.deepEqual(Array.from(ck.rng.globalCpu.toArray()), Array.from(p.rng.globalCpu.toArray()), 'the global generator state');
  assert.equal(ck.meta.epoch, 2);
  assert.equal(ck.meta.globalStep, 10);
  assert.equal(ck.meta.recipe.name, 'convmixer');
  ck.dispose();
  for (const [k, v] of a.model.stateDict()) {
    const w = b.model.stateDict().get(k)!;
    assert.deepEqual(Array.from(w.toFloat32Array()), Array.from(v.toFloat32Array()), k);
  }
  // Shared kernels are still one tensor after loading.
  const sd = b.model.stateDict();
  assert.ok(sd.get('3.0.fn.0.weight')!.isSameTensor(sd.get('4.0.fn.0.weight')!));
  const sa = a.opt.stateDict(),
    sb = b.opt.stateDict();
  assert.equal(sb.step, sa.step);
  sa.tensors.forEach((rec, i) => {
    for (const [k, v] of Object.entries(rec))
      assert.deepEqual(Array.from(sb.tensors[i]![k]!.toFloat32Array()), Array.from(v.toFloat32Array()), `optimizer ${i} ${k}`);
  });
  for (const s of [sa, sb]) for (const rec of s.tensors) t.dispose(rec);
  const next = (g: t.Generator) => t.tidy(() => t.rand([3], { generator: g }).toArray());
  for (const k of SLOTS) assert.deepEqual(next(b.gens[k]), next(a.gens[k]), `the '${k}' generator continues identically`);
  t.dispose([p.rng.globalCpu, p.rng.shuffle, p.rng.params, p.rng.noise]);
});

test('writing is atomic: a failed save leaves the previous file intact and no temporary files', () => {
  const a = trainedParts(3);
  const { file, p } = saveParts(a, 'atomic.safetensors');
  const before = readFileSync(file);
  p.rng.noise.dispose(); // saving now fails half-way through collecting tensors
  assert.throws(() => saveCheckpoint(file, p), /disposed/);
  assert.ok(readFileSync(file).equals(before));
  assert.deepEqual(
    readdirSync(dir).filter((f) => f.includes('atomic')),
    ['atomic.safetensors'],
  );
});

test('files that are not checkpoints, or are damaged, are refused with a clear message', () => {
  const a = trainedParts(4);
  const weights = path.join(dir, 'weights.safetensors');
  saveWeights(a.model, weights);
  assert.throws(() => readCheckpoint(weights), /not a kshare training checkpoint/);
  const { file } = saveParts(a, 'good.safetensors');
  const bytes = readFileSync(file);
  const cut = path.join(dir, 'truncated.safetensors');
  writeFileSync(cut, bytes.subarray(0, bytes.length - 100));
  assert.throws(() => readCheckpoint(cut), /truncated/);
  assert.throws(() => readCheckpoint(path.join(dir, 'nope.safetensors')), /does not exist/);
  const other = createModel('convmixer_16_3_k3_p4_shared', { classes: 10 });
  const ck = readCheckpoint(file);
  assert.throws(() => restoreModel(other, ck), /does not fit model 'convmixer_16_2_k3_p4_shared'/);
  ck.dispose();
  other.dispose();
});
