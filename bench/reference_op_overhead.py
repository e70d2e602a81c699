"""PyTorch eager reference for bench/op-overhead.ts: the host cost of one small operator call.

    python3 bench/reference_op_overhead.py '{"n": 20000}'

Times `n` calls of each operator on tiny CPU tensors (so the arithmetic is negligible) after
`n` untimed ones, one thread, and prints one JSON line {"torch", "us": {name: microseconds per call}}.
The operators and shapes are bench/op-overhead.ts's.
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
job = json.loads(sys.argv[1])
n = job['n']
a, b = torch.randn(16), torch.randn(16)
x, w = torch.randn(1, 8, 4, 4), torch.randn(8, 8, 3, 3)
m = torch.randn(4, 4)
OPS = {
    'add': lambda: torch.add(a, b),
    'mul': lambda: torch.mul(a, b),
    'relu': lambda: torch.relu(a),
    'matmul 4x4': lambda: torch.matmul(m, m),
    'conv2d 3x3 (1, 8, 4, 4)': lambda: F.conv2d(x, w, None, padding=1),
}
us = {}
for name, f in OPS.items():
    for _ in range(n):
        f()
    s = time.perf_counter()
    for _ in range(n):
        f()
    us[name] = (time.perf_counter() - s) / n * 1e6
print(json.dumps({'torch': torch.__version__, 'us': us}))
