// The model workloads the CPU benchmarks time, on fixed random CIFAR-sized data (batch 32 and 10
// classes by default, NCHW unless channelsLast): a training step (cross-entropy, backward, AdamW
// with lr 1e-3 and weight decay 0.05, zeroGrad) and an inference forward (eval mode, no grad).
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import type { Module } from '../src/nn/index.js';
import { createModel } from '../src/models/registry.js';
import { AdamW } from '../src/train/optim/index.js';

export interface ModelWorkload {
  run: () => void;
  dispose: () => void;
}

export interface WorkloadOptions {
  batch?: number;
  classes?: number;
  channelsLast?: boolean;
}

function setUp(name: string, o: WorkloadOptions): { model: Module; x: Tensor; y: Tensor } {
  const batch = o.batch ?? 32,
    classes = o.classes ?? 10;
  const model = createModel(name, { classes });
  const gen = new t.Generator(1);
  let x = t.randn([batch, 3, 32, 32], { generator: gen });
  const y = t.randint(0, classes, [batch], { generator: gen });
  if (o.channelsLast) {
    model.to({ device: 'cpu', memoryFormat: 'channels_last' });
    const cl = t.contiguous(x, 'channels_last');
    x.dispose();
    x = cl;
  }
  return { model, x, y };
}

export function trainingStep(name: string, o: WorkloadOptions = {}): ModelWorkload {
  const { model, x, y } = setUp(name, o);
  const opt = new AdamW(model.parameters(), { lr: 1e-3, weightDecay: 0.05 });
  model.train(true);
  return {
    run: () => {
      t.tidy(() => t.crossEntropy(model.forward(x), y).backward());
      opt.step();
      opt.zeroGrad();
    },
    dispose: () => {
      opt.dispose();
      model.dispose();
      t.dispose([x, y]);
    },
  };
}

export function inference(name: string, o: WorkloadOptions = {}): ModelWorkload {
  const { model, x, y } = setUp(name, o);
  model.train(false);
  return {
    run: () => t.noGrad(() => t.tidy(() => void model.forward(x))),
    dispose: () => {
      model.dispose();
      t.dispose([x, y]);
    },
  };
}
