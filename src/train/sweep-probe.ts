// `kshare sweep --dry-run`'s timing probe: a few real training steps and a small evaluation of
// each configuration in this process (the same trainer, data and augmentation as the runs), scaled
// to the runs' epochs, images and batch counts.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as t from '../tensor/index.js';
import { buildFromConfig } from '../models/index.js';
import { balancedSubset, batchCount } from '../data/tensors.js';
import type { ImageDataset } from '../data/types.js';
import { loadSplits } from './datasets.js';
import { train } from './trainer.js';
import { runChannelsLast, type SweepPlan, type SweepRun } from './sweep.js';

export interface ConfigTiming {
  config: string;
  /** Median seconds per training step (after one warm-up step). */
  stepSeconds: number;
  /** Evaluation (and the end-of-epoch checkpoint) seconds per test image. */
  evalSecondsPerImage: number;
  stepsTimed: number;
}

export interface SweepTiming {
  configs: Map<string, ConfigTiming>;
  /** Seconds to load the dataset (every run's child process does it again). */
  dataSeconds: number;
  /** Seconds this process took to start (every child process does it again). */
  startupSeconds: number;
  trainImages: number;
  testImages: number;
  itersPerEpoch: number;
  /** Estimated seconds of each run (all epochs, data loading included), by run id. */
  runSeconds: Map<string, number>;
}

function head(ds: ImageDataset, n: number): ImageDataset {
  const per = ds.channels * ds.height * ds.width;
  return { ...ds, images: ds.images.subarray(0, n * per), labels: ds.labels.subarray(0, n), count: n };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Times `steps` training steps and one small evaluation of each configuration of the plan. */
export async function probeSweep(plan: SweepPlan, o: { steps?: number; log?: (l: string) => void; threads?: number | null } = {}): Promise<SweepTiming> {
  const log = o.log ?? ((l: string) => console.log(l));
  // What this process took to start (Node and libtorch): every run's child pays it again.
  const startupSeconds = process.uptime();
  const threads = o.threads ?? plan.threads;
  if (threads) t.setNumThreads(threads);
  const t0 = performance.now();
  const data = await loadSplits(plan.dataset, { dataDir: plan.dataDir ?? undefined, log });
  const dataSeconds = (performance.now() - t0) / 1000;
  const recipe = plan.runs[0]!.recipe;
  const trainSet = recipe.trainPerClass ? balancedSubset(data.train, recipe.trainPerClass) : data.train;
  const testSet = recipe.testPerClass ? balancedSubset(data.test, recipe.testPerClass) : data.test;
  const itersPerEpoch = batchCount(trainSet.count, recipe.batchSize, true);
  const wanted = Math.max(3, o.steps ?? 6);
  const steps = Math.min(wanted, itersPerEpoch);
  if (steps < 2) throw new Error(`dry-run probe: the training set (${trainSet.count} images) holds fewer than two batches of ${recipe.batchSize}`);
  const probeTest = head(testSet, Math.min(testSet.count, 2 * recipe.evalBatchSize));
  const configs = new Map<string, ConfigTiming>();
  const firstOf = new Map<string, SweepRun>();
  for (const r of plan.runs) if (!firstOf.has(r.config)) firstOf.set(r.config, r);
  for (const run of firstOf.values()) {
    const dir = mkdtempSync(path.join(tmpdir(), 'kshare-probe-'));
    const stamps: number[] = [];
    try {
      await train({
        recipe: { ...run.recipe, epochs: 1, trainPerClass: null, testPerClass: null },
        buildModel: () => buildFromConfig(run.modelConfig, run.classes),
        modelName: run.modelName,
        modelConfig: run.modelConfig,
        train: head(trainSet, steps * recipe.batchSize),
        test: probeTest,
        outDir: dir,
        device: plan.device,
        channelsLast: runChannelsLast(plan, run),
        log: () => {},
        onStep: () => {
          stamps.push(performance.now());
        },
      });
      const end = performance.now();
      const diffs = stamps
        .slice(1)
        .map((s, i) => (s - stamps[i]!) / 1000)
        .slice(1);
      const timing = {
        config: run.config,
        stepSeconds: median(diffs.length ? diffs : [(stamps[1]! - stamps[0]!) / 1000]),
        evalSecondsPerImage: (end - stamps[stamps.length - 1]!) / 1000 / probeTest.count,
        stepsTimed: diffs.length,
      };
      configs.set(run.config, timing);
      log(
        `probe ${run.config}: ${(1000 * timing.stepSeconds).toFixed(0)} ms per step of ${recipe.batchSize} (median of ${timing.stepsTimed}), ` +
          `evaluation ${(1e3 * timing.evalSecondsPerImage * recipe.evalBatchSize).toFixed(0)} ms per ${recipe.evalBatchSize} images`,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const runSeconds = new Map<string, number>();
  for (const r of plan.runs) {
    const c = configs.get(r.config)!;
    const epoch = itersPerEpoch * c.stepSeconds + testSet.count * c.evalSecondsPerImage;
    runSeconds.set(r.id, r.recipe.epochs * epoch + dataSeconds + startupSeconds);
  }
  return { configs, dataSeconds, startupSeconds, trainImages: trainSet.count, testImages: testSet.count, itersPerEpoch, runSeconds };
}
