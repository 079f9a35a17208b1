// @electric-sql/client ShapeStream and Shape against pg_shapes: the initial
// sync, live inserts/updates/deletes, `where` with `params`, `columns`,
// `replica: 'full'` and `offset: 'now'`.

import assert from 'node:assert/strict'
import { after, test } from 'node:test'

import {
  closeDb,
  eventually,
  openShape,
  queryRows,
  shapeEquals,
  sortById,
  sql,
  tx,
  upToDate,
} from './lib/helpers.mjs'

after(closeDb)

const TIMEOUT = { timeout: 60000 }

/** The live change messages as `[operation, value]` pairs, in arrival order. */
function ops(log) {
  return log.liveChanges.map((m) => [m.headers.operation, m.value])
}

test('initial sync, then live inserts, updates and deletes, with typed values', TIMEOUT, async (t) => {
  await sql(`CREATE TABLE basic (
      id int PRIMARY KEY, title text, n int, done bool, big int8, meta jsonb, tags text[])`)
  await sql(`INSERT INTO basic VALUES
      (1, 'one', 1, true, 9007199254740993, '{"a": [1, "x"]}', '{x,"y z"}'),
      (2, 'two', 2, false, NULL, NULL, '{}'),
      (3, NULL, NULL, NULL, -5, '"s"', NULL)`)
  // The client's parser: int4 → number, int8 → bigint, bool → boolean, jsonb → parsed, text[] → array.
  const expected = async () =>
    (await queryRows('basic')).map((r) => ({ ...r, big: r.big === null ? null : BigInt(r.big) }))

  const s = openShape({ table: 'basic' })
  t.after(() => s.close())

  const initial = await s.shape.rows
  assert.deepStrictEqual(sortById(initial), [
    { id: 1, title: 'one', n: 1, done: true, big: 9007199254740993n, meta: { a: [1, 'x'] }, tags: ['x', 'y z'] },
    { id: 2, title: 'two', n: 2, done: false, big: null, meta: null, tags: [] },
    { id: 3, title: null, n: null, done: null, big: -5n, meta: 's', tags: null },
  ])
  assert.deepStrictEqual(sortById(initial), await expected())
  assert.equal(s.log.liveChanges.length, 0)
  assert.ok(s.stream.isUpToDate)

  // One transaction per change, then one with three.
  const xid = await tx(async (c) => {
    await c.query(`INSERT INTO basic VALUES (4, 'four', 4, true, 4, '[]', '{a}')`)
    return (await c.query('SELECT pg_current_xact_id()::xid::text AS xid')).rows[0].xid
  })
  await sql(`UPDATE basic SET title = 'uno' WHERE id = 1`)
  await sql(`DELETE FROM basic WHERE id = 2`)
  await tx(async (c) => {
    await c.query(`INSERT INTO basic VALUES (5, 'five', 5, false, 5, '{}', '{}')`)
    await c.query(`UPDATE basic SET n = 30, done = true WHERE id = 3`)
    await c.query(`DELETE FROM basic WHERE id = 4`)
  })
  await shapeEquals(s.shape, expected)
  await eventually(() => s.log.liveChanges.length >= 6, { what: 'six live changes' })

  assert.deepStrictEqual(ops(s.log), [
    ['insert', { id: 4, title: 'four', n: 4, done: true, big: 4n, meta: [], tags: ['a'] }],
    ['update', { id: 1, title: 'uno' }],
    ['delete', { id: 2 }],
    ['insert', { id: 5, title: 'five', n: 5, done: false, big: 5n, meta: {}, tags: [] }],
    ['update', { id: 3, n: 30, done: true }],
    ['delete', { id: 4 }],
  ])
  const h = s.log.liveChanges.map((m) => m.headers)
  assert.deepStrictEqual(h[0].txids, [Number(xid)], 'txids is [the 32-bit xid of the transaction]')
  assert.deepStrictEqual(
    h.map((x) => x.last === true),
    [true, true, true, false, false, true],
    '`last` marks the final change of each transaction'
  )
  assert.equal(new Set(h.slice(3).map((x) => x.lsn)).size, 1, 'one transaction, one lsn')
  assert.ok(h[3].op_position < h[4].op_position && h[4].op_position < h[5].op_position, 'op_position increases')
  const lsns = h.map((x) => BigInt(x.lsn))
  assert.ok(lsns[0] < lsns[1] && lsns[1] < lsns[2] && lsns[2] < lsns[3], 'commit order')
  assert.deepStrictEqual(h[0].relation, ['public', 'basic'])
  assert.equal(s.log.liveChanges[0].key, '"public"."basic"/"4"')
  s.log.assertClean()
  assert.deepStrictEqual(s.log.rowList, await expected())
})

