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

/** Characters per tokenizer call for long texts (a chunk ends where the next whitespace run starts). */
export const TOKENIZE_CHUNK_CHARS = 1 << 16;

const isSpace = (c: number) => c === 32 || c === 9 || c === 10 || c === 13 || c === 11 || c === 12 || c === 0xa0 || c === 0x3000 || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029;

/**
 * Split a long text for tokenization: each piece after the first starts with a single whitespace character that
 * sits between two non-whitespace ones ("word| next"). Pre-tokenizers split there anyway (byte-level BPE attaches
 * the space to the next word), so the pieces' ids concatenate to the whole text's ids; loadTokenizer checks this
 * per tokenizer (chunkSafe). A text without such a position (e.g. no spaces at all) stays one piece.
 */
export function* textPieces(text: string, size = TOKENIZE_CHUNK_CHARS): Generator<string> {
  let start = 0;
  while (text.length - start > size) {
    let cut = -1;
    for (let i = start + size; i < text.length - 1; i++) {
      if (isSpace(text.charCodeAt(i)) && !isSpace(text.charCodeAt(i - 1)) && !isSpace(text.charCodeAt(i + 1))) { cut = i; break; }
    }
    if (cut < 0) break;
    yield text.slice(start, cut);
    start = cut;
  }
  yield text.slice(start);
}

/**
 * Pack documents into sequences of exactly seqLen tokens. Each document is BOS-prefixed (when the family has a BOS
 * token) and pre-tokenized ids are taken as they are (the caller already added specials). Linear time and memory in
 * the tokens kept: long texts are tokenized piece by piece (textPieces) and packed as they come, so --max-tokens
 * stops the tokenizer early; ids are appended one by one (no spread of a huge array onto the stack).
 */
export async function* packSequences(docs: AsyncIterable<Doc>, opts: { seqLen: number; cfg: ModelConfig; tokenizer: LoadedTokenizer | null; maxTokens?: number | undefined; source: string }):
  AsyncGenerator<number[]> {
  const { seqLen, cfg, tokenizer } = opts;
  const limit = opts.maxTokens ?? Infinity;
  let buf: number[] = []; // pending ids: buf[head..] (fewer than seqLen after each drain)
  let head = 0;
  let emitted = 0;
  let docs0 = 0;
  const full = () => emitted + seqLen > limit;
  const append = (ids: ArrayLike<number>) => {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id >= cfg.vocabSize) throw new UserError(`${opts.source}: token id ${id} is outside the model's vocabulary (${cfg.vocabSize})`, 'pre-tokenized ids must come from this checkpoint\'s tokenizer');
      buf.push(id);
    }
  };
  function* drain(): Generator<number[]> {
    while (buf.length - head >= seqLen && !full()) {
      yield buf.slice(head, head + seqLen);
      head += seqLen;
      emitted += seqLen;
    }
    if (head > 0) { buf = buf.slice(head); head = 0; } // what is left is shorter than one sequence (or we are done)
  }
  for await (const d of docs) {
    docs0++;
    if ('ids' in d) {
      append(d.ids);
      yield* drain();
    } else {
      if (!tokenizer) throw new UserError(`${opts.source}: text documents need the checkpoint's tokenizer.json`);
      if (cfg.bosTokenId !== null) append([cfg.bosTokenId]);
      const pieces = tokenizer.chunkSafe ? textPieces(d.text) : [d.text];
      for (const piece of pieces) {
        append(tokenizer.encode(piece));
        yield* drain();
        if (full()) break;
      }
    }
    if (full()) break;
  }
  if (docs0 === 0) throw new UserError(`${opts.source} holds no documents`, 'the data file is empty');
  if (emitted === 0) throw new UserError(`${opts.source} has too few tokens for one sequence of ${seqLen}${Number.isFinite(limit) ? ` (max tokens ${limit})` : ''}`, 'add more text, or lower --seq-len');
}
