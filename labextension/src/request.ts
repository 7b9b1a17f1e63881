/**
 * The one helper through which the frontend calls the cloudide REST API.
 *
 * `ServerConnection.makeRequest` adds the token/cookie and the XSRF header, so no
 * plugin handles credentials itself. Every failure becomes a `CloudIDEError`.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import {
  CloudIDEError,
  errorFromParts,
  errorFromResponse,
  networkError
} from './errors';
import { API_NAMESPACE } from './tokens';

export {
  CloudIDEError,
  errorFromParts,
  errorFromResponse,
  parseJSON,
  parseRetryAfter
} from './errors';

/** The full URL of an API endpoint, e.g. `apiUrl(base, 'health')`. */
export function apiUrl(baseUrl: string, endPoint: string): string {
  return URLExt.join(baseUrl, API_NAMESPACE, endPoint);
}

/**
 * Call a cloudide REST endpoint and return its parsed JSON body.
 *
 * @param endPoint - path below `cloudide/api/` (may carry a query string)
 * @param init - fetch options (method, body, signal, ...)
 * @param settings - connection settings; defaults to `ServerConnection.makeSettings()`
 * @returns the parsed JSON body, or `undefined` for an empty body (e.g. 204)
 * @throws {CloudIDEError} on a network failure, a non-2xx status or a non-JSON body
 */
export async function requestAPI<T>(
  endPoint = '',
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = apiUrl(settings.baseUrl, endPoint);

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw networkError(error);
  }

  if (!response.ok) {
    throw await errorFromResponse(response);
  }

  let text: string;
  try {
    text = await response.text();
  } catch (error) {
    throw networkError(error);
  }
  if (text.trim() === '') {
    return undefined as T;
  }
  try {
    return JSON.parse(text) as T;
  } catch (error) {
    // A 2xx that is not JSON (a proxy's login page, say) is an error too.
    const wrapped = errorFromParts(
      response.status,
      response.statusText,
      response.headers,
      text
    );
    throw new CloudIDEError('The server sent a response that is not JSON', {
      status: wrapped.status,
      code: 'invalid_response',
      body: wrapped.body,
      cause: error
    });
  }
}
