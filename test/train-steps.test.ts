// Intra-epoch logging: steps.jsonl gets one line per logging interval with the interval's
// metrics, a training step reads nothing back from the device (per-step loss and hits are read
// once per interval), a killed and resumed run's steps.jsonl has no duplicate or lost lines,
// and runs without a terminal get plain progress lines.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, appendFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import * as t from '../src/tensor/index.js';
import { native, type Handle } from '../src/tensor/native.js';
import { train } from '../src/train/trainer.js';
import { applyOverrides, parseOverride } from '../src/train/recipe.js';
import type { StepRecord } from '../src/train/report.js';
import { readCheckpoint, readCheckpointMeta } from '../src/train/checkpoint.js';
import { smallRun } from './helpers/small-run.js';

t.setNumThreads(1);
const { recipe, root, options, interruptAt } = smallRun('steps', 3, { logEvery: { steps: 2 } });

function stepsOf(out: string): StepRecord[] {
  return readFileSync(path.join(root, out, 'steps.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as StepRecord);
}

test('steps.jsonl: one line per interval whose metrics add up to the epoch log', async () => {
  await train(options('straight'));
  const steps = stepsOf('straight');
  assert.deepEqual(
    steps.map((r) => [r.epoch, r.step]),
    [
      [1, 2],
      [1, 4],
      [1, 6],
      [2, 2],
      [2, 4],
      [2, 6],
    ],
  );
  for (const r of steps) {
    assert.deepEqual(Object.keys(r), ['epoch', 'step', 'steps', 'progress', 'trainLoss', 'trainAcc', 'lr', 'imgPerSec', 'elapsedS']);
    assert.equal(r.steps, 6);
    assert.ok(Math.abs(r.progress - (r.epoch - 1 + r.step / 6)) < 1e-12);
    assert.ok(r.trainAcc >= 0 && r.trainAcc <= 1);
    assert.ok(r.imgPerSec > 0 && r.elapsedS > 0 && r.lr > 0);
  }
  // Every interval holds 2 batches of 32: the epoch's loss and accuracy are the intervals' means.
  const log = readFileSync(path.join(root, 'straight', 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { trainLoss: number; trainAcc: number; lr: number });
  for (const e of [1, 2]) {
    const of = steps.filter((r) => r.epoch === e);
    const mean = (k: 'trainLoss' | 'trainAcc') => of.reduce((a, r) => a + r[k], 0) / of.length;
    assert.ok(Math.abs(mean('trainLoss') - log[e - 1]!.trainLoss) < 1e-9, `epoch ${e} loss`);
    assert.ok(Math.abs(mean('trainAcc') - log[e - 1]!.trainAcc) < 1e-9, `epoch ${e} accuracy`);
    assert.equal(of[of.length - 1]!.lr, log[e - 1]!.lr);
  }
});

test('a training step reads no scalar back from the device; the interval is read at once', async () => {
  // The loop used to call item() twice per step (loss and hits): count scalar reads per step.
  const reads: number[] = [];
  let count = 0;
  const orig = { toBuffer: native.toBuffer, dataView: native.dataView };
  const scalar = (h: Handle) => native.meta(h)[2].length === 0;
  native.toBuffer = (h) => {
    if (scalar(h)) count++;
    return orig.toBuffer(h);
  };
  native.dataView = (h) => {
    if (scalar(h)) count++;
    return orig.dataView(h);
  };
  try {
    let last = 0;
    await train(
      options('reads', {
        logEvery: { steps: 3 },
        onStep: () => {
          reads.push(count - last);
          last = count;
        },
      }),
    );
  } finally {
    Object.assign(native, orig);
  }
  assert.equal(reads.length, 12);
  // Between epochs come evaluation and the checkpoint; within an epoch no step reads a scalar.
  const within = reads.filter((_, i) => i % 6 !== 0);
  assert.deepEqual(within, new Array(10).fill(0), `scalar reads per step: ${reads.join(',')}`);
});

test('an interrupted run, killed again after writing more lines, resumes with no duplicate or lost lines', async () => {
  const cut = await interruptAt('cut', 1, 2);
  assert.equal(cut.status, 'interrupted');
  assert.deepEqual(cut.interruptedAt, { epoch: 2, step: 3, steps: 6 });
  // The interruption writes the partial interval (steps 3 of epoch 2) before its checkpoint.
  assert.deepEqual(
    stepsOf('cut').map((r) => [r.epoch, r.step]),
    [
      [1, 2],
      [1, 4],
      [1, 6],
      [2, 2],
      [2, 3],
    ],
  );
  // Where the run stands, read without loading a tensor.
  const ckpt = path.join(root, 'cut', 'checkpoint.safetensors');
  const live = t.liveTensors();
  const { meta } = readCheckpointMeta(ckpt);
  assert.equal(t.liveTensors(), live);
  const full = readCheckpoint(ckpt);
  assert.deepEqual(meta, full.meta);
  full.dispose();
  assert.equal(meta.stepInEpoch, 3);
  // A later process that was killed after the checkpoint left lines past it, the last one cut short.
  const file = path.join(root, 'cut', 'steps.jsonl');
  appendFileSync(file, JSON.stringify({ ...stepsOf('cut')[4], step: 4, progress: 1 + 4 / 6 }) + '\n{"epoch": 2, "st');
  await train(options('cut', { resume: path.join(root, 'cut', 'checkpoint.safetensors') }));
  const steps = stepsOf('cut');
  assert.deepEqual(
    steps.map((r) => [r.epoch, r.step]),
    [
      [1, 2],
      [1, 4],
      [1, 6],
      [2, 2],
      [2, 3],
      [2, 4],
      [2, 6],
    ],
  );
  // The resumed part continues the run's clock.
  for (let i = 1; i < steps.length; i++) assert.ok(steps[i]!.elapsedS > steps[i - 1]!.elapsedS, `elapsedS grows at line ${i + 1}`);
  // The intervals before the interruption are the straight run's.
  const straight = stepsOf('straight');
  for (let i = 0; i < 4; i++) {
    assert.equal(steps[i]!.trainLoss, straight[i]!.trainLoss);
    assert.equal(steps[i]!.lr, straight[i]!.lr);
  }
});

test('without a terminal: a plain progress line per interval and a line before evaluation', async () => {
  const lines: string[] = [];
  await train(options('lines', { progressLines: true, log: (l) => lines.push(l), recipe: applyOverrides(recipe, [parseOverride('epochs=1')]) }));
  const progress = lines.filter((l) => /^epoch 1\/1 step \d\/6: /.test(l));
  assert.equal(progress.length, 3, lines.join('\n'));
  assert.match(progress[0]!, /^epoch 1\/1 step 2\/6: loss \d+\.\d{4}, \d+ img\/s, epoch ETA \d+s$/);
  assert.ok(lines.some((l) => l === 'evaluating on 60 test images ...'));
  const quiet: string[] = [];
  await train(options('quiet', { log: (l) => quiet.push(l), recipe: applyOverrides(recipe, [parseOverride('epochs=1')]) }));
  assert.ok(!quiet.some((l) => /step \d\/6/.test(l)), 'no progress lines unless asked');
});

test('hooks: a non-writing rank leaves no files, a shard sets the steps per epoch, after-backward sees every step', async () => {
  const out = path.join(root, 'rank1');
  let calls = 0;
  const s = await train(
    options('rank1', {
      hooks: {
        writes: false,
        shard: { size: (n) => Math.floor(n / 2), select: (order) => t.slice(order, 0, 0, Math.floor(order.dim(0) / 2)) },
        afterBackward: (params, at) => {
          assert.ok(params.length > 0 && params.every((p) => p.grad !== null), 'gradients are there');
          assert.equal(at.globalStep, calls);
          calls++;
        },
      },
    }),
  );
  assert.equal(s.status, 'completed');
  assert.equal(calls, 2 * 3, '100 of 200 images per epoch: 3 steps of 32');
  assert.ok(!existsSync(out), 'nothing written');
});
