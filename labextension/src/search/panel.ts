/**
 * The semantic search sidebar: a query box with options, the index status (live from
 * `index.progress` events) with a Rebuild button, and the ranked hits.
 *
 * Everything shown from the server - paths, symbols, snippets, error messages - goes into
 * the DOM as text nodes (`textContent`, `createTextNode`, `setAttribute`), never as HTML.
 */

import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import type { IFrame } from '../channel';
import {
  fetchIndexStatus,
  IChannelLike,
  rebuildIndex,
  search as runSearch
} from './api';
import { Debouncer } from './debounce';
import {
  buildSearchBody,
  describeError,
  indexProgress,
  indexStatusFromEvent,
  indexStatusText,
  IPanelMessage,
  isIndexBusy,
  isUnavailable,
  queryWords,
  resultCountText,
  resultsMessage,
  shouldSearchWhileTyping
} from './logic';
import { el, renderHit } from './render';
import type { IIndexStatus, ISearchHit, ISearchResults } from './types';
import { SEARCH_MODES } from './types';

/** Delay between the last keystroke and the search it starts. */
const TYPING_DEBOUNCE_MS = 350;
/** How often the status is polled while a pass runs and no channel delivers events. */
const STATUS_POLL_MS = 3000;
/** A status older than this is refetched when the panel is shown again. */
const STATUS_STALE_MS = 30_000;

const MODE_LABELS: Record<string, string> = {
  hybrid: 'Hybrid',
  vector: 'Meaning (vector)',
  text: 'Words (text)'
};

export namespace SearchPanel {
  export interface IOptions {
    /** Opens a hit (the plugin passes docmanager + cursor placement). */
    openHit: (hit: ISearchHit) => Promise<unknown>;
    /** The page's session channel; null: REST only, status polled while building. */
    channel?: IChannelLike | null;
  }
}

/** The search panel. */
export class SearchPanel extends Widget {
  constructor(options: SearchPanel.IOptions) {
    super();
    this._openHit = options.openHit;
    this.addClass('jp-cloudide-search');
    this._debouncer = new Debouncer(() => void this.search(), TYPING_DEBOUNCE_MS);
    this._build();
    this.setChannel(options.channel ?? null);
  }

  /** The index status last seen (REST, search answer or event). */
  get indexStatus(): IIndexStatus | null {
    return this._status;
  }

  /** The hits shown. */
  get results(): readonly ISearchHit[] {
    return this._hits;
  }

  /** Use `channel` for searches and live index progress (null: REST only). */
  setChannel(channel: IChannelLike | null): void {
    if (channel === this._channel) {
      return;
    }
    if (this._channel) {
      this._channel.frameReceived.disconnect(this._onFrame, this);
      this._channel.stateChanged.disconnect(this._onChannelState, this);
      this._channel.sessionReset.disconnect(this._onSessionReset, this);
      this._channel.replayGap?.disconnect(this._onSessionReset, this);
    }
    this._channel = channel;
    if (channel) {
      channel.frameReceived.connect(this._onFrame, this);
      channel.stateChanged.connect(this._onChannelState, this);
      channel.sessionReset.connect(this._onSessionReset, this);
      channel.replayGap?.connect(this._onSessionReset, this);
    }
  }

  /** Focus the query box and select its text. */
  focusInput(): void {
    this._input.focus();
    this._input.select();
  }

  /** Search for the query box's text now (Enter does this). */
  async search(): Promise<void> {
    this._debouncer.cancel();
    const built = buildSearchBody({
      query: this._input.value,
      mode: this._mode.value,
      pathGlob: this._glob.value
    });
    this._abort?.abort();
    this._abort = null;
    const seq = ++this._searchSeq;
    if (!built.ok) {
      this._setBusy(false);
      if (built.reason === 'empty') {
        this._showResults([], '');
        this._setMessage(null);
      } else {
        this._setMessage({ kind: 'error', text: built.message });
      }
      return;
    }
    const abort = new AbortController();
    this._abort = abort;
    this._setBusy(true);
    try {
      const answer: ISearchResults = await runSearch(built.body, this._channel, abort.signal);
      if (seq !== this._searchSeq || this.isDisposed) {
        return; // a newer search started meanwhile
      }
      this._searchedWhileBuilding = false; // this answer is the fresh one
      if (answer.index) {
        this._setStatus(answer.index);
      }
      const hits = Array.isArray(answer.results) ? answer.results : [];
      this._showResults(hits, built.body.query);
      // searched before the index was whole: search again when the build finishes
      this._searchedWhileBuilding =
        !!answer.index && (isIndexBusy(answer.index) || !answer.index.complete);
      this._setMessage(resultsMessage({ ...answer, results: hits }, built.body.query, this._status));
    } catch (error) {
      if (seq !== this._searchSeq || this.isDisposed) {
        return;
      }
      const message = describeError(error);
      if (message.text) {
        this._showResults([], built.body.query);
        this._setMessage(message);
      }
      if (isUnavailable(error)) {
        void this.refreshStatus();
      }
    } finally {
      if (seq === this._searchSeq) {
        this._abort = null;
        this._setBusy(false);
      }
    }
  }

