/**
 * Opening a search hit: the file in its default viewer, then the editor cursor on the hit's
 * first line (a file editor) or the hit's cell activated and scrolled to (a notebook).
 */

import type { CodeEditor } from '@jupyterlab/codeeditor';
import type { IDocumentManager } from '@jupyterlab/docmanager';
import type { IDocumentWidget } from '@jupyterlab/docregistry';
import { FileEditor } from '@jupyterlab/fileeditor';
import { Notebook } from '@jupyterlab/notebook';

import { editorLine, findCellIndex } from './logic';
import type { ISearchHit } from './types';

/** Put the cursor on the 1-based `startLine` and scroll it into view. */
export function revealLine(editor: CodeEditor.IEditor, startLine: number): void {
  const position = { line: editorLine(startLine, editor.lineCount), column: 0 };
  editor.setCursorPosition(position);
  editor.revealPosition(position);
}

/** Activate the hit's cell, scroll to it and put its cursor on the hit's line. */
async function revealInNotebook(notebook: Notebook, hit: ISearchHit): Promise<void> {
  const ids = notebook.widgets.map(cell => cell.model.id);
  const index = findCellIndex(hit, ids);
  if (index === -1) {
    return; // the cell is gone since it was indexed: the notebook is open, that is all
  }
  const cell = notebook.widgets[index];
  notebook.deselectAll();
  notebook.activeCellIndex = index;
  notebook.mode = 'command';
  await notebook.scrollToCell(cell, 'start');
  await cell.ready;
  if (cell.editor && !cell.isDisposed) {
    revealLine(cell.editor, hit.start_line);
  }
}

/**
 * Open (or reveal) the hit's file and move to the hit. Resolves with the widget, or
 * undefined when no viewer could open the path.
 */
export async function openHit(
  docManager: IDocumentManager,
  hit: ISearchHit
): Promise<IDocumentWidget | undefined> {
  const widget = docManager.openOrReveal(hit.path);
  if (!widget) {
    return undefined;
  }
  await widget.context.ready;
  await widget.revealed;
  if (widget.isDisposed) {
    return undefined;
  }
  const content = widget.content;
  if (content instanceof Notebook) {
    await revealInNotebook(content, hit);
  } else if (content instanceof FileEditor) {
    await content.ready;
    revealLine(content.editor, hit.start_line);
    content.editor.focus();
  } else {
    // another viewer that embeds an editor (a custom one): move its cursor if we can
    const editor = (content as { editor?: Partial<CodeEditor.IEditor> }).editor;
    if (editor && typeof editor.setCursorPosition === 'function') {
      revealLine(editor as CodeEditor.IEditor, hit.start_line);
    }
  }
  return widget;
}
