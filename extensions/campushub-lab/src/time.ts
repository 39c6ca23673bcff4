/**
 * The session's clock: time left on the walltime, corrected for the browser's clock skew,
 * its text for the status bar, and which warning thresholds a countdown has crossed.
 * Pure functions: no JupyterLab import (tested in src/__tests__/time.spec.ts).
 */

/**
 * The browser clock's offset from the server's, in milliseconds: add it to Date.now() to get
 * the server's time. `serverNow` is the ISO time the server sent; `sentAt` and `receivedAt` are
 * the browser's Date.now() around the request (their middle is when the server answered).
 */
export function clockSkew(
  serverNow: string,
  sentAt: number,
  receivedAt: number = sentAt
): number {
  const server = Date.parse(serverNow);
  if (Number.isNaN(server)) {
    return 0;
  }
  return server - (sentAt + receivedAt) / 2;
}

/**
 * Seconds left until `end` (ISO), at the browser's `browserNow` (ms) corrected by `skew` (ms).
 * null when there is no end (no walltime, or not a Slurm job); never negative.
 */
export function secondsLeft(
  end: string | null | undefined,
  browserNow: number,
  skew: number
): number | null {
  if (!end) {
    return null;
  }
  const until = Date.parse(end);
  if (Number.isNaN(until)) {
    return null;
  }
  return Math.max(0, Math.floor((until - (browserNow + skew)) / 1000));
}

/** The parts of a time left, for the translated text: d days, h:mm, or minutes. */
export type TimeLeft =
  | { kind: 'over' }
  | { kind: 'minutes'; minutes: number }
  | { kind: 'hours'; hours: number; minutes: string }
  | { kind: 'days'; days: number; hours: number; minutes: string };

export function splitTimeLeft(seconds: number): TimeLeft {
  if (seconds <= 0) {
    return { kind: 'over' };
  }
  const minutesTotal = Math.floor(seconds / 60);
  if (minutesTotal < 60) {
    return { kind: 'minutes', minutes: minutesTotal };
  }
  const days = Math.floor(minutesTotal / 1440);
  const hours = Math.floor((minutesTotal % 1440) / 60);
  const minutes = String(minutesTotal % 60).padStart(2, '0');
  if (days > 0) {
    return { kind: 'days', days, hours, minutes };
  }
  return { kind: 'hours', hours, minutes };
}

/**
 * The time left as the status bar shows it: `1:42 left`, `2d 3:05 left`, `12 min left`,
 * `<1 min left`, `walltime over`. `__` translates (trans.__ in the Lab; identity in tests).
 */
export function formatTimeLeft(
  seconds: number,
  __: (msg: string, ...args: any[]) => string = plain
): string {
  const left = splitTimeLeft(seconds);
  switch (left.kind) {
    case 'over':
      return __('walltime over');
    case 'minutes':
      return left.minutes < 1
        ? __('<1 min left')
        : __('%1 min left', left.minutes);
    case 'hours':
      return __('%1:%2 left', left.hours, left.minutes);
    case 'days':
      return __('%1d %2:%3 left', left.days, left.hours, left.minutes);
  }
}

/** `%1`-style substitution, as the Lab's translator does it (for tests and a missing translator). */
export function plain(msg: string, ...args: any[]): string {
  return msg.replace(/%(\d+)/g, (whole, n) =>
    Number(n) - 1 < args.length ? String(args[Number(n) - 1]) : whole
  );
}

/**
 * The warning thresholds (minutes) that the countdown reached between two readings, those not
 * warned of already, smallest last. A first reading (`previous` null) below several thresholds
 * gives only the smallest one: one warning, not a burst, when the Lab opens late in a job.
 */
export function crossedThresholds(
  previous: number | null,
  current: number | null,
  thresholds: number[],
  warned: ReadonlySet<number> = new Set()
): number[] {
  if (current === null || current <= 0) {
    return [];
  }
  const reached = [...new Set(thresholds)]
    .filter(t => t > 0 && !warned.has(t) && current <= t * 60)
    .filter(t => previous === null || previous > t * 60)
    .sort((a, b) => b - a);
  if (previous === null && reached.length > 1) {
    return reached.slice(-1);
  }
  return reached;
}
