// A self-contained copy of the web demo for deployment: the page, its sample images, the
// runtime files it needs (onnxruntime-web's WebAssembly build, protobufjs, the ONNX schema) in
// vendor/, and the model as model.onnx. Any static file server can serve the folder, offline.
import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { ONNX_PROTO_PATH } from './onnx-schema.js';
import { repoRoot } from './static-server.js';

/** onnxruntime-web files the page loads with one WebAssembly thread and no WebGPU. */
const ORT_FILES = ['ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm'];
const PAGE_FILES = ['index.html', 'app.js', 'style.css'];

function packageDir(pkg: string, entryToDir: (entry: string) => string): string {
  const require = createRequire(import.meta.url);
  return entryToDir(require.resolve(pkg));
}

/** The page's vendor/ folder: file name -> where it comes from (node_modules and the ONNX schema). */
export function vendorFiles(): Record<string, string> {
  const ortDist = packageDir('onnxruntime-web', (e) => path.dirname(e));
  const protobufMin = path.join(
    packageDir('protobufjs', (e) => path.dirname(e)),
    'dist',
    'protobuf.min.js',
  );
  return {
    ...Object.fromEntries(ORT_FILES.map((f) => [f, path.join(ortDist, f)])),
    'protobuf.min.js': protobufMin,
    'onnx.proto': ONNX_PROTO_PATH,
  };
}

/** Writes the bundle into `outDir` (created if needed) and returns the files written. */
export function writeWebBundle(outDir: string, modelBytes: Uint8Array): string[] {
  const web = path.join(repoRoot(), 'web');
  const written: string[] = [];
  const copy = (from: string, to: string) => {
    mkdirSync(path.dirname(to), { recursive: true });
    copyFileSync(from, to);
    written.push(path.relative(outDir, to));
  };
  for (const f of PAGE_FILES) copy(path.join(web, f), path.join(outDir, f));
  for (const f of readdirSync(path.join(web, 'samples'))) copy(path.join(web, 'samples', f), path.join(outDir, 'samples', f));
  for (const [f, from] of Object.entries(vendorFiles())) copy(from, path.join(outDir, 'vendor', f));
  writeFileSync(path.join(outDir, 'model.onnx'), modelBytes);
  written.push('model.onnx');
  return written;
}
