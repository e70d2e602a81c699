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
  let correct = 0;
  let lossSum = 0;
  try {
    const batches = Math.ceil(ds.count / o.batchSize);
    for (let b = 0; b < batches; b++) {
      const [hits, loss] = t.noGrad(() => t.tidy(() => {
        const { images, labels } = sequentialBatch(ds, b, o.batchSize);
        const normalized = normalize(images, o.mean, o.std);
        const x = o.channelsLast ? normalized.contiguous('channels_last') : normalized;
        const logits = t.autocast({ device: 'cuda', dtype: 'float16', enabled: useAmp }, () => model.forward(x)).to('float32');
        const l = t.crossEntropy(logits, labels, { reduction: 'sum' });
        const c = t.sum(t.eq(t.argmax(logits, 1), labels));
        return [c.item(), l.item()];
      }));
      correct += hits;
      lossSum += loss;
    }
  } finally {
    model.train(wasTraining);
  }
  return { accuracy: correct / ds.count, loss: lossSum / ds.count, correct, count: ds.count };
}
