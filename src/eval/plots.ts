/**
 * evaluate-recall's plots: Vega-Lite specs rendered to SVG in Node (vega + vega-lite, renderer 'none': no canvas,
 * no font files; SVG text is laid out by the viewer). evaluate.ts only calls `renderReportPlots`.
 *  - recall-vs-density.svg: one small panel per layer (6 to 80 layers stay readable; one colour per series, never
 *    per layer): the MLP predictor's top-k sweep, the exact predictor's (the bound the first projection itself
 *    gives) and the calibrated rule's point;
 *  - perplexity-vs-density.svg: predicted and oracle MLP sparsity vs mean MLP density, and the dense perplexity;
 *  - densities.svg: per layer, true density (bars), predicted (line) and the exact bound (a tick on top: never hidden);
 *  - plan/frontier.svg (frontierSpec, written by the plan stage): the search path, the budget, the plan estimated
 *    and verified, the gap labelled.
 */
import type { TopLevelSpec } from 'vega-lite';

/** The parts of evaluate's report the plots read (structural: src/stages/evaluate.ts EvalReport fits it). */
export interface PlotReport {
  layers: {
    layer: number;
    mlp?: {
      metrics: { recall: number; predictedDensity: number; trueDensity: number };
      sweep: { fraction: number; recall: number; predictedDensity: number }[];
      exactSweep?: { fraction: number; recall: number }[];
      exactBound?: { predictedDensity: number };
    };
  }[];
  perplexity?: { runs: Record<string, number>; densityCurve?: { meanDensity: number; predicted: number; oracle: number }[] };
}

export const PREDICTOR = 'predictor';
export const EXACT = 'exact (bound)';

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';
const CONFIG = {
  font: 'sans-serif',
  title: { fontSize: 15, anchor: 'start' as const, offset: 12 },
  axis: { labelFontSize: 11, titleFontSize: 12, grid: true, gridColor: '#e6e6e6' },
  legend: { labelFontSize: 11, titleFontSize: 12, labelLimit: 320, symbolType: 'stroke', symbolSize: 400, symbolStrokeWidth: 2 },
  view: { stroke: null },
};
const percentAxis = { format: '.0%', tickCount: 10 };

/** small multiples: columns for n panels (one row up to 4, then about square, at most 10 across) */
export function panelColumns(n: number): number {
  return n <= 4 ? Math.max(1, n) : Math.min(10, Math.ceil(Math.sqrt(n * 1.5)));
}

/**
 * The x range the sweeps need: up to where every layer's predictor recalls 99.9% (beyond it each curve is flat at
 * ~100%), the calibrated points included, rounded up to 10%; the subtitle says so.
 */
export function sweepRange(layers: PlotReport['layers']): number {
  let need = 0.1;
  for (const l of layers) {
    const m = l.mlp;
    if (!m) continue;
    const full = m.sweep.find((s) => s.recall >= 0.999)?.predictedDensity ?? 1;
    need = Math.max(need, full, m.metrics.predictedDensity, ...(m.exactSweep ?? []).filter((s) => s.recall < 0.999).map((s) => s.fraction));
  }
  return Math.min(1, Math.ceil(need * 10 - 1e-9) / 10);
}

export const RULE = 'calibrated rule';

