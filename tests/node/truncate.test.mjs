// @electric-sql/client recovering from a TRUNCATE: the shape is invalidated,
// the stream gets a 409 + must-refetch with a new handle, refetches from
// scratch, and its Shape ends equal to the table again (long-poll and SSE,
// and a client resuming from a saved handle/offset).

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
  sql,
} from './lib/helpers.mjs'

after(closeDb)

const TIMEOUT = { timeout: 60000 }
failOnElectricWarnings()

const conflicts = (requests) => requests.filter((r) => r.status === 409)

async function truncateAndRecover(t, table, options) {
  await sql(`CREATE TABLE ${table} (id int PRIMARY KEY, title text)`)
  await sql(`INSERT INTO ${table} SELECT i, 'before ' || i FROM generate_series(1, 5) i`)
  const s = openShape({ table }, options)
  t.after(() => s.close())
  assert.deepStrictEqual(sortById(await s.shape.rows), await queryRows(table))
  await sql(`UPDATE ${table} SET title = 'live' WHERE id = 1`)
  await shapeEquals(s.shape, () => queryRows(table))
  const oldHandle = s.stream.shapeHandle
  assert.ok(oldHandle)

  await sql(`TRUNCATE ${table}`)
  await eventually(() => s.log.controls.includes('must-refetch'), { what: 'a must-refetch' })
  const [conflict] = conflicts(s.requests)
  assert.ok(conflict, 'the stream was answered 409')
  assert.equal(conflict.url.searchParams.get('handle'), oldHandle)
  const newHandle = conflict.headers['electric-handle']
  assert.ok(newHandle && newHandle !== oldHandle, `409 carries a new handle (${newHandle})`)

  await sql(`INSERT INTO ${table} SELECT i, 'after ' || i FROM generate_series(3, 8) i`)
  await shapeEquals(s.shape, () => queryRows(table))
  assert.equal(s.stream.shapeHandle, newHandle)
  const refetch = s.requests.find((r) => r.url.searchParams.get('handle') === newHandle)
  assert.equal(refetch.url.searchParams.get('offset'), '-1', 'refetched from the start')
  assert.equal(refetch.url.searchParams.get('expired_handle'), oldHandle)

  // And it stays live on the new shape.
  await sql(`UPDATE ${table} SET title = 'again' WHERE id = 8`)
  await sql(`DELETE FROM ${table} WHERE id = 3`)
  await shapeEquals(s.shape, () => queryRows(table))
  s.log.assertClean()
  assert.deepStrictEqual(s.log.rowList, await queryRows(table))
  return s
}

test('long-poll stream: TRUNCATE → 409 must-refetch → Shape equals the table again', TIMEOUT, async (t) => {
  await truncateAndRecover(t, 'trunc_lp', {})
})

test('SSE stream: TRUNCATE → 409 must-refetch → Shape equals the table again', TIMEOUT, async (t) => {
  const s = await truncateAndRecover(t, 'trunc_sse', { liveSse: true })
  assert.ok(
    s.requests.some((r) => r.url.searchParams.get('live_sse') === 'true' && r.status === 200),
    'SSE was in use'
  )
})

test('a client resuming from a saved handle and offset after a TRUNCATE refetches', TIMEOUT, async (t) => {
  const table = 'trunc_resume'
  await sql(`CREATE TABLE ${table} (id int PRIMARY KEY, title text)`)
  await sql(`INSERT INTO ${table} SELECT i, 'before ' || i FROM generate_series(1, 5) i`)
  const first = openShape({ table })
  assert.deepStrictEqual(sortById(await first.shape.rows), await queryRows(table))
  const handle = first.stream.shapeHandle
  const offset = first.stream.lastOffset
  first.close()
  await sleep(50)

  await sql(`TRUNCATE ${table}`)
  await sql(`INSERT INTO ${table} VALUES (10, 'ten'), (11, 'eleven')`)
  const s = openShape({ table }, { handle, offset })
  t.after(() => s.close())
  await shapeEquals(s.shape, () => queryRows(table))
  assert.equal(s.requests[0].url.searchParams.get('handle'), handle)
  assert.equal(s.requests[0].url.searchParams.get('offset'), offset)
  assert.equal(s.requests[0].status, 409)
  assert.ok(s.log.controls.includes('must-refetch'))
  assert.notEqual(s.stream.shapeHandle, handle)
  s.log.assertClean()
})
