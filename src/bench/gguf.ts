/**
 * A small GGUF (version 3) writer and header reader for the llama.cpp comparison of bench:decode (docs/llama-cpp.md):
 * a dejavu-loadable Llama checkpoint folder (config.json + safetensors) becomes a GGUF that llama.cpp loads, with
 * the `llama` architecture keys, a tokenizer (the folder's byte-level BPE tokenizer.json as llama.cpp's `gpt2`
 * vocabulary, or a synthetic SentencePiece-style vocabulary for random-weight models without one) and the tensors
 * in F32, F16 or Q8_0 (blocks of 32 values: a float16 scale + 32 int8). q_proj / k_proj rows are permuted per head
 * as llama.cpp's converter does (HF rotates the two halves of a head; llama.cpp's rope rotates adjacent pairs).
 * Written tensor by tensor to a temp sibling, renamed into place when whole.
 *   node dist/bench/gguf.js CHECKPOINT_DIR OUT.gguf [F32|F16|Q8_0]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openCheckpoint } from '../checkpoint/checkpoint.js';
import { normalizeConfig, type ModelConfig } from '../model/config.js';
import { UserError } from '../util/errors.js';
import { tempPathFor, writeAll } from '../util/fsx.js';
import { f32ToF16, f32ToF16Array } from '../util/half.js';

/** GGUF metadata value types */
export const GT = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, str: 8, arr: 9, u64: 10, i64: 11, f64: 12 } as const;
type Scalar = Exclude<keyof typeof GT, 'arr'>;
export type GgufValue = { t: Scalar; v: number | bigint | boolean | string } | { t: 'arr'; of: Scalar; v: (number | bigint | boolean | string)[] };
/** ggml tensor types this writer produces */
export const GGML = { F32: 0, F16: 1, Q8_0: 8 } as const;
export type GgmlType = keyof typeof GGML;
/** general.file_type: LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_Q8_0 */
const FILE_TYPE: Record<GgmlType, number> = { F32: 0, F16: 1, Q8_0: 7 };
const ALIGN = 32;

export interface GgufTensorInfo { name: string; /** ggml order: dims[0] is the contiguous one (an HF [out, in] matrix is [in, out]) */ dims: number[]; type: number; offset: bigint }
export interface GgufHeader { version: number; metadata: Map<string, GgufValue>; tensors: GgufTensorInfo[]; dataOffset: number }

export function tensorBytes(type: GgmlType, n: number): number {
  if (type === 'Q8_0' && n % 32) throw new Error(`Q8_0 needs a multiple of 32 values per row (got ${n})`);
  return type === 'F32' ? 4 * n : type === 'F16' ? 2 * n : (n / 32) * 34;
}

/** Q8_0 as llama.cpp's reference quantizer: per 32 values, d = max|x| / 127, q = round(x / d) */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  if (x.length % 32) throw new Error(`Q8_0 needs a multiple of 32 values (got ${x.length})`);
  const out = new Uint8Array((x.length / 32) * 34), dv = new DataView(out.buffer), q = new Int8Array(out.buffer);
  for (let b = 0, o = 0; b < x.length; b += 32, o += 34) {
    let amax = 0;
    for (let i = 0; i < 32; i++) amax = Math.max(amax, Math.abs(x[b + i]!));
    const d = amax / 127, id = d ? 1 / d : 0;
    dv.setUint16(o, f32ToF16(d), true);
    for (let i = 0; i < 32; i++) { const v = x[b + i]! * id; q[o + 2 + i] = Math.sign(v) * Math.round(Math.abs(v)); }
  }
  return out;
}

function encodeTensor(type: GgmlType, data: Float32Array): Uint8Array {
  if (type === 'F32') return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (type === 'F16') { const h = f32ToF16Array(data); return new Uint8Array(h.buffer, h.byteOffset, h.byteLength); }
  return quantizeQ8_0(data);
}

