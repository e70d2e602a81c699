"""PyTorch eager reference for bench/gpu-step.ts: times one training step of a paper model.

    python3 bench/reference_gpu_step.py --probe cuda        # {"torch", "cuda", "device"}
    python3 bench/reference_gpu_step.py --job '<json>'      # what gpu-step.ts passes

The models come from test/fixtures/ref_models.py (torch.nn re-implementations of the original
code, sharing by assigning one Parameter to several convolutions), so `parameters()` lists a
shared kernel once and the optimiser updates it once, as in kshare.

The job (JSON): model, classes, device, batch, size, warmup, steps, precision (fp32|fp16|bf16),
scaler, channelsLast, cudnnBenchmark, optimizer (a recipe's optimizer block), clip, threads, seed.
One step: forward under autocast (fp16/bf16) -> cross-entropy on float32 logits -> backward
(scaled with a GradScaler when `scaler`) -> [unscale, clip_grad_norm_] -> optimizer step
(through the scaler) -> zero_grad(set_to_none=True). Timing as in gpu-step.ts: `warmup` untimed
steps, `steps` steps each between two device synchronisations, then a block of `steps` steps
synchronised only at its ends. Prints one JSON line:
{"torch", "device", "scaler", "samplesMs": [...], "blockMs": mean, "skipped": n}.
"""
import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures'))
import ref_models  # noqa: E402


def device_name(device):
    if device.startswith('cuda') and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return 'cpu'


def make_scaler(device_type, enabled):
    """A GradScaler for float16 (torch.amp.GradScaler in torch 2.3+, torch.cuda.amp's before).
    torch 1.13's only scaler is CUDA's, which disables itself without CUDA."""
    if not enabled:
        return None
    if hasattr(torch, 'amp') and hasattr(torch.amp, 'GradScaler'):
        try:
            return torch.amp.GradScaler(device_type)
        except (TypeError, RuntimeError):
            pass
    if device_type != 'cuda':
        return None
    return torch.cuda.amp.GradScaler()


def build_optimizer(model, cfg):
    """As src/train/build-optimizer.ts: SGD over all parameters, or AdamW with ConvNeXt's
    groups (1-D tensors and `.bias` names without weight decay) when noDecayOnNormsAndBiases."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # shared ones once
    if cfg['type'] == 'sgd':
        return torch.optim.SGD([p for _, p in named], lr=cfg['lr'], momentum=cfg['momentum'],
                               weight_decay=cfg['weightDecay'], nesterov=cfg['nesterov'],
                               dampening=cfg['dampening'])
    kw = dict(lr=cfg['lr'], betas=tuple(cfg['betas']), eps=cfg['eps'], weight_decay=cfg['weightDecay'])
    if not cfg.get('noDecayOnNormsAndBiases'):
        return torch.optim.AdamW([p for _, p in named], **kw)
    no_decay = lambda n, p: p.ndim <= 1 or n.endswith('.bias')  # noqa: E731
    groups = [{'params': [p for n, p in named if not no_decay(n, p)]},
              {'params': [p for n, p in named if no_decay(n, p)], 'weight_decay': 0.0}]
    return torch.optim.AdamW([g for g in groups if g['params']], **kw)


def run(job):
    device = job['device']
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    if job.get('threads'):
        torch.set_num_threads(job['threads'])
    torch.backends.cudnn.benchmark = bool(job['cudnnBenchmark'])
    torch.manual_seed(job['seed'])
    fmt = torch.channels_last if job['channelsLast'] else torch.contiguous_format
    model = ref_models.build(job['model'], job['classes']).to(device=device, memory_format=fmt).train()
    opt = build_optimizer(model, job['optimizer'])
    params = [p for g in opt.param_groups for p in g['params']]
    scaler = make_scaler(device_type, job['scaler'])
    gen = torch.Generator().manual_seed(job['seed'] + 1)
    x = torch.randn(job['batch'], 3, job['size'], job['size'], generator=gen).to(device=device, memory_format=fmt)
    y = torch.randint(0, job['classes'], (job['batch'],), generator=gen).to(device)
    precision = job['precision']
    amp = precision != 'fp32'
    amp_dtype = torch.bfloat16 if precision == 'bf16' else torch.float16
    clip = job['clip']

    def step():
        # not torch.autocast(enabled=False): torch 1.13 rejects float16 for CPU even when disabled
        with torch.autocast(device_type=device_type, dtype=amp_dtype) if amp else contextlib.nullcontext():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device_type == 'cuda' else (lambda: None)
    for _ in range(job['warmup']):
        step()
    sync()
    samples, skipped = [], 0
    for _ in range(job['steps']):
        before = scaler.get_scale() if scaler is not None else None  # syncs: outside the timed region
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        samples.append((time.perf_counter() - t0) * 1000)
        if scaler is not None and scaler.get_scale() < before:  # the scaler backs off when it skips a step
            skipped += 1
    sync()
    t0 = time.perf_counter()
    for _ in range(job['steps']):
        step()
    sync()
    block = (time.perf_counter() - t0) * 1000 / job['steps']
    return {'torch': torch.__version__, 'device': device_name(device), 'scaler': scaler is not None,
            'samplesMs': samples, 'blockMs': block, 'skipped': skipped}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--probe', metavar='DEVICE', help='print torch version, CUDA availability and device name')
    ap.add_argument('--job', help='the job as JSON (see the module docstring)')
    a = ap.parse_args()
    if a.probe:
        print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'device': device_name(a.probe)}))
        return 0
    if not a.job:
        ap.error('give --job or --probe')
    print(json.dumps(run(json.loads(a.job))))
    return 0


if __name__ == '__main__':
    sys.exit(main())
