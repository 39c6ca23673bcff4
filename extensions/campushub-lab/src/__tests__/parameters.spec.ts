import {
  collectValues,
  defaultText,
  IParameter,
  ParameterError,
  parameterType,
  parseParametersCell,
  parseValue,
  pythonToJSONText
} from '../parameters';

const p = (
  name: string,
  def: string,
  type: string | null = 'None'
): IParameter => ({ name, default: def, inferred_type_name: type, help: '' });

describe('parameterType', () => {
  it('takes the annotation first, then the default', () => {
    expect(parameterType(p('a', '1', 'float'))).toBe('float');
    expect(parameterType(p('a', '1'))).toBe('int');
    expect(parameterType(p('a', '1.5'))).toBe('float');
    expect(parameterType(p('a', '1e-3'))).toBe('float');
    expect(parameterType(p('a', 'True'))).toBe('bool');
    expect(parameterType(p('a', "'x'"))).toBe('str');
    expect(parameterType(p('a', '[1, 2]'))).toBe('list');
    expect(parameterType(p('a', "{'k': 1}"))).toBe('dict');
    expect(parameterType(p('a', 'None'))).toBe('any');
    expect(parameterType(p('a', '[1]', 'typing.List[int]'))).toBe('list');
  });
});

describe('defaultText and parseValue', () => {
  it('shows strings without quotes and parses them back as typed', () => {
    const data = p('data', "'iris.csv'");
    expect(defaultText(data)).toBe('iris.csv');
    expect(parseValue(data, 'other.csv')).toBe('other.csv');
    expect(parseValue(data, '42')).toBe('42');
  });
  it('parses numbers by type and refuses what is none', () => {
    expect(parseValue(p('n', '10'), ' 25 ')).toBe(25);
    expect(() => parseValue(p('n', '10'), '2.5')).toThrow(ParameterError);
    expect(() => parseValue(p('n', '10'), 'ten')).toThrow(/n: a whole number/);
    expect(parseValue(p('lr', '0.1'), '1e-4')).toBe(0.0001);
    expect(parseValue(p('lr', '0.1'), '3')).toBe(3);
    expect(() => parseValue(p('lr', '0.1'), 'fast')).toThrow(/a number/);
  });
  it('parses booleans in the usual spellings', () => {
    expect(defaultText(p('b', 'True'))).toBe('true');
    expect(parseValue(p('b', 'True'), 'false')).toBe(false);
    expect(parseValue(p('b', 'True'), 'Yes')).toBe(true);
    expect(() => parseValue(p('b', 'True'), 'maybe')).toThrow(/true or false/);
  });
  it('parses lists and dicts as JSON or Python literals', () => {
    expect(defaultText(p('l', "['a', 'b']"))).toBe('["a", "b"]');
    expect(parseValue(p('l', '[]'), "['x', 2, True, None]")).toEqual([
      'x',
      2,
      true,
      null
    ]);
    expect(parseValue(p('l', '[]'), '(1, 2,)')).toEqual([1, 2]);
    expect(parseValue(p('d', '{}'), '{"a": 1}')).toEqual({ a: 1 });
    expect(() => parseValue(p('d', '{}'), '[1]')).toThrow(ParameterError);
    expect(() => parseValue(p('l', '[]'), '[1,')).toThrow(ParameterError);
  });
  it('reads an untyped value as JSON, else as text', () => {
    expect(parseValue(p('x', 'None'), '')).toBeNull();
    expect(parseValue(p('x', 'None'), '3')).toBe(3);
    expect(parseValue(p('x', 'None'), 'abc')).toBe('abc');
  });
});

describe('pythonToJSONText', () => {
  it('keeps escapes and quotes inside strings', () => {
    expect(pythonToJSONText(`'it\\'s "x"'`)).toBe('"it\'s \\"x\\""');
    expect(pythonToJSONText('f(x)')).toBe('f(x)');
  });
});

describe('collectValues', () => {
  const parameters = [p('epochs', '10'), p('data', "'iris.csv'")];
  it('collects all, or only the changed ones', () => {
    const texts = { epochs: '10', data: 'wine.csv' };
    expect(collectValues(parameters, texts)).toEqual({
      epochs: 10,
      data: 'wine.csv'
    });
    expect(collectValues(parameters, texts, true)).toEqual({
      data: 'wine.csv'
    });
  });
});

describe('parseParametersCell', () => {
  it('reads simple assignments, annotations and comments', () => {
    const source = [
      '# Parameters',
      'epochs = 10  # passes over the data',
      "data: str = 'iris.csv'",
      "tag = 'a # b'  # the run's tag",
      'lr = 1e-3',
      'import os',
      '    indented = 1',
      'items = [1, 2]'
    ].join('\n');
    expect(parseParametersCell(source)).toEqual([
      {
        name: 'epochs',
        inferred_type_name: 'None',
        default: '10',
        help: 'passes over the data'
      },
      { name: 'data', inferred_type_name: 'str', default: "'iris.csv'", help: '' },
      {
        name: 'tag',
        inferred_type_name: 'None',
        default: "'a # b'",
        help: "the run's tag"
      },
      { name: 'lr', inferred_type_name: 'None', default: '1e-3', help: '' },
      { name: 'items', inferred_type_name: 'None', default: '[1, 2]', help: '' }
    ]);
  });
});
