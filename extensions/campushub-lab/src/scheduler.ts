/**
 * Scheduling: "Run nightly…" on an open notebook (toolbar button, palette, notebook context menu)
 * makes a schedule in the scheduler service; the "Scheduled runs" sidebar lists the user's
 * schedules and their recent runs, runs one now, pauses or resumes it, opens a run's output.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  Notification,
  showDialog,
  showErrorMessage,
  ToolbarButton
} from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import {
  ITranslator,
  nullTranslator,
  TranslationBundle
} from '@jupyterlab/translation';
import { Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import {
  CampusHubError,
  getJSON,
  IProfile,
  IRun,
  ISchedule,
  ISession,
  scheduler
} from './api';
import {
  browserTimeZone,
  CRON_PRESETS,
  CronError,
  CronPreset,
  cronFor
} from './cron';
import { h, localTime } from './dom';
import { ParameterInputs } from './form';
import { scheduleIcon } from './icons';
import { IParameter, ParameterError, parseParametersCell } from './parameters';

export const SCHEDULER_PLUGIN = 'campushub-lab:scheduler';
export const COMMAND_SCHEDULE = 'campushub:schedule-notebook';
export const COMMAND_RUNS = 'campushub:scheduled-runs';
export const COMMAND_RUNS_REFRESH = 'campushub:scheduled-runs-refresh';

/** the parameters of a notebook's cell tagged `parameters` (its first one), as the dialog reads them */
export function notebookParameters(panel: NotebookPanel): IParameter[] {
  const content = panel.context.model.toJSON() as any;
  for (const cell of content?.cells ?? []) {
    const tags: string[] = cell.metadata?.tags ?? [];
    if (cell.cell_type === 'code' && tags.includes('parameters')) {
      const source = Array.isArray(cell.source)
        ? cell.source.join('')
        : String(cell.source ?? '');
      return parseParametersCell(source);
    }
  }
  return [];
}

/** the notebook's path in the user's home (the Lab's path, without a drive prefix) */
export function homePath(panel: NotebookPanel): string {
  return panel.context.path.replace(/^[^/:]*:/, '');
}

interface IScheduleValues {
  name: string;
  preset: CronPreset;
  time: string;
  weekday: string;
  minute: string;
  custom: string;
  timezone: string;
  profile: string;
  email: string;
  texts: Record<string, string>;
}

interface IFormResult {
  values: IScheduleValues;
  definition: Record<string, unknown> | null;
  error: string;
}

class ScheduleForm extends Widget implements Dialog.IBodyWidget<IFormResult> {
  private inputs: ParameterInputs;
  private fields: Record<string, HTMLInputElement | HTMLSelectElement> = {};

