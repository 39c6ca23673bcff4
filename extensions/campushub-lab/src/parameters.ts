/**
 * Notebook parameters as papermill sees them ({name, inferred_type_name, default, help}, the
 * default being Python source), the text a dialog shows for them, and the JSON value a text
 * input becomes by the parameter's type. Pure functions (tested in src/__tests__/parameters.spec.ts).
 */

export interface IParameter {
  name: string;
  /** papermill's: the annotation (int, float, str, bool, list, dict ...) or "None" */
  inferred_type_name?: string | null;
  /** Python source of the default value, e.g. "'iris.csv'", "10", "True" */
  default?: string | null;
  help?: string | null;
}

export type ParameterType =
  | 'int'
  | 'float'
  | 'bool'
  | 'str'
  | 'list'
  | 'dict'
  | 'any';

export class ParameterError extends Error {}

const KNOWN: Record<string, ParameterType> = {
  int: 'int',
  float: 'float',
  bool: 'bool',
  str: 'str',
  list: 'list',
  dict: 'dict',
  tuple: 'list'
};

/** The parameter's type: its annotation, else its default's, else any. */
export function parameterType(parameter: IParameter): ParameterType {
  const annotated = (parameter.inferred_type_name ?? '')
    .trim()
    .replace(/^typing\./, '')
    .replace(/\[.*$/, '')
    .toLowerCase();
  if (annotated in KNOWN) {
    return KNOWN[annotated];
  }
  const source = (parameter.default ?? '').trim();
  if (/^[+-]?\d+$/.test(source)) {
    return 'int';
  }
  if (/^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$/.test(source)) {
    return 'float';
  }
  if (source === 'True' || source === 'False') {
    return 'bool';
  }
  if (/^[rbuRBU]?('|")/.test(source)) {
    return 'str';
  }
  if (source.startsWith('[') || source.startsWith('(')) {
    return 'list';
  }
  if (source.startsWith('{')) {
    return 'dict';
  }
  return 'any';
}

/**
 * Python literal source -> JSON text, for the simple literals a parameters cell holds: strings
 * in single or double quotes, True/False/None, numbers, lists, tuples and dicts of these.
 * Anything else is returned as it is.
 */
export function pythonToJSONText(source: string): string {
  let out = '';
  let i = 0;
  const s = source.trim();
  while (i < s.length) {
    const ch = s[i];
    if (ch === "'" || ch === '"') {
      let j = i + 1;
      let text = '';
      while (j < s.length && s[j] !== ch) {
        if (s[j] === '\\' && j + 1 < s.length) {
          const next = s[j + 1];
          text += next === 'n' ? '\n' : next === 't' ? '\t' : next;
          j += 2;
          continue;
        }
        text += s[j];
        j++;
      }
      if (j >= s.length) {
        return source;
      }
      out += JSON.stringify(text);
      i = j + 1;
      continue;
    }
    const word = /^[A-Za-z_]\w*/.exec(s.slice(i));
    if (word) {
      const mapped: Record<string, string> = {
        True: 'true',
        False: 'false',
        None: 'null'
      };
      if (!(word[0] in mapped)) {
        return source;
      }
      out += mapped[word[0]];
      i += word[0].length;
      continue;
    }
    out += ch === '(' ? '[' : ch === ')' ? ']' : ch;
    i++;
  }
  // a trailing comma (Python allows it, JSON does not): (1,) and [1, 2,]
  return out.replace(/,\s*([\]}])/g, '$1');
}

/** The text an input shows for a parameter's default. */
export function defaultText(parameter: IParameter): string {
  const source = (parameter.default ?? '').trim();
  if (source === '' || source === 'None') {
    return '';
  }
  switch (parameterType(parameter)) {
    case 'str': {
      const json = pythonToJSONText(source);
      try {
        const value = JSON.parse(json);
        return typeof value === 'string' ? value : source;
      } catch {
        return source;
      }
    }
    case 'bool':
      return source === 'True' ? 'true' : source === 'False' ? 'false' : source;
    case 'list':
    case 'dict':
    case 'any': {
      const json = pythonToJSONText(source);
      try {
        JSON.parse(json);
        return json;
      } catch {
        return source;
      }
    }
    default:
      return source;
  }
}

