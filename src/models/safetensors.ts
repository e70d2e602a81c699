// The safetensors file format (8-byte little-endian header length, JSON header, raw data),
// for any dtype kshare uses. Files are written atomically; reading validates the header
// against the file size before allocating anything.
import { openSync, closeSync, fstatSync, readSync, writeSync, fsyncSync, renameSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import * as t from '../tensor/index.js';
import type { Tensor, DType } from '../tensor/index.js';

const TO_FILE: Record<DType, string> = {
  float32: 'F32',
  float16: 'F16',
  bfloat16: 'BF16',
  float64: 'F64',
  int64: 'I64',
  int32: 'I32',
  uint8: 'U8',
  bool: 'BOOL',
};
const FROM_FILE: Record<string, DType> = Object.fromEntries(Object.entries(TO_FILE).map(([k, v]) => [v, k as DType]));
/**
 * Header bounds. The reference implementation allows 100 MB, but parsing that much JSON costs
 * tens of seconds and gigabytes; a kshare checkpoint of a large model with a long history has
 * a few hundred kilobytes of header and a few thousand tensors. Entries are counted in the raw
 * bytes before the JSON is parsed, so an oversized file fails in milliseconds.
 */
export const MAX_HEADER_BYTES = 16 * 1024 * 1024;
export const MAX_ENTRIES = 65_536;
export const MAX_METADATA_KEYS = 1024;

const OFFSETS_KEY = Buffer.from('"data_offsets"');

export interface SafetensorsEntry {
  dtype: DType;
  shape: number[];
  /** Byte range in the data section (after the header). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  entries: Map<string, SafetensorsEntry>;
  metadata: Record<string, string>;
  /** File offset where the data section starts. */
  dataStart: number;
}

export class SafetensorsError extends Error {}

/** Writes `path` + a temporary name, syncs it, then renames it over `path`. */
export function writeFileAtomic(file: string, chunks: Uint8Array[]): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'w');
  try {
    try {
      for (const c of chunks) {
        let off = 0;
        while (off < c.byteLength) off += writeSync(fd, c, off, c.byteLength - off);
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      /* already gone */
    }
    throw e;
  }
}

/** Saves tensors (any device, layout or supported dtype) and string metadata to a .safetensors file. */
export function saveSafetensors(file: string, tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): void {
  const header: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw new TypeError(`saveSafetensors: metadata '${k}' must be a string, got ${typeof v}`);
  }
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const data: Uint8Array[] = [];
  let offset = 0;
  for (const [name, x] of tensors) {
    if (name === '__metadata__' || name === '') throw new Error(`saveSafetensors: '${name}' cannot be a tensor name`);
    if (x.isDisposed) throw new Error(`saveSafetensors: tensor '${name}' was disposed`);
    const dtype = TO_FILE[x.dtype];
    if (!dtype) throw new Error(`saveSafetensors: tensor '${name}' has unsupported dtype ${x.dtype}`);
    const view = x.dataSync();
    const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
    header[name] = { dtype, shape: x.shape, data_offsets: [offset, offset + bytes.byteLength] };
    data.push(bytes);
    offset += bytes.byteLength;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  const pad = (8 - (json.byteLength % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.byteLength));
  writeFileAtomic(file, [len, json, ...data]);
}

function fail(file: string, msg: string): never {
  throw new SafetensorsError(`${file}: not a valid safetensors file: ${msg}`);
}

