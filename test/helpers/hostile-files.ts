// Small files that claim to be big or broken: PNGs whose header promises more pixels than
// their data holds, safetensors headers with huge entry counts, forged checkpoints. Tests (and
// the measurements in issue 10) write these; each is a few kilobytes on disk.
import zlib from 'node:zlib';
import { readFileSync, writeFileSync } from 'node:fs';

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
export function pngClaiming(
  width: number,
  height: number,
  o: { rows?: number; alpha?: boolean; truncate?: number; fill?: number; interlace?: boolean } = {},
): Buffer {
  const ch = o.alpha ? 4 : 3;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = o.alpha ? 6 : 2;
  ihdr[12] = o.interlace ? 1 : 0;
  // Row widths: one pass of `height` rows, or Adam7's seven passes.
  const passes = o.interlace
    ? [
        [0, 0, 8, 8],
        [4, 0, 8, 8],
        [0, 4, 4, 8],
        [2, 0, 4, 4],
        [0, 2, 2, 4],
        [1, 0, 2, 2],
        [0, 1, 1, 2],
      ].map(([x0, y0, dx, dy]) => [Math.ceil((width - x0!) / dx!), Math.ceil((height - y0!) / dy!)] as const)
    : [[width, height] as const];
  const rowWidths = passes.filter(([w, h]) => w > 0 && h > 0).flatMap(([w, h]) => Array<number>(h).fill(w));
  const rows = rowWidths.slice(0, o.rows ?? rowWidths.length);
  const raw = Buffer.alloc(
    rows.reduce((a, w) => a + 1 + ch * w, 0),
    o.fill ?? 0x80,
  );
  for (let r = 0, at = 0; r < rows.length; at += 1 + ch * rows[r]!, r++) raw[at] = 0; // filter type None
  const file = Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', new Uint8Array(0)),
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

/** Copies a safetensors file with its metadata (and optionally header entries) changed by `edit`. */
export function rewriteHeader(src: string, dst: string, edit: (header: Record<string, unknown>) => void): void {
  const buf = readFileSync(src);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  edit(header);
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(dst, Buffer.concat([len, json, buf.subarray(8 + n)]));
}

/** Copies a kshare checkpoint with its JSON record changed by `edit`. */
export function rewriteCheckpointMeta(src: string, dst: string, edit: (meta: Record<string, unknown>) => void): void {
  rewriteHeader(src, dst, (h) => {
    const md = h.__metadata__ as Record<string, string>;
    const meta = JSON.parse(md['kshare.checkpoint']!) as Record<string, unknown>;
    edit(meta);
    md['kshare.checkpoint'] = JSON.stringify(meta);
  });
}
