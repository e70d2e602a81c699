// `kshare eval`: test accuracy and parameter counts of a trained model.
import type { Command } from 'commander';
import { parseDevice, requireDevice } from '../device.js';
import * as t from '../../tensor/index.js';
import type { Module } from '../../nn/index.js';
import { loadWeights, loadModelConfigFile, modelRecipe, modelCpuMemoryFormat } from '../../models/index.js';
import { assertFinite, readCheckpoint, readCheckpointMeta, restoreModel } from '../../train/checkpoint.js';
import { loadRecipe, type Recipe } from '../../train/recipe.js';
import { countParameters } from '../../train/trainer.js';
import { evaluate } from '../../train/evaluate.js';
import { loadSplit } from '../../train/datasets.js';
import { toDevice, balancedSubset } from '../../data/tensors.js';
import { buildModel, positiveInt } from './train.js';
import { DEFAULT_MAX_IMAGE_PIXELS, setMaxImagePixels } from '../../data/image-header.js';

interface EvalCliOptions {
  checkpoint: string;
  dataset?: string;
  dataDir?: string;
  device: string;
  batchSize?: string;
  json?: boolean;
  model?: string;
  recipe?: string;
  threads?: string;
  testPerClass?: string;
  download?: boolean;
  config?: string[];
  allowChecksumMismatch?: boolean;
  maxImagePixels?: string;
}

export interface EvalReport {
  checkpoint: string;
  model: string;
  dataset: string;
  split: 'test';
  accuracy: number;
  correct: number;
  count: number;
  loss: number;
  trainableParams: number;
  unsharedParams: number;
  /** Epochs the checkpoint had completed (null for a plain weights file). */
  epoch: number | null;
  epochs: number | null;
}

