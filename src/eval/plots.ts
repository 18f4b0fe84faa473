/**
 * evaluate-recall's plots: Vega-Lite specs rendered to SVG in Node (vega + vega-lite, renderer 'none': no canvas,
 * no font files; SVG text is laid out by the viewer). evaluate.ts only calls `renderReportPlots`.
 *  - recall-vs-density.svg: per layer (color), the MLP predictor's top-k sweep (solid) and the exact predictor's
 *    (dashed: the bound the first projection itself gives), with each layer's operating point (the calibrated rule);
 *  - perplexity-vs-density.svg: predicted and oracle MLP sparsity vs mean MLP density, and the dense perplexity;
 *  - densities.svg: per layer, true vs predicted MLP density (and the exact bound under the same rule).
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
const layerName = (l: number) => `layer ${l}`;

export function recallVsDensitySpec(r: PlotReport): TopLevelSpec {
  const rows: { layer: string; family: string; density: number; recall: number }[] = [];
  const points: { layer: string; density: number; recall: number }[] = [];
  const layers = r.layers.filter((l) => l.mlp);
  for (const l of layers) {
    const m = l.mlp!;
    for (const s of m.sweep) rows.push({ layer: layerName(l.layer), family: PREDICTOR, density: s.predictedDensity, recall: s.recall });
    for (const s of m.exactSweep ?? []) rows.push({ layer: layerName(l.layer), family: EXACT, density: s.fraction, recall: s.recall });
    points.push({ layer: layerName(l.layer), density: m.metrics.predictedDensity, recall: m.metrics.recall });
  }
  const order = layers.map((l) => layerName(l.layer));
  const color = { field: 'layer', type: 'nominal' as const, title: 'layer', sort: order, scale: { scheme: 'category10' } };
  const x = { field: 'density', type: 'quantitative' as const, title: 'density (fraction of MLP neurons computed)', scale: { domain: [0, 1] }, axis: percentAxis };
  const y = { field: 'recall', type: 'quantitative' as const, title: 'recall (fraction of active neurons kept)', scale: { domain: [0, 1] }, axis: percentAxis };
  return {
    $schema: SCHEMA, config: CONFIG, width: 560, height: 380,
    title: {
      text: 'MLP neurons: held-out recall vs density (top-k sweep)',
      subtitle: 'solid: the layer\'s predictor; dashed: the exact predictor (bound); dot: the calibrated rule',
    },
    layer: [
      {
        data: { values: rows },
        mark: { type: 'line', strokeWidth: 2, point: false },
        encoding: {
          x, y, color, detail: { field: 'family', type: 'nominal' },
          strokeDash: {
            field: 'family', type: 'nominal', title: 'family', sort: [PREDICTOR, EXACT], scale: { domain: [PREDICTOR, EXACT], range: [[1, 0], [6, 4]] },
          },
        },
      },
      {
        data: { values: points },
        mark: { type: 'point', filled: true, size: 60 },
        encoding: { x, y, color },
      },
    ],
  };
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
  const series = ['true', 'predicted', ...(rows.some((x) => x.series === EXACT) ? [EXACT] : [])];
  const n = series.length;
  return {
    $schema: SCHEMA, config: CONFIG, width: 560, height: 320, data: { values: rows },
    title: {
      text: 'MLP density per layer: true vs predicted',
      subtitle: ['predicted: at the calibrated rule;', 'exact (bound): what the first projection itself needs for the same recall'],
    },
    mark: { type: 'line', strokeWidth: 2, point: true },
    encoding: {
      x: { field: 'layer', type: 'quantitative', title: 'layer', axis: { tickMinStep: 1, format: 'd' } },
      y: { field: 'density', type: 'quantitative', title: 'MLP density (fraction of neurons)', scale: { zero: true, nice: true }, axis: { format: '.0%' } },
      color: { field: 'series', type: 'nominal', title: 'density', sort: series, scale: { domain: series, range: ['#2ca02c', '#1f77b4', '#7f7f7f'].slice(0, n) } },
      strokeDash: { field: 'series', type: 'nominal', title: 'density', sort: series, scale: { domain: series, range: [[1, 0], [6, 4], [2, 2]].slice(0, n) } },
    },
  };
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
