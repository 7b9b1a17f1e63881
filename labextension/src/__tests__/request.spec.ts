import { ServerConnection } from '@jupyterlab/services';
import { describe, expect, it } from 'vitest';

import {
  CloudIDEError,
  defaultCode,
  errorFromParts,
  errorFromResponse,
  networkError,
  parseJSON,
  parseRetryAfter
} from '../errors';
import { apiUrl, requestAPI } from '../request';

const NOW = Date.UTC(2025, 0, 1, 12, 0, 0);

/** The CloudIDEError a promise rejects with (fails the test if it resolves). */
async function rejection(promise: Promise<unknown>): Promise<CloudIDEError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(CloudIDEError);
    return error as CloudIDEError;
  }
  throw new Error('expected the request to fail');
}

function jsonResponse(
  status: number,
  body: unknown,
  headers: Record<string, string> = {}
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers }
  });
}

describe('parseRetryAfter', () => {
  it('reads delay-seconds', () => {
    expect(parseRetryAfter('30', NOW)).toBe(30);
    expect(parseRetryAfter(' 0 ', NOW)).toBe(0);
    expect(parseRetryAfter('1.5', NOW)).toBe(1.5);
  });

  it('reads an HTTP-date relative to now', () => {
    const in90s = new Date(NOW + 90_000).toUTCString();
    expect(parseRetryAfter(in90s, NOW)).toBe(90);
  });

  it('never returns a negative delay for a past date', () => {
    const past = new Date(NOW - 60_000).toUTCString();
    expect(parseRetryAfter(past, NOW)).toBe(0);
  });

  it('returns null when absent or unparseable', () => {
    expect(parseRetryAfter(null, NOW)).toBeNull();
    expect(parseRetryAfter(undefined, NOW)).toBeNull();
    expect(parseRetryAfter('', NOW)).toBeNull();
    expect(parseRetryAfter('soon', NOW)).toBeNull();
    expect(parseRetryAfter('-5', NOW)).toBeNull();
  });
});

describe('parseJSON', () => {
  it('parses JSON and tolerates anything else', () => {
    expect(parseJSON('{"a": 1}')).toEqual({ a: 1 });
    expect(parseJSON('')).toBeUndefined();
    expect(parseJSON('<html>oops</html>')).toBeUndefined();
  });
});

describe('errorFromResponse', () => {
  it('maps a 429 with Retry-After seconds', async () => {
    const error = await errorFromResponse(
      jsonResponse(
        429,
        {
          status: 429,
          code: 'rate_limited',
          message: 'Too many requests: slow down',
          retry_after_s: 12.5
        },
        { 'Retry-After': '7' }
      ),
      NOW
    );
    expect(error).toBeInstanceOf(CloudIDEError);
    expect(error).toBeInstanceOf(Error);
    expect(error.status).toBe(429);
    expect(error.code).toBe('rate_limited');
    expect(error.message).toBe('Too many requests: slow down');
    // The header wins over the body.
    expect(error.retryAfter).toBe(7);
    expect(error.isRateLimited).toBe(true);
  });

  it('maps a 429 with an HTTP-date Retry-After', async () => {
    const error = await errorFromResponse(
      jsonResponse(
        429,
        { status: 429, message: 'budget exhausted' },
        { 'Retry-After': new Date(NOW + 120_000).toUTCString() }
      ),
      NOW
    );
    expect(error.retryAfter).toBe(120);
    expect(error.code).toBe('rate_limited');
  });

  it('falls back to retry_after_s in the body without a header', async () => {
    const error = await errorFromResponse(
      jsonResponse(429, { status: 429, message: 'slow', retry_after_s: 3.25 }),
      NOW
    );
    expect(error.retryAfter).toBe(3.25);
  });

  it('keeps the server message, code and field', async () => {
    const error = await errorFromResponse(
      jsonResponse(400, {
        status: 400,
        code: 'invalid_input',
        message: 'title is too long',
        field: 'title'
      })
    );
    expect(error.status).toBe(400);
    expect(error.code).toBe('invalid_input');
    expect(error.field).toBe('title');
    expect(error.message).toBe('title is too long');
    expect(error.retryAfter).toBeNull();
  });

  it("uses jupyter_server's reason when there is no message", async () => {
    const error = await errorFromResponse(
      jsonResponse(403, { message: '', reason: 'Forbidden' })
    );
    expect(error.message).toBe('Forbidden');
    expect(error.code).toBe('forbidden');
  });

  it('handles a non-JSON error body', async () => {
    const html = '<html><body><h1>502 Bad Gateway</h1></body></html>';
    const error = await errorFromResponse(
      new Response(html, {
        status: 502,
        statusText: 'Bad Gateway',
        headers: { 'Content-Type': 'text/html' }
      })
    );
    expect(error.status).toBe(502);
    expect(error.code).toBe('internal_error');
    expect(error.message).toBe('HTTP 502 Bad Gateway');
    expect(error.message).not.toContain('<');
    expect(error.body).toBe(html);
    expect(error.retryAfter).toBeNull();
  });

  it('handles an empty body and a JSON body that is not an object', async () => {
    const empty = await errorFromResponse(new Response(null, { status: 404 }));
    expect(empty.message).toBe('HTTP 404');
    expect(empty.code).toBe('not_found');

    const list = await errorFromResponse(jsonResponse(500, ['x']));
    expect(list.message).toBe('HTTP 500');
    expect(list.code).toBe('internal_error');
  });

  it('truncates a huge body', async () => {
    const error = await errorFromResponse(
      new Response('x'.repeat(10_000), { status: 500 })
    );
    expect(error.body.length).toBe(2000);
  });
});

