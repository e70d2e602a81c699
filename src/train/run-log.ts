// What a run leaves for people and tools: a progress bar while it trains, one JSON line per
// epoch in <out>/log.jsonl, one per logging interval (about ten per epoch) in
// <out>/steps.jsonl, and <out>/summary.json (rewritten atomically).
// Each epoch writes the checkpoint first, then log.jsonl, then summary.json: after a kill in
// between, the checkpoint is ahead and is the source of truth (`kshare report` reads its
// history; a resume rewrites the log from it and truncates steps.jsonl to it).
import { writeFileSync, renameSync, appendFileSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import type { EpochRecord } from './checkpoint.js';
// The steps.jsonl record is defined once, beside its reader (`kshare report`); a type-only
// import, so training does not load the plotting libraries.
import type { StepRecord } from './report.js';

export const LOG_FILE = 'log.jsonl';
export const SUMMARY_FILE = 'summary.json';
export const CHECKPOINT_FILE = 'checkpoint.safetensors';
/** The file name report.ts's STEPS_FILE reads (not imported from there: see above). */
const STEPS_FILE = 'steps.jsonl';

export function writeJsonAtomic(file: string, value: unknown): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n');
  renameSync(tmp, file);
}

/** Rewrites log.jsonl from the run's history (after a resume the checkpoint is authoritative). */
export function rewriteLog(outDir: string, history: EpochRecord[]): void {
  const file = path.join(outDir, LOG_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, history.map((r) => JSON.stringify(r) + '\n').join(''));
  renameSync(tmp, file);
}

export function appendLog(outDir: string, r: EpochRecord): void {
  appendFileSync(path.join(outDir, LOG_FILE), JSON.stringify(r) + '\n');
}

export function appendSteps(outDir: string, r: StepRecord): void {
  appendFileSync(path.join(outDir, STEPS_FILE), JSON.stringify(r) + '\n');
}

/**
 * Keeps the lines of steps.jsonl up to global step `position` (where the checkpoint being
 * resumed stands) and drops the rest, so a killed and resumed run has no duplicate or lost
 * lines. Rewritten atomically; unreadable lines (a write cut short by a kill) are dropped.
 */
export function truncateSteps(outDir: string, position: number): void {
  const file = path.join(outDir, STEPS_FILE);
  const kept: string[] = [];
  if (position > 0 && existsSync(file)) {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      try {
        const r = JSON.parse(line) as StepRecord;
        if ((r.epoch - 1) * r.steps + r.step <= position) kept.push(line + '\n');
      } catch {
        /* a partial line from a kill */
      }
    }
  }
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, kept.join(''));
  renameSync(tmp, file);
}

/** Reads a JSON-lines file (a missing file gives an empty list; a bad line is an error naming it). */
export function readJsonl<T>(file: string): T[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l, i) => {
      try {
        return JSON.parse(l) as T;
      } catch {
        throw new Error(`${file}: line ${i + 1} is not valid JSON`);
      }
    });
}

/** Reads a run's log.jsonl. */
export function readLog(outDir: string): EpochRecord[] {
  return readJsonl<EpochRecord>(path.join(outDir, LOG_FILE));
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600),
    m = Math.floor((s % 3600) / 60),
    r = s % 60;
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(r).padStart(2, '0')}s` : `${r}s`;
}

/** The per-epoch progress bar (only on a terminal; elsewhere nothing is drawn). */
export class EpochProgress {
  #bar: cliProgress.SingleBar | null = null;
  constructor(readonly enabled: boolean) {}

  start(epoch: number, epochs: number, total: number, done: number): void {
    if (!this.enabled) return;
    this.#bar = new cliProgress.SingleBar(
      {
        format: `epoch ${epoch}/${epochs} |{bar}| {value}/{total} | loss {loss} | {ips} img/s | ETA {eta_formatted}`,
        barsize: 24,
        hideCursor: true,
        clearOnComplete: true,
        etaBuffer: 50,
        fps: 5,
      },
      cliProgress.Presets.shades_classic,
    );
    this.#bar.start(total, done, { loss: '-', ips: '-' });
  }

  update(done: number, loss: number, imgPerSec: number): void {
    // Loss and speed are read from the device once per logging interval: '-' until the first.
    this.#bar?.update(done, { loss: Number.isFinite(loss) ? loss.toFixed(4) : '-', ips: Number.isFinite(imgPerSec) ? imgPerSec.toFixed(0) : '-' });
  }

  stop(): void {
    this.#bar?.stop();
    this.#bar = null;
  }
}
