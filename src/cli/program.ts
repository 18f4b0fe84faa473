/**
 * The commander program, built by a factory so tests can run commands without exiting the process.
 * Each command file is thin: parse flags -> resolve + validate config -> call the stage -> print -> exit code.
 */
import { Command, CommanderError, Option } from 'commander';
import { fsUserError, isUserError } from '../util/errors.js';
import { makeProgressFactory, type StageDeps } from '../util/progress.js';
import { COMMANDS, STAGE_SECTIONS } from './commands.js';
import type { CliIO } from './context.js';
import { VERSION } from '../version.js';

export { VERSION } from '../version.js';
export type { CliIO, CommandContext } from './context.js';


export function buildProgram(io: CliIO, onExit: (code: number) => void): Command {
  const program = new Command('dejavu')
    .description('Make a dense Hugging Face LLM contextually sparse without retraining it (Deja Vu): collect activations, train per-layer sparsity predictors, evaluate them, export a bundle, run it.')
    .version(VERSION)
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) })
    .showHelpAfterError('(run with --help for usage)');
  for (const def of COMMANDS) {
    const cmd = program.command(def.name).description(def.description).exitOverride();
    if (def.configurable) {
      const section = STAGE_SECTIONS[def.name]?.section;
      cmd.option('--config <file>', section ? `YAML config: this command's own keys, or a pipeline config (configs/*.yaml: its ${section}: section, model and data)` : 'YAML pipeline config (see configs/)');
      const eg = def.examples.join(' ').match(/--set (\S+)/)?.[1];
      cmd.addOption(new Option('--set <key=value>', `override a config key${eg ? `, e.g. --set ${eg}` : ''} (repeatable; keys: docs/configuration.md${section ? `; the pipeline's spelling ${section}.KEY works too` : ''})`)
        .argParser((v: string, prev: string[] = []) => [...prev, v]));
    }
    cmd.option('--print-config', 'print the resolved settings (defaults, config, flags, --set) as YAML and exit without running');
    cmd.option('--quiet', 'no progress output on stderr');
    if (def.examples.length) cmd.addHelpText('after', `\nExamples:\n${def.examples.map((e) => `  ${e}`).join('\n')}\n`);
    for (const f of def.flags) {
      const o = new Option(f.flags, f.description);
      if (f.parse) o.argParser(f.parse);
      if (f.choices) o.choices(f.choices);
      cmd.addOption(o);
    }
    cmd.action(async (opts: Record<string, unknown>) => {
      const log = (m: string) => { if (!opts.quiet) io.stderr.write(m + '\n'); };
      const deps: StageDeps = { log, progress: makeProgressFactory(io.stderr, { quiet: Boolean(opts.quiet) }) };
      await def.run(opts, { io, deps, exit: onExit });
    });
  }
  return program;
}

/** Run the CLI; returns the exit code (0 ok, 2 user error, 1 internal error). Never calls process.exit. */
export async function runCli(argv: string[], io: CliIO): Promise<number> {
  let code = 0;
  const program = buildProgram(io, (c) => { code = c; });
  try {
    await program.parseAsync(argv, { from: 'user' });
    return code;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return 0;
      return 2; // usage errors: commander already printed the message
    }
    return reportError(e, io.stderr);
  }
}

/**
 * Print an error the way the CLI does and return its exit code: a UserError, or a user-fixable fs error (ENOSPC,
 * EACCES, EROFS, EISDIR, ENOTDIR... mapped by util/errors), is `error:` + `hint:` and 2; anything else is an internal
 * error with its stack and 1.
 */
export function reportError(e0: unknown, stderr: NodeJS.WritableStream): number {
  const e = fsUserError(e0, 'accessing');
  if (isUserError(e)) {
    stderr.write(`error: ${e.message}\n${e.hint ? `hint: ${e.hint}\n` : ''}`);
    return 2;
  }
  stderr.write(`internal error (please report): ${(e as Error)?.stack ?? String(e)}\n`);
  return 1;
}
