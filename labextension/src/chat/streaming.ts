/**
 * Streaming Markdown without re-rendering the whole answer on every token.
 *
 * A streamed answer grows at its end only. `StreamingMarkdown` keeps it as
 *
 * - *stable blocks*: the text up to the last point where Markdown cannot change any more
 *   (`stableBoundary`: a blank line outside code fences and `$$` math, followed by a line
 *   that starts a new top-level block), rendered once each, in chunks, and never again;
 * - the *tail*: the last, growing block (a paragraph, a list, a code block), re-rendered as
 *   a whole - at most as often as its own cost allows (`tailGap`: rendering it takes at
 *   most about a quarter of the main thread);
 * - *pending text*: what arrived since the tail was last rendered, appended at once as a
 *   plain `Text` node inside the tail's last block (so a token is on screen in the frame
 *   it arrived in, and the next tail render formats it).
 *
 * A render (a stable chunk and the new tail together) goes into fresh renderers that replace
 * the old ones in one step when done, so the page never shows a chunk twice or half-rendered.
 * Text that does not extend what is shown (a reload replaced it) starts over.
 *
 * No JupyterLab here: the Markdown renderer is injected (`IStreamingOptions.create`), so the
 * logic is unit-tested with a fake one. Model text reaches the page only through that renderer
 * (sanitised) or as `Text` nodes.
 */

/** One rendered piece of Markdown (a stable chunk or the tail). */
export interface IBlockRenderer {
  /** The element showing the rendered Markdown; the owner puts it in the page. */
  readonly node: HTMLElement;
  /** Render `source` into `node`, replacing what it showed. */
  render(source: string): Promise<void>;
  /** `node` is in the page now (typesetting needs it there). */
  attached?(source: string): void;
  dispose(): void;
}

export interface IStreamingOptions {
  create(): IBlockRenderer;
  /** Rendering failed: the view shows the text as plain text from now on. */
  onError?(error: unknown): void;
  now?: () => number;
  setTimeout?: (fn: () => void, ms: number) => any;
  clearTimeout?: (handle: any) => void;
}

/** Tail renders may take up to 1 / (1 + TAIL_FACTOR) of the main thread. */
export const TAIL_FACTOR = 3;
/** A tail render cheaper than this may run every frame. */
export const TAIL_FREE_MS = 4;
/** The longest wait between two tail renders. */
export const TAIL_MAX_GAP_MS = 300;

/** How long to wait after a tail render that took `costMs` before the next one. */
export function tailGap(costMs: number): number {
  if (!(costMs > TAIL_FREE_MS)) {
    return 0;
  }
  return Math.min(TAIL_MAX_GAP_MS, costMs * TAIL_FACTOR);
}

