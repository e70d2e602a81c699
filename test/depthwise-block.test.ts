// Parity of the fused ConvMixer residual half, x + BN(GELU(depthwise conv(x))) in one operator
// (native/depthwise_block.cc), against the same three kshare operators run apart (bit for bit:
// the same kernels, the residual added in the kernels' passes), against libtorch's own ops in this
// process and against python3-torch (1e-5): forward, the gradients of the input, the depthwise
// weight and bias and the BN weight and bias, and the running statistics, on NCHW and
// channels-last inputs, training and eval, kernel sizes 3/5/7/9, dilation 2, batch 1 and odd
// widths. Outputs are poisoned with NaN before the kernels write them (KSHARE_NATIVE_POISON).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { runPython, encode, decodeF32, maxRelError, type Encoded } from './helpers/python.js';
import { withEnv, withLibtorchOps } from './helpers/env.js';

const TOL = 1e-5;
const OUTPUTS = ['y', 'x.grad', 'dwWeight.grad', 'dwBias.grad', 'bnWeight.grad', 'bnBias.grad', 'runningMean', 'runningVar'] as const;

interface Case {
  shape: [number, number, number, number];
  k: number;
  dilation: number;
  channelsLast: boolean;
  training: boolean;
}

const GEOMETRIES: { shape: [number, number, number, number]; k: number; dilation: number }[] = [
  { shape: [1, 5, 7, 9], k: 3, dilation: 1 }, // batch 1, odd widths
  { shape: [2, 8, 6, 6], k: 5, dilation: 1 },
  { shape: [3, 17, 11, 5], k: 7, dilation: 1 }, // channels not a multiple of the vector width
  { shape: [2, 16, 12, 13], k: 9, dilation: 1 },
  { shape: [2, 9, 10, 10], k: 3, dilation: 2 },
];

function cases(): Case[] {
  const out: Case[] = [];
  for (const g of GEOMETRIES) for (const channelsLast of [false, true]) for (const training of [true, false]) out.push({ ...g, channelsLast, training });
  return out;
}

type Inputs = Record<'x' | 'dwWeight' | 'dwBias' | 'bnWeight' | 'bnBias' | 'runningMean' | 'runningVar' | 'r', Tensor>;

function inputs(c: Case, seed: number): Inputs {
  const gen = new t.Generator(seed);
  const ch = c.shape[1];
  return t.tidy(() => ({
    x: t.keep(t.randn(c.shape, { generator: gen })),
    dwWeight: t.keep(t.randn([ch, 1, c.k, c.k], { generator: gen }).mul(0.3)),
    dwBias: t.keep(t.randn([ch], { generator: gen }).mul(0.5)),
    bnWeight: t.keep(t.randn([ch], { generator: gen })),
    bnBias: t.keep(t.randn([ch], { generator: gen })),
    runningMean: t.keep(t.randn([ch], { generator: gen }).mul(0.2)),
    runningVar: t.keep(t.rand([ch], { generator: gen }).add(0.5)),
    r: t.keep(t.randn(c.shape, { generator: gen })),
  }));
}

type Route = 'fused' | 'apart' | 'libtorch';

