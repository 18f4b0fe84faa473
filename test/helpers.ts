import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { openSafetensors, readTensorF32, readTensorInt } from '../src/checkpoint/safetensors.js';
import { runCli } from '../src/cli/program.js';

export const FIXTURES = path.join(import.meta.dirname, 'fixtures');

/** relative Frobenius error ||a - b|| / ||b|| */
export function relFrob(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) { const d = a[i]! - b[i]!; num += d * d; den += b[i]! * b[i]!; }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

export interface Reference { ids: number[][]; tensors: Map<string, { shape: number[]; data: Float32Array }> }

export function loadReference(dir: string): Reference {
  const st = openSafetensors(path.join(dir, 'reference.safetensors'));
  const info = st.tensors.get('input_ids')!;
  const flat = readTensorInt(st, 'input_ids');
  const [B, T] = info.shape as [number, number];
  const ids = Array.from({ length: B }, (_, b) => flat.slice(b * T, (b + 1) * T));
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [k, t] of st.tensors) tensors.set(k, { shape: t.shape, data: readTensorF32(st, k) });
  return { ids, tensors };
}

/** every file below dir (relative paths), sorted */
export function files(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[]).filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name))).sort();
}

export function tmpDir(prefix = 'dejavu-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

class Sink extends Writable {
  text = '';
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: () => void): void { this.text += chunk.toString(); cb(); }
}

/** Run the CLI in-process with captured stdout/stderr. */
export async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = new Sink(), stderr = new Sink();
  const code = await runCli(argv, { stdout, stderr });
  return { code, out: stdout.text, err: stderr.text };
}

/** a predictorHooks onSelect count: a number, or a scalar tensor the receiver owns (read here, synchronously: wasm) */
export function selectedCount(a: number | { dataSync(): ArrayLike<number>; dispose(): void }): number {
  if (typeof a === 'number') return a;
  try { return a.dataSync()[0]!; } finally { a.dispose(); }
}
