// Readers for the official CIFAR-10 / CIFAR-100 distributions (https://www.cs.toronto.edu/~kriz/cifar.html):
// the "binary version" (fixed-size records) and the "python version" (pickled dicts).
//
// Binary records: CIFAR-10 = 1 label byte + 3072 pixel bytes; CIFAR-100 = 1 coarse byte +
// 1 fine byte + 3072 pixel bytes. Pixels are 1024 R, 1024 G, 1024 B, rows of 32: that is CHW,
// which is exactly the layout of ImageDataset.images, so records are copied as they are.

import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { DataError, checkDataset, type ImageDataset, type ProgressFn, type Split } from './types.js';
import { NDArray, pickleDict, pickleIntList, pickleStringList, readPickle } from './pickle.js';

export type CifarKind = 'cifar10' | 'cifar100';
export type CifarFormat = 'binary' | 'python';

export const CIFAR10_CLASSES: readonly string[] = Object.freeze([
  'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck',
]);

export const CIFAR100_CLASSES: readonly string[] = Object.freeze(
  ('apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can ' +
    'castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin ' +
    'elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster ' +
    'man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck ' +
    'pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk ' +
    'skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger ' +
    'tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm').split(' '),
);

export const CIFAR100_COARSE_CLASSES: readonly string[] = Object.freeze(
  ('aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices ' +
    'household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes ' +
    'large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees ' +
    'vehicles_1 vehicles_2').split(' '),
);

const PIXELS = 3 * 32 * 32;

interface Layout {
  title: string; // "CIFAR-10"
  folder: string; // extracted folder name
  files: Record<Split, string[]>;
}

/** Official folder and file names, per dataset and format. */
export const CIFAR_LAYOUT: Record<CifarKind, Record<CifarFormat, Layout & { meta: string[] }>> = {
  cifar10: {
    binary: {
      title: 'CIFAR-10',
      folder: 'cifar-10-batches-bin',
      files: { train: [1, 2, 3, 4, 5].map((i) => `data_batch_${i}.bin`), test: ['test_batch.bin'] },
      meta: ['batches.meta.txt'],
    },
    python: {
      title: 'CIFAR-10',
      folder: 'cifar-10-batches-py',
      files: { train: [1, 2, 3, 4, 5].map((i) => `data_batch_${i}`), test: ['test_batch'] },
      meta: ['batches.meta'],
    },
  },
  cifar100: {
    binary: {
      title: 'CIFAR-100',
      folder: 'cifar-100-binary',
      files: { train: ['train.bin'], test: ['test.bin'] },
      meta: ['fine_label_names.txt', 'coarse_label_names.txt'],
    },
    python: {
      title: 'CIFAR-100',
      folder: 'cifar-100-python',
      files: { train: ['train'], test: ['test'] },
      meta: ['meta'],
    },
  },
};

async function isDir(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isDirectory();
  } catch {
    return false;
  }
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isFile();
  } catch {
    return false;
  }
}

/**
 * Finds an official CIFAR folder given either the extracted folder itself or its parent
 * (e.g. `data/` or `data/cifar-10-batches-bin/`). Returns null when there is none.
 * Prefers the binary format over the python one when both are present.
 */
export async function findCifar(kind: CifarKind, dir: string, formats: CifarFormat[] = ['binary', 'python']): Promise<{ dir: string; format: CifarFormat } | null> {
  for (const format of formats) {
    const lay = CIFAR_LAYOUT[kind][format];
    const sub = path.join(dir, lay.folder);
    if (await isDir(sub)) return { dir: sub, format };
    if (path.basename(path.resolve(dir)) === lay.folder && (await isDir(dir))) return { dir, format };
    // A folder with a different name holding the official files directly.
    const markers = [...lay.files.train, ...lay.files.test, ...lay.meta];
    for (const m of markers) if (await isFile(path.join(dir, m))) return { dir, format };
  }
  return null;
}

