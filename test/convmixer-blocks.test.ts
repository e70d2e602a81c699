// A run of ConvMixer blocks in inference as one operator (native/convmixer_blocks.cc,
// t.convMixerBlocks): bit for bit the two block-half operators a block (conv-gelu-bn.test.ts
// checks those against libtorch and python3-torch), within 1e-5 of libtorch's own ops and of
// python3-torch, at 1 and 2 threads and each instruction set, with outputs poisoned
// (KSHARE_NATIVE_POISON); the fall-back where the plane kernel does not serve the depthwise
// convolution; Sequential's routing (eval and no gradient only); and the errors for bad arguments.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { Sequential } from '../src/nn/index.js';
import { runPython, encodeTensors, decodeF32, maxRelError, type Encoded } from './helpers/python.js';
import { withEnv, withLibtorchOps, withThreads } from './helpers/env.js';
import { assertClose } from './helpers/conv-parity.js';

const BUILT = t.runtimeInfo().pointwiseKernel; // built with oneDNN, as the 1x1 operator
const skip = !BUILT && 'built without oneDNN: no 1x1 operator, no block run';
const TOL = 1e-5;

interface Geometry {
  shape: [number, number, number, number];
  k: number;
  blocks: number;
  /** One depthwise and one 1x1 kernel for all blocks (ConvMixer's `_shared`), or one a block. */
  shared: boolean;
}

const GEOMETRIES: Geometry[] = [
  { shape: [1, 5, 7, 9], k: 3, blocks: 2, shared: false }, // batch 1, odd widths
  { shape: [2, 8, 6, 6], k: 5, blocks: 3, shared: true },
  { shape: [3, 17, 11, 5], k: 7, blocks: 2, shared: false }, // channels not a multiple of the vector width
  { shape: [2, 16, 12, 13], k: 9, blocks: 2, shared: true },
  { shape: [1, 64, 16, 16], k: 5, blocks: 4, shared: true }, // the demo model's blocks at batch 1
];

/** Each block's parameters (tensors of shared kernels repeated), kept; dispose with disposeParams. */
function params(g: Geometry, seed: number): t.ConvMixerBlockParams[] {
  const gen = new t.Generator(seed);
  const c = g.shape[1];
  return t.tidy(() => {
    const v = (scale: number, offset = 0) => t.keep(t.randn([c], { generator: gen }).mul(scale).add(offset));
    const bn = (): t.BiasGeluBatchNormOptions => ({
      weight: v(1),
      bias: v(1),
      runningMean: v(0.2),
      runningVar: t.keep(t.rand([c], { generator: gen }).add(0.5)),
      training: false,
      eps: 1e-5,
    });
    const kernels = () => ({
      dwWeight: t.keep(t.randn([c, 1, g.k, g.k], { generator: gen }).mul(0.3)),
      dwBias: v(0.5),
      pwWeight: t.keep(t.randn([c, c, 1, 1], { generator: gen }).mul(1 / Math.sqrt(c))),
      pwBias: v(0.5),
    });
    const shared = g.shared ? kernels() : null;
    return Array.from({ length: g.blocks }, () => ({ ...(shared ?? kernels()), bn1: bn(), bn2: bn() }));
  });
}

function disposeParams(ps: t.ConvMixerBlockParams[]): void {
  const all = new Set<Tensor>();
  for (const p of ps) for (const x of [p.dwWeight, p.dwBias, p.pwWeight, p.pwBias, ...bnTensors(p.bn1), ...bnTensors(p.bn2)]) all.add(x);
  t.dispose([...all]);
}

const bnTensors = (o: t.BiasGeluBatchNormOptions) => [o.weight, o.bias, o.runningMean, o.runningVar];

type Route = 'run' | 'halves' | 'libtorch';

function forward(x: Tensor, ps: t.ConvMixerBlockParams[], route: Route): Float32Array {
  const go = () =>
    t.noGrad(() =>
      t.tidy(() => {
        if (route === 'run') return t.convMixerBlocks(x, ps).toFloat32Array();
        let y = x;
        for (const p of ps) {
          if (route === 'halves') {
            y = t.depthwiseGeluBatchNormResidual(y, p.dwWeight, p.dwBias, p.bn1);
            y = t.pointwiseGeluBatchNorm(y, p.pwWeight, p.pwBias, p.bn2);
          } else {
            const k = p.dwWeight.dim(2);
            y = t.add(y, t.batchNorm(t.gelu(t.conv2d(y, p.dwWeight, p.dwBias, { padding: (k - 1) / 2, groups: y.dim(1) })), p.bn1));
            y = t.batchNorm(t.gelu(t.conv2d(y, p.pwWeight, p.pwBias)), p.bn2);
          }
        }
        return y.toFloat32Array();
      }),
    );
  return route === 'libtorch' ? withLibtorchOps(go) : go();
}

