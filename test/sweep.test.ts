// `kshare sweep` end to end on a tiny grid (a 4-class 16x16 PNG folder, a tiny ConvMixer): two
// runs, the first interrupted with Ctrl-C and resumed by the next sweep, finished runs skipped,
// --dry-run, and bad specs rejected with one line naming the field, its value and a fix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeImageFolder } from './helpers/train-fixtures.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.resolve(here, '../src/cli/main.js');
const root = mkdtempSync(path.join(tmpdir(), 'kshare-sweep-'));
process.on('exit', () => rmSync(root, { recursive: true, force: true }));

writeImageFolder(path.join(root, 'shapes'), { train: 240, test: 40 });

function kshare(args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: root, env: { ...process.env, KSHARE_DEBUG: '' } });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

/** Writes a spec into root (paths in it are relative to root) and returns its file name. */
function spec(name: string, fields: Record<string, unknown>): string {
  const file = path.join(root, `${name}.json`);
  writeFileSync(file, JSON.stringify(fields));
  return file;
}

// Two epochs of 60 steps: long enough that Ctrl-C arrives while the first run trains.
const GRID = {
  name: 'tiny',
  recipe: 'demo',
  set: ['epochs=2', 'batchSize=4', 'evalBatchSize=20'],
  model: 'convmixer_8_2_k3_p4',
  plans: ['none', 'both'],
  seeds: [3],
  dataset: 'shapes',
  threads: 1,
  out: 'sweep-out',
};

test('a sweep trains each run in its own folder; Ctrl-C checkpoints, the next sweep resumes, a finished sweep skips everything', async () => {
  const file = spec('tiny', GRID);
  const out = path.join(root, 'sweep-out');
  const child = spawn(process.execPath, [CLI, 'sweep', file], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let sent = false;
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    if (!sent && /\[1\/2\] none-s3: training /.test(stdout)) {
      sent = true;
      child.kill('SIGINT');
    }
  });
  child.stderr.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1)));
  assert.equal(code, 130, stdout);
  assert.match(stdout, /Ctrl-C: every running run finishes its step and writes a checkpoint/);
  assert.match(stdout, /none-s3: interrupted after .*checkpoint kept/);
  assert.match(stdout, /`kshare sweep .*tiny\.json` continues where it stopped/);
  const first = path.join(out, 'runs', 'none-s3');
  assert.ok(existsSync(path.join(first, 'checkpoint.safetensors')), 'the interrupted run left a checkpoint');
  assert.equal(JSON.parse(readFileSync(path.join(first, 'summary.json'), 'utf8')).status, 'interrupted');
  assert.ok(!existsSync(path.join(out, 'runs', 'both-s3', 'summary.json')), 'the second run did not start');

  const again = kshare(['sweep', file]);
  assert.equal(again.code, 0, again.out + again.err);
  assert.match(again.out, /sweep tiny: 2 runs \(0 finished, 1 to resume, 1 new\)/);
  assert.match(again.out, /\[1\/2\] none-s3: resuming after epoch \d\/2/);
  assert.match(again.out, /none-s3: resuming convmixer_8_2_k3_p4\.none from /, 'the child continued from the checkpoint');
  assert.match(again.out, /\[2\/2\] both-s3: starting \(\d+ trainable parameters, seed 3\); 1 run left, about \d+s left/);
  assert.match(again.out, /\[2\/2\] both-s3: done in .*: best test accuracy \d+\.\d\d%, final \d+\.\d\d%; 0 runs left/);
  for (const id of ['none-s3', 'both-s3']) {
    const dir = path.join(out, 'runs', id);
    const s = JSON.parse(readFileSync(path.join(dir, 'summary.json'), 'utf8'));
    assert.equal(s.status, 'completed', id);
    assert.equal(s.seed, 3);
    const log = readFileSync(path.join(dir, 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      log.map((l: { epoch: number }) => l.epoch),
      [1, 2],
      id,
    );
    const rec = JSON.parse(readFileSync(path.join(dir, 'sweep-run.json'), 'utf8'));
    assert.equal(rec.config, id.slice(0, -3));
    assert.equal(rec.trainableParams, s.trainableParams, 'the sweep counted the parameters the trainer trained');
  }
  const none = JSON.parse(readFileSync(path.join(out, 'runs', 'none-s3', 'summary.json'), 'utf8'));
  const both = JSON.parse(readFileSync(path.join(out, 'runs', 'both-s3', 'summary.json'), 'utf8'));
  assert.equal(none.trainableParams, none.unsharedParams);
  assert.ok(both.trainableParams < both.unsharedParams && both.unsharedParams === none.unsharedParams, 'plan both shares kernels of the same model');

  const third = kshare(['sweep', file]);
  assert.equal(third.code, 0, third.err);
  assert.match(third.out, /\[1\/2\] none-s3: already finished .*skipped/);
  assert.match(third.out, /\[2\/2\] both-s3: already finished .*skipped/);
  assert.doesNotMatch(third.out, /starting|resuming/);

  const rep = kshare(['report', out]);
  assert.equal(rep.code, 0, rep.err);
  const md = readFileSync(path.join(out, 'report.md'), 'utf8');
  assert.match(md, /^# Sweep report: tiny/);
  assert.match(md, /\*\*both\*\* against \*\*none\*\*/);
  assert.match(md, /\| none \| convmixer_8_2_k3_p4 \| 1 \|/);
});

