/**
 * What an inline completion request sends: the text before the cursor (`prefix`), the text
 * after it (`suffix`), the language and the path, built from the editor the completer runs in.
 *
 * Notebooks are sent whole around the cursor, as one script in the "percent" format that
 * jupytext, VS Code and Spyder use (a model has seen plenty of it):
 *
 *     # %%
 *     import pandas as pd            <- a code cell above, as it is
 *
 *     # %% [markdown]
 *     # ## Load the data             <- a markdown cell above, each line commented
 *
 *     # %%
 *     df = pd.read_|                 <- the active cell up to the cursor ends the prefix
 *     ---------------- cursor ----------------
 *     csv(path)                      <- the rest of the active cell starts the suffix
 *
 *     # %%
 *     df.head()                      <- the cells below
 *
 * - Cells are separated by a blank line and a marker (`# %%`, with the language's line
 *   comment: `// %%` for JavaScript). A notebook of one cell is sent like a file: no markers.
 * - Markdown cells are kept, as comments: they often say what the next code should do. Raw
 *   cells and empty cells are skipped. When the active cell itself is not code (markdown,
 *   raw) nothing is completed: the completion model writes code, not prose.
 * - Each side is capped (default 40,000 characters) keeping the text nearest the cursor,
 *   cut at a line boundary; the server cuts again to its own token budget.
 * - A file editor (or a console, or anything else) sends its text split at the cursor.
 *
 * Pure: nothing here imports JupyterLab at run time; `fromWidget` reads the widget through
 * the few properties it needs, so everything is unit-tested with plain objects.
 */

/** Characters kept on each side of the cursor unless configured otherwise. */
export const DEFAULT_MAX_CHARS = 40_000;

/** The schema's limits on `path` and `language` (api.yaml WsComplete). */
const MAX_PATH = 4096;
const MAX_LANGUAGE = 64;

/** The payload fields of a `complete` request built here. */
export interface ICompletionInput {
  prefix: string;
  suffix: string;
  /** Normalised (`python`, `r`, `typescript`...); absent when unknown. */
  language?: string;
  path?: string;
}

/** One cell as the builder needs it. */
export interface ICellData {
  /** `code`, `markdown` or `raw`. */
  type: string;
  source: string;
}

/** A notebook as the builder needs it. */
export interface INotebookData {
  cells: ICellData[];
  /** The cell the cursor is in. */
  activeIndex: number;
  /** Kernel language (`language_info.name` or `kernelspec.language`), if known. */
  language?: string | null;
  path?: string | null;
}

export interface ILimits {
  maxPrefixChars?: number;
  maxSuffixChars?: number;
}

// -- offsets --------------------------------------------------------------------------------

/**
 * JupyterLab's completion requests count the cursor offset in Unicode characters
 * (`Text.jsIndexToCharIndex`): a character outside the BMP (an emoji) is one, though it is
 * two UTF-16 units in a JS string. This turns such an offset into a JS string index.
 */
export function charToJsIndex(text: string, charOffset: number): number {
  if (!(charOffset > 0)) {
    return 0;
  }
  let js = 0;
  let chars = 0;
  while (js < text.length && chars < charOffset) {
    const code = text.charCodeAt(js);
    if (code >= 0xd800 && code <= 0xdbff && js + 1 < text.length) {
      const next = text.charCodeAt(js + 1);
      js += next >= 0xdc00 && next <= 0xdfff ? 2 : 1;
    } else {
      js += 1;
    }
    chars += 1;
  }
  return js;
}

// -- caps -----------------------------------------------------------------------------------

/** The end of `text` in at most `max` characters, starting at a line when it is cut. */
export function keepEnd(text: string, max: number): string {
  if (text.length <= max) {
    return text;
  }
  if (max <= 0) {
    return '';
  }
  let tail = text.slice(text.length - max);
  const newline = tail.indexOf('\n');
  if (newline >= 0 && newline < tail.length - 1) {
    tail = tail.slice(newline + 1);
  } else if (isLowSurrogate(tail.charCodeAt(0))) {
    tail = tail.slice(1); // one very long line: at least do not split a character
  }
  return tail;
}