async function resolveFolder(kind: CifarKind, format: CifarFormat, dir: string): Promise<string> {
  const found = await findCifar(kind, dir, [format]);
  if (!found) {
    const lay = CIFAR_LAYOUT[kind][format];
    throw new DataError(
      `${dir}: no ${lay.title} ${format} data here (expected ${path.join(dir, lay.folder)}/ or the files ${[...lay.files.train, ...lay.files.test].join(', ')} in this folder)`,
      { file: dir },
    );
  }
  return found.dir;
}

/** Reads a names file (one name per line, blank lines ignored); null if the file is missing. */
async function readNames(file: string, expected: number): Promise<string[] | null> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new DataError(`${file}: cannot read (${(e as Error).message})`, { file, cause: e });
  }
  const names = text.split(/\r?\n/).map((s) => s.trim()).filter((s) => s.length > 0);
  if (names.length !== expected) throw new DataError(`${file}: has ${names.length} class names, expected ${expected}`, { file });
  return names;
}

/** Stats every file first so that a missing or malformed one fails before anything is read. */
async function statRecords(files: string[], record: number, title: string): Promise<number[]> {
  const counts: number[] = [];
  for (const f of files) {
    let size: number;
    try {
      const st = await fsp.stat(f);
      if (!st.isFile()) throw new DataError(`${f}: is not a regular file`, { file: f });
      size = st.size;
    } catch (e) {
      if (e instanceof DataError) throw e;
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new DataError(`${f}: missing ${title} file`, { file: f, cause: e });
      throw new DataError(`${f}: cannot read (${(e as Error).message})`, { file: f, cause: e });
    }
    if (size === 0) throw new DataError(`${f}: file is empty`, { file: f });
    if (size % record !== 0)
      throw new DataError(
        `${path.basename(f)}: size ${size} is not a multiple of the ${record}-byte ${title} record (truncated or not a ${title} binary file) [${f}]`,
        { file: f },
      );
    counts.push(size / record);
  }
  return counts;
}

export interface CifarReadOptions {
  onProgress?: ProgressFn;
}

/** Reads CIFAR-10 binary (`cifar-10-batches-bin`), given that folder or its parent. */
export async function readCifar10Binary(dir: string, split: Split, opts: CifarReadOptions = {}): Promise<ImageDataset> {
  return readBinary('cifar10', dir, split, opts);
}

/** Reads CIFAR-100 binary (`cifar-100-binary`), given that folder or its parent. */
export async function readCifar100Binary(dir: string, split: Split, opts: CifarReadOptions = {}): Promise<ImageDataset> {
  return readBinary('cifar100', dir, split, opts);
}

