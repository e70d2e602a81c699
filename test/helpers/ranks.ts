// Runs the ranks of a local multi-process job (loopback, a free port) and collects their output.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { native } from '../../src/tensor/native.js';
import { skipUnless } from './prerequisites.js';

/** The `skip` option for tests that need c10d (call once per file): a build without it fails under CI. */
export function skipWithoutGloo(): false | string {
  return skipUnless(
    native.distAvailable().gloo,
    'an addon built with c10d Gloo',
    'apt-get install libgloo-dev (for a pip PyTorch, which has no gloo headers: KSHARE_GLOO_INCLUDE=/usr/include), then npm run build:native',
  );
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface RankResult {
  rank: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** Runs `node script ...args` once per rank (or once with no rank variables when world is 0); kills all after killAfterMs. */
export async function runRanks(
  script: string,
  args: string[],
  world: number,
  o: { env?: Record<string, string>; perRankEnv?: (rank: number) => Record<string, string>; killAfterMs?: number } = {},
): Promise<RankResult[]> {
  const port = await freePort();
  const ranks = world === 0 ? [-1] : Array.from({ length: world }, (_, r) => r);
  const start = Date.now();
  return Promise.all(
    ranks.map(
      (rank) =>
        new Promise<RankResult>((resolve) => {
          const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: '1', ...o.env, ...(rank >= 0 ? o.perRankEnv?.(rank) : {}) };
          delete env.WORLD_SIZE;
          delete env.RANK;
          delete env.LOCAL_RANK;
          delete env.MASTER_ADDR;
          delete env.MASTER_PORT;
          if (rank >= 0)
            Object.assign(env, {
              MASTER_ADDR: '127.0.0.1',
              MASTER_PORT: String(port),
              WORLD_SIZE: String(world),
              RANK: String(rank),
              LOCAL_RANK: String(rank),
            });
          const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
          let stdout = '',
            stderr = '';
          child.stdout.on('data', (d) => {
            stdout += d;
          });
          child.stderr.on('data', (d) => {
            stderr += d;
          });
          const timer = setTimeout(() => child.kill('SIGKILL'), o.killAfterMs ?? 60_000);
          child.on('close', (code, signal) => {
            clearTimeout(timer);
            resolve({ rank, code, signal, stdout, stderr, seconds: (Date.now() - start) / 1000 });
          });
        }),
    ),
  );
}

/** The last JSON line a rank printed. */
export function lastJson<T = Record<string, unknown>>(r: RankResult): T {
  const line = r.stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .pop();
  if (!line) throw new Error(`rank ${r.rank} printed no JSON (exit ${r.code ?? r.signal}): ${r.stderr.slice(-2000)}`);
  return JSON.parse(line) as T;
}
