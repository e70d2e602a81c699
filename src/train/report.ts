// `kshare report`: reads run folders (summary.json + log.jsonl) and writes a Markdown table
// and SVG charts (training curves; accuracy against trainable parameters) with Vega-Lite.
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import type { TopLevelSpec } from 'vega-lite';
import type { EpochRecord } from './checkpoint.js';
import { readLog, formatDuration, SUMMARY_FILE } from './run-log.js';
import type { TrainSummary } from './trainer.js';

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
  const history = readLog(dir);
  if (!history.length && !summary.model) throw new Error(`${dir} holds no ${SUMMARY_FILE} and no log.jsonl lines: not a kshare run folder (or no epoch has finished yet)`);
  const best = history.length ? Math.max(...history.map((h) => h.testAcc)) : summary.bestAcc ?? null;
  return {
    dir,
    label: path.basename(path.resolve(dir)),
    model: summary.model ?? '?',
    dataset: summary.dataset ?? history[0]?.dataset ?? '?',
    recipe: summary.recipe ?? '?',
    status: summary.status ?? (history.length ? 'running' : '?'),
    epochs: summary.epochs ?? null,
    trainableParams: summary.trainableParams ?? null,
    unsharedParams: summary.unsharedParams ?? null,
    bestAcc: best,
    finalAcc: history.length ? history[history.length - 1]!.testAcc : summary.finalAcc ?? null,
    history,
  };
}

const pct = (x: number | null) => (x === null ? '?' : `${(100 * x).toFixed(2)}%`);
const int = (x: number | null) => (x === null ? '?' : x.toLocaleString('en-US'));

export function markdownTable(runs: RunData[]): string {
  const datasets = [...new Set(runs.map((r) => r.dataset))];
  const lines = [
    `# Training report`,
    '',
    `Data: ${datasets.join(', ')}.`,
    '',
    '| run | model | dataset | recipe | epochs | best test acc | final test acc | trainable params | unshared params | reduction | train img/s | train time |',
    '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of runs) {
    const h = r.history;
    const ips = h.length ? h.reduce((s, e) => s + e.imgPerSec, 0) / h.length : null;
    const secs = h.reduce((s, e) => s + e.seconds, 0);
    const reduction = r.trainableParams && r.unsharedParams ? `${(r.unsharedParams / r.trainableParams).toFixed(2)}x` : '?';
    lines.push(`| ${r.label} | ${r.model} | ${r.dataset} | ${r.recipe} | ${h.length}${r.epochs ? `/${r.epochs}` : ''}${r.status === 'completed' ? '' : ` (${r.status})`} | ` +
      `${pct(r.bestAcc)} | ${pct(r.finalAcc)} | ${int(r.trainableParams)} | ${int(r.unsharedParams)} | ${reduction} | ${ips === null ? '?' : ips.toFixed(0)} | ${formatDuration(secs)} |`);
  }
  lines.push('', 'Figures: [training curves](curves.svg), [accuracy against trainable parameters](accuracy-vs-params.svg).', '');
  return lines.join('\n');
}

function curvesSpec(runs: RunData[]): TopLevelSpec {
  const values = runs.flatMap((r) => r.history.map((h) => ({ run: r.label, epoch: h.epoch, testAcc: h.testAcc * 100, trainLoss: h.trainLoss, lr: h.lr })));
  const color = { field: 'run', type: 'nominal' as const, title: 'run', legend: { labelLimit: 400 } };
  // Epochs start the axis at 0 and are labelled as integers, so a short run (even a single
  // epoch) still gets a readable axis instead of a zero-width domain with 6-decimal ticks.
  const panel = (field: string, title: string, format: string, scale?: object) => ({
    width: 360, height: 240, mark: { type: 'line' as const, point: true },
    encoding: {
      x: { field: 'epoch', type: 'quantitative' as const, title: 'epoch', scale: { domainMin: 0 }, axis: { tickMinStep: 1, format: 'd' } },
      y: { field, type: 'quantitative' as const, title, scale: scale ?? { zero: false }, axis: { format } },
      color,
    },
  });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Training curves', subtitle: `data: ${[...new Set(runs.map((r) => r.dataset))].join(', ')}` },
    data: { values },
    hconcat: [panel('testAcc', 'test accuracy (%)', '.1f', { domain: [0, 100] }), panel('trainLoss', 'training loss', '.2f', { zero: true }), panel('lr', 'learning rate', '.0e', { type: 'log' })],
  } as TopLevelSpec;
}

function paramsSpec(runs: RunData[]): TopLevelSpec {
  const values = runs.filter((r) => r.trainableParams !== null && r.bestAcc !== null).map((r) => ({
    run: r.label === r.model ? r.model : `${r.label} (${r.model})`, dataset: r.dataset, params: r.trainableParams, acc: r.bestAcc! * 100,
  }));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Best test accuracy against trainable parameters', subtitle: 'a shared kernel counts once' },
    width: 560, height: 320,
    data: { values },
    layer: [
      { mark: { type: 'point', filled: true, size: 90 }, encoding: { x: { field: 'params', type: 'quantitative', title: 'trainable parameters (log scale)', scale: { type: 'log', padding: 40 } }, y: { field: 'acc', type: 'quantitative', title: 'best test accuracy (%)', scale: { zero: false }, axis: { format: '.1f' } }, color: { field: 'dataset', type: 'nominal', legend: { labelLimit: 400, orient: 'bottom' } }, tooltip: [{ field: 'run' }, { field: 'params' }, { field: 'acc' }] } },
      { mark: { type: 'text', align: 'left', dx: 7, dy: -7, fontSize: 10, limit: 220 }, encoding: { x: { field: 'params', type: 'quantitative', scale: { type: 'log', padding: 40 } }, y: { field: 'acc', type: 'quantitative' }, text: { field: 'run' } } },
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

export interface ReportFiles { markdown: string; curves: string; params: string }

/** Writes report.md, curves.svg and accuracy-vs-params.svg into outDir. */
export async function writeReport(runDirs: string[], outDir: string): Promise<ReportFiles> {
  if (!runDirs.length) throw new Error('report: give at least one run folder');
  const runs = runDirs.map(loadRun);
  // Two runs from folders of the same name get their parent in the label.
  const seen = new Map<string, number>();
  for (const r of runs) seen.set(r.label, (seen.get(r.label) ?? 0) + 1);
  for (const r of runs) if (seen.get(r.label)! > 1) r.label = path.relative(process.cwd(), path.resolve(r.dir)) || r.label;
  mkdirSync(outDir, { recursive: true });
  const files = { markdown: path.join(outDir, 'report.md'), curves: path.join(outDir, 'curves.svg'), params: path.join(outDir, 'accuracy-vs-params.svg') };
  writeFileSync(files.markdown, markdownTable(runs));
  writeFileSync(files.curves, await renderSvg(curvesSpec(runs)));
  writeFileSync(files.params, await renderSvg(paramsSpec(runs)));
  return files;
}
