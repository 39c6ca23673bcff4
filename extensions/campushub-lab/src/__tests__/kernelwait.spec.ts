import { waitsForKernel } from '../kernelwait';

const starting = { disposed: false, ready: false, hasKernel: false, source: '1+1' };

describe('waitsForKernel', () => {
  it('waits while the new notebook has no kernel yet', () => {
    expect(waitsForKernel(starting)).toBe(true);
  });
  it('runs at once once the kernel object exists (the Lab queues the run itself)', () => {
    expect(waitsForKernel({ ...starting, hasKernel: true })).toBe(false);
  });
  it('runs (or skips) as before when the session is ready, e.g. with "No Kernel"', () => {
    expect(waitsForKernel({ ...starting, ready: true })).toBe(false);
  });
  it('does not wait for a closed notebook or an empty cell', () => {
    expect(waitsForKernel({ ...starting, disposed: true })).toBe(false);
    expect(waitsForKernel({ ...starting, source: '  \n' })).toBe(false);
  });
});
