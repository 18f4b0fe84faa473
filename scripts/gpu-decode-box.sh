#!/usr/bin/env bash
# One device call of docs/gpu-decode.md (Reproduce), from the repository root on the GPU box:
#   bash PAYLOAD/gpu-decode-box.sh [all|bench|gen]
# PAYLOAD (this script's folder, carried with the call) holds dist.tar.xz (the built dist/) and opt-fixture/ (a copy
# of checkpoints/opt-fixture) or fixture.tar.xz (the same folder tarred: 1.9 MB less to carry); .gpu-kit is the device kit. all: the reduced main job with plan.runtime=gpu, two runs of
# the bench with its bundle, 5 generate runs; bench: the bench only; gen: the main job and the generates.
# Results (at most 8 files) under $OUT; gen.txt: plan tok/s, dense tok/s, their ratio, MLP density, plan.runtime.
P="$(basename "$(cd "$(dirname "$0")" && pwd)")"
T0=$(date +%s)
. .gpu-kit/setup.sh >/dev/null
export DEJAVU_CACHE_DIR=/tmp/cache VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf dist; tar xJf $P/dist.tar.xz
mkdir -p checkpoints/opt-fixture
if [ -f $P/fixture.tar.xz ]; then tar xJf $P/fixture.tar.xz -C checkpoints; else cp -r $P/opt-fixture/. checkpoints/opt-fixture/; fi
echo "setup $(( $(date +%s) - T0 )) s" > $OUT/log.txt
MODE=${1:-all}
if [ "$MODE" != bench ]; then
node bin/dejavu.js pipeline --config configs/default.yaml --backend wasm --set workdir=/tmp/run \
  --set collect.maxTokens=4096 --set collect.seqLen=128 --set heldoutCollect.maxTokens=1024 --set evaluate.maxTokens=512 \
  --set plan.searchTokens=256 --set plan.verifyTokens=256 --set plan.runtime=gpu > $OUT/pipe.txt 2>&1
echo "pipeline rc $? $(( $(date +%s) - T0 )) s" >> $OUT/log.txt
cp "$(find /tmp/run -name plan.json | head -1)" $OUT/plan.json 2>/dev/null
fi
if [ "$MODE" != gen ]; then
for r in a b; do
  BENCH_BUNDLE=/tmp/run/bundle BENCH_RESULTS_DIR=/tmp/res-$r node dist/bench/decode-gpu.js > $OUT/$r.txt 2>&1
  echo "bench $r rc $? $(( $(date +%s) - T0 )) s" >> $OUT/log.txt
  cp /tmp/res-$r/decode-gpu.json $OUT/$r.json
done
fi
if [ "$MODE" != bench ]; then
for i in 1 2 3 4 5; do
  node bin/dejavu.js generate --backend wasm --model checkpoints/opt-fixture --bundle /tmp/run/bundle \
    --runtime gpu --prompt 'The whale' --max-tokens 200 --json > /tmp/g.json 2>>$OUT/log.txt
  node -e 'const j=JSON.parse(require("fs").readFileSync("/tmp/g.json","utf8"));console.log(j.decodeTokensPerSecond.toFixed(1),j.denseTokensPerSecond.toFixed(1),(j.decodeTokensPerSecond/j.denseTokensPerSecond).toFixed(3),j.mlpDensity.toFixed(3),j.planRuntime)' >> $OUT/gen.txt 2>&1
done
echo "generate done $(( $(date +%s) - T0 )) s" >> $OUT/log.txt
fi
