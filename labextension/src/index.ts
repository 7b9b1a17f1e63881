/**
 * Entry point of the jupyter-cloudide JupyterLab extension.
 *
 * Each feature is its own small plugin in the exported list: the core plugin (health),
 * search, usage; chat and inline completions join it.
 */

import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Dialog, ICommandPalette, showDialog } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { chatPlugin } from './chat/plugin';
import { completerPlugin } from './completer/plugin';
import { CloudIDEError } from './errors';
import { searchPlugin } from './search/plugin';
import { usagePlugin } from './usage/plugin';
import { fetchHealth, healthSummary, preformattedWidget } from './health';
import {
  CommandIDs,
  DEFAULT_SETTINGS,
  ICloudIDESettings,
  PLUGIN_ID
} from './tokens';

export * from './tokens';
export { CloudIDEError } from './errors';
export { requestAPI } from './request';

/** Read the plugin's settings over the defaults. */
function readSettings(settings: ISettingRegistry.ISettings): ICloudIDESettings {
  const composite = settings.composite as Partial<ICloudIDESettings>;
  return { ...DEFAULT_SETTINGS, ...composite };
}

/** Text of an error for the console or a dialog (never rendered as HTML). */
function describeError(error: unknown): string {
  if (error instanceof CloudIDEError) {
    const retry =
      error.retryAfter !== null ? `; retry after ${error.retryAfter}s` : '';
    return `${error.message} (HTTP ${error.status}, ${error.code}${retry})`;
  }
  return error instanceof Error ? error.message : String(error);
}

/**
 * Core plugin: checks the server extension at start-up (and every
 * `healthPollSeconds` if set) and offers the "AI IDE: Server health" command.
 */
const corePlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'Connects JupyterLab to the jupyter_cloudide server extension and reports its health.',
  autoStart: true,
  optional: [ISettingRegistry, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null
  ): void => {
    let current: ICloudIDESettings = { ...DEFAULT_SETTINGS };
    let pollTimer: number | undefined;

    const checkHealth = async (): Promise<void> => {
      try {
        const health = await fetchHealth();
        if (current.logHealthToConsole) {
          console.log(healthSummary(health));
        }
      } catch (error) {
        console.error(
          `jupyter_cloudide: the server extension did not answer: ${describeError(error)}`
        );
      }
    };

    const schedulePolling = (): void => {
      if (pollTimer !== undefined) {
        window.clearInterval(pollTimer);
        pollTimer = undefined;
      }
      if (current.healthPollSeconds > 0) {
        pollTimer = window.setInterval(
          () => void checkHealth(),
          current.healthPollSeconds * 1000
        );
      }
    };

    app.commands.addCommand(CommandIDs.showHealth, {
      label: 'AI IDE: Server health',
      caption: 'Show the jupyter_cloudide server health report',
      execute: async () => {
        let body;
        try {
          body = preformattedWidget(await fetchHealth());
        } catch (error) {
          body = preformattedWidget(describeError(error));
        }
        await showDialog({
          title: 'AI IDE: Server health',
          body,
          buttons: [Dialog.okButton({ label: 'Close' })]
        });
      }
    });
    palette?.addItem({ command: CommandIDs.showHealth, category: 'AI IDE' });

    const start = async (): Promise<void> => {
      if (settingRegistry) {
        try {
          const settings = await settingRegistry.load(PLUGIN_ID);
          current = readSettings(settings);
          settings.changed.connect(() => {
            current = readSettings(settings);
            schedulePolling();
          });
        } catch (error) {
          console.warn('jupyter_cloudide: could not load settings', error);
        }
      }
      await checkHealth();
      schedulePolling();
    };
    void start();
  }
};

const plugins: JupyterFrontEndPlugin<any>[] = [
  corePlugin,
  chatPlugin,
  completerPlugin,
  searchPlugin,
  usagePlugin
];

export default plugins;
