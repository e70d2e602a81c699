// Exact resume on CPU: 2 epochs straight, 1 epoch + resume + 1 epoch, and an interruption in
// the middle of epoch 2 + resume all end with bit-identical weights, optimiser state and logs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as t from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { loadSafetensors } from '../src/models/safetensors.js';
import { train } from '../src/train/trainer.js';
import { readCheckpoint } from '../src/train/checkpoint.js';
import { applyOverrides, parseOverride } from '../src/train/recipe.js';
import { smallRun } from './helpers/small-run.js';

t.setNumThreads(1);
const { recipe, root, options, interruptAt } = smallRun('resume', 11);

/** Every model and optimiser tensor of a checkpoint, as raw bytes by name. */
function stateBytes(file: string): Map<string, Buffer> {
  const { tensors } = loadSafetensors(file);
  const out = new Map<string, Buffer>();
  for (const [k, v] of tensors) {
    if (k.startsWith('model/') || k.startsWith('optimizer/')) {
      const d = v.dataSync();
      out.set(k, Buffer.from(d.buffer, d.byteOffset, d.byteLength));
    }
    v.dispose();
  }
  return out;
}

function assertSameState(a: string, b: string): void {
  const sa = stateBytes(a),
    sb = stateBytes(b);
  assert.deepEqual([...sa.keys()].sort(), [...sb.keys()].sort());
  assert.ok(sa.size > 10, `expected model and optimizer tensors, got ${sa.size}`);
  for (const [k, v] of sa) assert.ok(v.equals(sb.get(k)!), `tensor ${k} differs`);
}

function logOf(out: string): unknown[] {
  // seconds and img/s are wall-clock measurements; everything else must match exactly.
  return readFileSync(path.join(root, out, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => {
      const { seconds: _s, imgPerSec: _i, ...rest } = JSON.parse(l) as Record<string, unknown>;
      return rest;
    });
}

test('2 epochs straight and 1 epoch + resume + 1 epoch give bit-identical weights', async () => {
  const live = t.liveTensors();
  const straight = await train(options('straight'));
  assert.equal(straight.status, 'completed');
  assert.equal(straight.epochsDone, 2);

  const first = await train(options('split', { stopAfterEpochs: 1 }));
  assert.equal(first.status, 'stopped');
  assert.equal(first.epochsDone, 1);
  const ckpt = path.join(root, 'split', 'checkpoint.safetensors');
  const mid = readCheckpoint(ckpt);
  assert.equal(mid.meta.epoch, 1);
  assert.equal(mid.meta.stepInEpoch, 0);
  mid.dispose();
  const second = await train(options('split', { resume: ckpt }));
  assert.equal(second.status, 'completed');
  assert.equal(second.epochsDone, 2);

  assertSameState(path.join(root, 'straight', 'checkpoint.safetensors'), ckpt);
  assert.deepEqual(logOf('split'), logOf('straight'));
  assert.equal(second.bestAcc, straight.bestAcc);
  assert.equal(t.liveTensors(), live, 'training leaked tensors');
});

test('an interruption in the middle of an epoch resumes exactly', async () => {
  const cut = await interruptAt('interrupted', 1, 2);
  assert.equal(cut.status, 'interrupted');
  assert.equal(cut.epochsDone, 1);
  const ckpt = path.join(root, 'interrupted', 'checkpoint.safetensors');
  const mid = readCheckpoint(ckpt);
  assert.equal(mid.meta.reason, 'interrupt');
  assert.equal(mid.meta.epoch, 1);
  assert.equal(mid.meta.stepInEpoch, 3);
  mid.dispose();
  const done = await train(options('interrupted', { resume: ckpt }));
  assert.equal(done.status, 'completed');
  assertSameState(path.join(root, 'straight', 'checkpoint.safetensors'), ckpt);
  assert.deepEqual(logOf('interrupted'), logOf('straight'));
});

test('a different seed gives different weights (the comparison above can fail)', async () => {
  await train(options('other-seed', { recipe: applyOverrides(recipe, [parseOverride('seed=12')]) }));
  assert.throws(
    () => assertSameState(path.join(root, 'straight', 'checkpoint.safetensors'), path.join(root, 'other-seed', 'checkpoint.safetensors')),
    /differs/,
  );
});

test('resuming with another model or batch size is refused with a clear message', async () => {
  const ckpt = path.join(root, 'straight', 'checkpoint.safetensors');
  await assert.rejects(
    train(options('wrong-model', { resume: ckpt, modelName: 'convmixer_16_2_k3_p4', buildModel: () => createModel('convmixer_16_2_k3_p4', { classes: 10 }) })),
    /trained as model 'convmixer_16_2_k3_p4_shared'/,
  );
  await assert.rejects(train(options('wrong-batch', { resume: ckpt, recipe: applyOverrides(recipe, [parseOverride('batchSize=16')]) })), /steps per epoch/);
  await assert.rejects(train(options('missing', { resume: path.join(root, 'nope.safetensors') })), /does not exist/);
});
