// `kshare report`: reads run folders (summary.json, log.jsonl, steps.jsonl when present) and sweep
// folders (sweep.json plus runs/*), groups runs into configurations (a sweep's model and plan;
// each plain run folder on its own), and writes a Markdown report with mean and spread over seeds,
// plain-words comparisons of every shared configuration with its unshared one, and SVG charts
// (training curves averaged over seeds; final test accuracy against trainable parameters) drawn
// with Vega-Lite.
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import type { TopLevelSpec } from 'vega-lite';
import type { EpochRecord } from './checkpoint.js';
import { readCheckpointMeta, storedModelConfig } from './checkpoint.js';
import { readJsonl, readLog, formatDuration, SUMMARY_FILE, CHECKPOINT_FILE } from './run-log.js';
import type { TrainSummary } from './trainer.js';
import { SWEEP_FILE, SWEEP_RUN_FILE, type SweepRunRecord } from './sweep.js';
import { buildFromConfig, modelSummary, type ModelConfig } from '../models/index.js';

/** One line of <run>/steps.jsonl: the training loss and accuracy of one logging interval. */
export interface StepRecord {
  /** 1-based epoch. */
  epoch: number;
  /** 1-based step within the epoch. */
  step: number;
  /** Steps per epoch. */
  steps: number;
  /** (epoch - 1) + step / steps: the x of the curves. */
  progress: number;
  trainLoss: number;
  /** Fraction 0..1. */
  trainAcc: number;
  lr: number;
  imgPerSec: number;
  elapsedS: number;
}

export const STEPS_FILE = 'steps.jsonl';

export interface RunData {
  dir: string;
  label: string;
  model: string;
  dataset: string;
  recipe: string;
  status: string;
  epochs: number | null;
  trainableParams: number | null;
  unsharedParams: number | null;
  bestAcc: number | null;
  finalAcc: number | null;
  history: EpochRecord[];
  /** Intra-epoch points from steps.jsonl (empty when the run has none). */
  steps: StepRecord[];
  /** Configuration key: the sweep's (seeds of one configuration are averaged), else the run label. */
  config: string;
  /** The model as the sweep spec names it (before a plan), else the run's model. */
  baseModel: string;
  /** The sharing plan as the sweep spec names it, or null. */
  plan: string | null;
  seed: number | null;
  /** float32 bytes of the trainable parameters. */
  weightBytes: number | null;
  /** Multiply-accumulates per 32x32 image, or null when the model cannot be rebuilt here. */
  macs: number | null;
}

/** steps.jsonl, checked field by field; a resumed run may repeat points, the last one wins. */
export function readSteps(dir: string): StepRecord[] {
  const file = path.join(dir, STEPS_FILE);
  const byProgress = new Map<string, StepRecord>();
  readJsonl<StepRecord>(file).forEach((s, i) => {
    for (const k of ['epoch', 'step', 'steps', 'progress', 'trainLoss', 'trainAcc'] as const) {
      if (typeof s[k] !== 'number' || !Number.isFinite(s[k]))
        throw new Error(`${file}: line ${i + 1}: '${k}' must be a finite number, got ${JSON.stringify(s[k])}`);
    }
    byProgress.set(s.progress.toFixed(6), s);
  });
  return [...byProgress.values()].sort((a, b) => a.progress - b.progress);
}

/** Classes and model config from a checkpoint's header (no tensor data read), or null. */
function checkpointModel(dir: string): { config: ModelConfig; classes: number } | null {
  const file = path.join(dir, CHECKPOINT_FILE);
  if (!existsSync(file)) return null;
  try {
    // Checked against the file's tensors before anything is built from it (issue 10).
    const { meta } = readCheckpointMeta(file);
    const config = storedModelConfig(meta, file);
    return config ? { config, classes: meta.classes.length } : null;
  } catch {
    return null;
  }
}

function macsOf(config: ModelConfig, classes: number): number | null {
  try {
    const m = buildFromConfig(config, classes);
    try {
      return modelSummary(m, 'model', classes).macs;
    } finally {
      m.dispose();
    }
  } catch {
    return null;
  }
}

