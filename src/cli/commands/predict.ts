// `kshare predict`: classify image files with an exported .onnx model (ONNX Runtime) or a
// checkpoint (kshare's own libtorch forward pass), printing the top classes.
import { readFileSync } from 'node:fs';
import { InvalidArgumentError, type Command } from 'commander';
import { prepareImage } from '../../export/image-input.js';
import { topK, type Prediction } from '../../export/predict.js';
import type { InputSpec, ModelInfo } from '../../export/model-info.js';
import { DEFAULT_MAX_IMAGE_PIXELS, setMaxImagePixels } from '../../data/image-header.js';

interface PredictCliOptions {
  top: number;
  json?: boolean;
  threads?: number;
  maxImagePixels?: number;
}

type Classifier = { info: ModelInfo; logits(input: Float32Array): Promise<Float32Array>; close(): void };

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

async function openOnnx(file: string, threads?: number): Promise<Classifier> {
  // Loaded on demand: ONNX Runtime's native library is only needed by this path.
  const { loadOnnxModel, runLogits } = await import('../../export/ort-session.js');
  const m = await loadOnnxModel(file, { threads });
  return { info: m.info, logits: (x) => runLogits(m, x, 1), close: () => void m.session.release() };
}

async function openCheckpoint(file: string): Promise<Classifier> {
  const t = await import('../../tensor/index.js');
  const { modelFromCheckpoint } = await import('../../export/model-source.js');
  const { model, info, cpuMemoryFormat } = modelFromCheckpoint(file);
  const { channels, height, width } = info.input;
  // The architecture's CPU memory format (src/models/spec.ts): NCHW for ConvMixer (kshare's
  // kernels), channels_last elsewhere (oneDNN's convolutions without layout reorders).
  model.to({ device: 'cpu', memoryFormat: cpuMemoryFormat });
  return {
    info,
    logits: async (x) => t.tidy(() => t.noGrad(() => model.forward(t.contiguous(t.tensor(x, [1, channels, height, width]), cpuMemoryFormat)).toFloat32Array())),
    close: () => model.dispose(),
  };
}

function readImage(file: string): Uint8Array {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`cannot read image ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
}

function sizeNote(spec: InputSpec, from?: { width: number; height: number }): string {
  return from ? ` (${from.width}x${from.height}, centre-cropped and resized to ${spec.width}x${spec.height})` : '';
}

export function register(program: Command): void {
  program
    .command('predict')
    .description('classify PNG/JPEG images with an exported .onnx model or a .safetensors checkpoint')
    .argument('<model>', 'model.onnx (run with ONNX Runtime) or a checkpoint .safetensors (run with libtorch)')
    .argument('<images...>', "PNG or JPEG files; other sizes than the model's are centre-cropped and resized")
    .option('--top <k>', 'how many classes to show', positiveInt, 5)
    .option('--json', 'print one JSON object per image instead of a table')
    .option('--threads <n>', 'ONNX Runtime intra-op threads (default: all cores)', positiveInt)
    .option('--max-image-pixels <n>', `refuse images with more pixels than this before decoding them (default ${DEFAULT_MAX_IMAGE_PIXELS})`, positiveInt)
    .action(async (modelFile: string, images: string[], o: PredictCliOptions) => {
      if (o.maxImagePixels !== undefined) setMaxImagePixels(o.maxImagePixels);
      const lower = modelFile.toLowerCase();
      let clf: Classifier;
      if (lower.endsWith('.onnx')) clf = await openOnnx(modelFile, o.threads);
      else if (lower.endsWith('.safetensors')) clf = await openCheckpoint(modelFile);
      else throw new Error(`predict: '${modelFile}' is neither a .onnx model nor a .safetensors checkpoint`);
      try {
        let failures = 0;
        for (const file of images) {
          let preds: Prediction[];
          let note = '';
          try {
            const prepared = prepareImage(readImage(file), clf.info.input, file);
            note = sizeNote(clf.info.input, prepared.resizedFrom);
            preds = topK(await clf.logits(prepared.input), clf.info.classes, o.top);
          } catch (err) {
            // One bad image should not hide the results for the others.
            failures++;
            if (o.json) console.log(JSON.stringify({ image: file, error: (err as Error).message }));
            else process.stderr.write(`kshare: ${(err as Error).message}\n`);
            continue;
          }
          if (o.json) {
            console.log(
              JSON.stringify({
                image: file,
                ...(note ? { resized: true } : {}),
                top: preds.map((p) => ({ class: p.label, index: p.index, probability: p.probability })),
              }),
            );
          } else {
            console.log(`${file}${note}`);
            const w = Math.max(...preds.map((p) => p.label.length));
            for (const p of preds) console.log(`  ${p.label.padEnd(w)}  ${(p.probability * 100).toFixed(2).padStart(6)}%`);
          }
        }
        if (failures) throw new Error(`${failures} of ${images.length} image(s) could not be classified`);
      } finally {
        clf.close();
      }
    });
}
