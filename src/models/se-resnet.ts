// SE-ResNet for CIFAR (the original `CifarNet`) with per-stage kernel sharing.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module, Conv2d, BatchNorm2d, Sequential, SqueezeExcitation, AdaptiveAvgPool2d, Dropout, Linear, SharedKernel, init } from '../nn/index.js';
import { cifarInput, CIFAR_NORM, defineArchitecture, field } from './spec.js';

export const BN_MOMENTUM = 0.1;

export interface SEBasicBlockOptions {
  reduction?: number;
  /** Pre-activation form (the original's `new_resnet`). */
  preact?: boolean;
  /** [planes, planes, 3, 3] kernel used by conv2, and by conv1 when inplanes == planes. */
  sharedKernel?: SharedKernel | null;
}

/**
 * Two 3x3 convs (padding 1, no bias) + squeeze-excitation + shortcut.
 *   post-activation: y = relu(se(bn2(conv2(relu(bn1(conv1 x))))) + sc(x))
 *   pre-activation:  y = se(conv2(relu(bn2(conv1(relu(bn1 x)))))) + sc(x)   (no ReLU after the add)
 * sc = downsample (1x1 conv with the block's stride, no bias, then BN) when inplanes != planes,
 * identity otherwise. bn1 has `planes` channels post-activation and `inplanes` pre-activation.
 * Children in order: conv1, bn1, conv2, bn2, se, downsample (the original's keys).
 */
export class SEBasicBlock extends Module {
  readonly preact: boolean;
  readonly reduction: number;
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly se: SqueezeExcitation;
  readonly downsample: Sequential | null;

  constructor(
    readonly inplanes: number,
    readonly planes: number,
    readonly stride = 1,
    o: SEBasicBlockOptions = {},
    label = 'block',
  ) {
    super();
    this.preact = o.preact ?? false;
    this.reduction = o.reduction ?? 16;
    const k = o.sharedKernel ?? null;
    const conv1 = new Conv2d(inplanes, planes, 3, { stride, padding: 1, bias: false });
    if (k && inplanes === planes) t.dispose(conv1.useKernel(k, `${label}.conv1`));
    this.conv1 = this.registerModule('conv1', conv1);
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(this.preact ? inplanes : planes, { momentum: BN_MOMENTUM }));
    const conv2 = new Conv2d(planes, planes, 3, { stride: 1, padding: 1, bias: false });
    if (k) t.dispose(conv2.useKernel(k, `${label}.conv2`));
    this.conv2 = this.registerModule('conv2', conv2);
    this.bn2 = this.registerModule('bn2', new BatchNorm2d(planes, { momentum: BN_MOMENTUM }));
    this.se = this.registerModule('se', new SqueezeExcitation(planes, this.reduction));
    this.downsample =
      inplanes !== planes
        ? this.registerModule(
            'downsample',
            new Sequential(new Conv2d(inplanes, planes, 1, { stride, bias: false }), new BatchNorm2d(planes, { momentum: BN_MOMENTUM })),
          )
        : null;
  }

  forward(x: Tensor): Tensor {
    return t.tidy(() => {
      const shortcut = this.downsample ? this.downsample.forward(x) : x;
      if (this.preact) {
        const h = this.conv1.forward(this.bn1.forwardRelu(x));
        const out = this.conv2.forward(this.bn2.forwardRelu(h));
        return this.se.forwardResidual(out, shortcut, false);
      }
      const h = this.bn1.forwardRelu(this.conv1.forward(x));
      // bn2 also gives its output's plane means: the SE's pooling, computed in the same pass
      const [out, pooled] = this.bn2.forwardPooled(this.conv2.forward(h));
      return this.se.forwardResidual(out, shortcut, true, pooled);
    });
  }

  describe(): string {
    return `${this.inplanes}->${this.planes}, stride=${this.stride}${this.preact ? ', pre-activation' : ''}${this.conv2.kernel ? ', shared kernel' : ''}`;
  }
}

