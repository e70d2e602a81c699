// Where one CPU training step's oneDNN time goes: runs a step of a model with ONEDNN_VERBOSE=1 in
// a child process (after warm-up steps) and sums oneDNN's reported time per primitive kind and
// implementation (convolutions, reorders between layouts, ...). Run on purpose:
//
//   node dist/bench/onednn-breakdown.js [--model convmixer_256_8_k5_p2_shared] [--batch 32] [--channels-last]
//   KSHARE_NATIVE_POINTWISE=0 node dist/bench/onednn-breakdown.js    # 1x1 convolutions through libtorch
//
// Prints a table (ms and call count per kind) and the total; 1 thread. oneDNN's own times only:
// kshare's kernels and libtorch's other ops do not appear.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import * as t from '../src/tensor/index.js';
import { AdamW } from '../src/train/optim/index.js';
import { createModel } from '../src/models/registry.js';
import { MALLOC_ENV } from './cpu-common.js';
import { intOption } from './options.js';

const MARK = '=== timed step';

function child(model: string, batch: number, channelsLast: boolean): void {
  t.setNumThreads(1);
  const m = createModel(model, { classes: 10 });
  let x = t.randn([batch, 3, 32, 32]);
  if (channelsLast) {
    m.to({ device: 'cpu', memoryFormat: 'channels_last' });
    const cl = t.contiguous(x, 'channels_last');
    x.dispose();
    x = cl;
  }
  const y = t.randint(0, 10, [batch]);
  const opt = new AdamW(m.parameters(), { lr: 1e-3 });
  const step = () => {
    t.tidy(() => t.crossEntropy(m.forward(x), y).backward());
    opt.step();
    opt.zeroGrad();
  };
  for (let i = 0; i < 3; i++) step();
  console.log(MARK);
  step();
}

function main(): void {
  const program = new Command()
    .name('onednn-breakdown')
    .description("Sum oneDNN's verbose timings of one CPU training step per primitive")
    .option('--model <name>', 'registry model', 'convmixer_256_8_k5_p2_shared')
    .option('--batch <n>', 'batch size', '32')
    .option('--channels-last', 'model and input in channels_last')
    .option('--child', 'internal: run the step (with ONEDNN_VERBOSE set by the parent)')
    .parse();
  const o = program.opts<{ model: string; batch: string; channelsLast?: boolean; child?: boolean }>();
  const batch = intOption(program)('batch', o.batch, 1);
  if (o.child) return child(o.model, batch, !!o.channelsLast);
  const args = [fileURLToPath(import.meta.url), '--child', '--model', o.model, '--batch', String(batch), ...(o.channelsLast ? ['--channels-last'] : [])];
  const r = spawnSync(process.execPath, args, { env: { ...process.env, ...MALLOC_ENV, ONEDNN_VERBOSE: '1' }, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`onednn-breakdown: the step failed (${r.status}):\n${r.stderr}`);
  const lines = r.stdout.split('\n');
  const from = lines.indexOf(MARK);
  if (from < 0) throw new Error('onednn-breakdown: the child printed no timed step');
  const sums = new Map<string, { ms: number; calls: number }>();
  for (const line of lines.slice(from + 1)) {
    const f = line.split(',');
    // onednn_verbose,exec,cpu,<primitive>,<implementation>,<propagation>,...,<ms>
    if (f.length < 7 || f[1] !== 'exec') continue;
    const key = `${f[3]} ${f[4]} ${f[5]}`;
    const s = sums.get(key) ?? { ms: 0, calls: 0 };
    s.ms += Number(f[f.length - 1]);
    s.calls++;
    sums.set(key, s);
  }
  const rows = [...sums].sort((a, b) => b[1].ms - a[1].ms);
  console.log(`${o.model}, batch ${batch}, ${o.channelsLast ? 'channels-last' : 'NCHW'}, 1 thread: oneDNN time in one training step`);
  for (const [k, s] of rows) console.log(`${s.ms.toFixed(2).padStart(9)} ms ${String(s.calls).padStart(4)} calls  ${k}`);
  console.log(
    `${rows
      .reduce((a, [, s]) => a + s.ms, 0)
      .toFixed(2)
      .padStart(9)} ms total`,
  );
}

main();
