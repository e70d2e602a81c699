// Micro-benchmark of kshare's depthwise convolution kernel (native/depthwise_conv.cc) against
// python3-torch 1.13 on the same machine, BLAS and thread count, paired in one run (see
// bench/paired.ts): forward, grad input, grad weight and the whole backward (input + weight +
// bias, what a training step asks for) at the demo shape (32, 64, 16, 16) k5 and the paper's
// (8, 256, 32, 32) k9, NCHW and channels-last, 1 and 2 threads.
//
//   node dist/bench/depthwise.js [--threads 1,2] [--rounds 5] [--reps 10] [--only text]
//                                [--isa default,avx2] [--out bench/results/depthwise.json]
//
// --isa times kshare's kernels once per listed instruction-set cap (KSHARE_NATIVE_ISA: default =
// the environment's own setting, i.e. the widest the CPU has unless KSHARE_NATIVE_ISA was
// exported; avx2; generic), each paired with PyTorch again, so tiers compare in one run.
// ratio = referenceMs / kshareMs (medians of wall-clock time; above 1: kshare is faster).
// PyTorch's side is F.conv2d (groups = C) and aten::convolution_backward with the same
// output mask, i.e. what its autograd runs for a depthwise nn.Conv2d.
import os from 'node:os';
import path from 'node:path';
import { realpathSync, writeFileSync, mkdirSync, renameSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { runKernel, runKernelInPlace } from '../src/tensor/kernels.js';
import { native } from '../src/tensor/native.js';
import { ReferenceServer, timePaired, type PairedRow } from './paired.js';
import { ompWaitSetting } from './cpu-common.js';

const ROOT = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const p of [path.resolve(here, '..'), path.resolve(here, '../..')]) if (existsSync(path.join(p, 'bench', 'paired.ts'))) return p;
  throw new Error('depthwise: cannot find the repository root');
})();

interface Shape {
  n: number;
  c: number;
  hw: number;
  k: number;
}
const SHAPES: { label: string; s: Shape }[] = [
  { label: '(32,64,16,16) k5', s: { n: 32, c: 64, hw: 16, k: 5 } },
  { label: '(8,256,32,32) k9', s: { n: 8, c: 256, hw: 32, k: 9 } },
];
type Kernel = 'forward' | 'grad input' | 'grad weight' | 'backward';
const KERNELS: Kernel[] = ['forward', 'grad input', 'grad weight', 'backward'];
const MASKS: Record<Exclude<Kernel, 'forward'>, [boolean, boolean, boolean]> = {
  'grad input': [true, false, false],
  'grad weight': [false, true, false],
  backward: [true, true, true],
};

/** The PyTorch side of one case: tensors made from the same seed there, run() times one call. */
function referenceCode(s: Shape, cl: boolean, kernel: Kernel): string {
  const fmt = cl ? 'torch.channels_last' : 'torch.contiguous_format';
  const p = (s.k - 1) / 2;
  const lines = [
    'torch.manual_seed(0)',
    `x = torch.randn(${s.n}, ${s.c}, ${s.hw}, ${s.hw}).contiguous(memory_format=${fmt})`,
    `gy = torch.randn(${s.n}, ${s.c}, ${s.hw}, ${s.hw}).contiguous(memory_format=${fmt})`,
    `w = torch.randn(${s.c}, 1, ${s.k}, ${s.k}); b = torch.randn(${s.c})`,
  ];
  if (kernel === 'forward') {
    lines.push('def run():', `  with torch.no_grad(): F.conv2d(x, w, b, padding=${p}, groups=${s.c})`);
  } else {
    const m = MASKS[kernel].map((v) => (v ? 'True' : 'False')).join(', ');
    lines.push('def run():', `  torch.ops.aten.convolution_backward(gy, x, w, [${s.c}], [1, 1], [${p}, ${p}], [1, 1], False, [0, 0], ${s.c}, [${m}])`);
  }
  return lines.join('\n');
}

function kshareCase(s: Shape, cl: boolean, kernel: Kernel): { run: () => void; dispose: () => void } {
  const fmt = (v: Tensor) => (cl ? t.contiguous(v, 'channels_last') : v);
  const x = t.tidy(() => fmt(t.randn([s.n, s.c, s.hw, s.hw])));
  const gy = t.tidy(() => fmt(t.randn([s.n, s.c, s.hw, s.hw])));
  const w = t.randn([s.c, 1, s.k, s.k]),
    b = t.randn([s.c]);
  const run =
    kernel === 'forward'
      ? () => native.dispose(runKernel('bench', 'depthwiseConv2d', [x.handle, w.handle, b.handle, [1, 1]]) as never)
      : () => runKernelInPlace('bench', 'depthwiseConv2dBackward', [gy.handle, x.handle, w.handle, [1, 1], MASKS[kernel]]);
  return { run: () => t.noGrad(run), dispose: () => t.dispose([x, gy, w, b]) };
}

