/**
 * Requests to the CampusHub server extension, under the server's base URL + `campushub/`, with the
 * Lab's own authentication and XSRF token (ServerConnection.makeRequest).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { errorMessage } from './errors';
import { IParameter } from './parameters';

/** A failed request: `message` is the server's, meant for the person who asked. */
export class CampusHubError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

export interface IResponse<T> {
  data: T;
  /** the browser's Date.now() when the request was sent and when its answer came */
  sentAt: number;
  receivedAt: number;
}

export async function request<T = any>(
  endpoint: string,
  init: RequestInit = {}
): Promise<IResponse<T>> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'campushub', endpoint);
  if (init.body && !(init.headers as any)?.['Content-Type']) {
    init = {
      ...init,
      headers: { ...(init.headers ?? {}), 'Content-Type': 'application/json' }
    };
  }
  const sentAt = Date.now();
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new CampusHubError(
      `the Jupyter server cannot be reached: ${(error as Error).message}`,
      0
    );
  }
  const receivedAt = Date.now();
  const text = await response.text();
  if (!response.ok) {
    throw new CampusHubError(
      errorMessage(response.status, text, response.statusText),
      response.status
    );
  }
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      throw new CampusHubError(
        `the server's answer is not JSON: ${text.slice(0, 200)}`,
        response.status
      );
    }
  }
  return { data, sentAt, receivedAt };
}

export async function getJSON<T = any>(endpoint: string): Promise<T> {
  return (await request<T>(endpoint)).data;
}

export async function sendJSON<T = any>(
  endpoint: string,
  method: 'POST' | 'PATCH' | 'DELETE',
  body?: unknown
): Promise<T> {
  return (
    await request<T>(endpoint, {
      method,
      body: body === undefined ? undefined : JSON.stringify(body)
    })
  ).data;
}

// --- the contract's shapes ---------------------------------------------------------------

export interface IGPUStats {
  index: number | string;
  name: string;
  utilization: number | null;
  memory_used: number | null;
  memory_total: number | null;
}

export interface ISession {
  kind: 'slurm' | 'local';
  node: string | null;
  job_id: string | null;
  partition: string | null;
  profile: string | null;
  gpus: string[];
  start: string | null;
  end: string | null;
  now: string;
  scheduler: string | null;
  gpu_stats: IGPUStats[];
  gpu_stats_error: string | null;
}

export interface ITemplate {
  name: string;
  notebook: string;
  parameters: IParameter[];
}

export interface ISchedule {
  id: number;
  owner: string;
  name: string;
  notebook: string;
  parameters: Record<string, unknown>;
  cron: string;
  timezone: string;
  profile: string | null;
  paused: boolean;
  next_due: string | null;
  created: string | null;
  alerts: { emails: string[] };
}

export interface IRun {
  id: number;
  schedule_id: number;
  state: string;
  trigger: string;
  attempt: number;
  due: string | null;
  job_id: string | null;
  node: string | null;
  detail: string;
  note: string;
  exit_code: number | null;
  has_html: boolean;
  created: string | null;
  started: string | null;
  finished: string | null;
}

export interface IProfile {
  name: string;
  display_name?: string;
  description?: string;
  /** what a job with it gets, in words (partition, CPUs, memory, GPUs, walltime) */
  summary?: string;
}

/** The scheduler's REST API, forwarded by the server extension as the user. */
export const scheduler = {
  schedules: () =>
    getJSON<{ schedules: ISchedule[] }>('scheduler/api/schedules?mine=1'),
  create: (definition: unknown) =>
    sendJSON<ISchedule>('scheduler/api/schedules', 'POST', definition),
  update: (id: number, fields: unknown) =>
    sendJSON<ISchedule>(`scheduler/api/schedules/${id}`, 'PATCH', fields),
  remove: (id: number) =>
    sendJSON<null>(`scheduler/api/schedules/${id}`, 'DELETE'),
  runs: (id: number, limit: number) =>
    getJSON<{ runs: IRun[] }>(
      `scheduler/api/schedules/${id}/runs?limit=${limit}`
    ),
  runNow: (id: number) =>
    sendJSON<IRun>(`scheduler/api/schedules/${id}/runs`, 'POST'),
  profiles: () =>
    getJSON<{ profiles: IProfile[]; default?: string | null }>(
      'scheduler/api/profiles'
    )
};
