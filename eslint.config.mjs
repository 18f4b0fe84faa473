// Lint (npm run lint, run by .ci/run): a few rules that catch real mistakes, fast (no type information).
// Formatting is not enforced: reformatting the tree would conflict with every open branch. max-len is a ceiling
// the current code meets (200: code lines; strings, template literals, regexes, comments and URLs are not counted);
// new code should stay under 160 columns.
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'test/fixtures/**', 'src/model/kernels/wasm/kernels-binary.ts'] },
  {
    files: ['src/**/*.ts', 'test/**/*.ts'],
    languageOptions: { parser: tseslint.parser },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none', ignoreRestSiblings: true }],
      'no-var': 'error',
      'prefer-const': ['error', { destructuring: 'all' }],
      'no-debugger': 'error',
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'no-restricted-properties': ['error',
        { object: 'it', property: 'only', message: 'remove .only before committing' },
        { object: 'describe', property: 'only', message: 'remove .only before committing' }],
      'max-len': ['error', { code: 200, ignoreStrings: true, ignoreTemplateLiterals: true, ignoreRegExpLiterals: true, ignoreComments: true, ignoreUrls: true }],
    },
  },
);
