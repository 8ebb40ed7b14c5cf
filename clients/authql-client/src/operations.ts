import type { ApolloClient, DefaultContext, TypedDocumentNode } from '@apollo/client';
import { Observable } from 'rxjs';
import { operationsOver, type AuthqlOperations } from './generated/operations.js';

/** Per-call options of a typed helper. */
export interface OperationOptions {
  /** Apollo context for the call (e.g. `{ authql: { anonymous: true } }`). */
  context?: DefaultContext;
  /** Queries only: the fetch policy (default `'no-cache'`: authql's answers are the session's state). */
  fetchPolicy?: 'cache-first' | 'network-only' | 'no-cache';
}

/** How the generated helpers run their documents (see `authqlOperations`). */
export interface OperationRunner {
  query<D, V, K extends keyof D>(document: TypedDocumentNode<D, V>, variables: V | undefined, field: K, options?: OperationOptions): Promise<D[K]>;
  mutation<D, V, K extends keyof D>(document: TypedDocumentNode<D, V>, variables: V | undefined, field: K, options?: OperationOptions): Promise<D[K]>;
  subscription<D, V, K extends keyof D>(document: TypedDocumentNode<D, V>, variables: V | undefined, field: K, options?: OperationOptions): Observable<D[K]>;
}

/**
 * One typed helper per root field of authql's schema, over an Apollo Client whose link is
 * an `AuthqlLink`: `ops.login({ input })` resolves the field's value (`AuthPayload`), or
 * rejects with Apollo's error (`CombinedGraphQLErrors`: branch on `extensions.code`);
 * subscriptions are Observables of the field's value. Generated from `schema.graphql`, so
 * every operation authql has is here.
 */
export function authqlOperations(client: ApolloClient): AuthqlOperations {
  // Apollo's typings are generic over masked data; the documents are authql's own.
  /* eslint-disable @typescript-eslint/no-explicit-any */
  const c = client as any;
  // authql always answers the field or an error; anything else (a broken proxy) is an error here.
  const field_ = (data: any, field: PropertyKey) => {
    if (data === null || typeof data !== 'object' || !(field in data)) {
      throw new Error(`the answer has no ${String(field)}`);
    }
    return data[field];
  };
  return operationsOver({
    async query(document, variables, field, options) {
      const { data } = await c.query({ query: document, variables, fetchPolicy: options?.fetchPolicy ?? 'no-cache', context: options?.context });
      return field_(data, field);
    },
    async mutation(document, variables, field, options) {
      const { data } = await c.mutate({ mutation: document, variables, fetchPolicy: 'no-cache', context: options?.context });
      return field_(data, field);
    },
    subscription(document, variables, field, options) {
      return new Observable((observer) => {
        const subscription = c
          .subscribe({ query: document, variables, fetchPolicy: 'no-cache', context: options?.context })
          .subscribe({
            next: (result: any) => {
              if (result.error) return observer.error(result.error);
              try {
                observer.next(field_(result.data, field));
              } catch (error) {
                observer.error(error);
              }
            },
            error: (error: unknown) => observer.error(error),
            complete: () => observer.complete(),
          });
        return () => subscription.unsubscribe();
      });
    },
  });
}
