// Parity of ConvMixer's block halves as one operator each (native/conv_gelu_bn.cc):
// x + BN(GELU(depthwise conv(x))) and BN(GELU(1x1 conv(x))), against the same kshare operators
// run apart (bit for bit: the same kernels, the residual added and the convolution's output
// handed over inside the kernels' passes), against libtorch's own ops in this process and
// against python3-torch (1e-5): forward, the gradients of the input, the convolution's weight and
// bias and the BN weight and bias, and the running statistics, on NCHW and channels-last inputs,
// training and eval, depthwise kernel sizes 3/5/7/9 and dilation 2, 1x1 with more and fewer
// output channels, batch 1 and odd widths. Outputs are poisoned with NaN before the kernels
// write them (KSHARE_NATIVE_POISON).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { runPython, encodeTensors, decodeF32, maxRelError, type Encoded } from './helpers/python.js';
import { withEnv, withLibtorchOps, withThreads } from './helpers/env.js';

const TOL = 1e-5;
const OUTPUTS = ['y', 'x.grad', 'convWeight.grad', 'convBias.grad', 'bnWeight.grad', 'bnBias.grad', 'runningMean', 'runningVar'] as const;
const POINTWISE_BUILT = t.runtimeInfo().pointwiseKernel;
const TORCH_MAJOR = Number(t.runtimeInfo().torchVersion.split('.')[0]);

interface Case {
  kind: 'depthwise' | 'pointwise';
  shape: [number, number, number, number];
  /** depthwise: kernel size; pointwise: output channels. */
  k: number;
  dilation: number;
  channelsLast: boolean;
  training: boolean;
}

const GEOMETRIES: Omit<Case, 'channelsLast' | 'training'>[] = [
  { kind: 'depthwise', shape: [1, 5, 7, 9], k: 3, dilation: 1 }, // batch 1, odd widths
  { kind: 'depthwise', shape: [2, 8, 6, 6], k: 5, dilation: 1 },
  { kind: 'depthwise', shape: [3, 17, 11, 5], k: 7, dilation: 1 }, // channels not a multiple of the vector width
  { kind: 'depthwise', shape: [2, 16, 12, 13], k: 9, dilation: 1 },
  { kind: 'depthwise', shape: [2, 9, 10, 10], k: 3, dilation: 2 },
  ...((POINTWISE_BUILT
    ? [
        { kind: 'pointwise', shape: [1, 3, 7, 9], k: 8, dilation: 1 }, // batch 1, a stem-like 3 -> 8
        { kind: 'pointwise', shape: [3, 17, 5, 6], k: 17, dilation: 1 },
        { kind: 'pointwise', shape: [4, 12, 4, 4], k: 5, dilation: 1 }, // fewer outputs than inputs
      ]
    : []) as Omit<Case, 'channelsLast' | 'training'>[]),
];

function cases(): Case[] {
  const out: Case[] = [];
  for (const g of GEOMETRIES) for (const channelsLast of [false, true]) for (const training of [true, false]) out.push({ ...g, channelsLast, training });
  return out;
}

type Inputs = Record<'x' | 'convWeight' | 'convBias' | 'bnWeight' | 'bnBias' | 'runningMean' | 'runningVar' | 'r', Tensor>;

function inputs(c: Case, seed: number): Inputs {
  const gen = new t.Generator(seed);
  const [n, ch, h, w] = c.shape;
  const out = c.kind === 'depthwise' ? ch : c.k;
  return t.tidy(() => ({
    x: t.keep(t.randn(c.shape, { generator: gen })),
    convWeight: t.keep(t.randn(c.kind === 'depthwise' ? [ch, 1, c.k, c.k] : [c.k, ch, 1, 1], { generator: gen }).mul(0.3)),
    convBias: t.keep(t.randn([out], { generator: gen }).mul(0.5)),
    bnWeight: t.keep(t.randn([out], { generator: gen })),
    bnBias: t.keep(t.randn([out], { generator: gen })),
    runningMean: t.keep(t.randn([out], { generator: gen }).mul(0.2)),
    runningVar: t.keep(t.rand([out], { generator: gen }).add(0.5)),
    r: t.keep(t.randn([n, out, h, w], { generator: gen })),
  }));
}

