// Shared helpers of the conformance tests. Not a test file itself (node --test
// only picks up *.test.mjs here). The Rust driver tests/tests/conformance_node.rs
// runs every test file against its own cluster and sidecar and passes:
//   SIDECAR_URL   http://127.0.0.1:<port> of the sidecar
//   DATABASE_URL  postgres://... of the cluster (the `pg` package runs the SQL)
//   CONTROL_DIR   (sidecar-restart test only) directory for marker files

import assert from 'node:assert/strict'
import { existsSync, renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { after } from 'node:test'
import { Shape, ShapeStream } from '@electric-sql/client'
import pg from 'pg'

export function requireEnv(name) {
  const value = process.env[name]
  if (!value) {
    throw new Error(
      `${name} is not set: these tests are run by the Rust driver ` +
        '(cargo test --release -p pg_shapes_tests --test conformance_node), which starts a cluster and a sidecar'
    )
  }
  return value
}

export const SIDECAR_URL = requireEnv('SIDECAR_URL').replace(/\/$/, '')
export const SHAPE_URL = `${SIDECAR_URL}/v1/shape`
export const DATABASE_URL = requireEnv('DATABASE_URL')

// Short retry backoff (the default starts at 1 s and doubles to 32 s): only
// matters when a request fails, which in these tests is the sidecar restart.
export const FAST_BACKOFF = { initialDelay: 50, maxDelay: 500, multiplier: 1.5 }

// ---------------------------------------------------------------------------
// SQL

let pool
function db() {
  if (!pool) {
    pool = new pg.Pool({ connectionString: DATABASE_URL, max: 4 })
    pool.on('error', () => {}) // an idle client lost: the next query reports it
  }
  return pool
}

/** Runs one statement (or a multi-statement string without params). */
export async function sql(text, params) {
  return db().query(text, params)
}

/** Runs `fn(client)` inside BEGIN/COMMIT on one connection. */
export async function tx(fn) {
  const client = await db().connect()
  try {
    await client.query('BEGIN')
    const result = await fn(client)
    await client.query('COMMIT')
    return result
  } catch (e) {
    await client.query('ROLLBACK').catch(() => {})
    throw e
  } finally {
    client.release()
  }
}

export async function closeDb() {
  if (pool) {
    const p = pool
    pool = undefined
    await p.end()
  }
}

/** `SELECT <columns> FROM <table> [WHERE ...]` sorted by id, as the `pg` package types them. */
export async function queryRows(table, { columns = '*', where, params } = {}) {
  const res = await sql(`SELECT ${columns} FROM ${table}${where ? ` WHERE ${where}` : ''} ORDER BY id`, params)
  return res.rows
}

// ---------------------------------------------------------------------------
// Values

/** JSON with bigints as strings, for comparisons and messages. */
export function show(value) {
  return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v))
}

/** Rows sorted by `id` (numbers or bigints). */
export function sortById(rows) {
  return [...rows].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
}

// ---------------------------------------------------------------------------
// Waiting

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/**
 * Polls `check` (sync or async) until it returns without throwing and its
 * result is not `false`; rethrows its last error (an assertion's diff) after
 * `timeout` ms.
 */
export async function eventually(check, { timeout = 20000, interval = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    try {
      const ok = await check()
      if (ok !== false) return ok
      last = new Error(`${what}: still false`)
    } catch (e) {
      last = e
    }
    if (Date.now() >= deadline) {
      if (last instanceof Error) {
        last.message = `not within ${timeout} ms: ${what}\n${last.message}`
        throw last
      }
      throw new Error(`not within ${timeout} ms: ${what}: ${show(last)}`)
    }
    await sleep(interval)
  }
}

/** Waits until a Shape's rows equal `expected()` (rows sorted by id). */
export async function shapeEquals(shape, expected, opts = {}) {
  return eventually(
    async () => {
      const want = sortById(await expected())
      assert.deepStrictEqual(sortById(shape.currentRows), want)
    },
    { what: 'Shape rows equal the table', ...opts }
  )
}

// ---------------------------------------------------------------------------
// Recording what a stream does

/**
 * A `fetchClient` that records every request the client makes and the status
 * and content type of its response (SSE included: the client passes the same
 * fetch to its event-source reader).
 */
export function recordingFetch() {
  const requests = []
  const fetchClient = async (input, init = {}) => {
    const url = new URL(typeof input === 'string' ? input : input.url)
    const entry = {
      method: init.method ?? (typeof input === 'object' ? input.method : undefined) ?? 'GET',
      url,
      body: typeof init.body === 'string' ? init.body : undefined,
      status: undefined,
      contentType: undefined,
      error: undefined,
    }
    requests.push(entry)
    try {
      const res = await fetch(input, init)
      entry.status = res.status
      entry.contentType = res.headers.get('content-type')
      entry.headers = Object.fromEntries(res.headers.entries())
      return res
    } catch (e) {
      entry.error = e
      throw e
    }
  }
  return { fetchClient, requests }
}

/** `requests` whose URL is a live SSE request that the server answered as an event stream. */
export function sseResponses(requests) {
  return requests.filter(
    (r) =>
      r.url.searchParams.get('live_sse') === 'true' &&
      r.status === 200 &&
      (r.contentType ?? '').startsWith('text/event-stream')
  )
}

