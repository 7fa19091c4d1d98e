/**
 * dlaas-jupyter: the user's dlaas notifications as JupyterLab notifications.
 *
 * One notification per stage request, updated in place as its files become ready ("dlaas 2/5:
 * <the latest file> is ready at <path>"; the fraction also goes in the notification's
 * ``progress``), then by its outcome: success (every file ready, with an action that
 * copies the paths), warning (some failed), error (the request failed) or info (cancelled).
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';

import { IStatus, NotificationFeed } from './feed';
import { IDlaasNotification, IView, RequestTracker } from './requests';

const PLUGIN_ID = 'dlaas-jupyter:notifications';

/** Shows request views as JupyterLab notifications, one per request. */
class Notifier {
  /** Fold notifications in; show each request's latest view unless an earlier load did. */
  notifications(notes: IDlaasNotification[], seenUpTo: number): void {
    // One change per request and batch: a burst of ready files is one update, not many.
    const views = new Map<string, IView>();
    for (const note of notes) {
      const view = this._tracker.apply(note);
      if (view !== null && note.seq > seenUpTo) {
        views.set(view.requestId, view);
      }
    }
    views.forEach(view => this._show(view));
  }

  /** Warn once while the relay cannot reach the broker; withdraw it when it can. */
  status(status: IStatus): void {
    if (!status.connected && status.error && this._statusId === null) {
      this._statusId = Notification.warning(
        `dlaas: notifications for ${status.user} are paused (${status.error}); retrying`,
        { autoClose: false }
      );
    } else if (status.connected && this._statusId !== null) {
      Notification.dismiss(this._statusId);
      this._statusId = null;
    }
  }

  private _show(view: IView): void {
    const options: Notification.IOptions<null> = {
      autoClose: view.look === 'info' ? 10000 : false,
      progress: view.progress,
      actions: view.final && view.paths.length > 0 ? [copyPaths(view.paths)] : []
    };
    const type = view.look as Notification.TypeOptions;
    const id = this._ids.get(view.requestId);
    // Updated in place, the outcome too: a dismiss followed at once by a new toast can
    // leave the old toast on screen (JupyterLab creates toasts asynchronously).
    const updated =
      id !== undefined &&
      Notification.update({ id, message: view.message, type, ...options });
    if (!updated) {
      // a new request, or the user dismissed its notification: show it (again)
      this._ids.set(view.requestId, Notification.emit(view.message, type, options));
    }
  }

  private readonly _tracker = new RequestTracker();
  private readonly _ids = new Map<string, string>();
  private _statusId: string | null = null;
}

function copyPaths(paths: string[]): Notification.IAction {
  return {
    label: paths.length === 1 ? 'Copy path' : `Copy ${paths.length} paths`,
    caption: 'Copy the paths of the ready files, one per line, to open them in a cell',
    callback: event => {
      event.preventDefault(); // keep the notification
      void navigator.clipboard.writeText(paths.join('\n'));
    }
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Shows dlaas notifications (files ready, progress, failures) in JupyterLab.',
  autoStart: true,
  activate: (app: JupyterFrontEnd): void => {
    const feed = new NotificationFeed(new Notifier(), app.serviceManager.serverSettings);
    void app.restored.then(() => feed.run());
  }
};

export default plugin;
