/**
 * Issue #25 "a typed flag table": a flag's config key is a dotted key of its command's schema, checked by the
 * compiler (ConfigKey; the @ts-expect-error lines fail `npm run typecheck` if a wrong key were accepted) and here at
 * run time against the keys docs/configuration.md lists.
 */
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { COMMANDS, type ConfigKey } from '../src/cli/commands.js';
import { keyRows } from '../src/config/docs.js';
import { SCHEMAS, type pipelineSchema, type planSchema } from '../src/config/schemas.js';

type PlanKey = ConfigKey<z.input<typeof planSchema>>;
type PipelineKey = ConfigKey<z.input<typeof pipelineSchema>>;

describe('the flag table', () => {
  it('ConfigKey: every dotted key of a schema, nothing else (compile time)', () => {
    const plan: PlanKey[] = ['maxPplIncrease', 'recalls', 'shard', 'shard.index'];
    const pipe: PipelineKey[] = ['plan.maxPplIncrease', 'data', 'data.heldout', 'train.mlp.ranks', 'scaleOut.scheduler'];
    // @ts-expect-error the pipeline's spelling is not a key of plan's own schema
    const wrong: PlanKey = 'plan.maxPplIncrease';
    // @ts-expect-error a typo
    const typo: PipelineKey = 'plan.maxPplIncrese';
    expect([...plan, ...pipe, wrong, typo].length).toBe(11);
  });

  it('every flag of every stage command sets a key its schema has', () => {
    const bad: string[] = [];
    for (const c of COMMANDS) {
      const schema = SCHEMAS[c.name as keyof typeof SCHEMAS];
      if (!schema) continue;
      const keys = new Set(keyRows(schema).map((r) => r.key));
      for (const f of c.flags) if (f.key && !keys.has(f.key) && ![...keys].some((k) => k.startsWith(`${f.key}.`))) bad.push(`${c.name} ${f.flags}: ${f.key}`);
    }
    expect(bad).toEqual([]);
    expect(COMMANDS.filter((c) => SCHEMAS[c.name as keyof typeof SCHEMAS]).flatMap((c) => c.flags.filter((f) => f.key)).length).toBeGreaterThan(40);
  });
});
