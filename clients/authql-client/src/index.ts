/**
 * @authql/client: the Apollo Client 4 link for authql, its session (tokens, renewal across
 * tabs, sign-out), and typed helpers for every operation of authql's schema.
 */
export { AuthqlLink, createAuthqlLink, SocketClosedError } from './link.js';
export type { AuthqlContext, AuthqlLinkOptions, SessionEvent } from './link.js';
export { AuthqlSession } from './session.js';
export type { Mode, SessionEvents, TokenStorage, Tokens } from './session.js';
export { authqlOperations } from './operations.js';
export type { OperationOptions, OperationRunner } from './operations.js';
export { errorCodes, graphqlErrorsOf, RenewalError } from './errors.js';
export type { AuthqlError, SignOutReason } from './errors.js';
export { cookieDiagnostics, sameSite, siteOf } from './site.js';
export type { Diagnostic } from './site.js';
export * from './generated/operations.js';
export type * from './generated/types.js';
