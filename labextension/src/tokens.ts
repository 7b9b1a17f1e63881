/**
 * Plugin ids, command ids and the wire types of the cloudide REST API.
 *
 * The wire types mirror `jupyter_cloudide/api.yaml` (the server's single source of
 * truth); keep them in step when the schema changes.
 */

/** Id of the core plugin (also the settings id: `jupyter-cloudide:plugin`). */
export const PLUGIN_ID = 'jupyter-cloudide:plugin';

/** URL namespace of every REST route, relative to the server's base URL. */
export const API_NAMESPACE = 'cloudide/api';

/** Command ids registered by the frontend. */
export namespace CommandIDs {
  export const showHealth = 'cloudide:show-health';
}

/** Overall state of the server extension. */
export type HealthStatus = 'ok' | 'starting' | 'degraded';

/** State of one component (database, kernel pool, index, ...). */
export type ComponentStateName =
  | 'ok'
  | 'starting'
  | 'degraded'
  | 'error'
  | 'disabled';

/** One entry of `IHealthResponse.components`; servers may add more fields. */
export interface IComponentState {
  state: ComponentStateName | string;
  message?: string;
  [extra: string]: unknown;
}

/** Body of `GET cloudide/api/health`. */
export interface IHealthResponse {
  version: string;
  status: HealthStatus;
  components: Record<string, IComponentState>;
}

/** Body of every error response: `{status, code, message, field?, retry_after_s?}`. */
export interface IErrorBody {
  status?: number;
  code?: string;
  message?: string;
  field?: string;
  retry_after_s?: number;
  /** jupyter_server's own errors (e.g. auth failures) carry a `reason`. */
  reason?: string | null;
}

/** Settings of the core plugin (see `schema/plugin.json`). */
export interface ICloudIDESettings {
  healthPollSeconds: number;
  logHealthToConsole: boolean;
}

export const DEFAULT_SETTINGS: ICloudIDESettings = {
  healthPollSeconds: 0,
  logHealthToConsole: true
};
