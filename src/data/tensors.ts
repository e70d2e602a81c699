// An ImageDataset as tensors on the training device: the uint8 images stay there for the whole
// run and each batch is an index_select from them, so no pixel crosses the host boundary per
// step (on a GPU the data never leaves it).
import * as t from '../tensor/index.js';
import type { Tensor, Device, Generator } from '../tensor/index.js';
import type { ImageDataset } from './types.js';

export interface DeviceDataset {
  /** uint8 (N, C, H, W) on the device. */
  images: Tensor;
  /** int64 (N) on the device. */
  labels: Tensor;
  count: number;
  channels: number;
  height: number;
  width: number;
  classes: string[];
  /** The dataset's report name, e.g. "CIFAR-10 (JPEG copy)". */
  name: string;
  split: string;
  dispose(): void;
}

/** Copies a dataset to the device once (about 150 MB for CIFAR's 50,000 training images). */
export function toDevice(ds: ImageDataset, device: Device = 'cpu'): DeviceDataset {
  if (ds.count < 1) throw new Error(`${ds.name} (${ds.split}): the dataset is empty`);
  const per = ds.channels * ds.height * ds.width;
  if (ds.images.length !== ds.count * per) throw new Error(`${ds.name} (${ds.split}): ${ds.images.length} image bytes for ${ds.count} images of ${ds.channels}x${ds.height}x${ds.width}`);
  if (ds.labels.length !== ds.count) throw new Error(`${ds.name} (${ds.split}): ${ds.labels.length} labels for ${ds.count} images`);
  const classes = ds.classes.length;
  for (let i = 0; i < ds.count; i++) {
    const l = ds.labels[i]!;
    if (l < 0 || l >= classes) throw new Error(`${ds.name} (${ds.split}): label ${l} of image ${i} is outside [0, ${classes})`);
  }
  const images = t.keep(t.tensor(ds.images, [ds.count, ds.channels, ds.height, ds.width], { dtype: 'uint8', device }));
  const labels = t.keep(t.tidy(() => t.tensor(ds.labels, [ds.count], { dtype: 'int32' }).to({ dtype: 'int64', device })));
  return {
    images, labels, count: ds.count, channels: ds.channels, height: ds.height, width: ds.width,
    classes: ds.classes.slice(), name: ds.name, split: ds.split,
    dispose() { images.dispose(); labels.dispose(); },
  };
}

/**
 * The first `perClass` images of every class, in dataset order (a class-balanced subset for
 * quick runs). Classes with fewer images contribute what they have.
 */
export function balancedSubset(ds: ImageDataset, perClass: number): ImageDataset {
  if (!Number.isInteger(perClass) || perClass < 1) throw new RangeError(`balancedSubset: perClass must be a positive integer, got ${perClass}`);
  const taken = new Array<number>(ds.classes.length).fill(0);
  const pick: number[] = [];
  for (let i = 0; i < ds.count; i++) {
    const l = ds.labels[i]!;
    if (taken[l]! < perClass) { taken[l]!++; pick.push(i); }
  }
  const per = ds.channels * ds.height * ds.width;
  const images = new Uint8Array(pick.length * per);
  const labels = new Int32Array(pick.length);
  pick.forEach((src, j) => {
    images.set(ds.images.subarray(src * per, (src + 1) * per), j * per);
    labels[j] = ds.labels[src]!;
  });
  return { ...ds, images, labels, count: pick.length, coarseLabels: undefined };
}

/** A random order of 0..n-1 for one epoch, drawn from `generator` (its state is checkpointed). */
export function epochOrder(n: number, generator: Generator, device: Device = 'cpu'): Tensor {
  return t.tidy(() => t.randperm(n, { generator }).to(device));
}

/** Number of batches per epoch: the last partial batch is dropped for training (drop_last). */
export function batchCount(n: number, batchSize: number, dropLast: boolean): number {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batch size must be a positive integer, got ${batchSize}`);
  return dropLast ? Math.floor(n / batchSize) : Math.ceil(n / batchSize);
}

/** Batch `b` of an epoch: uint8 images (B, C, H, W) and int64 labels (B), on the dataset's device. */
export function takeBatch(ds: DeviceDataset, order: Tensor, b: number, batchSize: number): { images: Tensor; labels: Tensor } {
  const start = b * batchSize;
  const end = Math.min(start + batchSize, order.dim(0));
  if (start >= end) throw new RangeError(`takeBatch: batch ${b} is past the end of an epoch of ${order.dim(0)} images`);
  return t.tidy(() => {
    const idx = t.slice(order, 0, start, end);
    return { images: t.indexSelect(ds.images, 0, idx), labels: t.indexSelect(ds.labels, 0, idx) };
  });
}

/** Consecutive batch `b` in dataset order (evaluation). */
export function sequentialBatch(ds: DeviceDataset, b: number, batchSize: number): { images: Tensor; labels: Tensor } {
  const start = b * batchSize;
  const end = Math.min(start + batchSize, ds.count);
  if (start >= end) throw new RangeError(`sequentialBatch: batch ${b} is past the end of ${ds.count} images`);
  return { images: t.slice(ds.images, 0, start, end), labels: t.slice(ds.labels, 0, start, end) };
}
