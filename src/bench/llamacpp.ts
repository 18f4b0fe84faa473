/**
 * llama.cpp beside the dejavu decode runtime (bench:decode, docs/llama-cpp.md), on a GGUF written by src/bench/gguf.ts,
 * through the prebuilt CPU build that node-llama-cpp ships (a devDependency, pinned), in two ways:
 *   'capi':  llama.cpp's C API called directly (koffi, the shipped libllama), with a persistent ggml thread pool
 *            attached to the context, as llama.cpp's own tools (llama-bench, llama-cli) run: no thread start per token;
 *   'node':  node-llama-cpp's own API (a context sequence's evaluate), what a Node user of llama.cpp gets.
 * Each measurement runs in a child process of its own (this file's CLI), so llama.cpp's threads and memory never
 * share the benchmark's process, and its load time (model + context) is measured from a cold start of the library.
 *   node dist/bench/llamacpp.js capi|node FILE.gguf --threads N --steps S [--prompt 1,2,3] [--greedy N] [--poll P]
 * prints one JSON line: { loadMs, tokensPerSecond, steps, greedy? }. `--greedy N`: the N greedy tokens after the
 * prompt (argmax of the logits) instead of a timed run of fixed tokens.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export type Via = 'capi' | 'node';
export interface LlamaRun { loadMs: number; tokensPerSecond: number; steps: number; greedy?: number[] }
/** poll: the thread pool's busy-wait level (0-100; llama.cpp's default 50); C API only */
export interface LlamaOptions { threads: number; steps: number; prompt: number[]; greedy?: number | undefined; poll?: number | undefined }

/** the folder of node-llama-cpp's prebuilt binaries for this platform (libllama, the ggml CPU variants) */
export function llamaBinDir(): string {
  const plat = `${process.platform}-${process.arch}`;
  const req = createRequire(import.meta.url);
  let pkg: string;
  try { pkg = path.dirname(path.dirname(req.resolve(`@node-llama-cpp/${plat}`))); } catch {
    throw new Error(`no prebuilt llama.cpp for ${plat}: node-llama-cpp's optional package @node-llama-cpp/${plat} is not installed (npm ci installs it on linux-x64)`);
  }
  return path.join(pkg, 'bins', plat);
}

/** why llama.cpp cannot run here, or null when it can (the prebuilt binaries and koffi are installed) */
export function llamaUnavailable(): string | null {
  try {
    const dir = llamaBinDir();
    if (!fs.readdirSync(dir).some((f) => /^libllama\..*so$/.test(f))) return `no libllama in ${dir}`;
    createRequire(import.meta.url).resolve('koffi');
    return null;
  } catch (e) { return (e as Error).message; }
}

/** one measurement in a fresh child process (throws with the child's stderr when it fails) */
export function runLlama(via: Via, file: string, o: LlamaOptions): LlamaRun {
  // this file's CLI, as built (the tests import src/ and run dist/, built by their global setup)
  const script = fileURLToPath(import.meta.url).replace(/([\\/])src([\\/]bench[\\/]llamacpp)\.ts$/, '$1dist$2.js');
  const args = [script, via, file, '--threads', String(o.threads), '--steps', String(o.steps), '--prompt', o.prompt.join(','),
    ...(o.greedy ? ['--greedy', String(o.greedy)] : []), ...(o.poll !== undefined ? ['--poll', String(o.poll)] : [])];
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  const line = r.stdout?.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !line.startsWith('{')) throw new Error(`llama.cpp (${via}) failed on ${file} (exit ${r.status ?? r.signal}):\n${(r.stderr ?? '').split('\n').slice(-15).join('\n')}`);
  const out = JSON.parse(line) as LlamaRun;
  if (!(out.loadMs >= 0) || (o.greedy ? out.greedy?.length !== o.greedy : !(out.tokensPerSecond > 0) || !Number.isFinite(out.tokensPerSecond))) throw new Error(`llama.cpp (${via}) on ${file}: a rate that cannot be right: ${line}`);
  return out;
}

const argmax = (x: Float32Array) => { let b = 0; for (let i = 1; i < x.length; i++) if (x[i]! > x[b]!) b = i; return b; };

