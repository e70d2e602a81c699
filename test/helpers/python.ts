// Runs the PyTorch reference (Debian's python3-torch, importable by /usr/bin/python3 only)
// for parity tests. Data crosses as JSON with float arrays base64-encoded (see encode/decode).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Tensor } from '../../src/tensor/index.js';

export const PYTHON = process.env.KSHARE_TORCH_PYTHON ?? '/usr/bin/python3';
/** test/fixtures, where the Python reference code lives (works from test/ and dist/test/). */
export const FIXTURES = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const p of [path.resolve(here, '../fixtures'), path.resolve(here, '../../../test/fixtures')]) if (existsSync(p)) return p;
  throw new Error('test/fixtures not found');
})();

/** Python prelude available to every script: helpers to move arrays in and out. */
const PRELUDE = `
import sys, json, base64, numpy as np, torch
sys.path.insert(0, ${JSON.stringify(FIXTURES)})
torch.set_num_threads(1)
def dec(o):
    a = np.frombuffer(base64.b64decode(o['b64']), dtype=o.get('dtype','float32')).reshape(o['shape'])
    return torch.from_numpy(a.copy())
def enc(t):
    t = t.detach().cpu().contiguous()
    return {'shape': list(t.shape), 'dtype': str(t.numpy().dtype), 'b64': base64.b64encode(t.numpy().tobytes()).decode()}
inp = json.loads(sys.stdin.read())
`;

/** Runs `script` (which reads `inp` and must print one JSON object) and returns its output. */
export function runPython<T = Record<string, unknown>>(script: string, input: unknown = {}): T {
  const r = spawnSync(PYTHON, ['-c', PRELUDE + script], { input: JSON.stringify(input), encoding: 'utf8', maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`python reference failed (${r.status}):\n${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as T;
}

export interface Encoded {
  shape: number[];
  dtype: string;
  b64: string;
}

export function encode(data: Float32Array | Int32Array | BigInt64Array | Uint8Array, shape: number[]): Encoded {
  const dtype = data instanceof Float32Array ? 'float32' : data instanceof Int32Array ? 'int32' : data instanceof BigInt64Array ? 'int64' : 'uint8';
  return { shape, dtype, b64: Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64') };
}

/** A tensor's values for the reference: int64 as int64, everything else as float32. */
export function encodeTensor(x: Tensor): Encoded {
  if (x.dtype === 'int64') return encode(x.dataSync() as BigInt64Array, x.shape);
  return encode(x.toFloat32Array(), x.shape);
}

/** encodeTensor over an object of named tensors. */
export function encodeTensors<T extends { [K in keyof T]: Tensor }>(tensors: T): Record<string, Encoded> {
  return Object.fromEntries(Object.entries<Tensor>(tensors).map(([k, v]) => [k, encodeTensor(v)]));
}

export function decodeF32(e: Encoded): Float32Array {
  if (e.dtype !== 'float32') throw new Error(`decodeF32: got ${e.dtype}`);
  const b = Buffer.from(e.b64, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

/** max |a-b| / max(|b|, tiny) over elements: relative error against the reference. */
export function maxRelError(a: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (a.length !== ref.length) throw new Error(`length ${a.length} != ${ref.length}`);
  let scale = 0,
    err = 0;
  for (let i = 0; i < ref.length; i++) {
    scale = Math.max(scale, Math.abs(ref[i]!));
    err = Math.max(err, Math.abs(a[i]! - ref[i]!));
  }
  return err / Math.max(scale, 1e-12);
}