/** One run folder; the log is authoritative for per-epoch values, the summary for the rest. */
export function loadRun(dir: string): RunData {
  if (!existsSync(dir)) throw new Error(`run folder ${dir} does not exist`);
  const sumFile = path.join(dir, SUMMARY_FILE);
  let summary: Partial<TrainSummary> = {};
  if (existsSync(sumFile)) {
    try {
      summary = JSON.parse(readFileSync(sumFile, 'utf8')) as TrainSummary;
    } catch {
      throw new Error(`${sumFile} is not valid JSON`);
    }
  }
  let history = readLog(dir);
  // The checkpoint is written first each epoch (then log.jsonl, then summary.json), so after a
  // kill between those writes it is the one that is current: its history wins.
  const ckFile = path.join(dir, CHECKPOINT_FILE);
  if (existsSync(ckFile)) {
    const { meta } = readCheckpointMeta(ckFile);
    if (meta.history.length >= history.length) history = meta.history;
    const stale = summary.epochsDone !== undefined && summary.epochsDone < meta.history.length;
    if (stale && summary.model) summary = { ...summary, status: 'interrupted', epochsDone: meta.history.length, bestAcc: meta.bestAcc };
  }
  if (!history.length && !summary.model)
    throw new Error(`${dir} holds no ${SUMMARY_FILE} and no log.jsonl lines: not a kshare run folder (or no epoch has finished yet)`);
  const best = history.length ? Math.max(...history.map((h) => h.testAcc)) : (summary.bestAcc ?? null);
  let sweep: SweepRunRecord | null = null;
  const sweepFile = path.join(dir, SWEEP_RUN_FILE);
  if (existsSync(sweepFile)) {
    try {
      sweep = JSON.parse(readFileSync(sweepFile, 'utf8')) as SweepRunRecord;
    } catch {
      throw new Error(`${sweepFile} is not valid JSON`);
    }
  }
  const label = path.basename(path.resolve(dir));
  const trainable = summary.trainableParams ?? sweep?.trainableParams ?? null;
  let macs = sweep?.macs ?? null;
  if (macs === null) {
    const ck = checkpointModel(dir);
    if (ck) macs = macsOf(ck.config, ck.classes);
  }
  return {
    dir,
    label,
    model: summary.model ?? sweep?.modelName ?? '?',
    dataset: summary.dataset ?? history[0]?.dataset ?? '?',
    recipe: summary.recipe ?? '?',
    status: summary.status ?? (history.length ? 'running' : '?'),
    epochs: summary.epochs ?? null,
    trainableParams: trainable,
    unsharedParams: summary.unsharedParams ?? sweep?.unsharedParams ?? null,
    bestAcc: best,
    finalAcc: history.length ? history[history.length - 1]!.testAcc : (summary.finalAcc ?? null),
    history,
    steps: readSteps(dir),
    config: sweep?.config ?? label,
    baseModel: sweep?.model ?? summary.model ?? '?',
    plan: sweep?.plan ?? null,
    seed: sweep?.seed ?? summary.seed ?? null,
    weightBytes: sweep?.weightBytes ?? (trainable === null ? null : 4 * trainable),
    macs,
  };
}

/** Run folders to report: a sweep folder stands for its runs that have results; a run folder for itself. */
export function expandRunDirs(dirs: string[]): { runs: string[]; notes: string[] } {
  const runs: string[] = [];
  const notes: string[] = [];
  for (const d of dirs) {
    const file = path.join(d, SWEEP_FILE);
    if (!existsSync(file)) {
      runs.push(d);
      continue;
    }
    let sweep: { spec?: { name?: string }; runs?: { dir: string }[] };
    try {
      sweep = JSON.parse(readFileSync(file, 'utf8'));
    } catch {
      throw new Error(`${file} is not valid JSON`);
    }
    if (!Array.isArray(sweep.runs)) throw new Error(`${file} lists no runs: not a sweep folder written by \`kshare sweep\``);
    const withData = sweep.runs.map((r) => path.join(d, r.dir)).filter((r) => existsSync(path.join(r, SUMMARY_FILE)) || readLog(r).length > 0);
    if (withData.length < sweep.runs.length)
      notes.push(
        `${sweep.runs.length - withData.length} of the ${sweep.runs.length} runs of sweep ${sweep.spec?.name ?? d} have no results yet and are left out.`,
      );
    if (!withData.length) throw new Error(`sweep folder ${d}: none of its ${sweep.runs.length} runs has finished an epoch yet`);
    runs.push(...withData);
  }
  return { runs, notes };
}

// ---- statistics over seeds ----