export function recallVsDensitySpec(r: PlotReport): TopLevelSpec {
  const layers = r.layers.filter((l) => l.mlp);
  const xmax = sweepRange(layers);
  const rows: { layer: number; series: string; density: number; recall: number }[] = [];
  for (const l of layers) {
    const m = l.mlp!;
    // the sweep up to xmax, and its first point past it (the line reaches the panel's edge; nothing past it is drawn)
    const upTo = <T>(xs: T[], x: (s: T) => number) => xs.slice(0, Math.min(xs.length, xs.findIndex((s) => x(s) > xmax) + 1 || xs.length)).filter((s) => x(s) <= xmax);
    for (const s of upTo(m.sweep, (s) => s.predictedDensity)) rows.push({ layer: l.layer, series: PREDICTOR, density: s.predictedDensity, recall: s.recall });
    for (const s of upTo(m.exactSweep ?? [], (s) => s.fraction)) rows.push({ layer: l.layer, series: EXACT, density: s.fraction, recall: s.recall });
    rows.push({ layer: l.layer, series: RULE, density: m.metrics.predictedDensity, recall: m.metrics.recall });
  }
  const n = layers.length, cols = panelColumns(n);
  const w = n <= 4 ? 240 : n <= 12 ? 180 : n <= 30 ? 130 : 100;
  const series = [PREDICTOR, EXACT, RULE];
  const color = { field: 'series', type: 'nominal' as const, title: null, scale: { domain: series, range: ['#1f77b4', '#7f7f7f', '#d62728'] } };
  const x = { field: 'density', type: 'quantitative' as const, title: 'density', scale: { domain: [0, xmax], nice: false }, axis: { format: '.0%', tickCount: Math.min(5, Math.round(xmax * 10)) } };
  const y = { field: 'recall', type: 'quantitative' as const, title: 'recall', scale: { domain: [0, 1] }, axis: { format: '.0%', tickCount: 5 } };
  return {
    $schema: SCHEMA, config: { ...CONFIG, legend: { ...CONFIG.legend, orient: 'top' } },
    title: {
      text: 'MLP neurons: held-out recall vs density, one panel per layer',
      subtitle: [`density: the share of MLP neurons computed; recall: the share of active neurons kept (held-out)`,
        `blue: the layer's predictor (top-k sweep); grey dashed: the exact predictor (bound); red dot: the calibrated rule`,
        xmax < 1 ? `density axis up to ${Math.round(xmax * 100)}%: every predictor recalls 99.9% or more by then (each curve is flat past it)` : 'density axis 0-100%'],
    },
    data: { values: rows },
    columns: cols,
    facet: { field: 'layer', type: 'ordinal', title: null, sort: layers.map((l) => l.layer), header: { labelExpr: '"layer " + datum.value', labelFontSize: 11, labelPadding: 2 } },
    spec: {
      width: w, height: Math.round(w * 0.7),
      layer: [
        { transform: [{ filter: `datum.series === '${PREDICTOR}'` }], mark: { type: 'line', strokeWidth: 1.5 }, encoding: { x, y, color } },
        { transform: [{ filter: `datum.series === '${EXACT}'` }], mark: { type: 'line', strokeWidth: 1.5, strokeDash: [4, 3] }, encoding: { x, y, color } },
        { transform: [{ filter: `datum.series === '${RULE}'` }], mark: { type: 'point', filled: true, size: 36 }, encoding: { x, y, color } },
      ],
    },
    resolve: { scale: { x: 'shared', y: 'shared' } },
  } as TopLevelSpec;
}

export function perplexityVsDensitySpec(r: PlotReport): TopLevelSpec | null {
  const dc = r.perplexity?.densityCurve ?? [];
  const dense = r.perplexity?.runs.dense;
  if (!dc.length || dense === undefined) return null;
  const rows = [
    ...dc.map((p) => ({ series: 'predicted MLP sparsity', density: p.meanDensity, perplexity: p.predicted })),
    ...dc.map((p) => ({ series: 'oracle MLP sparsity', density: p.meanDensity, perplexity: p.oracle })),
    { series: 'dense', density: 0, perplexity: dense }, { series: 'dense', density: 1, perplexity: dense },
  ];
  const series = ['predicted MLP sparsity', 'oracle MLP sparsity', 'dense'];
  return {
    $schema: SCHEMA, config: CONFIG, width: 560, height: 340, data: { values: rows },
    title: {
      text: 'Perplexity vs mean MLP density (held-out)',
      subtitle: `per-layer k scaled from the calibrated ones; heads dense; dense perplexity ${dense.toFixed(3)}`,
    },
    mark: { type: 'line', strokeWidth: 2, point: true },
    encoding: {
      x: { field: 'density', type: 'quantitative', title: 'mean MLP density (fraction of neurons computed)', scale: { domain: [0, 1] }, axis: percentAxis },
      y: { field: 'perplexity', type: 'quantitative', title: 'perplexity', scale: { zero: false } },
      color: { field: 'series', type: 'nominal', title: 'run', sort: series, scale: { domain: series, range: ['#1f77b4', '#ff7f0e', '#333333'] } },
      strokeDash: { field: 'series', type: 'nominal', title: 'run', sort: series, scale: { domain: series, range: [[1, 0], [6, 4], [2, 2]] } },
    },
  };
}

