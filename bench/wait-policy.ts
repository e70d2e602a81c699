// How the OpenMP wait setting and kshare's own kernel thread pool change kshare's multi-threaded
// speed, quiet and with other work on the cores: the defaults kshare sets (src/tensor/native.ts,
// native/cpu_thread_pool.cc) against the same wait setting with kshare's kernels on libgomp's
// threads (KSHARE_CPU_POOL=0, the default before 2026-12-03), against the pool's threads spinning
// 500 us instead of the default 50 (KSHARE_CPU_SPIN_US=500) and against OMP_WAIT_POLICY=PASSIVE
// on libgomp's threads (the default before 2026-12-02). Run on purpose:
//
//   node dist/bench/wait-policy.js [--threads 2] [--rounds 3] [--only step,step256,infer]
//       [--out bench/results/wait-policy.json]
//
// Each measurement is a fresh child process (libgomp reads the setting when it loads) timing the
// median of a workload: a ConvMixer-64/4 or ConvMixer-256/8 shared training step at batch 32, or
// ConvMixer-256/16 shared inference at batch 1. Scenarios: quiet; beside one or two busy-looping processes; two
// such jobs at once (their mean). The settings alternate `--rounds` times; rows report the
// median over rounds and the range.
import os from 'node:os';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import { median, round } from './stats.js';
import { intOption } from './options.js';
import { MALLOC_ENV, ROOT } from './cpu-common.js';

const SCRIPT = fileURLToPath(import.meta.url);
const WORKLOADS = {
  step: 'convmixer_64_4_k5_p2_shared training step, batch 32',
  step256: 'convmixer_256_8_k5_p2_shared training step, batch 32',
  infer: 'convmixer_256_16_shared inference, batch 1',
} as const;
type Workload = keyof typeof WORKLOADS;
const SCENARIOS = ['quiet', 'one busy process', 'two busy processes', 'two jobs at once'] as const;
type Scenario = (typeof SCENARIOS)[number];

/** Child: times one workload and prints its median ms as the last line. */
async function child(workload: Workload, threads: number): Promise<void> {
  const t = await import('../src/tensor/index.js');
  const { inference, trainingStep } = await import('./model-workload.js');
  t.setNumThreads(threads);
  const times: number[] = [];
  const timeIt = (fn: () => void, warmup: number, iters: number) => {
    for (let i = 0; i < warmup + iters; i++) {
      const s = performance.now();
      fn();
      if (i >= warmup) times.push(performance.now() - s);
    }
  };
  if (workload === 'step') timeIt(trainingStep('convmixer_64_4_k5_p2_shared').run, 5, 40);
  else if (workload === 'step256') timeIt(trainingStep('convmixer_256_8_k5_p2_shared').run, 3, 12);
  else timeIt(inference('convmixer_256_16_shared', { batch: 1 }).run, 5, 60);
  console.log(JSON.stringify({ ms: median(times) }));
}

function runChild(workload: Workload, threads: number, env: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const base: NodeJS.ProcessEnv = { ...process.env, ...MALLOC_ENV };
    delete base.OMP_WAIT_POLICY;
    delete base.GOMP_SPINCOUNT;
    delete base.KSHARE_CPU_POOL;
    delete base.KSHARE_CPU_SPIN_US;
    const c = spawn(process.execPath, [SCRIPT, '--child', workload, '--threads', String(threads)], {
      env: { ...base, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '',
      err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('exit', (code) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code !== 0) return reject(new Error(`wait-policy: child ${workload} failed (${code}):\n${err}`));
      resolve((JSON.parse(last) as { ms: number }).ms);
    });
  });
}

// Busy-looping processes alive now; killed when this process exits, even on Ctrl-C.
const loaders = new Set<ChildProcess>();
process.on('exit', () => loaders.forEach((l) => l.kill('SIGKILL')));
process.on('SIGINT', () => process.exit(130));
process.on('SIGTERM', () => process.exit(143));

function busy(n: number): ChildProcess[] {
  const started = Array.from({ length: n }, () => spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }));
  for (const l of started) {
    loaders.add(l);
    l.on('exit', () => loaders.delete(l));
  }
  return started;
}

async function measure(scenario: Scenario, workload: Workload, threads: number, env: Record<string, string>): Promise<number> {
  const loaders = busy(scenario === 'one busy process' ? 1 : scenario === 'two busy processes' ? 2 : 0);
  try {
    if (scenario === 'two jobs at once') {
      const both = await Promise.all([runChild(workload, threads, env), runChild(workload, threads, env)]);
      return (both[0]! + both[1]!) / 2;
    }
    return await runChild(workload, threads, env);
  } finally {
    for (const l of loaders) l.kill('SIGKILL');
  }
}

