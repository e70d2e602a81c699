// Download + verify + safely extract the official CIFAR binary archives.
//
// Flow: (1) nothing to do when the extracted folder already holds the required files;
// (2) reuse `<dataDir>/<archive>` when its size and MD5 match, else stream the URL to a temp
// file (MD5 computed on the fly), check size and MD5, then rename it into place atomically;
// (3) list the archive and refuse it if any member is unexpected, escapes the target (absolute,
// `..`), or is a link/device; (4) extract only the expected members into a staging folder
// inside dataDir and rename the dataset folder into place, so a half-extracted folder is never
// mistaken for a complete one.

import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fsp } from 'node:fs';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as NodeReadableStream } from 'node:stream/web';
import * as tar from 'tar';
import cliProgress from 'cli-progress';
import { DataError, type ProgressFn } from './types.js';
import { CIFAR_LAYOUT, type CifarKind } from './cifar.js';

export interface CifarSource {
  url: string;
  /** File name of the archive inside dataDir. */
  archive: string;
  md5: string;
  size: number;
  /** Top folder of the archive (= the extracted dataset folder). */
  folder: string;
  /** Member files that must be in the archive (paths relative to the archive root). */
  required: string[];
  /** Member files that may be in the archive and are extracted too. */
  optional: string[];
}

export const CIFAR_SOURCES: Record<CifarKind, CifarSource> = {
  cifar10: {
    url: 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
    archive: 'cifar-10-binary.tar.gz',
    md5: 'c32a1d4ab5d03f1284b67883e8d87530',
    size: 170_052_171,
    folder: CIFAR_LAYOUT.cifar10.binary.folder,
    required: [...CIFAR_LAYOUT.cifar10.binary.files.train, ...CIFAR_LAYOUT.cifar10.binary.files.test, ...CIFAR_LAYOUT.cifar10.binary.meta].map(
      (f) => `${CIFAR_LAYOUT.cifar10.binary.folder}/${f}`,
    ),
    optional: [`${CIFAR_LAYOUT.cifar10.binary.folder}/readme.html`],
  },
  cifar100: {
    url: 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz',
    archive: 'cifar-100-binary.tar.gz',
    md5: '03b5dce01913d631647c71ecec9e9cb8',
    size: 168_513_733,
    folder: CIFAR_LAYOUT.cifar100.binary.folder,
    required: [...CIFAR_LAYOUT.cifar100.binary.files.train, ...CIFAR_LAYOUT.cifar100.binary.files.test, ...CIFAR_LAYOUT.cifar100.binary.meta].map(
      (f) => `${CIFAR_LAYOUT.cifar100.binary.folder}/${f}`,
    ),
    optional: [`${CIFAR_LAYOUT.cifar100.binary.folder}/readme.html`],
  },
};

export interface DownloadOptions {
  /** Override the source URL (tests serve a small archive from 127.0.0.1). */
  url?: string;
  /** Override the expected MD5 (hex). */
  md5?: string;
  /** Override the expected size in bytes; null = don't check the size. */
  size?: number | null;
  /** Called with (bytesDone, bytesTotal) while downloading; total is 0 when unknown. */
  onProgress?: ProgressFn;
  /** Draw a cli-progress bar on stderr (default true; it only draws on a TTY). */
  progressBar?: boolean;
  /** Keep the .tar.gz after extraction (default true, so a re-extraction needs no download). */
  keepArchive?: boolean;
  /** Download and extract again even when the folder looks complete. */
  force?: boolean;
  signal?: AbortSignal;
  /** One-line status messages (default: none). */
  log?: (msg: string) => void;
}

export interface DownloadResult {
  /** The extracted dataset folder, e.g. `<dataDir>/cifar-10-batches-bin`. */
  dir: string;
  /** The archive path (may have been deleted when keepArchive is false). */
  archive: string;
  downloaded: boolean;
  extracted: boolean;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch {
    return false;
  }
}

async function isRegularFile(p: string): Promise<boolean> {
  try {
    return (await fsp.lstat(p)).isFile();
  } catch {
    return false;
  }
}

/** MD5 (hex) of a file. */
export async function md5File(file: string): Promise<string> {
  const h = createHash('md5');
  await pipeline(createReadStream(file), async (src: AsyncIterable<Buffer>) => {
    for await (const chunk of src) h.update(chunk);
  });
  return h.digest('hex');
}

/**
 * Downloads, verifies and extracts the official CIFAR-10 or CIFAR-100 binary archive into
 * `dataDir`, returning the dataset folder. Idempotent: a complete folder or a verified archive
 * already in dataDir is reused.
 */
