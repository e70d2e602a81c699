// What an image file claims before it is decoded: PNG/JPEG dimensions from the header, a size
// limit checked against them, and a PNG structure check (complete chunks, IEND, and exactly the
// pixel bytes the header promises), so a small file cannot make the decoder allocate gigabytes
// or hand back silently zero-filled rows.
import zlib from 'node:zlib';
import { DataError } from './types.js';

/**
 * Images with more pixels than this are refused before decoding (a 40-megapixel RGBA PNG
 * already decodes to 160 MB, plus 120 MB as CHW). Raise it with KSHARE_MAX_IMAGE_PIXELS or
 * the commands' --max-image-pixels option.
 */
export const DEFAULT_MAX_IMAGE_PIXELS = 40_000_000;
export const MAX_PIXELS_ENV = 'KSHARE_MAX_IMAGE_PIXELS';

/** The limit in force: KSHARE_MAX_IMAGE_PIXELS when set (worker threads inherit it), else the default. */
export function maxImagePixels(): number {
  const raw = process.env[MAX_PIXELS_ENV];
  if (raw === undefined || raw === '') return DEFAULT_MAX_IMAGE_PIXELS;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1) throw new DataError(`${MAX_PIXELS_ENV} must be a positive integer, got '${raw}'`);
  return n;
}

/** Sets the limit for this process and the decoder threads it starts (the --max-image-pixels option). */
export function setMaxImagePixels(n: number): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`max image pixels must be a positive integer, got ${n}`);
  process.env[MAX_PIXELS_ENV] = String(n);
}

export interface PngHeader {
  width: number;
  height: number;
  bitDepth: number;
  colorType: number;
  interlace: number;
}

const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
const PNG_DEPTHS: Record<number, number[]> = { 0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16] };

function corrupt(file: string, why: string): never {
  throw new DataError(`${file}: cannot decode PNG: the file is corrupt or truncated (${why})`, { file });
}

/** Bytes of the filtered scanlines of a width x height image (one filter byte per row). */
function scanlineBytes(w: number, h: number, channels: number, depth: number): number {
  return w > 0 && h > 0 ? h * (1 + Math.ceil((w * channels * depth) / 8)) : 0;
}

/** What inflating the IDAT data must give: per Adam7 pass for interlaced images. */
export function pngDataBytes(hd: PngHeader): number {
  const ch = PNG_CHANNELS[hd.colorType]!;
  if (hd.interlace === 0) return scanlineBytes(hd.width, hd.height, ch, hd.bitDepth);
  // Adam7: [x0, y0, dx, dy] per pass.
  const passes = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]];
  let total = 0;
  for (const [x0, y0, dx, dy] of passes) {
    total += scanlineBytes(Math.ceil((hd.width - x0!) / dx!), Math.ceil((hd.height - y0!) / dy!), ch, hd.bitDepth);
  }
  return total;
}

/** Reads the IHDR (no decoding). */
export function pngHeader(buf: Uint8Array, file: string): PngHeader {
  if (buf.length < 33) corrupt(file, `${buf.length} bytes, too short for a PNG header`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dv.getUint32(8) !== 13 || String.fromCharCode(buf[12]!, buf[13]!, buf[14]!, buf[15]!) !== 'IHDR') corrupt(file, 'the first chunk is not IHDR');
  const hd = { width: dv.getUint32(16), height: dv.getUint32(20), bitDepth: buf[24]!, colorType: buf[25]!, interlace: buf[28]! };
  if (!(hd.colorType in PNG_CHANNELS) || !PNG_DEPTHS[hd.colorType]!.includes(hd.bitDepth)) corrupt(file, `colour type ${hd.colorType} with bit depth ${hd.bitDepth}`);
  if (hd.interlace > 1) corrupt(file, `interlace method ${hd.interlace}`);
  if (hd.width === 0 || hd.height === 0) corrupt(file, `size ${hd.width}x${hd.height}`);
  return hd;
}

