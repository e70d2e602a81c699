// CPU kernels benchmark: kshare's layers and whole steps against PyTorch 1.13 on the CPU, in one
// run, same BLAS and thread count (issue 9). Run on purpose, not in CI:
//
//   npm run build && node dist/bench/cpu-kernels.js            # writes bench/results/cpu-kernels.json
//   node dist/bench/cpu-kernels.js --threads 1 --rounds 2 --only gelu --out /tmp/k.json
//
// Rows (ratio = referenceMs / kshareMs; above 1: kshare is faster):
// - single layers at the demo shape (32, 64, 16, 16) k5 and the paper's (8, 256, 32, 32) k9:
//   depthwise conv forward / input gradient / weight gradient / all three gradients (the
//   backward a training step runs) (through kshare's conv2d front,
//   so whichever kernel it routes to), a C -> C 1x1 conv forward and backward, and bias + GELU + BatchNorm forward / backward in training
//   and eval mode (kshare: the fused kernel; PyTorch: its three ops). Reference:
//   bench/reference_kernels.py.
// - full training steps (forward, cross-entropy, backward, AdamW, zero grad) at batch 32 of
//   convmixer_64_4_k5_p2_shared, convmixer_64_4_k5_p2, convmixer_256_8_k5_p2_shared and
//   se_resnet_d_2_full_shared; ConvMixer-256/16 shared inference at batch 1 and 32. Reference:
//   bench/reference_step.py (--model: test/fixtures/ref_models.py).
// - ConvMixer-256/16 shared inference at batch 1 and 32 against onnxruntime-node (its default
//   graph optimisations, the exported model, intra-op threads = --threads): referenceMs is ORT.
// - the same steps and batch-1 inference with model and input in channels_last on both sides
//   (`--channels-last` in `kshare train` and the demo), SE-ResNet too; ORT still gets NCHW input.
// Every row runs for each of --threads (default "1,2"); kshare and the reference alternate
// --rounds times and the medians of all timed iterations are reported: wall-clock time
// (kshareMs, referenceMs, ratio) and process CPU time (kshareCpuMs, referenceCpuMs, cpuRatio),
// which is the steadier comparison on a machine shared with other work. Model rows warm kshare up
// for at least --warmup-ms and give the reference the same number of warm-up iterations, and
// record how many of kshare's 1x1 products ran on AMX (kshareAmxProducts) and how fast the AMX
// unit ran them in each round (kshareAmxNsPerTileProduct: see Row).
import os from 'node:os';
import path from 'node:path';
import { mkdirSync, readFileSync, writeFileSync, renameSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import * as ort from 'onnxruntime-node';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { inference, trainingStep } from './model-workload.js';
import { exportOnnx } from '../src/export/export-onnx.js';
import { modelFromRegistry } from '../src/export/model-source.js';
import { median, round } from './stats.js';
import { intOption } from './options.js';
import { MALLOC_ENV, ROOT, ompWaitSetting, reexecWithMallocEnv, runReference } from './cpu-common.js';

type KernelKind =
  | 'dw_fwd'
  | 'dw_grad_input'
  | 'dw_grad_weight'
  | 'dw_backward'
  | 'pw_fwd'
  | 'pw_backward'
  | 'gbn_fwd_train'
  | 'gbn_bwd_train'
  | 'gbn_fwd_eval'
  | 'gbn_bwd_eval';
interface KernelRow {
  name: string;
  kind: KernelKind;
  shape: [number, number, number, number];
  k: number;
}

const SHAPES: { label: string; shape: [number, number, number, number]; k: number }[] = [
  { label: 'demo (32,64,16,16) k5', shape: [32, 64, 16, 16], k: 5 },
  { label: 'paper (8,256,32,32) k9', shape: [8, 256, 32, 32], k: 9 },
];
const KINDS: [KernelKind, string][] = [
  ['dw_fwd', 'depthwise conv forward'],
  ['dw_grad_input', 'depthwise conv input gradient'],
  ['dw_grad_weight', 'depthwise conv weight gradient'],
  ['dw_backward', 'depthwise conv backward (input, weight and bias gradients)'],
  ['pw_fwd', '1x1 conv forward'],
  ['pw_backward', '1x1 conv backward (input, weight and bias gradients)'],
  ['gbn_fwd_train', 'bias+GELU+BN forward, train'],
  ['gbn_bwd_train', 'bias+GELU+BN backward, train'],
  ['gbn_fwd_eval', 'bias+GELU+BN forward, eval'],
  ['gbn_bwd_eval', 'bias+GELU+BN backward, eval'],
];
const KERNEL_ROWS: KernelRow[] = SHAPES.flatMap((s) => KINDS.map(([kind, what]): KernelRow => ({ name: `${what}, ${s.label}`, kind, shape: s.shape, k: s.k })));

interface ModelRow {
  name: string;
  model: string;
  mode: 'step' | 'forward';
  batch: number;
  ort?: boolean;
  /** Model and input in channels_last on both sides (kshare train's CPU default); ORT gets NCHW. */
  channelsLast?: boolean;
}
const MODEL_ROWS: ModelRow[] = [
  { name: 'convmixer_64_4_k5_p2_shared training step, batch 32', model: 'convmixer_64_4_k5_p2_shared', mode: 'step', batch: 32 },
  { name: 'convmixer_64_4_k5_p2 training step, batch 32', model: 'convmixer_64_4_k5_p2', mode: 'step', batch: 32 },
  { name: 'convmixer_256_8_k5_p2_shared training step, batch 32', model: 'convmixer_256_8_k5_p2_shared', mode: 'step', batch: 32 },
  { name: 'se_resnet_d_2_full_shared training step, batch 32', model: 'se_resnet_d_2_full_shared', mode: 'step', batch: 32 },
  { name: 'convmixer_256_16_shared inference, batch 1', model: 'convmixer_256_16_shared', mode: 'forward', batch: 1 },
  { name: 'convmixer_256_16_shared inference, batch 32', model: 'convmixer_256_16_shared', mode: 'forward', batch: 32 },
  { name: 'convmixer_256_16_shared inference vs onnxruntime-node, batch 1', model: 'convmixer_256_16_shared', mode: 'forward', batch: 1, ort: true },
  { name: 'convmixer_256_16_shared inference vs onnxruntime-node, batch 32', model: 'convmixer_256_16_shared', mode: 'forward', batch: 32, ort: true },
  {
    name: 'convmixer_64_4_k5_p2_shared training step, batch 32, channels-last',
    model: 'convmixer_64_4_k5_p2_shared',
    mode: 'step',
    batch: 32,
    channelsLast: true,
  },
  {
    name: 'convmixer_256_8_k5_p2_shared training step, batch 32, channels-last',
    model: 'convmixer_256_8_k5_p2_shared',
    mode: 'step',
    batch: 32,
    channelsLast: true,
  },
  {
    name: 'se_resnet_d_2_full_shared training step, batch 32, channels-last',
    model: 'se_resnet_d_2_full_shared',
    mode: 'step',
    batch: 32,
    channelsLast: true,
  },
  { name: 'convmixer_256_16_shared inference, batch 1, channels-last', model: 'convmixer_256_16_shared', mode: 'forward', batch: 1, channelsLast: true },
  {
    name: 'convmixer_256_16_shared inference vs onnxruntime-node, batch 1, kshare channels-last',
    model: 'convmixer_256_16_shared',
    mode: 'forward',
    batch: 1,
    ort: true,
    channelsLast: true,
  },
];
const CLASSES = 10;

/** One timed iteration of a kernel row in kshare; setup outside the returned function. */
function kshareKernel(row: KernelRow): { run: () => void; dispose: () => void } {
  const [n, c, h, w] = row.shape;
  const gen = new t.Generator(0);
  const x = t.randn([n, c, h, w], { generator: gen });
  const dy = t.randn([n, c, h, w], { generator: gen });
  const held: Tensor[] = [x, dy];
  const dispose = () => t.dispose(held);
  // A forward row: fn under tidy (and noGrad unless it records a graph, as training BN does).
  const forwardRow = (fn: () => Tensor, grad = false) => ({
    run: () => {
      const once = () => t.tidy(() => void fn());
      if (grad) once();
      else t.noGrad(once);
    },
    dispose,
  });
  // A backward row: the graph of fn() is built once and kept; each run backpropagates dy into `targets`.
  const backwardRow = (fn: () => Tensor, targets: Tensor[]) => {
    for (const v of targets) v.requiresGrad = true;
    const y = fn();
    held.push(y);
    return {
      run: () => {
        y.backward(dy, { retainGraph: true });
        for (const v of targets) v.grad = null;
      },
      dispose,
    };
  };
  if (row.kind.startsWith('pw_')) {
    // C -> C 1x1 with bias, as in a ConvMixer block (kshare: native/pointwise_conv.cc where built).
    const wt = t.randn([c, c, 1, 1], { generator: gen }).mul(0.1);
    const b = t.randn([c], { generator: gen });
    held.push(wt, b);
    const conv = () => t.conv2d(x, wt, b);
    return row.kind === 'pw_fwd' ? forwardRow(conv) : backwardRow(conv, [x, wt, b]);
  }
  if (row.kind.startsWith('dw_')) {
    const wt = t.randn([c, 1, row.k, row.k], { generator: gen }).mul(0.1);
    const b = t.randn([c], { generator: gen });
    held.push(wt, b);
    const conv = () => t.conv2d(x, wt, b, { padding: row.k >> 1, groups: c });
    if (row.kind === 'dw_fwd') return forwardRow(conv);
    return backwardRow(conv, row.kind === 'dw_grad_input' ? [x] : row.kind === 'dw_grad_weight' ? [wt] : [x, wt, b]);
  }
  const b = t.randn([c], { generator: gen }),
    g = t.randn([c], { generator: gen }),
    beta = t.randn([c], { generator: gen });
  const rm = t.zeros([c]),
    rv = t.ones([c]);
  held.push(b, g, beta, rm, rv);
  // Parameters record gradients in every BN row, so the training forward keeps what its backward needs.
  const params = [x, b, g, beta];
  for (const p of params) p.requiresGrad = true;
  const training = row.kind.endsWith('_train');
  const fwd = () => t.biasGeluBatchNorm(x, b, { weight: g, bias: beta, runningMean: rm, runningVar: rv, training, momentum: 0.1, eps: 1e-5 });
  if (row.kind === 'gbn_fwd_train') return forwardRow(fwd, true);
  if (row.kind === 'gbn_fwd_eval') return forwardRow(fwd);
  return backwardRow(fwd, params);
}

/**
 * Backward rows: clearing the gradients is part of `run` but costs microseconds; PyTorch's
 * torch.autograd.grad does not accumulate, so both sides compute the same gradients.
 */
function timeKshareKernels(rows: KernelRow[], warmup: number, iters: number): Map<string, Samples> {
  const out = new Map<string, Samples>();
  for (const row of rows) {
    const k = kshareKernel(row);
    out.set(row.name, timed(k.run, warmup, iters));
    k.dispose();
  }
  return out;
}

interface Samples {
  wall: number[];
  cpu: number[];
}

/**
 * Wall-clock and process CPU time (ms) of each of `iters` calls after at least `warmup` untimed
 * ones, and untimed ones until `warmupMs` have passed (the first ~0.3 s of 2-thread steps in a
 * process ran up to 1.6x slower here, so a fixed count of a 12 ms step under-warms); warmedUp
 * says how many untimed calls ran.
 */
function timed(fn: () => void, warmup: number, iters: number, warmupMs = 0): Samples & { warmedUp: number } {
  const s = { wall: [] as number[], cpu: [] as number[], warmedUp: 0 };
  const start = performance.now();
  while (s.warmedUp < warmup || performance.now() - start < warmupMs) {
    fn();
    s.warmedUp++;
  }
  for (let i = 0; i < iters; i++) {
    const t0 = performance.now(),
      c0 = process.cpuUsage();
    fn();
    const c = process.cpuUsage(c0);
    s.wall.push(performance.now() - t0);
    s.cpu.push((c.user + c.system) / 1000);
  }
  return s;
}

/** What kshare's 1x1 products did on AMX tiles while a row was timed (runtimeInfo's counters). */
interface AmxUse {
  products: number;
  tileProducts: number;
  ns: number;
}

function timeKshareModel(row: ModelRow, warmup: number, iters: number, warmupMs: number): Samples & { warmedUp: number; amx: AmxUse } {
  const o = { batch: row.batch, classes: CLASSES, channelsLast: row.channelsLast };
  const w = row.mode === 'step' ? trainingStep(row.model, o) : inference(row.model, o);
  const live = t.liveTensors();
  const before = t.runtimeInfo();
  const samples = timed(w.run, warmup, iters, warmupMs);
  const after = t.runtimeInfo();
  if (row.mode === 'forward' && t.liveTensors() !== live) throw new Error(`cpu-kernels: ${row.name} leaked ${t.liveTensors() - live} tensors`);
  w.dispose();
  const amx = {
    products: after.amxProducts - before.amxProducts,
    tileProducts: after.amxTileProducts - before.amxTileProducts,
    ns: after.amxProductNs - before.amxProductNs,
  };
  return { ...samples, amx };
}

/**
 * Which vector code ran where: kshare's fused GELU/BN kernel takes the widest of AVX-512, AVX2
 * and portable (capped by KSHARE_NATIVE_ISA), its depthwise weight gradient likewise (AVX-512
 * needs only avx512f there) and its own depthwise forward AVX2 or portable;
 * libtorch's ATen kernels report their own capability, OpenBLAS follows OPENBLAS_CORETYPE, and
 * oneDNN and onnxruntime pick the widest the CPU has.
 */
function instructionSets(): Record<string, string> {
  let flags = '';
  try {
    flags = readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1] ?? '';
  } catch {
    // not Linux: flags unknown
  }
  const has = (f: string) => flags.split(' ').includes(f);
  const cap = process.env.KSHARE_NATIVE_ISA;
  const avx2 = has('avx2') && has('fma');
  const widest = has('avx512f') && has('avx512dq') && avx2 ? 'avx512' : avx2 ? 'avx2' : 'generic';
  return {
    cpuFlags: ['avx2', 'fma', 'avx512f', 'avx512dq', 'amx_bf16'].filter(has).join(' ') || 'unknown',
    kshareFusedGeluBatchNorm: cap === 'generic' ? 'generic' : cap === 'avx2' && widest === 'avx512' ? 'avx2' : widest,
    kshareDepthwiseWeightGradient: cap === 'generic' || !avx2 ? 'generic' : cap !== 'avx2' && has('avx512f') ? 'avx512' : 'avx2',
    // Where AMX is on, native/pointwise_conv.cc decides which 1x1 products it takes: each model
    // row's kshareAmxProducts counts them.
    kshareNchw1x1Products: t.runtimeInfo().amx ? 'amx-bf16 (float32 accuracy) where a row has kshareAmxProducts > 0, else sgemm' : 'sgemm',
    openblasCoretype: process.env.OPENBLAS_CORETYPE ?? '(auto)',
  };
}

