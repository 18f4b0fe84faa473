/**
 * Issue #25 `dejavu estimate`: the numbers follow from the model's sizes (doubling the layers doubles the activation
 * disk; the collect FLOPs are the forward FLOPs per token times the tokens), the activation bytes per token are the
 * ones collect really writes, and the command measures a rate per backend and prints the estimate.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { estimateSchema } from '../src/config/schemas.js';
import { normalizeConfig } from '../src/model/config.js';
import { PROBE_MAX_ELEMENTS, probeShape, activationBytesPerTokenLayer, estimateCosts, forwardFlopsPerToken } from '../src/stages/estimate.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

const TMP = tmpDir('dejavu-estimate-');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');
const REPO = path.join(import.meta.dirname, '..');
const raw = JSON.parse(fs.readFileSync(path.join(MODEL, 'config.json'), 'utf8'));
const mc = normalizeConfig(raw, 'opt-tiny-ref');
const cfg = estimateSchema.parse({ model: MODEL });
const tokens = { calibration: 10_000, heldout: 1_000, how: 'given' };

describe('estimateCosts', () => {
  it('doubling the layers doubles the activation disk; the collect FLOPs are tokens x forward FLOPs', () => {
    const mc2 = normalizeConfig({ ...raw, num_hidden_layers: 2 * raw.num_hidden_layers }, 'x');
    const a = estimateCosts(mc, { params: 1e5, bytes: 4e5 }, cfg, tokens), b = estimateCosts(mc2, { params: 1e5, bytes: 4e5 }, cfg, tokens);
    expect(b.disk.calibration).toBe(2 * a.disk.calibration);
    expect(b.disk.heldout).toBe(2 * a.disk.heldout);
    expect(a.disk.calibration).toBe(10 * a.disk.heldout);
    // collect computes no logits: its FLOPs are the layers' alone, twice for twice the layers
    expect(a.gflop['collect (calibration)']).toBeCloseTo(forwardFlopsPerToken(mc, false) * 10_000 / 1e9, 9);
    expect(b.gflop['collect (calibration)']).toBeCloseTo(2 * a.gflop['collect (calibration)']!, 9);
    expect(forwardFlopsPerToken(mc) - forwardFlopsPerToken(mc, false)).toBe(2 * mc.hidden * mc.vocabSize);
    expect(a.memory.weightsFloat32).toBe(4e5);
    // float32 activations store the two hidden states at twice the bytes
    const f32 = estimateCosts(mc, { params: 1e5, bytes: 4e5 }, estimateSchema.parse({ model: MODEL, collect: { dtype: 'float32' } }), tokens);
    expect(f32.disk.calibration - a.disk.calibration).toBe(10_000 * mc.layers * 2 * mc.hidden * 2);
  });

  it('the bytes per token and layer are what collect-activations writes (within Arrow framing)', async () => {
    const data = path.join(TMP, 'd.jsonl'), out = path.join(TMP, 'acts');
    fs.writeFileSync(data, fs.readFileSync(path.join(REPO, 'data', 'calibration.jsonl'), 'utf8').split('\n').slice(0, 10).join('\n') + '\n');
    const r = await cli('collect-activations', '--model', MODEL, '--data', data, '--out', out, '--seq-len', '64', '--max-tokens', '2048', '--workers', '1', '--backend', 'wasm', '--quiet');
    expect(r.code, r.err).toBe(0);
    let shardBytes = 0;
    for (const l of fs.readdirSync(out).filter((f) => f.startsWith('layer-')))
      for (const f of fs.readdirSync(path.join(out, l))) shardBytes += fs.statSync(path.join(out, l, f)).size;
    const want = activationBytesPerTokenLayer(mc, 'float16', false) * mc.layers * 2048;
    expect(shardBytes / want).toBeGreaterThan(1);
    expect(shardBytes / want).toBeLessThan(1.1);
  });
});

describe('dejavu estimate', () => {
  it('prints disk, memory and time per stage at a measured rate, from the data file\'s size and measured bytes per token', async () => {
    const data = path.join(REPO, 'data', 'calibration.jsonl');
    const r = await cli('estimate', '--model', MODEL, '--data', data, '--backend', 'wasm', '--json');
    expect(r.code, r.err).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.rates).toHaveLength(1);
    expect(j.rates[0].backend).toBe('wasm');
    expect(j.rates[0].matmulGflops).toBeGreaterThan(0.01);
    const bpt = Number(/([\d.]+) bytes per token, measured/.exec(j.estimate.tokens.how)![1]);
    expect(bpt).toBeGreaterThan(2);
    expect(bpt).toBeLessThan(6);
    const size = fs.statSync(data).size;
    expect(j.estimate.tokens.calibration).toBeCloseTo(0.9 * size / bpt, -3);
    expect(j.estimate.disk.calibration).toBe(j.estimate.tokens.calibration * activationBytesPerTokenLayer(mc, 'float16', false) * mc.layers);
    const text = await cli('estimate', '--model', MODEL, '--backend', 'wasm');
    expect(text.code, text.err).toBe(0);
    expect(text.out).toMatch(/^estimate: 2 layers, d 64, ffn 256/);
    expect(text.out).toContain('tokens: 1,000,000 calibration, 100,000 held-out (no --data');
    expect(text.out).toMatch(/time on wasm \(one-thread matmul [\d.]+ GFLOP\/s measured at this model's MLP shape, x \d worker\(s\) x 0\.8\): /);
    expect(text.out).toMatch(/collect \(calibration\) [\d.]+ \w+, collect \(held-out\) [\d.]+ \w+, train-predictors [\d.]+ \w+, evaluate-recall [\d.]+ \w+, plan [\d.]+/);
  });

  it('a folder with config.json alone: parameters from the sizes (within 3% of the real tensors), and twice the layers twice the disk', async () => {
    const one = path.join(TMP, 'cfg-only'), two = path.join(TMP, 'cfg-only-x2');
    fs.mkdirSync(one); fs.mkdirSync(two);
    fs.copyFileSync(path.join(MODEL, 'config.json'), path.join(one, 'config.json'));
    fs.writeFileSync(path.join(two, 'config.json'), JSON.stringify({ ...raw, num_hidden_layers: 2 * raw.num_hidden_layers }));
    const real = JSON.parse((await cli('estimate', '--model', MODEL, '--backend', 'wasm', '--json')).out).estimate;
    const r1 = await cli('estimate', '--model', one, '--backend', 'wasm', '--json'), r2 = await cli('estimate', '--model', two, '--backend', 'wasm', '--json');
    expect(r1.code, r1.err).toBe(0);
    const a = JSON.parse(r1.out).estimate, b = JSON.parse(r2.out).estimate;
    expect(a.sizesFrom).toMatch(/^config\.json only/);
    expect(Math.abs(a.model.params / real.model.params - 1)).toBeLessThan(0.03);
    expect(a.model.weightBytes).toBe(a.model.params * 4); // the fixture's torch_dtype float32
    expect(b.disk.calibration).toBe(2 * a.disk.calibration);
    expect(a.disk.calibration).toBe(real.disk.calibration);
  });

  it('the rate probe is a block of a large model\'s MLP (#25: a 7B estimate without --backend took minutes): ~0.2 GFLOP a product; a 7B config.json alone is estimated on every backend in seconds', async () => {
    const big = probeShape({ hidden: 4096, ffn: 11008 });
    expect(big.d).toBe(4096);
    expect(big.d * big.cols).toBeLessThanOrEqual(PROBE_MAX_ELEMENTS);
    expect(2 * big.m * big.d * big.cols).toBeGreaterThan(1e8);
    expect(2 * big.m * big.d * big.cols).toBeLessThan(3e8);
    expect(probeShape({ hidden: 256, ffn: 1024 })).toEqual({ m: 256, d: 256, cols: 1024 }); // the fixture's whole MLP, as before
    const dir = path.join(TMP, 'llama-7b-config');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 4096, intermediate_size: 11008,
      num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 32, max_position_embeddings: 4096, rms_norm_eps: 1e-5, vocab_size: 32000,
      hidden_act: 'silu', tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2, torch_dtype: 'float16' }));
    const t0 = Date.now();
    const r = await cli('estimate', '--model', dir, '--json');
    expect(r.code, r.err).toBe(0);
    expect(Date.now() - t0).toBeLessThan(60_000);
    const j = JSON.parse(r.out);
    expect(j.estimate.model.params).toBeGreaterThan(6.5e9);
    expect(j.rates.length).toBeGreaterThanOrEqual(1);
    for (const rate of j.rates) expect(rate.matmulGflops).toBeGreaterThan(0.01);
  }, 120_000);
});
