// The recipe files hold the original scripts' settings; overrides reach every field and are checked.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadRecipe, applyOverrides, parseOverride, listRecipes } from '../src/train/recipe.js';
import { buildOptimizer, isNoDecay } from '../src/train/build-optimizer.js';
import { createModel } from '../src/models/index.js';

test('convmixer.json is convmixer_cifar10_run.sh with the ConvNeXt/timm defaults', () => {
  const r = loadRecipe('convmixer');
  assert.equal(r.model, 'convmixer_256_16_shared');
  assert.deepEqual([r.epochs, r.batchSize, r.seed, r.amp, r.clipGradNorm], [200, 128, 0, true, 1]);
  assert.deepEqual(r.optimizer, { type: 'adamw', lr: 0.01, betas: [0.9, 0.999], eps: 0.001, weightDecay: 0.01, noDecayOnNormsAndBiases: true });
  assert.deepEqual(r.schedule, { type: 'cosine', minLr: 1e-6, warmupEpochs: 0, warmupStartLr: 0 });
  const a = r.augment;
  assert.deepEqual([a.crop, a.cropPadding, a.hflip, a.randAugment, a.labelSmoothing, a.cutout], [true, 4, 0.5, 'rand-m9-mstd0.5-inc1', 0.1, 0]);
  assert.deepEqual(a.mean, [0.485, 0.456, 0.406]);
  assert.deepEqual(a.std, [0.229, 0.224, 0.225]);
  assert.deepEqual(a.randomErasing, { prob: 0.25, minArea: 0.02, maxArea: 1 / 3, minAspect: 0.3, mode: 'pixel', count: 1 });
  assert.deepEqual(a.mixup, { mixupAlpha: 0.5, cutmixAlpha: 0.5, prob: 1, switchProb: 0.5, correctLam: true });
});

test('seresnet.json is seresnet_cifar10_run.sh with Cifar.py', () => {
  const r = loadRecipe('seresnet');
  assert.equal(r.model, 'se_resnet_d_2_full_shared');
  assert.deepEqual([r.epochs, r.batchSize, r.amp, r.clipGradNorm], [256, 128, false, null]);
  assert.deepEqual(r.optimizer, { type: 'sgd', lr: 0.1, momentum: 0.9, weightDecay: 1e-4, nesterov: false, dampening: 0 });
  assert.deepEqual(r.schedule, { type: 'multistep', milestones: [85, 130, 180], gamma: 0.1 });
  assert.deepEqual(r.augment.mean, [0.4914, 0.4822, 0.4465]);
  assert.deepEqual(r.augment.std, [0.2023, 0.1994, 0.201]);
  assert.deepEqual([r.augment.randAugment, r.augment.mixup, r.augment.randomErasing, r.augment.cutout, r.augment.labelSmoothing], [null, null, null, 0, 0]);
  assert.ok(listRecipes().includes('demo'));
});

test('overrides: any field by dotted path, values checked, unknown fields named', () => {
  const r = loadRecipe('convmixer');
  const o = applyOverrides(
    r,
    ['optimizer.weightDecay=0.05', 'augment.mixup=null', 'schedule.warmupEpochs=5', 'augment.randAugment="rand-m7-mstd0.5-inc1"'].map(parseOverride),
  );
  assert.equal(o.optimizer.weightDecay, 0.05);
  assert.equal(o.augment.mixup, null);
  assert.equal(o.augment.randAugment, 'rand-m7-mstd0.5-inc1');
  assert.equal(r.optimizer.weightDecay, 0.01, 'the original recipe is untouched');
  assert.throws(() => applyOverrides(r, [parseOverride('optimizer.wd=1')]), /has no field 'optimizer.wd'/);
  assert.throws(() => applyOverrides(r, [parseOverride('epochs=-2')]), /'epochs' must be a positive integer/);
  assert.throws(() => applyOverrides(r, [parseOverride('augment.randAugment=rand-q3')]), /unknown section 'q'/);
  assert.throws(() => applyOverrides(r, [parseOverride('optimizer.type=lamb')]), /optimizer.type/);
  assert.throws(() => parseOverride('epochs'), /field.path=value/);
  assert.throws(() => loadRecipe('/no/such/recipe.json'), /does not exist/);
});

test('AdamW groups: no weight decay on biases and norm parameters, shared kernels once', () => {
  const model = createModel('convmixer_16_3_k3_p4_shared', { classes: 10 });
  const opt = buildOptimizer(model, loadRecipe('convmixer').optimizer);
  const [decay, noDecay] = opt.groups;
  assert.equal(decay!.options.weightDecay, 0.01);
  assert.equal(noDecay!.options.weightDecay, 0);
  const named = model.namedParameters();
  for (const [n, p] of named) {
    const inDecay = decay!.params.includes(p);
    assert.equal(inDecay, !isNoDecay(n, p), n);
    assert.equal(inDecay || noDecay!.params.includes(p), true, n);
  }
  assert.equal(decay!.params.length + noDecay!.params.length, named.length);
  // Decay: patch conv, shared depthwise and pointwise kernels, head.
  assert.equal(decay!.params.length, 4);
  const sgd = buildOptimizer(model, loadRecipe('seresnet').optimizer);
  assert.equal(sgd.groups.length, 1);
  assert.equal(sgd.groups[0]!.options.weightDecay, 1e-4, 'SE-ResNet decays every parameter');
  opt.dispose();
  sgd.dispose();
  model.dispose();
});