export function densitiesSpec(r: PlotReport): TopLevelSpec {
  const rows: { layer: number; series: string; density: number }[] = [];
  for (const l of r.layers) {
    if (!l.mlp) continue;
    rows.push({ layer: l.layer, series: 'true', density: l.mlp.metrics.trueDensity });
    rows.push({ layer: l.layer, series: 'predicted', density: l.mlp.metrics.predictedDensity });
    if (l.mlp.exactBound) rows.push({ layer: l.layer, series: EXACT, density: l.mlp.exactBound.predictedDensity });
  }
  const layers = [...new Set(rows.map((x) => x.layer))];
  const n = layers.length, every = n <= 20 ? 1 : n <= 50 ? 5 : 10;
  const series = ['true', 'predicted', ...(rows.some((x) => x.series === EXACT) ? [EXACT] : [])];
  const color = { field: 'series', type: 'nominal' as const, title: 'density', sort: series, scale: { domain: series, range: ['#a6dba0', '#1f77b4', '#000000'].slice(0, series.length) } };
  const x = { field: 'layer', type: 'ordinal' as const, title: 'layer', sort: layers, axis: { labelAngle: 0, labelExpr: every > 1 ? `datum.value % ${every} === 0 ? datum.label : ''` : 'datum.label' } };
  const y = { field: 'density', type: 'quantitative' as const, title: 'MLP density (share of neurons)', scale: { zero: true, nice: true }, axis: { format: '.0%' } };
  const only = (s: string) => [{ filter: `datum.series === '${s}'` }];
  return {
    $schema: SCHEMA, config: CONFIG, width: Math.max(560, n * 9), height: 320, data: { values: rows },
    title: {
      text: 'MLP density per layer: true, predicted and the exact bound',
      subtitle: ['bars: truly active; blue: selected by the predictor at its calibrated rule;',
        'black tick: the exact bound (what the first projection itself needs for the same recall)'],
    },
    encoding: { x, y, color },
    layer: [
      { transform: only('true'), mark: { type: 'bar', width: { band: 0.8 } } },
      { transform: only('predicted'), mark: { type: 'line', strokeWidth: 2, point: { filled: true, size: n > 40 ? 12 : 30 } } },
      ...(series.includes(EXACT) ? [{ transform: only(EXACT), mark: { type: 'tick' as const, thickness: 2, band: 0.9 } }] : []),
    ],
  } as TopLevelSpec;
}

/**
 * plan/frontier.svg: the search's path (cost-model speedup vs summed single-layer perplexity increases), the budget,
 * the plan as the cost model estimates it and as the runtime verified it, the gap between the two labelled. The
 * domains are padded so no point sits on the edge.
 */
