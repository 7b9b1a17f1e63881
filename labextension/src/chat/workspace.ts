/**
 * The chat's view of the workspace: which notebook or file editor is active, what the user
 * can attach (context chips) and what code-block buttons act on. Uses JupyterLab's notebook
 * and editor trackers; either may be missing.
 */

import type { JupyterFrontEnd } from '@jupyterlab/application';
import { Clipboard, showErrorMessage } from '@jupyterlab/apputils';
import type { CodeEditor } from '@jupyterlab/codeeditor';
import type { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { ISignal, Signal } from '@lumino/signaling';

import { chipLabel } from './format';
import type { ICodeActions } from './markdown';
import type { IContextItem } from './types';

/** Longest text attached per item (the schema allows 200,000 characters). */
const MAX_ITEM_TEXT = 100_000;

export interface IChip {
  key: string;
  label: string;
  item: IContextItem;
}

/** A file editor's document widget, as the editor tracker has it. */
type EditorWidget = NonNullable<IEditorTracker['currentWidget']>;

type Target =
  | { kind: 'notebook'; panel: NotebookPanel }
  | { kind: 'editor'; widget: EditorWidget }
  | null;

export class Workspace implements ICodeActions {
  constructor(app: JupyterFrontEnd, notebooks: INotebookTracker | null,
    editors: IEditorTracker | null) {
    this._app = app;
    this._notebooks = notebooks;
    this._editors = editors;
    const refresh = () => {
      this._watchSelection();
      this._changed.emit();
    };
    notebooks?.currentChanged.connect(refresh);
    notebooks?.activeCellChanged.connect(refresh);
    notebooks?.selectionChanged.connect(refresh);
    editors?.currentChanged.connect(refresh);
    app.shell.currentChanged?.connect(refresh);
    this._watchSelection();
  }

  /** Follow the text selection of the active cell or editor (for the selection chip). */
  private _watchSelection(): void {
    const target = this._target();
    const editor = target?.kind === 'notebook'
      ? target.panel.content.activeCell?.editor ?? null
      : target?.kind === 'editor' ? target.widget.content.editor : null;
    const model = editor?.model ?? null;
    if (model === this._watched) {
      return;
    }
    this._watched?.selections.changed.disconnect(this._onSelection, this);
    this._watched = model && !model.isDisposed ? model : null;
    this._watched?.selections.changed.connect(this._onSelection, this);
  }

  private _onSelection(): void {
    this._changed.emit();
  }

  /** The active notebook, cell or editor changed: chips may have changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  // -- context chips ------------------------------------------------------------------------

  /** What can be attached now, minus what the user removed. */
  chips(): IChip[] {
    const all = this._candidates();
    const keys = new Set(all.map(c => c.key));
    for (const key of [...this._removed]) {
      if (!keys.has(key)) {
        this._removed.delete(key); // gone: a new one of its kind shows again
      }
    }
    return all.filter(c => !this._removed.has(c.key));
  }

  removeChip(key: string): void {
    this._removed.add(key);
    this._changed.emit();
  }

  private _candidates(): IChip[] {
    const target = this._target();
    const chips: IChip[] = [];
    const add = (key: string, item: IContextItem) => {
      if (item.title) {
        item.title = item.title.slice(0, 500); // the schema's limit is 512
      }
      chips.push({ key, item, label: chipLabel(item) });
    };
    if (target?.kind === 'notebook') {
      const { panel } = target;
      const path = panel.context.path;
      const cell = panel.content.activeCell;
      const cellId = cell?.model.id;
      add(`notebook:${path}`, { kind: 'notebook', path, ...(cellId ? { cell_id: cellId } : {}) });
      if (cell && cellId) {
        const index = panel.content.activeCellIndex;
        add(`cell:${path}:${cellId}`, { kind: 'cell', path, cell_id: cellId,
          title: `Cell ${index + 1} of ${path.split('/').pop()}`,
          text: clip(cell.model.sharedModel.getSource()) });
        const selected = selectedText(cell.editor);
        if (selected) {
          add(`selection:${path}:${cellId}:${selected.length}:${selected.slice(0, 40)}`,
            { kind: 'selection', path, text: clip(selected) });
        }
      }
    } else if (target?.kind === 'editor') {
      const { widget } = target;
      const path = widget.context.path;
      const editor = widget.content.editor;
      const item: IContextItem = { kind: 'file', path };
      if (widget.context.model.dirty) {
        item.text = clip(editor.model.sharedModel.getSource());
      }
      add(`file:${path}`, item);
      const selected = selectedText(editor);
      if (selected) {
        const { start, end } = editor.getSelection();
        add(`selection:${path}:${start.line}:${end.line}:${selected.length}`, {
          kind: 'selection', path, text: clip(selected),
          title: `Selection, ${path.split('/').pop()} lines ${start.line + 1}-${end.line + 1}` });
      }
    }
    return chips;
  }

  // -- code block actions ------------------------------------------------------------------

  copy(code: string): void {
    Clipboard.copyToSystem(code);
  }

  insert(code: string): void {
    const target = this._target();
    let editor: CodeEditor.IEditor | null | undefined = null;
    if (target?.kind === 'notebook') {
      editor = target.panel.content.activeCell?.editor;
      this._app.shell.activateById(target.panel.id);
    } else if (target?.kind === 'editor') {
      editor = target.widget.content.editor;
      this._app.shell.activateById(target.widget.id);
    }
    if (!editor) {
      void showErrorMessage('Nothing to insert into',
        'Open a notebook (and select a cell) or a file editor first.');
      return;
    }
    if (editor.replaceSelection) {
      editor.replaceSelection(code);
    } else {
      const source = editor.model.sharedModel.getSource();
      editor.model.sharedModel.setSource(source + (source.endsWith('\n') || !source ? '' : '\n') + code);
    }
    editor.focus();
  }

  run(code: string): void {
    const panel = this._target()?.kind === 'notebook'
      ? (this._target() as { panel: NotebookPanel }).panel
      : this._notebooks?.currentWidget;
    if (!panel) {
      void showErrorMessage('No notebook to run in', 'Open a notebook first: the code runs ' +
        "as a new cell below the active one, in that notebook's kernel.");
      return;
    }
    const notebook = panel.content;
    this._app.shell.activateById(panel.id);
    NotebookActions.insertBelow(notebook);
    if (notebook.activeCell?.model.type !== 'code') {
      NotebookActions.changeCellType(notebook, 'code');
    }
    const cell = notebook.activeCell;
    if (!cell) {
      return;
    }
    cell.model.sharedModel.setSource(code);
    void NotebookActions.run(notebook, panel.sessionContext);
  }

  /** The notebook or editor the user worked in last (the main area's current one first). */
  private _target(): Target {
    const current = this._app.shell.currentWidget;
    const notebook = this._notebooks?.currentWidget ?? null;
    const editor = this._editors?.currentWidget ?? null;
    if (editor && current === editor) {
      return { kind: 'editor', widget: editor };
    }
    if (notebook && current === notebook) {
      return { kind: 'notebook', panel: notebook };
    }
    if (notebook && !notebook.isDisposed) {
      return { kind: 'notebook', panel: notebook };
    }
    if (editor && !editor.isDisposed) {
      return { kind: 'editor', widget: editor };
    }
    return null;
  }

  private _app: JupyterFrontEnd;
  private _notebooks: INotebookTracker | null;
  private _editors: IEditorTracker | null;
  private _removed = new Set<string>();
  private _watched: CodeEditor.IModel | null = null;
  private _changed = new Signal<this, void>(this);
}

function selectedText(editor: CodeEditor.IEditor | null | undefined): string {
  if (!editor) {
    return '';
  }
  const { start, end } = editor.getSelection();
  if (start.line === end.line && start.column === end.column) {
    return '';
  }
  const from = editor.getOffsetAt(start);
  const to = editor.getOffsetAt(end);
  return editor.model.sharedModel.getSource().slice(Math.min(from, to), Math.max(from, to));
}

function clip(text: string): string {
  return text.length > MAX_ITEM_TEXT ? text.slice(0, MAX_ITEM_TEXT) : text;
}
