// torchvision-ImageFolder-like reader: `<root>/<split>/<class>/**/*.png|jpg|jpeg`.
//
// Classes are the sorted subfolder names of `<root>/<split>` (label = index in that order),
// files are taken in sorted order (like torchvision's sorted os.walk), images are decoded to
// CHW uint8 RGB. The decoded split is cached in `<root>/.kshare-cache/<split>.u8`:
//
//   "KSHRIMG\0" | uint32 LE header length | JSON header (space-padded to 8 bytes) |
//   int32 LE labels[count] | uint8 images[count*c*h*w]
//
// The header holds magic, version, count, c, h, w, classes, a fingerprint of the file list
// (relative names + sizes + mtimes + resize option) and a CRC32 of the payload. A cache whose
// fingerprint differs (folder changed) or that fails any check (corrupt) is ignored and rebuilt.
// It is written to a temp file and renamed into place.

import { constants as bufferConstants } from 'node:buffer';
import { randomBytes, createHash } from 'node:crypto';
import { existsSync, promises as fsp, readFileSync, statSync, type Stats } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import zlib from 'node:zlib';
import { DataError, checkDataset, type ImageDataset, type ProgressFn, type Split } from './types.js';
import { IMAGE_EXTENSIONS, decodeToTarget, type ResizeSpec } from './decode.js';
import type { DecodeReply, DecodeRequest } from './decode-worker.js';

export interface ImageFolderOptions {
  /** Resize every image to this size (number = square). Without it all images must share one size. */
  resize?: ResizeSpec | number | [height: number, width: number];
  /** Use and write the decoded cache (default true). */
  cache?: boolean;
  /** Folder for the cache file (default `<root>/.kshare-cache`). */
  cacheDir?: string;
  /** Progress: (done, total, stage) with stage 'scan' | 'decode' | 'cache'. */
  onProgress?: ProgressFn;
  /** Decoder worker threads (default: CPU count for large folders, 0 = decode on the main thread). */
  workers?: number;
  /** Dataset name for reports (default: the root folder's name). */
  name?: string;
  /** Non-fatal notes (cache rebuilt, cache not writable...). */
  onWarning?: (msg: string) => void;
}

export interface ImageFile {
  /** Absolute path. */
  path: string;
  /** Path relative to `<root>/<split>`, with '/' separators (used in messages). */
  rel: string;
  label: number;
  size: number;
  mtimeMs: number;
}

const CACHE_MAGIC = 'KSHRIMG\0';
const CACHE_VERSION = 1;
const HEADER_MAGIC = 'kshare-imagefolder-cache';

function normResize(r: ImageFolderOptions['resize']): ResizeSpec | undefined {
  if (r === undefined) return undefined;
  const spec: ResizeSpec = typeof r === 'number' ? { height: r, width: r } : Array.isArray(r) ? { height: r[0], width: r[1] } : r;
  if (!(Number.isInteger(spec.height) && spec.height > 0 && Number.isInteger(spec.width) && spec.width > 0))
    throw new DataError(`resize: expected positive integer height and width, got ${JSON.stringify(r)}`);
  if (spec.mode !== undefined && spec.mode !== 'nearest' && spec.mode !== 'bilinear')
    throw new DataError(`resize: mode must be 'nearest' or 'bilinear', got '${String(spec.mode)}'`);
  return { height: spec.height, width: spec.width, mode: spec.mode ?? 'bilinear' };
}

const byCodePoint = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

async function statOrNull(p: string) {
  try {
    return await fsp.stat(p);
  } catch {
    return null;
  }
}

/** Lists classes and image files of `<root>/<split>` (no decoding). */
export async function scanImageFolder(root: string, split: Split): Promise<{ dir: string; classes: string[]; files: ImageFile[] }> {
  const dir = path.resolve(root, split);
  const st = await statOrNull(dir);
  if (!st || !st.isDirectory()) throw new DataError(`${dir}: image folder split '${split}' not found (expected <root>/${split}/<class>/*.png|jpg|jpeg)`, { file: dir });
  const entries = await fsp.readdir(dir, { withFileTypes: true });
  const classes: string[] = [];
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    if (e.isDirectory() || (e.isSymbolicLink() && (await statOrNull(path.join(dir, e.name)))?.isDirectory())) classes.push(e.name);
  }
  classes.sort(byCodePoint);
  if (classes.length === 0) throw new DataError(`${dir}: no class folders (expected ${dir}/<class>/*.png|jpg|jpeg)`, { file: dir });

  const files: ImageFile[] = [];
  for (let label = 0; label < classes.length; label++) {
    const cls = classes[label]!;
    const found: { path: string; rel: string }[] = [];
    await walk(path.join(dir, cls), cls, found, 0);
    if (found.length === 0) throw new DataError(`${path.join(dir, cls)}: class folder '${cls}' has no .png/.jpg/.jpeg images`, { file: path.join(dir, cls) });
    // Sizes + mtimes feed the cache fingerprint. statSync: ~3x faster than fs.promises.stat
    // for tens of thousands of small files.
    for (const f of found) {
      let st: Stats;
      try {
        st = statSync(f.path);
      } catch (e) {
        throw new DataError(`${f.path}: cannot read (${(e as Error).message})`, { file: f.path, cause: e });
      }
      files.push({ path: f.path, rel: f.rel, label, size: st.size, mtimeMs: st.mtimeMs });
    }
  }
  return { dir, classes, files };
}