const ortSessions = new Map<string, ort.InferenceSession>();

async function timeOrt(row: ModelRow, threads: number, warmup: number, iters: number): Promise<Samples> {
  const key = `${row.model}/${threads}`;
  let s = ortSessions.get(key);
  if (!s) {
    t.manualSeed(0);
    const src = modelFromRegistry(row.model);
    const { bytes } = exportOnnx(src.model, src.info);
    src.model.dispose();
    s = await ort.InferenceSession.create(bytes, { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
    ortSessions.set(key, s);
  }
  const input = new ort.Tensor(
    'float32',
    Float32Array.from({ length: row.batch * 3 * 32 * 32 }, (_, i) => Math.sin(i)),
    [row.batch, 3, 32, 32],
  );
  const samples: Samples = { wall: [], cpu: [] };
  for (let i = 0; i < warmup + iters; i++) {
    const t0 = performance.now(),
      c0 = process.cpuUsage();
    await s.run({ [s.inputNames[0]!]: input });
    const c = process.cpuUsage(c0);
    if (i >= warmup) {
      samples.wall.push(performance.now() - t0);
      samples.cpu.push((c.user + c.system) / 1000);
    }
  }
  return samples;
}

interface StepReference {
  torch: string;
  threads: number;
  samplesMs: number[];
  cpuSamplesMs: number[];
}
interface KernelReference {
  torch: string;
  threads: number;
  samplesMs: Record<string, number[]>;
  cpuSamplesMs: Record<string, number[]>;
}

function referenceModel(row: ModelRow, threads: number, warmup: number, iters: number): StepReference {
  return runReference<StepReference>(
    'reference_step.py',
    [
      '--model',
      row.model,
      '--mode',
      row.mode,
      '--batch',
      String(row.batch),
      '--classes',
      String(CLASSES),
      '--threads',
      String(threads),
      '--warmup',
      String(warmup),
      '--steps',
      String(iters),
      ...(row.channelsLast ? ['--channels-last'] : []),
    ],
    threads,
  );
}

interface Row {
  name: string;
  threads: number;
  kshareMs: number;
  referenceMs: number;
  ratio: number;
  kshareCpuMs: number;
  referenceCpuMs: number;
  cpuRatio: number;
  reference: string;
  /** Model rows: AMX products kshare ran over the row's rounds, warm-up included (0: all on sgemm). */
  kshareAmxProducts?: number;
  /**
   * Model rows with AMX products: for each round, the nanoseconds those products took a tile
   * product (runtimeInfo's amxProductNs / amxTileProducts over the round's kshare iterations,
   * warm-up included). Why: on the project's 2-core Xeon the AMX unit is shared with other guests
   * of the host, and in stretches its products ran much slower than the rest of the core's work
   * (this bench's rounds: 6.74-9.8 ns a tile product quiet, runs HA-HD, up to 17.94 slow, run GC;
   * bench/cpu-kernels-notes.md); this shows which rounds ran in such a stretch, measured in the
   * products themselves, which the medians alone do not show.
   */
  kshareAmxNsPerTileProduct?: number[];
}

async function main(): Promise<void> {
  const program = new Command()
    .name('cpu-kernels')
    .description("Time kshare's CPU kernels and whole steps against PyTorch (and onnxruntime-node) in one run")
    .option('--threads <list>', 'comma-separated intra-op thread counts, each a full pass over the rows', '1,2')
    .option('--rounds <n>', 'alternations of kshare and the reference per row', '3')
    .option('--warmup <n>', 'untimed iterations per round', '3')
    .option('--warmup-ms <ms>', 'model rows: kshare also warms up until this much time has passed, and the reference gets as many warm-up iterations', '1000')
    .option('--iters <n>', 'timed iterations per round (kernels: 4x this)', '5')
    .option('--settle <s>', 'seconds after process start before timing begins (libtorch start-up effects)', '10')
    .option('--only <text>', 'run only the rows whose name contains text')
    .option('--out <file>', 'where to write the JSON', path.join(ROOT, 'bench', 'results', 'cpu-kernels.json'))
    .parse();
  const o = program.opts<{ threads: string; rounds: string; warmup: string; warmupMs: string; iters: string; settle: string; only?: string; out: string }>();
  reexecWithMallocEnv(fileURLToPath(import.meta.url));
  const int = intOption(program);
  const threadList = o.threads.split(',').map((v) => int('threads', v.trim(), 1));
  const rounds = int('rounds', o.rounds, 1),
    warmup = int('warmup', o.warmup, 0),
    warmupMs = int('warmup-ms', o.warmupMs, 0),
    iters = int('iters', o.iters, 1),
    settleS = int('settle', o.settle, 0);
  const pick = <T extends { name: string }>(rows: T[]) => rows.filter((r) => !o.only || r.name.includes(o.only));
  const kernelRows = pick(KERNEL_ROWS),
    modelRows = pick(MODEL_ROWS);
  if (!kernelRows.length && !modelRows.length) program.error(`cpu-kernels: no row matches --only '${o.only}'`);
  if (!t.nativeKernelsEnabled()) console.warn("cpu-kernels: KSHARE_NATIVE_KERNELS=0, so kshare runs libtorch's ops");

  // Untimed work until libtorch's start-up slowness (oneDNN GELU in the first seconds) is over.
  while (process.uptime() < settleS)
    t.noGrad(() =>
      t.tidy(() => {
        t.gelu(t.randn([32, 64, 16, 16]));
      }),
    );

  const rows: Row[] = [];
  let torchVersion = '';
  const f = (v: number) => v.toFixed(2).padStart(8);
  const report = (row: Row) => {
    rows.push(row);
    console.log(
      `${row.threads}t ${row.name.padEnd(66)} wall: kshare ${f(row.kshareMs)} ms, ${row.reference} ${f(row.referenceMs)} ms, ratio ${row.ratio.toFixed(2)} | cpu: ${f(row.kshareCpuMs)} / ${f(row.referenceCpuMs)} ms, ratio ${row.cpuRatio.toFixed(2)}` +
        (row.kshareAmxNsPerTileProduct ? ` | AMX ns a tile product: ${row.kshareAmxNsPerTileProduct.join(' / ')}` : ''),
    );
  };
  const makeRow = (name: string, threads: number, mine: Samples, ref: Samples, reference: string): Row => {
    const [k, r, kc, rc] = [median(mine.wall), median(ref.wall), median(mine.cpu), median(ref.cpu)];
    return {
      name,
      threads,
      kshareMs: round(k, 3),
      referenceMs: round(r, 3),
      ratio: round(r / k, 3),
      kshareCpuMs: round(kc, 3),
      referenceCpuMs: round(rc, 3),
      cpuRatio: round(rc / kc, 3),
      reference,
    };
  };
  const add = (to: Samples, from: Samples) => {
    to.wall.push(...from.wall);
    to.cpu.push(...from.cpu);
  };
  for (const threads of threadList) {
    t.setNumThreads(threads);
    if (kernelRows.length) {
      const mine = new Map<string, Samples>(kernelRows.map((r) => [r.name, { wall: [], cpu: [] }]));
      const ref = new Map<string, Samples>(kernelRows.map((r) => [r.name, { wall: [], cpu: [] }]));
      for (let r = 0; r < rounds; r++) {
        for (const [k, v] of timeKshareKernels(kernelRows, warmup, 4 * iters)) add(mine.get(k)!, v);
        const out = runReference<KernelReference>(
          'reference_kernels.py',
          ['--threads', String(threads), '--warmup', String(warmup), '--iters', String(4 * iters)],
          threads,
          kernelRows,
        );
        if (out.threads !== threads) throw new Error(`cpu-kernels: PyTorch ran with ${out.threads} threads, not ${threads}`);
        torchVersion = out.torch;
        for (const [k, v] of Object.entries(out.samplesMs)) add(ref.get(k)!, { wall: v, cpu: out.cpuSamplesMs[k]! });
      }
      for (const row of kernelRows) report(makeRow(row.name, threads, mine.get(row.name)!, ref.get(row.name)!, 'PyTorch'));
    }
    for (const row of modelRows) {
      const mine: Samples = { wall: [], cpu: [] },
        ref: Samples = { wall: [], cpu: [] };
      let amxProducts = 0;
      const amxNs: number[] = [];
      for (let r = 0; r < rounds; r++) {
        // The reference gets as many warm-up iterations as kshare needed to fill --warmup-ms.
        const m = timeKshareModel(row, warmup, iters, warmupMs);
        add(mine, m);
        amxProducts += m.amx.products;
        if (m.amx.tileProducts > 0) amxNs.push(round(m.amx.ns / m.amx.tileProducts, 2));
        if (row.ort) {
          add(ref, await timeOrt(row, threads, m.warmedUp, iters));
        } else {
          const out = referenceModel(row, threads, m.warmedUp, iters);
          if (out.threads !== threads) throw new Error(`cpu-kernels: PyTorch ran with ${out.threads} threads, not ${threads}`);
          torchVersion = out.torch;
          add(ref, { wall: out.samplesMs, cpu: out.cpuSamplesMs });
        }
      }
      report({
        ...makeRow(row.name, threads, mine, ref, row.ort ? 'onnxruntime-node' : 'PyTorch'),
        kshareAmxProducts: amxProducts,
        ...(amxNs.length ? { kshareAmxNsPerTileProduct: amxNs } : {}),
      });
    }
  }
  for (const s of ortSessions.values()) await s.release();

  const cpus = os.cpus();
  const info = t.runtimeInfo();
  const result = {
    machine: `${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${cpus.length} cores`,
    torch: torchVersion,
    libtorch: info.torchVersion,
    onnxruntime: ort.env.versions.node ?? 'unknown',
    nativeKernels: t.nativeKernelsEnabled(),
    // kshare's CPU pool over the whole run: spreads counts workers moved off a CPU the caller was on.
    pool: { jobs: info.cpuPoolJobs, wakes: info.cpuPoolWakes, spreads: info.cpuPoolSpreads, fallbacks: info.cpuPoolFallbacks },
    isa: instructionSets(),
    method:
      `medians over ${rounds} rounds of ${iters} timed iterations (kernels ${4 * iters}) after at least ${warmup} warm-up ones (model rows: and kshare warming up for at least ${warmupMs} ms, the reference then getting as many warm-up iterations as kshare ran), kshare and the reference alternating per round; ` +
      `both processes with ${Object.entries(MALLOC_ENV)
        .map(([k, v]) => `${k}=${v}`)
        .join(' ')} and ${ompWaitSetting()}; timing from ${settleS} s after start; ` +
      'the reference is PyTorch (python3-torch, same libtorch and BLAS) unless the row says onnxruntime-node; ratio = referenceMs / kshareMs',
    rows: rows.map(({ name, threads, ...rest }) => ({ name: `${name}, ${threads} thread${threads > 1 ? 's' : ''}`, ...rest, threads })),
  };
  mkdirSync(path.dirname(o.out), { recursive: true });
  const tmp = `${o.out}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(result, null, 2) + '\n');
  renameSync(tmp, o.out);
  console.log(`wrote ${path.relative(process.cwd(), o.out)}`);
}

await main();
