/**
 * Every family of the architecture registry against transformers (test/fixtures/families/<family>-ref: tiny random
 * checkpoints saved by transformers 5.17 with each family's own tensor names, and what the HF model computed):
 * loadModel + forward give the logits, every hidden state and every MLP activation within relative Frobenius 1e-4.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { DecodeSession, denseModes, disposeCache, disposeOutput, ensureBackend, forward, loadModel, newCache, openSafetensors, readTensorF32, writeSafetensors } from '../src/index.js';
import { loadHostWeights } from '../src/model/model.js';
import { f32ToBf16Array, f32ToF16Array } from '../src/util/half.js';
import { sessionFromPrefill } from '../src/runtime/decoder.js';
import { ARCHS, expectedWeights, normalizeConfig } from '../src/arch/registry.js';
import { UserError } from '../src/util/errors.js';
import { cli, FIXTURES, loadReference, relFrob, tmpDir } from './helpers.js';

const ROOT = path.join(FIXTURES, 'families');
const FAMILIES = fs.readdirSync(ROOT).filter((f) => fs.existsSync(path.join(ROOT, f, 'reference.json'))).sort();
const TOL = 1e-4;

beforeAll(async () => { await ensureBackend('wasm'); });

describe('families: forward parity with transformers', () => {
  it('finds the 13 family references', () => { expect(FAMILIES.length).toBe(13); });

  for (const f of FAMILIES) {
    it(`${f}: logits, every hidden state and mlp_act within 1e-4`, () => {
      const dir = path.join(ROOT, f);
      const ref = loadReference(dir);
      const before = tf.memory().numTensors;
      const model = loadModel(dir);
      const L = model.config.layers;
      const out = forward(model, ref.ids, { capture: { xAttn: true, mlpAct: true, finalHidden: true } });
      const errs: Record<string, number> = {};
      try {
        for (const [key, r] of ref.tensors) {
          if (key === 'input_ids') continue;
          let m: RegExpExecArray | null;
          const t = key === 'logits' ? out.logits : (m = /^hidden_states\.(\d+)$/.exec(key)) ? (Number(m[1]) === L ? out.finalHidden : out.captured.xAttn?.[Number(m[1])])
            : (m = /^mlp_act\.(\d+)$/.exec(key)) ? out.captured.mlpAct?.[Number(m[1])] : undefined;
          expect(t, `${f} ${key} produced`).toBeDefined();
          expect(t!.shape, key).toEqual(r.shape);
          errs[key] = relFrob(t!.dataSync(), r.data);
        }
      } finally { disposeOutput(out); model.dispose(); }
      expect(Object.keys(errs).length, 'logits + L + 1 hidden states + L mlp_act').toBe(1 + (L + 1) + L);
      console.log(`parity ${f}: max relative error ${Math.max(...Object.values(errs)).toExponential(2)}`);
      for (const [k, e] of Object.entries(errs)) expect(e, `${f} ${k}: relative error ${e}`).toBeLessThan(TOL);
      expect(tf.memory().numTensors, 'no tensor leaked').toBe(before);
    });
  }
});
describe('families: the decode runtime computes the forward pass', () => {
  for (const f of FAMILIES) {
    it(`${f}: DecodeSession fed the ids one by one gives the forward's logits at every position`, () => {
      const dir = path.join(ROOT, f);
      const ref = loadReference(dir);
      const model = loadModel(dir, { decode: true });
      const V = model.config.vocabSize;
      const ids = ref.ids.map((r) => r.slice(0, 20));
      const out = forward(model, ids);
      const want = out.logits!.dataSync() as Float32Array;
      disposeOutput(out);
      const s = new DecodeSession(model, denseModes(model.config.layers), ids.length);
      try {
        const T = ids[0]!.length;
        const got = new Float32Array(want.length);
        for (let t = 0; t < T; t++) {
          const lg = s.step(ids.map((r) => r[t]!));
          for (let b = 0; b < ids.length; b++) got.set(lg.subarray(b * V, (b + 1) * V), (b * T + t) * V);
        }
        const err = relFrob(got, want);
        expect(err, `${f}: decode vs forward relative error ${err}`).toBeLessThan(TOL);
        // as generate runs it: the first 12 tokens prefilled by the forward pass (its KV cache copied in), then steps
        const cache = newCache(model);
        disposeOutput(forward(model, ids.map((r) => r.slice(0, 12)), { cache }));
        const s2 = sessionFromPrefill(model, denseModes(model.config.layers), cache);
        disposeCache(cache);
        try {
          const got2: number[] = [], want2: number[] = [];
          for (let t = 12; t < T; t++) {
            const lg = s2.step(ids.map((r) => r[t]!));
            for (let b = 0; b < ids.length; b++) { got2.push(...lg.subarray(b * V, (b + 1) * V)); want2.push(...want.subarray((b * T + t) * V, (b * T + t + 1) * V)); }
          }
          const e2 = relFrob(got2, want2);
          expect(e2, `${f}: prefilled decode vs forward relative error ${e2}`).toBeLessThan(TOL);
        } finally { s2.dispose(); }
      } finally { s.dispose(); model.dispose(); }
    });
  }
});

describe('families: a model loaded for decoding only (forward: false) against transformers', () => {
  for (const f of FAMILIES) {
    it(`${f}: prefill by decode steps, then steps: HF's logits at every position; the full load's decode bits`, () => {
      const dir = path.join(ROOT, f);
      const ref = loadReference(dir);
      const hf = ref.tensors.get('logits')!;
      const only = loadModel(dir, { forward: false, decode: true }), full = loadModel(dir, { decode: true });
      const V = only.config.vocabSize, L = only.config.layers, T = ref.ids[0]!.length, P = Math.min(8, T - 1);
      expect(only.decodeOnly).toBe(true);
      expect(() => only.layer(0)).toThrow(/decode runtime only/);
      expect(() => forward(only, ref.ids)).toThrow(/decode runtime only/);
      const a = new DecodeSession(only, denseModes(L), ref.ids.length), b = new DecodeSession(full, denseModes(L), ref.ids.length);
      try {
        const got: number[] = [], want: number[] = [];
        ref.ids.forEach((row, r) => {
          const lg = new Float32Array(V);
          a.prefill(r, row.slice(0, P), lg);
          got.push(...lg); want.push(...hf.data.subarray((r * T + P - 1) * V, (r * T + P) * V));
        });
        expect(a.counts.mlpTotal, 'a prefill is not counted').toBe(0);
        for (let t = 0; t < P; t++) b.step(ref.ids.map((row) => row[t]!));
        for (let t = P; t < T; t++) {
          const ids = ref.ids.map((row) => row[t]!), la = a.step(ids), lb = b.step(ids);
          expect(la.every((v, i) => Object.is(v, lb[i])), `${f} step ${t}: decode-only bits = the full load's`).toBe(true);
          ref.ids.forEach((_, r) => { got.push(...la.subarray(r * V, (r + 1) * V)); want.push(...hf.data.subarray((r * T + t) * V, (r * T + t + 1) * V)); });
        }
        const err = relFrob(got, want);
        expect(err, `${f}: decode-only vs transformers relative error ${err}`).toBeLessThan(TOL);
      } finally { a.dispose(); b.dispose(); only.dispose(); full.dispose(); }
    });
  }
});

describe('families: one registry', () => {
  it('no file under src/ outside src/arch/ spells a family id, model_type, architecture class or HF tensor name in code', () => {
    const SRC = path.join(import.meta.dirname, '..', 'src');
    const words = new Set<string>();
    for (const a of ARCHS) { words.add(a.id); for (const x of [...a.modelTypes, ...a.architectures]) words.add(x); }
    // HF tensor-name fragments of every family (from their own tables): a reader elsewhere would spell them again
    const hf = new Set<string>();
    for (const f of FAMILIES) {
      const c = normalizeConfig(JSON.parse(fs.readFileSync(path.join(ROOT, f, 'config.json'), 'utf8')) as Record<string, unknown>, f);
      for (const w of expectedWeights(c)) for (const part of w.key.split('.')) if (/[a-z]_[a-z]|^(fc\d|wte|wpe|h)$/.test(part) && !/^\d+$/.test(part)) hf.add(part);
    }
    const bad: string[] = [];
    // bench/ writes and times an OPT checkpoint (bench:collect's subject), by design
    const files = (fs.readdirSync(SRC, { recursive: true }) as string[]).map((f) => f.split(path.sep).join('/')).filter((f) => f.endsWith('.ts') && !f.startsWith('arch/') && !f.startsWith('bench/'));
    for (const f of files) {
      const code = fs.readFileSync(path.join(SRC, f), 'utf8').replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, ''); // comments may name families for context
      for (const m of code.matchAll(/(['"`])((?:(?!\1)[^\\\n]|\\.)*)\1/g)) {
        const lit = m[2]!.replace(/(?:checkpoints|configs)\/[\w.-]+/g, ''); // the embedded fixtures' folder names (help examples) are paths, not family knowledge
        for (const w of words) if (lit === w || new RegExp(`(^|[^A-Za-z0-9_])${w}([^A-Za-z0-9_]|$)`).test(lit)) bad.push(`src/${f}: ${m[0]} names the family ${w}`);
        for (const h of hf) if (new RegExp(`(^|\\.)${h}(\\.|$)`).test(lit)) bad.push(`src/${f}: ${m[0]} spells the HF tensor name part ${h}`);
      }
    }
    expect(bad).toEqual([]);
    expect(words.size).toBeGreaterThanOrEqual(25);
    expect(hf.size).toBeGreaterThan(20);
  });
});

describe('families: config keys that change the math are implemented or refused by name', () => {
  const cfgOf = (f: string) => JSON.parse(fs.readFileSync(path.join(ROOT, `${f}-ref`, 'config.json'), 'utf8')) as Record<string, unknown>;
  const refusal = (raw: Record<string, unknown>): UserError => {
    try { normalizeConfig(raw, 'config.json'); } catch (e) { if (e instanceof UserError) return e; throw e; }
    throw new Error('accepted');
  };

  it('an unsupported rope scaling (longrope) names the key, the value and what is supported; the hint never says to delete it', () => {
    const raw = cfgOf('phi3');
    raw.rope_parameters = { rope_type: 'longrope', rope_theta: 10000, short_factor: [1], long_factor: [1] };
    const e = refusal(raw);
    expect(e.message).toMatch(/rope_parameters\.rope_type "longrope" is not supported \(supported: default, linear, dynamic, yarn, llama3\)/);
    expect(e.hint).not.toMatch(/\b(remove|delete|drop)\b/i);
  });

  for (const mt of ['mixtral', 'qwen2_moe', 'deepseek_v3']) {
    it(`mixture-of-experts model_type ${mt} is refused as such`, () => {
      const e = refusal({ ...cfgOf('mistral'), model_type: mt });
      expect(e.message).toMatch(new RegExp(`model_type "${mt}" .* mixture-of-experts`));
      expect(e.hint).toMatch(/llama \(LlamaForCausalLM\)/);
    });
  }

  it('MoE keys in a dense family are refused by name', () => {
    expect(refusal({ ...cfgOf('qwen2'), num_experts: 8, num_experts_per_tok: 2 }).message).toMatch(/num_experts: mixture-of-experts MLPs are not supported/);
  });

  it('a sliding window, partial rotary, softcapping or parallel residual on a family that does not implement it: refused by name', () => {
    const e = refusal({ ...cfgOf('relu-llama'), sliding_window: 4096, attn_logit_softcapping: 50, use_parallel_residual: true });
    expect(e.message).toMatch(/sliding_window: 4096 changes what the model computes and is not implemented for llama/);
    expect(e.message).toMatch(/attn_logit_softcapping: 50/);
    expect(e.message).toMatch(/use_parallel_residual: true/);
    const raw = cfgOf('qwen2');
    raw.rope_parameters = { rope_type: 'default', rope_theta: 10000, partial_rotary_factor: 0.5 };
    expect(refusal(raw).message).toMatch(/partial_rotary_factor: 0\.5 is not supported for this family/);
    expect(refusal({ ...cfgOf('falcon'), alibi: true }).message).toMatch(/alibi: true is not supported/);
    expect(refusal({ ...cfgOf('gpt2'), scale_attn_by_inverse_layer_idx: true }).message).toMatch(/scale_attn_by_inverse_layer_idx/);
  });

  it('the keys a family implements change its normalized config (never silently ignored)', () => {
    const c = normalizeConfig(cfgOf('mistral'), 'm');
    expect(c.windows).toEqual([8, 8]);
    expect(normalizeConfig({ ...cfgOf('mistral'), sliding_window: null }, 'm').windows).toEqual([null, null]);
    expect(normalizeConfig(cfgOf('gemma2'), 'g').windows).toEqual([8, null]);
    expect(normalizeConfig(cfgOf('gpt_neox'), 'n').ropeDim).toBe(4);
    expect(normalizeConfig(cfgOf('qwen2'), 'q').windows).toEqual([null, null]);
    expect(normalizeConfig({ ...cfgOf('qwen2'), use_sliding_window: true, sliding_window: 16, max_window_layers: 1, layer_types: undefined }, 'q').windows).toEqual([null, 16]);
  });

  it('hidden_act swish and pretraining_tp 2 are accepted: transformers computes the same function', () => {
    const base = normalizeConfig(cfgOf('llama3-rope'), 'l');
    const c = normalizeConfig({ ...cfgOf('llama3-rope'), hidden_act: 'swish', pretraining_tp: 2 }, 'l');
    expect(c).toEqual(base);
    const f = normalizeConfig({ ...cfgOf('relu-llama'), hidden_act: 'fatrelu', hidden_act_param: 0.01 }, 'l');
    expect([f.act, f.actThreshold, f.activation]).toEqual(['fatrelu', 0.01, 'relu']);
  });

  it('an unknown model_type names what is supported; a config without model_type is found by its architectures', () => {
    const e = refusal({ ...cfgOf('gpt2'), model_type: 'mamba' });
    expect(e.message).toMatch(/unsupported model_type "mamba"/);
    for (const a of ARCHS) expect(e.hint).toContain(a.architectures[0]!);
    const raw = cfgOf('bloom');
    delete raw.model_type;
    expect(normalizeConfig(raw, 'b').family).toBe('bloom');
  });

  it('the CLI exits 2 naming the key (mixtral)', async () => {
    const dir = tmpDir();
    try {
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfgOf('mistral'), model_type: 'mixtral', num_local_experts: 8 }));
      fs.copyFileSync(path.join(ROOT, 'mistral-ref', 'model.safetensors'), path.join(dir, 'model.safetensors'));
      fs.writeFileSync(path.join(dir, 'ids.jsonl'), '{"ids": [1, 2, 3, 4]}\n');
      const r = await cli('collect-activations', '--model', dir, '--data', path.join(dir, 'ids.jsonl'), '--out', path.join(dir, 'acts'));
      expect(r.code).toBe(2);
      expect(r.err).toMatch(/model_type "mixtral" .* mixture-of-experts/);
      expect(fs.existsSync(path.join(dir, 'acts')), 'nothing written').toBe(false);
    } finally { fs.rmSync(dir, { recursive: true, force: true }); }
  });
});

describe('families: other layouts of the same checkpoints', () => {
  /** a copy of a reference with every tensor rewritten: dtype and key renamed as given */
  function rewrite(f: string, dtype: 'F16' | 'BF16' | 'F32', key: (k: string) => string): string {
    const src = path.join(ROOT, f), dir = tmpDir();
    fs.copyFileSync(path.join(src, 'config.json'), path.join(dir, 'config.json'));
    const st = openSafetensors(path.join(src, 'model.safetensors'));
    const out: Parameters<typeof writeSafetensors>[1] = {};
    for (const [k, t] of st.tensors) {
      const v = readTensorF32(st, k);
      out[key(k)] = { dtype, shape: t.shape, data: dtype === 'F16' ? f32ToF16Array(v) : dtype === 'BF16' ? f32ToBf16Array(v) : v };
    }
    writeSafetensors(path.join(dir, 'model.safetensors'), out);
    return dir;
  }
  const logits = (m: ReturnType<typeof loadModel>, ids: number[][]) => { const o = forward(m, ids); const l = o.logits!.dataSync() as Float32Array; disposeOutput(o); return l; };

  for (const f of FAMILIES) {
    it(`${f}: float16 on the host (collect's workers: kept half, split / transposed as bits) == widened at load; bfloat16 close to float32`, () => {
      const ids = loadReference(path.join(ROOT, f)).ids.map((r) => r.slice(0, 16));
      const h = rewrite(f, 'F16', (k) => k);
      const a = loadModel(h), b = loadModel(h, { host: loadHostWeights(h, { shared: true }) });
      try { expect(Array.from(logits(b, ids))).toEqual(Array.from(logits(a, ids))); } finally { a.dispose(); b.dispose(); fs.rmSync(h, { recursive: true, force: true }); }
      const bf = rewrite(f, 'BF16', (k) => k), ref = loadModel(path.join(ROOT, f)), m = loadModel(bf);
      try { expect(relFrob(logits(m, ids), logits(ref, ids))).toBeLessThan(0.05); } finally { m.dispose(); ref.dispose(); fs.rmSync(bf, { recursive: true, force: true }); }
    });
  }

  it('a bare-model save (keys without the family\'s base prefix) loads to the same model', () => {
    for (const f of ['gpt2-ref', 'gpt_neox-ref', 'bloom-ref', 'falcon-ref', 'phi3-ref']) {
      const c = normalizeConfig(JSON.parse(fs.readFileSync(path.join(ROOT, f, 'config.json'), 'utf8')) as Record<string, unknown>, f);
      const pre = ARCHS.find((a) => a.id === c.family)!.basePrefix;
      const dir = rewrite(f, 'F32', (k) => (k.startsWith(pre) ? k.slice(pre.length) : k));
      const ids = [[1, 2, 3, 4, 5]];
      const a = loadModel(dir), b = loadModel(path.join(ROOT, f));
      try { expect(Array.from(logits(a, ids))).toEqual(Array.from(logits(b, ids))); } finally { a.dispose(); b.dispose(); fs.rmSync(dir, { recursive: true, force: true }); }
    }
  });
});
