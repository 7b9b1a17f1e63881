/**
 * `GET cloudide/api/usage`: the caller's usage and cost over the last `days` days.
 */

import { requestAPI } from '../request';
import type { IUsageReport } from './types';

/** Days the status bar asks for: enough to cover the whole current month. */
export const MONTH_DAYS = 31;

/** Fetch the usage report for the last `days` days, in `bucket` buckets. */
export function fetchUsage(
  days: number,
  bucket: 'day' | 'hour' = 'day',
  signal?: AbortSignal
): Promise<IUsageReport> {
  const query = new URLSearchParams({
    days: String(Math.max(1, Math.round(days))),
    bucket
  });
  return requestAPI<IUsageReport>(`usage?${query}`, { method: 'GET', signal });
}
