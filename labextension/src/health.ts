/**
 * Reading and presenting `GET cloudide/api/health`.
 */

import { Widget } from '@lumino/widgets';

import { requestAPI } from './request';
import type { IHealthResponse } from './tokens';

/** Fetch the server's health report. */
export function fetchHealth(init: RequestInit = {}): Promise<IHealthResponse> {
  return requestAPI<IHealthResponse>('health', { method: 'GET', ...init });
}

/** The one-line console summary: `jupyter_cloudide <version> loaded (<status>)`. */
export function healthSummary(health: IHealthResponse): string {
  return `jupyter_cloudide ${health.version} loaded (${health.status})`;
}

/**
 * A widget showing `value` as preformatted text.
 *
 * Uses `textContent`, never `innerHTML`: the text comes from the server.
 */
export function preformattedWidget(value: unknown): Widget {
  const pre = document.createElement('pre');
  pre.className = 'jp-cloudide-health';
  pre.textContent =
    typeof value === 'string' ? value : JSON.stringify(value, null, 2);
  return new Widget({ node: pre });
}
