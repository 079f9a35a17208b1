// @electric-sql/client with `log: 'changes_only'`: no initial snapshot, rows
// loaded on demand with requestSnapshot (subset snapshots over GET query
// parameters and over a POST body), then live changes applied on top.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import {
  failOnElectricWarnings,
  closeDb,
  eventually,
  openShape,
  queryRows,
  shapeEquals,
  show,
  sleep,
  sortById,
  sql,
  upToDate,
} from './lib/helpers.mjs'

after(closeDb)

const TIMEOUT = { timeout: 60000 }
failOnElectricWarnings()

async function table(name, rows = 12) {
  await sql(`CREATE TABLE ${name} (id int PRIMARY KEY, owner int, n int, title text)`)
  await sql(`INSERT INTO ${name} SELECT i, i % 3, i, 'row ' || i FROM generate_series(1, ${rows}) i`)
}

/** The table's rows with these ids: what a changes_only Shape holds after loading them. */
function rowsWithIds(name, ids) {
  return () => queryRows(name, { where: 'id = ANY($1)', params: [[...ids]] })
}

const subsetRequests = (requests) =>
  requests.filter((r) => r.method === 'POST' || [...r.url.searchParams.keys()].some((k) => k.startsWith('subset__')))

test('GET requestSnapshot loads a subset, then live changes apply to it', TIMEOUT, async (t) => {
  await table('co_get')
  const s = openShape({ table: 'co_get' }, { log: 'changes_only' })
  t.after(() => s.close())

  assert.deepStrictEqual(await s.shape.rows, [], 'changes_only starts empty')
  assert.equal(s.requests[0].url.searchParams.get('log'), 'changes_only')
  assert.deepStrictEqual(s.log.changes, [])

  await s.shape.requestSnapshot({ where: 'owner = $1', params: { 1: '1' }, orderBy: 'id', limit: 3 })
  const loaded = new Set([1, 4, 7])
  assert.deepStrictEqual(sortById(s.shape.currentRows), await rowsWithIds('co_get', loaded)())

  const [req] = subsetRequests(s.requests)
  assert.equal(req.method, 'GET')
  assert.equal(req.status, 200)
  assert.equal(req.url.searchParams.get('subset__where'), 'owner = $1')
  assert.deepStrictEqual(JSON.parse(req.url.searchParams.get('subset__params')), { 1: '1' })
  assert.equal(req.url.searchParams.get('subset__order_by'), 'id')
  assert.equal(req.url.searchParams.get('subset__limit'), '3')

  await sql(`UPDATE co_get SET title = 'changed' WHERE id = 4`) // loaded: applied
  await sql(`UPDATE co_get SET title = 'not loaded' WHERE id = 2`) // not loaded: ignored by Shape
  await sql(`INSERT INTO co_get VALUES (100, 1, 100, 'new')`) // inserts always arrive
  await sql(`DELETE FROM co_get WHERE id = 7`)
  loaded.add(100)
  loaded.delete(7)
  await shapeEquals(s.shape, rowsWithIds('co_get', loaded))
  assert.ok(!s.shape.currentRows.some((r) => r.id === 2), 'an update of a row never loaded does not create it')

  // A second snapshot adds to the rows already there.
  await s.shape.requestSnapshot({ where: 'id BETWEEN $1 AND $2', params: { 1: '2', 2: '3' } })
  loaded.add(2).add(3)
  await shapeEquals(s.shape, rowsWithIds('co_get', loaded))
  assert.equal(s.shape.currentRows.find((r) => r.id === 2).title, 'not loaded')
  assert.ok(s.stream.isUpToDate || (await upToDate(s.log, 0)))
})

