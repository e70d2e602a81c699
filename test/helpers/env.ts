// Environment variables (kshare's kernels read theirs at every call) and the thread count, set for
// the length of a call; and settings read when kshare loads, tried in a fresh process.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as t from '../../src/tensor/index.js';

const tensorIndex = fileURLToPath(new URL('../../src/tensor/index.js', import.meta.url));

/**
 * Imports kshare (as `t`) in a fresh node process with `env` added to this one's, then runs
 * `script`: for settings checked or read when the addon loads.
 */
export function importInChild(env: Record<string, string>, script = '', cwd?: string): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, ['--input-type=module', '-e', `const t = await import(${JSON.stringify(tensorIndex)});\n${script}`], {
    cwd,
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
}

/** Runs fn with `vars` set (undefined: unset), then restores what was there before. */
export function withEnv<T>(vars: Record<string, string | undefined>, fn: () => T): T {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const apply = (v: Record<string, string | undefined>) => {
    for (const [k, x] of Object.entries(v))
      if (x === undefined) delete process.env[k];
      else process.env[k] = x;
  };
  apply(vars);
  try {
    return fn();
  } finally {
    apply(saved);
  }
}

/** Runs fn with libtorch's intra-op thread count set to n, then restores the count before. */
export function withThreads<T>(n: number, fn: () => T): T {
  const before = t.runtimeInfo().numThreads;
  t.setNumThreads(n);
  try {
    return fn();
  } finally {
    t.setNumThreads(before);
  }
}

/** fn with libtorch's own ops everywhere (KSHARE_NATIVE_KERNELS=0). */
export const withLibtorchOps = <T>(fn: () => T): T => withEnv({ KSHARE_NATIVE_KERNELS: '0' }, fn);
