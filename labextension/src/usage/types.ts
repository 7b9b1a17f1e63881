/**
 * Wire types of `GET cloudide/api/usage?days=<n>&bucket=<day|hour>`: the caller's usage and
 * cost, totals, per model, over time, and the budget that applies.
 *
 * Times are ISO 8601 strings; series buckets start at `t` (UTC). Keep in step with the
 * server's `Usage` schema in `jupyter_cloudide/api.yaml`.
 */

export type UsageBucket = 'day' | 'hour' | 'week' | string;

export interface IUsageTotals {
  cost: number;
  input_tokens: number;
  output_tokens: number;
  cached_tokens?: number;
  calls: number;
  kernel_busy_seconds: number;
  kernel_seconds: number;
}

export interface IModelUsage {
  model: string | null;
  cost: number;
  input_tokens: number;
  output_tokens: number;
  cached_tokens?: number;
  calls: number;
}

/** One model's usage in one bucket. */
export interface IUsagePoint {
  t: string;
  model: string | null;
  cost: number;
  input_tokens?: number;
  output_tokens?: number;
}

/** Kernel time in one bucket. */
export interface IKernelPoint {
  t: string;
  busy_seconds: number;
  seconds?: number;
}

export interface IBudget {
  limit: number;
  spent: number;
  period: 'month' | 'day' | 'week' | string;
  warn_percent?: number;
  /** `user:<name>` or `group:<name>` (a team budget) */
  scope?: string;
  /** `cost` (USD, the default) or `kernel_seconds` */
  metric?: 'cost' | 'kernel_seconds' | string;
  /** held by requests in progress */
  reserved?: number;
  percent?: number;
  /** the server's verdict: wins over what spent/limit say */
  state?: 'ok' | 'warning' | 'exhausted' | string;
  period_start?: string;
  resets_at?: string;
}

/** Body of `GET cloudide/api/usage`. */
export interface IUsageReport {
  user?: string;
  since: string;
  until: string;
  bucket: UsageBucket;
  totals: IUsageTotals;
  models: IModelUsage[];
  series: IUsagePoint[];
  kernel_series: IKernelPoint[];
  budget: IBudget | null;
  /** every budget that applies, most used first (`budget` is the first) */
  budgets?: IBudget[];
}

/** Payload of an `event` frame of kind `budget.warning` (once per budget and period). */
export interface IBudgetWarningEvent {
  kind: 'budget.warning';
  budget: IBudget;
}

/** Payload of an `event` frame of kind `turn.usage` (sent after each metered model call). */
export interface ITurnUsageEvent {
  kind: 'turn.usage';
  turn_id?: string;
  model?: string;
  input_tokens?: number;
  output_tokens?: number;
  cached_tokens?: number;
  cost?: number;
  estimated?: boolean;
}
