// Dataset entry point: loadDataset('cifar10' | 'cifar100' | <folder>, { split, dataDir, download }).
//
// 'cifar10' is looked for, in order, in dataDir, ./data and ../shared/data (each relative to
// the working directory, then to the package root): the official binary or python folder,
// then a `cifar10-jpeg/` image folder, then a `cifar10-jpeg.tar.xz` (extracted once with the
// system `tar -xJf` into dataDir or ./data); finally the official download when allowed.
// 'cifar100': the official binary or python folder, or the download.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar';
import { DataError, type ImageDataset, type ProgressFn, type Split } from './types.js';
import { CIFAR_LAYOUT, findCifar, readCifar, type CifarKind } from './cifar.js';
import { downloadCifar, unsafeMemberReason, type DownloadOptions } from './download.js';
import { readImageFolder, type ImageFolderOptions } from './imagefolder.js';

export * from './types.js';
export * from './cifar.js';
export * from './download.js';
export * from './imagefolder.js';
export * from './decode.js';
export { DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, maxImagePixels, setMaxImagePixels } from './image-header.js';
export { readPickle, NDArray, DType, PickleTuple, PickleGlobal, type PickleValue } from './pickle.js';

/** The name every report must use for the lossy JPEG copy of CIFAR-10. */
export const CIFAR10_JPEG_NAME = 'CIFAR-10 (JPEG copy)';
/** Folder and archive names of the JPEG copy. */
export const CIFAR10_JPEG_FOLDER = 'cifar10-jpeg';
export const CIFAR10_JPEG_ARCHIVE = 'cifar10-jpeg.tar.xz';
/** sha256 of ../shared/data/cifar10-jpeg.tar.xz as published in its README. */
export const CIFAR10_JPEG_SHA256 = 'e8ef80f7c864a7b587c1931ff2fdde8057ab18616cc0635807350b4bca30b436';

export const DATASET_SPECS = ['cifar10', 'cifar100'] as const;

export interface LoadOptions {
  /** Where datasets live / get extracted or downloaded (default ./data). */
  dataDir?: string;
  split: Split;
  /** Allow downloading the official archive when nothing local is found (default false). */
  download?: boolean;
  onProgress?: ProgressFn;
  /** One-line notes: where data was found, extraction, cache rebuilds. */
  log?: (msg: string) => void;
  /** Folders searched after dataDir (default ./data and ../shared/data, from the working directory and the package root). */
  searchDirs?: string[];
  /** Passed to downloadCifar (URL/MD5/size overrides, progress bar). */
  downloadOptions?: Omit<DownloadOptions, 'onProgress'>;
  /** Use the JPEG copy's archive even when its SHA-256 is not the published one (default false). */
  allowChecksumMismatch?: boolean;
  /** Passed to readImageFolder (resize, cache, workers). */
  imageFolder?: Omit<ImageFolderOptions, 'onProgress' | 'name'>;
}

function packageRoot(): string | null {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const pj = path.join(dir, 'package.json');
    if (existsSync(pj)) return dir;
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return null;
}

function defaultSearchDirs(): string[] {
  const rel = ['data', path.join('..', 'shared', 'data')];
  const out = rel.map((r) => path.resolve(r));
  const root = packageRoot();
  if (root) for (const r of rel) out.push(path.resolve(root, r));
  return out;
}

function uniq(xs: string[]): string[] {
  const seen = new Set<string>();
  return xs.filter((x) => (seen.has(x) ? false : (seen.add(x), true)));
}

function normalizeSpec(spec: string): string {
  return spec.trim().toLowerCase().replace(/[-_ ]/g, '');
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isDirectory();
  } catch {
    return false;
  }
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Entries (files and folders) of cifar10-jpeg.tar.xz, for extraction progress. */
const CIFAR10_JPEG_ENTRIES = 60023;

/**
 * Extracts `cifar10-jpeg.tar.xz` into `<destDir>/cifar10-jpeg` (through a staging folder, so the
 * folder appears complete or not at all). The archive named like the published copy must match
 * its SHA-256 unless `allowChecksumMismatch`; every member must be a regular file or folder
 * with a name inside the target (links, devices, `..` and absolute names refuse the archive, as
 * for the CIFAR download). `xz` decompresses, node-tar unpacks. Returns the folder.
 */