export function frontierSpec(points: { step: number; speedup: number; pplIncrease: number; move: string }[], budget: number, verified: { speedup: number; pplIncrease: number },
  estimate?: { speedup: number; pplIncrease: number }): TopLevelSpec {
  const SEARCH = 'search (cost model, summed single-layer estimates)', EST = 'the plan, as estimated', VERIFIED = 'the plan, verified by the runtime', BUDGET = 'budget';
  const named = [SEARCH, ...(estimate ? [EST] : []), VERIFIED, BUDGET];
  const color = (datum: string) => ({ datum, type: 'nominal' as const, title: null, scale: { domain: named, range: ['#1f77b4', ...(estimate ? ['#1f77b4'] : []), '#2ca02c', '#d62728'] } });
  const xs = [0, budget, verified.pplIncrease, ...points.map((p) => p.pplIncrease), ...(estimate ? [estimate.pplIncrease] : [])];
  const ys = [1, verified.speedup, ...points.map((p) => p.speedup), ...(estimate ? [estimate.speedup] : [])];
  const pad = (lo: number, hi: number, f: number) => { const d = Math.max(hi - lo, 1e-6) * f; return [lo - d, hi + d]; };
  const H = 320;
  const gap = estimate ? `verified ${verified.speedup.toFixed(2)}x at ${(100 * verified.pplIncrease).toFixed(3)}% vs estimated ${estimate.speedup.toFixed(2)}x at ${(100 * estimate.pplIncrease).toFixed(3)}%` : `verified ${verified.speedup.toFixed(2)}x`;
  return {
    $schema: SCHEMA,
    title: {
      text: 'Plan search: decode speedup vs perplexity increase', anchor: 'start',
      subtitle: [gap, 'estimate: the cost model (single-layer kernel timings, perplexities summed);', 'verified: whole decode steps, and perplexity on held-out text the search did not see'],
    },
    width: 560, height: H,
    config: { ...CONFIG, legend: { orient: 'bottom', direction: 'vertical', labelFontSize: 11, labelLimit: 480 } },
    encoding: {
      x: { field: 'pplIncrease', type: 'quantitative', title: 'perplexity increase over dense', scale: { domain: pad(Math.min(...xs), Math.max(...xs), 0.06), nice: false }, axis: { format: '.2%' } },
      y: { field: 'speedup', type: 'quantitative', title: 'decode speedup vs dense', scale: { domain: pad(Math.min(...ys), Math.max(...ys), 0.08), nice: false }, axis: { format: '.2f' } },
    },
    layer: [
      { data: { values: points }, mark: { type: 'line', point: true }, encoding: { color: color(SEARCH), tooltip: [{ field: 'move', type: 'nominal' }] } },
      { data: { values: [{ pplIncrease: budget }] }, mark: { type: 'rule', strokeDash: [6, 4] }, encoding: { y: { value: 0 }, y2: { value: H }, color: color(BUDGET) } },
      ...(estimate ? [
        { data: { values: [{ pplIncrease: estimate.pplIncrease, speedup: estimate.speedup, x2: verified.pplIncrease, y2: verified.speedup }] }, mark: { type: 'rule' as const, strokeDash: [2, 2], color: '#555555' },
          encoding: { x2: { field: 'x2' }, y2: { field: 'y2' } } },
        { data: { values: [estimate] }, mark: { type: 'point' as const, shape: 'diamond', size: 140, filled: false, strokeWidth: 2 }, encoding: { color: color(EST) } },
      ] : []),
      { data: { values: [verified] }, mark: { type: 'point', shape: 'diamond', size: 140, filled: true }, encoding: { color: color(VERIFIED) } },
      { data: { values: [{ ...verified, label: `verified ${verified.speedup.toFixed(2)}x` }] }, mark: { type: 'text', align: 'left', dx: 10, dy: -8, fontSize: 11 }, encoding: { text: { field: 'label' } } },
    ],
  } as TopLevelSpec;
}

/** Render a Vega-Lite spec to a standalone SVG string (vega and vega-lite are loaded on first use). */
export async function specToSvg(spec: TopLevelSpec): Promise<string> {
  const [vega, vl] = await Promise.all([import('vega'), import('vega-lite')]);
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Every plot of the report, as file name -> SVG text (perplexity-vs-density only when the report has that curve). */
export async function renderReportPlots(r: PlotReport): Promise<Record<string, string>> {
  const out: Record<string, string> = {
    'recall-vs-density.svg': await specToSvg(recallVsDensitySpec(r)),
    'densities.svg': await specToSvg(densitiesSpec(r)),
  };
  const ppl = perplexityVsDensitySpec(r);
  if (ppl) out['perplexity-vs-density.svg'] = await specToSvg(ppl);
  return out;
}