const FENCE = /^ {0,3}(`{3,}|~{3,})/;
const BLANK = /^[ \t]*\r?$/;
const LIST_ITEM = /^([-*+]|\d{1,9}[.)])([ \t]|\r?$)/;
const UNDECIDED = /^(\d{1,9}[.)]?|[-*+])$/;

/**
 * Whether a line that follows a blank line starts a block that cannot belong to the one
 * before it: not indented (a list item's continuation, indented code), and not a list item
 * when a list is open (it may continue a loose list). `complete`: the line's end has
 * arrived; an incomplete line that may still become a list marker ("1", "-") is undecided.
 */
function startsFreshBlock(line: string, complete: boolean, listOpen: boolean): boolean {
  if (!line || line[0] === ' ' || line[0] === '\t' || BLANK.test(line)) {
    return false;
  }
  if (LIST_ITEM.test(line)) {
    return !listOpen;
  }
  return !listOpen || complete || !UNDECIDED.test(line);
}

/**
 * The largest offset `b >= from` such that `text.slice(0, b)` is complete Markdown blocks
 * whose rendering cannot change whatever follows: `b` is the start of a line that follows a
 * blank line, outside fenced code and `$$` math, and starts a fresh block
 * (`startsFreshBlock`; a list item only when no list is open before it). `from` must be 0 or an earlier result for a prefix of `text`
 * (outside fences and math). Returns `from` when there is no such point.
 *
 * Not covered (rendered as written, chunk by chunk): reference-style link definitions used
 * in an earlier chunk, HTML blocks with blank lines inside.
 */
export function stableBoundary(text: string, from = 0): number {
  let best = from;
  let fence: { char: string; length: number } | null = null;
  let math = false;
  let prevBlank = false;
  let content = false; // a non-blank line since `from`
  let listOpen = false; // the last block is a list (a blank line may continue it)
  let i = from;
  while (i < text.length) {
    const nl = text.indexOf('\n', i);
    const complete = nl >= 0;
    const end = complete ? nl : text.length;
    const line = text.slice(i, end);
    if (fence) {
      const m = FENCE.exec(line);
      if (complete && m && m[1][0] === fence.char && m[1].length >= fence.length &&
          BLANK.test(line.slice(m[0].length))) {
        fence = null;
      }
      prevBlank = false;
    } else if (BLANK.test(line)) {
      prevBlank = complete || prevBlank;
    } else {
      if (prevBlank && content && !math && startsFreshBlock(line, complete, listOpen)) {
        best = i;
      }
      if (LIST_ITEM.test(line)) {
        listOpen = true;
      } else if (prevBlank && line[0] !== ' ' && line[0] !== '\t') {
        listOpen = false; // a paragraph (or other block) after a blank line ends the list
      }
      const m = FENCE.exec(line);
      if (m && !(m[1][0] === '`' && line.slice(m[0].length).includes('`'))) {
        fence = { char: m[1][0], length: m[1].length };
      } else {
        const dollars = line.split('$$').length - 1;
        if (dollars % 2 === 1) {
          math = !math;
        }
      }
      prevBlank = false;
      content = true;
    }
    if (!complete) {
      break;
    }
    i = nl + 1;
  }
  return best;
}

const DESCEND = new Set(['DIV', 'UL', 'OL', 'LI', 'BLOCKQUOTE', 'P', 'PRE', 'H1', 'H2',
  'H3', 'H4', 'H5', 'H6', 'TABLE', 'THEAD', 'TBODY', 'TR', 'TD', 'TH', 'DL', 'DT', 'DD',
  'DETAILS']);

function isElement(node: Node | null | undefined): node is HTMLElement {
  return !!node && typeof (node as HTMLElement).tagName === 'string';
}

/** The last child that is an element or non-blank text (whitespace between blocks skipped). */
function lastContentChild(el: HTMLElement): Node | null {
  const children = el.childNodes;
  for (let i = children.length - 1; i >= 0; i--) {
    const child = children[i];
    if (isElement(child) || (child.textContent ?? '').trim()) {
      return child;
    }
  }
  return null;
}

/**
 * Where text that continues rendered Markdown goes: the innermost last block (paragraph,
 * list item, heading, table cell, the `code` of a code block), so it reads on as part of
 * it; `root` when there is none.
 */
export function continuationPoint(root: HTMLElement): HTMLElement {
  let el = root;
  for (;;) {
    const last = lastContentChild(el);
    if (!isElement(last)) {
      return el;
    }
    const tag = last.tagName.toUpperCase();
    if (tag === 'CODE' && el.tagName.toUpperCase() === 'PRE') {
      return last;
    }
    if (!DESCEND.has(tag)) {
      return el;
    }
    el = last;
  }
}

export class StreamingMarkdown {
  constructor(host: HTMLElement, options: IStreamingOptions) {
    this._host = host;
    this._options = options;
    this._now = options.now ?? (() => (typeof performance !== 'undefined'
      ? performance.now() : Date.now()));
    this._setTimeout = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout ?? (h => clearTimeout(h));
    this._tailHost = this._newTailHost();
    host.appendChild(this._tailHost);
  }

  /** The text shown (rendered or pending). */
  get text(): string {
    return this._shown;
  }

  /** How many stable chunks were rendered (for tests). */
  get chunkCount(): number {
    return this._chunks.length;
  }

  /** Whether everything shown is rendered Markdown (no pending text, no render due). */
  get settled(): boolean {
    return !this._busy && this._timer === null && !this._failed &&
      this._stableLen + this._tailSource.length === this._shown.length;
  }

  /** Show `text`: appended at once when it extends what is shown, rendered soon after. */
  update(text: string): void {
    if (this._disposed || text === this._shown) {
      return;
    }
    if (this._failed) {
      this._shown = text;
      this._showPlain();
      return;
    }
    if (text.startsWith(this._shown)) {
      this._appendPending(text.slice(this._shown.length));
    } else {
      this._reset();
      this._appendPending(text);
    }
    this._shown = text;
    this._pump();
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._generation++;
    this._cancelTimer();
    this._disposeRenderers();
  }

  // -- internals --------------------------------------------------------------------------

  private _newTailHost(): HTMLElement {
    const el = document.createElement('div');
    el.className = 'jp-cloudide-chat-tail';
    return el;
  }

  /** Pending text goes into the tail's last block, as a text node (never HTML). */
  private _appendPending(text: string): void {
    if (!text) {
      return;
    }
    if (this._pending && this._pending.parentNode) {
      this._pending.data += text;
      return;
    }
    this._pending = document.createTextNode(text);
    continuationPoint(this._tailHost).appendChild(this._pending);
  }

  private _reset(): void {
    this._generation++;
    this._cancelTimer();
    this._busy = false;
    this._disposeRenderers();
    this._pending = null;
    while (this._host.firstChild) {
      this._host.removeChild(this._host.firstChild);
    }
    this._tailHost = this._newTailHost();
    this._host.appendChild(this._tailHost);
    this._stableLen = 0;
    this._tailSource = '';
    this._shown = '';
    this._nextTailAt = 0;
  }

  /** Dispose of every stable chunk and the tail. */
  private _disposeRenderers(): void {
    for (const chunk of this._chunks) {
      chunk.dispose();
    }
    this._chunks = [];
    this._tail?.dispose();
    this._tail = null;
  }

  private _cancelTimer(): void {
    if (this._timer !== null) {
      this._clearTimeout(this._timer);
      this._timer = null;
    }
  }

  /** Start the next render if one is due and none runs; else wait for the tail's gap. */
  private _pump(): void {
    if (this._busy || this._disposed || this._failed) {
      return;
    }
    const text = this._shown;
    const boundary = stableBoundary(text, this._stableLen);
    const promote = boundary > this._stableLen;
    if (!promote && text.length === this._stableLen + this._tailSource.length) {
      return; // all of it is rendered
    }
    if (!promote) {
      const wait = this._nextTailAt - this._now();
      if (wait > 0) {
        if (this._timer === null) {
          this._timer = this._setTimeout(() => {
            this._timer = null;
            this._pump();
          }, wait);
        }
        return;
      }
    }
    this._cancelTimer();
    void this._render(text, boundary);
  }

  private async _render(text: string, boundary: number): Promise<void> {
    const generation = this._generation;
    const start = this._now();
    const chunkSource = text.slice(this._stableLen, boundary);
    const tailSource = text.slice(boundary);
    let chunk: IBlockRenderer | null = null;
    let tail: IBlockRenderer | null = null;
    const stale = () => generation !== this._generation || this._disposed;
    this._busy = true;
    try {
      if (chunkSource) {
        chunk = this._options.create();
        await chunk.render(chunkSource);
      }
      if (tailSource && !stale()) {
        tail = this._options.create();
        await tail.render(tailSource);
      }
    } catch (error) {
      chunk?.dispose();
      tail?.dispose();
      if (!stale()) {
        this._busy = false;
        this._fail(error);
      }
      return;
    }
    if (stale()) {
      chunk?.dispose(); // replaced or disposed meanwhile
      tail?.dispose();
      return;
    }
    // commit: the new chunk and tail replace the old tail (and its pending text) at once
    if (chunk) {
      this._host.insertBefore(chunk.node, this._tailHost);
      this._chunks.push(chunk);
      this._stableLen = boundary;
    }
    this._tail?.dispose();
    while (this._tailHost.firstChild) {
      this._tailHost.removeChild(this._tailHost.firstChild);
    }
    this._tail = tail;
    this._tailSource = tailSource;
    this._pending = null;
    if (tail) {
      this._tailHost.appendChild(tail.node);
    }
    this._appendPending(this._shown.slice(boundary + tailSource.length));
    chunk?.attached?.(chunkSource);
    tail?.attached?.(tailSource);
    this._nextTailAt = this._now() + tailGap(this._now() - start);
    this._busy = false;
    this._pump(); // what arrived meanwhile
  }

  private _fail(error: unknown): void {
    this._failed = true;
    this._cancelTimer();
    this._disposeRenderers();
    this._pending = null;
    this._showPlain();
    this._options.onError?.(error);
  }

  /** The text as text (after a failed render). */
  private _showPlain(): void {
    while (this._host.firstChild) {
      this._host.removeChild(this._host.firstChild);
    }
    const pre = document.createElement('pre');
    pre.className = 'jp-cloudide-chat-plain';
    pre.appendChild(document.createTextNode(this._shown));
    this._host.appendChild(pre);
  }

  private _host: HTMLElement;
  private _options: IStreamingOptions;
  private _now: () => number;
  private _setTimeout: (fn: () => void, ms: number) => any;
  private _clearTimeout: (handle: any) => void;
  private _tailHost: HTMLElement;
  private _chunks: IBlockRenderer[] = [];
  private _tail: IBlockRenderer | null = null;
  private _pending: Text | null = null;
  /** Every character shown: stable chunks, then the tail's source, then pending text. */
  private _shown = '';
  private _stableLen = 0;
  private _tailSource = '';
  private _busy = false;
  private _failed = false;
  private _disposed = false;
  private _generation = 0;
  private _timer: any = null;
  private _nextTailAt = 0;
}