class Out {
  private parts: Buffer[] = [];
  u32(v: number) { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.parts.push(b); }
  u64(v: number | bigint) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.parts.push(b); }
  str(s: string) { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.parts.push(b); }
  scalar(t: Scalar, v: number | bigint | boolean | string) {
    const b = Buffer.alloc(t === 'u64' || t === 'i64' || t === 'f64' ? 8 : t === 'u32' || t === 'i32' || t === 'f32' ? 4 : t === 'u16' || t === 'i16' ? 2 : 1);
    switch (t) {
      case 'str': return this.str(v as string);
      case 'u8': b.writeUInt8(v as number); break; case 'i8': b.writeInt8(v as number); break;
      case 'u16': b.writeUInt16LE(v as number); break; case 'i16': b.writeInt16LE(v as number); break;
      case 'u32': b.writeUInt32LE(v as number); break; case 'i32': b.writeInt32LE(v as number); break;
      case 'f32': b.writeFloatLE(v as number); break; case 'f64': b.writeDoubleLE(v as number); break;
      case 'bool': b.writeUInt8(v ? 1 : 0); break;
      case 'u64': b.writeBigUInt64LE(BigInt(v as number)); break; case 'i64': b.writeBigInt64LE(BigInt(v as number)); break;
    }
    this.parts.push(b);
  }
  bytes(): Buffer { return Buffer.concat(this.parts); }
}

export interface TensorToWrite { name: string; dims: number[]; type: GgmlType; data: () => Float32Array }

/**
 * Write a GGUF file: the metadata in order, then the tensors (each read by its `data()` only when written, so one
 * tensor at a time is in memory). Temp sibling + rename: `file` is either whole or untouched.
 */
