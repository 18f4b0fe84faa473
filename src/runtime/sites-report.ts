/**
 * The plan report's part on the threshold sites (issue 22): per layer and site, the sparsity-vs-perplexity frontier
 * the search measured (single-layer, single-site increases on the search text: exp(KL) - 1) and what the plan chose, as JSON
 * (plan.json `sites`) and as a Markdown table (report.md).
 */
import { z } from 'zod';

export const sitePointSchema = z.strictObject({
  layer: z.number().int().nonnegative(),
  /** attn = q/k/v's input, o, mlp = the MLP's first projections' input, down, gate = the gate threshold (CATS) */
  site: z.enum(['attn', 'o', 'mlp', 'down', 'gate']),
  /** abs = |x| (TEAL), wina = |x| · column norm (WINA), gate = |act(gate)| (CATS) */
  score: z.enum(['abs', 'wina', 'gate']),
  sparsity: z.number().min(0).max(1),
  threshold: z.number().nonnegative(),
  /** the increase with only this site of this layer thresholded: exp(KL) - 1 from dense on the search text (plan.ts) */
  pplIncrease: z.number(),
  /** the cost model's ms change of the step against dense (negative: saved) */
  deltaMs: z.number(),
  chosen: z.boolean(),
});
export type SitePoint = z.infer<typeof sitePointSchema>;

const SITE_NAMES: Record<SitePoint['site'], string> = { attn: 'q/k/v input', o: 'o input', mlp: 'MLP input', down: 'down input', gate: 'gate threshold (CATS)' };
const pct = (x: number) => `${x >= 0 ? '+' : ''}${(100 * x).toFixed(2)}%`;

/** Markdown: one row per layer, site and score; one column per sparsity (perplexity increase alone; the plan's choice in bold) */
export function sitesTable(points: SitePoint[]): string[] {
  if (!points.length) return [];
  const levels = [...new Set(points.map((p) => p.sparsity))].sort((a, b) => a - b);
  const rows = new Map<string, SitePoint[]>();
  for (const p of points) { const k = `${p.layer}|${p.site}|${p.score}`; rows.set(k, [...(rows.get(k) ?? []), p]); }
  const lines = [
    '## Threshold sites: sparsity vs perplexity (each alone, search text; **bold** = the plan\'s choice)', '',
    `| layer | site | score | ${levels.map((s) => `s ${s}`).join(' | ')} |`, `|---:|---|---|${levels.map(() => '---:').join('|')}|`,
  ];
  for (const ps of rows.values()) {
    const p0 = ps[0]!;
    const cells = levels.map((s) => { const p = ps.find((q) => q.sparsity === s); return p ? (p.chosen ? `**${pct(p.pplIncrease)}**` : pct(p.pplIncrease)) : '-'; });
    lines.push(`| ${p0.layer} | ${SITE_NAMES[p0.site]} | ${p0.score === 'wina' ? 'WINA' : p0.score === 'gate' ? '\\|act(gate)\\|' : '\\|x\\|'} | ${cells.join(' | ')} |`);
  }
  return lines;
}
