#!/usr/bin/env bash
# Re-runs the reproductions of the issue-20 reliability sweep (27 problems; ../shared/reliability-2026-12-01.md) against
# a clone ($1, built: npm ci) and judges each: PASS = no file lost, no wrong result reported as good, exit 2 with a
# message for user mistakes. Needs root (one case runs as nobody via setpriv). ~5 min; not part of npm test.
# Usage: bash scripts/reliability-sweep.sh . [S=/tmp/sweep]
set -u
REPO=$(cd "$1" && pwd); cd "$REPO"
S=${S:-/tmp/sweep}; rm -rf $S; mkdir -p $S; export DEJAVU_CACHE_DIR=$S/cache
M=checkpoints/opt-fixture
D="node $REPO/bin/dejavu.js"
pass=0; fail=0; results=()
judge() { if [ "$2" = ok ]; then pass=$((pass+1)); results+=("PASS $1"); else fail=$((fail+1)); results+=("FAIL $1: $3"); fi; echo "[$2] $1 ${3:-}" >&2; }
# rc and stderr of a command: run_ NAME cmd...
run_() { local n=$1; shift; timeout ${T:-300} "$@" > $S/$n.out 2> $S/$n.err; echo $? > $S/$n.rc; }
rc() { cat $S/$1.rc; }
nostack() { ! grep -q '    at \|internal error' $S/$1.err; }
cat > $S/small.yaml <<'YAML'
model: checkpoints/opt-fixture
data: {calibration: data/calibration.jsonl, heldout: data/heldout.jsonl}
collect: {seqLen: 64, maxTokens: 1024, batchSize: 4, workers: 1}
heldoutCollect: {maxTokens: 1024}
train: {workers: 1, heads: {enabled: false}}
evaluate: {seqLen: 64, maxTokens: 512, workers: 1, densitySweep: [0.2]}
plan: {seqLen: 64, searchTokens: 256, verifyTokens: 256, calibrationRows: 1024}
YAML
T=900 run_ pipe0 $D pipeline --config $S/small.yaml --workdir $S/w --quiet
[ "$(rc pipe0)" = 0 ] || { echo "base pipeline failed"; cat $S/pipe0.err; exit 1; }
W=$S/w
MCOL="$D collect-activations --model $M --data data/calibration.jsonl --max-tokens 1024 --seq-len 64 --batch-size 2 --set rowsPerShard=128 --workers 1 --quiet"

