#!/usr/bin/env bash
# The GPU benchmark in one command (docs/gpu.md, "GPU training-step benchmark").
#
# Here, on the CPU machine, once per change:
#   bash scripts/gpu-run.sh --pack           # ../shared/gpu/pack.sh, npx tsc, the runtime node_modules
#                                            # into .gpu/node_modules.tar.xz; prints the carry list and its size
#   bash scripts/gpu-run.sh --pack --check   # the same, then a dry run of the device command on the CPU
#                                            # in a scratch copy holding only what travels
# On the GPU machine (the device command; carry [".gpu", "dist"]):
#   source .gpu/setup.sh && bash scripts/gpu-run.sh [gpu-step options, e.g. --variants bf16+cl+bench]
#     builds the addon against $TORCH_DIR, runs `kshare selfcheck --device cuda`, the CUDA tests
#     (dist/test/cuda.test.js), dist/bench/gpu-step.js and prints a summary; build.log,
#     selfcheck.log, cuda-tests.log, gpu-step.log and gpu-step.json go to $OUT (bench/results
#     without $OUT).
# Environment: KSHARE_DEVICE (cuda; cpu for a dry run), KSHARE_SKIP_BUILD=1 (keep native/build/kshare.node),
#     KSHARE_SKIP_TESTS=1 (bench only), KSHARE_SKIP_BENCH=1 (build, selfcheck and tests only).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Runtime packages: the closure of package.json's dependencies without onnxruntime-* (only
# `kshare predict` loads it, lazily) and without type-only packages.
runtime_packages() {
  node --input-type=module -e '
    import fs from "node:fs"; import path from "node:path";
    const root = process.cwd();
    const pkg = JSON.parse(fs.readFileSync("package.json", "utf8"));
    const seeds = Object.keys(pkg.dependencies).filter((d) => !d.startsWith("onnxruntime"));
    const typeOnly = (n) => n.startsWith("@types/") || n.endsWith("-typings") || n === "undici-types";
    const seen = new Set();
    const find = (name, from) => {
      for (let dir = from; ; dir = path.dirname(dir)) {
        const p = path.join(dir, "node_modules", name);
        if (fs.existsSync(path.join(p, "package.json"))) return p;
        if (dir === root || dir === path.dirname(dir)) return null;
      }
    };
    const visit = (name, from) => {
      if (typeOnly(name)) return;
      const p = find(name, from);
      if (!p) { if (from === root) throw new Error(`dependency ${name} is not installed (npm ci)`); return; }
      if (seen.has(p)) return;
      seen.add(p);
      const pj = JSON.parse(fs.readFileSync(path.join(p, "package.json"), "utf8"));
      for (const d of Object.keys({ ...pj.dependencies, ...pj.optionalDependencies })) visit(d, p);
    };
    for (const s of seeds) visit(s, root);
    // top-level folders only: a package nested under another travels with its parent
    const top = [...seen].map((p) => path.relative(root, p)).filter((p) => p.split("node_modules").length === 2);
    console.log(top.sort().join("\n"));'
}

pack() {
  local shared=${SHARED_DIR:-$root/../shared}
  bash "$shared/gpu/pack.sh"
  npx tsc -p .
  # gloo headers for the addon's c10d (a pip PyTorch has none): Debian's libgloo-dev, ~350 KB
  rm -rf .gpu/gloo-include
  if [ -f /usr/include/gloo/config.h ]; then mkdir -p .gpu/gloo-include && cp -r /usr/include/gloo .gpu/gloo-include/; fi
  runtime_packages > .gpu/node_modules.txt
  tar cf - $(cat .gpu/node_modules.txt) | xz -T2 -6 > .gpu/node_modules.tar.xz.tmp
  mv .gpu/node_modules.tar.xz.tmp .gpu/node_modules.tar.xz
  echo "gpu-run: $(wc -l < .gpu/node_modules.txt) packages ($(du -sch $(cat .gpu/node_modules.txt) | tail -1 | cut -f1) unpacked) in .gpu/node_modules.tar.xz ($(du -h .gpu/node_modules.tar.xz | cut -f1))"
  local carried tracked total
  carried=$(du -cb .gpu dist | tail -1 | cut -f1)
  tracked=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
  total=$((carried + tracked))
  printf 'gpu-run: .gpu %s + dist %s + working tree %s = %.1f MiB of 64 MiB\n' \
    "$(du -sh .gpu | cut -f1)" "$(du -sh dist | cut -f1)" "$(numfmt --to=iec "$tracked")" "$(awk -v t="$total" 'BEGIN {print t / 1048576}')"
  if [ "$total" -ge $((64 * 1048576)) ]; then echo "gpu-run: over the 64 MiB the device tool carries" >&2; exit 1; fi
  echo 'gpu-run: device command: source .gpu/setup.sh && bash scripts/gpu-run.sh    carry: [".gpu", "dist"]'
}

# A dry run of the device command on this machine's CPU, in a scratch copy that holds only what
# travels (tracked and untracked-unignored files, .gpu, dist): no node_modules, no native/build.
check() {
  local scratch
  scratch=$(mktemp -d /tmp/kshare-gpu-check.XXXXXX)
  git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$scratch" 2>/dev/null || true
  cp -r .gpu dist "$scratch/"
  echo "gpu-run: dry run in $scratch (KSHARE_DEVICE=cpu; Debian libtorch)"
  (cd "$scratch" && OUT="$scratch/out" KSHARE_DEVICE=cpu bash scripts/gpu-run.sh \
    --batch 2 --warmup 1 --steps 1 --models convmixer_64_4_k5_p2_shared,se_resnet_d_2 --variants bf16)
  rm -rf "$scratch"
}

case "${1:-}" in
  --pack) pack; [ "${2:-}" = "--check" ] && check; exit 0 ;;
  --check) check; exit 0 ;;
