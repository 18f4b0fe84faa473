/**
 * Calibration data: JSONL (.jsonl, .ndjson, .json in any case) with {"text"} or pre-tokenized {"ids"} on every
 * line, or plain text (one document, streamed). The file must be a regular file: it is read several times (UTF-8
 * check, sha256, the pre-tokenized probe, the documents), which a pipe or /dev/zero cannot give. Documents are
 * tokenized with the checkpoint's tokenizer, prefixed with the family's BOS token, concatenated and packed into
 * full sequences of seqLen tokens. The remainder shorter than one sequence is dropped (never padded).
 */
import * as fs from 'node:fs';
import { isUtf8 } from 'node:buffer';
import { StringDecoder } from 'node:string_decoder';
import { UserError } from '../util/errors.js';
import { inputError, openInput, type InputFile } from '../util/input.js';
import type { ModelConfig } from '../model/config.js';
import type { LoadedTokenizer } from '../tokenizer.js';

/** A document; `more`: a piece of a streamed text whose next piece is the next Doc (one document, one BOS). */
export type Doc = { text: string; more?: boolean } | { ids: number[] };

/**
 * Offset of the first byte that breaks UTF-8 in `b` (-1 if valid): the lead byte of a sequence whose continuation
 * bytes are missing or wrong (Latin-1 "é" in "Gén" is the 0xe9 at 1, not the "n" after it); a sequence cut off at
 * the end counts as invalid.
 */
export function firstInvalidUtf8(b: Uint8Array): number {
  for (let i = 0; i < b.length;) {
    const c = b[i]!;
    const n = c < 0x80 ? 0 : c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
    if (n < 0) return i;
    for (let k = 1; k <= n; k++) {
      const x = b[i + k];
      if (x === undefined || (x & 0xc0) !== 0x80) return i;
      if (k === 1 && ((c === 0xe0 && x < 0xa0) || (c === 0xed && x > 0x9f) || (c === 0xf0 && x < 0x90) || (c === 0xf4 && x > 0x8f))) return i;
    }
    i += n + 1;
  }
  return -1;
}

const DATA_HINT = 'pass --data with a JSONL ({"text": ...} per line) or .txt file';
const DATA_FILE: InputFile = { what: 'data file', hint: DATA_HINT, notRegularHint: 'dejavu reads the data file several times (hash, checks, tokens): save it to a file first (e.g. `cat ... > data.jsonl`) and pass that' };

/** JSONL by name: .jsonl, .ndjson or .json, in any case. */
export const isJsonlName = (file: string) => /\.(jsonl|ndjson|json)$/i.test(file);

/**
 * Refuse a data file that is missing, not a regular file (a pipe, /dev/zero: it is read several times), or not
 * UTF-8 (naming the byte offset); streamed in 4 MiB chunks. Returns whether it holds any non-whitespace text.
 */
function checkDataFile(file: string): { blank: boolean } {
  const fd = openInput(file, DATA_FILE);
  let blank = true;
  try {
    const buf = Buffer.allocUnsafe(4 << 20);
    let carry = Buffer.alloc(0), base = 0;
    for (;;) {
      let n: number;
      try { n = fs.readSync(fd, buf, 0, buf.length, null); } catch (e) { throw inputError(e, file, DATA_FILE); }
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
      if (blank && /\S/.test(body.toString('utf8'))) blank = false; // the rule of String.trim: what a whitespace-only document is
      base += cut;
      carry = Buffer.from(chunk.subarray(cut));
      if (n === 0) break;
    }
  } finally {
    fs.closeSync(fd);
  }
  return { blank };
}

/** Characters per tokenizer call for long texts (a chunk ends where the next whitespace run starts). */
export const TOKENIZE_CHUNK_CHARS = 1 << 16;
/** A piece with no place to split (no whitespace between words) is cut here anyway: not prose, and memory stays bounded. */
export const MAX_PIECE_CHARS = 4 * TOKENIZE_CHUNK_CHARS;

const isSpace = (c: number) => c === 32 || c === 9 || c === 10 || c === 13 || c === 11 || c === 12 || c === 0xa0 || c === 0x3000 || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029;

/**
 * Where the piece of `text` starting at `start` ends: the first single whitespace character at or after
 * start + size that sits between two non-whitespace ones; else start + MAX_PIECE_CHARS (not inside a surrogate
 * pair) when the text reaches that far; else -1 (the rest is one piece, or, while streaming, more text is needed).
 */
