// ONNX rules for the model classes whose forward is written by hand (not a Sequential chain).
// Each mirrors its class's forward exactly; the parity tests check them against kshare's own eval.
import { SEBasicBlock, SEResNet } from '../models/se-resnet.js';
import { attr } from './onnx-graph.js';
import { registerLayerEmitter } from './module-to-onnx.js';

const child = (path: string, name: string) => (path ? `${path}.${name}` : name);

registerLayerEmitter(SEBasicBlock, (m, x, g, path, emit) => {
  const shortcut = m.downsample ? emit(m.downsample, x, child(path, 'downsample')) : x;
  if (m.preact) {
    const a = g.node('Relu', [emit(m.bn1, x, child(path, 'bn1'))], {}, `${path}/relu1`);
    const h = emit(m.conv1, a, child(path, 'conv1'));
    const b = g.node('Relu', [emit(m.bn2, h, child(path, 'bn2'))], {}, `${path}/relu2`);
    const out = emit(m.conv2, b, child(path, 'conv2'));
    return g.node('Add', [emit(m.se, out, child(path, 'se')), shortcut], {}, `${path}/add`);
  }
  const h = g.node('Relu', [emit(m.bn1, emit(m.conv1, x, child(path, 'conv1')), child(path, 'bn1'))], {}, `${path}/relu1`);
  const out = emit(m.bn2, emit(m.conv2, h, child(path, 'conv2')), child(path, 'bn2'));
  const sum = g.node('Add', [emit(m.se, out, child(path, 'se')), shortcut], {}, `${path}/add`);
  return g.node('Relu', [sum], {}, path || 'block');
});

registerLayerEmitter(SEResNet, (m, x, g, path, emit) => {
  let h = g.node('Relu', [emit(m.bn1, emit(m.conv1, x, child(path, 'conv1')), child(path, 'bn1'))], {}, child(path, 'relu'));
  for (const [name, stage] of [['layer1', m.layer1], ['layer2', m.layer2], ['layer3', m.layer3]] as const) h = emit(stage, h, child(path, name));
  h = g.node('Flatten', [emit(m.avgpool, h, child(path, 'avgpool'))], { axis: attr.int(1) }, child(path, 'flatten'));
  if (m.dropoutLayer) h = emit(m.dropoutLayer, h, child(path, 'dropout_layer'));
  return emit(m.fc, h, child(path, 'fc'));
});
