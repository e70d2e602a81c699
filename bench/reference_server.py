# PyTorch side of bench/paired.ts: a long-lived process that defines and times small
# workloads on request, so that kshare and PyTorch timings can be interleaved in one run.
#
# Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.
#   {"op": "define", "name": str, "code": str}  code defines run() (and may set up tensors)
#   {"op": "time", "name": str, "reps": int}     -> {"wallMs": [...], "cpuMs": [...]}
#   {"op": "info"}                               -> {"torch": version, "threads": n}
import json
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
cases = {}


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["op"] == "define":
            ns = {"torch": torch, "F": torch.nn.functional}
            with torch.no_grad():
                exec(req["code"], ns)
            cases[req["name"]] = ns["run"]
            reply({})
        elif req["op"] == "time":
            fn = cases[req["name"]]
            wall, cpu = [], []
            for _ in range(int(req["reps"])):
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                cpu.append((time.process_time() - c0) * 1e3)
                wall.append((time.perf_counter() - w0) * 1e3)
            reply({"wallMs": wall, "cpuMs": cpu})
        elif req["op"] == "info":
            reply({"torch": torch.__version__, "threads": torch.get_num_threads()})
        else:
            reply({"error": "unknown op " + str(req["op"])})
    except Exception as e:  # the bench reports it and stops
        reply({"error": repr(e)})
