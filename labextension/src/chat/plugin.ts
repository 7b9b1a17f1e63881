/**
 * The chat plugin: a side panel on the right, the "AI IDE: Open chat" command, and the one
 * session channel of the page (shared through `../session`).
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { getChannel } from '../session';
import { restChatApi } from './api';
import { ChatController } from './controller';
import { createChatRendermime } from './markdown';
import { ChatPanel } from './panel';
import { Workspace } from './workspace';

export const CHAT_PLUGIN_ID = 'jupyter-cloudide:chat';

export namespace ChatCommandIDs {
  export const open = 'cloudide:open-chat';
}

/** A speech bubble (our own static SVG). */
export const chatIcon = new LabIcon({
  name: 'jupyter-cloudide:chat',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<path class="jp-icon3" fill="#616161" d="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9.4L5 ' +
    '21.6V18H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6v2h2V9H7zm4 0v2h2V9h-2zm4 0v2h2V9h-2z"/></svg>'
});

export const chatPlugin: JupyterFrontEndPlugin<void> = {
  id: CHAT_PLUGIN_ID,
  description: 'The AI chat side panel: conversations with the agent, approvals, diffs, undo.',
  autoStart: true,
  requires: [IRenderMimeRegistry],
  optional: [INotebookTracker, IEditorTracker, ILayoutRestorer, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    rendermime: IRenderMimeRegistry,
    notebooks: INotebookTracker | null,
    editors: IEditorTracker | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    _settings: ISettingRegistry | null
  ): void => {
    const channel = getChannel(app.serviceManager.serverSettings);
    const controller = new ChatController(channel, restChatApi);
    const workspace = new Workspace(app, notebooks, editors);
    const panel = new ChatPanel({
      controller,
      rendermime: createChatRendermime(rendermime),
      workspace
    });
    panel.title.icon = chatIcon;
    app.shell.add(panel, 'right', { rank: 600 });
    restorer?.add(panel, 'jupyter-cloudide-chat');
    // replays turns that were running before a reload, then connects the shared channel
    controller.start();

    app.commands.addCommand(ChatCommandIDs.open, {
      label: 'AI IDE: Open chat',
      caption: 'Open the AI chat panel',
      icon: chatIcon,
      execute: () => {
        app.shell.activateById(panel.id);
      }
    });
    palette?.addItem({ command: ChatCommandIDs.open, category: 'AI IDE' });
  }
};

export default chatPlugin;