test('where with params: rows moving in and out of the shape, and a key change', TIMEOUT, async (t) => {
  await sql(`CREATE TABLE filtered (id int PRIMARY KEY, owner int, n int, title text)`)
  await sql(`INSERT INTO filtered SELECT i, i % 2 + 1, i, 'row ' || i FROM generate_series(1, 8) i`)
  const where = 'owner = $1 AND n >= $2'
  const mine = openShape({ table: 'filtered', where, params: ['1', '3'] }) // array form
  const theirs = openShape({ table: 'filtered', where, params: { 1: '2', 2: '0' } }) // object form
  t.after(() => {
    mine.close()
    theirs.close()
  })
  const expectedMine = () => queryRows('filtered', { where: 'owner = 1 AND n >= 3' })
  const expectedTheirs = () => queryRows('filtered', { where: 'owner = 2 AND n >= 0' })

  assert.deepStrictEqual(sortById(await mine.shape.rows), await expectedMine())
  assert.deepStrictEqual(sortById(await theirs.shape.rows), await expectedTheirs())
  assert.deepStrictEqual((await mine.shape.rows).map((r) => r.id).sort(), [4, 6, 8])

  const url = mine.requests[0].url
  assert.equal(url.searchParams.get('where'), where)
  assert.equal(url.searchParams.get('params[1]'), '1')
  assert.equal(url.searchParams.get('params[2]'), '3')

  await sql(`UPDATE filtered SET owner = 1 WHERE id = 5`) // moves in (mine), out (theirs)
  await sql(`UPDATE filtered SET title = 'still mine' WHERE id = 4`) // stays in
  await sql(`UPDATE filtered SET n = 0 WHERE id = 6`) // moves out of mine
  await sql(`INSERT INTO filtered VALUES (20, 1, 20, 'new'), (21, 1, 1, 'too small'), (22, 2, 22, 'theirs')`)
  await sql(`UPDATE filtered SET id = 80, title = 'renamed' WHERE id = 8`) // key change inside mine
  await sql(`UPDATE filtered SET id = 90, owner = 2 WHERE id = 20`) // key change moving out of mine
  await sql(`DELETE FROM filtered WHERE id IN (4, 7)`)
  await tx(async (c) => {
    await c.query(`UPDATE filtered SET n = 10 WHERE id = 21`) // moves in
    await c.query(`UPDATE filtered SET owner = 1 WHERE id = 22`) // moves across
  })

  await shapeEquals(mine.shape, expectedMine)
  await shapeEquals(theirs.shape, expectedTheirs)
  assert.deepStrictEqual(
    (await expectedMine()).map((r) => r.id),
    [5, 21, 22, 80],
    'the writes did what the test means'
  )
  mine.log.assertClean('mine')
  theirs.log.assertClean('theirs')
  assert.deepStrictEqual(mine.log.rowList, await expectedMine())
  assert.deepStrictEqual(theirs.log.rowList, await expectedTheirs())

  // The key change is a delete of the old key then an insert of the new one.
  const keyChange = mine.log.liveChanges.filter((m) => m.key.endsWith('/"8"') || m.key.endsWith('/"80"'))
  assert.deepStrictEqual(
    keyChange.map((m) => [m.headers.operation, m.key]),
    [
      ['delete', '"public"."filtered"/"8"'],
      ['insert', '"public"."filtered"/"80"'],
    ]
  )
  assert.deepStrictEqual(keyChange[1].value, { id: 80, owner: 1, n: 8, title: 'renamed' })
})

