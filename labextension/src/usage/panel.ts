/**
 * The usage panel (main area): totals, the budget, cost per day stacked per model, kernel
 * busy time per day and a table per model, for the last 7, 30 or 90 days.
 *
 * Model names and error messages come from the server: they are set as text only.
 */

import type { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import type { IFrame } from '../channel';
import type { IChannelLike } from '../search/api';
import { Debouncer } from '../search/debounce';
import { fetchUsage } from './api';
import { renderBarChart, renderLegend, seriesClass } from './chart';
import {
  budgetLevel,
  budgetPercent,
  budgetText,
  formatAxisCost,
  formatAxisSeconds,
  formatCost,
  formatCount,
  formatPercent,
  formatTokens,
  isUsageEvent,
  layoutBars,
  modelRows,
  rangeText,
  stackCost,
  stackKernel,
  totalCards
} from './logic';
import type { IUsageReport } from './types';

export const RANGE_CHOICES = [7, 30, 90];
const DEFAULT_DAYS = 30;
const EVENT_DEBOUNCE_MS = 3_000;

export namespace UsagePanel {
  export interface IOptions {
    channel?: IChannelLike | null;
    /** Loads a report; defaults to `GET cloudide/api/usage?days=<days>&bucket=day`. */
    fetch?: (days: number) => Promise<IUsageReport>;
  }
}

export class UsagePanel extends Widget {
  constructor(options: UsagePanel.IOptions = {}) {
    super();
    this._fetch = options.fetch ?? (days => fetchUsage(days, 'day'));
    this.addClass('jp-cloudide-usage-panel');
    this.node.setAttribute('data-testid', 'usage-panel');
    this.node.tabIndex = -1;
    this._debouncer = new Debouncer(() => this._onUsageEvent(), EVENT_DEBOUNCE_MS);

    const header = el('div', 'jp-cloudide-usage-header');
    header.appendChild(text('h2', 'jp-cloudide-usage-title', 'AI usage'));
    this._range = el('span', 'jp-cloudide-usage-range');
    header.appendChild(this._range);
    const controls = el('div', 'jp-cloudide-usage-controls');
    this._days = document.createElement('select');
    this._days.className = 'jp-mod-styled';
    this._days.setAttribute('aria-label', 'Period');
    this._days.setAttribute('data-testid', 'usage-days');
    for (const days of RANGE_CHOICES) {
      const option = document.createElement('option');
      option.value = String(days);
      option.textContent = `Last ${days} days`;
      option.selected = days === DEFAULT_DAYS;
      this._days.appendChild(option);
    }
    this._days.addEventListener('change', () => void this.refresh());
    controls.appendChild(this._days);
    const reload = document.createElement('button');
    reload.type = 'button';
    reload.className = 'jp-cloudide-button';
    reload.textContent = 'Refresh';
    reload.setAttribute('data-testid', 'usage-refresh');
    reload.addEventListener('click', () => void this.refresh());
    controls.appendChild(reload);
    header.appendChild(controls);
    this.node.appendChild(header);

    this._message = el('div', 'jp-cloudide-usage-message');
    this._message.setAttribute('role', 'status');
    this._message.setAttribute('data-testid', 'usage-message');
    this.node.appendChild(this._message);
    this._body = el('div', 'jp-cloudide-usage-body');
    this.node.appendChild(this._body);

    this._setChannel(options.channel ?? null);
    this._setMessage('Loading usage\u2026');
  }

  /** The report shown, if any. */
  get report(): IUsageReport | null {
    return this._report;
  }

  /** Reload the report for the selected period. */
  async refresh(): Promise<void> {
    this._debouncer.cancel();
    this._stale = false;
    const days = Number(this._days.value) || DEFAULT_DAYS;
    const seq = ++this._seq;
    this.node.classList.add('jp-mod-loading');
    try {
      const report = await this._fetch(days);
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      this._report = report;
      this._render(report, days);
    } catch (error) {
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      this._setMessage(errorText(error), 'error');
    } finally {
      if (seq === this._seq && !this.isDisposed) {
        this.node.classList.remove('jp-mod-loading');
      }
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._debouncer.cancel();
    this._setChannel(null);
    super.dispose();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this._seq === 0 || this._stale) {
      void this.refresh();
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (this._stale) {
      void this.refresh();
    }
  }

  protected onActivateRequest(msg: Message): void {
    if (this.isAttached) {
      this.node.focus();
    }
  }

  // -- rendering -----------------------------------------------------------------------------

  private _render(report: IUsageReport, days: number): void {
    this._range.textContent = rangeText(report, days);
    const cost = stackCost(report);
    const kernel = stackKernel(report);
    const hasAny =
      cost.max > 0 ||
      kernel.max > 0 ||
      (report.totals && (report.totals.calls > 0 || report.totals.kernel_seconds > 0));
    this._setMessage(hasAny ? '' : `No usage in the last ${days} days.`, 'info');

    const parts: HTMLElement[] = [];
    const budget = this._renderBudget(report);
    if (budget) {
      parts.push(budget);
    }
    parts.push(this._renderTotals(report));

    const costSection = section('Cost per day', 'jp-cloudide-usage-cost');
    if (cost.names.length) {
      costSection.appendChild(renderLegend(cost.names));
    }
    costSection.appendChild(
      renderBarChart(layoutBars(cost, formatAxisCost), {
        testId: 'usage-plot-cost',
        label: 'Cost per day, stacked per model',
        emptyText: 'No model costs in this period'
      })
    );
    parts.push(costSection);

    const kernelSection = section('Kernel busy time per day', 'jp-cloudide-usage-kernel');
    kernelSection.appendChild(
      renderBarChart(layoutBars(kernel, formatAxisSeconds), {
        testId: 'usage-plot-kernel',
        label: 'Kernel busy seconds per day',
        emptyText: 'No kernel time in this period'
      })
    );
    parts.push(kernelSection);

    parts.push(this._renderModels(report, cost.names));
    this._body.replaceChildren(...parts);
  }

  private _renderBudget(report: IUsageReport): HTMLElement | null {
    const line = budgetText(report.budget);
    const percent = budgetPercent(report.budget);
    if (line === null || percent === null) {
      return null;
    }
    const level = budgetLevel(report.budget);
    const box = el('div', 'jp-cloudide-usage-budget');
    box.setAttribute('data-level', level);
    box.setAttribute('data-testid', 'usage-budget');
    const label = el('div', 'jp-cloudide-usage-budget-text');
    label.appendChild(text('strong', '', 'Budget: '));
    label.appendChild(document.createTextNode(line));
    box.appendChild(label);
    const meter = el('div', 'jp-cloudide-usage-meter');
    meter.setAttribute('role', 'meter');
    meter.setAttribute('aria-valuemin', '0');
    meter.setAttribute('aria-valuemax', '100');
    meter.setAttribute('aria-valuenow', String(Math.round(percent)));
    meter.setAttribute('aria-label', 'Budget used');
    const fill = el('div', 'jp-cloudide-usage-meter-fill');
    fill.style.width = `${Math.min(100, Math.max(0, percent))}%`;
    meter.appendChild(fill);
    box.appendChild(meter);
    return box;
  }

  private _renderTotals(report: IUsageReport): HTMLElement {
    const row = el('div', 'jp-cloudide-usage-totals');
    row.setAttribute('data-testid', 'usage-totals');
    for (const card of totalCards(report)) {
      const box = el('div', 'jp-cloudide-usage-card');
      box.setAttribute('data-key', card.key);
      box.appendChild(text('div', 'jp-cloudide-usage-card-label', card.label));
      box.appendChild(text('div', 'jp-cloudide-usage-card-value', card.value));
      box.appendChild(text('div', 'jp-cloudide-usage-card-detail', card.detail));
      row.appendChild(box);
    }
    return row;
  }

  private _renderModels(report: IUsageReport, seriesNames: readonly string[]): HTMLElement {
    const box = section('Models', 'jp-cloudide-usage-models');
    const rows = modelRows(report);
    if (rows.length === 0) {
      box.appendChild(text('p', 'jp-cloudide-usage-none', 'No model calls in this period.'));
      return box;
    }
    const table = document.createElement('table');
    table.className = 'jp-cloudide-usage-table';
    table.setAttribute('data-testid', 'usage-models');
    const head = table.createTHead().insertRow();
    for (const name of ['Model', 'Calls', 'Tokens in', 'Tokens out', 'Cost', 'Share']) {
      const th = document.createElement('th');
      th.textContent = name;
      th.scope = 'col';
      if (name !== 'Model') {
        th.className = 'jp-cloudide-usage-num';
      }
      head.appendChild(th);
    }
    const tbody = table.createTBody();
    for (const row of rows) {
      const tr = tbody.insertRow();
      const first = tr.insertCell();
      const slot = seriesNames.indexOf(row.model);
      if (slot !== -1) {
        const swatch = el('span', `jp-cloudide-usage-swatch ${seriesClass(slot)}`);
        first.appendChild(swatch);
      }
      first.appendChild(document.createTextNode(row.model));
      cell(tr, formatCount(row.calls));
      cell(tr, formatTokens(row.inputTokens), row.cachedTokens > 0
        ? `${formatCount(row.inputTokens)} (${formatCount(row.cachedTokens)} cached)`
        : formatCount(row.inputTokens));
      cell(tr, formatTokens(row.outputTokens), formatCount(row.outputTokens));
      cell(tr, formatCost(row.cost, { precise: true }));
      cell(tr, formatPercent(row.share));
    }
    box.appendChild(table);
    return box;
  }

  private _setMessage(message: string, kind: 'info' | 'error' = 'info'): void {
    this._message.textContent = message;
    this._message.hidden = message === '';
    this._message.setAttribute('data-kind', kind);
  }

  // -- live updates --------------------------------------------------------------------------

  private _setChannel(channel: IChannelLike | null): void {
    if (this._channel) {
      this._channel.frameReceived.disconnect(this._onFrame, this);
    }
    this._channel = channel;
    if (channel) {
      channel.frameReceived.connect(this._onFrame, this);
    }
  }

  private _onFrame(_: unknown, frame: IFrame): void {
    if (isUsageEvent(frame)) {
      this._debouncer.schedule();
    }
  }

  private _onUsageEvent(): void {
    if (this.isVisible) {
      void this.refresh();
    } else {
      this._stale = true;
    }
  }

  private _fetch: (days: number) => Promise<IUsageReport>;
  private _channel: IChannelLike | null = null;
  private _debouncer: Debouncer;
  private _days: HTMLSelectElement;
  private _range: HTMLElement;
  private _message: HTMLElement;
  private _body: HTMLElement;
  private _report: IUsageReport | null = null;
  private _seq = 0;
  private _stale = false;
}

function errorText(error: unknown): string {
  const e = error as { status?: number; message?: string };
  const detail = e && typeof e.message === 'string' ? e.message : String(error);
  switch (e?.status) {
    case 404:
      return 'Usage reporting is not available on this server (no cloudide/api/usage route).';
    case 401:
    case 403:
      return `You are not allowed to see this usage: ${detail}`;
    case 503:
      return `Usage is unavailable right now: ${detail}`;
    case 0:
      return `Could not reach the server: ${detail}`;
    default:
      return `Could not load usage: ${detail}`;
  }
}

function el(tag: string, className: string): HTMLElement {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  return node;
}

function text(tag: string, className: string, value: string): HTMLElement {
  const node = el(tag, className);
  node.textContent = value;
  return node;
}

function section(title: string, className: string): HTMLElement {
  const box = el('section', `jp-cloudide-usage-section ${className}`);
  box.appendChild(text('h3', 'jp-cloudide-usage-section-title', title));
  return box;
}

function cell(row: HTMLTableRowElement, value: string, title?: string): void {
  const td = row.insertCell();
  td.className = 'jp-cloudide-usage-num';
  td.textContent = value;
  if (title) {
    td.title = title;
  }
}
