// In-process A/B of conv2d's routing choices on the CPU: the same call through kshare's route and
// through the alternative, the environment switch flipped per call (both are read at every call),
// alternating `--rounds` times (the order flips every round); reports the best of the rounds'
// medians. Run on purpose:
//
//   node dist/bench/route-ab.js [--threads 1] [--rounds 3] [--out bench/results/route-ab.json]
//   KSHARE_NATIVE_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 node dist/bench/route-ab.js --out bench/results/route-ab-avx2.json
//   node dist/bench/route-ab.js --threads 2 --out bench/results/route-ab-2t.json
//   node dist/bench/route-ab.js --only blocks --threads 1,2 --rounds 5 --out bench/results/blocks-ab.json
//
// Rows:
// - 1x1 convolution (C -> C with bias), forward without gradients and backward (input, weight and
//   bias gradients): kshare's operator (native/pointwise_conv.cc) against libtorch's conv2d
//   (KSHARE_NATIVE_KERNELS=0), NCHW and channels-last.
// - depthwise forward, and forward + input gradient: kshare's plane kernel against oneDNN through
//   libtorch (KSHARE_NATIVE_DEPTHWISE_FORWARD=onednn) in NCHW; in channels-last oneDNN (the route
//   there) against kshare's own kernels (=kshare); and whole ConvMixer training steps (batch 32,
//   NCHW) with the depthwise forward and input gradient by kshare against oneDNN. With
//   --threads above 1, also the 1x1 operator's panels against oneDNN's own threading
//   (KSHARE_NATIVE_POINTWISE_PANELS=0), and batch-1 ConvMixer-256/16 inference either way.
// - blocks: ConvMixer's block halves, x + BN(GELU(depthwise conv(x))) and BN(GELU(1x1 conv(x))),
//   each as one operator (native/conv_gelu_bn.cc) against the operators apart
//   (KSHARE_NATIVE_BLOCKS=0): training steps at batch 32 (NCHW and channels-last) and
//   ConvMixer-256/16 inference at batch 1 and 32.
// - block-run: a run of ConvMixer blocks in inference as one operator (native/convmixer_blocks.cc)
//   against two operators a block (KSHARE_NATIVE_BLOCK_RUN=0): ConvMixer-256/16 inference at
//   batch 1 and 32, NCHW.
// - pool (threads above 1): kshare's kernels on its own thread pool (native/cpu_thread_pool.cc)
//   against libgomp's threads (KSHARE_CPU_POOL=0): training steps at batch 32 of
//   ConvMixer-64/4 shared, ConvMixer-256/8 shared and SE-ResNet d=2 shared, and ConvMixer-256/16
//   shared inference at batch 1.
// - spin (threads above 1): the pool's threads spinning for the default 50 us after each call
//   against 500 us (KSHARE_CPU_SPIN_US=500): training steps at batch 32 of ConvMixer-64/4 shared,
//   ConvMixer-256/8 shared and SE-ResNet d=2 shared, and ConvMixer-256/16 shared inference at
//   batch 1 (on a machine of one's own; bench/wait-policy.ts times both beside other work).
// - amx (a CPU with AMX-BF16): the 1x1 convolution's NCHW products on AMX tiles
//   (native/amx_gemm.cc) against oneDNN's sgemm (KSHARE_NATIVE_AMX=0): the 1x1 operator at
//   (32,256,16,16), forward and backward; training steps at batch 32 of ConvMixer-64/4 shared and
//   ConvMixer-256/8 shared; ConvMixer-256/16 shared inference at batch 1 and 32.
// - conv3x3 (a CPU with AMX-BF16): the 3x3 convolution on AMX tiles (native/amx_conv3x3.cc) against
//   libtorch's (oneDNN's) convolution (KSHARE_NATIVE_CONV3X3=0): SE-ResNet's three stride-1 shapes
//   at batch 32, forward and forward + backward (input and weight gradients), NCHW and
//   channels-last; training steps at batch 32 of SE-ResNet d=2 shared (NCHW and channels-last)
//   and ResNet-18 (CIFAR) shared.
// - layout: the SE-ResNet d=2 shared training step (batch 32) with model and input in
//   channels-last against NCHW, each with kshare's kernels (two workloads alternating, not an
//   environment switch): channels-last lets oneDNN skip its layout conversions
//   (bench/cpu-kernels-notes.md, tenth session).
// - stem: ConvMixer's patch-embedding convolution with its GELU and BatchNorm as the fused 1x1
//   operator on pixelUnshuffle(x) (src/nn/fused.ts) against libtorch's strided convolution then
//   the fused GELU/BN kernel (KSHARE_NATIVE_PATCH_STEM=0): training steps at batch 32 of
//   ConvMixer-64/4 shared and ConvMixer-256/8 shared; ConvMixer-256/16 shared inference at batch
//   1 and 32.
// - block-node: each ConvMixer block in training as one operator (t.convMixerBlock,
//   native/conv_gelu_bn.cc: the depthwise half's BatchNorm sums its output gradient inside the
//   1x1 half's backward) against its two half operators (KSHARE_NATIVE_BLOCK_NODE=0): training
//   steps at batch 32 of ConvMixer-64/4 shared and ConvMixer-256/8 shared.
// - training-run: a model's run of ConvMixer blocks in training as one operator
//   (t.convMixerTrainingBlocks, native/conv_gelu_bn.cc: no block output but the last stored, the
//   1x1 BatchNorm's row sums taken from the next block's input gradient) against a block operator
//   each (KSHARE_NATIVE_TRAINING_RUN=0): training steps at batch 32 of ConvMixer-64/4 shared and
//   ConvMixer-256/8 shared.
// - adamw: the optimizer's AdamW step as one call and one pass (native/adamw.cc) against
//   libtorch's ten multi-tensor ops (KSHARE_NATIVE_ADAMW=0), inside the same training steps.
// - prefetch: the GELU/BatchNorm row kernels fetching their rows 512 floats ahead (the default)
//   against no software prefetch (KSHARE_ROW_PREFETCH=0): ConvMixer training steps at batch 32
//   and ConvMixer-256/16 shared inference at batch 1 and 32.
// --only takes a comma-separated list of these sections (1x1, depthwise, panels, steps, blocks,
// block-run, pool, spin, amx, conv3x3, layout, stem, block-node, training-run, adamw, prefetch);
// --threads a comma-separated list of thread counts, each a set of rows.
// ms are medians of wall-clock time; `ratio` = alternative / kshare's route (above 1: the route
// kshare takes is faster).
import os from 'node:os';
import path from 'node:path';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { inference, trainingStep } from './model-workload.js';
import { median, round } from './stats.js';
import { intOption } from './options.js';
import { ROOT, reexecWithMallocEnv } from './cpu-common.js';

