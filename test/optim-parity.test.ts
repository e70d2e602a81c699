// SGD and AdamW against torch.optim: the same parameters and gradients, one step and three
// steps (so momentum buffers and Adam moments carry state), parameter values compared.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { SGD, AdamW, type SGDOptions, type AdamWOptions } from '../src/train/optim/index.js';
import { runPython, encode, decodeF32, maxRelError, type Encoded } from './helpers/python.js';

const TOL = 1e-5;
const SHAPES = [[3, 4], [4], [2, 3, 3, 3], [5]];
const STEPS = 3;

const enc = (x: Tensor): Encoded => encode(x.toFloat32Array(), x.shape);

interface Config {
  name: string;
  kind: 'SGD' | 'AdamW';
  /** parameter indices of each group, with per-group overrides */
  groups: { idx: number[]; options: Record<string, number | boolean | number[]> }[];
  defaults: Record<string, number | boolean | number[]>;
}

const CONFIGS: Config[] = [
  { name: 'SGD plain', kind: 'SGD', groups: [{ idx: [0, 1, 2, 3], options: {} }], defaults: { lr: 0.1 } },
  { name: 'SGD momentum', kind: 'SGD', groups: [{ idx: [0, 1, 2, 3], options: {} }], defaults: { lr: 0.05, momentum: 0.9 } },
  {
    name: 'SGD momentum + dampening + weight decay',
    kind: 'SGD',
    groups: [{ idx: [0, 1, 2, 3], options: {} }],
    defaults: { lr: 0.05, momentum: 0.8, dampening: 0.3, weightDecay: 0.01 },
  },
  {
    name: 'SGD nesterov + weight decay',
    kind: 'SGD',
    groups: [{ idx: [0, 1, 2, 3], options: {} }],
    defaults: { lr: 0.05, momentum: 0.9, nesterov: true, weightDecay: 5e-4 },
  },
  {
    name: 'SGD two groups (one without weight decay)',
    kind: 'SGD',
    groups: [
      { idx: [0, 2], options: {} },
      { idx: [1, 3], options: { weightDecay: 0, lr: 0.2 } },
    ],
    defaults: { lr: 0.05, momentum: 0.9, weightDecay: 0.05 },
  },
  { name: 'AdamW defaults', kind: 'AdamW', groups: [{ idx: [0, 1, 2, 3], options: {} }], defaults: { lr: 0.01 } },
  {
    name: 'AdamW betas, eps, weight decay, two groups (one at weightDecay 0)',
    kind: 'AdamW',
    groups: [
      { idx: [0, 2], options: {} },
      { idx: [1, 3], options: { weightDecay: 0, lr: 0.003 } },
    ],
    defaults: { lr: 0.02, betas: [0.8, 0.95], eps: 1e-6, weightDecay: 0.1 },
  },
];

// torch.optim option names from ours.
const PY = `
res = []
for c in inp['configs']:
    params = [dec(p).requires_grad_(True) for p in inp['params']]
    rename = {'lr': 'lr', 'momentum': 'momentum', 'dampening': 'dampening', 'weightDecay': 'weight_decay', 'nesterov': 'nesterov', 'betas': 'betas', 'eps': 'eps'}
    conv = lambda o: {rename[k]: (tuple(v) if isinstance(v, list) else v) for k, v in o.items()}
    groups = [dict(params=[params[i] for i in g['idx']], **conv(g['options'])) for g in c['groups']]
    cls = torch.optim.SGD if c['kind'] == 'SGD' else torch.optim.AdamW
    opt = cls(groups, **conv(c['defaults']))
    snaps = []
    for s in range(len(inp['grads'])):
        for p, g in zip(params, inp['grads'][s]):
            p.grad = dec(g)
        opt.step()
        snaps.append([enc(p) for p in params])
    res.append(snaps)
print(json.dumps(res))
`;

test('SGD and AdamW match torch.optim after 1 and 3 steps', () => {
  const gen = new t.Generator(77);
  const init = SHAPES.map((s) => t.randn(s, { generator: gen }));
  const grads = Array.from({ length: STEPS }, () => SHAPES.map((s) => t.randn(s, { generator: gen }).mul(0.5)));
  const ref = runPython<Encoded[][][]>(PY, {
    configs: CONFIGS.map((c) => ({ kind: c.kind, groups: c.groups, defaults: c.defaults })),
    params: init.map(enc),
    grads: grads.map((gs) => gs.map(enc)),
  });
  for (const [ci, c] of CONFIGS.entries()) {
    const params = init.map((p) => t.clone(p).requiresGrad_());
    const groups = c.groups.map((g) => ({ params: g.idx.map((i) => params[i]!), options: g.options }));
    const opt =
      c.kind === 'SGD'
        ? new SGD(groups as { params: Tensor[]; options: Partial<SGDOptions> }[], c.defaults as Partial<SGDOptions> & { lr: number })
        : new AdamW(groups as { params: Tensor[]; options: Partial<AdamWOptions> }[], c.defaults as Partial<AdamWOptions>);
    for (let s = 0; s < STEPS; s++) {
      params.forEach((p, i) => {
        p.grad = t.clone(grads[s]![i]!);
      });
      opt.step();
      if (s !== 0 && s !== STEPS - 1) continue;
      params.forEach((p, i) => {
        const e = maxRelError(p.toFloat32Array(), decodeF32(ref[ci]![s]![i]!));
        assert.ok(e <= TOL, `${c.name}: parameter ${i} after step ${s + 1} differs from torch by ${e}`);
      });
    }
    // The update must have moved every parameter (guards against a no-op passing).
    params.forEach((p, i) => assert.ok(maxRelError(p.toFloat32Array(), init[i]!.toFloat32Array()) > 1e-3, `${c.name}: parameter ${i} did not move`));
    opt.dispose();
    t.dispose(params);
  }
  t.dispose([init, grads]);
});
