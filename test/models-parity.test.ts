// Parity with the PyTorch reference (test/fixtures/ref_models.py) on CPU: the same seed gives
// the same initial weights, and with the same weights (moved through a safetensors file) the
// logits in train and eval mode, the gradients (a shared kernel's is the sum over its uses)
// and the updated BatchNorm statistics agree within 1e-4 relative.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as t from '../src/tensor/index.js';
import { BatchNorm2d } from '../src/nn/index.js';
import { createModel, saveWeights } from '../src/models/index.js';
import { runPython, encode, decodeF32, maxRelError, type Encoded } from './helpers/python.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'kshare-parity-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const PY = `
import ref_models, safetensors_np as st
kw = {'preact': True} if inp['preact'] else {}
torch.manual_seed(0)
m = ref_models.build(inp['name'], inp['classes'], **kw)
init, _ = st.read_state_dict(inp['init'])
init_mismatch = [k for k, v in m.state_dict().items() if k not in init or not torch.equal(v, init[k])]
sd, _ = st.read_state_dict(inp['weights'])
m.load_state_dict(sd)
x, r = dec(inp['x']), dec(inp['r'])
m.eval()
with torch.no_grad():
    y_eval = m(x)
m.train()
y = m(x)
(y * r).sum().backward()
params = dict(m.named_parameters())
sdict = m.state_dict()
print(json.dumps({
    'init_mismatch': init_mismatch,
    'keys': list(params.keys()),
    'eval': enc(y_eval), 'train': enc(y),
    'grads': {k: enc(params[k].grad) for k in inp['grad_keys']},
    'stats': {k: enc(sdict[k]) for k in inp['stat_keys']},
}))
`;

interface PyOut {
  init_mismatch: string[];
  keys: string[];
  eval: Encoded;
  train: Encoded;
  grads: Record<string, Encoded>;
  stats: Record<string, Encoded>;
}

function randomizeBatchNorms(model: ReturnType<typeof createModel>): void {
  // Fresh BNs are the identity in eval mode; random affine and running statistics make the
  // eval-mode comparison meaningful.
  t.noGrad(() => {
    for (const m of model.modules()) {
      if (!(m instanceof BatchNorm2d)) continue;
      t.uniform_(m.weight!, 0.5, 1.5);
      t.normal_(m.bias!, 0, 0.1);
      t.normal_(m.runningMean!, 0, 0.1);
      t.uniform_(m.runningVar!, 0.5, 1.5);
    }
  });
}

function checkParity(name: string, o: { classes?: number; batch: number; preact?: boolean; gradKeys?: (keys: string[]) => string[] }): void {
  const classes = o.classes ?? 10;
  const live = t.liveTensors();
  t.manualSeed(0);
  const model = createModel(name, { classes, overrides: o.preact ? { preact: true } : undefined });
  try {
    const initFile = path.join(dir, `${name}-init.safetensors`);
    const file = path.join(dir, `${name}.safetensors`);
    saveWeights(model, initFile);
    randomizeBatchNorms(model);
    saveWeights(model, file);
    const keys = model.namedParameters().map(([k]) => k);
    const gradKeys = o.gradKeys ? o.gradKeys(keys) : keys;
    const bnKeys = [...model.stateDict().keys()].filter((k) => k.endsWith('running_mean') || k.endsWith('running_var'));
    const statKeys = [bnKeys[0]!, bnKeys[bnKeys.length - 1]!];
    const [x, r] = [t.randn([o.batch, 3, 32, 32]), t.randn([o.batch, classes])];
    model.eval();
    const yEval = t.noGrad(() => t.tidy(() => model.forward(x).toFloat32Array()));
    model.train();
    const yTrain = t.tidy(() => {
      const y = model.forward(x);
      t.sum(t.mul(y, r)).backward();
      return y.toFloat32Array();
    });
    const sd = model.stateDict();
    const grads = new Map(
      model
        .namedParameters()
        .filter(([k]) => gradKeys.includes(k))
        .map(([k, p]) => [k, t.tidy(() => p.grad!.toFloat32Array())]),
    );
    const stats = new Map(statKeys.map((k) => [k, sd.get(k)!.toFloat32Array()]));
    const py = runPython<PyOut>(PY, {
      name,
      classes,
      preact: !!o.preact,
      init: initFile,
      weights: file,
      x: encode(x.toFloat32Array(), x.shape),
      r: encode(r.toFloat32Array(), r.shape),
      grad_keys: gradKeys,
      stat_keys: statKeys,
    });
    t.dispose([x, r]);

    assert.deepEqual(py.init_mismatch, [], 'same seed must give the same initial weights as the reference');
    assert.deepEqual(keys, py.keys, 'parameter names and order (shared kernels once)');
    const errEval = maxRelError(yEval, decodeF32(py.eval));
    const errTrain = maxRelError(yTrain, decodeF32(py.train));
    assert.ok(errEval < 1e-4, `${name}: eval logits differ by ${errEval}`);
    assert.ok(errTrain < 1e-4, `${name}: train logits differ by ${errTrain}`);
    for (const [k, g] of grads) {
      const e = maxRelError(g, decodeF32(py.grads[k]!));
      assert.ok(e < 1e-4, `${name}: gradient of ${k} differs by ${e}`);
    }
    for (const [k, v] of stats) {
      const e = maxRelError(v, decodeF32(py.stats[k]!));
      assert.ok(e < 1e-4, `${name}: ${k} after a training step differs by ${e}`);
    }
  } finally {
    model.zeroGrad();
    model.dispose();
  }
  assert.equal(t.liveTensors(), live, 'no tensor leaked');
}

test('small ConvMixer (64/4, k5, p2) unshared matches PyTorch', () => {
  checkParity('convmixer_64_4_k5_p2', { batch: 4 });
});

test('small ConvMixer (64/4, k5, p2) shared matches PyTorch, including summed shared-kernel gradients', () => {
  checkParity('convmixer_64_4_k5_p2_shared', { batch: 4, classes: 100 });
});

test('ConvMixer-256/16 shared (the original convmixer_256_16_shared) matches PyTorch on 2 images', () => {
  checkParity('convmixer_256_16_shared', { batch: 2 });
});

const seKeys = (keys: string[]) => keys.filter((k) => /^(conv1|fc)\.|conv2\.weight$|layer3\.1\.conv1|se\.fc\.0|downsample\.0/.test(k));

test('SE-ResNet d=2 unshared matches PyTorch', () => {
  checkParity('se_resnet_d_2', { batch: 3, gradKeys: seKeys });
});

test('SE-ResNet d=2 with all stages shared matches PyTorch', () => {
  checkParity('se_resnet_d_2_full_shared', { batch: 3, gradKeys: seKeys });
});

test('SE-ResNet d=2 shared, pre-activation form, matches PyTorch', () => {
  checkParity('se_resnet_d_2_full_shared', { batch: 2, preact: true, gradKeys: seKeys });
});
