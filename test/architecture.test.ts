/**
 * Dependencies point one way (README "Architecture"): entry (index, bench) -> cli -> stages -> core -> util.
 * Core modules (checkpoint, model, activations, predictors, bundle, eval, runtime, config, backend, tokenizer) may
 * import each other, but the module graph among them has no cycle; no file-level import cycle anywhere (madge).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tmpDir } from './helpers.js';
import { VERSION } from '../src/version.js';
import { BACKEND_NAMES, BACKEND_PREFERENCES } from '../src/backend.js';
import { collectSchema } from '../src/config/schemas.js';

const ROOT = path.join(import.meta.dirname, '..');
const SRC = path.join(ROOT, 'src');

const LAYERS = ['util', 'core', 'stages', 'cli', 'entry'] as const;
type Layer = (typeof LAYERS)[number];
const CORE_DIRS = ['arch', 'checkpoint', 'model', 'activations', 'predictors', 'bundle', 'eval', 'runtime', 'config'];
const CORE_FILES = ['backend.ts', 'tokenizer.ts'];

/** `rel` is a path under src/, '/'-separated. */
function layerOf(rel: string): Layer {
  const [top] = rel.split('/');
  if (top === 'util' || rel === 'version.ts') return 'util';
  if (CORE_DIRS.includes(top!) || CORE_FILES.includes(rel)) return 'core';
  if (top === 'stages') return 'stages';
  if (top === 'cli') return 'cli';
  if (rel === 'index.ts' || top === 'bench') return 'entry';
  throw new Error(`src/${rel} is in no layer: add it to test/architecture.test.ts and the README's Architecture section`);
}

/** core module of a core file: its folder, or the file name for a top-level file */
const moduleOf = (rel: string) => (rel.includes('/') ? rel.split('/')[0]! : rel.replace(/\.ts$/, ''));

function listTs(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')).map((f) => f.split(path.sep).join('/')).sort();
}

/** relative imports of a file (static, re-exports, side-effect and dynamic), resolved to paths under src/ */
function importsOf(rel: string, text: string): string[] {
  const out: string[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm;
  for (let m; (m = re.exec(text)); ) out.push(path.posix.normalize(path.posix.join(path.posix.dirname(rel), m[1]!)).replace(/\.js$/, '.ts'));
  return out;
}

type Graph = Map<string, string[]>;

function srcGraph(): Graph {
  return new Map(listTs(SRC).map((f) => [f, importsOf(f, fs.readFileSync(path.join(SRC, f), 'utf8'))]));
}

/** every import that points up the layers, and every cycle among core modules */
function violations(g: Graph): string[] {
  const bad: string[] = [];
  const modules = new Map<string, Set<string>>();
  for (const [from, targets] of g) {
    const lf = layerOf(from);
    for (const to of targets) {
      if (!g.has(to)) { bad.push(`src/${from} imports src/${to}, which does not exist`); continue; }
      const lt = layerOf(to);
      if (LAYERS.indexOf(lt) > LAYERS.indexOf(lf)) bad.push(`src/${from} (${lf}) imports src/${to} (${lt})`);
      if (lf === 'core' && lt === 'core' && moduleOf(from) !== moduleOf(to)) {
        const s = modules.get(moduleOf(from)) ?? new Set<string>();
        s.add(moduleOf(to));
        modules.set(moduleOf(from), s);
      }
    }
  }
  // cycles among core modules (depth-first search, grey = on the stack)
  const state = new Map<string, 'grey' | 'black'>();
  const stack: string[] = [];
  const visit = (m: string) => {
    state.set(m, 'grey');
    stack.push(m);
    for (const n of modules.get(m) ?? []) {
      if (state.get(n) === 'grey') bad.push(`core modules import each other in a cycle: ${[...stack.slice(stack.indexOf(n)), n].join(' -> ')}`);
      else if (!state.has(n)) visit(n);
    }
    stack.pop();
    state.set(m, 'black');
  };
  for (const m of [...modules.keys()].sort()) if (!state.has(m)) visit(m);
  return bad;
}

function madgeCircular(dir: string): string[][] {
  const bin = path.join(ROOT, 'node_modules', 'madge', 'bin', 'cli.js');
  // exit code 1 when it finds a cycle; the JSON list is on stdout either way
  const r = spawnSync(process.execPath, [bin, '--circular', '--json', '--extensions', 'ts', dir], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0 && r.status !== 1) throw new Error(`madge failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout.slice(r.stdout.indexOf('['))) as string[][];
}

describe('architecture', () => {
  it('every src file is in a layer and every import points down (entry -> cli -> stages -> core -> util), no cycle among core modules', () => {
    const g = srcGraph();
    expect(g.size).toBeGreaterThan(40);
    expect([...g.values()].flat().length).toBeGreaterThan(100); // the import parser finds the imports
    expect(violations(g)).toEqual([]);
  });

  it('the layer check catches an upward import and a cycle between core modules', () => {
    const g: Graph = new Map([
      ['util/a.ts', []], ['stages/s.ts', ['cli/c.ts']], ['cli/c.ts', ['stages/s.ts']],
      ['model/m.ts', ['runtime/r.ts']], ['runtime/r.ts', ['model/m.ts', 'util/a.ts']], ['util/b.ts', ['model/m.ts']],
    ]);
    expect(violations(g)).toEqual([
      'src/stages/s.ts (stages) imports src/cli/c.ts (cli)',
      'src/util/b.ts (util) imports src/model/m.ts (core)',
      'core modules import each other in a cycle: model -> runtime -> model',
    ]);
    expect(importsOf('stages/x.ts', `import { a } from '../cli/commands.js';\nexport { b } from './y.js';\nimport './z.js';\nconst m = await import('../util/q.js');\nimport type {\n  T,\n} from '../model/t.js';`))
      .toEqual(['cli/commands.ts', 'stages/y.ts', 'stages/z.ts', 'util/q.ts', 'model/t.ts']);
  });

  it('no import cycle between files (madge --circular)', () => {
    expect(madgeCircular('src')).toEqual([]);
  });

  it('madge finds a cycle when there is one', () => {
    const d = tmpDir();
    try {
      fs.writeFileSync(path.join(d, 'a.ts'), "import { b } from './b.js';\nexport const a = () => b;\n");
      fs.writeFileSync(path.join(d, 'b.ts'), "import { a } from './a.js';\nexport const b = () => a;\n");
      expect(madgeCircular(d)).toEqual([['a.ts', 'b.ts']]);
    } finally { fs.rmSync(d, { recursive: true, force: true }); }
  });

  it('one version (src/version.ts = package.json) and one backend list (src/backend.ts), written nowhere else', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(VERSION).toBe(pkg.version);
    expect(BACKEND_PREFERENCES).toEqual(['auto', ...BACKEND_NAMES]);
    expect(collectSchema.shape.backend.unwrap().options).toEqual([...BACKEND_PREFERENCES]);
    const lit = (v: string) => new RegExp(`['"\`]${v.replace(/\./g, '\\.')}['"\`]`);
    for (const f of listTs(SRC)) {
      const text = fs.readFileSync(path.join(SRC, f), 'utf8');
      if (f !== 'version.ts') expect(text, `src/${f} writes the version literally`).not.toMatch(lit(VERSION));
      if (f !== 'backend.ts') expect(text, `src/${f} writes the backend list`).not.toMatch(/'tensorflow'\s*[,|]\s*'wasm'|'wasm'\s*[,|]\s*'cpu'/);
    }
  });
});
