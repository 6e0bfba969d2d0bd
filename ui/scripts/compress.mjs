// Writes .gz and .br siblings for every text asset in dist/ (node's zlib only) and
// prints the size report: JS of the initial load (the entry chunk and its static
// imports, read from dist/.vite/manifest.json) and of the lazy chunks.
import { brotliCompressSync, constants, gzipSync } from 'node:zlib';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = fileURLToPath(new URL('../dist/', import.meta.url));
const COMPRESS = /\.(js|css|html|svg|json)$/;
const sizes = new Map(); // path relative to dist -> {raw, gz, br}

function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    // dist/.vite holds the build manifest: read here, never served.
    if (statSync(p).isDirectory()) {
      if (name !== '.vite') walk(p);
    }
    else if (COMPRESS.test(name)) compress(p);
  }
}

function compress(p) {
  const raw = readFileSync(p);
  const gz = gzipSync(raw, { level: 9 });
  const br = brotliCompressSync(raw, {
    params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: raw.length },
  });
  writeFileSync(p + '.gz', gz);
  writeFileSync(p + '.br', br);
  sizes.set(relative(dist, p).split('\\').join('/'), { raw: raw.length, gz: gz.length, br: br.length });
}

walk(dist);

const manifest = JSON.parse(readFileSync(join(dist, '.vite/manifest.json'), 'utf8'));
const entryKey = Object.keys(manifest).find((k) => manifest[k].isEntry);
if (!entryKey) throw new Error('no entry chunk in dist/.vite/manifest.json');
const initial = new Set();
const visit = (key) => {
  const c = manifest[key];
  if (!c || initial.has(c.file)) return;
  initial.add(c.file);
  for (const i of c.imports ?? []) visit(i);
};
visit(entryKey);
const css = new Set([...sizes.keys()].filter((f) => f.endsWith('.css')));
const allJs = [...sizes.keys()].filter((f) => f.endsWith('.js'));
const lazy = allJs.filter((f) => !initial.has(f));

const sum = (files) =>
  files.reduce((a, f) => {
    const s = sizes.get(f) ?? { raw: 0, gz: 0, br: 0 };
    return { raw: a.raw + s.raw, gz: a.gz + s.gz, br: a.br + s.br };
  }, { raw: 0, gz: 0, br: 0 });
const kb = (n) => (n / 1024).toFixed(1).padStart(7) + ' KB';
const row = (label, s) => console.log(`${label.padEnd(34)} raw ${kb(s.raw)}   gzip ${kb(s.gz)}   brotli ${kb(s.br)}`);

console.log('\nSize report (dist/)');
for (const f of [...sizes.keys()].sort()) row('  ' + f, sizes.get(f));
console.log('');
const init = sum([...initial]);
row(`initial JS (${initial.size} file${initial.size === 1 ? '' : 's'})`, init);
row(`lazy JS (${lazy.length} file${lazy.length === 1 ? '' : 's'})`, sum(lazy));
row(`CSS (${css.size} file${css.size === 1 ? '' : 's'})`, sum([...css]));
const BUDGET = 300 * 1024;
if (init.gz > BUDGET) {
  console.error(`\ninitial JS is ${init.gz} bytes gzip, over the ${BUDGET}-byte budget`);
  process.exit(1);
}
