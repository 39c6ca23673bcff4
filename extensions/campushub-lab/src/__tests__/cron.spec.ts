import { checkCustom, CronError, cronFor, parseTime } from '../cron';

describe('cronFor', () => {
  it('makes the presets', () => {
    expect(cronFor({ preset: 'nightly', time: '02:00' })).toBe('0 2 * * *');
    expect(cronFor({ preset: 'nightly' })).toBe('0 2 * * *');
    expect(cronFor({ preset: 'weekdays', time: '06:30' })).toBe(
      '30 6 * * 1-5'
    );
    expect(cronFor({ preset: 'hourly', minute: 15 })).toBe('15 * * * *');
    expect(cronFor({ preset: 'hourly' })).toBe('0 * * * *');
    expect(cronFor({ preset: 'weekly', time: '23:59', weekday: 0 })).toBe(
      '59 23 * * 0'
    );
    expect(cronFor({ preset: 'custom', custom: '  30   1 * *  *' })).toBe(
      '30 1 * * *'
    );
    expect(cronFor({ preset: 'custom', custom: '@daily' })).toBe('@daily');
  });
  it('refuses bad times, minutes and weekdays', () => {
    expect(() => cronFor({ preset: 'nightly', time: '24:00' })).toThrow(
      CronError
    );
    expect(() => cronFor({ preset: 'nightly', time: '2am' })).toThrow(
      /HH:MM/
    );
    expect(() => cronFor({ preset: 'hourly', minute: 60 })).toThrow(CronError);
    expect(() => cronFor({ preset: 'weekly', weekday: 7 })).toThrow(CronError);
  });
});

describe('checkCustom', () => {
  it('wants 5 fields or a known shortcut', () => {
    expect(() => checkCustom('')).toThrow(/cron expression/);
    expect(() => checkCustom('* * * *')).toThrow(/5 fields/);
    expect(() => checkCustom('@sometimes')).toThrow(/shortcut/);
    expect(() => checkCustom('0 2 * * *; rm')).toThrow(CronError);
    expect(checkCustom('*/15 8-18 * * MON-FRI')).toBe('*/15 8-18 * * MON-FRI');
  });
  it('reads times of day', () => {
    expect(parseTime('7:05')).toEqual([7, 5]);
  });
});
