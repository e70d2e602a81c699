// Tests that need something npm does not install (a system program, Python with numpy, a
// browser) skip without it on a developer's machine. Under CI (the CI environment variable
// set) a missing prerequisite fails the run instead, so a CI image that lacks one cannot pass
// by skipping the tests that need it.
import { test } from 'node:test';

/** CI is set to anything but '', '0' or 'false' (CI services set CI=true; .ci/run sets it too). */
export const inCI = !['', '0', 'false'].includes((process.env.CI ?? '').trim().toLowerCase());

/**
 * The `skip` option for the tests that need `what`: false when it is `present`, otherwise the
 * reason (with `fix`, how to get it). Under CI it also registers a failing test that says what
 * is missing. Call once per prerequisite and file, and pass the result to each test that needs it.
 */
export function skipUnless(present: boolean, what: string, fix: string): false | string {
  if (present) return false;
  const reason = `needs ${what}, not found: ${fix}`;
  if (inCI) {
    test(`prerequisite: ${what}`, () => {
      throw new Error(`${reason}. CI is set, so a missing prerequisite fails the run instead of skipping its tests`);
    });
  }
  return reason;
}
