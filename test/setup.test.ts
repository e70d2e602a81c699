// Set-up is quiet and honest: every dependency's `engines` accepts the Node version kshare
// says it needs, npm prints no warning a user cannot act on, and scripts/setup.sh stops with
// a clear message on a machine with too old a Node (Debian 12's own nodejs is 18).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import semver from 'semver';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const pkg = JSON.parse(readFileSync(path.join(repo, 'package.json'), 'utf8')) as { engines: { node: string } };
const lock = JSON.parse(readFileSync(path.join(repo, 'package-lock.json'), 'utf8')) as {
  packages: Record<string, { version?: string; engines?: { node?: string }; dev?: boolean }>;
};

test("every locked dependency's engines field accepts the oldest Node kshare supports", () => {
  const oldest = semver.minVersion(pkg.engines.node)!;
  assert.ok(oldest, `engines.node '${pkg.engines.node}'`);
  const refused = Object.entries(lock.packages)
    .filter(([name, p]) => name && p.engines?.node && !semver.satisfies(oldest, p.engines.node))
    .map(([name, p]) => `${name}@${p.version} needs node ${p.engines!.node}`);
  assert.deepEqual(refused, [], `kshare says node ${pkg.engines.node}`);
  // The README states the same requirement.
  assert.match(readFileSync(path.join(repo, 'README.md'), 'utf8'), new RegExp(`Node\\.js >= ${oldest.major}\\.${oldest.minor}`));
});

test('npm and npx print no warnings in this project', () => {
  const r = spawnSync('npm', ['exec', '--no', '--', 'tsc', '--version'], { cwd: repo, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /npm warn/i, r.stderr);
});

test('setup.sh stops at once with a clear message when node is too old', () => {
  const bin = mkdtempSync(path.join(tmpdir(), 'kshare-old-node-'));
  try {
    // A stand-in for Debian 12's node 18 (and an npm next to it).
    writeFileSync(
      path.join(bin, 'node'),
      `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} -e 'Object.defineProperty(process.versions, "node", { value: "18.19.0" }); const a = process.argv.slice(1); if (a[0] === "-p") console.log(eval(a[1])); else if (a[0] === "-e") eval(a[1]);' -- "$@"\n`,
    );
    writeFileSync(path.join(bin, 'npm'), '#!/bin/sh\necho npm should not run >&2; exit 3\n');
    chmodSync(path.join(bin, 'node'), 0o755);
    chmodSync(path.join(bin, 'npm'), 0o755);
    const r = spawnSync('bash', [path.join(repo, 'scripts/setup.sh')], { encoding: 'utf8', env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /^setup: kshare needs Node\.js >= 20\.19; this node \(.*\) is 18\.19\.0, likely Debian 12's own nodejs\.$/m);
    assert.match(r.stderr, /install Node\.js 20 or 22 with npm/);
    assert.equal(r.stdout, '', 'nothing was installed or built');
  } finally {
    rmSync(bin, { recursive: true, force: true });
  }
});
