// Types every Grafana dashboard against @grafana/schema's Dashboard, strictly.
//
// JSON imported into TypeScript is never checked for excess properties, so each
// dashboard is written out as an object literal annotated with the schema's type
// (build/<name>.ts) and compiled with `tsc --noEmit --strict`: a misspelt field or a
// value of the wrong type is an error. Panel targets are typed as Prometheus queries
// (prom-target.ts), which the schema leaves open.
//
// Usage: node check.mjs [DIR]   (DIR defaults to ../../deploy/grafana)
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dir = resolve(process.argv[2] ?? join(here, '..', '..', 'deploy', 'grafana'));
const build = join(here, 'build');
rmSync(build, { recursive: true, force: true });
mkdirSync(build);

const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
if (files.length === 0) {
  console.error(`no dashboards (*.json) in ${dir}`);
  process.exit(1);
}
const sources = [];
for (const file of files) {
  const dashboard = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  const panels = (dashboard.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]);
  const targets = panels.flatMap((p) => p.targets ?? []);
  const name = basename(file, '.json').replace(/[^A-Za-z0-9_]/g, '_');
  const source = join(build, `${name}.ts`);
  writeFileSync(
    source,
    [
      `// Generated from ${file} by check.mjs.`,
      `import type { Dashboard } from '@grafana/schema';`,
      `import type { PromTarget } from '../prom-target';`,
      `export const dashboard: Dashboard = ${JSON.stringify(dashboard, null, 2)};`,
      `export const targets: PromTarget[] = ${JSON.stringify(targets, null, 2)};`,
      '',
    ].join('\n'),
  );
  sources.push(source);
}
const tsc = join(here, 'node_modules', 'typescript', 'bin', 'tsc');
const flags = ['--noEmit', '--strict', '--target', 'es2022', '--module', 'es2022',
  '--moduleResolution', 'bundler', '--skipLibCheck', '--pretty', 'false'];
try {
  execFileSync(process.execPath, [tsc, ...flags, ...sources], { cwd: here, stdio: 'inherit' });
} catch {
  console.error(`dashboard schema check failed (${dir})`);
  process.exit(1);
}
console.log(`${files.length} dashboards match @grafana/schema: ${files.join(', ')}`);
