/**
 * loadTokenizer: tokenizer.json (+ tokenizer_config.json when present) through @huggingface/tokenizers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { z } from 'zod';
import { UserError } from './util/errors.js';
import { sha256 } from './util/fsx.js';
import { readInputText } from './util/input.js';

/** Largest tokenizer.json / tokenizer_config.json read (large vocabularies are tens of MiB). */
const MAX_TOKENIZER_BYTES = 2 ** 28;
const RESTORE = 'restore tokenizer.json from the checkpoint (tokenizer.save_pretrained writes it)';

export interface LoadedTokenizer {
  /** ids without special tokens */
  encode(text: string): number[];
  decode(ids: number[], opts?: { skipSpecial?: boolean }): string;
  vocabSize: number;
  /** sha256 of tokenizer.json */
  hash: string;
  /**
   * true when encoding a text split before a single whitespace character (between two non-whitespace ones) gives
   * the same ids as encoding it whole (byte-level BPE: yes; a normalizer that prepends "▁" to every call: no).
   * Long texts are then tokenized in pieces (src/activations/data.ts textPieces).
   */
  chunkSafe: boolean;
  /**
   * The id transformers prepends to a text (add_special_tokens: the tokenizer.json template, or tokenizer_config.json's
   * add_bos_token with its bos_token), null when the tokenizer adds none (e.g. SmolLM2, GPT-2 style), undefined when
   * neither file says (a bare tokenizer.json: callers use config.json's bos_token_id).
   */
  bos?: number | null | undefined;
}

const CHUNK_PROBES = ['Call me Ishmael. Some years ago', 'never mind\nhow long,\tprecisely', '12 345 6.7 ; x', 'naïve café 東京 go'];

function probeChunkSafe(encode: (s: string) => number[]): boolean {
  for (const p of CHUNK_PROBES) {
    for (let i = 1; i < p.length - 1; i++) {
      if (!/\s/.test(p[i]!) || /\s/.test(p[i - 1]!) || /\s/.test(p[i + 1]!)) continue;
      const whole = encode(p), split = [...encode(p.slice(0, i)), ...encode(p.slice(i))];
      if (whole.length !== split.length || whole.some((x, j) => x !== split[j])) return false;
    }
  }
  return true;
}

const specialToken = z.union([z.string(), z.looseObject({ content: z.string() }), z.null()]);
/** tokenizer_config.json: a JSON object; the fields the tokenizer reads are type-checked, others kept as they are. */
const tokenizerConfigSchema = z.looseObject({
  bos_token: specialToken.optional(), eos_token: specialToken.optional(), unk_token: specialToken.optional(), pad_token: specialToken.optional(),
  sep_token: specialToken.optional(), cls_token: specialToken.optional(), mask_token: specialToken.optional(),
  add_bos_token: z.boolean().nullable().optional(), add_eos_token: z.boolean().nullable().optional(),
  clean_up_tokenization_spaces: z.boolean().nullable().optional(), model_max_length: z.number().nullable().optional(),
  chat_template: z.union([z.string(), z.array(z.unknown()), z.null()]).optional(),
});

function readTokenizerConfig(cfgFile: string): Record<string, unknown> {
  if (!fs.existsSync(cfgFile)) return {};
  const hint = 'fix or remove tokenizer_config.json (it is optional; save_pretrained writes a valid one)';
  const text = readInputText(cfgFile, { what: 'tokenizer config', hint, maxBytes: MAX_TOKENIZER_BYTES });
  let raw: unknown;
  try { raw = JSON.parse(text); } catch (e) { throw new UserError(`${cfgFile} is not valid JSON: ${(e as Error).message}`, hint); }
  const r = tokenizerConfigSchema.safeParse(raw);
  if (!r.success) throw new UserError(`${cfgFile} is not a tokenizer config: ${r.error.issues.map((i) => `${i.path.map(String).join('.') || '(top level)'}: ${i.message}`).join('; ')}`, hint);
  return r.data;
}

/** what transformers' add_special_tokens prepends (see LoadedTokenizer.bos) */
function bosOf(tok: Tokenizer, json: { post_processor?: unknown }, cfg: Record<string, unknown>, hasCfg: boolean): number | null | undefined {
  const probe = 'a b', plain = tok.encode(probe, { add_special_tokens: false }).ids, full = tok.encode(probe, { add_special_tokens: true }).ids;
  const added = full.length > plain.length && full[0] !== plain[0] ? full[0]! : null;
  if (cfg.add_bos_token === false) return null;
  if (cfg.add_bos_token === true && added === null) {
    const t = cfg.bos_token, s = typeof t === 'string' ? t : (t as { content?: string } | null | undefined)?.content;
    const ids = s ? tok.encode(s, { add_special_tokens: false }).ids : [];
    return ids.length === 1 ? ids[0]! : null;
  }
  return added !== null || json.post_processor || hasCfg ? added : undefined;
}

export function loadTokenizer(dir: string): LoadedTokenizer {
  const file = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(file)) throw new UserError(`no tokenizer.json in ${dir}`, 'the checkpoint folder needs a fast-tokenizer tokenizer.json (tokenizer.save_pretrained writes it); or pass pre-tokenized data (JSONL with "ids")');
  const text = readInputText(file, { what: 'tokenizer', hint: RESTORE, maxBytes: MAX_TOKENIZER_BYTES });
  let json: unknown;
  try { json = JSON.parse(text); } catch (e) { throw new UserError(`${file} is not valid JSON: ${(e as Error).message}`, RESTORE); }
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new UserError(`${file} is not a tokenizer: expected a JSON object`, RESTORE);
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const cfg = readTokenizerConfig(cfgFile);
  let tok: Tokenizer;
  try { tok = new Tokenizer(json as object, cfg); } catch (e) { throw new UserError(`cannot load ${file}: ${(e as Error).message}`); }
  const vocab = (json as { model?: { vocab?: Record<string, number> | unknown[] } }).model?.vocab;
  const added = (json as { added_tokens?: { id: number }[] }).added_tokens ?? [];
  const vocabSize = Math.max(Array.isArray(vocab) ? vocab.length : Object.keys(vocab ?? {}).length, ...added.map((a) => a.id + 1));
  const encode = (s: string) => tok.encode(s, { add_special_tokens: false }).ids;
  return {
    encode,
    bos: bosOf(tok, json as { post_processor?: unknown }, cfg, fs.existsSync(cfgFile)),
    chunkSafe: probeChunkSafe(encode),
    decode: (ids, o) => ids.length === 0 ? '' : tok.decode(ids, { skip_special_tokens: o?.skipSpecial ?? false }),
    vocabSize,
    hash: sha256(text),
  };
}
