// Signals arriving while kshare computes must not corrupt memory. oneDNN 2.6's JIT f32 GEMM
// kernels (Debian's libdnnl, behind kshare's 1x1 convolution) point the stack register into a
// heap workspace while they run, so a signal handled on that thread writes its frame into the
// heap (oneDNN issue #4845, fixed upstream in 3.11.2): `node --cpu-prof` (SIGPROF), Ctrl-C or a
// child process exiting (SIGCHLD) could abort a run with "corrupted size vs. prev_size". The
// addon blocks asynchronous signals while an operator or a backward runs (native/kshare.cc);
// they are delivered when it returns.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as t from '../src/tensor/index.js';

const tensorIndex = fileURLToPath(new URL('../src/tensor/index.js', import.meta.url));
const noSgemm = !t.runtimeInfo().pointwiseKernel && 'no oneDNN 1x1 operator in this build';

/**
 * A child that runs 1x1 convolutions (oneDNN's sgemm) at `threads` threads for `ms` milliseconds,
 * then (with `signalled`) waits up to 5 s for its SIGUSR2 handler to have run.
 */
function convLoop(threads: number, ms: number, signalled = false): string {
  return (
    `const t = await import(${JSON.stringify(tensorIndex)});` +
    `let signals = 0; process.on('SIGUSR2', () => { signals++; });` +
    `t.setNumThreads(${threads});` +
    `const x = t.randn([1, 256, 32, 32]), w = t.randn([256, 256, 1, 1]), b = t.randn([256]);` +
    `console.log('ready'); const end = Date.now() + ${ms}; let n = 0;` +
    `while (Date.now() < end) { t.tidy(() => t.noGrad(() => t.conv2d(x, w, b))); n++; }` +
    // The parent stops signalling once it reads 'stop'; the handlers run in the following turns
    // of the event loop (exiting earlier, with a signal in flight, would take its default
    // action, which terminates).
    `console.log('stop'); const until = Date.now() + ${signalled ? 5000 : 0};` +
    `while (signals === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));` +
    `await new Promise((r) => setTimeout(r, 300));` +
    `console.log(JSON.stringify({ n, signals }));`
  );
}

test('a sampling profiler (node --cpu-prof, SIGPROF every 50 us) does not corrupt memory in 1x1 convolutions', { skip: noSgemm }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'kshare-prof-'));
  try {
    const r = spawnSync(process.execPath, ['--cpu-prof', '--cpu-prof-interval', '50', '--cpu-prof-dir', dir, '--input-type=module', '-e', convLoop(1, 1500)], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, `exit ${r.status} (signal ${r.signal}): ${r.stderr}`);
    assert.ok((JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { n: number }).n > 10);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('signals sent to the process while 2 threads run 1x1 convolutions are delivered, and memory stays intact', { skip: noSgemm }, async () => {
  const child = spawn(process.execPath, ['--input-type=module', '-e', convLoop(2, 2500, true)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '',
    err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<[number | null, string | null]>((r) => child.on('exit', (c, s) => r([c, s])));
  // Once the child has loaded libtorch and installed its handler, signal it every 2 ms.
  await new Promise<void>((r) => {
    const check = () => (out.includes('ready') || child.exitCode !== null ? r() : setTimeout(check, 10));
    check();
  });
  let sent = 0;
  const timer = setInterval(() => {
    if (!out.includes('stop') && child.exitCode === null && child.signalCode === null && child.kill('SIGUSR2')) sent++;
  }, 2);
  const [code, signal] = await exited;
  clearInterval(timer);
  assert.equal(code, 0, `exit ${code} (signal ${signal}) after ${sent} signals: ${err}`);
  const { n, signals } = JSON.parse(out.trim().split('\n').at(-1)!) as { n: number; signals: number };
  assert.ok(n > 10, `only ${n} convolutions ran`);
  assert.ok(signals > 0, `none of ${sent} signals reached the handler`);
});