/** The start of `text` in at most `max` characters, ending at a line when it is cut. */
export function keepStart(text: string, max: number): string {
  if (text.length <= max) {
    return text;
  }
  if (max <= 0) {
    return '';
  }
  let head = text.slice(0, max);
  const newline = head.lastIndexOf('\n');
  if (newline > 0) {
    head = head.slice(0, newline);
  } else if (isHighSurrogate(head.charCodeAt(head.length - 1))) {
    head = head.slice(0, -1);
  }
  return head;
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}

function isLowSurrogate(code: number): boolean {
  return code >= 0xdc00 && code <= 0xdfff;
}

// -- languages ------------------------------------------------------------------------------

const LANGUAGE_ALIASES: Record<string, string> = {
  ipython: 'python',
  ipython3: 'python',
  python3: 'python',
  py: 'python',
  js: 'javascript',
  ts: 'typescript',
  sh: 'bash',
  shell: 'bash',
  zsh: 'bash',
  'c++': 'cpp',
  'c#': 'csharp',
  golang: 'go',
  octave: 'matlab',
  ipythongfm: 'markdown',
  gfm: 'markdown'
};

const MIME_LANGUAGES: Record<string, string> = {
  'text/x-python': 'python',
  'text/x-ipython': 'python',
  'text/x-cython': 'python',
  'text/x-rsrc': 'r',
  'text/x-r-source': 'r',
  'text/x-julia': 'julia',
  'text/javascript': 'javascript',
  'application/javascript': 'javascript',
  'text/typescript': 'typescript',
  'application/typescript': 'typescript',
  'text/x-typescript': 'typescript',
  'text/x-sh': 'bash',
  'text/x-sql': 'sql',
  'text/x-mysql': 'sql',
  'text/x-pgsql': 'sql',
  'text/x-csrc': 'c',
  'text/x-c++src': 'cpp',
  'text/x-csharp': 'csharp',
  'text/x-java': 'java',
  'text/x-scala': 'scala',
  'text/x-kotlin': 'kotlin',
  'text/x-go': 'go',
  'text/x-rustsrc': 'rust',
  'text/x-ruby': 'ruby',
  'text/x-perl': 'perl',
  'text/x-lua': 'lua',
  'text/x-haskell': 'haskell',
  'text/x-octave': 'matlab',
  'text/x-yaml': 'yaml',
  'text/x-toml': 'toml',
  'application/json': 'json',
  'application/x-ipynb+json': 'json',
  'text/html': 'html',
  'text/css': 'css',
  'text/x-markdown': 'markdown',
  'text/x-ipythongfm': 'markdown',
  'text/markdown': 'markdown'
};

const EXTENSION_LANGUAGES: Record<string, string> = {
  py: 'python',
  pyi: 'python',
  pyx: 'python',
  ipy: 'python',
  r: 'r',
  jl: 'julia',
  js: 'javascript',
  mjs: 'javascript',
  cjs: 'javascript',
  jsx: 'javascript',
  ts: 'typescript',
  mts: 'typescript',
  tsx: 'typescript',
  sh: 'bash',
  bash: 'bash',
  zsh: 'bash',
  sql: 'sql',
  c: 'c',
  h: 'c',
  cc: 'cpp',
  cpp: 'cpp',
  cxx: 'cpp',
  hpp: 'cpp',
  cs: 'csharp',
  java: 'java',
  scala: 'scala',
  kt: 'kotlin',
  go: 'go',
  rs: 'rust',
  rb: 'ruby',
  pl: 'perl',
  lua: 'lua',
  hs: 'haskell',
  m: 'matlab',
  yml: 'yaml',
  yaml: 'yaml',
  toml: 'toml',
  json: 'json',
  html: 'html',
  htm: 'html',
  css: 'css',
  md: 'markdown',
  markdown: 'markdown',
  tex: 'latex',
  txt: 'text'
};

/** A language name as the server wants it: lower case, common aliases folded. */
export function normalizeLanguage(name: string | null | undefined): string | undefined {
  const clean = (name ?? '').trim().toLowerCase();
  if (!clean) {
    return undefined;
  }
  return (LANGUAGE_ALIASES[clean] ?? clean).slice(0, MAX_LANGUAGE);
}

/** The language of an editor MIME type (`text/x-ipython` -> `python`), if known. */
export function languageFromMime(mime: string | null | undefined): string | undefined {
  const clean = (mime ?? '').trim().toLowerCase();
  return clean ? MIME_LANGUAGES[clean] : undefined;
}

