/** Whether a cell run must wait for its notebook's kernel (pure: tested with jest). */
export interface IRunMoment {
  disposed: boolean; // the notebook's session context is gone
  ready: boolean; // the session context is ready (a kernel, or "No Kernel" chosen)
  hasKernel: boolean; // the session has its kernel object (a run is then queued by the Lab itself)
  source: string; // the cell's code
}

export function waitsForKernel(moment: IRunMoment): boolean {
  if (moment.disposed || moment.ready || moment.hasKernel) {
    return false;
  }
  return moment.source.trim() !== '';
}
