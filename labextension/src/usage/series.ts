/**
 * Pure geometry and aggregation of the usage views: time buckets, cost stacked per model,
 * kernel time, axis ticks, the layout of the bar charts, and the per-model table rows.
 * Nothing here imports the DOM or JupyterLab, so it is unit-tested as is.
 */

import {
  formatCost,
  formatCount,
  formatDuration,
  formatPercent,
  formatTokens,
  groupThousands,
  num,
  parseTime
} from './format';
import type { IModelUsage, IUsageReport } from './types';

const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;
/** More buckets than this are not laid out as a regular axis (only the ones with data). */
const MAX_BUCKETS = 1000;
const MONTHS = [
  'Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'
];
/** Label of series rows without a model (and of the models folded together). */
export const UNKNOWN_MODEL = '(unknown)';
export const OTHER_MODELS = 'Other models';

// -- time buckets ----------------------------------------------------------------------------

/** Length of a regular bucket, or null when the axis is just the buckets with data. */
export function bucketMs(bucket: string): number | null {
  return bucket === 'day' ? DAY_MS : bucket === 'hour' ? HOUR_MS : null;
}

/** The start of the bucket holding `t` (UTC days and hours). */
export function bucketStart(t: number, bucket: string): number {
  const size = bucketMs(bucket);
  return size === null ? t : Math.floor(t / size) * size;
}

/**
 * The buckets of the x axis, ascending: every bucket from `since` to `until` for day and
 * hour buckets (so days without usage show as gaps), plus any bucket that has data.
 */
export function bucketAxis(
  since: unknown,
  until: unknown,
  bucket: string,
  times: readonly number[]
): number[] {
  const keys = new Set<number>();
  for (const t of times) {
    keys.add(bucketStart(t, bucket));
  }
  const size = bucketMs(bucket);
  const from = parseTime(since);
  const to = parseTime(until);
  if (size !== null && from !== null && to !== null && to >= from) {
    const first = bucketStart(from, bucket);
    const last = to === first ? first : bucketStart(to - 1, bucket);
    if ((last - first) / size < MAX_BUCKETS) {
      for (let t = first; t <= last; t += size) {
        keys.add(t);
      }
    }
  }
  return Array.from(keys).sort((a, b) => a - b);
}

/** A bucket's axis label: `Nov 21`, or `Nov 21 14h` for hours. */
export function bucketLabel(t: number, bucket: string): string {
  const d = new Date(t);
  const day = `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`;
  if (bucket === 'hour') {
    return `${day} ${String(d.getUTCHours()).padStart(2, '0')}h`;
  }
  return day;
}

// -- stacking --------------------------------------------------------------------------------

export interface ISegment {
  /** Legend entry (and colour slot) of the segment. */
  series: number;
  value: number;
  y0: number;
  y1: number;
}

export interface IStack {
  t: number;
  total: number;
  segments: ISegment[];
}

/** Values per bucket and series, stacked in legend order (first series at the bottom). */
export interface IStackedSeries {
  bucket: string;
  /** Legend: series names; index = colour slot. */
  names: string[];
  stacks: IStack[];
  max: number;
}

function modelName(model: unknown): string {
  return typeof model === 'string' && model.trim() !== '' ? model : UNKNOWN_MODEL;
}

/**
 * Cost per bucket stacked per model. Models are ordered by their total cost in the series
 * (largest at the bottom); beyond `maxSeries` the smallest are folded into one "Other".
 */
export function stackCost(report: IUsageReport, maxSeries = 6): IStackedSeries {
  const bucket = String(report.bucket || 'day');
  const rows: { t: number; name: string; value: number }[] = [];
  const totals = new Map<string, number>();
  for (const point of report.series ?? []) {
    const t = parseTime(point?.t);
    const value = num(point?.cost);
    if (t === null) {
      continue;
    }
    const name = modelName(point.model);
    rows.push({ t: bucketStart(t, bucket), name, value });
    totals.set(name, (totals.get(name) ?? 0) + value);
  }
  let names = Array.from(totals.keys()).sort(
    (a, b) => (totals.get(b) ?? 0) - (totals.get(a) ?? 0) || (a < b ? -1 : a > b ? 1 : 0)
  );
  const slot = new Map<string, number>();
  if (names.length > maxSeries && maxSeries >= 2) {
    const kept = names.slice(0, maxSeries - 1);
    kept.forEach((name, i) => slot.set(name, i));
    for (const name of names.slice(maxSeries - 1)) {
      slot.set(name, kept.length);
    }
    names = [...kept, OTHER_MODELS];
  } else {
    names.forEach((name, i) => slot.set(name, i));
  }
  const axis = bucketAxis(report.since, report.until, bucket, rows.map(r => r.t));
  const values = new Map<number, number[]>();
  for (const t of axis) {
    values.set(t, names.map(() => 0));
  }
  for (const row of rows) {
    values.get(row.t)![slot.get(row.name)!] += row.value;
  }
  return stacksOf(bucket, names, axis, values);
}

