// CPU training throughput of the demo model and, in the same run, of the data pipeline alone
// (the ConvMixer recipe's full augmentation and the demo's crop + flip), in images per second.
// Writes bench/results/train-throughput.json.
//
//   node dist/bench/train-throughput.js [--threads N] [--steps N] [--out file]
import { writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as t from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { loadRecipe, type Recipe } from '../src/train/recipe.js';
import { TrainAugment } from '../src/train/augment/pipeline.js';
import { buildOptimizer } from '../src/train/build-optimizer.js';
import { clipGradNorm } from '../src/train/optim/index.js';
import { toDevice, epochOrder, takeBatch } from '../src/data/tensors.js';
import type { ImageDataset } from '../src/data/types.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const threads = Number(arg('threads', String(t.runtimeInfo().numThreads)));
const steps = Number(arg('steps', '12'));
const here = path.dirname(fileURLToPath(import.meta.url));
const outFile = path.resolve(arg('out', path.resolve(here, '../../bench/results/train-throughput.json')));
t.setNumThreads(threads);

/** Random uint8 images: throughput does not depend on content (RandAugment's work is per image). */
function randomImages(count: number): ImageDataset {
  const g = new t.Generator(1);
  const images = t.tidy(() => t.randint(0, 256, [count, 3, 32, 32], { dtype: 'uint8', generator: g }).dataSync() as Uint8Array);
  const labels = Int32Array.from({ length: count }, (_, i) => i % 10);
  return {
    name: 'random uint8 images',
    split: 'train',
    images,
    labels,
    classes: Array.from({ length: 10 }, (_, i) => `c${i}`),
    count,
    channels: 3,
    height: 32,
    width: 32,
  };
}

interface Timing {
  imgPerSec: number;
  msPerBatch: number;
  batches: number;
}

function timeLoop(batches: number, batchSize: number, step: (b: number) => void): Timing {
  step(0); // warm-up (allocations, operator lookup)
  const t0 = performance.now();
  for (let b = 1; b <= batches; b++) step(b);
  const ms = (performance.now() - t0) / batches;
  return { imgPerSec: (1000 * batchSize) / ms, msPerBatch: ms, batches };
}

const data = toDevice(randomImages(128 * (steps + 2)), 'cpu');
const order = t.keep(epochOrder(data.count, new t.Generator(2)));

function pipelineOnly(recipe: Recipe): Timing {
  const aug = new TrainAugment(recipe.augment, 10, new t.Generator(3), new t.Generator(4));
  return timeLoop(steps, recipe.batchSize, (b) =>
    t.tidy(() => {
      const { images, labels } = takeBatch(data, order, b, recipe.batchSize);
      aug.apply(images, labels);
    }),
  );
}

function training(recipe: Recipe, modelName: string, channelsLast: boolean): Timing & { model: string; params: number } {
  t.manualSeed(0);
  const model = createModel(modelName, { classes: 10 });
  model.to({ memoryFormat: channelsLast ? 'channels_last' : 'contiguous' }).train();
  const opt = buildOptimizer(model, recipe.optimizer);
  const params = opt.groups.flatMap((g) => g.params);
  const aug = new TrainAugment(recipe.augment, 10, new t.Generator(3), new t.Generator(4));
  try {
    const timing = timeLoop(steps, recipe.batchSize, (b) =>
      t.tidy(() => {
        const { images, labels } = takeBatch(data, order, b, recipe.batchSize);
        const { x, target } = aug.apply(images, labels);
        const loss = t.crossEntropy(model.forward(channelsLast ? x.contiguous('channels_last') : x), target);
        loss.backward();
        if (recipe.clipGradNorm) clipGradNorm(params, recipe.clipGradNorm);
        opt.step();
        opt.zeroGrad();
        loss.item();
      }),
    );
    return { ...timing, model: modelName, params: model.numParameters() };
  } finally {
    opt.dispose();
    model.dispose();
  }
}

const demo = loadRecipe('demo');
const convmixer = { ...loadRecipe('convmixer'), batchSize: demo.batchSize };
const loadBefore = os.loadavg();
const pipelineFull = pipelineOnly(convmixer);
const pipelineDemo = pipelineOnly(demo);
const trainDemo = training(demo, demo.model, true);
const trainFullAug = training(convmixer, demo.model, true);
const loadAfter = os.loadavg();

const result = {
  benchmark: 'train-throughput',
  date: new Date().toISOString(),
  machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '?', loadAverage1mBefore: loadBefore[0], loadAverage1mAfter: loadAfter[0] },
  libtorch: t.runtimeInfo().torchVersion,
  threads: t.runtimeInfo().numThreads,
  batchSize: demo.batchSize,
  data: 'random uint8 3x32x32 images held as a device tensor; batches index_select-ed from it, as in training',
  pipeline: {
    convmixerRecipe: {
      what: 'crop 32 pad 4 + flip + RandAugment rand-m9-mstd0.5-inc1 + normalise + random erasing 0.25 + Mixup/CutMix with smoothing',
      ...pipelineFull,
    },
    demoRecipe: { what: 'crop 32 pad 4 + flip + normalise', ...pipelineDemo },
  },
  training: {
    demo: { what: `${trainDemo.model} (${trainDemo.params} trainable params), channels_last, AdamW + clip 1.0, demo pipeline included`, ...trainDemo },
    demoModelConvmixerPipeline: { what: `${trainFullAug.model}, channels_last, AdamW + clip 1.0, full ConvMixer pipeline included`, ...trainFullAug },
  },
  pipelineFasterThanTraining: pipelineFull.imgPerSec > trainFullAug.imgPerSec && pipelineDemo.imgPerSec > trainDemo.imgPerSec,
};
mkdirSync(path.dirname(outFile), { recursive: true });
writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');
console.log(`pipeline alone: ConvMixer recipe ${pipelineFull.imgPerSec.toFixed(0)} img/s, demo recipe ${pipelineDemo.imgPerSec.toFixed(0)} img/s`);
console.log(
  `training ${trainDemo.model}: ${trainDemo.imgPerSec.toFixed(0)} img/s with the demo pipeline, ${trainFullAug.imgPerSec.toFixed(0)} img/s with the ConvMixer pipeline (${threads} threads, load ${loadBefore[0]!.toFixed(2)} → ${loadAfter[0]!.toFixed(2)})`,
);
console.log(`wrote ${outFile}`);
order.dispose();
data.dispose();
