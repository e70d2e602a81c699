// End-to-end test of the web demo (web/index.html) in headless Chromium: the page loads an
// exported model with onnxruntime-web from a local server, shows its download size and
// trainable parameters, classifies a bundled sample image, and its answer matches
// onnxruntime-node's; non-images, wrong-sized images and corrupt models give clear messages.
// Needs Debian's chromium (/usr/bin/chromium, installed by scripts/setup.sh); skipped without it,
// except under CI, where it fails (test/helpers/prerequisites.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { PNG } from 'pngjs';
import type { Browser, Page } from 'playwright-core';
import { exportOnnx } from '../src/export/export-onnx.js';
import { prepareImage } from '../src/export/image-input.js';
import { recommendedSessionOptions } from '../src/export/ort-session.js';
import { writeWebBundle } from '../src/export/web-bundle.js';
import { repoPageFiles, repoRoot, startStaticServer, type StaticServer } from '../src/export/static-server.js';
import { maxRelError } from './helpers/python.js';
import { skipUnless } from './helpers/prerequisites.js';
import { preparedModel } from './export-fixtures.js';

const CHROMIUM = process.env.KSHARE_CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const MODEL = 'convmixer_64_4_k5_p2_shared';
const skip = skipUnless(existsSync(CHROMIUM), CHROMIUM, "install Debian's chromium package (scripts/setup.sh does) to run the browser test");

interface DemoResult {
  label: string;
  input: number[];
  logits: number[];
  top: { label: string; probability: number }[];
  resizedFrom: { width: number; height: number } | null;
}

async function waitForResult(page: Page, label: string, staleError: string | null = null): Promise<DemoResult> {
  // An error still shown from an earlier action (a sample click fetches the image before the
  // page clears it) is not this action's outcome: wait for the result or a different error.
  await page.waitForFunction(
    ([l, stale]) => {
      const d = (window as unknown as { kshareDemo: { last: { label: string } | null; error: string | null } }).kshareDemo;
      return d.last?.label === l || (d.error !== null && d.error !== stale);
    },
    [label, staleError] as const,
    { timeout: 60_000 },
  );
  const { last, error } = await page.evaluate(() => (window as unknown as { kshareDemo: { last: DemoResult; error: string | null } }).kshareDemo);
  assert.equal(error, null, `page error: ${error}`);
  return last;
}

/** WCAG contrast ratio of two 'rgb(r, g, b)' colours. */
function contrast(a: string, b: string): number {
  const lum = (c: string) => {
    const [r, g, bl] = c
      .match(/\d+(\.\d+)?/g)!
      .slice(0, 3)
      .map((v) => {
        const s = Number(v) / 255;
        return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
      });
    return 0.2126 * r! + 0.7152 * g! + 0.0722 * bl!;
  };
  const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
  return (x! + 0.05) / (y! + 0.05);
}

async function waitForError(page: Page, staleError: string | null = null): Promise<string> {
  await page.waitForFunction(
    (stale) => {
      const error = (window as unknown as { kshareDemo: { error: string | null } }).kshareDemo.error;
      return error !== null && error !== stale;
    },
    staleError,
    { timeout: 30_000 },
  );
  const text = await page.textContent('#error');
  assert.ok(await page.isVisible('#error'), 'the error is shown on the page');
  return text ?? '';
}