esac

device=${KSHARE_DEVICE:-cuda}
out=${OUT:-$root/bench/results}
mkdir -p "$out"
command -v node >/dev/null || { echo "gpu-run: no node on PATH: start the command with 'source .gpu/setup.sh'" >&2; exit 1; }
[ -f dist/bench/gpu-step.js ] || { echo "gpu-run: dist/bench/gpu-step.js missing: run 'bash scripts/gpu-run.sh --pack' here and carry dist" >&2; exit 1; }

# node_modules: unpack the runtime packages that travelled in .gpu (never over a full local install)
stamp=node_modules/.kshare-gpu-run
if [ -f .gpu/node_modules.tar.xz ] && { [ ! -d node_modules/commander ] || { [ -f $stamp ] && [ .gpu/node_modules.tar.xz -nt $stamp ]; }; }; then
  tar xJf .gpu/node_modules.tar.xz
  touch $stamp
  echo "gpu-run: unpacked $(wc -l < .gpu/node_modules.txt) runtime packages into node_modules"
fi
[ -d node_modules/commander ] || { echo "gpu-run: node_modules missing: run 'bash scripts/gpu-run.sh --pack' here and carry .gpu" >&2; exit 1; }

if [ "$device" != cpu ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  [ -n "${TORCH_DIR:-}" ] || { echo "gpu-run: TORCH_DIR unset: start the command with 'source .gpu/setup.sh'" >&2; exit 1; }
fi

t0=$SECONDS
# A pip PyTorch ships no gloo headers: Debian's travel in .gpu/gloo-include (--pack) so the
# addon gets c10d there too. Untried with a CUDA libtorch before 2026-12-04's session, so a
# failed build is retried without NCCL, then without c10d, rather than losing the device time
# (each failed attempt's log is kept as build-failed-N.log).
if [ -z "${KSHARE_GLOO_INCLUDE:-}" ] && [ -f .gpu/gloo-include/gloo/config.h ]; then
  export KSHARE_GLOO_INCLUDE=$root/.gpu/gloo-include
fi
if [ "${KSHARE_SKIP_BUILD:-0}" != 1 ]; then
  echo "== build (native/build.sh) =="
  attempt=0 built=0
  for settings in "" "KSHARE_BUILD_NCCL=0" "KSHARE_BUILD_NCCL=0 KSHARE_GLOO_INCLUDE=/nonexistent"; do
    attempt=$((attempt + 1))
    # shellcheck disable=SC2086 # settings is a list of VAR=value words
    if env $settings bash native/build.sh > "$out/build.log" 2>&1; then built=1; break; fi
    mv "$out/build.log" "$out/build-failed-$attempt.log"
    echo "gpu-run: build attempt $attempt (${settings:-all found parts}) failed (build-failed-$attempt.log)"
    [ -n "${KSHARE_GLOO_INCLUDE:-}" ] || break  # without gloo headers the other attempts build the same
  done
  [ "$built" = 1 ] || { cat "$out/build-failed-$attempt.log"; exit 1; }
  grep '^build.sh:' "$out/build.log" || true
  echo "gpu-run: build took $((SECONDS - t0)) s"
fi

echo "== selfcheck --device $device =="
node dist/src/cli/main.js selfcheck --device "$device" 2>&1 | tee "$out/selfcheck.log"

if [ "${KSHARE_SKIP_TESTS:-0}" != 1 ]; then
  # The CUDA tests (test/cuda.test.ts; they skip, saying why, without a CUDA device). A failure
  # is reported and the bench still runs: the device time is spent either way.
  # With c10d built in, the distributed tests too (Gloo over CPU tensors, ~25 s).
  tests=(dist/test/cuda.test.js)
  node -e 'process.exit(require(process.argv[1]).distAvailable().gloo ? 0 : 1)' "$root/native/build/kshare.node" && tests+=(dist/test/distributed.test.js dist/test/distributed-train.test.js)
  echo "== tests (node --test ${tests[*]}) =="
  node --test --test-concurrency=1 --test-reporter=spec "${tests[@]}" 2>&1 | tee "$out/cuda-tests.log" || echo "gpu-run: tests FAILED (see cuda-tests.log)"
fi

[ "${KSHARE_SKIP_BENCH:-0}" = 1 ] && { echo "gpu-run: KSHARE_SKIP_BENCH=1: no bench; total $((SECONDS - t0)) s"; exit 0; }
echo "== bench (dist/bench/gpu-step.js --device $device $*) =="
rc=0
node dist/bench/gpu-step.js --device "$device" --out "$out/gpu-step.json" "$@" 2>&1 | tee "$out/gpu-step.log" || rc=$?

echo "== summary =="
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`${r.machine}; torch ${r.torch} (kshare libtorch ${r.kshareLibtorch}); batch ${r.batch}, ${r.warmup} warm-up + ${r.steps} timed steps${r.incomplete ? `; INCOMPLETE: ${r.incomplete}` : ""}`);
  const w = Math.max(...r.rows.map((x) => x.name.length));
  console.log(`${"row".padEnd(w)}  kshare ms  torch ms  ratio  block ratio`);
  for (const x of r.rows) {
    if (x.error) { console.log(`${x.name.padEnd(w)}  FAILED: ${x.error.split("\n")[0]}`); continue; }
    console.log(`${x.name.padEnd(w)}  ${x.kshareMs.toFixed(2).padStart(9)}  ${x.referenceMs.toFixed(2).padStart(8)}  ${x.ratio.toFixed(3)}  ${x.blockRatio.toFixed(3).padStart(11)}`);
  }' "$out/gpu-step.json" || true
echo "gpu-run: total $((SECONDS - t0)) s; results in $out"
exit $rc
