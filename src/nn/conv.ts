// Conv2d, whose kernel is either its own or taken from a SharedKernel.
import * as t from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import { Module } from './module.js';
import { kaimingUniform_, defaultBias_, parameter } from './init.js';
import { SharedKernel, signatureMismatch, signatureText, type KernelSignature } from './shared-kernel.js';

export interface Conv2dOptions {
  stride?: number | [number, number];
  /** Symmetric zero padding per side. */
  padding?: number | [number, number];
  dilation?: number | [number, number];
  groups?: number;
  /** Own bias (default true). Ignored when `kernel` carries a bias. */
  bias?: boolean;
  /** Use this shared kernel instead of creating one (no random draws then). */
  kernel?: SharedKernel;
}

function pair(name: string, v: number | [number, number], min: number): [number, number] {
  const p: [number, number] = typeof v === 'number' ? [v, v] : [v[0], v[1]];
  for (const x of p) if (!Number.isInteger(x) || x < min) throw new RangeError(`Conv2d: ${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return p;
}

/** y = conv2d(x, weight, bias) with PyTorch's Conv2d semantics and default init. */
export class Conv2d extends Module implements KernelSignature {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernelSize: [number, number];
  readonly stride: [number, number];
  readonly padding: [number, number];
  readonly dilation: [number, number];
  readonly groups: number;
  #kernel: SharedKernel | null = null;

  constructor(inChannels: number, outChannels: number, kernelSize: number | [number, number], o: Conv2dOptions = {}) {
    super();
    for (const [n, v] of [
      ['inChannels', inChannels],
      ['outChannels', outChannels],
    ] as const) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`Conv2d: ${n} must be a positive integer, got ${v}`);
    }
    this.inChannels = inChannels;
    this.outChannels = outChannels;
    this.kernelSize = pair('kernelSize', kernelSize, 1);
    this.stride = pair('stride', o.stride ?? 1, 1);
    this.padding = pair('padding', o.padding ?? 0, 0);
    this.dilation = pair('dilation', o.dilation ?? 1, 1);
    this.groups = o.groups ?? 1;
    if (!Number.isInteger(this.groups) || this.groups < 1 || inChannels % this.groups || outChannels % this.groups) {
      throw new RangeError(`Conv2d: groups ${this.groups} must divide in channels ${inChannels} and out channels ${outChannels}`);
    }
    const wantBias = o.bias ?? true;
    if (o.kernel) {
      this.#checkKernel(o.kernel);
      this.registerParameter('weight', o.kernel.weight);
      this.registerParameter('bias', o.kernel.bias ?? (wantBias ? this.#newBias(o.kernel.weight) : null));
      this.#kernel = o.kernel;
    } else {
      const w = parameter([outChannels, inChannels / this.groups, ...this.kernelSize]);
      kaimingUniform_(w, Math.sqrt(5));
      this.registerParameter('weight', w);
      this.registerParameter('bias', wantBias ? this.#newBias(w) : null);
    }
  }

  #newBias(weight: Tensor): Tensor {
    const b = parameter([this.outChannels]);
    defaultBias_(b, weight);
    return b;
  }

  get weight(): Tensor {
    return this.getParameter('weight')!;
  }

  get bias(): Tensor | null {
    return this.getParameter('bias');
  }

  /** The shared kernel this layer uses, or null when its kernel is its own. */
  get kernel(): SharedKernel | null {
    return this.#kernel;
  }

  #checkKernel(k: SharedKernel, label = `Conv2d(${signatureText(this)})`): void {
    const why = signatureMismatch(k, this);
    if (why) throw new Error(`cannot share kernel '${k.label}' (${signatureText(k)}) with layer '${label}' (${signatureText(this)}): ${why}`);
  }

  /**
   * Makes this layer use a shared kernel (its bias too, when the kernel has one). Returns the
   * tensors this layer no longer uses; the caller disposes them if nothing else holds them.
   * @param label the layer's name, for the error raised when the kernel is not isomorphic
   */
  useKernel(k: SharedKernel, label?: string): Tensor[] {
    this.#checkKernel(k, label);
    const replaced: Tensor[] = [];
    const oldW = this.rebindParameter('weight', k.weight);
    if (oldW && oldW !== k.weight) replaced.push(oldW);
    if (k.bias) {
      if (this.bias === null)
        throw new Error(`cannot share kernel '${k.label}' with layer '${label ?? 'Conv2d'}': the kernel has a bias and the layer has none`);
      const oldB = this.rebindParameter('bias', k.bias);
      if (oldB && oldB !== k.bias) replaced.push(oldB);
    }
    this.#kernel = k;
    return replaced;
  }

  /** Gives this layer its own copy of its current kernel (and shared bias). Returns nothing to dispose. */
  unshare(): void {
    const k = this.#kernel;
    if (!k) return;
    t.noGrad(() => {
      const w = t.clone(this.weight);
      w.requiresGrad = this.weight.requiresGrad;
      this.rebindParameter('weight', w);
      if (k.bias && this.bias === k.bias) {
        const b = t.clone(k.bias);
        b.requiresGrad = k.bias.requiresGrad;
        this.rebindParameter('bias', b);
      }
    });
    this.#kernel = null;
  }

  /** Makes this layer's current kernel a SharedKernel other layers can use. */
  asSharedKernel(label: string, withBias: boolean): SharedKernel {
    if (this.#kernel && (this.#kernel.bias !== null) === withBias) return this.#kernel;
    if (withBias && !this.bias) throw new Error(`layer '${label}' has no bias to share`);
    const k = new SharedKernel(this.weight, withBias ? this.bias : null, this, label);
    this.#kernel = k;
    return k;
  }

  forward(x: Tensor): Tensor {
    return this.convolve(x, true);
  }

  /** The convolution, with or without adding the bias (a fused kernel may add it later). */
  convolve(x: Tensor, withBias: boolean): Tensor {
    return t.conv2d(x, this.weight, withBias ? this.bias : null, { stride: this.stride, padding: this.padding, dilation: this.dilation, groups: this.groups });
  }

  describe(): string {
    const parts = [`${this.inChannels}, ${this.outChannels}, k=${fmt(this.kernelSize)}`];
    if (this.stride[0] !== 1 || this.stride[1] !== 1) parts.push(`stride=${fmt(this.stride)}`);
    if (this.padding[0] || this.padding[1]) parts.push(`padding=${fmt(this.padding)}`);
    if (this.dilation[0] !== 1 || this.dilation[1] !== 1) parts.push(`dilation=${fmt(this.dilation)}`);
    if (this.groups !== 1) parts.push(`groups=${this.groups}`);
    if (!this.bias) parts.push('bias=false');
    return parts.join(', ');
  }
}

function fmt(p: [number, number]): string {
  return p[0] === p[1] ? String(p[0]) : `${p[0]}x${p[1]}`;
}