async function main(): Promise<void> {
  const program = new Command()
    .name('wait-policy')
    .description("Time kshare's OpenMP wait setting and kernel thread pool against the earlier defaults, quiet and with competing work")
    .option('--threads <n>', 'intra-op threads', '2')
    .option('--rounds <n>', 'alternations of the settings', '3')
    .option('--only <workloads>', `comma-separated workloads to time (${Object.keys(WORKLOADS).join(', ')}; default all)`)
    .option('--child <workload>', '(internal) time one workload and print its median')
    .option('--out <file>', 'where to write the JSON', path.join(ROOT, 'bench', 'results', 'wait-policy.json'))
    .parse();
  const o = program.opts<{ threads: string; rounds: string; only?: string; child?: string; out: string }>();
  const int = intOption(program);
  const threads = int('threads', o.threads, 1),
    rounds = int('rounds', o.rounds, 1);
  if (o.child !== undefined) {
    if (!(o.child in WORKLOADS)) program.error(`wait-policy: --child must be one of ${Object.keys(WORKLOADS).join(', ')}, got '${o.child}'`);
    return child(o.child as Workload, threads);
  }
  const workloads = (o.only ?? Object.keys(WORKLOADS).join(',')).split(',');
  for (const w of workloads) if (!(w in WORKLOADS)) program.error(`wait-policy: --only takes workloads from ${Object.keys(WORKLOADS).join(', ')}, got '${w}'`);
  const { DEFAULT_GOMP_SPINCOUNT } = await import('../src/tensor/native.js');
  // The settings compared: PASSIVE (kshare's default before 2026-12-02), the short spin without
  // kshare's pool (the default before 2026-12-03), kshare's defaults now (the pool spinning
  // 50 us), and the pool spinning 500 us.
  const settings: Record<string, Record<string, string>> = {
    'OMP_WAIT_POLICY=PASSIVE, KSHARE_CPU_POOL=0': { OMP_WAIT_POLICY: 'PASSIVE', KSHARE_CPU_POOL: '0' },
    [`GOMP_SPINCOUNT=${DEFAULT_GOMP_SPINCOUNT}, KSHARE_CPU_POOL=0`]: { GOMP_SPINCOUNT: DEFAULT_GOMP_SPINCOUNT, KSHARE_CPU_POOL: '0' },
    [`GOMP_SPINCOUNT=${DEFAULT_GOMP_SPINCOUNT} and the pool (kshare's defaults)`]: { GOMP_SPINCOUNT: DEFAULT_GOMP_SPINCOUNT },
    [`GOMP_SPINCOUNT=${DEFAULT_GOMP_SPINCOUNT}, the pool, KSHARE_CPU_SPIN_US=500`]: {
      GOMP_SPINCOUNT: DEFAULT_GOMP_SPINCOUNT,
      KSHARE_CPU_SPIN_US: '500',
    },
  };
  const rows: { workload: string; scenario: Scenario; setting: string; medianMs: number; minMs: number; maxMs: number }[] = [];
  for (const workload of workloads as Workload[]) {
    for (const scenario of SCENARIOS) {
      const samples: Record<string, number[]> = Object.fromEntries(Object.keys(settings).map((k) => [k, []]));
      for (let r = 0; r < rounds; r++) {
        for (const [name, env] of Object.entries(settings)) samples[name]!.push(await measure(scenario, workload, threads, env));
      }
      for (const [setting, ms] of Object.entries(samples)) {
        const row = {
          workload: WORKLOADS[workload],
          scenario,
          setting,
          medianMs: round(median(ms), 2),
          minMs: round(Math.min(...ms), 2),
          maxMs: round(Math.max(...ms), 2),
        };
        rows.push(row);
        console.log(
          `${row.workload.padEnd(52)} ${scenario.padEnd(20)} ${setting.padEnd(52)} ${row.medianMs.toFixed(2).padStart(7)} ms (${row.minMs.toFixed(2)}-${row.maxMs.toFixed(2)})`,
        );
      }
    }
  }
  const cpus = os.cpus();
  const result = {
    machine: `${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${cpus.length} cores`,
    threads,
    command: `node dist/bench/wait-policy.js ${process.argv.slice(2).join(' ')}`.trim(),
    method: `a fresh process per measurement (median of 40 ConvMixer-64/4 steps, 12 ConvMixer-256/8 steps or 60 forwards after 5, 3 and 5 warm-up); settings alternating, ${rounds} rounds; busy processes are 'node -e "for (;;) {}"'; two jobs at once: the mean of their medians`,
    rows,
  };
  mkdirSync(path.dirname(o.out), { recursive: true });
  writeFileSync(o.out + '.tmp', JSON.stringify(result, null, 2) + '\n');
  renameSync(o.out + '.tmp', o.out);
  console.log(`wrote ${o.out}`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
