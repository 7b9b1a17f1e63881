/**
 * The typed error of every cloudide request, and the pure mapping from an HTTP
 * response to it. Nothing here imports JupyterLab, so it is unit-tested as is.
 */

import type { IErrorBody } from './tokens';

/** Longest response text kept on an error (for debugging; never rendered as HTML). */
export const MAX_KEPT_BODY = 2000;

/** Options of a `CloudIDEError`. */
export interface ICloudIDEErrorOptions {
  /** HTTP status; 0 when the request never got a response (network failure). */
  status: number;
  /** Machine-readable code from the server (`rate_limited`, `not_found`, ...). */
  code?: string;
  /** Name of the offending request field, when the server gives one. */
  field?: string;
  /** Seconds to wait before retrying (429/503), or null if not given. */
  retryAfter?: number | null;
  /** The raw (truncated) response text. */
  body?: string;
  /** The underlying error, e.g. a network error. */
  cause?: unknown;
}

/** A failed cloudide request. `message` is the server's message when it sent one. */
export class CloudIDEError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | undefined;
  readonly retryAfter: number | null;
  readonly body: string;
  readonly cause: unknown;

  constructor(message: string, options: ICloudIDEErrorOptions) {
    super(message);
    this.name = 'CloudIDEError';
    this.status = options.status;
    this.code = options.code ?? defaultCode(options.status);
    this.field = options.field;
    this.retryAfter = options.retryAfter ?? null;
    this.body = options.body ?? '';
    this.cause = options.cause;
    // Keep `instanceof` working when compiled to older targets.
    Object.setPrototypeOf(this, CloudIDEError.prototype);
  }

  /** True for a 429 (rate limit or exhausted budget). */
  get isRateLimited(): boolean {
    return this.status === 429;
  }
}

/** A code for responses whose body did not carry one. */
export function defaultCode(status: number): string {
  switch (status) {
    case 0:
      return 'network_error';
    case 400:
      return 'invalid_input';
    case 401:
      return 'unauthorized';
    case 403:
      return 'forbidden';
    case 404:
      return 'not_found';
    case 409:
      return 'conflict';
    case 413:
      return 'payload_too_large';
    case 429:
      return 'rate_limited';
    case 503:
      return 'unavailable';
    default:
      return status >= 500 ? 'internal_error' : 'http_error';
  }
}

/**
 * Parse a `Retry-After` header: either delay-seconds or an HTTP-date.
 *
 * Returns seconds (never negative), or null when absent or unparseable.
 */
export function parseRetryAfter(
  value: string | null | undefined,
  now: number = Date.now()
): number | null {
  if (value === null || value === undefined) {
    return null;
  }
  const text = value.trim();
  if (text === '') {
    return null;
  }
  if (/^\d+(\.\d+)?$/.test(text)) {
    return Number(text);
  }
  // An HTTP-date always names a weekday and a month; this rejects "-5" and the
  // like, which Date.parse would happily read as a year.
  if (!/[a-z]/i.test(text)) {
    return null;
  }
  const date = Date.parse(text);
  if (Number.isNaN(date)) {
    return null;
  }
  return Math.max(0, (date - now) / 1000);
}

/** Parse a response text as JSON; `undefined` when it is empty or not JSON. */
export function parseJSON(text: string): unknown {
  if (text.trim() === '') {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isErrorBody(value: unknown): value is IErrorBody {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function nonEmptyString(value: unknown): string | undefined {
  return typeof value === 'string' && value.trim() !== '' ? value : undefined;
}

/**
 * Build the `CloudIDEError` for a non-OK response from its status, headers and text.
 *
 * The message is the server's `message` (or jupyter_server's `reason`); for a body
 * that is not our JSON (a proxy's HTML page, say) it is `HTTP <status> <statusText>`.
 * The retry delay comes from `Retry-After`, else from the body's `retry_after_s`.
 */
export function errorFromParts(
  status: number,
  statusText: string,
  headers: Pick<Headers, 'get'>,
  text: string,
  now: number = Date.now()
): CloudIDEError {
  const parsed = parseJSON(text);
  const body = isErrorBody(parsed) ? parsed : {};
  const fallback = `HTTP ${status}${statusText ? ` ${statusText}` : ''}`;
  const message =
    nonEmptyString(body.message) ?? nonEmptyString(body.reason) ?? fallback;
  let retryAfter = parseRetryAfter(headers.get('Retry-After'), now);
  if (
    retryAfter === null &&
    typeof body.retry_after_s === 'number' &&
    Number.isFinite(body.retry_after_s) &&
    body.retry_after_s >= 0
  ) {
    retryAfter = body.retry_after_s;
  }
  return new CloudIDEError(message, {
    status,
    code: nonEmptyString(body.code),
    field: nonEmptyString(body.field),
    retryAfter,
    body: text.slice(0, MAX_KEPT_BODY)
  });
}

/** Read a non-OK `Response` and map it to a `CloudIDEError`. */
export async function errorFromResponse(
  response: Response,
  now: number = Date.now()
): Promise<CloudIDEError> {
  let text = '';
  try {
    text = await response.text();
  } catch {
    // A body that cannot be read still yields an error from the status line.
  }
  return errorFromParts(
    response.status,
    response.statusText,
    response.headers,
    text,
    now
  );
}

/** Wrap a failure to reach the server at all (DNS, connection reset, CORS, ...). */
export function networkError(cause: unknown): CloudIDEError {
  const detail =
    cause instanceof Error && cause.message ? `: ${cause.message}` : '';
  return new CloudIDEError(`Could not reach the server${detail}`, {
    status: 0,
    cause
  });
}
