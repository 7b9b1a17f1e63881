/**
 * Pure helpers of the usage views: number formats, the budget level and the status-bar
 * text. Nothing here imports the DOM or JupyterLab, so it is unit-tested as is.
 */

import type { IBudget, IUsageReport } from './types';

/** Budget percentage at which the status turns to a warning when the budget names none. */
export const DEFAULT_WARN_PERCENT = 80;

/** A finite number, else 0 (the server's JSON may carry null for a missing value). */
export function num(value: unknown): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : 0;
}

// -- number formats --------------------------------------------------------------------------

/** `1234567.5` → `1,234,567.5`, without locale surprises. */
export function groupThousands(text: string | number): string {
  const [int, frac] = String(text).split('.');
  const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return frac !== undefined ? `${grouped}.${frac}` : grouped;
}

/**
 * Money in dollars: `$1.23`, `$1,234.00`; amounts below a cent read `<$0.01` (or, with
 * `precise`, up to four decimals: `$0.0042`).
 */
export function formatCost(value: unknown, options: { precise?: boolean } = {}): string {
  const v = num(value);
  const sign = v < 0 ? '-' : '';
  const abs = Math.abs(v);
  if (abs === 0) {
    return '$0.00';
  }
  if (abs < 0.01) {
    if (options.precise) {
      const text = abs.toFixed(4);
      return text === '0.0000' ? `${sign}<$0.0001` : `${sign}$${text}`;
    }
    return `${sign}<$0.01`;
  }
  return `${sign}$${groupThousands(abs.toFixed(2))}`;
}

/** Token counts, compact: `950`, `1.2k`, `3.4M`, `1.1B`. */
export function formatTokens(value: unknown): string {
  const v = Math.round(num(value));
  const abs = Math.abs(v);
  const compact = (n: number, suffix: string): string => {
    const text = n >= 100 ? n.toFixed(0) : n.toFixed(1).replace(/\.0$/, '');
    return `${v < 0 ? '-' : ''}${text}${suffix}`;
  };
  if (abs < 1000) {
    return String(v);
  }
  if (abs < 999_950) {
    return compact(abs / 1e3, 'k');
  }
  if (abs < 999_950_000) {
    return compact(abs / 1e6, 'M');
  }
  return compact(abs / 1e9, 'B');
}

/** A whole count with thousands separators. */
export function formatCount(value: unknown): string {
  return groupThousands(Math.round(num(value)));
}

/** Seconds as `0 s`, `4.2 s`, `42 s`, `3 min 20 s`, `25 min`, `2 h 05 min`. */
export function formatDuration(seconds: unknown): string {
  const s = Math.max(0, num(seconds));
  if (s < 10) {
    return `${s === 0 ? 0 : s.toFixed(1).replace(/\.0$/, '')} s`;
  }
  if (s < 60) {
    return `${Math.round(s)} s`;
  }
  if (s < 3600) {
    const total = Math.round(s);
    const m = Math.floor(total / 60);
    const rest = total % 60;
    return m < 10 && rest ? `${m} min ${rest} s` : `${Math.round(s / 60)} min`;
  }
  const totalMin = Math.round(s / 60);
  const h = Math.floor(totalMin / 60);
  const m = totalMin % 60;
  return `${h} h ${String(m).padStart(2, '0')} min`;
}

/** `0.061` → `6%`, `0.0042` → `0.4%`. */
export function formatPercent(fraction: number): string {
  const p = num(fraction) * 100;
  if (p !== 0 && Math.abs(p) < 1) {
    return `${p.toFixed(1)}%`;
  }
  return `${Math.round(p)}%`;
}

// -- budget and status bar -------------------------------------------------------------------

export type BudgetLevel = 'none' | 'ok' | 'warning' | 'exceeded';

/** Spent as a percentage of the limit, or null without a usable budget. */
export function budgetPercent(budget: IBudget | null | undefined): number | null {
  if (!budget || !(num(budget.limit) > 0)) {
    return null;
  }
  return (num(budget.spent) / num(budget.limit)) * 100;
}

/**
 * `warning` from the budget's `warn_percent` (80 when it names none), `exceeded` at 100; the
 * server's `state` wins when it sends one (a zero limit is exhausted, not "no budget").
 */
export function budgetLevel(budget: IBudget | null | undefined): BudgetLevel {
  if (budget && budget.state === 'exhausted') {
    return 'exceeded';
  }
  if (budget && budget.state === 'warning') {
    return 'warning';
  }
  const percent = budgetPercent(budget);
  if (percent === null) {
    return 'none';
  }
  if (percent >= 100) {
    return 'exceeded';
  }
  const warnAt =
    typeof budget!.warn_percent === 'number' && Number.isFinite(budget!.warn_percent)
      ? budget!.warn_percent
      : DEFAULT_WARN_PERCENT;
  return percent >= warnAt ? 'warning' : 'ok';
}

/** A budget amount in its metric's unit: dollars, or kernel time for `kernel_seconds`. */
export function formatBudgetAmount(budget: IBudget, value: unknown, precise = false): string {
  return budget.metric === 'kernel_seconds'
    ? formatDuration(value)
    : formatCost(value, { precise });
}

/** `this month`, `today`, `this week`. */
export function periodLabel(period: string | undefined): string {
  switch (period) {
    case 'day':
      return 'today';
    case 'month':
    case undefined:
    case '':
      return 'this month';
    default:
      return `this ${period}`;
  }
}

