// kshare's BatchNorm kernels (native/batch_norm_relu.cc: BatchNorm + ReLU fused, and BatchNorm
// alone; NCHW and channels-last) against libtorch's batch_norm (and relu) in this process: output, the gradients of the input, BN weight and BN bias, and the
// running statistics afterwards, training and eval, with outputs poisoned with NaN before the
// kernel writes them (KSHARE_NATIVE_POISON). SE-ResNet's parity with PyTorch (through this
// kernel) is in models-parity.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { assertClose } from './helpers/conv-parity.js';
import { withEnv, withThreads } from './helpers/env.js';
import { runKernel } from '../src/tensor/kernels.js';
import { wrap } from '../src/tensor/tensor.js';

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

/** Which op: BatchNorm + ReLU, BatchNorm alone, or batchNormPool with the loss on y, the pooled means or both. */
type Form = 'relu' | 'plain' | { pooled: 'both' | 'y' | 'pooled'; r: Tensor };

/**
 * The op in kshare's kernel or libtorch's, then the gradients of sum(y * r) (+ sum(pooled * r')):
 * [y, (pooled,) x.grad, weight.grad, bias.grad, runningMean, runningVar].
 */
function run(inp: Inputs, training: boolean, fused: boolean, form: Form = 'relu', channelsLast = false): Float32Array[] {
  return withEnv({ KSHARE_NATIVE_KERNELS: fused ? '1' : '0', KSHARE_NATIVE_POISON: '1' }, () =>
    t.tidy(() => {
      const x = channelsLast ? t.contiguous(inp.x, 'channels_last').detach() : inp.x.detach(),
        weight = inp.weight.detach(),
        bias = inp.bias.detach();
      for (const v of [x, weight, bias]) v.requiresGrad = true;
      const runningMean = t.clone(inp.runningMean),
        runningVar = t.clone(inp.runningVar);
      const o = { weight, bias, runningMean, runningVar, training, momentum: 0.1, eps: 1e-5 };
      let outputs: Tensor[], loss: Tensor;
      if (typeof form === 'object') {
        const [y, pooled] = t.batchNormPool(x, o);
        const ly = t.sum(t.mul(y, inp.r)),
          lp = t.sum(t.mul(pooled, form.r));
        loss = form.pooled === 'both' ? t.add(ly, lp) : form.pooled === 'y' ? ly : lp;
        outputs = [y, pooled];
      } else {
        const y = form === 'relu' ? t.batchNormRelu(x, o) : t.batchNorm(x, o);
        loss = t.sum(t.mul(y, inp.r));
        outputs = [y];
      }
      loss.backward();
      const out = [...outputs, x.grad!, weight.grad!, bias.grad!, runningMean, runningVar].map((v) => v.toFloat32Array());
      for (const v of [x, weight, bias]) v.grad!.dispose();
      return out;
    }),
  );
}

// CL_REFERENCE: the channels-last kernel is checked against libtorch on the NCHW input (the same
// values). libtorch's own channels-last backward is less accurate: with the loss on an SE
// pooling's means alone ([8,16,32,32]), its weight gradient was 1.3e-5 off a float64 reference,
// the kernel's 6.8e-7 (NCHW: libtorch 7.4e-7, the kernel 3.9e-7).

/** Each output of the kernel (no NaN left from poisoning) within TOL of libtorch's. */
function assertMatches(got: Float32Array[], want: Float32Array[], names: readonly string[], label: string): void {
  got.forEach((g, k) => assertClose(`${label} ${names[k]}`, g, want[k]!, TOL));
}

