/**
 * Error taxonomy. A `UserError` is something the user can fix (bad input, bad config, missing file):
 * the CLI prints `message` and `hint` without a stack and exits with code 2. Anything else is an internal
 * bug: the CLI prints the stack and exits with code 1.
 */
export class UserError extends Error {
  readonly hint: string | undefined;
  constructor(message: string, hint?: string) {
    super(message);
    this.name = 'UserError';
    this.hint = hint;
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}
