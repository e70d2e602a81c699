// ConvMixer (Trockman & Kolter) with the paper's inter-layer kernel sharing.
import * as t from '../tensor/index.js';
import { Conv2d, GELU, BatchNorm2d, Sequential, Residual, AdaptiveAvgPool2d, Flatten, Linear, SharedKernel } from '../nn/index.js';
import { cifarInput, defineArchitecture, field, IMAGENET_NORM } from './spec.js';

export const CONVMIXER_SHARING = ['none', 'depthwise', 'pointwise', 'both'] as const;
export type ConvMixerSharing = (typeof CONVMIXER_SHARING)[number];

export interface ConvMixerConfig {
  dim: number;
  depth: number;
  kernelSize: number;
  patchSize: number;
  classes: number;
  /** 'both' is the original `_shared` model: depthwise and pointwise weights and biases shared by all blocks. */
  sharing?: ConvMixerSharing;
  dilation?: number;
}

/**
 * Layer order and names as the original nn.Sequential:
 *   0 patch conv (k = stride = patchSize, bias) → 1 GELU → 2 BN,
 *   3..2+depth blocks: Sequential(0 Residual(fn = Sequential(depthwise conv k, groups = dim,
 *     padding dilation·(k-1)/2, bias → GELU → BN)), 1 pointwise 1x1 conv (bias), 2 GELU, 3 BN),
 *   then AdaptiveAvgPool2d(1) → Flatten → Linear(dim, classes).
 * The residual covers only the depthwise part. Shared kernels are named after block 0
 * (`3.0.fn.0.weight`, `3.1.weight`, ...); every BatchNorm stays per block.
 */
export class ConvMixer extends Sequential {
  readonly dim: number;
  readonly depth: number;
  readonly kernelSize: number;
  readonly patchSize: number;
  readonly classes: number;
  readonly sharing: ConvMixerSharing;
  readonly dilation: number;

  constructor(c: ConvMixerConfig) {
    super();
    const { dim, depth, kernelSize: k, patchSize: p, classes } = c;
    const sharing = c.sharing ?? 'none';
    const dilation = c.dilation ?? 1;
    for (const [n, v] of Object.entries({ dim, depth, kernelSize: k, patchSize: p, classes, dilation })) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`ConvMixer: ${n} must be a positive integer, got ${JSON.stringify(v)}`);
    }
    if (!CONVMIXER_SHARING.includes(sharing))
      throw new Error(`ConvMixer: sharing must be one of ${CONVMIXER_SHARING.join(', ')}, got ${JSON.stringify(sharing)}`);
    this.dim = dim;
    this.depth = depth;
    this.kernelSize = k;
    this.patchSize = p;
    this.classes = classes;
    this.sharing = sharing;
    this.dilation = dilation;
    const pad = Math.floor((dilation * (k - 1)) / 2);
    const depthwise = () => new Conv2d(dim, dim, k, { dilation, groups: dim, padding: pad });
    const pointwise = () => new Conv2d(dim, dim, 1);
    // The original always draws two template convs first (the shared kernels are their clones),
    // so the random draw order, hence the initial weights for a seed, match it in every mode.
    const dwTemplate = depthwise();
    const pwTemplate = pointwise();
    const sharedOf = (tpl: Conv2d, label: string) =>
      new SharedKernel(t.keep(t.noGrad(() => tpl.weight.clone())).requiresGrad_(), t.keep(t.noGrad(() => tpl.bias!.clone())).requiresGrad_(), tpl, label);
    const sharedDw = sharing === 'depthwise' || sharing === 'both' ? sharedOf(dwTemplate, '3.0.fn.0') : null;
    const sharedPw = sharing === 'pointwise' || sharing === 'both' ? sharedOf(pwTemplate, '3.1') : null;
    dwTemplate.dispose();
    pwTemplate.dispose();
    const blocks: Sequential[] = [];
    for (let i = 0; i < depth; i++) {
      const dw = depthwise();
      const pw = pointwise();
      if (sharedDw) t.dispose(dw.useKernel(sharedDw, `${3 + i}.0.fn.0`));
      if (sharedPw) t.dispose(pw.useKernel(sharedPw, `${3 + i}.1`));
      blocks.push(new Sequential(new Residual(new Sequential(dw, new GELU(), new BatchNorm2d(dim))), pw, new GELU(), new BatchNorm2d(dim)));
    }
    const stem = new Conv2d(3, dim, p, { stride: p });
    const head = new Linear(dim, classes);
    for (const m of [stem, new GELU(), new BatchNorm2d(dim), ...blocks, new AdaptiveAvgPool2d(1), new Flatten(), head]) this.append(m);
  }
}