/** The language of a file name (`src/app.ts` -> `typescript`), if known. */
export function languageFromPath(path: string | null | undefined): string | undefined {
  const name = (path ?? '').split('/').pop() ?? '';
  const dot = name.lastIndexOf('.');
  if (dot <= 0 || dot === name.length - 1) {
    return name.toLowerCase() === 'dockerfile' ? 'dockerfile' : undefined;
  }
  return EXTENSION_LANGUAGES[name.slice(dot + 1).toLowerCase()];
}

const SLASH_COMMENT = new Set([
  'javascript', 'typescript', 'c', 'cpp', 'csharp', 'java', 'scala', 'kotlin', 'go', 'rust',
  'swift', 'dart', 'groovy', 'php'
]);
const DASH_COMMENT = new Set(['sql', 'haskell', 'lua']);
const PERCENT_COMMENT = new Set(['matlab', 'latex']);

/** The line comment of a language (`#` unless known otherwise). */
export function lineComment(language: string | undefined): string {
  if (language && SLASH_COMMENT.has(language)) {
    return '//';
  }
  if (language && DASH_COMMENT.has(language)) {
    return '--';
  }
  if (language && PERCENT_COMMENT.has(language)) {
    return '%';
  }
  return '#';
}

// -- builders -------------------------------------------------------------------------------

/** A plain file (or console prompt): its text split at the cursor (a JS string index). */
export function buildFileInput(
  text: string,
  offset: number,
  info: { path?: string | null; language?: string | null; mimeType?: string | null } = {},
  limits: ILimits = {}
): ICompletionInput {
  const at = clamp(offset, 0, text.length);
  const language =
    normalizeLanguage(info.language) ??
    languageFromPath(info.path) ??
    languageFromMime(info.mimeType);
  return withMeta(
    {
      prefix: keepEnd(text.slice(0, at), limits.maxPrefixChars ?? DEFAULT_MAX_CHARS),
      suffix: keepStart(text.slice(at), limits.maxSuffixChars ?? DEFAULT_MAX_CHARS)
    },
    language,
    info.path
  );
}

/**
 * A notebook around the cursor. `text` and `offset` (a JS string index) are the active
 * cell's editor as the completion request has them (the editor may be a keystroke ahead of
 * the model, so its text wins over the active cell's stored source). Null when the active
 * cell is not a code cell.
 */
export function buildNotebookInput(
  notebook: INotebookData,
  text: string,
  offset: number,
  info: { mimeType?: string | null } = {},
  limits: ILimits = {}
): ICompletionInput | null {
  const { cells, activeIndex } = notebook;
  const active = cells[activeIndex];
  if (!active || active.type !== 'code') {
    return null;
  }
  const language =
    normalizeLanguage(notebook.language) ?? languageFromMime(info.mimeType) ?? 'python';
  const comment = lineComment(language);
  const maxPrefix = limits.maxPrefixChars ?? DEFAULT_MAX_CHARS;
  const maxSuffix = limits.maxSuffixChars ?? DEFAULT_MAX_CHARS;
  const at = clamp(offset, 0, text.length);
  const before = text.slice(0, at);
  const after = text.slice(at);

  // Walk outwards from the active cell, stopping once a side is over its budget (a notebook
  // of thousands of cells is not joined whole on every keystroke).
  const above: string[] = [];
  let aboveChars = before.length;
  for (let i = activeIndex - 1; i >= 0 && aboveChars <= maxPrefix; i--) {
    const block = renderCell(cells[i], comment);
    if (block !== null) {
      above.unshift(block);
      aboveChars += block.length + 2;
    }
  }
  const below: string[] = [];
  let belowChars = after.length;
  for (let i = activeIndex + 1; i < cells.length && belowChars <= maxSuffix; i++) {
    const block = renderCell(cells[i], comment);
    if (block !== null) {
      below.push(block);
      belowChars += block.length + 2;
    }
  }

  const single = above.length === 0 && below.length === 0;
  const prefix = single ? before : [...above, `${comment} %%\n${before}`].join('\n\n');
  const suffix = single ? after : [after, ...below].join('\n\n');
  return withMeta(
    { prefix: keepEnd(prefix, maxPrefix), suffix: keepStart(suffix, maxSuffix) },
    language,
    notebook.path
  );
}