export interface Stat {
  mean: number;
  /** Sample standard deviation (n - 1), null for one value. */
  sd: number | null;
  min: number;
  max: number;
  n: number;
}

export function stat(xs: number[]): Stat | null {
  if (!xs.length) return null;
  const n = xs.length;
  const mean = xs.reduce((a, b) => a + b, 0) / n;
  const sd = n > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1)) : null;
  return { mean, sd, min: Math.min(...xs), max: Math.max(...xs), n };
}

export interface ConfigRow {
  config: string;
  /** What the plots and sentences call it: the plan, or the model (and plan) when models differ. */
  label: string;
  model: string;
  plan: string | null;
  runs: RunData[];
  unfinished: number;
  best: Stat | null;
  final: Stat | null;
  /** Final-epoch training accuracy (running accuracy over that epoch's augmented batches). */
  train: Stat | null;
  /** Final train accuracy minus final test accuracy, per seed. */
  gap: Stat | null;
  /** Training and evaluation seconds per run. */
  seconds: Stat | null;
  trainableParams: number | null;
  unsharedParams: number | null;
  weightBytes: number | null;
  macs: number | null;
}

const finite = (xs: (number | null | undefined)[]) => xs.filter((x): x is number => typeof x === 'number' && Number.isFinite(x));

/** Groups runs by configuration (in order of first appearance) with mean and spread over seeds. */
export function aggregate(runs: RunData[]): ConfigRow[] {
  const groups = new Map<string, RunData[]>();
  for (const r of runs) {
    const g = groups.get(r.config);
    if (g) g.push(r);
    else groups.set(r.config, [r]);
  }
  const models = new Set(runs.map((r) => r.baseModel));
  return [...groups].map(([config, rs]) => {
    const first = rs[0]!;
    const last = (r: RunData) => r.history[r.history.length - 1];
    const gaps = rs.map((r) => (last(r) ? last(r)!.trainAcc - last(r)!.testAcc : null));
    // Plain run folders: folder (model); sweep runs: the plan, with the model when models differ.
    const label =
      first.plan === null
        ? first.config === first.label && first.label !== first.model
          ? `${first.label} (${first.model})`
          : first.model
        : models.size > 1
          ? `${first.baseModel} ${first.plan}`
          : first.plan;
    return {
      config,
      label,
      model: first.baseModel,
      plan: first.plan,
      runs: rs,
      unfinished: rs.filter((r) => r.status !== 'completed').length,
      best: stat(finite(rs.map((r) => r.bestAcc))),
      final: stat(finite(rs.map((r) => r.finalAcc))),
      train: stat(finite(rs.map((r) => last(r)?.trainAcc))),
      gap: stat(finite(gaps)),
      seconds: stat(rs.map((r) => r.history.reduce((s, e) => s + e.seconds, 0))),
      trainableParams: first.trainableParams,
      unsharedParams: first.unsharedParams,
      weightBytes: first.weightBytes,
      macs: first.macs,
    };
  });
}

const pp = (x: number) => (100 * x).toFixed(2);
const spreadOf = (s: Stat) => s.max - s.min;

function pctStat(s: Stat | null): string {
  if (!s) return '?';
  return s.sd === null ? `${pp(s.mean)}%` : `${pp(s.mean)} ± ${pp(s.sd)}%`;
}

/**
 * Plain-words comparisons of each shared configuration with the unshared one of the same model
 * (same unshared parameter count and MACs): the accuracy cost of sharing and whether it is within
 * the seeds' spread, and whether the train-test gap is smaller with sharing.
 */