/** Width and height from a JPEG's first SOF marker, or null when there is none. */
export function jpegSize(buf: Uint8Array): { width: number; height: number; scanAt: number } | null {
  let i = 2;
  let size: { width: number; height: number } | null = null;
  while (i + 4 <= buf.length) {
    if (buf[i] !== 0xff) return null;
    const m = buf[i + 1]!;
    if (m === 0xff) { i++; continue; }
    if (m === 0xd8 || m === 0x01 || (m >= 0xd0 && m <= 0xd7)) { i += 2; continue; }
    const len = (buf[i + 2]! << 8) | buf[i + 3]!;
    if (len < 2) return null;
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc && i + 9 <= buf.length) {
      size = { height: (buf[i + 5]! << 8) | buf[i + 6]!, width: (buf[i + 7]! << 8) | buf[i + 8]! };
    }
    if (m === 0xda) return size ? { ...size, scanAt: i } : null;
    i += 2 + len;
  }
  return null;
}

function checkPixels(file: string, kind: string, width: number, height: number): void {
  const limit = maxImagePixels();
  if (width * height > limit) {
    throw new DataError(
      `${file}: ${kind} of ${width}x${height} (${(width * height / 1e6).toFixed(1)} megapixels) exceeds the ${(limit / 1e6).toFixed(1)}-megapixel limit; ` +
      `if the image is genuine, raise the limit with --max-image-pixels or ${MAX_PIXELS_ENV}`,
      { file },
    );
  }
}

/**
 * Refuses an image whose header claims more pixels than the limit, a PNG whose chunks are cut
 * short, lack IEND, or whose compressed data does not inflate to exactly the rows its header
 * promises, and a JPEG without a frame header or end-of-image marker. Costs one inflate of a
 * PNG's data, bounded by the limit.
 */
export function checkImageFile(buf: Uint8Array, kind: 'png' | 'jpeg', file: string): void {
  if (kind === 'jpeg') {
    const s = jpegSize(buf);
    if (!s) throw new DataError(`${file}: cannot decode JPEG: the file is corrupt or truncated (no frame header before the image data)`, { file });
    if (s.width === 0 || s.height === 0) throw new DataError(`${file}: cannot decode JPEG: the file is corrupt (size ${s.width}x${s.height})`, { file });
    checkPixels(file, 'JPEG', s.width, s.height);
    let end = buf.length;
    while (end > s.scanAt && !(buf[end - 2] === 0xff && buf[end - 1] === 0xd9)) end--;
    if (end <= s.scanAt) throw new DataError(`${file}: cannot decode JPEG: the file is corrupt or truncated (no end-of-image marker after the image data)`, { file });
    return;
  }
  const hd = pngHeader(buf, file);
  checkPixels(file, 'PNG', hd.width, hd.height);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const idat: Uint8Array[] = [];
  let pos = 8;
  let ended = false;
  while (pos + 12 <= buf.length) {
    const len = dv.getUint32(pos);
    const type = String.fromCharCode(buf[pos + 4]!, buf[pos + 5]!, buf[pos + 6]!, buf[pos + 7]!);
    if (pos + 12 + len > buf.length) corrupt(file, `chunk ${type} of ${len} bytes runs past the end of the ${buf.length}-byte file`);
    if (type === 'IDAT') idat.push(buf.subarray(pos + 8, pos + 8 + len));
    pos += 12 + len;
    if (type === 'IEND') {
      ended = true;
      break;
    }
  }
  if (!ended) corrupt(file, 'no IEND chunk: the file ends early');
  if (!idat.length) corrupt(file, 'no image data (IDAT)');
  const expected = pngDataBytes(hd);
  let got: number;
  try {
    got = zlib.inflateSync(Buffer.concat(idat), { maxOutputLength: expected + 1 }).length;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ERR_BUFFER_TOO_LARGE') corrupt(file, `its image data inflates to more than the ${expected} bytes of a ${hd.width}x${hd.height} image`);
    corrupt(file, `image data: ${(e as Error).message}`);
  }
  if (got !== expected) corrupt(file, `its image data holds ${got} bytes, a ${hd.width}x${hd.height} image needs ${expected}`);
}
