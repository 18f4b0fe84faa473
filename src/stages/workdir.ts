/** The pipeline's workdir and data, shared by runPipeline and its scale-out (src/stages/scale-out.ts). */
import * as path from 'node:path';
import type { PipelineConfig } from '../config/schemas.js';
import { splitData } from '../activations/split.js';

/** The pipeline's workdir when none is given: runs/<the model folder's name>. */
export function defaultWorkdir(model: string): string {
  return path.join('runs', path.basename(path.resolve(model)));
}

/** The calibration and held-out files: as given, or one file split (deterministic, recorded in the workdir's split.json). */
export async function resolveData(data: PipelineConfig['data'], w: string): Promise<{ data: { calibration: string; heldout: string }; line: string }> {
  if (typeof data !== 'string') return { data, line: `data: calibration ${data.calibration}, held-out ${data.heldout}` };
  const sp = await splitData(data, w);
  return { data: { calibration: sp.calibration.file, heldout: sp.heldout.file },
    line: `data: ${data} split into ${sp.calibration.documents} calibration and ${sp.heldout.documents} held-out document(s): ${sp.rule} (recorded in ${path.join(w, 'split.json')})` };
}