# 1 symlinked layer dir
DEJAVU_FAULT_ENOSPC_AFTER=3000000 $MCOL --out $S/acts >/dev/null 2>&1
mkdir -p $S/disk2/sub && echo notes > $S/disk2/notes.txt && echo keep > $S/disk2/sub/keep.txt
mv $S/acts/layer-03/* $S/disk2/ && rmdir $S/acts/layer-03 && ln -s $S/disk2 $S/acts/layer-03
run_ c1 $MCOL --out $S/acts
[ -f $S/disk2/notes.txt ] && [ "$(rc c1)" = 2 ] && nostack c1 && judge 1 ok || judge 1 bad "rc=$(rc c1) notes=$(ls $S/disk2)"
# 2 user file in resumed dataset
DEJAVU_FAULT_ENOSPC_AFTER=3000000 $MCOL --out $S/acts2 >/dev/null 2>&1
echo "where these shards came from" > $S/acts2/layer-03/README.txt
run_ c2 $MCOL --out $S/acts2
[ -f $S/acts2/layer-03/README.txt ] && nostack c2 && judge 2 ok || judge 2 bad "rc=$(rc c2)"
# 3 evaluate replaces folder with user notes; pipeline
cp -r $W/report $S/rep && echo "my conclusions" > $S/rep/NOTES.md
run_ c3a $D evaluate-recall --activations $W/activations-heldout --predictors $W/predictors --model $M --out $S/rep --max-tokens 512 --set seqLen=64 --set 'densitySweep=[0.2]' --workers 1 --quiet
cp -r $W $S/w3; echo mine > $S/w3/report/NOTES.md; echo mine > $S/w3/plan/my-comments.md
run_ c3b $D pipeline --config $S/small.yaml --workdir $S/w3 --set evaluate.maxTokens=256 --set plan.maxPplIncrease=0.02
[ -f $S/rep/NOTES.md ] && [ -f $S/w3/report/NOTES.md ] && [ -f $S/w3/plan/my-comments.md ] && nostack c3a && nostack c3b && judge 3 ok || judge 3 bad "rc=$(rc c3a)/$(rc c3b)"
# 4 edited plan
cp -r $W/plan $S/plan_edit
node -e "const fs=require('fs');const f='$S/plan_edit/plan.json';const p=JSON.parse(fs.readFileSync(f));for(const l of p.plan.layers.slice(1))l.mlp={mode:'predicted',rule:{kind:'threshold',value:1e9},recall:0.99};fs.writeFileSync(f,JSON.stringify(p))"
run_ c4 $D export-bundle --model $M --predictors $W/predictors --report $W/report --plan $S/plan_edit --out $S/b_edit --quiet
cp $S/plan_edit/plan.json $W/plan/plan.json   # the same edit inside the pipeline's own workdir (a copy elsewhere changes its inputs)
run_ c4b $D pipeline --config $S/small.yaml --workdir $W
[ "$(rc c4)" = 2 ] && nostack c4 && ! grep -q 'plan is complete and current' $S/c4b.err && ! grep -q '1000000000\|1e+9' $W/bundle/manifest.json && judge 4 ok || judge 4 bad "export rc=$(rc c4); pipeline: $(grep -c 'complete and current; skipped' $S/c4b.err) skipped lines"
# 5 edited report + pipeline
node -e "const fs=require('fs');const f='$W/report/report.json';const r=JSON.parse(fs.readFileSync(f));const runs=r.perplexity.runs;for(const k in runs)runs[k]=runs.dense;fs.writeFileSync(f,JSON.stringify(r))"
run_ c5 $D pipeline --config $S/small.yaml --workdir $W
! grep -q 'report is complete and current' $S/c5.err && [ "$(rc c5)" = 0 ] && node -e "const r=JSON.parse(require('fs').readFileSync('$W/report/report.json')).perplexity.runs; process.exit(Object.values(r).every((v)=>JSON.stringify(v)===JSON.stringify(r.dense))?1:0)" && judge 5 ok || judge 5 bad "rc=$(rc c5)"
# 6 predictors retrained during plan
cp -r $W/predictors $S/pr
$D plan --model $M --activations $W/activations-heldout --predictors $S/pr --out $S/plan_race --set seqLen=64 --set searchTokens=1024 --set verifyTokens=2048 --set calibrationRows=1024 --quiet > $S/c6p.out 2> $S/c6p.err & P=$!
sleep 3; $D train-predictors --activations $W/activations-calibration --out $S/pr --workers 1 --overwrite --set 'mlp.families=[closed-form]' --set 'mlp.ranks=[0.5]' --set heads.enabled=false --quiet >/dev/null 2>&1; wait $P; echo $? > $S/c6p.rc
run_ c6 $D export-bundle --model $M --predictors $S/pr --plan $S/plan_race --out $S/b_race --quiet
{ [ "$(rc c6p)" = 2 ] || [ "$(rc c6)" = 2 ]; } && judge 6 ok || judge 6 bad "plan rc=$(rc c6p) export rc=$(rc c6)"
# 7 heldout changed after collect
cp data/heldout.jsonl $S/heldout_copy.jsonl
$D collect-activations --model $M --data $S/heldout_copy.jsonl --out $S/h2 --max-tokens 1024 --seq-len 64 --workers 1 --quiet >/dev/null 2>&1
cp data/calibration.jsonl $S/heldout_copy.jsonl
run_ c7 $D evaluate-recall --activations $S/h2 --predictors $W/predictors --model $M --out $S/r_h2 --max-tokens 512 --set seqLen=64 --set 'densitySweep=[0.2]' --workers 1 --quiet
run_ c7b $D plan --model $M --predictors $W/predictors --activations $S/h2 --out $S/p_h2 --set seqLen=64 --set searchTokens=256 --set verifyTokens=256 --set calibrationRows=1024 --quiet
[ "$(rc c7)" = 2 ] && [ "$(rc c7b)" = 2 ] && nostack c7 && judge 7 ok || judge 7 bad "rc=$(rc c7)/$(rc c7b)"
# 8 inconsistent cost cache
mkdir -p $S/cc_b; node -e "const fs=require('fs');const c=JSON.parse(fs.readFileSync('$DEJAVU_CACHE_DIR/kernel-costs.json'));for(const v of Object.values(c.shapes)){v.upMs=v.downMs=1e300};fs.writeFileSync('$S/cc_b/kernel-costs.json',JSON.stringify(c))"
DEJAVU_CACHE_DIR=$S/cc_b run_ c8 $D plan --model $M --predictors $W/predictors --activations $W/activations-heldout --out $S/p_b --set seqLen=64 --set searchTokens=256 --set verifyTokens=256 --set calibrationRows=1024 --quiet
run_ c8b $D export-bundle --model $M --predictors $W/predictors --plan $S/p_b --out $S/b_b --quiet
[ "$(rc c8)" = 0 ] && [ "$(rc c8b)" = 0 ] && ! grep -q -- '-[0-9.e+]* ms/token\|e+30' $S/p_b/report.md && judge 8 ok || judge 8 bad "plan rc=$(rc c8) export rc=$(rc c8b)"
# 9 whitespace jsonl
for i in $(seq 50); do printf '{"text": "   \\n\\t  "}\n'; done > $S/ws.jsonl
run_ c9 $D collect-activations --model $M --data $S/ws.jsonl --out $S/ws_acts --seq-len 64 --workers 1 --max-tokens 512 --quiet
[ "$(rc c9)" = 2 ] && [ ! -e $S/ws_acts ] && judge 9 ok || judge 9 bad "rc=$(rc c9)"
# 10 empty skip table
mkdir -p $S/cc_a; node -e "const fs=require('fs');const c=JSON.parse(fs.readFileSync('$DEJAVU_CACHE_DIR/kernel-costs.json'));for(const v of Object.values(c.shapes)){v.skip=[]};fs.writeFileSync('$S/cc_a/kernel-costs.json',JSON.stringify(c))"
DEJAVU_CACHE_DIR=$S/cc_a run_ c10 $D plan --model $M --predictors $W/predictors --activations $W/activations-heldout --out $S/p_a --set seqLen=64 --set searchTokens=256 --set verifyTokens=256 --quiet
[ "$(rc c10)" = 0 ] && judge 10 ok || judge 10 bad "rc=$(rc c10) $(tail -2 $S/c10.err)"
# 11 ENAMETOOLONG / ELOOP
run_ c11a $D train-predictors --activations $W/activations-calibration --workers 1 --out $S/$(printf 'x%.0s' {1..300}) --quiet
ln -sfn $S/loopB $S/loopA; ln -sfn $S/loopA $S/loopB
run_ c11b $D train-predictors --activations $W/activations-calibration --workers 1 --out $S/loopA/pred --quiet
[ "$(rc c11a)" = 2 ] && [ "$(rc c11b)" = 2 ] && nostack c11a && nostack c11b && judge 11 ok || judge 11 bad "rc=$(rc c11a)/$(rc c11b)"
# 12 big txt
python3 -c "f=open('$S/big.txt','wb'); f.write(b'Hello world. '*10); f.truncate(600*2**20)" 2>/dev/null || { printf 'Hello world. %.0s' {1..10} > $S/big.txt; truncate -s 600M $S/big.txt; }
run_ c12 $D collect-activations --model $M --data $S/big.txt --out $S/big --seq-len 64 --workers 1 --max-tokens 512 --quiet
nostack c12 && judge 12 ok || judge 12 bad "rc=$(rc c12) $(head -c 300 $S/c12.err)"
rm -f $S/big.txt
# 13 layers 1e6
cp -r $M $S/ck_l; node -e "const fs=require('fs');const f='$S/ck_l/config.json';const c=JSON.parse(fs.readFileSync(f));c.num_hidden_layers=1e6;fs.writeFileSync(f,JSON.stringify(c))"
run_ c13 $D collect-activations --model $S/ck_l --data data/calibration.jsonl --out $S/ck_l_out --seq-len 64 --workers 1 --max-tokens 512 --quiet
[ "$(rc c13)" = 2 ] && judge 13 ok || judge 13 bad "rc=$(rc c13)"
# 14 config /dev/zero
run_ c14 $D collect-activations --model $M --data data/calibration.jsonl --out $S/cz --config /dev/zero --quiet
[ "$(rc c14)" = 2 ] && judge 14 ok || judge 14 bad "rc=$(rc c14)"
# 15 workers 1000
$D train-predictors --activations $W/activations-calibration --out $S/wt1000 --workers 1000 --quiet >/dev/null 2>&1 & P=$!
sleep 8; th=$(grep Threads /proc/$P/status 2>/dev/null | awk '{print $2}'); kill -9 $P 2>/dev/null; wait $P 2>/dev/null
[ "${th:-0}" -lt 60 ] && judge 15 ok || judge 15 bad "threads=$th"
# 16 /dev/zero, fifo
run_ c16a $D collect-activations --model $M --data /dev/zero --out $S/z --seq-len 64 --workers 1 --max-tokens 512 --quiet
mkfifo $S/f.jsonl; (cat data/calibration.jsonl > $S/f.jsonl 2>/dev/null &)
run_ c16b $D collect-activations --model $M --data $S/f.jsonl --out $S/f --seq-len 64 --workers 1 --max-tokens 512 --quiet
(cat $S/f.jsonl > /dev/null &) ; sleep 0.2
[ "$(rc c16a)" = 2 ] && [ "$(rc c16b)" = 2 ] && judge 16 ok || judge 16 bad "rc=$(rc c16a)/$(rc c16b)"
# 17 read-only previous output
NB="setpriv --reuid=nobody --regid=nogroup --clear-groups --"; mkdir -p $S/ro && chown nobody:nogroup $S/ro; chmod 755 $S
$NB env DEJAVU_CACHE_DIR=$S/ro/cache $D train-predictors --activations $W/activations-calibration --out $S/ro/pred --workers 1 --quiet >/dev/null 2>&1
chmod -R a-w $S/ro/pred
run_ c17a $NB $D train-predictors --activations $W/activations-calibration --out $S/ro/pred --workers 1 --overwrite --set heads.enabled=false --quiet
run_ c17b $NB $D train-predictors --activations $W/activations-calibration --out $S/ro/pred --workers 1 --overwrite --quiet
[ "$(rc c17a)" = 0 ] && [ "$(rc c17b)" = 0 ] && [ ! -e $S/ro/.pred.dejavu-lock ] && judge 17 ok || judge 17 bad "rc=$(rc c17a)/$(rc c17b) $(ls -a $S/ro)"
chmod -R u+w $S/ro
# 18 ulimit
run_ c18 bash -c "ulimit -n 128; $D collect-activations --model $M --data data/calibration.jsonl --out $S/emf --seq-len 64 --workers 1 --max-tokens 512 --quiet"
{ [ "$(rc c18)" = 0 ] || { [ "$(rc c18)" = 2 ] && nostack c18; }; } && judge 18 ok || judge 18 bad "rc=$(rc c18)"
# 19 latin1
printf 'G\xe9n\n' > $S/l1.txt
run_ c19 $D collect-activations --model $M --data $S/l1.txt --out $S/l1 --seq-len 64 --max-tokens 512 --quiet
grep -q '0xe9 at byte offset 1' $S/c19.err && judge 19 ok || judge 19 bad "$(head -1 $S/c19.err)"
# 20 mixed ids then text
{ echo '{"ids": [2, 100, 200, 300]}'; echo '{"text": "hello world"}'; } > $S/mixed.jsonl
run_ c20 $D collect-activations --model $M --data $S/mixed.jsonl --out $S/mx --seq-len 4 --max-tokens 64 --workers 1 --quiet
[ "$(rc c20)" = 2 ] && grep -q 'hint' $S/c20.err && judge 20 ok || judge 20 bad "$(cat $S/c20.err | head -3)"
# 21 wd 1e8
run_ c21 $D train-predictors --activations $W/activations-calibration --out $S/wd --workers 1 --set optim.weightDecay=1e8 --set 'mlp.families=[dejavu]' --quiet
{ [ "$(rc c21)" = 0 ] || grep -q 'weightDecay' $S/c21.err; } && judge 21 ok || judge 21 bad "$(grep hint $S/c21.err)"
# 22 pipeline all-current summary
run_ c22 $D pipeline --config $S/small.yaml --workdir $W
grep -q 'everything was current' $S/c22.out && judge 22 ok || judge 22 bad "$(grep '^pipeline:' $S/c22.out)"
# 23 format 2 with plan: re-seal manifest and the sealed copy with the project's own functions
cp -r $W/bundle $S/nb2
( cd "$REPO" && node --input-type=module -e "
import fs from 'node:fs'; import {manifestChecksum, sealedPart, SEALED_MANIFEST_KEY} from './dist/bundle/schema.js'; import {canonicalJson} from './dist/util/canonical-json.js';
const f='$S/nb2/manifest.json'; const m=JSON.parse(fs.readFileSync(f)); m.formatVersion=2; delete m.manifestSha256;
const st='$S/nb2/predictors.safetensors'; const buf=fs.readFileSync(st); const n=Number(buf.readBigUInt64LE(0)); const h=JSON.parse(buf.subarray(8,8+n).toString());
h.__metadata__[SEALED_MANIFEST_KEY]=canonicalJson(sealedPart(m)); let hs=JSON.stringify(h); while((hs.length)%8) hs+=' ';
const hb=Buffer.from(hs); const len=Buffer.alloc(8); len.writeBigUInt64LE(BigInt(hb.length)); const out=Buffer.concat([len,hb,buf.subarray(8+n)]); fs.writeFileSync(st,out);
const sum=(await import('./dist/util/fsx.js')).sha256File(st); m.files['predictors.safetensors']={sha256:sum,bytes:out.length};
m.manifestSha256=manifestChecksum(m); fs.writeFileSync(f, JSON.stringify(m, null, 2));" ) 2>$S/c23seal.err
run_ c23 $D verify-bundle --bundle $S/nb2 --model $M
[ -s $S/c23seal.err ] && judge 23 bad "reseal failed: $(head -c 300 $S/c23seal.err)" || { [ "$(rc c23)" != 0 ] && judge 23 ok || judge 23 bad "rc=$(rc c23)"; }
# 24 messages
mkdir -p $S/nb_dir; cp -r $W/bundle/. $S/nb_dir/; rm $S/nb_dir/manifest.json; mkdir $S/nb_dir/manifest.json
run_ c24a $D verify-bundle --bundle $S/nb_dir --model $M
cp -r $M $S/tokdir; rm $S/tokdir/tokenizer.json; mkdir $S/tokdir/tokenizer.json
run_ c24b $D collect-activations --model $S/tokdir --data data/calibration.jsonl --out $S/tk --seq-len 64 --max-tokens 512 --workers 1 --quiet
run_ c24c $D collect-activations --model $M/config.json --data data/calibration.jsonl --out $S/mf --seq-len 64 --max-tokens 512 --workers 1 --quiet
ok24=1; grep -q 'EISDIR' $S/c24a.err $S/c24a.out && ok24=0; grep -q 'tokenizer.json' $S/c24b.err || ok24=0; grep -q 'does not exist' $S/c24c.err && ok24=0
[ $ok24 = 1 ] && judge 24 ok || judge 24 bad "$(head -1 $S/c24a.out $S/c24a.err $S/c24b.err $S/c24c.err | tr '\n' ' ')"
# 25 __proto__
run_ c25 $D collect-activations --model $M --data data/calibration.jsonl --out $S/acts --set __proto__.overwrite=true --max-tokens 512 --seq-len 64 --quiet
[ "$(rc c25)" = 2 ] && grep -q '__proto__' $S/c25.err && judge 25 ok || judge 25 bad "rc=$(rc c25)"
# 26 uppercase ext: the .JSONL / .ndjson datasets must equal the .jsonl one
head -50 data/calibration.jsonl > $S/corpus.jsonl; cp $S/corpus.jsonl $S/corpus.JSONL; cp $S/corpus.jsonl $S/corpus.ndjson
run_ c26 $D collect-activations --model $M --data $S/corpus.jsonl --out $S/lo --seq-len 64 --max-tokens 512 --workers 1 --quiet
run_ c26a $D collect-activations --model $M --data $S/corpus.JSONL --out $S/up --seq-len 64 --max-tokens 512 --workers 1 --quiet
run_ c26b $D collect-activations --model $M --data $S/corpus.ndjson --out $S/nd --seq-len 64 --max-tokens 512 --workers 1 --quiet
ok26=1; for d in up nd; do cmp -s $S/lo/layer-00/shard-00000.arrow $S/$d/layer-00/shard-00000.arrow || ok26=0; done
[ $ok26 = 1 ] && judge 26 ok || judge 26 bad "rc=$(rc c26a)/$(rc c26b) $(head -1 $S/c26a.err)"
# 27 stdin pipe
run_ c27 bash -c "cat data/calibration.jsonl | $D collect-activations --model $M --data /dev/stdin --out $S/pp --seq-len 64 --max-tokens 512 --workers 1 --quiet"
grep -qi 'regular file' $S/c27.err && judge 27 ok || judge 27 bad "$(head -1 $S/c27.err)"

printf '%s\n' "${results[@]}"
echo "sweep: $pass passed, $fail failed"