/** Kernel busy seconds per bucket, as a one-series stack. */
export function stackKernel(report: IUsageReport): IStackedSeries {
  const bucket = String(report.bucket || 'day');
  const rows: { t: number; value: number }[] = [];
  for (const point of report.kernel_series ?? []) {
    const t = parseTime(point?.t);
    if (t !== null) {
      rows.push({ t: bucketStart(t, bucket), value: num(point.busy_seconds) });
    }
  }
  const axis = bucketAxis(report.since, report.until, bucket, rows.map(r => r.t));
  const values = new Map<number, number[]>();
  for (const t of axis) {
    values.set(t, [0]);
  }
  for (const row of rows) {
    values.get(row.t)![0] += row.value;
  }
  return stacksOf(bucket, ['Kernel busy time'], axis, values);
}

function stacksOf(
  bucket: string,
  names: string[],
  axis: number[],
  values: Map<number, number[]>
): IStackedSeries {
  let max = 0;
  const stacks = axis.map(t => {
    let y = 0;
    const segments: ISegment[] = [];
    values.get(t)!.forEach((value, series) => {
      // negative amounts (refunds, corrections) cannot be stacked: they are left out
      if (value > 0) {
        segments.push({ series, value, y0: y, y1: y + value });
        y += value;
      }
    });
    max = Math.max(max, y);
    return { t, total: y, segments };
  });
  return { bucket, names, stacks, max };
}

// -- scales ----------------------------------------------------------------------------------

/** A "nice" step (1, 2, 2.5 or 5 times a power of ten) at least `rough`. */
export function niceStep(rough: number): number {
  if (!(rough > 0) || !Number.isFinite(rough)) {
    return 1;
  }
  const power = Math.pow(10, Math.floor(Math.log10(rough)));
  for (const m of [1, 2, 2.5, 5, 10]) {
    const step = m * power;
    if (step >= rough * (1 - 1e-9)) {
      return step;
    }
  }
  return 10 * power;
}

/** Ticks from 0 to a nice maximum at or above `max`, about `count` intervals. */
export function niceTicks(max: number, count = 4): { max: number; step: number; ticks: number[] } {
  const top = max > 0 && Number.isFinite(max) ? max : 1;
  const step = niceStep(top / Math.max(1, count));
  const n = Math.max(1, Math.ceil(top / step - 1e-9));
  const ticks: number[] = [];
  for (let i = 0; i <= n; i++) {
    ticks.push(Number((i * step).toPrecision(12)));
  }
  return { max: ticks[ticks.length - 1], step, ticks };
}

/** Map [0, domainMax] to [0, rangeMax] (0 for everything when the domain is empty). */
export function linearScale(domainMax: number, rangeMax: number): (value: number) => number {
  return domainMax > 0 ? value => (value / domainMax) * rangeMax : () => 0;
}

// -- chart geometry --------------------------------------------------------------------------

export interface IChartSize {
  width: number;
  height: number;
  margin: { top: number; right: number; bottom: number; left: number };
}

export const DEFAULT_CHART_SIZE: IChartSize = {
  width: 640,
  height: 220,
  margin: { top: 10, right: 12, bottom: 28, left: 56 }
};

export interface IBarRect {
  x: number;
  y: number;
  width: number;
  height: number;
  series: number;
  /** Tooltip text (rendered as an SVG `<title>` text node). */
  title: string;
}

export interface ITick {
  value: number;
  /** Position on the axis (y for the value axis, x centre for bucket labels). */
  pos: number;
  label: string;
}

export interface IBarChartLayout {
  width: number;
  height: number;
  plot: { x: number; y: number; width: number; height: number };
  bars: IBarRect[];
  yTicks: ITick[];
  xTicks: ITick[];
  /** No bucket has a positive value. */
  empty: boolean;
}

/**
 * Where every bar, tick and label of a stacked bar chart goes. `format` renders values
 * (axis and tooltips); at most `maxXLabels` bucket labels are placed, evenly spaced.
 */