export async function extractJpegCopy(archive: string, destDir: string, log: (m: string) => void = () => {}, o: { allowChecksumMismatch?: boolean; onProgress?: ProgressFn } = {}): Promise<string> {
  const final = path.join(destDir, CIFAR10_JPEG_FOLDER);
  if ((await isDir(path.join(final, 'train'))) && (await isDir(path.join(final, 'test')))) return final;
  if (path.basename(archive) === CIFAR10_JPEG_ARCHIVE) {
    const sum = await sha256File(archive);
    if (sum !== CIFAR10_JPEG_SHA256) {
      if (!o.allowChecksumMismatch) {
        throw new DataError(`${archive}: SHA-256 is ${sum}, the published copy's is ${CIFAR10_JPEG_SHA256}: the file is damaged or not that copy; fetch it again, or pass --allow-checksum-mismatch to use it anyway`, { file: archive });
      }
      log(`warning: ${archive} has sha256 ${sum}, expected ${CIFAR10_JPEG_SHA256} (using it anyway, as asked)`);
    }
  }
  await fsp.mkdir(destDir, { recursive: true });
  const staging = await fsp.mkdtemp(path.join(destDir, '.kshare-extract-'));
  log(`extracting ${archive} into ${destDir}`);
  try {
    const problems: string[] = [];
    let entries = 0;
    const xz = spawn('xz', ['-dc', '--', path.resolve(archive)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let xzErr = '';
    xz.stderr.on('data', (d: Buffer) => { xzErr += d.toString(); });
    const exited = new Promise<number>((resolve, reject) => {
      xz.on('error', reject);
      xz.on('close', (code) => resolve(code ?? 1));
    });
    try {
      await pipeline(xz.stdout, tar.x({
        cwd: staging, strict: true, preservePaths: false, preserveOwner: false,
        filter: (p, e) => {
          const entry = e as tar.ReadEntry;
          // Progress counts members as node-tar reads them (extraction takes a minute or more).
          o.onProgress?.(Math.min(++entries, CIFAR10_JPEG_ENTRIES), CIFAR10_JPEG_ENTRIES, 'extract');
          const why = unsafeMemberReason(p);
          if (why) problems.push(`unsafe member '${p}' (${why})`);
          else if (entry.type === 'SymbolicLink' || entry.type === 'Link') problems.push(`member '${p}' is a ${entry.type === 'Link' ? 'hard' : 'symbolic'} link${entry.linkpath ? ` to '${entry.linkpath}'` : ''} (links are not allowed)`);
          else if (!['File', 'OldFile', 'ContiguousFile', 'Directory'].includes(entry.type)) problems.push(`member '${p}' has type ${entry.type} (only files and folders are allowed)`);
          else return problems.length === 0;
          return false;
        },
      }));
      const code = await exited;
      if (code !== 0) throw new Error(`xz exited with code ${code}: ${xzErr.trim()}`);
    } catch (e) {
      xz.kill();
      const err = e as NodeJS.ErrnoException;
      throw new DataError(`${archive}: extraction failed (${err.code === 'ENOENT' && err.syscall?.startsWith('spawn') ? "the 'xz' program is not installed (apt-get install xz-utils)" : err.message})`, { file: archive, cause: e });
    }
    if (problems.length) {
      const more = problems.length > 5 ? ` and ${problems.length - 5} more` : '';
      throw new DataError(`${archive}: refusing to use this archive: ${problems.slice(0, 5).join('; ')}${more}`, { file: archive });
    }
    const got = path.join(staging, CIFAR10_JPEG_FOLDER);
    for (const s of ['train', 'test'])
      if (!(await isDir(path.join(got, s)))) throw new DataError(`${archive}: archive has no ${CIFAR10_JPEG_FOLDER}/${s}/ folder`, { file: archive });
    try {
      await fsp.rename(got, final);
    } catch (e) {
      // Someone else finished first: use theirs.
      if (!(await isDir(path.join(final, 'train')))) throw new DataError(`${final}: cannot move the extracted folder into place (${(e as Error).message})`, { file: final, cause: e });
    }
  } finally {
    await fsp.rm(staging, { recursive: true, force: true });
  }
  return final;
}

async function loadCifar(kind: CifarKind, opts: LoadOptions): Promise<ImageDataset> {
  const log = opts.log ?? (() => {});
  const primary = path.resolve(opts.dataDir ?? 'data');
  const dirs = uniq([...(opts.dataDir ? [primary] : []), ...(opts.searchDirs ? opts.searchDirs.map((d) => path.resolve(d)) : defaultSearchDirs())]);
  const readOpts = opts.onProgress ? { onProgress: opts.onProgress } : {};
  const folderOpts: ImageFolderOptions = { ...(opts.imageFolder ?? {}), name: CIFAR10_JPEG_NAME, ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) };
  if (!folderOpts.onWarning) folderOpts.onWarning = log;

  for (const dir of dirs) {
    const found = await findCifar(kind, dir);
    if (found) {
      log(`${CIFAR_LAYOUT[kind].binary.title}: ${found.format} data in ${found.dir}`);
      try {
        return await readCifar(kind, found.dir, opts.split, readOpts);
      } catch (e) {
        // An incomplete official folder where a download would go: download it again when allowed.
        const ours = found.format === 'binary' && path.resolve(found.dir) === path.join(primary, CIFAR_LAYOUT[kind].binary.folder);
        if (!(e instanceof DataError) || !opts.download || !ours) throw e;
        log(`${(e as Error).message}; downloading again`);
        const dl = await downloadCifar(kind, primary, { ...(opts.downloadOptions ?? {}), ...(opts.onProgress ? { onProgress: opts.onProgress } : {}), log });
        return readCifar(kind, dl.dir, opts.split, readOpts);
      }
    }
    if (kind === 'cifar10') {
      const jpeg = path.join(dir, CIFAR10_JPEG_FOLDER);
      if (await isDir(path.join(jpeg, opts.split))) {
        log(`${CIFAR10_JPEG_NAME}: image folder ${jpeg}`);
        return readImageFolder(jpeg, opts.split, folderOpts);
      }
    }
  }
  if (kind === 'cifar10') {
    for (const dir of dirs) {
      const archive = path.join(dir, CIFAR10_JPEG_ARCHIVE);
      if (existsSync(archive)) {
        const folder = await extractJpegCopy(archive, primary, log, { allowChecksumMismatch: opts.allowChecksumMismatch, onProgress: opts.onProgress });
        log(`${CIFAR10_JPEG_NAME}: image folder ${folder}`);
        return readImageFolder(folder, opts.split, folderOpts);
      }
    }
  }
  const lay = CIFAR_LAYOUT[kind].binary;
  if (opts.download) {
    const dl = await downloadCifar(kind, primary, { ...(opts.downloadOptions ?? {}), ...(opts.onProgress ? { onProgress: opts.onProgress } : {}), log });
    return readCifar(kind, dl.dir, opts.split, readOpts);
  }
  throw new DataError(
    `${lay.title} not found: looked for ${lay.folder}/ or ${CIFAR_LAYOUT[kind].python.folder}/` +
      (kind === 'cifar10' ? `, ${CIFAR10_JPEG_FOLDER}/ or ${CIFAR10_JPEG_ARCHIVE}` : '') +
      ` in ${dirs.join(', ')}; allow downloading (download: true) or put the official files in ${primary}`,
  );
}

/**
 * Loads a dataset split. `spec` is 'cifar10', 'cifar100' (also 'CIFAR-10', 'cifar_100'...), or
 * the path of a folder: an official CIFAR folder (or its parent) or an image folder
 * `<root>/<split>/<class>/*.png|jpg|jpeg`.
 */
export async function loadDataset(spec: string, opts: LoadOptions): Promise<ImageDataset> {
  if (opts.split !== 'train' && opts.split !== 'test') throw new DataError(`unknown split '${String(opts.split)}': expected 'train' or 'test'`);
  const norm = normalizeSpec(spec);
  if (norm === 'cifar10') return loadCifar('cifar10', opts);
  if (norm === 'cifar100') return loadCifar('cifar100', opts);

  const looksLikePath = /[\\/]/.test(spec) || spec.startsWith('.') || existsSync(spec);
  if (!looksLikePath)
    throw new DataError(`unknown dataset '${spec}': expected one of ${DATASET_SPECS.map((s) => `'${s}'`).join(', ')} or the path of an image folder (<root>/<split>/<class>/*.png|jpg|jpeg)`);
  const root = path.resolve(spec);
  if (!(await isDir(root))) throw new DataError(`${root}: dataset folder not found`, { file: root });
  const readOpts = opts.onProgress ? { onProgress: opts.onProgress } : {};
  for (const kind of ['cifar10', 'cifar100'] as const) {
    const found = await findCifar(kind, root);
    if (found) return readCifar(kind, found.dir, opts.split, readOpts);
  }
  const isJpegCopy = path.basename(root) === CIFAR10_JPEG_FOLDER;
  return readImageFolder(root, opts.split, {
    ...(opts.imageFolder ?? {}),
    ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
    ...(isJpegCopy ? { name: CIFAR10_JPEG_NAME } : {}),
    ...(opts.log && !opts.imageFolder?.onWarning ? { onWarning: opts.log } : {}),
  });
}
