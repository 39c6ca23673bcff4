import { LabIcon } from '@jupyterlab/ui-components';

const clock = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><path d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm0 18a8 8 0 1 1 0-16 8 8 0 0 1 0 16zm.5-13H11v6l5.2 3.2.8-1.3-4.5-2.7V7z"/></g></svg>`;

const template = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon-warn0 jp-icon-selectable" fill="#EF6C00"><path d="M6 2h9l5 5v13a2 2 0 0 1-2 2H6a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2zm8 1.5V8h4.5L14 3.5zM8 12v2h8v-2H8zm0 4v2h5v-2H8z"/></g></svg>`;

export const scheduleIcon = new LabIcon({
  name: 'campushub-lab:schedule',
  svgstr: clock
});

export const templateIcon = new LabIcon({
  name: 'campushub-lab:template',
  svgstr: template
});
