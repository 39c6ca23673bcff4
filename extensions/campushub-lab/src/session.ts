/**
 * The session: a status-bar item (node · GPUs · time left on the walltime), warnings as the
 * walltime runs out, and a Session panel with the job's details and its GPUs' use.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  MainAreaWidget,
  Notification
} from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import {
  ITranslator,
  nullTranslator,
  TranslationBundle
} from '@jupyterlab/translation';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { CampusHubError, ISession, request } from './api';
import { bytes, h, localTime } from './dom';
import {
  clockSkew,
  crossedThresholds,
  formatTimeLeft,
  secondsLeft
} from './time';

export const SESSION_PLUGIN = 'campushub-lab:session';
export const COMMAND_SESSION = 'campushub:session';
export const COMMAND_SESSION_REFRESH = 'campushub:session-refresh';

/** The session as last read from the server, with the browser clock's skew; refreshed on a timer. */
export class SessionModel {
  session: ISession | null = null;
  error = '';
  skew = 0;
  readonly changed = new Signal<this, void>(this);

  async refresh(): Promise<void> {
    try {
      const response = await request<ISession>('session');
      this.session = response.data;
      this.skew = clockSkew(
        response.data.now,
        response.sentAt,
        response.receivedAt
      );
      this.error = '';
    } catch (error) {
      this.error =
        error instanceof CampusHubError ? error.message : String(error);
    }
    this.changed.emit();
  }

  /** seconds left on the walltime now (null: no end) */
  secondsLeft(): number | null {
    return secondsLeft(this.session?.end, Date.now(), this.skew);
  }
}

/** The status bar's text: `node01 · 1 GPU · 1:42 left`, or `local session`. */
export function statusText(model: SessionModel, trans: TranslationBundle) {
  const session = model.session;
  if (!session) {
    return '';
  }
  if (session.kind !== 'slurm') {
    return trans.__('local session');
  }
  const parts = [session.node || trans.__('unknown node')];
  if (session.gpus.length) {
    parts.push(trans._n('%1 GPU', '%1 GPUs', session.gpus.length));
  }
  const left = model.secondsLeft();
  if (left !== null) {
    parts.push(formatTimeLeft(left, (msg, ...args) => trans.__(msg, ...args)));
  }
  return parts.join(' · ');
}

class SessionStatus extends Widget {
  constructor(
    private model: SessionModel,
    private trans: TranslationBundle,
    onClick: () => void
  ) {
    super();
    this.addClass('jp-campushub-SessionStatus');
    this.node.setAttribute('role', 'button');
    this.node.addEventListener('click', onClick);
    this.model.changed.connect(this.update, this);
  }

  update(): void {
    const text = statusText(this.model, this.trans);
    this.node.textContent = text;
    this.node.title = this.model.error
      ? this.trans.__('CampusHub session: %1', this.model.error)
      : this.trans.__('Your session: click for details');
    const left = this.model.secondsLeft();
    this.toggleClass('jp-mod-warning', left !== null && left <= 15 * 60);
  }
}

class SessionPanel extends Widget {
  constructor(
    private model: SessionModel,
    private trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-campushub-SessionPanel');
    this.id = 'campushub-session';
    this.title.label = trans.__('Session');
    this.title.closable = true;
    this.model.changed.connect(this.render, this);
    this.render();
  }

  dispose(): void {
    this.model.changed.disconnect(this.render, this);
    super.dispose();
  }

  render(): void {
    const trans = this.trans;
    const session = this.model.session;
    const rows: [string, string][] = [];
    const body = h('div', { className: 'jp-campushub-SessionBody' });
    const refresh = h(
      'button',
      {
        className: 'jp-mod-styled jp-mod-accept',
        onClick: () => void this.model.refresh()
      },
      trans.__('Refresh')
    );
    body.append(h('h2', {}, trans.__('Your session')), refresh);
    if (this.model.error) {
      body.append(
        h('p', { className: 'jp-campushub-error' }, this.model.error)
      );
    }
    if (session) {
      if (session.kind !== 'slurm') {
        body.append(
          h(
            'p',
            {},
            trans.__(
              'This server runs outside Slurm (a local session): it has no job and no walltime.'
            )
          )
        );
      } else {
        const left = this.model.secondsLeft();
        rows.push(
          [trans.__('Node'), session.node ?? ''],
          [trans.__('Job'), session.job_id ?? ''],
          [trans.__('Partition'), session.partition ?? ''],
          [trans.__('Profile'), session.profile ?? trans.__('(default)')],
          [
            trans.__('GPUs'),
            session.gpus.length ? session.gpus.join(', ') : trans.__('none')
          ],
          [trans.__('Started'), localTime(session.start)],
          [
            trans.__('Ends'),
            session.end ? localTime(session.end) : trans.__('no time limit')
          ],
          [
            trans.__('Time left'),
            left === null
              ? ''
              : formatTimeLeft(left, (m, ...a) => trans.__(m, ...a))
          ]
        );
      }
      if (rows.length) {
        body.append(
          h(
            'table',
            { className: 'jp-campushub-table' },
            ...rows.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v)))
          )
        );
      }
      if (session.gpu_stats && session.gpu_stats.length) {
        body.append(h('h3', {}, trans.__('GPU use')));
        body.append(
          h(
            'table',
            { className: 'jp-campushub-table jp-campushub-gpus' },
            h(
              'tr',
              {},
              h('th', {}, trans.__('GPU')),
              h('th', {}, trans.__('Name')),
              h('th', {}, trans.__('Utilization')),
              h('th', {}, trans.__('Memory'))
            ),
            ...session.gpu_stats.map(gpu => {
              const fraction =
                gpu.memory_total && gpu.memory_used !== null
                  ? gpu.memory_used / gpu.memory_total
                  : 0;
              return h(
                'tr',
                {},
                h('td', {}, String(gpu.index)),
                h('td', {}, gpu.name ?? ''),
                h(
                  'td',
                  {},
                  gpu.utilization === null || gpu.utilization === undefined
                    ? '?'
                    : `${gpu.utilization} %`
                ),
                h(
                  'td',
                  {},
                  h(
                    'div',
                    { className: 'jp-campushub-bar' },
                    h('div', {
                      className: 'jp-campushub-bar-fill',
                      style: `width: ${Math.round(fraction * 100)}%`
                    })
                  ),
                  `${bytes(gpu.memory_used)} / ${bytes(gpu.memory_total)}`
                )
              );
            })
          )
        );
      } else if (session.kind === 'slurm' && session.gpus.length) {
        body.append(
          h(
            'p',
            { className: 'jp-campushub-note' },
            trans.__(
              'GPU use is not available: %1',
              session.gpu_stats_error || trans.__('no reason given')
            )
          )
        );
      }
    }
    this.node.replaceChildren(body);
  }
}