function readExactly(fd: number, buf: Uint8Array, position: number): number {
  let got = 0;
  while (got < buf.byteLength) {
    const n = readSync(fd, buf, got, buf.byteLength - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}

function parseHeader(file: string, fd: number): SafetensorsHeader {
  const size = fstatSync(fd).size;
  if (size < 8) fail(file, `the file has ${size} bytes, fewer than the 8-byte header length`);
  const lenBuf = Buffer.alloc(8);
  readExactly(fd, lenBuf, 0);
  const n = lenBuf.readBigUInt64LE();
  if (n > BigInt(size - 8)) fail(file, `the header claims ${n} bytes but the file holds ${size - 8} after the length field (truncated?)`);
  if (n > BigInt(MAX_HEADER_BYTES)) fail(file, `header of ${n} bytes exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (n < 2n) fail(file, `header length ${n} is too small for a JSON object`);
  const hdrLen = Number(n);
  const hdr = Buffer.alloc(hdrLen);
  readExactly(fd, hdr, 8);
  // Every tensor entry has a "data_offsets" key; escaped inside a string it would not match.
  let count = 0;
  for (let at = hdr.indexOf(OFFSETS_KEY); at !== -1; at = hdr.indexOf(OFFSETS_KEY, at + OFFSETS_KEY.length)) {
    if (++count > MAX_ENTRIES) fail(file, `the header lists more than ${MAX_ENTRIES} tensors, more than any kshare model has`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(hdr.toString('utf8'));
  } catch (e) {
    fail(file, `the header is not valid JSON (${(e as Error).message})`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) fail(file, 'the header is not a JSON object');
  const dataStart = 8 + hdrLen;
  const dataLen = size - dataStart;
  const metadata: Record<string, string> = {};
  const entries: [string, SafetensorsEntry][] = [];
  for (const [name, raw] of Object.entries(parsed as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (!raw || typeof raw !== 'object' || Array.isArray(raw)) fail(file, '__metadata__ must be an object of strings');
      if (Object.keys(raw).length > MAX_METADATA_KEYS)
        fail(file, `__metadata__ has ${Object.keys(raw).length} keys, more than the ${MAX_METADATA_KEYS} allowed`);
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(file, `metadata '${k}' is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (!e || typeof e !== 'object') fail(file, `entry '${name}' is not an object`);
    const dtype = typeof e.dtype === 'string' ? FROM_FILE[e.dtype] : undefined;
    if (!dtype) fail(file, `tensor '${name}' has unsupported dtype ${JSON.stringify(e.dtype)} (supported: ${Object.keys(FROM_FILE).join(', ')})`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      fail(file, `tensor '${name}' has a bad shape ${JSON.stringify(e.shape)}`);
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1]) {
      fail(file, `tensor '${name}' has bad data_offsets ${JSON.stringify(off)}`);
    }
    const [begin, end] = off as [number, number];
    if (end > dataLen) fail(file, `tensor '${name}' ends at byte ${end} of the data section, which holds ${dataLen} bytes (truncated?)`);
    // Multiply step by step against the byte count, so a huge shape cannot overflow the check.
    let bytes = t.elementBytes(dtype);
    for (const d of e.shape as number[]) {
      bytes *= d;
      if (bytes > end - begin) break;
    }
    if (bytes !== end - begin)
      fail(file, `tensor '${name}' of shape [${e.shape}] and dtype ${dtype} needs a different byte count than its offsets give (${end - begin})`);
    entries.push([name, { dtype, shape: e.shape as number[], begin, end }]);
  }
  entries.sort((a, b) => a[1].begin - b[1].begin || a[1].end - b[1].end);
  let cursor = 0;
  for (const [name, e] of entries) {
    if (e.begin !== cursor) fail(file, e.begin < cursor ? `tensor '${name}' overlaps the previous one` : `there is a gap before tensor '${name}'`);
    cursor = e.end;
  }
  if (cursor !== dataLen) fail(file, `the data section has ${dataLen} bytes but the tensors cover ${cursor}`);
  return { entries: new Map(entries), metadata, dataStart };
}

/** Reads and validates only the header (no tensor data). */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  const fd = openSync(file, 'r');
  try {
    return parseHeader(file, fd);
  } finally {
    closeSync(fd);
  }
}

/** Loads every tensor of a .safetensors file onto the CPU, in file order, with its metadata. */
export function loadSafetensors(file: string): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  const fd = openSync(file, 'r');
  try {
    const h = parseHeader(file, fd);
    const last = [...h.entries.values()].reduce((m, e) => Math.max(m, e.end), 0);
    const data = Buffer.alloc(last);
    if (readExactly(fd, data, h.dataStart) !== last) fail(file, 'the file changed while being read');
    const tensors = new Map<string, Tensor>();
    try {
      for (const [name, e] of h.entries) {
        tensors.set(name, t.tensor(data.subarray(e.begin, e.end), e.shape, { dtype: e.dtype }));
      }
    } catch (err) {
      t.dispose([...tensors.values()]);
      throw err;
    }
    return { tensors, metadata: h.metadata };
  } finally {
    closeSync(fd);
  }
}
