/**
 * What went wrong with a request, for the person who asked: the server's message from the
 * JSON body (`message` from the Lab's server, `error` from the scheduler), else the HTTP reason.
 */
export function errorMessage(
  status: number,
  body: string,
  statusText = ''
): string {
  try {
    const data = JSON.parse(body);
    if (data && typeof data === 'object') {
      for (const key of ['message', 'error', 'reason']) {
        const value = (data as Record<string, unknown>)[key];
        if (typeof value === 'string' && value.trim()) {
          return value;
        }
      }
    }
  } catch {
    // not JSON: an HTML error page or a proxy's text
  }
  const text = body.trim();
  if (text && text.length <= 300 && !text.startsWith('<')) {
    return text;
  }
  return `${status} ${statusText}`.trim();
}
