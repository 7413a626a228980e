//! `engine_rs.Ledger`: the settle operations and the ledger's reads and writes on the connection
//! a Python `sqlite3.Connection` already holds (engine_rs/src/ledger/mod.rs says why it never
//! opens one of its own), and `engine_rs.LedgerNode`, the node they settle for.
//!
//! Attaching borrows the connection's `sqlite3*` handle. CPython keeps it as the first field
//! after the object header of `sqlite3.Connection` (`pysqlite_Connection.db`, unchanged from
//! 3.8 to 3.14; another version is refused until checked); three checks guard the borrow
//! before anything uses it: the object is a
//! `sqlite3.Connection`, the handle's file is the one the connection itself names
//! (`PRAGMA database_list`), and the handle's library is this crate's: `_sqlite3` resolves
//! `sqlite3_libversion` to the very function the ledger calls (one copy of SQLite in the
//! process). A connection that fails any check is refused with `EngineError`.
//!
//! The ledger holds a weak reference to the connection (the connection holds the ledger:
//! a strong one would make a cycle) and refuses to read once it is gone; close the ledger
//! before the connection (the store's connections do, in their `close`).

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use numpy::PyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyWeakrefMethods, PyWeakrefReference};
use rusqlite::ffi;

use prost::Message;

use super::catalog::PyCatalog;
use super::error::{guard, internal, ledger_error, ledger_refused as refused};
use super::policy::PyPolicy;
use super::upload::PyFeeUpload;
use crate::ledger;
use crate::ledger::cancel;
use crate::ledger::center_mode::{self, Kept, Prepared};
use crate::ledger::committer::Committer;
use crate::ledger::refusal::{LedgerError, Refusal};
use crate::ledger::settle::{self, Answered, BatchCall, Caller, Node, Offline, Who, Work};
use crate::ledger::vault::Vault;
use crate::wire;

/// The head of CPython's `pysqlite_Connection`: the object header, then the handle.
#[repr(C)]
struct ConnectionHead {
    ob_refcnt: isize,
    ob_type: *mut c_void,
    db: *mut ffi::sqlite3,
}

/// Whether Python's `_sqlite3` resolves SQLite's symbols to this crate's copy.
fn same_library(py: Python<'_>) -> PyResult<bool> {
    let path: String = py.import("_sqlite3")?.getattr("__file__")?.extract()?;
    let path = CString::new(path).map_err(|_| refused("_sqlite3 path has a NUL byte"))?;
    let symbol = c"sqlite3_libversion";
    // SAFETY: RTLD_NOLOAD only looks up an object already loaded (Python imported it);
    // dlsym on its handle searches it and its dependencies, as its own calls resolve.
    let theirs = unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return Ok(false);
        }
        let found = libc::dlsym(handle, symbol.as_ptr());
        libc::dlclose(handle);
        found
    };
    let ours = ffi::sqlite3_libversion as *const () as *mut c_void;
    Ok(!theirs.is_null() && theirs == ours)
}

/// The CPython versions whose `pysqlite_Connection` is known to begin with the handle (a
/// later one is refused until checked: reading a moved field would be undefined).
const KNOWN_PYTHONS: std::ops::RangeInclusive<(u8, u8)> = (3, 8)..=(3, 14);

