/**
 * loadTokenizer: tokenizer.json (+ tokenizer_config.json when present) through @huggingface/tokenizers.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { UserError } from './util/errors.js';
import { sha256 } from './util/fsx.js';

export interface LoadedTokenizer {
  /** ids without special tokens */
  encode(text: string): number[];
  decode(ids: number[], opts?: { skipSpecial?: boolean }): string;
  vocabSize: number;
  /** sha256 of tokenizer.json */
  hash: string;
}

export function loadTokenizer(dir: string): LoadedTokenizer {
  const file = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(file)) throw new UserError(`no tokenizer.json in ${dir}`, 'the checkpoint folder needs a fast-tokenizer tokenizer.json (tokenizer.save_pretrained writes it); or pass pre-tokenized data (JSONL with "ids")');
  const text = fs.readFileSync(file, 'utf8');
  let json: unknown;
  try { json = JSON.parse(text); } catch (e) { throw new UserError(`${file} is not valid JSON: ${(e as Error).message}`); }
  const cfgFile = path.join(dir, 'tokenizer_config.json');
  const cfg = fs.existsSync(cfgFile) ? JSON.parse(fs.readFileSync(cfgFile, 'utf8')) : {};
  let tok: Tokenizer;
  try { tok = new Tokenizer(json as object, cfg); } catch (e) { throw new UserError(`cannot load ${file}: ${(e as Error).message}`); }
  const vocab = (json as { model?: { vocab?: Record<string, number> | unknown[] } }).model?.vocab;
  const added = (json as { added_tokens?: { id: number }[] }).added_tokens ?? [];
  const vocabSize = Math.max(Array.isArray(vocab) ? vocab.length : Object.keys(vocab ?? {}).length, ...added.map((a) => a.id + 1));
  return {
    encode: (s) => tok.encode(s, { add_special_tokens: false }).ids,
    decode: (ids, o) => ids.length === 0 ? '' : tok.decode(ids, { skip_special_tokens: o?.skipSpecial ?? false }),
    vocabSize,
    hash: sha256(text),
  };
}
