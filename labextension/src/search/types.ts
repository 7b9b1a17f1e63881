/**
 * Wire types of the semantic index and search (`GET/POST cloudide/api/index`,
 * `POST cloudide/api/search`, WS kind `search`, WS event `index.progress`).
 *
 * They mirror `IndexStatus`, `SearchBody`, `SearchHit` and `SearchResults` in
 * `jupyter_cloudide/api.yaml`; keep them in step when the schema changes.
 */

/** How hits are ranked: vector + BM25 fused (default), vector only, BM25 only. */
export type SearchMode = 'hybrid' | 'vector' | 'text';

export const SEARCH_MODES: readonly SearchMode[] = ['hybrid', 'vector', 'text'];

/** Body of `POST cloudide/api/search` (and the WS `search` payload without `kind`). */
export interface ISearchBody {
  query: string;
  k?: number;
  mode?: SearchMode;
  path_glob?: string;
  language?: string[];
}

/** One ranked chunk. Lines are 1-based; for a notebook cell they count within the cell. */
export interface ISearchHit {
  path: string;
  language: string;
  kind: string;
  start_line: number;
  end_line: number;
  score: number;
  snippet: string;
  symbol?: string;
  cell_id?: string;
  cell_index?: number;
}

export type IndexState =
  | 'not_started'
  | 'queued'
  | 'building'
  | 'idle'
  | 'error'
  | 'disabled';

/** `progress` of a running pass (see `storage/indexer.py`). */
export interface IIndexProgress {
  phase?: string;
  files_total?: number;
  files_done?: number;
  chunks_embedded?: number;
  chunks_reused?: number;
  [extra: string]: unknown;
}

/** `last_pass` of a finished pass. */
export interface IIndexLastPass {
  files_changed?: number;
  files_removed?: number;
  files_unreadable?: number;
  chunks_embedded?: number;
  chunks_reused?: number;
  seconds?: number;
  cancelled?: boolean;
  [extra: string]: unknown;
}

/** Body of `GET cloudide/api/index` (and of `index` in search results and events). */
export interface IIndexStatus {
  state: IndexState | string;
  embedder?: string;
  chunks: number;
  files: number;
  complete: boolean;
  progress?: IIndexProgress;
  last_pass?: IIndexLastPass;
  error?: string;
}

/** Body of a search answer (REST and WS). */
export interface ISearchResults {
  results: ISearchHit[];
  index?: IIndexStatus;
}
