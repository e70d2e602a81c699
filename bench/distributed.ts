// Data-parallel training on this machine, and what kernel sharing does to gradient traffic.
// Writes bench/results/distributed.json:
//  - bytes all-reduced per step (the distinct trainable parameters, as DataParallel buckets
//    them) for ConvMixer-256/16 and SE-ResNet d=2, shared and unshared;
//  - training throughput of the demo model with 1 process (all threads) and 2 processes
//    (threads split), global images per second, and the communication time per step: what the
//    gradient all-reduce left after backward (not hidden by overlap), and the same bytes
//    all-reduced alone (no compute);
//  - the all-reduce alone for the four models' bytes, kshare (c10d Gloo via the addon) and
//    PyTorch (torch.distributed Gloo, bench/reference_allreduce.py) in the same run;
//  - a ring all-reduce scaling table on paper: 2(N-1)/N x bytes / bandwidth, for N = 8, 64,
//    512 GPUs at 10 and 100 Gbit/s (bandwidth term only: no latency, no overlap).
//
//   node dist/bench/distributed.js [--steps N] [--batch B] [--rounds R] [--out file]
import { spawn } from 'node:child_process';
import { writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as t from '../src/tensor/index.js';
import { createModel } from '../src/models/index.js';
import { SGD } from '../src/train/optim/index.js';
import { ProcessGroup, DataParallel, distributedEnv, distinctTrainable, freeLoopbackPort } from '../src/distributed/index.js';
import { median, round } from './stats.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}
const here = path.dirname(fileURLToPath(import.meta.url));
const steps = Number(arg('steps', '10'));
const batch = Number(arg('batch', '32'));
const rounds = Number(arg('rounds', '3'));
const THROUGHPUT_MODEL = 'convmixer_64_4_k5_p2_shared';
const TRAFFIC_MODELS = [
  ['ConvMixer-256/16', 'convmixer_256_16_shared', 'convmixer_256_16'],
  ['SE-ResNet d=2', 'se_resnet_d_2_full_shared', 'se_resnet_d_2'],
] as const;

interface WorkerResult {
  worldSize: number;
  threads: number;
  imgPerSec: number;
  msPerStep: number;
  cpuMsPerStep: number;
  commWaitMs: number | null;
  bufferMs: number | null;
  bytesPerStep: number | null;
  allReduceAloneMs: Record<string, number> | null;
}

/** One rank: timed training steps of the demo model (and, with 2 ranks, all-reduces alone). */
async function worker(): Promise<void> {
  const env = distributedEnv();
  const threads = Number(arg('threads', '1'));
  t.setNumThreads(threads);
  const sizes = JSON.parse(arg('sizes', '{}')) as Record<string, number>;
  const group =
    env && env.worldSize > 1 ? await ProcessGroup.init({ host: env.host, port: env.port, rank: env.rank, worldSize: env.worldSize, timeoutMs: 120_000 }) : null;
  t.manualSeed(0);
  const model = createModel(THROUGHPUT_MODEL, { classes: 10 });
  model.to({ memoryFormat: 'channels_last' }).train();
  const dp = group ? new DataParallel(group, model, { bucketCapMB: 25 }) : null;
  const opt = new SGD(distinctTrainable(model), { lr: 0.01, momentum: 0.9 });
  const g = new t.Generator(1 + (env?.rank ?? 0));
  const x = t.keep(t.randn([batch, 3, 32, 32], { generator: g }).contiguous('channels_last'));
  const y = t.keep(t.randint(0, 10, [batch], { generator: g }));
  const times: number[] = [],
    cpu: number[] = [],
    waits: number[] = [],
    buffers: number[] = [];
  for (let s = 0; s < steps + 2; s++) {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    t.tidy(() => {
      dp?.beforeForward();
      const loss = t.crossEntropy(model.forward(x), y);
      if (dp) {
        const c = dp.backward(loss);
        if (s >= 2) {
          waits.push(c.waitMs);
          buffers.push(c.bufferMs);
        }
      } else {
        loss.backward();
      }
      opt.step();
      opt.zeroGrad();
      loss.item();
    });
    if (s >= 2) {
      times.push(performance.now() - t0);
      const c = process.cpuUsage(c0);
      cpu.push((c.user + c.system) / 1000);
    }
  }
  let alone: Record<string, number> | null = null;
  if (group) {
    alone = {};
    for (const [name, bytes] of Object.entries({ [THROUGHPUT_MODEL]: dp!.bytesPerStep, ...sizes })) {
      const buf = t.keep(t.zeros([bytes / 4]));
      const ms: number[] = [];
      for (let r = 0; r < 15; r++) {
        const t0 = performance.now();
        group.allReduce(buf, 'sum').wait();
        if (r >= 2) ms.push(performance.now() - t0);
      }
      buf.dispose();
      alone[name] = median(ms);
    }
  }
  const msPerStep = median(times);
  const world = env?.worldSize ?? 1;
  const out: WorkerResult = {
    worldSize: world,
    threads,
    msPerStep,
    cpuMsPerStep: median(cpu),
    imgPerSec: (1000 * batch * world) / msPerStep,
    commWaitMs: dp ? median(waits) : null,
    bufferMs: dp ? median(buffers) : null,
    bytesPerStep: dp?.bytesPerStep ?? null,
    allReduceAloneMs: alone,
  };
  if ((env?.rank ?? 0) === 0) console.log(JSON.stringify(out));
  opt.dispose();
  dp?.dispose();
  group?.barrier().wait();
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    c.stdout.on('data', (d) => {
      out += d;
    });
    c.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}`))));
  });
}

/** Runs `world` ranks of a command (loopback, a free port); resolves with rank 0's last JSON line. */
async function ranks(world: number, cmd: string, args: string[]): Promise<unknown> {
  const port = await freeLoopbackPort();
  const outs = await Promise.all(
    Array.from({ length: world }, (_, r) =>
      run(cmd, args, {
        ...process.env,
        MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: String(port),
        WORLD_SIZE: String(world),
        RANK: String(r),
        LOCAL_RANK: String(r),
        OMP_NUM_THREADS: String(Math.max(1, Math.floor(os.cpus().length / world))),
      }),
    ),
  );
  const line = outs[0]!
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .pop();
  if (!line) throw new Error(`no result from ${cmd}`);
  return JSON.parse(line);
}

/** Bytes DataParallel all-reduces per step for a model (in a world of one: no peers needed). */
async function trafficBytes(): Promise<Record<string, { params: number; bytes: number; buckets: number }>> {
  const group = await ProcessGroup.init({ host: '127.0.0.1', port: await freeLoopbackPort(), rank: 0, worldSize: 1, timeoutMs: 30_000 });
  const out: Record<string, { params: number; bytes: number; buckets: number }> = {};
  for (const [, shared, unshared] of TRAFFIC_MODELS) {
    for (const name of [shared, unshared]) {
      const m = createModel(name, { classes: 10 });
      const dp = new DataParallel(group, m);
      out[name] = { params: distinctTrainable(m).reduce((a, p) => a + p.size, 0), bytes: dp.bytesPerStep, buckets: dp.bucketBytes.length };
      dp.dispose();
      m.dispose();
    }
  }
  group.destroy();
  return out;
}

/** Ring all-reduce, bandwidth term: each of N ranks sends and receives 2(N-1)/N of the data. */
function ringMs(bytes: number, n: number, gbit: number): number {
  return ((((2 * (n - 1)) / n) * bytes) / ((gbit * 1e9) / 8)) * 1000;
}

async function main(): Promise<void> {
  const cpus = os.cpus().length;
  const loadBefore = os.loadavg()[0]!;
  const traffic = await trafficBytes();
  const sizes = Object.fromEntries(Object.entries(traffic).map(([k, v]) => [k, v.bytes]));
  const script = fileURLToPath(import.meta.url);
  // Alternated rounds, so that background load on a shared machine affects both alike; the
  // round with the median throughput of each is reported.
  const ones: WorkerResult[] = [],
    twos: WorkerResult[] = [];
  for (let r = 0; r < rounds; r++) {
    ones.push(
      (await ranks(1, process.execPath, [script, '--worker', '--threads', String(cpus), '--steps', String(steps), '--batch', String(batch)])) as WorkerResult,
    );
    twos.push(
      (await ranks(2, process.execPath, [
        script,
        '--worker',
        '--threads',
        String(Math.max(1, Math.floor(cpus / 2))),
        '--steps',
        String(steps),
        '--batch',
        String(batch),
        '--sizes',
        JSON.stringify(sizes),
      ])) as WorkerResult,
    );
  }
  const mid = (rs: WorkerResult[]) => [...rs].sort((a, b) => a.imgPerSec - b.imgPerSec)[rs.length >> 1]!;
  const one = mid(ones),
    two = mid(twos);
  const torchRef = (await ranks(2, '/usr/bin/python3', [path.resolve(here, '../../bench/reference_allreduce.py'), JSON.stringify(sizes)])) as {
    torch: string;
    allReduceMs: Record<string, number>;
  };
  const loadAfter = os.loadavg()[0]!;

  const scaling = [];
  for (const [label, shared, unshared] of TRAFFIC_MODELS) {
    for (const gbit of [10, 100]) {
      for (const n of [8, 64, 512]) {
        const s = ringMs(traffic[shared]!.bytes, n, gbit),
          u = ringMs(traffic[unshared]!.bytes, n, gbit);
        scaling.push({ model: label, gbitPerSec: gbit, gpus: n, sharedMs: round(s, 4), unsharedMs: round(u, 4), unsharedOverShared: round(u / s, 2) });
      }
    }
  }
  const result = {
    benchmark: 'distributed',
    date: new Date().toISOString(),
    command: `node dist/bench/distributed.js --steps ${steps} --batch ${batch} --rounds ${rounds}`,
    machine: {
      cpus,
      cpuModel: os.cpus()[0]?.model ?? '?',
      loadAverage1mBefore: loadBefore,
      loadAverage1mAfter: loadAfter,
      network: 'loopback (both ranks on this machine)',
    },
    libtorch: t.runtimeInfo().torchVersion,
    backend: 'c10d Gloo (ProcessGroupGloo over TCPStore), through the kshare addon',
    bytesPerStep: Object.fromEntries(
      TRAFFIC_MODELS.map(([label, shared, unshared]) => [
        label,
        {
          shared: { model: shared, ...traffic[shared]! },
          unshared: { model: unshared, ...traffic[unshared]! },
          unsharedOverShared: round(traffic[unshared]!.bytes / traffic[shared]!.bytes, 2),
        },
      ]),
    ),
    throughput: {
      what: `${THROUGHPUT_MODEL}, batch ${batch} per process, SGD, random 3x32x32 inputs, channels_last; median of ${steps} steps after 2 warm-up steps; global images per second`,
      rounds: { oneProcessImgPerSec: ones.map((r) => round(r.imgPerSec, 1)), twoProcessesImgPerSec: twos.map((r) => round(r.imgPerSec, 1)) },
      oneProcess: { threads: one.threads, imgPerSec: round(one.imgPerSec, 1), msPerStep: round(one.msPerStep, 2), cpuMsPerStep: round(one.cpuMsPerStep, 2) },
      twoProcesses: {
        threadsEach: two.threads,
        imgPerSec: round(two.imgPerSec, 1),
        msPerStep: round(two.msPerStep, 2),
        cpuMsPerStepRank0: round(two.cpuMsPerStep, 2),
        bytesPerStep: two.bytesPerStep,
        // From the end of backward until every bucket is reduced: communication overlap did not
        // hide, plus waiting for the slower rank (on a loaded machine, mostly the latter).
        gradientWaitAfterBackwardMsPerStep: round(two.commWaitMs!, 3),
        bufferBroadcastMsPerStep: round(two.bufferMs!, 3),
        allReduceAloneMsPerStep: round(two.allReduceAloneMs![THROUGHPUT_MODEL]!, 3),
      },
      speedup: round(two.imgPerSec / one.imgPerSec, 2),
    },
    allReduceAloneMs: {
      what: "median time of one in-place sum all-reduce of a float32 tensor of the model's gradient bytes, 2 processes on loopback (13 timed of 15)",
      kshare: Object.fromEntries(Object.entries(two.allReduceAloneMs!).map(([k, v]) => [k, round(v, 3)])),
      pytorch: Object.fromEntries(Object.entries(torchRef.allReduceMs).map(([k, v]) => [k, round(v, 3)])),
      pytorchVersion: torchRef.torch,
    },
    ringScaling: {
      formula:
        'ms = 2(N-1)/N x bytesPerStep / (bandwidth in bytes/s) x 1000: the bandwidth term of a ring all-reduce over N GPUs, no latency term, no overlap with backward',
      rows: scaling,
    },
  };
  const outFile = path.resolve(arg('out', path.resolve(here, '../../bench/results/distributed.json')));
  mkdirSync(path.dirname(outFile), { recursive: true });
  writeFileSync(outFile, JSON.stringify(result, null, 2) + '\n');
  console.log(JSON.stringify({ bytesPerStep: result.bytesPerStep, throughput: result.throughput, allReduceAloneMs: result.allReduceAloneMs }, null, 2));
  console.log(`wrote ${outFile}`);
}

if (process.argv.includes('--worker')) await worker();
else await main();