/** A cell above or below as a block of the script, or null when it is left out. */
function renderCell(cell: ICellData, comment: string): string | null {
  const source = trimEnd(cell.source ?? '');
  if (!source.trim()) {
    return null;
  }
  if (cell.type === 'code') {
    return `${comment} %%\n${source}`;
  }
  if (cell.type === 'markdown') {
    const lines = source.split('\n').map(line => (line ? `${comment} ${line}` : comment));
    return `${comment} %% [markdown]\n${lines.join('\n')}`;
  }
  return null; // raw cells are not part of the program
}

// -- from a JupyterLab widget -------------------------------------------------------------

/** The completion request as JupyterLab hands it to a provider (`CompletionHandler.IRequest`). */
export interface IEditorRequest {
  text: string;
  /** In Unicode characters (see `charToJsIndex`). */
  offset: number;
  mimeType?: string;
}

/**
 * Build the input from the widget the completer runs in: a NotebookPanel (cells around the
 * active one), a document widget (its path), anything else (the request's text alone).
 * Null when there is nothing to complete (the active cell is markdown).
 */
export function fromWidget(
  widget: unknown,
  request: IEditorRequest,
  limits: ILimits = {}
): ICompletionInput | null {
  const offset = charToJsIndex(request.text, request.offset);
  const notebook = notebookData(widget, request.text);
  if (notebook) {
    return buildNotebookInput(notebook, request.text, offset, request, limits);
  }
  if (languageFromMime(request.mimeType) === 'markdown' && !isMarkdownFile(widget)) {
    return null; // a markdown cell of a console or the like
  }
  return buildFileInput(request.text, offset, {
    path: documentPath(widget),
    mimeType: request.mimeType
  }, limits);
}

/**
 * The cells of a NotebookPanel (read through `content.model.sharedModel`, which holds every
 * cell even when the notebook renders only the visible ones). Null for other widgets.
 */
export function notebookData(widget: any, editorText?: string): INotebookData | null {
  const notebook = widget?.content;
  const shared = notebook?.model?.sharedModel;
  const rawCells: any[] | undefined = shared?.cells;
  if (!Array.isArray(rawCells) || typeof notebook?.activeCellIndex !== 'number') {
    return null;
  }
  // sources are read when needed: the builder stops at its budget, far cells are never read
  const cells: ICellData[] = rawCells.map(cell => lazyCell(cell));
  let activeIndex: number = notebook.activeCellIndex;
  if (editorText !== undefined && cells[activeIndex]?.source !== editorText) {
    // the request came from another cell than the active one (focus moved meanwhile)
    const found = cells.findIndex(c => c.source === editorText);
    if (found >= 0) {
      activeIndex = found;
    }
  }
  return { cells, activeIndex, language: kernelLanguage(notebook.model), path: documentPath(widget) };
}

function lazyCell(cell: any): ICellData {
  let source: string | null = null;
  return {
    type: String(cell?.cell_type ?? 'code'),
    get source(): string {
      if (source === null) {
        source = typeof cell?.getSource === 'function' ? String(cell.getSource()) : '';
      }
      return source;
    }
  };
}

function kernelLanguage(model: any): string | null {
  const meta = (key: string): any => {
    try {
      return typeof model?.getMetadata === 'function'
        ? model.getMetadata(key)
        : model?.sharedModel?.getMetadata?.(key);
    } catch {
      return undefined;
    }
  };
  const info = meta('language_info');
  if (info && typeof info.name === 'string' && info.name) {
    return info.name;
  }
  const spec = meta('kernelspec');
  return spec && typeof spec.language === 'string' ? spec.language : null;
}

function documentPath(widget: any): string | null {
  const path = widget?.context?.path;
  return typeof path === 'string' && path ? path : null;
}

function isMarkdownFile(widget: unknown): boolean {
  return languageFromPath(documentPath(widget)) === 'markdown';
}

// -- helpers --------------------------------------------------------------------------------

function withMeta(
  input: ICompletionInput,
  language: string | undefined,
  path: string | null | undefined
): ICompletionInput {
  if (language) {
    input.language = language.slice(0, MAX_LANGUAGE);
  }
  if (path) {
    input.path = path.slice(0, MAX_PATH);
  }
  return input;
}

function trimEnd(text: string): string {
  return text.replace(/\s+$/, '');
}

function clamp(value: number, low: number, high: number): number {
  return Number.isFinite(value) ? Math.min(high, Math.max(low, value)) : high;
}
