/**
 * Every family of the architecture registry against transformers (test/fixtures/families/<family>-ref: tiny random
 * checkpoints saved by transformers 5.17 with each family's own tensor names, and what the HF model computed):
 * loadModel + forward give the logits, every hidden state and every MLP activation within relative Frobenius 1e-4.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { disposeOutput, ensureBackend, forward, loadModel } from '../src/index.js';
import { FIXTURES, loadReference, relFrob } from './helpers.js';

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