const PY = `
import torch.nn.functional as F
res = []
for c in inp['cases']:
    x = dec(c['x'])
    for b in c['blocks']:
        T = {k: dec(v) for k, v in b.items()}
        z = F.conv2d(x, T['dwWeight'], T['dwBias'], padding=(T['dwWeight'].shape[2] - 1) // 2, groups=x.shape[1])
        x = x + F.batch_norm(F.gelu(z), T['rm1'], T['rv1'], T['w1'], T['b1'], training=False, eps=1e-5)
        z = F.conv2d(x, T['pwWeight'], T['pwBias'])
        x = F.batch_norm(F.gelu(z), T['rm2'], T['rv2'], T['w2'], T['b2'], training=False, eps=1e-5)
    res.append(enc(x))
print(json.dumps(res))
`;

test('convMixerBlocks: bit for bit the block halves, within 1e-5 of libtorch and PyTorch, 1 and 2 threads', { skip }, () => {
  const live = t.liveTensors();
  const xs = GEOMETRIES.map((g, i) => t.keep(t.randn(g.shape, { generator: new t.Generator(300 + i) })));
  const ps = GEOMETRIES.map((g, i) => params(g, 400 + i));
  const ref = runPython<Encoded[]>(PY, {
    cases: GEOMETRIES.map((_, i) => ({
      x: encodeTensors({ x: xs[i]! }).x,
      blocks: ps[i]!.map((p) =>
        encodeTensors({
          dwWeight: p.dwWeight,
          dwBias: p.dwBias,
          w1: p.bn1.weight,
          b1: p.bn1.bias,
          rm1: p.bn1.runningMean,
          rv1: p.bn1.runningVar,
          pwWeight: p.pwWeight,
          pwBias: p.pwBias,
          w2: p.bn2.weight,
          b2: p.bn2.bias,
          rm2: p.bn2.runningMean,
          rv2: p.bn2.runningVar,
        }),
      ),
    })),
  });
  let compared = 0;
  GEOMETRIES.forEach((g, i) => {
    const what = `[${g.shape}] k${g.k}, ${g.blocks} blocks${g.shared ? ', shared kernels' : ''}`;
    const libtorch = forward(xs[i]!, ps[i]!, 'libtorch');
    // The widest instruction set, AVX2 and the portable kernels (whose plane kernel may not
    // serve every size: the operator then runs the halves itself), at 1 and 2 threads.
    for (const isa of [undefined, 'avx2', 'generic']) {
      const runs: Float32Array[] = [];
      for (const threads of [1, 2]) {
        const how = `${what}, ${isa ?? 'widest ISA'}, ${threads} threads`;
        withThreads(threads, () =>
          withEnv({ KSHARE_NATIVE_POISON: '1', KSHARE_NATIVE_ISA: isa }, () => {
            const got = forward(xs[i]!, ps[i]!, 'run');
            assert.deepEqual(got, forward(xs[i]!, ps[i]!, 'halves'), `${how}: differs from the block halves`);
            assertClose(`${how} against libtorch`, got, libtorch, TOL);
            const e = maxRelError(got, decodeF32(ref[i]!));
            assert.ok(e <= TOL, `${how}: differs from PyTorch by ${e}`);
            runs.push(got);
            compared++;
          }),
        );
      }
      assert.deepEqual(runs[0], runs[1], `${what}, ${isa ?? 'widest ISA'}: 1 and 2 threads differ`);
    }
  });
  assert.equal(compared, 6 * GEOMETRIES.length);
  t.dispose(xs);
  ps.forEach(disposeParams);
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('convMixerBlocks: where the plane kernel does not serve the depthwise convolution, the block halves run (same numbers)', { skip }, () => {
  const g = GEOMETRIES[1]!;
  const x = t.randn(g.shape, { generator: new t.Generator(7) });
  const ps = params(g, 8);
  withEnv({ KSHARE_NATIVE_DEPTHWISE_FORWARD: 'onednn', KSHARE_NATIVE_POISON: '1' }, () => {
    const got = forward(x, ps, 'run');
    assert.deepEqual(got, forward(x, ps, 'halves'));
    assertClose('oneDNN depthwise, against libtorch', got, forward(x, ps, 'libtorch'), TOL);
  });
  x.dispose();
  disposeParams(ps);
});

test('convMixerBlocks refuses bad arguments with errors that name them', { skip }, () => {
  t.tidy(() => {
    const g: Geometry = { shape: [2, 4, 5, 5], k: 3, blocks: 1, shared: false };
    const x = t.randn(g.shape);
    const ps = params(g, 9);
    const p = ps[0]!;
    const f = t.convMixerBlocks;
    assert.throws(() => f(x, []), /blocks must be a non-empty array/);
    assert.throws(
      () => f(x, [{ ...p, dwWeight: t.randn([4, 1, 2, 2]) }]),
      /\(block 0\): 'dwWeight' must be \[4, 1, k, k\] with odd k for input \[2,4,5,5\], got \[4,1,2,2\]/,
    );
    assert.throws(() => f(x, [p, { ...p, pwWeight: t.randn([5, 4, 1, 1]) }]), /\(block 1\): 'pwWeight' must be \[4, 4, 1, 1\]/);
    assert.throws(() => f(x, [{ ...p, bn2: { ...p.bn2, training: true } }]), /'bn2' must be in eval mode/);
    assert.throws(() => f(x, [{ ...p, bn1: { ...p.bn1, runningVar: t.ones([3]) } }]), /bn1: 'runningVar' must have shape \[4\]/);
    assert.throws(() => f(t.to(x, 'float64'), [p]), /'input' must be a float32 CPU tensor, got float64/);
    assert.throws(() => f(t.contiguous(x, 'channels_last'), [p]), /input must be NCHW contiguous/);
    assert.throws(() => f(t.randn([2, 4, 5]), [p]), /input must be \(N, C, H, W\)/);
    // No autograd: refused, not silently detached.
    const w = t.clone(p.pwWeight).requiresGrad_();
    assert.throws(() => f(x, [{ ...p, pwWeight: w }]), /inference only/);
    disposeParams(ps);
  });
});

// ---- routing: Sequential runs a model's blocks through it in inference only ----

function largeAllocations(): number {
  const i = t.cpuAllocatorInfo();
  return i.hits + i.misses;
}

test(
  'ConvMixer inference runs its blocks as one operator; with gradients or in training the halves run',
  { skip: skip || (!t.cpuAllocatorInfo().installed && 'KSHARE_CPU_ALLOCATOR=system: no allocation counts') },
  () => {
    const live = t.liveTensors();
    t.manualSeed(5);
    const model = createModel('convmixer_64_4_k5_p2_shared', { classes: 10 });
    // Batch 8: (8, 64, 16, 16) activations of 512 KiB, which the caching allocator counts.
    const x = t.randn([8, 3, 32, 32], { generator: new t.Generator(2) });
    const measure = (fn: () => Tensor) =>
      t.tidy(() => {
        const before = largeAllocations();
        const y = fn().toFloat32Array();
        return { y, allocations: largeAllocations() - before };
      });
    try {
      model.eval();
      const inference = () => t.noGrad(() => model.forward(x));
      const run = measure(inference);
      const halves = withEnv({ KSHARE_NATIVE_BLOCK_RUN: '0' }, () => measure(inference));
      assert.deepEqual(run.y, halves.y, 'the block run and the halves give the same numbers');
      // The 4 blocks: two activations in all against two a block.
      assert.equal(halves.allocations - run.allocations, 6, `eval forward allocations: run ${run.allocations}, halves ${halves.allocations}`);
      // Grad mode with parameters that require grad: the halves, and the gradient reaches them.
      const withGrad = measure(() => {
        const y = model.forward(x);
        t.sum(y).backward();
        return y;
      });
      assert.ok(withGrad.allocations > halves.allocations, 'a forward that records a graph does not take the block run');
      assert.deepEqual(withGrad.y, run.y, 'eval forward with gradients: the same numbers');
      assert.ok(
        t.tidy(() => model.parameters().every((p) => p.grad !== null)),
        'every parameter got a gradient',
      );
      model.zeroGrad();
      // A block whose forward is replaced on the instance (a hook) runs as itself.
      assert.ok(model instanceof Sequential);
      const block = model.at(3);
      let calls = 0;
      const original = block.forward.bind(block);
      block.forward = (v: Tensor) => {
        calls++;
        return original(v);
      };
      const hooked = t.tidy(() => inference().toFloat32Array());
      delete (block as { forward?: unknown }).forward;
      assert.equal(calls, 1, 'the hooked block ran as itself');
      assert.deepEqual(hooked, run.y);
    } finally {
      model.zeroGrad();
      model.dispose();
      x.dispose();
    }
    assert.equal(t.liveTensors(), live, 'no tensor leaked');
  },
);
