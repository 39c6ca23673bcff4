/**
 * The schedule dialog's choices of when to run, as cron expressions the scheduler reads
 * (5 fields: minute hour day-of-month month day-of-week, in the schedule's time zone).
 * Pure functions (tested in src/__tests__/cron.spec.ts).
 */

export type CronPreset = 'nightly' | 'weekdays' | 'hourly' | 'weekly' | 'custom';

export const CRON_PRESETS: CronPreset[] = [
  'nightly',
  'weekdays',
  'hourly',
  'weekly',
  'custom'
];

export interface ICronChoice {
  preset: CronPreset;
  /** HH:MM, for nightly, weekdays and weekly */
  time?: string;
  /** 0 (Sunday) to 6, for weekly */
  weekday?: number;
  /** minute of the hour, for hourly */
  minute?: number;
  /** the expression itself, for custom */
  custom?: string;
}

export class CronError extends Error {}

/** "02:00" -> [2, 0]; a bad time is a CronError. */
export function parseTime(time: string | undefined): [number, number] {
  const match = /^\s*(\d{1,2}):(\d{2})\s*$/.exec(time ?? '02:00');
  if (!match) {
    throw new CronError(`not a time of day (HH:MM): ${time}`);
  }
  const hour = Number(match[1]);
  const minute = Number(match[2]);
  if (hour > 23 || minute > 59) {
    throw new CronError(`not a time of day (HH:MM): ${time}`);
  }
  return [hour, minute];
}

const MACROS = [
  '@yearly',
  '@annually',
  '@monthly',
  '@weekly',
  '@daily',
  '@midnight',
  '@hourly'
];

/** A custom expression's obvious mistakes (the scheduler checks it fully). */
export function checkCustom(expression: string): string {
  const cron = expression.trim().replace(/\s+/g, ' ');
  if (!cron) {
    throw new CronError('write a cron expression, such as 30 1 * * *');
  }
  if (cron.startsWith('@')) {
    if (!MACROS.includes(cron)) {
      throw new CronError(`not a cron shortcut: ${cron}`);
    }
    return cron;
  }
  const fields = cron.split(' ');
  if (fields.length !== 5) {
    throw new CronError(
      `a cron expression has 5 fields (minute hour day month weekday), not ${fields.length}`
    );
  }
  if (fields.some(f => !/^[\d*/,\-A-Za-z?]+$/.test(f))) {
    throw new CronError(`not a cron expression: ${cron}`);
  }
  return cron;
}

/** The cron expression of a choice. */
export function cronFor(choice: ICronChoice): string {
  switch (choice.preset) {
    case 'nightly': {
      const [hour, minute] = parseTime(choice.time);
      return `${minute} ${hour} * * *`;
    }
    case 'weekdays': {
      const [hour, minute] = parseTime(choice.time);
      return `${minute} ${hour} * * 1-5`;
    }
    case 'hourly': {
      const minute = choice.minute ?? 0;
      if (!Number.isInteger(minute) || minute < 0 || minute > 59) {
        throw new CronError(`not a minute of the hour (0-59): ${minute}`);
      }
      return `${minute} * * * *`;
    }
    case 'weekly': {
      const [hour, minute] = parseTime(choice.time);
      const weekday = choice.weekday ?? 1;
      if (!Number.isInteger(weekday) || weekday < 0 || weekday > 6) {
        throw new CronError(`not a day of the week (0-6): ${weekday}`);
      }
      return `${minute} ${hour} * * ${weekday}`;
    }
    case 'custom':
      return checkCustom(choice.custom ?? '');
  }
}

/** The browser's time zone (the dialog's default), or UTC where it has none. */
export function browserTimeZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  } catch {
    return 'UTC';
  }
}
