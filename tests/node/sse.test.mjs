// @electric-sql/client with `liveSse: true`: live changes arrive over
// server-sent events, across the server ending each event stream after its
// SSE timeout (the driver runs this file's sidecar with a short one, passed as
// SSE_TIMEOUT_MS), with nothing lost or repeated when the client reconnects at
// the offset it derives from `global_last_seen_lsn`.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import {
  failOnElectricWarnings,
  closeDb,
  eventually,
  openShape,
  queryRows,
  shapeEquals,
  sleep,
  sortById,
  sseResponses,
  sql,
  tx,
} from './lib/helpers.mjs'

after(closeDb)

const TIMEOUT = { timeout: 90000 }
const SSE_TIMEOUT_MS = Number(process.env.SSE_TIMEOUT_MS ?? 60000)
failOnElectricWarnings('the client warned about the server (e.g. SSE falling back)')

/** Live requests made after the stream first became up to date. */
function liveRequests(requests) {
  return requests.filter((r) => r.url.searchParams.get('live') === 'true')
}

test('live changes over SSE, across server-side stream ends, each exactly once', TIMEOUT, async (t) => {
  await sql(`CREATE TABLE sse_items (id int PRIMARY KEY, title text, n int)`)
  await sql(`INSERT INTO sse_items SELECT i, 'row ' || i, i FROM generate_series(1, 10) i`)
  const s = openShape({ table: 'sse_items' }, { liveSse: true })
  t.after(() => s.close())
  assert.deepStrictEqual(sortById(await s.shape.rows), await queryRows('sse_items'))

  // Writes spread over more than two SSE timeouts: single changes and
  // transactions of several changes (which share one lsn).
  const span = Math.min(2.5 * SSE_TIMEOUT_MS, 8000)
  const start = Date.now()
  let next = 11
  let i = 0
  while (Date.now() - start < span) {
    const id = next++
    if (i % 3 === 0) {
      await sql(`INSERT INTO sse_items VALUES (${id}, 'new', ${id})`)
    } else {
      await tx(async (c) => {
        await c.query(`INSERT INTO sse_items VALUES (${id}, 'tx', ${id})`)
        await c.query(`UPDATE sse_items SET n = n + 1, title = 'upd ${i}' WHERE id = ${(i % 10) + 1}`)
        await c.query(`DELETE FROM sse_items WHERE id = ${id - 5} AND id > 10`)
      })
    }
    i++
    await sleep(150)
  }
  await shapeEquals(s.shape, () => queryRows('sse_items'))
  s.log.assertClean()
  assert.deepStrictEqual(s.log.rowList, await queryRows('sse_items'))

  const live = liveRequests(s.requests)
  assert.ok(live.length > 0, 'live requests were made')
  assert.deepStrictEqual(
    live.filter((r) => r.url.searchParams.get('live_sse') !== 'true').map((r) => r.url.search),
    [],
    'every live request used SSE'
  )
  const sse = sseResponses(s.requests)
  assert.ok(sse.length >= 1, 'the server answered with an event stream')
  for (const r of sse) {
    assert.equal(r.url.searchParams.get('experimental_live_sse'), 'true')
    assert.ok(r.headers['electric-handle'] && r.headers['electric-offset'] && r.headers['electric-cursor'], r.url.search)
  }
  if (SSE_TIMEOUT_MS <= 3000) {
    assert.ok(sse.length >= 3, `reconnected after the server ended event streams (${sse.length} streams)`)
  }
  assert.ok(s.log.liveChanges.length >= i, `${s.log.liveChanges.length} live changes for ${i} transactions`)
  t.diagnostic(`${i} transactions, ${s.log.liveChanges.length} changes, ${sse.length} event streams, ${live.length} live requests`)
})

test('a transaction larger than one SSE batch arrives whole over SSE', TIMEOUT, async (t) => {
  await sql(`CREATE TABLE sse_big (id int PRIMARY KEY, payload text)`)
  const s = openShape({ table: 'sse_big' }, { liveSse: true })
  t.after(() => s.close())
  assert.deepStrictEqual(await s.shape.rows, [])
  await eventually(() => sseResponses(s.requests).length > 0, { what: 'an SSE stream open' })

  await sql(`INSERT INTO sse_big SELECT i, repeat('x', 100) || i FROM generate_series(1, 1500) i`)
  await sql(`UPDATE sse_big SET payload = 'odd' WHERE id % 2 = 1`)
  await sql(`DELETE FROM sse_big WHERE id > 1000`)
  await shapeEquals(s.shape, () => queryRows('sse_big'))
  s.log.assertClean()
  assert.equal(s.log.liveChanges.length, 1500 + 750 + 500)
  // One up-to-date per transaction at most: a client never sees half a transaction.
  const batches = s.log.batches.filter((b) => b.some((m) => m.headers?.lsn !== undefined))
  for (const b of batches) {
    const lsns = new Set(b.filter((m) => m.headers?.lsn !== undefined).map((m) => m.headers.lsn))
    for (const lsn of lsns) {
      const inBatch = b.filter((m) => m.headers?.lsn === lsn).length
      const total = s.log.liveChanges.filter((m) => m.headers.lsn === lsn).length
      assert.equal(inBatch, total, `transaction ${lsn} split across batches`)
    }
  }
  assert.deepStrictEqual(
    liveRequests(s.requests).filter((r) => r.url.searchParams.get('live_sse') !== 'true').length,
    0,
    'every live request used SSE'
  )
})
