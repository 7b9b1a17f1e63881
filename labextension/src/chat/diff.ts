/**
 * Parsing the unified diffs that file and cell edit tools return (`tool.result` `data.diff`,
 * made by Python's difflib). Pure: the view turns the lines into text nodes.
 */

export type DiffLineKind = 'file' | 'hunk' | 'add' | 'del' | 'context' | 'meta';

export interface IDiffLine {
  kind: DiffLineKind;
  /** The line as it is shown (with its leading `+`, `-` or space). */
  text: string;
  /** Line number in the old text (`del` and `context` lines). */
  oldLine?: number;
  /** Line number in the new text (`add` and `context` lines). */
  newLine?: number;
}

export interface IParsedDiff {
  lines: IDiffLine[];
  added: number;
  removed: number;
  /** Paths named by the `---`/`+++` headers (`/dev/null` left out). */
  paths: string[];
}

const HUNK = /^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@/;

/**
 * Classify every line of a unified diff. Inside a hunk, lines are counted against the hunk
 * header, so a removed line that reads `--- x` or an added `+++ y` stays a change, not a
 * file header. Unparseable input comes back as `meta` lines, never dropped.
 */
export function parseUnifiedDiff(diff: string | null | undefined): IParsedDiff {
  const out: IParsedDiff = { lines: [], added: 0, removed: 0, paths: [] };
  if (!diff) {
    return out;
  }
  const raw = diff.split('\n');
  if (raw.length && raw[raw.length - 1] === '') {
    raw.pop();
  }
  let oldLeft = 0;
  let newLeft = 0;
  let oldNo = 0;
  let newNo = 0;
  for (const text of raw) {
    const inHunk = oldLeft > 0 || newLeft > 0;
    if (inHunk) {
      const sign = text[0];
      if (sign === '+' && newLeft > 0) {
        out.lines.push({ kind: 'add', text, newLine: newNo++ });
        newLeft--;
        out.added++;
        continue;
      }
      if (sign === '-' && oldLeft > 0) {
        out.lines.push({ kind: 'del', text, oldLine: oldNo++ });
        oldLeft--;
        out.removed++;
        continue;
      }
      if ((sign === ' ' || text === '') && oldLeft > 0 && newLeft > 0) {
        out.lines.push({ kind: 'context', text, oldLine: oldNo++, newLine: newNo++ });
        oldLeft--;
        newLeft--;
        continue;
      }
      if (sign === '\\') {
        out.lines.push({ kind: 'meta', text });
        continue;
      }
      // a malformed hunk: stop counting, classify the rest by its look
      oldLeft = newLeft = 0;
    }
    if (text.startsWith('\\')) {
      out.lines.push({ kind: 'meta', text });
      continue;
    }
    const hunk = HUNK.exec(text);
    if (hunk) {
      oldNo = Number(hunk[1]);
      oldLeft = hunk[2] === undefined ? 1 : Number(hunk[2]);
      newNo = Number(hunk[3]);
      newLeft = hunk[4] === undefined ? 1 : Number(hunk[4]);
      out.lines.push({ kind: 'hunk', text });
      continue;
    }
    if (text.startsWith('--- ') || text.startsWith('+++ ')) {
      out.lines.push({ kind: 'file', text });
      const path = text.slice(4).split('\t')[0].trim();
      if (path && path !== '/dev/null') {
        const bare = path.replace(/^[ab]\//, '');
        if (!out.paths.includes(bare)) {
          out.paths.push(bare);
        }
      }
      continue;
    }
    out.lines.push({ kind: 'meta', text });
  }
  return out;
}