async function readBinary(kind: CifarKind, dir: string, split: Split, opts: CifarReadOptions): Promise<ImageDataset> {
  checkSplit(split);
  const lay = CIFAR_LAYOUT[kind].binary;
  const folder = await resolveFolder(kind, 'binary', dir);
  const fine = kind === 'cifar100';
  const labelBytes = fine ? 2 : 1;
  const record = labelBytes + PIXELS;
  const title = lay.title;
  const files = lay.files[split].map((f) => path.join(folder, f));
  const counts = await statRecords(files, record, title);
  const total = counts.reduce((a, b) => a + b, 0);

  let classes: string[];
  let coarseClasses: string[] | undefined;
  if (fine) {
    classes = (await readNames(path.join(folder, 'fine_label_names.txt'), 100)) ?? [...CIFAR100_CLASSES];
    coarseClasses = (await readNames(path.join(folder, 'coarse_label_names.txt'), 20)) ?? [...CIFAR100_COARSE_CLASSES];
  } else {
    classes = (await readNames(path.join(folder, 'batches.meta.txt'), 10)) ?? [...CIFAR10_CLASSES];
  }
  const nFine = classes.length;
  const nCoarse = coarseClasses?.length ?? 0;

  const images = new Uint8Array(total * PIXELS);
  const labels = new Int32Array(total);
  const coarseLabels = fine ? new Int32Array(total) : undefined;
  let n = 0;
  for (let fi = 0; fi < files.length; fi++) {
    const f = files[fi]!;
    const buf = await fsp.readFile(f);
    const cnt = counts[fi]!;
    if (buf.length !== cnt * record) throw new DataError(`${f}: file changed while reading (size ${buf.length})`, { file: f });
    for (let r = 0; r < cnt; r++) {
      const o = r * record;
      if (fine) {
        const c = buf[o]!;
        const l = buf[o + 1]!;
        if (c >= nCoarse) throw new DataError(`${path.basename(f)}: record ${r} has coarse label ${c}, expected 0..${nCoarse - 1} [${f}]`, { file: f });
        if (l >= nFine) throw new DataError(`${path.basename(f)}: record ${r} has fine label ${l}, expected 0..${nFine - 1} [${f}]`, { file: f });
        coarseLabels![n] = c;
        labels[n] = l;
      } else {
        const l = buf[o]!;
        if (l >= nFine) throw new DataError(`${path.basename(f)}: record ${r} has label ${l}, expected 0..${nFine - 1} [${f}]`, { file: f });
        labels[n] = l;
      }
      images.set(buf.subarray(o + labelBytes, o + record), n * PIXELS);
      n++;
    }
    opts.onProgress?.(n, total, 'read');
  }
  const ds: ImageDataset = {
    name: title, split, images, labels, classes, count: total, channels: 3, height: 32, width: 32, source: folder,
  };
  if (coarseLabels) {
    ds.coarseLabels = coarseLabels;
    ds.coarseClasses = coarseClasses!;
  }
  return checkDataset(ds);
}

function checkSplit(split: string): asserts split is Split {
  if (split !== 'train' && split !== 'test') throw new DataError(`unknown split '${split}': expected 'train' or 'test'`);
}

async function readPickleFile(f: string, title: string) {
  let buf: Buffer;
  try {
    buf = await fsp.readFile(f);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new DataError(`${f}: missing ${title} file`, { file: f, cause: e });
    throw new DataError(`${f}: cannot read (${(e as Error).message})`, { file: f, cause: e });
  }
  return pickleDict(readPickle(buf, f), f);
}

