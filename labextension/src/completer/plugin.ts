/**
 * The inline completions plugin: registers the AI IDE provider with JupyterLab's inline
 * completer (ghost text in notebook cells, file editors and consoles).
 *
 * The provider is registered at activation, always: JupyterLab reads the list of inline
 * providers once, when the app is restored, to build their settings (enabled, debouncer
 * delay, timeout), so a provider registered later would never be enabled. Whether a
 * completion model exists is checked in the background (`GET cloudide/api/models`); until
 * one is known, typing asks nothing (see `CloudIDEInlineProvider`).
 *
 * Settings live in JupyterLab's own "Inline Completer" settings, section "AI IDE provider"
 * (on by default; debouncer delay 300 ms; context sizes; maximum tokens; model).
 */

import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICompletionProviderManager } from '@jupyterlab/completer';
import { LabIcon } from '@jupyterlab/ui-components';

import { requestAPI } from '../request';
import { getChannel } from '../session';
import { CloudIDEInlineProvider, IModelListLike } from './provider';

export const COMPLETER_PLUGIN_ID = 'jupyter-cloudide:completer';

/** A sparkle (our own static SVG), shown on the inline completer's toolbar. */
export const completerIcon = new LabIcon({
  name: 'jupyter-cloudide:completer',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<path class="jp-icon3" fill="#616161" d="M10 2l1.9 5.6L17.5 9.5l-5.6 1.9L10 17l-1.9-' +
    '5.6L2.5 9.5l5.6-1.9zM18 13l1 2.9 3 1.1-3 1.1-1 2.9-1-2.9-3-1.1 3-1.1z"/></svg>'
});

export const completerPlugin: JupyterFrontEndPlugin<void> = {
  id: COMPLETER_PLUGIN_ID,
  description: 'Inline code completions (ghost text) from the AI IDE completion model.',
  autoStart: true,
  requires: [ICompletionProviderManager],
  activate: (app: JupyterFrontEnd, manager: ICompletionProviderManager): void => {
    if (typeof manager.registerInlineProvider !== 'function') {
      console.warn('jupyter_cloudide: inline completions need JupyterLab 4.1 or later');
      return;
    }
    const settings = app.serviceManager.serverSettings;
    const channel = getChannel(settings);
    const provider = new CloudIDEInlineProvider({
      channel,
      icon: completerIcon,
      listModels: () => requestAPI<IModelListLike>('models', {}, settings)
    });
    manager.registerInlineProvider(provider);
    channel.connect(); // idempotent: the chat plugin may have opened it already
    void provider.checkModels();
  }
};

export default completerPlugin;
