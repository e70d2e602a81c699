// Autograd through the addon: requiresGrad, backward, grad accumulation, no-grad scopes, and
// a weight shared by several ops (kernel sharing) receiving the sum of its gradients.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as t from '../src/tensor/index.js';
import type { Tensor } from '../src/tensor/index.js';
import { runPython, encode, decodeF32, maxRelError, type Encoded } from './helpers/python.js';

const enc = (x: Tensor): Encoded => encode(x.toFloat32Array(), x.shape);
const close = (a: number[], b: number[], tol = 1e-6) =>
  assert.ok(a.length === b.length && a.every((v, i) => Math.abs(v - b[i]!) <= tol * Math.max(1, Math.abs(b[i]!))), `[${a}] != [${b}]`);

test('requiresGrad, isLeaf and backward of a scalar give hand-computed gradients', () => {
  t.tidy(() => {
    const x = t.tensor([1, -2, 3], [3]);
    assert.equal(x.requiresGrad, false);
    x.requiresGrad = true;
    assert.equal(x.requiresGrad, true);
    assert.equal(x.isLeaf, true);
    const y = t.sum(t.mul(x, x).mul(3).add(t.mul(x, 2))); // d/dx (3x² + 2x) = 6x + 2
    assert.equal(y.requiresGrad, true);
    assert.equal(y.isLeaf, false);
    y.backward();
    close(x.grad!.toArray(), [8, -10, 20]);
    assert.equal(t.tensor([1]).grad, null);
  });
});

test('gradients accumulate over backward calls until cleared', () => {
  t.tidy(() => {
    const w = t.tensor([0.5, 2], [2], { requiresGrad: true });
    t.sum(t.mul(w, w)).backward(); // 2w
    t.sum(t.mul(w, 3)).backward(); // + 3
    close(w.grad!.toArray(), [4, 7]);
    w.grad = null;
    assert.equal(w.grad, null);
    t.sum(w).backward();
    close(w.grad!.toArray(), [1, 1]);
  });
});

test('backward of a non-scalar needs an explicit gradient; retainGraph allows a second pass', () => {
  t.tidy(() => {
    const x = t.tensor([1, 2, 3], [3], { requiresGrad: true });
    const y = t.mul(x, x); // dy/dx = 2x, vector-Jacobian with g gives 2x*g
    assert.throws(() => y.backward(), /backward: output has shape \[3\]/);
    y.backward(t.tensor([1, 0, -1], [3]), { retainGraph: true });
    close(x.grad!.toArray(), [2, 0, -6]);
    y.backward(t.tensor([1, 1, 1], [3]));
    close(x.grad!.toArray(), [4, 4, 0]);
    // the graph is freed now
    assert.throws(
      () => y.backward(t.tensor([1, 1, 1], [3])),
      (e: Error) => e instanceof Error && /backward/.test(e.message),
    );
  });
});

test('noGrad records no graph, enableGrad re-enables inside it, and detach cuts the graph', () => {
  t.tidy(() => {
    const x = t.tensor([1, 2], [2], { requiresGrad: true });
    assert.equal(t.isGradEnabled(), true);
    const y = t.noGrad(() => {
      assert.equal(t.isGradEnabled(), false);
      const inner = t.enableGrad(() => t.mul(x, 2));
      assert.equal(inner.requiresGrad, true);
      return t.mul(x, 2);
    });
    assert.equal(t.isGradEnabled(), true);
    assert.equal(y.requiresGrad, false);
    assert.deepEqual(y.toArray(), [2, 4]);
    const d = x.detach();
    assert.equal(d.requiresGrad, false);
    // noGrad restores the mode even when fn throws
    assert.throws(
      () =>
        t.noGrad(() => {
          throw new Error('boom');
        }),
      /boom/,
    );
    assert.equal(t.isGradEnabled(), true);
    // x still gets a gradient only through the recorded path
    t.sum(t.add(t.mul(x, 5), y)).backward();
    close(x.grad!.toArray(), [5, 5]);
  });
});