export interface SEResNetConfig {
  /** Blocks per stage (the paper's d). */
  depth: number;
  classes: number;
  /** Per-stage share flags (default all true, as the original constructor). */
  share?: [boolean, boolean, boolean];
  /** Global on/off switch of kernel sharing: a stage is shared iff sync && share[stage]. Default true. */
  sync?: boolean;
  preact?: boolean;
  /** Dropout before the classifier (a layer exists only when > 0). */
  dropout?: number;
  reduction?: number;
  /** Stage widths (default the original's 64/128/256). */
  widths?: [number, number, number];
}

/**
 * stem conv3x3(3→16, no bias) → BN → ReLU → layer1..3 (d SE blocks each; first block of
 * stages 2 and 3 has stride 2) → global average pool → [Dropout] → Linear(256, classes).
 * In a shared stage one 3x3 kernel, named `layerS.0.conv2.weight`, serves conv2 of every block
 * and conv1 of every block whose input width equals its output width. Init: Kaiming-normal
 * (fan-in, gain √2) on every conv, BN weight 1 / bias 0, Linear layers PyTorch's default.
 */
export class SEResNet extends Module {
  readonly depth: number;
  readonly classes: number;
  readonly share: [boolean, boolean, boolean];
  readonly sync: boolean;
  readonly preact: boolean;
  readonly dropout: number;
  readonly reduction: number;
  readonly widths: [number, number, number];
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly layer1: Sequential;
  readonly layer2: Sequential;
  readonly layer3: Sequential;
  readonly avgpool: AdaptiveAvgPool2d;
  readonly dropoutLayer: Dropout | null;
  readonly fc: Linear;

  constructor(c: SEResNetConfig) {
    super();
    this.depth = c.depth;
    this.classes = c.classes;
    this.share = c.share ?? [true, true, true];
    this.sync = c.sync ?? true;
    this.preact = c.preact ?? false;
    this.dropout = c.dropout ?? 0;
    this.reduction = c.reduction ?? 16;
    this.widths = c.widths ?? [64, 128, 256];
    const sizes: [string, number][] = [
      ['depth', this.depth],
      ['classes', this.classes],
      ['reduction', this.reduction],
      ...this.widths.map((w, i): [string, number] => [`widths[${i}]`, w]),
    ];
    for (const [n, v] of sizes) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`SEResNet: ${n} must be a positive integer, got ${JSON.stringify(v)}`);
    }
    if (!Array.isArray(this.share) || this.share.length !== 3) throw new Error('SEResNet: share must have one flag per stage (3)');
    if (!(this.dropout >= 0 && this.dropout < 1)) throw new RangeError(`SEResNet: dropout must be in [0, 1), got ${this.dropout}`);
    let inplanes = 16;
    this.conv1 = this.registerModule('conv1', new Conv2d(3, inplanes, 3, { padding: 1, bias: false }));
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(inplanes, { momentum: BN_MOMENTUM }));
    const stages: Sequential[] = [];
    for (let s = 0; s < 3; s++) {
      const planes = this.widths[s]!;
      const name = `layer${s + 1}`;
      // The original draws a template conv for every stage, shared or not (seed parity).
      const template = new Conv2d(planes, planes, 3, { padding: 1, bias: false });
      let kernel: SharedKernel | null = null;
      if (this.sync && this.share[s]) {
        const w = t.keep(t.noGrad(() => template.weight.clone())).requiresGrad_();
        kernel = new SharedKernel(w, null, template, `${name}.0.conv2`);
      }
      template.dispose();
      const stage = new Sequential();
      for (let b = 0; b < this.depth; b++) {
        const stride = b === 0 && s > 0 ? 2 : 1;
        stage.append(new SEBasicBlock(inplanes, planes, stride, { reduction: this.reduction, preact: this.preact, sharedKernel: kernel }, `${name}.${b}`));
        inplanes = planes;
      }
      stages.push(this.registerModule(name, stage));
    }
    [this.layer1, this.layer2, this.layer3] = stages as [Sequential, Sequential, Sequential];
    this.avgpool = this.registerModule('avgpool', new AdaptiveAvgPool2d(1));
    this.dropoutLayer = this.dropout > 0 ? this.registerModule('dropout_layer', new Dropout(this.dropout)) : null;
    this.fc = this.registerModule('fc', new Linear(inplanes, this.classes));
    // The original's initialize(): one Kaiming draw per conv module, so a shared kernel is
    // redrawn once per layer that holds it and the last draw stays.
    for (const m of this.modules()) {
      if (m instanceof Conv2d) init.kaimingNormal_(m.weight);
    }
  }

  forward(x: Tensor): Tensor {
    return t.tidy(() => {
      let h = this.bn1.forwardRelu(this.conv1.forward(x));
      h = this.layer3.forward(this.layer2.forward(this.layer1.forward(h)));
      h = t.flatten(this.avgpool.forward(h), 1);
      if (this.dropoutLayer) h = this.dropoutLayer.forward(h);
      return this.fc.forward(h);
    });
  }
}