export function writeGguf(file: string, metadata: [string, GgufValue][], tensors: TensorToWrite[]): void {
  const h = new Out();
  h.u32(0x46554747); h.u32(3); h.u64(tensors.length); h.u64(metadata.length + 1);
  for (const [k, val] of [...metadata, ['general.alignment', { t: 'u32', v: ALIGN }] as [string, GgufValue]]) {
    h.str(k);
    h.u32(GT[val.t]);
    if (val.t === 'arr') { h.u32(GT[val.of]); h.u64(val.v.length); for (const x of val.v) h.scalar(val.of, x); } else h.scalar(val.t, val.v);
  }
  let off = 0;
  const offsets = tensors.map((t) => { const o = off; off += Math.ceil(tensorBytes(t.type, t.dims.reduce((a, b) => a * b, 1)) / ALIGN) * ALIGN; return o; });
  tensors.forEach((t, i) => { h.str(t.name); h.u32(t.dims.length); for (const d of t.dims) h.u64(d); h.u32(GGML[t.type]); h.u64(offsets[i]!); });
  const head = h.bytes();
  const tmp = tempPathFor(file);
  const fd = fs.openSync(tmp, 'w');
  try {
    writeAll(fd, head);
    writeAll(fd, new Uint8Array((ALIGN - (head.length % ALIGN)) % ALIGN));
    tensors.forEach((t, i) => {
      const data = t.data();
      const n = t.dims.reduce((a, b) => a * b, 1);
      if (data.length !== n) throw new Error(`writeGguf: tensor ${t.name} has ${data.length} values for dims [${t.dims}]`);
      const b = encodeTensor(t.type, data);
      writeAll(fd, b);
      const end = (offsets[i + 1] ?? off) - offsets[i]!;
      if (end > b.length) writeAll(fd, new Uint8Array(end - b.length));
    });
    fs.closeSync(fd);
    fs.renameSync(tmp, file);
  } catch (e) {
    try { fs.closeSync(fd); } catch { /* closed already */ }
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** Read a GGUF file's header (metadata and tensor infos), checking it is whole: every tensor inside the file. */
export function readGgufHeader(file: string): GgufHeader {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    let buf = Buffer.alloc(0), base = 0, pos = 0;
    const need = (n: number) => {
      if (pos + n <= base + buf.length) return;
      if (pos + n > size) throw new UserError(`${file}: GGUF header runs past the end of the file (${size} bytes)`, 'the file is truncated; write it again');
      const len = Math.min(size - pos, Math.max(n, 1 << 20));
      buf = Buffer.alloc(len); fs.readSync(fd, buf, 0, len, pos); base = pos;
    };
    const rd = <T>(n: number, f: (o: number) => T): T => { need(n); const v = f(pos - base); pos += n; return v; };
    const u32 = () => rd(4, (o) => buf.readUInt32LE(o)), u64 = () => rd(8, (o) => buf.readBigUInt64LE(o));
    const str = () => { const n = Number(u64()); return rd(n, (o) => buf.toString('utf8', o, o + n)); };
    const scalar = (t: number): number | bigint | boolean | string => {
      switch (t) {
        case GT.u8: return rd(1, (o) => buf.readUInt8(o)); case GT.i8: return rd(1, (o) => buf.readInt8(o));
        case GT.u16: return rd(2, (o) => buf.readUInt16LE(o)); case GT.i16: return rd(2, (o) => buf.readInt16LE(o));
        case GT.u32: return u32(); case GT.i32: return rd(4, (o) => buf.readInt32LE(o));
        case GT.f32: return rd(4, (o) => buf.readFloatLE(o)); case GT.f64: return rd(8, (o) => buf.readDoubleLE(o));
        case GT.bool: return rd(1, (o) => buf.readUInt8(o) !== 0);
        case GT.str: return str();
        case GT.u64: return u64(); case GT.i64: return rd(8, (o) => buf.readBigInt64LE(o));
        default: throw new UserError(`${file}: unknown GGUF value type ${t}`);
      }
    };
    const name = Object.fromEntries(Object.entries(GT).map(([k, v]) => [v, k])) as Record<number, Scalar | 'arr'>;
    if (u32() !== 0x46554747) throw new UserError(`${file} is not a GGUF file (no GGUF magic)`);
    const version = u32();
    if (version !== 3) throw new UserError(`${file}: GGUF version ${version}; this reader reads version 3`);
    const nt = Number(u64()), nk = Number(u64());
    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < nk; i++) {
      const k = str(), t = u32();
      if (t === GT.arr) {
        const of = u32(), n = Number(u64());
        const v = Array.from({ length: n }, () => scalar(of));
        metadata.set(k, { t: 'arr', of: name[of] as Scalar, v });
      } else metadata.set(k, { t: name[t] as Scalar, v: scalar(t) } as GgufValue);
    }
    const tensors: GgufTensorInfo[] = [];
    for (let i = 0; i < nt; i++) {
      const nm = str(), nd = u32();
      const dims = Array.from({ length: nd }, () => Number(u64()));
      tensors.push({ name: nm, dims, type: u32(), offset: u64() });
    }
    const al = metadata.get('general.alignment');
    const align = al && al.t === 'u32' ? (al.v as number) : ALIGN;
    const dataOffset = Math.ceil(pos / align) * align;
    const typeName = Object.fromEntries(Object.entries(GGML).map(([k, v]) => [v, k])) as Record<number, GgmlType>;
    for (const t of tensors) {
      const ty = typeName[t.type];
      if (ty && dataOffset + Number(t.offset) + tensorBytes(ty, t.dims.reduce((a, b) => a * b, 1)) > size)
        throw new UserError(`${file}: tensor ${t.name} runs past the end of the file`, 'the file is truncated; write it again');
    }
    return { version, metadata, tensors, dataOffset };
  } finally { fs.closeSync(fd); }
}

/** row permutation of q / k (llama.cpp's converter): per head, row 2i + j <- row j * hd/2 + i */
export function permuteRope(w: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const hd = rows / heads, half = hd / 2, out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) out.set(w.subarray((h * hd + j * half + i) * cols, (h * hd + j * half + i + 1) * cols), (h * hd + 2 * i + j) * cols);
  return out;
}

interface HfTokenizer {
  added_tokens?: { id: number; content: string; special?: boolean }[]; pre_tokenizer?: { type?: string } | null;
  model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[] };
}