/** ConvMixer's config fields (defaults and bounds in `convmixerSpec.fields`). */
export type ConvMixerFields = Required<Omit<ConvMixerConfig, 'classes'>>;

const CONVMIXER_NAME = /^convmixer_(\d+)_(\d+)(?:_k(\d+))?(?:_p(\d+))?(_shared(?:_dw|_pw)?)?$/;
const SHARING_SUFFIX = { _shared: 'both', _shared_dw: 'depthwise', _shared_pw: 'pointwise' } as const;
const SHARING_TEXT: Record<ConvMixerSharing, string> = {
  none: 'no sharing',
  both: 'depthwise+pointwise shared',
  depthwise: 'depthwise shared',
  pointwise: 'pointwise shared',
};

export const convmixerSpec = defineArchitecture<ConvMixerFields>({
  architecture: 'convmixer',
  about: 'ConvMixer (Trockman & Kolter): patch embedding, depthwise + pointwise blocks; the paper shares both across blocks',
  fields: {
    dim: field.int(1, 8192),
    depth: field.int(1, 1024),
    kernelSize: field.int(1, 63, 9),
    patchSize: field.int(1, 64, 1),
    dilation: field.int(1, 16, 1),
    /** The paper's sharing modes; a config's `plan` (applied afterwards) can express finer ones. */
    sharing: field.oneOf(CONVMIXER_SHARING, 'none'),
  },
  build: (c, classes) => new ConvMixer({ ...c, classes }),
  storedTensors: ({ dim, depth, kernelSize: k, patchSize: p }, classes) => ({
    expect: [
      ['0.weight', [dim, 3, p, p]],
      ['3.0.fn.0.weight', [dim, 1, k, k]],
      ['3.1.weight', [dim, dim, 1, 1]],
      [`${depth + 2}.3.running_mean`, [dim]],
      [`${depth + 5}.weight`, [classes, dim]],
    ],
    absent: [`${depth + 3}.3.running_mean`],
  }),
  describe: (c) => `ConvMixer-${c.dim}/${c.depth}, kernel ${c.kernelSize}, patch ${c.patchSize}, ${SHARING_TEXT[c.sharing]}`,
  input: () => cifarInput(IMAGENET_NORM),
  recipe: 'convmixer',
  // NCHW: the depthwise plane kernel and the fused block halves run there; ConvMixer-256/16
  // shared inference, 1 thread, NCHW against channels-last: batch 1 18.7 / 20.0 ms, batch 64
  // 1,181 / 1,283 ms (`node dist/bench/memory-format.js`, bench/results/memory-format.json).
  cpuMemoryFormat: 'contiguous',
  names: {
    pattern: 'convmixer_<dim>_<depth>[_k<k>][_p<p>][_shared|_shared_dw|_shared_pw]',
    parse(name) {
      const m = CONVMIXER_NAME.exec(name);
      if (!m) return null;
      const c: Partial<ConvMixerFields> = { dim: +m[1]!, depth: +m[2]!, sharing: m[5] ? SHARING_SUFFIX[m[5] as keyof typeof SHARING_SUFFIX] : 'none' };
      if (m[3]) c.kernelSize = +m[3];
      if (m[4]) c.patchSize = +m[4];
      return c;
    },
    // The paper's models (original names) and two smaller ones for quick runs.
    builtins: [
      ['convmixer_256_16', { dim: 256, depth: 16, sharing: 'none' }],
      ['convmixer_256_16_shared', { dim: 256, depth: 16, sharing: 'both' }],
      ['convmixer_256_8_k5_p2', { dim: 256, depth: 8, kernelSize: 5, patchSize: 2, sharing: 'none' }],
      ['convmixer_256_8_k5_p2_shared', { dim: 256, depth: 8, kernelSize: 5, patchSize: 2, sharing: 'both' }],
      ['convmixer_64_4_k5_p2', { dim: 64, depth: 4, kernelSize: 5, patchSize: 2, sharing: 'none' }],
      ['convmixer_64_4_k5_p2_shared', { dim: 64, depth: 4, kernelSize: 5, patchSize: 2, sharing: 'both' }],
    ],
  },
});
