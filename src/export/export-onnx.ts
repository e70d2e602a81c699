// Model → ONNX bytes, and writing them to disk atomically.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../models/safetensors.js';
import type { Module } from '../nn/module.js';
import { OnnxGraphBuilder, type GraphStats } from './onnx-graph.js';
import { traceToOnnx } from './trace-to-onnx.js';
import { encodeModel } from './onnx-schema.js';
import { infoToMetadata, type ModelInfo } from './model-info.js';

export interface ExportOptions {
  /** Store weights as float16 (half the file); the graph computes in float32. */
  fp16?: boolean;
  /** kshare's version, recorded as producer_version. */
  producerVersion?: string;
}

export interface ExportResult {
  bytes: Uint8Array;
  stats: GraphStats & { fileBytes: number };
}

/** Input and output names of every kshare export. */
export const INPUT_NAME = 'input';
export const OUTPUT_NAME = 'logits';

/**
 * Exports `model` in inference form, by tracing one eval-mode forward pass (trace-to-onnx.ts). Input: float32 [batch, C, H, W], already normalised as
 * `info.input` describes; output: float32 [batch, classes] logits.
 */
export function exportOnnx(model: Module, info: ModelInfo, o: ExportOptions = {}): ExportResult {
  const g = new OnnxGraphBuilder({ dtype: o.fp16 ? 'float16' : 'float32' });
  const { channels, height, width } = info.input;
  const x = g.addInput(INPUT_NAME, ['batch', channels, height, width]);
  const y = traceToOnnx(model, g, x, info.input);
  g.addOutput(y, OUTPUT_NAME, ['batch', info.classes.length]);
  const proto = g.toModel({
    graphName: info.model,
    producerVersion: o.producerVersion ?? '0',
    docString: `kshare ${info.model}: ${info.params} trainable parameters, ${o.fp16 ? 'float16' : 'float32'} weights`,
    metadata: infoToMetadata(info),
  });
  const bytes = encodeModel(proto);
  return { bytes, stats: { ...g.stats, fileBytes: bytes.byteLength } };
}

/** Writes the model via a temporary file and a rename, so a crash never leaves half a model behind. */
export function writeOnnxFile(file: string, bytes: Uint8Array): void {
  mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  writeFileAtomic(file, [bytes]);
}