function nextCut(text: string, start: number, size: number): number {
  const stop = Math.min(text.length - 1, start + MAX_PIECE_CHARS);
  for (let i = start + size; i < stop; i++) {
    if (isSpace(text.charCodeAt(i)) && !isSpace(text.charCodeAt(i - 1)) && !isSpace(text.charCodeAt(i + 1))) return i;
  }
  if (text.length <= start + MAX_PIECE_CHARS) return -1;
  const at = start + MAX_PIECE_CHARS, c = text.charCodeAt(at);
  return c >= 0xdc00 && c <= 0xdfff ? at - 1 : at;
}

/**
 * Split a long text for tokenization: each piece after the first starts with a single whitespace character that
 * sits between two non-whitespace ones ("word| next"). Pre-tokenizers split there anyway (byte-level BPE attaches
 * the space to the next word), so the pieces' ids concatenate to the whole text's ids; loadTokenizer checks this
 * per tokenizer (chunkSafe). A run of MAX_PIECE_CHARS without such a position is cut where it reaches that length.
 */
export function* textPieces(text: string, size = TOKENIZE_CHUNK_CHARS): Generator<string> {
  let start = 0;
  while (text.length - start > size) {
    const cut = nextCut(text, start, size);
    if (cut < 0) break;
    yield text.slice(start, cut);
    start = cut;
  }
  yield text.slice(start);
}

/**
 * A .txt file as one document, streamed: the pieces textPieces would cut the whole text into, read 1 MiB at a time
 * (so a file larger than a string can be, or --max-tokens of a huge one, reads only what is packed). Every piece but
 * the last has `more` (the document goes on).
 */
