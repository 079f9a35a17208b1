-- pg_shapes catalog: one row per shape. The decoding worker reads this table
-- from the WAL stream itself (it is a regular logged table), so a shape starts
-- receiving changes exactly at the commit of its row, and snapshot completion,
-- invalidation and deletion reach the worker in commit order.

CREATE TABLE shapes.shape (
    id              bigserial PRIMARY KEY,
    handle          text NOT NULL UNIQUE,
    -- md5 of the canonical definition; identical definitions share a shape.
    def_key         text NOT NULL,
    relid           oid NOT NULL,
    table_name      text NOT NULL,
    where_source    text,
    where_clause    text,
    params          text[],
    columns         text[],
    replica         text NOT NULL CHECK (replica IN ('default', 'full')),
    log_mode        text NOT NULL CHECK (log_mode IN ('full', 'changes_only')),
    electric_schema text NOT NULL,
    -- Everything the workers need to build and route the shape (JSON).
    spec            text NOT NULL,
    state           text NOT NULL DEFAULT 'creating' CHECK (state IN ('creating', 'ready', 'invalid')),
    invalid_reason  text,
    -- The snapshot the initial data was read under (pg_current_snapshot() fields).
    snapshot        jsonb,
    snapshot_rows   bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    ready_at        timestamptz,
    -- Invalid shapes are deleted (with their logs) some minutes after this.
    invalidated_at  timestamptz
);

COMMENT ON TABLE shapes.shape IS 'pg_shapes shape catalog; use shapes.get_or_create_shape / shapes.delete_shape, not DML';

CREATE UNIQUE INDEX shape_def_key_live ON shapes.shape (def_key) WHERE state <> 'invalid';
-- Decoded DELETEs carry the replica identity: with the handle in it, the decoder
-- can remove the log of a shape it had already stopped routing to.
CREATE UNIQUE INDEX shape_identity ON shapes.shape (id, handle);
ALTER TABLE shapes.shape REPLICA IDENTITY USING INDEX shape_identity;
CREATE INDEX shape_relid ON shapes.shape (relid);
CREATE INDEX shape_creating ON shapes.shape (id) WHERE state = 'creating';

-- ALTER TABLE on a shaped table can change what its rows mean (types, names,
-- columns), so its shapes are invalidated: clients get 409 + must-refetch and
-- start again under a new handle. The extension's own ALTERs (replica identity)
-- set pg_shapes.internal_ddl and are ignored.
CREATE FUNCTION shapes._invalidate_altered_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    r record;
BEGIN
    IF coalesce(current_setting('pg_shapes.internal_ddl', true), 'off') = 'on' THEN
        RETURN;
    END IF;
    FOR r IN SELECT objid, object_identity, command_tag
               FROM pg_event_trigger_ddl_commands()
              WHERE object_type = 'table'
    LOOP
        UPDATE shapes.shape
           SET state = 'invalid',
               invalid_reason = format('table %s was altered (%s)', r.object_identity, r.command_tag),
               invalidated_at = now()
         WHERE relid = r.objid AND state <> 'invalid';
    END LOOP;
END
$$;

CREATE EVENT TRIGGER pg_shapes_alter_table ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION shapes._invalidate_altered_tables();

-- A dropped table's shapes are deleted; the worker removes their logs when it
-- decodes the deletion.
CREATE FUNCTION shapes._forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    -- DROP EXTENSION drops the catalog itself; nothing to forget then.
    IF to_regclass('shapes.shape') IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM shapes.shape s
     USING pg_event_trigger_dropped_objects() d
     WHERE d.object_type = 'table' AND s.relid = d.objid;
END
$$;

CREATE EVENT TRIGGER pg_shapes_drop_table ON sql_drop
    EXECUTE FUNCTION shapes._forget_dropped_tables();