test('BatchNorm (+ ReLU) kernels match libtorch: output, every gradient, running stats, training and eval, NCHW and channels-last', () => {
  const live = t.liveTensors();
  SHAPES.forEach((shape, i) => {
    const inp = inputs(shape, 100 + i);
    for (const [training, relu] of [
      [true, true],
      [false, true],
      [true, false],
      [false, false],
    ] as const) {
      for (const cl of [false, true]) {
        const form = relu ? 'relu' : 'plain';
        assertMatches(
          run(inp, training, true, form, cl),
          run(inp, training, false, form), // libtorch on NCHW: see CL_REFERENCE
          OUTPUTS,
          `[${shape}]${cl ? ' channels-last' : ''} ${training ? 'train' : 'eval'}${relu ? ' + ReLU' : ''}`,
        );
      }
    }
    t.dispose(Object.values(inp));
  });
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('BatchNorm (+ ReLU) kernels: results do not depend on the thread count; other strides take libtorch', () => {
  const inp = inputs([4, 24, 10, 10], 3);
  for (const relu of [true, false]) {
    for (const cl of [false, true]) {
      const [one, two] = [1, 2].map((n) => withThreads(n, () => run(inp, true, true, relu ? 'relu' : 'plain', cl)));
      one!.forEach((v, i) => assert.deepEqual(two![i], v, `${OUTPUTS[i]} with 2 threads${relu ? ' (+ ReLU)' : ''}${cl ? ', channels-last' : ''}`));
    }
  }
  // An input that is neither NCHW- nor channels-last-contiguous: exactly relu(batchNorm(x)) (libtorch's ops).
  t.tidy(() => {
    const x = t.transpose(t.contiguous(t.transpose(inp.x, 2, 3)), 2, 3);
    assert.ok(!t.isContiguous(x) && !t.isContiguous(x, 'channels_last'));
    const o = () => ({ weight: inp.weight, bias: inp.bias, runningMean: t.clone(inp.runningMean), runningVar: t.clone(inp.runningVar), training: true });
    const routed = t.batchNormRelu(x, o()).toFloat32Array();
    assert.deepEqual(routed, t.relu(withEnv({ KSHARE_NATIVE_KERNELS: '0' }, () => t.batchNorm(x, o()))).toFloat32Array());
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

test('batchNormPool: the kernel matches batchNorm then adaptiveAvgPool2d, with either output or both in the loss', () => {
  const live = t.liveTensors();
  const OUT = ['y', 'pooled', 'x.grad', 'weight.grad', 'bias.grad', 'runningMean', 'runningVar'];
  for (const [i, shape] of (
    [
      [2, 8, 6, 6],
      [3, 17, 5, 7],
      [8, 16, 32, 32],
    ] as [number, number, number, number][]
  ).entries()) {
    const inp = inputs(shape, 300 + i);
    const rp = t.randn([shape[0], shape[1]], { generator: new t.Generator(400 + i) });
    for (const training of [true, false]) {
      for (const use of ['both', 'y', 'pooled'] as const) {
        for (const cl of [false, true]) {
          const form = { pooled: use, r: rp };
          assertMatches(
            run(inp, training, true, form, cl),
            run(inp, training, false, form), // libtorch on NCHW: see CL_REFERENCE
            OUT,
            `[${shape}]${cl ? ' channels-last' : ''} ${training ? 'train' : 'eval'}, loss on ${use}`,
          );
        }
      }
    }
    rp.dispose();
    t.dispose(Object.values(inp));
  }
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('batchNorm routes NCHW and channels-last float32 CPU inputs to the kernel (bit for bit), others to libtorch', () => {
  const inp = inputs([4, 24, 10, 10], 6);
  t.tidy(() => {
    const stats = () => ({ runningMean: t.clone(inp.runningMean), runningVar: t.clone(inp.runningVar) });
    const o = () => ({ weight: inp.weight, bias: inp.bias, ...stats(), training: true, momentum: 0.1, eps: 1e-5 });
    const s = stats();
    const direct = wrap(
      runKernel('test', 'batchNormNative', [inp.x.handle, inp.weight.handle, inp.bias.handle, s.runningMean.handle, s.runningVar.handle, true, 0.1, 1e-5]),
    );
    const routed = t.batchNorm(inp.x, o()).toFloat32Array();
    assert.deepEqual(routed, direct.toFloat32Array(), 'routed: the kernel');
    // libtorch's batch_norm rounds differently on this input: the comparison above can tell them apart.
    const libtorch = withEnv({ KSHARE_NATIVE_KERNELS: '0' }, () => t.batchNorm(inp.x, o()).toFloat32Array());
    assert.notDeepEqual(routed, libtorch, 'kernel and libtorch differ in the last bits here');
    const [pooledY] = t.batchNormPool(inp.x, o());
    assert.deepEqual(pooledY!.toFloat32Array(), routed, 'batchNormPool: the same output');
    // Channels-last: the kernel too, its output channels-last.
    const cl = t.contiguous(inp.x, 'channels_last');
    const s2 = stats();
    const directCl = wrap(
      runKernel('test', 'batchNormNative', [cl.handle, inp.weight.handle, inp.bias.handle, s2.runningMean.handle, s2.runningVar.handle, true, 0.1, 1e-5]),
    );
    const routedCl = t.batchNorm(cl, o());
    assert.ok(t.isContiguous(routedCl, 'channels_last'), 'channels-last in, channels-last out');
    assert.deepEqual(routedCl.toFloat32Array(), directCl.toFloat32Array(), 'channels-last routed: the kernel');
    assert.notDeepEqual(
      routedCl.toFloat32Array(),
      withEnv({ KSHARE_NATIVE_KERNELS: '0' }, () => t.batchNorm(cl, o()).toFloat32Array()),
      'channels-last: kernel and libtorch differ in the last bits here',
    );
  });
  t.dispose(Object.values(inp));
});

test('batchNormPool names an input that is not (N, C, H, W)', () => {
  t.tidy(() => {
    const c = 3;
    const o = { weight: t.ones([c]), bias: t.zeros([c]), runningMean: t.zeros([c]), runningVar: t.ones([c]), training: true };
    assert.throws(() => t.batchNormPool(t.randn([2, c, 5]), o), /batchNormPool: input must be \(N, C, H, W\), got shape \[2,3,5\]/);
  });
});
