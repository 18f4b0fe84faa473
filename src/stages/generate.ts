import { UserError } from '../util/errors.js';
import type { StageDeps } from '../util/progress.js';
import type { StageResult } from '../cli/commands.js';

export async function runGenerate(_cfg: unknown, _deps: StageDeps): Promise<StageResult> {
  throw new UserError('not implemented yet');
}
