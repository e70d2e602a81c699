// kshare's one-pass AdamW step (native/adamw.cc) against the multi-tensor ops it replaces
// (KSHARE_NATIVE_ADAMW=0): the same parameters and moments after three steps, including
// parameters whose memory is not plain row-major, and its errors. (The comparison with
// torch.optim itself is test/optim-parity.test.ts, which runs this path on the CPU.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { AdamW } from '../src/train/optim/index.js';
import { runKernelInPlace } from '../src/tensor/kernels.js';
import { withEnv, withThreads } from './helpers/env.js';

const STEPS = 3;

/** Parameters of several layouts, each from the same seed on every call. */
function makeParams(): Tensor[] {
  const gen = new t.Generator(7);
  const plain = t.randn([37], { generator: gen }); // not a multiple of the 4 SIMD lanes
  const big = t.randn([3, 16385], { generator: gen }); // more than one parallel chunk
  const cl = t.contiguous(t.randn([5, 6, 3, 3], { generator: gen }), 'channels_last');
  const transposed = t.transpose(t.randn([4, 7], { generator: gen }), 0, 1); // dense, not contiguous
  const strided = t.slice(t.randn([6, 10], { generator: gen }), 1, 1, 9, 2); // not dense: updated through a copy
  const ps = [plain, big, cl, transposed, strided].map((p) => p.detach());
  for (const p of ps) p.requiresGrad_(true);
  return ps;
}

/** Three steps from seeded gradients (contiguous, whatever the parameter's layout); the parameters and moments after them. */
function run(native: boolean, o: { weightDecay: number }): number[][] {
  return withEnv({ KSHARE_NATIVE_ADAMW: native ? undefined : '0' }, () => {
    const ps = makeParams();
    const opt = new AdamW([{ params: ps.slice(0, 2) }, { params: ps.slice(2), options: { lr: 3e-3 } }], {
      lr: 1e-2,
      betas: [0.8, 0.95],
      eps: 1e-6,
      weightDecay: o.weightDecay,
    });
    const gen = new t.Generator(11);
    for (let s = 0; s < STEPS; s++) {
      for (const p of ps) p.grad = t.mul(t.randn(p.shape, { generator: gen }), s + 1);
      opt.step();
      opt.zeroGrad();
    }
    const sd = opt.stateDict();
    const out = [...ps.map((p) => [...p.toFloat32Array()]), ...sd.tensors.flatMap((r) => Object.values(r).map((x) => [...x.toFloat32Array()]))];
    for (const r of sd.tensors) t.dispose(Object.values(r));
    opt.dispose();
    t.dispose(ps);
    return out;
  });
}

test('the one-pass AdamW step gives the multi-tensor ops’ parameters and moments (5 layouts, 2 groups, 3 steps)', () => {
  for (const weightDecay of [0, 0.1]) {
    const fused = run(true, { weightDecay });
    const ops = run(false, { weightDecay });
    assert.equal(fused.length, 15, 'five parameters and two moments each');
    fused.forEach((xs, i) => {
      const ys = ops[i]!;
      assert.equal(xs.length, ys.length);
      const scale = Math.max(...ys.map(Math.abs));
      let worst = 0;
      for (let j = 0; j < xs.length; j++) {
        assert.ok(Number.isFinite(xs[j]), `tensor ${i} element ${j} is ${xs[j]}`);
        worst = Math.max(worst, Math.abs(xs[j]! - ys[j]!) / scale);
      }
      // Both round every operation to float32, but libtorch fuses some multiply-adds (the first
      // moment's update cancels, so single elements differ more than the tensor's scale does).
      assert.ok(worst <= 1e-6, `weight decay ${weightDecay}, tensor ${i}: max difference / max |value| ${worst}`);
    });
  }
});

test('the one-pass AdamW step moves version counters: a graph that saved a parameter refuses backward', () => {
  const p = t.randn([8]).detach();
  p.requiresGrad_(true);
  const opt = new AdamW([p], { lr: 0.1 });
  p.grad = t.onesLike(p);
  const y = t.sum(t.mul(p, p));
  opt.step();
  assert.throws(() => y.backward(), /modified by an inplace operation/);
  t.dispose([p, y]);
  opt.dispose();
});

test('kshare::adamw_ names the argument that does not fit', () => {
  const [a, b] = [t.zeros([3]), t.zeros([4])];
  const call =
    (grads: Tensor[], step = 1) =>
    () =>
      runKernelInPlace('AdamW', 'adamw_', [[a.handle], grads.map((g) => g.handle), [a.handle], [a.handle], 0.1, 0.9, 0.999, 1e-8, 0, step]);
  assert.throws(call([b]), /grads\[0\] must be a float32 CPU tensor of params\[0\]'s shape \[3\]/);
  assert.throws(call([a, a]), /expected as many grads \(2\)/);
  assert.throws(call([a], 0), /step counts from 1, got 0/);
  t.dispose([a, b]);
});

test('the one-pass AdamW step runs in parallel only from 2^20 values, with the numbers of one thread', () => {
  /** Two AdamW steps over parameters of these shapes at `threads`: the parameters after, and the pool calls the steps made. */
  const steps = (shapes: number[][], threads: number) =>
    withThreads(threads, () => {
      const gen = new t.Generator(5);
      const ps = shapes.map((s) => t.randn(s, { generator: gen }).detach().requiresGrad_(true));
      const opt = new AdamW(ps, { lr: 1e-2, weightDecay: 0.1 });
      const jobs = t.runtimeInfo().cpuPoolJobs;
      for (let s = 0; s < 2; s++) {
        for (const p of ps) p.grad = t.randn(p.shape, { generator: gen });
        opt.step();
        opt.zeroGrad();
      }
      const out = { values: ps.map((p) => p.toFloat32Array()), jobs: t.runtimeInfo().cpuPoolJobs - jobs };
      opt.dispose();
      t.dispose(ps);
      return out;
    });
  const large = [[1024, 1024], [17]]; // 2^20 + 17 values
  const parallel = steps(large, 2);
  assert.equal(parallel.jobs, 2, 'from 2^20 values: one pool call a step');
  assert.deepEqual(parallel.values, steps(large, 1).values, 'the numbers of one thread');
  const small = steps([[1023, 1024], [17]], 2);
  assert.equal(small.jobs, 0, 'below 2^20 values: on the calling thread');
});
