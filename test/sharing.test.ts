// Kernel sharing as a first-class concept: plans on any model, their predicted and actual
// savings, gradients of shared kernels, and sharing surviving optimizer steps.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import {
  Module,
  Conv2d,
  GELU,
  Sequential,
  AdaptiveAvgPool2d,
  Flatten,
  Linear,
  analyzeSharing,
  applySharingPlan,
  parseSharingPlan,
  shareGroups,
  convolutions,
  type SharingPlan,
} from '../src/nn/index.js';
import { ConvMixer, SEResNet, createModel } from '../src/models/index.js';
import { SGD, AdamW } from '../src/train/optim/index.js';

/** A stem (3->8) then six isomorphic 8->8 3x3 convs with varying stride/padding/dilation. */
function toyModel(): Sequential {
  t.manualSeed(5);
  return new Sequential(
    new Conv2d(3, 8, 3, { padding: 1 }),
    new GELU(),
    new Conv2d(8, 8, 3, { padding: 1 }),
    new GELU(),
    new Conv2d(8, 8, 3, { padding: 2, dilation: 2 }),
    new GELU(),
    new Conv2d(8, 8, 3, { padding: 1, stride: 2 }),
    new GELU(),
    new Conv2d(8, 8, 3, { padding: 1 }),
    new GELU(),
    new Conv2d(8, 8, 3, { padding: 1 }),
    new GELU(),
    new Conv2d(8, 8, 3, { padding: 1 }),
    new AdaptiveAvgPool2d(1),
    new Flatten(),
    new Linear(8, 5),
  );
}
const ISO = ['2', '4', '6', '8', '10', '12'];
const groupsOf = (m: Module) => shareGroups(m).map((g) => g.layers);

test('each plan kind makes the documented groups, and analyzeSharing predicts the parameter count it yields', () => {
  const cases: [SharingPlan, string[][]][] = [
    [{ kind: 'none' }, []],
    [{ kind: 'isomorphic' }, [ISO]],
    [
      { kind: 'consecutive', size: 2 },
      [
        ['2', '4'],
        ['6', '8'],
        ['10', '12'],
      ],
    ],
    [
      { kind: 'consecutive', size: 4 },
      [
        ['2', '4', '6', '8'],
        ['10', '12'],
      ],
    ],
    [
      { kind: 'strided', kernels: 2 },
      [
        ['2', '6', '10'],
        ['4', '8', '12'],
      ],
    ],
    [
      { kind: 'strided', kernels: 4 },
      [
        ['2', '10'],
        ['4', '12'],
      ],
    ],
    [
      {
        kind: 'groups',
        groups: [
          ['4', '12'],
          ['6', '8', '10'],
        ],
      },
      [
        ['4', '12'],
        ['6', '8', '10'],
      ],
    ],
    [{ kind: 'isomorphic', include: ['1*'] }, [['10', '12']]],
    [{ kind: 'isomorphic', exclude: ['2', '4'] }, [['6', '8', '10', '12']]],
  ];
  const live = t.liveTensors();
  const model = toyModel();
  const unshared = model.numParameters();
  assert.equal(unshared, 3 * 8 * 9 + 8 + 6 * (8 * 8 * 9 + 8) + 8 * 5 + 5);
  for (const [plan, expected] of cases) {
    const predicted = analyzeSharing(model, [{ name: 'p', plan }]).plans[0]!;
    applySharingPlan(model, plan);
    assert.deepEqual(groupsOf(model), expected, `groups of ${JSON.stringify(plan)}`);
    assert.equal(model.numParameters(), predicted.params, `predicted params of ${JSON.stringify(plan)}`);
    const saved = expected.reduce((a, g) => a + (g.length - 1) * (8 * 8 * 9 + 8), 0);
    assert.equal(predicted.savedParams, saved);
    assert.equal(predicted.savedBytes, 4 * saved);
    assert.equal(unshared - model.numParameters(), saved);
  }
  model.dispose();
  assert.equal(t.liveTensors(), live, 'rebinding frees the tensors no layer uses any more');
});

