// ONNX export by tracing: one eval-mode forward pass runs with an op tracer on (src/tensor/
// trace.ts), and every kernel call becomes ONNX nodes as it happens. So any model built from
// kshare ops exports, whatever its forward looks like; there is no second, hand-written forward.
//
// Weights are added by tensor identity: a kernel shared by several convolutions is one
// initializer that every Conv node names. BatchNorm stays its own node after every
// convolution: folding it into the kernel would give each layer its own copy of a shared kernel.
import * as t from '../tensor/index.js';
import type { Handle, KernelArg, KernelName, Tensor, TracedOp } from '../tensor/index.js';
import type { Module } from '../nn/module.js';
import { attr, hostValues, type AttrValue, type OnnxGraphBuilder } from './onnx-graph.js';

/** Batch size of the traced pass: 2, so a reshape that keeps the batch is told from one to 1. */
const TRACE_BATCH = 2;

interface Layer {
  path: string;
  module: Module;
}

/** What a mapping rule sees of one traced op. */
interface OpContext {
  readonly g: OnnxGraphBuilder;
  readonly call: TracedOp;
  /** Node-name hint: the layer's path (module path of the innermost module running). */
  readonly hint: string;
  /** The ONNX value for a tensor argument (graph value, weight initializer or snapshot constant). */
  value(a: KernelArg): string;
  /** The model parameter or buffer behind an argument, if it is one. */
  weightOf(a: KernelArg): Tensor | null;
  shape(a: KernelArg): number[];
  node(opType: string, inputs: string[], attrs?: Record<string, AttrValue>, suffix?: string): string;
  scalar(v: number): string;
  int64s(v: number[]): string;
}

type Rule = (c: OpContext) => string;

const arg = (c: OpContext, i: number): KernelArg => c.call.args[i];
const num = (c: OpContext, i: number, dflt: number): number => (typeof c.call.args[i] === 'number' ? (c.call.args[i] as number) : dflt);
const ints = (c: OpContext, i: number): number[] => [...(c.call.args[i] as readonly number[])];
const unary =
  (opType: string): Rule =>
  (c) =>
    c.node(opType, [c.value(arg(c, 0))]);
const identity: Rule = (c) => c.value(arg(c, 0));

/** a ∘ b where b may be a tensor or a Python-style scalar. */
const binary =
  (opType: string): Rule =>
  (c) => {
    const b = arg(c, 1);
    return c.node(opType, [c.value(arg(c, 0)), typeof b === 'number' ? c.scalar(b) : c.value(b)]);
  };

function convRule(c: OpContext, pads: number[]): string {
  const [, , kh, kw] = c.shape(arg(c, 1));
  const inputs = [c.value(arg(c, 0)), c.value(arg(c, 1))];
  if (arg(c, 2)) inputs.push(c.value(arg(c, 2)));
  return c.node('Conv', inputs, {
    kernel_shape: attr.ints([kh!, kw!]),
    strides: attr.ints(ints(c, 3)),
    pads: attr.ints(pads),
    dilations: attr.ints(ints(c, 5)),
    group: attr.int(arg(c, 6) as number),
  });
}