test('web page: classifies a sample in Chromium like onnxruntime-node, and explains bad input', { skip, timeout: 240_000 }, async (ctx) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kshare-web-'));
  let server: StaticServer | null = null;
  let browser: Browser | null = null;
  const src = preparedModel(MODEL, 2, { headScale: 3 });
  try {
    const { bytes } = exportOnnx(src.model, { ...src.info, source: 'test weights' });
    const modelFile = path.join(dir, 'model.onnx');
    writeFileSync(modelFile, bytes);
    server = await startStaticServer({ root: repoRoot(), files: repoPageFiles(modelFile) });
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const page = await browser.newPage();
    const pageErrors: string[] = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));

    // Only the local server is ever contacted (the page works offline).
    const foreign: string[] = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(server!.url) && !r.url().startsWith('data:')) foreign.push(r.url());
    });
    const missing: string[] = [];
    page.on('response', (r) => {
      if (r.status() >= 400) missing.push(`${r.status()} ${r.url()}`);
    });

    await page.goto(`${server.url}/web/`);
    await page.waitForFunction(
      () => document.body.dataset.state === 'ready' || (window as unknown as { kshareDemo: { error: string | null } }).kshareDemo.error,
      null,
      { timeout: 120_000 },
    );
    assert.equal(await page.evaluate(() => (window as unknown as { kshareDemo: { error: string | null } }).kshareDemo.error), null);
    assert.equal(await page.textContent('#model-name'), MODEL);
    assert.equal(await page.textContent('#model-params'), src.info.params.toLocaleString('en-US'));
    assert.equal(await page.textContent('#model-source'), 'test weights');
    assert.match((await page.textContent('#model-size'))!, new RegExp(`\\(${bytes.byteLength.toLocaleString('en-US')} bytes\\)`));
    assert.match((await page.textContent('#model-shared'))!, /^2, used by 8 convolutions$/);

    // A bundled sample, through the page's own buttons.
    await page.click('button[data-sample=cat]');
    const cat = await waitForResult(page, 'sample cat.jpg');
    assert.equal(cat.resizedFrom, null);
    assert.equal(await page.locator('#result li').count(), 5);
    assert.equal(await page.getAttribute('#result li:first-child', 'data-class'), cat.top[0]!.label);
    // The bars stand out from their track and the panel (WCAG's 3:1 for graphics).
    const colours = await page.evaluate(() => {
      const bar = document.querySelector('#result li:first-child .bar')!;
      return {
        bar: getComputedStyle(bar).backgroundColor,
        track: getComputedStyle(bar.parentElement!).backgroundColor,
        width: bar.getBoundingClientRect().width,
      };
    });
    assert.ok(contrast(colours.bar, colours.track) >= 3 && contrast(colours.bar, 'rgb(255, 255, 255)') >= 3, `bar ${colours.bar} on ${colours.track}`);
    assert.ok(colours.width > 0);

    // onnxruntime-node on the very input the page built gives the page's logits.
    const session = await ort.InferenceSession.create(bytes, recommendedSessionOptions(2, { threads: 1 }));
    const run = async (x: Float32Array) => (await session.run({ input: new ort.Tensor('float32', x, [1, 3, 32, 32]) })).logits!.data as Float32Array;
    const nodeOnPageInput = await run(Float32Array.from(cat.input));
    const err = maxRelError(cat.logits, nodeOnPageInput);
    ctx.diagnostic(`page vs onnxruntime-node logits on the page's input: max relative error ${err.toExponential(2)}`);
    assert.ok(err < 1e-4, `logits differ by ${err}`);

    // `kshare predict`'s own preprocessing of the same file (jpeg-js instead of Chromium's decoder).
    const nodeInput = prepareImage(readFileSync(path.join(repoRoot(), 'web/samples/cat.jpg')), src.info.input, 'cat.jpg').input;
    const diffs = Array.from(nodeInput, (v, i) => Math.abs(v - cat.input[i]!) * src.info.input.std[Math.floor(i / 1024)]! * 255);
    const maxLevels = Math.max(...diffs),
      meanLevels = diffs.reduce((a, b) => a + b, 0) / diffs.length;
    ctx.diagnostic(`Chromium vs jpeg-js decoding of cat.jpg: mean difference ${meanLevels.toFixed(2)}, max ${maxLevels.toFixed(2)} of 255 levels`);
    // JPEG decoders may round the IDCT and upsample chroma differently: small, not equal.
    assert.ok(meanLevels < 2 && maxLevels <= 24, `decoders differ by ${meanLevels} levels on average, ${maxLevels} at most`);
    const nodeLogits = await run(nodeInput);
    const nodeTop = Array.from(nodeLogits).indexOf(Math.max(...nodeLogits));
    assert.equal(cat.top[0]!.label, src.info.classes[nodeTop], 'same top class as onnxruntime-node on the jpeg-js decoded file');
    ctx.diagnostic(
      `page top-3: ${cat.top
        .slice(0, 3)
        .map((p) => `${p.label} ${(p.probability * 100).toFixed(1)}%`)
        .join(', ')}`,
    );
    await session.release();

    // A wrong-sized image is centre-cropped and resized, and the page says so.
    const png = new PNG({ width: 64, height: 48 });
    for (let i = 0; i < png.data.length; i += 4) png.data.set([200, ((i / 4) % 64) * 4, 50, 255], i);
    const pngFile = path.join(dir, 'wide.png');
    writeFileSync(pngFile, PNG.sync.write(png));
    await page.setInputFiles('#image-file', pngFile);
    const wide = await waitForResult(page, 'wide.png');
    assert.deepEqual(wide.resizedFrom, { width: 64, height: 48 });
    assert.match((await page.textContent('#result-note'))!, /64x48, centre-cropped and resized to 32x32/);

    // Not an image.
    const textFile = path.join(dir, 'notes.txt');
    writeFileSync(textFile, 'this is not an image');
    await page.setInputFiles('#image-file', textFile);
    const imageError = await waitForError(page);
    assert.match(imageError, /notes\.txt is not an image this browser can decode/);

    // A corrupt model file: a clear message, and the loaded model keeps working.
    const corrupt = path.join(dir, 'broken.onnx');
    writeFileSync(corrupt, bytes.subarray(0, 5000));
    await page.setInputFiles('#model-file', corrupt);
    const modelError = await waitForError(page, imageError);
    assert.match(modelError, /broken\.onnx is not a valid ONNX model|cannot load broken\.onnx/);
    await page.click('button[data-sample=ship]');
    await waitForResult(page, 'sample ship.jpg', modelError);

    assert.deepEqual(pageErrors, []);
    assert.deepEqual(foreign, [], 'no request leaves the local server');
    assert.deepEqual(missing, [], 'served from the repository, every file the page asks for exists');

    // The deployable bundle (`kshare export --web`): served on its own, without node_modules.
    const bundle = path.join(dir, 'site');
    writeWebBundle(bundle, bytes);
    const siteServer = await startStaticServer({ root: bundle });
    try {
      const site = await browser.newPage();
      const requested: string[] = [];
      site.on('request', (r) => requested.push(r.url()));
      await site.goto(`${siteServer.url}/`);
      await site.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 120_000 });
      await site.click('button[data-sample=cat]');
      const again = await waitForResult(site, 'sample cat.jpg');
      assert.deepEqual(again.logits, cat.logits, 'the bundle computes what the repository page computed');
      assert.ok(
        requested.every((u) => u.startsWith(siteServer.url) || u.startsWith('data:')),
        'offline: every request goes to the bundle',
      );
      assert.ok(requested.some((u) => u.endsWith('/vendor/ort-wasm-simd-threaded.wasm')));
    } finally {
      await siteServer.close();
    }
  } finally {
    await browser?.close();
    await server?.close();
    src.model.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('web page: without a model it says what to do next; opened as file:// it says how to serve it', { skip, timeout: 180_000 }, async () => {
  let server: StaticServer | null = null;
  let browser: Browser | null = null;
  try {
    server = await startStaticServer({ root: repoRoot(), files: repoPageFiles() });
    const { chromium } = await import('playwright-core');
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const page = await browser.newPage();
    const missing: string[] = [];
    page.on('response', (r) => {
      if (r.status() >= 400) missing.push(new URL(r.url()).pathname);
    });
    await page.goto(`${server.url}/web/`);
    await page.waitForFunction(() => document.body.dataset.state !== 'loading', null, { timeout: 120_000 });
    const noModel = await page.evaluate(() => (window as unknown as { kshareDemo: { state: string; error: string | null; notice: string | null } }).kshareDemo);
    assert.equal(noModel.state, 'no-model');
    assert.equal(noModel.error, null);
    assert.equal(await page.textContent('#model-name'), 'no model loaded');
    assert.ok(await page.isVisible('#notice'));
    assert.match(noModel.notice ?? '', /Open a \.onnx model.*kshare export --checkpoint .* --out model\.onnx.*static-server\.js --model model\.onnx/);
    assert.deepEqual(missing, ['/web/model.onnx'], 'the only missing file is the model itself');
    // Classifying without a model says what to do.
    await page.click('button[data-sample=cat]');
    assert.match(await waitForError(page), /no model loaded: open a \.onnx model first/);

    const file = await browser.newPage();
    await file.goto(`file://${path.join(repoRoot(), 'web', 'index.html')}`);
    await file.waitForFunction(() => document.body.dataset.state === 'file', null, { timeout: 30_000 });
    assert.notEqual(await file.textContent('#model-name'), 'loading…');
    assert.ok(await file.isVisible('#notice'));
    assert.match(
      (await file.textContent('#notice'))!,
      /opened as a file \(file:\/\/\).*node dist\/src\/export\/static-server\.js --model model\.onnx.*http:\/\/127\.0\.0\.1:8080\/web\//,
    );
  } finally {
    await browser?.close();
    await server?.close();
  }
});
