// Tests for src/data: official CIFAR binary + python formats (tiny files generated here),
// download with MD5 check from a local HTTP server, safe tar extraction, the image-folder
// reader with its cache, and loadDataset's lookup order.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as tar from 'tar';
import jpeg from 'jpeg-js';
import pngjs from 'pngjs';
import { loadSplits } from '../src/train/datasets.js';
import {
  CIFAR10_CLASSES,
  CIFAR100_CLASSES,
  CIFAR100_COARSE_CLASSES,
  CIFAR10_JPEG_NAME,
  DataError,
  downloadCifar,
  extractCifarArchive,
  imageFolderCachePath,
  loadDataset,
  readCifar,
  readCifar100Binary,
  readCifar10Binary,
  readCifarPython,
  readImageFolder,
  readPickle,
  resizeCHW,
  safeExtract,
  type ImageDataset,
} from '../src/data/index.js';
import { skipUnless } from './helpers/prerequisites.js';

const PIX = 3072;
const PYTHON = '/usr/bin/python3';

// ---------------------------------------------------------------------------------------------
// helpers

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'kshare-data-test-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let tmpCount = 0;
function tmp(name = 'd'): string {
  const d = path.join(tmpRoot, `${name}-${tmpCount++}`);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** Pixel value of byte i of record r in file b (the same formula in TS and in Python). */
const pix = (b: number, r: number, i: number): number => (b * 31 + r * 7 + i * 3) % 256;
const label10 = (b: number, r: number): number => (b * 3 + r) % 10;
const fine100 = (b: number, r: number): number => (b * 11 + r * 7 + 1) % 100;
const coarse100 = (b: number, r: number): number => (b * 5 + r) % 20;

function cifar10Record(b: number, r: number, label = label10(b, r)): Buffer {
  const rec = Buffer.alloc(1 + PIX);
  rec[0] = label;
  for (let i = 0; i < PIX; i++) rec[1 + i] = pix(b, r, i);
  return rec;
}

function cifar100Record(b: number, r: number, fine = fine100(b, r), coarse = coarse100(b, r)): Buffer {
  const rec = Buffer.alloc(2 + PIX);
  rec[0] = coarse;
  rec[1] = fine;
  for (let i = 0; i < PIX; i++) rec[2 + i] = pix(b, r, i);
  return rec;
}

/** `<parent>/cifar-10-batches-bin` with 5 train batches of `per` records and a test batch of `testN`. */
function makeCifar10Bin(parent: string, per = 4, testN = 3): string {
  const dir = path.join(parent, 'cifar-10-batches-bin');
  fs.mkdirSync(dir, { recursive: true });
  for (let b = 1; b <= 5; b++)
    fs.writeFileSync(path.join(dir, `data_batch_${b}.bin`), Buffer.concat(Array.from({ length: per }, (_, r) => cifar10Record(b, r))));
  fs.writeFileSync(path.join(dir, 'test_batch.bin'), Buffer.concat(Array.from({ length: testN }, (_, r) => cifar10Record(0, r))));
  fs.writeFileSync(path.join(dir, 'batches.meta.txt'), CIFAR10_CLASSES.join('\n') + '\n\n');
  return dir;
}

function makeCifar100Bin(parent: string, trainN = 20, testN = 5): string {
  const dir = path.join(parent, 'cifar-100-binary');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'train.bin'), Buffer.concat(Array.from({ length: trainN }, (_, r) => cifar100Record(1, r))));
  fs.writeFileSync(path.join(dir, 'test.bin'), Buffer.concat(Array.from({ length: testN }, (_, r) => cifar100Record(0, r))));
  fs.writeFileSync(path.join(dir, 'fine_label_names.txt'), CIFAR100_CLASSES.join('\n') + '\n');
  fs.writeFileSync(path.join(dir, 'coarse_label_names.txt'), CIFAR100_COARSE_CLASSES.join('\n') + '\n');
  return dir;
}

function checkRecordPixels(ds: ImageDataset, n: number, b: number, r: number): void {
  for (const i of [0, 1, 1023, 1024, 2047, 2048, 3071]) assert.equal(ds.images[n * PIX + i], pix(b, r, i), `image ${n} byte ${i}`);
  // full compare of one whole image too
  const want = Uint8Array.from({ length: PIX }, (_, i) => pix(b, r, i));
  assert.deepEqual(ds.images.subarray(n * PIX, (n + 1) * PIX), want);
}

async function rejectsData(p: Promise<unknown>, re: RegExp): Promise<DataError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err, `expected a DataError matching ${re}, but it resolved`);
  assert.ok(err instanceof DataError, `expected DataError, got ${String(err)}`);
  assert.match((err as DataError).message, re);
  return err as DataError;
}

const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex');

interface Server {
  url: (p: string) => string;
  hits: Map<string, number>;
  close: () => Promise<void>;
}

