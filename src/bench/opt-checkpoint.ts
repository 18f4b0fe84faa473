/**
 * A random-weight OPT checkpoint (Hugging Face layout: config.json + one fp16 model.safetensors), written tensor
 * by tensor so a 2.6 GB file never sits in memory. Default: OPT-1.3B widths (src/bench/common.ts, the widths
 * bench:decode uses). Weight scales keep a pre-LN residual stream bounded (fc1 1/sqrt(d), fc2 1/sqrt(ffn), others 0.02).
 *   node dist/bench/opt-checkpoint.js DIR [LAYERS] [--hidden D --ffn F --heads H --vocab V] [--ids TOKENS]
 * (e.g. `/tmp/optmid 4 --hidden 1024 --ffn 4096 --heads 16 --vocab 4096 --ids 12288`: the mid-size model of
 * bench:train's multi-layer numbers in the README). `--ids`: also DIR/ids.jsonl, random token ids in sequences of 256
 * (pretokenized data for collect-activations).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ModelConfig } from '../model/config.js';
import { expectedWeights } from '../model/weight-map.js';
import { f32ToF16 } from '../util/half.js';
import { opt13bConfig } from './common.js';

export function hfConfig(c: ModelConfig): Record<string, unknown> {
  return {
    _remove_final_layer_norm: false, activation_function: 'relu', architectures: ['OPTForCausalLM'], attention_dropout: 0, bos_token_id: c.bosTokenId,
    do_layer_norm_before: c.preNorm, dropout: 0, dtype: 'float16', enable_bias: c.mlpBias, eos_token_id: c.eosTokenId, ffn_dim: c.ffn, hidden_size: c.hidden,
    init_std: 0.02, layer_norm_elementwise_affine: true, layerdrop: 0, max_position_embeddings: c.maxPositions, model_type: 'opt',
    num_attention_heads: c.heads, num_hidden_layers: c.layers, pad_token_id: c.padTokenId, tie_word_embeddings: c.tiedLmHead, use_cache: true,
    vocab_size: c.vocabSize, word_embed_proj_dim: c.hidden,
  };
}

/** `seqs` documents of `seqLen` random token ids (4 .. vocab - 1, a fixed LCG stream) as pretokenized JSONL. */
export function writeRandomIds(file: string, seqs: number, seqLen: number, vocab: number): void {
  let s = 12345;
  const rnd = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s; };
  fs.writeFileSync(file, Array.from({ length: seqs }, () => JSON.stringify({ ids: Array.from({ length: seqLen }, () => 4 + (rnd() % (vocab - 4))) })).join('\n') + '\n');
}

/** Write the checkpoint (`hf`: its config.json; another family's, e.g. src/bench/llama-checkpoint.ts); returns the bytes of model.safetensors. */
export function writeRandomOpt(dir: string, c: ModelConfig = opt13bConfig(), seed = 1, hf: Record<string, unknown> = hfConfig(c)): number {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(hf, null, 2) + '\n');
  const specs = expectedWeights(c);
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', note: 'random weights (dejavu-ts bench)' } };
  let off = 0;
  for (const s of specs) { const n = s.shape.reduce((a, b) => a * b, 1) * 2; header[s.key] = { dtype: 'F16', shape: s.shape, data_offsets: [off, off + n] }; off += n; }
  let h = JSON.stringify(header);
  h += ' '.repeat((8 - (Buffer.byteLength(h) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(h)));
  const file = path.join(dir, 'model.safetensors');
  const fd = fs.openSync(file, 'w');
  let state = seed >>> 0;
  try {
    fs.writeSync(fd, len);
    fs.writeSync(fd, Buffer.from(h, 'utf8'));
    const CHUNK = 1 << 22;
    const buf = new Uint16Array(CHUNK);
    for (const s of specs) {
      const n = s.shape.reduce((a, b) => a * b, 1);
      const name = s.name!.replace(/^layers\.\d+\./, '');
      const std = name === 'up' ? 1 / Math.sqrt(c.hidden) : name === 'down' ? 1 / Math.sqrt(c.ffn) : 0.02;
      const constant = /^(ln\d\.g|finalNorm\.g)$/.test(name) ? 1 : /^(ln\d\.b|finalNorm\.b|b\w?|\w+Bias)$/.test(name) ? 0 : null;
      // 4096 values of a uniform distribution with this std, picked by a xorshift stream
      const table = Uint16Array.from({ length: 4096 }, (_, i) => f32ToF16(constant ?? ((i + 0.5) / 4096 * 2 - 1) * std * Math.sqrt(3)));
      for (let o = 0; o < n; o += CHUNK) {
        const m = Math.min(CHUNK, n - o);
        for (let i = 0; i < m; i++) { state ^= state << 13; state ^= state >>> 17; state ^= state << 5; buf[i] = table[(state >>> 0) & 4095]!; }
        fs.writeSync(fd, new Uint8Array(buf.buffer, 0, m * 2));
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return fs.statSync(file).size;
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const args = process.argv.slice(2);
  const flag = (name: string) => {
    const i = args.indexOf(`--${name}`);
    if (i < 0) return undefined;
    const v = Number(args[i + 1]);
    if (!Number.isInteger(v) || v <= 0) { console.error(`error: --${name} needs a positive integer (got ${args[i + 1] ?? 'nothing'})`); process.exit(2); }
    return v;
  };
  const [dir, layers] = args.filter((a, i) => !a.startsWith('--') && !args[i - 1]?.startsWith('--'));
  if (!dir) { console.error('usage: node dist/bench/opt-checkpoint.js DIR [LAYERS] [--hidden D --ffn F --heads H --vocab V] [--ids TOKENS]'); process.exit(2); }
  const over: Partial<ModelConfig> = {};
  if (layers) {
    over.layers = Number(layers);
    if (!Number.isInteger(over.layers) || over.layers <= 0) { console.error(`error: LAYERS needs a positive integer (got ${layers})`); process.exit(2); }
  }
  const hidden = flag('hidden'), ffn = flag('ffn'), heads = flag('heads'), vocab = flag('vocab');
  if (hidden) over.hidden = hidden;
  if (ffn) over.ffn = ffn;
  if (heads) {
    over.heads = heads; over.kvHeads = heads; over.headDim = (hidden ?? opt13bConfig().hidden) / heads;
    if (!Number.isInteger(over.headDim)) { console.error(`error: --heads ${heads} does not divide the width ${hidden ?? opt13bConfig().hidden}`); process.exit(2); }
  }
  if (vocab) over.vocabSize = vocab;
  const t = Date.now();
  const bytes = writeRandomOpt(dir, opt13bConfig(over));
  const ids = flag('ids');
  if (ids) writeRandomIds(path.join(dir, 'ids.jsonl'), Math.ceil(ids / 256), 256, opt13bConfig(over).vocabSize);
  console.log(`${dir}: random OPT checkpoint, ${(bytes / 1e9).toFixed(2)} GB fp16, ${((Date.now() - t) / 1000).toFixed(0)} s`);
}
