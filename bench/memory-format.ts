// CPU inference in NCHW against channels-last, per architecture: the measurement behind each
// architecture spec's `cpuMemoryFormat` (src/models/spec.ts), which `kshare eval` and
// `kshare predict` follow. Run on purpose:
//
//   node dist/bench/memory-format.js [--threads 1] [--rounds 3] [--out bench/results/memory-format.json]
//
// Per model and batch, the two layouts' eval forwards alternate in one process (`--rounds`
// rounds of `reps` each, after warm-up); rows report the median over all of a layout's samples.
// ratio = channels-last ms / NCHW ms (above 1: NCHW is faster).
import os from 'node:os';
import path from 'node:path';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import * as t from '../src/tensor/index.js';
import { modelCpuMemoryFormat } from '../src/models/registry.js';
import { inference } from './model-workload.js';
import { median, round } from './stats.js';
import { intOption } from './options.js';
import { ROOT, reexecWithMallocEnv } from './cpu-common.js';

const MODELS = ['convmixer_256_16_shared', 'se_resnet_d_2_full_shared', 'resnet18_cifar_shared', 'mobilenetv2_100_cifar_shared'];
const BATCHES: [batch: number, reps: number][] = [
  [1, 20],
  [64, 2],
];

function main(): void {
  reexecWithMallocEnv(fileURLToPath(import.meta.url));
  const program = new Command()
    .name('memory-format')
    .description('Time CPU inference in NCHW against channels-last, per architecture, in one process')
    .option('--threads <n>', 'intra-op threads', '1')
    .option('--rounds <n>', 'alternations per row', '3')
    .option('--out <file>', 'where to write the JSON', path.join(ROOT, 'bench', 'results', 'memory-format.json'))
    .parse();
  const o = program.opts<{ threads: string; rounds: string; out: string }>();
  const int = intOption(program);
  const threads = int('threads', o.threads, 1),
    rounds = int('rounds', o.rounds, 1);
  t.setNumThreads(threads);
  const rows = [];
  for (const model of MODELS) {
    for (const [batch, reps] of BATCHES) {
      const nchw = inference(model, { batch }),
        cl = inference(model, { batch, channelsLast: true });
      const samples: Record<'nchw' | 'cl', number[]> = { nchw: [], cl: [] };
      for (const w of [nchw, cl]) for (let i = 0; i < 3; i++) w.run();
      for (let r = 0; r < rounds; r++) {
        for (const [key, w] of [
          ['nchw', nchw],
          ['cl', cl],
        ] as const) {
          for (let i = 0; i < reps; i++) {
            const t0 = performance.now();
            w.run();
            samples[key].push(performance.now() - t0);
          }
        }
      }
      nchw.dispose();
      cl.dispose();
      const nchwMs = median(samples.nchw),
        clMs = median(samples.cl);
      const row = {
        model,
        batch,
        nchwMs: round(nchwMs, 3),
        channelsLastMs: round(clMs, 3),
        ratio: round(clMs / nchwMs, 3),
        specChoice: modelCpuMemoryFormat(model),
      };
      rows.push(row);
      console.log(
        `${`${model}, batch ${batch}`.padEnd(42)} NCHW ${nchwMs.toFixed(2).padStart(9)} ms  channels-last ${clMs.toFixed(2).padStart(9)} ms  x${row.ratio.toFixed(2)}  (spec: ${row.specChoice})`,
      );
    }
  }
  const result = {
    machine: `${os.cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${os.cpus().length} cores`,
    threads,
    command: ['node dist/bench/memory-format.js', ...process.argv.slice(2)].join(' '),
    method: `medians of ${rounds} alternating rounds per layout (batch 1: 20 forwards a round, batch 64: 2), eval mode, no grad, in one process; ratio = channelsLastMs / nchwMs`,
    rows,
  };
  mkdirSync(path.dirname(o.out), { recursive: true });
  writeFileSync(o.out + '.tmp', JSON.stringify(result, null, 2) + '\n');
  renameSync(o.out + '.tmp', o.out);
  console.log(`wrote ${o.out}`);
}

main();
