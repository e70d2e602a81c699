// dtype and device names, and the integer codes shared with native/kshare.cc.
export const DTYPES = ['float32', 'float16', 'bfloat16', 'int64', 'uint8', 'bool', 'int32', 'float64'] as const;
export type DType = (typeof DTYPES)[number];
export type FloatDType = 'float32' | 'float16' | 'bfloat16' | 'float64';
/** 'cpu', 'cuda' or 'cuda:N'. */
export type Device = string;

/** The addon's code for a dtype; `op` names the caller in the error for an unknown name. */
export function dtypeCode(d: DType, op?: string): number {
  const i = DTYPES.indexOf(d);
  if (i < 0) throw new TypeError(`${op ? `${op}: ` : ''}unknown dtype '${String(d)}' (expected one of ${DTYPES.join(', ')})`);
  return i;
}

export function dtypeFromCode(code: number): DType {
  const d = DTYPES[code];
  if (!d) throw new TypeError(`addon returned a tensor of an unsupported dtype (code ${code})`);
  return d;
}

export function isFloating(d: DType): d is FloatDType {
  return d === 'float32' || d === 'float16' || d === 'bfloat16' || d === 'float64';
}

export function elementBytes(d: DType): number {
  return { float32: 4, float16: 2, bfloat16: 2, int64: 8, uint8: 1, bool: 1, int32: 4, float64: 8 }[d];
}

export type TypedArrayFor<D extends DType> = D extends 'float32'
  ? Float32Array
  : D extends 'float64'
    ? Float64Array
    : D extends 'int64'
      ? BigInt64Array
      : D extends 'int32'
        ? Int32Array
        : D extends 'uint8' | 'bool'
          ? Uint8Array
          : Uint16Array; // float16 / bfloat16 raw bits

export function typedArrayFor(d: DType, buf: ArrayBuffer): ArrayBufferView {
  switch (d) {
    case 'float32':
      return new Float32Array(buf);
    case 'float64':
      return new Float64Array(buf);
    case 'int64':
      return new BigInt64Array(buf);
    case 'int32':
      return new Int32Array(buf);
    case 'uint8':
    case 'bool':
      return new Uint8Array(buf);
    default:
      return new Uint16Array(buf);
  }
}

export function dtypeOfTypedArray(a: ArrayBufferView, op?: string): DType {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof Float64Array) return 'float64';
  if (a instanceof BigInt64Array) return 'int64';
  if (a instanceof Int32Array) return 'int32';
  if (a instanceof Uint8Array || a instanceof Uint8ClampedArray) return 'uint8';
  throw new TypeError(`${op ? `${op}: ` : ''}cannot infer a dtype from ${a.constructor.name}; pass one explicitly`);
}

export function normalizeDevice(d: Device, op?: string): Device {
  if (d === 'cpu') return 'cpu';
  if (d === 'cuda') return 'cuda:0';
  if (typeof d === 'string' && /^cuda:\d+$/.test(d)) return d;
  throw new TypeError(`${op ? `${op}: ` : ''}unknown device ${typeof d === 'string' ? `'${d}'` : String(d)} (expected 'cpu', 'cuda' or 'cuda:N')`);
}
