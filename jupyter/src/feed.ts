/**
 * The long-poll on the local Jupyter server: GET /dlaas/notifications waits there until the
 * user's next notification arrives from the broker (nothing polls Rucio or the broker).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IDlaasNotification } from './requests';

/** The relay's link to the broker. */
export interface IStatus {
  user: string;
  connected: boolean;
  error: string | null;
}

/** One answer of the server extension. */
export interface IBatch {
  epoch: string;
  cursor: number;
  notifications: IDlaasNotification[];
  status: IStatus;
}

/** What the feed calls back. */
export interface IFeedHandlers {
  /** New notifications, oldest first; those up to ``seenUpTo`` an earlier page load showed. */
  notifications(notes: IDlaasNotification[], seenUpTo: number): void;
  status(status: IStatus): void;
}

const WAIT_S = 25;
const BACKOFF_MS = [1000, 2000, 5000, 10000, 30000];

interface ICursor {
  epoch: string;
  cursor: number;
}

/** Long-polls the server extension until disposed. */
export class NotificationFeed {
  constructor(
    private readonly _handlers: IFeedHandlers,
    private readonly _settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {
    this._storageKey = `dlaas-jupyter:cursor:${this._settings.baseUrl}`;
  }

  /** Run the loop (returns when disposed or when the server has no such endpoint). */
  async run(): Promise<void> {
    const stored = this._load();
    let epoch = stored.epoch;
    let after = 0; // first ask for everything kept: earlier ones fold in silently
    let failures = 0;
    while (!this._abort.signal.aborted) {
      let batch: IBatch;
      try {
        batch = await this._fetch(epoch, after);
        failures = 0;
      } catch (error) {
        if (error instanceof EndpointMissing) {
          console.warn('dlaas: the dlaas_jupyter server extension is not enabled');
          return;
        }
        if (this._abort.signal.aborted) {
          return;
        }
        await sleep(BACKOFF_MS[Math.min(failures++, BACKOFF_MS.length - 1)]);
        continue;
      }
      const seenUpTo = batch.epoch === stored.epoch ? stored.cursor : 0;
      this._handlers.notifications(batch.notifications, seenUpTo);
      this._handlers.status(batch.status);
      epoch = batch.epoch;
      after = batch.cursor;
      stored.epoch = epoch;
      stored.cursor = Math.max(after, seenUpTo);
      this._save(stored);
    }
  }

  dispose(): void {
    this._abort.abort();
  }

  private async _fetch(epoch: string, after: number): Promise<IBatch> {
    const query = URLExt.objectToQueryString({ epoch, after, wait: WAIT_S });
    const url = URLExt.join(this._settings.baseUrl, 'dlaas', 'notifications') + query;
    const response = await ServerConnection.makeRequest(
      url,
      { method: 'GET', signal: this._abort.signal, cache: 'no-store' },
      this._settings
    );
    if (response.status === 404) {
      throw new EndpointMissing();
    }
    if (!response.ok) {
      throw new ServerConnection.ResponseError(response);
    }
    return (await response.json()) as IBatch;
  }

  private _load(): ICursor {
    try {
      const raw = window.localStorage.getItem(this._storageKey);
      const value = raw ? (JSON.parse(raw) as Partial<ICursor>) : {};
      return {
        epoch: typeof value.epoch === 'string' ? value.epoch : '',
        cursor: typeof value.cursor === 'number' ? value.cursor : 0
      };
    } catch {
      return { epoch: '', cursor: 0 }; // storage disabled: every page load shows all
    }
  }

  private _save(value: ICursor): void {
    try {
      window.localStorage.setItem(this._storageKey, JSON.stringify(value));
    } catch {
      // storage disabled or full: only costs repeats on the next page load
    }
  }

  private readonly _abort = new AbortController();
  private readonly _storageKey: string;
}

class EndpointMissing extends Error {}

function sleep(ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms));
}
