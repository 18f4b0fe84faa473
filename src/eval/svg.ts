/** Minimal SVG line charts for reports (no dependency needed for a few polylines). */
export interface Series { name: string; points: [number, number][]; dashed?: boolean }

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');

export function lineChart(opts: { title: string; xLabel: string; yLabel: string; series: Series[]; xMax?: number; yMin?: number; yMax?: number }): string {
  const W = 640, H = 400, L = 60, R = 150, T = 40, Bm = 50;
  const xs = opts.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = opts.series.flatMap((s) => s.points.map((p) => p[1]));
  const x0 = 0, x1 = opts.xMax ?? Math.max(1e-9, ...xs);
  const y0 = opts.yMin ?? Math.min(0, ...ys), y1 = opts.yMax ?? Math.max(1e-9, ...ys);
  const sx = (x: number) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y: number) => H - Bm - ((y - y0) / (y1 - y0 || 1)) * (H - T - Bm);
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`, `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(opts.title)}</text>`,
    `<line x1="${L}" y1="${H - Bm}" x2="${W - R}" y2="${H - Bm}" stroke="black"/>`, `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - Bm}" stroke="black"/>`];
  for (let i = 0; i <= 5; i++) {
    const xv = x0 + ((x1 - x0) * i) / 5, yv = y0 + ((y1 - y0) * i) / 5;
    parts.push(`<text x="${sx(xv)}" y="${H - Bm + 15}" text-anchor="middle">${+xv.toFixed(3)}</text>`);
    parts.push(`<text x="${L - 5}" y="${sy(yv) + 4}" text-anchor="end">${+yv.toFixed(3)}</text>`);
    parts.push(`<line x1="${L}" y1="${sy(yv)}" x2="${W - R}" y2="${sy(yv)}" stroke="#eee"/>`);
  }
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle">${esc(opts.xLabel)}</text>`);
  parts.push(`<text x="15" y="${(T + H - Bm) / 2}" text-anchor="middle" transform="rotate(-90 15 ${(T + H - Bm) / 2})">${esc(opts.yLabel)}</text>`);
  opts.series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length]!;
    parts.push(`<polyline fill="none" stroke="${c}" stroke-width="2"${s.dashed ? ' stroke-dasharray="5,4"' : ''} points="${s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')}"/>`);
    parts.push(`<text x="${W - R + 10}" y="${T + 15 * i + 10}" fill="${c}">${esc(s.name)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}