/**
 * Subscribes to a ShapeStream and keeps every message, checking as it goes
 * that no live change arrives twice (same key, lsn and op_position) and
 * applying changes strictly to its own copy of the rows: an insert of a key
 * already present, or an update/delete of a key not present, is recorded as a
 * violation (a duplicated or lost change). `must-refetch` clears the copy, as
 * every client does.
 */
export class MessageLog {
  constructor(stream, { mode = 'full' } = {}) {
    this.mode = mode
    this.batches = []
    this.changes = []
    this.controls = []
    this.rows = new Map()
    this.seen = new Map()
    this.duplicates = []
    this.violations = []
    this.errors = []
    this.upToDates = 0
    this.unsubscribe = stream.subscribe(
      (messages) => this.#onBatch(messages),
      (error) => this.errors.push(error)
    )
  }

  #onBatch(messages) {
    this.batches.push(messages)
    for (const m of messages) {
      if (m.headers?.control) {
        this.controls.push(m.headers.control)
        if (m.headers.control === 'up-to-date') this.upToDates++
        if (m.headers.control === 'must-refetch') this.rows.clear()
        continue
      }
      if (!('key' in m)) continue
      this.changes.push(m)
      const h = m.headers
      if (h.lsn !== undefined) {
        const id = `${m.key} lsn=${h.lsn} op=${h.op_position}`
        if (this.seen.has(id)) this.duplicates.push(id)
        this.seen.set(id, (this.seen.get(id) ?? 0) + 1)
      }
      this.#apply(m)
    }
  }

  #apply(m) {
    const { key } = m
    const op = m.headers.operation
    const at = `${op} ${key} (lsn ${m.headers.lsn ?? 'snapshot'}, op ${m.headers.op_position ?? '-'})`
    if (op === 'insert') {
      if (this.rows.has(key)) this.violations.push(`${at}: already present (a change applied twice?)`)
      this.rows.set(key, { ...m.value })
    } else if (op === 'update') {
      const row = this.rows.get(key)
      if (!row) {
        if (this.mode !== 'changes_only') this.violations.push(`${at}: not present (a change lost?)`)
        return
      }
      Object.assign(row, m.value)
    } else if (op === 'delete') {
      if (!this.rows.delete(key) && this.mode !== 'changes_only') {
        this.violations.push(`${at}: not present (a change lost?)`)
      }
    } else {
      this.violations.push(`${at}: unknown operation`)
    }
  }

  /** The rows of the strict copy, sorted by id. */
  get rowList() {
    return sortById([...this.rows.values()])
  }

  /** Live changes (those with an lsn). */
  get liveChanges() {
    return this.changes.filter((m) => m.headers.lsn !== undefined)
  }

  /** Fails on duplicates, strict-apply violations and stream errors. */
  assertClean(label = 'stream') {
    assert.deepStrictEqual(this.duplicates, [], `${label}: changes received more than once`)
    assert.deepStrictEqual(this.violations, [], `${label}: changes that do not apply`)
    assert.deepStrictEqual(this.errors.map(String), [], `${label}: stream errors`)
  }
}

/** Waits until the stream has seen `n` more up-to-date messages than `since`. */
export async function upToDate(log, since = 0, opts = {}) {
  return eventually(() => log.upToDates > since, { what: 'an up-to-date message', ...opts })
}

/**
 * Collects the client's `[Electric] ...` console warnings: each one names a
 * server or proxy misbehaviour (stale handles, fast retry loops, ignored
 * responses, SSE falling back to long polling).
 */
export function captureElectricWarnings() {
  const warnings = []
  const original = console.warn
  console.warn = (...args) => {
    const text = args.map((a) => (a instanceof Error ? '' : String(a))).join(' ')
    if (text.startsWith('[Electric]')) warnings.push(text)
    original.apply(console, args)
  }
  return {
    warnings,
    restore() {
      console.warn = original
    },
  }
}

/**
 * Fails the test file if the client printed any `[Electric]` warning while it
 * ran: call once at the top level of a file.
 */
export function failOnElectricWarnings(what = 'the client warned about the server') {
  const captured = captureElectricWarnings()
  after(() => {
    captured.restore()
    assert.deepStrictEqual(captured.warnings, [], what)
  })
}

// ---------------------------------------------------------------------------
// Marker files (the sidecar-restart test's handshake with the Rust driver)

export function writeMarker(dir, name, text = '') {
  // rename is atomic: the driver never sees a half-written marker
  writeFileSync(join(dir, `${name}.tmp`), text)
  renameSync(join(dir, `${name}.tmp`), join(dir, name))
}

export async function waitForMarker(dir, name, timeout) {
  await eventually(() => existsSync(join(dir, name)), { timeout, interval: 50, what: `marker file ${name}` })
}

// ---------------------------------------------------------------------------
// Opening streams

/**
 * A ShapeStream on `params` (table, where, columns, ...) with a Shape and a
 * MessageLog on it, recording its requests. `close()` stops everything so
 * that node can exit.
 */
export function openShape(params, options = {}) {
  const aborter = new AbortController()
  const { fetchClient, requests } = recordingFetch()
  const stream = new ShapeStream({
    url: SHAPE_URL,
    params,
    signal: aborter.signal,
    fetchClient,
    backoffOptions: FAST_BACKOFF,
    ...options,
  })
  const log = new MessageLog(stream, { mode: options.log })
  const shape = new Shape(stream)
  return {
    stream,
    shape,
    log,
    requests,
    close() {
      shape.unsubscribeAll()
      stream.unsubscribeAll()
      aborter.abort()
    },
  }
}
