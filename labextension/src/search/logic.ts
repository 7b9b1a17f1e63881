/**
 * The pure part of the search panel: request building, highlighting, labels and index
 * status texts. Nothing here imports the DOM or JupyterLab, so it is unit-tested as is.
 */

import type {
  IIndexStatus,
  ISearchBody,
  ISearchHit,
  ISearchResults,
  SearchMode
} from './types';
import { SEARCH_MODES } from './types';

/** Limits of `SearchBody` in api.yaml. */
export const MAX_QUERY_CHARS = 2000;
export const MAX_GLOB_CHARS = 512;
export const MAX_K = 50;
export const DEFAULT_K = 20;
/** Typing searches once the query has this many characters; Enter searches any query. */
export const MIN_TYPED_CHARS = 3;

/** What the user entered in the panel. */
export interface ISearchInput {
  query: string;
  mode?: string;
  pathGlob?: string;
  k?: number;
}

export type BuildResult =
  | { ok: true; body: ISearchBody }
  | { ok: false; reason: 'empty' | 'invalid'; message: string };

/**
 * The request body for what the user typed, or why there is none. Trims the query and the
 * glob, drops an empty glob and the default mode, clamps `k` to the schema's range.
 */
export function buildSearchBody(input: ISearchInput): BuildResult {
  const query = input.query.trim();
  if (query === '') {
    return { ok: false, reason: 'empty', message: 'Type something to search for.' };
  }
  if (query.length > MAX_QUERY_CHARS) {
    return {
      ok: false,
      reason: 'invalid',
      message: `The query is too long (at most ${MAX_QUERY_CHARS} characters).`
    };
  }
  const body: ISearchBody = { query, k: clampK(input.k) };
  const mode = input.mode ?? 'hybrid';
  if (!isSearchMode(mode)) {
    return { ok: false, reason: 'invalid', message: `Unknown search mode: ${mode}` };
  }
  if (mode !== 'hybrid') {
    body.mode = mode;
  }
  const glob = (input.pathGlob ?? '').trim();
  if (glob !== '') {
    if (glob.length > MAX_GLOB_CHARS) {
      return {
        ok: false,
        reason: 'invalid',
        message: `The path filter is too long (at most ${MAX_GLOB_CHARS} characters).`
      };
    }
    if (glob.indexOf('\u0000') !== -1) {
      return { ok: false, reason: 'invalid', message: 'The path filter contains a NUL character.' };
    }
    body.path_glob = glob;
  }
  return { ok: true, body };
}

export function isSearchMode(value: string): value is SearchMode {
  return (SEARCH_MODES as readonly string[]).indexOf(value) !== -1;
}

function clampK(k: number | undefined): number {
  if (k === undefined || !Number.isFinite(k)) {
    return DEFAULT_K;
  }
  return Math.min(MAX_K, Math.max(1, Math.round(k)));
}

/** Whether typing (not Enter) should start a search for this query. */
export function shouldSearchWhileTyping(query: string): boolean {
  return query.trim().length >= MIN_TYPED_CHARS;
}

// -- highlighting ----------------------------------------------------------------------------

const WORD = /[\p{L}\p{N}_]{2,}/gu;

/**
 * The words of a query worth highlighting: letters/digits/underscore runs of two or more,
 * lower-cased, without duplicates, longest first (so the longest match wins). A query
 * without such words (`*`, `a`) highlights as a whole.
 */
export function queryWords(query: string): string[] {
  const found = new Set<string>();
  let match: RegExpExecArray | null;
  WORD.lastIndex = 0;
  while ((match = WORD.exec(query)) !== null) {
    found.add(match[0].toLowerCase());
  }
  const trimmed = query.trim();
  if (found.size === 0 && trimmed !== '') {
    found.add(trimmed.toLowerCase());
  }
  return Array.from(found).sort((a, b) => b.length - a.length || (a < b ? -1 : 1));
}

