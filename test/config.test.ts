/** Shipped YAML configs validate; config resolution: precedence, --set parsing, one error listing every problem. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseSet, readYamlFile, resolveConfig, setPath, validateConfig, type Obj } from '../src/config/load.js';
import { collectSchema, pipelineSchema, SCHEMAS, trainSchema } from '../src/config/schemas.js';
import { UserError } from '../src/util/errors.js';
import { tmpDir } from './helpers.js';

const CONFIGS = path.join(import.meta.dirname, '..', 'configs');
const TMP = tmpDir('dejavu-config-');
afterAll(() => fs.rmSync(TMP, { recursive: true, force: true }));

function yamlFile(name: string, text: string): string {
  const f = path.join(TMP, name);
  fs.writeFileSync(f, text);
  return f;
}

function userError(fn: () => unknown): UserError {
  let err: unknown;
  try { fn(); } catch (e) { err = e; }
  expect(err, 'should throw').toBeInstanceOf(UserError);
  return err as UserError;
}

// ---------------------------------------------------------------------------------------------------- configs/

describe('every YAML file in configs/ is a valid pipeline config', () => {
  const files = fs.readdirSync(CONFIGS).filter((f) => /\.ya?ml$/i.test(f)).sort();

  it('configs/ holds only YAML files, among them the README\'s default.yaml and the two fixture configs', () => {
    const all = fs.readdirSync(CONFIGS).filter((f) => !f.startsWith('.'));
    expect(all.filter((f) => !/\.ya?ml$/i.test(f) && !/\.md$/i.test(f)), 'non-YAML files in configs/').toEqual([]);
    expect(files).toEqual(expect.arrayContaining(['default.yaml', 'opt-fixture.yaml', 'llama-fixture.yaml']));
  });

  for (const f of files) {
    it(`configs/${f}`, () => {
      const raw = readYamlFile(path.join(CONFIGS, f));
      // the assumption: every shipped config is a pipeline config (has model and data keys)
      expect(Object.keys(raw), `${f} should be a pipeline config (model + data)`).toEqual(expect.arrayContaining(['model', 'data']));
      const cfg = validateConfig(pipelineSchema, raw, `configs/${f}`);
      expect(typeof cfg.data === 'object' && cfg.data.calibration.length).toBeGreaterThan(0);
      // and the same file resolves through the CLI path (defaults <- YAML)
      expect(resolveConfig(pipelineSchema, 'pipeline', { configFile: path.join(CONFIGS, f) })).toEqual(cfg);
    });
  }
});

describe('schemas', () => {
  it('pipeline defaults are filled in for every nested stage', () => {
    const cfg = pipelineSchema.parse({ model: 'm', data: { calibration: 'c.jsonl', heldout: 'h.jsonl' } });
    expect(cfg.workdir).toBeUndefined(); // the pipeline uses runs/<model folder name> (test/own-checkpoint.test.ts)
    expect(cfg.backend).toBe('auto');
    expect(cfg.collect.seqLen).toBe(256);
    expect(cfg.train.mlp.rank).toBe(0.5); // the dejavu predictor: half the width, not the paper's 1000
    expect(cfg.train.mlp.predictors).toEqual(['dense', 'exact', 'closed-form']);
    expect(cfg.train.mlp.ranks).toEqual([0.125, 0.25, 0.5]);
    expect(cfg.train.heads.topFraction).toBe(0.3);
    expect(cfg.train.optim.epochs).toBe(8);
    expect(cfg.evaluate.sweep.length).toBeGreaterThanOrEqual(2);
    expect(cfg.export.neuronMajor).toBe(true);
  });

  it('pipeline stages do not accept the keys the pipeline sets itself', () => {
    const e = userError(() => validateConfig(pipelineSchema, { model: 'm', data: { calibration: 'c', heldout: 'h' }, collect: { model: 'x' }, train: { out: 'y' } }, 'pipeline'));
    expect(e.message).toContain('collect.model: unknown key');
    expect(e.message).toContain('train.out: unknown key');
  });

  it('every command has a strict schema', () => {
    for (const [name, schema] of Object.entries(SCHEMAS)) {
      const r = schema.safeParse({ definitelyNotAKey: 1 });
      expect(r.success, name).toBe(false);
      expect(JSON.stringify(r.error!.issues), name).toContain('definitelyNotAKey');
    }
  });
});

// ---------------------------------------------------------------------------------------------------- errors

describe('validation: one error lists every problem with its dotted path and received value', () => {
  it('collect: wrong types, ranges, unknown key, missing required', () => {
    const e = userError(() => validateConfig(collectSchema, {
      data: 'd.jsonl', out: 'o', seqLen: -5, batchSize: 'x', layers: [1, -1], dtype: 'float64', sqeLen: 3,
    }, 'collect-activations'));
    const lines = e.message.split('\n').slice(1).map((l) => l.replace(/^\s*- /, ''));
    expect(e.message).toMatch(/^invalid collect-activations config \(6 problems\):/);
    expect(lines.length).toBe(6);
    const line = (p: string) => lines.find((l) => l.startsWith(p + ':')) ?? `(no line for ${p})`;
    expect(line('model')).toMatch(/required but missing/);
    expect(line('seqLen')).toMatch(/received -5$/);
    expect(line('batchSize')).toMatch(/received "x"$/);
    expect(line('layers.1')).toMatch(/>=0; received -1$/);
    expect(line('dtype')).toMatch(/received "float64"$/);
    expect(line('sqeLen')).toMatch(/unknown key; received 3/);
    expect(e.hint).toMatch(/--set/);
  });

  it('several unknown keys count as several problems (the count matches the listed lines)', () => {
    const e = userError(() => validateConfig(trainSchema, { activations: 'a', out: 'o', workdir: 'w', data: {}, collect: {} }, 'train-predictors'));
    const listed = e.message.split('\n').filter((l) => l.startsWith('  - ')).length;
    expect(listed).toBe(3);
    expect(e.message).toMatch(/\(3 problems\)/);
  });

  it('nested paths: train.mlp / optim problems are reported with dotted paths', () => {
    const e = userError(() => validateConfig(trainSchema, {
      activations: 'a', out: 'o', mlp: { rnak: 5, targetRecall: 1.5, ranks: [] }, optim: { lr: 0 },
    }, 'train-predictors'));
    expect(e.message).toContain('mlp.rnak: unknown key; received 5');
    expect(e.message).toMatch(/mlp\.targetRecall: .*; received 1\.5/);
    expect(e.message).toMatch(/mlp\.ranks: .*; received \[\]/);
    expect(e.message).toMatch(/optim\.lr: .*; received 0/);
    expect(e.message).toMatch(/\(4 problems\)/);
  });

  it('a long received value is shortened', () => {
    const e = userError(() => validateConfig(collectSchema, { model: Array.from({ length: 50 }, () => 12345), data: 'd', out: 'o', layers: 'some' }, 'c'));
    expect(e.message).toMatch(/model: .*received \[12345,12345,[0-9,]*\.\.\.$/m);
    expect(e.message.split('\n').find((l) => l.includes('model:'))!.length).toBeLessThan(200);
    expect(e.message).toContain('layers: Invalid input; received "some"');
  });

  it('a valid config passes and gets its defaults', () => {
    const cfg = validateConfig(collectSchema, { model: 'm', data: 'd', out: 'o' }, 'c');
    expect(cfg).toMatchObject({ seqLen: 256, batchSize: 8, layers: 'all', dtype: 'float16', recordMlpAct: 'auto', overwrite: false, backend: 'auto' });
    expect(cfg.maxTokens).toBeUndefined();
  });
});

// ---------------------------------------------------------------------------------------------------- --set

describe('--set parsing', () => {
  it('values are parsed as YAML: numbers, booleans, lists, null, strings', () => {
    expect(parseSet('seqLen=128')).toEqual(['seqLen', 128]);
    expect(parseSet('optim.lr=1e-3')).toEqual(['optim.lr', 0.001]);
    expect(parseSet('x=-2.5')).toEqual(['x', -2.5]);
    expect(parseSet('overwrite=true')).toEqual(['overwrite', true]);
    expect(parseSet('mlp.enabled=false')).toEqual(['mlp.enabled', false]);
    expect(parseSet('layers=[0, 2, 5]')).toEqual(['layers', [0, 2, 5]]);
    expect(parseSet('sweep=[0.1,0.5]')).toEqual(['sweep', [0.1, 0.5]]);
    expect(parseSet('layers=all')).toEqual(['layers', 'all']);
    expect(parseSet('model=/tmp/some dir/opt')).toEqual(['model', '/tmp/some dir/opt']);
    expect(parseSet('x="3"')).toEqual(['x', '3']);
    expect(parseSet('x=null')).toEqual(['x', null]);
    expect(parseSet('x=')).toEqual(['x', '']);
    expect(parseSet(' a.b =1')).toEqual(['a.b', 1]);
  });

  it('only the first "=" separates key and value; unparseable YAML stays a string', () => {
    expect(parseSet('data=a=b.jsonl')).toEqual(['data', 'a=b.jsonl']);
    expect(parseSet('x=[1, 2')).toEqual(['x', '[1, 2']);
  });

  it('malformed --set is a UserError', () => {
    expect(userError(() => parseSet('seqLen')).message).toMatch(/not of the form key\.path=value/);
    expect(userError(() => parseSet('=3')).message).toMatch(/not of the form/);
    expect(userError(() => resolveConfig(collectSchema, 'c', { sets: ['a..b=1'] })).message).toMatch(/invalid key "a\.\.b"/);
  });

  it('setPath creates nested objects and replaces non-objects on the way', () => {
    const o: Obj = { a: 1, m: { keep: true } };
    setPath(o, 'm.x.y', 2);
    setPath(o, 'a.b', 3);
    setPath(o, 'top', [1]);
    expect(o).toEqual({ a: { b: 3 }, m: { keep: true, x: { y: 2 } }, top: [1] });
  });
});

// ---------------------------------------------------------------------------------------------------- precedence

describe('precedence: schema defaults < YAML < flags < --set', () => {
  const yaml = yamlFile('collect.yaml', [
    'model: from-yaml',
    'data: data.jsonl',
    'out: out-yaml',
    'seqLen: 128',
    'batchSize: 2',
    'dtype: float32',
  ].join('\n') + '\n');

  it('each layer overrides the one below, key by key', () => {
    const cfg = resolveConfig(collectSchema, 'collect-activations', {
      configFile: yaml,
      flags: { batchSize: 4, out: 'out-flag', seqLen: undefined, maxTokens: 1000 },
      sets: ['batchSize=6', 'maxTokens=500'],
    });
    expect(cfg.model).toBe('from-yaml'); // YAML only
    expect(cfg.seqLen).toBe(128); // YAML; an undefined flag does not override it
    expect(cfg.dtype).toBe('float32'); // YAML over default
    expect(cfg.out).toBe('out-flag'); // flag over YAML
    expect(cfg.batchSize).toBe(6); // --set over flag over YAML
    expect(cfg.maxTokens).toBe(500); // --set over flag
    expect(cfg.rowsPerShard).toBe(8192); // default
  });

  it('later --set wins over earlier', () => {
    const cfg = resolveConfig(collectSchema, 'c', { configFile: yaml, sets: ['seqLen=64', 'seqLen=32'] });
    expect(cfg.seqLen).toBe(32);
  });

  it('nested: flags and --set merge into YAML objects instead of replacing them', () => {
    const f = yamlFile('train.yaml', 'activations: acts\nout: preds\nmlp:\n  rank: 64\n  targetRecall: 0.9\n  ranks: [0.25]\nheads:\n  rank: 16\n');
    const cfg = resolveConfig(trainSchema, 'train-predictors', {
      configFile: f,
      flags: { 'mlp.rank': 128, layers: [0, 1] },
      sets: ['mlp.predictors=[closed-form, exact]', 'heads.enabled=false', 'optim.epochs=2'],
    });
    expect(cfg.mlp.rank).toBe(128);
    expect(cfg.mlp.targetRecall).toBe(0.9);
    expect(cfg.mlp.ranks).toEqual([0.25]);
    expect(cfg.mlp.predictors).toEqual(['closed-form', 'exact']);
    // the key's earlier name is refused by name, saying what it is now
    expect(() => resolveConfig(trainSchema, 'train-predictors', { configFile: f, sets: ['mlp.families=[dense]'] })).toThrow(/mlp\.families: unknown key; received \["dense"\] \(renamed to predictors: one name per concept/);
    expect(cfg.heads).toMatchObject({ enabled: false, rank: 16, topFraction: 0.3 });
    expect(cfg.optim).toMatchObject({ epochs: 2, batchSize: 256 });
    expect(cfg.layers).toEqual([0, 1]);
  });

  it('problems from every layer are reported together, with the received value', () => {
    const e = userError(() => resolveConfig(collectSchema, 'collect-activations', {
      configFile: yaml, flags: { batchSize: 0 }, sets: ['seqLen=abc', 'bogus.key=1'],
    }));
    expect(e.message).toMatch(/\(3 problems\)/);
    expect(e.message).toMatch(/batchSize: .*received 0/);
    expect(e.message).toMatch(/seqLen: .*received "abc"/);
    expect(e.message).toMatch(/bogus: unknown key; received \{"key":1\}/);
  });

  it('YAML file errors are UserErrors naming the file', () => {
    const missing = path.join(TMP, 'nope.yaml');
    expect(userError(() => resolveConfig(collectSchema, 'c', { configFile: missing })).message).toContain(missing);
    const bad = yamlFile('bad.yaml', 'a: [1, 2\nb: :\n');
    expect(userError(() => readYamlFile(bad)).message).toMatch(new RegExp(`config ${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not valid YAML`));
    const list = yamlFile('list.yaml', '- a\n- b\n');
    expect(userError(() => readYamlFile(list)).message).toMatch(/must be a YAML mapping/);
    expect(readYamlFile(yamlFile('empty.yaml', '# nothing\n'))).toEqual({});
  });
});
