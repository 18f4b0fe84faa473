/** What a CLI command runs with (split from program.ts so commands.ts does not import the program that imports it). */
import type { StageDeps } from '../util/progress.js';

export interface CliIO {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
}

export interface CommandContext {
  io: CliIO;
  deps: StageDeps;
  /** the command's parsed flags (a stage command's presentation flags, e.g. pipeline --verbose) */
  opts?: Record<string, unknown>;
  /** set the process exit code the command wants (default 0) */
  exit(code: number): void;
}