function* streamText(file: string, size = TOKENIZE_CHUNK_CHARS): Generator<Doc> {
  const fd = openInput(file, DATA_FILE);
  try {
    const dec = new StringDecoder('utf8'), buf = Buffer.allocUnsafe(1 << 20);
    let text = '', eof = false, first = true;
    const more = () => {
      let n: number;
      try { n = fs.readSync(fd, buf, 0, buf.length, null); } catch (e) { throw inputError(e, file, DATA_FILE); }
      if (n === 0) { eof = true; text += dec.end(); } else text += dec.write(buf.subarray(0, n));
      if (first && (eof || text.length >= size)) { first = false; text = text.replace(/^\uFEFF/, ''); refuseJsonLines(file, text); } // a UTF-8 BOM is not text
    };
    for (;;) {
      while (!eof && text.length <= size + 1) more();
      const cut = text.length > size ? nextCut(text, 0, size) : -1;
      if (cut > 0) { yield { text: text.slice(0, cut), more: true }; text = text.slice(cut); continue; }
      if (eof) { yield { text }; return; }
      more(); // no place to cut yet: read on
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** A plain-text file whose first line is a JSONL document is refused: it would be read as one text, JSON syntax and all. */
function refuseJsonLines(file: string, text: string): void {
  const line = /^\s*(\{[^\n]*)/.exec(text)?.[1];
  if (!line) return;
  let v: unknown;
  try { v = JSON.parse(line); } catch { return; }
  const o = v as { text?: unknown; ids?: unknown } | null;
  if (typeof o?.text === 'string' || Array.isArray(o?.ids))
    throw new UserError(`data file ${file} looks like JSON lines (its first line is {"${typeof o?.text === 'string' ? 'text' : 'ids'}": ...}) but its name does not end in .jsonl, .ndjson or .json, so it would be read as one plain-text document`,
      'rename it to end in .jsonl (any case) to read one document per line');
}

export async function* readDocuments(file: string): AsyncGenerator<Doc> {
  const { blank } = checkDataFile(file);
  if (!isJsonlName(file)) {
    if (!blank) yield* streamText(file); // a whitespace-only text holds no document
    return;
  }
  let line = 0, kind: 'text' | 'ids' | null = null;
  const one = (k: 'text' | 'ids') => {
    kind ??= k;
    if (kind !== k) throw new UserError(`${file}:${line}: this document has "${k}", but the file's first document has "${kind}"`, 'a data file holds either text ({"text": ...} on every line) or pre-tokenized ids ({"ids": [...]} on every line), not both');
  };
  for (const raw0 of readLines(file, () => line + 1)) {
    const raw = line++ === 0 ? raw0.replace(/^\uFEFF/, '') : raw0;
    if (!raw.trim()) continue;
    let v: unknown;
    try { v = JSON.parse(raw); } catch (e) { throw new UserError(`${file}:${line}: not valid JSON (${(e as Error).message})`, 'each line must be a JSON object like {"text": "..."} or {"ids": [1, 2, 3]}'); }
    const o = v as { text?: unknown; ids?: unknown };
    if (typeof o?.text === 'string') { one('text'); if (o.text.trim()) yield { text: o.text }; } // whitespace only: no document, as for a .txt
    else if (Array.isArray(o?.ids) && o.ids.every((x) => Number.isInteger(x) && x >= 0)) { one('ids'); if (o.ids.length) yield { ids: o.ids as number[] }; }
    else throw new UserError(`${file}:${line}: expected an object with "text" (string) or "ids" (non-negative integers)`, 'each line must be {"text": "..."} or {"ids": [...]}');
  }
}

/** Longest JSONL line: a string cannot be much longer (V8's limit is 2^29 - 24 characters). */
const MAX_LINE_CHARS = 2 ** 28;

/**
 * The lines of a text file (ended by \n, \r\n or \r, as readline splits them), read 1 MiB at a time; a line longer
 * than MAX_LINE_CHARS is refused by number (`lineNo`) before it is held whole.
 */
function* readLines(file: string, lineNo: () => number): Generator<string> {
  const fd = openInput(file, DATA_FILE);
  try {
    const dec = new StringDecoder('utf8'), buf = Buffer.allocUnsafe(1 << 20), brk = /[\r\n]/g;
    let part = '', afterCR = false;
    for (;;) {
      let n: number;
      try { n = fs.readSync(fd, buf, 0, buf.length, null); } catch (e) { throw inputError(e, file, DATA_FILE); }
      const s = n ? dec.write(buf.subarray(0, n)) : dec.end();
      let from = afterCR && s.startsWith('\n') ? 1 : 0;
      afterCR = false;
      brk.lastIndex = from;
      for (let m = brk.exec(s); m; m = brk.exec(s)) {
        const l = part + s.slice(from, m.index);
        part = '';
        from = m.index + 1;
        if (s[m.index] === '\r') { if (from < s.length) { if (s[from] === '\n') from++; } else afterCR = true; }
        brk.lastIndex = from;
        yield l;
      }
      part += s.slice(from);
      if (part.length > MAX_LINE_CHARS) throw new UserError(`${file}:${lineNo()}: a line of over ${MAX_LINE_CHARS / 2 ** 20} Mi characters`, 'split it into several documents (one {"text": ...} per line)');
      if (n === 0) { if (part) yield part; return; }
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Does the file hold pre-tokenized documents? (first non-empty JSONL line has "ids") */
export async function isPretokenized(file: string): Promise<boolean> {
  for await (const d of readDocuments(file)) return 'ids' in d;
  return false;
}

/** The longest text tokenized in one call by a tokenizer that is not chunkSafe. */
const MAX_WHOLE_TEXT = 2 ** 28;

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
  let inDoc = false, whole = ''; // inDoc: the last Doc had `more`; whole: a streamed text gathered for a tokenizer that takes it in one call
  for await (const d of docs) {
    if (!inDoc) docs0++;
    if ('ids' in d) {
      append(d.ids);
      yield* drain();
    } else {
      if (!tokenizer) throw new UserError(`${opts.source}: text documents need the checkpoint's tokenizer.json`, 'pass --model with the checkpoint folder that holds tokenizer.json, or pre-tokenized data (JSONL with "ids")');
      const bos = tokenizer.bos !== undefined ? tokenizer.bos : cfg.bosTokenId; // what transformers' tokenizer prepends
      if (!inDoc && bos !== null) append([bos]);
      inDoc = d.more === true;
      if (!tokenizer.chunkSafe) {
        whole += d.text;
        if (whole.length > MAX_WHOLE_TEXT) throw new UserError(`${opts.source}: one document of over ${MAX_WHOLE_TEXT / 2 ** 20} Mi characters, and this tokenizer cannot take a text in pieces`, 'split it into several documents (JSONL, one {"text": ...} per line)');
        if (inDoc) continue;
      }
      const pieces = tokenizer.chunkSafe ? textPieces(d.text) : [whole];
      whole = '';
      for (const piece of pieces) {
        append(tokenizer.encode(piece));
        yield* drain();
        if (full()) break;
      }
    }
    if (full()) break;
  }
  if (docs0 === 0) throw new UserError(`${opts.source} holds no documents`, 'the data file is empty or holds only whitespace');
  if (emitted === 0) throw new UserError(`${opts.source} has too few tokens for one sequence of ${seqLen}${Number.isFinite(limit) ? ` (max tokens ${limit})` : ''}`, 'add more text, or lower --seq-len');
}