test("weights-only sharing keeps per-layer biases; the kernel takes the first member's values", () => {
  const model = toyModel();
  const first = Array.from((model.at(2) as Conv2d).weight.toFloat32Array());
  const biases = ISO.map((i) => Array.from((model.at(+i) as Conv2d).bias!.toFloat32Array()));
  applySharingPlan(model, { kind: 'isomorphic', shareBias: false });
  const convs = ISO.map((i) => model.at(+i) as Conv2d);
  for (const c of convs) assert.equal(c.weight, convs[0]!.weight);
  assert.deepEqual(Array.from(convs[3]!.weight.toFloat32Array()), first);
  convs.forEach((c, i) => assert.deepEqual(Array.from(c.bias!.toFloat32Array()), biases[i]));
  assert.equal(shareGroups(model)[0]!.bias, null);
  assert.equal(shareGroups(model)[0]!.kernel, '2.weight');
  model.dispose();
});

test('non-isomorphic or malformed plans are refused with errors naming the layers', () => {
  const model = toyModel();
  assert.throws(
    () => applySharingPlan(model, { kind: 'groups', groups: [['0', '2']] }),
    /cannot share a kernel between '0' \(3->8, 3x3\) and '2' \(8->8, 3x3\): in channels 3 vs 8/,
  );
  assert.throws(
    () =>
      applySharingPlan(model, {
        kind: 'groups',
        groups: [
          ['2', '4'],
          ['4', '6'],
        ],
      }),
    /layer '4' is in group 0 and group 1/,
  );
  assert.throws(() => applySharingPlan(model, { kind: 'groups', groups: [['2', '5']] }), /'5', which is not a Conv2d of this model/);
  assert.throws(() => applySharingPlan(model, { kind: 'consecutive', size: 0 }), /size must be a positive integer/);
  assert.throws(
    () => applySharingPlan(model, { kind: 'everything' } as unknown as SharingPlan),
    /'kind' must be one of none, isomorphic, groups, consecutive, strided/,
  );
  assert.deepEqual(groupsOf(model), [], 'a refused plan changes nothing');
  model.dispose();
});

test("the isomorphic plan on the unshared paper models gives the paper's shared models", () => {
  const cm = new ConvMixer({ dim: 256, depth: 16, kernelSize: 9, patchSize: 1, classes: 10 });
  applySharingPlan(cm, { kind: 'isomorphic' });
  assert.equal(cm.numParameters(), 107_274);
  assert.deepEqual(
    shareGroups(cm).map((g) => [g.kernel, g.bias, g.layers.length]),
    [
      ['3.0.fn.0.weight', '3.0.fn.0.bias', 16],
      ['3.1.weight', '3.1.bias', 16],
    ],
  );
  cm.dispose();
  const se = new SEResNet({ depth: 2, classes: 10, share: [false, false, false] });
  const analysis = analyzeSharing(se);
  assert.equal(analysis.plans.find((p) => p.name === 'isomorphic')!.params, 1_223_002);
  assert.deepEqual(
    analysis.classes.filter((c) => c.layers.length > 1).map((c) => c.layers),
    [
      ['layer1.0.conv2', 'layer1.1.conv1', 'layer1.1.conv2'],
      ['layer2.0.conv2', 'layer2.1.conv1', 'layer2.1.conv2'],
      ['layer3.0.conv2', 'layer3.1.conv1', 'layer3.1.conv2'],
    ],
  );
  applySharingPlan(se, { kind: 'isomorphic', scopes: ['layer2', 'layer3'] });
  assert.equal(se.numParameters(), 1_296_730, 'stages 2 and 3 only: the older original');
  applySharingPlan(se, { kind: 'isomorphic' });
  assert.equal(se.numParameters(), 1_223_002);
  assert.deepEqual(
    shareGroups(se).map((g) => g.kernel),
    ['layer1.0.conv2.weight', 'layer2.0.conv2.weight', 'layer3.0.conv2.weight'],
  );
  se.dispose();
});

test("a shared kernel's gradient is the sum of the gradients of its uses", () => {
  const model = toyModel();
  applySharingPlan(model, { kind: 'strided', kernels: 2 });
  const x = t.randn([2, 3, 12, 12]);
  const loss = (m: Module) => t.tidy(() => t.sum(t.pow(m.forward(x), 2)).backward());
  loss(model);
  const shared = [(model.at(2) as Conv2d).weight.grad!, (model.at(4) as Conv2d).weight.grad!];
  // The same values without sharing: every layer holds its own copy.
  applySharingPlan(model, { kind: 'none' });
  model.zeroGrad();
  loss(model);
  const per = ISO.map((i) => (model.at(+i) as Conv2d).weight.grad!);
  t.tidy(() => {
    const sums = [t.add(t.add(per[0]!, per[2]!), per[4]!), t.add(t.add(per[1]!, per[3]!), per[5]!)];
    sums.forEach((s, i) => {
      const err = t.max(t.abs(t.sub(s, shared[i]!))).item() / t.max(t.abs(s)).item();
      assert.ok(err < 1e-5, `kernel ${i}: relative difference ${err}`);
    });
  });
  t.dispose([x, ...shared, ...per]);
  model.dispose();
});

