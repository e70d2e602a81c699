// Walks a kshare module tree once and emits the matching ONNX nodes (inference semantics:
// BatchNorm uses its running statistics, Dropout is the identity).
//
// BatchNorm is kept as its own node after every convolution, shared or not: folding it into
// the kernel would give each layer its own copy of a shared kernel and undo the sharing.
import type { Tensor } from '../tensor/index.js';
import type { Module } from '../nn/module.js';
import { Conv2d } from '../nn/conv.js';
import { BatchNorm2d } from '../nn/batchnorm.js';
import { Linear } from '../nn/linear.js';
import { AdaptiveAvgPool2d, Dropout, Flatten, GELU, ReLU, Sigmoid } from '../nn/activation.js';
import { Residual, Sequential } from '../nn/container.js';
import { SqueezeExcitation } from '../nn/squeeze-excitation.js';
import { attr, hostValues, type OnnxGraphBuilder } from './onnx-graph.js';

/** Emits `m` applied to the value `x`; returns the output value's name. `path` names the layer. */
export type LayerEmitter<M extends Module = Module> = (m: M, x: string, g: OnnxGraphBuilder, path: string, emit: EmitFn) => string;
export type EmitFn = (m: Module, x: string, path: string) => string;

interface Rule { test: (m: Module) => boolean; emit: LayerEmitter<Module> }

const rules: Rule[] = [];

/**
 * Teaches the exporter a module class (model blocks with their own forward register here).
 * Later registrations win, so a subclass can override its base class's rule.
 */
export function registerLayerEmitter<M extends Module>(cls: abstract new (...args: never[]) => M, emit: LayerEmitter<M>): void {
  rules.unshift({ test: (m) => m instanceof cls, emit: emit as LayerEmitter<Module> });
}

/** Emits the whole model; throws naming the first layer it cannot express in ONNX. */
export function emitModule(root: Module, x: string, g: OnnxGraphBuilder): string {
  const emit: EmitFn = (m, input, path) => {
    const rule = rules.find((r) => r.test(m));
    if (!rule) throw new Error(`cannot export layer '${path || '(model)'}' of type ${m.typeName}: the ONNX exporter has no rule for it`);
    return rule.emit(m, input, g, path, emit);
  };
  return emit(root, x, '');
}

const child = (path: string, name: string) => (path ? `${path}.${name}` : name);

registerLayerEmitter(Sequential, (m, x, _g, path, emit) => {
  let y = x;
  m.layers.forEach((layer, i) => { y = emit(layer, y, child(path, String(i))); });
  return y;
});

registerLayerEmitter(Residual, (m, x, g, path, emit) => {
  const fx = emit(m.fn, x, child(path, 'fn'));
  return g.node('Add', [fx, x], {}, `${path}/add`);
});

registerLayerEmitter(Conv2d, (m, x, g, path) => {
  const inputs = [x, g.weight(m.weight, child(path, 'weight'))];
  if (m.bias) inputs.push(g.weight(m.bias, child(path, 'bias')));
  return g.node('Conv', inputs, {
    kernel_shape: attr.ints(m.kernelSize),
    strides: attr.ints(m.stride),
    pads: attr.ints([m.padding[0], m.padding[1], m.padding[0], m.padding[1]]),
    dilations: attr.ints(m.dilation),
    group: attr.int(m.groups),
  }, path || 'conv');
});

registerLayerEmitter(BatchNorm2d, (m, x, g, path) => {
  const mean = m.runningMean, variance = m.runningVar;
  if (!mean || !variance) {
    throw new Error(`cannot export layer '${path}': BatchNorm2d without running statistics normalises with batch statistics at inference`);
  }
  // Inference BN is y = x·a + b per channel with a = γ/√(var+ε), b = β − mean·a. Writing a and b
  // as the node's scale and shift (mean 0, var 1, ε 0 as constants every BN of that width
  // shares) stores 2 vectors per BN instead of 4, so the file is about the trainable bytes.
  const n = m.numFeatures;
  const read = (v: Tensor | null, fill: number) => (v ? hostValues(v, 'float32') : new Float32Array(n).fill(fill));
  const gamma = read(m.weight, 1), beta = read(m.bias, 0), mu = read(mean, 0), sigma2 = read(variance, 1);
  const scale = new Float32Array(n), shift = new Float32Array(n);
  for (let c = 0; c < n; c++) {
    const a = gamma[c]! / Math.sqrt(sigma2[c]! + m.eps);
    scale[c] = a;
    shift[c] = beta[c]! - mu[c]! * a;
  }
  return g.node('BatchNormalization', [
    x, g.derivedWeight(scale, [n], child(path, 'scale')), g.derivedWeight(shift, [n], child(path, 'shift')),
    g.constFloat(new Float32Array(n), [n], `zeros_${n}`), g.constFloat(new Float32Array(n).fill(1), [n], `ones_${n}`),
  ], { epsilon: attr.float(0) }, path || 'bn');
});

