// Decode tokens/s of the CPU decode runtime by row dtype and thread count, on a random Llama at TinyLlama-1.1B widths
// (d 2048, ffn 5632, 32 heads / 4 KV heads, vocab 32000, 8 layers, float16 safetensors; written on first use).
// Dense, and 10% MLP neurons / 50% heads (a fixed random selection per layer). Alternating rounds, median of 3.
//   npx tsc -p tsconfig.json && node scripts/decode-speed.mjs [DIR] [--steps N] [--rounds R] [--only f16x2,...]
// Writes docs/results/decode-runtime.json (writeBenchResult: load average recorded).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureBackend } from '../dist/backend.js';
import { loadModel } from '../dist/model/model.js';
import { normalizeConfig } from '../dist/model/config.js';
import { writeRandomOpt } from '../dist/bench/opt-checkpoint.js';
import { DecodeSession, denseModes } from '../dist/runtime/decoder.js';
import { writeBenchResult } from '../dist/bench/common.js';

const args = process.argv.slice(2);
const opt = (n, d) => { const i = args.indexOf(`--${n}`); return i < 0 ? d : args[i + 1]; };
const dir = args.find((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--')) ?? path.join(os.tmpdir(), 'dejavu-tinyllama8');
const steps = Number(opt('steps', 48)), rounds = Number(opt('rounds', 3)), layers = Number(opt('layers', 8));
const hf = {
  architectures: ['LlamaForCausalLM'], attention_bias: false, bos_token_id: 1, eos_token_id: 2, hidden_act: 'silu', hidden_size: 2048,
  intermediate_size: 5632, max_position_embeddings: 2048, mlp_bias: false, model_type: 'llama', num_attention_heads: 32, num_hidden_layers: layers,
  num_key_value_heads: 4, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false, torch_dtype: 'float16', vocab_size: 32000,
};
if (!fs.existsSync(path.join(dir, 'model.safetensors'))) {
  const t = Date.now();
  writeRandomOpt(dir, normalizeConfig(hf, 'TinyLlama widths'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(hf, null, 2) + '\n'); // the writer's tensors follow the config it is given
  console.log(`${dir}: written in ${((Date.now() - t) / 1000).toFixed(0)} s`);
}
await ensureBackend('wasm');

const runs = [
  ['f32x1', 'float32', 1], ['f32x2', 'float32', 2], ['f16x1', 'float16', 1], ['f16x2', 'float16', 2], ['q8x1', 'q8_0', 1], ['q8x2', 'q8_0', 2], ['autoxauto', 'auto', 'auto'],
].filter(([n]) => !opt('only', '') || opt('only', '').split(',').includes(n));
let s = 99;
const rnd = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
const pickK = (n, k) => { const a = Int32Array.from({ length: n }, (_, i) => i); for (let i = 0; i < k; i++) { const j = i + Math.floor(rnd() * (n - i)); [a[i], a[j]] = [a[j], a[i]]; } return a.slice(0, k).sort(); };

const rows = [];
for (const [name, dtype, threads] of runs) {
  const rss0 = process.memoryUsage().rss, t0 = performance.now();
  const model = loadModel(dir, { decode: { dtype, threads } });
  const loadS = (performance.now() - t0) / 1000, rss = process.memoryUsage().rss;
  const c = model.config;
  const sparse = {
    mlp: Array.from({ length: c.layers }, () => { const ids = pickK(c.ffn, Math.round(0.1 * c.ffn)); return { mode: 'select', pick: () => ids }; }),
    heads: Array.from({ length: c.layers }, () => { const ids = pickK(c.heads, c.heads / 2); return { mode: 'select', pick: () => ids }; }),
  };
  const sets = [denseModes(c.layers), sparse];
  const sessions = sets.map((m) => { const x = new DecodeSession(model, m, 1); for (let t = 0; t < 16; t++) x.step([(t * 7 + 3) % c.vocabSize]); return x; });
  const times = sets.map(() => []);
  for (let r = 0; r < rounds; r++)
    sessions.forEach((x, i) => {
      const t = performance.now();
      for (let k = 0; k < steps; k++) x.step([(k * 13 + 5) % c.vocabSize]);
      times[i].push((performance.now() - t) / steps);
      x.rewind(steps);
    });
  for (const x of sessions) x.dispose();
  const med = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const [dense, sp] = times.map(med);
  const row = { run: name, dtype: model.decode.dtype, threads: model.decode.threads, denseTokS: +(1000 / dense).toFixed(1), sparseTokS: +(1000 / sp).toFixed(1),
    loadS: +loadS.toFixed(1), rssGiB: +((rss - rss0) / 2 ** 30).toFixed(2), load1: +os.loadavg()[0].toFixed(2) };
  rows.push(row);
  console.log(JSON.stringify(row));
  model.dispose();
}
const file = writeBenchResult({
  name: 'decode-runtime', title: 'CPU decode runtime by row dtype and threads (TinyLlama widths, 8 layers, random float16 weights)',
  command: `npx tsc -p tsconfig.json && node scripts/decode-speed.mjs ${args.join(' ')}`.trim(),
  tables: [{ caption: 'tokens/s (batch 1, 16 cached tokens, median of alternating rounds); sparse = 10% MLP neurons, 50% heads', header: Object.keys(rows[0] ?? {}), rows: rows.map((r) => Object.values(r)) }],
  notes: [`${steps} steps per round, ${rounds} rounds; load1 = 1-minute load average after the run`],
});
console.log(`wrote ${file}`);
