// What kshare's caching CPU allocator (native/cpu_allocator.cc) buys a training step: the same
// step with it (as it comes, and with KSHARE_CPU_HUGEPAGES=1), with libtorch's
// allocator as it comes, and with libtorch's allocator plus the glibc malloc tuning the `kshare`
// command applies (retainFreedMemory). Run on purpose:
//
//   node dist/bench/cpu-allocator.js [--threads 1,2] [--rounds 3] [--out bench/results/cpu-allocator.json]
//
// The allocator is chosen when the addon loads, so each measurement is a fresh child process
// timing the median of `--steps` steps after 3 warm-up ones, and counting its minor page faults.
// The settings alternate `--rounds` times; rows report the median over rounds and the range.
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import { median, round } from './stats.js';
import { intOption } from './options.js';
import { MALLOC_ENV, ROOT } from './cpu-common.js';

const SCRIPT = fileURLToPath(import.meta.url);
const MODELS = ['convmixer_64_4_k5_p2_shared', 'convmixer_256_8_k5_p2_shared'] as const;
const SETTINGS: Record<string, Record<string, string>> = {
  'kshare allocator': {},
  'kshare allocator, huge pages': { KSHARE_CPU_HUGEPAGES: '1' },
  'libtorch allocator': { KSHARE_CPU_ALLOCATOR: 'system' },
  'libtorch allocator + malloc tuning': { KSHARE_CPU_ALLOCATOR: 'system', ...MALLOC_ENV },
};

/** Child: times training steps of one model and prints {ms, faultsPerStep} as the last line. */
async function child(model: string, threads: number, steps: number): Promise<void> {
  const t = await import('../src/tensor/index.js');
  const { trainingStep } = await import('./model-workload.js');
  t.setNumThreads(threads);
  const step = trainingStep(model).run;
  for (let i = 0; i < 3; i++) step();
  const f0 = process.resourceUsage().minorPageFault;
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const s = performance.now();
    step();
    times.push(performance.now() - s);
  }
  console.log(JSON.stringify({ ms: median(times), faultsPerStep: (process.resourceUsage().minorPageFault - f0) / steps }));
}

function runChild(model: string, threads: number, steps: number, env: Record<string, string>): { ms: number; faultsPerStep: number } {
  const base: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['KSHARE_CPU_ALLOCATOR', 'KSHARE_CPU_CACHE_MB', 'KSHARE_CPU_HUGEPAGES', ...Object.keys(MALLOC_ENV)]) delete base[k];
  const r = spawnSync(process.execPath, [SCRIPT, '--child', model, '--threads', String(threads), '--steps', String(steps)], {
    env: { ...base, ...env },
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`cpu-allocator: the ${model} child failed (${r.status}):\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { ms: number; faultsPerStep: number };
}

async function main(): Promise<void> {
  const program = new Command()
    .name('cpu-allocator')
    .description("Time training steps with kshare's caching CPU allocator, libtorch's, and libtorch's with malloc tuning")
    .option('--threads <list>', 'comma-separated thread counts', '1,2')
    .option('--rounds <n>', 'alternations of the settings', '3')
    .option('--steps <n>', 'timed steps per child (ConvMixer-256/8 runs a quarter, at least 5)', '40')
    .option('--child <model>', 'internal: time one model in this process')
    .option('--out <file>', 'where to write the JSON', path.join(ROOT, 'bench', 'results', 'cpu-allocator.json'))
    .parse();
  const o = program.opts<{ threads: string; rounds: string; steps: string; child?: string; out: string }>();
  const int = intOption(program);
  const steps = int('steps', o.steps, 1);
  const threadList = o.threads.split(',').map((v) => int('threads', v.trim(), 1));
  if (o.child) return child(o.child, threadList[0]!, steps);
  const rounds = int('rounds', o.rounds, 1);
  const rows = [];
  for (const threads of threadList)
    for (const model of MODELS) {
      const n = model.includes('256') ? Math.max(5, steps >> 2) : steps;
      const got = new Map<string, { ms: number[]; faults: number[] }>(Object.keys(SETTINGS).map((s) => [s, { ms: [], faults: [] }]));
      for (let r = 0; r < rounds; r++)
        for (const [setting, env] of Object.entries(SETTINGS)) {
          const m = runChild(model, threads, n, env);
          got.get(setting)!.ms.push(m.ms);
          got.get(setting)!.faults.push(m.faultsPerStep);
        }
      const base = median(got.get('kshare allocator')!.ms);
      for (const [setting, v] of got) {
        const row = {
          name: `${model} training step, batch 32, NCHW`,
          threads,
          setting,
          ms: round(median(v.ms), 2),
          msRange: [round(Math.min(...v.ms), 2), round(Math.max(...v.ms), 2)],
          faultsPerStep: Math.round(median(v.faults)),
          slowerThanKshareAllocator: round(median(v.ms) / base, 3),
        };
        rows.push(row);
        console.log(
          `${threads}t ${model.padEnd(30)} ${setting.padEnd(36)} ${row.ms.toFixed(2).padStart(8)} ms (${row.msRange.join('-')}), ${row.faultsPerStep} faults/step, x${row.slowerThanKshareAllocator}`,
        );
      }
    }
  const cpus = os.cpus();
  const out = {
    machine: `${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${cpus.length} cores`,
    command: `node dist/bench/cpu-allocator.js ${process.argv.slice(2).join(' ')}`.trim(),
    method: `fresh process per measurement; median step time over ${steps} steps (ConvMixer-256/8: a quarter, at least 5) after 3 warm-up ones; minor page faults per timed step; settings alternating over ${rounds} rounds, medians over rounds`,
    rows,
  };
  mkdirSync(path.dirname(o.out), { recursive: true });
  writeFileSync(o.out + '.tmp', JSON.stringify(out, null, 2) + '\n');
  renameSync(o.out + '.tmp', o.out);
  console.log(`wrote ${path.relative(process.cwd(), o.out)}`);
}

await main();