/** The JSON value of an input's text, by the parameter's type; a text that is none is a ParameterError. */
export function parseValue(parameter: IParameter, text: string): unknown {
  const type = parameterType(parameter);
  const value = text.trim();
  const fail = (what: string): never => {
    throw new ParameterError(`${parameter.name}: ${what}, not ${text}`);
  };
  switch (type) {
    case 'int':
      if (!/^[+-]?\d+$/.test(value)) {
        fail('a whole number');
      }
      return Number(value);
    case 'float':
      if (
        !/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(value) ||
        !Number.isFinite(Number(value))
      ) {
        fail('a number');
      }
      return Number(value);
    case 'bool': {
      const lower = value.toLowerCase();
      if (['true', 'yes', '1', 'on'].includes(lower)) {
        return true;
      }
      if (['false', 'no', '0', 'off'].includes(lower)) {
        return false;
      }
      return fail('true or false');
    }
    case 'str':
      return text;
    case 'list':
    case 'dict': {
      let parsed: unknown;
      try {
        parsed = JSON.parse(pythonToJSONText(value));
      } catch {
        return fail(type === 'list' ? 'a list such as [1, 2]' : 'a dict such as {"a": 1}');
      }
      const isList = Array.isArray(parsed);
      const isDict = parsed !== null && typeof parsed === 'object' && !isList;
      if ((type === 'list' && !isList) || (type === 'dict' && !isDict)) {
        fail(type === 'list' ? 'a list such as [1, 2]' : 'a dict such as {"a": 1}');
      }
      return parsed;
    }
    case 'any':
      if (value === '') {
        return null;
      }
      try {
        return JSON.parse(pythonToJSONText(value));
      } catch {
        return text;
      }
  }
}

/**
 * The parameters a dialog collected: {name: value}, from the texts by name. `onlyChanged` leaves
 * out those still at their default (a schedule then follows the notebook's own defaults).
 */
export function collectValues(
  parameters: IParameter[],
  texts: Record<string, string>,
  onlyChanged = false
): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const parameter of parameters) {
    const text = texts[parameter.name];
    if (text === undefined) {
      continue;
    }
    if (onlyChanged && text === defaultText(parameter)) {
      continue;
    }
    values[parameter.name] = parseValue(parameter, text);
  }
  return values;
}

/**
 * The parameters of a notebook's `parameters` cell, read simply: one `name = value` or
 * `name: type = value` a line, an end-of-line comment as its help. Lines of other shapes are
 * skipped (papermill reads the full syntax on the server).
 */
export function parseParametersCell(source: string): IParameter[] {
  const found: IParameter[] = [];
  const line =
    /^([A-Za-z_]\w*)\s*(?::\s*([A-Za-z_][\w.[\], ]*?))?\s*=\s*(.+?)\s*(?:#\s*(.*))?$/;
  for (const raw of source.split('\n')) {
    if (/^\s/.test(raw) || raw.trim().startsWith('#')) {
      continue;
    }
    const match = line.exec(raw.replace(/\s+$/, ''));
    if (!match) {
      continue;
    }
    let value = match[3];
    let help = match[4] ?? '';
    // a # inside a string default is part of it: only a comment after the value is help
    if (/^[rbuRBU]?['"]/.test(value) && !isClosedString(value)) {
      const whole = raw.slice(raw.indexOf('=') + 1).trim();
      const end = stringEnd(whole);
      if (end < 0) {
        continue;
      }
      value = whole.slice(0, end + 1);
      const rest = whole.slice(end + 1).trim();
      help = rest.startsWith('#') ? rest.slice(1).trim() : '';
    }
    found.push({
      name: match[1],
      inferred_type_name: match[2] ? match[2].trim() : 'None',
      default: value,
      help
    });
  }
  return found;
}

function stringEnd(text: string): number {
  const start = text.search(/['"]/);
  const quote = text[start];
  for (let i = start + 1; i < text.length; i++) {
    if (text[i] === '\\') {
      i++;
    } else if (text[i] === quote) {
      return i;
    }
  }
  return -1;
}

function isClosedString(value: string): boolean {
  return stringEnd(value) === value.length - 1;
}
