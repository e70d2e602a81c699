// Test-set evaluation: normalise, forward in eval mode without autograd, count top-1 hits.
import * as t from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import { sequentialBatch, type DeviceDataset } from '../data/tensors.js';
import { normalize } from './augment/pipeline.js';

export interface EvalOptions {
  batchSize: number;
  mean: number[];
  std: number[];
  /** float16 autocast (CUDA only). */
  amp?: boolean;
  /** Feed channels_last inputs (for a model converted to channels_last). */
  channelsLast?: boolean;
  /** Called after each batch with the images done so far (progress lines). */
  onProgress?: (done: number, total: number) => void;
}

export interface EvalResult {
  accuracy: number;
  loss: number;
  correct: number;
  count: number;
}

export function evaluate(model: Module, ds: DeviceDataset, o: EvalOptions): EvalResult {
  const wasTraining = model.training;
  model.eval();
  const useAmp = !!o.amp && ds.images.device.startsWith('cuda');
  // Hits and loss sums stay on the device until the end: one read per evaluation, not two per batch.
  const sums = t.zeros([2], { dtype: 'float64', device: ds.images.device });
  let correct = 0;
  let lossSum = 0;
  try {
    const batches = Math.ceil(ds.count / o.batchSize);
    for (let b = 0; b < batches; b++) {
      t.noGrad(() =>
        t.tidy(() => {
          const { images, labels } = sequentialBatch(ds, b, o.batchSize);
          const normalized = normalize(images, o.mean, o.std);
          const x = o.channelsLast ? normalized.contiguous('channels_last') : normalized;
          const logits = t.autocast({ device: 'cuda', dtype: 'float16', enabled: useAmp }, () => model.forward(x)).to('float32');
          t.add_(t.select(sums, 0, 0), t.sum(t.eq(t.argmax(logits, 1), labels)));
          t.add_(t.select(sums, 0, 1), t.crossEntropy(logits, labels, { reduction: 'sum' }));
        }),
      );
      o.onProgress?.(Math.min((b + 1) * o.batchSize, ds.count), ds.count);
    }
    [correct, lossSum] = sums.toArray() as [number, number];
  } finally {
    sums.dispose();
    model.train(wasTraining);
  }
  return { accuracy: correct / ds.count, loss: lossSum / ds.count, correct, count: ds.count };
}
