// A deliberately small, non-executing reader for Python pickles (protocols 2 to 4), restricted
// to what the official CIFAR "python version" files contain: dicts, lists, tuples, ints,
// strings/bytes, and numpy uint8 arrays. Nothing is ever called: the only "globals" accepted
// are numpy's array/dtype reconstructors and _codecs.encode (how Python 3 writes bytes under
// protocol 2), which are interpreted by hand. Anything else is a DataError.
//
// Conventions (like pickle.load(f, encoding='bytes')): Python 2 `str` and Python 3 `bytes` both
// become Uint8Array; Python `str`/`unicode` become string. Dict keys become strings (bytes keys
// are decoded as latin1), so b'data' and 'data' are both the key "data".

import { DataError } from './types.js';

export type PickleValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PickleValue[]
  | PickleTuple
  | Map<string, PickleValue>
  | NDArray
  | DType
  | PickleGlobal;

export class PickleTuple {
  constructor(readonly items: PickleValue[]) {}
}

export class PickleGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

export class DType {
  byteOrder = '|';
  constructor(readonly descr: string) {}
}

/** A numpy array reconstructed from a pickle; `data` is the raw C- or Fortran-order bytes. */
export class NDArray {
  shape: number[] = [];
  dtype: DType | null = null;
  fortran = false;
  data: Uint8Array = new Uint8Array(0);
}

const RECONSTRUCT = new Set(['numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct']);
const ALLOWED = new Set([...RECONSTRUCT, 'numpy.ndarray', 'numpy.dtype', '_codecs.encode']);

const MARK = Symbol('mark');
type StackItem = PickleValue | typeof MARK;

