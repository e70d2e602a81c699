// The paper's models and the registry: exact parameter counts of the original code, names,
// user configs, the info summary and the `kshare models` / `kshare info` commands.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as t from '../src/tensor/index.js';
import { Sequential, Conv2d, Linear, Flatten, AdaptiveAvgPool2d } from '../src/nn/index.js';
import {
  createModel,
  listModels,
  registerModel,
  loadModelConfigFile,
  modelSummary,
  ConvMixer,
  SEResNet,
  saveWeights,
  type ModelSummary,
  registerArchitecture,
  defineArchitecture,
  field,
  cifarInput,
  IMAGENET_NORM,
  buildFromConfig,
  modelInputSpec,
  modelRecipe,
  modelCpuMemoryFormat,
  configFromName,
} from '../src/models/index.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'kshare-models-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');

// Trainable parameters logged by the original code (see docs/architecture-notes.md).
const COUNTS: [string, number, number][] = [
  ['convmixer_256_16', 1_409_034, 1_432_164],
  ['convmixer_256_16_shared', 107_274, 130_404],
  ['se_resnet_d_2', 2_771_290, 2_794_420],
  ['se_resnet_d_2_full_shared', 1_223_002, 1_246_132],
  ['se_resnet_d_3', 1_235_546, 1_258_676],
  ['se_resnet_d_4', 1_248_090, 1_271_220],
  ['se_resnet_d_6', 1_273_178, 1_296_308],
  ['se_resnet_d_8', 1_298_266, 1_321_396],
  ['se_resnet_d_10', 1_323_354, 1_346_484],
];

test('trainable parameter counts equal the original code for 10 and 100 classes', () => {
  const live = t.liveTensors();
  for (const [name, c10, c100] of COUNTS) {
    for (const [classes, expected] of [
      [10, c10],
      [100, c100],
    ] as const) {
      const m = createModel(name, { classes });
      assert.equal(m.numParameters(), expected, `${name}, ${classes} classes`);
      m.dispose();
    }
  }
  assert.equal(t.liveTensors(), live);
});

test('structure follows the originals: names, sharing flags, the sync switch and pre-activation', () => {
  const cm = createModel('convmixer_256_16_shared') as ConvMixer;
  assert.ok(cm instanceof ConvMixer);
  assert.deepEqual([cm.dim, cm.depth, cm.kernelSize, cm.patchSize, cm.sharing], [256, 16, 9, 1, 'both']);
  const dw = cm
    .at(3 + 7)
    .namedModules()
    .find(([n]) => n === '0.fn.0')![1] as Conv2d;
  assert.deepEqual([dw.groups, dw.padding, dw.kernelSize], [256, [4, 4], [9, 9]]);
  assert.equal(cm.stateDict().get('21.weight')!.shape.join(), '10,256', 'head at index 5+depth');
  cm.dispose();
  const counts: Record<string, number> = {};
  for (const sharing of ['depthwise', 'pointwise'] as const) {
    const m = new ConvMixer({ dim: 256, depth: 16, kernelSize: 9, patchSize: 1, classes: 10, sharing });
    counts[sharing] = m.numParameters();
    m.dispose();
  }
  assert.equal(counts.depthwise, 1_409_034 - 15 * 20_992);
  assert.equal(counts.pointwise, 1_409_034 - 15 * 65_792);
  const noSync = createModel('se_resnet_d_2_full_shared', { overrides: { sync: false } });
  assert.equal(noSync.numParameters(), 2_771_290, 'sync=false turns sharing off whatever the flags');
  noSync.dispose();
  const pre = createModel('se_resnet_d_2_full_shared', { overrides: { preact: true } }) as SEResNet;
  assert.equal(pre.numParameters(), 1_222_522);
  assert.equal(
    pre.layer2
      .at(0)
      .namedModules()
      .find(([n]) => n === 'bn1')![1]
      .stateDict()
      .get('weight')!
      .dim(0),
    64,
    'pre-activation bn1 has inplanes channels',
  );
  pre.dispose();
  const drop = createModel('se_resnet_d_3', { overrides: { dropout: 0.2 } }) as SEResNet;
  assert.equal(drop.dropoutLayer!.p, 0.2);
  assert.equal(
    drop
      .namedModules()
      .map(([n]) => n)
      .filter((n) => n === 'dropout_layer').length,
    1,
  );
  drop.dispose();
});