export async function downloadCifar(kind: CifarKind, dataDir: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
  const src = CIFAR_SOURCES[kind];
  if (!src) throw new DataError(`unknown CIFAR dataset '${String(kind)}': expected 'cifar10' or 'cifar100'`);
  const log = opts.log ?? (() => {});
  const md5 = (opts.md5 ?? src.md5).toLowerCase();
  const size = opts.size === undefined ? src.size : opts.size;
  const url = opts.url ?? src.url;
  await fsp.mkdir(dataDir, { recursive: true });
  const dir = path.join(dataDir, src.folder);
  const archive = path.join(dataDir, src.archive);

  if (!opts.force && (await folderComplete(dataDir, src))) return { dir, archive, downloaded: false, extracted: false };

  let downloaded = false;
  if (!opts.force && (await isRegularFile(archive)) && (size === null || (await fsp.stat(archive)).size === size) && (await md5File(archive)) === md5) {
    log(`using ${archive} (MD5 ok)`);
  } else {
    log(`downloading ${url}`);
    await downloadFile(url, archive, { ...opts, md5, size });
    downloaded = true;
  }
  await extractCifarArchive(kind, archive, dataDir, { log });
  if (opts.keepArchive === false) await fsp.rm(archive, { force: true });
  return { dir, archive, downloaded, extracted: true };
}

async function folderComplete(dataDir: string, src: CifarSource): Promise<boolean> {
  for (const m of src.required) if (!(await isRegularFile(path.join(dataDir, m)))) return false;
  return true;
}

/**
 * Streams `url` into `dest` through a temp file in the same folder, verifying size and MD5
 * before the atomic rename. Mismatch → DataError naming expected and actual values.
 */
export async function downloadFile(
  url: string,
  dest: string,
  opts: { md5?: string | null; size?: number | null; onProgress?: ProgressFn; progressBar?: boolean; signal?: AbortSignal } = {},
): Promise<void> {
  const name = path.basename(dest);
  let res: Response;
  try {
    res = await fetch(url, opts.signal ? { signal: opts.signal } : {});
  } catch (e) {
    const why = (e as Error & { cause?: Error }).cause?.message ?? (e as Error).message;
    throw new DataError(`${name}: download from ${url} failed (${why}); without network access, put the extracted dataset folder in ${path.dirname(dest)} by hand`, {
      file: dest,
      cause: e,
    });
  }
  if (!res.ok || !res.body) {
    throw new DataError(`${name}: download from ${url} failed: HTTP ${res.status} ${res.statusText}`, { file: dest });
  }
  const header = Number(res.headers.get('content-length') ?? NaN);
  const total = Number.isFinite(header) && header > 0 ? header : (opts.size ?? 0);
  if (opts.size != null && Number.isFinite(header) && header > 0 && header !== opts.size) {
    await res.body.cancel().catch(() => {});
    throw new DataError(`${name}: server at ${url} announces ${header} bytes, expected ${opts.size}`, { file: dest });
  }

  const bar =
    opts.progressBar !== false
      ? new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format: `${name} [{bar}] {percentage}% | {done}/{all} MB | ETA {eta_formatted}`,
            hideCursor: true,
            clearOnComplete: false,
          },
          cliProgress.Presets.shades_classic,
        )
      : null;
  const mb = (b: number) => (b / 1e6).toFixed(1);
  bar?.start(total || 1, 0, { done: mb(0), all: total ? mb(total) : '?' });

  const tmp = `${dest}.part-${process.pid}-${randomBytes(4).toString('hex')}`;
  const hash = createHash('md5');
  let bytes = 0;
  let lastReport = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      bytes += chunk.length;
      const now = Date.now();
      if (now - lastReport > 100) {
        lastReport = now;
        opts.onProgress?.(bytes, total, 'download');
        bar?.update(total ? Math.min(bytes, total) : 0, { done: mb(bytes), all: total ? mb(total) : '?' });
      }
      cb(null, chunk);
    },
  });
  try {
    await pipeline(Readable.fromWeb(res.body as unknown as NodeReadableStream<Uint8Array>), meter, createWriteStream(tmp, { flags: 'wx' }));
    opts.onProgress?.(bytes, total || bytes, 'download');
    bar?.update(total ? Math.min(bytes, total) : 0, { done: mb(bytes), all: total ? mb(total) : mb(bytes) });
    bar?.stop();
    if (opts.size != null && bytes !== opts.size) throw new DataError(`${name}: downloaded ${bytes} bytes from ${url}, expected ${opts.size} (incomplete download?)`, { file: dest });
    const got = hash.digest('hex');
    if (opts.md5 && got !== opts.md5.toLowerCase())
      throw new DataError(`${name}: MD5 mismatch for ${url}: expected ${opts.md5.toLowerCase()}, got ${got}`, { file: dest });
    await fsp.rename(tmp, dest);
  } catch (e) {
    bar?.stop();
    await fsp.rm(tmp, { force: true }).catch(() => {});
    if (e instanceof DataError) throw e;
    throw new DataError(`${name}: download from ${url} failed after ${bytes} bytes (${(e as Error).message})`, { file: dest, cause: e });
  }
}

