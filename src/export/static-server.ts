// A small static file server for the web demo (web/index.html): ES modules and WebAssembly need
// http:// with the right MIME types, which file:// pages do not get. Local use only.
//
//   node dist/src/export/static-server.js [--port 8080] [--model path/to/model.onnx]
//
// serves the repository root, the page's vendor/ files (onnxruntime-web, protobufjs, the ONNX
// schema) at /web/vendor/ from node_modules, and, with --model, that file at /web/model.onnx,
// which the page opens by default.
import { createReadStream, existsSync, statSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { vendorFiles } from './web-bundle.js';

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.onnx': 'application/octet-stream',
  '.proto': 'text/plain; charset=utf-8',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.map': 'application/json',
  '.txt': 'text/plain; charset=utf-8',
  '.ico': 'image/x-icon',
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
        close: () =>
          new Promise<void>((done) => {
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

/** URL paths the repository's page needs beyond the repository itself: vendor/ and, optionally, a model. */
export function repoPageFiles(model?: string): Record<string, string> {
  const files: Record<string, string> = {};
  for (const [name, file] of Object.entries(vendorFiles())) files[`/web/vendor/${name}`] = file;
  if (model) files['/web/model.onnx'] = path.resolve(model);
  return files;
}

const USAGE = `usage: node dist/src/export/static-server.js [--port 8080] [--host 127.0.0.1] [--model model.onnx]

Serves the web demo (web/) from this repository at http://127.0.0.1:8080/web/ (local use only).
  --port <n>      port to listen on (default 8080; 0 picks a free one)
  --host <addr>   address to listen on (default 127.0.0.1)
  --model <file>  an ONNX export (kshare export) the page opens; without it, open one in the page
`;

async function main(args: string[]): Promise<void> {
  const fail = (msg: string): never => {
    process.stderr.write(`static-server: ${msg}\n`);
    process.exit(1);
  };
  const opts: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--help' || a === '-h') {
      process.stdout.write(USAGE);
      return;
    }
    if (!['--port', '--host', '--model'].includes(a)) fail(`unknown argument '${a}' (see --help)`);
    if (args[i + 1] === undefined) fail(`${a} needs a value (see --help)`);
    opts[a.slice(2)] = args[++i]!;
  }
  const port = Number(opts.port ?? 8080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port must be a port number (0-65535), got '${opts.port}'`);
  if (opts.model && !existsSync(opts.model)) fail(`no such model file ${opts.model}`);
  const host = opts.host ?? '127.0.0.1';
  let s: StaticServer;
  try {
    s = await startStaticServer({ root: repoRoot(), port, host, files: repoPageFiles(opts.model) });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE')
      fail(
        `port ${port} on ${host} is already in use (another server, or an earlier static-server still running): pick another with --port, e.g. --port ${port === 8080 ? 8081 : 8080}`,
      );
    if (code === 'EACCES') fail(`no permission to listen on port ${port}: use a port above 1023`);
    throw e;
  }
  console.log(`serving ${repoRoot()} at ${s!.url}; open ${s!.url}/web/${opts.model ? '' : ' (no --model: open a .onnx file in the page)'}`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main(process.argv.slice(2));
}
