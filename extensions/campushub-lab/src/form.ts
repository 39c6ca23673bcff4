/** Typed inputs for a notebook's parameters, shared by the template and the schedule dialogs. */
import { TranslationBundle } from '@jupyterlab/translation';

import { h } from './dom';
import {
  collectValues,
  defaultText,
  IParameter,
  parameterType
} from './parameters';

export class ParameterInputs {
  readonly node: HTMLElement;
  private inputs = new Map<string, HTMLInputElement | HTMLSelectElement>();

  constructor(
    readonly parameters: IParameter[],
    trans: TranslationBundle,
    texts: Record<string, string> = {}
  ) {
    this.node = h('div', { className: 'jp-campushub-parameters' });
    if (!parameters.length) {
      this.node.append(
        h(
          'p',
          { className: 'jp-campushub-note' },
          trans.__('This notebook has no parameters cell.')
        )
      );
      return;
    }
    for (const parameter of parameters) {
      const type = parameterType(parameter);
      const text = texts[parameter.name] ?? defaultText(parameter);
      let input: HTMLInputElement | HTMLSelectElement;
      if (type === 'bool') {
        input = h(
          'select',
          { className: 'jp-mod-styled' },
          h('option', { value: 'true' }, 'true'),
          h('option', { value: 'false' }, 'false')
        );
        input.value = text === 'false' ? 'false' : 'true';
      } else {
        input = h('input', {
          className: 'jp-mod-styled',
          type: type === 'int' || type === 'float' ? 'text' : 'text',
          inputmode: type === 'int' || type === 'float' ? 'decimal' : null,
          spellcheck: 'false'
        });
        input.value = text;
      }
      input.name = parameter.name;
      input.dataset.parameter = parameter.name;
      input.dataset.type = type;
      this.inputs.set(parameter.name, input);
      const label = h(
        'label',
        { className: 'jp-campushub-field' },
        h(
          'span',
          { className: 'jp-campushub-label' },
          parameter.name,
          h('span', { className: 'jp-campushub-type' }, ` ${type}`)
        ),
        input
      );
      if (parameter.help) {
        label.append(
          h('span', { className: 'jp-campushub-help' }, parameter.help)
        );
      }
      this.node.append(label);
    }
  }

  /** the texts as typed, by parameter name */
  texts(): Record<string, string> {
    const texts: Record<string, string> = {};
    for (const [name, input] of this.inputs) {
      texts[name] = input.value;
    }
    return texts;
  }

  /** the values, by type (a ParameterError names a bad one) */
  values(onlyChanged = false): Record<string, unknown> {
    return collectValues(this.parameters, this.texts(), onlyChanged);
  }
}