/** llama.cpp tokenizer keys: the folder's byte-level BPE tokenizer.json, or a synthetic SentencePiece-style vocabulary */
function tokenizerKeys(dir: string, c: ModelConfig): [string, GgufValue][] {
  const file = path.join(dir, 'tokenizer.json');
  const ids: [string, GgufValue][] = [
    ...(c.bosTokenId !== null ? [['tokenizer.ggml.bos_token_id', { t: 'u32', v: c.bosTokenId }] as [string, GgufValue]] : []),
    ...(c.eosTokenId !== null ? [['tokenizer.ggml.eos_token_id', { t: 'u32', v: c.eosTokenId }] as [string, GgufValue]] : []),
    ['tokenizer.ggml.add_bos_token', { t: 'bool', v: false }],
  ];
  if (!fs.existsSync(file)) {
    // <unk> <s> </s>, the 256 byte tokens, then placeholders: llama.cpp's SentencePiece vocabulary needs nothing more
    const tokens = Array.from({ length: c.vocabSize }, (_, i) => i < 3 ? ['<unk>', '<s>', '</s>'][i]! : i < 259 ? `<0x${(i - 3).toString(16).toUpperCase().padStart(2, '0')}>` : `\u2581t${i}`);
    return [['tokenizer.ggml.model', { t: 'str', v: 'llama' }], ['tokenizer.ggml.tokens', { t: 'arr', of: 'str', v: tokens }],
      ['tokenizer.ggml.scores', { t: 'arr', of: 'f32', v: tokens.map((_, i) => -i) }],
      ['tokenizer.ggml.token_type', { t: 'arr', of: 'i32', v: tokens.map((_, i) => i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1) }],
      ['tokenizer.ggml.unknown_token_id', { t: 'u32', v: 0 }], ...ids];
  }
  const tj = JSON.parse(fs.readFileSync(file, 'utf8')) as HfTokenizer;
  if (tj.model?.type !== 'BPE' || tj.pre_tokenizer?.type !== 'ByteLevel')
    throw new UserError(`${file}: a ${tj.model?.type ?? 'unknown'} tokenizer with a ${tj.pre_tokenizer?.type ?? 'missing'} pre-tokenizer`, 'this GGUF writer converts byte-level BPE tokenizers only (or none: remove tokenizer.json for a synthetic vocabulary)');
  const tokens: string[] = new Array(c.vocabSize).fill('');
  const types: number[] = new Array(c.vocabSize).fill(1);
  for (const [s, id] of Object.entries(tj.model.vocab ?? {})) if (id < c.vocabSize) tokens[id] = s;
  for (const a of tj.added_tokens ?? []) if (a.id < c.vocabSize) { tokens[a.id] = a.content; types[a.id] = a.special ? 3 : 4; }
  tokens.forEach((t, i) => { if (!t) { tokens[i] = `[PAD${i}]`; types[i] = 5; } });
  const merges = (tj.model.merges ?? []).map((m) => typeof m === 'string' ? m : m.join(' '));
  return [['tokenizer.ggml.model', { t: 'str', v: 'gpt2' }], ['tokenizer.ggml.pre', { t: 'str', v: 'gpt-2' }],
    ['tokenizer.ggml.tokens', { t: 'arr', of: 'str', v: tokens }], ['tokenizer.ggml.token_type', { t: 'arr', of: 'i32', v: types }],
    ['tokenizer.ggml.merges', { t: 'arr', of: 'str', v: merges }], ...ids];
}

/**
 * Convert a Llama checkpoint folder to `out` (a GGUF of ggml type `type` for the matrices; norms stay F32, as the
 * converter keeps 1-D tensors). Refuses what the llama architecture of llama.cpp would compute differently.
 * Returns the file's size.
 */