/** the C API with a persistent thread pool */
async function viaCapi(file: string, o: LlamaOptions): Promise<LlamaRun> {
  const t0 = performance.now();
  const koffi = (await import('koffi')).default;
  const dir = llamaBinDir();
  const so = (re: RegExp) => { const f = fs.readdirSync(dir).find((x) => re.test(x)); if (!f) throw new Error(`no ${re} in ${dir}`); return path.join(dir, f); };
  const base = koffi.load(so(/^libggml-base\.so$/)), ggml = koffi.load(so(/^libggml\.v.*\.so$/)), lib = koffi.load(so(/^libllama\.v.*\.so$/));
  // the structs as include/llama.h of this llama.cpp release declares them (checked below against known defaults)
  const ModelParams = koffi.struct('llama_model_params', {
    devices: 'void *', tensor_buft_overrides: 'void *', n_gpu_layers: 'int32', split_mode: 'int32', load_mode: 'int32', lazy_mode: 'int32', main_gpu: 'int32',
    tensor_split: 'void *', progress_callback: 'void *', progress_callback_user_data: 'void *', kv_overrides: 'void *',
    vocab_only: 'bool', check_tensors: 'bool', use_extra_bufts: 'bool', no_host: 'bool', no_alloc: 'bool', load_mtp: 'bool',
  });
  const CtxParams = koffi.struct('llama_context_params', {
    n_ctx: 'uint32', n_batch: 'uint32', n_ubatch: 'uint32', n_seq_max: 'uint32', n_rs_seq: 'uint32', n_outputs_max: 'uint32', n_outputs_max_per_seq: 'uint32',
    n_threads: 'int32', n_threads_batch: 'int32', ctx_type: 'int32', rope_scaling_type: 'int32', pooling_type: 'int32', attention_type: 'int32', flash_attn_type: 'int32',
    rope_freq_base: 'float', rope_freq_scale: 'float', yarn_ext_factor: 'float', yarn_attn_factor: 'float', yarn_beta_fast: 'float', yarn_beta_slow: 'float',
    yarn_orig_ctx: 'uint32', defrag_thold: 'float', cb_eval: 'void *', cb_eval_user_data: 'void *', type_k: 'int32', type_v: 'int32',
    abort_callback: 'void *', abort_callback_data: 'void *', embeddings: 'bool', offload_kqv: 'bool', no_perf: 'bool', op_offload: 'bool', swa_full: 'bool', kv_unified: 'bool',
    samplers: 'void *', n_samplers: 'size_t', ctx_other: 'void *',
  });
  const Batch = koffi.struct('llama_batch', { n_tokens: 'int32', token: 'void *', embd: 'void *', pos: 'void *', n_seq_id: 'void *', seq_id: 'void *', logits: 'void *' });
  const f = {
    loadAll: ggml.func('void ggml_backend_load_all_from_path(const char *dir)'),
    devByType: ggml.func('void *ggml_backend_dev_by_type(int type)'),
    devReg: base.func('void *ggml_backend_dev_backend_reg(void *dev)'),
    procAddress: base.func('void *ggml_backend_reg_get_proc_address(void *reg, const char *name)'),
    tppInit: base.func('void ggml_threadpool_params_init(void *p, int n_threads)'),
    backendInit: lib.func('void llama_backend_init()'),
    modelDefaults: lib.func('llama_model_default_params', ModelParams, []),
    ctxDefaults: lib.func('llama_context_default_params', CtxParams, []),
    loadModel: lib.func('llama_model_load_from_file', 'void *', ['const char *', ModelParams]),
    initCtx: lib.func('llama_init_from_model', 'void *', ['void *', CtxParams]),
    attach: lib.func('void llama_attach_threadpool(void *ctx, void *tp, void *tpBatch)'),
    decode: lib.func('llama_decode', 'int32', ['void *', Batch]),
    sync: lib.func('void llama_synchronize(void *ctx)'),
    logits: lib.func('float *llama_get_logits_ith(void *ctx, int32 i)'),
    vocab: lib.func('void *llama_model_get_vocab(void *model)'),
    nVocab: lib.func('int32 llama_vocab_n_tokens(void *vocab)'),
    freeCtx: lib.func('void llama_free(void *ctx)'),
    freeModel: lib.func('void llama_model_free(void *model)'),
  };
  // llama.cpp logs to stderr (runLlama keeps it, and shows its end on a failure): a JS log callback could be called
  // from ggml's worker threads, which koffi cannot serve while the main thread waits in llama_decode
  f.loadAll(dir);
  f.backendInit();
  const cpu = f.devByType(0); // GGML_BACKEND_DEVICE_TYPE_CPU
  if (!cpu) throw new Error(`llama.cpp: no CPU backend loaded from ${dir}`);
  const reg = f.devReg(cpu);
  const tpNew = koffi.decode(f.procAddress(reg, 'ggml_threadpool_new'), koffi.proto('void *ggml_threadpool_new_t(void *params)'));
  const tpFree = koffi.decode(f.procAddress(reg, 'ggml_threadpool_free'), koffi.proto('void ggml_threadpool_free_t(void *tp)'));
  const mp = f.modelDefaults();
  const model = f.loadModel(file, mp);
  if (!model) throw new Error(`llama.cpp could not load ${file}`);
  const cp = f.ctxDefaults();
  if (cp.n_ubatch !== 512 || cp.n_seq_max !== 1 || cp.type_k !== 1 || cp.type_v !== 1 || cp.yarn_ext_factor !== -1)
    throw new Error(`llama_context_params does not have the layout this file declares (defaults read: ${JSON.stringify({ n_ubatch: cp.n_ubatch, n_seq_max: cp.n_seq_max, type_k: cp.type_k })})`);
  const nCtx = o.prompt.length + Math.max(o.steps, o.greedy ?? 0) + 16;
  Object.assign(cp, { n_ctx: nCtx, n_batch: Math.max(o.prompt.length, 1), n_ubatch: Math.max(o.prompt.length, 1), n_threads: o.threads, n_threads_batch: o.threads, no_perf: true });
  const ctx = f.initCtx(model, cp);
  if (!ctx) throw new Error('llama.cpp could not create a context');
  // struct ggml_threadpool_params: bool cpumask[512], int n_threads, int prio, uint32 poll, bool strict_cpu, bool paused
  const tpp = koffi.alloc('uint8', 1024);
  f.tppInit(tpp, o.threads);
  const tv = new DataView(koffi.view(tpp, 528));
  if (tv.getInt32(512, true) !== o.threads || tv.getUint32(520, true) !== 50) throw new Error('ggml_threadpool_params does not have the layout this file declares');
  if (o.poll !== undefined) tv.setUint32(520, o.poll, true);
  const tp = tpNew(tpp);
  if (!tp) throw new Error(`llama.cpp: could not create a thread pool of ${o.threads}`);
  f.attach(ctx, tp, tp);
  const nv = f.nVocab(f.vocab(model));
  const buf = koffi.alloc('int32', Math.max(o.prompt.length, 1));
  const ids = new Int32Array(koffi.view(buf, 4 * Math.max(o.prompt.length, 1)));
  const step = (tokens: number[]) => {
    ids.set(tokens);
    const rc = f.decode(ctx, { n_tokens: tokens.length, token: buf, embd: null, pos: null, n_seq_id: null, seq_id: null, logits: null });
    if (rc !== 0) throw new Error(`llama_decode returned ${rc}`);
    f.sync(ctx);
    return f.logits(ctx, -1);
  };
  const loadMs = performance.now() - t0;
  try {
    let last = step(o.prompt);
    if (o.greedy) {
      const out: number[] = [];
      for (let i = 0; i < o.greedy; i++) { out.push(argmax(new Float32Array(koffi.view(last, 4 * nv)))); last = step([out[i]!]); }
      return { loadMs, tokensPerSecond: 0, steps: 0, greedy: out };
    }
    const t = performance.now();
    for (let i = 0; i < o.steps; i++) last = step([7 + (i % 50)]);
    if (!last) throw new Error('llama.cpp returned no logits');
    return { loadMs, tokensPerSecond: o.steps / ((performance.now() - t) / 1000), steps: o.steps };
  } finally { f.freeCtx(ctx); tpFree(tp); f.freeModel(model); koffi.free(tpp); koffi.free(buf); }
}

