// The Module base and the layers: registration, traversal order, state dicts, modes, moves,
// default initialisation and the forward semantics of each layer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import {
  Module,
  Conv2d,
  Linear,
  BatchNorm2d,
  GELU,
  ReLU,
  Sigmoid,
  Dropout,
  Flatten,
  AdaptiveAvgPool2d,
  Sequential,
  Residual,
  SqueezeExcitation,
  SharedKernel,
} from '../src/nn/index.js';

/** Two convs sharing one kernel (and bias) plus a head: the smallest model with an alias. */
class Twin extends Module {
  readonly a: Conv2d;
  readonly b: Conv2d;
  readonly norm: BatchNorm2d;
  readonly head: Linear;
  constructor() {
    super();
    this.a = this.registerModule('a', new Conv2d(4, 4, 3, { padding: 1 }));
    const k = this.a.asSharedKernel('a', true);
    this.b = this.registerModule('b', new Conv2d(4, 4, 3, { padding: 2, dilation: 2, kernel: k }));
    this.norm = this.registerModule('norm', new BatchNorm2d(4));
    this.head = this.registerModule('head', new Linear(4, 3));
  }
  forward(x: Tensor): Tensor {
    return t.tidy(() => this.head.forward(t.mean(this.norm.forward(this.b.forward(this.a.forward(x))), [2, 3])));
  }
}

const values = (x: Tensor) => Array.from(x.toFloat32Array());

test('parameters list a shared kernel once, under its first name, in PyTorch order', () => {
  const m = new Twin();
  assert.deepEqual(
    m.namedParameters().map(([n]) => n),
    ['a.weight', 'a.bias', 'norm.weight', 'norm.bias', 'head.weight', 'head.bias'],
  );
  assert.equal(m.parameters().length, 6);
  assert.equal(m.numParameters(), 4 * 4 * 9 + 4 + 4 + 4 + 12 + 3);
  const sd = m.stateDict();
  assert.deepEqual(
    [...sd.keys()],
    [
      'a.weight',
      'a.bias',
      'b.weight',
      'b.bias',
      'norm.weight',
      'norm.bias',
      'norm.running_mean',
      'norm.running_var',
      'norm.num_batches_tracked',
      'head.weight',
      'head.bias',
    ],
  );
  assert.equal(sd.get('a.weight'), sd.get('b.weight'), 'the alias is the same live tensor');
  assert.equal(sd.get('a.bias'), sd.get('b.bias'));
  assert.deepEqual(
    m.namedBuffers().map(([n]) => n),
    ['norm.running_mean', 'norm.running_var', 'norm.num_batches_tracked'],
  );
  assert.deepEqual(
    m.namedModules().map(([n]) => n),
    ['', 'a', 'b', 'norm', 'head'],
  );
  m.dispose();
});

test('Conv2d and Linear default init follow PyTorch bounds (1/sqrt(fan_in))', () => {
  t.manualSeed(1);
  const c = new Conv2d(8, 16, [3, 5], { groups: 2 });
  assert.deepEqual(c.weight.shape, [16, 4, 3, 5]);
  const bound = 1 / Math.sqrt(4 * 15);
  for (const x of [c.weight, c.bias!]) {
    const v = values(x);
    assert.ok(
      v.every((e) => Math.abs(e) <= bound),
      'within the bound',
    );
    assert.ok(Math.max(...v.map(Math.abs)) > 0.8 * bound, 'uses the range');
  }
  const l = new Linear(100, 7, { bias: false });
  assert.equal(l.bias, null);
  assert.ok(values(l.weight).every((e) => Math.abs(e) <= 0.1));
  assert.ok(c.weight.requiresGrad && l.weight.requiresGrad);
  c.dispose();
  l.dispose();
});

test('layer constructors reject bad configurations with clear errors', () => {
  assert.throws(() => new Conv2d(6, 4, 3, { groups: 4 }), /groups 4 must divide in channels 6/);
  assert.throws(() => new Conv2d(0, 4, 3), /inChannels must be a positive integer/);
  assert.throws(() => new Conv2d(4, 4, 3, { padding: -1 }), /padding must be an integer >= 0/);
  assert.throws(() => new SqueezeExcitation(8, 16), /no hidden units/);
  assert.throws(() => new Dropout(1.5), /p must be in \[0, 1\]/);
  const bn = new BatchNorm2d(3);
  assert.throws(() => t.tidy(() => bn.forward(t.zeros([2, 4, 2, 2]))), /BatchNorm2d\(3\): input has 4 channels/);
  bn.dispose();
});

