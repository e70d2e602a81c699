// `kshare train`: trains a model with a recipe; every recipe field can be overridden.
import type { Command } from 'commander';
import { parseDevice, requireDevice } from '../device.js';
import path from 'node:path';
import * as t from '../../tensor/index.js';
import { createModel, modelConfig, loadModelConfigFile, buildFromConfig, trainsChannelsLast, type ModelConfig } from '../../models/index.js';
import { loadRecipe, applyOverrides, parseOverride, listRecipes, type Recipe } from '../../train/recipe.js';
import { readCheckpointMeta } from '../../train/checkpoint.js';
import { train, checkExtension, type TrainOptions, type TrainSummary } from '../../train/trainer.js';
import { loadSplits } from '../../train/datasets.js';
import { CHECKPOINT_FILE } from '../../train/run-log.js';
import { DEFAULT_MAX_IMAGE_PIXELS, setMaxImagePixels } from '../../data/image-header.js';
import { distributedEnv } from '../../distributed/env.js';
import { checkResumeWorldSize } from '../../distributed/trainer-hooks.js';
import { runDistributedWorker, launchFromCli } from '../../distributed/cli.js';

export interface TrainCliOptions {
  recipe?: string;
  model?: string;
  dataset?: string;
  dataDir?: string;
  out: string;
  epochs?: string;
  batchSize?: string;
  lr?: string;
  seed?: string;
  device: string;
  amp?: boolean;
  resume?: string | boolean;
  set: string[];
  threads?: string;
  download?: boolean;
  stopAfterEpochs?: string;
  trainPerClass?: string;
  testPerClass?: string;
  progress: boolean;
  config?: string[];
  channelsLast?: boolean;
  allowChecksumMismatch?: boolean;
  maxImagePixels?: string;
  nproc?: string;
  distTimeout?: string;
  bucketCapMb?: string;
}

export function positiveInt(flag: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a positive integer, got '${v}'`);
  return n;
}

export function positiveNumber(flag: string, v: string): number {
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new Error(`${flag} must be a positive number, got '${v}'`);
  return n;
}

/** The recipe after the command line's shorthand flags and --set overrides. */
export function recipeFromFlags(
  base: Recipe,
  o: Pick<TrainCliOptions, 'epochs' | 'batchSize' | 'lr' | 'seed' | 'amp' | 'set' | 'trainPerClass' | 'testPerClass'>,
): Recipe {
  const overrides: [string[], unknown][] = [];
  if (o.epochs !== undefined) overrides.push([['epochs'], positiveInt('--epochs', o.epochs)]);
  if (o.batchSize !== undefined) overrides.push([['batchSize'], positiveInt('--batch-size', o.batchSize)]);
  if (o.lr !== undefined) overrides.push([['optimizer', 'lr'], positiveNumber('--lr', o.lr)]);
  if (o.seed !== undefined) {
    const s = Number(o.seed);
    if (!Number.isInteger(s) || s < 0) throw new Error(`--seed must be a non-negative integer, got '${o.seed}'`);
    overrides.push([['seed'], s]);
  }
  if (o.amp !== undefined) overrides.push([['amp'], o.amp]);
  if (o.trainPerClass !== undefined) overrides.push([['trainPerClass'], positiveInt('--train-per-class', o.trainPerClass)]);
  if (o.testPerClass !== undefined) overrides.push([['testPerClass'], positiveInt('--test-per-class', o.testPerClass)]);
  for (const s of o.set) overrides.push(parseOverride(s));
  return overrides.length ? applyOverrides(base, overrides) : base;
}

/** Dotted paths of the fields where two recipes differ. */
export function recipeDifferences(a: unknown, b: unknown, prefix = ''): string[] {
  if (a && b && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => recipeDifferences((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], prefix ? `${prefix}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [prefix || '(recipe)'];
}

