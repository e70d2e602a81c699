// `kshare report` over a generated sweep folder (known numbers, so means, spreads and the
// plain-words findings can be checked exactly), steps.jsonl curves with a log.jsonl fallback,
// and Pareto labels that stay whole and apart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { writeReport, placeLabels, stat } from '../src/train/report.js';

const root = mkdtempSync(path.join(tmpdir(), 'kshare-report-'));
process.on('exit', () => rmSync(root, { recursive: true, force: true }));

const STEPS = 10;

interface FakeRun {
  config: string;
  plan: string | null;
  seed: number;
  trainable: number;
  final: number;
  train: number;
  steps?: boolean;
  model?: string;
}

/** A run folder as `kshare sweep` leaves it (two epochs; epoch 1 five points below the final accuracies). */
function writeRun(dir: string, r: FakeRun, sweep: boolean): void {
  mkdirSync(dir, { recursive: true });
  const model = r.model ?? `base.${r.config}`;
  const hist = [1, 2].map((epoch) => ({
    epoch,
    lr: epoch === 1 ? 0.005 : 0.0001,
    trainLoss: 2 - epoch / 2,
    trainAcc: epoch === 2 ? r.train : r.train - 0.05,
    testLoss: 1,
    testAcc: epoch === 2 ? r.final : r.final - 0.05,
    bestAcc: r.final,
    seconds: 100 + r.seed,
    imgPerSec: 250,
    dataset: 'gen',
  }));
  writeFileSync(path.join(dir, 'log.jsonl'), hist.map((h) => JSON.stringify(h)).join('\n') + '\n');
  writeFileSync(
    path.join(dir, 'summary.json'),
    JSON.stringify({
      status: 'completed',
      model,
      dataset: 'gen',
      recipe: 'demo',
      seed: r.seed,
      epochs: 2,
      epochsDone: 2,
      bestAcc: r.final,
      finalAcc: r.final,
      trainableParams: r.trainable,
      unsharedParams: 25930,
      trainImages: 100,
      testImages: 50,
      seconds: 200,
      imgPerSec: 250,
      history: hist,
    }),
  );
  if (sweep) {
    writeFileSync(
      path.join(dir, 'sweep-run.json'),
      JSON.stringify({
        sweep: 'gen',
        id: path.basename(dir),
        config: r.config,
        model: 'base',
        plan: r.plan,
        modelName: model,
        seed: r.seed,
        classes: 10,
        trainableParams: r.trainable,
        unsharedParams: 25930,
        weightBytes: 4 * r.trainable,
        macs: 1234567,
      }),
    );
  }
  if (r.steps !== false) {
    const lines: string[] = [];
    for (let epoch = 1; epoch <= 2; epoch++) {
      for (let step = 1; step <= STEPS; step++) {
        const progress = epoch - 1 + step / STEPS;
        lines.push(
          JSON.stringify({
            epoch,
            step,
            steps: STEPS,
            progress,
            trainLoss: 2.3 - progress + r.seed / 100,
            trainAcc: Math.min(1, 0.1 + progress / 4),
            lr: 0.01 / (1 + progress),
            imgPerSec: 250,
            elapsedS: progress * 100,
          }),
        );
      }
    }
    writeFileSync(path.join(dir, 'steps.jsonl'), lines.join('\n') + '\n');
  }
}

const RUNS: FakeRun[] = [
  { config: 'none', plan: 'none', seed: 0, trainable: 25930, final: 0.6, train: 0.7 },
  { config: 'none', plan: 'none', seed: 1, trainable: 25930, final: 0.62, train: 0.73 },
  { config: 'none', plan: 'none', seed: 2, trainable: 25930, final: 0.64, train: 0.76, steps: false },
  { config: 'both', plan: 'both', seed: 0, trainable: 8458, final: 0.58, train: 0.62 },
  { config: 'both', plan: 'both', seed: 1, trainable: 8458, final: 0.59, train: 0.63 },
  { config: 'pointwise', plan: 'pointwise', seed: 0, trainable: 14000, final: 0.5, train: 0.6 },
  { config: 'pointwise', plan: 'pointwise', seed: 1, trainable: 14000, final: 0.51, train: 0.61 },
  { config: 'depthwise', plan: 'depthwise', seed: 0, trainable: 23000, final: 0.615, train: 0.7 },
];

