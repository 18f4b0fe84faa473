/**
 * Calibration data: JSONL with {"text"} or pre-tokenized {"ids"}, or plain .txt (one document). Documents are
 * tokenized with the checkpoint's tokenizer, prefixed with the family's BOS token, concatenated and packed into
 * full sequences of seqLen tokens. The remainder shorter than one sequence is dropped (never padded).
 */
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { UserError } from '../util/errors.js';
import type { ModelConfig } from '../model/config.js';
import type { LoadedTokenizer } from '../tokenizer.js';

export type Doc = { text: string } | { ids: number[] };

export async function* readDocuments(file: string): AsyncGenerator<Doc> {
  if (!fs.existsSync(file)) throw new UserError(`data file ${file} does not exist`, 'pass --data with a JSONL ({"text": ...} per line) or .txt file');
  if (!file.endsWith('.jsonl') && !file.endsWith('.json')) {
    const text = fs.readFileSync(file, 'utf8');
    if (text.trim()) yield { text };
    return;
  }
  const rl = readline.createInterface({ input: fs.createReadStream(file, 'utf8'), crlfDelay: Infinity });
  let line = 0;
  for await (const raw of rl) {
    line++;
    if (!raw.trim()) continue;
    let v: unknown;
    try { v = JSON.parse(raw); } catch (e) { throw new UserError(`${file}:${line}: not valid JSON (${(e as Error).message})`, 'each line must be a JSON object like {"text": "..."} or {"ids": [1, 2, 3]}'); }
    const o = v as { text?: unknown; ids?: unknown };
    if (typeof o?.text === 'string') { if (o.text.length) yield { text: o.text }; }
    else if (Array.isArray(o?.ids) && o.ids.every((x) => Number.isInteger(x) && x >= 0)) { if (o.ids.length) yield { ids: o.ids as number[] }; }
    else throw new UserError(`${file}:${line}: expected an object with "text" (string) or "ids" (non-negative integers)`, 'each line must be {"text": "..."} or {"ids": [...]}');
  }
}

/** Does the file hold pre-tokenized documents? (first non-empty JSONL line has "ids") */
export async function isPretokenized(file: string): Promise<boolean> {
  for await (const d of readDocuments(file)) return 'ids' in d;
  return false;
}

/**
 * Pack documents into sequences of exactly seqLen tokens. Each document is BOS-prefixed (when the family has a BOS
 * token) and pre-tokenized ids are taken as they are (the caller already added specials).
 */
export async function* packSequences(docs: AsyncIterable<Doc>, opts: { seqLen: number; cfg: ModelConfig; tokenizer: LoadedTokenizer | null; maxTokens?: number | undefined; source: string }):
  AsyncGenerator<number[]> {
  const { seqLen, cfg, tokenizer } = opts;
  const limit = opts.maxTokens ?? Infinity;
  let buf: number[] = [];
  let emitted = 0;
  let docs0 = 0;
  for await (const d of docs) {
    docs0++;
    let ids: number[];
    if ('ids' in d) ids = d.ids;
    else {
      if (!tokenizer) throw new UserError(`${opts.source}: text documents need the checkpoint's tokenizer.json`);
      ids = tokenizer.encode(d.text);
      if (cfg.bosTokenId !== null) ids.unshift(cfg.bosTokenId);
    }
    for (const id of ids) if (id >= cfg.vocabSize) throw new UserError(`${opts.source}: token id ${id} is outside the model's vocabulary (${cfg.vocabSize})`, 'pre-tokenized ids must come from this checkpoint\'s tokenizer');
    buf.push(...ids);
    while (buf.length >= seqLen && emitted + seqLen <= limit) {
      yield buf.slice(0, seqLen);
      buf = buf.slice(seqLen);
      emitted += seqLen;
    }
    if (emitted + seqLen > limit) break;
  }
  if (docs0 === 0) throw new UserError(`${opts.source} holds no documents`, 'the data file is empty');
  if (emitted === 0) throw new UserError(`${opts.source} has too few tokens for one sequence of ${seqLen}${Number.isFinite(limit) ? ` (max tokens ${limit})` : ''}`, 'add more text, or lower --seq-len');
}