/** Why a member name is unsafe, or null if it stays inside the target folder. */
export function unsafeMemberReason(p: string): string | null {
  if (p.length === 0) return 'empty name';
  if (p.includes('\0')) return 'NUL in name';
  if (p.startsWith('/') || p.startsWith('\\') || /^[a-zA-Z]:/.test(p)) return 'absolute path';
  if (p.includes('\\')) return 'backslash in name';
  if (p.split('/').some((s) => s === '..')) return "'..' in path";
  return null;
}

function normalizeMember(p: string): string {
  let s = p;
  while (s.startsWith('./')) s = s.slice(2);
  while (s.endsWith('/')) s = s.slice(0, -1);
  return s;
}

export interface ArchiveSpec {
  /** Files that must be present (normalized member paths). */
  required: string[];
  /** Files that may be present. */
  optional?: string[];
}

/**
 * Extracts a .tar / .tar.gz whose members must all be expected files or their parent folders.
 * Any unexpected member, any name escaping `dest` (absolute, `..`), or any link/device member
 * makes it throw DataError before anything is written. Returns the extracted member files.
 */
export async function safeExtract(archive: string, dest: string, spec: ArchiveSpec): Promise<string[]> {
  const name = path.basename(archive);
  const files = new Set([...spec.required, ...(spec.optional ?? [])]);
  const dirs = new Set<string>();
  for (const f of files) {
    const parts = f.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  const seen = new Set<string>();
  const problems: string[] = [];
  try {
    await tar.t({
      file: archive,
      strict: true,
      onReadEntry: (e) => {
        const raw = e.path;
        const why = unsafeMemberReason(raw);
        const norm = normalizeMember(raw);
        if (why) problems.push(`unsafe member '${raw}' (${why})`);
        else if (e.type === 'SymbolicLink' || e.type === 'Link')
          problems.push(`member '${raw}' is a ${e.type === 'Link' ? 'hard' : 'symbolic'} link${e.linkpath ? ` to '${e.linkpath}'` : ''} (links are not allowed)`);
        else if (e.type === 'Directory') {
          if (!dirs.has(norm)) problems.push(`unexpected folder '${raw}'`);
        } else if (e.type === 'File' || e.type === 'OldFile' || e.type === 'ContiguousFile') {
          if (!files.has(norm)) problems.push(`unexpected member '${raw}'`);
          else if (seen.has(norm)) problems.push(`duplicate member '${raw}'`);
          seen.add(norm);
        } else problems.push(`member '${raw}' has type ${e.type} (only files and folders are allowed)`);
        e.resume();
      },
    });
  } catch (e) {
    throw new DataError(`${name}: not a readable tar archive (${(e as Error).message})`, { file: archive, cause: e });
  }
  if (problems.length) {
    const more = problems.length > 5 ? ` and ${problems.length - 5} more` : '';
    throw new DataError(`${name}: refusing to extract: ${problems.slice(0, 5).join('; ')}${more}`, { file: archive });
  }
  const missing = spec.required.filter((f) => !seen.has(f));
  if (missing.length) throw new DataError(`${name}: archive lacks ${missing.join(', ')}`, { file: archive });

  await fsp.mkdir(dest, { recursive: true });
  const written: string[] = [];
  try {
    await tar.x({
      file: archive,
      cwd: dest,
      strict: true,
      preservePaths: false,
      preserveOwner: false,
      unlink: true,
      filter: (p, e) => {
        const entry = e as tar.ReadEntry;
        const norm = normalizeMember(p);
        const ok =
          unsafeMemberReason(p) === null &&
          ((entry.type === 'Directory' && dirs.has(norm)) || ((entry.type === 'File' || entry.type === 'OldFile' || entry.type === 'ContiguousFile') && files.has(norm)));
        if (ok && entry.type !== 'Directory') written.push(norm);
        return ok;
      },
    });
  } catch (e) {
    throw new DataError(`${name}: extraction failed (${(e as Error).message})`, { file: archive, cause: e });
  }
  // Double check: every required file landed as a regular file inside dest.
  for (const f of spec.required) {
    const p = path.join(dest, f);
    if (!(await isRegularFile(p))) throw new DataError(`${name}: ${f} was not extracted as a regular file`, { file: archive });
  }
  return written;
}

/** Safe extraction of an official CIFAR archive into `<dataDir>/<folder>` via a staging folder. */
export async function extractCifarArchive(kind: CifarKind, archive: string, dataDir: string, opts: { log?: (msg: string) => void } = {}): Promise<string> {
  const src = CIFAR_SOURCES[kind];
  const final = path.join(dataDir, src.folder);
  const staging = await fsp.mkdtemp(path.join(dataDir, '.kshare-extract-'));
  try {
    await safeExtract(archive, staging, { required: src.required, optional: src.optional });
    if (await exists(final)) {
      // An incomplete or old folder: keep it aside rather than deleting anyone's files.
      const aside = `${final}.old-${Date.now()}`;
      await fsp.rename(final, aside);
      opts.log?.(`moved the existing ${final} aside to ${aside}`);
    }
    await fsp.rename(path.join(staging, src.folder), final);
  } finally {
    await fsp.rm(staging, { recursive: true, force: true });
  }
  return final;
}