/// The handle of a `sqlite3.Connection`, checked against the file it names.
fn borrow_handle(conn: &Bound<'_, PyAny>) -> PyResult<*mut ffi::sqlite3> {
    let py = conn.py();
    let version = py.version_info();
    if !KNOWN_PYTHONS.contains(&(version.major, version.minor)) {
        return Err(refused(format!(
            "Python {}.{}: its sqlite3.Connection layout is not known to the ledger",
            version.major, version.minor
        )));
    }
    let connection_type = py.import("sqlite3")?.getattr("Connection")?;
    if !conn.is_instance(&connection_type)? {
        return Err(refused("is not a sqlite3.Connection"));
    }
    if !same_library(py)? {
        return Err(refused(
            "Python's sqlite3 module uses another copy of SQLite than the extension",
        ));
    }
    // Its own answer first: this also fails (ProgrammingError) on a closed connection.
    let rows = conn.call_method1("execute", ("PRAGMA database_list",))?;
    let mut file = None;
    for row in rows.try_iter()? {
        let (_, name, path): (i64, String, String) = row?.extract()?;
        if name == "main" {
            file = Some(path);
        }
    }
    let file = file.ok_or_else(|| refused("has no main database"))?;
    // SAFETY: `conn` is a live sqlite3.Connection (checked above); its struct begins with
    // the object header and then the sqlite3* handle.
    let db = unsafe { (*(conn.as_ptr() as *const ConnectionHead)).db };
    if db.is_null() {
        return Err(refused("has no open handle"));
    }
    // SAFETY: a non-null handle of a live connection; sqlite3_db_filename returns NULL or a
    // string owned by the handle, copied out at once.
    let named = unsafe {
        let p: *const c_char = ffi::sqlite3_db_filename(db, c"main".as_ptr());
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    if named != file {
        return Err(refused(format!(
            "its handle names {named:?}, the connection {file:?}: not this Python's layout"
        )));
    }
    Ok(db)
}

/// The ledger's reads on one connection of the front-end's store.
#[pyclass(module = "engine_rs", name = "Ledger", frozen)]
pub struct PyLedger {
    /// Shared with the commit thread, which holds the lock while a batch runs.
    conn: Arc<Mutex<Option<rusqlite::Connection>>>,
    owner: Py<PyWeakrefReference>,
    /// The thread `start_batch` hands batches to, spawned by the first (a reader's ledger
    /// never has one).
    committer: Mutex<Option<Committer<Finished>>>,
}

impl PyLedger {
    fn committer_slot(&self) -> std::sync::MutexGuard<'_, Option<Committer<Finished>>> {
        self.committer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<R>(
        &self,
        py: Python<'_>,
        what: &str,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<R>,
    ) -> PyResult<R> {
        self.run(py, what, |conn| f(conn).map_err(LedgerError::Sql))
    }

    /// Runs a ledger operation on the connection (panics caught: `guard`).
    fn run<R>(
        &self,
        py: Python<'_>,
        what: &str,
        f: impl FnOnce(&rusqlite::Connection) -> Result<R, LedgerError>,
    ) -> PyResult<R> {
        if self.owner.bind(py).upgrade().is_none() {
            return Err(refused("its connection is gone"));
        }
        // One visit's rows: far shorter than handing the GIL to another thread and back
        // (batch work, when the ledger gets it, releases it).
        let read = {
            let guard_ = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            guard_
                .as_ref()
                .map(|conn| guard("ledger", what, || f(conn)))
        };
        match read {
            None => Err(refused("the ledger is closed")),
            Some(result) => result?.map_err(|e| ledger_error(what, e)),
        }
    }
}

#[pymethods]
impl PyLedger {
    #[new]
    fn new(conn: &Bound<'_, PyAny>) -> PyResult<Self> {
        let db = borrow_handle(conn)?;
        // SAFETY: the handle is checked and stays open while `owner` holds the connection
        // and until `close()`; from_handle does not take ownership (never closes it).
        let borrowed =
            unsafe { rusqlite::Connection::from_handle(db) }.map_err(|e| refused(e.to_string()))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(Some(borrowed))),
            owner: PyWeakrefReference::new(conn)
                .map_err(|_| refused("needs a subclass of sqlite3.Connection (weakly referable)"))?
                .unbind(),
            committer: Mutex::new(None),
        })
    }

    /// The connection this ledger reads through (None once it is gone).
    #[getter]
    fn connection<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.owner.bind(py).upgrade()
    }

    /// Finalises the ledger's statements and ends its commit thread (after the batch in
    /// flight, if any); the connection may be closed after this.
    fn close(&self, py: Python<'_>) {
        let committer = self.committer_slot().take();
        // the thread never takes the GIL; joining it must not hold it either
        let finished = py.detach(move || committer.and_then(Committer::close));
        drop(finished); // a batch nobody collected: its arguments are released here, with the GIL
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.take();
    }

    /// A visit's fee lines in upload order: `(columns, feedetl_sn, digest)`, the columns in
    /// the layout `preprocess` reads (`FeeLines`), the digest equal only for equal lines.
    fn fee_lines<'py>(
        &self,
        py: Python<'py>,
        visit_id: i64,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>, Bound<'py, PyBytes>)> {
        let rows = self.with(py, "fee_lines", |conn| ledger::fee_lines(conn, visit_id))?;
        let cols = PyDict::new(py);
        let strs = |(data, offsets): (Vec<u8>, Vec<i64>)| {
            (
                PyArray1::from_vec(py, data),
                PyArray1::from_vec(py, offsets),
            )
        };
        cols.set_item("medins_list_codg", strs(rows.medins_list_codg))?;
        cols.set_item("med_list_codg", strs(rows.med_list_codg))?;
        cols.set_item("cnt", PyArray1::from_vec(py, rows.cnt))?;
        cols.set_item("pric", PyArray1::from_vec(py, rows.pric))?;
        cols.set_item(
            "det_item_fee_sumamt",
            PyArray1::from_vec(py, rows.det_item_fee_sumamt),
        )?;
        cols.set_item("fee_date", PyArray1::from_vec(py, rows.fee_date))?;
        cols.set_item(
            "hosp_appr_flag",
            PyArray1::from_vec(py, rows.hosp_appr_flag),
        )?;
        Ok((
            cols,
            PyList::new(py, rows.feedetl_sn)?,
            PyBytes::new(py, &rows.digest),
        ))
    }

    /// Writes an upload's fee lines (as the engine read them: `FeeUpload`) to visit
    /// `visit_id`, numbered from `first_seq`, marked with the upload's `msgid`
    /// (`ledger::insert_fee_lines`).
    fn insert_fee_lines(
        &self,
        py: Python<'_>,
        visit_id: i64,
        first_seq: i64,
        msgid: &str,
        upload: PyRef<'_, PyFeeUpload>,
    ) -> PyResult<()> {
        let u = &upload.upload;
        let lines = ledger::NewFeeLines {
            feedetl_sn: &u.feedetl_sn,
            medins_list_codg: &u.medins_list_codg,
            bilg_dr_codg: &u.bilg_dr_codg,
            nums: &u.nums,
        };
        self.with(py, "insert_fee_lines", |conn| {
            ledger::insert_fee_lines(conn, visit_id, first_seq, msgid, &lines)
        })
    }

    /// The settles and cancels of a batch in one call, with the GIL released while they run
    /// (engine_rs/src/ledger/settle.rs `settle_batch`). Each call is (its method, "Settle"
    /// or "CancelSettlement"; the request's bytes; its request hash; now in ms; the
    /// authenticated caller (fixmedins_code, hosp_lv, admdvs, opter, roles, rpc); the
    /// reference data (policy, catalog) a settle computes with, else None; for a settle the
    /// offline limits (max_medfee_fen, max_per_day) or None; for center mode's keep (the
    /// center's answer bytes, accumulator year, pool, line results, lines' digest), else
    /// None). Returns one entry per call, in order: (answer bytes, replayed, setl_id, engine
    /// seconds (preprocess, split) or None when nothing was computed), or the exception that
    /// call met (`Refused`, a `sqlite3` error, `EngineError`), as a value. A store failure
    /// raises (`sqlite3.OperationalError` with its `sqlite_errorcode`): the batch is lost
    /// whole and the caller rolls it back. `commit`: COMMIT the connection's transaction
    /// too, in the same GIL-free run (a failed COMMIT is rolled back and raises like a store
    /// failure).
    #[pyo3(signature = (node, calls, commit=false))]
    fn settle_batch<'py>(
        &self,
        py: Python<'py>,
        node: &PyLedgerNode,
        calls: Vec<BatchArgs>,
        commit: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        if self.owner.bind(py).upgrade().is_none() {
            return Err(refused("its connection is gone"));
        }
        let calls = Calls::read(calls);
        let (conn, node) = (&self.conn, &node.inner);
        // The batch's statements and crypto run without the GIL: the event loop takes the
        // next calls meanwhile. The connection is this ledger's alone while the lock is held.
        let done = py.detach(|| catch_unwind(AssertUnwindSafe(|| calls.run(conn, node, commit))));
        calls.outcomes(py, done)
    }

    /// `settle_batch(node, calls, commit)` handed to the ledger's own commit thread, which
    /// never takes the GIL: returns at once; `ready_fd` turns readable when the batch has
    /// finished and `finished_batch` returns its outcome. One batch at a time: starting a
    /// second before the first was collected raises `EngineError`. `unlock_fd` (with
    /// `commit`): the write turn's lock file (an `flock` the caller holds), unlocked by the
    /// thread the moment the COMMIT succeeds, so another worker process's batch need not
    /// wait for this loop to collect the outcome (the caller still releases its own side,
    /// and after a failure the whole lock).
    #[pyo3(signature = (node, calls, commit=false, unlock_fd=None))]
    fn start_batch(
        &self,
        py: Python<'_>,
        node: Py<PyLedgerNode>,
        calls: Vec<BatchArgs>,
        commit: bool,
        unlock_fd: Option<i32>,
    ) -> PyResult<()> {
        // Held until the outcome is collected: the handle the batch runs on stays open
        // even if the store let go of its connection meanwhile.
        let Some(owner) = self.owner.bind(py).upgrade() else {
            return Err(refused("its connection is gone"));
        };
        let owner = owner.unbind();
        if unlock_fd.is_some() && !commit {
            return Err(refused(
                "unlock_fd without commit: the turn ends with the COMMIT",
            ));
        }
        let calls = Calls::read(calls);
        let conn = Arc::clone(&self.conn);
        let mut slot = self.committer_slot();
        let committer = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(
                Committer::spawn("ledger-commit")
                    .map_err(|e| refused(format!("cannot start the commit thread: {e}")))?,
            ),
        };
        let started = committer.start(move || {
            let node_ = node.get();
            let done = catch_unwind(AssertUnwindSafe(|| calls.run(&conn, &node_.inner, commit)));
            if let (Some(fd), Ok(Some(Ok(_)))) = (unlock_fd, &done) {
                // SAFETY: flock on a descriptor number only; the caller keeps `fd` open
                // until it has collected this batch. A failed unlock (EBADF) leaves the
                // lock to the caller's own release.
                unsafe { libc::flock(fd, libc::LOCK_UN) };
            }
            Finished {
                calls,
                node,
                owner,
                done,
            }
        });
        if !started {
            return Err(refused("a batch is in flight already"));
        }
        Ok(())
    }

    /// The descriptor that turns readable when a batch `start_batch` handed over has
    /// finished (the ledger's; never close it).
    #[getter]
    fn ready_fd(&self) -> Option<i32> {
        self.committer_slot().as_ref().map(|c| c.ready_fd())
    }

    /// The outcome of the batch `start_batch` handed over, as `settle_batch` returns it or
    /// raises it; None while it runs (or when none was started).
    fn finished_batch<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let finished = self.committer_slot().as_ref().and_then(|c| c.take());
        match finished {
            None => Ok(None),
            Some(Err(_)) => Err(internal("ledger", "the commit thread")),
            Some(Ok(Finished {
                calls,
                node,
                owner,
                done,
            })) => {
                drop((node, owner));
                calls.outcomes(py, done).map(Some)
            }
        }
    }

    /// PreSettle's answer bytes (a `SettleResponse`) and the engine's time (preprocess,
    /// split, nanoseconds); writes nothing.
    fn pre_settle<'py>(
        &self,
        py: Python<'py>,
        node: &PyLedgerNode,
        request: &[u8],
        caller: CallerArgs,
        policy: &PyPolicy,
        catalog: &PyCatalog,
    ) -> PyResult<(Bound<'py, PyBytes>, (u64, u64))> {
        let req: wire::SettleRequest = decode(request)?;
        let who = caller.caller(policy, catalog);
        let (answer, t) = self.run(py, "pre_settle", |conn| {
            settle::pre_settle(conn, &node.inner, &who, &req)
        })?;
        Ok((PyBytes::new(py, &answer), (t.preprocess_ns, t.split_ns)))
    }

    /// The settlement a cancel names, after every check this front-end can make
    /// (engine_rs/src/ledger/cancel.rs `cancellable`): (row id, setl_id, psn_no, mode), or
    /// `Refused`. `caller` as for `settle_batch`.
    fn cancellable(
        &self,
        py: Python<'_>,
        caller: CallerArgs,
        setl_id: &str,
        mdtrt_id: &str,
        psn_no: &str,
    ) -> PyResult<(i64, String, String, i64)> {
        let who = caller.who();
        let row = self.run(py, "cancellable", |conn| {
            cancel::cancellable(conn, &who, setl_id, mdtrt_id, psn_no)
        })?;
        Ok((row.id, row.setl_id, row.psn_no, row.mode))
    }

    /// A settlement cancelled in the connection's open transaction, after the checks
    /// (`cancel.rs` `cancel`): (the cancelled `SetlInfo`'s bytes, the cancel id), or
    /// `Refused`. The caller keeps the msgid's answer and the audit record.
    #[allow(clippy::too_many_arguments)] // the binding's arguments, as Python passes them
    fn cancel<'py>(
        &self,
        py: Python<'py>,
        node: &PyLedgerNode,
        caller: CallerArgs,
        setl_id: &str,
        mdtrt_id: &str,
        psn_no: &str,
        msgid: &str,
        now: i64,
    ) -> PyResult<(Bound<'py, PyBytes>, String)> {
        let who = caller.who();
        let (info, cancel_id) = self.run(py, "cancel", |conn| {
            cancel::cancel(
                conn,
                &node.inner,
                &who,
                setl_id,
                mdtrt_id,
                psn_no,
                msgid,
                now,
            )
        })?;
        Ok((PyBytes::new(py, &info.encode_to_vec()), cancel_id))
    }

    /// Center mode's question for the center (engine_rs/src/ledger/center_mode.rs
    /// `prepare`), its header naming this machine (`instance_id`); writes nothing. With
    /// `req_hash` (a Settle) the msgid's stored answer when there is one: its bytes.
    /// Otherwise (the `CenterSettleRequest`'s bytes, ready to send, the
    /// insured region, accumulator year, pool, line results, the lines' digest, the engine's
    /// time (preprocess, split nanoseconds)).
    #[pyo3(signature = (node, request, caller, policy, catalog, req_hash=None, instance_id=""))]
    #[allow(clippy::too_many_arguments)] // the binding's arguments, as Python passes them
    fn prepare_center<'py>(
        &self,
        py: Python<'py>,
        node: &PyLedgerNode,
        request: &[u8],
        caller: CallerArgs,
        policy: &PyPolicy,
        catalog: &PyCatalog,
        req_hash: Option<Vec<u8>>,
        instance_id: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let req: wire::SettleRequest = decode(request)?;
        let who = caller.caller(policy, catalog);
        let prepared = self.run(py, "prepare_center", |conn| {
            center_mode::prepare(
                conn,
                &node.inner,
                &who,
                &req,
                req_hash.as_deref(),
                instance_id,
            )
        })?;
        match prepared {
            Prepared::Replay(answer) => Ok(PyBytes::new(py, &answer).into_any()),
            Prepared::Ask(a) => Ok((
                PyBytes::new(py, &a.request.encode_to_vec()),
                a.insured_region,
                a.acc_year,
                a.acc_pool,
                PyBytes::new(py, &a.line_results),
                PyBytes::new(py, &a.lines_digest),
                (a.timing.preprocess_ns, a.timing.split_ns),
            )
                .into_pyobject(py)?
                .into_any()),
        }
    }
}

