// Learning-rate schedules against their formulas and against PyTorch's MultiStepLR.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { learningRate, validateSchedule, type ScheduleConfig } from '../src/train/schedule.js';
import { runPython } from './helpers/python.js';

const close = (a: number, b: number, tol = 1e-12) => assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${a} != ${b}`);

test('ConvMixer cosine: per iteration from 1e-2 to 1e-6 over 200 x 390 steps, no warm-up', () => {
  const s: ScheduleConfig = { type: 'cosine', minLr: 1e-6, warmupEpochs: 0 };
  const ctx = { baseLr: 1e-2, epochs: 200, itersPerEpoch: 390 };
  const T = 200 * 390;
  const formula = (it: number) => 1e-6 + 0.5 * (1e-2 - 1e-6) * (1 + Math.cos((Math.PI * it) / T));
  close(learningRate(s, ctx, 0), 1e-2);
  close(learningRate(s, ctx, T / 2), (1e-2 + 1e-6) / 2);
  for (const it of [1, 389, 390, 12345, 50000, T - 1]) close(learningRate(s, ctx, it), formula(it));
  // Strictly decreasing, and it changes within an epoch (per-iteration, not per-epoch).
  assert.ok(learningRate(s, ctx, 1) < learningRate(s, ctx, 0));
  let prev = Infinity;
  for (let it = 0; it < T; it += 997) {
    const lr = learningRate(s, ctx, it);
    assert.ok(lr < prev);
    prev = lr;
  }
  assert.ok(learningRate(s, ctx, T - 1) > 1e-6 && learningRate(s, ctx, T - 1) < 1.0001e-6);
});

test('cosine with warm-up: np.linspace(start, base, warmup) then cosine over the rest', () => {
  const s: ScheduleConfig = { type: 'cosine', minLr: 0, warmupEpochs: 2, warmupStartLr: 1e-4 };
  const ctx = { baseLr: 0.1, epochs: 10, itersPerEpoch: 5 };
  const warm = 10;
  close(learningRate(s, ctx, 0), 1e-4);
  close(learningRate(s, ctx, warm - 1), 0.1);
  close(learningRate(s, ctx, 4), 1e-4 + ((0.1 - 1e-4) * 4) / (warm - 1));
  const rest = 50 - warm;
  for (const i of [0, 7, 20, rest - 1]) close(learningRate(s, ctx, warm + i), 0.5 * 0.1 * (1 + Math.cos((Math.PI * i) / rest)));
  // warmupSteps overrides warmupEpochs.
  close(learningRate({ ...s, warmupSteps: 3 }, ctx, 2), 0.1);
});

test('SE-ResNet multistep: x0.1 at epochs 85, 130 and 180, the same as torch MultiStepLR', () => {
  const s: ScheduleConfig = { type: 'multistep', milestones: [85, 130, 180], gamma: 0.1 };
  const ctx = { baseLr: 0.1, epochs: 256, itersPerEpoch: 390 };
  const atEpoch = (e: number) => learningRate(s, ctx, e * 390 + 17);
  close(atEpoch(0), 0.1);
  close(atEpoch(84), 0.1);
  close(atEpoch(85), 0.01);
  close(learningRate(s, ctx, 85 * 390 - 1), 0.1);
  close(learningRate(s, ctx, 85 * 390), 0.01);
  close(atEpoch(130), 0.001);
  close(atEpoch(180), 0.0001);
  close(atEpoch(255), 0.0001);
  // PyTorch: the trainer calls scheduler.step() after each epoch (Cifar.py).
  const ref = runPython<{ lrs: number[] }>(`
opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
sch = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[85, 130, 180], gamma=0.1)
lrs = []
for e in range(256):
    lrs.append(opt.param_groups[0]['lr'])
    opt.step()
    sch.step()
print(json.dumps({'lrs': lrs}))
`);
  assert.equal(ref.lrs.length, 256);
  ref.lrs.forEach((lr, e) => close(atEpoch(e), lr, 1e-9));
});

test('constant schedule and validation errors name the field', () => {
  close(learningRate({ type: 'constant' }, { baseLr: 0.3, epochs: 1, itersPerEpoch: 1 }, 99), 0.3);
  assert.throws(() => validateSchedule({ type: 'multistep', milestones: [1.5], gamma: 0.1 }, 'r'), /schedule.milestones/);
  assert.throws(() => validateSchedule({ type: 'multistep', milestones: [1], gamma: -1 }, 'r'), /schedule.gamma/);
  assert.throws(() => validateSchedule({ type: 'cosine', minLr: -1, warmupEpochs: 0 }, 'r'), /schedule.minLr/);
  assert.throws(() => validateSchedule({ type: 'linear' } as unknown as ScheduleConfig, 'r'), /schedule.type/);
});
