// `kshare train --nproc N`: N worker processes on this machine, each a member of the job through
// the standard variables (MASTER_ADDR=127.0.0.1, a free MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK),
// as torchrun --standalone does. The launcher owns its workers: when one fails, the others get a
// few seconds to report (they name the failed rank) and are then killed; Ctrl-C is passed on once
// (workers run in their own process group, so the terminal's SIGINT reaches only the launcher);
// a worker whose launcher disappears exits by itself.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { availableParallelism } from 'node:os';

export const LAUNCHER_PID_VAR = 'KSHARE_LAUNCHER_PID';

export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** The command line without --nproc (its value too). */
export function withoutOption(argv: string[], flag: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === flag) {
      i++;
      continue;
    }
    if (argv[i]!.startsWith(`${flag}=`)) continue;
    out.push(argv[i]!);
  }
  return out;
}

export interface LaunchOptions {
  nproc: number;
  /** The script and arguments each worker runs (with node). */
  script: string;
  args: string[];
  port?: number;
  /** After a worker fails, how long the others may take to exit on their own before they are killed. */
  graceMs?: number;
  log?: (line: string) => void;
}

/** Runs the workers; resolves with the exit code for the launcher (0, 1 on a failure, 130 after Ctrl-C). */
export async function launchLocal(o: LaunchOptions): Promise<number> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const port = o.port ?? (await freeLoopbackPort());
  const threads = Math.max(1, Math.floor(availableParallelism() / o.nproc));
  const args = o.args.includes('--threads') || o.args.some((a) => a.startsWith('--threads=')) ? o.args : [...o.args, '--threads', String(threads)];
  const children: (ChildProcess | null)[] = [];
  const exited = new Set<number>();
  let failure: string | null = null;
  let interrupted = 0;
  let killTimer: NodeJS.Timeout | null = null;

  const killAll = (signal: NodeJS.Signals) => {
    for (const [r, c] of children.entries())
      if (c && !exited.has(r)) {
        try {
          c.kill(signal);
        } catch {
          /* gone */
        }
      }
  };
  const onInt = () => {
    interrupted++;
    if (interrupted === 1) {
      log('kshare: Ctrl-C: asking every worker to finish its step and checkpoint (Ctrl-C again to kill them)');
      killAll('SIGINT');
    } else {
      log('kshare: second Ctrl-C: killing the workers');
      killAll('SIGKILL');
    }
  };
  const onTerm = () => {
    log('kshare: terminated: killing the workers');
    killAll('SIGKILL');
  };
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    const done = Array.from(
      { length: o.nproc },
      (_, rank) =>
        new Promise<number>((resolve) => {
          const env = {
            ...process.env,
            MASTER_ADDR: '127.0.0.1',
            MASTER_PORT: String(port),
            WORLD_SIZE: String(o.nproc),
            RANK: String(rank),
            LOCAL_RANK: String(rank),
            [LAUNCHER_PID_VAR]: String(process.pid),
          };
          const child = spawn(process.execPath, [o.script, ...args], {
            env,
            detached: true,
            stdio: ['ignore', rank === 0 ? 'inherit' : 'ignore', rank === 0 ? 'inherit' : 'pipe'],
          });
          children[rank] = child;
          let tail = '';
          child.stderr?.on('data', (d: Buffer) => {
            tail += d.toString();
            const lines = tail.split('\n');
            tail = lines.pop()!;
            for (const l of lines) process.stderr.write(`[rank ${rank}] ${l}\n`);
          });
          child.on('error', (e) => log(`kshare: worker rank ${rank} could not start: ${e.message}`));
          child.on('close', (code, signal) => {
            exited.add(rank);
            if (tail) process.stderr.write(`[rank ${rank}] ${tail}\n`);
            const ok = code === 0 || (interrupted > 0 && code === 130);
            if (!ok && failure === null && interrupted === 0) {
              // A worker that exits with an error has printed it, naming the rank at fault if another one is.
              failure = `worker rank ${rank} ${signal ? `was killed by ${signal}` : `exited with code ${code}${code === 1 ? ' (its error above says which rank is at fault)' : ''}`}`;
              log(`kshare: ${failure}; stopping the other workers`);
              killTimer = setTimeout(() => killAll('SIGKILL'), o.graceMs ?? 10_000);
            }
            resolve(code ?? 1);
          });
        }),
    );
    const codes = await Promise.all(done);
    if (failure) {
      log(`kshare: the job failed: ${failure} (the last checkpoint in the run folder is intact; --resume continues from it)`);
      return 1;
    }
    if (interrupted) return 130;
    return codes.every((c) => c === 0) ? 0 : 1;
  } finally {
    if (killTimer) clearTimeout(killTimer);
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
}

/** In a worker started by launchLocal: exit when the launcher is gone (no orphans). */
export function exitWithLauncher(): void {
  const pid = Number(process.env[LAUNCHER_PID_VAR]);
  if (!pid) return;
  setInterval(() => {
    try {
      process.kill(pid, 0);
    } catch {
      process.stderr.write(`kshare: the launcher (pid ${pid}) is gone; this worker stops\n`);
      process.exit(1);
    }
  }, 1000).unref();
}