const ISA_CAPS = ['KSHARE_NATIVE_ISA', 'ONEDNN_MAX_CPU_ISA'] as const;

/** The ConvMixer training steps most sections time: [model, steps a median]. */
const CONVMIXER_STEPS = [
  ['convmixer_64_4_k5_p2_shared', 30],
  ['convmixer_256_8_k5_p2_shared', 8],
] as const;

interface Row {
  name: string;
  routeMs: number;
  alternativeMs: number;
  ratio: number;
}

function medianMs(fn: () => void, reps: number): number {
  for (let i = 0; i < 5; i++) fn();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    ts.push(performance.now() - t0);
  }
  return median(ts);
}

/** Best of `rounds` medians on each side, alternating; `env` switches to the alternative. */
function ab(fn: () => void, env: Record<string, string>, rounds: number, reps: number): [number, number] {
  const withEnv = () => {
    Object.assign(process.env, env);
    try {
      fn();
    } finally {
      for (const k of Object.keys(env)) delete process.env[k];
    }
  };
  return abPair(fn, withEnv, rounds, reps);
}

/** Best of `rounds` medians of `route` and of `alternative`, alternating. */
function abPair(route: () => void, alternative: () => void, rounds: number, reps: number): [number, number] {
  let routeMs = Infinity,
    altMs = Infinity;
  const alt = () => (altMs = Math.min(altMs, medianMs(alternative, reps)));
  // The order flips every round (route first, then alternative first), so neither side always
  // runs second: with the route always first, two identical sides measured x0.97-0.99 (2026-12-03).
  for (let r = 0; r < rounds; r++) {
    if (r % 2 === 1) alt();
    routeMs = Math.min(routeMs, medianMs(route, reps));
    if (r % 2 === 0) alt();
  }
  return [routeMs, altMs];
}

