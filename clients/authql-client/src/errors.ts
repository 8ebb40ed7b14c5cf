import type { GraphQLFormattedError } from 'graphql';

/** A GraphQL error as authql answers it: `extensions.code` always, `extensions.reason` often. */
export type AuthqlError = GraphQLFormattedError & {
  extensions?: { code?: string; reason?: string; retryAfterSeconds?: number; [key: string]: unknown };
};

/**
 * The GraphQL errors an Apollo Client 4 error carries (`CombinedGraphQLErrors`, or a
 * `ServerError` whose body is a GraphQL answer), or the `errors` of a result; `[]` otherwise.
 */
export function graphqlErrorsOf(error: unknown): AuthqlError[] {
  if (!error || typeof error !== 'object') return [];
  const e = error as { errors?: unknown; bodyText?: unknown };
  if (Array.isArray(e.errors)) return e.errors as AuthqlError[];
  if (typeof e.bodyText === 'string') {
    try {
      const body = JSON.parse(e.bodyText) as { errors?: unknown };
      if (Array.isArray(body?.errors)) return body.errors as AuthqlError[];
    } catch {
      // not JSON
    }
  }
  return [];
}

/** `extensions.code` of every GraphQL error in `error` (see `graphqlErrorsOf`). */
export function errorCodes(error: unknown): (string | undefined)[] {
  return graphqlErrorsOf(error).map((e) => e.extensions?.code);
}

/**
 * Why a session ended, as authql said it (README "Errors"): `extensions.reason` of an
 * `UNAUTHENTICATED` refresh (`REVOKED`, `REFRESH_TOKEN_REUSED`, `EXPIRED`, `MISSING`,
 * `WRONG_TOKEN_TYPE`), the code `ACCOUNT_DISABLED`, a `sessionEvents` event of the session
 * itself (`REVOKED`, `EXPIRED`), or the app's own `LOGOUT`.
 */
export type SignOutReason =
  | 'REVOKED'
  | 'REFRESH_TOKEN_REUSED'
  | 'ACCOUNT_DISABLED'
  | 'EXPIRED'
  | 'MISSING'
  | 'WRONG_TOKEN_TYPE'
  | 'LOGOUT';

/**
 * The reason a `refresh` answer ends the session for good, or `null` when it may work later
 * (`SERVICE_UNAVAILABLE`, `RATE_LIMITED`, `FORBIDDEN`, or `MALFORMED`: during a key rotation an
 * instance may not know a new key yet, README "Signing keys and rotation").
 */
export function endingReason(errors: readonly AuthqlError[]): SignOutReason | null {
  for (const e of errors) {
    const code = e.extensions?.code;
    const reason = e.extensions?.reason;
    if (code === 'ACCOUNT_DISABLED') return 'ACCOUNT_DISABLED';
    if (code === 'REFRESH_TOKEN_REUSED') return 'REFRESH_TOKEN_REUSED';
    if (code === 'UNAUTHENTICATED') {
      switch (reason) {
        case 'REVOKED':
        case 'REFRESH_TOKEN_REUSED':
        case 'EXPIRED':
        case 'MISSING':
        case 'WRONG_TOKEN_TYPE':
          return reason;
      }
    }
  }
  return null;
}

/** Whether an operation's errors say its access token is unusable (any `UNAUTHENTICATED`). */
export function refusedForToken(errors: readonly AuthqlError[]): boolean {
  return errors.some((e) => e.extensions?.code === 'UNAUTHENTICATED');
}

/** Thrown by a renewal that could not be done now; `errors` are authql's, if it answered. */
export class RenewalError extends Error {
  override readonly name = 'RenewalError';
  constructor(
    message: string,
    readonly errors: readonly AuthqlError[] = [],
    override readonly cause?: unknown,
  ) {
    super(message);
  }
}
