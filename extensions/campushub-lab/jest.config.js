// The unit tests of the front-end's pure logic (src/__tests__): time left, notices, cron, parameters.
// They import no JupyterLab package, so they run in Node through ts-jest, without a browser.
module.exports = {
  testEnvironment: 'node',
  testRegex: 'src/.*/.*.spec.ts[x]?$',
  transform: {
    '^.+\\.tsx?$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  },
  collectCoverageFrom: ['src/**/*.{ts,tsx}', '!src/**/*.d.ts']
};