/** Files of a folder in sorted order, then its subfolders (sorted), like sorted(os.walk()). */
async function walk(dir: string, rel: string, out: { path: string; rel: string }[], depth: number): Promise<void> {
  if (depth > 32) throw new DataError(`${dir}: folders nested too deep (symlink loop?)`, { file: dir });
  const entries = (await fsp.readdir(dir, { withFileTypes: true })).filter((e) => !e.name.startsWith('.'));
  entries.sort((a, b) => byCodePoint(a.name, b.name));
  const subdirs: string[] = [];
  for (const e of entries) {
    const p = path.join(dir, e.name);
    let isDir = e.isDirectory();
    let isFile = e.isFile();
    if (e.isSymbolicLink()) {
      const s = await statOrNull(p);
      isDir = !!s?.isDirectory();
      isFile = !!s?.isFile();
    }
    if (isFile && IMAGE_EXTENSIONS.includes(path.extname(e.name).toLowerCase())) out.push({ path: p, rel: `${rel}/${e.name}` });
    else if (isDir) subdirs.push(e.name);
  }
  for (const s of subdirs) await walk(path.join(dir, s), `${rel}/${s}`, out, depth + 1);
}

function fingerprint(classes: string[], files: ImageFile[], resize: ResizeSpec | undefined): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ v: CACHE_VERSION, classes, resize: resize ?? null }));
  for (const f of files) h.update(`\n${f.label}\t${f.rel}\t${f.size}\t${Math.round(f.mtimeMs)}`);
  return h.digest('hex');
}

interface CacheHeader {
  magic: string;
  version: number;
  split: string;
  count: number;
  c: number;
  h: number;
  w: number;
  classes: string[];
  fingerprint: string;
  crc32: number;
}

function payloadCrc(labels: Uint8Array, images: Uint8Array): number {
  return zlib.crc32(images, zlib.crc32(labels));
}

/** Reads the cache if it is valid for `fp`; returns null (and why) otherwise. */
async function readCache(file: string, fp: string, classes: string[]): Promise<{ ok: true; header: CacheHeader; labels: Int32Array; images: Uint8Array } | { ok: false; why: string }> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, 'r');
  } catch (e) {
    return { ok: false, why: (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'none' : `unreadable (${(e as Error).message})` };
  }
  try {
    const size = (await fh.stat()).size;
    // Reads exactly `len` bytes at `pos` into a fresh buffer, or null when the file is short.
    const readAt = async (len: number, pos: number): Promise<Uint8Array | null> => {
      const out = new Uint8Array(len);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await fh.read(out, got, len - got, pos + got);
        if (bytesRead === 0) return null;
        got += bytesRead;
      }
      return out;
    };
    const head = size >= 12 ? await readAt(12, 0) : null;
    if (!head || Buffer.from(head.buffer, 0, 8).toString('latin1') !== CACHE_MAGIC) return { ok: false, why: 'bad magic' };
    const hl = new DataView(head.buffer).getUint32(8, true);
    if (12 + hl > size) return { ok: false, why: 'truncated header' };
    const hb = await readAt(hl, 12);
    if (!hb) return { ok: false, why: 'truncated header' };
    let header: CacheHeader;
    try {
      header = JSON.parse(Buffer.from(hb.buffer, 0, hl).toString('utf8')) as CacheHeader;
    } catch {
      return { ok: false, why: 'unparsable header' };
    }
    if (header.magic !== HEADER_MAGIC || header.version !== CACHE_VERSION) return { ok: false, why: 'other version' };
    if (header.fingerprint !== fp) return { ok: false, why: 'folder changed' };
    if (JSON.stringify(header.classes) !== JSON.stringify(classes)) return { ok: false, why: 'classes changed' };
    const { count, c, h, w } = header;
    if (![count, c, h, w].every((x) => Number.isInteger(x) && x >= 0)) return { ok: false, why: 'bad header' };
    const off = 12 + hl;
    const need = off + count * 4 + count * c * h * w;
    if (size !== need) return { ok: false, why: `size ${size}, expected ${need}` };
    // Labels and images each get their own exact buffer (byteOffset 0), so callers may hand
    // `images.buffer` to native code without surprises.
    const labelBytes = await readAt(count * 4, off);
    const images = await readAt(count * c * h * w, off + count * 4);
    if (!labelBytes || !images) return { ok: false, why: 'truncated' };
    if (payloadCrc(labelBytes, images) !== header.crc32) return { ok: false, why: 'checksum mismatch' };
    const dv = new DataView(labelBytes.buffer);
    const labels = new Int32Array(count);
    for (let i = 0; i < count; i++) {
      const l = dv.getInt32(i * 4, true);
      if (l < 0 || l >= classes.length) return { ok: false, why: 'label out of range' };
      labels[i] = l;
    }
    return { ok: true, header, labels, images };
  } catch (e) {
    return { ok: false, why: `unreadable (${(e as Error).message})` };
  } finally {
    await fh.close();
  }
}

