//! The decoding worker: owns the replication slot, decodes committed
//! transactions in commit order and keeps every shape's log current.
//!
//! Data flow: WAL → [`crate::pg::decoding`] (our output plugin, in-process) →
//! [`engine`] (catalog changes, routing through [`router`], WHERE evaluation,
//! serialisation) → [`shape`] (held message, pending spill or log writer);
//! [`durability`] syncs the logs beside it before the slot is confirmed.

pub mod durability;
pub mod engine;
pub mod router;
pub mod row;
pub mod shape;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use pgrx::prelude::*;
use shape_log::Doorbell;

use crate::pg::decoding::{set_sink, Decoder, Step};
use crate::pg::xact::{worker_transaction, Isolation};
use crate::pg::{self, bgworker};
use crate::{catalog, guc, shmem};
use engine::{Engine, Health};

/// How long the worker sleeps when caught up, unless a commit wakes it first.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// How long it sleeps while the logs are being synced, to confirm the slot soon after.
const SYNC_POLL: Duration = Duration::from_millis(5);

/// Background worker entry point.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn pg_shapes_decoder_main(_arg: pg_sys::Datum) {
    bgworker::start(&guc::database());
    pg::apply_worker_settings();
    let shared = shmem::shared().expect("workers only run when preloaded");
    shared.register_decoder();
    let storage = guc::storage_dir();
    if let Err(e) = std::fs::create_dir_all(&storage) {
        error!("pg_shapes cannot create its storage directory {}: {e}", storage.display());
    }
    let slot = guc::slot_name();
    allow_our_output_plugin();
    wait_until_ready();

    // Shapes that exist before the slot does may have missed changes if the slot has to
    // be created; shapes created afterwards cannot (get_or_create_shape waits for it).
    let existing: Vec<i64> =
        worker_transaction(Isolation::ReadCommitted, || catalog::load_live_shapes().iter().map(|r| r.id).collect());
    let recreated = ensure_slot(&slot);
    if recreated {
        worker_transaction(Isolation::ReadCommitted, || {
            let ids = &existing;
            if !ids.is_empty() {
                warning!("pg_shapes: replication slot {slot} was (re)created; invalidating {} shape(s) that may have missed changes", ids.len());
                catalog::invalidate(
                    ids,
                    &format!("the replication slot {slot} was recreated, so changes may have been missed"),
                );
            }
        });
    }

    let bell = Doorbell::open_rw(&storage).unwrap_or_else(|e| error!("pg_shapes cannot open its doorbell: {e}"));
    bell.heartbeat(bgworker::pid() as u32);
    let mut decoder = Decoder::start(&slot);
    let engine =
        worker_transaction(Isolation::ReadCommitted, || Engine::load(storage.clone(), bell, decoder.confirmed()));
    let engine = Rc::new(RefCell::new(engine));
    set_sink(Box::new(Rc::clone(&engine)));
    log!("pg_shapes decoder started on slot {slot} at {}", fmt_lsn(decoder.position()));

    loop {
        bgworker::reload_config_if_requested();
        pg::check_for_interrupts();
        match decoder.step() {
            Step::Decoded => engine.borrow_mut().after_step(&decoder),
            Step::CaughtUp => {
                bgworker::set_status("streaming");
                let health = engine.borrow_mut().idle(&decoder);
                match health {
                    Health::Ok => {
                        let syncing = engine.borrow().sync_in_flight();
                        bgworker::wait(if syncing { SYNC_POLL } else { IDLE_WAIT })
                    }
                    Health::CatalogReplaced => {
                        log!("pg_shapes: the extension was re-created; restarting the decoder");
                        drop(decoder);
                        bgworker::exit_for_restart();
                    }
                    Health::ExtensionGone => {
                        log!("pg_shapes: the extension was dropped; dropping replication slot {slot} so it does not retain WAL");
                        drop(decoder);
                        worker_transaction(Isolation::ReadCommitted, || {
                            let _ = Spi::run_with_args("SELECT pg_drop_replication_slot($1)", &[slot.as_str().into()]);
                        });
                        // The postmaster restarts us, and we wait for the extension.
                        bgworker::exit_for_restart();
                    }
                }
            }
        }
    }
}

/// Newer minor releases (Debian's 15.20 among them) only let a slot use output
/// plugins listed in `output_plugin_libraries`. The plugin is this very library,
/// loaded by the worker itself, so the worker adds it for its own session.
fn allow_our_output_plugin() {
    let Some(current) = pg::config_value("output_plugin_libraries") else { return };
    if current.split(',').any(|l| l.trim() == "pg_shapes") {
        return;
    }
    let value = if current.trim().is_empty() { "pg_shapes".to_string() } else { format!("{current}, pg_shapes") };
    pg::set_session_config("output_plugin_libraries", &value);
}

/// Waits until this server can decode for the extension: a primary with
/// `wal_level = logical` and the extension created in `pg_shapes.database`.
fn wait_until_ready() {
    let mut said = String::new();
    loop {
        let problem = if pg::in_recovery() {
            Some("the server is a standby; pg_shapes decodes on the primary".to_string())
        } else if !pg::wal_level_is_logical() {
            Some("wal_level is not logical; set wal_level = logical and restart".to_string())
        } else if !worker_transaction(Isolation::ReadCommitted, catalog::extension_installed) {
            Some(format!("waiting for CREATE EXTENSION pg_shapes in database {}", guc::database()))
        } else {
            None
        };
        let Some(problem) = problem else { return };
        if problem != said {
            log!("pg_shapes decoder: {problem}");
            said = problem;
        }
        bgworker::set_status("waiting");
        // get_or_create_shape wakes us when someone is waiting for the slot.
        bgworker::wait(Duration::from_secs(2));
        bgworker::reload_config_if_requested();
    }
}

/// Makes sure our logical slot exists and is usable; returns true if it had to
/// be created (so every existing shape may have missed changes).
fn ensure_slot(slot: &str) -> bool {
    let status = worker_transaction(Isolation::ReadCommitted, || {
        crate::sql::select_two::<String, String>(
            "SELECT plugin::text, coalesce(wal_status, 'reserved') FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
            &[slot.into()],
        )
    });
    let usable = match status {
        Some((Some(plugin), Some(wal_status))) => {
            if plugin != "pg_shapes" || wal_status == "lost" {
                warning!("pg_shapes: replication slot {slot} is unusable (plugin {plugin}, wal_status {wal_status}); recreating it");
                worker_transaction(Isolation::ReadCommitted, || {
                    Spi::run_with_args("SELECT pg_drop_replication_slot($1)", &[slot.into()])
                        .unwrap_or_else(|e| error!("pg_shapes could not drop unusable slot {slot}: {e}"));
                });
                false
            } else {
                true
            }
        }
        _ => false,
    };
    if usable {
        return false;
    }
    log!("pg_shapes: creating logical replication slot {slot}");
    // Its own transaction, which has written nothing: slot creation requires that.
    worker_transaction(Isolation::ReadCommitted, || {
        // A read-only SELECT: the transaction must not have an xid for slot creation.
        Spi::connect(|c| {
            c.select("SELECT pg_create_logical_replication_slot($1, 'pg_shapes')", None, &[slot.into()])
                .map(|_| ())
                .unwrap_or_else(|e| error!("pg_shapes could not create replication slot {slot}: {e}"))
        });
    });
    true
}

/// `X/Y` form of an LSN, for logs.
pub fn fmt_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}
