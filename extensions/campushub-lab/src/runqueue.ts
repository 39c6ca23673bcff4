/**
 * A cell run while a new notebook's kernel is starting runs once the kernel is there.
 *
 * JupyterLab shows a new notebook, and takes Shift+Enter in it, before the notebook's session has its
 * kernel: the session is made by a few requests after the notebook opens (about a second, longer
 * through the hub's proxy). CodeCell.execute skips a cell whose session has no kernel yet: the cell
 * keeps an empty prompt and never runs (jupyterlab/jupyterlab#8490); no execute request ever reaches
 * the server. This plugin makes such a run wait for the session to be ready, then run as usual. A run
 * with no kernel chosen ("No Kernel") is skipped as before.
 *
 * It replaces CodeCell.execute on the Lab's shared @jupyterlab/cells module: re-check it on every
 * JupyterLab upgrade (tests/e2e/test_lab_kernel_start.py fails if a run is dropped again).
 */
import { JupyterFrontEndPlugin } from '@jupyterlab/application';
import { CodeCell } from '@jupyterlab/cells';

import { waitsForKernel } from './kernelwait';

const PATCHED = Symbol.for('campushub-lab:run-queue');

export function queueEarlyRuns(): void {
  const execute = CodeCell.execute as typeof CodeCell.execute & { [PATCHED]?: boolean };
  if (execute[PATCHED]) {
    return;
  }
  const patched: typeof CodeCell.execute = (cell, sessionContext, metadata) => {
    const source = cell.model.sharedModel.getSource();
    if (
      !waitsForKernel({
        disposed: sessionContext.isDisposed,
        ready: sessionContext.isReady,
        hasKernel: !!sessionContext.session?.kernel,
        source
      })
    ) {
      return execute(cell, sessionContext, metadata);
    }
    // queued: shown as running ([*]) until the kernel takes it
    cell.model.executionState = 'running';
    return sessionContext.ready.then(
      () => execute(cell, sessionContext, metadata),
      () => {
        cell.model.executionState = 'idle';
        return undefined;
      }
    );
  };
  (patched as typeof patched & { [PATCHED]?: boolean })[PATCHED] = true;
  CodeCell.execute = patched;
}

export const runQueuePlugin: JupyterFrontEndPlugin<void> = {
  id: 'campushub-lab:run-queue',
  description: 'Runs a cell that was run while its notebook kernel started, once the kernel is there.',
  autoStart: true,
  activate: () => queueEarlyRuns()
};
