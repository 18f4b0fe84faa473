/** npm run bench:collect — collect-activations throughput on the OPT fixture vs the backend's matmul rate. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureBackend } from '../backend.js';
import { collectSchema } from '../config/schemas.js';
import { runCollect } from '../stages/collect.js';
import { denseLayerFlopsPerToken, normalizeConfig } from '../model/config.js';
import { matmulRate, table } from './common.js';

const model = process.argv[2] ?? 'checkpoints/opt-fixture';
const tokens = Number(process.argv[3] ?? 16384);
const b = await ensureBackend((process.env.DEJAVU_BACKEND as 'wasm' | undefined) ?? 'auto');
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-collect-'));
const cfg = collectSchema.parse({ model, data: 'data/calibration.jsonl', out, maxTokens: tokens, seqLen: 256, batchSize: 8 });
const quiet = { log: () => undefined, progress: () => ({ update: () => undefined, stop: () => undefined }) };
const res = (await runCollect(cfg, quiet)).json as { summary: { tokens: number; tokensPerSecond: number; seconds: number; timing: { forwardMs: number; captureMs: number; writeMs: number } } };
const c = normalizeConfig(JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')), model);
const f = denseLayerFlopsPerToken(c);
const avgCtx = (cfg.seqLen + 1) / 2;
const attnCtxFlops = 2 * 2 * avgCtx * c.heads * c.headDim; // QK^T and PV per token per layer
const flopsPerToken = c.layers * (f.attn + f.mlp + attnCtxFlops);
const s = res.summary;
const fwdRate = (flopsPerToken * s.tokens) / (s.timing.forwardMs / 1000) / 1e9;
const mm = matmulRate(cfg.batchSize * cfg.seqLen, c.hidden, c.ffn);
const total = s.timing.forwardMs + s.timing.captureMs + s.timing.writeMs;
console.log(`bench:collect on ${model}, backend ${b.name}, ${s.tokens} tokens (seq ${cfg.seqLen}, batch ${cfg.batchSize})\n`);
console.log(table(['metric', 'value'], [
  ['tokens/s (end to end)', s.tokensPerSecond.toFixed(0)],
  ['forward FLOPs/token (matmuls)', (flopsPerToken / 1e6).toFixed(2) + ' M'],
  ['forward GFLOP/s achieved', fwdRate.toFixed(2)],
  [`backend matmul GFLOP/s ([${cfg.batchSize * cfg.seqLen}, ${c.hidden}] x [${c.hidden}, ${c.ffn}])`, mm.toFixed(2)],
  ['ratio forward / matmul (target >= 0.6)', (fwdRate / mm).toFixed(2)],
  ['time: forward', `${(s.timing.forwardMs / 1000).toFixed(1)} s (${((100 * s.timing.forwardMs) / total).toFixed(0)}%)`],
  ['time: capture/copy (readback, f16 conversion, checks)', `${(s.timing.captureMs / 1000).toFixed(1)} s (${((100 * s.timing.captureMs) / total).toFixed(0)}%)`],
  ['time: Arrow writes', `${(s.timing.writeMs / 1000).toFixed(1)} s (${((100 * s.timing.writeMs) / total).toFixed(0)}%)`],
]));
fs.rmSync(out, { recursive: true, force: true });
