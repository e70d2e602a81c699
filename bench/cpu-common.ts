// What the CPU benchmarks (cpu-step.ts, cpu-kernels.ts) share: where the PyTorch reference
// scripts are, the fixed malloc settings both processes run with, and the reference runner.
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const PYTHON = process.env.KSHARE_TORCH_PYTHON ?? '/usr/bin/python3';
export const ROOT = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const p of [path.resolve(here, '..'), path.resolve(here, '../..')]) if (existsSync(path.join(p, 'bench', 'reference_step.py'))) return p;
  throw new Error('bench: cannot find bench/reference_step.py');
})();

/**
 * glibc hands large freed blocks back to the OS and page-faults them in again on the next
 * allocation; how often depends on the process's allocation history, which made identical
 * steps differ by up to 2x in CPU time, in either process. Both run with the same fixed
 * thresholds instead (the bench re-executes itself with them) unless --system-malloc.
 */
export const MALLOC_ENV = { MALLOC_MMAP_THRESHOLD_: String(256 << 20), MALLOC_TRIM_THRESHOLD_: String(1 << 30) };

/** Re-runs this script with MALLOC_ENV (malloc reads it at start) and exits with its status; returns if already set. */
export function reexecWithMallocEnv(script: string): void {
  if (process.env.MALLOC_TRIM_THRESHOLD_ === MALLOC_ENV.MALLOC_TRIM_THRESHOLD_) return;
  const r = spawnSync(process.execPath, [...process.execArgv, script, ...process.argv.slice(2)], { stdio: 'inherit', env: { ...process.env, ...MALLOC_ENV } });
  process.exit(r.status ?? 1);
}

/** The OpenMP wait settings this process runs with (src/tensor/native.ts sets a default); the reference processes inherit them. */
export function ompWaitSetting(): string {
  const set = (['OMP_WAIT_POLICY', 'GOMP_SPINCOUNT'] as const).filter((k) => process.env[k] !== undefined).map((k) => `${k}=${process.env[k]}`);
  return set.length ? set.join(' ') : 'libgomp defaults';
}

/** Runs a Python reference script in bench/ and returns its last stdout line as JSON (the reference inherits this process's environment, OpenMP wait settings included). */
export function runReference<T>(script: string, args: string[], threads: number, input?: unknown): T {
  const r = spawnSync(PYTHON, [path.join(ROOT, 'bench', script), ...args], {
    encoding: 'utf8',
    maxBuffer: 1 << 28,
    input: input === undefined ? undefined : JSON.stringify(input),
    env: { ...process.env, OMP_NUM_THREADS: String(threads) },
  });
  if (r.status !== 0) throw new Error(`bench: ${PYTHON} bench/${script} failed (${r.status ?? r.signal}):\n${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as T;
}