/** A model by name, or from the config stored with a checkpoint when the name is not registered here. */
export function buildModel(name: string, classes: number, stored: unknown = null): () => ReturnType<typeof createModel> {
  let config: ModelConfig | null = null;
  try {
    config = modelConfig(name);
  } catch (e) {
    if (!stored) throw e;
    config = stored as ModelConfig;
  }
  return () => (config ? buildFromConfig(config, classes) : createModel(name, { classes }));
}

/** The command that continues a run folder (what an interrupted run tells the user). */
export function resumeCommand(o: {
  out: string;
  dataset?: string;
  dataDir?: string;
  device?: string;
  channelsLast?: boolean;
  maxImagePixels?: string;
  allowChecksumMismatch?: boolean;
}): string {
  const q = (v: string) => (/^[\w./:@=-]+$/.test(v) ? v : `'${v.replace(/'/g, `'\\''`)}'`);
  return [
    'kshare train --resume --out',
    q(o.out),
    ...(o.dataset ? ['--dataset', q(o.dataset)] : []),
    ...(o.dataDir ? ['--data-dir', q(o.dataDir)] : []),
    ...(o.device && o.device !== 'cpu' ? ['--device', q(o.device)] : []),
    ...(o.channelsLast ? ['--channels-last'] : o.channelsLast === false ? ['--no-channels-last'] : []),
    // The data is loaded again on resume: the flags that let it load the first time.
    ...(o.maxImagePixels !== undefined ? ['--max-image-pixels', q(o.maxImagePixels)] : []),
    ...(o.allowChecksumMismatch ? ['--allow-checksum-mismatch'] : []),
  ].join(' ');
}

/** The last line of an interrupted run; also sets the exit code Unix tools use after Ctrl-C (130). */
export function reportInterrupted(s: TrainSummary, resume: string, log: (l: string) => void): void {
  const at = s.interruptedAt;
  log(
    `interrupted ${at ? `in epoch ${at.epoch} at step ${at.step}/${at.steps}` : `after epoch ${s.epochsDone}`}; resume with: ${resume}` +
      (s.epochsDone ? ` (best test accuracy so far ${(100 * s.bestAcc).toFixed(2)}% after ${s.epochsDone}/${s.epochs} epochs)` : ''),
  );
  process.exitCode = 130;
}

/** Ctrl-C: the first asks the run to checkpoint and stop after the current step; the second quits. */
export function stopOnInterrupt(log: (l: string) => void): { signal: AbortSignal; release(): void } {
  const ctrl = new AbortController();
  const onInt = () => {
    if (ctrl.signal.aborted) {
      process.stderr.write('\nkshare: second Ctrl-C: quitting without waiting for the checkpoint\n');
      process.exit(130);
    }
    log('\nCtrl-C: finishing this step and writing a checkpoint (Ctrl-C again to quit at once)');
    ctrl.abort();
  };
  process.on('SIGINT', onInt);
  return { signal: ctrl.signal, release: () => process.off('SIGINT', onInt) };
}

export function register(program: Command): void {
  program
    .command('train')
    .description('train a model with a recipe (recipes/*.json); writes <out>/log.jsonl, summary.json and checkpoint.safetensors')
    .option('--recipe <name|file>', `recipe name (${listRecipes().join(', ') || 'see recipes/'}) or a .json file`)
    .option('--model <name>', "model name (see `kshare models`); default: the recipe's")
    .option('--dataset <spec>', "cifar10, cifar100, or an image folder <root>/{train,test}/<class>/* (default with --resume: the run's)")
    .option('--data-dir <dir>', 'where datasets are looked for and extracted (default ./data, then ../shared/data)')
    .requiredOption('--out <dir>', 'run folder for the log, summary and checkpoint')
    .option('--epochs <n>', "override the recipe's epochs")
    .option('--batch-size <n>', "override the recipe's batch size")
    .option('--lr <x>', "override the recipe's learning rate")
    .option('--seed <n>', "override the recipe's seed")
    .option('--device <device>', 'cpu, cuda or cuda:N', parseDevice, 'cpu')
    .option('--amp', "mixed precision on CUDA (default: the recipe's)")
    .option('--no-amp', 'no mixed precision')
    .option('--resume [checkpoint]', `continue a run exactly where it stopped (default <out>/${CHECKPOINT_FILE})`)
    .option(
      '--set <field=value>',
      'override any recipe field, e.g. --set optimizer.weightDecay=0.05 (repeatable)',
      (v: string, acc: string[]) => [...acc, v],
      [] as string[],
    )
    .option('--threads <n>', "CPU threads for libtorch (default: libtorch's own choice)")
    .option('--download', 'download the official dataset when it is not found locally')
    .option('--stop-after-epochs <n>', 'stop (with a checkpoint) after this many epochs; --resume continues')
    .option('--train-per-class <n>', 'use only the first n training images of each class')
    .option('--test-per-class <n>', 'use only the first n test images of each class')
    .option(
      '--channels-last',
      "channels_last memory format (default on CPU: the model's own, NCHW for ConvMixer, where kshare's fused kernels run, channels_last for the others: SE-ResNet d=2 trains x1.04-1.10 faster in it)",
    )
    .option('--no-channels-last', 'NCHW memory format whatever the model')
    .option('--allow-checksum-mismatch', 'use a dataset archive whose SHA-256 differs from the published one')
    .option('--max-image-pixels <n>', `refuse image files with more pixels than this before decoding them (default ${DEFAULT_MAX_IMAGE_PIXELS})`)
    .option('--no-progress', 'no progress bar')
    .option('--config <file...>', 'JSON model config file(s) to register first')
    .option(
      '--nproc <n>',
      "data-parallel: start n worker processes on this machine (the recipe's batch size is per process); without it, MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK make this process one member of a larger job (docs/distributed.md)",
    )
    .option('--dist-timeout <seconds>', 'data-parallel: a rendezvous or gradient exchange that takes longer fails, naming the rank at fault', '120')
    .option('--bucket-cap-mb <mb>', 'data-parallel: gradient bucket size (smaller buckets start communicating earlier during backward)', '25')
    .action(async (o: TrainCliOptions) => {
      requireDevice(o.device);
      if (o.nproc !== undefined) {
        process.exitCode = await launchFromCli(positiveInt('--nproc', o.nproc));
        return;
      }
      for (const f of o.config ?? []) loadModelConfigFile(f);
      if (o.threads !== undefined) t.setNumThreads(positiveInt('--threads', o.threads));
      if (o.maxImagePixels !== undefined) setMaxImagePixels(positiveInt('--max-image-pixels', o.maxImagePixels));
      const log = (l: string) => console.log(l);
      let recipe: Recipe;
      let modelName: string;
      let resume: string | null = null;
      let stored: unknown = null;
      let dataset = o.dataset;
      if (o.resume) {
        resume = typeof o.resume === 'string' ? o.resume : path.join(o.out, CHECKPOINT_FILE);
        // The metadata alone (header only): the trainer loads the tensors once, later.
        const ck = readCheckpointMeta(resume);
        const threads = t.runtimeInfo().numThreads;
        if (ck.meta.threads !== undefined && ck.meta.threads !== threads) {
          log(
            `warning: ${resume} was written with ${ck.meta.threads} CPU thread(s), this process uses ${threads}; the run continues, but not bit-exactly (pass --threads ${ck.meta.threads} for that)`,
          );
        }
        // A resumed run keeps its recipe and model; only its length may change. Flags that
        // repeat the run's own settings (as the run scripts do) are fine.
        const asked = recipeFromFlags(o.recipe ? loadRecipe(o.recipe) : ck.meta.recipe, o);
        const diff = recipeDifferences(ck.meta.recipe, asked).filter((f) => f !== 'epochs');
        if (diff.length) throw new Error(`--resume continues the run as it was, but the command line changes ${diff.join(', ')} (only --epochs may change)`);
        if (o.model && o.model !== ck.meta.modelName) throw new Error(`${resume} was trained as model '${ck.meta.modelName}', not '${o.model}'`);
        checkExtension(resume, ck.meta, asked.epochs);
        recipe = { ...ck.meta.recipe, epochs: asked.epochs };
        modelName = ck.meta.modelName;
        stored = ck.meta.modelConfig;
        dataset ??= ck.meta.datasetSpec ?? undefined;
        if (!dataset) throw new Error(`${resume} does not record its dataset: give --dataset`);
      } else {
        if (!dataset) throw new Error("required option '--dataset <spec>' not specified");
        if (!o.recipe) throw new Error(`--recipe is required (one of ${listRecipes().join(', ')}, or a .json file)`);
        recipe = recipeFromFlags(loadRecipe(o.recipe), o);
        modelName = o.model ?? recipe.model;
      }
      const progress = o.progress && !!process.stderr.isTTY;
      const { train: trainSet, test: testSet } = await loadSplits(dataset, {
        dataDir: o.dataDir,
        download: o.download,
        log,
        progress,
        progressLines: o.progress && !process.stdout.isTTY,
        allowChecksumMismatch: o.allowChecksumMismatch,
      });
      const classes = trainSet.classes.length;
      const build = buildModel(modelName, classes, stored);
      let config: unknown = stored;
      try {
        config = modelConfig(modelName) ?? stored;
      } catch {
        /* stored config or factory model */
      }
      const options: TrainOptions = {
        recipe,
        buildModel: build,
        modelName,
        modelConfig: config,
        train: trainSet,
        test: testSet,
        outDir: o.out,
        device: o.device,
        resume,
        progress,
        progressLines: o.progress && !process.stdout.isTTY,
        log,
        channelsLast: o.channelsLast ?? trainsChannelsLast(o.device, modelName, config),
        stopAfterEpochs: o.stopAfterEpochs === undefined ? undefined : positiveInt('--stop-after-epochs', o.stopAfterEpochs),
        datasetSpec: dataset,
      };
      const done = (s: TrainSummary) =>
        `${s.status}: ${s.model} on ${s.dataset}, best test accuracy ${(100 * s.bestAcc).toFixed(2)}% after ${s.epochsDone}/${s.epochs} epochs; ` +
        `${s.trainableParams.toLocaleString('en-US')} trainable parameters (${s.unsharedParams.toLocaleString('en-US')} without sharing); run folder ${o.out}`;
      // What `kshare train --resume` needs to continue an interrupted run (distributed or not).
      const resumeFlags = {
        out: o.out,
        dataDir: o.dataDir,
        device: o.device,
        channelsLast: o.channelsLast,
        maxImagePixels: o.maxImagePixels,
        allowChecksumMismatch: o.allowChecksumMismatch,
      };
      const denv = distributedEnv();
      if (denv) {
        const s = await runDistributedWorker(denv, options, {
          timeoutSeconds: positiveNumber('--dist-timeout', o.distTimeout ?? '120'),
          bucketCapMB: positiveNumber('--bucket-cap-mb', o.bucketCapMb ?? '25'),
        });
        if (s?.status === 'interrupted') {
          reportInterrupted(s, `${resumeCommand(resumeFlags)} with the same world size (--nproc ${denv.worldSize}, or the same launcher)`, log);
        } else if (s) log(done(s));
        return;
      }
      if (resume) checkResumeWorldSize(path.dirname(resume), 1);
      const stop = stopOnInterrupt(log);
      try {
        const s = await train({ ...options, stop: stop.signal });
        if (s.status === 'interrupted') {
          reportInterrupted(s, resumeCommand(resumeFlags), log);
          return;
        }
        log(done(s));
      } finally {
        stop.release();
      }
    });
}
