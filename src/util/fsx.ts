import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';

/** Temp name next to `target`, unique per process, so a rename is atomic on the same filesystem. */
export function tempPathFor(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.${Date.now()}.tmp`);
}

/** Write a file atomically: to a temp name, fsync, then rename over `target`. */
export function writeFileAtomic(target: string, data: string | Uint8Array): void {
  fs.mkdirSync(path.dirname(target), { recursive: true });
  const tmp = tempPathFor(target);
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      writeAll(fd, typeof data === 'string' ? Buffer.from(data, 'utf8') : data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, target);
  } catch (e) {
    fs.rmSync(tmp, { force: true }); // never leave a temp file behind
    throw e;
  }
}

let fault = { limit: '', written: 0 };
/**
 * Test hook for disk-full handling: with DEJAVU_FAULT_ENOSPC_AFTER=N in the environment, every write after the
 * first N bytes (counted per process since the variable took that value) throws a real ENOSPC-coded error.
 */
export function faultCheck(bytes: number): void {
  const limit = process.env.DEJAVU_FAULT_ENOSPC_AFTER ?? '';
  if (limit !== fault.limit) fault = { limit, written: 0 };
  if (!limit) return;
  fault.written += bytes;
  if (fault.written > Number(limit)) throw Object.assign(new Error('ENOSPC: no space left on device, write (injected by DEJAVU_FAULT_ENOSPC_AFTER)'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
}

/** Write all of `data` at the fd's position (loops over short writes); the one write path of the tool's outputs. */
export function writeAll(fd: number, data: Uint8Array): void {
  faultCheck(data.byteLength);
  for (let off = 0; off < data.byteLength;) off += fs.writeSync(fd, data, off, data.byteLength - off);
}

/** writeAll through libuv's thread pool (the calling thread stays free meanwhile); the same fault hook */
export async function writeAllAsync(fd: number, data: Uint8Array): Promise<void> {
  faultCheck(data.byteLength);
  for (let off = 0; off < data.byteLength;) off += await new Promise<number>((res, rej) => fs.write(fd, data, off, data.byteLength - off, null, (e, n) => e ? rej(e) : res(n)));
}

export function writeJsonAtomic(target: string, value: unknown): void {
  writeFileAtomic(target, JSON.stringify(value, null, 2) + '\n');
}

/** sha256 of a file, streamed in 4 MiB chunks (never the whole file in memory). */
export function sha256File(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

export function sha256(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