/** One case through the fused operator, kshare's three operators apart, or libtorch's ops; every output as floats. */
function run(c: Case, inp: Inputs, route: Route): Float32Array[] {
  const go = () => {
    const T = t.tidy(() => ({
      x: t.keep(c.channelsLast ? t.contiguous(t.clone(inp.x), 'channels_last') : t.clone(inp.x)).requiresGrad_(),
      dwWeight: t.keep(t.clone(inp.dwWeight)).requiresGrad_(),
      dwBias: t.keep(t.clone(inp.dwBias)).requiresGrad_(),
      bnWeight: t.keep(t.clone(inp.bnWeight)).requiresGrad_(),
      bnBias: t.keep(t.clone(inp.bnBias)).requiresGrad_(),
      runningMean: t.keep(t.clone(inp.runningMean)),
      runningVar: t.keep(t.clone(inp.runningVar)),
    }));
    try {
      return t.tidy(() => {
        const o = { weight: T.bnWeight, bias: T.bnBias, runningMean: T.runningMean, runningVar: T.runningVar, training: c.training, momentum: 0.1, eps: 1e-5 };
        const pad = (c.dilation * (c.k - 1)) / 2;
        const conv = (bias: Tensor | null) => t.conv2d(T.x, T.dwWeight, bias, { padding: pad, dilation: c.dilation, groups: c.shape[1] });
        let y: Tensor;
        if (route === 'fused') {
          y = t.depthwiseGeluBatchNormResidual(T.x, T.dwWeight, T.dwBias, { ...o, dilation: [c.dilation, c.dilation] });
          if (c.channelsLast) assert.ok(t.isContiguous(y, 'channels_last'), 'channels-last in, channels-last out');
        } else if (route === 'apart') {
          y = t.add(t.biasGeluBatchNorm(conv(null), T.dwBias, o), T.x);
        } else {
          y = t.add(t.batchNorm(t.gelu(conv(T.dwBias)), o), T.x);
        }
        t.sum(t.mul(y, inp.r)).backward();
        return [y, T.x.grad!, T.dwWeight.grad!, T.dwBias.grad!, T.bnWeight.grad!, T.bnBias.grad!, T.runningMean, T.runningVar].map((v) => v.toFloat32Array());
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
    for k in ['x', 'dwWeight', 'dwBias', 'bnWeight', 'bnBias']:
        T[k].requires_grad_(True)
    d = c['dilation']
    z = F.conv2d(T['x'], T['dwWeight'], T['dwBias'], padding=d * (c['k'] - 1) // 2, dilation=d, groups=T['x'].shape[1])
    y = T['x'] + F.batch_norm(F.gelu(z), T['runningMean'], T['runningVar'], T['bnWeight'], T['bnBias'],
                              training=c['training'], momentum=0.1, eps=1e-5)
    (y * T['r']).sum().backward()
    res.append([enc(v) for v in [y, T['x'].grad, T['dwWeight'].grad, T['dwBias'].grad, T['bnWeight'].grad, T['bnBias'].grad,
                                 T['runningMean'], T['runningVar']]])
print(json.dumps(res))
`;

function label(c: Case): string {
  return `[${c.shape}] k${c.k} d${c.dilation} ${c.channelsLast ? 'channels-last' : 'NCHW'} ${c.training ? 'train' : 'eval'}`;
}

test('fused depthwise conv + GELU + BatchNorm + residual matches the operators apart, libtorch and PyTorch', () => {
  const live = t.liveTensors();
  const all = cases();
  const ins = all.map((c, i) => inputs(c, 2000 + i));
  const ref = runPython<Encoded[][]>(PY, {
    cases: all.map((c, i) => ({
      channels_last: c.channelsLast,
      training: c.training,
      k: c.k,
      dilation: c.dilation,
      tensors: Object.fromEntries(Object.entries(ins[i]!).map(([k, v]) => [k, encode(v.toFloat32Array(), v.shape)])),
    })),
  });
  let compared = 0;
  for (const isa of ['widest', 'generic']) {
    withEnv({ KSHARE_NATIVE_POISON: '1', KSHARE_NATIVE_ISA: isa === 'widest' ? undefined : isa }, () => {
      all.forEach((c, i) => {
        const got = run(c, ins[i]!, 'fused');
        const apart = run(c, ins[i]!, 'apart');
        const libtorch = run(c, ins[i]!, 'libtorch');
        const py = ref[i]!.map(decodeF32);
        OUTPUTS.forEach((name, j) => {
          assert.deepEqual(got[j], apart[j], `${isa} ${label(c)}: ${name} differs from the three operators apart`);
          for (const [what, r] of [
            ['libtorch', libtorch[j]!],
            ['PyTorch', py[j]!],
          ] as const) {
            const e = maxRelError(got[j]!, r);
            assert.ok(e <= TOL, `${isa} ${label(c)}: ${name} differs from ${what} by ${e}`);
          }
          compared++;
        });
      });
    });
  }
  assert.equal(compared, 2 * all.length * OUTPUTS.length);
  t.dispose(ins.flatMap((v) => Object.values(v)));
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
});

test('fused residual half: the demo shape (32,64,16,16) k5 and the paper shape (8,256,32,32) k9 agree with the operators apart', () => {
  for (const [shape, k] of [
    [[32, 64, 16, 16], 5],
    [[8, 256, 32, 32], 9],
  ] as [[number, number, number, number], number][]) {
    for (const channelsLast of [false, true]) {
      const c: Case = { shape, k, dilation: 1, channelsLast, training: true };
      const inp = inputs(c, 11);
      withEnv({ KSHARE_NATIVE_POISON: '1' }, () => {
        const got = run(c, inp, 'fused');
        const apart = run(c, inp, 'apart');
        OUTPUTS.forEach((name, j) => assert.deepEqual(got[j], apart[j], `${label(c)}: ${name}`));
      });
      t.dispose(Object.values(inp));
    }
  }
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

// ---- integration: ConvMixer's Residual(depthwise conv → GELU → BN) runs as the fused operator ----

function largeAllocations(): number {
  const i = t.cpuAllocatorInfo();
  return i.hits + i.misses;
}

test(
  'ConvMixer runs its residual halves fused (two activations fewer each) with the same numbers as apart',
  { skip: !t.cpuAllocatorInfo().installed && 'KSHARE_CPU_ALLOCATOR=system: no allocation counts' },
  () => {
    const live = t.liveTensors();
    const results: Record<string, { out: Float32Array[]; allocations: number }> = {};
    for (const residual of ['1', '0']) {
      withEnv({ KSHARE_NATIVE_RESIDUAL: residual }, () => {
        t.manualSeed(4);
        const model = createModel('convmixer_64_4_k5_p2_shared', { classes: 10 });
        try {
          const out = t.tidy(() => {
            // Batch 8: (8, 64, 16, 16) activations of 512 KiB, which the caching allocator counts.
            const x = t.randn([8, 3, 32, 32], { generator: new t.Generator(1) });
            model.train();
            const y = model.forward(x);
            t.sum(t.mul(y, y)).backward();
            const got = [y, ...model.parameters().map((p) => p.grad!), ...model.buffers()].map((v) => v.toFloat32Array());
            model.eval();
            const before = largeAllocations();
            got.push(t.noGrad(() => model.forward(x)).toFloat32Array());
            results[residual] = { out: got, allocations: largeAllocations() - before };
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
    // and the residual sum; fused, only its output (the convolved planes go straight into the
    // fused kernel's first pass).
    assert.equal(
      results['0']!.allocations - results['1']!.allocations,
      8,
      `eval forward allocations: fused ${results['1']!.allocations}, apart ${results['0']!.allocations}`,
    );
    assert.equal(t.liveTensors(), live, 'no tensor leaked');
  },
);
