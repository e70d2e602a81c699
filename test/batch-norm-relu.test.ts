// The fused BatchNorm + ReLU kernel (native/batch_norm_relu.cc) against libtorch's batch_norm
// and relu in this process: output, the gradients of the input, BN weight and BN bias, and the
// running statistics afterwards, training and eval, with outputs poisoned with NaN before the
// kernel writes them (KSHARE_NATIVE_POISON). SE-ResNet's parity with PyTorch (through this
// kernel) is in models-parity.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { maxRelError } from './helpers/python.js';
import { withEnv } from './helpers/env.js';

const TOL = 1e-5;
const OUTPUTS = ['y', 'x.grad', 'weight.grad', 'bias.grad', 'runningMean', 'runningVar'] as const;
const SHAPES: [number, number, number, number][] = [
  [1, 5, 3, 7], // batch 1, odd widths
  [2, 8, 6, 6],
  [3, 17, 5, 5],
  [4, 9, 1, 1], // 1x1 spatial
  [2, 64, 9, 11],
  [8, 16, 32, 32], // a whole SE-ResNet-sized plane
];

interface Inputs {
  x: Tensor;
  weight: Tensor;
  bias: Tensor;
  runningMean: Tensor;
  runningVar: Tensor;
  r: Tensor;
}

function inputs(shape: [number, number, number, number], seed: number): Inputs {
  const gen = new t.Generator(seed);
  const c = shape[1];
  return t.tidy(() => ({
    x: t.keep(t.randn(shape, { generator: gen }).mul(2).add(0.5)),
    weight: t.keep(t.randn([c], { generator: gen })),
    bias: t.keep(t.randn([c], { generator: gen }).mul(0.5)),
    runningMean: t.keep(t.randn([c], { generator: gen }).mul(0.1)),
    runningVar: t.keep(t.rand([c], { generator: gen }).add(0.5)),
    r: t.keep(t.randn(shape, { generator: gen })),
  }));
}

/** relu(batchNorm(x)) fused or through libtorch, then the gradients of sum(y * r). */
function run(inp: Inputs, training: boolean, fused: boolean): Float32Array[] {
  return withEnv({ KSHARE_NATIVE_KERNELS: fused ? '1' : '0', KSHARE_NATIVE_POISON: '1' }, () =>
    t.tidy(() => {
      const x = inp.x.detach(),
        weight = inp.weight.detach(),
        bias = inp.bias.detach();
      for (const v of [x, weight, bias]) v.requiresGrad = true;
      const runningMean = t.clone(inp.runningMean),
        runningVar = t.clone(inp.runningVar);
      const y = t.batchNormRelu(x, { weight, bias, runningMean, runningVar, training, momentum: 0.1, eps: 1e-5 });
      t.sum(t.mul(y, inp.r)).backward();
      const out = [y, x.grad!, weight.grad!, bias.grad!, runningMean, runningVar].map((v) => v.toFloat32Array());
      for (const v of [x, weight, bias]) v.grad!.dispose();
      return out;
    }),
  );
}

test('fused BatchNorm + ReLU matches libtorch: output, every gradient, running stats, training and eval', () => {
  const live = t.liveTensors();
  SHAPES.forEach((shape, i) => {
    const inp = inputs(shape, 100 + i);
    for (const training of [true, false]) {
      const got = run(inp, training, true),
        want = run(inp, training, false);
      got.forEach((g, k) => {
        const what = `[${shape}] ${training ? 'train' : 'eval'} ${OUTPUTS[k]}`;
        for (let j = 0; j < g.length; j++) if (Number.isNaN(g[j]!)) assert.fail(`${what}: element ${j} is NaN (left unwritten?)`);
        const e = maxRelError(g, want[k]!);
        assert.ok(e <= TOL, `${what}: relative error ${e.toExponential(2)} > ${TOL}`);
      });
    }
    t.dispose(Object.values(inp));
  });
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('fused BatchNorm + ReLU: results do not depend on the thread count; other layouts take libtorch', () => {
  const inp = inputs([4, 24, 10, 10], 3);
  const before = t.runtimeInfo().numThreads;
  try {
    t.setNumThreads(1);
    const one = run(inp, true, true);
    t.setNumThreads(2);
    const two = run(inp, true, true);
    one.forEach((v, i) => assert.deepEqual(two[i], v, `${OUTPUTS[i]} with 2 threads`));
  } finally {
    t.setNumThreads(before);
  }
  // Channels-last input: exactly relu(batchNorm(x)) (libtorch's ops), with or without the kernels.
  t.tidy(() => {
    const x = t.contiguous(inp.x, 'channels_last');
    const o = () => ({ weight: inp.weight, bias: inp.bias, runningMean: t.clone(inp.runningMean), runningVar: t.clone(inp.runningVar), training: true });
    const routed = t.batchNormRelu(x, o()).toFloat32Array();
    assert.deepEqual(routed, t.relu(t.batchNorm(x, o())).toFloat32Array());
  });
  t.dispose(Object.values(inp));
});

test('fused BatchNorm + ReLU refuses one value per channel in training, as batchNorm does', () => {
  t.tidy(() => {
    const c = 3;
    const o = { weight: t.ones([c]), bias: t.zeros([c]), runningMean: t.zeros([c]), runningVar: t.ones([c]), training: true };
    assert.throws(() => t.batchNormRelu(t.randn([1, c, 1, 1]), o), /more than 1 value per channel/);
  });
});
