/**
 * Issue #25 "help that runs": every example a command's --help shows (its Examples and the --set "e.g.") is valid for
 * that command. Each is parsed and validated by the CLI itself (--print-config: the same resolve + validate path a
 * run takes, then the resolved settings instead of the work), and every value the example sets must appear in the
 * resolved settings at its key; the dense generate example runs for real. Every config in configs/ (all pipeline
 * configs) is taken by every stage command.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { COMMANDS, STAGE_SECTIONS } from '../src/cli/commands.js';
import { cli, tmpDir } from './helpers.js';

const REPO = path.join(import.meta.dirname, '..');
process.chdir(REPO); // the examples name repo paths (checkpoints/, data/, configs/)

/** split a command line the way a POSIX shell does for these examples: whitespace, '...' and "..." quoting */
function argv(line: string): string[] {
  const out: string[] = [];
  for (const m of line.matchAll(/'([^']*)'|"([^"]*)"|(\S+)/g)) out.push(m[1] ?? m[2] ?? m[3]!);
  return out;
}
const getPath = (o: unknown, dotted: string) => dotted.split('.').reduce<unknown>((c, k) => (c && typeof c === 'object' ? (c as Record<string, unknown>)[k] : undefined), o);

async function helpOf(name: string): Promise<{ examples: string[]; setEg: string | null }> {
  const r = await cli(name, '--help');
  expect(r.code).toBe(0);
  const ex = r.out.split('\nExamples:\n')[1] ?? '';
  return { examples: ex.split('\n').map((l) => l.trim()).filter(Boolean), setEg: /e\.g\. --set (\S+)/.exec(r.out.replace(/\s+/g, ' '))?.[1] ?? null };
}

/** run `line` with --print-config and check every flag and --set it gives reached the resolved settings */
async function checkExample(name: string, line: string): Promise<void> {
  const [prog, cmd, ...args] = argv(line);
  expect([prog, cmd], line).toEqual(['dejavu', name]);
  const r = await cli(cmd!, ...args, '--print-config');
  expect(r.code, `${line}\n${r.err}`).toBe(0);
  expect(r.err, line).not.toMatch(/error/i);
  const cfg = YAML.parse(r.out) as Record<string, unknown>;
  const def = COMMANDS.find((c) => c.name === name)!;
  const prefix = STAGE_SECTIONS[name] ? `${STAGE_SECTIONS[name].section}.` : '';
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--set') {
      const s = args[++i]!, eq = s.indexOf('=');
      const key = prefix && s.startsWith(prefix) ? s.slice(prefix.length, eq) : s.slice(0, eq);
      expect(getPath(cfg, key), `${line}: ${key}`).toEqual(YAML.parse(s.slice(eq + 1)));
      continue;
    }
    const f = def.flags.find((x) => x.flags.split(/[ ,]/)[0] === a);
    if (!f || !f.flags.includes('<')) continue;
    if (f.flags.includes('...>')) { // variadic: every value up to the next flag
      const vals: string[] = [];
      while (i + 1 < args.length && !args[i + 1]!.startsWith('--')) vals.push(args[++i]!);
      expect(getPath(cfg, f.key ?? a.slice(2)), `${line}: ${a}`).toEqual(vals);
      continue;
    }
    const raw = args[++i]!, want = f.parse ? f.parse(raw) : raw;
    const key = f.key ?? a.slice(2).replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    const got = name === 'pipeline' && key === 'data.heldout' ? getPath(cfg, 'data.heldout') : name === 'pipeline' && key === 'data' && args.includes('--heldout') ? getPath(cfg, 'data.calibration') : getPath(cfg, key);
    expect(got, `${line}: ${a}`).toEqual(Array.isArray(got) && !Array.isArray(want) ? [want] : want);
  }
}

describe('every help example runs for its command', () => {
  for (const def of COMMANDS) {
    it(def.name, async () => {
      const { examples, setEg } = await helpOf(def.name);
      expect(examples.length, `${def.name} --help shows no examples`).toBeGreaterThan(0);
      expect(examples).toEqual(def.examples);
      for (const e of examples) await checkExample(def.name, e);
      if (def.configurable) {
        expect(setEg, `${def.name}: the --set help has an example`).not.toBeNull();
        await checkExample(def.name, `${examples[0]} --set ${setEg}`);
      }
    });
  }

  it('the estimate examples really run', async () => {
    for (const line of COMMANDS.find((c) => c.name === 'estimate')!.examples) {
      const r = await cli(...argv(line).slice(1), '--backend', 'wasm');
      expect(r.code, `${line}\n${r.err}`).toBe(0);
      expect(r.out).toMatch(/^estimate: \d+ layers, d \d+, ffn \d+/);
    }
  });

  it('the dense generate example really runs', async () => {
    const line = COMMANDS.find((c) => c.name === 'generate')!.examples.find((e) => !e.includes('--bundle'))!;
    const r = await cli(...argv(line).slice(1), '--backend', 'wasm', '--quiet');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('Call me Ishmael.');
  });
});

describe('stage commands take a pipeline config (every file in configs/)', () => {
  const files = fs.readdirSync(path.join(REPO, 'configs')).filter((f) => f.endsWith('.yaml'));
  for (const f of files) {
    it(`configs/${f}`, async () => {
      const pipe = YAML.parse(fs.readFileSync(path.join(REPO, 'configs', f), 'utf8'));
      for (const [cmd, s] of Object.entries(STAGE_SECTIONS)) {
        const r = await cli(cmd, '--config', `configs/${f}`, '--out', 'runs/x', '--print-config');
        expect(r.code, `${cmd} --config configs/${f}: ${r.err}`).toBe(0);
        expect(r.err).toContain(`is a pipeline config: using its ${s.section}: section`);
        const cfg = YAML.parse(r.out);
        if ('model' in cfg) expect(cfg.model).toBe(pipe.model);
        expect(cfg).toMatchObject(Object.fromEntries(Object.entries(pipe[s.section] ?? {}).filter(([k]) => k !== 'enabled')));
        for (const [k, dir] of Object.entries(s.inputs)) if (k in cfg) expect(cfg[k]).toBe(path.join(pipe.workdir, dir));
        if (s.data) expect(cfg.data).toBe(pipe.data[s.data]);
      }
    });
  }

  it('a pipeline config with a key no stage knows is refused by name, also by a stage command', async () => {
    const d = tmpDir('dejavu-help-'), f = path.join(d, 'pipe.yaml');
    fs.writeFileSync(f, 'model: checkpoints/opt-fixture\ndata: { calibration: a, heldout: b }\ntrain: { mlp: { rnak: 3 } }\n');
    try {
      const r = await cli('plan', '--config', f, '--out', 'runs/x', '--print-config');
      expect(r.code).toBe(2);
      expect(r.err).toContain('train.mlp.rnak: unknown key');
    } finally { fs.rmSync(d, { recursive: true, force: true }); }
  });
});
