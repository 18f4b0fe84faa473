/**
 * No silent ignore on real users' configs: the config.json of 36 popular checkpoints as they stand on the hub
 * (old-style keys: rope_scaling, top-level rope_theta, rotary_pct, n_head, hidden_act "gelu" with hidden_activation
 * null, pretraining_tp 2, ...), shrunk to tiny random-weight folders by scripts/make-popular-configs.py with the
 * logits transformers 5.17 computes after loading that very config.json. dejavu either matches those logits within
 * 1e-4 or refuses the config with a UserError naming the key — never loads it and computes something else.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { disposeOutput, ensureBackend, forward, loadModel } from '../src/index.js';
import { UserError } from '../src/util/errors.js';
import { cli, FIXTURES, loadReference, relFrob, tmpDir } from './helpers.js';

const ROOT = path.join(FIXTURES, 'popular-configs');
const CONFIGS = fs.readdirSync(ROOT).filter((f) => fs.existsSync(path.join(ROOT, f, 'reference.json'))).sort();
/** what is refused, and the words the refusal must contain (the key, and why) */
const REFUSED: Record<string, RegExp> = {
  'falcon-rw-1b': /alibi: true is not supported/,
  'mixtral-8x7b': /model_type "mixtral" .* mixture-of-experts/,
  'olmo2-1b': /unsupported model_type "olmo2"/,
  'phi-3-mini-128k': /rope_scaling\.rope_type "longrope" is not supported/,
};

beforeAll(async () => { await ensureBackend('wasm'); });

describe('popular checkpoints\' configs: matched or refused by name', () => {
  it('finds the 36 configs', () => { expect(CONFIGS.length).toBe(36); });

  for (const c of CONFIGS) {
    const dir = path.join(ROOT, c);
    if (REFUSED[c]) {
      it(`${c}: refused naming the key (exit 2 from the CLI, nothing written)`, async () => {
        let err: unknown = null;
        try { loadModel(dir).dispose(); } catch (e) { err = e; }
        expect(err).toBeInstanceOf(UserError);
        expect((err as UserError).message).toMatch(REFUSED[c]!);
        expect((err as UserError).hint ?? '').not.toMatch(/\b(remove|delete|drop)\b.*config\.json/i);
        const work = tmpDir();
        try {
          fs.writeFileSync(path.join(work, 'ids.jsonl'), '{"ids": [1, 5, 6, 7, 8, 9, 10, 11]}\n');
          const r = await cli('collect-activations', '--model', dir, '--data', path.join(work, 'ids.jsonl'), '--out', path.join(work, 'acts'), '--seq-len', '4', '--quiet');
          expect(r.code).toBe(2);
          expect(r.err).toMatch(REFUSED[c]!);
          expect(fs.existsSync(path.join(work, 'acts'))).toBe(false);
        } finally { fs.rmSync(work, { recursive: true, force: true }); }
      });
    } else {
      it(`${c}: logits within 1e-4 of transformers`, () => {
        const ref = loadReference(dir);
        const model = loadModel(dir);
        const out = forward(model, ref.ids);
        try {
          const e = relFrob(out.logits!.dataSync(), ref.tensors.get('logits')!.data);
          expect(e, `${c}: relative error ${e}`).toBeLessThan(1e-4);
        } finally { disposeOutput(out); model.dispose(); }
      });
    }
  }
});
