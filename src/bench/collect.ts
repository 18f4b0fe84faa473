/**
 * npm run bench:collect [-- --model DIR] [--tokens N] [--workers 1,2] [--batch-size B] [--seq-len T]
 * collect-activations throughput with 1 and N worker threads, each run in its own process (peak RSS is per run),
 * against the machine measured in the same run: forward GFLOP/s over (workers x one thread's matmul GFLOP/s at the
 * collection's shapes). Default: the OPT fixture on the calibration text. A checkpoint without a tokenizer (e.g.
 * one from `node dist/bench/opt-checkpoint.js DIR`, random OPT-1.3B widths) reads random token ids.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureBackend } from '../backend.js';
import { collectSchema } from '../config/schemas.js';
import { runCollect } from '../stages/collect.js';
import { denseLayerFlopsPerToken, normalizeConfig } from '../model/config.js';
import { matmulRate, table } from './common.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => { const i = args.indexOf(`--${name}`); return i >= 0 ? args[i + 1]! : dflt; };
const model = opt('model', args[0] && !args[0].startsWith('--') ? args[0] : 'checkpoints/opt-fixture');
const isFixture = fs.existsSync(path.join(model, 'tokenizer.json'));
const tokens = Number(opt('tokens', isFixture ? '16384' : '4096'));
const seqLen = Number(opt('seq-len', '256'));
const batchSize = Number(opt('batch-size', isFixture ? '8' : '2'));
const workerCounts = opt('workers', '1,2').split(',').map(Number);

interface ChildResult { summary: { tokens: number; tokensPerSecond: number; seconds: number; workers: number; timing: { forwardMs: number; captureMs: number; writeMs: number } }; maxRssBytes: number; loadSeconds: number }

if (args.includes('--child')) {
  // one collection in this process; prints its summary and peak RSS as JSON
  const t0 = Date.now();
  await ensureBackend((process.env.DEJAVU_BACKEND as 'wasm' | undefined) ?? 'auto');
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-collect-'));
  try {
    const cfg = collectSchema.parse({ model, data: opt('data', ''), out, maxTokens: tokens, seqLen, batchSize, workers: Number(opt('child-workers', '1')) });
    const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
    const res = (await runCollect(cfg, quiet)).json as { summary: ChildResult['summary'] };
    const s = res.summary;
    const r: ChildResult = { summary: s, maxRssBytes: process.resourceUsage().maxRSS * 1024, loadSeconds: (Date.now() - t0) / 1000 - s.tokens / s.tokensPerSecond };
    console.log(JSON.stringify(r));
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
} else {
  const b = await ensureBackend((process.env.DEJAVU_BACKEND as 'wasm' | undefined) ?? 'auto');
  const c = normalizeConfig(JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')), model);
  let data = 'data/calibration.jsonl';
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-collect-data-'));
  if (!isFixture) {
    // random token ids (the checkpoint has no tokenizer): one document per sequence
    data = path.join(tmp, 'ids.jsonl');
    let s = 12345;
    const rnd = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s; };
    const docs = Array.from({ length: Math.ceil(tokens / seqLen) + 1 }, () => JSON.stringify({ ids: Array.from({ length: seqLen }, () => 4 + (rnd() % (c.vocabSize - 4))) }));
    fs.writeFileSync(data, docs.join('\n') + '\n');
  }
  const f = denseLayerFlopsPerToken(c);
  const avgCtx = (seqLen + 1) / 2;
  const attnCtxFlops = 2 * 2 * avgCtx * c.heads * c.headDim; // QK^T and PV per token per layer
  const flopsPerToken = c.layers * (f.attn + f.mlp + attnCtxFlops);
  // one thread's matmul rate at the collection's MLP shape, measured now, on this machine
  const mm = matmulRate(batchSize * seqLen, c.hidden, c.ffn);
  const self = fileURLToPath(import.meta.url);
  const rows: (string | number)[][] = [];
  let base = 0;
  for (const w of workerCounts) {
    const r = spawnSync(process.execPath, [self, '--child', '--model', model, '--data', data, '--tokens', String(tokens), '--seq-len', String(seqLen), '--batch-size', String(batchSize), '--child-workers', String(w)],
      { encoding: 'utf8', maxBuffer: 1 << 26, stdio: ['ignore', 'pipe', 'inherit'] });
    if (r.status !== 0) { console.error(`run with ${w} worker(s) failed (exit ${r.status})`); process.exit(1); }
    const res = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as ChildResult;
    const s = res.summary;
    base ||= s.tokensPerSecond;
    const gflops = (flopsPerToken * s.tokensPerSecond) / 1e9;
    rows.push([w, s.tokens, s.tokensPerSecond.toFixed(1), (s.tokensPerSecond / base).toFixed(2) + 'x', gflops.toFixed(2), (w * mm).toFixed(2), (gflops / (w * mm)).toFixed(2),
      (res.maxRssBytes / 2 ** 30).toFixed(2), res.loadSeconds.toFixed(0)]);
  }
  fs.rmSync(tmp, { recursive: true, force: true });
  console.log(`bench:collect on ${model} (${c.layers} layers, d ${c.hidden}, ffn ${c.ffn}, vocab ${c.vocabSize}), backend ${b.name}, seq ${seqLen}, batch ${batchSize}, ${os.availableParallelism()} cores, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}\n`);
  console.log(`forward FLOPs/token (matmuls): ${(flopsPerToken / 1e6).toFixed(1)} M; one thread's matmul rate [${batchSize * seqLen}, ${c.hidden}] x [${c.hidden}, ${c.ffn}]: ${mm.toFixed(2)} GFLOP/s\n`);
  console.log(table(['workers', 'tokens', 'tokens/s', 'vs 1 worker', 'forward GFLOP/s (end to end)', 'ceiling: workers x matmul GFLOP/s', 'ratio to ceiling', 'peak RSS GiB', 'start-up s (weights, workers)'], rows));
}
