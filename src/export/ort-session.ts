// Running exported models with ONNX Runtime (onnxruntime-node, CPU), with session options that
// keep shared kernels shared in memory.
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-node';
import { decodeModel, type ModelProto } from './onnx-schema.js';
import { infoFromModel, type ModelInfo } from './model-info.js';
import { sharedConvWeights } from './onnx-inspect.js';

/**
 * ONNX Runtime's fusions that fold a following BatchNormalization / Mul / Add into a Conv's
 * kernel. On a kernel used by several Convs each fusion writes that Conv its own folded copy,
 * so the session holds one kernel per layer again (bench/results/onnx-memory.json). Every other
 * optimisation, including the NCHWc layout pass, keeps one copy per shared kernel.
 */
export const SHARING_BREAKING_FUSIONS = ['ConvBNFusion', 'ConvAddFusion', 'ConvMulFusion'] as const;

export type OptimizationLevel = 'disabled' | 'basic' | 'extended' | 'all';

/**
 * kshare's recommended options: all graph optimisations, minus the kernel-folding fusions when
 * the model shares kernels (a model without sharing keeps them: they cost it no memory).
 */
export function recommendedSessionOptions(sharedKernels: number, o: { level?: OptimizationLevel; threads?: number } = {}): ort.InferenceSession.SessionOptions {
  const opts: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: o.level ?? 'all', executionProviders: ['cpu'] };
  if (o.threads) opts.intraOpNumThreads = o.threads;
  if (sharedKernels > 0) opts.extra = { optimization: { disable_specified_optimizers: SHARING_BREAKING_FUSIONS.join(';') } };
  return opts;
}

export interface LoadedOnnxModel {
  file: string;
  bytes: Uint8Array;
  proto: ModelProto;
  info: ModelInfo;
  /** Conv kernels used by more than one Conv node. */
  sharedKernels: number;
  session: ort.InferenceSession;
}

/** Reads, checks and opens an .onnx file; a corrupt or foreign file gives an error naming it. */
export async function loadOnnxModel(file: string, o: { options?: ort.InferenceSession.SessionOptions; threads?: number } = {}): Promise<LoadedOnnxModel> {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read ONNX model ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  const proto = decodeModel(bytes, file);
  const info = infoFromModel(proto, file);
  const sharedKernels = sharedConvWeights(proto).length;
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, o.options ?? recommendedSessionOptions(sharedKernels, { threads: o.threads }));
  } catch (err) {
    throw new Error(`ONNX Runtime cannot load ${file}: ${(err as Error).message}`);
  }
  return { file, bytes, proto, info, sharedKernels, session };
}

/** Runs a batch of prepared inputs ([n, C, H, W] float32, flattened) and returns [n, classes] logits. */
export async function runLogits(model: LoadedOnnxModel, input: Float32Array, n: number): Promise<Float32Array> {
  const { channels, height, width } = model.info.input;
  if (input.length !== n * channels * height * width) throw new Error(`input holds ${input.length} values, expected ${n}x${channels}x${height}x${width}`);
  const feeds = { [model.session.inputNames[0]!]: new ort.Tensor('float32', input, [n, channels, height, width]) };
  const out = await model.session.run(feeds);
  const logits = out[model.session.outputNames[0]!];
  if (!logits || logits.type !== 'float32') throw new Error(`${model.file}: the model's first output is not a float32 tensor`);
  return logits.data as Float32Array;
}