/** Serves fixed buffers (or HTTP status codes) on 127.0.0.1. */
async function serve(routes: Record<string, Buffer | number>): Promise<Server> {
  const hits = new Map<string, number>();
  const server = http.createServer((req, res) => {
    const p = req.url ?? '/';
    hits.set(p, (hits.get(p) ?? 0) + 1);
    const body = routes[p];
    if (body === undefined || typeof body === 'number') {
      res.writeHead(typeof body === 'number' ? body : 404);
      res.end('no');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/gzip', 'content-length': body.length });
    // two chunks, so the progress callback sees the stream move
    res.write(body.subarray(0, body.length >> 1));
    setTimeout(() => res.end(body.subarray(body.length >> 1)), 5);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: (p) => `http://127.0.0.1:${port}${p}`,
    hits,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

async function tarGz(cwd: string, members: string[], out: string, extra: Partial<tar.TarOptionsWithAliasesAsyncFile> = {}): Promise<Buffer> {
  await tar.c({ gzip: true, file: out, cwd, portable: true, ...extra } as tar.TarOptionsWithAliasesAsyncFile, members);
  return fs.readFileSync(out);
}

async function listTar(file: string): Promise<{ path: string; type: string }[]> {
  const out: { path: string; type: string }[] = [];
  await tar.t({ file, onReadEntry: (e) => void out.push({ path: e.path, type: e.type }) });
  return out;
}

function havePythonNumpy(): boolean {
  if (!fs.existsSync(PYTHON)) return false;
  return spawnSync(PYTHON, ['-c', 'import numpy'], { encoding: 'utf8' }).status === 0;
}

function python(script: string, ...args: string[]): string {
  const r = spawnSync(PYTHON, ['-c', script, ...args], { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return r.stdout;
}

// ---------------------------------------------------------------------------------------------
// CIFAR binary

describe('CIFAR-10 binary', () => {
  test('parses labels and CHW pixels of every batch, from the folder or its parent', async () => {
    const parent = tmp('c10');
    const dir = makeCifar10Bin(parent, 4, 3);
    for (const where of [parent, dir]) {
      const ds = await readCifar10Binary(where, 'train');
      assert.equal(ds.name, 'CIFAR-10');
      assert.equal(ds.count, 20);
      assert.deepEqual([ds.channels, ds.height, ds.width], [3, 32, 32]);
      assert.equal(ds.images.length, 20 * PIX);
      assert.deepEqual(ds.classes, [...CIFAR10_CLASSES]);
      assert.equal(ds.coarseLabels, undefined);
      const want = [1, 2, 3, 4, 5].flatMap((b) => [0, 1, 2, 3].map((r) => label10(b, r)));
      assert.deepEqual([...ds.labels], want);
      checkRecordPixels(ds, 0, 1, 0);
      checkRecordPixels(ds, 9, 3, 1); // batch 3, record 1
      checkRecordPixels(ds, 19, 5, 3);
    }
    const test = await readCifar10Binary(parent, 'test');
    assert.equal(test.count, 3);
    assert.equal(test.split, 'test');
    assert.deepEqual(
      [...test.labels],
      [0, 1, 2].map((r) => label10(0, r)),
    );
    checkRecordPixels(test, 2, 0, 2);
  });

  test('class names come from batches.meta.txt', async () => {
    const dir = makeCifar10Bin(tmp('c10'), 1, 1);
    const names = CIFAR10_CLASSES.map((c) => c.toUpperCase());
    fs.writeFileSync(path.join(dir, 'batches.meta.txt'), names.join('\n') + '\n');
    assert.deepEqual((await readCifar10Binary(dir, 'test')).classes, names);
    fs.writeFileSync(path.join(dir, 'batches.meta.txt'), 'a\nb\n');
    await rejectsData(readCifar10Binary(dir, 'test'), /batches\.meta\.txt: has 2 class names, expected 10/);
  });

  test('truncated batch file is rejected, naming the file and size', async () => {
    const dir = makeCifar10Bin(tmp('c10'), 4, 3);
    const f = path.join(dir, 'data_batch_3.bin');
    fs.truncateSync(f, 3073 * 2 + 100);
    const e = await rejectsData(readCifar10Binary(dir, 'train'), /data_batch_3\.bin: size 6246 is not a multiple of the 3073-byte CIFAR-10 record/);
    assert.equal(e.file, f);
    // the test split does not touch that file
    assert.equal((await readCifar10Binary(dir, 'test')).count, 3);
    fs.writeFileSync(path.join(dir, 'test_batch.bin'), Buffer.alloc(0));
    await rejectsData(readCifar10Binary(dir, 'test'), /test_batch\.bin: file is empty/);
  });

  test('label out of range is rejected', async () => {
    const dir = makeCifar10Bin(tmp('c10'), 4, 3);
    fs.writeFileSync(path.join(dir, 'data_batch_2.bin'), Buffer.concat([cifar10Record(2, 0), cifar10Record(2, 1, 10)]));
    await rejectsData(readCifar10Binary(dir, 'train'), /data_batch_2\.bin: record 1 has label 10, expected 0\.\.9/);
  });

  test('missing batch file / missing folder is rejected', async () => {
    const parent = tmp('c10');
    const dir = makeCifar10Bin(parent, 2, 2);
    fs.rmSync(path.join(dir, 'data_batch_4.bin'));
    await rejectsData(readCifar10Binary(parent, 'train'), /data_batch_4\.bin: missing CIFAR-10 file/);
    await rejectsData(readCifar10Binary(tmp('empty'), 'train'), /no CIFAR-10 binary data here/);
    await rejectsData(readCifar10Binary(parent, 'validation' as 'train'), /unknown split 'validation'/);
  });
});

describe('CIFAR-100 binary', () => {
  test('parses fine + coarse labels, names and pixels', async () => {
    const parent = tmp('c100');
    makeCifar100Bin(parent, 20, 5);
    const ds = await readCifar100Binary(parent, 'train');
    assert.equal(ds.name, 'CIFAR-100');
    assert.equal(ds.count, 20);
    assert.equal(ds.classes.length, 100);
    assert.equal(ds.classes[4], 'beaver');
    assert.deepEqual(ds.coarseClasses, [...CIFAR100_COARSE_CLASSES]);
    assert.deepEqual(
      [...ds.labels],
      Array.from({ length: 20 }, (_, r) => fine100(1, r)),
    );
    assert.deepEqual(
      [...ds.coarseLabels!],
      Array.from({ length: 20 }, (_, r) => coarse100(1, r)),
    );
    checkRecordPixels(ds, 0, 1, 0);
    checkRecordPixels(ds, 13, 1, 13);
    const t = await readCifar('cifar100', parent, 'test');
    assert.equal(t.count, 5);
    assert.deepEqual(
      [...t.labels],
      Array.from({ length: 5 }, (_, r) => fine100(0, r)),
    );
  });

  test('bad fine / coarse label, bad record size', async () => {
    const dir = makeCifar100Bin(tmp('c100'), 3, 2);
    fs.writeFileSync(path.join(dir, 'train.bin'), Buffer.concat([cifar100Record(1, 0), cifar100Record(1, 1, 100, 3)]));
    await rejectsData(readCifar100Binary(dir, 'train'), /train\.bin: record 1 has fine label 100, expected 0\.\.99/);
    fs.writeFileSync(path.join(dir, 'train.bin'), Buffer.concat([cifar100Record(1, 0, 5, 20)]));
    await rejectsData(readCifar100Binary(dir, 'train'), /train\.bin: record 0 has coarse label 20, expected 0\.\.19/);
    // a CIFAR-10 record size is not a CIFAR-100 one
    fs.writeFileSync(path.join(dir, 'train.bin'), cifar10Record(1, 0));
    await rejectsData(readCifar100Binary(dir, 'train'), /train\.bin: size 3073 is not a multiple of the 3074-byte CIFAR-100 record/);
    fs.rmSync(path.join(dir, 'test.bin'));
    await rejectsData(readCifar100Binary(dir, 'test'), /test\.bin: missing CIFAR-100 file/);
  });
});

// ---------------------------------------------------------------------------------------------
// CIFAR python (pickle) format

describe('CIFAR python format (pickle)', () => {
  const needPy = skipUnless(havePythonNumpy(), `${PYTHON} with numpy`, 'install python3-numpy (scripts/setup.sh does)');

  test('reads CIFAR-10 batches pickled by Python 3 (protocol 2, numpy array)', { skip: needPy }, async () => {
    const parent = tmp('c10py');
    python(
      `
import pickle, numpy as np, sys, os
out = os.path.join(sys.argv[1], 'cifar-10-batches-py'); os.makedirs(out)
names = [${CIFAR10_CLASSES.map((c) => `b'${c}'`).join(',')}]
def batch(b, n):
    r = np.arange(n)[:, None]; i = np.arange(3072)[None, :]
    data = ((b * 31 + r * 7 + i * 3) % 256).astype(np.uint8)
    labels = [int((b * 3 + k) % 10) for k in range(n)]
    return {b'batch_label': b'batch %d' % b, b'labels': labels, b'data': data, b'filenames': [b'f%d.png' % k for k in range(n)]}
for b in range(1, 6):
    with open(os.path.join(out, 'data_batch_%d' % b), 'wb') as f: pickle.dump(batch(b, 3), f, protocol=2)
with open(os.path.join(out, 'test_batch'), 'wb') as f: pickle.dump(batch(0, 4), f, protocol=2)
with open(os.path.join(out, 'batches.meta'), 'wb') as f: pickle.dump({b'label_names': names, b'num_cases_per_batch': 3, b'num_vis': 3072}, f, protocol=2)
`,
      parent,
    );
    const ds = await readCifarPython('cifar10', parent, 'train');
    assert.equal(ds.count, 15);
    assert.deepEqual(ds.classes, [...CIFAR10_CLASSES]);
    assert.deepEqual(
      [...ds.labels],
      [1, 2, 3, 4, 5].flatMap((b) => [0, 1, 2].map((r) => label10(b, r))),
    );
    checkRecordPixels(ds, 0, 1, 0);
    checkRecordPixels(ds, 7, 3, 1);
    checkRecordPixels(ds, 14, 5, 2);
    // readCifar picks the python folder when there is no binary one
    const t = await readCifar('cifar10', parent, 'test');
    assert.equal(t.count, 4);
    checkRecordPixels(t, 3, 0, 3);
    // the binary folder wins when both exist
    makeCifar10Bin(parent, 1, 1);
    assert.equal((await readCifar('cifar10', parent, 'test')).count, 1);
  });

  test('reads a Python-2-style pickle (SHORT_BINSTRING/BINSTRING, as in the official files)', async () => {
    // Hand-written opcodes in the layout of the official cPickle protocol 2 files.
    const n = 2;
    const data = Buffer.from(Array.from({ length: n * PIX }, (_, k) => pix(4, Math.floor(k / PIX), k % PIX)));
    const s = (t: string) => Buffer.concat([Buffer.from([0x55, t.length]), Buffer.from(t, 'latin1')]);
    const i32 = (v: number) => {
      const b = Buffer.alloc(4);
      b.writeInt32LE(v);
      return b;
    };
    const bytes = Buffer.concat([
      Buffer.from([0x80, 0x02, 0x7d, 0x71, 0x01, 0x28]), // PROTO 2, EMPTY_DICT, BINPUT 1, MARK
      s('data'),
      Buffer.from([0x71, 0x02]),
      Buffer.from('cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85', 'latin1'),
      s('b'),
      Buffer.from([0x87, 0x52, 0x71, 0x05, 0x28, 0x4b, 0x01, 0x4b, n, 0x4d, 0x00, 0x0c, 0x86]), // TUPLE3 REDUCE BINPUT MARK K1 (K n, M 3072) TUPLE2
      Buffer.from('cnumpy\ndtype\nq\x06', 'latin1'),
      s('u1'),
      Buffer.from([0x4b, 0x00, 0x4b, 0x01, 0x87, 0x52, 0x71, 0x07, 0x28, 0x4b, 0x03]),
      s('|'),
      Buffer.from([0x4e, 0x4e, 0x4e, 0x4a]),
      i32(-1),
      Buffer.from([0x4a]),
      i32(-1),
      Buffer.from([0x4b, 0x00, 0x74, 0x62]), // ...) BUILD dtype
      Buffer.from([0x89, 0x54]),
      i32(data.length),
      data,
      Buffer.from([0x74, 0x62]), // False, BINSTRING data, TUPLE, BUILD
      s('labels'),
      Buffer.from([0x71, 0x08, 0x5d, 0x71, 0x09, 0x28, 0x4b, 7, 0x4b, 2, 0x65]), // EMPTY_LIST, MARK, 7, 2, APPENDS
      s('batch_label'),
      s('testing batch 1 of 1'),
      Buffer.from([0x75, 0x2e]), // SETITEMS, STOP
    ]);
    if (!needPy) {
      // Python agrees this is a valid pickle with those contents.
      const f = path.join(tmp('py2'), 'p');
      fs.writeFileSync(f, bytes);
      const out = JSON.parse(
        python(
          `import pickle, sys, json\nd = pickle.load(open(sys.argv[1], 'rb'), encoding='bytes')\nprint(json.dumps([list(d[b'data'].shape), str(d[b'data'].dtype), int(d[b'data'].astype('int64').sum()), d[b'labels']]))`,
          f,
        ),
      );
      assert.deepEqual(out, [[n, PIX], 'uint8', data.reduce((a, b) => a + b, 0), [7, 2]]);
    }
    const parent = tmp('c10py2');
    const dir = path.join(parent, 'cifar-10-batches-py');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'test_batch'), bytes);
    const ds = await readCifarPython('cifar10', parent, 'test');
    assert.equal(ds.count, 2);
    assert.deepEqual([...ds.labels], [7, 2]);
    assert.deepEqual(ds.classes, [...CIFAR10_CLASSES]); // no batches.meta: official names
    checkRecordPixels(ds, 1, 4, 1);
    // truncated pickle
    fs.writeFileSync(path.join(dir, 'test_batch'), bytes.subarray(0, 500));
    await rejectsData(readCifarPython('cifar10', parent, 'test'), /test_batch: truncated pickle/);
  });

  test('reads CIFAR-100 python (fine + coarse labels)', { skip: needPy }, async () => {
    const parent = tmp('c100py');
    python(
      `
import pickle, numpy as np, sys, os
out = os.path.join(sys.argv[1], 'cifar-100-python'); os.makedirs(out)
r = np.arange(6)[:, None]; i = np.arange(3072)[None, :]
data = ((2 * 31 + r * 7 + i * 3) % 256).astype(np.uint8)
d = {b'data': data, b'fine_labels': [int((2 * 11 + k * 7 + 1) % 100) for k in range(6)], b'coarse_labels': [int((2 * 5 + k) % 20) for k in range(6)]}
pickle.dump(d, open(os.path.join(out, 'train'), 'wb'), protocol=2)
pickle.dump({b'fine_label_names': [('F%d' % k).encode() for k in range(100)], b'coarse_label_names': [('C%d' % k).encode() for k in range(20)]}, open(os.path.join(out, 'meta'), 'wb'), protocol=2)
`,
      parent,
    );
    const ds = await readCifar('cifar100', parent, 'train');
    assert.equal(ds.count, 6);
    assert.equal(ds.classes[42], 'F42');
    assert.equal(ds.coarseClasses![19], 'C19');
    assert.deepEqual(
      [...ds.labels],
      Array.from({ length: 6 }, (_, r) => fine100(2, r)),
    );
    assert.deepEqual(
      [...ds.coarseLabels!],
      Array.from({ length: 6 }, (_, r) => coarse100(2, r)),
    );
    checkRecordPixels(ds, 5, 2, 5);
    await rejectsData(readCifar('cifar100', parent, 'test'), /cifar-100-python[\\/]test: missing CIFAR-100 file/);
  });

  test('refuses pickles that would call anything else', () => {
    const evil = Buffer.from('\x80\x02cos\nsystem\nq\x00U\x02lsq\x01\x85q\x02Rq\x03.', 'latin1');
    assert.throws(
      () => readPickle(evil, 'evil.pkl'),
      (e: unknown) => e instanceof DataError && /evil\.pkl: unsupported pickle global os\.system/.test(e.message),
    );
    assert.throws(() => readPickle(Buffer.from([0x80, 0x02, 0xff]), 'x.pkl'), /x\.pkl: unsupported pickle opcode 0xff/);
  });
});

// ---------------------------------------------------------------------------------------------
// download + safe extraction

describe('download and extraction', () => {
  let server: Server;
  let good: Buffer; // tiny official-layout cifar-10 binary tar.gz
  let good100: Buffer;
  const evil: Record<string, Buffer> = {};
  let scratch: string;

  before(async () => {
    scratch = tmp('tarsrc');
    makeCifar10Bin(scratch, 2, 2);
    fs.writeFileSync(path.join(scratch, 'cifar-10-batches-bin', 'readme.html'), '<html></html>');
    good = await tarGz(scratch, ['cifar-10-batches-bin'], path.join(scratch, 'good.tar.gz'));
    makeCifar100Bin(scratch, 4, 2);
    good100 = await tarGz(scratch, ['cifar-100-binary'], path.join(scratch, 'good100.tar.gz'));

    // ../evil: a member escaping the target
    const a = path.join(scratch, 'a');
    fs.mkdirSync(path.join(a, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(a, 'evil'), 'pwned');
    evil.dotdot = await tarGz(path.join(a, 'sub'), ['../evil'], path.join(scratch, 'dotdot.tar.gz'), { preservePaths: true });
    // absolute path member
    evil.absolute = await tarGz(scratch, [path.join(a, 'evil')], path.join(scratch, 'abs.tar.gz'), { preservePaths: true });
    // symlink under an expected name
    const l = path.join(scratch, 'l', 'cifar-10-batches-bin');
    fs.mkdirSync(l, { recursive: true });
    fs.symlinkSync('/etc/passwd', path.join(l, 'data_batch_1.bin'));
    evil.symlink = await tarGz(path.join(scratch, 'l'), ['cifar-10-batches-bin'], path.join(scratch, 'link.tar.gz'));
    // unexpected extra file next to the real ones
    const u = path.join(scratch, 'u');
    makeCifar10Bin(u, 1, 1);
    fs.writeFileSync(path.join(u, 'cifar-10-batches-bin', 'run_me.sh'), 'echo hi');
    evil.unexpected = await tarGz(u, ['cifar-10-batches-bin'], path.join(scratch, 'unexp.tar.gz'));
    // an archive lacking a required file
    const m = path.join(scratch, 'm');
    makeCifar10Bin(m, 1, 1);
    fs.rmSync(path.join(m, 'cifar-10-batches-bin', 'test_batch.bin'));
    evil.missing = await tarGz(m, ['cifar-10-batches-bin'], path.join(scratch, 'missing.tar.gz'));

    server = await serve({
      '/cifar-10-binary.tar.gz': good,
      '/cifar-100-binary.tar.gz': good100,
      '/evil.tar.gz': evil.dotdot!,
      '/gone': 404,
    });
  });
  after(() => server.close());

  test('the hostile fixtures really contain what they claim', async () => {
    const paths = async (name: string) => (await listTar(path.join(scratch, name))).map((e) => `${e.type}:${e.path}`);
    assert.ok((await paths('dotdot.tar.gz')).includes('File:../evil'));
    assert.ok((await paths('abs.tar.gz')).some((p) => p.startsWith('File:/') && p.endsWith('/a/evil')));
    assert.ok((await paths('link.tar.gz')).includes('SymbolicLink:cifar-10-batches-bin/data_batch_1.bin'));
    assert.ok((await paths('unexp.tar.gz')).includes('File:cifar-10-batches-bin/run_me.sh'));
  });

  test('downloads, verifies MD5, extracts, and reuses what is there', async () => {
    const dataDir = tmp('dl');
    const progress: [number, number][] = [];
    const r = await downloadCifar('cifar10', dataDir, {
      url: server.url('/cifar-10-binary.tar.gz'),
      md5: md5(good),
      size: good.length,
      progressBar: false,
      onProgress: (d, t) => void progress.push([d, t]),
    });
    assert.equal(r.dir, path.join(dataDir, 'cifar-10-batches-bin'));
    assert.equal(r.downloaded, true);
    assert.deepEqual(progress[progress.length - 1], [good.length, good.length]);
    assert.deepEqual(fs.readFileSync(path.join(dataDir, 'cifar-10-binary.tar.gz')), good);
    assert.deepEqual(fs.readdirSync(dataDir).sort(), ['cifar-10-batches-bin', 'cifar-10-binary.tar.gz']); // no temp files left
    assert.deepEqual(fs.readdirSync(r.dir).sort(), [
      'batches.meta.txt',
      'data_batch_1.bin',
      'data_batch_2.bin',
      'data_batch_3.bin',
      'data_batch_4.bin',
      'data_batch_5.bin',
      'readme.html',
      'test_batch.bin',
    ]);
    const ds = await readCifar10Binary(r.dir, 'train');
    assert.equal(ds.count, 10);
    checkRecordPixels(ds, 5, 3, 1);

    const hits = server.hits.get('/cifar-10-binary.tar.gz');
    const again = await downloadCifar('cifar10', dataDir, {
      url: server.url('/cifar-10-binary.tar.gz'),
      md5: md5(good),
      size: good.length,
      progressBar: false,
    });
    assert.equal(again.downloaded, false);
    assert.equal(again.extracted, false);
    // folder gone but verified archive present: re-extract without downloading
    fs.rmSync(r.dir, { recursive: true });
    const third = await downloadCifar('cifar10', dataDir, {
      url: server.url('/cifar-10-binary.tar.gz'),
      md5: md5(good),
      size: good.length,
      progressBar: false,
    });
    assert.deepEqual([third.downloaded, third.extracted], [false, true]);
    assert.equal(server.hits.get('/cifar-10-binary.tar.gz'), hits);
    assert.equal((await readCifar10Binary(dataDir, 'test')).count, 2);
  });

  test('MD5 mismatch is a DataError naming expected and actual; nothing is left behind', async () => {
    const dataDir = tmp('dl');
    const wrong = '0123456789abcdef0123456789abcdef';
    await rejectsData(
      downloadCifar('cifar10', dataDir, { url: server.url('/cifar-10-binary.tar.gz'), md5: wrong, size: good.length, progressBar: false }),
      new RegExp(`cifar-10-binary\\.tar\\.gz: MD5 mismatch .*expected ${wrong}, got ${md5(good)}`),
    );
    assert.deepEqual(fs.readdirSync(dataDir), []);
  });

  test('size mismatch and HTTP errors are DataErrors', async () => {
    const dataDir = tmp('dl');
    await rejectsData(
      downloadCifar('cifar10', dataDir, { url: server.url('/cifar-10-binary.tar.gz'), md5: md5(good), size: good.length + 1, progressBar: false }),
      new RegExp(`announces ${good.length} bytes, expected ${good.length + 1}`),
    );
    await rejectsData(downloadCifar('cifar10', dataDir, { url: server.url('/gone'), progressBar: false }), /HTTP 404/);
    await rejectsData(
      downloadCifar('cifar10', dataDir, { url: 'http://127.0.0.1:1/x.tar.gz', progressBar: false }),
      /download from http:\/\/127\.0\.0\.1:1\/x\.tar\.gz failed/,
    );
    assert.deepEqual(fs.readdirSync(dataDir), []);
  });

  test('CIFAR-100 download through loadDataset', async () => {
    const dataDir = tmp('dl100');
    const ds = await loadDataset('cifar100', {
      dataDir,
      split: 'train',
      download: true,
      searchDirs: [],
      downloadOptions: { url: server.url('/cifar-100-binary.tar.gz'), md5: md5(good100), size: good100.length, progressBar: false },
    });
    assert.equal(ds.name, 'CIFAR-100');
    assert.equal(ds.count, 4);
    assert.deepEqual(
      [...ds.coarseLabels!],
      [0, 1, 2, 3].map((r) => coarse100(1, r)),
    );
    // an incomplete local folder is downloaded again (the old one is kept aside) when allowed
    fs.rmSync(path.join(dataDir, 'cifar-100-binary', 'test.bin'));
    fs.rmSync(path.join(dataDir, 'cifar-100-binary.tar.gz'));
    const hits = server.hits.get('/cifar-100-binary.tar.gz') ?? 0;
    const opts = {
      dataDir,
      split: 'test' as const,
      searchDirs: [],
      downloadOptions: { url: server.url('/cifar-100-binary.tar.gz'), md5: md5(good100), size: good100.length, progressBar: false },
    };
    await rejectsData(loadDataset('cifar100', opts), /test\.bin: missing CIFAR-100 file/);
    assert.equal((await loadDataset('cifar100', { ...opts, download: true })).count, 2);
    assert.equal(server.hits.get('/cifar-100-binary.tar.gz'), hits + 1);
    assert.ok(fs.readdirSync(dataDir).some((f) => f.startsWith('cifar-100-binary.old-')));
    // without download permission and nothing local: a clear error
    await rejectsData(
      loadDataset('cifar100', { dataDir: tmp('none'), split: 'train', searchDirs: [] }),
      /CIFAR-100 not found: looked for cifar-100-binary\/.*download/,
    );
  });

  for (const [kind, re] of [
    ['dotdot', /refusing to extract: unsafe member '\.\.\/evil' \('\.\.' in path\)/],
    ['absolute', /refusing to extract: unsafe member '\/.*\/a\/evil' \(absolute path\)/],
    ['symlink', /refusing to extract: member 'cifar-10-batches-bin\/data_batch_1\.bin' is a symbolic link to '\/etc\/passwd'/],
    ['unexpected', /refusing to extract: unexpected member 'cifar-10-batches-bin\/run_me\.sh'/],
    ['missing', /archive lacks cifar-10-batches-bin\/test_batch\.bin/],
  ] as const) {
    test(`unsafe archive rejected: ${kind}`, async () => {
      const dataDir = tmp(`x-${kind}`);
      const archive = path.join(dataDir, 'cifar-10-binary.tar.gz');
      fs.writeFileSync(archive, evil[kind]!);
      await rejectsData(extractCifarArchive('cifar10', archive, dataDir), re);
      // nothing extracted, no staging folder left, nothing written next to dataDir
      assert.deepEqual(fs.readdirSync(dataDir), ['cifar-10-binary.tar.gz']);
      assert.equal(fs.existsSync(path.join(path.dirname(dataDir), 'evil')), false);
      // safeExtract directly into a fresh folder writes nothing either
      const dest = tmp(`y-${kind}`);
      await rejectsData(safeExtract(archive, dest, { required: ['cifar-10-batches-bin/test_batch.bin'], optional: [] }), /refusing to extract|archive lacks/);
      assert.deepEqual(fs.readdirSync(dest), []);
    });
  }

  test('an escaping archive served over HTTP is rejected after the download', async () => {
    const dataDir = tmp('dlevil');
    await rejectsData(
      downloadCifar('cifar10', dataDir, { url: server.url('/evil.tar.gz'), md5: md5(evil.dotdot!), size: null, progressBar: false }),
      /unsafe member '\.\.\/evil'/,
    );
    assert.equal(fs.existsSync(path.join(dataDir, 'cifar-10-batches-bin')), false);
    assert.equal(fs.existsSync(path.join(path.dirname(dataDir), 'evil')), false);
  });

  test('not a tar archive', async () => {
    const dataDir = tmp('notar');
    const archive = path.join(dataDir, 'cifar-10-binary.tar.gz');
    fs.writeFileSync(archive, Buffer.from('this is not a tarball at all, not even gzip'.repeat(20)));
    await rejectsData(
      extractCifarArchive('cifar10', archive, dataDir),
      /cifar-10-binary\.tar\.gz: (not a readable tar archive|refusing to extract|archive lacks)/,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// image folder

function png(w: number, h: number, px: (x: number, y: number) => [number, number, number, number], colorType: 0 | 2 | 4 | 6 = 2): Buffer {
  const p = new pngjs.PNG({ width: w, height: h });
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const [r, g, b, a] = px(x, y);
      const o = (y * w + x) * 4;
      p.data[o] = r;
      p.data[o + 1] = g;
      p.data[o + 2] = b;
      p.data[o + 3] = a;
    }
  const out = pngjs.PNG.sync.write(p, { colorType });
  assert.equal(out[25], colorType, 'PNG colour type written');
  return out;
}

function jpg(w: number, h: number, rgb: [number, number, number]): Buffer {
  const data = Buffer.alloc(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    data[4 * i] = rgb[0];
    data[4 * i + 1] = rgb[1];
    data[4 * i + 2] = rgb[2];
    data[4 * i + 3] = 255;
  }
  return jpeg.encode({ width: w, height: h, data }, 95).data;
}

const grad = (x: number, y: number, c: number) => (x * 20 + y * 3 + c * 50) % 256;

/** root/train/{cat,dog,zebra}, root/test/{cat,dog,zebra}: 8x8 PNG (RGB, grey, RGBA) + JPEG. */
function makeImageFolder(root: string): void {
  for (const split of ['train', 'test']) {
    const d = (c: string) => {
      const p = path.join(root, split, c);
      fs.mkdirSync(p, { recursive: true });
      return p;
    };
    // 'dog' before 'cat' on purpose: classes must come out sorted
    fs.writeFileSync(
      path.join(d('dog'), 'b.png'),
      png(8, 8, (x, y) => [grad(x, y, 0), grad(x, y, 1), grad(x, y, 2), 255]),
    );
    fs.writeFileSync(
      path.join(d('dog'), 'a.png'),
      png(8, 8, (x) => [x * 30, x * 30, x * 30, 255], 0),
    ); // greyscale PNG
    fs.writeFileSync(path.join(d('cat'), '1.jpg'), jpg(8, 8, [200, 40, 90]));
    fs.writeFileSync(path.join(d('cat'), '2.JPEG'), jpg(8, 8, [10, 220, 130]));
    fs.writeFileSync(path.join(d('cat'), 'notes.txt'), 'ignored');
    fs.writeFileSync(
      path.join(d('zebra'), 'z.png'),
      png(8, 8, (x, y) => [y * 30, 7, 250, x * 30], 6),
    ); // RGBA PNG
  }
}

const px = (ds: ImageDataset, n: number, c: number, y: number, x: number) => ds.images[((n * ds.channels + c) * ds.height + y) * ds.width + x]!;

describe('image folder', () => {
  test('decodes PNG (RGB / grey / RGBA) and JPEG into sorted classes, CHW', async () => {
    const root = tmp('if');
    makeImageFolder(root);
    const ds = await readImageFolder(root, 'train', { cache: false });
    assert.deepEqual(ds.classes, ['cat', 'dog', 'zebra']);
    assert.equal(ds.count, 5);
    assert.deepEqual([ds.channels, ds.height, ds.width], [3, 8, 8]);
    assert.deepEqual([...ds.labels], [0, 0, 1, 1, 2]); // cat/1.jpg cat/2.JPEG dog/a.png dog/b.png zebra/z.png
    assert.equal(ds.name, path.basename(root));
    // JPEG: solid colours within a few levels
    for (const [n, rgb] of [
      [0, [200, 40, 90]],
      [1, [10, 220, 130]],
    ] as const)
      for (let c = 0; c < 3; c++)
        for (const [y, x] of [
          [0, 0],
          [7, 7],
          [3, 5],
        ])
          assert.ok(Math.abs(px(ds, n, c, y!, x!) - rgb[c]!) <= 3, `jpeg ${n} c${c}`);
    // grey PNG: replicated to 3 equal channels
    for (let c = 0; c < 3; c++) for (let x = 0; x < 8; x++) assert.equal(px(ds, 2, c, 4, x), x * 30);
    // RGB PNG: exact, planar
    for (let c = 0; c < 3; c++) for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) assert.equal(px(ds, 3, c, y, x), grad(x, y, c));
    // RGBA PNG: alpha dropped (not composited)
    assert.equal(px(ds, 4, 0, 5, 2), 150);
    assert.equal(px(ds, 4, 1, 5, 2), 7);
    assert.equal(px(ds, 4, 2, 5, 2), 250);
  });

  test('worker-thread decoding gives the same bytes as the main thread', async () => {
    const root = tmp('ifw');
    // jpeg-js encoding is slow (~50 ms per call): a few JPEGs, reused
    const jpgs = [0, 1, 2, 3].map((k) => jpg(6, 5, [k * 60, 255 - k * 50, 90]));
    for (let c = 0; c < 3; c++) {
      const d = path.join(root, 'train', `c${c}`);
      fs.mkdirSync(d, { recursive: true });
      for (let i = 0; i < 300; i++) {
        const f = i % 3 === 0 ? jpgs[(i + c) % 4]! : png(6, 5, (x, y) => [(x + i) % 256, (y * c + i) % 256, (x * y) % 256, 255]);
        fs.writeFileSync(path.join(d, `${String(i).padStart(4, '0')}.${i % 3 === 0 ? 'jpg' : 'png'}`), f);
      }
    }
    const seen: number[] = [];
    const a = await readImageFolder(root, 'train', { cache: false, workers: 0 });
    const b = await readImageFolder(root, 'train', { cache: false, workers: 2, onProgress: (d, t, s) => void (s === 'decode' && seen.push(d / t)) });
    assert.equal(a.count, 900);
    assert.deepEqual(b.labels, a.labels);
    assert.ok(Buffer.from(b.images).equals(Buffer.from(a.images)));
    assert.equal(seen[seen.length - 1], 1);
    // an undecodable file found by a worker is still a DataError naming it
    fs.writeFileSync(path.join(root, 'train', 'c2', '0299.png'), Buffer.from('\x89PNG\r\n\x1a\nbroken', 'latin1'));
    await rejectsData(readImageFolder(root, 'train', { cache: false, workers: 2 }), /c2[\\/]0299\.png: cannot decode PNG/);
  });

  test('cache is reused, invalidated by a changed folder, and rebuilt when corrupt', async () => {
    const root = tmp('ifc');
    makeImageFolder(root);
    const warnings: string[] = [];
    const opts = { onWarning: (m: string) => void warnings.push(m) };
    const first = await readImageFolder(root, 'test', opts);
    const cacheFile = imageFolderCachePath(root, 'test');
    assert.equal(cacheFile, path.join(root, '.kshare-cache', 'test.u8'));
    assert.ok(fs.existsSync(cacheFile));
    assert.deepEqual(fs.readdirSync(path.dirname(cacheFile)), ['test.u8']); // no temp files
    assert.equal(fs.readFileSync(cacheFile).toString('latin1', 0, 7), 'KSHRIMG');

    // Replace an image by garbage of the same size and mtime: the cache must still serve it.
    const victim = path.join(root, 'test', 'dog', 'b.png');
    const st = fs.statSync(victim);
    const original = fs.readFileSync(victim);
    fs.writeFileSync(victim, Buffer.alloc(st.size, 0x42));
    fs.utimesSync(victim, st.atime, st.mtime);
    const cached = await readImageFolder(root, 'test', opts);
    assert.ok(Buffer.from(cached.images).equals(Buffer.from(first.images)));
    for (const d of [first, cached]) assert.deepEqual([d.images.byteOffset, d.images.buffer.byteLength], [0, d.images.length], 'images own their buffer');
    assert.deepEqual(cached.labels, first.labels);
    assert.deepEqual(cached.classes, first.classes);
    assert.deepEqual(warnings, []);

    // A new mtime invalidates the cache: now the garbage gets decoded (and fails, naming it).
    fs.utimesSync(victim, st.atime, new Date(st.mtimeMs + 5000));
    await rejectsData(readImageFolder(root, 'test', opts), /dog[\\/]b\.png: not a PNG or JPEG image/);
    fs.writeFileSync(victim, original);

    // A new file invalidates it too.
    fs.writeFileSync(
      path.join(root, 'test', 'zebra', 'y.png'),
      png(8, 8, () => [1, 2, 3, 255]),
    );
    const grown = await readImageFolder(root, 'test', opts);
    assert.equal(grown.count, 6);
    assert.equal(px(grown, 4, 2, 0, 0), 3); // zebra/y.png sorts before zebra/z.png

    // Those two changes were noted as such.
    assert.equal(warnings.length, 2);
    for (const w of warnings) assert.match(w, /test\.u8: cache ignored \(folder changed\)/);
    warnings.length = 0;

    // Corrupt cache: one flipped pixel byte -> ignored (warning) and rebuilt.
    const buf = fs.readFileSync(cacheFile);
    buf[buf.length - 1] ^= 0xff;
    fs.writeFileSync(cacheFile, buf);
    const rebuilt = await readImageFolder(root, 'test', opts);
    assert.ok(Buffer.from(rebuilt.images).equals(Buffer.from(grown.images)));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /test\.u8: cache ignored \(checksum mismatch\)/);
    // ...and the rewritten cache is good again
    await readImageFolder(root, 'test', opts);
    assert.equal(warnings.length, 1);
    // Truncated cache, garbage cache
    fs.truncateSync(cacheFile, 100);
    assert.ok(Buffer.from((await readImageFolder(root, 'test', opts)).images).equals(Buffer.from(grown.images)));
    fs.writeFileSync(cacheFile, 'garbage');
    assert.ok(Buffer.from((await readImageFolder(root, 'test', opts)).images).equals(Buffer.from(grown.images)));
    assert.equal(warnings.length, 3);
    assert.match(warnings[2]!, /bad magic/);
  });

  test('mixed sizes: error naming the file and its size, unless resize is given', async () => {
    const root = tmp('ifm');
    makeImageFolder(root);
    fs.writeFileSync(
      path.join(root, 'train', 'dog', 'c.png'),
      png(16, 12, (x, y) => [x * 10, y * 10, 0, 255]),
    );
    const e = await rejectsData(readImageFolder(root, 'train', { cache: false }), /dog[\\/]c\.png: size 16x12 differs from 8x8/);
    assert.equal(e.file, path.join(root, 'train', 'dog', 'c.png'));
    const ds = await readImageFolder(root, 'train', { cache: false, resize: { height: 4, width: 4, mode: 'nearest' } });
    assert.deepEqual([ds.count, ds.height, ds.width], [6, 4, 4]);
    // nearest 16x12 -> 4x4 samples x = 0,4,8,12 and y = 0,3,6,9
    assert.equal(px(ds, 4, 0, 1, 2), 80);
    assert.equal(px(ds, 4, 1, 3, 1), 90);
    const b = await readImageFolder(root, 'train', { cache: false, resize: 16 });
    assert.deepEqual([b.height, b.width], [16, 16]);
  });

  test('bilinear resize: exact on a linear ramp', () => {
    const src = Uint8Array.from({ length: 4 }, (_, i) => i * 60); // 1x1x4 ramp 0,60,120,180
    assert.deepEqual([...resizeCHW(src, 1, 1, 4, 1, 2, 'bilinear')], [30, 150]);
    assert.deepEqual([...resizeCHW(src, 1, 1, 4, 1, 2, 'nearest')], [0, 120]);
    assert.deepEqual([...resizeCHW(Uint8Array.from([0, 100]), 1, 1, 2, 1, 4, 'bilinear')], [0, 25, 75, 100]);
  });

  test('undecodable image, empty class, no classes, missing split', async () => {
    const root = tmp('ife');
    makeImageFolder(root);
    fs.writeFileSync(path.join(root, 'train', 'cat', '3.jpg'), Buffer.from('definitely not a jpeg'));
    await rejectsData(readImageFolder(root, 'train', { cache: false }), /cat[\\/]3\.jpg: not a PNG or JPEG image/);
    fs.writeFileSync(path.join(root, 'train', 'cat', '3.jpg'), Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), Buffer.alloc(40, 7)]));
    await rejectsData(readImageFolder(root, 'train', { cache: false }), /cat[\\/]3\.jpg: cannot decode JPEG/);
    fs.rmSync(path.join(root, 'train', 'cat', '3.jpg'));
    fs.mkdirSync(path.join(root, 'train', 'empty'));
    fs.writeFileSync(path.join(root, 'train', 'empty', 'readme.txt'), 'no images');
    await rejectsData(readImageFolder(root, 'train', { cache: false }), /empty: class folder 'empty' has no \.png\/\.jpg\/\.jpeg images/);
    const bare = tmp('ifb');
    fs.mkdirSync(path.join(bare, 'train'));
    await rejectsData(readImageFolder(bare, 'train'), /no class folders/);
    await rejectsData(readImageFolder(bare, 'test'), /image folder split 'test' not found/);
  });
});

// ---------------------------------------------------------------------------------------------
// loadDataset

describe('loadDataset', () => {
  test('unknown spec lists the accepted values', async () => {
    await rejectsData(
      loadDataset('imagenet', { split: 'train', searchDirs: [] }),
      /unknown dataset 'imagenet': expected one of 'cifar10', 'cifar100' or the path of an image folder/,
    );
    await rejectsData(loadDataset('./no/such/folder', { split: 'train' }), /dataset folder not found/);
  });

  test("'cifar10' prefers the official binary in dataDir; accepts aliases", async () => {
    const dataDir = tmp('ld');
    makeCifar10Bin(dataDir, 1, 2);
    fs.mkdirSync(path.join(dataDir, 'cifar10-jpeg', 'test', 'a'), { recursive: true }); // must not be used
    for (const spec of ['cifar10', 'CIFAR-10']) {
      const ds = await loadDataset(spec, { dataDir, split: 'test', searchDirs: [] });
      assert.equal(ds.name, 'CIFAR-10');
      assert.equal(ds.count, 2);
    }
    // a path to the official folder works as a spec too
    assert.equal((await loadDataset(path.join(dataDir, 'cifar-10-batches-bin'), { split: 'train' })).count, 5);
  });

  // The stand-in .tar.xz below is made with the system tar (and xz).
  const needTar = skipUnless(
    ['tar', 'xz'].every((p) => spawnSync(p, ['--version']).status === 0),
    'tar and xz',
    'install tar and xz-utils (scripts/setup.sh does)',
  );
  test("'cifar10' falls back to the JPEG copy (folder, then .tar.xz extracted once) named CIFAR-10 (JPEG copy)", { skip: needTar }, async () => {
    // A tiny stand-in for ../shared/data/cifar10-jpeg.tar.xz
    const shared = tmp('shared');
    const src = tmp('jpegsrc');
    makeImageFolder(path.join(src, 'cifar10-jpeg'));
    const r = spawnSync('tar', ['-cJf', path.join(shared, 'cifar10-jpeg.tar.xz'), '-C', src, 'cifar10-jpeg']);
    assert.equal(r.status, 0, String(r.stderr));
    const dataDir = tmp('ldj');
    const logs: string[] = [];
    // The stand-in is not the published archive: refused unless the caller accepts that.
    await rejectsData(
      loadDataset('cifar10', { dataDir, split: 'train', searchDirs: [tmp('nothing'), shared] }),
      /cifar10-jpeg\.tar\.xz: SHA-256 is [0-9a-f]{64}, the published copy's is .*--allow-checksum-mismatch/,
    );
    const progress: [number, number, string | undefined][] = [];
    const ds = await loadDataset('cifar10', {
      dataDir,
      split: 'train',
      searchDirs: [tmp('nothing'), shared],
      log: (m) => void logs.push(m),
      allowChecksumMismatch: true,
      onProgress: (d, n, st) => void progress.push([d, n, st]),
    });
    // Extraction reports the archive entries as they come out (the real archive has 60,023).
    const extract = progress.filter(([, , st]) => st === 'extract');
    const entries = String(spawnSync('tar', ['-tJf', path.join(shared, 'cifar10-jpeg.tar.xz')]).stdout)
      .trim()
      .split('\n').length;
    assert.ok(extract.length > 0, 'extraction progress reported');
    assert.equal(extract[extract.length - 1]![0], entries);
    assert.equal(extract[0]![1], 60023);
    assert.equal(ds.name, CIFAR10_JPEG_NAME);
    assert.equal(ds.name, 'CIFAR-10 (JPEG copy)');
    assert.equal(ds.count, 5);
    assert.deepEqual(ds.classes, ['cat', 'dog', 'zebra']);
    assert.ok(fs.existsSync(path.join(dataDir, 'cifar10-jpeg', 'test', 'dog', 'b.png')), 'extracted into dataDir');
    assert.deepEqual(fs.readdirSync(dataDir), ['cifar10-jpeg']); // no staging left
    assert.ok(
      logs.some((l) => /sha256 .*using it anyway, as asked/.test(l)),
      'stand-in archive has another sha256: warned',
    );
    // second time: the extracted folder is used (archive gone proves no re-extraction)
    fs.rmSync(path.join(shared, 'cifar10-jpeg.tar.xz'));
    const again = await loadDataset('cifar10', { dataDir, split: 'test', searchDirs: [shared] });
    assert.equal(again.name, CIFAR10_JPEG_NAME);
    assert.equal(again.split, 'test');
    assert.equal(again.count, 5);
    // A run loads both splits from the same place and says where once.
    const splitLogs: string[] = [];
    await loadSplits('cifar10', { dataDir, log: (l) => void splitLogs.push(l) });
    assert.equal(splitLogs.filter((l) => l.startsWith('CIFAR-10 (JPEG copy): image folder')).length, 1, splitLogs.join('\n'));
    // the folder given by path gets the same name
    const byPath = await loadDataset(path.join(dataDir, 'cifar10-jpeg'), { split: 'test' });
    assert.equal(byPath.name, 'CIFAR-10 (JPEG copy)');
    // nothing anywhere and no download: clear error
    await rejectsData(loadDataset('cifar10', { dataDir: tmp('none'), split: 'test', searchDirs: [] }), /CIFAR-10 not found: .*cifar10-jpeg\.tar\.xz/);
  });

  test('a generic image folder path', async () => {
    const root = path.join(tmp('g'), 'pets');
    makeImageFolder(root);
    const ds = await loadDataset(root, { split: 'test', imageFolder: { cache: false } });
    assert.equal(ds.name, 'pets');
    assert.equal(ds.count, 5);
    assert.equal(fs.existsSync(path.join(root, '.kshare-cache')), false);
  });
});