export function sharingFindings(rows: ConfigRow[]): string[] {
  const out: string[] = [];
  const family = (r: ConfigRow) => `${r.unsharedParams}|${r.macs ?? '?'}`;
  for (const fam of new Set(rows.map(family))) {
    const members = rows.filter((r) => family(r) === fam && r.final && r.trainableParams !== null);
    const unshared = members.filter((r) => r.trainableParams === r.unsharedParams);
    const ref = unshared.find((r) => r.plan === 'none') ?? unshared[0];
    if (!ref) continue;
    for (const r of members) {
      if (r === ref || r.trainableParams! >= r.unsharedParams!) continue;
      const a = ref.final!,
        b = r.final!;
      const cost = a.mean - b.mean;
      const both = a.n > 1 && b.n > 1;
      const spread = Math.max(spreadOf(a), spreadOf(b));
      const seeds = `${b.n} and ${a.n} seed${a.n + b.n > 2 ? 's' : ''}`;
      let s =
        `**${r.label}** against **${ref.label}**: ${(ref.trainableParams! / r.trainableParams!).toFixed(2)}x fewer trainable parameters ` +
        `(${r.trainableParams!.toLocaleString('en-US')} vs ${ref.trainableParams!.toLocaleString('en-US')}). Final test accuracy ${pctStat(b)} vs ${pctStat(a)} (${seeds}): ` +
        (Math.abs(cost) < 5e-5 ? 'no difference' : cost > 0 ? `sharing costs ${pp(cost)} percentage points` : `sharing gains ${pp(-cost)} percentage points`);
      s += both
        ? Math.abs(cost) <= spread
          ? `, which is within the seeds' spread (the larger seed-to-seed range is ${pp(spread)} points), so this sweep cannot tell the two apart.`
          : `, which is larger than the seeds' spread (the larger seed-to-seed range is ${pp(spread)} points).`
        : `; with a single seed on one side the seeds' spread is unknown, so whether this is more than seed noise cannot be said.`;
      if (ref.gap && r.gap) {
        const d = ref.gap.mean - r.gap.mean;
        const gSpread = Math.max(spreadOf(ref.gap), spreadOf(r.gap));
        s +=
          ` Train-test gap (final training accuracy minus final test accuracy) ${pp(r.gap.mean)} vs ${pp(ref.gap.mean)} points: ` +
          (Math.abs(d) < 5e-5
            ? 'the same with and without sharing'
            : d > 0
              ? `smaller with sharing by ${pp(d)} points`
              : `larger with sharing by ${pp(-d)} points`) +
          (ref.gap.n > 1 && r.gap.n > 1
            ? Math.abs(d) <= gSpread
              ? `, within the seeds' spread (${pp(gSpread)} points).`
              : `, more than the seeds' spread (${pp(gSpread)} points).`
            : ' (one seed on one side: spread unknown).');
      }
      out.push(s);
    }
  }
  return out;
}

// ---- Markdown ----

const pct = (x: number | null) => (x === null ? '?' : `${(100 * x).toFixed(2)}%`);
const int = (x: number | null) => (x === null ? '?' : x.toLocaleString('en-US'));

function runsTable(runs: RunData[]): string[] {
  const lines = [
    '| run | model | dataset | recipe | epochs | best test acc | final test acc | trainable params | unshared params | reduction | train img/s | train time |',
    '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of runs) {
    const h = r.history;
    const ips = h.length ? h.reduce((s, e) => s + e.imgPerSec, 0) / h.length : null;
    const secs = h.reduce((s, e) => s + e.seconds, 0);
    const reduction = r.trainableParams && r.unsharedParams ? `${(r.unsharedParams / r.trainableParams).toFixed(2)}x` : '?';
    lines.push(
      `| ${r.label} | ${r.model} | ${r.dataset} | ${r.recipe} | ${h.length}${r.epochs ? `/${r.epochs}` : ''}${r.status === 'completed' ? '' : ` (${r.status})`} | ` +
        `${pct(r.bestAcc)} | ${pct(r.finalAcc)} | ${int(r.trainableParams)} | ${int(r.unsharedParams)} | ${reduction} | ${ips === null ? '?' : ips.toFixed(0)} | ${formatDuration(secs)} |`,
    );
  }
  return lines;
}

function timeStat(s: Stat | null): string {
  if (!s) return '?';
  return s.sd === null ? formatDuration(s.mean) : `${formatDuration(s.mean)} ± ${formatDuration(s.sd)}`;
}

