// Which BLAS libblas.so.3 points at matters to both kshare and PyTorch (Debian's libtorch is
// built with BLAS_INFO=generic). This times a matmul and a pointwise (1x1) convolution in
// kshare and python3-torch, paired in one run, to compare BLAS choices (see
// bench/cpu-kernels-notes.md):
//
//   node dist/bench/blas.js [--threads 1] [--out bench/results/blas.json]
//
// Switch the BLAS between runs with `update-alternatives --set libblas.so.3-x86_64-linux-gnu <path>`.
import os from 'node:os';
import path from 'node:path';
import { realpathSync, writeFileSync, mkdirSync, renameSync } from 'node:fs';
import { Command } from 'commander';
import * as t from '../src/tensor/index.js';
import { ReferenceServer, timePaired, type PairedRow } from './paired.js';

async function main(): Promise<void> {
  const o = new Command()
    .option('--threads <n>', 'intra-op threads for both', '1')
    .option('--rounds <n>', 'alternations per case', '5')
    .option('--reps <n>', 'timed calls per side and round', '20')
    .option('--out <file>', 'JSON output (default: print only)')
    .parse()
    .opts<{ threads: string; rounds: string; reps: string; out?: string }>();
  const threads = Number(o.threads);
  t.setNumThreads(threads);
  const ref = await ReferenceServer.start(threads);
  const blas = (() => {
    try {
      return realpathSync('/usr/lib/x86_64-linux-gnu/libblas.so.3');
    } catch {
      return 'unknown';
    }
  })();
  const rows: PairedRow[] = [];
  const opts = { rounds: Number(o.rounds), reps: Number(o.reps) };
  try {
    const a = t.randn([1024, 256]),
      b = t.randn([256, 256]);
    rows.push(
      await timePaired(
        ref,
        {
          name: 'matmul 1024x256x256',
          kshare: () =>
            t.tidy(() => {
              t.matmul(a, b);
            }),
          reference: 'a = torch.randn(1024, 256); b = torch.randn(256, 256)\ndef run(): torch.matmul(a, b)',
        },
        opts,
      ),
    );
    const x = t.randn([32, 64, 16, 16]),
      w = t.randn([64, 64, 1, 1]),
      bias = t.randn([64]);
    rows.push(
      await timePaired(
        ref,
        {
          name: 'pointwise conv (32,64,16,16) 64->64',
          kshare: () =>
            t.noGrad(() =>
              t.tidy(() => {
                t.conv2d(x, w, bias);
              }),
            ),
          reference:
            'x = torch.randn(32, 64, 16, 16); w = torch.randn(64, 64, 1, 1); b = torch.randn(64)\ndef run():\n  with torch.no_grad(): F.conv2d(x, w, b)',
        },
        opts,
      ),
    );
    t.dispose([a, b, x, w, bias]);
    const info = await ref.info();
    for (const r of rows) {
      const gflops = r.name.startsWith('matmul') ? (2 * 1024 * 256 * 256) / 1e6 : (2 * 32 * 256 * 64 * 64) / 1e6;
      console.log(
        `${r.name.padEnd(40)} kshare ${r.kshareMs.toFixed(3)} ms (${(gflops / r.kshareMs).toFixed(1)} GFLOP/s, cpu ${r.kshareCpuMs.toFixed(3)} ms)  ` +
          `torch ${r.referenceMs.toFixed(3)} ms (${(gflops / r.referenceMs).toFixed(1)} GFLOP/s, cpu ${r.referenceCpuMs.toFixed(3)} ms)`,
      );
    }
    if (o.out) {
      const out = { machine: `${os.cpus()[0]?.model ?? '?'} x${os.cpus().length}`, torch: info.torch, threads, blas, rows };
      mkdirSync(path.dirname(o.out), { recursive: true });
      writeFileSync(o.out + '.tmp', JSON.stringify(out, null, 2) + '\n');
      renameSync(o.out + '.tmp', o.out);
    }
  } finally {
    ref.close();
  }
}

await main();
