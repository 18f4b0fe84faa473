/** Labels: which neurons / heads count as "should be computed" for a token. Training and evaluation share this. */
import type { DecodedBatch } from '../activations/format.js';
import { UserError } from '../util/errors.js';
import { topKLabels } from './metrics.js';

export type LabelRule = { kind: 'active' } | { kind: 'topFraction'; value: number } | { kind: 'threshold'; value: number };

/** 0/1 labels [rows, width] of a decoded batch under a site's label rule (training and evaluation share this). */
export function labelsFor(site: 'mlp' | 'heads', l: LabelRule, W: number, b: DecodedBatch): Uint8Array {
  if (site === 'heads') return topKLabels(b.headNorm, b.rows, W, Math.ceil((l as { value: number }).value * W - 1e-9));
  if (l.kind === 'active') return b.mlpActive;
  if (!b.mlpAct) throw new UserError('the label rule needs MLP activation magnitudes (mlp_act), which this dataset did not record', 're-collect with --set recordMlpAct=true, or use label kind "active" for ReLU models');
  if (l.kind === 'threshold') { const o = new Uint8Array(b.mlpAct.length); for (let i = 0; i < o.length; i++) o[i] = Math.abs(b.mlpAct[i]!) > l.value ? 1 : 0; return o; }
  return topKLabels(b.mlpAct, b.rows, W, Math.max(1, Math.round(l.value * W)), true);
}