export function markdownReport(runs: RunData[], rows: ConfigRow[], notes: string[] = [], title = 'Training report'): string {
  const datasets = [...new Set(runs.map((r) => r.dataset))];
  const lines = [`# ${title}`, '', `Data: ${datasets.join(', ')}.`, ''];
  for (const n of notes) lines.push(n, '');
  const findings = sharingFindings(rows);
  if (findings.length) {
    lines.push('## What sharing costs', '');
    for (const f of findings) lines.push(`- ${f}`);
    lines.push(
      '',
      '"Within the seeds\' spread" means the difference is no larger than the larger of the two configurations\' seed-to-seed ranges (max - min over seeds).',
      '',
    );
  }
  lines.push(
    '## Configurations',
    '',
    "Mean ± sample standard deviation over seeds (no ± with one seed). Training accuracy is the running accuracy over the final epoch's augmented batches in training mode; the gap is that minus the final test accuracy. Weight bytes: float32 trainable parameters; MACs per 32x32 image.",
    '',
  );
  lines.push(
    '| configuration | model | seeds | best test acc | final test acc | final train acc | train-test gap | trainable params | unshared params | weight bytes | MACs/image | time per run |',
  );
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const gap = r.gap ? (r.gap.sd === null ? `${pp(r.gap.mean)} pt` : `${pp(r.gap.mean)} ± ${pp(r.gap.sd)} pt`) : '?';
    lines.push(
      `| ${r.label} | ${r.model} | ${r.runs.length}${r.unfinished ? ` (${r.unfinished} unfinished)` : ''} | ${pctStat(r.best)} | ${pctStat(r.final)} | ${pctStat(r.train)} | ${gap} | ` +
        `${int(r.trainableParams)} | ${int(r.unsharedParams)} | ${int(r.weightBytes)} | ${int(r.macs)} | ${timeStat(r.seconds)} |`,
    );
  }
  lines.push('', '## Runs', '', ...runsTable(runs));
  lines.push('', 'Figures: [training curves](curves.svg), [final test accuracy against trainable parameters](accuracy-vs-params.svg).', '');
  return lines.join('\n');
}

/** The per-run table alone (kept for callers of the earlier API). */
export function markdownTable(runs: RunData[]): string {
  return markdownReport(runs, aggregate(runs));
}

// ---- charts ----

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';

function curvesSpec(runs: RunData[], rows: ConfigRow[]): TopLevelSpec {
  const labelOf = new Map(rows.map((r) => [r.config, r.label]));
  const train: Record<string, unknown>[] = [];
  const test: Record<string, unknown>[] = [];
  let intra = false;
  for (const r of runs) {
    const config = labelOf.get(r.config)!;
    if (r.steps.length) {
      intra = true;
      for (const s of r.steps)
        train.push({ config, run: r.label, progress: +s.progress.toFixed(4), trainLoss: s.trainLoss, trainAcc: 100 * s.trainAcc, lr: s.lr });
    } else {
      for (const h of r.history) train.push({ config, run: r.label, progress: h.epoch, trainLoss: h.trainLoss, trainAcc: 100 * h.trainAcc, lr: h.lr });
    }
    for (const h of r.history) test.push({ config, run: r.label, progress: h.epoch, testAcc: 100 * h.testAcc });
  }
  const seeds = rows.some((r) => r.runs.length > 1);
  const color = {
    field: 'config',
    type: 'nominal' as const,
    title: 'configuration',
    sort: rows.map((r) => r.label),
    legend: { labelLimit: 0, orient: 'bottom' as const, columns: 3 },
  };
  // Epochs start the axis at 0 and tick as integers, so a short run still gets a readable axis.
  const x = { field: 'progress', type: 'quantitative' as const, title: 'epoch', scale: { domainMin: 0 }, axis: { tickMinStep: 1, format: 'd' } };
  const panel = (values: Record<string, unknown>[], field: string, title: string, format: string, scale: object, points: boolean) => ({
    width: 340,
    height: 220,
    data: { values },
    layer: [
      ...(seeds
        ? [
            {
              mark: { type: 'errorband' as const, extent: 'stdev' as const, opacity: 0.2, clip: true },
              encoding: { x, y: { field, type: 'quantitative' as const, title, scale }, color },
            },
          ]
        : []),
      {
        mark: { type: 'line' as const, point: points, clip: true },
        encoding: { x, y: { aggregate: 'mean' as const, field, type: 'quantitative' as const, title, scale, axis: { format } }, color },
      },
    ],
  });
  const pointsTrain = !intra;
  return {
    $schema: SCHEMA,
    title: {
      text: 'Training curves',
      subtitle: `data: ${[...new Set(runs.map((r) => r.dataset))].join(', ')}; ${intra ? 'training loss and accuracy at every logging interval' : 'one point per epoch'}${seeds ? '; lines: mean over seeds, bands: ± one standard deviation' : ''}`,
    },
    vconcat: [
      {
        hconcat: [
          panel(train, 'trainLoss', 'training loss', '.2f', { zero: true }, pointsTrain),
          panel(train, 'trainAcc', 'training accuracy (%)', '.0f', { domain: [0, 100] }, pointsTrain),
        ],
      },
      {
        hconcat: [
          panel(test, 'testAcc', 'test accuracy (%)', '.0f', { domain: [0, 100] }, true),
          panel(train, 'lr', 'learning rate', '.0e', { type: 'log' }, pointsTrain),
        ],
      },
    ],
    config: { legend: { labelFontSize: 11, symbolOpacity: 1 } },
  } as TopLevelSpec;
}

