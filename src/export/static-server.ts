// A small static file server for the web demo (web/index.html): ES modules and WebAssembly need
// http:// with the right MIME types, which file:// pages do not get. Local use only.
//
//   node dist/src/export/static-server.js [--port 8080] [--model path/to/model.onnx]
//
// serves the repository root (the page loads onnxruntime-web and protobufjs from node_modules)
// and, with --model, that file at /web/model.onnx, which the page opens by default.
import { createReadStream, existsSync, statSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm', '.onnx': 'application/octet-stream',
  '.proto': 'text/plain; charset=utf-8', '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg', '.png': 'image/png', '.svg': 'image/svg+xml',
  '.map': 'application/json', '.txt': 'text/plain; charset=utf-8', '.ico': 'image/x-icon',
};

export interface StaticServerOptions {
  /** Folder served at '/'. */
  root: string;
  /** Extra URL paths mapped to files (e.g. { '/model.onnx': '/tmp/m.onnx' }). */
  files?: Record<string, string>;
  port?: number;
  host?: string;
}

export interface StaticServer {
  url: string;
  close(): Promise<void>;
}

/** Maps a URL path to a file under root, or null when it would leave root. */
function resolveUnder(root: string, urlPath: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  const file = path.resolve(root, `.${path.posix.normalize(`/${decoded}`)}`);
  return file === root || file.startsWith(root + path.sep) ? file : null;
}

export function startStaticServer(o: StaticServerOptions): Promise<StaticServer> {
  const root = path.resolve(o.root);
  const server = http.createServer((req, res) => {
    const urlPath = new URL(req.url ?? '/', 'http://localhost').pathname;
    let file = o.files?.[urlPath] ?? resolveUnder(root, urlPath);
    if (file && existsSync(file) && statSync(file).isDirectory()) file = path.join(file, 'index.html');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    if (!file || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${urlPath}\n`);
      return;
    }
    res.writeHead(200, {
      'content-type': MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream',
      'content-length': statSync(file).size,
      'cache-control': 'no-cache',
    });
    if (req.method === 'HEAD') res.end();
    else createReadStream(file).pipe(res);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, o.host ?? '127.0.0.1', () => {
      const { address, port } = server.address() as AddressInfo;
      resolve({
        url: `http://${address}:${port}`,
        close: () => new Promise<void>((done) => {
          server.closeAllConnections();
          server.close(() => done());
        }),
      });
    });
  });
}

/** The repository root (this file is src/export/ or dist/src/export/). */
export function repoRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const up of ['../..', '../../..']) {
    const dir = path.resolve(here, up);
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'web'))) return dir;
  }
  throw new Error('cannot find the kshare repository root (with package.json and web/)');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opt = (name: string) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const model = opt('--model');
  if (model && !existsSync(model)) {
    process.stderr.write(`static-server: no such model file ${model}\n`);
    process.exit(1);
  }
  const s = await startStaticServer({ root: repoRoot(), port: Number(opt('--port') ?? 8080), files: model ? { '/web/model.onnx': path.resolve(model) } : {} });
  console.log(`serving ${repoRoot()} at ${s.url}; open ${s.url}/web/`);
}
