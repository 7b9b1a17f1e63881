/**
 * The one session channel of the page, shared by every plugin (chat, search, completions,
 * usage): `getChannel()` creates it on first use; whoever wants frames connects to its
 * signals, whoever wants it open calls `connect()` (idempotent).
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { SessionChannel } from './channel';
import { API_NAMESPACE } from './tokens';

/** The ws(s):// URL of the session channel for these connection settings. */
export function channelUrl(settings: ServerConnection.ISettings): string {
  const url = URLExt.join(settings.wsUrl, API_NAMESPACE, 'ws');
  // The server authenticates the upgrade like any request: the login cookie, or the token.
  // As JupyterLab's own kernel sockets: the token goes into the URL only when the settings
  // say so (cross-origin servers, tests); same-origin pages use the cookie, which keeps the
  // token out of proxy logs.
  const token = settings.appendToken ? settings.token : '';
  return token ? `${url}?token=${encodeURIComponent(token)}` : url;
}

let channel: SessionChannel | null = null;

/**
 * The page's session channel (created, not connected, on first call).
 *
 * @param settings - used only by the call that creates it
 */
export function getChannel(
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): SessionChannel {
  if (!channel || channel.isDisposed) {
    channel = new SessionChannel({ url: channelUrl(settings) });
  }
  return channel;
}

/** Close the shared channel (tests, or when the app shuts down). */
export function disposeChannel(): void {
  channel?.dispose();
  channel = null;
}