export function writeLlamaGguf(dir: string, out: string, type: GgmlType): number {
  const ck = openCheckpoint(dir);
  const c = normalizeConfig(ck.rawConfig, path.join(dir, 'config.json'));
  const odd = [c.family !== 'llama' && `family ${c.family}`, c.attnBias && 'attention biases', c.mlpBias && 'MLP biases', c.ropeScaling && c.ropeScaling.type !== 'default' && `rope scaling ${c.ropeScaling.type}`,
    c.ropeDim !== c.headDim && 'partial rotary', c.act !== 'silu' && `activation ${c.act}`].filter(Boolean);
  if (odd.length) throw new UserError(`${dir}: not convertible to llama.cpp's llama architecture (${odd.join(', ')})`, 'bench:decode compares llama.cpp on plain Llama checkpoints only');
  const md: [string, GgufValue][] = [
    ['general.architecture', { t: 'str', v: 'llama' }], ['general.name', { t: 'str', v: path.basename(path.resolve(dir)) }],
    ['general.file_type', { t: 'u32', v: FILE_TYPE[type] }],
    ['llama.context_length', { t: 'u32', v: c.maxPositions }], ['llama.embedding_length', { t: 'u32', v: c.hidden }],
    ['llama.block_count', { t: 'u32', v: c.layers }], ['llama.feed_forward_length', { t: 'u32', v: c.ffn }],
    ['llama.attention.head_count', { t: 'u32', v: c.heads }], ['llama.attention.head_count_kv', { t: 'u32', v: c.kvHeads }],
    ['llama.attention.key_length', { t: 'u32', v: c.headDim }], ['llama.attention.value_length', { t: 'u32', v: c.headDim }],
    ['llama.rope.dimension_count', { t: 'u32', v: c.headDim }], ['llama.rope.freq_base', { t: 'f32', v: c.ropeTheta }],
    ['llama.attention.layer_norm_rms_epsilon', { t: 'f32', v: c.normEps }], ['llama.vocab_size', { t: 'u32', v: c.vocabSize }],
    ...tokenizerKeys(dir, c),
  ];
  const hf = (k: string) => () => ck.read(k);
  const mat = (name: string, key: string, rows: number, cols: number, perm?: number): TensorToWrite =>
    ({ name, dims: [cols, rows], type, data: perm ? () => permuteRope(ck.read(key), rows, cols, perm) : hf(key) });
  const vec = (name: string, key: string): TensorToWrite => ({ name, dims: [c.hidden], type: 'F32', data: hf(key) });
  const q = c.heads * c.headDim, kv = c.kvHeads * c.headDim;
  const tensors: TensorToWrite[] = [mat('token_embd.weight', 'model.embed_tokens.weight', c.vocabSize, c.hidden), vec('output_norm.weight', 'model.norm.weight'),
    ...(c.tiedLmHead ? [] : [mat('output.weight', 'lm_head.weight', c.vocabSize, c.hidden)])];
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}.`, b = `blk.${i}.`;
    tensors.push(vec(`${b}attn_norm.weight`, `${p}input_layernorm.weight`), mat(`${b}attn_q.weight`, `${p}self_attn.q_proj.weight`, q, c.hidden, c.heads),
      mat(`${b}attn_k.weight`, `${p}self_attn.k_proj.weight`, kv, c.hidden, c.kvHeads), mat(`${b}attn_v.weight`, `${p}self_attn.v_proj.weight`, kv, c.hidden),
      mat(`${b}attn_output.weight`, `${p}self_attn.o_proj.weight`, c.hidden, q), vec(`${b}ffn_norm.weight`, `${p}post_attention_layernorm.weight`),
      mat(`${b}ffn_gate.weight`, `${p}mlp.gate_proj.weight`, c.ffn, c.hidden), mat(`${b}ffn_up.weight`, `${p}mlp.up_proj.weight`, c.ffn, c.hidden),
      mat(`${b}ffn_down.weight`, `${p}mlp.down_proj.weight`, c.hidden, c.ffn));
  }
  writeGguf(out, md, tensors);
  return fs.statSync(out).size;
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const [dir, out, type = 'F16'] = process.argv.slice(2);
  if (!dir || !out || !(type in GGML)) { console.error('usage: node dist/bench/gguf.js CHECKPOINT_DIR OUT.gguf [F32|F16|Q8_0]'); process.exit(2); }
  const t = Date.now();
  const bytes = writeLlamaGguf(dir, out, type as GgmlType);
  console.log(`${out}: ${type}, ${(bytes / 1e9).toFixed(2)} GB, ${((Date.now() - t) / 1000).toFixed(1)} s`);
}
