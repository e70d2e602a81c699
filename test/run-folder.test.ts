// One run, one folder (issue 10): two real `kshare train` processes on one --out, a second
// process refused while a run holds the folder, a stale lock and temp files of a killed run
// cleaned up by the resume (which warns about a different thread count), and `kshare report`
// following the checkpoint when log.jsonl and summary.json fell behind it.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, readFileSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir, hostname } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeImageFolder } from './helpers/train-fixtures.js';
import { acquireRunLock, removeStaleTemps, LOCK_FILE, RunLockedError } from '../src/train/run-lock.js';
import { loadRun } from '../src/train/report.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.resolve(here, '../src/cli/main.js');
const root = mkdtempSync(path.join(tmpdir(), 'kshare-runfolder-'));
after(() => rmSync(root, { recursive: true, force: true }));

const data = writeImageFolder(path.join(root, 'shapes'), { train: 60, test: 20, classes: 3 });
const common = [
  '--recipe',
  'convmixer',
  '--model',
  'convmixer_16_2_k3_p4_shared',
  '--dataset',
  data,
  '--no-progress',
  '--seed',
  '1',
  '--set',
  'batchSize=20',
  '--set',
  'evalBatchSize=20',
];
const env = { ...process.env, KSHARE_DEBUG: '' };

function run(args: string[]): { code: number; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

function start(args: string[]): { child: ChildProcess; done: Promise<{ code: number; out: string; err: string }> } {
  const child = spawn(process.execPath, [CLI, ...args], { env });
  let out = '',
    err = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d;
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d;
  });
  const done = new Promise<{ code: number; out: string; err: string }>((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, out, err })));
  return { child, done };
}

const epochsOf = (out: string) =>
  readFileSync(path.join(out, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => (JSON.parse(l) as { epoch: number }).epoch);

test('two kshare train processes started together on one --out: one runs, the other is refused naming its PID', async () => {
  const out = path.join(root, 'together');
  // A long run each: the winner holds the folder until it is interrupted below, so the loser
  // meets the lock however the two are scheduled.
  const args = ['train', ...common, '--threads', '1', '--out', out, '--epochs', '500'];
  const a = start(args);
  const b = start(args);
  let timer: NodeJS.Timeout | undefined;
  const stuck = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), 180_000);
  });
  const first = await Promise.race([a.done.then((r) => ({ r, loser: a, winner: b })), b.done.then((r) => ({ r, loser: b, winner: a })), stuck]);
  clearTimeout(timer);
  if (!first) {
    a.child.kill('SIGKILL');
    b.child.kill('SIGKILL');
    await Promise.all([a.done, b.done]);
    assert.fail('neither process was refused: both were still training after 180 s');
  }
  const { r: lose, winner } = first;
  assert.equal(lose.code, 1, `the first to exit should be the refused one:\n${lose.out}\n${lose.err}`);
  assert.match(
    lose.err,
    new RegExp(`kshare: .*together is in use by process ${winner.child.pid} \\(started .*\\); two runs cannot share a run folder`),
    `the other process said:\n${lose.out}\n${lose.err}`,
  );
  const ckpt = path.join(out, 'checkpoint.safetensors');
  const deadline = Date.now() + 240_000;
  while (!existsSync(ckpt) && Date.now() < deadline && winner.child.exitCode === null) await new Promise((r) => setTimeout(r, 100));
  winner.child.kill('SIGINT'); // Ctrl-C: checkpoint after this step and stop
  const win = await winner.done;
  assert.equal(win.code, 130, win.err); // Ctrl-C's exit code, as Unix tools give
  assert.match(win.out, /interrupted .*; resume with: .* after (\d+)\/500 epochs/);
  const n = Number(/after (\d+)\/500 epochs/.exec(win.out)![1]);
  assert.ok(n >= 1, 'at least one epoch done');
  assert.deepEqual(
    epochsOf(out),
    Array.from({ length: n }, (_, i) => i + 1),
    "one run's epochs, not 1,1,2,2,...",
  );
  assert.ok(!existsSync(path.join(out, LOCK_FILE)), 'the lock is released at the end');

  // Report after a kill right after the checkpoint rename: log and summary one epoch behind.
  const summary = JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8')) as { epochsDone: number; status: string; history: unknown[] };
  const lines = readFileSync(path.join(out, 'log.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .slice(0, n - 1);
  writeFileSync(path.join(out, 'log.jsonl'), lines.map((l) => `${l}\n`).join(''));
  writeFileSync(path.join(out, 'summary.json'), JSON.stringify({ ...summary, epochsDone: n - 1, status: 'running', history: summary.history.slice(0, n - 1) }));
  const r = loadRun(out);
  assert.deepEqual(
    r.history.map((h) => h.epoch),
    Array.from({ length: n }, (_, i) => i + 1),
    "the checkpoint's history",
  );
  assert.equal(r.status, 'interrupted');
});

