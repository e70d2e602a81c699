// The small training run the resume and step-logging tests share: the full ConvMixer recipe
// (RandAugment, erasing, Mixup/CutMix, AdamW, cosine, clipping) at 2 epochs of 6 steps (batch 32
// on 200 synthetic images, 60 test images), a tiny shared ConvMixer, and run folders under one
// scratch folder.
import path from 'node:path';
import { createModel } from '../../src/models/index.js';
import { train, type TrainOptions, type TrainSummary } from '../../src/train/trainer.js';
import { loadRecipe, applyOverrides, parseOverride, type Recipe } from '../../src/train/recipe.js';
import { syntheticDataset } from './train-fixtures.js';
import { scratchDir } from './scratch-dir.js';

export const SMALL_RUN_MODEL = 'convmixer_16_2_k3_p4_shared';

export interface SmallRun {
  recipe: Recipe;
  /** The scratch folder the runs write under. */
  root: string;
  /** Options for `train` writing to root/out; `extra` overrides any of them. */
  options(out: string, extra?: Partial<TrainOptions>): TrainOptions;
  /** Trains into root/out and stops it (as Ctrl-C does) after step `step` of epoch `epoch`. */
  interruptAt(out: string, epoch: number, step: number, extra?: Partial<TrainOptions>): Promise<TrainSummary>;
}

export function smallRun(name: string, seed: number, defaults: Partial<TrainOptions> = {}): SmallRun {
  const recipe = applyOverrides(loadRecipe('convmixer'), ['epochs=2', 'batchSize=32', 'evalBatchSize=64', `seed=${seed}`].map(parseOverride));
  const trainSet = syntheticDataset({ count: 200 });
  const testSet = syntheticDataset({ count: 60, seed: 5, split: 'test' });
  const root = scratchDir(name);
  const options = (out: string, extra: Partial<TrainOptions> = {}): TrainOptions => ({
    recipe,
    buildModel: () => createModel(SMALL_RUN_MODEL, { classes: 10 }),
    modelName: SMALL_RUN_MODEL,
    train: trainSet,
    test: testSet,
    outDir: path.join(root, out),
    log: () => {},
    ...defaults,
    ...extra,
  });
  const interruptAt = (out: string, epoch: number, step: number, extra: Partial<TrainOptions> = {}) => {
    const ctrl = new AbortController();
    return train(
      options(out, {
        ...extra,
        stop: ctrl.signal,
        onStep: (s) => {
          if (s.epoch === epoch && s.step === step) ctrl.abort();
        },
      }),
    );
  };
  return { recipe, root, options, interruptAt };
}