registerLayerEmitter(Linear, (m, x, g, path) => {
  const inputs = [x, g.weight(m.weight, child(path, 'weight'))];
  if (m.bias) inputs.push(g.weight(m.bias, child(path, 'bias')));
  // Gemm computes x·Wᵀ + b on a 2-D input, which is where every Linear of these models sits.
  return g.node('Gemm', inputs, { transB: attr.int(1) }, path || 'linear');
});

registerLayerEmitter(GELU, (m, x, g, path) => {
  const half = g.constFloat([0.5], [], `${path}/half`);
  const one = g.constFloat([1], [], `${path}/one`);
  if (m.approximate === 'none') {
    // Opset 17 has no Gelu op: 0.5·x·(1 + erf(x/√2)), which ONNX Runtime fuses back into one kernel.
    const scaled = g.node('Div', [x, g.constFloat([Math.SQRT2], [], `${path}/sqrt2`)], {}, `${path}/div`);
    const erf = g.node('Erf', [scaled], {}, `${path}/erf`);
    const plusOne = g.node('Add', [erf, one], {}, `${path}/add`);
    const xs = g.node('Mul', [x, plusOne], {}, `${path}/mul`);
    return g.node('Mul', [xs, half], {}, path || 'gelu');
  }
  // tanh form: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
  const cube = g.node('Mul', [x, g.node('Mul', [x, x], {}, `${path}/sq`)], {}, `${path}/cube`);
  const inner = g.node('Add', [x, g.node('Mul', [cube, g.constFloat([0.044715], [], `${path}/c`)], {}, `${path}/cx`)], {}, `${path}/inner`);
  const th = g.node('Tanh', [g.node('Mul', [inner, g.constFloat([Math.sqrt(2 / Math.PI)], [], `${path}/k`)], {}, `${path}/kx`)], {}, `${path}/tanh`);
  const xs = g.node('Mul', [x, g.node('Add', [th, one], {}, `${path}/add`)], {}, `${path}/mul`);
  return g.node('Mul', [xs, half], {}, path || 'gelu');
});

registerLayerEmitter(ReLU, (_m, x, g, path) => g.node('Relu', [x], {}, path || 'relu'));
registerLayerEmitter(Sigmoid, (_m, x, g, path) => g.node('Sigmoid', [x], {}, path || 'sigmoid'));
// Eval-mode dropout passes values through unchanged.
registerLayerEmitter(Dropout, (_m, x) => x);

registerLayerEmitter(Flatten, (m, x, g, path) => {
  if (m.startDim !== 1 || (m.endDim !== -1 && m.endDim !== 3)) {
    throw new Error(`cannot export layer '${path}': only Flatten(1, -1) is supported, got Flatten(${m.startDim}, ${m.endDim})`);
  }
  return g.node('Flatten', [x], { axis: attr.int(1) }, path || 'flatten');
});

registerLayerEmitter(AdaptiveAvgPool2d, (m, x, g, path) => {
  if (m.outputSize[0] !== 1 || m.outputSize[1] !== 1) {
    throw new Error(`cannot export layer '${path}': AdaptiveAvgPool2d to ${m.outputSize.join('x')} (only 1x1, i.e. global average pooling, is supported)`);
  }
  return g.node('GlobalAveragePool', [x], {}, path || 'pool');
});

registerLayerEmitter(SqueezeExcitation, (m, x, g, path, emit) => {
  const pooled = g.node('GlobalAveragePool', [x], {}, child(path, 'avg_pool'));
  const flat = g.node('Flatten', [pooled], { axis: attr.int(1) }, `${path}/flatten`);
  const s = emit(m.fc, flat, child(path, 'fc'));
  // [N, C] -> [N, C, 1, 1] so the gate broadcasts over H and W.
  const gate = g.node('Unsqueeze', [s, g.constInt64([2, 3], `${path}/axes`)], {}, `${path}/gate`);
  return g.node('Mul', [x, gate], {}, path || 'se');
});