  constructor(
    private notebook: string,
    parameters: IParameter[],
    profiles: IProfile[],
    defaultProfile: string,
    values: IScheduleValues,
    error: string,
    trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-campushub-Form');
    this.addClass('jp-campushub-ScheduleForm');
    if (error) {
      this.node.append(h('p', { className: 'jp-campushub-error' }, error));
    }
    const f = this.fields;
    f.name = h('input', { className: 'jp-mod-styled', name: 'name' });
    f.name.value = values.name;
    const presetLabels: Record<CronPreset, string> = {
      nightly: trans.__('Nightly'),
      weekdays: trans.__('Weekdays (Monday to Friday)'),
      hourly: trans.__('Hourly'),
      weekly: trans.__('Weekly'),
      custom: trans.__('Custom (cron expression)')
    };
    f.preset = h(
      'select',
      { className: 'jp-mod-styled', name: 'preset' },
      ...CRON_PRESETS.map(p => h('option', { value: p }, presetLabels[p]))
    );
    f.preset.value = values.preset;
    f.time = h('input', {
      className: 'jp-mod-styled',
      name: 'time',
      type: 'time'
    });
    f.time.value = values.time;
    const days = [
      trans.__('Sunday'),
      trans.__('Monday'),
      trans.__('Tuesday'),
      trans.__('Wednesday'),
      trans.__('Thursday'),
      trans.__('Friday'),
      trans.__('Saturday')
    ];
    f.weekday = h(
      'select',
      { className: 'jp-mod-styled', name: 'weekday' },
      ...days.map((d, i) => h('option', { value: String(i) }, d))
    );
    f.weekday.value = values.weekday;
    f.minute = h('input', {
      className: 'jp-mod-styled',
      name: 'minute',
      type: 'number',
      min: '0',
      max: '59'
    });
    f.minute.value = values.minute;
    f.custom = h('input', {
      className: 'jp-mod-styled',
      name: 'cron',
      placeholder: '30 1 * * *',
      spellcheck: 'false'
    });
    f.custom.value = values.custom;
    f.timezone = h('input', {
      className: 'jp-mod-styled',
      name: 'timezone',
      list: 'jp-campushub-timezones',
      spellcheck: 'false'
    });
    f.timezone.value = values.timezone;
    const zones: string[] = (Intl as any).supportedValuesOf
      ? (Intl as any).supportedValuesOf('timeZone')
      : [];
    f.email = h('input', {
      className: 'jp-mod-styled',
      name: 'email',
      type: 'email',
      placeholder: trans.__('(no email)')
    });
    f.email.value = values.email;

    const row = (label: string, ...inputs: Node[]) =>
      h(
        'label',
        { className: 'jp-campushub-field' },
        h('span', { className: 'jp-campushub-label' }, label),
        ...inputs
      );
    const timeRow = row(trans.__('At'), f.time);
    const weekdayRow = row(trans.__('On'), f.weekday);
    const minuteRow = row(trans.__('Minute of the hour'), f.minute);
    const customRow = row(trans.__('Cron expression'), f.custom);
    const show = () => {
      const preset = f.preset.value as CronPreset;
      timeRow.hidden = !['nightly', 'weekdays', 'weekly'].includes(preset);
      weekdayRow.hidden = preset !== 'weekly';
      minuteRow.hidden = preset !== 'hourly';
      customRow.hidden = preset !== 'custom';
    };
    f.preset.addEventListener('change', show);
    show();

    this.node.append(
      h(
        'p',
        { className: 'jp-campushub-note' },
        trans.__(
          'Runs %1 as a batch job with papermill; each run keeps its output notebook and HTML.',
          notebook
        )
      ),
      row(trans.__('Name'), f.name),
      row(trans.__('When'), f.preset),
      timeRow,
      weekdayRow,
      minuteRow,
      customRow,
      row(trans.__('Time zone'), f.timezone),
      h(
        'datalist',
        { id: 'jp-campushub-timezones' },
        ...zones.map(z => h('option', { value: z }))
      )
    );
    if (profiles.length) {
      f.profile = h(
        'select',
        { className: 'jp-mod-styled', name: 'profile' },
        ...profiles.map(p =>
          h(
            'option',
            { value: p.name, title: p.description || p.summary || '' },
            `${p.display_name || p.name}${p.summary ? ` — ${p.summary}` : ''}`
          )
        )
      );
      f.profile.value = values.profile || defaultProfile || profiles[0].name;
      this.node.append(row(trans.__('Resources'), f.profile));
    }
    this.inputs = new ParameterInputs(parameters, trans, values.texts);
    this.node.append(
      h('h3', { className: 'jp-campushub-subtitle' }, trans.__('Parameters')),
      this.inputs.node,
      h('h3', { className: 'jp-campushub-subtitle' }, trans.__('Alerts')),
      row(trans.__('Email on failure'), f.email)
    );
  }

  values(): IScheduleValues {
    const f = this.fields;
    return {
      name: f.name.value,
      preset: f.preset.value as CronPreset,
      time: f.time.value,
      weekday: f.weekday.value,
      minute: f.minute.value,
      custom: f.custom.value,
      timezone: f.timezone.value,
      profile: f.profile?.value ?? '',
      email: f.email.value,
      texts: this.inputs.texts()
    };
  }

  getValue(): IFormResult {
    const values = this.values();
    try {
      const cron = cronFor({
        preset: values.preset,
        time: values.time,
        weekday: Number(values.weekday),
        minute: values.minute === '' ? 0 : Number(values.minute),
        custom: values.custom
      });
      const definition: Record<string, unknown> = {
        name: values.name.trim(),
        notebook: this.notebook,
        parameters: this.inputs.values(true),
        cron,
        timezone: values.timezone.trim() || 'UTC'
      };
      if (values.profile) {
        definition.profile = values.profile;
      }
      const email = values.email.trim();
      if (email) {
        definition.alerts = { emails: [email] };
      }
      return { values, definition, error: '' };
    } catch (error) {
      if (error instanceof CronError || error instanceof ParameterError) {
        return { values, definition: null, error: error.message };
      }
      throw error;
    }
  }
}

