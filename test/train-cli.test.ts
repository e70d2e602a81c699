// The command line end to end on a small PNG image folder: train (with overrides), stop and
// resume, Ctrl-C, eval, report, and clear one-line errors for bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeImageFolder } from './helpers/train-fixtures.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.resolve(here, '../src/cli/main.js');
const root = mkdtempSync(path.join(tmpdir(), 'kshare-cli-'));
process.on('exit', () => rmSync(root, { recursive: true, force: true }));
const MODEL = 'convmixer_16_2_k3_p4_shared';

const data = writeImageFolder(path.join(root, 'shapes'));

function kshare(args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, KSHARE_DEBUG: '' } });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

const common = ['--model', MODEL, '--dataset', data, '--threads', '1', '--no-progress', '--set', 'batchSize=20', '--set', 'evalBatchSize=25'];

test('train, stop after an epoch, resume with the same flags, eval and report', () => {
  const out = path.join(root, 'run');
  const first = kshare(['train', '--recipe', 'convmixer', ...common, '--out', out, '--epochs', '3', '--seed', '1', '--stop-after-epochs', '1']);
  assert.equal(first.code, 0, first.err);
  assert.match(first.out, /training convmixer_16_2_k3_p4_shared on shapes \(200 train \/ 50 test images, 4 classes\)/);
  assert.match(first.out, /stopped after epoch 1\/3/);
  const again = kshare(['train', '--recipe', 'convmixer', ...common, '--out', out, '--epochs', '3', '--seed', '1', '--resume']);
  assert.equal(again.code, 0, again.err);
  assert.match(again.out, /resuming convmixer_16_2_k3_p4_shared from .*: epoch 2\/3/);
  assert.match(again.out, /completed: .* after 3\/3 epochs/);
  const log = readFileSync(path.join(out, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, number | string>);
  assert.deepEqual(
    log.map((l) => l.epoch),
    [1, 2, 3],
  );
  for (const l of log) {
    for (const k of ['lr', 'trainLoss', 'trainAcc', 'testAcc', 'bestAcc', 'seconds', 'imgPerSec']) assert.equal(typeof l[k], 'number', k);
    assert.equal(l.dataset, 'shapes');
  }
  // steps.jsonl: one line per logging interval (10 steps per epoch: one per step), in order, no duplicates after the resume.
  const steps = readFileSync(path.join(out, 'steps.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, number>);
  assert.equal(steps.length, 30);
  assert.deepEqual(Object.keys(steps[0]!), ['epoch', 'step', 'steps', 'progress', 'trainLoss', 'trainAcc', 'lr', 'imgPerSec', 'elapsedS']);
  steps.forEach((l, i) => {
    assert.equal(l.epoch, Math.floor(i / 10) + 1);
    assert.equal(l.step, (i % 10) + 1);
    assert.equal(l.steps, 10);
    assert.ok(Math.abs(l.progress! - (i + 1) / 10) < 1e-12);
    assert.ok(l.trainAcc! >= 0 && l.trainAcc! <= 1 && Number.isFinite(l.trainLoss) && l.lr! > 0 && l.imgPerSec! > 0);
    if (i) assert.ok(l.elapsedS! > steps[i - 1]!.elapsedS!, 'elapsed time grows across the resume');
  });
  const summary = JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8'));
  assert.equal(summary.status, 'completed');
  assert.equal(summary.bestAcc, Math.max(...log.map((l) => l.testAcc as number)));

  const ev = kshare(['eval', '--checkpoint', path.join(out, 'checkpoint.safetensors'), '--json', '--threads', '1']);
  assert.equal(ev.code, 0, ev.err);
  const r = JSON.parse(ev.out);
  assert.equal(r.count, 50);
  assert.equal(r.accuracy, log[2]!.testAcc, "eval reproduces the last epoch's test accuracy");
  assert.ok(r.unsharedParams > r.trainableParams && r.trainableParams > 0);
  const human = kshare(['eval', '--checkpoint', path.join(out, 'checkpoint.safetensors'), '--threads', '1']);
  assert.match(human.out, /on shapes test: accuracy \d+\.\d\d% \(\d+\/50\)/);
  assert.match(human.out, /parameters: [\d,]+ trainable \([\d,]+ without kernel sharing/);

  const rep = kshare(['report', out, '--out', path.join(root, 'report')]);
  assert.equal(rep.code, 0, rep.err);
  const md = readFileSync(path.join(root, 'report', 'report.md'), 'utf8');
  assert.match(md, /\| run \| convmixer_16_2_k3_p4_shared \| shapes \| convmixer \| 3\/3 \|/);
  for (const f of ['curves.svg', 'accuracy-vs-params.svg']) {
    const svg = readFileSync(path.join(root, 'report', f), 'utf8');
    assert.match(svg, /^<svg/);
    assert.ok(svg.length > 2000);
  }
});

test('Ctrl-C checkpoints mid-run and --resume finishes it', async () => {
  const out = path.join(root, 'interrupted');
  const child = spawn(process.execPath, [CLI, 'train', '--recipe', 'demo', ...common, '--out', out, '--epochs', '40'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let sent = false;
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    if (!sent && /epoch 1\/40/.test(stdout)) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1)));
  assert.equal(code, 130, `Ctrl-C exits with 130 like other Unix tools\n${stdout}`);
  assert.match(stdout, /interrupted in epoch \d+ at step \d+\/10: checkpoint written/);
  assert.match(
    stdout,
    new RegExp(`interrupted in epoch \\d+ at step \\d+/10; resume with: kshare train --resume --out ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
  );
  assert.doesNotMatch(stdout, /best test accuracy 0\.00% after 0/);
  assert.ok(existsSync(path.join(out, 'checkpoint.safetensors')));
  const s = JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8'));
  assert.equal(s.status, 'interrupted');
  // The dataset comes from the checkpoint when --dataset is not given.
  const done = kshare(['train', '--out', out, '--resume', '--epochs', String(s.epochsDone + 1), '--threads', '1', '--no-progress']);
  assert.equal(done.code, 0, done.err);
  assert.match(done.out, /completed: .* after \d+\/\d+ epochs/);
});

test('ResNet and MobileNetV2 (shared) train, export from the checkpoint and predict with ONNX Runtime', () => {
  // A narrow one-block-per-stage ResNet by config file, and MobileNetV2 x0.1 by registry name.
  const cfg = path.join(root, 'tiny-models.json');
  writeFileSync(
    cfg,
    JSON.stringify({
      name: 'resnet_tiny_shared',
      architecture: 'resnet',
      block: 'basic',
      layers: [2, 1, 1, 1],
      widths: [8, 8, 16, 16],
      stem: 'cifar',
      share: 'network',
    }),
  );
  const image = path.join(data, 'test', readdirSync(path.join(data, 'test'))[0]!);
  const png = path.join(image, readdirSync(image)[0]!);
  for (const model of ['resnet_tiny_shared', 'mobilenetv2_010_cifar_shared']) {
    const out = path.join(root, `run-${model}`);
    const tr = kshare([
      'train',
      '--recipe',
      'seresnet',
      '--config',
      cfg,
      '--model',
      model,
      '--dataset',
      data,
      '--threads',
      '1',
      '--no-progress',
      '--set',
      'batchSize=20',
      '--set',
      'evalBatchSize=25',
      '--epochs',
      '1',
      '--train-per-class',
      '10',
      '--out',
      out,
    ]);
    assert.equal(tr.code, 0, tr.err);
    assert.match(tr.out, new RegExp(`completed: ${model} on shapes`));
    const onnx = path.join(root, `${model}.onnx`);
    const ex = kshare(['export', '--checkpoint', path.join(out, 'checkpoint.safetensors'), '--out', onnx]);
    assert.equal(ex.code, 0, ex.err);
    assert.match(ex.out, /weights\s+\d+ tensors, .*; [1-9]\d* of them shared/);
    const pr = kshare(['predict', onnx, png, '--json', '--threads', '1']);
    assert.equal(pr.code, 0, pr.err);
    const row = JSON.parse(pr.out.trim().split('\n')[0]!) as { top: { class: string; probability: number }[] };
    // The classes of the folder it was trained on, probabilities summing to 1 over all four.
    assert.deepEqual(row.top.map((r) => r.class).sort(), readdirSync(path.join(data, 'train')).sort());
    assert.ok(Math.abs(row.top.reduce((a, r) => a + r.probability, 0) - 1) < 1e-5);
  }
});

test('bad input gives one clear line and exit code 1', () => {
  const cases: [string[], RegExp][] = [
    [['train', '--recipe', 'convmixer', ...common, '--out', path.join(root, 'x'), '--set', 'optimizer.momentum=0.9'], /has no field 'optimizer.momentum'/],
    [['train', '--recipe', 'convmixer', ...common, '--out', path.join(root, 'x'), '--set', 'augment.hflip=2'], /hflip must be a probability/],
    [['train', '--recipe', 'nope', ...common, '--out', path.join(root, 'x')], /unknown recipe 'nope' \(known: .*convmixer/],
    [['train', '--recipe', 'convmixer', ...common, '--out', path.join(root, 'x'), '--epochs', '0'], /--epochs must be a positive integer/],
    [['train', '--recipe', 'convmixer', ...common, '--out', path.join(root, 'x'), '--model', 'resnet51'], /unknown model 'resnet51'\. Did you mean 'resnet50'/],
    [
      ['train', '--recipe', 'convmixer', ...common, '--out', path.join(root, 'run'), '--resume', '--lr', '0.5'],
      /changes .*optimizer.lr \(only --epochs may change\)/,
    ],
    [
      ['train', '--recipe', 'convmixer', ...common, '--out', path.join(root, 'run')],
      /already holds a run \(checkpoint.safetensors\): continue it with --resume/,
    ],
    [['eval', '--checkpoint', path.join(root, 'missing.safetensors')], /does not exist/],
    [
      ['train', ...common, '--out', path.join(root, 'run'), '--resume', '--epochs', '5'],
      /finished run of 3 epoch\(s\) whose cosine schedule ended at lr [\d.e-]+; --epochs 5 would train 2 more at that rate\. Start a new run/,
    ],
    [['train', '--recipe', 'convmixer', '--out', path.join(root, 'x')], /required option '--dataset <spec>' not specified/],
    [['report', path.join(root, 'empty-dir-that-is-missing')], /does not exist/],
  ];
  for (const [args, re] of cases) {
    const r = kshare(args);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.out}${r.err}`);
    assert.match(r.err, re, args.join(' '));
    assert.doesNotMatch(r.err, /\n\s+at /, 'no stack trace');
  }
});
