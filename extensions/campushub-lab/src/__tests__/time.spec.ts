import {
  clockSkew,
  crossedThresholds,
  formatTimeLeft,
  secondsLeft
} from '../time';

const T0 = Date.parse('2026-11-23T10:00:00Z');

describe('clockSkew', () => {
  it('is the server clock minus the middle of the request', () => {
    // the browser is 90 s behind: the server says 10:01:30 when the browser says 10:00:00
    expect(clockSkew('2026-11-23T10:01:30Z', T0 - 100, T0 + 100)).toBe(90_000);
  });
  it('is zero for a time it cannot read', () => {
    expect(clockSkew('not a time', T0)).toBe(0);
  });
  it('reads offsets in the server time', () => {
    expect(clockSkew('2026-11-23T11:00:00+01:00', T0)).toBe(0);
  });
});

describe('secondsLeft', () => {
  it('counts to the end from the corrected clock', () => {
    // end 11:42 server time; browser says 10:00 but is 2 minutes behind: 100 minutes left
    expect(secondsLeft('2026-11-23T11:42:00Z', T0, 120_000)).toBe(100 * 60);
  });
  it('a skewed browser without correction would be wrong by its skew', () => {
    expect(secondsLeft('2026-11-23T11:42:00Z', T0, 0)).toBe(102 * 60);
  });
  it('is null without an end and never negative', () => {
    expect(secondsLeft(null, T0, 0)).toBeNull();
    expect(secondsLeft('garbage', T0, 0)).toBeNull();
    expect(secondsLeft('2026-11-23T09:00:00Z', T0, 0)).toBe(0);
  });
});

describe('formatTimeLeft', () => {
  it.each([
    [102 * 60 + 59, '1:42 left'],
    [60 * 60, '1:00 left'],
    [59 * 60 + 30, '59 min left'],
    [5 * 60, '5 min left'],
    [30, '<1 min left'],
    [0, 'walltime over'],
    [26 * 3600 + 5 * 60, '1d 2:05 left']
  ])('%i seconds is %s', (seconds, text) => {
    expect(formatTimeLeft(seconds)).toBe(text);
  });
  it('goes through the translator', () => {
    const seen: string[] = [];
    const text = formatTimeLeft(600, (msg, ...args) => {
      seen.push(msg);
      return `[${msg}|${args.join(',')}]`;
    });
    expect(seen).toEqual(['%1 min left']);
    expect(text).toBe('[%1 min left|10]');
  });
});

describe('crossedThresholds', () => {
  const warned = new Set<number>();
  it('warns when a reading falls below a threshold', () => {
    expect(crossedThresholds(16 * 60, 14 * 60 + 59, [15, 5], warned)).toEqual([
      15
    ]);
  });
  it('does not warn above a threshold or between readings below it', () => {
    expect(crossedThresholds(20 * 60, 16 * 60, [15, 5])).toEqual([]);
    expect(crossedThresholds(14 * 60, 13 * 60, [15, 5])).toEqual([]);
  });
  it('warns of both when one jump crosses both', () => {
    expect(crossedThresholds(16 * 60, 4 * 60, [5, 15])).toEqual([15, 5]);
  });
  it('warns once on a first reading below several thresholds: the smallest', () => {
    expect(crossedThresholds(null, 3 * 60, [15, 5])).toEqual([5]);
    expect(crossedThresholds(null, 10 * 60, [15, 5])).toEqual([15]);
    expect(crossedThresholds(null, 60 * 60, [15, 5])).toEqual([]);
  });
  it('does not warn again of a threshold warned of, nor without an end', () => {
    expect(crossedThresholds(null, 10 * 60, [15, 5], new Set([15]))).toEqual(
      []
    );
    expect(crossedThresholds(16 * 60, null, [15, 5])).toEqual([]);
    expect(crossedThresholds(16 * 60, 0, [15, 5])).toEqual([]);
  });
});
