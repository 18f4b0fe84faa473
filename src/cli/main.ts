import { reportError, runCli } from './program.js';

/**
 * The process entry (bin/dejavu.js). Errors that escape the command's promise (a stream or worker error, an
 * unhandled rejection) are reported like any other and exit with 2 (user-fixable, e.g. ENOSPC) or 1 (internal):
 * never Node's own codes (the wasm backend installs handlers that rethrow, which made Node exit with code 7).
 * Ours are installed first, and exit before the backend's run.
 */
export function installProcessHandlers(): void {
  const die = (e: unknown) => { process.exit(reportError(e, process.stderr)); };
  process.prependListener('uncaughtException', die);
  process.prependListener('unhandledRejection', die);
}

export async function main(argv: string[]): Promise<number> {
  installProcessHandlers();
  return runCli(argv.slice(2), { stdout: process.stdout, stderr: process.stderr });
}
