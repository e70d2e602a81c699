// One run, one folder: a training run holds `<out>/.kshare-run.lock` (created with O_EXCL,
// holding the owner's PID, host and start time) from its start to its end. A second process
// is refused with the holder's PID; a lock left by a process that no longer exists (kill -9,
// power loss) is reported and taken over. While the lock is held no other kshare process
// writes to the folder, so temp files of dead processes found there are stale and removed.
// The lock appears atomically with its content (hard link of a private file), so a reader never
// sees it empty.
//
// Hand-written rather than proper-lockfile: that package detects staleness by mtime (a live but
// busy run must keep touching the lock) and does not record who holds it.
import { linkSync, readFileSync, readdirSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const LOCK_FILE = '.kshare-run.lock';

interface LockRecord {
  pid: number;
  host: string;
  started: string;
  command: string;
}

export interface RunLock {
  file: string;
  /** Notes for the log: a stale lock taken over, stale temp files removed. */
  notes: string[];
  /** Removes the lock (idempotent; also done at process exit). */
  release(): void;
}

export class RunLockedError extends Error {
  constructor(
    message: string,
    readonly holderPid: number,
  ) {
    super(message);
  }
}

/** Whether a process with this PID exists on this machine (EPERM: it exists, owned by someone else). */
export function processAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid < 1) return false;
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readRecord(file: string): LockRecord | null {
  try {
    const r = JSON.parse(readFileSync(file, 'utf8')) as LockRecord;
    return Number.isInteger(r.pid) ? r : null;
  } catch {
    return null;
  }
}

/**
 * Takes the run folder's lock or throws RunLockedError naming the holder's PID. A lock whose
 * process is gone is replaced (and said so in `notes`), as is an unreadable (damaged) lock.
 */
export function acquireRunLock(outDir: string): RunLock {
  const file = path.join(outDir, LOCK_FILE);
  const notes: string[] = [];
  const record: LockRecord = {
    pid: process.pid,
    host: os.hostname(),
    started: new Date().toISOString(),
    command: process.argv.slice(1).join(' ').slice(0, 300),
  };
  // The record is written to a private file first and hard-linked into place: link() fails
  // if the lock exists, and a lock that exists is never empty (no half-written window).
  const mine = `${file}.${process.pid}.tmp`;
  writeFileSync(mine, JSON.stringify(record) + '\n');
  try {
    takeLock(file, mine, record, outDir, notes);
  } finally {
    try {
      unlinkSync(mine);
    } catch {
      /* gone */
    }
  }
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    process.off('exit', release);
    // Only our own lock: never remove one another process took over.
    if (readRecord(file)?.pid === process.pid) {
      try {
        unlinkSync(file);
      } catch {
        /* already gone */
      }
    }
  };
  // Exit (also after an uncaught error or process.exit on a second Ctrl-C) releases it; a
  // SIGKILL leaves it behind, and the next run sees its process is gone.
  process.on('exit', release);
  notes.push(...removeStaleTemps(outDir));
  return { file, notes, release };
}

function takeLock(file: string, mine: string, record: LockRecord, outDir: string, notes: string[]): void {
  for (let attempt = 0; ; attempt++) {
    try {
      linkSync(mine, file);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 3) throw e;
      const held = readRecord(file);
      let ino: number;
      try {
        ino = statSync(file).ino;
      } catch {
        continue; // released meanwhile: try again
      }
      if (held && held.host !== record.host) {
        throw new RunLockedError(
          `${outDir} is in use by process ${held.pid} on host ${held.host} (since ${held.started}); if that run is gone, delete ${file}`,
          held.pid,
        );
      }
      if (held && processAlive(held.pid)) {
        throw new RunLockedError(
          `${outDir} is in use by process ${held.pid} (started ${held.started}${held.command ? `: ${held.command}` : ''}); two runs cannot share a run folder: ` +
            `wait for it to finish, stop it, or choose another --out (if no kshare run is using it, delete ${file})`,
          held.pid,
        );
      }
      // Stale: remove it only if it is still the file we looked at, then race for a new one.
      try {
        if (statSync(file).ino === ino) unlinkSync(file);
      } catch {
        /* someone else removed it */
      }
      notes.push(held ? `removed a stale lock of process ${held.pid} (started ${held.started}), which no longer runs` : `removed a damaged lock file ${file}`);
    }
  }
}

/**
 * Temp files kshare writes next to the files it replaces (`.checkpoint.safetensors.<pid>.<hex>.tmp`,
 * `.summary.json.<pid>.tmp`, `log.jsonl.<pid>.tmp`): the pid says whose they are.
 */
const TEMP_RE = /^\.?[^/]*?\.(\d+)(?:\.[0-9a-f]+)?\.tmp$/;

/** Removes temp files of processes that no longer exist; returns one note per file removed. */
export function removeStaleTemps(outDir: string): string[] {
  const notes: string[] = [];
  let names: string[];
  try {
    names = readdirSync(outDir);
  } catch {
    return notes;
  }
  for (const name of names) {
    const m = TEMP_RE.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    try {
      const size = statSync(path.join(outDir, name)).size;
      unlinkSync(path.join(outDir, name));
      notes.push(`removed ${name} (${size} bytes), a temp file left by process ${pid}, which no longer runs`);
    } catch {
      /* gone meanwhile */
    }
  }
  return notes;
}
