// MobileNetV2 (Sandler et al.) as torchvision 0.14 defines it, with a width multiplier, an
// ImageNet or a CIFAR stem, and sharing of the pointwise and depthwise kernels between the
// isomorphic blocks of each stage (the pointwise sharing studied in apple/ml-spin).
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module, Conv2d, BatchNorm2d, Sequential, ReLU6, Dropout, Linear, applySharingPlan, init, type SharingPlan } from '../nn/index.js';
import { cifarInput, CIFAR_NORM, defineArchitecture, field } from './spec.js';

export const MOBILENETV2_STEMS = ['imagenet', 'cifar'] as const;
/** Which kernels the isomorphic blocks of a stage share: none, the 1x1 (expand and project), the depthwise 3x3, or both. */
export const MOBILENETV2_SHARING = ['none', 'pointwise', 'depthwise', 'both'] as const;

export interface MobileNetV2Fields {
  /** Width multiplier (torchvision's width_mult); timm's name gives it in hundredths (mobilenetv2_100 = 1.0). */
  width: number;
  stem: (typeof MOBILENETV2_STEMS)[number];
  share: (typeof MOBILENETV2_SHARING)[number];
  dropout: number;
}

/** torchvision's _make_divisible: round to a multiple of `divisor`, never below 90% of v. */
export function makeDivisible(v: number, divisor = 8): number {
  let n = Math.max(divisor, Math.floor(v + divisor / 2) - (Math.floor(v + divisor / 2) % divisor));
  if (n < 0.9 * v) n += divisor;
  return n;
}

/** torchvision's Conv2dNormActivation: conv (no bias) → BN → ReLU6, children 0, 1, 2. */
function convBnRelu6(inC: number, outC: number, k: number, stride = 1, groups = 1): Sequential {
  return new Sequential(new Conv2d(inC, outC, k, { stride, padding: (k - 1) / 2, groups, bias: false }), new BatchNorm2d(outC), new ReLU6());
}

/** Inverted residual: [1x1 expand] → 3x3 depthwise(stride) → 1x1 project → BN, + x when shapes allow. */
export class InvertedResidual extends Module {
  readonly useResidual: boolean;
  readonly conv: Sequential;

  constructor(
    readonly inp: number,
    readonly oup: number,
    readonly stride: number,
    readonly expandRatio: number,
  ) {
    super();
    const hidden = Math.round(inp * expandRatio);
    this.useResidual = stride === 1 && inp === oup;
    const layers: Module[] = [];
    if (expandRatio !== 1) layers.push(convBnRelu6(inp, hidden, 1));
    layers.push(convBnRelu6(hidden, hidden, 3, stride, hidden), new Conv2d(hidden, oup, 1, { bias: false }), new BatchNorm2d(oup));
    this.conv = this.registerModule('conv', new Sequential(...layers));
  }

  forward(x: Tensor): Tensor {
    return t.tidy(() => (this.useResidual ? t.add(x, this.conv.forward(x)) : this.conv.forward(x)));
  }

  describe(): string {
    return `${this.inp}->${this.oup}, stride=${this.stride}, expand=${this.expandRatio}`;
  }
}

/** t (expansion), c (channels), n (blocks), s (first block's stride): torchvision's table. */
const SETTINGS: [number, number, number, number][] = [
  [1, 16, 1, 1],
  [6, 24, 2, 2],
  [6, 32, 3, 2],
  [6, 64, 4, 2],
  [6, 96, 3, 1],
  [6, 160, 3, 2],
  [6, 320, 1, 1],
];

/**
 * features (stem, 17 inverted residuals, last 1x1 conv) → global average pool → flatten →
 * classifier (Dropout, Linear), torchvision's keys. The CIFAR stem uses stride 1 in the first
 * conv and in the second stage (32x32 inputs reach the last stage at 4x4, as in the common
 * CIFAR variant). Init as torchvision: convs Kaiming-normal fan-out, BN 1/0, Linear N(0, 0.01)
 * with zero bias.
 */
export class MobileNetV2 extends Module {
  readonly features: Sequential;
  readonly classifier: Sequential;
  /** Indices into `features` of each stage's blocks. */
  readonly stageBlocks: number[][] = [];

