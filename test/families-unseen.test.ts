/**
 * The families on checkpoints the registry was not written against (test/fixtures/families-unseen, made by
 * scripts/make-unseen-families.py with transformers 5.17): other seeds and sizes, grouped and multi-query KV heads,
 * head_dim != hidden / heads, 3 layers, yarn / dynamic / llama3 rope scalings with other factors, partial rotary with
 * a sliding window (Phi-3), ALiBi with 6 heads (not a power of two), Falcon's new decoder layout and its sequential
 * layout with biases, sequential GPT-NeoX, tied and untied heads, stored as float16 or bfloat16 (the references were
 * computed in float32 from the saved half-precision weights, so the loader's widening is exact and 1e-4 holds).
 * Forward: logits, every hidden state and every MLP activation; decode runtime: dense steps equal the forward pass.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { DecodeSession, denseModes, disposeOutput, ensureBackend, forward, loadModel } from '../src/index.js';
import { FIXTURES, loadReference, relFrob } from './helpers.js';

const ROOT = path.join(FIXTURES, 'families-unseen');
const VARIANTS = fs.readdirSync(ROOT).filter((f) => fs.existsSync(path.join(ROOT, f, 'reference.json'))).sort();
const TOL = 1e-4;
/**
 * Dynamic NTK scaling depends on the sequence length seen so far: transformers' full forward over 40 tokens scales
 * every position with the 40-token base, while its own step-by-step decode rescales as the cache grows and keeps the
 * keys already cached (the two differ by 3.7e-2 here). That variant's reference also holds transformers' decode
 * (`decode_logits`), which the decode runtime must match instead.
 */

beforeAll(async () => { await ensureBackend('wasm'); });

describe('families on unseen checkpoints', () => {
  it('finds the 15 unseen checkpoints, stored in float16 and bfloat16', () => {
    expect(VARIANTS.length).toBe(15);
    const dtypes = new Set(VARIANTS.map((v) => (JSON.parse(fs.readFileSync(path.join(ROOT, v, 'config.json'), 'utf8')) as { dtype: string }).dtype));
    expect([...dtypes].sort()).toEqual(['bfloat16', 'float16']);
  });

  for (const v of VARIANTS) {
    it(`${v}: forward within 1e-4 of transformers; dense decode steps equal the forward (or transformers' own decode)`, () => {
      const dir = path.join(ROOT, v);
      const ref = loadReference(dir);
      const before = tf.memory().numTensors;
      const model = loadModel(dir, { decode: true });
      const L = model.config.layers, V = model.config.vocabSize;
      const out = forward(model, ref.ids, { capture: { xAttn: true, mlpAct: true, finalHidden: true } });
      const errs: Record<string, number> = {};
      let want: Float32Array;
      try {
        for (const [key, r] of ref.tensors) {
          if (key === 'input_ids' || key === 'decode_logits') continue;
          let m: RegExpExecArray | null;
          const t = key === 'logits' ? out.logits : (m = /^hidden_states\.(\d+)$/.exec(key)) ? (Number(m[1]) === L ? out.finalHidden : out.captured.xAttn?.[Number(m[1])])
            : (m = /^mlp_act\.(\d+)$/.exec(key)) ? out.captured.mlpAct?.[Number(m[1])] : undefined;
          expect(t, `${v} ${key} produced`).toBeDefined();
          expect(t!.shape, key).toEqual(r.shape);
          errs[key] = relFrob(t!.dataSync(), r.data);
        }
        want = ref.tensors.get('decode_logits')?.data ?? (out.logits!.dataSync() as Float32Array);
      } finally { disposeOutput(out); }
      try {
        expect(Object.keys(errs).length, 'logits + L + 1 hidden states + L mlp_act').toBe(1 + (L + 1) + L);
        for (const [k, e] of Object.entries(errs)) expect(e, `${v} ${k}: relative error ${e}`).toBeLessThan(TOL);
        const s = new DecodeSession(model, denseModes(L), ref.ids.length);
        try {
          const T = ref.ids[0]!.length;
          const got = new Float32Array(want.length);
          for (let t = 0; t < T; t++) {
            const lg = s.step(ref.ids.map((r) => r[t]!));
            for (let b = 0; b < ref.ids.length; b++) got.set(lg.subarray(b * V, (b + 1) * V), (b * T + t) * V);
          }
          const e = relFrob(got, want);
          expect(e, `${v}: decode relative error ${e}`).toBeLessThan(TOL);
        } finally { s.dispose(); }
      } finally { model.dispose(); }
      expect(tf.memory().numTensors, 'no tensor leaked').toBe(before);
    });
  }
});