  /** Refetch `GET cloudide/api/index`. */
  async refreshStatus(): Promise<void> {
    const seq = ++this._statusSeq;
    try {
      const status = await fetchIndexStatus();
      if (seq === this._statusSeq && !this.isDisposed) {
        this._statusError = null;
        this._setStatus(status);
      }
    } catch (error) {
      if (seq === this._statusSeq && !this.isDisposed) {
        this._statusError = error;
        this._renderStatus();
      }
    }
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._debouncer.cancel();
    this._abort?.abort();
    this._clearPoll();
    this.setChannel(null);
    super.dispose();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this._statusFetchedAt === 0) {
      void this.refreshStatus();
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (Date.now() - this._statusFetchedAt > STATUS_STALE_MS) {
      void this.refreshStatus();
    }
  }

  protected onActivateRequest(msg: Message): void {
    if (this.isAttached) {
      this.focusInput();
    }
  }

  // -- building the DOM ----------------------------------------------------------------------

  private _build(): void {
    const form = el('div', 'jp-cloudide-search-form');

    this._input = document.createElement('input');
    this._input.type = 'search';
    this._input.className = 'jp-cloudide-search-input jp-mod-styled';
    this._input.placeholder = 'Search the workspace\u2026';
    this._input.setAttribute('aria-label', 'Search the workspace');
    this._input.setAttribute('data-testid', 'search-input');
    this._input.spellcheck = false;
    this._input.addEventListener('input', () => this._onTyping());
    this._input.addEventListener('keydown', event => this._onInputKey(event));
    form.appendChild(this._input);

    const options = el('div', 'jp-cloudide-search-options');
    this._mode = document.createElement('select');
    this._mode.className = 'jp-cloudide-search-mode jp-mod-styled';
    this._mode.setAttribute('aria-label', 'Search mode');
    this._mode.setAttribute('data-testid', 'search-mode');
    this._mode.title = 'Hybrid fuses meaning (vector) and word (BM25) ranking';
    for (const mode of SEARCH_MODES) {
      const option = document.createElement('option');
      option.value = mode;
      option.textContent = MODE_LABELS[mode] ?? mode;
      this._mode.appendChild(option);
    }
    this._mode.addEventListener('change', () => this._onOptionChanged());
    options.appendChild(this._mode);

    this._glob = document.createElement('input');
    this._glob.type = 'text';
    this._glob.className = 'jp-cloudide-search-glob jp-mod-styled';
    this._glob.placeholder = 'Path filter, e.g. src/**/*.py';
    this._glob.title =
      '`**` matches any depth, `*` within a folder; a pattern without a slash matches the file name';
    this._glob.setAttribute('aria-label', 'Path filter');
    this._glob.setAttribute('data-testid', 'search-glob');
    this._glob.spellcheck = false;
    this._glob.addEventListener('change', () => this._onOptionChanged());
    this._glob.addEventListener('keydown', event => {
      if (event.key === 'Enter') {
        event.preventDefault();
        void this.search();
      }
    });
    options.appendChild(this._glob);
    form.appendChild(options);
    this.node.appendChild(form);

    const status = el('div', 'jp-cloudide-index');
    status.setAttribute('data-testid', 'index-status');
    this._statusText = el('span', 'jp-cloudide-index-text');
    this._statusText.setAttribute('role', 'status');
    status.appendChild(this._statusText);
    this._rebuild = document.createElement('button');
    this._rebuild.type = 'button';
    this._rebuild.className = 'jp-cloudide-button jp-cloudide-index-rebuild';
    this._rebuild.textContent = 'Rebuild';
    this._rebuild.title = 'Update or rebuild the semantic index';
    this._rebuild.setAttribute('data-testid', 'index-rebuild');
    this._rebuild.addEventListener('click', () => void this._onRebuild());
    status.appendChild(this._rebuild);
    this._progress = document.createElement('progress');
    this._progress.className = 'jp-cloudide-index-progress';
    this._progress.setAttribute('data-testid', 'index-progress');
    this._progress.setAttribute('aria-label', 'Indexing progress');
    this._progress.hidden = true;
    status.appendChild(this._progress);
    this._statusNode = status;
    this.node.appendChild(status);

    this._message = el('div', 'jp-cloudide-search-message');
    this._message.setAttribute('data-testid', 'search-message');
    this._message.setAttribute('aria-live', 'polite');
    this._message.hidden = true;
    this.node.appendChild(this._message);

    this._count = el('div', 'jp-cloudide-search-count');
    this._count.hidden = true;
    this.node.appendChild(this._count);

    this._list = document.createElement('ul');
    this._list.className = 'jp-cloudide-search-results';
    this._list.setAttribute('aria-label', 'Search results');
    this._list.addEventListener('keydown', event => this._onListKey(event));
    this.node.appendChild(this._list);

    this._renderStatus();
  }

