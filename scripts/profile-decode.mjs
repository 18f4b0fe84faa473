// Where a decode step's time goes: a V8 CPU profile (node:inspector) of 24 steps only (not the load), self time by
// function (wasm-function[N] = the N-th function of kernels.wat's binary). DIR: a checkpoint, e.g. the TinyLlama-width
// one scripts/decode-speed.mjs writes. Sparse = 10% MLP neurons / 50% heads, as in decode-speed.mjs.
//   npx tsc -p tsconfig.json && node scripts/profile-decode.mjs /tmp/dejavu-tinyllama8 q8_0 1 dense
import { Session } from 'node:inspector/promises';
import { ensureBackend } from '../dist/backend.js';
import { loadModel } from '../dist/model/model.js';
import { DecodeSession, denseModes } from '../dist/runtime/decoder.js';
await ensureBackend('wasm');
const [dir, dtype = 'q8_0', threads = '1', which = 'dense'] = process.argv.slice(2), sparse = which === 'sparse';
if (!dir) { console.error('usage: node scripts/profile-decode.mjs DIR [dtype] [threads] [dense|sparse]'); process.exit(2); }
const model = loadModel(dir, { forward: false, decode: { dtype, threads: Number(threads) } });
const c = model.config;
let s = 99; const rnd = () => { s = (s * 1103515245 + 12345) & 0x7fffffff; return s / 0x7fffffff; };
const pickK = (n, k) => { const a = Int32Array.from({ length: n }, (_, i) => i); for (let i = 0; i < k; i++) { const j = i + Math.floor(rnd() * (n - i)); [a[i], a[j]] = [a[j], a[i]]; } return a.slice(0, k).sort(); };
const modes = sparse ? { mlp: Array.from({ length: c.layers }, () => { const ids = pickK(c.ffn, Math.round(0.1 * c.ffn)); return { mode: 'select', pick: () => ids }; }),
    heads: Array.from({ length: c.layers }, () => { const ids = pickK(c.heads, c.heads / 2); return { mode: 'select', pick: () => ids }; }) } : denseModes(c.layers);
const x = new DecodeSession(model, modes, 1); for (let t = 0; t < 16; t++) x.step([(t * 7 + 3) % c.vocabSize]);
const ses = new Session(); ses.connect(); await ses.post('Profiler.enable'); await ses.post('Profiler.setSamplingInterval', { interval: 200 }); await ses.post('Profiler.start');
const t = performance.now(); for (let k = 0; k < 24; k++) x.step([(k * 13 + 5) % c.vocabSize]); const ms = (performance.now() - t) / 24;
const { profile } = await ses.post('Profiler.stop');
console.log(sparse ? 'sparse' : 'dense', ms.toFixed(1), 'ms/token');
const self = new Map(); const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const dt = profile.timeDeltas; const counts = new Map();
profile.samples.forEach((id, i) => counts.set(id, (counts.get(id) ?? 0) + (dt[i] ?? 0)));
for (const [id, us] of counts) { const n = byId.get(id); const k = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber}`; self.set(k, (self.get(k) ?? 0) + us); }
const tot = [...self.values()].reduce((a, b) => a + b, 0);
for (const [k, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 18)) console.log((100 * us / tot).toFixed(1).padStart(5), '%', k);
x.dispose(); model.dispose();
