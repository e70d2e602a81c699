// kshare's squeeze-excitation tail kernel (native/channel_scale_add.cc: [relu](x * scale +
// residual), scale per image and channel; NCHW and channels-last) against libtorch's mul, add and
// relu in this process:
// the output and the gradients of the input, the scale and the residual, with outputs poisoned
// with NaN before the kernel writes them (KSHARE_NATIVE_POISON). SE-ResNet's parity with PyTorch
// (through this kernel) is in models-parity.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { runKernel } from '../src/tensor/kernels.js';
import { wrap } from '../src/tensor/tensor.js';
import { assertClose } from './helpers/conv-parity.js';
import { withEnv, withThreads } from './helpers/env.js';

const TOL = 1e-5;
const OUTPUTS = ['y', 'x.grad', 'scale.grad', 'residual.grad'] as const;
const SHAPES: [number, number, number, number][] = [
  [1, 5, 3, 7], // batch 1, odd widths, rows shorter than 8 lanes
  [2, 8, 6, 6],
  [3, 17, 5, 5],
  [4, 9, 1, 1], // 1x1 spatial
  [2, 64, 9, 11],
  [8, 16, 32, 32], // an SE-ResNet first-stage plane
];

interface Inputs {
  x: Tensor;
  scale: Tensor;
  residual: Tensor;
  r: Tensor;
}

function inputs(shape: [number, number, number, number], seed: number): Inputs {
  const gen = new t.Generator(seed);
  return t.tidy(() => ({
    x: t.keep(t.randn(shape, { generator: gen })),
    scale: t.keep(t.rand([shape[0], shape[1], 1, 1], { generator: gen })),
    residual: t.keep(t.randn(shape, { generator: gen }).mul(0.5)),
    r: t.keep(t.randn(shape, { generator: gen })),
  }));
}

/** channelScaleAdd in kshare's kernel or libtorch's ops, then the gradients of sum(y * r). */
function run(inp: Inputs, relu: boolean, native: boolean, channelsLast = false): Float32Array[] {
  return withEnv({ KSHARE_NATIVE_KERNELS: native ? '1' : '0', KSHARE_NATIVE_POISON: '1' }, () =>
    t.tidy(() => {
      const layout = (v: Tensor) => (channelsLast ? t.contiguous(v, 'channels_last') : v);
      const [x, scale, residual] = [layout(inp.x), inp.scale, layout(inp.residual)].map((v) => v.detach()) as [Tensor, Tensor, Tensor];
      for (const v of [x, scale, residual]) v.requiresGrad = true;
      const y = t.channelScaleAdd(x, scale, residual, { relu });
      t.sum(t.mul(y, inp.r)).backward();
      const out = [y, x.grad!, scale.grad!, residual.grad!].map((v) => v.toFloat32Array());
      for (const v of [x, scale, residual]) v.grad!.dispose();
      return out;
    }),
  );
}

test('channelScaleAdd kernel matches libtorch: output and every gradient, with and without the ReLU, NCHW and channels-last', () => {
  const live = t.liveTensors();
  SHAPES.forEach((shape, i) => {
    const inp = inputs(shape, 200 + i);
    for (const relu of [true, false]) {
      for (const cl of [false, true]) {
        const got = run(inp, relu, true, cl),
          want = run(inp, relu, false, cl);
        got.forEach((g, k) => assertClose(`[${shape}]${cl ? ' channels-last' : ''}${relu ? ' relu' : ''} ${OUTPUTS[k]}`, g, want[k]!, TOL));
      }
    }
    t.dispose(Object.values(inp));
  });
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('channelScaleAdd kernel: results do not depend on the thread count', () => {
  const inp = inputs([4, 24, 10, 10], 3);
  for (const relu of [true, false]) {
    for (const cl of [false, true]) {
      const [one, two] = [1, 2].map((n) => withThreads(n, () => run(inp, relu, true, cl)));
      one!.forEach((v, i) => assert.deepEqual(two![i], v, `${OUTPUTS[i]} with 2 threads${relu ? ' (relu)' : ''}${cl ? ', channels-last' : ''}`));
    }
  }
  t.dispose(Object.values(inp));
});

test('channelScaleAdd takes the kernel only where it applies, and names bad arguments', () => {
  const inp = inputs([2, 6, 5, 5], 4);
  t.tidy(() => {
    const { x, scale, residual } = inp;
    const same = (a: Tensor, b: Tensor, what: string) => assert.deepEqual(a.toFloat32Array(), b.toFloat32Array(), what);
    const direct = wrap(runKernel('test', 'channelScaleAdd', [x.handle, scale.handle, residual.handle, true]));
    same(t.channelScaleAdd(x, scale, residual, { relu: true }), direct, 'routed: the kernel');
    const libtorch = (xx: Tensor, s: Tensor, r: Tensor) => t.relu(t.add(t.mul(xx, s), r));
    // Input and residual both channels-last: the kernel too, its output channels-last.
    const cl = t.contiguous(x, 'channels_last'),
      rcl = t.contiguous(residual, 'channels_last');
    const routedCl = t.channelScaleAdd(cl, scale, rcl, { relu: true });
    assert.ok(t.isContiguous(routedCl, 'channels_last'), 'channels-last in, channels-last out');
    same(routedCl, wrap(runKernel('test', 'channelScaleAdd', [cl.handle, scale.handle, rcl.handle, true])), 'channels-last routed: the kernel');
    // Mixed layouts or float64: exactly libtorch's mul, add and relu.
    same(t.channelScaleAdd(cl, scale, residual, { relu: true }), libtorch(cl, scale, residual), 'channels-last input, NCHW residual');
    const [x64, s64, r64] = [x, scale, residual].map((v) => t.to(v, 'float64')) as [Tensor, Tensor, Tensor];
    assert.deepEqual(t.channelScaleAdd(x64, s64, r64, { relu: true }).toArray(), libtorch(x64, s64, r64).toArray(), 'float64');
    assert.throws(() => t.channelScaleAdd(x, t.ones([2, 6]), residual, { relu: true }), /scale must have shape \[2, 6, 1, 1\].*got \[2,6\]/);
    assert.throws(() => t.channelScaleAdd(x, scale, t.ones([2, 6, 5, 4]), { relu: true }), /residual must have the input's shape/);
    assert.throws(() => t.channelScaleAdd(t.ones([6, 5, 5]), scale, residual, { relu: true }), /input must be \(N, C, H, W\)/);
    assert.throws(() => t.channelScaleAdd(x, scale, residual, undefined as unknown as { relu: boolean }), /boolean 'relu'/);
  });
  t.dispose(Object.values(inp));
});

test(
  'channelScaleAdd routes to the kernel: one large allocation forward instead of three (mul, add, relu)',
  { skip: !t.cpuAllocatorInfo().installed && 'KSHARE_CPU_ALLOCATOR=system: no allocation counts' },
  () => {
    // (8, 16, 32, 32): 512 KiB tensors, which the caching allocator counts.
    const inp = inputs([8, 16, 32, 32], 5);
    const count = (native: boolean) =>
      withEnv({ KSHARE_NATIVE_KERNELS: native ? '1' : '0' }, () =>
        t.tidy(() => {
          const before = t.cpuAllocatorInfo();
          t.noGrad(() => t.channelScaleAdd(inp.x, inp.scale, inp.residual, { relu: true }));
          const after = t.cpuAllocatorInfo();
          return after.hits + after.misses - before.hits - before.misses;
        }),
      );
    assert.deepEqual([count(true), count(false)], [1, 3]);
    t.dispose(Object.values(inp));
  },
);
