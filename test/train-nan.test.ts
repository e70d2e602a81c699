// A diverging run stops at the first NaN/inf loss with a message that says where and what to
// do, and leaves the last good checkpoint and log exactly as they were.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as t from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { train, NonFiniteLossError } from '../src/train/trainer.js';
import { loadRecipe, applyOverrides, parseOverride } from '../src/train/recipe.js';
import { syntheticDataset } from './helpers/train-fixtures.js';
import { scratchDir } from './helpers/scratch-dir.js';

t.setNumThreads(1);
const root = scratchDir('nan');

test('a NaN/inf loss stops the run with a clear message and the last good checkpoint intact', async () => {
  // SGD recipe whose learning rate jumps by 1e36 at epoch 2: epoch 1 trains normally, then
  // the weights overflow and the loss stops being finite.
  const recipe = applyOverrides(
    loadRecipe('seresnet'),
    ['epochs=3', 'batchSize=32', 'evalBatchSize=64', 'seed=4', 'schedule.milestones=[1]', 'schedule.gamma=1e36'].map(parseOverride),
  );
  const out = path.join(root, 'run');
  const base = {
    recipe,
    buildModel: () => createModel('convmixer_16_2_k3_p4', { classes: 10 }),
    modelName: 'convmixer_16_2_k3_p4',
    train: syntheticDataset({ count: 160 }),
    test: syntheticDataset({ count: 40, seed: 2, split: 'test' }),
    outDir: out,
  };
  const live = t.liveTensors();
  const steps: number[] = [];
  const epochs: string[] = [];
  let checkpointAfterEpoch1: Buffer | null = null;
  let err: unknown = null;
  try {
    await train({
      ...base,
      log: (l) => epochs.push(l),
      onStep: (s) => {
        steps.push(s.loss);
        // First step of epoch 2: the epoch-1 checkpoint exists; remember its bytes.
        if (s.epoch === 1 && s.step === 0) checkpointAfterEpoch1 = readFileSync(path.join(out, 'checkpoint.safetensors'));
      },
    });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof NonFiniteLossError, `expected a NonFiniteLossError, got ${String(err)}`);
  const msg = (err as Error).message;
  assert.match(msg, /the loss is (NaN|Infinity|-Infinity) at epoch 2, step \d+\/5/);
  assert.match(msg, /last good checkpoint \(end of epoch 1/);
  assert.ok(steps.slice(0, 5).every(Number.isFinite), 'epoch 1 losses are finite');
  assert.ok(checkpointAfterEpoch1, 'epoch 1 wrote a checkpoint');
  assert.ok(readFileSync(path.join(out, 'checkpoint.safetensors')).equals(checkpointAfterEpoch1!), 'the checkpoint was not touched after epoch 1');
  const log = readFileSync(path.join(out, 'log.jsonl'), 'utf8').trim().split('\n');
  assert.equal(log.length, 1);
  assert.equal(JSON.parse(log[0]!).epoch, 1);
  assert.equal(t.liveTensors(), live, 'the failed run released its tensors');
});
