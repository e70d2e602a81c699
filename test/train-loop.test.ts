// The training loop learns (loss falls, accuracy beats chance), keeps a flat tensor count over
// many steps, follows the schedule step by step, and writes its log and summary.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as t from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { train, countParameters } from '../src/train/trainer.js';
import { learningRate } from '../src/train/schedule.js';
import { loadRecipe, applyOverrides, parseOverride } from '../src/train/recipe.js';
import { syntheticDataset } from './helpers/train-fixtures.js';
import { scratchDir } from './helpers/scratch-dir.js';

t.setNumThreads(1);
const root = scratchDir('loop');

test('SGD multistep recipe: learns, flat tensor count, schedule applied per step', async () => {
  const recipe = applyOverrides(
    loadRecipe('seresnet'),
    ['epochs=4', 'batchSize=25', 'evalBatchSize=50', 'seed=2', 'optimizer.lr=0.05', 'schedule.milestones=[2,3]'].map(parseOverride),
  );
  const live: number[] = [];
  const losses: number[][] = [[], [], [], []];
  const before = t.liveTensors();
  const s = await train({
    recipe,
    buildModel: () => createModel('convmixer_16_2_k3_p4_shared', { classes: 10 }),
    modelName: 'convmixer_16_2_k3_p4_shared',
    train: syntheticDataset({ count: 300 }),
    test: syntheticDataset({ count: 100, seed: 3, split: 'test' }),
    outDir: path.join(root, 'sgd'),
    log: () => {},
    onStep: (st) => {
      live.push(t.liveTensors());
      losses[st.epoch]!.push(st.loss);
    },
  });
  assert.equal(t.liveTensors(), before, 'everything released at the end');
  assert.equal(live.length, 4 * 12);
  // After the first step (optimizer state appears), the count stays exactly flat.
  assert.ok(
    live.slice(1).every((n) => n === live[1]),
    `live tensors per step: ${live.join(',')}`,
  );
  const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
  assert.ok(mean(losses[3]!) < mean(losses[0]!) * 0.8, `loss fell: ${losses.map(mean)}`);
  assert.ok(s.bestAcc > 0.3, `best accuracy ${s.bestAcc} well above chance (0.1)`);
  const log = readFileSync(path.join(root, 'sgd', 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  const ctx = { baseLr: 0.05, epochs: 4, itersPerEpoch: 12 };
  assert.deepEqual(
    log.map((l) => l.lr),
    [0, 1, 2, 3].map((e) => learningRate(recipe.schedule, ctx, e * 12 + 11)),
  );
  [0.05, 0.05, 0.005, 0.0005].forEach((v, i) => assert.ok(Math.abs(log[i].lr - v) < 1e-12, `epoch ${i + 1} lr ${log[i].lr}`));
  const summary = JSON.parse(readFileSync(path.join(root, 'sgd', 'summary.json'), 'utf8'));
  assert.equal(summary.status, 'completed');
  assert.equal(summary.epochsDone, 4);
  assert.equal(summary.dataset, 'synthetic gradients');
  assert.equal(summary.bestAcc, Math.max(...log.map((l) => l.testAcc)));
});

test('parameter counts: a shared kernel counts once as trainable and once per layer unshared', () => {
  const shared = createModel('convmixer_16_3_k3_p4_shared', { classes: 10 });
  const plain = createModel('convmixer_16_3_k3_p4', { classes: 10 });
  const a = countParameters(shared),
    b = countParameters(plain);
  assert.equal(a.unshared, b.trainable);
  assert.equal(b.unshared, b.trainable);
  // Two of three blocks reuse the depthwise (16·9 + 16) and pointwise (16·16 + 16) tensors.
  assert.equal(b.trainable - a.trainable, 2 * (16 * 9 + 16 + 16 * 16 + 16));
  shared.dispose();
  plain.dispose();
});
