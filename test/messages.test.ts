// What reaches a user from libtorch: errors shortened to a line (the full text kept for
// KSHARE_DEBUG), warnings through one handler (printed once, or collected where expected),
// and --device checked before any data loads or any run folder is made.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as t from '../src/tensor/index.js';
import { importInChild } from './helpers/env.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.resolve(here, '../src/cli/main.js');
const root = mkdtempSync(path.join(tmpdir(), 'kshare-messages-'));
process.on('exit', () => rmSync(root, { recursive: true, force: true }));
const noCuda = !t.cudaAvailable();

function kshare(args: string[], env: Record<string, string> = {}): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, KSHARE_DEBUG: '', ...env } });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

test('selfcheck --device cuda on a CPU-only libtorch: two lines saying what is wrong and what to do', { skip: !noCuda && 'this libtorch has CUDA' }, () => {
  const r = kshare(['selfcheck', '--device', 'cuda']);
  assert.equal(r.code, 1);
  const lines = r.err.trim().split('\n');
  assert.ok(lines.length <= 2, `at most two lines, got:\n${r.err}`);
  assert.match(lines[0]!, /^kshare: --device cuda: this libtorch \([\d.]+\) has no CUDA support/);
  assert.match(r.err, /docs\/gpu\.md/);
  assert.doesNotMatch(r.err, /Facebook|registered at|backend/);
});

test('a bad --device is named before any data loads and leaves no run folder', () => {
  const out = path.join(root, 'run');
  // The dataset does not exist either: the device error must come first.
  const bad = kshare(['train', '--recipe', 'demo', '--dataset', path.join(root, 'no-such-data'), '--out', out, '--device', 'tpu']);
  assert.equal(bad.code, 1);
  assert.equal(bad.err, "kshare: unknown device 'tpu' (cpu, cuda, cuda:N)\n");
  assert.ok(!existsSync(out), 'no --out folder');
  for (const cmd of [['selfcheck'], ['demo', '--out', out], ['eval', '--checkpoint', path.join(root, 'x.safetensors')]]) {
    const r = kshare([...cmd, '--device', 'gpu0']);
    assert.equal(r.code, 1, cmd[0]);
    assert.match(r.err, /unknown device 'gpu0' \(cpu, cuda, cuda:N\)/, cmd[0]);
  }
  if (noCuda) {
    const cuda = kshare(['train', '--recipe', 'demo', '--dataset', path.join(root, 'no-such-data'), '--out', out, '--device', 'cuda']);
    assert.equal(cuda.code, 1);
    assert.match(cuda.err, /--device cuda: this libtorch .* has no CUDA support/);
    assert.ok(!existsSync(out), 'no --out folder');
  }
  assert.ok(!existsSync(out));
});

test('libtorch errors are shortened to a line; the full text stays on the error', { skip: !noCuda && 'this libtorch has CUDA' }, () => {
  let err: Error & { libtorchMessage?: string } = new Error('none');
  try {
    t.randn([2], { device: 'cuda' }).dispose();
  } catch (e) {
    err = e as typeof err;
  }
  assert.match(err.message, /^randn: .*'aten::empty\.memory_format' has no CUDA kernel in this libtorch build/);
  assert.ok(!err.message.includes('\n') && err.message.length < 300, err.message);
  assert.match(err.libtorchMessage ?? '', /is only available for these backends/);
});

test('libtorch warnings: collected where expected, otherwise printed once, shortened', () => {
  const sameEven = () =>
    t.tidy(() => {
      t.conv2d(t.zeros([1, 2, 7, 7]), t.zeros([3, 2, 4, 4]), null, { padding: 'same', dilation: [2, 1] });
    });
  const { warnings } = t.collectWarnings(sameEven);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /^Using padding='same' with even kernel lengths/);
  const script = `import * as t from ${JSON.stringify(path.resolve(here, '../src/tensor/index.js'))};
    for (let i = 0; i < 3; i++) t.tidy(() => { t.conv2d(t.zeros([1, 2, 7, 7]), t.zeros([3, 2, 4, 4]), null, { padding: 'same', dilation: [2, 1] }); });`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr.split('\n').filter((l) => l.includes("padding='same'")).length, 1, r.stderr);
  assert.match(r.stderr, /^kshare: libtorch warning: Using padding='same'/m);
});

test('static-server.js: --help, and one clear line when the port is taken', async () => {
  const server = path.resolve(here, '../src/export/static-server.js');
  const help = spawnSync(process.execPath, [server, '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^usage: node dist\/src\/export\/static-server\.js \[--port 8080\]/);
  const net = await import('node:net');
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  const port = (blocker.address() as { port: number }).port;
  try {
    const r = spawnSync(process.execPath, [server, '--port', String(port)], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 1);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^static-server: port ${port} on 127\\.0\\.0\\.1 is already in use .*--port`));
  } finally {
    blocker.close();
  }
  const bad = spawnSync(process.execPath, [server, '--prot', '80'], { encoding: 'utf8' });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /unknown argument '--prot'/);
});

test('KSHARE_ADDON naming a file that does not exist fails at import, naming it, instead of loading the default build', () => {
  const missing = path.join(root, 'no-such-build', 'kshare.node');
  const r = importInChild({ KSHARE_ADDON: missing });
  assert.notEqual(r.status, 0);
  assert.ok(r.stderr.includes(`KSHARE_ADDON is '${missing}', which does not exist`), r.stderr);
  assert.ok(!existsSync(missing));
});

test('KSHARE_ADDON given relative to the working directory loads that build', () => {
  // cwd: the repository (dist/test -> root)
  const r = importInChild({ KSHARE_ADDON: 'native/build/kshare.node' }, 'console.log(t.runtimeInfo().torchVersion);', path.resolve(here, '../..'));
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^\d+\.\d+/);
});