  constructor(readonly config: MobileNetV2Fields & { classes: number }) {
    super();
    const c = config;
    const cifar = c.stem === 'cifar';
    let input = makeDivisible(32 * c.width);
    const last = makeDivisible(1280 * Math.max(1, c.width));
    const features: Module[] = [convBnRelu6(3, input, 3, cifar ? 1 : 2)];
    SETTINGS.forEach(([tExp, ch, n, s], stage) => {
      const out = makeDivisible(ch * c.width);
      const blocks: number[] = [];
      for (let i = 0; i < n; i++) {
        const stride = i === 0 ? (cifar && stage === 1 ? 1 : s) : 1;
        blocks.push(features.length);
        features.push(new InvertedResidual(input, out, stride, tExp));
        input = out;
      }
      this.stageBlocks.push(blocks);
    });
    features.push(convBnRelu6(input, last, 1));
    this.features = this.registerModule('features', new Sequential(...features));
    this.classifier = this.registerModule('classifier', new Sequential(new Dropout(c.dropout), new Linear(last, c.classes)));
    t.noGrad(() => {
      for (const m of this.modules()) {
        if (m instanceof Conv2d) {
          init.kaimingNormal_(m.weight, 0, 'fan_out');
          if (m.bias) t.zero_(m.bias);
        } else if (m instanceof Linear) {
          t.normal_(m.weight, 0, 0.01);
          if (m.bias) t.zero_(m.bias);
        }
      }
    });
    if (c.share !== 'none') applySharingPlan(this, mobilenetv2Plan(this.stageBlocks, c.share));
  }

  forward(x: Tensor): Tensor {
    return t.tidy(() => this.classifier.forward(t.flatten(t.adaptiveAvgPool2d(this.features.forward(x), 1), 1)));
  }
}

/** Explicit share groups: per stage, each kernel role over the blocks after the first (those are isomorphic). */
export function mobilenetv2Plan(stageBlocks: number[][], share: MobileNetV2Fields['share']): SharingPlan {
  const roles = [
    ...(share === 'pointwise' || share === 'both' ? ['conv.0.0', 'conv.2'] : []),
    ...(share === 'depthwise' || share === 'both' ? ['conv.1.0'] : []),
  ];
  const groups: string[][] = [];
  for (const blocks of stageBlocks) {
    // Block 0 changes width (or is the t = 1 block), so only blocks 1.. are isomorphic.
    const iso = blocks.slice(1);
    if (iso.length < 2) continue;
    for (const role of roles) groups.push(iso.map((b) => `features.${b}.${role}`));
  }
  return groups.length ? { kind: 'groups', groups } : { kind: 'none' };
}

const MOBILENETV2_NAME = /^mobilenetv2_(\d{3})(_cifar)?(_shared(?:_pw|_dw)?)?$/;

function parseMobileNetV2Name(name: string): Partial<MobileNetV2Fields> | null {
  const m = MOBILENETV2_NAME.exec(name);
  if (!m) return null;
  return {
    width: +m[1]! / 100,
    stem: m[2] ? 'cifar' : 'imagenet',
    share: m[3] === '_shared_pw' ? 'pointwise' : m[3] === '_shared_dw' ? 'depthwise' : m[3] ? 'both' : 'none',
  };
}

const SHARING_TEXT: Record<MobileNetV2Fields['share'], string> = {
  none: 'no sharing',
  pointwise: 'pointwise kernels shared per stage',
  depthwise: 'depthwise kernels shared per stage',
  both: 'pointwise and depthwise kernels shared per stage',
};

export const mobilenetv2Spec = defineArchitecture<MobileNetV2Fields>({
  architecture: 'mobilenetv2',
  about: 'MobileNetV2 (torchvision definition), width multiplier, ImageNet or CIFAR stem, pointwise/depthwise kernels shared within stages',
  fields: {
    width: { expect: 'a number in [0.1, 4]', check: (v) => typeof v === 'number' && v >= 0.1 && v <= 4, default: 1 },
    stem: field.oneOf(MOBILENETV2_STEMS, 'imagenet'),
    share: field.oneOf(MOBILENETV2_SHARING, 'none'),
    dropout: field.fraction(0, 1, 0.2),
  },
  build: (c, classes) => new MobileNetV2({ ...c, classes }),
  // The width is bounded by its field; the head pins the class count and the last width.
  storedTensors: (c, classes) => ({ expect: [['classifier.1.weight', [classes, makeDivisible(1280 * Math.max(1, c.width))]]], absent: [] }),
  describe: (c) => `MobileNetV2 x${c.width}, ${c.stem === 'cifar' ? 'CIFAR' : 'ImageNet'} stem, ${SHARING_TEXT[c.share]}`,
  input: () => cifarInput(CIFAR_NORM),
  recipe: 'seresnet',
  names: {
    pattern: 'mobilenetv2_<width x100>[_cifar][_shared|_shared_pw|_shared_dw]',
    parse: parseMobileNetV2Name,
    builtins: [
      'mobilenetv2_100',
      'mobilenetv2_050',
      'mobilenetv2_100_cifar',
      'mobilenetv2_100_cifar_shared',
      'mobilenetv2_100_cifar_shared_pw',
      'mobilenetv2_050_cifar_shared',
    ].map((n): [string, Partial<MobileNetV2Fields>] => [n, parseMobileNetV2Name(n)!]),
  },
});