export function register(program: Command): void {
  program
    .command('eval')
    .description('evaluate a checkpoint (or a weights file with --model) on a test set: accuracy and parameter counts')
    .requiredOption('--checkpoint <file>', 'a training checkpoint (<run>/checkpoint.safetensors) or a weights .safetensors file')
    .option('--dataset <spec>', 'cifar10, cifar100 or an image folder (default: the one the checkpoint was trained on)')
    .option('--data-dir <dir>', 'where datasets are looked for')
    .option('--device <device>', 'cpu, cuda or cuda:N', parseDevice, 'cpu')
    .option('--batch-size <n>', "evaluation batch size (default: the recipe's)")
    .option('--json', 'print one JSON object')
    .option('--model <name>', 'model of a plain weights file')
    .option('--recipe <name|file>', 'recipe whose normalisation a plain weights file was trained with')
    .option('--threads <n>', 'CPU threads for libtorch')
    .option('--test-per-class <n>', 'only the first n test images of each class')
    .option('--download', 'download the official dataset when it is not found locally')
    .option('--config <file...>', 'JSON model config file(s) to register first')
    .option('--allow-checksum-mismatch', 'use a dataset archive whose SHA-256 differs from the published one')
    .option('--max-image-pixels <n>', `refuse image files with more pixels than this before decoding them (default ${DEFAULT_MAX_IMAGE_PIXELS})`)
    .action(async (o: EvalCliOptions) => {
      requireDevice(o.device);
      for (const f of o.config ?? []) loadModelConfigFile(f);
      if (o.threads !== undefined) t.setNumThreads(positiveInt('--threads', o.threads));
      if (o.maxImagePixels !== undefined) setMaxImagePixels(positiveInt('--max-image-pixels', o.maxImagePixels));
      const log = o.json ? () => {} : (l: string) => console.log(l);
      let recipe: Recipe;
      let modelName: string;
      let spec: string | undefined = o.dataset;
      let restore: (m: Module) => void;
      let epoch: number | null = null,
        epochs: number | null = null;
      let classNames: string[] | null = null;
      let stored: unknown = null;
      let isCheckpoint = true;
      try {
        // Metadata only for now: the tensors are loaded once the model is built.
        const ck = readCheckpointMeta(o.checkpoint);
        recipe = ck.meta.recipe;
        modelName = ck.meta.modelName;
        stored = ck.meta.modelConfig;
        spec ??= ck.meta.datasetSpec ?? undefined;
        epoch = ck.meta.epoch;
        epochs = ck.meta.recipe.epochs;
        classNames = ck.meta.classes;
        restore = (m) => {
          const loaded = readCheckpoint(o.checkpoint);
          try {
            restoreModel(m, loaded);
          } finally {
            loaded.dispose();
          }
        };
      } catch (e) {
        if (!/not a kshare training checkpoint/.test((e as Error).message)) throw e;
        isCheckpoint = false;
        if (!o.model) throw new Error(`${o.checkpoint} is a weights file, not a training checkpoint: give --model (and --recipe for its normalisation)`);
        modelName = o.model;
        recipe = loadRecipe(o.recipe ?? modelRecipe(modelName));
        restore = (m) => {
          loadWeights(m, o.checkpoint);
          assertFinite(o.checkpoint, new Map(m.stateDict()));
        };
      }
      if (!spec) throw new Error('--dataset is required (the checkpoint does not record its dataset)');
      const test = await loadSplit(spec, 'test', {
        dataDir: o.dataDir,
        download: o.download,
        log,
        progress: !o.json && !!process.stderr.isTTY,
        allowChecksumMismatch: o.allowChecksumMismatch,
      });
      if (classNames && classNames.join('\n') !== test.classes.join('\n')) {
        throw new Error(
          `${o.checkpoint} was trained on ${classNames.length} classes (${classNames.slice(0, 3).join(', ')}...), ${spec} has ${test.classes.length} (${test.classes.slice(0, 3).join(', ')}...)`,
        );
      }
      const model = buildModel(modelName, test.classes.length, stored)();
      const ds = toDevice(o.testPerClass ? balancedSubset(test, positiveInt('--test-per-class', o.testPerClass)) : test, o.device);
      try {
        restore(model);
        // On CPU, the architecture's memory format (src/models/spec.ts): NCHW for ConvMixer
        // (kshare's kernels), channels_last elsewhere (oneDNN's convolutions without reorders).
        const channelsLast = o.device === 'cpu' && modelCpuMemoryFormat(modelName, stored) === 'channels_last';
        model.to({ device: o.device, memoryFormat: channelsLast ? 'channels_last' : 'contiguous' });
        const counts = countParameters(model);
        const batchSize = o.batchSize ? positiveInt('--batch-size', o.batchSize) : recipe.evalBatchSize;
        const r = evaluate(model, ds, { batchSize, mean: recipe.augment.mean, std: recipe.augment.std, amp: recipe.amp, channelsLast });
        if (!Number.isFinite(r.loss))
          throw new Error(`${o.checkpoint}: the model's outputs on ${ds.name} are not finite (loss ${r.loss}); its weights are broken`);
        const report: EvalReport = {
          checkpoint: o.checkpoint,
          model: modelName,
          dataset: ds.name,
          split: 'test',
          accuracy: r.accuracy,
          correct: r.correct,
          count: r.count,
          loss: r.loss,
          trainableParams: counts.trainable,
          unsharedParams: counts.unshared,
          epoch,
          epochs,
        };
        if (o.json) {
          console.log(JSON.stringify(report));
          return;
        }
        console.log(
          `${modelName}${isCheckpoint ? ` (epoch ${epoch}/${epochs})` : ''} on ${ds.name} test: accuracy ${(100 * r.accuracy).toFixed(2)}% (${r.correct}/${r.count}), loss ${r.loss.toFixed(4)}`,
        );
        console.log(
          `parameters: ${counts.trainable.toLocaleString('en-US')} trainable (${counts.unshared.toLocaleString('en-US')} without kernel sharing, ${(counts.unshared / counts.trainable).toFixed(2)}x)`,
        );
      } finally {
        ds.dispose();
        model.dispose();
      }
    });
}
