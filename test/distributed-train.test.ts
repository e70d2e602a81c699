// `kshare train` data-parallel end to end (2 workers, 1 thread each, loopback): ConvMixer learns,
// only rank 0 writes, stop + resume equals an uninterrupted run, a killed worker ends the job in
// bounded time naming it (no orphans), Ctrl-C checkpoints, resume with another world size is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeImageFolder } from './helpers/train-fixtures.js';
import { scratchDir } from './helpers/scratch-dir.js';
import { skipWithoutGloo } from './helpers/ranks.js';
import { readCheckpoint } from '../src/train/checkpoint.js';

const noGloo = skipWithoutGloo();

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.resolve(here, '../src/cli/main.js');
const root = scratchDir('ddp');
const data = writeImageFolder(path.join(root, 'shapes'));
const common = [
  'train',
  '--recipe',
  'convmixer',
  '--model',
  'convmixer_16_2_k3_p4_shared',
  '--dataset',
  data,
  '--threads',
  '1',
  '--no-progress',
  '--set',
  'batchSize=10',
  '--set',
  'evalBatchSize=25',
  '--seed',
  '1',
  '--dist-timeout',
  '10',
];

function kshare(args: string[]): { code: number; out: string; err: string } {
  const env: NodeJS.ProcessEnv = { ...process.env, KSHARE_DEBUG: '' };
  for (const v of ['WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT']) delete env[v];
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env, timeout: 120_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

const history = (dir: string) =>
  readFileSync(path.join(dir, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => {
      const { seconds: _s, imgPerSec: _i, ...rest } = JSON.parse(l) as Record<string, unknown>;
      return rest;
    });

test('--nproc 2: ConvMixer learns, rank 0 writes, stop + resume equals an uninterrupted run', { skip: noGloo }, () => {
  const a = path.join(root, 'a'),
    b = path.join(root, 'b');
  const first = kshare([...common, '--nproc', '2', '--epochs', '2', '--out', a, '--stop-after-epochs', '1']);
  assert.equal(first.code, 0, first.err);
  assert.match(first.out, /batch size 10 per process, global batch 20/);
  assert.match(first.out, /10 steps\/epoch/, '200 images / global batch 20');
  assert.deepEqual(JSON.parse(readFileSync(path.join(a, 'distributed.json'), 'utf8')), { worldSize: 2, batchPerProcess: 10, globalBatch: 20 });
  // Another world size cannot continue it.
  const wrong = kshare([...common, '--epochs', '2', '--out', a, '--resume']);
  assert.equal(wrong.code, 1);
  assert.match(wrong.err, /was trained by 2 processes, this run has 1; resume with the same number \(--nproc 2/);
  const second = kshare([...common, '--nproc', '2', '--epochs', '2', '--out', a, '--resume']);
  assert.equal(second.code, 0, second.err);
  const whole = kshare([...common, '--nproc', '2', '--epochs', '2', '--out', b]);
  assert.equal(whole.code, 0, whole.err);
  assert.match(whole.out, /MB of gradients all-reduced per step in 1 bucket/);
  const h = history(b);
  assert.deepEqual(history(a), h, 'resumed run equals the uninterrupted one');
  assert.ok((h[1]!.trainLoss as number) < (h[0]!.trainLoss as number), `loss falls: ${h.map((r) => r.trainLoss)}`);
  assert.ok((h[1]!.testAcc as number) > 0.5, `test accuracy ${h[1]!.testAcc} well above chance (0.25)`);
  assert.equal(readFileSync(path.join(b, 'log.jsonl'), 'utf8').trim().split('\n').length, 2, 'one writer: one line per epoch');
});

/** Starts a long --nproc 2 run; resolves once rank 0 has finished an epoch. */
function startLong(out: string): Promise<{ child: ReturnType<typeof spawn>; output: () => string; workers: number[] }> {
  const env = { ...process.env };
  for (const v of ['WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT']) delete env[v];
  const child = spawn(process.execPath, [CLI, ...common, '--nproc', '2', '--epochs', '200', '--out', out, '--dist-timeout', '5'], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  child.stdout!.on('data', (d) => {
    text += d;
  });
  child.stderr!.on('data', (d) => {
    text += d;
  });
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (/epoch 1\/200/.test(text)) {
        clearInterval(timer);
        const workers = execFileSync('ps', ['-o', 'pid=', '--ppid', String(child.pid)], { encoding: 'utf8' })
          .trim()
          .split(/\s+/)
          .map(Number);
        resolve({ child, output: () => text, workers });
      }
    }, 100);
    child.on('close', () => {
      clearInterval(timer);
      reject(new Error(`run ended early: ${text}`));
    });
  });
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
const closed = (c: ReturnType<typeof spawn>) => new Promise<number | null>((r) => c.on('close', (code) => r(code)));

test('a killed worker ends the job within the timeout, naming it; no orphans; the last checkpoint is intact', { skip: noGloo }, async () => {
  const out = path.join(root, 'killed');
  const run = await startLong(out);
  assert.equal(run.workers.length, 2);
  const start = Date.now();
  const done = closed(run.child);
  process.kill(run.workers[1]!, 'SIGKILL');
  const code = await done;
  const seconds = (Date.now() - start) / 1000;
  assert.equal(code, 1);
  assert.ok(seconds < 15, `ended in ${seconds} s`);
  assert.match(run.output(), /worker rank 1 was killed by SIGKILL/);
  assert.match(run.output(), /rank 1 stopped responding/);
  assert.ok(!run.workers.some(alive), 'no worker left behind');
  // The checkpoint rank 0 wrote at the end of an epoch is intact (resuming one is tested above).
  const ck = readCheckpoint(path.join(out, 'checkpoint.safetensors'));
  try {
    assert.ok(ck.meta.epoch >= 1 && ck.meta.stepInEpoch === 0, `epoch checkpoint (epoch ${ck.meta.epoch}, step ${ck.meta.stepInEpoch})`);
  } finally {
    ck.dispose();
  }
});

test('Ctrl-C on the launcher: every worker stops at the same step, rank 0 checkpoints, exit 130', { skip: noGloo }, async () => {
  const out = path.join(root, 'ctrlc');
  const run = await startLong(out);
  const done = closed(run.child);
  run.child.kill('SIGINT');
  assert.equal(await done, 130, run.output());
  // Mid-epoch, rank 0 checkpoints that step; a Ctrl-C that lands between two epochs (likelier
  // now that an epoch of this tiny run takes ~0.1 s) keeps the finished epoch's checkpoint.
  assert.match(run.output(), /interrupted in epoch \d+ at step \d+\/10: checkpoint written|interrupted before epoch \d+: the checkpoint of epoch \d+ is in/);
  assert.match(run.output(), /resume with: kshare train --resume --out \S+ with the same world size \(--nproc 2/);
  assert.ok(existsSync(path.join(out, 'checkpoint.safetensors')), 'rank 0 wrote a checkpoint');
  assert.ok(!run.workers.some(alive), 'no worker left behind');
});