test('loadStateDict copies in place, keeps sharing, and reports every problem before writing', () => {
  const m = new Twin();
  const src = new Twin();
  const w = m.a.weight;
  m.loadStateDict(src.stateDict());
  assert.equal(m.a.weight, w, 'same Tensor object after loading');
  assert.equal(m.b.weight, m.a.weight, 'still shared');
  assert.deepEqual(values(m.b.weight), values(src.a.weight));
  assert.deepEqual(values(m.head.bias!), values(src.head.bias!));

  // A shared tensor needs only one of its names.
  const partial = new Map(src.stateDict());
  partial.delete('b.weight');
  partial.delete('b.bias');
  m.loadStateDict(partial);

  // A refused load writes nothing: the refused maps hold other values than the model's, so a
  // load that copied the good entries before reporting the bad ones would show.
  const third = new Twin();
  const snapshot = () => [...m.stateDict()].map(([k, v]) => [k, values(v)]);
  const before = snapshot();
  const missing = new Map(third.stateDict());
  missing.delete('head.weight');
  assert.throws(() => m.loadStateDict(missing), /missing keys: 'head.weight'/);
  assert.deepEqual(snapshot(), before, 'nothing written when a key is missing');
  const ghost = t.zeros([2]);
  const otherExtra = new Map(third.stateDict());
  otherExtra.set('ghost.weight', ghost);
  assert.throws(() => m.loadStateDict(otherExtra), /unexpected keys: 'ghost.weight'/);
  assert.deepEqual(snapshot(), before, 'nothing written when a key is unexpected');
  const extra = new Map(src.stateDict());
  extra.set('ghost.weight', ghost);
  m.loadStateDict(extra, { strict: false });

  const wrong = new Map(src.stateDict());
  const bad = t.zeros([3, 5]);
  wrong.set('head.weight', bad);
  // New values before and after the bad entry (state order: a, b, norm, head.weight, head.bias).
  t.noGrad(() => {
    t.fill_(src.a.bias!, 7);
    t.fill_(src.head.bias!, 7);
  });
  const beforeWrong = snapshot();
  assert.throws(() => m.loadStateDict(wrong), /'head.weight' has shape \[3,5\], the model expects \[3,4\]/);
  assert.deepEqual(snapshot(), beforeWrong, 'nothing written when a check fails');
  assert.deepEqual(values(m.head.weight), values(src.head.weight));

  // Two different tensors for the names of one shared kernel cannot both be right.
  const split = new Map(src.stateDict());
  const other = t.noGrad(() => t.add(src.a.weight, 1));
  split.set('b.weight', other);
  assert.throws(() => m.loadStateDict(split), /'a.weight' and 'b.weight' name one shared tensor of this model but hold different values/);
  t.dispose([ghost, bad, other]);
  m.dispose();
  src.dispose();
  third.dispose();
});

test('to() casts in place: same Tensor objects, sharing and requiresGrad kept, integer buffers untouched', () => {
  const m = new Twin();
  const w = m.a.weight;
  const v = values(w);
  m.to({ dtype: 'float64' });
  assert.equal(m.a.weight, w);
  assert.equal(m.b.weight, w);
  assert.equal(w.dtype, 'float64');
  assert.equal(w.requiresGrad, true);
  assert.equal(m.norm.runningMean!.dtype, 'float64');
  assert.equal(m.norm.numBatchesTracked!.dtype, 'int64');
  const y = t.tidy(() => {
    const out = m.forward(t.randn([2, 4, 6, 6], { dtype: 'float64' }));
    t.sum(out).backward();
    return out.dtype;
  });
  assert.equal(y, 'float64');
  m.to({ dtype: 'float32' });
  assert.equal(w.dtype, 'float32');
  const g = w.grad!;
  assert.equal(g.dtype, 'float32', 'the gradient moves along');
  g.dispose();
  assert.deepEqual(values(w), v);
  m.dispose();
});

test('train/eval reach every module; BatchNorm2d uses batch stats in training and running stats in eval', () => {
  const bn = new BatchNorm2d(2, { momentum: 0.1 });
  const seq = new Sequential(new Conv2d(2, 2, 1), bn);
  assert.equal(bn.training, true);
  seq.eval();
  assert.equal(bn.training, false);
  seq.train();
  const x = t.tensor([1, 2, 3, 4, 10, 20, 30, 40], [2, 2, 1, 2]);
  // Channel 0 holds 1,2,10,20; channel 1 holds 3,4,30,40.
  const y = t.tidy(() => bn.forward(x).toFloat32Array());
  const ch0 = [1, 2, 10, 20];
  const mean0 = ch0.reduce((a, b) => a + b) / 4;
  const var0 = ch0.reduce((a, b) => a + (b - mean0) ** 2, 0) / 4;
  assert.ok(Math.abs(y[0]! - (1 - mean0) / Math.sqrt(var0 + 1e-5)) < 1e-5);
  assert.ok(Math.abs(values(bn.runningMean!)[0]! - 0.1 * mean0) < 1e-5, 'running mean updated with momentum 0.1');
  assert.ok(Math.abs(values(bn.runningVar!)[0]! - (0.9 + (0.1 * var0 * 4) / 3)) < 1e-4, 'running var uses the unbiased variance');
  assert.equal(bn.numBatchesTracked!.item(), 1);
  seq.eval();
  const z = t.tidy(() => bn.forward(x).toFloat32Array());
  const rm = values(bn.runningMean!)[0]!,
    rv = values(bn.runningVar!)[0]!;
  assert.ok(Math.abs(z[0]! - (1 - rm) / Math.sqrt(rv + 1e-5)) < 1e-5);
  assert.equal(bn.numBatchesTracked!.item(), 1, 'eval does not count batches');
  x.dispose();
  seq.dispose();
});

