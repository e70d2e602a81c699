// CPU benchmark: one ConvMixer training step (and forward pass) in kshare against the same
// model in PyTorch (bench/reference_step.py), in one run, same thread count.
//
//   node dist/bench/cpu-step.js [--threads 1] [--warmup 5] [--steps 20] [--rounds 2] [--out bench/results/cpu-step.json]
//                               [--settle 10] [--system-malloc]
//
// Each row alternates kshare and PyTorch `rounds` times (so background load hits both alike),
// warms up, times every step, and reports the median wall-clock time (and, alongside, the
// median process CPU time). ratio = referenceMs / kshareMs (above 1: kshare is faster).
import os from 'node:os';
import path from 'node:path';
import { mkdirSync, writeFileSync, renameSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { AdamW } from '../src/train/optim/index.js';
import { createModel } from '../src/models/registry.js';
import type { Module } from '../src/nn/index.js';
import { median, round } from './stats.js';
import { intOption } from './options.js';
import { MALLOC_ENV, ROOT, ompWaitSetting, reexecWithMallocEnv, runReference } from './cpu-common.js';

interface Shape {
  dim: number;
  depth: number;
  kernel: number;
  patch: number;
  classes: number;
  batch: number;
  size: number;
}
const SHAPE: Shape = { dim: 64, depth: 4, kernel: 5, patch: 2, classes: 10, batch: 32, size: 32 };

/** The small ConvMixer written directly with tensor ops: what the engine costs without the Module layer. */
class OpsConvMixer {
  readonly params: Tensor[] = [];
  readonly stats: Tensor[] = [];

  constructor(
    private readonly s: Shape,
    gen: t.Generator,
  ) {
    const uniform = (shape: number[], fanIn: number) => {
      const b = 1 / Math.sqrt(fanIn);
      return this.param(t.uniform_(t.zeros(shape), -b, b, gen));
    };
    const d = s.dim;
    this.stem = { w: uniform([d, 3, s.patch, s.patch], 3 * s.patch * s.patch), b: uniform([d], 3 * s.patch * s.patch), bn: this.bn(d) };
    for (let i = 0; i < s.depth; i++) {
      this.blocks.push({
        dw: { w: uniform([d, 1, s.kernel, s.kernel], s.kernel * s.kernel), b: uniform([d], s.kernel * s.kernel) },
        bn1: this.bn(d),
        pw: { w: uniform([d, d, 1, 1], d), b: uniform([d], d) },
        bn2: this.bn(d),
      });
    }
    this.head = { w: uniform([s.classes, d], d), b: uniform([s.classes], d) };
  }

  private stem: { w: Tensor; b: Tensor; bn: Bn };
  private blocks: { dw: { w: Tensor; b: Tensor }; bn1: Bn; pw: { w: Tensor; b: Tensor }; bn2: Bn }[] = [];
  private head: { w: Tensor; b: Tensor };

  private param(x: Tensor): Tensor {
    x.requiresGrad = true;
    this.params.push(x);
    return x;
  }

  private bn(c: number): Bn {
    const b = { w: this.param(t.ones([c])), b: this.param(t.zeros([c])), rm: t.zeros([c]), rv: t.ones([c]) };
    this.stats.push(b.rm, b.rv);
    return b;
  }

  /**
   * Each stage runs in its own tidy and its input is released once consumed, as PyTorch's
   * reference counting does: holding every activation until the end of the pass made the
   * forward pass ~25% slower (cache misses), which is a cost of the bench, not of the engine.
   */
  forward(x: Tensor, training: boolean): Tensor {
    const norm = (h: Tensor, b: Bn) => t.batchNorm(h, { weight: b.w, bias: b.b, runningMean: b.rm, runningVar: b.rv, training });
    // conv → GELU → BN: kshare's fused kernel where it applies, as the Module layer does (src/nn/fused.ts)
    const fused = t.nativeKernelsEnabled() && x.dtype === 'float32' && x.device === 'cpu';
    const convGeluBn = (v: Tensor, w: Tensor, bias: Tensor, b: Bn, o: t.Conv2dOptions) =>
      fused
        ? t.biasGeluBatchNorm(t.conv2d(v, w, null, o), bias, { weight: b.w, bias: b.b, runningMean: b.rm, runningVar: b.rv, training })
        : norm(t.gelu(t.conv2d(v, w, bias, o)), b);
    const stage = (input: Tensor, fn: (h: Tensor) => Tensor): Tensor => {
      const out = t.tidy(() => fn(input));
      if (input !== x) input.dispose();
      return out;
    };
    const pad = Math.floor((this.s.kernel - 1) / 2);
    let h = stage(x, (v) => convGeluBn(v, this.stem.w, this.stem.b, this.stem.bn, { stride: this.s.patch }));
    for (const k of this.blocks) {
      h = stage(h, (v) => t.add(convGeluBn(v, k.dw.w, k.dw.b, k.bn1, { padding: pad, groups: this.s.dim }), v));
      h = stage(h, (v) => convGeluBn(v, k.pw.w, k.pw.b, k.bn2, {}));
    }
    return stage(h, (v) => t.linear(t.flatten(t.adaptiveAvgPool2d(v, 1), 1), this.head.w, this.head.b));
  }

  dispose(): void {
    t.dispose([this.params, this.stats]);
  }
}
interface Bn {
  w: Tensor;
  b: Tensor;
  rm: Tensor;
  rv: Tensor;
}

/** A model as the bench needs it: a forward pass, its parameters, a train/eval switch. */
interface Subject {
  forward(x: Tensor, training: boolean): Tensor;
  params: Tensor[];
  dispose(): void;
}

function opsSubject(): Subject {
  return new OpsConvMixer(SHAPE, new t.Generator(0));
}

function moduleSubject(name: string): Subject {
  const m: Module = createModel(name, { classes: SHAPE.classes });
  return {
    forward: (x, training) => m.train(training).forward(x),
    params: m.parameters(),
    dispose: () => m.dispose(),
  };
}

type Mode = 'step' | 'forward';

/**
 * In the first seconds of a Node process, libtorch 1.13's oneDNN GELU runs about 1000x slower
 * (milliseconds for a handful of elements; gone with --single-threaded-gc). Timing starts
 * once the process has run `seconds`, so rows measure the steady state of a training run.
 */
function settle(seconds: number): void {
  const subject = opsSubject();
  const x = t.randn([SHAPE.batch, 3, SHAPE.size, SHAPE.size]);
  while (process.uptime() < seconds)
    t.noGrad(() =>
      t.tidy(() => {
        subject.forward(x, false);
      }),
    );
  subject.dispose();
  x.dispose();
}

interface Samples {
  wall: number[];
  cpu: number[];
}

function timeKshare(make: () => Subject, mode: Mode, warmup: number, steps: number): Samples {
  const subject = make();
  const gen = new t.Generator(1);
  const x = t.randn([SHAPE.batch, 3, SHAPE.size, SHAPE.size], { generator: gen });
  const y = t.randint(0, SHAPE.classes, [SHAPE.batch], { generator: gen });
  const opt = new AdamW(subject.params, { lr: 1e-3, weightDecay: 0.05 });
  const step = () => {
    t.tidy(() => t.crossEntropy(subject.forward(x, true), y).backward());
    opt.step();
    opt.zeroGrad();
  };
  const forward = () =>
    t.noGrad(() =>
      t.tidy(() => {
        subject.forward(x, false);
      }),
    );
  const fn = mode === 'step' ? step : forward;
  const samples: Samples = { wall: [], cpu: [] };
  const live = t.liveTensors();
  for (let i = 0; i < warmup + steps; i++) {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    fn();
    const ms = performance.now() - t0;
    const c = process.cpuUsage(c0);
    if (i >= warmup) {
      samples.wall.push(ms);
      samples.cpu.push((c.user + c.system) / 1000);
    }
  }
  if (mode === 'forward' && t.liveTensors() !== live) throw new Error(`cpu-step: forward leaked ${t.liveTensors() - live} tensors`);
  opt.dispose();
  subject.dispose();
  t.dispose([x, y]);
  return samples;
}

interface Reference {
  torch: string;
  threads: number;
  samplesMs: number[];
  cpuSamplesMs: number[];
}

function timeReference(mode: Mode, sharing: 'none' | 'both', threads: number, warmup: number, steps: number): Reference {
  const s = SHAPE;
  const args = [
    '--mode',
    mode,
    '--sharing',
    sharing,
    '--threads',
    String(threads),
    '--warmup',
    String(warmup),
    '--steps',
    String(steps),
    '--dim',
    String(s.dim),
    '--depth',
    String(s.depth),
    '--kernel',
    String(s.kernel),
    '--patch',
    String(s.patch),
    '--classes',
    String(s.classes),
    '--batch',
    String(s.batch),
    '--size',
    String(s.size),
  ];
  return runReference<Reference>('reference_step.py', args, threads);
}

interface Row {
  name: string;
  kshareMs: number;
  referenceMs: number;
  ratio: number;
  /** the same from process CPU time: steadier than wall time when other processes compete for the cores */
  kshareCpuMs: number;
  referenceCpuMs: number;
  cpuRatio: number;
}

function main(): void {
  const program = new Command()
    .name('cpu-step')
    .description('Time a ConvMixer training step in kshare and in PyTorch on the CPU')
    .option('--threads <n>', 'intra-op threads for both (default 1: steadier numbers on a shared machine)', '1')
    .option('--warmup <n>', 'untimed steps before timing', '5')
    .option('--steps <n>', 'timed steps per round', '20')
    .option('--rounds <n>', 'alternations of kshare and PyTorch per row', '2')
    .option('--out <file>', 'where to write the JSON', path.join(ROOT, 'bench', 'results', 'cpu-step.json'))
    .option('--settle <s>', 'seconds after process start before timing begins', '10')
    .option('--system-malloc', "keep glibc's default malloc thresholds (noisier)")
    .option('--only <text>', 'run only the rows whose name contains text')
    .parse();
  const o = program.opts<{
    threads: string;
    warmup: string;
    steps: string;
    rounds: string;
    out: string;
    settle: string;
    systemMalloc?: boolean;
    only?: string;
  }>();
  // malloc reads these at process start, so run again with them (PyTorch inherits them too)
  if (!o.systemMalloc) reexecWithMallocEnv(fileURLToPath(import.meta.url));
  const int = intOption(program);
  const threads = int('threads', o.threads, 1);
  const warmup = int('warmup', o.warmup, 0);
  const steps = int('steps', o.steps, 1);
  const rounds = int('rounds', o.rounds, 1);
  const settleS = int('settle', o.settle, 0);
  t.setNumThreads(threads);
  settle(settleS);

  const model = `convmixer_${SHAPE.dim}_${SHAPE.depth}_k${SHAPE.kernel}_p${SHAPE.patch}`;
  const cases: { name: string; make: () => Subject; mode: Mode; sharing: 'none' | 'both' }[] = [
    { name: `${model} full step, tensor ops`, make: opsSubject, mode: 'step', sharing: 'none' },
    { name: `${model} forward only, tensor ops`, make: opsSubject, mode: 'forward', sharing: 'none' },
    { name: `${model} full step, createModel`, make: () => moduleSubject(model), mode: 'step', sharing: 'none' },
    { name: `${model} forward only, createModel`, make: () => moduleSubject(model), mode: 'forward', sharing: 'none' },
    { name: `${model}_shared full step, createModel`, make: () => moduleSubject(`${model}_shared`), mode: 'step', sharing: 'both' },
  ];
  const rows: Row[] = [];
  let torchVersion = '';
  const selected = cases.filter((c) => !o.only || c.name.includes(o.only));
  if (!selected.length) program.error(`cpu-step: no row matches --only '${o.only}' (rows: ${cases.map((c) => c.name).join('; ')})`);
  for (const c of selected) {
    const mine: Samples = { wall: [], cpu: [] };
    const ref: Samples = { wall: [], cpu: [] };
    for (let r = 0; r < rounds; r++) {
      const k = timeKshare(c.make, c.mode, warmup, steps);
      mine.wall.push(...k.wall);
      mine.cpu.push(...k.cpu);
      const out = timeReference(c.mode, c.sharing, threads, warmup, steps);
      if (out.threads !== threads) throw new Error(`cpu-step: PyTorch ran with ${out.threads} threads, not ${threads}`);
      torchVersion = out.torch;
      ref.wall.push(...out.samplesMs);
      ref.cpu.push(...out.cpuSamplesMs);
    }
    const [kw, rw, kc, rc] = [median(mine.wall), median(ref.wall), median(mine.cpu), median(ref.cpu)];
    const row: Row = {
      name: c.name,
      kshareMs: round(kw, 2),
      referenceMs: round(rw, 2),
      ratio: round(rw / kw, 3),
      kshareCpuMs: round(kc, 2),
      referenceCpuMs: round(rc, 2),
      cpuRatio: round(rc / kc, 3),
    };
    rows.push(row);
    const f = (v: number) => v.toFixed(2).padStart(8);
    console.log(
      `${row.name.padEnd(52)} wall: kshare ${f(kw)} ms, torch ${f(rw)} ms, ratio ${row.ratio.toFixed(3)} | cpu: ${f(kc)} / ${f(rc)} ms, ratio ${row.cpuRatio.toFixed(3)}`,
    );
  }
  const cpus = os.cpus();
  const libtorch = t.runtimeInfo().torchVersion;
  const result = {
    machine: `${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${cpus.length} cores`,
    torch: libtorch === torchVersion ? torchVersion : `${torchVersion} (kshare's libtorch ${libtorch})`,
    threads,
    method:
      `batch ${SHAPE.batch}, ${SHAPE.size}x${SHAPE.size}, ${SHAPE.classes} classes; AdamW, hard-label cross-entropy; median of ${rounds}x${steps} steps after ${warmup} warm-up steps per round, kshare and PyTorch alternating; ` +
      (o.systemMalloc
        ? 'default glibc malloc'
        : `both processes with ${Object.entries(MALLOC_ENV)
            .map(([k, v]) => `${k}=${v}`)
            .join(' ')}`) +
      `; ${ompWaitSetting()} on both sides; timing from ${settleS} s after start`,
    rows,
  };
  mkdirSync(path.dirname(o.out), { recursive: true });
  const tmp = `${o.out}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(result, null, 2) + '\n');
  renameSync(tmp, o.out);
  console.log(`wrote ${path.relative(process.cwd(), o.out)}`);
}

main();