test('a killed run: a second process is refused while it lives; after kill -9 the resume reports and clears its lock and temp files, and warns about the thread count', async () => {
  const out = path.join(root, 'killed');
  const a = start(['train', ...common, '--threads', '1', '--out', out, '--epochs', '200']);
  const ckpt = path.join(out, 'checkpoint.safetensors');
  const deadline = Date.now() + 240_000;
  while (!existsSync(ckpt) && Date.now() < deadline && a.child.exitCode === null) await new Promise((r) => setTimeout(r, 100));
  assert.ok(existsSync(ckpt), 'the first epoch finished');
  const pid = a.child.pid!;
  try {
    const b = run(['train', ...common, '--threads', '1', '--out', out, '--resume']);
    assert.equal(b.code, 1);
    assert.match(b.err, new RegExp(`is in use by process ${pid} \\(started `));
  } finally {
    a.child.kill('SIGKILL');
    await a.done;
  }
  assert.ok(existsSync(path.join(out, LOCK_FILE)), 'kill -9 leaves the lock');
  // What a kill during a checkpoint or log write leaves, plus a live process's temp file.
  writeFileSync(path.join(out, `.checkpoint.safetensors.${pid}.deadbeef.tmp`), Buffer.alloc(1000));
  writeFileSync(path.join(out, `log.jsonl.${pid}.tmp`), '');
  writeFileSync(path.join(out, `.summary.json.${process.pid}.tmp`), '{}');
  const c = run(['train', ...common, '--threads', '2', '--out', out, '--resume', '--stop-after-epochs', '1']);
  assert.equal(c.code, 0, c.err);
  assert.match(
    c.out,
    new RegExp(
      `warning: .*checkpoint\\.safetensors was written with 1 CPU thread\\(s\\), this process uses 2; the run continues, but not bit-exactly \\(pass --threads 1 for that\\)`,
    ),
  );
  assert.match(c.out, new RegExp(`note: removed a stale lock of process ${pid} \\(started .*\\), which no longer runs`));
  assert.match(c.out, new RegExp(`note: removed \\.checkpoint\\.safetensors\\.${pid}\\.deadbeef\\.tmp \\(1000 bytes\\), a temp file left by process ${pid}`));
  assert.match(c.out, new RegExp(`note: removed log\\.jsonl\\.${pid}\\.tmp \\(0 bytes\\)`));
  const left = readdirSync(out).sort();
  assert.deepEqual(
    left,
    [`.summary.json.${process.pid}.tmp`, 'checkpoint.safetensors', 'log.jsonl', 'steps.jsonl', 'summary.json'],
    "a live process's temp file stays",
  );
});

test('the run lock in one process: held, refused, released; a stale lock is taken over', () => {
  const out = path.join(root, 'lock');
  mkdirSync(out, { recursive: true });
  const lock = acquireRunLock(out);
  assert.deepEqual(lock.notes, []);
  assert.throws(
    () => acquireRunLock(out),
    (e: Error) => e instanceof RunLockedError && e.holderPid === process.pid && new RegExp(`in use by process ${process.pid}`).test(e.message),
  );
  lock.release();
  lock.release();
  assert.ok(!existsSync(lock.file));
  // A PID that no longer exists: a process that has exited.
  const dead = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
  const deadPid = Number(dead.stdout.trim());
  writeFileSync(lock.file, JSON.stringify({ pid: deadPid, host: hostname(), started: 'then', command: 'x' }));
  writeFileSync(path.join(out, `.checkpoint.safetensors.${deadPid}.abc123.tmp`), 'x');
  const taken = acquireRunLock(out);
  try {
    assert.match(taken.notes.join('\n'), new RegExp(`removed a stale lock of process ${deadPid} \\(started then\\), which no longer runs`));
    assert.match(taken.notes.join('\n'), /removed \.checkpoint\.safetensors\.\d+\.abc123\.tmp \(1 bytes\)/);
    assert.deepEqual(removeStaleTemps(out), []);
  } finally {
    taken.release();
  }
});