test('columns: only the selected columns, quoted identifiers, no message for other columns', TIMEOUT, async (t) => {
  await sql(`CREATE TABLE narrow (id int PRIMARY KEY, "Title" text, secret text, n int)`)
  await sql(`INSERT INTO narrow VALUES (1, 'a', 's1', 1), (2, 'b', 's2', 2)`)
  const expected = () => queryRows('narrow', { columns: `id, "Title"` })
  const s = openShape({ table: 'narrow', columns: ['id', 'Title'] })
  t.after(() => s.close())

  const rows = sortById(await s.shape.rows)
  assert.deepStrictEqual(rows, [
    { id: 1, Title: 'a' },
    { id: 2, Title: 'b' },
  ])
  assert.equal(s.requests[0].url.searchParams.get('columns'), '"id","Title"')

  await sql(`UPDATE narrow SET secret = 'changed', n = 10 WHERE id = 1`) // no selected column changes
  await sql(`UPDATE narrow SET "Title" = 'B' WHERE id = 2`)
  await sql(`INSERT INTO narrow VALUES (3, 'c', 's3', 3)`)
  await sql(`DELETE FROM narrow WHERE id = 1`)
  await shapeEquals(s.shape, expected)
  await eventually(() => s.log.liveChanges.length >= 3, { what: 'three live changes' })
  assert.deepStrictEqual(ops(s.log), [
    ['update', { id: 2, Title: 'B' }],
    ['insert', { id: 3, Title: 'c' }],
    ['delete', { id: 1 }],
  ])
  s.log.assertClean()
})

test("replica 'full': whole rows on update and delete, old_value with the changed columns", TIMEOUT, async (t) => {
  await sql(`CREATE TABLE fullrep (id int PRIMARY KEY, title text, n int, note text)`)
  await sql(`INSERT INTO fullrep VALUES (1, 'one', 1, NULL), (2, 'two', 2, 'x')`)
  const s = openShape({ table: 'fullrep', replica: 'full' })
  t.after(() => s.close())
  assert.deepStrictEqual(sortById(await s.shape.rows), await queryRows('fullrep'))
  assert.equal(s.requests[0].url.searchParams.get('replica'), 'full')

  await sql(`UPDATE fullrep SET title = 'uno' WHERE id = 1`)
  await sql(`UPDATE fullrep SET n = 20, note = NULL WHERE id = 2`)
  await sql(`DELETE FROM fullrep WHERE id = 1`)
  await sql(`INSERT INTO fullrep VALUES (3, 'three', 3, 'n')`)
  await shapeEquals(s.shape, () => queryRows('fullrep'))
  await eventually(() => s.log.liveChanges.length >= 4, { what: 'four live changes' })

  const msgs = s.log.liveChanges.map((m) => [m.headers.operation, m.value, m.old_value])
  assert.deepStrictEqual(msgs, [
    ['update', { id: 1, title: 'uno', n: 1, note: null }, { title: 'one' }],
    ['update', { id: 2, title: 'two', n: 20, note: null }, { n: 2, note: 'x' }],
    ['delete', { id: 1, title: 'uno', n: 1, note: null }, undefined],
    ['insert', { id: 3, title: 'three', n: 3, note: 'n' }, undefined],
  ])
  s.log.assertClean()
})

test("offset 'now': no initial rows, then only the changes after it", TIMEOUT, async (t) => {
  await sql(`CREATE TABLE fromnow (id int PRIMARY KEY, title text)`)
  await sql(`INSERT INTO fromnow SELECT i, 'old ' || i FROM generate_series(1, 5) i`)
  const s = openShape({ table: 'fromnow' }, { offset: 'now' })
  t.after(() => s.close())

  await upToDate(s.log)
  assert.equal(s.requests[0].url.searchParams.get('offset'), 'now')
  assert.equal(s.requests[0].status, 200)
  assert.deepStrictEqual(s.shape.currentRows, [])
  assert.deepStrictEqual(s.log.changes, [])

  await sql(`INSERT INTO fromnow VALUES (6, 'new')`)
  await sql(`UPDATE fromnow SET title = 'newer' WHERE id = 6`)
  await sql(`INSERT INTO fromnow VALUES (7, 'seven')`)
  await sql(`DELETE FROM fromnow WHERE id = 7`)
  await shapeEquals(s.shape, () => queryRows('fromnow', { where: 'id > 5' }))
  await eventually(() => s.log.liveChanges.length >= 4, { what: 'four live changes' })
  assert.deepStrictEqual(ops(s.log), [
    ['insert', { id: 6, title: 'new' }],
    ['update', { id: 6, title: 'newer' }],
    ['insert', { id: 7, title: 'seven' }],
    ['delete', { id: 7 }],
  ])
  s.log.assertClean()
})