/** node-llama-cpp's API: a context sequence's evaluate (greedy sampling by node-llama-cpp) */
async function viaNode(file: string, o: LlamaOptions): Promise<LlamaRun> {
  const { getLlama } = await import('node-llama-cpp');
  const t0 = performance.now();
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' as never, progressLogs: false });
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: o.prompt.length + Math.max(o.steps, o.greedy ?? 0) + 16, threads: o.threads, batchSize: Math.max(o.prompt.length, 1), sequences: 1 });
  const loadMs = performance.now() - t0;
  try {
    const seq = ctx.getSequence();
    const out: number[] = [];
    const want = o.greedy ?? o.steps + 1;
    let t = 0;
    for await (const tok of seq.evaluate(o.prompt as never[], { temperature: 0 })) {
      if (!out.length) t = performance.now();
      out.push(tok as unknown as number);
      if (out.length >= want) break;
    }
    if (o.greedy) return { loadMs, tokensPerSecond: 0, steps: 0, greedy: out };
    return { loadMs, tokensPerSecond: o.steps / ((performance.now() - t) / 1000), steps: o.steps };
  } finally { await ctx.dispose(); await model.dispose(); await llama.dispose(); }
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(fileURLToPath(import.meta.url))) {
  const a = process.argv.slice(2);
  const opt = (k: string) => { const i = a.indexOf(`--${k}`); return i < 0 ? undefined : a[i + 1]; };
  const [via, file] = a;
  if ((via !== 'capi' && via !== 'node') || !file) { console.error('usage: node dist/bench/llamacpp.js capi|node FILE.gguf --threads N --steps S [--prompt 1,2,3] [--greedy N]'); process.exit(2); }
  const o: LlamaOptions = { threads: Number(opt('threads') ?? 1), steps: Number(opt('steps') ?? 128), prompt: (opt('prompt') ?? '1').split(',').map(Number), greedy: opt('greedy') ? Number(opt('greedy')) : undefined,
    poll: opt('poll') !== undefined ? Number(opt('poll')) : undefined };
  const r = await (via === 'capi' ? viaCapi(file, o) : viaNode(file, o));
  console.log(JSON.stringify(r));
  process.exit(0);
}