/// One call of a batch as Python hands it over (`settle_batch` names the parts).
type BatchArgs = (
    String,
    Vec<u8>,
    Vec<u8>,
    i64,
    CallerArgs,
    Option<(Py<PyPolicy>, Py<PyCatalog>)>,
    Option<(i64, i64)>,
    Option<KeptArgs>,
);

/// A call's request as decoded on the loop's thread, with what its work needs beside its
/// arguments.
enum Decoded {
    Settle(wire::SettleRequest, Option<Offline>),
    Keep(wire::SettleRequest, Box<Kept>),
    Cancel(wire::CancelSettlementRequest),
}

/// What a call of a batch does, from its arguments; a request (or center's answer) that
/// does not decode, or a settle without reference data, is refused.
fn decoded(args: &BatchArgs) -> PyResult<Decoded> {
    let (method, request, _, _, _, refdata, offline, kept) = args;
    match (method.as_str(), kept, refdata) {
        (cancel::METHOD, _, _) => Ok(Decoded::Cancel(decode(request)?)),
        (settle::METHOD, Some(kept), _) => {
            let (answer, acc_year, acc_pool, line_results, lines_digest) = kept;
            let kept = Kept {
                answer: center_answer(answer)?,
                acc_year: *acc_year,
                acc_pool: acc_pool.clone(),
                line_results: line_results.clone(),
                lines_digest: lines_digest.clone(),
            };
            Ok(Decoded::Keep(decode(request)?, Box::new(kept)))
        }
        (settle::METHOD, None, Some(_)) => Ok(Decoded::Settle(
            decode(request)?,
            offline.map(|(max_medfee_fen, max_per_day)| Offline {
                max_medfee_fen,
                max_per_day,
            }),
        )),
        (settle::METHOD, None, None) => Err(refused("a settle needs a policy and a catalog")),
        (other, ..) => Err(refused(format!("settle_batch: no method {other}"))),
    }
}