/** Approximate width of `text` in pixels at `size` (sans-serif averages about 0.6 em per character). */
function textWidth(text: string, size: number): number {
  return text.length * size * 0.6;
}

export interface LabelPlacement {
  label: string;
  params: number;
  acc: number;
  labelAcc: number;
  align: 'left' | 'right';
}

/**
 * Places one label beside each point so that none leaves the plot and none overlaps another:
 * labels that would run past the right edge go to the left of their point, and a label that
 * would cover an earlier one moves down (or up) a line at a time.
 */
export function placeLabels(
  points: { label: string; params: number; acc: number }[],
  xDomain: [number, number],
  yDomain: [number, number],
  width: number,
  height: number,
  fontSize: number,
): LabelPlacement[] {
  const lx = (v: number) => (width * (Math.log(v) - Math.log(xDomain[0]))) / (Math.log(xDomain[1]) - Math.log(xDomain[0]));
  const ly = (v: number) => height * (1 - (v - yDomain[0]) / (yDomain[1] - yDomain[0]));
  const line = fontSize + 3;
  const placed: { x0: number; x1: number; y: number }[] = [];
  const out: LabelPlacement[] = [];
  for (const p of [...points].sort((a, b) => b.acc - a.acc)) {
    const px = lx(p.params);
    const w = textWidth(p.label, fontSize);
    const align: 'left' | 'right' = px + 8 + w <= width ? 'left' : 'right';
    const x0 = align === 'left' ? px + 8 : px - 8 - w;
    const x1 = x0 + w;
    const clash = (y: number) => placed.some((q) => q.x0 < x1 && x0 < q.x1 && Math.abs(q.y - y) < line);
    let y = ly(p.acc);
    for (let k = 1; clash(y) && k < 40; k++) {
      const down = ly(p.acc) + Math.ceil(k / 2) * line * (k % 2 ? 1 : -1);
      if (down > fontSize / 2 && down < height - fontSize / 2) y = down;
    }
    placed.push({ x0, x1, y });
    out.push({ ...p, labelAcc: yDomain[0] + (1 - y / height) * (yDomain[1] - yDomain[0]), align });
  }
  return out;
}

