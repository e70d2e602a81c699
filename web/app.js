// kshare web demo: loads an ONNX export with onnxruntime-web, reads kshare's metadata
// (class names, parameter count, normalisation) from the file with protobufjs, and classifies
// images dropped, picked or chosen from the bundled samples. Runs offline: every dependency is
// loaded from this server (./vendor/ in a bundle made by `kshare export --web`, else the
// repository's node_modules/).

const SAMPLES = ['airplane', 'automobile', 'cat', 'frog', 'ship'];
/** Where the runtime and schema live: a self-contained bundle first, then the repository layout. */
const ORT_DIRS = ['./vendor/', '../node_modules/onnxruntime-web/dist/'];
const PROTOBUF_SCRIPTS = ['./vendor/protobuf.min.js', '../node_modules/protobufjs/dist/protobuf.min.js'];
const PROTO_FILES = ['./vendor/onnx.proto', '../src/export/onnx.proto'];

const $ = (id) => document.getElementById(id);

/** What the page did last; the end-to-end test reads it (window.kshareDemo). */
const demo = { state: 'loading', model: null, last: null, error: null, notice: null };
window.kshareDemo = demo;

function setState(state) {
  demo.state = state;
  document.body.dataset.state = state;
}

function showError(message) {
  demo.error = message;
  $('error').textContent = message;
  $('error').hidden = false;
}

/** A next step for the user (not an error): shown above the panels. */
function showNotice(parts) {
  demo.notice = parts.map((p) => (typeof p === 'string' ? p : p.code)).join('');
  $('notice').replaceChildren(
    ...parts.map((p) => {
      if (typeof p === 'string') return document.createTextNode(p);
      const c = document.createElement('code');
      c.textContent = p.code;
      return c;
    }),
  );
  $('notice').hidden = false;
}

function clearNotice() {
  demo.notice = null;
  $('notice').hidden = true;
}

function clearError() {
  demo.error = null;
  $('error').hidden = true;
}

async function firstWorking(candidates, load) {
  const problems = [];
  for (const c of candidates) {
    try {
      return await load(c);
    } catch (err) {
      problems.push(`${c}: ${err.message}`);
    }
  }
  throw new Error(`could not load a dependency (${problems.join('; ')})`);
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement('script');
    s.src = src;
    s.onload = () => resolve();
    s.onerror = () => reject(new Error('not found'));
    document.head.append(s);
  });
}

async function fetchOk(url, as = 'arrayBuffer') {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return r[as]();
}

let ort = null;
let modelProtoType = null;

async function loadRuntime() {
  ort = await firstWorking(ORT_DIRS, async (dir) => {
    const mod = await import(`${dir}ort.wasm.min.mjs`);
    mod.env.wasm.wasmPaths = new URL(dir, location.href).href;
    // Threads need a cross-origin-isolated page; one thread keeps the page servable anywhere.
    mod.env.wasm.numThreads = 1;
    return mod;
  });
  await firstWorking(PROTOBUF_SCRIPTS, async (src) => {
    await loadScript(src);
    if (!window.protobuf) throw new Error('protobuf global missing');
  });
  const protoText = await firstWorking(PROTO_FILES, (f) => fetchOk(f, 'text'));
  modelProtoType = window.protobuf.parse(protoText).root.lookupType('onnx.ModelProto');
}

// ---- reading the model file ----