export const sessionPlugin: JupyterFrontEndPlugin<void> = {
  id: SESSION_PLUGIN,
  description:
    'The session in the status bar (node, GPUs, time left), warnings before the walltime ends, and a Session panel.',
  autoStart: true,
  optional: [
    IStatusBar,
    ISettingRegistry,
    ICommandPalette,
    ITranslator
  ],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    settingRegistry: ISettingRegistry | null,
    palette: ICommandPalette | null,
    translator: ITranslator | null
  ) => {
    const trans = (translator ?? nullTranslator).load('campushub_lab');
    const model = new SessionModel();
    let thresholds = [15, 5];
    let refreshSeconds = 60;
    let tickSeconds = 5;
    let panel: MainAreaWidget<SessionPanel> | null = null;

    app.commands.addCommand(COMMAND_SESSION, {
      label: trans.__('Session Details'),
      caption: trans.__('Your job: node, GPUs, time left, GPU use'),
      execute: () => {
        if (!panel || panel.isDisposed) {
          panel = new MainAreaWidget({
            content: new SessionPanel(model, trans)
          });
          panel.id = 'campushub-session-panel';
          panel.title.label = trans.__('Session');
          panel.title.closable = true;
        }
        if (!panel.isAttached) {
          app.shell.add(panel, 'main');
        }
        app.shell.activateById(panel.id);
        void model.refresh();
      }
    });
    app.commands.addCommand(COMMAND_SESSION_REFRESH, {
      label: trans.__('Refresh Session Status'),
      execute: () => model.refresh()
    });
    if (palette) {
      const category = trans.__('CampusHub');
      palette.addItem({ command: COMMAND_SESSION, category });
      palette.addItem({ command: COMMAND_SESSION_REFRESH, category });
    }

    if (statusBar) {
      const item = new SessionStatus(model, trans, () => {
        void app.commands.execute(COMMAND_SESSION);
      });
      statusBar.registerStatusItem(SESSION_PLUGIN, {
        item,
        align: 'left',
        rank: 100,
        isActive: () => model.session !== null,
        activeStateChanged: model.changed
      });
    }

    // warnings as the walltime runs out, each threshold once
    const warned = new Set<number>();
    let previous: number | null = null;
    const checkThresholds = () => {
      if (model.session?.kind !== 'slurm') {
        return;
      }
      const left = model.secondsLeft();
      for (const minutes of crossedThresholds(
        previous,
        left,
        thresholds,
        warned
      )) {
        warned.add(minutes);
        Notification.warning(
          trans.__(
            'Your session ends in %1 (walltime %2). Save your work: the job and its kernels stop then.',
            formatTimeLeft(left ?? 0, (m, ...a) => trans.__(m, ...a)).replace(
              / left$/,
              ''
            ),
            localTime(model.session.end)
          ),
          { autoClose: false }
        );
      }
      previous = left;
    };
    model.changed.connect(checkThresholds);

    let refreshTimer = 0;
    let tickTimer = 0;
    const start = () => {
      window.clearInterval(refreshTimer);
      window.clearInterval(tickTimer);
      refreshTimer = window.setInterval(
        () => void model.refresh(),
        Math.max(10, refreshSeconds) * 1000
      );
      // the countdown between reads: the text and the warnings, from the browser's clock
      tickTimer = window.setInterval(
        () => model.changed.emit(),
        Math.max(1, tickSeconds) * 1000
      );
    };

    const apply = (settings: ISettingRegistry.ISettings) => {
      thresholds = (settings.get('warnMinutes').composite as number[]) ?? [
        15, 5
      ];
      refreshSeconds =
        (settings.get('refreshSeconds').composite as number) ?? 60;
      tickSeconds = (settings.get('countdownSeconds').composite as number) ?? 5;
      start();
    };
    if (settingRegistry) {
      settingRegistry
        .load(SESSION_PLUGIN)
        .then(settings => {
          apply(settings);
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.warn('campushub-lab: session settings not loaded', reason);
          start();
        });
    } else {
      start();
    }
    void app.restored.then(() => model.refresh());
  }
};