type Route = 'fused' | 'apart' | 'libtorch';

/** One case through the fused operator, kshare's operators apart, or libtorch's ops; every output as floats. */
function run(c: Case, inp: Inputs, route: Route): Float32Array[] {
  const go = () => {
    const T = t.tidy(() => ({
      x: t.keep(c.channelsLast ? t.contiguous(t.clone(inp.x), 'channels_last') : t.clone(inp.x)).requiresGrad_(),
      convWeight: t.keep(t.clone(inp.convWeight)).requiresGrad_(),
      convBias: t.keep(t.clone(inp.convBias)).requiresGrad_(),
      bnWeight: t.keep(t.clone(inp.bnWeight)).requiresGrad_(),
      bnBias: t.keep(t.clone(inp.bnBias)).requiresGrad_(),
      runningMean: t.keep(t.clone(inp.runningMean)),
      runningVar: t.keep(t.clone(inp.runningVar)),
    }));
    try {
      return t.tidy(() => {
        const o = { weight: T.bnWeight, bias: T.bnBias, runningMean: T.runningMean, runningVar: T.runningVar, training: c.training, momentum: 0.1, eps: 1e-5 };
        const dw = c.kind === 'depthwise';
        const conv = (bias: Tensor | null) =>
          dw
            ? t.conv2d(T.x, T.convWeight, bias, { padding: (c.dilation * (c.k - 1)) / 2, dilation: c.dilation, groups: c.shape[1] })
            : t.conv2d(T.x, T.convWeight, bias);
        const residual = (v: Tensor) => (dw ? t.add(v, T.x) : v);
        let y: Tensor;
        if (route === 'fused') {
          y = dw
            ? t.depthwiseGeluBatchNormResidual(T.x, T.convWeight, T.convBias, { ...o, dilation: [c.dilation, c.dilation] })
            : t.pointwiseGeluBatchNorm(T.x, T.convWeight, T.convBias, o);
          if (c.channelsLast && c.shape[2] * c.shape[3] > 1) assert.ok(t.isContiguous(y, 'channels_last'), 'channels-last in, channels-last out');
        } else if (route === 'apart') {
          y = residual(t.biasGeluBatchNorm(conv(null), T.convBias, o));
        } else {
          y = residual(t.batchNorm(t.gelu(conv(T.convBias)), o));
        }
        t.sum(t.mul(y, inp.r)).backward();
        return [y, T.x.grad!, T.convWeight.grad!, T.convBias.grad!, T.bnWeight.grad!, T.bnBias.grad!, T.runningMean, T.runningVar].map((v) =>
          v.toFloat32Array(),
        );
      });
    } finally {
      t.dispose(Object.values(T));
    }
  };
  return route === 'libtorch' ? withLibtorchOps(go) : go();
}

const PY = `
import torch.nn.functional as F
res = []
for c in inp['cases']:
    T = {k: dec(v) for k, v in c['tensors'].items()}
    if c['channels_last']:
        T['x'] = T['x'].contiguous(memory_format=torch.channels_last)
    for k in ['x', 'convWeight', 'convBias', 'bnWeight', 'bnBias']:
        T[k].requires_grad_(True)
    dw = c['kind'] == 'depthwise'
    d = c['dilation']
    if dw:
        z = F.conv2d(T['x'], T['convWeight'], T['convBias'], padding=d * (c['k'] - 1) // 2, dilation=d, groups=T['x'].shape[1])
    else:
        z = F.conv2d(T['x'], T['convWeight'], T['convBias'])
    y = F.batch_norm(F.gelu(z), T['runningMean'], T['runningVar'], T['bnWeight'], T['bnBias'], training=c['training'], momentum=0.1, eps=1e-5)
    if dw:
        y = T['x'] + y
    (y * T['r']).sum().backward()
    res.append([enc(v) for v in [y, T['x'].grad, T['convWeight'].grad, T['convBias'].grad, T['bnWeight'].grad, T['bnBias'].grad,
                                 T['runningMean'], T['runningVar']]])
print(json.dumps(res))
`;