function metadataOf(m) {
  const props = Object.fromEntries((m.metadataProps ?? []).map((p) => [p.key, p.value]));
  const json = (k) => {
    if (props[k] === undefined) return undefined;
    try {
      return JSON.parse(props[k]);
    } catch {
      throw new Error(`metadata '${k}' is not valid JSON`);
    }
  };
  const out = m.graph.output?.[0]?.type?.tensorType?.shape?.dim?.[1]?.dimValue;
  const classes = json('kshare.classes') ?? Array.from({ length: Number(out ?? 0) }, (_, i) => `class ${i}`);
  const input = json('kshare.input') ?? { channels: 3, height: 32, width: 32, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
  const params = props['kshare.params'] !== undefined ? Number(props['kshare.params']) : null;
  return { name: props['kshare.model'] ?? m.graph.name ?? 'unnamed model', classes, input, params, source: props['kshare.source'] ?? 'not recorded' };
}

/** Conv kernels used by more than one Conv node (looking through the Casts of float16 storage). */
function sharedKernels(m) {
  const inits = new Set((m.graph.initializer ?? []).map((t) => t.name));
  const producer = new Map((m.graph.node ?? []).map((n) => [n.output[0], n]));
  const users = new Map();
  for (const n of m.graph.node ?? []) {
    if (n.opType !== 'Conv' || !n.input[1]) continue;
    let v = n.input[1];
    for (let i = 0; i < 4 && !inits.has(v) && producer.get(v)?.opType === 'Cast'; i++) v = producer.get(v).input[0];
    if (inits.has(v)) users.set(v, (users.get(v) ?? 0) + 1);
  }
  return [...users.values()].filter((u) => u > 1);
}

function formatBytes(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB` : `${(n / 1e3).toFixed(1)} kB`;
}

async function loadModel(bytes, label) {
  setState('loading');
  clearError();
  let proto;
  try {
    proto = modelProtoType.toObject(modelProtoType.decode(bytes), { longs: Number });
    if (!proto.graph || !proto.opsetImport?.length) throw new Error('no graph or opset');
  } catch (err) {
    throw new Error(`${label} is not a valid ONNX model (${err.message})`);
  }
  const meta = metadataOf(proto);
  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ['wasm'],
      graphOptimizationLevel: 'all',
      // Keep shared kernels shared in memory: these fusions give every Conv its own folded copy.
      extra: { optimization: { disable_specified_optimizers: 'ConvBNFusion;ConvAddFusion;ConvMulFusion' } },
    });
  } catch (err) {
    throw new Error(`onnxruntime-web cannot load ${label}: ${err.message ?? err}`);
  }
  const shared = sharedKernels(proto);
  demo.model?.session.release?.();
  demo.model = { label, session, ...meta, downloadBytes: bytes.byteLength, sharedKernels: shared.length, sharedUses: shared.reduce((a, b) => a + b, 0) };
  $('model-name').textContent = meta.name;
  $('model-size').textContent = `${formatBytes(bytes.byteLength)} (${bytes.byteLength.toLocaleString('en-US')} bytes)`;
  $('model-source').textContent = meta.source;
  $('model-params').textContent = meta.params === null ? 'unknown (not a kshare export)' : meta.params.toLocaleString('en-US');
  $('model-shared').textContent = shared.length ? `${shared.length}, used by ${demo.model.sharedUses} convolutions` : 'none';
  $('model-classes').textContent = `${meta.classes.length}: ${meta.classes.slice(0, 10).join(', ')}${meta.classes.length > 10 ? ', …' : ''}`;
  $('model-input').textContent = `${meta.input.width}x${meta.input.height} RGB`;
  $('model-button').textContent = 'Open another .onnx model';
  $('result').replaceChildren();
  $('result-note').textContent = '';
  clearNotice();
  setState('ready');
}

// ---- classifying an image ----

function softmax(logits) {
  const max = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

/** Decodes, centre-crops to the model's aspect ratio and resamples to its size; returns RGBA bytes. */
async function toModelPixels(blob, label, spec) {
  let bmp;
  try {
    bmp = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  } catch {
    throw new Error(`${label} is not an image this browser can decode (PNG or JPEG expected)`);
  }
  const { width: W, height: H } = spec;
  const scale = Math.min(bmp.width / W, bmp.height / H);
  const sw = W * scale,
    sh = H * scale;
  const canvas = $('preview');
  canvas.width = W;
  canvas.height = H;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.clearRect(0, 0, W, H);
  ctx.drawImage(bmp, (bmp.width - sw) / 2, (bmp.height - sh) / 2, sw, sh, 0, 0, W, H);
  const resizedFrom = bmp.width !== W || bmp.height !== H ? { width: bmp.width, height: bmp.height } : null;
  bmp.close();
  return { rgba: ctx.getImageData(0, 0, W, H).data, resizedFrom };
}

async function classify(blob, label) {
  const m = demo.model;
  if (!m) throw new Error('no model loaded: open a .onnx model first (the button in the Model panel)');
  setState('busy');
  clearError();
  try {
    const spec = m.input;
    const { rgba, resizedFrom } = await toModelPixels(blob, label, spec);
    const n = spec.width * spec.height;
    const input = new Float32Array(3 * n);
    for (let c = 0; c < 3; c++) for (let p = 0; p < n; p++) input[c * n + p] = (rgba[p * 4 + c] / 255 - spec.mean[c]) / spec.std[c];
    const feeds = { [m.session.inputNames[0]]: new ort.Tensor('float32', input, [1, 3, spec.height, spec.width]) };
    const out = await m.session.run(feeds);
    const logits = Array.from(out[m.session.outputNames[0]].data);
    if (logits.length !== m.classes.length) throw new Error(`the model gives ${logits.length} scores but names ${m.classes.length} classes`);
    const probs = softmax(logits);
    const top = probs
      .map((p, i) => ({ index: i, label: m.classes[i], probability: p }))
      .sort((a, b) => b.probability - a.probability || a.index - b.index)
      .slice(0, 5);
    demo.last = { label, input: Array.from(input), logits, top, resizedFrom };
    renderResult(top, label, resizedFrom, spec);
    setState('ready');
  } catch (err) {
    setState('ready');
    throw err;
  }
}

function renderResult(top, label, resizedFrom, spec) {
  $('result-note').textContent = resizedFrom
    ? `${label}: ${resizedFrom.width}x${resizedFrom.height}, centre-cropped and resized to ${spec.width}x${spec.height}`
    : label;
  $('result').replaceChildren(
    ...top.map((t) => {
      const li = document.createElement('li');
      li.dataset.class = t.label;
      li.dataset.probability = String(t.probability);
      const pct = (t.probability * 100).toFixed(1);
      li.innerHTML = `<span class="prob">${pct}%</span><span class="name"></span><span class="track"><span class="bar" style="width:${Math.max(1, t.probability * 100)}%"></span></span>`;
      li.querySelector('.name').textContent = t.label;
      return li;
    }),
  );
}

// ---- wiring ----

function guard(promise) {
  promise.catch((err) => {
    showError(err.message ?? String(err));
    if (demo.state === 'loading') setState(demo.model ? 'ready' : 'no-model');
  });
}

function setUpInputs() {
  const samples = $('samples');
  for (const name of SAMPLES) {
    const b = document.createElement('button');
    b.type = 'button';
    b.dataset.sample = name;
    b.innerHTML = `<img src="samples/${name}.jpg" alt=""><span>${name}</span>`;
    b.onclick = () =>
      guard(
        fetch(`samples/${name}.jpg`)
          .then((r) => r.blob())
          .then((blob) => classify(blob, `sample ${name}.jpg`)),
      );
    samples.append(b);
  }
  $('image-file').onchange = (e) => {
    const f = e.target.files[0];
    if (f) guard(classify(f, f.name));
    e.target.value = '';
  };
  $('model-file').onchange = (e) => {
    const f = e.target.files[0];
    if (f) guard(f.arrayBuffer().then((buf) => loadModel(new Uint8Array(buf), f.name)));
    e.target.value = '';
  };
  const zone = $('drop-zone');
  zone.ondragover = (e) => {
    e.preventDefault();
    zone.classList.add('over');
  };
  zone.ondragleave = () => zone.classList.remove('over');
  zone.ondrop = (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const f = e.dataTransfer.files[0];
    if (!f) return;
    if (f.name.toLowerCase().endsWith('.onnx')) guard(f.arrayBuffer().then((buf) => loadModel(new Uint8Array(buf), f.name)));
    else guard(classify(f, f.name));
  };
}

async function main() {
  if (location.protocol === 'file:') return; // index.html's inline script explains how to serve the page
  setUpInputs();
  await loadRuntime();
  // model.onnx next to the page (a `kshare export --web` bundle, or web/model.onnx in the repository).
  const url = new URLSearchParams(location.search).get('model') ?? 'model.onnx';
  let bytes;
  try {
    bytes = new Uint8Array(await fetchOk(url));
  } catch (err) {
    setState('no-model');
    $('model-name').textContent = 'no model loaded';
    $('model-button').textContent = 'Open a .onnx model';
    showNotice([
      `No model yet (${url}: ${err.message}). Open an ONNX export with the "Open a .onnx model" button, or export one and serve it with the page: `,
      { code: 'npx kshare export --checkpoint runs/<run>/checkpoint.safetensors --out model.onnx' },
      ' then ',
      { code: 'node dist/src/export/static-server.js --model model.onnx' },
      '.',
    ]);
    return;
  }
  await loadModel(bytes, url.split('/').pop());
}

guard(main());