/** Midnight UTC of the first day of `now`'s month (the server buckets in UTC). */
export function monthStartUTC(now: Date): number {
  return Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
}

/**
 * Spend since the start of this (UTC) month: the budget's own figure when the budget is
 * monthly, else the sum of the series buckets that start this month.
 */
export function monthToDateCost(report: IUsageReport, now: Date): number {
  const budget = report.budget;
  if (budget && budget.period === 'month') {
    return num(budget.spent);
  }
  const start = monthStartUTC(now);
  let sum = 0;
  for (const point of report.series ?? []) {
    const t = parseTime(point.t);
    if (t !== null && t >= start && t <= now.getTime()) {
      sum += num(point.cost);
    }
  }
  return sum;
}

/** What the status-bar item shows. */
export interface IStatusView {
  text: string;
  title: string;
  level: BudgetLevel;
  percent: number | null;
}

/**
 * `$1.23` (spend this month), or `$1.23 / $20.00` against the budget; a budget for another
 * period than the month says so (`$0.40 / $5.00 today`).
 */
export function usageStatus(report: IUsageReport, now: Date): IStatusView {
  const budget = report.budget;
  const percent = budgetPercent(budget);
  const level = budgetLevel(budget);
  const spent = monthToDateCost(report, now);
  if (!budget || percent === null) {
    return {
      text: formatCost(spent),
      title: `AI spend this month: ${formatCost(spent, { precise: true })}. Click for details.`,
      level,
      percent
    };
  }
  const period = budget.period || 'month';
  const suffix = period === 'month' ? '' : ` ${periodLabel(period)}`;
  const amount = (v: unknown, precise = false) => formatBudgetAmount(budget, v, precise);
  const text = `${amount(budget.spent)} / ${amount(budget.limit)}${suffix}`;
  const what = budget.metric === 'kernel_seconds' ? 'Kernel time' : 'AI spend';
  const state =
    level === 'exceeded'
      ? ' The budget is used up.'
      : level === 'warning'
        ? ' Close to the budget.'
        : '';
  return {
    text,
    title:
      `${what} ${periodLabel(period)}: ${amount(budget.spent, true)} of ` +
      `${amount(budget.limit)} (${formatPercent(num(budget.spent) / num(budget.limit))}).` +
      `${state} Click for details.`,
    level,
    percent
  };
}

/** The panel's budget line: `$1.23 of $20.00 this month (6%)`, or null without a budget. */
export function budgetText(budget: IBudget | null | undefined): string | null {
  const percent = budgetPercent(budget);
  if (!budget || percent === null) {
    return null;
  }
  return (
    `${formatBudgetAmount(budget, budget.spent, true)} of ` +
    `${formatBudgetAmount(budget, budget.limit)} ` +
    `${periodLabel(budget.period)} (${formatPercent(percent / 100)})`
  );
}

/** The budget a `budget.warning` event frame carries, or null for any other frame. */
export function budgetWarningOf(frame: {
  type?: string;
  payload?: unknown;
  replayed?: boolean;
}): IBudget | null {
  const payload = frame.payload as { kind?: unknown; budget?: unknown } | null | undefined;
  if (
    frame.type !== 'event' ||
    frame.replayed ||
    !payload ||
    payload.kind !== 'budget.warning' ||
    !payload.budget ||
    typeof payload.budget !== 'object'
  ) {
    return null;
  }
  return payload.budget as IBudget;
}

/** `the group research's`, `your`: whose budget a scope key names. */
function whose(scope: string | undefined): string {
  if (scope && scope.startsWith('group:')) {
    return `the team budget of ${scope.slice('group:'.length)}`;
  }
  return 'your budget';
}

/**
 * The notice shown when a budget crosses its warning threshold: `You have used 82% of your
 * monthly AI budget ($16.40 of $20.00). It resets on 2026-04-01 (UTC).`
 */
export function budgetNoticeText(budget: IBudget): string {
  const percent = budgetPercent(budget) ?? num(budget.percent);
  const what = budget.metric === 'kernel_seconds' ? 'kernel-time' : 'AI spending';
  const period = budget.period === 'day' ? 'daily' : 'monthly';
  const amounts =
    `${formatBudgetAmount(budget, budget.spent, true)} of ` +
    `${formatBudgetAmount(budget, budget.limit)}`;
  const reset =
    typeof budget.resets_at === 'string' && budget.resets_at.length >= 10
      ? ` It resets on ${budget.resets_at.slice(0, 10)} (UTC).`
      : '';
  const who = whose(budget.scope);
  const used = percent >= 100 ? 'all' : formatPercent(percent / 100);
  return `You have used ${used} of ${who} (${period} ${what}: ${amounts}).${reset}`;
}

/** Whether a `event` frame reports metered model usage (`turn.usage`). */
export function isUsageEvent(frame: {
  type?: string;
  payload?: unknown;
  replayed?: boolean;
}): boolean {
  const payload = frame.payload as { kind?: unknown } | null | undefined;
  return (
    frame.type === 'event' && !frame.replayed && !!payload && payload.kind === 'turn.usage'
  );
}

/**
 * Milliseconds since the epoch, or null for a missing or unparseable time. A date-time
 * without an offset (a database that dropped it) is read as UTC, not as browser time.
 */
export function parseTime(value: unknown): number | null {
  if (typeof value !== 'string' || value === '') {
    return null;
  }
  const naive = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(value);
  const t = Date.parse(naive ? `${value.replace(' ', 'T')}Z` : value);
  return Number.isNaN(t) ? null : t;
}
