// Small files that claim to be big or broken: PNGs whose header promises more pixels than
// their data holds, safetensors headers with huge entry counts, forged checkpoints. Tests (and
// the measurements in issue 10) write these; each is a few kilobytes on disk.
import zlib from 'node:zlib';
import { writeFileSync } from 'node:fs';

function chunk(type: string, data: Uint8Array): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(body) >>> 0);
  return Buffer.concat([len, body, crc]);
}

/**
 * A PNG whose IHDR says width x height (8-bit RGB, or RGBA with `alpha`) but whose data holds
 * only `rows` rows (all of them when rows is undefined: then it is a valid image). `truncate`
 * cuts the file to that many bytes (no IEND).
 */
export function pngClaiming(width: number, height: number, o: { rows?: number; alpha?: boolean; truncate?: number; fill?: number } = {}): Buffer {
  const ch = o.alpha ? 4 : 3;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = o.alpha ? 6 : 2;
  const rows = o.rows ?? height;
  const stride = 1 + ch * width;
  const raw = Buffer.alloc(rows * stride, o.fill ?? 0x80);
  for (let r = 0; r < rows; r++) raw[r * stride] = 0; // filter type None
  const file = Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', new Uint8Array(0)),
  ]);
  return o.truncate === undefined ? file : file.subarray(0, o.truncate);
}

/** A safetensors file of `n` zero-size F32 entries (the header is what costs). */
export function writeManyEntrySafetensors(file: string, n: number): number {
  const parts: string[] = [];
  for (let i = 0; i < n; i++) parts.push(`"t${i}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`);
  const json = Buffer.from(`{${parts.join(',')}}`);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json]));
  return json.length;
}

/** A safetensors file from a header object (tensors' bytes are zeros, laid out in order). */
export function writeRawSafetensors(file: string, tensors: Record<string, { dtype: string; shape: number[] }>, metadata: Record<string, string>): void {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let off = 0;
  for (const [k, v] of Object.entries(tensors)) {
    const bytes = v.shape.reduce((a, b) => a * b, 1) * ({ F32: 4, I64: 8, U8: 1 } as Record<string, number>)[v.dtype]!;
    header[k] = { ...v, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json, Buffer.alloc(off)]));
}