test('Residual, SqueezeExcitation, activations, Dropout, Flatten and pooling compute what they document', () => {
  t.manualSeed(3);
  const x = t.randn([2, 16, 4, 4]);
  const conv = new Conv2d(16, 16, 3, { padding: 1 });
  const res = new Residual(conv);
  const se = new SqueezeExcitation(16, 4);
  assert.deepEqual(se.stateDict().size, 2);
  assert.deepEqual([...se.stateDict().keys()], ['fc.0.weight', 'fc.2.weight']);
  const diffs = t.noGrad(() =>
    t.tidy(() => {
      const d: number[] = [];
      const rel = (a: Tensor, b: Tensor) => t.max(t.abs(t.sub(a, b))).item();
      d.push(rel(res.forward(x), t.add(conv.forward(x), x)));
      const s = t.sigmoid(t.linear(t.relu(t.linear(t.mean(x, [2, 3]), se.fc.at(0).getParameter('weight')!)), se.fc.at(2).getParameter('weight')!));
      d.push(rel(se.forward(x), t.mul(x, s.view([2, 16, 1, 1]))));
      d.push(rel(new GELU().forward(x), t.gelu(x)));
      d.push(rel(new ReLU().forward(x), t.maximum(x, t.zerosLike(x))));
      d.push(rel(new Sigmoid().forward(x), t.div(t.onesLike(x), t.add(t.exp(t.neg(x)), 1))));
      const drop = new Dropout(0.5).eval();
      d.push(rel(drop.forward(x), x));
      d.push(rel(new AdaptiveAvgPool2d(1).forward(x).flatten(1), t.mean(x, [2, 3])));
      return d;
    }),
  );
  for (const d of diffs) assert.ok(d < 1e-5, `difference ${d}`);
  const shape = t.tidy(() => new Flatten().forward(x).shape);
  assert.deepEqual(shape, [2, 256]);
  const kept = t.tidy(() => {
    const y = new Dropout(0.5).forward(t.onesLike(x));
    return t.sum(t.gt(y, 0)).item() / y.size;
  });
  assert.ok(kept > 0.35 && kept < 0.65, `training dropout keeps about half (${kept})`);
  t.dispose(x);
  res.dispose();
  se.dispose();
});

test('a shared kernel must be isomorphic: the error names both layers and the mismatch', () => {
  const a = new Conv2d(8, 8, 3);
  const k = a.asSharedKernel('stage.0.conv2', false);
  const b = new Conv2d(4, 8, 3);
  assert.throws(
    () => b.useKernel(k, 'stage.0.conv1'),
    /cannot share kernel 'stage.0.conv2' \(8->8, 3x3\) with layer 'stage.0.conv1' \(4->8, 3x3\): in channels 8 vs 4/,
  );
  assert.throws(() => new Conv2d(8, 8, 3, { groups: 2, kernel: k }), /groups 1 vs 2/);
  assert.throws(() => new Conv2d(8, 8, 5, { kernel: k }), /kernel size 3x3 vs 5x5/);
  assert.throws(() => new SharedKernel(a.weight, null, { inChannels: 8, outChannels: 4, kernelSize: [3, 3], groups: 1 }), /does not fit 8->4/);
  // Stride, padding and dilation may differ per use.
  const c = new Conv2d(8, 8, 3, { stride: 2, padding: 2, dilation: 2, kernel: k });
  assert.equal(c.weight, a.weight);
  a.dispose();
  b.dispose();
  c.bias?.dispose();
});

test('Sequential releases intermediates: repeated training steps keep liveTensors flat', () => {
  t.manualSeed(0);
  const model = new Sequential(
    new Conv2d(3, 8, 3, { padding: 1 }),
    new GELU(),
    new BatchNorm2d(8),
    new Residual(new Sequential(new Conv2d(8, 8, 3, { padding: 1, groups: 8 }), new GELU(), new BatchNorm2d(8))),
    new AdaptiveAvgPool2d(1),
    new Flatten(),
    new Linear(8, 4),
  );
  const x = t.randn([4, 3, 8, 8]);
  const step = () =>
    t.tidy(() => {
      const loss = t.mean(t.pow(model.forward(x), 2));
      loss.backward();
      return loss.item();
    });
  step();
  model.zeroGrad();
  const live = t.liveTensors();
  for (let i = 0; i < 5; i++) {
    step();
    model.zeroGrad();
  }
  assert.equal(t.liveTensors(), live);
  model.eval();
  const before = t.liveTensors();
  const y = t.noGrad(() => model.forward(x));
  assert.equal(t.liveTensors(), before + 1, 'an eval pass leaves only its output');
  t.dispose([x, y]);
  model.dispose();
});
