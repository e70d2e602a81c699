// Plain data types shared by the dataset readers. No tensor library here: images are raw
// uint8 CHW bytes exactly like the official CIFAR binary; a later layer makes tensors.

export type Split = 'train' | 'test';

export interface ImageDataset {
  /** Human-readable dataset name used in reports, e.g. "CIFAR-10" or "CIFAR-10 (JPEG copy)". */
  name: string;
  split: Split;
  /** N x C x H x W, uint8, channel-major per image (CHW), like the official CIFAR binary. */
  images: Uint8Array;
  /** N labels in [0, classes.length). For CIFAR-100 these are the fine labels. */
  labels: Int32Array;
  /** CIFAR-100 only: N coarse (superclass) labels in [0, coarseClasses.length). */
  coarseLabels?: Int32Array;
  classes: string[];
  coarseClasses?: string[];
  count: number;
  channels: number;
  height: number;
  width: number;
  /** Where the data was read from (folder or file), for logs and reports. */
  source?: string;
}

/** Progress report: `done` out of `total` units (bytes or images); `total` is 0 when unknown. */
export type ProgressFn = (done: number, total: number, stage?: string) => void;

/** Every problem with data on disk or in transit: message names the file and the problem. */
export class DataError extends Error {
  /** The file or folder concerned, when there is one. */
  readonly file?: string;
  constructor(message: string, options?: { file?: string; cause?: unknown }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'DataError';
    if (options?.file !== undefined) this.file = options.file;
  }
}

/** Checks that a dataset's arrays agree with its declared shape (cheap; used by every reader). */
export function checkDataset(ds: ImageDataset): ImageDataset {
  const per = ds.channels * ds.height * ds.width;
  if (ds.images.length !== ds.count * per)
    throw new DataError(`${ds.name}: images hold ${ds.images.length} bytes, expected ${ds.count} x ${ds.channels}x${ds.height}x${ds.width}`);
  if (ds.labels.length !== ds.count) throw new DataError(`${ds.name}: ${ds.labels.length} labels for ${ds.count} images`);
  if (ds.coarseLabels && ds.coarseLabels.length !== ds.count)
    throw new DataError(`${ds.name}: ${ds.coarseLabels.length} coarse labels for ${ds.count} images`);
  return ds;
}