test('the registry lists the original names, suggests close ones, and parses registry-style names', () => {
  const names = listModels().map((m) => m.name);
  for (const n of [
    'convmixer_256_16',
    'convmixer_256_16_shared',
    'se_resnet_d_2',
    'se_resnet_d_2_full_shared',
    'se_resnet_d_3',
    'se_resnet_d_4',
    'se_resnet_d_6',
    'se_resnet_d_8',
    'se_resnet_d_10',
    'convmixer_256_8_k5_p2',
    'convmixer_256_8_k5_p2_shared',
    'resnet18',
    'resnet34',
    'resnet50',
    'resnet18_cifar_shared',
    'mobilenetv2_100',
    'mobilenetv2_100_cifar_shared',
  ]) {
    assert.ok(names.includes(n), n);
  }
  assert.throws(() => createModel('convmixer_256_16_sharde'), /unknown model 'convmixer_256_16_sharde'\. Did you mean 'convmixer_256_16_shared'/);
  assert.throws(
    () => createModel('vgg16'),
    /Known models: convmixer_256_16, .*\(or a pattern like convmixer_<dim>_<depth>.*, resnet\{18,34,50,101,152\}\[_cifar\]/,
  );
  assert.throws(() => createModel('se_resnet_d_2', { classes: 0 }), /classes must be a positive integer/);
  const m = createModel('convmixer_32_2_k3_p4_shared_dw') as ConvMixer;
  assert.deepEqual([m.dim, m.depth, m.kernelSize, m.patchSize, m.sharing], [32, 2, 3, 4, 'depthwise']);
  m.dispose();
  const se = createModel('se_resnet_d_2_shared_3') as SEResNet;
  assert.deepEqual(se.share, [false, false, true]);
  se.dispose();
});

test('users add models by config file or registration call, without library edits', () => {
  const cfg = path.join(dir, 'models.json');
  writeFileSync(
    cfg,
    JSON.stringify({
      models: [
        { name: 'tiny_mixer_pairs', architecture: 'convmixer', dim: 32, depth: 4, kernelSize: 3, patchSize: 4, plan: { kind: 'consecutive', size: 2 } },
        { name: 'se_narrow', architecture: 'se_resnet', depth: 1, widths: [16, 32, 64], share: [false, true, true], preact: true },
      ],
    }),
  );
  assert.deepEqual(loadModelConfigFile(cfg), ['tiny_mixer_pairs', 'se_narrow']);
  const tiny = createModel('tiny_mixer_pairs');
  // 4 blocks of (dw 32*9+32, pw 32*32+32); pairs share both: 2 kernels of each kind.
  const blocks = 4 * 2 * 64 + 2 * (320 + 1056);
  assert.equal(tiny.numParameters(), 3 * 32 * 16 + 32 + 64 + blocks + (32 * 10 + 10));
  tiny.dispose();
  assert.ok(listModels().some((m) => m.name === 'se_narrow' && m.description.includes('pre-activation')));

  const bad = (body: unknown, re: RegExp) => {
    const p = path.join(dir, 'bad.json');
    writeFileSync(p, typeof body === 'string' ? body : JSON.stringify(body));
    assert.throws(() => loadModelConfigFile(p), re);
  };
  bad({ name: 'x', architecture: 'convmixer', dim: 32, depht: 4 }, /unknown field 'depht' for architecture convmixer/);
  bad({ name: 'x', architecture: 'convmixer', dim: 32 }, /missing required field 'depth'/);
  bad({ name: 'x', architecture: 'convmixer', dim: 32.5, depth: 2 }, /'dim' must be an integer in \[1, 8192\], got 32.5/);
  bad({ name: 'x', architecture: 'vit', depth: 2 }, /'architecture' must be one of convmixer, se_resnet/);
  bad({ architecture: 'convmixer', dim: 8, depth: 2 }, /missing "name"/);
  bad('{ "name": ', /bad.json: /);
  // A plan is checked against the model when it is built.
  const planFile = path.join(dir, 'plan.json');
  writeFileSync(planFile, JSON.stringify({ name: 'x', architecture: 'se_resnet', depth: 2, plan: { kind: 'groups', groups: [['conv1', 'layer1.0.conv2']] } }));
  loadModelConfigFile(planFile);
  assert.throws(
    () => createModel('x'),
    /cannot share a kernel between 'conv1' \(3->16, 3x3\) and 'layer1.0.conv2' \(64->64, 3x3\): in channels 3 vs 64, out channels 16 vs 64/,
  );

  registerModel('mlp_probe', ({ classes }) => new Sequential(new AdaptiveAvgPool2d(1), new Flatten(), new Linear(3, classes)), 'a linear probe');
  const probe = createModel('mlp_probe', { classes: 7 });
  assert.equal(probe.numParameters(), 3 * 7 + 7);
  probe.dispose();
  assert.throws(() => registerModel('bad name!', { architecture: 'convmixer', dim: 8, depth: 1 }), /bad model name/);
});

test('an architecture is one spec: fields with defaults and bounds, names, input and recipe, all from the spec', () => {
  // A user architecture registered at run time, with no library edits: a plain conv stack.
  registerArchitecture(
    defineArchitecture<{ width: number; layers: number }>({
      architecture: 'plain_stack',
      about: 'a stack of 3x3 convs',
      fields: { width: field.int(1, 512, 8), layers: field.int(1, 16) },
      build: (c, classes) =>
        new Sequential(
          new Conv2d(3, c.width, 3, { padding: 1 }),
          ...Array.from({ length: c.layers }, () => new Conv2d(c.width, c.width, 3, { padding: 1 })),
          new AdaptiveAvgPool2d(1),
          new Flatten(),
          new Linear(c.width, classes),
        ),
      describe: (c) => `plain stack ${c.width}x${c.layers}`,
      input: () => ({ ...cifarInput(IMAGENET_NORM), height: 24, width: 24 }),
      recipe: 'seresnet',
      names: {
        pattern: 'plain_<width>_<layers>',
        parse: (name) => {
          const m = /^plain_(\d+)_(\d+)$/.exec(name);
          return m ? { width: +m[1]!, layers: +m[2]! } : null;
        },
        builtins: [],
      },
    }),
  );
  assert.deepEqual(configFromName('plain_4_2'), { architecture: 'plain_stack', width: 4, layers: 2 });
  const m = createModel('plain_4_2', { classes: 3 });
  assert.equal(m.numParameters(), 3 * 4 * 9 + 4 + 2 * (4 * 4 * 9 + 4) + (4 * 3 + 3));
  m.dispose();
  assert.equal(modelInputSpec('plain_4_2').height, 24);
  assert.equal(modelRecipe('plain_4_2'), 'seresnet');
  assert.equal(modelRecipe('se_resnet_d_4'), 'seresnet');
  assert.equal(modelRecipe('convmixer_64_4_k5_p2'), 'convmixer');
  // CPU inference format: the spec's choice (ConvMixer NCHW), channels_last where a spec is silent.
  assert.equal(modelCpuMemoryFormat('convmixer_256_16_shared'), 'contiguous');
  assert.equal(modelCpuMemoryFormat('se_resnet_d_2'), 'channels_last');
  assert.equal(modelCpuMemoryFormat('plain_4_2'), 'channels_last');
  assert.deepEqual(modelInputSpec('se_resnet_d_2').mean, [0.4914, 0.4822, 0.4465]);
  registerModel('plain_default', { architecture: 'plain_stack', layers: 1 });
  assert.ok(listModels().some((e) => e.name === 'plain_default' && e.description === 'plain stack 8x1'));
  // Stored configs (checkpoints) are validated with the same bounds before anything is built.
  assert.throws(() => buildFromConfig({ architecture: 'convmixer', dim: 1e9, depth: 1 }, 10), /'dim' must be an integer in \[1, 8192\], got 1000000000/);
  assert.throws(() => buildFromConfig({ architecture: 'plain_stack', layers: 99 }, 10), /'layers' must be an integer in \[1, 16\]/);
  assert.throws(() => buildFromConfig({ architecture: 'se_resnet', depth: 1, widths: [8, 8, 8] }, 10), /reduction 16 leaves no hidden units/);
  // Configs written by older versions (every default spelled out) still build the same model.
  const old = buildFromConfig({ architecture: 'convmixer', dim: 256, depth: 16, kernelSize: 9, patchSize: 1, sharing: 'both' }, 10);
  assert.equal(old.numParameters(), 107_274);
  old.dispose();
  assert.throws(
    () =>
      registerArchitecture({
        ...defineArchitecture<{ plan: number }>({
          architecture: 'x',
          about: '',
          fields: { plan: field.int(1, 2) },
          build: () => new Flatten(),
          describe: () => '',
          input: () => cifarInput(IMAGENET_NORM),
          recipe: 'convmixer',
          names: { pattern: '', parse: () => null, builtins: [] },
        }),
      }),
    /field 'plan' is reserved/,
  );
});

test('modelSummary reports unique and unshared params, weight bytes, MACs and share groups', () => {
  const m = createModel('convmixer_64_4_k5_p2_shared');
  const s = modelSummary(m, 'convmixer_64_4_k5_p2_shared', 10);
  assert.equal(s.params, 8_458);
  assert.equal(s.paramsUnshared, 25_930);
  assert.equal(s.weightBytes, 4 * 8_458);
  // Per 32x32 image: patch conv 64*16*16*3*2*2, per block depthwise 64*16*16*25 + pointwise 64*64*16*16, head 64*10.
  assert.equal(s.macs, 196_608 + 4 * (409_600 + 1_048_576) + 640);
  assert.deepEqual(
    s.shareGroups.map((g) => [g.kernel, g.bias, g.layers]),
    [
      ['3.0.fn.0.weight', '3.0.fn.0.bias', ['3.0.fn.0', '4.0.fn.0', '5.0.fn.0', '6.0.fn.0']],
      ['3.1.weight', '3.1.bias', ['3.1', '4.1', '5.1', '6.1']],
    ],
  );
  const row = s.layers.find((l) => l.name === '5.1')!;
  assert.deepEqual([row.type, row.outputShape, row.params, row.sharedKernel], ['Conv2d', [1, 64, 16, 16], 0, '3.1.weight']);
  assert.equal(
    s.layers.reduce((a, l) => a + l.params, 0),
    s.params,
    'rows add up to the unique total',
  );
  assert.equal(m.training, true, 'tracing restores the mode');
  m.dispose();
});

function cli(...args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
}

test('kshare info --json and kshare models', () => {
  const r = cli('info', 'convmixer_256_16_shared', '--json');
  assert.equal(r.status, 0, r.stderr);
  const s = JSON.parse(r.stdout) as ModelSummary;
  assert.equal(s.model, 'convmixer_256_16_shared');
  assert.equal(s.classes, 10);
  assert.equal(s.params, 107_274);
  assert.equal(s.paramsUnshared, 1_409_034);
  assert.equal(s.weightBytes, 429_096);
  assert.equal(s.macs, 256 * 32 * 32 * 3 + 16 * (256 * 1024 * 81 + 256 * 256 * 1024) + 2560);
  assert.deepEqual(
    s.shareGroups.map((g) => g.layers.length),
    [16, 16],
  );

  const se = JSON.parse(cli('info', 'se_resnet_d_2', '--classes', '100', '--json').stdout) as ModelSummary;
  assert.equal(se.params, 2_794_420);
  assert.equal(se.shareGroups.length, 0);
  assert.equal(se.sharingPlans.find((p) => p.name === 'isomorphic')!.params, 1_246_132, 'the paper plan, priced');

  const table = cli('info', 'convmixer_64_4_k5_p2', '--depth', '1', '--plans');
  assert.equal(table.status, 0, table.stderr);
  assert.match(table.stdout, /^ *3\.1\s+Conv2d\s+64, 64, k=1\s+\[64, 16, 16\]\s+4,160\s+1,048,576/m);
  assert.match(table.stdout, /trainable parameters: 25,930/);
  assert.match(table.stdout, /isomorphic\s+kernels\s+3\s+params\s+8,458/);

  const bad = cli('info', 'se_resnet_d2');
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /^kshare: unknown model 'se_resnet_d2'\. Did you mean 'se_resnet_d_2'/);
  assert.doesNotMatch(bad.stderr, /at .*\.js/, 'no stack trace');

  const list = cli('models');
  assert.equal(list.status, 0, list.stderr);
  assert.match(list.stdout, /convmixer_256_16_shared\s+107,274/);
  assert.match(list.stdout, /se_resnet_d_10\s+1,323,354/);

  // A weights file that does not fit is refused by `info --weights`.
  const w = path.join(dir, 'cm.safetensors');
  const small = createModel('convmixer_64_4_k5_p2');
  saveWeights(small, w);
  small.dispose();
  const mismatch = cli('info', 'convmixer_64_4_k5_p2_shared', '--weights', w);
  assert.equal(mismatch.status, 1);
  assert.match(mismatch.stderr, /does not fit this model/);
});
