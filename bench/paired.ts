// Paired timing of kshare and PyTorch in one run, for kernel micro-benchmarks.
//
// A PyTorch process (bench/reference_server.py) stays up for the whole run; every case is
// timed in rounds that alternate kshare and PyTorch (`reps` calls each), so background load
// on a shared machine hits both alike. Reported times are medians over all timed calls.
//
//   const ref = await ReferenceServer.start(threads);
//   const row = await timePaired(ref, { name, kshare: () => {...}, reference: 'def run(): ...' }, opts);
//   ref.close();
import path from 'node:path';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { median, round } from './stats.js';

const PYTHON = process.env.KSHARE_TORCH_PYTHON ?? '/usr/bin/python3';
const SERVER = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const p of [path.resolve(here, 'reference_server.py'), path.resolve(here, '../../bench/reference_server.py')]) if (existsSync(p)) return p;
  throw new Error('paired: cannot find bench/reference_server.py');
})();

interface Timings {
  wallMs: number[];
  cpuMs: number[];
}

/** The PyTorch side: a python3-torch process that defines and times workloads on request. */
export class ReferenceServer {
  private pending: { resolve: (line: string) => void; reject: (e: Error) => void }[] = [];
  private stderr = '';

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    createInterface({ input: child.stdout }).on('line', (line) => this.pending.shift()?.resolve(line));
    child.stderr.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    child.on('exit', (code) => {
      const e = new Error(`paired: ${PYTHON} ${SERVER} exited (${code}):\n${this.stderr}`);
      for (const p of this.pending.splice(0)) p.reject(e);
    });
  }

  /**
   * Starts the server with `threads` intra-op threads (OMP_NUM_THREADS too, as for kshare).
   * The OpenMP wait settings: above 1 thread kshare's own (src/tensor/native.ts: a short spin,
   * GOMP_SPINCOUNT=1000, unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT), so both sides
   * wait alike; at 1 thread (no workers to wait) both are unset, since OMP_WAIT_POLICY=PASSIVE
   * once made PyTorch's oneDNN 1x1 convolution 8 ms instead of 0.5 ms after the process had been
   * idle. `ompWaitPolicy` overrides ('' leaves OMP_WAIT_POLICY unset).
   */
  static async start(threads: number, ompWaitPolicy?: string): Promise<ReferenceServer> {
    const env: NodeJS.ProcessEnv = { ...process.env, OMP_NUM_THREADS: String(threads) };
    if (threads === 1) {
      delete env.OMP_WAIT_POLICY;
      delete env.GOMP_SPINCOUNT;
    }
    if (ompWaitPolicy !== undefined) {
      if (ompWaitPolicy) env.OMP_WAIT_POLICY = ompWaitPolicy;
      else delete env.OMP_WAIT_POLICY;
    }
    const child = spawn(PYTHON, [SERVER, String(threads)], { env, stdio: 'pipe' });
    const s = new ReferenceServer(child);
    await s.request({ op: 'info' });
    return s;
  }

  async request<T = Record<string, unknown>>(req: Record<string, unknown>): Promise<T> {
    if (this.child.exitCode !== null) throw new Error(`paired: ${PYTHON} ${SERVER} exited (${this.child.exitCode}):\n${this.stderr}`);
    const line = await new Promise<string>((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.child.stdin.write(JSON.stringify(req) + '\n');
    });
    const out = JSON.parse(line) as T & { error?: string };
    if (out.error) throw new Error(`paired: reference failed on ${JSON.stringify(req).slice(0, 200)}: ${out.error}`);
    return out;
  }

  /** torch version and thread count of the reference. */
  info(): Promise<{ torch: string; threads: number }> {
    return this.request({ op: 'info' });
  }

  close(): void {
    this.child.stdin.end();
  }
}

export interface PairedCase {
  name: string;
  /** One call of the kshare workload (synchronous; it must release what it allocates). */
  kshare: () => void;
  /** Python code that defines `run()` (torch and F = torch.nn.functional are in scope). */
  reference: string;
}

export interface PairedOptions {
  /** alternations of kshare and PyTorch */
  rounds?: number;
  /** timed calls per side and round */
  reps?: number;
  /** untimed calls per side before the first round */
  warmup?: number;
}

export interface PairedRow {
  name: string;
  kshareMs: number;
  referenceMs: number;
  /** referenceMs / kshareMs: above 1, kshare is faster */
  ratio: number;
  /** the same from process CPU time, steadier when other processes compete for the cores */
  kshareCpuMs: number;
  referenceCpuMs: number;
}

let caseCount = 0;

function timeLocal(fn: () => void, reps: number): Timings {
  const out: Timings = { wallMs: [], cpuMs: [] };
  for (let i = 0; i < reps; i++) {
    const c0 = process.cpuUsage();
    const w0 = performance.now();
    fn();
    const wall = performance.now() - w0;
    const c = process.cpuUsage(c0);
    out.wallMs.push(wall);
    out.cpuMs.push((c.user + c.system) / 1000);
  }
  return out;
}

/** Times one case, alternating kshare and PyTorch; medians of all timed calls. */
export async function timePaired(ref: ReferenceServer, c: PairedCase, o: PairedOptions = {}): Promise<PairedRow> {
  const rounds = o.rounds ?? 5,
    reps = o.reps ?? 20,
    warmup = o.warmup ?? 3;
  const id = `case${caseCount++}`;
  await ref.request({ op: 'define', name: id, code: c.reference });
  timeLocal(c.kshare, warmup);
  await ref.request({ op: 'time', name: id, reps: warmup });
  const k: Timings = { wallMs: [], cpuMs: [] },
    r: Timings = { wallMs: [], cpuMs: [] };
  for (let i = 0; i < rounds; i++) {
    const a = timeLocal(c.kshare, reps);
    const b = await ref.request<Timings>({ op: 'time', name: id, reps });
    k.wallMs.push(...a.wallMs);
    k.cpuMs.push(...a.cpuMs);
    r.wallMs.push(...b.wallMs);
    r.cpuMs.push(...b.cpuMs);
  }
  const kshareMs = median(k.wallMs),
    referenceMs = median(r.wallMs);
  return {
    name: c.name,
    kshareMs: round(kshareMs, 4),
    referenceMs: round(referenceMs, 4),
    ratio: round(referenceMs / kshareMs, 3),
    kshareCpuMs: round(median(k.cpuMs), 4),
    referenceCpuMs: round(median(r.cpuMs), 4),
  };
}
