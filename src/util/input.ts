/**
 * Input files the user names (data, --config, tokenizer.json, a checkpoint's JSON): regular files of sane size.
 * A pipe, a device or a folder is refused before it is opened (opening a FIFO blocks; /dev/zero never ends), and
 * every errno (ENOENT, EACCES, ELOOP, ENAMETOOLONG, ENOTDIR, EMFILE...) is a UserError naming the file.
 */
import * as fs from 'node:fs';
import { describeFsError, UserError } from './errors.js';

export interface InputFile {
  /** what the file is, for messages: "data file", "config", "tokenizer" */
  what: string;
  /** how to fix a missing or unreadable file */
  hint: string;
  /** how to fix a file that is not a regular one (default: `hint`) */
  notRegularHint?: string;
  /** refuse files larger than this */
  maxBytes?: number;
}

const MiB = (n: number) => `${+(n / 2 ** 20).toPrecision(3)} MiB`;

function kindOf(st: fs.Stats): string {
  return st.isFIFO() ? 'a pipe' : st.isCharacterDevice() ? 'a character device' : st.isBlockDevice() ? 'a block device' : st.isSocket() ? 'a socket' : 'not a file';
}

/** An errno of stat/open/read as a UserError about `file` (anything else unchanged). */
export function inputError(e: unknown, file: string, o: InputFile): unknown {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !/^E[A-Z]+$/.test(code)) return e;
  if (code === 'ENOENT') return new UserError(`${o.what} ${file} does not exist`, o.hint);
  const known = describeFsError(e);
  return new UserError(`cannot read ${o.what} ${file}: ${known ? known.what : (e as Error).message.replace(/^E[A-Z]+: /, '').replace(/,.*$/, '')} (${code})`,
    code === 'EMFILE' && known ? known.hint : o.hint);
}

/** Check `st` is a regular file within the size limit. */
function checkStats(st: fs.Stats, file: string, o: InputFile): void {
  if (st.isDirectory()) throw new UserError(`${o.what} ${file} is a directory, not a file`, o.hint);
  if (!st.isFile()) throw new UserError(`${o.what} ${file} is not a regular file (${kindOf(st)})`, o.notRegularHint ?? o.hint);
  if (o.maxBytes !== undefined && st.size > o.maxBytes) throw new UserError(`${o.what} ${file} is ${MiB(st.size)}, over the limit of ${MiB(o.maxBytes)}`, o.hint);
}

/** stat (following links) and refuse what is not a regular file; returns its stats. */
export function statInput(file: string, o: InputFile): fs.Stats {
  let st: fs.Stats;
  try { st = fs.statSync(file); } catch (e) { throw inputError(e, file, o); }
  checkStats(st, file, o);
  return st;
}

/**
 * Open a regular file for reading: checked by stat first, opened non-blocking (a FIFO swapped in after the stat
 * cannot block the open) and checked again on the descriptor. The caller closes the fd.
 */
export function openInput(file: string, o: InputFile): number {
  statInput(file, o);
  let fd: number;
  try { fd = fs.openSync(file, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0)); } catch (e) { throw inputError(e, file, o); }
  try { checkStats(fs.fstatSync(fd), file, o); } catch (e) { fs.closeSync(fd); throw inputError(e, file, o); }
  return fd;
}

/** Read a regular file whole (bytes), within `maxBytes`. */
export function readInput(file: string, o: InputFile): Buffer {
  const fd = openInput(file, o);
  try {
    try { return fs.readFileSync(fd); } catch (e) { throw inputError(e, file, o); }
  } finally {
    fs.closeSync(fd);
  }
}

/** Read a regular file whole as UTF-8 text, within `maxBytes`. */
export function readInputText(file: string, o: InputFile): string {
  return readInput(file, o).toString('utf8');
}
