// The host cost of one small operator call, kshare against PyTorch eager in one run: each call
// on tiny CPU tensors (the arithmetic is negligible), one thread. On a GPU every operator of a
// forward pass and of the optimizer is launched from the host, so a model of small layers (the
// SE-ResNet rows of bench/gpu-step.ts, ~10 ms steps on an H200) can be bound by this cost.
// Run on purpose:
//
//   node dist/bench/op-overhead.js [--calls 20000] [--rounds 3] [--out bench/results/op-overhead.json]
//
// Each round times every operator in this process (calls inside one tidy scope, after as many
// untimed calls), then runs bench/reference_op_overhead.py once; rows are medians over rounds,
// ratio = PyTorch us / kshare us (above 1: kshare's call is cheaper).
import path from 'node:path';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import * as t from '../src/tensor/index.js';
import { median, round } from './stats.js';
import { intOption } from './options.js';
import { ROOT, runReference } from './cpu-common.js';

const program = new Command('op-overhead')
  .description('host cost of one small operator call, kshare vs PyTorch eager (one run)')
  .option('--calls <n>', 'calls per operator and round', '20000')
  .option('--rounds <n>', 'alternations of kshare and PyTorch', '3')
  .option('--out <file>', 'where to write the JSON', path.join(ROOT, 'bench', 'results', 'op-overhead.json'))
  .parse();
const o = program.opts<{ calls: string; rounds: string; out: string }>();
const int = intOption(program);
const calls = int('calls', o.calls, 100);
const rounds = int('rounds', o.rounds, 1);

t.setNumThreads(1);
const [a, b] = [t.randn([16]), t.randn([16])];
const [x, w] = [t.randn([1, 8, 4, 4]), t.randn([8, 8, 3, 3])];
const m = t.randn([4, 4]);
// The same operators and shapes as bench/reference_op_overhead.py.
const OPS: Record<string, () => unknown> = {
  add: () => t.add(a, b),
  mul: () => t.mul(a, b),
  relu: () => t.relu(a),
  'matmul 4x4': () => t.matmul(m, m),
  'conv2d 3x3 (1, 8, 4, 4)': () => t.conv2d(x, w, null, { padding: 1 }),
};

const mine: Record<string, number[]> = {};
const ref: Record<string, number[]> = {};
let torchVersion = '';
for (let r = 0; r < rounds; r++) {
  for (const [name, f] of Object.entries(OPS)) {
    t.tidy(() => {
      for (let i = 0; i < calls; i++) f();
    });
    const s = performance.now();
    t.tidy(() => {
      for (let i = 0; i < calls; i++) f();
    });
    (mine[name] ??= []).push(((performance.now() - s) / calls) * 1000);
  }
  const py = runReference<{ torch: string; us: Record<string, number> }>('reference_op_overhead.py', [JSON.stringify({ n: calls })], 1);
  torchVersion = py.torch;
  for (const [name, us] of Object.entries(py.us)) (ref[name] ??= []).push(us);
}
const rows = Object.keys(OPS).map((name) => {
  const [k, p] = [median(mine[name]!), median(ref[name]!)];
  return { name, kshareUs: round(k, 3), referenceUs: round(p, 3), ratio: round(p / k, 3) };
});
const info = t.runtimeInfo();
const result = {
  machine: `${process.arch}, node ${process.version}`,
  kshareLibtorch: info.torchVersion,
  torch: torchVersion,
  calls,
  rounds,
  method:
    'per operator: `calls` untimed then `calls` timed calls on tiny CPU tensors, one thread (kshare inside one tidy scope; PyTorch eager in bench/reference_op_overhead.py); medians over rounds; ratio = referenceUs / kshareUs',
  rows,
};
mkdirSync(path.dirname(o.out), { recursive: true });
writeFileSync(`${o.out}.tmp`, JSON.stringify(result, null, 2) + '\n');
renameSync(`${o.out}.tmp`, o.out);
for (const r of rows)
  console.log(
    `${r.name.padEnd(26)} kshare ${r.kshareUs.toFixed(2).padStart(6)} us  torch ${r.referenceUs.toFixed(2).padStart(6)} us  ratio ${r.ratio.toFixed(3)}`,
  );
console.log(`wrote ${o.out}`);
