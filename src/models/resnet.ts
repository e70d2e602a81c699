// ResNet (He et al.) as torchvision 0.14 defines it (BasicBlock / Bottleneck, stride on the 3x3
// conv), with an ImageNet or a CIFAR stem and ShaResNet-style kernel sharing.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module, Conv2d, BatchNorm2d, Sequential, ReLU, MaxPool2d, AdaptiveAvgPool2d, Linear, applySharingPlan, init, type SharingPlan } from '../nn/index.js';
import { cifarInput, CIFAR_NORM, defineArchitecture, field } from './spec.js';

export const RESNET_BLOCKS = ['basic', 'bottleneck'] as const;
export const RESNET_STEMS = ['imagenet', 'cifar'] as const;
/**
 * none: every conv its own kernel. stage: within each stage, all isomorphic 3x3 convs use one
 * kernel (ShaResNet). network: isomorphic 3x3 convs share across stages too (the same as
 * `stage` for torchvision's widths, which differ per stage; it matters with equal `widths`).
 */
export const RESNET_SHARING = ['none', 'stage', 'network'] as const;

export interface ResNetFields {
  block: (typeof RESNET_BLOCKS)[number];
  /** Blocks per stage, e.g. [2, 2, 2, 2] for ResNet-18. */
  layers: [number, number, number, number];
  /** Stage widths (the bottleneck's inner width), torchvision's 64/128/256/512. */
  widths: [number, number, number, number];
  stem: (typeof RESNET_STEMS)[number];
  share: (typeof RESNET_SHARING)[number];
}

/** torchvision's BasicBlock: conv3x3(stride) → BN → ReLU → conv3x3 → BN, + shortcut, ReLU. */
export class BasicBlock extends Module {
  static readonly expansion = 1;
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly relu: ReLU;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly downsample: Sequential | null;

  constructor(inplanes: number, planes: number, stride: number, downsample: Sequential | null) {
    super();
    this.conv1 = this.registerModule('conv1', new Conv2d(inplanes, planes, 3, { stride, padding: 1, bias: false }));
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(planes));
    this.relu = this.registerModule('relu', new ReLU());
    this.conv2 = this.registerModule('conv2', new Conv2d(planes, planes, 3, { padding: 1, bias: false }));
    this.bn2 = this.registerModule('bn2', new BatchNorm2d(planes));
    this.downsample = downsample ? this.registerModule('downsample', downsample) : null;
  }

  forward(x: Tensor): Tensor {
    return t.tidy(() => {
      const h = this.relu.forward(this.bn1.forward(this.conv1.forward(x)));
      const out = this.bn2.forward(this.conv2.forward(h));
      return this.relu.forward(t.add(out, this.downsample ? this.downsample.forward(x) : x));
    });
  }
}

/** torchvision's Bottleneck (ResNet v1.5): 1x1 → 3x3(stride) → 1x1 (x4), BN after each, + shortcut, ReLU. */
export class Bottleneck extends Module {
  static readonly expansion = 4;
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly conv3: Conv2d;
  readonly bn3: BatchNorm2d;
  readonly relu: ReLU;
  readonly downsample: Sequential | null;

  constructor(inplanes: number, planes: number, stride: number, downsample: Sequential | null) {
    super();
    this.conv1 = this.registerModule('conv1', new Conv2d(inplanes, planes, 1, { bias: false }));
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(planes));
    this.conv2 = this.registerModule('conv2', new Conv2d(planes, planes, 3, { stride, padding: 1, bias: false }));
    this.bn2 = this.registerModule('bn2', new BatchNorm2d(planes));
    this.conv3 = this.registerModule('conv3', new Conv2d(planes, planes * 4, 1, { bias: false }));
    this.bn3 = this.registerModule('bn3', new BatchNorm2d(planes * 4));
    this.relu = this.registerModule('relu', new ReLU());
    this.downsample = downsample ? this.registerModule('downsample', downsample) : null;
  }

  forward(x: Tensor): Tensor {
    return t.tidy(() => {
      let h = this.relu.forward(this.bn1.forward(this.conv1.forward(x)));
      h = this.relu.forward(this.bn2.forward(this.conv2.forward(h)));
      const out = this.bn3.forward(this.conv3.forward(h));
      return this.relu.forward(t.add(out, this.downsample ? this.downsample.forward(x) : x));
    });
  }
}

/**
 * conv1 → bn1 → relu → [maxpool] → layer1..4 → avgpool → flatten → fc, torchvision's keys.
 * ImageNet stem: 7x7 stride-2 conv and 3x3 stride-2 max-pool; CIFAR stem: one 3x3 stride-1
 * conv, no pool (32x32 inputs keep their resolution into layer1). Init as torchvision:
 * Kaiming-normal fan-out on convs, BN 1/0, the Linear PyTorch's default.
 */
export class ResNet extends Module {
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly relu: ReLU;
  readonly maxpool: MaxPool2d | null;
  readonly stages: Sequential[];
  readonly avgpool: AdaptiveAvgPool2d;
  readonly fc: Linear;

