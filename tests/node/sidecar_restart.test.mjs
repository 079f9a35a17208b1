// Clients live across a sidecar restart: a long-poll ShapeStream, an SSE
// ShapeStream, a long-poll stream with a WHERE, and pglite-sync. The Rust
// driver (tests/tests/conformance_node.rs) stops the sidecar (SIGTERM or
// SIGKILL), writes rows while it is down, starts a new sidecar on the same
// port, and writes more. The clients must resume from their offsets with
// nothing lost and nothing repeated.
//
// Handshake through marker files in CONTROL_DIR:
//   node writes `ready`  when every client is live and equal to the table;
//   the driver writes `go` once the new sidecar is up and its writes are done.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import { PGlite } from '@electric-sql/pglite'
import { electricSync } from '@electric-sql/pglite-sync'

import {
  captureElectricWarnings,
  closeDb,
  eventually,
  FAST_BACKOFF,
  openShape,
  queryRows,
  recordingFetch,
  requireEnv,
  SHAPE_URL,
  shapeEquals,
  sql,
  tx,
  upToDate,
  waitForMarker,
  writeMarker,
} from './lib/helpers.mjs'

after(closeDb)

const CONTROL_DIR = requireEnv('CONTROL_DIR')
const TABLE = 'restart_items' // the driver writes to it too
const WHERE = 'n % 2 = 0'

test('clients resume after a sidecar restart with nothing lost and nothing repeated', { timeout: 240000 }, async (t) => {
  const warnings = captureElectricWarnings()
  t.after(() => warnings.restore())
  await sql(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, title text, n int)`)
  await sql(`INSERT INTO ${TABLE} SELECT i, 'initial ' || i, i FROM generate_series(1, 20) i`)

  const pglite = PGlite.create({ extensions: { electric: electricSync() } })
  const clients = {
    longPoll: openShape({ table: TABLE }),
    sse: openShape({ table: TABLE }, { liveSse: true }),
    filtered: openShape({ table: TABLE, where: WHERE }),
  }
  t.after(() => Object.values(clients).forEach((c) => c.close()))
  const expected = {
    longPoll: () => queryRows(TABLE),
    sse: () => queryRows(TABLE),
    filtered: () => queryRows(TABLE, { where: WHERE }),
  }

  const db = await pglite
  t.after(() => db.close())
  await db.exec(`CREATE TABLE ${TABLE} (id int PRIMARY KEY, title text, n int)`)
  const syncErrors = []
  const syncAborter = new AbortController()
  const syncFetch = recordingFetch()
  const synced = await db.electric.syncShapeToTable({
    shape: {
      url: SHAPE_URL,
      params: { table: TABLE },
      signal: syncAborter.signal,
      backoffOptions: FAST_BACKOFF,
      fetchClient: syncFetch.fetchClient,
    },
    table: TABLE,
    primaryKey: ['id'],
    shapeKey: null,
    onError: (e) => syncErrors.push(e),
  })
  t.after(() => {
    synced.unsubscribe()
    syncAborter.abort()
  })
  const pgliteEquals = (what) =>
    eventually(
      async () => {
        assert.deepStrictEqual(syncErrors.map(String), [], 'pglite-sync errors')
        const got = (await db.query(`SELECT id, title, n FROM ${TABLE} ORDER BY id`)).rows.map((r) => ({ ...r }))
        assert.deepStrictEqual(got, await queryRows(TABLE))
      },
      { timeout: 60000, what: `pglite-sync table equals the server (${what})` }
    )

  const allEqual = async (what) => {
    for (const [name, c] of Object.entries(clients)) {
      await shapeEquals(c.shape, expected[name], { timeout: 60000, what: `${name}: Shape equals the table (${what})` })
    }
    await pgliteEquals(what)
  }

  // Live before the restart: a few transactions through every client.
  await allEqual('initial sync')
  await sql(`UPDATE ${TABLE} SET title = 'before restart' WHERE id <= 3`)
  await tx(async (c) => {
    await c.query(`INSERT INTO ${TABLE} VALUES (21, 'before restart', 21), (22, 'before restart', 22)`)
    await c.query(`DELETE FROM ${TABLE} WHERE id = 20`)
  })
  await allEqual('live before the restart')
  for (const c of Object.values(clients)) await upToDate(c.log, 0)
  assert.ok(
    clients.sse.requests.some((r) => r.url.searchParams.get('live_sse') === 'true' && r.status === 200),
    'the SSE client is on an event stream'
  )
  const requestsBefore = Object.fromEntries(Object.entries(clients).map(([k, c]) => [k, c.requests.length]))
  const changesBefore = Object.fromEntries(Object.entries(clients).map(([k, c]) => [k, c.log.liveChanges.length]))

  writeMarker(CONTROL_DIR, 'ready')
  t.diagnostic('ready: waiting for the driver to restart the sidecar')
  await waitForMarker(CONTROL_DIR, 'go', 120000)
  t.diagnostic('go: the new sidecar is up')

  await allEqual('after the restart')
  for (const [name, c] of Object.entries(clients)) {
    c.log.assertClean(name)
    assert.deepStrictEqual(c.log.rowList, await expected[name](), `${name}: every change applied exactly once`)
    const after = c.requests.slice(requestsBefore[name])
    const failed = after.filter((r) => r.error).length
    assert.ok(failed > 0, `${name}: saw the sidecar down (a request failed)`)
    assert.ok(c.log.liveChanges.length > changesBefore[name], `${name}: received changes after the restart`)
    assert.ok(!c.log.controls.includes('must-refetch'), `${name}: resumed, no refetch`)
    assert.ok(
      !after.some((r) => r.url.searchParams.get('offset') === '-1'),
      `${name}: resumed from its offset, never from -1`
    )
    t.diagnostic(
      `${name}: ${after.length} requests after ready (${failed} failed), ${c.log.liveChanges.length} live changes`
    )
  }
  assert.ok(!syncFetch.requests.some((r) => r.url.searchParams.get('offset') === '-1' && r !== syncFetch.requests[0]))
  for (const w of warnings.warnings) t.diagnostic(`client warning: ${w.slice(0, 160)}`)
})
