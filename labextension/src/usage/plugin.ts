/**
 * The usage plugin: a status-bar item with this month's AI spend (against the budget when
 * there is one) and the "AI IDE: Usage and cost" command that opens the usage panel.
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  MainAreaWidget,
  Notification,
  WidgetTracker
} from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { getChannel } from '../session';
import { budgetNoticeText } from './logic';
import { UsagePanel } from './panel';
import { UsageStatus } from './status';

export const USAGE_PLUGIN_ID = 'jupyter-cloudide:usage';
/** Command that opens (or reveals) the usage panel. */
export const OPEN_USAGE_COMMAND = 'cloudide:open-usage';
/** Id of the usage panel's widget in the shell. */
export const USAGE_PANEL_ID = 'jp-cloudide-usage';

const USAGE_ICON_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
  '<g class="jp-icon3" fill="#616161">' +
  '<rect x="3" y="12" width="4" height="9"/><rect x="10" y="7" width="4" height="14"/>' +
  '<rect x="17" y="3" width="4" height="18"/></g></svg>';

export const usageIcon = new LabIcon({
  name: 'jupyter-cloudide:usage',
  svgstr: USAGE_ICON_SVG
});

export const usagePlugin: JupyterFrontEndPlugin<void> = {
  id: USAGE_PLUGIN_ID,
  description: 'AI usage and cost: a status-bar item and a usage panel.',
  autoStart: true,
  optional: [IStatusBar, ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ): void => {
    const channel = getChannel(app.serviceManager.serverSettings);
    channel.connect();

    const tracker = new WidgetTracker<MainAreaWidget<UsagePanel>>({
      namespace: 'jupyter-cloudide-usage'
    });
    let current: MainAreaWidget<UsagePanel> | null = null;

    app.commands.addCommand(OPEN_USAGE_COMMAND, {
      label: 'AI IDE: Usage and cost',
      caption: 'Show model cost, tokens and kernel time over the last days',
      icon: args => (args['isPalette'] ? undefined : usageIcon),
      execute: () => {
        if (!current || current.isDisposed) {
          const content = new UsagePanel({ channel });
          current = new MainAreaWidget({ content });
          current.id = USAGE_PANEL_ID;
          current.title.label = 'AI usage';
          current.title.icon = usageIcon;
          current.title.closable = true;
          void tracker.add(current);
        }
        if (!current.isAttached) {
          app.shell.add(current, 'main');
        }
        app.shell.activateById(current.id);
        return current;
      }
    });
    palette?.addItem({ command: OPEN_USAGE_COMMAND, category: 'AI IDE' });
    if (restorer) {
      void restorer.restore(tracker, {
        command: OPEN_USAGE_COMMAND,
        name: () => 'usage'
      });
    }

    if (statusBar) {
      const item = new UsageStatus({
        channel,
        onOpen: () => void app.commands.execute(OPEN_USAGE_COMMAND),
        onBudgetWarning: budget => {
          Notification.warning(budgetNoticeText(budget), {
            autoClose: false,
            actions: [
              {
                label: 'Show usage',
                callback: () => void app.commands.execute(OPEN_USAGE_COMMAND)
              }
            ]
          });
        }
      });
      statusBar.registerStatusItem(`${USAGE_PLUGIN_ID}:status`, {
        item,
        align: 'right',
        rank: 50,
        isActive: () => item.hasData,
        activeStateChanged: item.activeStateChanged
      });
    }
  }
};
