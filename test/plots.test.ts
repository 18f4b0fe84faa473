/**
 * Issue #25 "plots readable for 6 to 80 layers": recall-vs-density is one small panel per layer with one colour per
 * series (never a palette per layer, which repeats past 10); densities.svg draws the exact bound on top of the true
 * density; frontier.svg keeps the verified point inside the plot and labels the gap to the estimate; nothing lies
 * outside the SVG. Checked on the scenegraph vega renders the SVG from.
 */
import { describe, expect, it } from 'vitest';
import type { TopLevelSpec } from 'vega-lite';
import { densitiesSpec, EXACT, frontierSpec, panelColumns, PREDICTOR, recallVsDensitySpec, renderReportPlots, sweepRange, type PlotReport } from '../src/eval/plots.js';

interface Item {
  x?: number; y?: number; width?: number; height?: number; bounds?: { x1: number; y1: number; x2: number; y2: number };
  items?: Mark[]; text?: string; fill?: string; stroke?: string; datum?: Record<string, unknown>;
}
interface Mark { marktype: string; role?: string; items: Item[] }
interface Placed { mark: Mark; item: Item; x1: number; y1: number; x2: number; y2: number; group: { x1: number; y1: number; x2: number; y2: number } }

/** every item of the rendered scene with its bounds in SVG coordinates, the SVG's size, and the SVG text */
async function scene(spec: TopLevelSpec): Promise<{ items: Placed[]; width: number; height: number; svg: string }> {
  const [vega, vl] = await Promise.all([import('vega'), import('vega-lite')]);
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  try {
    const svg = await view.toSVG();
    const [W, H] = [Number(/<svg[^>]* width="([\d.]+)"/.exec(svg)![1]), Number(/<svg[^>]* height="([\d.]+)"/.exec(svg)![1])];
    const [ox, oy] = view.origin();
    const items: Placed[] = [];
    const walk = (m: Mark, gx: number, gy: number, group: Placed['group']) => {
      for (const it of m.items ?? []) {
        const b = it.bounds;
        if (b && Number.isFinite(b.x1)) items.push({ mark: m, item: it, x1: b.x1 + gx, y1: b.y1 + gy, x2: b.x2 + gx, y2: b.y2 + gy, group });
        if (it.items) {
          const x = gx + (it.x ?? 0), y = gy + (it.y ?? 0);
          for (const sub of it.items) walk(sub, x, y, { x1: x, y1: y, x2: x + (it.width ?? 0), y2: y + (it.height ?? 0) });
        }
      }
    };
    walk((view.scenegraph() as unknown as { root: Mark }).root, ox, oy, { x1: 0, y1: 0, x2: W, y2: H });
    return { items, width: W, height: H, svg };
  } finally { view.finalize(); }
}

const outside = (s: { items: Placed[]; width: number; height: number }) =>
  s.items.filter((p) => p.x1 < -0.5 || p.y1 < -0.5 || p.x2 > s.width + 0.5 || p.y2 > s.height + 0.5).map((p) => `${p.mark.marktype} ${p.item.text ?? ''} [${p.x1.toFixed(0)}, ${p.y1.toFixed(0)}, ${p.x2.toFixed(0)}, ${p.y2.toFixed(0)}]`);

/** a synthetic report of n layers (deterministic) */
function report(n: number): PlotReport {
  let seed = 7;
  const rnd = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
  const ks = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1];
  return {
    layers: Array.from({ length: n }, (_, i) => {
      const t = 0.03 + 0.2 * rnd();
      const rec = (d: number, s: number) => Math.min(1, 1 - Math.exp(-d / (t * s)));
      return { layer: i, mlp: { metrics: { recall: 0.99, predictedDensity: Math.min(1, 2.2 * t), trueDensity: t }, exactBound: { predictedDensity: t },
        sweep: ks.map((k) => ({ fraction: k, predictedDensity: k, recall: rec(k, 0.9) })), exactSweep: ks.map((k) => ({ fraction: k, k: Math.round(k * 1024), recall: rec(k, 0.4) })) } };
    }),
    perplexity: { runs: { dense: 20 }, densityCurve: [0.1, 0.3].map((d) => ({ meanDensity: d, predicted: 20 + 1 / d, oracle: 20 + 0.5 / d })) },
  };
}

