/**
 * The semantic search plugin: the search panel in the left sidebar, restored with the
 * layout, and the "AI IDE: Search the workspace" command that opens and focuses it.
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IDocumentManager } from '@jupyterlab/docmanager';
import { searchIcon } from '@jupyterlab/ui-components';

import { getChannel } from '../session';
import { openHit } from './navigate';
import { SearchPanel } from './panel';

export const SEARCH_PLUGIN_ID = 'jupyter-cloudide:search';
/** Command that shows the search panel and focuses its query box. */
export const OPEN_SEARCH_COMMAND = 'cloudide:open-search';
/** Id of the panel's widget in the shell. */
export const SEARCH_PANEL_ID = 'jp-cloudide-search';

export const searchPlugin: JupyterFrontEndPlugin<void> = {
  id: SEARCH_PLUGIN_ID,
  description: 'Semantic search of the workspace index, in the left sidebar.',
  autoStart: true,
  requires: [IDocumentManager],
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    docManager: IDocumentManager,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ): void => {
    const channel = getChannel(app.serviceManager.serverSettings);
    channel.connect();

    const panel = new SearchPanel({
      channel,
      openHit: hit => openHit(docManager, hit)
    });
    panel.id = SEARCH_PANEL_ID;
    panel.title.icon = searchIcon;
    panel.title.caption = 'AI IDE: Search the workspace';
    app.shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, SEARCH_PLUGIN_ID);

    app.commands.addCommand(OPEN_SEARCH_COMMAND, {
      label: 'AI IDE: Search the workspace',
      caption: 'Semantic search over the files of this workspace',
      icon: args => (args['isPalette'] ? undefined : searchIcon),
      execute: () => {
        app.shell.activateById(panel.id);
        panel.focusInput();
      }
    });
    palette?.addItem({ command: OPEN_SEARCH_COMMAND, category: 'AI IDE' });
  }
};
