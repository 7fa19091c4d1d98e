/**
 * What a user's dlaas notifications mean for the notification of each request.
 *
 * Pure: no JupyterLab here. One JupyterLab notification per stage request, updated as its
 * files become ready (with progress), ending as success, warning or error.
 */

/** A dlaas.contracts.Notification as the server extension relays it, numbered. */
export interface IDlaasNotification {
  seq: number;
  request_id: string;
  user: string;
  kind:
    | 'accepted'
    | 'progress'
    | 'file-ready'
    | 'file-failed'
    | 'completed'
    | 'failed'
    | 'cancelled';
  text: string;
  did?: string | null;
  path?: string | null;
  cache_url?: string | null;
  bytes?: number | null;
  files_total?: number | null;
  files_ready?: number | null;
  files_failed?: number | null;
  reason?: string | null;
}

export type Look = 'in-progress' | 'success' | 'warning' | 'error' | 'info';

/** How the request's notification should look now. */
export interface IView {
  requestId: string;
  message: string;
  look: Look;
  /** 0..1 while files are known and the request runs. */
  progress?: number;
  /** Paths of the ready files, for the "Copy paths" action. */
  paths: string[];
  /** The request is over: the notification stays until dismissed. */
  final: boolean;
}

interface IRequest {
  total: number | null;
  ready: Map<string, string>;
  failed: Set<string>;
  final: boolean;
}

const PREFIX = 'dlaas';

/** Folds notifications into one view per request. */
export class RequestTracker {
  private readonly _requests = new Map<string, IRequest>();

  /** Fold ``note`` in; the request's new view, or null when it changes nothing. */
  apply(note: IDlaasNotification): IView | null {
    const request = this._request(note.request_id);
    if (request.final) {
      return null; // late or repeated per-file messages after the end
    }
    switch (note.kind) {
      case 'accepted':
        request.total = note.files_total ?? request.total;
        return this._view(note, request, 'in-progress', `${PREFIX}: ${note.text}`);
      case 'progress':
        request.total = note.files_total ?? request.total;
        return this._view(note, request, 'in-progress', `${PREFIX}: ${note.text}`);
      case 'file-ready':
        if (!note.did || request.ready.has(note.did)) {
          return null;
        }
        request.ready.set(note.did, note.path ?? '');
        return this._view(note, request, 'in-progress', this._counted(request, note));
      case 'file-failed':
        if (!note.did || request.failed.has(note.did)) {
          return null;
        }
        request.failed.add(note.did);
        return this._view(note, request, 'in-progress', this._counted(request, note));
      case 'completed':
        request.final = true;
        return this._view(
          note,
          request,
          (note.files_failed ?? request.failed.size) > 0 ? 'warning' : 'success',
          `${PREFIX}: ${note.text}`
        );
      case 'failed':
        request.final = true;
        return this._view(note, request, 'error', `${PREFIX}: ${note.text}`);
      case 'cancelled':
        request.final = true;
        return this._view(note, request, 'info', `${PREFIX}: ${note.text}`);
      default:
        return null;
    }
  }

  private _request(id: string): IRequest {
    let request = this._requests.get(id);
    if (request === undefined) {
      request = { total: null, ready: new Map(), failed: new Set(), final: false };
      this._requests.set(id, request);
    }
    return request;
  }

  private _counted(request: IRequest, note: IDlaasNotification): string {
    const done = request.ready.size + request.failed.size;
    const of = request.total === null ? '' : `/${request.total}`;
    return `${PREFIX} ${done}${of}: ${note.text}`;
  }

  private _view(
    note: IDlaasNotification,
    request: IRequest,
    look: Look,
    message: string
  ): IView {
    const done = request.ready.size + request.failed.size;
    const progress =
      !request.final && request.total ? Math.min(1, done / request.total) : undefined;
    return {
      requestId: note.request_id,
      message,
      look,
      progress,
      paths: [...request.ready.values()].filter(path => path !== ''),
      final: request.final
    };
  }
}
