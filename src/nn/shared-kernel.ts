// A kernel (weight and optionally bias) that several isomorphic convolutions use at once.
//
// Two convolutions are isomorphic when they have the same kernel size, input and output
// channels and groups; stride, padding and dilation may differ per use. The shared weight is
// one Tensor object, so autograd sums the gradients of all uses and an optimizer updates it once.
import type { Tensor } from '../tensor/index.js';

export interface KernelSignature {
  inChannels: number;
  outChannels: number;
  kernelSize: [number, number];
  groups: number;
}

export function signatureText(s: KernelSignature): string {
  const g = s.groups === 1 ? '' : `, groups ${s.groups}`;
  return `${s.inChannels}->${s.outChannels}, ${s.kernelSize[0]}x${s.kernelSize[1]}${g}`;
}

/** Why two signatures are not isomorphic, or null when they are. */
export function signatureMismatch(a: KernelSignature, b: KernelSignature): string | null {
  const diffs: string[] = [];
  if (a.inChannels !== b.inChannels) diffs.push(`in channels ${a.inChannels} vs ${b.inChannels}`);
  if (a.outChannels !== b.outChannels) diffs.push(`out channels ${a.outChannels} vs ${b.outChannels}`);
  if (a.kernelSize[0] !== b.kernelSize[0] || a.kernelSize[1] !== b.kernelSize[1]) {
    diffs.push(`kernel size ${a.kernelSize.join('x')} vs ${b.kernelSize.join('x')}`);
  }
  if (a.groups !== b.groups) diffs.push(`groups ${a.groups} vs ${b.groups}`);
  return diffs.length ? diffs.join(', ') : null;
}

export class SharedKernel implements KernelSignature {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernelSize: [number, number];
  readonly groups: number;

  /**
   * @param weight [out, in/groups, kH, kW], used as is (not copied)
   * @param bias [out] or null when each user keeps its own bias (or has none)
   * @param label names the kernel in error messages and tables (e.g. its first user's path)
   */
  constructor(
    readonly weight: Tensor,
    readonly bias: Tensor | null,
    sig: KernelSignature,
    readonly label = 'shared kernel',
  ) {
    const [o, ig, kh, kw] = weight.shape;
    if (weight.rank !== 4 || o !== sig.outChannels || ig! * sig.groups !== sig.inChannels || kh !== sig.kernelSize[0] || kw !== sig.kernelSize[1]) {
      throw new Error(`SharedKernel '${label}': weight [${weight.shape}] does not fit ${signatureText(sig)}`);
    }
    if (bias && (bias.rank !== 1 || bias.dim(0) !== o)) throw new Error(`SharedKernel '${label}': bias [${bias.shape}] must have shape [${o}]`);
    this.inChannels = sig.inChannels;
    this.outChannels = sig.outChannels;
    this.kernelSize = [sig.kernelSize[0], sig.kernelSize[1]];
    this.groups = sig.groups;
  }
}