  constructor(readonly config: ResNetFields & { classes: number }) {
    super();
    const c = config;
    const Block = c.block === 'basic' ? BasicBlock : Bottleneck;
    let inplanes = 64;
    this.conv1 = this.registerModule(
      'conv1',
      c.stem === 'imagenet'
        ? new Conv2d(3, inplanes, 7, { stride: 2, padding: 3, bias: false })
        : new Conv2d(3, inplanes, 3, { stride: 1, padding: 1, bias: false }),
    );
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(inplanes));
    this.relu = this.registerModule('relu', new ReLU());
    this.maxpool = c.stem === 'imagenet' ? this.registerModule('maxpool', new MaxPool2d(3, 2, 1)) : null;
    this.stages = c.layers.map((n, s) => {
      const planes = c.widths[s]!;
      const stride = s === 0 ? 1 : 2;
      const out = planes * Block.expansion;
      const stage = new Sequential();
      for (let b = 0; b < n; b++) {
        const ds =
          b === 0 && (stride !== 1 || inplanes !== out) ? new Sequential(new Conv2d(inplanes, out, 1, { stride, bias: false }), new BatchNorm2d(out)) : null;
        stage.append(new Block(inplanes, planes, b === 0 ? stride : 1, ds));
        inplanes = out;
      }
      return this.registerModule(`layer${s + 1}`, stage);
    });
    this.avgpool = this.registerModule('avgpool', new AdaptiveAvgPool2d(1));
    this.fc = this.registerModule('fc', new Linear(inplanes, c.classes));
    for (const m of this.modules()) if (m instanceof Conv2d) init.kaimingNormal_(m.weight, 0, 'fan_out');
    if (c.share !== 'none') applySharingPlan(this, resnetPlan(c));
  }

  forward(x: Tensor): Tensor {
    return t.tidy(() => {
      let h = this.relu.forward(this.bn1.forward(this.conv1.forward(x)));
      if (this.maxpool) h = this.maxpool.forward(h);
      for (const s of this.stages) h = s.forward(h);
      return this.fc.forward(t.flatten(this.avgpool.forward(h), 1));
    });
  }
}

/** The sharing plan of a config: isomorphic 3x3 convs of the blocks, per stage or network-wide. */
export function resnetPlan(c: Pick<ResNetFields, 'block' | 'share'>): SharingPlan {
  if (c.share === 'none') return { kind: 'none' };
  const include = c.block === 'basic' ? ['layer*.*.conv1', 'layer*.*.conv2'] : ['layer*.*.conv2'];
  return { kind: 'isomorphic', include, ...(c.share === 'stage' ? { scopes: ['layer1', 'layer2', 'layer3', 'layer4'] } : {}) };
}

const LAYOUTS: Record<string, [ResNetFields['block'], ResNetFields['layers']]> = {
  '18': ['basic', [2, 2, 2, 2]],
  '34': ['basic', [3, 4, 6, 3]],
  '50': ['bottleneck', [3, 4, 6, 3]],
  '101': ['bottleneck', [3, 4, 23, 3]],
  '152': ['bottleneck', [3, 8, 36, 3]],
};
const RESNET_NAME = /^resnet(18|34|50|101|152)(_cifar)?(_shared(?:_network)?)?$/;

function parseResNetName(name: string): Partial<ResNetFields> | null {
  const m = RESNET_NAME.exec(name);
  if (!m) return null;
  const [block, layers] = LAYOUTS[m[1]!]!;
  return { block, layers: [...layers], stem: m[2] ? 'cifar' : 'imagenet', share: m[3] === '_shared_network' ? 'network' : m[3] ? 'stage' : 'none' };
}

export const resnetSpec = defineArchitecture<ResNetFields>({
  architecture: 'resnet',
  about: 'ResNet (torchvision definition), ImageNet or CIFAR stem, isomorphic 3x3 kernels shared per stage (ShaResNet) or network-wide',
  fields: {
    block: field.oneOf(RESNET_BLOCKS),
    layers: field.ints<[number, number, number, number]>(4, 1, 64, 'blocks per stage'),
    widths: field.ints<[number, number, number, number]>(4, 1, 4096, 'stage widths', [64, 128, 256, 512]),
    stem: field.oneOf(RESNET_STEMS, 'imagenet'),
    share: field.oneOf(RESNET_SHARING, 'none'),
  },
  build: (c, classes) => new ResNet({ ...c, classes }),
  storedTensors(c, classes) {
    const expansion = c.block === 'basic' ? 1 : 4;
    const last = c.block === 'basic' ? 'bn2' : 'bn3';
    return {
      expect: [
        ['conv1.weight', [64, 3, c.stem === 'imagenet' ? 7 : 3, c.stem === 'imagenet' ? 7 : 3]],
        ...c.layers.map((n, s) => [`layer${s + 1}.${n - 1}.${last}.running_mean`, [c.widths[s]! * expansion]] as const),
        ['fc.weight', [classes, c.widths[3] * expansion]],
      ],
      absent: c.layers.map((n, s) => `layer${s + 1}.${n}.${last}.running_mean`),
    };
  },
  describe(c) {
    const known = Object.entries(LAYOUTS).find(([, [b, l]]) => b === c.block && l.join() === c.layers.join());
    const name = known ? `ResNet-${known[0]}` : `ResNet ${c.block} [${c.layers.join(',')}]`;
    const widths = c.widths.join() === '64,128,256,512' ? '' : `, widths ${c.widths.join('/')}`;
    return `${name}, ${c.stem === 'cifar' ? 'CIFAR' : 'ImageNet'} stem${widths}, ${c.share === 'none' ? 'no sharing' : c.share === 'stage' ? '3x3 kernels shared per stage' : '3x3 kernels shared network-wide'}`;
  },
  // Trained on CIFAR-sized images by kshare's recipes, whichever stem.
  input: () => cifarInput(CIFAR_NORM),
  recipe: 'seresnet',
  names: {
    pattern: 'resnet{18,34,50,101,152}[_cifar][_shared|_shared_network]',
    parse: parseResNetName,
    builtins: [
      'resnet18',
      'resnet34',
      'resnet50',
      'resnet18_cifar',
      'resnet18_cifar_shared',
      'resnet34_cifar_shared',
      'resnet50_cifar',
      'resnet50_cifar_shared',
    ].map((n): [string, Partial<ResNetFields>] => [n, parseResNetName(n)!]),
  },
});
