/** runCli with in-memory streams: help, exit codes (0 ok, 2 user error, 1 internal error), a real collect run. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { VERSION } from '../src/cli/program.js';
import { cli, FIXTURES, tmpDir } from './helpers.js';

// A seam for "an internal error inside a stage": runCollect is the real one unless a test sets `h.fail`.
const h = vi.hoisted(() => ({ fail: null as Error | null }));
vi.mock('../src/stages/collect.js', async (importOriginal) => {
  const orig = await importOriginal<typeof import('../src/stages/collect.js')>();
  return {
    ...orig,
    runCollect: async (...args: Parameters<typeof orig.runCollect>) => {
      if (h.fail) throw h.fail;
      return orig.runCollect(...args);
    },
  };
});

const TMP = tmpDir('dejavu-cli-');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));
afterEach(() => { h.fail = null; });


const SUBCOMMANDS = ['collect-activations', 'train-predictors', 'evaluate-recall', 'export-bundle', 'verify-bundle', 'pipeline', 'generate'];
const MODEL = path.join(FIXTURES, 'opt-tiny-ref');

function jsonl(name: string, n: number): string {
  const words = 'the whale ship sea captain ahab white harpoon ocean deep storm sail mast crew voyage night'.split(' ');
  const f = path.join(TMP, name);
  fs.writeFileSync(f, Array.from({ length: n }, (_, d) => JSON.stringify({ text: Array.from({ length: 30 }, (_, i) => words[(i * 7 + d * 3) % words.length]).join(' ') + '.' })).join('\n') + '\n');
  return f;
}

describe('help and version', () => {
  it('--help exits 0 and lists every subcommand', async () => {
    const r = await cli('--help');
    expect(r.code).toBe(0);
    for (const c of SUBCOMMANDS) expect(r.out, c).toMatch(new RegExp(`^\\s+${c}\\b`, 'm'));
    expect(r.err).toBe('');
  });

  it('<command> --help exits 0 and lists its flags', async () => {
    const r = await cli('collect-activations', '--help');
    expect(r.code).toBe(0);
    for (const f of ['--model', '--data', '--out', '--seq-len', '--max-tokens', '--config', '--set', '--backend', '--json']) expect(r.out).toContain(f);
  });

  it('--version prints the version', async () => {
    const r = await cli('--version');
    expect(r.code).toBe(0);
    expect(r.out.trim()).toBe(VERSION);
  });
});

describe('usage and user errors exit 2 without a stack', () => {
  it('an unknown option', async () => {
    const r = await cli('collect-activations', '--bogus');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/unknown option '--bogus'/);
    expect(r.err).not.toContain('    at ');
  });

  it('an unknown command', async () => {
    const r = await cli('colect-activations');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/unknown command/);
  });

  it('an invalid --backend choice', async () => {
    const r = await cli('collect-activations', '--backend', 'metal');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/metal/);
  });

  it('an invalid config from flags and --set: every problem, no stack', async () => {
    const r = await cli('collect-activations', '--model', MODEL, '--data', 'd.jsonl', '--seq-len', '-4', '--set', 'batchSize=abc', '--set', 'nope=1');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^error: invalid collect-activations config \(4 problems\)/);
    expect(r.err).toMatch(/out: required but missing/);
    expect(r.err).toMatch(/seqLen: .*received -4/);
    expect(r.err).toMatch(/batchSize: .*received "abc"/);
    expect(r.err).toMatch(/nope: unknown key/);
    expect(r.err).toMatch(/^hint: /m);
    expect(r.err).not.toContain('    at ');
    expect(r.out).toBe('');
  });

  it('an invalid YAML config file', async () => {
    const f = path.join(TMP, 'bad.yaml');
    fs.writeFileSync(f, 'model: m\ndata: d\nout: o\nseqLen: many\ntrain:\n  rank: 3\n');
    const r = await cli('collect-activations', '--config', f);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/seqLen: .*received "many"/);
    expect(r.err).toMatch(/train: unknown key/);
    expect(r.err).not.toContain('    at ');
  });

  it('a UserError raised inside a stage (missing model folder)', async () => {
    const r = await cli('collect-activations', '--model', path.join(TMP, 'no-model'), '--data', jsonl('u.jsonl', 2), '--out', path.join(TMP, 'u-out'), '--backend', 'wasm');
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/error: model folder .*no-model does not exist/);
    expect(r.err).not.toContain('    at ');
  });
});

describe('internal errors exit 1 with a stack', () => {
  it('an Error thrown inside a stage', async () => {
    h.fail = new Error('kaboom from the stage');
    const r = await cli('collect-activations', '--model', MODEL, '--data', 'x.jsonl', '--out', path.join(TMP, 'x'), '--backend', 'wasm', '--quiet');
    expect(r.code).toBe(1);
    expect(r.err).toContain('internal error (please report): Error: kaboom from the stage');
    expect(r.err).toContain('    at ');
  });

  it('a non-Error thrown value', async () => {
    h.fail = 'a string' as unknown as Error;
    const r = await cli('collect-activations', '--model', MODEL, '--data', 'x.jsonl', '--out', path.join(TMP, 'x2'), '--backend', 'wasm', '--quiet');
    expect(r.code).toBe(1);
    expect(r.err).toContain('internal error (please report): a string');
  });
});

describe('collect-activations end to end', () => {
  it('writes manifest.json, prints the summary and the backend; a rerun is a no-op; --json is JSON', async () => {
    const data = jsonl('calib.jsonl', 12);
    const out = path.join(TMP, 'acts');
    const args = ['collect-activations', '--model', MODEL, '--data', data, '--out', out, '--seq-len', '16', '--max-tokens', '64', '--backend', 'wasm'];
    const r = await cli(...args);
    expect(r.err).not.toContain('    at ');
    expect(r.code).toBe(0);
    expect(r.err).toMatch(/backend: wasm/);
    expect(fs.existsSync(path.join(out, 'manifest.json'))).toBe(true);
    const m = JSON.parse(fs.readFileSync(path.join(out, 'manifest.json'), 'utf8'));
    expect(m.tokens).toBe(64);
    expect(m.seqLen).toBe(16);
    expect(r.out).toMatch(/tokens 64 in 4 sequences of 16/);

    const again = await cli(...args, '--json', '--quiet');
    expect(again.code).toBe(0);
    expect(again.err).toBe('');
    const j = JSON.parse(again.out);
    expect(j.manifest.tokens).toBe(64);

    // a different config into the same folder is refused (user error)
    const other = await cli(...args.map((a) => (a === '16' ? '8' : a)));
    expect(other.code).toBe(2);
    expect(other.err).toMatch(/different model, data or config/);
  });
});
