// `kshare demo`: the main job. Trains a small shared ConvMixer on CIFAR-10 for a few minutes
// on a CPU and prints test accuracy, trainable parameters and the count without sharing.
import type { Command } from 'commander';
import { parseDevice, requireDevice } from '../device.js';
import path from 'node:path';
import * as t from '../../tensor/index.js';
import { modelConfig } from '../../models/index.js';
import { loadRecipe } from '../../train/recipe.js';
import { train } from '../../train/trainer.js';
import { loadSplits } from '../../train/datasets.js';
import { formatDuration } from '../../train/run-log.js';
import { buildModel, positiveInt, recipeFromFlags, stopOnInterrupt, reportInterrupted, resumeCommand } from './train.js';

interface DemoOptions {
  out?: string;
  dataDir?: string;
  device: string;
  threads?: string;
  epochs?: string;
  trainPerClass?: string;
  testPerClass?: string;
  model?: string;
  download: boolean;
  progress: boolean;
  channelsLast?: boolean;
}

export function register(program: Command): void {
  program
    .command('demo')
    .description('train a small shared ConvMixer on CIFAR-10 for a few minutes (CPU) and print accuracy and parameter counts')
    .option('--out <dir>', 'run folder (default runs/demo-<date>-<time>)')
    .option('--data-dir <dir>', 'where CIFAR-10 is looked for / extracted (default ./data, then ../shared/data)')
    .option('--device <device>', 'cpu, cuda or cuda:N', parseDevice, 'cpu')
    .option('--threads <n>', "CPU threads for libtorch (default: libtorch's own choice)")
    .option('--epochs <n>', "override the demo recipe's epochs")
    .option('--train-per-class <n>', "training images per class (default: the demo recipe's)")
    .option('--test-per-class <n>', 'test images per class (default: all 1,000)')
    .option('--model <name>', "another model (default: the demo recipe's)")
    .option('--no-download', 'never download CIFAR-10 (fail when it is not found locally)')
    .option('--no-progress', 'no progress bars')
    // NCHW by default: with kshare's NCHW depthwise plane kernel the demo trained 8-14 % faster
    // than in channels_last (alternating A/B, 2026-12-02: 1,508-1,529 against 1,324-1,404 img/s
    // at 1 thread; 1,373-1,464 against 1,258-1,353 at 2), at the same 54.06 %.
    .option('--channels-last', 'model and input in channels_last (the CPU default before 2026-12-02)')
    .action(async (o: DemoOptions) => {
      requireDevice(o.device);
      const start = performance.now();
      const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
      const out = o.out ?? path.join('runs', `demo-${stamp}`);
      if (o.threads !== undefined) t.setNumThreads(positiveInt('--threads', o.threads));
      const log = (l: string) => console.log(l);
      const recipe = recipeFromFlags(loadRecipe('demo'), { epochs: o.epochs, trainPerClass: o.trainPerClass, testPerClass: o.testPerClass, set: [] });
      const modelName = o.model ?? recipe.model;
      const progress = o.progress && !!process.stderr.isTTY;
      const data = await loadSplits('cifar10', { dataDir: o.dataDir, download: o.download, log, progress, progressLines: o.progress && !process.stdout.isTTY });
      const dataSeconds = (performance.now() - start) / 1000;
      let config: unknown = null;
      try {
        config = modelConfig(modelName);
      } catch {
        /* createModel reports unknown names */
      }
      const stop = stopOnInterrupt(log);
      try {
        const s = await train({
          recipe,
          buildModel: buildModel(modelName, data.train.classes.length),
          modelName,
          modelConfig: config,
          train: data.train,
          test: data.test,
          datasetSpec: 'cifar10',
          outDir: out,
          device: o.device,
          channelsLast: !!o.channelsLast,
          progress,
          progressLines: o.progress && !process.stdout.isTTY,
          log,
          stop: stop.signal,
        });
        if (s.status === 'interrupted') {
          reportInterrupted(s, resumeCommand({ out, dataDir: o.dataDir, device: o.device, channelsLast: !!o.channelsLast }), log);
          return;
        }
        const wall = (performance.now() - start) / 1000;
        const info = t.runtimeInfo();
        console.log('');
        console.log(
          `Demo ${s.status === 'completed' ? 'result' : `(${s.status})`} on ${s.dataset}: test accuracy ${(100 * s.finalAcc).toFixed(2)}% on ${s.testImages.toLocaleString('en-US')} test images ` +
            `(best ${(100 * s.bestAcc).toFixed(2)}%) after ${s.epochsDone} epoch(s) on ${s.trainImages.toLocaleString('en-US')} training images`,
        );
        console.log(
          `Model ${s.model}: ${s.trainableParams.toLocaleString('en-US')} trainable parameters; ${s.unsharedParams.toLocaleString('en-US')} without kernel sharing (${(s.unsharedParams / s.trainableParams).toFixed(2)}x more)`,
        );
        console.log(
          `Wall time ${formatDuration(wall)} (data ${formatDuration(dataSeconds)}, training and evaluation ${formatDuration(s.seconds)}, ${s.imgPerSec.toFixed(0)} training img/s) on ${o.device}, ${info.numThreads} thread(s)`,
        );
        console.log(
          `Run folder ${out} (log.jsonl, steps.jsonl, summary.json, checkpoint.safetensors): \`kshare report ${out}\` draws it, \`kshare eval --checkpoint ${path.join(out, 'checkpoint.safetensors')}\` re-evaluates it.`,
        );
      } finally {
        stop.release();
      }
    });
}