/** ONNX for each libtorch kernel kshare's op fronts call (by kernel name, see src/tensor/kernels.ts). */
const RULES: Partial<Record<KernelName, Rule>> = {
  conv2d: (c) => {
    const [ph, pw] = ints(c, 4);
    return convRule(c, [ph!, pw!, ph!, pw!]);
  },
  conv2dPadding: (c) => {
    if (arg(c, 4) === 'valid') return convRule(c, [0, 0, 0, 0]);
    // PyTorch's 'same': total padding d·(k-1), the odd pixel on the bottom/right.
    const [, , kh, kw] = c.shape(arg(c, 1));
    const [dh, dw] = ints(c, 5);
    const th = dh! * (kh! - 1),
      tw = dw! * (kw! - 1);
    return convRule(c, [Math.floor(th / 2), Math.floor(tw / 2), th - Math.floor(th / 2), tw - Math.floor(tw / 2)]);
  },
  batchNorm: (c) => {
    const [x, w, b, mean, variance, training, , eps] = c.call.args;
    if (training) throw new Error('batch statistics (training mode) cannot be exported; call model.eval() first');
    const n = c.shape(x)[1]!;
    const weights = [w, b, mean, variance].map((a) => (a ? c.weightOf(a) : null));
    if ([w, b, mean, variance].every((a, i) => !a || weights[i])) {
      // Inference BN is y = x·s + h per channel with s = γ/√(var+ε), h = β − mean·s, which is
      // also how libtorch computes it. Writing s and h as the node's scale and bias (mean 0,
      // var 1, ε 0 as constants shared by every BN of that width) stores 2 vectors per BN, not 4.
      const read = (i: number, fill: number) => (weights[i] ? hostValues(weights[i]!, 'float32') : new Float32Array(n).fill(fill));
      const gamma = read(0, 1),
        beta = read(1, 0),
        mu = read(2, 0),
        sigma2 = read(3, 1);
      const scale = new Float32Array(n),
        shift = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        const s = gamma[i]! / Math.sqrt(sigma2[i]! + (eps as number));
        scale[i] = s;
        shift[i] = beta[i]! - mu[i]! * s;
      }
      return c.node(
        'BatchNormalization',
        [
          c.value(x),
          c.g.derivedWeight(scale, [n], `${c.hint}.scale`),
          c.g.derivedWeight(shift, [n], `${c.hint}.shift`),
          c.g.constFloat(new Float32Array(n), [n], `zeros_${n}`),
          c.g.constFloat(new Float32Array(n).fill(1), [n], `ones_${n}`),
        ],
        { epsilon: attr.float(0) },
      );
    }
    const vec = (a: KernelArg, fill: number) => (a ? c.value(a) : c.g.constFloat(new Float32Array(n).fill(fill), [n], fill ? `ones_${n}` : `zeros_${n}`));
    return c.node('BatchNormalization', [c.value(x), vec(w, 1), vec(b, 0), vec(mean, 0), vec(variance, 1)], { epsilon: attr.float(eps as number) });
  },
  linear: (c) => {
    const [x, w, b] = c.call.args;
    if (c.shape(x).length === 2) {
      const inputs = [c.value(x), c.value(w)];
      if (b) inputs.push(c.value(b));
      // Gemm computes x·Wᵀ + b on a 2-D input, which is where a classifier's Linear sits.
      return c.node('Gemm', inputs, { transB: attr.int(1) });
    }
    const wt = c.node('Transpose', [c.value(w)], { perm: attr.ints([1, 0]) }, 'wT');
    const y = c.node('MatMul', [c.value(x), wt], {}, 'matmul');
    return b ? c.node('Add', [y, c.value(b)], {}, 'bias') : y;
  },
  matmul: binary('MatMul'),
  relu: unary('Relu'),
  sigmoid: unary('Sigmoid'),
  tanh: unary('Tanh'),
  exp: unary('Exp'),
  neg: unary('Neg'),
  sqrt: unary('Sqrt'),
  abs: unary('Abs'),
  gelu: (c) => {
    const x = c.value(arg(c, 0));
    const half = c.scalar(0.5),
      one = c.scalar(1);
    if (arg(c, 1) === 'tanh') {
      // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
      const cube = c.node('Mul', [x, c.node('Mul', [x, x], {}, 'sq')], {}, 'cube');
      const inner = c.node('Add', [x, c.node('Mul', [cube, c.scalar(0.044715)], {}, 'cx')], {}, 'inner');
      const th = c.node('Tanh', [c.node('Mul', [inner, c.scalar(Math.sqrt(2 / Math.PI))], {}, 'kx')], {}, 'tanh');
      return c.node('Mul', [c.node('Mul', [x, c.node('Add', [th, one], {}, 'add')], {}, 'mul'), half]);
    }
    // Opset 17 has no Gelu op: 0.5·x·(1 + erf(x/√2)), which ONNX Runtime fuses back into one kernel.
    const erf = c.node('Erf', [c.node('Div', [x, c.scalar(Math.SQRT2)], {}, 'div')], {}, 'erf');
    return c.node('Mul', [c.node('Mul', [x, c.node('Add', [erf, one], {}, 'add')], {}, 'mul'), half]);
  },
  clamp: (c) => {
    const lo = arg(c, 1),
      hi = arg(c, 2);
    // Clip's bounds are optional inputs; '' leaves one out.
    const inputs = [c.value(arg(c, 0)), typeof lo === 'number' ? c.scalar(lo) : '', typeof hi === 'number' ? c.scalar(hi) : ''];
    while (inputs[inputs.length - 1] === '') inputs.pop();
    return c.node('Clip', inputs);
  },
  add: (c) => {
    const alpha = num(c, 2, 1);
    const b = alpha === 1 ? c.value(arg(c, 1)) : c.node('Mul', [c.value(arg(c, 1)), c.scalar(alpha)], {}, 'alpha');
    return c.node('Add', [c.value(arg(c, 0)), b]);
  },
  addScalar: binary('Add'),
  sub: binary('Sub'),
  subScalar: binary('Sub'),
  mul: binary('Mul'),
  mulScalar: binary('Mul'),
  div: binary('Div'),
  divScalar: binary('Div'),
  adaptiveAvgPool2d: (c) => {
    const [oh, ow] = ints(c, 1);
    if (oh === 1 && ow === 1) return c.node('GlobalAveragePool', [c.value(arg(c, 0))]);
    const s = c.shape(arg(c, 0));
    const h = s[s.length - 2]!,
      w = s[s.length - 1]!;
    // Equal bins (size divisible by the output) are a plain average pool; PyTorch's uneven bins have no ONNX op.
    if (h % oh! !== 0 || w % ow! !== 0) throw new Error(`adaptive average pooling of ${h}x${w} to ${oh}x${ow} (uneven bins) has no ONNX equivalent`);
    const k = [h / oh!, w / ow!];
    return c.node('AveragePool', [c.value(arg(c, 0))], { kernel_shape: attr.ints(k), strides: attr.ints(k) });
  },
  avgPool2d: (c) => {
    const [ph, pw] = ints(c, 3);
    return c.node('AveragePool', [c.value(arg(c, 0))], {
      kernel_shape: attr.ints(ints(c, 1)),
      strides: attr.ints(ints(c, 2)),
      pads: attr.ints([ph!, pw!, ph!, pw!]),
    });
  },
  maxPool2d: (c) => {
    const [ph, pw] = ints(c, 3);
    if (arg(c, 5)) throw new Error('max pooling with ceil_mode is not exported');
    return c.node('MaxPool', [c.value(arg(c, 0))], {
      kernel_shape: attr.ints(ints(c, 1)),
      strides: attr.ints(ints(c, 2)),
      pads: attr.ints([ph!, pw!, ph!, pw!]),
      dilations: attr.ints(ints(c, 4)),
    });
  },
  flatten: (c) => {
    const s = c.shape(arg(c, 0));
    const start = arg(c, 1) as number,
      end = arg(c, 2) as number;
    if (end === s.length - 1) return c.node('Flatten', [c.value(arg(c, 0))], { axis: attr.int(start) });
    const shape = [...s.slice(0, start), s.slice(start, end + 1).reduce((a, b) => a * b, 1), ...s.slice(end + 1)];
    return reshapeTo(c, shape);
  },
  reshape: (c) => reshapeTo(c, ints(c, 1)),
  view: (c) => reshapeTo(c, ints(c, 1)),
  unsqueeze: (c) => c.node('Unsqueeze', [c.value(arg(c, 0)), c.int64s([arg(c, 1) as number])]),
  squeezeDim: (c) => c.node('Squeeze', [c.value(arg(c, 0)), c.int64s([arg(c, 1) as number])]),
  permute: (c) => c.node('Transpose', [c.value(arg(c, 0))], { perm: attr.ints(ints(c, 1)) }),
  transpose: (c) => {
    const perm = c.shape(arg(c, 0)).map((_, i) => i);
    const a = arg(c, 1) as number,
      b = arg(c, 2) as number;
    [perm[a], perm[b]] = [perm[b]!, perm[a]!];
    return c.node('Transpose', [c.value(arg(c, 0))], { perm: attr.ints(perm) });
  },
  cat: (c) =>
    c.node(
      'Concat',
      (arg(c, 0) as readonly Handle[]).map((h) => c.value(h)),
      { axis: attr.int(arg(c, 1) as number) },
    ),
  meanDim: (c) => c.node('ReduceMean', [c.value(arg(c, 0))], { axes: attr.ints(ints(c, 1)), keepdims: attr.int(arg(c, 2) ? 1 : 0) }),
  sumDim: (c) => c.node('ReduceSum', [c.value(arg(c, 0)), c.int64s(ints(c, 1))], { keepdims: attr.int(arg(c, 2) ? 1 : 0) }),
  softmax: (c) => c.node('Softmax', [c.value(arg(c, 0))], { axis: attr.int(arg(c, 1) as number) }),
  logSoftmax: (c) => c.node('LogSoftmax', [c.value(arg(c, 0))], { axis: attr.int(arg(c, 1) as number) }),
  dropout: (c) => {
    if (arg(c, 2)) throw new Error('dropout in training mode cannot be exported; call model.eval() first');
    return identity(c);
  },
  // Copies, layout changes and float32-to-float32 casts do not change values.
  contiguous: identity,
  clone: identity,
  detach: identity,
  toDtypeLayout: (c) => {
    const out = c.call.out as Handle;
    if (t.handleDtype(out) !== t.handleDtype(arg(c, 0) as Handle)) throw new Error('casts to another dtype are not exported');
    return identity(c);
  },
};

