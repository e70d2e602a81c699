// The training step the CPU benchmarks time: a registry model on fixed random CIFAR-sized data
// (batch 32 by default), cross-entropy, backward, AdamW (lr 1e-3, weight decay 0.05), zeroGrad.
import * as t from '../src/tensor/index.js';
import { createModel } from '../src/models/registry.js';
import { AdamW } from '../src/train/optim/index.js';

export interface TrainingStep {
  step: () => void;
  dispose: () => void;
}

export function trainingStep(model: string, o: { batch?: number; classes?: number } = {}): TrainingStep {
  const batch = o.batch ?? 32,
    classes = o.classes ?? 10;
  const m = createModel(model, { classes });
  const gen = new t.Generator(1);
  const x = t.randn([batch, 3, 32, 32], { generator: gen }),
    y = t.randint(0, classes, [batch], { generator: gen });
  const opt = new AdamW(m.parameters(), { lr: 1e-3, weightDecay: 0.05 });
  m.train(true);
  return {
    step: () => {
      t.tidy(() => t.crossEntropy(m.forward(x), y).backward());
      opt.step();
      opt.zeroGrad();
    },
    dispose: () => {
      opt.dispose();
      m.dispose();
      t.dispose([x, y]);
    },
  };
}
