// Loads the project's ONNX schema (onnx.proto, kept next to this file in src/) with protobufjs
// and encodes/decodes ModelProto messages. The TypeScript interfaces mirror the schema's
// fields in protobufjs's camelCase form.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';

/** TensorProto.DataType codes used by kshare. */
export const OnnxDataType = { FLOAT: 1, UINT8: 2, INT32: 6, INT64: 7, BOOL: 9, FLOAT16: 10, DOUBLE: 11 } as const;
export type OnnxDataTypeCode = (typeof OnnxDataType)[keyof typeof OnnxDataType];

/** AttributeProto.AttributeType codes. */
export const AttributeType = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7, STRINGS: 8 } as const;

export interface TensorProto {
  name: string;
  dims: number[];
  dataType: number;
  rawData?: Uint8Array;
  floatData?: number[];
  int64Data?: number[];
  int32Data?: number[];
  dataLocation?: number;
}

export interface AttributeProto {
  name: string;
  type: number;
  f?: number;
  i?: number;
  s?: Uint8Array;
  t?: TensorProto;
  floats?: number[];
  ints?: number[];
}

export interface NodeProto {
  input: string[];
  output: string[];
  name?: string;
  opType: string;
  domain?: string;
  attribute?: AttributeProto[];
}

export interface ValueInfoProto {
  name: string;
  type?: { tensorType?: { elemType: number; shape?: { dim: { dimValue?: number; dimParam?: string }[] } } };
}

export interface GraphProto {
  name: string;
  node: NodeProto[];
  initializer: TensorProto[];
  input: ValueInfoProto[];
  output: ValueInfoProto[];
  valueInfo?: ValueInfoProto[];
  docString?: string;
}

export interface ModelProto {
  irVersion: number;
  opsetImport: { domain?: string; version: number }[];
  producerName?: string;
  producerVersion?: string;
  docString?: string;
  graph: GraphProto;
  metadataProps?: { key: string; value: string }[];
}

/** onnx.proto, found next to this file in src/ or, from dist/src/export, back in the repo's src/export. */
export const ONNX_PROTO_PATH = (() => {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'onnx.proto'), path.resolve(here, '../../../src/export/onnx.proto')];
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`ONNX schema not found (looked for ${candidates.join(', ')})`);
  return found;
})();

let modelType: protobuf.Type | null = null;

function modelProtoType(): protobuf.Type {
  modelType ??= protobuf.loadSync(ONNX_PROTO_PATH).lookupType('onnx.ModelProto');
  return modelType;
}

/** Serialises a model; the schema checks every field's type before anything is written. */
export function encodeModel(model: ModelProto): Uint8Array {
  const type = modelProtoType();
  const problem = type.verify(model);
  if (problem) throw new Error(`ONNX model does not match the schema: ${problem}`);
  return type.encode(type.fromObject(model as unknown as Record<string, unknown>)).finish();
}

/**
 * Parses ONNX bytes. A file that is not a protobuf ModelProto, or one without a graph, gives an
 * error naming `label`; int64 fields come back as numbers (the sizes kshare writes are far below 2^53).
 */
export function decodeModel(bytes: Uint8Array, label = 'ONNX model'): ModelProto {
  const type = modelProtoType();
  let msg: protobuf.Message;
  try {
    msg = type.decode(bytes);
  } catch (err) {
    throw new Error(`${label} is not a valid ONNX file (protobuf decoding failed: ${(err as Error).message})`);
  }
  const obj = type.toObject(msg, { longs: Number, arrays: true }) as unknown as ModelProto;
  if (!obj.graph || !obj.irVersion || obj.opsetImport.length === 0) {
    throw new Error(`${label} is not a valid ONNX file (no graph, IR version or opset)`);
  }
  return obj;
}