function label(c: Case): string {
  return `${c.kind} [${c.shape}] k${c.k} d${c.dilation} ${c.channelsLast ? 'channels-last' : 'NCHW'} ${c.training ? 'train' : 'eval'}`;
}

test('fused conv + GELU + BatchNorm (+ residual) matches the operators apart, libtorch and PyTorch', () => {
  const live = t.liveTensors();
  const all = cases();
  const ins = all.map((c, i) => inputs(c, 2000 + i));
  const ref = runPython<Encoded[][]>(PY, {
    cases: all.map((c, i) => ({
      kind: c.kind,
      channels_last: c.channelsLast,
      training: c.training,
      k: c.k,
      dilation: c.dilation,
      tensors: encodeTensors(ins[i]!),
    })),
  });
  let compared = 0;
  // The widest ISA, the portable kernels, and 2 threads (batch 1 then takes the 1x1's other path).
  for (const mode of ['widest', 'generic', '2 threads']) {
    const before = t.runtimeInfo().numThreads;
    if (mode === '2 threads') t.setNumThreads(2);
    try {
      withEnv({ KSHARE_NATIVE_POISON: '1', KSHARE_NATIVE_ISA: mode === 'generic' ? 'generic' : undefined }, () => {
        all.forEach((c, i) => {
          const got = run(c, ins[i]!, 'fused');
          const apart = run(c, ins[i]!, 'apart');
          const libtorch = run(c, ins[i]!, 'libtorch');
          const py = ref[i]!.map(decodeF32);
          OUTPUTS.forEach((name, j) => {
            assert.deepEqual(got[j], apart[j], `${mode} ${label(c)}: ${name} differs from the operators apart`);
            for (const [what, r] of [
              ['libtorch', libtorch[j]!],
              ['PyTorch', py[j]!],
            ] as const) {
              const e = maxRelError(got[j]!, r);
              assert.ok(e <= TOL, `${mode} ${label(c)}: ${name} differs from ${what} by ${e}`);
            }
            compared++;
          });
        });
      });
    } finally {
      t.setNumThreads(before);
    }
  }
  assert.equal(compared, 3 * all.length * OUTPUTS.length);
  t.dispose(ins.flatMap((v) => Object.values(v)));
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('fused halves: the demo shape (32,64,16,16) k5, the paper shape (8,256,32,32) k9 and batch 1 at 256 channels agree with the operators apart', () => {
  for (const [shape, k] of [
    [[32, 64, 16, 16], 5],
    [[8, 256, 32, 32], 9],
    [[1, 256, 8, 8], 5], // batch 1: where AMX runs (native/pointwise_conv.cc), fused and apart take the same products
  ] as [[number, number, number, number], number][]) {
    for (const kind of POINTWISE_BUILT ? (['depthwise', 'pointwise'] as const) : (['depthwise'] as const)) {
      for (const channelsLast of [false, true]) {
        const c: Case = { kind, shape, k: kind === 'depthwise' ? k : shape[1], dilation: 1, channelsLast, training: true };
        const inp = inputs(c, 11);
        withEnv({ KSHARE_NATIVE_POISON: '1' }, () => {
          const got = run(c, inp, 'fused');
          const apart = run(c, inp, 'apart');
          OUTPUTS.forEach((name, j) => assert.deepEqual(got[j], apart[j], `${label(c)}: ${name}`));
        });
        t.dispose(Object.values(inp));
      }
    }
  }
});

test('pointwiseGeluBatchNorm refuses bad arguments with errors that name them', { skip: !POINTWISE_BUILT && 'built without oneDNN: no 1x1 operator' }, () => {
  t.tidy(() => {
    const x = t.randn([2, 3, 5, 5]);
    const p = () => t.ones([4]);
    const w = t.randn([4, 3, 1, 1]);
    const o = { weight: p(), bias: p(), runningMean: p(), runningVar: p(), training: true };
    const f = t.pointwiseGeluBatchNorm;
    assert.throws(() => f(x, t.randn([4, 3, 3, 3]), p(), o), /'weight' must be \[out, 3, 1, 1\] for input \[2,3,5,5\], got \[4,3,3,3\]/);
    assert.throws(() => f(x, t.randn([4, 2, 1, 1]), p(), o), /'weight' must be \[out, 3, 1, 1\]/);
    assert.throws(() => f(t.to(x, 'float64'), w, p(), o), /'input' must be a float32 CPU tensor, got float64/);
    assert.throws(() => f(x, w, t.ones([3]), o), /'convBias' must have shape \[4\]/);
    assert.throws(() => f(x, w, p(), { ...o, runningVar: t.ones([3]) }), /'runningVar' must have shape \[4\]/);
    assert.throws(() => f(t.randn([1, 3, 1, 1]), w, p(), o), /more than 1 value per channel/);
    assert.throws(() => f(t.randn([2, 3, 5]), w, p(), o), /input must be \(N, C, H, W\)/);
  });
});

test('depthwiseGeluBatchNormResidual refuses bad arguments with errors that name them', () => {
  t.tidy(() => {
    const x = t.randn([2, 3, 5, 5]);
    const p = () => t.ones([3]);
    const w = t.randn([3, 1, 3, 3]);
    const o = { weight: p(), bias: p(), runningMean: p(), runningVar: p(), training: true };
    const f = t.depthwiseGeluBatchNormResidual;
    assert.throws(() => f(x, t.randn([3, 1, 2, 2]), p(), o), /'dwWeight' must be \[3, 1, kh, kw\] with odd kh and kw .* got \[3,1,2,2\]/);
    assert.throws(() => f(x, t.randn([4, 1, 3, 3]), p(), o), /'dwWeight' must be \[3, 1, kh, kw\]/);
    assert.throws(() => f(t.to(x, 'float64'), w, p(), o), /'input' must be a float32 CPU tensor, got float64/);
    assert.throws(() => f(x, w, t.ones([4]), o), /'convBias' must have shape \[3\]/);
    assert.throws(() => f(x, w, p(), { ...o, dilation: [0, 1] }), /dilation must be two positive integers/);
    assert.throws(() => f(t.randn([1, 3, 1, 1]), w, p(), o), /more than 1 value per channel/);
    assert.throws(() => f(x, w, p(), { ...o, training: undefined as unknown as boolean }), /boolean 'training'/);
  });
});

// ---- integration: ConvMixer's block halves run as the fused operators ----

function largeAllocations(): number {
  const i = t.cpuAllocatorInfo();
  return i.hits + i.misses;
}

test(
  'ConvMixer runs its block halves fused (activations and gradients never stored) with the same numbers as apart',
  { skip: !t.cpuAllocatorInfo().installed && 'KSHARE_CPU_ALLOCATOR=system: no allocation counts' },
  () => {
    const live = t.liveTensors();
    const results: Record<string, { out: Float32Array[]; allocations: number; backwardAllocations: number }> = {};
    for (const blocks of ['1', '0']) {
      // The halves themselves: a run of blocks in inference as one operator is convmixer-blocks.test.ts's,
      // the stem as a 1x1 the next test's.
      withEnv({ KSHARE_NATIVE_BLOCKS: blocks, KSHARE_NATIVE_BLOCK_RUN: '0', KSHARE_NATIVE_PATCH_STEM: '0' }, () => {
        t.manualSeed(4);
        const model = createModel('convmixer_64_4_k5_p2_shared', { classes: 10 });
        try {
          const out = t.tidy(() => {
            // Batch 8: (8, 64, 16, 16) activations of 512 KiB, which the caching allocator counts.
            const x = t.randn([8, 3, 32, 32], { generator: new t.Generator(1) });
            model.train();
            const y = model.forward(x);
            const loss = t.sum(t.mul(y, y));
            const beforeBackward = largeAllocations();
            loss.backward();
            const backwardAllocations = largeAllocations() - beforeBackward;
            const got = [y, ...model.parameters().map((p) => p.grad!), ...model.buffers()].map((v) => v.toFloat32Array());
            model.eval();
            const before = largeAllocations();
            got.push(t.noGrad(() => model.forward(x)).toFloat32Array());
            results[blocks] = { out: got, allocations: largeAllocations() - before, backwardAllocations };
            return got;
          });
          assert.ok(out.length > 3);
        } finally {
          model.zeroGrad();
          model.dispose();
        }
      });
    }
    assert.deepEqual(results['1']!.out, results['0']!.out, 'fused and apart give the same numbers');
    // NCHW: apart, each of the 4 blocks allocates the depthwise output, the fused kernel's output
    // and the residual sum, then the 1x1 output and the second fused kernel's output; fused, only
    // the fused kernels' outputs (the convolutions' output goes straight into their first pass).
    assert.equal(
      results['0']!.allocations - results['1']!.allocations,
      POINTWISE_BUILT ? 12 : 8,
      `eval forward allocations: fused ${results['1']!.allocations}, apart ${results['0']!.allocations}`,
    );
    // The backward: apart, each block's residual gradient is summed into a tensor of its own (the
    // fused depthwise kernel adds it as it writes the input gradient), and the 1x1 half's
    // GELU/BN gradient is stored (fused, its rows go straight into the 1x1 backward). libtorch 2's
    // autograd sums the residual gradient into a buffer it already holds (measured with 2.13), so
    // there only the 1x1 half's saving is left. And fused, the depthwise half's grad output goes
    // plane by plane to both of the convolution's gradients, never stored (apart, the GELU/BN
    // backward stores it for the convolution's backward to read).
    const residualSums = TORCH_MAJOR >= 2 ? 0 : 4;
    const depthwiseGradOutputs = 4;
    assert.equal(
      results['0']!.backwardAllocations - results['1']!.backwardAllocations,
      (POINTWISE_BUILT ? 4 : 0) + residualSums + depthwiseGradOutputs,
      `training backward allocations: fused ${results['1']!.backwardAllocations}, apart ${results['0']!.backwardAllocations}`,
    );
    assert.equal(t.liveTensors(), live, 'no tensor leaked');
  },
);

test('pixelUnshuffle moves each r x r block into channels c·r² + i·r + j, as PyTorch', () => {
  t.tidy(() => {
    const [n, c, h, w, r] = [2, 3, 4, 6, 2];
    const x = t.arange(0, n * c * h * w).reshape([n, c, h, w]);
    const got = t.pixelUnshuffle(x, r);
    assert.deepEqual(got.shape, [n, c * r * r, h / r, w / r]);
    const v = got.toFloat32Array();
    const [oh, ow] = [h / r, w / r];
    for (let b = 0; b < n; b++)
      for (let ch = 0; ch < c; ch++)
        for (let i = 0; i < r; i++)
          for (let j = 0; j < r; j++)
            for (let y = 0; y < oh; y++)
              for (let q = 0; q < ow; q++) {
                const want = ((b * c + ch) * h + y * r + i) * w + q * r + j;
                assert.equal(
                  v[((b * c * r * r + ch * r * r + i * r + j) * oh + y) * ow + q],
                  want,
                  `image ${b} channel ${ch} offset (${i}, ${j}) at (${y}, ${q})`,
                );
              }
    assert.throws(() => t.pixelUnshuffle(x, 4), /height 4 and width 6 must be multiples of the factor 4/);
    assert.throws(() => t.pixelUnshuffle(x, 0), /'factor' must be an integer >= 1/);
  });
});

test(
  "ConvMixer's patch-embedding stem runs as the fused 1x1 operator on pixelUnshuffle(x): within 1e-5 of a float64 reference, its output never stored",
  {
    skip:
      (!POINTWISE_BUILT && 'built without oneDNN: no 1x1 operator') || (!t.cpuAllocatorInfo().installed && 'KSHARE_CPU_ALLOCATOR=system: no allocation counts'),
  },
  () => {
    const live = t.liveTensors();
    // float32 through kshare's kernels with the stem as a 1x1 ('1') or as libtorch's strided
    // convolution ('0'), and libtorch's ops in float64 (the reference: the two float32 routes
    // round differently, 1.4e-5 apart on one gradient while each is within 8e-6 of float64).
    const run = (stem: '1' | '0' | 'float64') =>
      withEnv(
        { KSHARE_NATIVE_PATCH_STEM: stem === '0' ? '0' : '1', KSHARE_NATIVE_BLOCK_RUN: '0', KSHARE_NATIVE_KERNELS: stem === 'float64' ? '0' : '1' },
        () => {
          t.manualSeed(5);
          const model = createModel('convmixer_64_4_k5_p2_shared', { classes: 10 });
          if (stem === 'float64') model.to({ dtype: 'float64' });
          try {
            return t.tidy(() => {
              const x32 = t.randn([8, 3, 32, 32], { generator: new t.Generator(2) });
              const x = stem === 'float64' ? t.to(x32, 'float64') : x32;
              model.train();
              const y = model.forward(x);
              t.sum(t.mul(y, y)).backward();
              const out = [y, ...model.parameters().map((p) => p.grad!), ...model.buffers().filter((b) => b.dtype !== 'int64')].map((v) => v.toFloat32Array());
              model.eval();
              const before = largeAllocations();
              out.push(t.noGrad(() => model.forward(x)).toFloat32Array());
              return { out, allocations: largeAllocations() - before };
            });
          } finally {
            model.zeroGrad();
            model.dispose();
          }
        },
      );
    const [fused, strided, ref] = [run('1'), run('0'), run('float64')];
    assert.equal(fused.out.length, ref.out.length);
    fused.out.forEach((g, i) => {
      const err = maxRelError(g, ref.out[i]!);
      assert.ok(err <= TOL, `output ${i} (y, the parameters' gradients, the running stats, the eval output): relative error ${err} against float64`);
    });
    // The strided convolution's (8, 64, 16, 16) output, 512 KiB, in oneDNN's blocked layout and
    // converted back, is not allocated with the stem as a 1x1.
    assert.equal(strided.allocations - fused.allocations, 2, `eval forward allocations: 1x1 ${fused.allocations}, strided ${strided.allocations}`);
    assert.equal(t.liveTensors(), live, 'no tensor leaked');
  },
);

const BLOCK_OUTPUTS = [
  'y',
  'x.grad',
  'dwWeight.grad',
  'dwBias.grad',
  'bn1.weight.grad',
  'bn1.bias.grad',
  'pwWeight.grad',
  'pwBias.grad',
  'bn2.weight.grad',
  'bn2.bias.grad',
  'bn1.runningMean',
  'bn1.runningVar',
  'bn2.runningMean',
  'bn2.runningVar',
] as const;

/** A ConvMixer block through t.convMixerBlock ('block') or its two half operators in turn ('halves'). */
function runBlock(
  shape: [number, number, number, number],
  k: number,
  seed: number,
  o: { route: 'block' | 'halves'; channelsLast: boolean; training: boolean },
) {
  const [n, c, h, w] = shape;
  const gen = new t.Generator(seed);
  return withEnv({ KSHARE_NATIVE_POISON: '1' }, () =>
    t.tidy(() => {
      const leaf = (v: Tensor) => v.detach().requiresGrad_();
      const x0 = t.randn(shape, { generator: gen });
      const x = leaf(o.channelsLast ? t.contiguous(x0, 'channels_last') : x0);
      const p = {
        dwWeight: leaf(t.randn([c, 1, k, k], { generator: gen }).mul(0.3)),
        dwBias: leaf(t.randn([c], { generator: gen }).mul(0.5)),
        pwWeight: leaf(t.randn([c, c, 1, 1], { generator: gen }).mul(0.2)),
        pwBias: leaf(t.randn([c], { generator: gen }).mul(0.5)),
      };
      const bn = () => ({
        weight: leaf(t.randn([c], { generator: gen })),
        bias: leaf(t.randn([c], { generator: gen })),
        runningMean: t.randn([c], { generator: gen }).mul(0.2),
        runningVar: t.rand([c], { generator: gen }).add(0.5),
        training: o.training,
        momentum: 0.1,
        eps: 1e-5,
      });
      const bn1 = bn(),
        bn2 = bn();
      const r = t.randn([n, c, h, w], { generator: gen });
      const y =
        o.route === 'block'
          ? t.convMixerBlock(x, { ...p, bn1, bn2 })
          : t.pointwiseGeluBatchNorm(t.depthwiseGeluBatchNormResidual(x, p.dwWeight, p.dwBias, bn1), p.pwWeight, p.pwBias, bn2);
      t.sum(t.mul(y, r)).backward();
      return [y, x, p.dwWeight, p.dwBias, bn1.weight, bn1.bias, p.pwWeight, p.pwBias, bn2.weight, bn2.bias]
        .map((v, i) => (i === 0 ? v : v.grad!))
        .concat([bn1.runningMean, bn1.runningVar, bn2.runningMean, bn2.runningVar])
        .map((v) => v.toFloat32Array());
    }),
  );
}

test(
  "convMixerBlock (a whole ConvMixer block as one operator) gives its two halves' numbers bit for bit: output, every gradient, the running stats",
  { skip: !POINTWISE_BUILT && 'built without oneDNN: no 1x1 operator' },
  () => {
    const live = t.liveTensors();
    const shapes: [[number, number, number, number], number][] = [
      [[1, 5, 7, 9], 3], // batch 1: fewer images than threads, the 1x1's backward stores its rows
      [[4, 12, 6, 5], 5],
      [[3, 144, 4, 4], 3], // at least 128 channels: the 1x1 products on AMX where the CPU has it
    ];
    shapes.forEach(([shape, k], i) => {
      for (const threads of [1, 2])
        for (const channelsLast of [false, true])
          for (const training of [true, false]) {
            const what = `[${shape}] k${k}, ${threads} thread(s), ${channelsLast ? 'channels-last' : 'NCHW'}, ${training ? 'training' : 'eval'}`;
            const handOffs = t.runtimeInfo().blockRowSumHandOffs;
            const block = withThreads(threads, () => runBlock(shape, k, 40 + i, { route: 'block', channelsLast, training }));
            // The hand-off the block operator exists for (its numbers are the halves' either way):
            // NCHW training with at least as many images as threads.
            const handedOff = !channelsLast && training && shape[0] >= threads;
            assert.equal(t.runtimeInfo().blockRowSumHandOffs - handOffs, handedOff ? 1 : 0, `${what}: row-sum hand-offs`);
            const halves = withThreads(threads, () => runBlock(shape, k, 40 + i, { route: 'halves', channelsLast, training }));
            block.forEach((v, j) => assert.deepEqual(v, halves[j], `${what}: ${BLOCK_OUTPUTS[j]}`));
          }
    });
    assert.equal(t.liveTensors(), live, 'no tensor leaked');
  },
);

test('convMixerBlock names bad arguments', { skip: !POINTWISE_BUILT && 'built without oneDNN: no 1x1 operator' }, () => {
  t.tidy(() => {
    const x = t.randn([2, 4, 5, 5]);
    const bn = (training: boolean) => ({ weight: t.ones([4]), bias: t.zeros([4]), runningMean: t.zeros([4]), runningVar: t.ones([4]), training });
    const ok = { dwWeight: t.randn([4, 1, 3, 3]), dwBias: t.zeros([4]), pwWeight: t.randn([4, 4, 1, 1]), pwBias: t.zeros([4]), bn1: bn(true), bn2: bn(true) };
    assert.equal(t.convMixerBlock(x, ok).shape.join(), '2,4,5,5');
    assert.throws(() => t.convMixerBlock(x, { ...ok, dwWeight: t.randn([4, 1, 2, 2]) }), /'dwWeight' must be \[4, 1, kh, kw\] with odd kh and kw/);
    assert.throws(() => t.convMixerBlock(x, { ...ok, pwWeight: t.randn([4, 3, 1, 1]) }), /'pwWeight' must be \[out, 4, 1, 1\]/);
    assert.throws(() => t.convMixerBlock(x, { ...ok, pwBias: t.zeros([3]) }), /bn2: 'convBias' must have shape \[4\]/);
    assert.throws(() => t.convMixerBlock(x, { ...ok, bn2: bn(false) }), /'bn1' and 'bn2' must both train or both evaluate/);
    assert.throws(() => t.convMixerBlock(x, { ...ok, dilation: [0, 1] }), /dilation must be two positive integers/);
    assert.throws(() => t.convMixerBlock(x, null as unknown as t.ConvMixerBlockOptions), /expected an object of block parameters/);
  });
});
