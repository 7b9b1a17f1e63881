/**
 * The status-bar item: spend this month (`$1.23`), or against the budget (`$1.23 / $20.00`),
 * in a warning style from the budget's warn percentage. Refreshes every minute and shortly
 * after `turn.usage` events; a click opens the usage panel.
 */

import type { ISignal } from '@lumino/signaling';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import type { IFrame } from '../channel';
import type { IChannelLike } from '../search/api';
import { Debouncer } from '../search/debounce';
import { fetchUsage, MONTH_DAYS } from './api';
import { budgetWarningOf, isUsageEvent, IStatusView, usageStatus } from './logic';
import type { IBudget, IUsageReport } from './types';

/** How often the item refreshes on its own. */
export const REFRESH_MS = 60_000;
/** Wait after a `turn.usage` event (a turn meters several calls in a row). */
export const EVENT_DEBOUNCE_MS = 2_000;

export namespace UsageStatus {
  export interface IOptions {
    /** Called on click (and Enter/Space): open the usage panel. */
    onOpen: () => void;
    channel?: IChannelLike | null;
    /** Loads the report; defaults to `GET cloudide/api/usage?days=31&bucket=day`. */
    fetch?: () => Promise<IUsageReport>;
    /** A budget crossed its warning threshold (a `budget.warning` event): show a notice. */
    onBudgetWarning?: (budget: IBudget) => void;
  }
}

export class UsageStatus extends Widget {
  constructor(options: UsageStatus.IOptions) {
    super();
    this._onOpen = options.onOpen;
    this._onBudgetWarning = options.onBudgetWarning ?? null;
    this._fetch = options.fetch ?? (() => fetchUsage(MONTH_DAYS, 'day'));
    this.addClass('jp-cloudide-usage-status');
    this.node.setAttribute('data-testid', 'usage-status');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this._label = document.createElement('span');
    this._label.className = 'jp-cloudide-usage-status-text';
    this.node.appendChild(this._label);
    this.node.addEventListener('click', () => this._onOpen());
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        this._onOpen();
      }
    });
    this._debouncer = new Debouncer(() => void this.refresh(), EVENT_DEBOUNCE_MS);
    this._setChannel(options.channel ?? null);
    this._timer = window.setInterval(() => {
      if (typeof document === 'undefined' || !document.hidden) {
        void this.refresh();
      }
    }, REFRESH_MS);
    void this.refresh();
  }

  /** True once a report was loaded: the status bar shows the item only then. */
  get hasData(): boolean {
    return this._view !== null && !this._gone;
  }

  /** Emitted when `hasData` changes. */
  get activeStateChanged(): ISignal<this, void> {
    return this._activeStateChanged;
  }

  /** The view shown (null before the first report). */
  get view(): IStatusView | null {
    return this._view;
  }

  /** Reload the report now. */
  async refresh(): Promise<void> {
    if (this._gone || this.isDisposed) {
      return;
    }
    this._debouncer.cancel();
    const seq = ++this._seq;
    try {
      const report = await this._fetch();
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      this._show(usageStatus(report, new Date()));
    } catch (error) {
      if (seq !== this._seq || this.isDisposed) {
        return;
      }
      const status = (error as { status?: number }).status;
      if (status === 404 || status === 403 || status === 401) {
        // no usage route on this server, or not ours to see: stop asking
        this._gone = true;
        window.clearInterval(this._timer);
        this._activeStateChanged.emit();
        return;
      }
      // keep the last figure, but say it is stale
      this.node.classList.add('jp-mod-stale');
      const message = error instanceof Error ? error.message : String(error);
      this.node.title = `${this._view?.title ?? 'AI spend'} (could not refresh: ${message})`;
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    window.clearInterval(this._timer);
    this._debouncer.cancel();
    this._setChannel(null);
    super.dispose();
    Signal.clearData(this);
  }

  private _show(view: IStatusView): void {
    const had = this.hasData;
    this._view = view;
    this._label.textContent = view.text;
    this.node.title = view.title;
    this.node.setAttribute('data-level', view.level);
    this.node.classList.remove('jp-mod-stale');
    this.node.classList.toggle('jp-mod-warning', view.level === 'warning');
    this.node.classList.toggle('jp-mod-error', view.level === 'exceeded');
    if (!had) {
      this._activeStateChanged.emit();
    }
  }

  private _setChannel(channel: IChannelLike | null): void {
    if (this._channel) {
      this._channel.frameReceived.disconnect(this._onFrame, this);
      this._channel.sessionReset.disconnect(this._onReset, this);
      this._channel.replayGap?.disconnect(this._onReset, this);
    }
    this._channel = channel;
    if (channel) {
      channel.frameReceived.connect(this._onFrame, this);
      channel.sessionReset.connect(this._onReset, this);
      channel.replayGap?.connect(this._onReset, this);
    }
  }

  private _onFrame(_: unknown, frame: IFrame): void {
    const warned = budgetWarningOf(frame);
    if (warned) {
      // the item turns to its warning state at once, and the user is told why
      this._onBudgetWarning?.(warned);
      void this.refresh();
      return;
    }
    if (isUsageEvent(frame)) {
      this._debouncer.schedule();
    }
  }

  private _onReset(): void {
    this._debouncer.schedule();
  }

  private _onOpen: () => void;
  private _onBudgetWarning: ((budget: IBudget) => void) | null;
  private _fetch: () => Promise<IUsageReport>;
  private _label: HTMLSpanElement;
  private _debouncer: Debouncer;
  private _channel: IChannelLike | null = null;
  private _timer: number;
  private _seq = 0;
  private _view: IStatusView | null = null;
  private _gone = false;
  private _activeStateChanged = new Signal<this, void>(this);
}