/** Reshape to a traced shape, keeping the batch dimension symbolic (0 = copy it from the input). */
function reshapeTo(c: OpContext, shape: number[]): string {
  const s = c.shape(arg(c, 0));
  const target = [...shape];
  if (s[0] === TRACE_BATCH && target[0] === TRACE_BATCH) target[0] = 0;
  return c.node('Reshape', [c.value(arg(c, 0)), c.int64s(target)]);
}

/** Short names for the scalars GELU uses (names are stored once per use in the file). */
const SCALAR_NAMES = new Map([
  [0.5, 'half'],
  [1, 'one'],
  [Math.SQRT2, 'sqrt2'],
]);

/** Kernels that make new tensors from nothing (inside forward): their values become constants. */
const CREATION = new Set<KernelName>(['zeros', 'ones', 'full', 'zerosLike', 'onesLike', 'fullLike', 'arangeStartStep', 'empty']);

export interface TraceExportOptions {
  channels: number;
  height: number;
  width: number;
}

/**
 * Runs one eval-mode forward pass of `model` on a [2, C, H, W] input with the tracer on and adds
 * its ops to `g`, starting from the graph value `input`. Returns the output value's name. The
 * model's training flags are restored afterwards.
 */
export function traceToOnnx(model: Module, g: OnnxGraphBuilder, input: string, o: TraceExportOptions): string {
  const modes = model.modules().map((m) => [m, m.training] as const);
  model.eval();
  // Every parameter and buffer, by handle, under its first state-dict name.
  const weights = new Map<Handle, [string, Tensor]>();
  for (const [name, tensor] of model.stateDict()) if (!weights.has(tensor.handle)) weights.set(tensor.handle, [name, tensor]);
  const values = new Map<Handle, string>();
  // The innermost module running: forward methods are wrapped for the pass to keep this stack.
  const stack: Layer[] = [{ path: '', module: model }];
  const restore: (() => void)[] = [];
  for (const [path, m] of model.namedModules()) {
    const own = Object.prototype.hasOwnProperty.call(m, 'forward');
    const forward = m.forward;
    m.forward = function (this: Module, x: Tensor) {
      stack.push({ path, module: m });
      try {
        return forward.call(this, x);
      } finally {
        stack.pop();
      }
    };
    restore.push(
      own
        ? () => {
            m.forward = forward;
          }
        : () => {
            delete (m as { forward?: unknown }).forward;
          },
    );
  }
  const snapshot = (h: Handle, hint: string): string => {
    const borrowed = t.borrowHandle(h);
    try {
      return g.constFloat(hostValues(borrowed, 'float32'), borrowed.shape, hint);
    } finally {
      borrowed.dispose();
    }
  };
  const onOp = (call: TracedOp) => {
    const layer = stack[stack.length - 1]!;
    const where = `op '${call.op}' (libtorch ${t.KERNELS[call.kernel]}) in layer '${layer.path || '(model)'}' (${layer.module.typeName})`;
    const outs = Array.isArray(call.out) ? (call.out as Handle[]) : [call.out as Handle];
    if (CREATION.has(call.kernel)) {
      for (const h of outs) values.set(h, snapshot(h, `${layer.path || 'const'}/${call.op}`));
      return;
    }
    const rule = RULES[call.kernel];
    if (!rule) throw new Error(`cannot export ${where}: the ONNX exporter has no mapping for this op`);
    const hint = layer.path || call.op;
    const ctx: OpContext = {
      g,
      call,
      hint,
      value(a) {
        if (!t.isHandle(a)) throw new Error(`expected a tensor argument, got ${JSON.stringify(a)}`);
        const known = values.get(a);
        if (known) return known;
        const w = weights.get(a);
        if (w) return g.weight(w[1], w[0]);
        // A tensor made before the pass and not registered with any module: its values now.
        const v = snapshot(a, `${hint}/const`);
        values.set(a, v);
        return v;
      },
      weightOf: (a) => (t.isHandle(a) && !values.has(a) ? (weights.get(a)?.[1] ?? null) : null),
      shape: (a) => t.handleShape(a as Handle),
      node: (opType, inputs, attrs = {}, suffix) => g.node(opType, inputs, attrs, suffix ? `${hint}/${suffix}` : hint),
      scalar: (v) => g.constFloat([v], [], SCALAR_NAMES.get(v) ?? `c_${+v.toPrecision(6)}`),
      int64s: (v) => g.constInt64(v, `${hint}/shape`),
    };
    let out: string;
    try {
      out = rule(ctx);
    } catch (e) {
      throw new Error(`cannot export ${where}: ${(e as Error).message}`);
    }
    if (outs.length !== 1) throw new Error(`cannot export ${where}: ops with ${outs.length} outputs are not mapped`);
    values.set(outs[0]!, out);
  };
  try {
    // tidy frees every activation of the pass; parameters are kept tensors and survive it.
    return t.tidy(() => {
      const x = t.randn([TRACE_BATCH, o.channels, o.height, o.width]);
      values.set(x.handle, input);
      const y = t.withTracer(onOp, () => t.noGrad(() => model.forward(x)));
      const w = weights.get(y.handle);
      const out = values.get(y.handle) ?? (w ? g.weight(w[1], w[0]) : null);
      if (!out) throw new Error("cannot export: the model's output was not computed by kshare ops from its input");
      return out;
    });
  } finally {
    for (const r of restore) r();
    for (const [m, on] of modes) m.training = on;
  }
}