async function writeCache(file: string, header: Omit<CacheHeader, 'crc32' | 'magic' | 'version'>, labels: Int32Array, images: Uint8Array): Promise<void> {
  const labelBytes = Buffer.alloc(labels.length * 4);
  for (let i = 0; i < labels.length; i++) labelBytes.writeInt32LE(labels[i]!, i * 4);
  const full: CacheHeader = { magic: HEADER_MAGIC, version: CACHE_VERSION, ...header, crc32: payloadCrc(labelBytes, images) };
  let json = JSON.stringify(full);
  while ((12 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const jsonBytes = Buffer.from(json, 'utf8');
  const head = Buffer.alloc(12);
  head.write(CACHE_MAGIC, 0, 'latin1');
  head.writeUInt32LE(jsonBytes.length, 8);
  await fsp.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    const fh = await fsp.open(tmp, 'wx');
    try {
      await fh.writeFile(Buffer.concat([head, jsonBytes, labelBytes]));
      await fh.write(images);
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
  } catch (e) {
    await fsp.rm(tmp, { force: true }).catch(() => {});
    throw e;
  }
}

/** Where the cache of `<root>/<split>` lives. */
export function imageFolderCachePath(root: string, split: Split, cacheDir?: string): string {
  return path.join(cacheDir ?? path.join(path.resolve(root), '.kshare-cache'), `${split}.u8`);
}

/** Reads `<root>/<split>` as an ImageDataset (decoded once, then served from the cache). */
export async function readImageFolder(root: string, split: Split, opts: ImageFolderOptions = {}): Promise<ImageDataset> {
  if (split !== 'train' && split !== 'test') throw new DataError(`unknown split '${String(split)}': expected 'train' or 'test'`);
  const resize = normResize(opts.resize);
  const warn = opts.onWarning ?? (() => {});
  const name = opts.name ?? path.basename(path.resolve(root));
  const { dir, classes, files } = await scanImageFolder(root, split);
  opts.onProgress?.(files.length, files.length, 'scan');
  const fp = fingerprint(classes, files, resize);
  const useCache = opts.cache !== false;
  const cacheFile = imageFolderCachePath(root, split, opts.cacheDir);

  if (useCache) {
    const c = await readCache(cacheFile, fp, classes);
    if (c.ok) {
      if (c.header.count === files.length) {
        opts.onProgress?.(files.length, files.length, 'cache');
        return checkDataset({
          name, split, images: c.images, labels: c.labels, classes, count: c.header.count,
          channels: c.header.c, height: c.header.h, width: c.header.w, source: dir,
        });
      }
    } else if (c.why !== 'none') warn(`${cacheFile}: cache ignored (${c.why}); decoding ${dir} again`);
  }

  const { images, height, width } = await decodeAll(files, resize, opts);
  const labels = Int32Array.from(files, (f) => f.label);
  const ds = checkDataset({ name, split, images, labels, classes, count: files.length, channels: 3, height, width, source: dir });
  if (useCache) {
    try {
      await writeCache(cacheFile, { split, count: ds.count, c: 3, h: height, w: width, classes, fingerprint: fp }, labels, images);
    } catch (e) {
      warn(`${cacheFile}: could not write the cache (${(e as Error).message})`);
    }
  }
  return ds;
}

const BATCH = 256;
/** The decoded split lives in one Uint8Array, which Node caps at 4 GiB. */
const MAX_DECODED_BYTES = bufferConstants.MAX_LENGTH;

function workerScript(): URL | null {
  const url = new URL('./decode-worker.js', import.meta.url);
  try {
    return url.protocol === 'file:' && existsSync(fileURLToPath(url)) ? url : null;
  } catch {
    return null;
  }
}

async function decodeAll(files: ImageFile[], resize: ResizeSpec | undefined, opts: ImageFolderOptions): Promise<{ images: Uint8Array; height: number; width: number }> {
  const n = files.length;
  let H: number;
  let W: number;
  let first: Uint8Array | null = null;
  if (resize) {
    H = resize.height;
    W = resize.width;
  } else {
    // The first image fixes the size every other image must have.
    const f = files[0]!;
    const img = decodeToTarget(readImage(f), f.path);
    H = img.height;
    W = img.width;
    first = img.chw;
  }
  const per = 3 * H * W;
  // Every image is held decoded in memory: say so by name instead of failing to allocate.
  if (n * per > MAX_DECODED_BYTES) {
    throw new DataError(
      `${files[0]!.path}: ${n} images of ${W}x${H}${resize ? ' (the resize option)' : ' (the size of this first image)'} would take ${(n * per / 2 ** 30).toFixed(1)} GiB decoded, more than the ${(MAX_DECODED_BYTES / 2 ** 30).toFixed(0)} GiB one array can hold; pass a smaller resize option`,
      { file: files[0]!.path },
    );
  }
  const images = new Uint8Array(n * per);
  const place = (i: number, w: number, h: number, chw: Uint8Array): void => {
    if (w !== W || h !== H)
      throw new DataError(
        `${files[i]!.path}: size ${w}x${h} differs from ${W}x${H} (the size of ${files[0]!.path}); all images must have one size, or pass a resize option`,
        { file: files[i]!.path },
      );
    images.set(chw, i * per);
  };
  let start = 0;
  if (first) {
    place(0, W, H, first);
    start = 1;
  }
  let done = start;
  const report = () => opts.onProgress?.(done, n, 'decode');
  const auto = n - start >= 2000 ? Math.min(os.availableParallelism(), 8) : 0;
  const nWorkers = Math.max(0, Math.min(opts.workers ?? auto, Math.ceil((n - start) / BATCH)));
  const script = nWorkers > 0 ? workerScript() : null;

  if (!script) {
    for (let i = start; i < n; i += 64) {
      const chunk = files.slice(i, Math.min(n, i + 64));
      for (let j = 0; j < chunk.length; j++) {
        const img = decodeToTarget(readImage(chunk[j]!), chunk[j]!.path, resize);
        place(i + j, img.width, img.height, img.chw);
      }
      await new Promise((r) => setImmediate(r)); // let progress bars / signals run
      done = i + chunk.length;
      report();
    }
    return { images, height: H, width: W };
  }

  // Worker pool: each worker reads + decodes a batch, the main thread checks sizes and copies.
  const batches: [number, number][] = [];
  for (let i = start; i < n; i += BATCH) batches.push([i, Math.min(n, i + BATCH)]);
  const workers: Worker[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      let next = 0;
      let finished = 0;
      let failed = false;
      const fail = (e: unknown) => {
        if (!failed) {
          failed = true;
          reject(e);
        }
      };
      const send = (wk: Worker) => {
        if (failed || next >= batches.length) return;
        const id = next++;
        const [a, b] = batches[id]!;
        const req: DecodeRequest = { id, files: files.slice(a, b).map((f) => f.path), names: files.slice(a, b).map((f) => f.path), ...(resize ? { resize } : {}) };
        wk.postMessage(req);
      };
      for (let k = 0; k < nWorkers; k++) {
        const wk = new Worker(script);
        workers.push(wk);
        wk.on('message', (r: DecodeReply) => {
          if (failed) return;
          if (!r.ok) return fail(new DataError(r.message, r.file ? { file: r.file } : undefined));
          try {
            const [a, b] = batches[r.id]!;
            let o = 0;
            for (let i = a; i < b; i++) {
              const w = r.sizes[2 * (i - a)]!;
              const h = r.sizes[2 * (i - a) + 1]!;
              const len = 3 * w * h;
              place(i, w, h, r.data.subarray(o, o + len));
              o += len;
            }
            done += b - a;
            report();
          } catch (e) {
            return fail(e);
          }
          if (++finished === batches.length) resolve();
          else send(wk);
        });
        wk.on('error', (e) => fail(new DataError(`image decoder worker failed: ${e.message}`, { cause: e })));
        wk.on('exit', (code) => {
          if (code !== 0) fail(new DataError(`image decoder worker exited with code ${code}`));
        });
        send(wk);
      }
    });
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
  return { images, height: H, width: W };
}

// Sync reads: for small files they are several times faster than fs.promises.readFile.
function readImage(f: ImageFile): Buffer {
  try {
    return readFileSync(f.path);
  } catch (e) {
    throw new DataError(`${f.path}: cannot read (${(e as Error).message})`, { file: f.path, cause: e });
  }
}
