// Optimizer state round trips, loss scaling and CPU autocast.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { SGD, AdamW, GradScaler, type Optimizer } from '../src/train/optim/index.js';
import { runPython } from './helpers/python.js';

const SHAPES = [[4, 3], [3], [2, 2, 3, 3]];

function makeGrads(seed: number, steps: number): Tensor[][] {
  const g = new t.Generator(seed);
  return Array.from({ length: steps }, () => SHAPES.map((s) => t.randn(s, { generator: g })));
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- optimizers of every options type
function applyStep(opt: Optimizer<any>, params: Tensor[], grads: Tensor[]): void {
  params.forEach((p, i) => {
    p.grad = t.clone(grads[i]!);
  });
  opt.step();
  opt.zeroGrad();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- optimizers of every options type
const makers: [string, (ps: Tensor[]) => Optimizer<any>][] = [
  [
    'AdamW',
    (ps) => new AdamW([{ params: [ps[0]!, ps[2]!] }, { params: [ps[1]!], options: { weightDecay: 0 } }], { lr: 0.01, betas: [0.8, 0.9], weightDecay: 0.1 }),
  ],
  ['SGD', (ps) => new SGD(ps, { lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 1e-3 })],
];

for (const [name, make] of makers) {
  test(`${name}: stateDict()/loadStateDict() round trip gives identical subsequent steps`, () => {
    t.tidy(() => {
      const init = SHAPES.map((s, i) => t.randn(s, { generator: new t.Generator(i) }));
      const grads = makeGrads(9, 5);
      const pa = init.map((p) => t.clone(p).requiresGrad_());
      const a = make(pa);
      applyStep(a, pa, grads[0]!);
      applyStep(a, pa, grads[1]!);
      const sd = a.stateDict();
      assert.equal(sd.kind, name);
      assert.equal(sd.step, 2);
      assert.equal(sd.tensors.length, 3);

      // b resumes from a copy of a's parameters and a's state
      const pb = pa.map((p) => t.clone(p).requiresGrad_());
      const b = make(pb);
      b.loadStateDict(sd);
      // a fresh optimizer without the state, to show the state matters
      const pc = pa.map((p) => t.clone(p).requiresGrad_());
      const c = make(pc);
      // the snapshot is a copy: stepping a must not change it
      const snap = sd.tensors.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v.toArray()])));
      for (let s = 2; s < 5; s++) {
        applyStep(a, pa, grads[s]!);
        applyStep(b, pb, grads[s]!);
        applyStep(c, pc, grads[s]!);
      }
      sd.tensors.forEach((r, i) => Object.entries(r).forEach(([k, v]) => assert.deepEqual(v.toArray(), snap[i]![k], `state '${k}' of ${i} changed`)));
      pa.forEach((p, i) => assert.deepEqual(Array.from(pb[i]!.toFloat32Array()), Array.from(p.toFloat32Array()), `${name}: param ${i} differs after resuming`));
      const differs = pa.some((p, i) => p.toArray().some((v, j) => Math.abs(v - pc[i]!.toArray()[j]!) > 1e-6));
      assert.ok(differs, `${name}: a fresh optimizer gave the same result, so the state was not exercised`);
      // hyperparameters travel with the state
      const bLr = b.groups.map((g) => g.options.lr);
      assert.deepEqual(
        bLr,
        a.groups.map((g) => g.options.lr),
      );
      [a, b, c].forEach((o) => o.dispose());
      t.dispose(sd.tensors);
    });
  });
}

test('loadStateDict rejects state of another kind or of mismatched parameters', () => {
  t.tidy(() => {
    const ps = [t.zeros([2], { requiresGrad: true })];
    const sgd = new SGD(ps, { lr: 0.1, momentum: 0.9 });
    const adam = new AdamW(ps);
    assert.throws(() => adam.loadStateDict(sgd.stateDict()), /AdamW: cannot load state of a SGD optimizer/);
    const other = [t.zeros([3], { requiresGrad: true })];
    const o2 = new SGD(other, { lr: 0.1, momentum: 0.9 });
    other[0]!.grad = t.ones([3]);
    o2.step();
    const sd = o2.stateDict();
    assert.throws(() => sgd.loadStateDict(sd), /SGD: state 'momentumBuffer' of parameter 0 has shape \[3\], parameter has \[2\]/);
    const two = new SGD([t.zeros([2], { requiresGrad: true }), t.zeros([2], { requiresGrad: true })], { lr: 1 });
    assert.throws(() => two.loadStateDict(sgd.stateDict()), /state has 1 parameters, optimizer has 2/);
    o2.dispose();
    t.dispose(sd.tensors);
  });
});