function main(): void {
  reexecWithMallocEnv(fileURLToPath(import.meta.url));
  const program = new Command()
    .name('route-ab')
    .description("Time conv2d's CPU routes against their alternatives in one process")
    .option('--threads <list>', 'intra-op threads, comma-separated (each a set of rows)', '1')
    .option('--rounds <n>', 'alternations per row', '3')
    .option(
      '--only <sections>',
      'comma-separated sections: 1x1, depthwise, panels, steps, blocks, block-run, pool, spin, amx, conv3x3, layout, stem, block-node, training-run, adamw, prefetch (default: all)',
    )
    .option('--out <file>', 'where to write the JSON', path.join(ROOT, 'bench', 'results', 'route-ab.json'))
    .parse();
  const o = program.opts<{ threads: string; rounds: string; out: string; only?: string }>();
  const int = intOption(program);
  const threadList = o.threads.split(',').map((v) => int('threads', v.trim(), 1)),
    rounds = int('rounds', o.rounds, 1);
  const SECTIONS = [
    '1x1',
    'depthwise',
    'panels',
    'steps',
    'blocks',
    'block-run',
    'pool',
    'spin',
    'amx',
    'conv3x3',
    'layout',
    'stem',
    'block-node',
    'training-run',
    'adamw',
    'prefetch',
  ];
  const only = o.only?.split(',').map((v) => v.trim());
  for (const s of only ?? []) if (!SECTIONS.includes(s)) program.error(`--only: unknown section '${s}' (sections: ${SECTIONS.join(', ')})`);
  const want = (section: string) => !only || only.includes(section);
  const rows: (Row & { threads: number })[] = [];
  let threads = 1;
  const add = (name: string, [routeMs, alternativeMs]: [number, number]) => {
    const row = { name, threads, routeMs: round(routeMs, 3), alternativeMs: round(alternativeMs, 3), ratio: round(alternativeMs / routeMs, 3) };
    rows.push(row);
    console.log(
      `${name.padEnd(58)} route ${routeMs.toFixed(3).padStart(8)} ms  alternative ${alternativeMs.toFixed(3).padStart(8)} ms  x${row.ratio.toFixed(2)}`,
    );
  };
  const repsFor = (elements: number) => Math.max(20, Math.min(200, Math.round(4e7 / elements)));
  const make = (shape: number[], cl: boolean): Tensor => {
    const v = t.randn(shape);
    if (!cl) return v;
    const c = t.contiguous(v, 'channels_last');
    v.dispose();
    return c;
  };
  /** body(x, dy, ...) for each (N, C, HW, HW) shape in NCHW and channels-last: an input and a grad output, disposed after. */
  const eachInput = (
    shapes: readonly (readonly [number, number, number])[],
    body: (x: Tensor, dy: Tensor, s: { c: number; dims: string; format: string; cl: boolean; reps: number }) => void,
  ) => {
    for (const [n, c, hw] of shapes) {
      for (const cl of [false, true]) {
        const x = make([n, c, hw, hw], cl),
          dy = make([n, c, hw, hw], cl);
        try {
          body(x, dy, { c, dims: `(${n},${c},${hw},${hw})`, format: cl ? 'channels-last' : 'NCHW', cl, reps: repsFor(n * c * hw * hw) });
        } finally {
          t.dispose([x, dy]);
        }
      }
    }
  };
  for (threads of threadList) {
    t.setNumThreads(threads);
    console.log(`-- ${threads} thread${threads > 1 ? 's' : ''}`);
    runSections();
  }

  function runSections(): void {
    /** Forward and the input gradient only, through `conv` (the graph is built per call, so each side runs its own backward). */
    const inputGradient = (x: Tensor, dy: Tensor, conv: (v: Tensor) => Tensor) => () =>
      t.tidy(() => {
        const xg = x.detach();
        xg.requiresGrad = true;
        conv(xg).backward(dy);
        xg.grad?.dispose();
      });
    const forward = (x: Tensor, conv: (v: Tensor) => Tensor) => () => t.noGrad(() => t.tidy(() => void conv(x)));
    /** A 1x1 convolution's forward and all three gradients (the graph is built per call, so each side runs its own backward). */
    const forwardBackward = (x: Tensor, w: Tensor, b: Tensor, dy: Tensor) => () =>
      t.tidy(() => {
        const [xg, wg, bg] = [x, w, b].map((v) => v.detach());
        for (const v of [xg!, wg!, bg!]) v.requiresGrad = true;
        t.conv2d(xg!, wg!, bg!).backward(dy);
        for (const v of [xg!, wg!, bg!]) v.grad?.dispose();
      });
    /** Training steps at batch 32 (NCHW), route against `env`; `what` names the comparison. */
    const stepRows = (models: readonly (readonly [string, number])[], env: Record<string, string>, what: string) => {
      for (const [model, reps] of models) {
        const step = trainingStep(model);
        add(`${model} training step, batch 32, NCHW (${what})`, ab(step.run, env, rounds, reps));
        step.dispose();
      }
    };
    /** ConvMixer-256/16 shared inference (NCHW) at each [batch, reps], route against `env`. */
    const inferenceRows = (batches: readonly (readonly [number, number])[], env: Record<string, string>, what: string) => {
      for (const [batch, reps] of batches) {
        const infer = inference('convmixer_256_16_shared', { batch });
        add(`convmixer_256_16_shared inference, batch ${batch}, NCHW (${what})`, ab(infer.run, env, rounds, reps));
        infer.dispose();
      }
    };
    const batch1And32 = [
      [1, 40],
      [32, 3],
    ] as const;
    const pointwiseShapes = [
      [32, 64, 16],
      [32, 128, 16],
      [32, 256, 16],
      [8, 256, 32],
      [1, 256, 32],
    ] as const;

    if (want('1x1'))
      eachInput(pointwiseShapes, (x, dy, { c, dims, format, reps }) => {
        const label = `${dims} ${format}`;
        const w = t.randn([c, c, 1, 1]),
          b = t.randn([c]);
        const libtorch = { KSHARE_NATIVE_KERNELS: '0' };
        add(
          `1x1 forward ${label}`,
          ab(
            forward(x, (v) => t.conv2d(v, w, b)),
            libtorch,
            rounds,
            reps,
          ),
        );
        add(`1x1 forward + backward ${label}`, ab(forwardBackward(x, w, b, dy), libtorch, rounds, Math.max(10, reps >> 1)));
        t.dispose([w, b]);
      });

    const depthwiseShapes: [number, number, number, number][] = [
      [32, 64, 16, 5],
      [32, 256, 16, 5],
      [8, 256, 32, 9],
      [1, 256, 32, 9],
    ];
    if (want('depthwise'))
      for (const [n, c, hw, k] of depthwiseShapes) {
        eachInput([[n, c, hw]], (x, dy, { dims, format, cl, reps }) => {
          const label = `${dims} k${k} ${format}`;
          const w = t.randn([c, 1, k, k]),
            b = t.randn([c]);
          // kshare's route: its own plane kernel in NCHW, oneDNN in channels-last.
          const [route, alternative] = cl ? ['oneDNN', 'kshare'] : ['kshare', 'oneDNN'];
          const other = { KSHARE_NATIVE_DEPTHWISE_FORWARD: cl ? 'kshare' : 'onednn' };
          const conv = (v: Tensor) => t.conv2d(v, w, b, { padding: k >> 1, groups: c });
          add(`depthwise forward ${label} (${route} vs ${alternative})`, ab(forward(x, conv), other, rounds, reps));
          // The weight gradient is kshare's on both sides, so only the input gradient is asked for.
          add(
            `depthwise forward + input gradient ${label} (${route} vs ${alternative})`,
            ab(inputGradient(x, dy, conv), other, rounds, Math.max(10, reps >> 1)),
          );
          t.dispose([w, b]);
        });
      }

    // With several threads, the 1x1 operator's panels (one single-threaded sgemm a thread in one
    // parallel region) against oneDNN's own threading of each product (KSHARE_NATIVE_POINTWISE_PANELS=0).
    if (threads > 1 && want('panels')) {
      const whole = { KSHARE_NATIVE_POINTWISE_PANELS: '0' };
      const panelShapes = [
        [1, 256, 32],
        [32, 64, 16],
        [32, 256, 16],
      ] as const;
      eachInput(panelShapes, (x, dy, { c, dims, format, reps }) => {
        const label = `${dims} ${format}`;
        const w = t.randn([c, c, 1, 1]),
          b = t.randn([c]);
        const conv = (v: Tensor) => t.conv2d(v, w, b);
        add(`1x1 forward ${label} (panels vs oneDNN's threading)`, ab(forward(x, conv), whole, rounds, reps));
        add(`1x1 forward + input gradient ${label} (panels vs oneDNN's threading)`, ab(inputGradient(x, dy, conv), whole, rounds, Math.max(10, reps >> 1)));
        t.dispose([w, b]);
      });
      const infer = inference('convmixer_256_16_shared', { batch: 1 });
      add('convmixer_256_16_shared inference, batch 1 (1x1 panels vs oneDNN threading)', ab(infer.run, whole, rounds, 40));
      infer.dispose();
    }

    // Whole training steps (batch 32, NCHW): the depthwise forward and input gradient through
    // kshare's plane kernel against oneDNN, everything else alike.
    if (want('steps'))
      for (const [model, reps] of CONVMIXER_STEPS) {
        const step = trainingStep(model);
        add(`${model} training step, batch 32, NCHW (depthwise: kshare vs oneDNN)`, ab(step.run, { KSHARE_NATIVE_DEPTHWISE_FORWARD: 'onednn' }, rounds, reps));
        step.dispose();
      }

    // ConvMixer's block halves as one operator each against the operators apart.
    if (want('blocks')) {
      const apart = { KSHARE_NATIVE_BLOCKS: '0' };
      for (const [model, reps] of CONVMIXER_STEPS) {
        for (const channelsLast of [false, true]) {
          const step = trainingStep(model, { channelsLast });
          add(`${model} training step, batch 32, ${channelsLast ? 'channels-last' : 'NCHW'} (blocks: fused vs apart)`, ab(step.run, apart, rounds, reps));
          step.dispose();
        }
      }
      inferenceRows(batch1And32, apart, 'blocks: fused vs apart');
    }

    /** The thread pool's comparisons (2 threads and more): three training steps and batch-1 inference, route against `env`. */
    const poolRows = (env: Record<string, string>, what: string) => {
      const models = [
        ['convmixer_64_4_k5_p2_shared', 30],
        ['convmixer_256_8_k5_p2_shared', 8],
        ['se_resnet_d_2_full_shared', 5],
      ] as const;
      stepRows(models, env, what);
      inferenceRows([[1, 40]], env, what);
    };
    // kshare's kernels on its own pool against libgomp's threads.
    if (threads > 1 && want('pool')) poolRows({ KSHARE_CPU_POOL: '0' }, "kshare's pool vs libgomp's threads");
    // The pool's default spin (50 us) against a longer one.
    if (threads > 1 && want('spin')) poolRows({ KSHARE_CPU_SPIN_US: '500' }, 'pool spin: default 50 us vs 500 us');

    // The 1x1 products on AMX tiles against oneDNN's sgemm.
    if (want('amx')) {
      if (!t.runtimeInfo().amx) console.log('amx: skipped (this CPU or OS has no AMX-BF16, or KSHARE_NATIVE_AMX=0 is set)');
      else {
        const sgemm = { KSHARE_NATIVE_AMX: '0' };
        const x = t.randn([32, 256, 16, 16]),
          w = t.randn([256, 256, 1, 1]),
          b = t.randn([256]),
          dy = t.randn([32, 256, 16, 16]);
        add(
          '1x1 conv forward (32,256,16,16), NCHW (AMX vs sgemm)',
          ab(
            forward(x, (v) => t.conv2d(v, w, b)),
            sgemm,
            rounds,
            20,
          ),
        );
        add('1x1 conv forward + backward (32,256,16,16), NCHW (AMX vs sgemm)', ab(forwardBackward(x, w, b, dy), sgemm, rounds, 10));
        t.dispose([x, w, b, dy]);
        stepRows(CONVMIXER_STEPS, sgemm, 'AMX vs sgemm');
        inferenceRows(batch1And32, sgemm, 'AMX vs sgemm');
      }
    }

    // The 3x3 convolution on AMX tiles against libtorch's.
    if (want('conv3x3')) {
      if (!t.runtimeInfo().amx) console.log('conv3x3: skipped (this CPU or OS has no AMX-BF16, or KSHARE_NATIVE_AMX=0 is set)');
      else {
        const onednn = { KSHARE_NATIVE_CONV3X3: '0' };
        for (const [n, c, hw] of [
          [32, 64, 32],
          [32, 128, 16],
          [32, 256, 8],
        ] as const) {
          for (const cl of [false, true]) {
            const x = make([n, c, hw, hw], cl),
              dy = make([n, c, hw, hw], cl),
              w = t.mul(t.randn([c, c, 3, 3]), 0.05);
            const label = `3x3 conv (${n},${c},${hw},${hw}), ${cl ? 'channels-last' : 'NCHW'}`;
            const conv = (v: Tensor, k: Tensor) => t.conv2d(v, k, null, { padding: 1 });
            add(
              `${label} forward (AMX vs oneDNN)`,
              ab(
                forward(x, (v) => conv(v, w)),
                onednn,
                rounds,
                10,
              ),
            );
            const both = () =>
              t.tidy(() => {
                const [xg, wg] = [x.detach(), w.detach()];
                xg.requiresGrad = wg.requiresGrad = true;
                conv(xg, wg).backward(dy);
                xg.grad?.dispose();
                wg.grad?.dispose();
              });
            add(`${label} forward + backward (AMX vs oneDNN)`, ab(both, onednn, rounds, 5));
            t.dispose([x, dy, w]);
          }
        }
        for (const [model, channelsLast] of [
          ['se_resnet_d_2_full_shared', false],
          ['se_resnet_d_2_full_shared', true],
          ['resnet18_cifar_shared', false],
        ] as const) {
          const step = trainingStep(model, { channelsLast });
          add(`${model} training step, batch 32, ${channelsLast ? 'channels-last' : 'NCHW'} (AMX vs oneDNN)`, ab(step.run, onednn, rounds, 3));
          step.dispose();
        }
      }
    }

    // SE-ResNet in channels-last against NCHW, both on kshare's kernels.
    if (want('layout')) {
      const model = 'se_resnet_d_2_full_shared';
      const cl = trainingStep(model, { channelsLast: true }),
        nchw = trainingStep(model);
      add(`${model} training step, batch 32 (channels-last vs NCHW)`, abPair(cl.run, nchw.run, rounds, 4));
      cl.dispose();
      nchw.dispose();
    }

    // The patch-embedding stem through the fused 1x1 operator against the strided convolution.
    if (want('stem')) {
      const strided = { KSHARE_NATIVE_PATCH_STEM: '0' };
      stepRows(CONVMIXER_STEPS, strided, 'stem as a 1x1 vs strided conv');
      inferenceRows(batch1And32, strided, 'stem as a 1x1 vs strided conv');
    }

    // Each block in training as one operator against its two half operators.
    if (want('block-node')) {
      // Both sides without the training run (which needs the block operator).
      const run = process.env.KSHARE_NATIVE_TRAINING_RUN;
      process.env.KSHARE_NATIVE_TRAINING_RUN = '0';
      stepRows(CONVMIXER_STEPS, { KSHARE_NATIVE_BLOCK_NODE: '0' }, 'block as one operator vs two halves');
      if (run === undefined) delete process.env.KSHARE_NATIVE_TRAINING_RUN;
      else process.env.KSHARE_NATIVE_TRAINING_RUN = run;
    }

    // A model's run of blocks in training as one operator against a block operator each.
    if (want('training-run')) {
      stepRows(CONVMIXER_STEPS, { KSHARE_NATIVE_TRAINING_RUN: '0' }, 'training run as one operator vs one a block');
    }

    // The AdamW step in one pass against libtorch's multi-tensor ops.
    if (want('adamw')) stepRows(CONVMIXER_STEPS, { KSHARE_NATIVE_ADAMW: '0' }, 'AdamW in one pass vs multi-tensor ops');

    // The GELU/BatchNorm row kernels fetching 512 floats ahead against no software prefetch.
    if (want('prefetch')) {
      const off = { KSHARE_ROW_PREFETCH: '0' },
        what = 'row kernels prefetch 512 floats ahead vs not';
      stepRows(CONVMIXER_STEPS, off, what);
      inferenceRows(batch1And32, off, what);
    }

    // A run of blocks in inference as one operator against two operators a block.
    if (want('block-run')) inferenceRows(batch1And32, { KSHARE_NATIVE_BLOCK_RUN: '0' }, 'block run vs two operators a block');
  }

  const result = {
    machine: `${os.cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${os.cpus().length} cores`,
    threads: threadList,
    // Instruction-set caps change both sides (e.g. KSHARE_NATIVE_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2
    // for an AVX2-only machine's view); the command shows the ones that were set.
    command: [...ISA_CAPS.filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]}`), 'node dist/bench/route-ab.js', ...process.argv.slice(2)].join(
      ' ',
    ),
    method: `best of ${rounds} alternating medians per side, in one process; ratio = alternativeMs / routeMs`,
    rows,
  };
  mkdirSync(path.dirname(o.out), { recursive: true });
  writeFileSync(o.out + '.tmp', JSON.stringify(result, null, 2) + '\n');
  renameSync(o.out + '.tmp', o.out);
  console.log(`wrote ${o.out}`);
}

main();