describe('errorFromParts', () => {
  it('ignores a negative or non-numeric retry_after_s', () => {
    const headers = new Headers();
    expect(
      errorFromParts(429, '', headers, '{"retry_after_s": -1}').retryAfter
    ).toBeNull();
    expect(
      errorFromParts(429, '', headers, '{"retry_after_s": "5"}').retryAfter
    ).toBeNull();
  });
});

describe('networkError and defaultCode', () => {
  it('wraps a failure to connect as status 0', () => {
    const cause = new TypeError('Failed to fetch');
    const error = networkError(cause);
    expect(error.status).toBe(0);
    expect(error.code).toBe('network_error');
    expect(error.message).toContain('Failed to fetch');
    expect(error.cause).toBe(cause);
  });

  it('names common statuses', () => {
    expect(defaultCode(401)).toBe('unauthorized');
    expect(defaultCode(413)).toBe('payload_too_large');
    expect(defaultCode(503)).toBe('unavailable');
    expect(defaultCode(418)).toBe('http_error');
  });
});

describe('requestAPI', () => {
  // An awkward base URL flushes out URL-joining bugs.
  const BASE = 'http://localhost:8888/a%40b/';

  function settingsFor(
    respond: (url: string, init: RequestInit) => Response | Promise<Response>
  ): { settings: ServerConnection.ISettings; calls: string[] } {
    const calls: string[] = [];
    const fakeFetch = async (
      input: RequestInfo | URL,
      init?: RequestInit
    ): Promise<Response> => {
      const url = input instanceof Request ? input.url : String(input);
      calls.push(url);
      return respond(url, init ?? {});
    };
    const settings = ServerConnection.makeSettings({
      baseUrl: BASE,
      fetch: fakeFetch as typeof fetch
    });
    return { settings, calls };
  }

  it('joins the URL under cloudide/api and parses JSON', async () => {
    const health = { version: '0.1.0', status: 'ok', components: {} };
    const { settings, calls } = settingsFor(() => jsonResponse(200, health));
    await expect(requestAPI('health', {}, settings)).resolves.toEqual(health);
    expect(calls).toHaveLength(1);
    expect(calls[0].startsWith(`${BASE}cloudide/api/health`)).toBe(true);
    expect(apiUrl(BASE, 'conversations/abc')).toBe(
      `${BASE}cloudide/api/conversations/abc`
    );
  });

  it('returns undefined for an empty 204', async () => {
    const { settings } = settingsFor(() => new Response(null, { status: 204 }));
    await expect(
      requestAPI('conversations/x', { method: 'DELETE' }, settings)
    ).resolves.toBeUndefined();
  });

  it('throws a CloudIDEError with retryAfter for a 429', async () => {
    const { settings } = settingsFor(() =>
      jsonResponse(
        429,
        { status: 429, code: 'rate_limited', message: 'slow down' },
        { 'Retry-After': '5' }
      )
    );
    const error = await rejection(requestAPI('health', {}, settings));
    expect(error).toBeInstanceOf(CloudIDEError);
    expect(error.status).toBe(429);
    expect(error.retryAfter).toBe(5);
    expect(error.message).toBe('slow down');
  });

  it('throws invalid_response for a 200 that is not JSON', async () => {
    const { settings } = settingsFor(
      () => new Response('<html>login</html>', { status: 200 })
    );
    const error = await rejection(requestAPI('health', {}, settings));
    expect(error).toBeInstanceOf(CloudIDEError);
    expect(error.code).toBe('invalid_response');
    expect(error.status).toBe(200);
  });

  it('throws a status-0 CloudIDEError when the server is unreachable', async () => {
    const { settings } = settingsFor(() => {
      throw new TypeError('Failed to fetch');
    });
    const error = await rejection(requestAPI('health', {}, settings));
    expect(error).toBeInstanceOf(CloudIDEError);
    expect(error.status).toBe(0);
    expect(error.code).toBe('network_error');
  });
});