function paramsSpec(rows: ConfigRow[]): TopLevelSpec {
  const pts = rows
    .filter((r) => r.trainableParams !== null && r.final)
    .map((r) => ({
      label: r.label,
      params: r.trainableParams!,
      acc: 100 * r.final!.mean,
      lo: Math.max(0, 100 * (r.final!.mean - (r.final!.sd ?? 0))),
      hi: Math.min(100, 100 * (r.final!.mean + (r.final!.sd ?? 0))),
      n: r.final!.n,
      best: 100 * (r.best?.mean ?? 0),
    }));
  const fontSize = 11;
  const longest = Math.max(0, ...pts.map((p) => textWidth(p.label, fontSize)));
  const width = Math.max(600, Math.ceil(2 * longest + 160));
  const height = 360;
  const ps = pts.map((p) => p.params);
  const xDomain: [number, number] = ps.length ? [Math.min(...ps) / 1.5, Math.max(...ps) * 1.5] : [1, 10];
  const lo = Math.min(...pts.map((p) => p.lo)),
    hi = Math.max(...pts.map((p) => p.hi));
  const pad = Math.max(1, 0.15 * (hi - lo));
  const yDomain: [number, number] = pts.length ? [Math.max(0, Math.floor(lo - pad)), Math.min(100, Math.ceil(hi + pad))] : [0, 100];
  if (yDomain[1] <= yDomain[0]) yDomain[1] = yDomain[0] + 1;
  const labels = placeLabels(pts, xDomain, yDomain, width, height, fontSize);
  // The Pareto front: configurations no other beats with fewer or equally many parameters.
  const front = [...pts].sort((a, b) => a.params - b.params || b.acc - a.acc).filter((p, i, s) => s.slice(0, i).every((q) => q.acc < p.acc));
  const x = {
    field: 'params',
    type: 'quantitative' as const,
    title: 'trainable parameters (log scale; a shared kernel counts once)',
    scale: { type: 'log' as const, domain: xDomain, nice: false },
    axis: { format: '~s' },
  };
  const y = {
    field: 'acc',
    type: 'quantitative' as const,
    title: 'final test accuracy (%)',
    scale: { domain: yDomain, zero: false, nice: false },
    axis: { format: '.1f' },
  };
  const text = (align: 'left' | 'right') => ({
    data: { values: labels.filter((l) => l.align === align) },
    mark: { type: 'text' as const, align, baseline: 'middle' as const, dx: align === 'left' ? 8 : -8, fontSize, limit: 0, color: '#222' },
    encoding: { x, y: { ...y, field: 'labelAcc' }, text: { field: 'label' } },
  });
  return {
    $schema: SCHEMA,
    title: {
      text: 'Final test accuracy against trainable parameters',
      subtitle: `mean over seeds${pts.some((p) => p.n > 1) ? ', bars: ± one standard deviation' : ''}; dashed: the Pareto front`,
    },
    width,
    height,
    layer: [
      { data: { values: front }, mark: { type: 'line' as const, strokeDash: [4, 3], color: '#888' }, encoding: { x, y } },
      {
        data: { values: pts.filter((p) => p.n > 1) },
        mark: { type: 'rule' as const, color: '#4c78a8' },
        encoding: { x, y: { ...y, field: 'lo' }, y2: { field: 'hi' } },
      },
      {
        data: { values: pts },
        mark: { type: 'point' as const, filled: true, size: 80, color: '#4c78a8' },
        encoding: {
          x,
          y,
          tooltip: [
            { field: 'label' },
            { field: 'params' },
            { field: 'acc', format: '.2f' },
            { field: 'best', title: 'best acc', format: '.2f' },
            { field: 'n', title: 'seeds' },
          ],
        },
      },
      text('left'),
      text('right'),
    ],
  } as TopLevelSpec;
}

export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

export interface ReportFiles {
  markdown: string;
  curves: string;
  params: string;
}

/** The default output folder: a single sweep folder gets its report inside; anything else ./report. */
export function defaultReportDir(inputs: string[]): string {
  return inputs.length === 1 && existsSync(path.join(inputs[0]!, SWEEP_FILE)) ? inputs[0]! : 'report';
}

/** Writes report.md, curves.svg and accuracy-vs-params.svg into outDir. */
export async function writeReport(inputs: string[], outDir: string): Promise<ReportFiles> {
  if (!inputs.length) throw new Error('report: give at least one run or sweep folder');
  for (const d of inputs) if (!existsSync(d)) throw new Error(`run folder ${d} does not exist`);
  const { runs: runDirs, notes } = expandRunDirs(inputs);
  const runs = runDirs.map(loadRun);
  // Two runs from folders of the same name get their parent in the label.
  const seen = new Map<string, number>();
  for (const r of runs) seen.set(r.label, (seen.get(r.label) ?? 0) + 1);
  for (const r of runs) {
    if (seen.get(r.label)! > 1) {
      const wasConfig = r.config === r.label;
      r.label = path.relative(process.cwd(), path.resolve(r.dir)) || r.label;
      if (wasConfig) r.config = r.label;
    }
  }
  const rows = aggregate(runs);
  const sweeps = inputs
    .filter((d) => existsSync(path.join(d, SWEEP_FILE)))
    .map((d) => {
      try {
        return (JSON.parse(readFileSync(path.join(d, SWEEP_FILE), 'utf8')) as { spec?: { name?: string } }).spec?.name ?? path.basename(d);
      } catch {
        return path.basename(d);
      }
    });
  mkdirSync(outDir, { recursive: true });
  const files = { markdown: path.join(outDir, 'report.md'), curves: path.join(outDir, 'curves.svg'), params: path.join(outDir, 'accuracy-vs-params.svg') };
  writeFileSync(files.markdown, markdownReport(runs, rows, notes, sweeps.length ? `Sweep report: ${sweeps.join(', ')}` : 'Training report'));
  writeFileSync(files.curves, await renderSvg(curvesSpec(runs, rows)));
  writeFileSync(files.params, await renderSvg(paramsSpec(rows)));
  return files;
}