/** Reads the official python (pickle) version: `cifar-10-batches-py` or `cifar-100-python`. */
export async function readCifarPython(kind: CifarKind, dir: string, split: Split, opts: CifarReadOptions = {}): Promise<ImageDataset> {
  checkSplit(split);
  const lay = CIFAR_LAYOUT[kind].python;
  const folder = await resolveFolder(kind, 'python', dir);
  const fine = kind === 'cifar100';
  const title = lay.title;

  // Meta: label names. Optional like the binary text files (the official names are built in).
  let classes: string[] = fine ? [...CIFAR100_CLASSES] : [...CIFAR10_CLASSES];
  let coarseClasses: string[] | undefined = fine ? [...CIFAR100_COARSE_CLASSES] : undefined;
  const metaFile = path.join(folder, lay.meta[0]!);
  if (await isFile(metaFile)) {
    const meta = await readPickleFile(metaFile, title);
    if (fine) {
      classes = pickleStringList(meta.get('fine_label_names'), metaFile, 'fine_label_names');
      coarseClasses = pickleStringList(meta.get('coarse_label_names'), metaFile, 'coarse_label_names');
      if (classes.length !== 100) throw new DataError(`${metaFile}: has ${classes.length} fine label names, expected 100`, { file: metaFile });
      if (coarseClasses.length !== 20) throw new DataError(`${metaFile}: has ${coarseClasses.length} coarse label names, expected 20`, { file: metaFile });
    } else {
      classes = pickleStringList(meta.get('label_names'), metaFile, 'label_names');
      if (classes.length !== 10) throw new DataError(`${metaFile}: has ${classes.length} label names, expected 10`, { file: metaFile });
    }
  }

  const files = lay.files[split].map((f) => path.join(folder, f));
  for (const f of files) if (!(await isFile(f))) throw new DataError(`${f}: missing ${title} file`, { file: f });
  const parts: { data: Uint8Array; labels: Int32Array; coarse?: Int32Array }[] = [];
  let total = 0;
  for (const f of files) {
    const d = await readPickleFile(f, title);
    const arr = d.get('data');
    if (!(arr instanceof NDArray)) throw new DataError(`${f}: 'data' is missing or not a numpy array`, { file: f });
    if (arr.dtype?.descr !== 'u1' && arr.dtype?.descr !== '|u1')
      throw new DataError(`${f}: 'data' has dtype ${arr.dtype?.descr ?? '?'}, expected uint8`, { file: f });
    if (arr.shape.length !== 2 || arr.shape[1] !== PIXELS)
      throw new DataError(`${f}: 'data' has shape (${arr.shape.join(', ')}), expected (N, ${PIXELS})`, { file: f });
    if (arr.fortran) throw new DataError(`${f}: 'data' is in Fortran order, expected C order`, { file: f });
    const n = arr.shape[0]!;
    if (arr.data.length !== n * PIXELS) throw new DataError(`${f}: 'data' holds ${arr.data.length} bytes, expected ${n * PIXELS} (truncated?)`, { file: f });
    const labels = pickleIntList(d.get(fine ? 'fine_labels' : 'labels'), f, fine ? 'fine_labels' : 'labels');
    if (labels.length !== n) throw new DataError(`${f}: ${labels.length} labels for ${n} images`, { file: f });
    checkRange(labels, classes.length, f, fine ? 'fine label' : 'label');
    let coarse: Int32Array | undefined;
    if (fine) {
      coarse = pickleIntList(d.get('coarse_labels'), f, 'coarse_labels');
      if (coarse.length !== n) throw new DataError(`${f}: ${coarse.length} coarse labels for ${n} images`, { file: f });
      checkRange(coarse, coarseClasses!.length, f, 'coarse label');
    }
    parts.push({ data: arr.data, labels, ...(coarse ? { coarse } : {}) });
    total += n;
    opts.onProgress?.(total, 0, 'read');
  }
  const images = new Uint8Array(total * PIXELS);
  const labels = new Int32Array(total);
  const coarseLabels = fine ? new Int32Array(total) : undefined;
  let n = 0;
  for (const p of parts) {
    images.set(p.data, n * PIXELS);
    labels.set(p.labels, n);
    if (coarseLabels && p.coarse) coarseLabels.set(p.coarse, n);
    n += p.labels.length;
  }
  const ds: ImageDataset = { name: title, split, images, labels, classes, count: total, channels: 3, height: 32, width: 32, source: folder };
  if (coarseLabels) {
    ds.coarseLabels = coarseLabels;
    ds.coarseClasses = coarseClasses!;
  }
  return checkDataset(ds);
}

function checkRange(labels: Int32Array, n: number, file: string, what: string): void {
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i]!;
    if (l < 0 || l >= n) throw new DataError(`${path.basename(file)}: record ${i} has ${what} ${l}, expected 0..${n - 1} [${file}]`, { file });
  }
}

/** Reads CIFAR-10 in whichever official format `dir` (the folder or its parent) holds; binary preferred. */
export async function readCifar(kind: CifarKind, dir: string, split: Split, opts: CifarReadOptions = {}): Promise<ImageDataset> {
  const found = await findCifar(kind, dir);
  if (!found) {
    const b = CIFAR_LAYOUT[kind].binary;
    const p = CIFAR_LAYOUT[kind].python;
    throw new DataError(`${dir}: no ${b.title} data here (expected ${b.folder}/ or ${p.folder}/)`, { file: dir });
  }
  return found.format === 'binary' ? readBinary(kind, found.dir, split, opts) : readCifarPython(kind, found.dir, split, opts);
}