/// A decoded call as the ledger runs it (None for a settle without reference data, which
/// `decoded` refused already).
fn call_of<'a>(args: &'a BatchArgs, d: &'a Decoded) -> Option<BatchCall<'a>> {
    let caller = &args.4;
    let work = match d {
        Decoded::Cancel(req) => Work::Cancel {
            req,
            who: caller.who(),
        },
        Decoded::Keep(req, kept) => Work::Keep {
            req,
            who: caller.who(),
            kept,
        },
        Decoded::Settle(req, offline) => {
            let (policy, catalog) = args.5.as_ref()?;
            Work::Settle {
                req,
                caller: caller.caller(policy.get(), catalog.get()),
                offline: *offline,
            }
        }
    };
    Some(BatchCall {
        req_hash: &args.2,
        now: args.3,
        work,
    })
}

/// A batch's calls: their arguments and each one's decoded request or refusal. Owned, so
/// the batch can run on another thread; returned, so its Python objects are released
/// with the GIL.
struct Calls {
    args: Vec<BatchArgs>,
    decoded: Vec<PyResult<Decoded>>,
}

/// What a batch the store ran: `None` when the ledger was closed, else the ledger's outcome.
type BatchDone = Option<Result<Vec<Result<Answered, LedgerError>>, rusqlite::Error>>;