  // -- input ---------------------------------------------------------------------------------

  private _onTyping(): void {
    if (shouldSearchWhileTyping(this._input.value)) {
      this._debouncer.schedule();
    } else {
      this._debouncer.cancel();
      if (this._input.value.trim() === '') {
        void this.search(); // clears the list
      }
    }
  }

  private _onInputKey(event: KeyboardEvent): void {
    if (event.key === 'Enter') {
      event.preventDefault();
      void this.search();
    } else if (event.key === 'Escape' && this._input.value) {
      event.preventDefault();
      event.stopPropagation();
      this._input.value = '';
      void this.search();
    } else if (event.key === 'ArrowDown' && this._list.firstElementChild) {
      event.preventDefault();
      (this._list.firstElementChild as HTMLElement).focus();
    }
  }

  private _onOptionChanged(): void {
    if (this._input.value.trim() !== '') {
      void this.search();
    }
  }

  private _onListKey(event: KeyboardEvent): void {
    const item = (event.target as HTMLElement).closest('li');
    if (!item || item.parentElement !== this._list) {
      return;
    }
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      item.click();
    } else if (event.key === 'ArrowDown' && item.nextElementSibling) {
      event.preventDefault();
      (item.nextElementSibling as HTMLElement).focus();
    } else if (event.key === 'ArrowUp') {
      event.preventDefault();
      const prev = item.previousElementSibling as HTMLElement | null;
      (prev ?? this._input).focus();
    }
  }

  // -- results -------------------------------------------------------------------------------

  private _showResults(hits: ISearchHit[], query: string): void {
    this._hits = hits;
    const words = queryWords(query);
    const items = hits.map(hit => renderHit(hit, words, () => void this._open(hit)));
    this._list.replaceChildren(...items);
    this._count.hidden = hits.length === 0;
    this._count.textContent = hits.length ? resultCountText(hits.length) : '';
  }

  private async _open(hit: ISearchHit): Promise<void> {
    try {
      await this._openHit(hit);
    } catch (error) {
      const detail = error instanceof Error ? error.message : String(error);
      this._setMessage({ kind: 'error', text: `Could not open ${hit.path}: ${detail}` });
    }
  }

  private _setMessage(message: IPanelMessage | null): void {
    const show = !!message && message.text !== '';
    this._message.hidden = !show;
    this._message.textContent = show ? message!.text : '';
    this._message.setAttribute('data-kind', show ? message!.kind : '');
  }

  private _setBusy(busy: boolean): void {
    this.node.classList.toggle('jp-mod-searching', busy);
    this._input.setAttribute('aria-busy', String(busy));
  }

  // -- index status --------------------------------------------------------------------------

  private _setStatus(status: IIndexStatus): void {
    const wasBusy = isIndexBusy(this._status);
    this._status = status;
    this._statusFetchedAt = Date.now();
    this._renderStatus();
    const busy = isIndexBusy(status);
    if (busy && !this._channelOpen()) {
      this._schedulePoll();
    } else if (!busy) {
      this._clearPoll();
    }
    // a build finished after a search found (too) little: search again
    if (wasBusy && !busy && status.complete && this._searchedWhileBuilding) {
      this._searchedWhileBuilding = false;
      if (this._input.value.trim() !== '') {
        void this.search();
      }
    }
  }

  private _renderStatus(): void {
    const status = this._status;
    let textValue: string;
    let state: string;
    if (this._statusError) {
      const message = describeError(this._statusError);
      textValue = message.text || 'Index status unavailable';
      state = isUnavailable(this._statusError) ? 'unavailable' : 'unknown';
    } else if (status) {
      textValue = indexStatusText(status);
      state = String(status.state);
    } else {
      textValue = 'Checking the index\u2026';
      state = 'loading';
    }
    this._statusText.textContent = textValue;
    this._statusText.title = status?.embedder ? `Embedder: ${status.embedder}` : '';
    this._statusNode.setAttribute('data-state', state);
    this._rebuild.disabled =
      state === 'unavailable' || state === 'disabled' || state === 'loading';

    const progress = indexProgress(status);
    const busy = !this._statusError && isIndexBusy(status);
    this._progress.hidden = !busy;
    if (progress) {
      this._progress.max = progress.total;
      this._progress.value = progress.done;
      this._progress.setAttribute(
        'aria-valuetext',
        `${progress.done} of ${progress.total} files`
      );
    } else {
      // no value attribute: an indeterminate bar
      this._progress.removeAttribute('value');
      this._progress.removeAttribute('aria-valuetext');
    }
  }

  private async _onRebuild(): Promise<void> {
    const result = await showDialog({
      title: 'Semantic index',
      body:
        'Update the index with files changed since the last pass, or wipe it and ' +
        'rebuild it from scratch? While it rebuilds from scratch, search finds nothing.',
      buttons: [
        Dialog.cancelButton(),
        Dialog.warnButton({ label: 'Rebuild from scratch', actions: ['full'] }),
        Dialog.okButton({ label: 'Update', actions: ['update'] })
      ]
    });
    if (!result.button.accept || this.isDisposed) {
      return;
    }
    const full = result.button.actions.indexOf('full') !== -1;
    this._rebuild.disabled = true;
    try {
      this._statusError = null;
      this._setStatus(await rebuildIndex(full));
    } catch (error) {
      this._statusError = error;
      this._renderStatus();
    }
  }

  private _onFrame(_: unknown, frame: IFrame): void {
    const status = indexStatusFromEvent(frame);
    if (status) {
      this._statusError = null;
      this._setStatus(status);
    }
  }

  private _onChannelState(): void {
    if (this._channelOpen()) {
      this._clearPoll();
      // events sent while we were away may be lost: refetch
      void this.refreshStatus();
    }
  }

  private _onSessionReset(): void {
    void this.refreshStatus();
  }

  private _channelOpen(): boolean {
    return !!this._channel && this._channel.state === 'open';
  }

  private _schedulePoll(): void {
    if (this._poll !== null) {
      return;
    }
    this._poll = window.setTimeout(() => {
      this._poll = null;
      if (!this.isDisposed) {
        void this.refreshStatus();
      }
    }, STATUS_POLL_MS);
  }

  private _clearPoll(): void {
    if (this._poll !== null) {
      window.clearTimeout(this._poll);
      this._poll = null;
    }
  }

  private _openHit: (hit: ISearchHit) => Promise<unknown>;
  private _channel: IChannelLike | null = null;
  private _debouncer: Debouncer;
  private _abort: AbortController | null = null;
  private _searchSeq = 0;
  private _statusSeq = 0;
  private _status: IIndexStatus | null = null;
  private _statusError: unknown = null;
  private _statusFetchedAt = 0;
  private _searchedWhileBuilding = false;
  private _poll: number | null = null;
  private _hits: ISearchHit[] = [];
  private _input!: HTMLInputElement;
  private _mode!: HTMLSelectElement;
  private _glob!: HTMLInputElement;
  private _statusNode!: HTMLElement;
  private _statusText!: HTMLElement;
  private _rebuild!: HTMLButtonElement;
  private _progress!: HTMLProgressElement;
  private _message!: HTMLElement;
  private _count!: HTMLElement;
  private _list!: HTMLUListElement;
}
