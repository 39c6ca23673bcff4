/**
 * Templates: a "Templates" section in the launcher, one card per notebook template of the site;
 * a card asks for the template's parameters and makes a parameterized copy, which opens.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import {
  ITranslator,
  nullTranslator,
  TranslationBundle
} from '@jupyterlab/translation';
import { Widget } from '@lumino/widgets';

import { getJSON, ITemplate, sendJSON } from './api';
import { h } from './dom';
import { ParameterInputs } from './form';
import { templateIcon } from './icons';
import { ParameterError } from './parameters';

export const TEMPLATES_PLUGIN = 'campushub-lab:templates';
export const COMMAND_TEMPLATE = 'campushub:new-from-template';

interface ITemplateValue {
  texts: Record<string, string>;
  values: Record<string, unknown> | null;
  error: string;
}

class TemplateForm extends Widget implements Dialog.IBodyWidget<ITemplateValue> {
  private inputs: ParameterInputs;

  constructor(
    template: ITemplate,
    trans: TranslationBundle,
    folder: string,
    texts: Record<string, string>,
    error: string
  ) {
    super();
    this.addClass('jp-campushub-Form');
    this.inputs = new ParameterInputs(template.parameters, trans, texts);
    if (error) {
      this.node.append(h('p', { className: 'jp-campushub-error' }, error));
    }
    this.node.append(
      h(
        'p',
        { className: 'jp-campushub-note' },
        trans.__(
          'A copy of the template %1 with these parameters is made in %2 and opened.',
          template.name,
          folder ? `~/${folder}` : trans.__('your home folder')
        )
      ),
      this.inputs.node
    );
  }

  getValue(): ITemplateValue {
    const texts = this.inputs.texts();
    try {
      return { texts, values: this.inputs.values(), error: '' };
    } catch (error) {
      if (error instanceof ParameterError) {
        return { texts, values: null, error: error.message };
      }
      throw error;
    }
  }
}

export async function newFromTemplate(
  app: JupyterFrontEnd,
  template: ITemplate,
  trans: TranslationBundle,
  folder: string
): Promise<string | null> {
  let texts: Record<string, string> = {};
  let error = '';
  for (;;) {
    const result = await showDialog({
      title: trans.__('New notebook from %1', template.name),
      body: new TemplateForm(template, trans, folder, texts, error),
      buttons: [
        Dialog.cancelButton({ label: trans.__('Cancel') }),
        Dialog.okButton({ label: trans.__('Create') })
      ],
      focusNodeSelector: 'input'
    });
    if (!result.button.accept || !result.value) {
      return null;
    }
    texts = result.value.texts;
    if (result.value.values === null) {
      error = result.value.error;
      continue;
    }
    try {
      const created = await sendJSON<{ path: string }>(
        'templates/copy',
        'POST',
        { name: template.name, parameters: result.value.values, folder }
      );
      await app.commands.execute('docmanager:open', { path: created.path });
      return created.path;
    } catch (e) {
      await showErrorMessage(
        trans.__('The template was not copied'),
        (e as Error).message
      );
      error = (e as Error).message;
    }
  }
}

export const templatesPlugin: JupyterFrontEndPlugin<void> = {
  id: TEMPLATES_PLUGIN,
  description:
    "The site's notebook templates in the launcher: a card each, a parameters dialog, a copy that opens.",
  autoStart: true,
  optional: [
    ILauncher,
    ICommandPalette,
    IDefaultFileBrowser,
    ISettingRegistry,
    ITranslator
  ],
  activate: async (
    app: JupyterFrontEnd,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    browser: IDefaultFileBrowser | null,
    settingRegistry: ISettingRegistry | null,
    translator: ITranslator | null
  ) => {
    const trans = (translator ?? nullTranslator).load('campushub_lab');
    let category = trans.__('Templates');
    let showInLauncher = true;
    if (settingRegistry) {
      try {
        const settings = await settingRegistry.load(TEMPLATES_PLUGIN);
        showInLauncher = settings.get('showInLauncher').composite !== false;
        category =
          (settings.get('launcherCategory').composite as string) || category;
      } catch (reason) {
        console.warn('campushub-lab: templates settings not loaded', reason);
      }
    }
    const templates = new Map<string, ITemplate>();
    const load = async () => {
      const found = await getJSON<{ templates: ITemplate[] }>('templates');
      templates.clear();
      for (const template of found.templates ?? []) {
        templates.set(template.name, template);
      }
    };

    app.commands.addCommand(COMMAND_TEMPLATE, {
      label: args =>
        args.name
          ? String(args.name)
          : trans.__('New Notebook from Template…'),
      caption: args =>
        args.name
          ? trans.__('A new notebook from the template %1', String(args.name))
          : trans.__('A new notebook from one of the site’s templates'),
      icon: templateIcon,
      execute: async args => {
        try {
          if (!templates.size) {
            await load();
          }
        } catch (e) {
          await showErrorMessage(
            trans.__('Templates are not available'),
            (e as Error).message
          );
          return null;
        }
        let name = args.name ? String(args.name) : '';
        if (!name) {
          const names = [...templates.keys()];
          if (!names.length) {
            await showErrorMessage(
              trans.__('No templates'),
              trans.__('This site has no notebook templates.')
            );
            return null;
          }
          const choice = await showDialog({
            title: trans.__('New Notebook from Template'),
            body: new TemplateChoice(names),
            buttons: [
              Dialog.cancelButton({ label: trans.__('Cancel') }),
              Dialog.okButton({ label: trans.__('Next') })
            ]
          });
          if (!choice.button.accept || !choice.value) {
            return null;
          }
          name = choice.value;
        }
        const template = templates.get(name);
        if (!template) {
          await showErrorMessage(
            trans.__('No such template'),
            trans.__('There is no template %1.', name)
          );
          return null;
        }
        const folder = browser?.model.path ?? '';
        return newFromTemplate(app, template, trans, folder.replace(/^[^/:]*:/, ''));
      }
    });
    palette?.addItem({
      command: COMMAND_TEMPLATE,
      category: trans.__('CampusHub')
    });

    if (launcher && showInLauncher) {
      // in the background: the Lab does not wait for the server's answer to start
      load()
        .then(() => {
          let rank = 0;
          for (const name of templates.keys()) {
            launcher.add({
              command: COMMAND_TEMPLATE,
              args: { name },
              category,
              rank: rank++
            });
          }
        })
        .catch(e =>
          console.warn(
            'campushub-lab: no templates for the launcher:',
            (e as Error).message
          )
        );
    }
  }
};

class TemplateChoice extends Widget implements Dialog.IBodyWidget<string> {
  private select: HTMLSelectElement;
  constructor(names: string[]) {
    super();
    this.select = h(
      'select',
      { className: 'jp-mod-styled' },
      ...names.map(name => h('option', { value: name }, name))
    );
    this.node.append(this.select);
  }
  getValue(): string {
    return this.select.value;
  }
}