function checkStillShared(model: Module): number {
  let groups = 0;
  for (const g of shareGroups(model)) {
    const convs = convolutions(model)
      .filter((e) => g.layers.includes(e.path))
      .map((e) => e.conv);
    const ref = Array.from(convs[0]!.weight.toFloat32Array());
    for (const c of convs) {
      assert.equal(c.weight, convs[0]!.weight);
      assert.deepEqual(Array.from(c.weight.toFloat32Array()), ref, `${g.layers.join(',')} see identical values`);
    }
    groups++;
  }
  return groups;
}

test('after optimizer steps every layer of a share group still sees one, updated kernel', () => {
  for (const [name, makeOpt] of [
    ['convmixer_64_4_k5_p2_shared', (p: Tensor[]) => new AdamW(p, { lr: 1e-2, weightDecay: 0.01 })],
    ['se_resnet_d_2_full_shared', (p: Tensor[]) => new SGD(p, { lr: 0.1, momentum: 0.9, weightDecay: 1e-4 })],
  ] as const) {
    t.manualSeed(0);
    const model = createModel(name);
    const params = model.parameters();
    const opt = makeOpt(params);
    const kernel = shareGroups(model)[0]!;
    const w = model.stateDict().get(kernel.kernel)!;
    const before = Array.from(w.toFloat32Array());
    const x = t.randn([2, 3, 32, 32]);
    const y = t.tensor([1, 3], [2], { dtype: 'int64' });
    for (let i = 0; i < 2; i++) {
      t.tidy(() => t.crossEntropy(model.forward(x), y).backward());
      opt.step();
      opt.zeroGrad();
    }
    assert.notDeepEqual(Array.from(w.toFloat32Array()), before, `${name}: the kernel was updated`);
    assert.equal(checkStillShared(model), name.startsWith('convmixer') ? 2 : 3);
    // The optimiser holds exactly the model's distinct trainable tensors, each once (a shared
    // kernel is one tensor, stepped once per step), and the steps replaced none of them.
    const distinct = new Set([...model.stateDict().values()].filter((v) => v.requiresGrad));
    const held = opt.groups.flatMap((g) => g.params);
    assert.equal(held.length, distinct.size, `${name}: the optimiser holds ${held.length} tensors, the model has ${distinct.size} trainable ones`);
    assert.ok(
      held.every((p) => distinct.has(p)),
      `${name}: the optimiser holds a tensor that is not the model's`,
    );
    const now = model.parameters();
    assert.equal(now.length, params.length);
    now.forEach((p, i) => assert.equal(p, params[i], `${name}: parameter ${i} is another tensor after the steps`));
    t.dispose([x, y]);
    model.dispose();
  }
});

test('plans parse from short command-line text', () => {
  assert.deepEqual(parseSharingPlan('none'), { kind: 'none' });
  assert.deepEqual(parseSharingPlan('isomorphic/weights'), { kind: 'isomorphic', shareBias: false });
  assert.deepEqual(parseSharingPlan('consecutive:4'), { kind: 'consecutive', size: 4 });
  assert.deepEqual(parseSharingPlan('strided:2'), { kind: 'strided', kernels: 2 });
  assert.deepEqual(parseSharingPlan('groups:2,4;6,8'), {
    kind: 'groups',
    groups: [
      ['2', '4'],
      ['6', '8'],
    ],
  });
  assert.deepEqual(parseSharingPlan('{"kind":"isomorphic","scopes":["layer2"]}'), { kind: 'isomorphic', scopes: ['layer2'] });
  assert.throws(() => parseSharingPlan('consecutive:0'), /needs a positive integer/);
  assert.throws(() => parseSharingPlan('random'), /expected none, isomorphic, consecutive:K/);
  assert.throws(() => parseSharingPlan('{"kind":"all"}'), /'kind' must be one of/);
  const model = toyModel();
  applySharingPlan(model, parseSharingPlan('strided:3'));
  assert.deepEqual(groupsOf(model), [
    ['2', '8'],
    ['4', '10'],
    ['6', '12'],
  ]);
  model.dispose();
});
