// Facts about an ONNX graph that kshare reports and tests: which kernels are shared, how many
// bytes of weights it stores.
import { OnnxDataType, type ModelProto, type TensorProto } from './onnx-schema.js';

const ELEMENT_BYTES: Record<number, number> = {
  [OnnxDataType.FLOAT]: 4,
  [OnnxDataType.FLOAT16]: 2,
  [OnnxDataType.DOUBLE]: 8,
  [OnnxDataType.INT64]: 8,
  [OnnxDataType.INT32]: 4,
  [OnnxDataType.UINT8]: 1,
  [OnnxDataType.BOOL]: 1,
};

export function tensorBytes(t: TensorProto): number {
  if (t.rawData && t.rawData.length) return t.rawData.length;
  const count = t.dims.reduce((a, b) => a * b, 1);
  return count * (ELEMENT_BYTES[t.dataType] ?? 0);
}

export interface SharedKernelUse {
  /** The initializer holding the kernel. */
  initializer: string;
  /** Conv nodes that use it (by node name or output). */
  nodes: string[];
}

/** The initializer a value comes from, looking through Cast nodes (float16 storage casts once). */
function sourceInitializer(m: ModelProto, value: string, inits: Set<string>): string | null {
  const producers = new Map(m.graph.node.map((n) => [n.output[0], n]));
  let v = value;
  for (let hops = 0; hops < 4; hops++) {
    if (inits.has(v)) return v;
    const p = producers.get(v);
    if (!p || p.opType !== 'Cast') return null;
    v = p.input[0]!;
  }
  return null;
}

/** Conv kernels (initializers) that more than one Conv node uses: the shared kernels. */
export function sharedConvWeights(m: ModelProto): SharedKernelUse[] {
  const inits = new Set(m.graph.initializer.map((t) => t.name));
  const users = new Map<string, string[]>();
  for (const n of m.graph.node) {
    if (n.opType !== 'Conv' || !n.input[1]) continue;
    const src = sourceInitializer(m, n.input[1], inits);
    if (!src) continue;
    const list = users.get(src) ?? [];
    list.push(n.name || n.output[0]!);
    users.set(src, list);
  }
  return [...users].filter(([, nodes]) => nodes.length > 1).map(([initializer, nodes]) => ({ initializer, nodes }));
}

export interface OnnxSummary {
  opset: number;
  nodes: number;
  opCounts: Record<string, number>;
  initializers: number;
  initializerBytes: number;
  sharedKernels: SharedKernelUse[];
}

export function summarizeOnnx(m: ModelProto): OnnxSummary {
  const opCounts: Record<string, number> = {};
  for (const n of m.graph.node) opCounts[n.opType] = (opCounts[n.opType] ?? 0) + 1;
  return {
    opset: Math.max(...m.opsetImport.filter((o) => !o.domain).map((o) => o.version)),
    nodes: m.graph.node.length,
    opCounts,
    initializers: m.graph.initializer.length,
    initializerBytes: m.graph.initializer.reduce((s, t) => s + tensorBytes(t), 0),
    sharedKernels: sharedConvWeights(m),
  };
}
