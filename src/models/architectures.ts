// The built-in architectures, in `kshare models` order. Adding one: a new src/models/<arch>.ts
// exporting its spec, plus one line here (docs/adding-an-architecture.md).
import type { ArchitectureSpec } from './spec.js';
import { convmixerSpec } from './convmixer.js';
import { seResnetSpec } from './se-resnet.js';
import { resnetSpec } from './resnet.js';
import { mobilenetv2Spec } from './mobilenetv2.js';

export const BUILTIN_ARCHITECTURES: readonly ArchitectureSpec<never>[] = [
  convmixerSpec,
  seResnetSpec,
  resnetSpec,
  mobilenetv2Spec,
] as unknown as ArchitectureSpec<never>[];