/** Parses one pickle from `buf`. `file` only names the source in error messages. */
export function readPickle(buf: Uint8Array, file: string): PickleValue {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const stack: StackItem[] = [];
  const memo = new Map<number, PickleValue>();
  let pos = 0;

  const fail = (msg: string): never => {
    throw new DataError(`${file}: ${msg} (pickle offset ${pos})`, { file });
  };
  const need = (n: number): void => {
    if (pos + n > buf.length) fail(`truncated pickle: needs ${n} more bytes, file has ${buf.length - pos}`);
  };
  const u8 = (): number => {
    need(1);
    return buf[pos++]!;
  };
  const u16 = (): number => {
    need(2);
    const v = dv.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const i32 = (): number => {
    need(4);
    const v = dv.getInt32(pos, true);
    pos += 4;
    return v;
  };
  const u32 = (): number => {
    need(4);
    const v = dv.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = dv.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail('length too large');
    return Number(v);
  };
  const bytes = (n: number): Uint8Array => {
    if (n < 0) fail(`negative length ${n}`);
    need(n);
    const b = buf.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const line = (): string => {
    const end = buf.indexOf(0x0a, pos);
    if (end < 0) fail('unterminated text line');
    const s = Buffer.from(buf.buffer, buf.byteOffset + pos, end - pos).toString('latin1');
    pos = end + 1;
    return s;
  };
  const utf8 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('utf8');
  const pop = (): PickleValue => {
    const v = stack.pop();
    if (v === undefined) fail('stack underflow');
    if (v === MARK) fail('unexpected mark');
    return v as PickleValue;
  };
  const top = (): PickleValue => {
    const v = stack[stack.length - 1];
    if (v === undefined || v === MARK) fail('stack underflow');
    return v as PickleValue;
  };
  const popMark = (): PickleValue[] => {
    const items: PickleValue[] = [];
    for (;;) {
      const v = stack.pop();
      if (v === undefined) fail('mark not found');
      if (v === MARK) break;
      items.push(v as PickleValue);
    }
    return items.reverse();
  };
  const key = (k: PickleValue): string => {
    if (typeof k === 'string') return k;
    if (k instanceof Uint8Array) return Buffer.from(k.buffer, k.byteOffset, k.byteLength).toString('latin1');
    if (typeof k === 'number' || typeof k === 'bigint') return String(k);
    return fail(`unsupported dict key type ${describe(k)}`);
  };
  const setItem = (d: PickleValue, k: PickleValue, v: PickleValue): void => {
    if (!(d instanceof Map)) fail(`SETITEM on ${describe(d)}`);
    (d as Map<string, PickleValue>).set(key(k), v);
  };
  const list = (l: PickleValue): PickleValue[] => {
    if (!Array.isArray(l)) fail(`APPEND on ${describe(l)}`);
    return l as PickleValue[];
  };

  const reduce = (fn: PickleValue, args: PickleValue): PickleValue => {
    if (!(fn instanceof PickleGlobal)) return fail(`REDUCE on ${describe(fn)}`);
    const a = args instanceof PickleTuple ? args.items : fail(`REDUCE arguments are ${describe(args)}, not a tuple`);
    const q = fn.qualified;
    if (RECONSTRUCT.has(q)) return new NDArray();
    if (q === 'numpy.dtype') {
      const d = a[0];
      if (typeof d === 'string') return new DType(d);
      if (d instanceof Uint8Array) return new DType(Buffer.from(d).toString('latin1'));
      return fail(`numpy.dtype(${describe(d)}) is not supported`);
    }
    if (q === '_codecs.encode') {
      const [s, enc] = a;
      if (typeof s !== 'string') return fail('_codecs.encode of a non-string');
      const e = typeof enc === 'string' ? enc.toLowerCase().replace(/[-_]/g, '') : 'utf8';
      if (e === 'latin1' || e === 'iso88591') return new Uint8Array(Buffer.from(s, 'latin1'));
      if (e === 'utf8') return new Uint8Array(Buffer.from(s, 'utf8'));
      return fail(`_codecs.encode with encoding ${String(enc)} is not supported`);
    }
    return fail(`calling ${q} is not supported`);
  };

  const build = (obj: PickleValue, state: PickleValue): void => {
    const st = state instanceof PickleTuple ? state.items : null;
    if (obj instanceof NDArray) {
      if (!st) return void fail('numpy array state is not a tuple');
      // numpy ndarray.__setstate__: (version, shape, dtype, is_fortran, rawdata) or without version.
      const s = st.length === 5 ? st.slice(1) : st;
      if (s.length !== 4) return void fail(`numpy array state has ${st.length} items`);
      const [shape, dtype, fortran, raw] = s;
      if (!(shape instanceof PickleTuple) || !shape.items.every((x) => typeof x === 'number'))
        return void fail('numpy array shape is not a tuple of ints');
      if (!(dtype instanceof DType)) return void fail('numpy array dtype is missing');
      if (!(raw instanceof Uint8Array)) return void fail(`numpy array data is ${describe(raw)} (object arrays are not supported)`);
      obj.shape = shape.items as number[];
      obj.dtype = dtype;
      obj.fortran = fortran === true;
      obj.data = raw;
      return;
    }
    if (obj instanceof DType) {
      // (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
      if (st && typeof st[1] === 'string') obj.byteOrder = st[1];
      else if (st && st[1] instanceof Uint8Array) obj.byteOrder = Buffer.from(st[1]).toString('latin1');
      return;
    }
    fail(`BUILD on ${describe(obj)} is not supported`);
  };

  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail('unsupported pickle protocol');
        break;
      case 0x95: // FRAME
        u64();
        break;
      case 0x2e: {
        // STOP
        const v = pop();
        return v;
      }
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new PickleTuple([]));
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x8a: {
        // LONG1: little-endian two's complement
        const b = bytes(u8());
        let v = 0n;
        for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
        if (b.length > 0 && b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
        stack.push(v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
        break;
      }
      case 0x47: {
        // BINFLOAT (big-endian double)
        need(8);
        stack.push(dv.getFloat64(pos, false));
        pos += 8;
        break;
      }
      case 0x55: // SHORT_BINSTRING (py2 str)
        stack.push(bytes(u8()));
        break;
      case 0x54: // BINSTRING (py2 str)
        stack.push(bytes(i32()));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(bytes(u8()));
        break;
      case 0x42: // BINBYTES
        stack.push(bytes(u32()));
        break;
      case 0x8e: // BINBYTES8
        stack.push(bytes(u64()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8(bytes(u8())));
        break;
      case 0x58: // BINUNICODE
        stack.push(utf8(bytes(u32())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8(bytes(u64())));
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: {
        // LONG_BINGET
        const i = op === 0x68 ? u8() : u32();
        if (!memo.has(i)) fail(`memo entry ${i} is missing`);
        stack.push(memo.get(i)!);
        break;
      }
      case 0x74: // TUPLE
        stack.push(new PickleTuple(popMark()));
        break;
      case 0x85: // TUPLE1
        stack.push(new PickleTuple([pop()]));
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        const a = pop();
        stack.push(new PickleTuple([a, b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(new PickleTuple([a, b, c]));
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        list(top()).push(v);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        const l = list(top());
        for (const v of items) l.push(v);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItem(top(), k, v);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        if (items.length % 2) fail('SETITEMS with an odd number of items');
        const d = top();
        for (let i = 0; i < items.length; i += 2) setItem(d, items[i]!, items[i + 1]!);
        break;
      }
      case 0x63: {
        // GLOBAL
        const mod = line();
        const name = line();
        const g = new PickleGlobal(mod, name);
        if (!ALLOWED.has(g.qualified)) fail(`unsupported pickle global ${g.qualified}`);
        stack.push(g);
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        const mod = pop();
        if (typeof mod !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL needs two strings');
        const g = new PickleGlobal(mod as string, name as string);
        if (!ALLOWED.has(g.qualified)) fail(`unsupported pickle global ${g.qualified}`);
        stack.push(g);
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        stack.push(reduce(fn, args));
        break;
      }
      case 0x62: {
        // BUILD
        const state = pop();
        build(top(), state);
        break;
      }
      default:
        fail(`unsupported pickle opcode 0x${op.toString(16).padStart(2, '0')}`);
    }
  }
}

function describe(v: PickleValue | undefined): string {
  if (v === null) return 'None';
  if (v === undefined) return 'nothing';
  if (v instanceof Uint8Array) return 'bytes';
  if (Array.isArray(v)) return 'list';
  if (v instanceof Map) return 'dict';
  if (v instanceof PickleTuple) return 'tuple';
  if (v instanceof NDArray) return 'numpy array';
  if (v instanceof DType) return 'numpy dtype';
  if (v instanceof PickleGlobal) return v.qualified;
  return typeof v;
}

/** Reads a top-level dict; errors name `file`. */
export function pickleDict(v: PickleValue, file: string): Map<string, PickleValue> {
  if (!(v instanceof Map)) throw new DataError(`${file}: expected a pickled dict, found ${describe(v)}`, { file });
  return v;
}

/** A list of small non-negative ints (labels) as Int32Array. */
export function pickleIntList(v: PickleValue | undefined, file: string, what: string): Int32Array {
  if (v instanceof NDArray) return ndarrayInts(v, file, what);
  const items: PickleValue[] | null = Array.isArray(v) ? v : null;
  if (!items) throw new DataError(`${file}: ${what} is ${describe(v)}, expected a list of ints`, { file });
  const out = new Int32Array(items.length);
  for (let i = 0; i < items.length; i++) {
    const x = items[i];
    if (typeof x !== 'number' || !Number.isInteger(x)) throw new DataError(`${file}: ${what}[${i}] is ${describe(x)}, expected an int`, { file });
    out[i] = x;
  }
  return out;
}

function ndarrayInts(a: NDArray, file: string, what: string): Int32Array {
  const d = a.dtype?.descr ?? '?';
  const n = a.shape.reduce((p, x) => p * x, 1);
  const dv = new DataView(a.data.buffer, a.data.byteOffset, a.data.byteLength);
  const out = new Int32Array(n);
  const little = a.dtype?.byteOrder !== '>';
  const size = d === 'u1' || d === 'i1' ? 1 : d === 'i2' || d === 'u2' ? 2 : d === 'i4' || d === 'u4' ? 4 : d === 'i8' || d === 'u8' ? 8 : 0;
  if (!size || a.data.length !== n * size) throw new DataError(`${file}: ${what} is a numpy array of dtype ${d}, expected integers`, { file });
  for (let i = 0; i < n; i++) {
    const o = i * size;
    out[i] =
      size === 1 ? (d === 'i1' ? dv.getInt8(o) : dv.getUint8(o))
      : size === 2 ? (d === 'i2' ? dv.getInt16(o, little) : dv.getUint16(o, little))
      : size === 4 ? dv.getInt32(o, little)
      : Number(dv.getBigInt64(o, little));
  }
  return out;
}

/** A list of names (py2 str / bytes / str) as strings. */
export function pickleStringList(v: PickleValue | undefined, file: string, what: string): string[] {
  if (!Array.isArray(v)) throw new DataError(`${file}: ${what} is ${describe(v)}, expected a list of strings`, { file });
  return v.map((x, i) => {
    if (typeof x === 'string') return x;
    if (x instanceof Uint8Array) return Buffer.from(x).toString('utf8');
    throw new DataError(`${file}: ${what}[${i}] is ${describe(x)}, expected a string`, { file });
  });
}