/// A batch the commit thread finished: its calls, node and connection back to the loop's
/// thread (their references are released there, with the GIL).
struct Finished {
    calls: Calls,
    node: Py<PyLedgerNode>,
    owner: Py<PyAny>,
    done: std::thread::Result<BatchDone>,
}

impl Calls {
    fn read(args: Vec<BatchArgs>) -> Self {
        let decoded = args.iter().map(decoded).collect();
        Self { args, decoded }
    }

    /// The decoded calls as the ledger runs them.
    fn batch(&self) -> Vec<BatchCall<'_>> {
        self.args
            .iter()
            .zip(&self.decoded)
            .filter_map(|(args, d)| d.as_ref().ok().and_then(|d| call_of(args, d)))
            .collect()
    }

    /// Runs the batch on the connection (and COMMITs it with `commit`).
    fn run(
        &self,
        conn: &Mutex<Option<rusqlite::Connection>>,
        node: &Node,
        commit: bool,
    ) -> BatchDone {
        let held = conn.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref().map(|c| {
            let done = settle::settle_batch(c, node, &self.batch())?;
            if commit {
                settle::commit(c)?;
            }
            Ok(done)
        })
    }

    /// One entry per call, in order: its answer tuple, or the exception it met as a value;
    /// a store failure, a closed ledger or a panic raises.
    fn outcomes<'py>(
        self,
        py: Python<'py>,
        done: std::thread::Result<BatchDone>,
    ) -> PyResult<Bound<'py, PyList>> {
        let done = match done {
            Err(_) => return Err(internal("ledger", "settle_batch")),
            Ok(None) => return Err(refused("the ledger is closed")),
            Ok(Some(Err(e))) => return Err(ledger_error("settle_batch", LedgerError::Sql(e))),
            Ok(Some(Ok(done))) => done,
        };
        let out = PyList::empty(py);
        let mut done = done.into_iter();
        for d in self.decoded {
            if let Err(err) = d {
                out.append(err.into_value(py))?;
                continue;
            }
            match done.next() {
                Some(Ok(a)) => out.append((
                    PyBytes::new(py, &a.answer),
                    a.replayed,
                    a.setl_id,
                    a.timing.map(|t| (t.preprocess_ns, t.split_ns)),
                ))?,
                Some(Err(e)) => out.append(ledger_error("settle", e).into_value(py))?,
                None => return Err(refused("settle_batch: an answer is missing")),
            }
        }
        Ok(out)
    }
}