/** A piece of text, marked when it matches a query word. */
export interface ISegment {
  text: string;
  match: boolean;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Split `text` into plain and matching segments (case-insensitive), for rendering as
 * text nodes and `<mark>` spans. Concatenating the segments gives `text` back exactly.
 */
export function highlightSegments(text: string, words: readonly string[]): ISegment[] {
  const usable = words.filter(w => w.length > 0);
  if (text === '') {
    return [];
  }
  if (usable.length === 0) {
    return [{ text, match: false }];
  }
  const pattern = new RegExp(usable.map(escapeRegExp).join('|'), 'giu');
  const out: ISegment[] = [];
  let last = 0;
  let match: RegExpExecArray | null;
  while ((match = pattern.exec(text)) !== null) {
    if (match[0] === '') {
      pattern.lastIndex += 1;
      continue;
    }
    if (match.index > last) {
      out.push({ text: text.slice(last, match.index), match: false });
    }
    const prev = out.length ? out[out.length - 1] : null;
    if (prev && prev.match && match.index === last) {
      prev.text += match[0]; // adjacent matches read as one mark
    } else {
      out.push({ text: match[0], match: true });
    }
    last = match.index + match[0].length;
  }
  if (last < text.length) {
    out.push({ text: text.slice(last), match: false });
  }
  return out;
}

// -- result labels ---------------------------------------------------------------------------

/** `L12`, or `L12–30` for a range. */
export function lineRangeLabel(hit: Pick<ISearchHit, 'start_line' | 'end_line'>): string {
  const start = hit.start_line;
  const end = hit.end_line;
  return end > start ? `L${start}\u2013${end}` : `L${start}`;
}

/** Where in the file the hit is: `Cell 3 · load_data`, `Foo.bar`, or ''. */
export function hitLocationLabel(hit: ISearchHit): string {
  const parts: string[] = [];
  if (typeof hit.cell_index === 'number' && hit.cell_index >= 0) {
    parts.push(`Cell ${hit.cell_index + 1}`);
  } else if (hit.kind === 'cell') {
    parts.push('Cell');
  }
  if (hit.symbol) {
    parts.push(hit.symbol);
  }
  return parts.join(' \u00b7 ');
}

/** A path split into its file name and its folder (`''` at the root). */
export function splitPath(path: string): { name: string; dir: string } {
  const clean = path.replace(/\/+$/, '');
  const slash = clean.lastIndexOf('/');
  return slash === -1
    ? { name: clean, dir: '' }
    : { name: clean.slice(slash + 1), dir: clean.slice(0, slash) };
}

/** 0-based editor line for a hit's 1-based start line, kept inside `lineCount` lines. */
export function editorLine(startLine: number, lineCount?: number): number {
  let line = Number.isFinite(startLine) ? Math.floor(startLine) - 1 : 0;
  if (typeof lineCount === 'number' && lineCount > 0) {
    line = Math.min(line, lineCount - 1);
  }
  return Math.max(0, line);
}

/**
 * The notebook cell a hit points at: by `cell_id` when a cell still has it, else by
 * `cell_index` when in range, else -1. `cellIds` are the notebook's cell ids in order.
 */
export function findCellIndex(
  hit: Pick<ISearchHit, 'cell_id' | 'cell_index'>,
  cellIds: readonly (string | undefined)[]
): number {
  if (hit.cell_id) {
    const byId = cellIds.indexOf(hit.cell_id);
    if (byId !== -1) {
      return byId;
    }
  }
  if (
    typeof hit.cell_index === 'number' &&
    hit.cell_index >= 0 &&
    hit.cell_index < cellIds.length
  ) {
    return hit.cell_index;
  }
  return -1;
}

// -- index status ----------------------------------------------------------------------------

function plural(n: number, word: string): string {
  return `${groupThousands(n)} ${word}${n === 1 ? '' : 's'}`;
}

/** `1234567` → `1,234,567` (locale-independent, for stable texts). */
export function groupThousands(n: number): string {
  const [int, frac] = String(Math.round(n * 100) / 100).split('.');
  const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return frac ? `${grouped}.${frac}` : grouped;
}

/** Fraction done of a running pass, or null when unknown (show an indeterminate bar). */
export function indexProgress(
  status: IIndexStatus | null | undefined
): { done: number; total: number; fraction: number } | null {
  if (!status || !isIndexBusy(status)) {
    return null;
  }
  const p = status.progress;
  const total = num(p?.files_total);
  const done = Math.min(num(p?.files_done), total);
  if (total <= 0) {
    return null;
  }
  return { done, total, fraction: done / total };
}

/** Whether a pass is running or queued. */
export function isIndexBusy(status: IIndexStatus | null | undefined): boolean {
  return !!status && (status.state === 'building' || status.state === 'queued');
}

/** One line describing the index, for the panel's status row. */
export function indexStatusText(status: IIndexStatus | null | undefined): string {
  if (!status) {
    return 'Index status unknown';
  }
  const counts = `${plural(num(status.chunks), 'chunk')} in ${plural(num(status.files), 'file')}`;
  switch (status.state) {
    case 'disabled':
      return 'The semantic index is disabled on this server';
    case 'not_started':
      return 'The index has not been built yet';
    case 'queued':
      return 'Index update queued';
    case 'building': {
      const progress = indexProgress(status);
      if (progress) {
        return `Indexing: ${groupThousands(progress.done)} / ${plural(progress.total, 'file')}`;
      }
      return 'Indexing\u2026';
    }
    case 'error':
      return `Index error: ${status.error || 'the last pass failed'}`;
    case 'idle':
      return status.complete ? counts : `${counts} (incomplete)`;
    default:
      return `${status.state}: ${counts}`;
  }
}

/** The index status carried by an `event` frame of kind `index.progress`, else null. */
export function indexStatusFromEvent(frame: {
  type?: string;
  payload?: unknown;
  replayed?: boolean;
}): IIndexStatus | null {
  // a frame replayed on purpose (after a reload) is old news: the status it carries is stale
  if (frame.type !== 'event' || frame.replayed || !isObject(frame.payload)) {
    return null;
  }
  const payload = frame.payload as Record<string, unknown>;
  if (payload.kind !== 'index.progress' || !isObject(payload.index)) {
    return null;
  }
  const index = payload.index as Record<string, unknown>;
  if (typeof index.state !== 'string') {
    return null;
  }
  return index as unknown as IIndexStatus;
}

// -- empty states and errors -----------------------------------------------------------------

export type MessageKind = 'info' | 'warning' | 'error';

export interface IPanelMessage {
  kind: MessageKind;
  text: string;
}

/** Minimal shape of a `CloudIDEError` (kept structural so this module stays pure). */
export interface IErrorLike {
  status?: number;
  code?: string;
  message?: string;
  retryAfter?: number | null;
}

/** The message for a failed index or search request. */
export function describeError(error: unknown): IPanelMessage {
  const e = (isObject(error) ? error : {}) as IErrorLike;
  const detail = typeof e.message === 'string' && e.message ? e.message : String(error);
  switch (e.status) {
    case 503:
      return {
        kind: 'warning',
        text:
          /disabled/i.test(detail)
            ? 'Semantic search is turned off on this server ' +
              '(an administrator can enable it with c.CloudIDEApp.index_enabled = True).'
            : `Semantic search is not available on this server: ${detail}`
      };
    case 429: {
      const wait = typeof e.retryAfter === 'number' ? ` Try again in ${Math.ceil(e.retryAfter)} s.` : '';
      return { kind: 'warning', text: `Too many searches.${wait}` };
    }
    case 401:
    case 403:
      return { kind: 'error', text: `You are not allowed to search this workspace: ${detail}` };
    case 400:
      return { kind: 'error', text: `The search was refused: ${detail}` };
    case 0:
      if (e.code === 'aborted') {
        return { kind: 'info', text: '' };
      }
      return { kind: 'error', text: `Could not reach the server: ${detail}` };
    default:
      return { kind: 'error', text: `Search failed: ${detail}` };
  }
}

/** True when an error means the index is unavailable on this server (no point retrying). */
export function isUnavailable(error: unknown): boolean {
  return isObject(error) && (error as IErrorLike).status === 503;
}

/** The message shown with (or instead of) the results of a search, or null for none. */
export function resultsMessage(
  results: ISearchResults,
  query: string,
  status: IIndexStatus | null | undefined
): IPanelMessage | null {
  const index = results.index ?? status ?? null;
  const building = index !== null && (isIndexBusy(index) || !index.complete);
  if (results.results.length === 0) {
    if (index && index.state === 'disabled') {
      return { kind: 'warning', text: indexStatusText(index) };
    }
    if (index && index.state === 'error') {
      return { kind: 'error', text: indexStatusText(index) };
    }
    if (building) {
      return {
        kind: 'info',
        text: `No results yet for \u201c${query}\u201d: the index is still being built.`
      };
    }
    return { kind: 'info', text: `No results for \u201c${query}\u201d.` };
  }
  if (building) {
    return { kind: 'info', text: 'The index is still being built; results may be incomplete.' };
  }
  return null;
}

/** `1 result`, `12 results`. */
export function resultCountText(n: number): string {
  return plural(n, 'result');
}

function num(value: unknown): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : 0;
}

function isObject(value: unknown): value is object {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