/** SE-ResNet's config fields (defaults and bounds in `seResnetSpec.fields`). */
export type SEResNetFields = Required<Omit<SEResNetConfig, 'classes'>>;

const SERESNET_NAME = /^se_resnet_d_(\d+)(_full_shared|_unshared|_shared_([123]+))?$/;

export const seResnetSpec = defineArchitecture<SEResNetFields>({
  architecture: 'se_resnet',
  about: "SE-ResNet for CIFAR (the paper's CifarNet): three stages of SE basic blocks, one 3x3 kernel per shared stage",
  fields: {
    depth: field.int(1, 256),
    share: field.bools<[boolean, boolean, boolean]>(3, 'one per stage', [true, true, true]),
    sync: field.bool(true),
    preact: field.bool(false),
    dropout: field.fraction(0, 1, 0),
    reduction: field.int(1, 1024, 16),
    widths: field.ints<[number, number, number]>(3, 1, 8192, 'stage widths', [64, 128, 256]),
  },
  crossCheck: (c) =>
    c.widths.some((w) => Math.floor(w / c.reduction) < 1)
      ? `reduction ${c.reduction} leaves no hidden units in the squeeze-excitation of a stage ${c.widths.join('/')} wide`
      : null,
  build: (c, classes) => new SEResNet({ ...c, classes }),
  storedTensors: ({ depth, widths: w }, classes) => ({
    expect: [
      ['conv1.weight', [16, 3, 3, 3]],
      ...w.map((x, s) => [`layer${s + 1}.0.conv2.weight`, [x, x, 3, 3]] as const),
      [`layer3.${depth - 1}.bn2.running_mean`, [w[2]]],
      ['fc.weight', [classes, w[2]]],
    ],
    absent: [`layer3.${depth}.bn2.running_mean`],
  }),
  describe(c) {
    const stages = c.share.map((s, i) => (s ? String(i + 1) : '')).join('');
    const shared = !c.sync || stages === '' ? 'no sharing' : stages === '123' ? 'all stages shared' : `stages ${stages.split('').join('+')} shared`;
    return `SE-ResNet d=${c.depth}, ${shared}${c.preact ? ', pre-activation' : ''}${c.dropout ? `, dropout ${c.dropout}` : ''}`;
  },
  input: () => cifarInput(CIFAR_NORM),
  recipe: 'seresnet',
  names: {
    pattern: 'se_resnet_d_<d>[_full_shared|_unshared|_shared_<stages>]',
    parse(name) {
      const m = SERESNET_NAME.exec(name);
      if (!m) return null;
      const d = +m[1]!;
      // The original names: d = 2 alone is unshared, every other depth shares all stages.
      let share: [boolean, boolean, boolean] = d === 2 ? [false, false, false] : [true, true, true];
      if (m[2] === '_full_shared') share = [true, true, true];
      else if (m[2] === '_unshared') share = [false, false, false];
      else if (m[3]) share = [m[3].includes('1'), m[3].includes('2'), m[3].includes('3')];
      return { depth: d, share };
    },
    builtins: [
      ['se_resnet_d_2', { depth: 2, share: [false, false, false] }],
      ['se_resnet_d_2_full_shared', { depth: 2, share: [true, true, true] }],
      ['se_resnet_d_2_shared_23', { depth: 2, share: [false, true, true] }, 'SE-ResNet d=2, stages 2+3 shared (the older original)'],
      ...[3, 4, 6, 8, 10].map((d) => [`se_resnet_d_${d}`, { depth: d, share: [true, true, true] }] as [string, Partial<SEResNetFields>]),
    ],
  },
});