test('GradScaler: scales the loss, unscales grads, skips the step on overflow and backs off, grows after clean steps', () => {
  t.tidy(() => {
    const w = t.tensor([1, 2, 3], [3], { requiresGrad: true });
    const opt = new SGD([w], { lr: 0.1 });
    const scaler = new GradScaler({ initScale: 1024, growthFactor: 2, backoffFactor: 0.25, growthInterval: 2 });
    assert.equal(scaler.getScale(), 1024);

    const backward = () => {
      const loss = t.sum(t.mul(w, w)); // grad 2w
      const scaled = scaler.scale(loss);
      assert.equal(scaled.item(), loss.item() * scaler.getScale());
      scaled.backward();
    };
    backward();
    assert.deepEqual(w.grad!.toArray(), [2048, 4096, 6144]);
    scaler.unscale(opt);
    assert.deepEqual(w.grad!.toArray(), [2, 4, 6]); // true gradient
    assert.equal(scaler.step(opt), true);
    scaler.update();
    opt.zeroGrad();
    const afterClean = [1 - 0.2, 2 - 0.4, 3 - 0.6];
    w.toArray().forEach((v, i) => assert.ok(Math.abs(v - afterClean[i]!) < 1e-6));
    assert.equal(scaler.getScale(), 1024); // one clean step of growthInterval 2

    // overflow: an infinite gradient must not reach the parameters
    backward();
    w.grad = t.tensor([1, Infinity, 1], [3]);
    assert.equal(scaler.step(opt), false);
    scaler.update();
    opt.zeroGrad();
    w.toArray().forEach((v, i) => assert.ok(Math.abs(v - afterClean[i]!) < 1e-6, 'step was not skipped'));
    assert.equal(scaler.getScale(), 256);
    assert.deepEqual(scaler.stateDict(), { scale: 256, growthTracker: 0 });

    // NaN counts as overflow too
    backward();
    w.grad = t.tensor([NaN, 0, 0], [3]);
    assert.equal(scaler.step(opt), false);
    scaler.update();
    opt.zeroGrad();
    assert.equal(scaler.getScale(), 64);

    // two clean steps double the scale
    for (let i = 0; i < 2; i++) {
      backward();
      assert.equal(scaler.step(opt), true);
      scaler.update();
      opt.zeroGrad();
    }
    assert.equal(scaler.getScale(), 128);

    const restored = new GradScaler();
    restored.loadStateDict({ scale: 4096, growthTracker: 1 });
    assert.deepEqual(restored.stateDict(), { scale: 4096, growthTracker: 1 });
    restored.dispose();
    scaler.dispose();
  });
});

test("autocast({device: 'cpu', dtype: 'bfloat16'}): conv2d/linear in bfloat16, crossEntropy in float32, as torch.autocast", () => {
  t.tidy(() => {
    const g = new t.Generator(3);
    const x = t.randn([2, 3, 8, 8], { generator: g });
    const w = t.randn([4, 3, 3, 3], { generator: g }).requiresGrad_();
    const fc = t.randn([5, 4], { generator: g }).requiresGrad_();
    const labels = t.tensor([1, 3], [2], { dtype: 'int64' });
    const ref32 = t.conv2d(x, w, null, { padding: 1 });
    const out = t.autocast({ device: 'cpu', dtype: 'bfloat16' }, () => {
      const y = t.conv2d(x, w, null, { padding: 1 });
      const pooled = t.flatten(t.adaptiveAvgPool2d(y, 1), 1);
      const logits = t.linear(pooled, fc);
      const loss = t.crossEntropy(logits, labels);
      return { y, logits, loss };
    });
    assert.equal(out.y.dtype, 'bfloat16');
    assert.equal(out.logits.dtype, 'bfloat16');
    assert.equal(out.loss.dtype, 'float32');
    // bfloat16 keeps 8 significant bits: results agree with float32 to about 1%
    const a = out.y.toFloat32Array(),
      b = ref32.toFloat32Array();
    const scale = Math.max(...Array.from(b, Math.abs));
    assert.ok(a.every((v, i) => Math.abs(v - b[i]!) < 0.02 * scale));
    // gradients reach the float32 weights as float32
    out.loss.backward();
    assert.equal(w.grad!.dtype, 'float32');
    assert.equal(fc.grad!.dtype, 'float32');
    // outside the scope everything is float32 again
    assert.equal(t.conv2d(x, w).dtype, 'float32');
    assert.throws(() => t.autocast({ device: 'cpu', dtype: 'float16' }, () => 0), /autocast: on CPU only bfloat16/);

    const torchDtypes = runPython<Record<string, string>>(`
import torch.nn.functional as F
x, w, fc = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(5, 4)
with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
    y = F.conv2d(x, w, padding=1)
    logits = F.linear(F.adaptive_avg_pool2d(y, 1).flatten(1), fc)
    loss = F.cross_entropy(logits, torch.tensor([1, 3]))
print(json.dumps({'y': str(y.dtype), 'logits': str(logits.dtype), 'loss': str(loss.dtype)}))
`);
    assert.deepEqual(torchDtypes, { y: 'torch.bfloat16', logits: 'torch.bfloat16', loss: 'torch.float32' });
  });
});
