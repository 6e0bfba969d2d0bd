/// <reference types="vitest/config" />
import { defineConfig } from 'vite';

// The control API during `npm run dev` (a demo: see README.md).
const api = process.env.TESSERA_API ?? 'http://127.0.0.201:7400';

export default defineConfig({
  base: '/',
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: ['es2019', 'chrome80', 'firefox78', 'safari13'],
    manifest: true,
    cssCodeSplit: false,
    // Everything is a file: no data: URLs for scripts, nothing inlined into index.html.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    reportCompressedSize: false,
  },
  server: {
    host: '127.0.0.201',
    port: 5173,
    strictPort: true,
    proxy: { '/api': { target: api, changeOrigin: false } },
  },
  preview: { host: '127.0.0.201', port: 4173, strictPort: true, proxy: { '/api': { target: api } } },
  test: {
    environment: 'jsdom',
    include: ['tests/**/*.test.ts', 'tests/**/*.test.tsx'],
  },
});
