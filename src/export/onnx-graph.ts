// Builds an ONNX graph node by node. Weights are added by Tensor identity, so a kernel that
// several layers share becomes ONE initializer that every node using it names as input.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { AttributeType, OnnxDataType, type AttributeProto, type ModelProto, type NodeProto, type TensorProto, type ValueInfoProto } from './onnx-schema.js';

/** ONNX operator set the exporter targets (every op it emits exists unchanged since opset 13). */
export const OPSET = 17;
/** IR version that goes with opset 17 (ONNX 1.12). */
export const IR_VERSION = 8;

export type AttrValue = { int: number } | { ints: number[] } | { float: number } | { string: string };
export const attr = {
  int: (v: number): AttrValue => ({ int: v }),
  ints: (v: number[]): AttrValue => ({ ints: v }),
  float: (v: number): AttrValue => ({ float: v }),
  string: (v: string): AttrValue => ({ string: v }),
};

/** A dimension: a fixed size or a symbolic name (e.g. 'batch'). */
export type Dim = number | string;

export interface WeightStorage {
  /** float16 halves the file; the graph casts each weight back to float32 once, so compute stays float32. */
  dtype: 'float32' | 'float16';
}

export interface GraphStats {
  /** Distinct weight tensors written (a shared kernel counts once). */
  initializers: number;
  /** Bytes of weight data in the file. */
  weightBytes: number;
  /** Node inputs that name a weight: a shared kernel counts once per layer that uses it. */
  weightUses: number;
  /** Weights used by more than one layer (shared kernels and shared biases). */
  sharedWeights: number;
  /** Layer inputs that name one of the shared weights. */
  sharedUses: number;
  nodes: number;
}

interface WeightEntry {
  tensor: Tensor;
  name: string;
  value: string;
  uses: number;
}

export class OnnxGraphBuilder {
  readonly #nodes: NodeProto[] = [];
  readonly #initializers: TensorProto[] = [];
  readonly #inputs: ValueInfoProto[] = [];
  readonly #outputs: ValueInfoProto[] = [];
  readonly #weights: WeightEntry[] = [];
  readonly #names = new Set<string>();
  readonly #constants = new Map<string, string>();
  #derived = 0;
  readonly #storage: WeightStorage;
  #weightBytes = 0;

  constructor(storage: WeightStorage = { dtype: 'float32' }) {
    this.#storage = storage;
  }

  /** A name not used yet in the graph, derived from `hint`. */
  uniqueName(hint: string): string {
    const base = hint.replace(/[^A-Za-z0-9_.:/-]/g, '_') || 'v';
    let name = base;
    for (let i = 1; this.#names.has(name); i++) name = `${base}_${i}`;
    this.#names.add(name);
    return name;
  }

  addInput(name: string, dims: Dim[]): string {
    const n = this.uniqueName(name);
    this.#inputs.push(valueInfo(n, OnnxDataType.FLOAT, dims));
    return n;
  }

  /** Declares `value` as a graph output named `name` (via Identity when the names differ). */
  addOutput(value: string, name: string, dims: Dim[]): string {
    let out = value;
    if (value !== name) out = this.node('Identity', [value], {}, name, name);
    this.#outputs.push(valueInfo(out, OnnxDataType.FLOAT, dims));
    return out;
  }

  /**
   * The graph value holding `tensor` as float32. The first call for a tensor writes it as an
   * initializer named `hint`; later calls for the same Tensor (a shared kernel) return that
   * same value, so the data is stored once.
   */
  weight(tensor: Tensor, hint: string): string {
    const known = this.#weights.find((w) => w.tensor === tensor || (!tensor.isDisposed && !w.tensor.isDisposed && w.tensor.isSameTensor(tensor)));
    if (known) {
      known.uses++;
      return known.value;
    }
    if (!t.isFloating(tensor.dtype)) throw new Error(`weight '${hint}' has dtype ${tensor.dtype}; only floating weights are exported`);
    const name = this.uniqueName(hint);
    const half = this.#storage.dtype === 'float16';
    const raw = hostValues(tensor, half ? 'float16' : 'float32');
    if (half) checkHalfFinite(raw as Uint16Array, hint);
    else checkFinite(raw as Float32Array, hint);
    const bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
    this.#initializers.push({ name, dims: tensor.shape, dataType: half ? OnnxDataType.FLOAT16 : OnnxDataType.FLOAT, rawData: bytes });
    this.#weightBytes += bytes.byteLength;
    // One Cast per stored weight: every user of a shared kernel reads the same float32 value.
    const value = half ? this.node('Cast', [name], { to: attr.int(OnnxDataType.FLOAT) }, `${hint}/to_float32`) : name;
    this.#weights.push({ tensor, name, value, uses: 1 });
    return value;
  }

  /**
   * A float32 constant (e.g. 0.5 in GELU; a scalar when `dims` is []). Equal constants are
   * stored once, whatever `hint` each caller gives.
   */
  constFloat(values: number[] | Float32Array, dims: number[], hint: string): string {
    const data = Float32Array.from(values);
    const bytes = new Uint8Array(data.buffer);
    const key = `${dims.join('x')}:${Buffer.from(bytes).toString('base64')}`;
    const known = this.#constants.get(key);
    if (known) return known;
    const name = this.uniqueName(hint);
    this.#initializers.push({ name, dims, dataType: OnnxDataType.FLOAT, rawData: bytes });
    this.#constants.set(key, name);
    return name;
  }

  /**
   * A float vector computed from model weights (e.g. a BatchNorm's folded scale). Unlike a
   * `weight`, it has no Tensor identity to share by, so each call stores a new initializer;
   * it follows the weight storage type (float16 with --fp16).
   */
  derivedWeight(values: Float32Array, dims: number[], hint: string): string {
    if (this.#storage.dtype === 'float32') checkFinite(values, hint);
    const name = this.uniqueName(hint);
    const half = this.#storage.dtype === 'float16';
    const raw = half ? toHalfBits(values) : values;
    if (half) checkHalfFinite(raw as Uint16Array, hint);
    const bytes = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
    this.#initializers.push({ name, dims, dataType: half ? OnnxDataType.FLOAT16 : OnnxDataType.FLOAT, rawData: bytes });
    this.#weightBytes += bytes.byteLength;
    this.#derived++;
    return half ? this.node('Cast', [name], { to: attr.int(OnnxDataType.FLOAT) }, `${hint}/to_float32`) : name;
  }

  /** An int64 constant, for shape and axes inputs; equal ones are stored once. */
  constInt64(values: number[], hint: string): string {
    const key = `int64:${values.join(',')}`;
    const known = this.#constants.get(key);
    if (known) return known;
    const name = this.uniqueName(hint);
    this.#constants.set(key, name);
    const data = BigInt64Array.from(values.map((v) => BigInt(v)));
    this.#initializers.push({ name, dims: [values.length], dataType: OnnxDataType.INT64, rawData: new Uint8Array(data.buffer) });
    return name;
  }

  /** Appends a node with one output and returns that output's name. */
  node(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, hint = opType, outputName?: string): string {
    const out = outputName ?? this.uniqueName(hint);
    if (outputName) this.#names.add(outputName);
    this.#nodes.push({
      opType,
      input: inputs,
      output: [out],
      name: this.uniqueName(`node:${hint}`),
      attribute: Object.entries(attrs).map(([k, v]) => toAttribute(k, v)),
    });
    return out;
  }