export function layoutBars(
  data: IStackedSeries,
  format: (value: number) => string,
  size: IChartSize = DEFAULT_CHART_SIZE,
  maxXLabels = 8
): IBarChartLayout {
  const { width, height, margin } = size;
  const plot = {
    x: margin.left,
    y: margin.top,
    width: Math.max(1, width - margin.left - margin.right),
    height: Math.max(1, height - margin.top - margin.bottom)
  };
  const { max, ticks } = niceTicks(data.max);
  const scale = linearScale(max, plot.height);
  const bottom = plot.y + plot.height;
  const n = data.stacks.length;
  const band = n > 0 ? plot.width / n : plot.width;
  const barWidth = Math.max(1, band * 0.8);
  const bars: IBarRect[] = [];
  data.stacks.forEach((stack, i) => {
    const x = plot.x + i * band + (band - barWidth) / 2;
    const when = bucketLabel(stack.t, data.bucket);
    for (const segment of stack.segments) {
      const y1 = bottom - scale(segment.y1);
      const y0 = bottom - scale(segment.y0);
      const name = data.names[segment.series] ?? '';
      const total = stack.segments.length > 1 ? ` (total ${format(stack.total)})` : '';
      bars.push({
        x: round2(x),
        y: round2(y1),
        width: round2(barWidth),
        height: round2(Math.max(0, y0 - y1)),
        series: segment.series,
        title: `${when} \u00b7 ${name}: ${format(segment.value)}${total}`
      });
    }
  });
  const yTicks = ticks.map(value => ({
    value,
    pos: round2(bottom - scale(value)),
    label: format(value)
  }));
  const every = Math.max(1, Math.ceil(n / Math.max(1, maxXLabels)));
  const xTicks: ITick[] = [];
  for (let i = 0; i < n; i += every) {
    const t = data.stacks[i].t;
    xTicks.push({ value: t, pos: round2(plot.x + i * band + band / 2), label: bucketLabel(t, data.bucket) });
  }
  return {
    width,
    height,
    plot,
    bars,
    yTicks,
    xTicks,
    empty: data.max <= 0
  };
}

function round2(value: number): number {
  return Math.round(value * 100) / 100;
}

/** An axis label for money: `$0`, `$0.25`, `$10`. */
export function formatAxisCost(value: number): string {
  if (value === 0) {
    return '$0';
  }
  const text = value >= 10 ? value.toFixed(0) : value >= 1 ? value.toFixed(1) : String(Number(value.toPrecision(2)));
  return `$${groupThousands(text.replace(/\.0$/, ''))}`;
}

/** An axis label for seconds: `0`, `30 s`, `5 min`, `2 h`. */
export function formatAxisSeconds(value: number): string {
  if (value === 0) {
    return '0';
  }
  if (value < 120) {
    return `${Number(value.toPrecision(3))} s`;
  }
  if (value < 7200) {
    return `${Number((value / 60).toPrecision(3))} min`;
  }
  return `${Number((value / 3600).toPrecision(3))} h`;
}

// -- tables ----------------------------------------------------------------------------------

export interface IModelRow {
  model: string;
  calls: number;
  inputTokens: number;
  outputTokens: number;
  cachedTokens: number;
  cost: number;
  /** Share of the total cost, 0..1. */
  share: number;
}

/** One row per model, most expensive first. */
export function modelRows(report: IUsageReport): IModelRow[] {
  const models: IModelUsage[] = Array.isArray(report.models) ? report.models : [];
  const sum = models.reduce((acc, m) => acc + Math.max(0, num(m?.cost)), 0);
  const total = num(report.totals?.cost) > 0 ? num(report.totals.cost) : sum;
  return models
    .filter(m => m && typeof m === 'object')
    .map(m => ({
      model: modelName(m.model),
      calls: num(m.calls),
      inputTokens: num(m.input_tokens),
      outputTokens: num(m.output_tokens),
      cachedTokens: num(m.cached_tokens),
      cost: num(m.cost),
      share: total > 0 ? Math.max(0, num(m.cost)) / total : 0
    }))
    .sort((a, b) => b.cost - a.cost || b.calls - a.calls || (a.model < b.model ? -1 : 1));
}

export interface ITotalCard {
  key: string;
  label: string;
  value: string;
  detail: string;
}

/** The totals row of the panel. */
export function totalCards(report: IUsageReport): ITotalCard[] {
  const t = report.totals ?? ({} as IUsageReport['totals']);
  const busy = num(t.kernel_busy_seconds);
  const running = num(t.kernel_seconds);
  const cached = num(t.cached_tokens);
  return [
    {
      key: 'cost',
      label: 'Cost',
      value: formatCost(t.cost, { precise: true }),
      detail: `${formatCount(t.calls)} model call${num(t.calls) === 1 ? '' : 's'}`
    },
    {
      key: 'input',
      label: 'Tokens in',
      value: formatTokens(t.input_tokens),
      detail: cached > 0 ? `${formatTokens(cached)} cached` : formatCount(t.input_tokens)
    },
    {
      key: 'output',
      label: 'Tokens out',
      value: formatTokens(t.output_tokens),
      detail: formatCount(t.output_tokens)
    },
    {
      key: 'kernel',
      label: 'Kernel busy time',
      value: formatDuration(busy),
      detail:
        running > 0
          ? `of ${formatDuration(running)} running (${formatPercent(busy / running)})`
          : 'no kernel time'
    }
  ];
}

/** `Last 30 days (Oct 23 – Nov 21, UTC)`. */
export function rangeText(report: IUsageReport, days: number): string {
  const from = parseTime(report.since);
  const to = parseTime(report.until);
  const span =
    from !== null && to !== null
      ? ` (${bucketLabel(from, 'day')} \u2013 ${bucketLabel(to, 'day')}, UTC)`
      : '';
  return `Last ${days} day${days === 1 ? '' : 's'}${span}`;
}