describe('report plots for 6 to 80 layers', () => {
  for (const n of [6, 80]) {
    it(`${n} layers: one panel per layer, one colour per series; nothing outside the SVG`, async () => {
      const r = report(n);
      const s = await scene(recallVsDensitySpec(r));
      expect(outside(s)).toEqual([]);
      const headers = s.items.filter((p) => p.mark.marktype === 'text' && /^layer \d+$/.test(p.item.text ?? '')).map((p) => p.item.text);
      expect(new Set(headers)).toEqual(new Set(Array.from({ length: n }, (_, i) => `layer ${i}`)));
      // the lines: one colour for the predictor, one for the exact bound, in every panel (not one per layer)
      const lines = s.items.filter((p) => p.mark.marktype === 'line'); // a line mark's items are its points
      expect(new Set(lines.map((p) => p.mark)).size).toBe(2 * n);
      expect(new Set(lines.map((p) => p.item.stroke))).toEqual(new Set(['#1f77b4', '#7f7f7f']));
      expect(new Set(lines.map((p) => String(p.item.datum?.series)))).toEqual(new Set([PREDICTOR, EXACT]));
      // the panels stay apart: no two plot areas overlap
      const panels = [...new Map(lines.map((p) => [`${p.group.x1},${p.group.y1}`, p.group])).values()];
      expect(panels.length).toBe(n);
      for (const a of panels) for (const b of panels) if (a !== b) expect(a.x2 <= b.x1 || b.x2 <= a.x1 || a.y2 <= b.y1 || b.y2 <= a.y1).toBe(true);
      for (const [file, svg] of Object.entries(await renderReportPlots(r))) expect(svg, file).toMatch(/^<svg/);
    });
  }

  it('the density axis ends where every predictor reaches 99.9% recall, and says so', () => {
    const layer = (full: number, rule: number) => ({ layer: 0, mlp: { metrics: { recall: 0.99, predictedDensity: rule, trueDensity: 0.1 },
      sweep: [0.1, 0.2, 0.3, 0.5, 1].map((k) => ({ fraction: k, predictedDensity: k, recall: k >= full ? 1 : 0.9 })) } });
    const r = { layers: [layer(0.2, 0.15), { ...layer(0.3, 0.12), layer: 1 }] };
    expect(sweepRange(r.layers)).toBe(0.3);
    expect(sweepRange([layer(0.2, 0.45)])).toBe(0.5); // the calibrated point is always in range
    expect(sweepRange(report(6).layers)).toBe(1); // curves that never reach 99.9%: the whole axis
    expect(JSON.stringify(recallVsDensitySpec(r))).toContain('density axis up to 30%');
    // nothing past the range is drawn: the sweep stops at the last point inside it
    expect(Math.max(...((recallVsDensitySpec(r) as { data: { values: { density: number }[] } }).data.values.map((v) => v.density)))).toBe(0.3);
    expect(panelColumns(6)).toBe(3);
    expect(panelColumns(80)).toBe(10);
  });

  it('densities.svg: the exact bound is a tick drawn over the true density\'s bar, for every layer, even where they are equal', async () => {
    for (const n of [6, 80]) {
      const s = await scene(densitiesSpec(report(n)));
      expect(outside(s)).toEqual([]);
      const bars = s.items.filter((p) => p.mark.marktype === 'rect' && p.item.datum?.series === 'true');
      const ticks = s.items.filter((p) => p.mark.marktype === 'rect' && p.item.datum?.series === EXACT);
      expect([bars.length, ticks.length]).toEqual([n, n]);
      // drawn after the bars (on top), as wide as most of the bar, at the bar's top (bound = true density here)
      expect(s.items.indexOf(ticks[0]!)).toBeGreaterThan(s.items.indexOf(bars.at(-1)!));
      ticks.forEach((t, i) => { expect(Math.abs((t.y1 + t.y2) / 2 - bars[i]!.y1)).toBeLessThan(1.5); expect(t.x2 - t.x1).toBeGreaterThan(0.8 * (bars[i]!.x2 - bars[i]!.x1)); });
    }
  });
});

describe('plan/frontier.svg', () => {
  const points = [0, 1, 2, 3].map((i) => ({ step: i, move: `m${i}`, speedup: 1.1 + 0.03 * i, pplIncrease: 0.001 * i }));
  it('the verified point lies inside the plot area even at the top of the range; the gap to the estimate is drawn and labelled', async () => {
    for (const verified of [{ speedup: 1.4, pplIncrease: 0.002 }, { speedup: 1.19, pplIncrease: 0.012 }, { speedup: 1.05, pplIncrease: -0.001 }]) {
      const estimate = { speedup: 1.19, pplIncrease: 0.003 };
      const spec = frontierSpec(points, 0.01, verified, estimate);
      const s = await scene(spec);
      expect(outside(s)).toEqual([]);
      const v = s.items.filter((p) => p.mark.marktype === 'symbol' && p.item.datum?.speedup === verified.speedup && p.item.datum?.pplIncrease === verified.pplIncrease);
      expect(v.length).toBeGreaterThan(0);
      for (const p of v) expect(p.x1 >= p.group.x1 && p.x2 <= p.group.x2 && p.y1 >= p.group.y1 && p.y2 <= p.group.y2, `verified point inside the plot: ${JSON.stringify([p.x1, p.y1, p.x2, p.y2, p.group])}`).toBe(true);
      expect(s.items.some((p) => p.mark.marktype === 'rule' && p.item.datum?.x2 === verified.pplIncrease)).toBe(true); // the gap, drawn
      expect(s.svg).toContain(`verified ${verified.speedup.toFixed(2)}x at ${(100 * verified.pplIncrease).toFixed(3)}% vs estimated 1.19x at 0.300%`);
    }
  });
});
