/**
 * The CampusHub Lab extension: one plugin per feature.
 * - session: the status bar's node · GPUs · time left, walltime warnings, the Session panel
 * - templates: the launcher's Templates section and the parameterized copy of a template
 * - scheduler: "Run nightly…" on a notebook and the Scheduled runs sidebar
 * - run queue: a cell run while a new notebook's kernel starts runs once the kernel is there
 */
import { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { runQueuePlugin } from './runqueue';
import { schedulerPlugin } from './scheduler';
import { sessionPlugin } from './session';
import { templatesPlugin } from './templates';

const plugins: JupyterFrontEndPlugin<any>[] = [
  sessionPlugin,
  templatesPlugin,
  schedulerPlugin,
  runQueuePlugin
];

export default plugins;