/// Center mode's keep (engine_rs/src/ledger/center_mode.rs `Kept`): the center's
/// `CenterSettleResponse` bytes, the accumulator year and pool, the line-results blob and
/// the fee lines' digest as computed before the center was asked.
type KeptArgs = (Vec<u8>, i64, String, Vec<u8>, Vec<u8>);

/// The caller as Python hands it over: (fixmedins_code, hosp_lv, admdvs, opter, roles, rpc).
type CallerArgs = (String, u32, String, String, String, String);

trait AsCaller {
    fn who(&self) -> Who<'_>;
    fn caller<'a>(&'a self, policy: &'a PyPolicy, catalog: &'a PyCatalog) -> Caller<'a>;
}

impl AsCaller for CallerArgs {
    fn who(&self) -> Who<'_> {
        Who {
            fixmedins_code: &self.0,
            opter: &self.3,
            roles: &self.4,
            rpc: &self.5,
        }
    }

    fn caller<'a>(&'a self, policy: &'a PyPolicy, catalog: &'a PyCatalog) -> Caller<'a> {
        Caller {
            who: self.who(),
            hosp_lv: self.1,
            admdvs: &self.2,
            policy: &policy.inner,
            catalog: &catalog.inner,
        }
    }
}

/// A request's bytes as its message; malformed bytes are the caller's error.
/// The center's answer a keep records: one that does not decode is the center's fault,
/// not the caller's (UNAVAILABLE: a retry of the msgid meets the center's stored answer).
fn center_answer(answer: &[u8]) -> PyResult<wire::CenterSettleResponse> {
    wire::CenterSettleResponse::decode(answer).map_err(|e| {
        ledger_error(
            "decode",
            Refusal::unavailable(format!(
                "the center's answer could not be read ({e}); nothing was kept here: retry \
                 with the same msgid"
            ))
            .into(),
        )
    })
}

fn decode<M: Message + Default>(request: &[u8]) -> PyResult<M> {
    M::decode(request).map_err(|e| {
        ledger_error(
            "decode",
            Refusal::field("request", format!("malformed request message: {e}")).into(),
        )
    })
}

/// The front-end node a ledger settles for: its node id (in every id it issues), its
/// clock zone (settlement days), the personal-data seal key and the version new values
/// are sealed with (1 AES-256-GCM, 2 SM4-GCM), and the audit chain's key.
#[pyclass(module = "engine_rs", name = "LedgerNode", frozen)]
pub struct PyLedgerNode {
    inner: Node,
}

#[pymethods]
impl PyLedgerNode {
    #[new]
    fn new(
        node_id: String,
        tz_offset_min: i64,
        pii_seal: &[u8],
        pii_version: u8,
        audit_key: Vec<u8>,
    ) -> PyResult<Self> {
        let vault = Vault::new(pii_seal, pii_version).map_err(|e| refused(e.0))?;
        Ok(Self {
            inner: Node {
                node_id,
                tz_offset_min,
                vault,
                audit_key,
            },
        })
    }

    #[getter]
    fn node_id(&self) -> &str {
        &self.inner.node_id
    }
}