  get stats(): GraphStats {
    return {
      initializers: this.#weights.length + this.#derived,
      weightBytes: this.#weightBytes,
      weightUses: this.#weights.reduce((s, w) => s + w.uses, 0) + this.#derived,
      sharedWeights: this.#weights.filter((w) => w.uses > 1).length,
      sharedUses: this.#weights.reduce((s, w) => s + (w.uses > 1 ? w.uses : 0), 0),
      nodes: this.#nodes.length,
    };
  }

  /** The finished model. `metadata` goes to metadata_props (strings only, as ONNX requires). */
  toModel(o: { graphName: string; producerVersion: string; docString?: string; metadata?: Record<string, string> }): ModelProto {
    return {
      irVersion: IR_VERSION,
      opsetImport: [{ domain: '', version: OPSET }],
      producerName: 'kshare',
      producerVersion: o.producerVersion,
      docString: o.docString ?? '',
      graph: {
        name: o.graphName,
        node: this.#nodes,
        initializer: this.#initializers,
        input: this.#inputs,
        output: this.#outputs,
      },
      metadataProps: Object.entries(o.metadata ?? {}).map(([key, value]) => ({ key, value })),
    };
  }
}

/** A tensor's values copied to the host (any device, layout or floating dtype). */
export function hostValues(tensor: Tensor, dtype: 'float32'): Float32Array;
export function hostValues(tensor: Tensor, dtype: 'float16'): Uint16Array;
export function hostValues(tensor: Tensor, dtype: 'float32' | 'float16'): Float32Array | Uint16Array;
export function hostValues(tensor: Tensor, dtype: 'float32' | 'float16'): Float32Array | Uint16Array {
  return t.tidy(() => tensor.detach().to({ device: 'cpu', dtype }).contiguous().dataSync() as Float32Array | Uint16Array);
}

function valueInfo(name: string, elemType: number, dims: Dim[]): ValueInfoProto {
  return {
    name,
    type: { tensorType: { elemType, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  };
}

function toAttribute(name: string, v: AttrValue): AttributeProto {
  if ('int' in v) {
    if (!Number.isInteger(v.int)) throw new Error(`attribute ${name}: ${v.int} is not an integer`);
    return { name, type: AttributeType.INT, i: v.int };
  }
  if ('ints' in v) {
    if (!v.ints.every(Number.isInteger)) throw new Error(`attribute ${name}: [${v.ints}] are not all integers`);
    return { name, type: AttributeType.INTS, ints: v.ints };
  }
  if ('float' in v) return { name, type: AttributeType.FLOAT, f: v.float };
  return { name, type: AttributeType.STRING, s: new TextEncoder().encode(v.string) };
}

function checkFinite(a: Float32Array, hint: string): void {
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i]!)) throw new Error(`weight '${hint}' holds a non-finite value (${a[i]}) at element ${i}; refusing to export a broken model`);
  }
}

/** float32 → IEEE half bits, rounding to nearest even (via libtorch, which does it exactly). */
function toHalfBits(values: Float32Array): Uint16Array {
  return t.tidy(() => t.tensor(values, [values.length]).to({ dtype: 'float16' }).dataSync() as Uint16Array);
}

function checkHalfFinite(bits: Uint16Array, hint: string): void {
  for (let i = 0; i < bits.length; i++) {
    // Exponent all ones: the value overflowed float16 (|x| > 65504) or was already inf/NaN.
    if ((bits[i]! & 0x7c00) === 0x7c00)
      throw new Error(`weight '${hint}' element ${i} does not fit float16 (|x| > 65504 or non-finite); export without --fp16`);
  }
}
