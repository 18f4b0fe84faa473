/** What a stage returns to its caller (the CLI prints it; the pipeline and tests read `json`). */
export interface StageResult {
  /** human-readable result table for stdout */
  text: string;
  /** machine-readable result (printed with --json) */
  json: unknown;
  /** exit code (default 0) */
  code?: number;
  /** things the user must see even with --quiet (printed on stderr as "note: ...") */
  notes?: string[];
}
