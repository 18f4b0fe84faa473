/**
 * Error taxonomy. A `UserError` is something the user can fix (bad input, bad config, missing file):
 * the CLI prints `message` and `hint` without a stack and exits with code 2. Anything else is an internal
 * bug: the CLI prints the stack and exits with code 1.
 */
export class UserError extends Error {
  readonly hint: string | undefined;
  constructor(message: string, hint?: string) {
    super(message);
    this.name = 'UserError';
    this.hint = hint;
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}

const FS_PROBLEMS: Record<string, [string, string]> = {
  ENOSPC: ['no space left on device', 'free disk space (or choose an --out on another disk) and re-run the same command'],
  EDQUOT: ['disk quota exceeded', 'free space within your quota and re-run the same command'],
  EROFS: ['read-only file system', 'choose a writable --out'],
  EACCES: ['permission denied', 'choose a writable --out, or fix the permissions'],
  EPERM: ['operation not permitted', 'choose a writable --out, or fix the permissions'],
  EISDIR: ['is a directory, not a file', 'pass a file, not a folder'],
  ENOTDIR: ['a parent of the path is a file, not a folder', 'choose a path whose parent folders are folders'],
  EEXIST: ['a file is in the way', 'choose a path that is not an existing file'],
  EMFILE: ['too many open files', 'raise the open-file limit (ulimit -n) and re-run'],
  EIO: ['input/output error', 'check the disk'],
  ENAMETOOLONG: ['file name too long', 'choose a shorter path (at most 255 bytes per file or folder name)'],
  ELOOP: ['too many levels of symbolic links (a link on the path points back to itself)', 'fix or remove the looping link, or choose another path'],
  ENXIO: ['no such device or address (a socket, or a FIFO nobody reads)', 'pass a regular file or folder'],
  ENODEV: ['no such device', 'pass a regular file or folder'],
  ETXTBSY: ['the file is busy (a running program)', 'choose another path, or wait for the program to end'],
  EBUSY: ['the file or folder is busy (in use, or a mount point)', 'choose another path, or unmount / close what uses it'],
  EFBIG: ['file too large for this file system or the file-size limit (ulimit -f)', 'choose an --out on another file system, or raise the limit'],
  ENFILE: ['too many open files in the system', 'close other programs and re-run'],
  EMLINK: ['too many links or sub-folders in a folder', 'choose another --out'],
};

/** The Node error code of a file-system error, if `e` is one of the user-fixable kinds above. */
export function fsErrorCode(e: unknown): string | null {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code in FS_PROBLEMS ? code : null;
}

/** what went wrong and a hint, for a user-fixable fs error (null for anything else) */
export function describeFsError(e: unknown): { what: string; hint: string; code: string } | null {
  const code = fsErrorCode(e);
  return code ? { what: FS_PROBLEMS[code]![0], hint: FS_PROBLEMS[code]![1], code } : null;
}

/**
 * Map a Node fs error to a UserError: what went wrong, while doing what, where, and a hint. Anything that is not a
 * user-fixable fs error is returned unchanged (an internal bug stays an internal error).
 */
export function fsUserError(e: unknown, doing: string, where?: string): unknown {
  if (isUserError(e)) return e;
  const code = fsErrorCode(e);
  if (!code) return e;
  const [what, hint] = FS_PROBLEMS[code]!;
  const p = where ?? (e as { path?: string }).path;
  return new UserError(`${what} while ${doing}${p ? ` ${p}` : ''} (${code})`, hint);
}

/** Run `f`; a user-fixable fs error it throws becomes a UserError (see fsUserError). */
export function withFsErrors<T>(doing: string, where: string | undefined, f: () => T): T {
  try { return f(); } catch (e) { throw fsUserError(e, doing, where); }
}
