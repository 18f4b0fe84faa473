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
