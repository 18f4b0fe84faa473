/**
 * The GPU decode runtime's copy of a model's weights: every matrix float16, packed two per u32, as rows laid out so
 * that a sparse step reads only what it keeps (the same layouts as src/model/decode-weights.ts, with q / k / v
 * fused):
 *   qkv   [(H + 2 KV) hd, d]  matvec over the rows of the selected heads' q and every kv head's k and v
 *   o     [d, H hd]           matvec over the columns of the selected heads (the residual added in place)
 *   up, gate [F, d]           matvec over the selected neurons' rows
 *   down  [F, d]              axpy over the selected / nonzero neurons' rows
 *   embed [V, d]              the token's row; the tied LM head's rows
 * Norms and biases are float32. From a loaded model (its float32 weights rounded to float16: exact for a float16
 * checkpoint) or random on the GPU (benchmarks).
 */
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from '../../model/config.js';
import type { Model } from '../../model/model.js';
import { f32ToF16Array } from '../../util/half.js';
import { transpose2d } from '../../util/transpose.js';
import { UserError } from '../../util/errors.js';
import type { Gpu } from './device.js';
import { fillWgsl, rowNormWgsl, transposeWgsl } from './kernels.js';

export interface GpuLayerWeights {
  ln1g: GPUBuffer; ln1b?: GPUBuffer | undefined; ln2g: GPUBuffer; ln2b?: GPUBuffer | undefined;
  qkv: GPUBuffer; qkvBias?: GPUBuffer | undefined; o: GPUBuffer; oBias?: GPUBuffer | undefined;
  up: GPUBuffer; upBias?: GPUBuffer | undefined; gate?: GPUBuffer | undefined; gateBias?: GPUBuffer | undefined; down: GPUBuffer; downBias?: GPUBuffer | undefined;
}

export interface GpuWeights {
  config: ModelConfig;
  layers: GpuLayerWeights[];
  embed: GPUBuffer;
  pos?: GPUBuffer | undefined;
  /** the embedding buffer itself when tied */
  lmHead: GPUBuffer;
  finalG?: GPUBuffer | undefined; finalB?: GPUBuffer | undefined;
  /** bytes of float16 matrices */
  bytes: number;
  /** what sessions derived from the weights (input-major copies, WINA norms: gpuDerived), freed with them */
  derived: Map<string, GPUBuffer>;
  dispose(): void;
}

/**
 * A buffer derived from the weights once and kept with them (`key` names it): the input-major copy of layer i's
 * qkv / o / up (`${i}.qkvT` ...: [cols, rows] of the stored [rows, cols], transposed on the GPU), or the row norms
 * of such an input-major matrix (`${i}.qkvT.norm`, `${i}.down.norm`: WINA's ‖W[:, i]‖).
 */
export function gpuDerived(gpu: Gpu, w: GpuWeights, i: number, what: 'qkvT' | 'oT' | 'upT' | 'qkvT.norm' | 'oT.norm' | 'upT.norm' | 'down.norm'): GPUBuffer {
  const key = `${i}.${what}`;
  const got = w.derived.get(key);
  if (got) return got;
  const c = w.config, L = w.layers[i]!, dev = gpu.device;
  const shapes = { qkvT: [L.qkv, (c.heads + 2 * c.kvHeads) * c.headDim, c.hidden], oT: [L.o, c.hidden, c.heads * c.headDim], upT: [L.up, c.ffn, c.hidden] } as const;
  let out: GPUBuffer;
  const enc = dev.createCommandEncoder(), pass = enc.beginComputePass();
  const go = (code: string, src: GPUBuffer, dst: GPUBuffer, x: number, y = 1) => {
    const p = dev.createComputePipeline({ layout: 'auto', compute: { module: dev.createShaderModule({ code }), entryPoint: 'main' } });
    pass.setPipeline(p);
    pass.setBindGroup(0, dev.createBindGroup({ layout: p.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: dst } }] }));
    pass.dispatchWorkgroups(x, y);
  };
  if (what === 'qkvT' || what === 'oT' || what === 'upT') {
    const [src, rows, cols] = shapes[what];
    out = gpuEmpty(gpu, rows * cols * 2, key);
    go(transposeWgsl(rows, cols), src, out, Math.min(4096, Math.ceil((rows * cols) / 2 / 256)));
  } else {
    const m = what === 'down.norm' ? 'down' : (what.slice(0, -5) as 'qkvT' | 'oT' | 'upT');
    const src = m === 'down' ? L.down : gpuDerived(gpu, w, i, m);
    const [rows, cols] = m === 'down' ? [c.ffn, c.hidden] : [shapes[m][2], shapes[m][1]];
    out = gpuEmpty(gpu, 4 * rows, key);
    go(rowNormWgsl(rows, cols), src, out, Math.min(rows, 65535), Math.ceil(rows / 65535));
  }
  pass.end();
  dev.queue.submit([enc.finish()]);
  w.derived.set(key, out);
  return out;
}