test('POST requestSnapshot (subsetMethod and per-request method), fetchSnapshot does not inject', TIMEOUT, async (t) => {
  await table('co_post')
  const s = openShape({ table: 'co_post' }, { log: 'changes_only', subsetMethod: 'POST' })
  t.after(() => s.close())
  assert.deepStrictEqual(await s.shape.rows, [])

  // ORDER BY n DESC LIMIT 2 OFFSET 1 over n > 7: rows 11 and 10.
  await s.shape.requestSnapshot({ where: 'n > $1', params: { 1: 7 }, orderBy: 'n DESC', limit: 2, offset: 1 })
  const loaded = new Set([11, 10])
  assert.deepStrictEqual(sortById(s.shape.currentRows), await rowsWithIds('co_post', loaded)())

  const [post] = subsetRequests(s.requests)
  assert.equal(post.method, 'POST')
  assert.equal(post.status, 200)
  assert.ok(![...post.url.searchParams.keys()].some((k) => k.startsWith('subset__')), 'subset in the body only')
  assert.deepStrictEqual(JSON.parse(post.body), { where: 'n > $1', params: { 1: 7 }, order_by: 'n DESC', limit: 2, offset: 1 })

  // method: 'GET' overrides the stream's subsetMethod for one request.
  await s.shape.requestSnapshot({ where: 'id = $1', params: { 1: '1' }, method: 'GET' })
  loaded.add(1)
  const get = subsetRequests(s.requests).at(-1)
  assert.equal(get.method, 'GET')
  assert.equal(get.url.searchParams.get('subset__where'), 'id = $1')
  await shapeEquals(s.shape, rowsWithIds('co_post', loaded))

  // fetchSnapshot returns the rows with snapshot metadata and leaves the Shape alone.
  const before = sortById(s.shape.currentRows)
  const fetched = await s.stream.fetchSnapshot({ where: 'owner = $1', params: { 1: '0' }, orderBy: 'id' })
  assert.deepStrictEqual(
    fetched.data.map((m) => m.value),
    await queryRows('co_post', { where: 'owner = 0' })
  )
  assert.ok(fetched.data.every((m) => m.headers.operation === 'insert' && m.key.startsWith('"public"."co_post"/')))
  const md = fetched.metadata
  assert.ok(typeof md.xmin === 'string' && typeof md.xmax === 'string' && Array.isArray(md.xip_list), show(md))
  assert.ok(Number.isInteger(md.snapshot_mark), `snapshot_mark ${md.snapshot_mark}`)
  assert.ok(BigInt(md.database_lsn) > 0n, `database_lsn ${md.database_lsn}`)
  await sleep(200)
  assert.deepStrictEqual(sortById(s.shape.currentRows), before)

  // Live changes still flow after the subset requests.
  await sql(`UPDATE co_post SET title = 'x' WHERE id IN (1, 10, 5)`)
  await sql(`INSERT INTO co_post VALUES (200, 2, 200, 'new')`)
  loaded.add(200)
  await shapeEquals(s.shape, rowsWithIds('co_post', loaded))
})

test('structured whereExpr / orderByExpr (as TanStack DB sends them), GET and POST', TIMEOUT, async (t) => {
  await table('co_expr')
  const s = openShape({ table: 'co_expr' }, { log: 'changes_only' })
  t.after(() => s.close())
  assert.deepStrictEqual(await s.shape.rows, [])

  // id = ANY($1) with an array parameter, and owner = $2.
  const whereExpr = {
    type: 'func',
    name: 'and',
    args: [
      { type: 'func', name: 'in', args: [{ type: 'ref', column: 'id' }, { type: 'val', paramIndex: 1 }] },
      { type: 'func', name: 'eq', args: [{ type: 'ref', column: 'owner' }, { type: 'val', paramIndex: 2 }] },
    ],
  }
  const orderByExpr = [{ column: 'n', direction: 'desc', nulls: 'last' }]
  await s.shape.requestSnapshot({ whereExpr, orderByExpr, params: { 1: '{1,2,3,4,5,6}', 2: '0' }, limit: 1 })
  const get = subsetRequests(s.requests).at(-1)
  assert.equal(get.method, 'GET')
  assert.equal(get.url.searchParams.get('subset__where'), '("id" = ANY($1)) AND ("owner" = $2)')
  assert.equal(get.url.searchParams.get('subset__order_by'), '"n" DESC NULLS LAST')
  assert.deepStrictEqual(sortById(s.shape.currentRows), await rowsWithIds('co_expr', [6])())

  await s.shape.requestSnapshot({ whereExpr, params: { 1: '{1,2,3,4,5,6}', 2: '1' }, method: 'POST' })
  assert.equal(subsetRequests(s.requests).at(-1).method, 'POST')
  await shapeEquals(s.shape, rowsWithIds('co_expr', [6, 1, 4]))
})

test('a snapshot taken while its rows are being written ends equal to the table', TIMEOUT, async (t) => {
  await table('co_race', 20)
  const s = openShape({ table: 'co_race' }, { log: 'changes_only' })
  t.after(() => s.close())
  assert.deepStrictEqual(await s.shape.rows, [])

  let writing = true
  let writes = 0
  const writer = (async () => {
    while (writing && writes < 1000) {
      await sql(`UPDATE co_race SET n = n + 1, title = 'w${writes}' WHERE id = ${(writes % 5) + 1}`)
      writes++
    }
  })()
  await eventually(() => writes >= 10, { what: 'the writer started' })
  const before = writes
  await s.shape.requestSnapshot({ where: 'id <= $1', params: { 1: '5' } })
  const during = writes
  await eventually(() => writes >= during + 20, { what: 'writes after the snapshot' })
  writing = false
  await writer
  assert.ok(during > before, `the writer wrote while the snapshot was taken (${before} → ${during})`)
  await shapeEquals(s.shape, () => queryRows('co_race', { where: 'id <= 5' }))
  s.log.assertClean()
})
