// A script for a fresh node process (with `t`, the tensor library, already imported): three
// warm-up and ten timed ConvMixer-64/4 training steps at batch 64, then one JSON line with the
// minor page faults of the ten and the fields of `report`. Shared by the allocator and malloc
// tests, which compare process-wide memory settings.
import { fileURLToPath } from 'node:url';

const registry = fileURLToPath(new URL('../../src/models/registry.js', import.meta.url));

export function trainingFaultsScript(o: { before?: string; report?: string } = {}): string {
  return `
    ${o.before ?? ''}
    const { createModel } = await import(${JSON.stringify(registry)});
    const m = createModel('convmixer_64_4_k5_p2', { classes: 10 });
    const x = t.randn([64, 3, 32, 32]), y = t.randint(0, 10, [64]);
    const step = () => t.tidy(() => t.crossEntropy(m.forward(x), y).backward());
    for (let i = 0; i < 3; i++) step();
    const f0 = process.resourceUsage().minorPageFault;
    for (let i = 0; i < 10; i++) step();
    console.log(JSON.stringify({ ${o.report ? `${o.report}, ` : ''}faults: process.resourceUsage().minorPageFault - f0 }));`;
}