/** What the GPU runtime does not run of this model (empty: it runs it). */
export function gpuUnsupported(c: ModelConfig): string[] {
  const p: string[] = [];
  if (!c.preNorm) p.push('post-norm layers (do_layer_norm_before: false)');
  if (c.block !== 'sequential') p.push('parallel attention / MLP blocks');
  if (c.sandwichNorm) p.push('sandwich norms (Gemma 2)');
  if (c.qkNorm) p.push('per-head q / k norms (Qwen 3)');
  if (c.positions === 'alibi') p.push('ALiBi positions');
  if (c.attnSoftcap !== null || c.finalSoftcap !== null) p.push('softcapping');
  if (c.windows.some((w) => w !== null)) p.push('sliding-window attention');
  if (c.embedNorm) p.push('a norm after the embedding (BLOOM)');
  if (c.embedProjDim !== null) p.push('OPT project_in / project_out (word_embed_proj_dim != hidden_size)');
  for (const [n, v] of [['hidden_size', c.hidden], ['the FFN width', c.ffn], ['head_dim', c.headDim]] as const) if (v % 8) p.push(`${n} ${v} not a multiple of 8`);
  if (c.heads % c.kvHeads) p.push(`${c.heads} heads not a multiple of ${c.kvHeads} kv heads`);
  return p;
}

export function assertGpuSupported(c: ModelConfig): void {
  const p = gpuUnsupported(c);
  if (p.length) throw new UserError(`the GPU decode runtime does not run this ${c.family} model: it has ${p.join('; ')}`, 'decode it on the CPU (the default runtime)');
}

/** float32 values rounded to float16, packed two per u32 (little-endian: element 2j in the low half) */
export function packF16(x: Float32Array): Uint32Array {
  if (x.length % 2) throw new Error(`packF16: odd length ${x.length}`);
  const h = f32ToF16Array(x);
  return new Uint32Array(h.buffer, h.byteOffset, h.length / 2);
}

