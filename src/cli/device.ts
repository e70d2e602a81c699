// The --device flag of every command: checked before any data loads or any folder is made.
import * as t from '../tensor/index.js';
import type { Device } from '../tensor/index.js';

/** commander argument parser: 'cpu', 'cuda' or 'cuda:N', else an error naming the value. */
export function parseDevice(value: string): Device {
  if (value === 'cpu' || value === 'cuda' || /^cuda:\d+$/.test(value)) return value as Device;
  throw new Error(`unknown device '${value}' (cpu, cuda, cuda:N)`);
}

/** Throws a short explanation when `device` is a GPU this libtorch build cannot use. */
export function requireDevice(device: string): Device {
  const d = parseDevice(device);
  if (d === 'cpu') return d;
  const info = t.runtimeInfo();
  if (!info.cudaAvailable) {
    throw new Error(
      `--device ${d}: this libtorch (${info.torchVersion}) has no CUDA support, so kshare runs on the CPU only (--device cpu).\n` +
        'To use a GPU, build the addon against a CUDA libtorch: see docs/gpu.md',
    );
  }
  const index = d === 'cuda' ? 0 : Number(d.slice(5));
  if (index >= info.cudaDeviceCount)
    throw new Error(
      `--device ${d}: this machine has ${info.cudaDeviceCount} CUDA device(s) (cuda:0${info.cudaDeviceCount > 1 ? `..cuda:${info.cudaDeviceCount - 1}` : ''})`,
    );
  return d;
}
