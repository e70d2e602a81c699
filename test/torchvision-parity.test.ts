// ResNet and MobileNetV2 against torchvision 0.14 (Debian's python3-torchvision): the unshared
// models have torchvision's parameter names, shapes and counts, and with torchvision's weights
// (moved through a safetensors file) give the same logits. The CIFAR stems are compared with
// torchvision's model changed the same way (3x3 stride-1 stem, no max-pool / stride-1 stage 2).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as t from '../src/tensor/index.js';
import { createModel, loadSafetensors } from '../src/models/index.js';
import { shareGroups } from '../src/nn/index.js';
import { runPython, encode, decodeF32, maxRelError, type Encoded } from './helpers/python.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'kshare-torchvision-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const PY = `
import torchvision, safetensors_np as st
torch.manual_seed(0)
name = inp['name']
if name.startswith('resnet'):
    net = getattr(torchvision.models, name.split('_')[0])(num_classes=inp['classes'])
    if '_cifar' in name:
        net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
else:
    width = int(name.split('_')[1]) / 100
    net = torchvision.models.mobilenet_v2(num_classes=inp['classes'], width_mult=width)
    if '_cifar' in name:
        net.features[0][0].stride = (1, 1)
        net.features[2].conv[1][0].stride = (1, 1)
# Trained-like BatchNorm state, so a wrong BN mapping or a missing ReLU shows in the logits.
with torch.no_grad():
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5); m.bias.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2); m.running_var.uniform_(0.5, 1.5)
net.eval()
x = dec(inp['x'])
with torch.no_grad():
    y = net(x)
sd = net.state_dict()
st.write(inp['file'], {k: v for k, v in sd.items()})
print(json.dumps({'logits': enc(y), 'params': sum(p.numel() for p in net.parameters()),
                  'keys': list(sd.keys()), 'shapes': [list(v.shape) for v in sd.values()]}))
`;

interface PyOut {
  logits: Encoded;
  params: number;
  keys: string[];
  shapes: number[][];
}

for (const name of ['resnet18', 'resnet50', 'resnet18_cifar', 'mobilenetv2_100', 'mobilenetv2_050', 'mobilenetv2_100_cifar']) {
  test(`${name}: torchvision's parameter count and state-dict keys, and its logits with its weights`, () => {
    const live = t.liveTensors();
    const classes = 10;
    const model = createModel(name, { classes });
    const file = path.join(dir, `${name}.safetensors`);
    const x = t.randn([2, 3, 32, 32]);
    try {
      const py = runPython<PyOut>(PY, { name, classes, file, x: encode(x.toFloat32Array(), x.shape) });
      assert.equal(model.numParameters(), py.params, 'parameter count');
      const sd = model.stateDict();
      assert.deepEqual([...sd.keys()], py.keys, 'state-dict keys in order');
      assert.deepEqual(
        [...sd.values()].map((v) => v.shape),
        py.shapes,
        'shapes',
      );
      const { tensors } = loadSafetensors(file);
      try {
        model.loadStateDict(tensors);
      } finally {
        t.dispose([...tensors.values()]);
      }
      model.eval();
      const y = t.tidy(() => t.noGrad(() => model.forward(x).toFloat32Array()));
      const err = maxRelError(y, decodeF32(py.logits));
      assert.ok(err < 1e-4, `${name}: logits differ from torchvision's by ${err}`);
    } finally {
      x.dispose();
      model.dispose();
    }
    assert.equal(t.liveTensors(), live, 'no tensor left behind');
  });
}

test('sharing plans: ShaResNet per-stage 3x3 kernels and MobileNetV2 per-stage pointwise/depthwise kernels', () => {
  const count = (name: string) => {
    const m = createModel(name);
    try {
      return { params: m.numParameters(), groups: shareGroups(m).map((g) => g.layers.length) };
    } finally {
      m.dispose();
    }
  };
  // ResNet-18: stage 1 has four 64->64 3x3 convs, stages 2-4 three isomorphic ones each.
  const r = count('resnet18_cifar_shared');
  assert.deepEqual(r.groups, [4, 3, 3, 3]);
  const saved = 3 * 64 * 64 * 9 + 2 * (128 * 128 + 256 * 256 + 512 * 512) * 9;
  assert.equal(r.params, count('resnet18_cifar').params - saved);
  // ResNet-50: the 3x3 conv of every bottleneck in a stage.
  assert.deepEqual(count('resnet50_cifar_shared').groups, [3, 4, 6, 3]);
  // MobileNetV2: blocks 1.. of each stage with at least two of them (stages of 3, 4, 3, 3 blocks);
  // expand, depthwise and project kernel each: 3 groups per stage.
  const mb = count('mobilenetv2_100_cifar_shared');
  assert.deepEqual(mb.groups, [2, 2, 2, 3, 3, 3, 2, 2, 2, 2, 2, 2]);
  assert.deepEqual(count('mobilenetv2_100_cifar_shared_pw').groups.length, 8);
  assert.ok(mb.params < count('mobilenetv2_100_cifar_shared_pw').params);
});
