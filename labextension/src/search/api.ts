/**
 * Calls of the search panel: search over the session channel when it is open (REST
 * otherwise), index status and rebuild over REST.
 */

import type { ISignal } from '@lumino/signaling';

import type { ChannelState, IFrame, IRequestOptions } from '../channel';
import { requestAPI } from '../request';
import type { IIndexStatus, ISearchBody, ISearchResults } from './types';

/** The part of `SessionChannel` the panels use (so tests and wiring can pass a stand-in). */
export interface IChannelLike {
  readonly state: ChannelState;
  readonly frameReceived: ISignal<any, IFrame>;
  readonly stateChanged: ISignal<any, ChannelState>;
  readonly sessionReset: ISignal<any, void>;
  /** Frames were lost on a resume (newer channels): state must be refetched. */
  readonly replayGap?: ISignal<any, unknown>;
  request<T = any>(
    kind: string,
    payload?: Record<string, unknown>,
    options?: IRequestOptions
  ): Promise<T>;
}

/** Run one search: WS kind `search` if the channel is open, else `POST cloudide/api/search`. */
export function search(
  body: ISearchBody,
  channel: IChannelLike | null,
  signal?: AbortSignal
): Promise<ISearchResults> {
  if (channel && channel.state === 'open') {
    return channel.request<ISearchResults>('search', { ...body }, { signal });
  }
  return requestAPI<ISearchResults>('search', {
    method: 'POST',
    body: JSON.stringify(body),
    signal
  });
}

/** `GET cloudide/api/index`. */
export function fetchIndexStatus(signal?: AbortSignal): Promise<IIndexStatus> {
  return requestAPI<IIndexStatus>('index', { method: 'GET', signal });
}

/** `POST cloudide/api/index`: bring the index up to date, or (`full`) wipe and rebuild it. */
export function rebuildIndex(full: boolean): Promise<IIndexStatus> {
  return requestAPI<IIndexStatus>('index', {
    method: 'POST',
    body: JSON.stringify(full ? { full: true } : {})
  });
}
