"""PyTorch side of bench/distributed.ts: the same all-reduces with torch.distributed (Gloo).

Run once per rank with MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK set; argv[1] is a JSON object
{name: bytes}. Rank 0 prints {"torch": version, "allReduceMs": {name: median ms}}.
"""
import json
import statistics
import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    sizes = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://")
    out = {}
    for name, nbytes in sizes.items():
        buf = torch.zeros(nbytes // 4)
        times = []
        for r in range(15):
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            if r >= 2:
                times.append((time.perf_counter() - t0) * 1000)
        out[name] = statistics.median(times)
    dist.barrier()
    if dist.get_rank() == 0:
        print(json.dumps({"torch": torch.__version__, "allReduceMs": out}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
