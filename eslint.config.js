// ESLint: JavaScript's and typescript-eslint's recommended rules, unused variables as errors.
// Formatting is Prettier's job (.prettierrc.json), so no stylistic rules here.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'native/build/', 'bench/results/', 'data/', 'runs/', 'shared/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // `let { a, b } = ...` where only some are reassigned stays one statement.
      'prefer-const': ['error', { destructuring: 'all' }],
    },
  },
  {
    // The browser demo: plain scripts with browser globals.
    files: ['web/**/*.js'],
    languageOptions: {
      sourceType: 'script',
      globals: {
        window: 'readonly',
        document: 'readonly',
        location: 'readonly',
        URLSearchParams: 'readonly',
        fetch: 'readonly',
        console: 'readonly',
        URL: 'readonly',
        Image: 'readonly',
        performance: 'readonly',
        FileReader: 'readonly',
        createImageBitmap: 'readonly',
        OffscreenCanvas: 'readonly',
        navigator: 'readonly',
        Float32Array: 'readonly',
        setTimeout: 'readonly',
      },
    },
  },
);