test('--jobs 2 trains two runs at once, each in its own folder', () => {
  const file = spec('jobs', { ...GRID, set: ['epochs=1', 'batchSize=20', 'evalBatchSize=20'], seeds: [5], out: 'jobs-out' });
  const r = kshare(['sweep', file, '--jobs', '2']);
  assert.equal(r.code, 0, r.out + r.err);
  assert.match(r.out, /2 at a time, 1 thread\(s\) each/);
  const firstDone = r.out.indexOf(': done in ');
  assert.ok(
    r.out.indexOf('[1/2] none-s5: starting') < firstDone && r.out.indexOf('[2/2] both-s5: starting') < firstDone,
    'both runs started before either finished',
  );
  for (const id of ['none-s5', 'both-s5']) {
    const s = JSON.parse(readFileSync(path.join(root, 'jobs-out', 'runs', id, 'summary.json'), 'utf8'));
    assert.equal(s.status, 'completed', id);
    assert.match(readFileSync(path.join(root, 'jobs-out', 'runs', id, 'train.log'), 'utf8'), /--out \S+jobs-out\/runs\/(none|both)-s5/);
  }
});

test('a failing run is reported with its output; the other runs still go; exit code 1 names the failures', () => {
  const file = spec('diverge', { ...GRID, set: ['epochs=1', 'batchSize=20', 'evalBatchSize=20', 'optimizer.lr=1e30'], seeds: [7], out: 'fail-out' });
  const r = kshare(['sweep', file]);
  assert.equal(r.code, 1, r.out + r.err);
  assert.match(r.out, /\[1\/2\] none-s7: FAILED \(exit code 1\) after .*; its output is in \S+train\.log/);
  assert.match(r.out, /\[2\/2\] both-s7: starting/, 'the next run still starts');
  assert.match(r.err, /2 run\(s\) failed: none-s7 \(exit 1: kshare: training stopped: the loss is (NaN|-?Infinity)/);
  assert.match(readFileSync(path.join(root, 'fail-out', 'runs', 'none-s7', 'train.log'), 'utf8'), /training stopped: the loss is/);
});

test('--dry-run lists the runs with parameter counts and a time estimate, and trains nothing', () => {
  const file = spec('dry', { ...GRID, out: 'dry-out', plans: ['none', { plan: 'depthwise', seeds: [0] }, 'strided:1'], seeds: [0, 1] });
  const r = kshare(['sweep', file, '--dry-run', '--probe-steps', '3']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /sweep tiny: 5 runs, recipe demo \(2 epoch\(s\), batch 4/);
  assert.match(r.out, /probe none: \d+ ms per step of 4/);
  assert.match(r.out, /^none-s0 +convmixer_8_2_k3_p4 +none +0 +[\d,]+ +[\d,]+ +[\d,]+ +new +\d+s$/m);
  assert.match(r.out, /^depthwise-s0 /m);
  assert.doesNotMatch(r.out, /^depthwise-s1 /m, 'a plan with its own seeds runs only those');
  assert.match(r.out, /^strided-1-s1 /m);
  assert.match(r.out, /estimate: \d+s for the runs left, one after another \(240 training images, 60 steps per epoch, 40 test images/);
  assert.ok(!existsSync(path.join(root, 'dry-out')), 'a dry run writes nothing');
});

test('a bad spec is one line naming the field, its value and a fix', () => {
  const cases: [Record<string, unknown> | string, RegExp][] = [
    ['{ not json', /not valid JSON/],
    [{ ...GRID, seeds: [] }, /'seeds' is \[\]; give a non-empty list of non-negative integers/],
    [{ ...GRID, seeds: [1, 1] }, /'seeds' is \[1,1\]; list each seed once/],
    [
      { ...GRID, plans: ['none', 'bogus'] },
      /'plans\[1\]' is "bogus", which is not a sharing plan for convmixer_8_2_k3_p4 .*use one of none, depthwise, pointwise, both, .*"strided 2"/,
    ],
    [{ ...GRID, plans: ['both', 'both'] }, /'plans\[1\]' gives configuration 'both' a second time/],
    [{ ...GRID, model: 'convmixr_8_1' }, /'model' is "convmixr_8_1": unknown model/],
    [{ ...GRID, models: ['convmixer_8_2_k3_p4'] }, /'models' .*give either 'model' \(one model\) or 'models' \(a list\), not both/],
    [{ ...GRID, set: ['optimizer.momentum=0.9'] }, /has no field 'optimizer.momentum' \(check 'recipe' and 'set'\)/],
    [{ ...GRID, epochs: 3 }, /'epochs' is 3; unknown field \(known: name, description, recipe, set/],
    [{ ...GRID, dataset: 'no-such-folder' }, /'dataset' is ".*no-such-folder", which is neither cifar10, cifar100 nor a folder with a train\/ subfolder/],
    [{ ...GRID, device: 'tpu' }, /'device' is "tpu"; give cpu, cuda or cuda:N/],
  ];
  cases.forEach(([s, re], i) => {
    const file = path.join(root, `bad${i}.json`);
    writeFileSync(file, typeof s === 'string' ? s : JSON.stringify(s));
    const r = kshare(['sweep', file, '--dry-run', '--no-probe']);
    assert.equal(r.code, 1, `${i}: ${r.out}${r.err}`);
    assert.match(r.err, re, `case ${i}`);
    assert.equal(r.err.trim().split('\n').length, 1, `case ${i}: one line`);
  });
  const missing = kshare(['sweep', path.join(root, 'nope.json')]);
  assert.equal(missing.code, 1);
  assert.match(missing.err, /does not exist \(an example: \{ "name"/);
  const jobs = kshare(['sweep', path.join(root, 'tiny.json'), '--jobs', '0']);
  assert.match(jobs.err, /--jobs must be a positive integer, got '0'/);
});

test('a run folder made with another recipe is never mixed into the sweep', () => {
  const file = spec('changed', { ...GRID, set: ['epochs=3', 'batchSize=4', 'evalBatchSize=20'] });
  const r = kshare(['sweep', file, '--dry-run', '--no-probe']);
  assert.equal(r.code, 1, r.out);
  assert.match(r.err, /run folder .*none-s3 was made with a different recipe \(epochs differ\): restore the spec, or move that folder away/);
});

test("sweep runs take their model's CPU memory format unless the spec sets channelsLast", async () => {
  const { validateSweepSpec, planSweep, trainArgs } = await import('../src/train/sweep.js');
  const file = spec('layouts', {});
  const flags = (extra: Record<string, unknown>) => {
    const s = validateSweepSpec(
      { name: 'layouts', recipe: 'demo', models: ['convmixer_8_2_k3_p4', 'se_resnet_d_2'], seeds: [0], dataset: 'cifar10', out: 'o', ...extra },
      file,
    );
    return planSweep(s, file).runs.map((r) => [r.model, trainArgs(planSweep(s, file), r, false, null).includes('--channels-last')]);
  };
  // ConvMixer trains in NCHW on CPU (kshare's fused kernels), SE-ResNet in channels_last.
  assert.deepEqual(flags({}), [
    ['convmixer_8_2_k3_p4', false],
    ['se_resnet_d_2', true],
  ]);
  assert.deepEqual(
    flags({ channelsLast: true }).map(([, cl]) => cl),
    [true, true],
  );
  assert.deepEqual(
    flags({ channelsLast: false }).map(([, cl]) => cl),
    [false, false],
  );
  assert.deepEqual(
    flags({ device: 'cuda' }).map(([, cl]) => cl),
    [false, false],
  );
});