const STORAGE = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/** a storage buffer holding `data` (sizes rounded up to 16 bytes) */
export function gpuBuffer(gpu: Gpu, data: Float32Array | Uint32Array, label: string): GPUBuffer {
  const buf = gpu.device.createBuffer({ label, size: Math.max(16, Math.ceil(data.byteLength / 16) * 16), usage: STORAGE(), mappedAtCreation: true });
  new Uint8Array(buf.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  buf.unmap();
  return buf;
}

/** an uninitialized (zeroed) storage buffer of `bytes` */
export function gpuEmpty(gpu: Gpu, bytes: number, label: string, usage = 0): GPUBuffer {
  return gpu.device.createBuffer({ label, size: Math.max(16, Math.ceil(bytes / 16) * 16), usage: STORAGE() | usage });
}

function checkSize(gpu: Gpu, bytes: number, what: string): void {
  const max = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  if (bytes > max) throw new UserError(`the GPU decode runtime: ${what} needs a ${(bytes / 2 ** 20).toFixed(0)} MiB buffer; this adapter binds at most ${(max / 2 ** 20).toFixed(0)} MiB`, 'decode this model on the CPU');
}

/** The model's weights on the GPU (float16 matrices). Refuses (UserError) what the GPU runtime does not run. */
export function gpuWeightsFromModel(gpu: Gpu, model: Model): GpuWeights {
  const c = model.config;
  assertGpuSupported(c);
  const d = c.hidden, H = c.heads, KV = c.kvHeads, hd = c.headDim, F = c.ffn;
  const all: GPUBuffer[] = [];
  let bytes = 0;
  const read = (t: tf.Tensor) => t.dataSync() as Float32Array;
  const mat = (rows: Float32Array, label: string) => { checkSize(gpu, rows.length * 2, label); bytes += rows.length * 2; const b = gpuBuffer(gpu, packF16(rows), label); all.push(b); return b; };
  const vec = (t: tf.Tensor | undefined, label: string) => { if (!t) return undefined; const b = gpuBuffer(gpu, read(t), label); all.push(b); return b; };
  const cat = (parts: Float32Array[]) => { const o = new Float32Array(parts.reduce((a, p) => a + p.length, 0)); let k = 0; for (const p of parts) { o.set(p, k); k += p.length; } return o; };
  const layers: GpuLayerWeights[] = [];
  for (let i = 0; i < c.layers; i++) {
    const { w, release } = model.layer(i);
    try {
      const L = `layers.${i}`;
      const qkv = cat([transpose2d(read(w.wq), d, H * hd), transpose2d(read(w.wk), d, KV * hd), transpose2d(read(w.wv), d, KV * hd)]);
      const qkvBias = w.bq ? gpuBuffer(gpu, cat([read(w.bq), read(w.bk!), read(w.bv!)]), `${L}.bqkv`) : undefined;
      if (qkvBias) all.push(qkvBias);
      const ln2 = w.ln2 ?? w.ln1;
      layers.push({
        ln1g: vec(w.ln1.g, `${L}.ln1.g`)!, ln1b: vec(w.ln1.b, `${L}.ln1.b`), ln2g: vec(ln2.g, `${L}.ln2.g`)!, ln2b: vec(ln2.b, `${L}.ln2.b`),
        qkv: mat(qkv, `${L}.qkv`), qkvBias, o: mat(transpose2d(read(w.wo), H * hd, d), `${L}.o`), oBias: vec(w.bo, `${L}.bo`),
        up: mat(transpose2d(read(w.up), d, F), `${L}.up`), upBias: vec(w.upBias, `${L}.upBias`),
        gate: w.gate ? mat(transpose2d(read(w.gate), d, F), `${L}.gate`) : undefined, gateBias: vec(w.gateBias, `${L}.gateBias`),
        down: mat(read(w.down), `${L}.down`), downBias: vec(w.downBias, `${L}.downBias`),
      });
    } finally { release(); }
  }
  const V = c.vocabSize;
  const embed = mat(read(model.embed), 'embed');
  const lmHead = c.tiedLmHead ? embed : mat(transpose2d(read(model.lmHead), d, V), 'lmHead');
  const derived = new Map<string, GPUBuffer>();
  return {
    config: c, layers, embed, lmHead, bytes, derived,
    pos: model.pos ? mat(read(model.pos), 'pos') : undefined,
    finalG: vec(model.finalNorm?.g, 'finalNorm.g'), finalB: vec(model.finalNorm?.b, 'finalNorm.b'),
    dispose: () => { for (const b of [...all, ...derived.values()]) b.destroy(); derived.clear(); },
  };
}

/**
 * Random float16 weights filled on the GPU (benchmarks at widths whose checkpoint would take minutes to write and
 * read): uniform, scaled like src/bench/opt-checkpoint.ts (up 1/sqrt(d), down 1/sqrt(ffn), others 0.02), norms
 * g = 1, b = 0, no biases.
 */
export async function randomGpuWeights(gpu: Gpu, c: ModelConfig, seed = 1): Promise<GpuWeights> {
  assertGpuSupported(c);
  const dev = gpu.device, d = c.hidden, H = c.heads, KV = c.kvHeads, hd = c.headDim, F = c.ffn, V = c.vocabSize;
  const all: GPUBuffer[] = [];
  const module = dev.createShaderModule({ code: fillWgsl() });
  const pipe = dev.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
  let bytes = 0, k = seed;
  const enc = dev.createCommandEncoder();
  const uniforms: GPUBuffer[] = [];
  const mat = (n: number, cols: number, scale: number, label: string) => {
    checkSize(gpu, n * cols * 2, label);
    const b = gpuEmpty(gpu, n * cols * 2, label);
    const u = dev.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    const p = new ArrayBuffer(16);
    new Uint32Array(p, 0, 2).set([(n * cols) / 2, (k++ * 2654435761) >>> 0]);
    new Float32Array(p, 8, 1)[0] = scale;
    dev.queue.writeBuffer(u, 0, p);
    const pass = enc.beginComputePass();
    pass.setPipeline(pipe);
    pass.setBindGroup(0, dev.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: b } }, { binding: 1, resource: { buffer: u } }] }));
    pass.dispatchWorkgroups(Math.min(4096, Math.ceil((n * cols) / 2 / 256)));
    pass.end();
    all.push(b); uniforms.push(u); bytes += n * cols * 2;
    return b;
  };
  const ones = new Float32Array(d).fill(1);
  const vec = (x: Float32Array, label: string) => { const b = gpuBuffer(gpu, x, label); all.push(b); return b; };
  const layers: GpuLayerWeights[] = Array.from({ length: c.layers }, (_, i) => ({
    ln1g: vec(ones, `l${i}.ln1.g`), ln1b: c.norm === 'layernorm' ? vec(new Float32Array(d), `l${i}.ln1.b`) : undefined,
    ln2g: vec(ones, `l${i}.ln2.g`), ln2b: c.norm === 'layernorm' ? vec(new Float32Array(d), `l${i}.ln2.b`) : undefined,
    qkv: mat((H + 2 * KV) * hd, d, 0.02, `l${i}.qkv`), o: mat(d, H * hd, 0.02, `l${i}.o`),
    up: mat(F, d, 1 / Math.sqrt(d), `l${i}.up`), gate: c.gated ? mat(F, d, 1 / Math.sqrt(d), `l${i}.gate`) : undefined, down: mat(F, d, 1 / Math.sqrt(F), `l${i}.down`),
  }));
  const embed = mat(V, d, 0.02, 'embed');
  const pos = c.positions === 'learned' ? mat(c.maxPositions + c.positionOffset, d, 0.02, 'pos') : undefined;
  const lmHead = c.tiedLmHead ? embed : mat(V, d, 0.02, 'lmHead');
  dev.queue.submit([enc.finish()]);
  await dev.queue.onSubmittedWorkDone();
  for (const u of uniforms) u.destroy();
  const derived = new Map<string, GPUBuffer>();
  return {
    config: c, layers, embed, pos, lmHead, bytes, derived,
    finalG: vec(ones, 'final.g'), finalB: c.norm === 'layernorm' ? vec(new Float32Array(d), 'final.b') : undefined,
    dispose: () => { for (const b of [...all, ...derived.values()]) b.destroy(); derived.clear(); },
  };
}