async function main(): Promise<void> {
  const o = new Command()
    .name('depthwise')
    .description('Time the depthwise convolution kernels in kshare and PyTorch, paired in one run')
    .option('--threads <list>', 'comma-separated intra-op thread counts', '1,2')
    .option('--rounds <n>', 'alternations of kshare and PyTorch per case', '5')
    .option('--reps <n>', 'timed calls per side and round', '10')
    .option('--only <text>', 'only cases whose name contains text')
    .option('--isa <list>', 'comma-separated KSHARE_NATIVE_ISA caps for kshare: default, avx2, generic', 'default')
    .option('--out <file>', 'where to write the JSON', path.join(ROOT, 'bench', 'results', 'depthwise.json'))
    .parse()
    .opts<{ threads: string; rounds: string; reps: string; only?: string; isa: string; out: string }>();
  const isas = o.isa.split(',').map((v) => v.trim());
  for (const isa of isas) if (!['default', 'avx2', 'generic'].includes(isa)) throw new Error(`depthwise: --isa takes default, avx2 or generic, got '${isa}'`);
  const opts = { rounds: Number(o.rounds), reps: Number(o.reps), warmup: 3 };
  const rows: (PairedRow & { threads: number; isa: string })[] = [];
  // "default" is the cap the user started with (none, or an exported KSHARE_NATIVE_ISA).
  const userIsa = process.env.KSHARE_NATIVE_ISA;
  const restoreIsa = () => {
    if (userIsa === undefined) delete process.env.KSHARE_NATIVE_ISA;
    else process.env.KSHARE_NATIVE_ISA = userIsa;
  };
  let torchVersion = '';
  for (const threads of o.threads.split(',').map(Number)) {
    t.setNumThreads(threads);
    const ref = await ReferenceServer.start(threads);
    torchVersion = (await ref.info()).torch;
    try {
      for (const { label, s } of SHAPES) {
        for (const cl of [false, true]) {
          for (const kernel of KERNELS) {
            for (const isa of isas) {
              const name = `depthwise ${kernel} ${label} ${cl ? 'channels-last' : 'NCHW'} ${threads}t${isa === 'default' ? '' : ` [${isa}]`}`;
              if (o.only && !name.includes(o.only)) continue;
              if (isa === 'default') restoreIsa();
              else process.env.KSHARE_NATIVE_ISA = isa;
              const k = kshareCase(s, cl, kernel);
              try {
                const row = await timePaired(ref, { name, kshare: k.run, reference: referenceCode(s, cl, kernel) }, opts);
                rows.push({ ...row, threads, isa: isa === 'default' ? (userIsa ?? 'default') : isa });
                console.log(
                  `${name.padEnd(70)} kshare ${row.kshareMs.toFixed(3).padStart(8)} ms  torch ${row.referenceMs.toFixed(3).padStart(8)} ms  x${row.ratio.toFixed(2).padStart(6)}   (cpu ${row.kshareCpuMs.toFixed(3)} / ${row.referenceCpuMs.toFixed(3)} ms)`,
                );
              } finally {
                k.dispose();
                restoreIsa();
              }
            }
          }
        }
      }
    } finally {
      ref.close();
    }
  }
  const blas = (() => {
    try {
      return realpathSync('/usr/lib/x86_64-linux-gnu/libblas.so.3');
    } catch {
      return 'unknown';
    }
  })();
  const out = {
    machine: `${os.cpus()[0]?.model ?? '?'} x${os.cpus().length}`,
    torch: torchVersion,
    blas,
    command: `node dist/bench/depthwise.js ${process.argv.slice(2).join(' ')}`.trim(),
    method:
      `paired rounds (${opts.rounds} x ${opts.reps} calls a side), medians of wall-clock and process CPU time; ` +
      `OpenMP wait settings ${ompWaitSetting()} on both sides above 1 thread, unset for the reference at 1 (bench/paired.ts)`,
    rows,
  };
  mkdirSync(path.dirname(o.out), { recursive: true });
  writeFileSync(o.out + '.tmp', JSON.stringify(out, null, 2) + '\n');
  renameSync(o.out + '.tmp', o.out);
  console.log(`wrote ${o.out}`);
}

await main();