/** The dialog, again with its values and the server's message after a refusal, until OK works or Cancel. */
export async function scheduleNotebook(
  panel: NotebookPanel,
  trans: TranslationBundle,
  defaults: { time: string; email: string },
  created: Signal<any, ISchedule>
): Promise<ISchedule | null> {
  const notebook = homePath(panel);
  const parameters = notebookParameters(panel);
  let profiles: IProfile[] = [];
  let defaultProfile = '';
  try {
    const found = await scheduler.profiles();
    profiles = found.profiles ?? [];
    defaultProfile = found.default ?? '';
  } catch (e) {
    // no profiles to choose from (a site without Slurm, or an older service): the site's default
  }
  const name = notebook.split('/').pop()!.replace(/\.ipynb$/, '');
  let values: IScheduleValues = {
    name,
    preset: 'nightly',
    time: defaults.time || '02:00',
    weekday: '1',
    minute: '0',
    custom: '',
    timezone: browserTimeZone(),
    profile: '',
    email: defaults.email,
    texts: {}
  };
  let error = '';
  for (;;) {
    const result = await showDialog({
      title: trans.__('Run %1 on a schedule', notebook),
      body: new ScheduleForm(
        notebook,
        parameters,
        profiles,
        defaultProfile,
        values,
        error,
        trans
      ),
      buttons: [
        Dialog.cancelButton({ label: trans.__('Cancel') }),
        Dialog.okButton({ label: trans.__('Schedule') })
      ],
      focusNodeSelector: 'select[name="preset"]'
    });
    if (!result.button.accept || !result.value) {
      return null;
    }
    values = result.value.values;
    if (!result.value.definition) {
      error = result.value.error;
      continue;
    }
    try {
      if (panel.context.model.dirty) {
        await panel.context.save();
      }
      const schedule = await scheduler.create(result.value.definition);
      Notification.success(
        trans.__(
          'Scheduled: %1 runs at "%2" (%3); next run %4.',
          schedule.name,
          schedule.cron,
          schedule.timezone,
          localTime(schedule.next_due)
        ),
        { autoClose: 8000 }
      );
      created.emit(schedule);
      return schedule;
    } catch (e) {
      const message = (e as Error).message;
      if (e instanceof CampusHubError && e.status >= 400 && e.status < 500) {
        error = message; // the dialog again, with its values and what to fix
        continue;
      }
      await showErrorMessage(trans.__('The schedule was not made'), message);
      error = message;
    }
  }
}

const ACTIVE = ['pending', 'submitting', 'queued', 'running'];

/** The left sidebar: the user's schedules and their recent runs. */
export class RunsPanel extends Widget {
  schedulerPath = '/services/scheduler/';
  runsShown = 5;
  private list: HTMLElement;
  private status: HTMLElement;
  private busy = false;
  private timer = 0;

  constructor(private trans: TranslationBundle) {
    super();
    this.id = 'campushub-scheduled-runs';
    this.addClass('jp-campushub-RunsPanel');
    this.title.icon = scheduleIcon;
    this.title.caption = trans.__('Scheduled runs');
    this.status = h('span', { className: 'jp-campushub-status' });
    this.list = h('div', { className: 'jp-campushub-schedules' });
    this.node.append(
      h(
        'div',
        { className: 'jp-campushub-header' },
        h('h2', {}, trans.__('Scheduled runs')),
        h(
          'button',
          {
            className: 'jp-mod-styled jp-campushub-refresh',
            title: trans.__('Refresh'),
            onClick: () => void this.refresh()
          },
          trans.__('Refresh')
        )
      ),
      this.status,
      this.list
    );
  }

  protected onAfterShow(): void {
    void this.refresh();
    // while shown, the runs' states follow their jobs
    window.clearInterval(this.timer);
    this.timer = window.setInterval(() => {
      if (this.isVisible) {
        void this.refresh();
      }
    }, 30_000);
  }