test('an in-place op under noGrad changes a leaf without recording (optimizer updates)', () => {
  t.tidy(() => {
    const w = t.tensor([1, 2], [2], { requiresGrad: true });
    t.noGrad(() => t.add_(w, t.tensor([10, 10], [2]), -0.5));
    assert.deepEqual(w.toArray(), [-4, -3]);
    assert.equal(w.isLeaf, true);
    t.sum(t.mul(w, w)).backward();
    close(w.grad!.toArray(), [-8, -6]);
  });
});

/** Three convolutions in a chain; each may use its own weight or all the same one. */
function chain(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor, b: Tensor): Tensor {
  const a = t.gelu(t.conv2d(x, w1, b, { padding: 1 }));
  const c = t.gelu(t.conv2d(a, w2, b, { padding: 1 }));
  return t.conv2d(c, w3, b, { padding: 1 });
}

test('a weight used by 3 convolutions gets the sum of their gradients (vs separate copies and PyTorch)', () => {
  t.tidy(() => {
    const gen = new t.Generator(5);
    const x = t.randn([2, 4, 6, 6], { generator: gen });
    const w0 = t.randn([4, 4, 3, 3], { generator: gen }).mul(0.3);
    const b0 = t.randn([4], { generator: gen }).mul(0.1);
    const r = t.randn([2, 4, 6, 6], { generator: gen });

    // shared: the very same tensor in all three convolutions (and the same bias)
    const w = t.clone(w0).requiresGrad_();
    const b = t.clone(b0).requiresGrad_();
    const yShared = chain(x, w, w, w, b);
    t.sum(t.mul(yShared, r)).backward();
    const gShared = w.grad!,
      gbShared = b.grad!;

    // separate: three independent copies with equal values, gradients summed by hand
    const ws = [0, 1, 2].map(() => t.clone(w0).requiresGrad_());
    const bs = t.clone(b0).requiresGrad_();
    const ySep = chain(x, ws[0]!, ws[1]!, ws[2]!, bs);
    assert.ok(maxRelError(ySep.toFloat32Array(), yShared.toFloat32Array()) < 1e-6);
    t.sum(t.mul(ySep, r)).backward();
    const parts = ws.map((c) => c.grad!);
    const gSum = parts[0]!.add(parts[1]!).add(parts[2]!);
    // each use contributes something different, so a "last one wins" bug would be visible
    assert.ok(maxRelError(parts[0]!.toFloat32Array(), gSum.toFloat32Array()) > 0.05);
    assert.ok(maxRelError(gShared.toFloat32Array(), gSum.toFloat32Array()) < 1e-5, 'shared grad != sum of separate grads');
    assert.ok(maxRelError(gbShared.toFloat32Array(), bs.grad!.toFloat32Array()) < 1e-5);

    const ref = runPython<{ y: Encoded; gw: Encoded; gb: Encoded }>(
      `
import torch.nn.functional as F
x, r = dec(inp['x']), dec(inp['r'])
w = dec(inp['w']).requires_grad_(True)
b = dec(inp['b']).requires_grad_(True)
a = F.gelu(F.conv2d(x, w, b, padding=1))
c = F.gelu(F.conv2d(a, w, b, padding=1))
y = F.conv2d(c, w, b, padding=1)
(y * r).sum().backward()
print(json.dumps({'y': enc(y), 'gw': enc(w.grad), 'gb': enc(b.grad)}))
`,
      { x: enc(x), w: enc(w0), b: enc(b0), r: enc(r) },
    );
    assert.ok(maxRelError(yShared.toFloat32Array(), decodeF32(ref.y)) < 1e-5);
    assert.ok(maxRelError(gShared.toFloat32Array(), decodeF32(ref.gw)) < 1e-5, 'shared weight grad differs from PyTorch');
    assert.ok(maxRelError(gbShared.toFloat32Array(), decodeF32(ref.gb)) < 1e-5, 'shared bias grad differs from PyTorch');
  });
});

test('grad assignment rejects a gradient of the wrong shape', () => {
  t.tidy(() => {
    const p = t.zeros([2, 3], { requiresGrad: true });
    assert.throws(() => {
      p.grad = t.zeros([3, 2]);
    }, /grad.*\[3,2\].*\[2,3\]/);
    p.grad = t.ones([2, 3]);
    assert.deepEqual(p.grad!.toArray(), [1, 1, 1, 1, 1, 1]);
  });
});