function writeSweep(dir: string): void {
  const listed = [...RUNS.map((r) => ({ dir: `runs/${r.config}-s${r.seed}` })), { dir: 'runs/consecutive-2-s0' }];
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'sweep.json'), JSON.stringify({ spec: { name: 'gen' }, runs: listed }));
  for (const r of RUNS) writeRun(path.join(dir, 'runs', `${r.config}-s${r.seed}`), r, true);
}

test('a sweep folder: mean and sample spread over seeds per configuration, findings in plain words, curves and Pareto plot', async () => {
  const sweep = path.join(root, 'sweep');
  writeSweep(sweep);
  const files = await writeReport([sweep], sweep);
  const md = readFileSync(files.markdown, 'utf8');
  assert.match(md, /^# Sweep report: gen/);
  assert.match(md, /1 of the 9 runs of sweep gen have no results yet and are left out\./);
  // none: final 60/62/64 -> 62.00 ± 2.00; train 70/73/76 -> 73.00 ± 3.00; gap 10/11/12 -> 11.00 ± 1.00; best = final.
  assert.ok(
    md.includes('| none | base | 3 | 62.00 ± 2.00% | 62.00 ± 2.00% | 73.00 ± 3.00% | 11.00 ± 1.00 pt | 25,930 | 25,930 | 103,720 | 1,234,567 | 3m22s ± 2s |'),
    md,
  );
  assert.ok(md.includes('| both | base | 2 | 58.50 ± 0.71% | 58.50 ± 0.71% | 62.50 ± 0.71% | 4.00 ± 0.00 pt | 8,458 | 25,930 | 33,832 |'), md);
  assert.ok(md.includes('| depthwise | base | 1 | 61.50% | 61.50% | 70.00% | 8.50 pt |'), md);
  // both vs none: cost 3.50 <= the larger range (none: 64 - 60 = 4.00): within the spread; gap 11 - 4 = 7 > max range 2.
  assert.match(
    md,
    /\*\*both\*\* against \*\*none\*\*: 3\.07x fewer trainable parameters \(8,458 vs 25,930\)\. Final test accuracy 58\.50 ± 0\.71% vs 62\.00 ± 2\.00% \(2 and 3 seeds\): sharing costs 3\.50 percentage points, which is within the seeds' spread \(the larger seed-to-seed range is 4\.00 points\)/,
  );
  assert.match(
    md,
    /\*\*both\*\*[^\n]*Train-test gap \(final training accuracy minus final test accuracy\) 4\.00 vs 11\.00 points: smaller with sharing by 7\.00 points, more than the seeds' spread \(2\.00 points\)\./,
  );
  assert.match(md, /\*\*pointwise\*\* against \*\*none\*\*:[^\n]*sharing costs 11\.50 percentage points, which is larger than the seeds' spread/);
  assert.match(
    md,
    /\*\*depthwise\*\* against \*\*none\*\*:[^\n]*sharing costs 0\.50 percentage points; with a single seed on one side the seeds' spread is unknown/,
  );
  assert.doesNotMatch(md, /\*\*none\*\* against/);
  assert.match(md, /\| none-s2 \| base\.none \| gen \| demo \| 2\/2 \| 64\.00% \| 64\.00% \|/);

  const curves = readFileSync(files.curves, 'utf8');
  assert.match(curves, /training loss and accuracy at every logging interval; lines: mean over seeds, bands: ± one standard deviation/);
  for (const label of ['none', 'both', 'pointwise', 'depthwise']) assert.ok(curves.includes(`>${label}</text>`), `legend ${label}`);
  // A training-loss line through 2 epochs x 10 logging points has at least 19 segments.
  const segments = Math.max(...[...curves.matchAll(/<path[^>]*d="(M[^"]*)"/g)].map((m) => (m[1]!.match(/L/g) ?? []).length));
  assert.ok(segments >= 19, `curves have intra-epoch points (${segments} segments)`);

  const pareto = readFileSync(files.params, 'utf8');
  for (const label of ['none', 'both', 'pointwise', 'depthwise']) assert.ok(pareto.includes(`>${label}</text>`), `Pareto label ${label}`);
  assert.ok(!pareto.includes('…'), 'no label is cut short');
  assert.match(pareto, /Final test accuracy against trainable parameters/);
});

test('plain run folders: without steps.jsonl the curves fall back to epochs, labels are whole', async () => {
  const a = path.join(root, 'plain', 'demo-20261201-202159');
  writeRun(a, { config: 'x', plan: null, seed: 0, trainable: 8458, final: 0.54, train: 0.5, steps: false, model: 'convmixer_64_4_k5_p2_shared' }, false);
  const b = path.join(root, 'plain', 'demo-20261201-230000-unshared-with-a-long-name');
  writeRun(b, { config: 'y', plan: null, seed: 0, trainable: 25930, final: 0.56, train: 0.52, model: 'convmixer_64_4_k5_p2' }, false);
  const out = path.join(root, 'plain-report');
  const files = await writeReport([a, b], out);
  const md = readFileSync(files.markdown, 'utf8');
  assert.match(md, /^# Training report/);
  assert.match(
    md,
    /\*\*demo-20261201-202159 \(convmixer_64_4_k5_p2_shared\)\*\* against \*\*demo-20261201-230000-unshared-with-a-long-name \(convmixer_64_4_k5_p2\)\*\*/,
  );
  const pareto = readFileSync(files.params, 'utf8');
  assert.ok(pareto.includes('>demo-20261201-202159 (convmixer_64_4_k5_p2_shared)</text>'), 'whole label');
  assert.ok(pareto.includes('>demo-20261201-230000-unshared-with-a-long-name (convmixer_64_4_k5_p2)</text>'), 'whole label');
  assert.ok(!pareto.includes('…'));
  // The right-most point's long label is drawn to the left of it, so it stays inside the plot.
  assert.match(pareto, /text-anchor="end"[^>]*>demo-20261201-230000-unshared-with-a-long-name/);
});

test('placeLabels keeps labels inside the plot and apart', () => {
  const pts = [
    { label: 'none', params: 1000, acc: 60 },
    { label: 'isomorphic weights only', params: 1000, acc: 60.05 },
    { label: 'both', params: 1010, acc: 59.98 },
    { label: 'a label long enough to need the left side', params: 9000, acc: 50 },
  ];
  const width = 600,
    height = 360,
    font = 11;
  const placed = placeLabels(pts, [500, 10000], [40, 70], width, height, font);
  const py = (v: number) => height * (1 - (v - 40) / 30);
  const near = placed
    .filter((p) => p.params < 2000)
    .map((p) => py(p.labelAcc))
    .sort((a, b) => a - b);
  for (let i = 1; i < near.length; i++) assert.ok(near[i]! - near[i - 1]! >= font + 3 - 1e-9, `labels ${i - 1} and ${i} are a line apart`);
  for (const p of placed) assert.ok(py(p.labelAcc) > 0 && py(p.labelAcc) < height, `${p.label} inside vertically`);
  assert.equal(placed.find((p) => p.params === 9000)!.align, 'right');
  assert.equal(placed.find((p) => p.label === 'none')!.align, 'left');
});

test('stat: mean, sample standard deviation, range', () => {
  assert.deepEqual(stat([0.6, 0.62, 0.64])!.n, 3);
  assert.ok(Math.abs(stat([0.6, 0.62, 0.64])!.sd! - 0.02) < 1e-12);
  assert.equal(stat([0.5])!.sd, null);
  assert.equal(stat([]), null);
});