  protected onAfterHide(): void {
    window.clearInterval(this.timer);
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  outputURL(run: IRun): string {
    const base = this.schedulerPath.endsWith('/')
      ? this.schedulerPath
      : `${this.schedulerPath}/`;
    return `${base}runs/${run.id}/output.html`;
  }

  async refresh(): Promise<void> {
    if (this.busy) {
      return;
    }
    this.busy = true;
    const trans = this.trans;
    this.status.textContent = trans.__('Loading…');
    try {
      const { schedules } = await scheduler.schedules();
      const runs = await Promise.all(
        schedules.map(s =>
          scheduler
            .runs(s.id, this.runsShown)
            .then(r => r.runs)
            .catch(() => [] as IRun[])
        )
      );
      this.list.replaceChildren(
        ...schedules.map((s, i) => this.renderSchedule(s, runs[i]))
      );
      this.status.textContent = schedules.length
        ? ''
        : trans.__(
            'No schedules yet: open a notebook and choose "Run nightly…".'
          );
    } catch (e) {
      this.status.textContent = trans.__(
        'The scheduler is not available: %1',
        (e as Error).message
      );
      this.status.classList.add('jp-campushub-error');
      this.busy = false;
      return;
    }
    this.status.classList.remove('jp-campushub-error');
    this.busy = false;
  }

  private async act(what: () => Promise<unknown>, failed: string) {
    try {
      await what();
    } catch (e) {
      await showErrorMessage(failed, (e as Error).message);
    }
    await this.refresh();
  }

  private renderSchedule(schedule: ISchedule, runs: IRun[]): HTMLElement {
    const trans = this.trans;
    const button = (label: string, title: string, onClick: () => void) =>
      h(
        'button',
        { className: 'jp-mod-styled jp-campushub-action', title, onClick },
        label
      );
    const when = schedule.paused
      ? trans.__('paused')
      : trans.__('next %1', localTime(schedule.next_due));
    return h(
      'div',
      {
        className: 'jp-campushub-schedule',
        'data-schedule-id': String(schedule.id)
      },
      h(
        'div',
        { className: 'jp-campushub-schedule-title' },
        h('strong', {}, schedule.name),
        h(
          'span',
          { className: 'jp-campushub-cron' },
          ` ${schedule.cron} (${schedule.timezone})`
        )
      ),
      h(
        'div',
        { className: 'jp-campushub-schedule-meta' },
        `${schedule.notebook} · ${when}`
      ),
      h(
        'div',
        { className: 'jp-campushub-actions' },
        button(trans.__('Run now'), trans.__('Start a run now'), () =>
          this.act(
            () => scheduler.runNow(schedule.id),
            trans.__('The run was not started')
          )
        ),
        button(
          schedule.paused ? trans.__('Resume') : trans.__('Pause'),
          schedule.paused
            ? trans.__('Run on schedule again')
            : trans.__('No scheduled runs until resumed'),
          () =>
            this.act(
              () =>
                scheduler.update(schedule.id, { paused: !schedule.paused }),
              trans.__('The schedule was not changed')
            )
        ),
        button(trans.__('Delete'), trans.__('Delete this schedule'), () =>
          this.act(async () => {
            const answer = await showDialog({
              title: trans.__('Delete the schedule %1?', schedule.name),
              body: trans.__(
                'It never runs again; its past runs stay in the history.'
              ),
              buttons: [
                Dialog.cancelButton({ label: trans.__('Cancel') }),
                Dialog.warnButton({ label: trans.__('Delete') })
              ]
            });
            if (answer.button.accept) {
              await scheduler.remove(schedule.id);
            }
          }, trans.__('The schedule was not deleted'))
        )
      ),
      h(
        'ul',
        { className: 'jp-campushub-runs' },
        ...(runs.length
          ? runs.map(run => this.renderRun(run))
          : [h('li', { className: 'jp-campushub-note' }, trans.__('no runs yet'))])
      )
    );
  }

  private renderRun(run: IRun): HTMLElement {
    const trans = this.trans;
    const when = run.finished || run.started || run.due || run.created;
    const item = h(
      'li',
      {
        className: `jp-campushub-run jp-campushub-run-${run.state}`,
        title: [run.detail, run.note].filter(Boolean).join('\n')
      },
      h(
        'span',
        {
          className: `jp-campushub-state jp-campushub-state-${ACTIVE.includes(run.state) ? 'active' : run.state}`
        },
        run.state
      ),
      ` #${run.id} ${localTime(when)} `,
      h('span', { className: 'jp-campushub-trigger' }, run.trigger)
    );
    if (run.has_html) {
      item.append(
        ' ',
        h(
          'a',
          {
            href: this.outputURL(run),
            target: '_blank',
            rel: 'noopener',
            title: trans.__('The output of run %1, in a new tab', run.id)
          },
          trans.__('output')
        )
      );
    }
    if (run.detail && !ACTIVE.includes(run.state) && run.state !== 'succeeded') {
      item.append(h('div', { className: 'jp-campushub-detail' }, run.detail));
    }
    return item;
  }
}

export const schedulerPlugin: JupyterFrontEndPlugin<void> = {
  id: SCHEDULER_PLUGIN,
  description:
    'Nightly runs of a notebook: the "Run nightly…" dialog and the Scheduled runs sidebar.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ISettingRegistry, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    translator: ITranslator | null
  ) => {
    const trans = (translator ?? nullTranslator).load('campushub_lab');
    const defaults = { time: '02:00', email: '' };
    const created = new Signal<any, ISchedule>({});
    const panel = new RunsPanel(trans);
    app.shell.add(panel, 'left', { rank: 900 });
    created.connect(() => void panel.refresh());

    if (settingRegistry) {
      const apply = (settings: ISettingRegistry.ISettings) => {
        defaults.time = (settings.get('defaultTime').composite as string) ?? '02:00';
        defaults.email = (settings.get('alertEmail').composite as string) ?? '';
        panel.runsShown = (settings.get('runsShown').composite as number) ?? 5;
      };
      settingRegistry
        .load(SCHEDULER_PLUGIN)
        .then(settings => {
          apply(settings);
          settings.changed.connect(apply);
        })
        .catch(reason =>
          console.warn('campushub-lab: scheduler settings not loaded', reason)
        );
    }
    // where the service's pages are (a run's HTML output): from the session's answer
    getJSON<ISession>('session')
      .then(session => {
        if (session.scheduler) {
          panel.schedulerPath = session.scheduler;
        }
      })
      .catch(() => undefined);

    const current = () => tracker.currentWidget;
    app.commands.addCommand(COMMAND_SCHEDULE, {
      label: trans.__('Run nightly…'),
      caption: trans.__('Run this notebook on a schedule, as a batch job'),
      icon: args => (args.toolbar ? scheduleIcon : undefined),
      isEnabled: () => current() !== null,
      execute: async () => {
        const notebook = current();
        if (!notebook) {
          return;
        }
        return scheduleNotebook(notebook, trans, defaults, created);
      }
    });
    app.commands.addCommand(COMMAND_RUNS, {
      label: trans.__('Scheduled Runs'),
      caption: trans.__('Your schedules and their runs'),
      execute: () => {
        app.shell.activateById(panel.id);
      }
    });
    app.commands.addCommand(COMMAND_RUNS_REFRESH, {
      label: trans.__('Refresh Scheduled Runs'),
      execute: () => panel.refresh()
    });
    if (palette) {
      const category = trans.__('CampusHub');
      for (const command of [COMMAND_SCHEDULE, COMMAND_RUNS, COMMAND_RUNS_REFRESH]) {
        palette.addItem({ command, category });
      }
    }
    app.contextMenu.addItem({
      command: COMMAND_SCHEDULE,
      selector: '.jp-Notebook',
      rank: 60
    });
    // the toolbar button on each notebook
    app.docRegistry.addWidgetExtension('Notebook', {
      createNew: (widget: NotebookPanel) => {
        const button = new ToolbarButton({
          icon: scheduleIcon,
          label: trans.__('Run nightly…'),
          tooltip: trans.__('Run this notebook on a schedule, as a batch job'),
          className: 'jp-campushub-ScheduleButton',
          onClick: () => {
            void scheduleNotebook(widget, trans, defaults, created).catch(e =>
              showErrorMessage(trans.__('Scheduling failed'), String(e))
            );
          }
        });
        widget.toolbar.insertItem(10, 'campushubSchedule', button);
        return button;
      }
    });
  }
};
