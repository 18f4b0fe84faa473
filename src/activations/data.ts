/**
 * Calibration data: JSONL with {"text"} or pre-tokenized {"ids"}, or plain .txt (one document). Documents are
 * tokenized with the checkpoint's tokenizer, prefixed with the family's BOS token, concatenated and packed into
 * full sequences of seqLen tokens. The remainder shorter than one sequence is dropped (never padded).
 */
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { isUtf8 } from 'node:buffer';
import { UserError } from '../util/errors.js';
import type { ModelConfig } from '../model/config.js';
import type { LoadedTokenizer } from '../tokenizer.js';

export type Doc = { text: string } | { ids: number[] };

/** Offset of the first byte that breaks UTF-8 in `b` (-1 if valid; a sequence cut off at the end counts as invalid). */
export function firstInvalidUtf8(b: Uint8Array): number {
  for (let i = 0; i < b.length;) {
    const c = b[i]!;
    const n = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
    if (n < 0) return i;
    for (let k = 1; k <= n; k++) {
      const x = b[i + k];
      if (x === undefined || (x & 0xc0) !== 0x80) return i + k < b.length ? i + k : i;
      if (k === 1 && ((c === 0xe0 && x < 0xa0) || (c === 0xed && x > 0x9f) || (c === 0xf0 && x < 0x90) || (c === 0xf4 && x > 0x8f))) return i + 1;
    }
    i += n + 1;
  }
  return -1;
}

/** Refuse a data file that is missing, a folder, or not UTF-8 (naming the byte offset); streamed in 4 MiB chunks. */
function checkDataFile(file: string): void {
  let st: fs.Stats;
  try { st = fs.statSync(file); } catch { throw new UserError(`data file ${file} does not exist`, 'pass --data with a JSONL ({"text": ...} per line) or .txt file'); }
  if (st.isDirectory()) throw new UserError(`data file ${file} is a directory`, 'pass --data with a JSONL ({"text": ...} per line) or .txt file, not a folder');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 << 20);
    let carry = Buffer.alloc(0), base = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      const chunk = Buffer.concat([carry, buf.subarray(0, n)]);
      let cut = chunk.length; // keep a multi-byte sequence split by the chunk boundary for the next round
      if (n) for (let i = chunk.length - 1; i >= Math.max(0, chunk.length - 3); i--) {
        const c = chunk[i]!;
        if ((c & 0xc0) === 0x80) continue;
        if (c >= 0xc0 && i + (c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2) > chunk.length) cut = i;
        break;
      }
      const body = chunk.subarray(0, cut);
      if (!isUtf8(body)) {
        const off = firstInvalidUtf8(body);
        throw new UserError(`data file ${file} is not valid UTF-8: invalid byte 0x${body[off]!.toString(16).padStart(2, '0')} at byte offset ${base + off}`, 'convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)');
      }
      base += cut;
      carry = Buffer.from(chunk.subarray(cut));
      if (n === 0) break;
    }
  } finally {
    fs.closeSync(fd);
  }
}

export async function* readDocuments(file: string): AsyncGenerator<Doc> {
  checkDataFile(file);
  if (!file.endsWith('.jsonl') && !file.endsWith('.json')) {
    const text = fs.readFileSync(file, 'utf8').replace(/^\uFEFF/, ''); // a UTF-8 BOM is not text
    if (text.trim()) yield { text };
    return;
  }
  const rl = readline.createInterface({ input: fs.createReadStream(file, 'utf8'), crlfDelay: Infinity });
  let line = 0;
  for await (const raw0 of rl) {
    const raw = line++ === 0 ? raw0.replace(/^\uFEFF/, '') : raw0;
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
      const bos = tokenizer.bos !== undefined ? tokenizer.bos : cfg.bosTokenId; // what transformers' tokenizer prepends
      if (bos !== null) append([bos]);
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
