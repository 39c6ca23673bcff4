import { errorMessage } from '../errors';

describe('errorMessage', () => {
  it("takes the server's message from its JSON body", () => {
    expect(errorMessage(400, '{"message": "no such template: x"}')).toBe(
      'no such template: x'
    );
    expect(
      errorMessage(400, '{"status": 400, "error": "cron: not a cron expression"}')
    ).toBe('cron: not a cron expression');
  });
  it('falls back to a short text, else the status', () => {
    expect(errorMessage(502, 'Bad gateway', 'Bad Gateway')).toBe('Bad gateway');
    expect(errorMessage(500, '<html>long page</html>', 'Internal Server Error')).toBe(
      '500 Internal Server Error'
    );
  });
});
