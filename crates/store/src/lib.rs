//! The control plane's state in one SQLite file: deployments, revisions,
//! replicas, pipeline runs and events. Each record is a JSON document keyed
//! by the columns it is looked up by; a change that touches several records
//! is one transaction, so a crash never leaves half of it. Synchronous (a
//! write takes microseconds); owns no policy.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use modelship_types::{Deployment, Event, Replica, Revision, Run};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("a stored {kind} record is not valid")]
    Corrupt {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS deployments (name TEXT PRIMARY KEY, body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS revisions (
        deployment TEXT NOT NULL, number INTEGER NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (deployment, number));
    CREATE TABLE IF NOT EXISTS replicas (id TEXT PRIMARY KEY, deployment TEXT NOT NULL, body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, deployment TEXT NOT NULL, body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, deployment TEXT NOT NULL, at INTEGER NOT NULL, message TEXT NOT NULL);
";

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating when needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let open = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open)?;
        // WAL: readers (the API) never wait for the controller's writes, and
        // a killed process loses no committed transaction.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        conn.execute_batch(SCHEMA).map_err(open)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is usable.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    // Deployments ------------------------------------------------------

    pub fn deployment(&self, name: &str) -> Result<Option<Deployment>> {
        self.with(|c| {
            one(
                c,
                "SELECT body FROM deployments WHERE name = ?1",
                params![name],
                "deployment",
            )
        })
    }

    pub fn deployments(&self) -> Result<Vec<Deployment>> {
        self.with(|c| {
            all(
                c,
                "SELECT body FROM deployments ORDER BY name",
                [],
                "deployment",
            )
        })
    }

    pub fn put_deployment(&self, d: &Deployment) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO deployments (name, body) VALUES (?1, ?2)",
                params![d.name, json(d)],
            )?;
            Ok(())
        })
    }

    /// Reads, changes and writes one deployment under one lock, so that two
    /// writers (the autoscaler, a rollout, `scale`) never lose each other's
    /// change. `change` returns whether to write; the result is the
    /// deployment as stored afterwards, `None` if there is none.
    pub fn update_deployment(
        &self,
        name: &str,
        change: impl FnOnce(&mut Deployment) -> bool,
    ) -> Result<Option<Deployment>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let Some(mut d) = one::<Deployment>(
                &tx,
                "SELECT body FROM deployments WHERE name = ?1",
                params![name],
                "deployment",
            )?
            else {
                return Ok(None);
            };
            if change(&mut d) {
                tx.execute(
                    "UPDATE deployments SET body = ?1 WHERE name = ?2",
                    params![json(&d), name],
                )?;
            }
            tx.commit()?;
            Ok(Some(d))
        })
    }

    /// Records a new revision and makes it the one the deployment rolls out,
    /// in one transaction.
    pub fn put_revision(&self, deployment: &Deployment, revision: &Revision) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO revisions (deployment, number, body) VALUES (?1, ?2, ?3)",
                params![revision.deployment, revision.number, json(revision)],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO deployments (name, body) VALUES (?1, ?2)",
                params![deployment.name, json(deployment)],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Deletes `name` only if `still(current)` holds for it as stored, in
    /// one transaction: whether it was deleted.
    pub fn delete_deployment_if(
        &self,
        name: &str,
        still: impl FnOnce(&Deployment) -> bool,
    ) -> Result<bool> {
        self.with(|c| {
            let tx = c.transaction()?;
            let current = one::<Deployment>(
                &tx,
                "SELECT body FROM deployments WHERE name = ?1",
                params![name],
                "deployment",
            )?;
            if !current.is_some_and(|d| still(&d)) {
                return Ok(false);
            }
            tx.execute("DELETE FROM deployments WHERE name = ?1", params![name])?;
            tx.execute("DELETE FROM revisions WHERE deployment = ?1", params![name])?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// Removes a deployment and its revisions (its replicas go as they stop).
    pub fn delete_deployment(&self, name: &str) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM deployments WHERE name = ?1", params![name])?;
            tx.execute("DELETE FROM revisions WHERE deployment = ?1", params![name])?;
            tx.commit()?;
            Ok(())
        })
    }

    // Revisions --------------------------------------------------------

    pub fn revision(&self, deployment: &str, number: u32) -> Result<Option<Revision>> {
        self.with(|c| {
            one(
                c,
                "SELECT body FROM revisions WHERE deployment = ?1 AND number = ?2",
                params![deployment, number],
                "revision",
            )
        })
    }

    /// A deployment's revisions, oldest first; all of them for `None`.
    pub fn revisions(&self, deployment: Option<&str>) -> Result<Vec<Revision>> {
        self.with(|c| match deployment {
            Some(d) => all(
                c,
                "SELECT body FROM revisions WHERE deployment = ?1 ORDER BY number",
                params![d],
                "revision",
            ),
            None => all(
                c,
                "SELECT body FROM revisions ORDER BY deployment, number",
                [],
                "revision",
            ),
        })
    }

    /// The highest revision number ever recorded for `deployment`, 0 if none.
    pub fn last_revision_number(&self, deployment: &str) -> Result<u32> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT COALESCE(MAX(number), 0) FROM revisions WHERE deployment = ?1",
                params![deployment],
                |r| r.get(0),
            )?)
        })
    }

    // Replicas ---------------------------------------------------------

    pub fn replicas(&self) -> Result<Vec<Replica>> {
        self.with(|c| all(c, "SELECT body FROM replicas ORDER BY id", [], "replica"))
    }

    /// Writes every replica in `put` and removes the ids in `remove`, in one
    /// transaction.
    pub fn update_replicas(&self, put: &[Replica], remove: &[String]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            for r in put {
                tx.execute(
                    "INSERT OR REPLACE INTO replicas (id, deployment, body) VALUES (?1, ?2, ?3)",
                    params![r.id, r.deployment, json(r)],
                )?;
            }
            for id in remove {
                tx.execute("DELETE FROM replicas WHERE id = ?1", params![id])?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    // Runs -------------------------------------------------------------

    /// Records a new run; returns it with its id.
    pub fn start_run(&self, mut run: Run) -> Result<Run> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO runs (deployment, body) VALUES (?1, '{}')",
                params![run.deployment],
            )?;
            run.id = tx.last_insert_rowid() as u64;
            tx.execute(
                "UPDATE runs SET body = ?1 WHERE id = ?2",
                params![json(&run), run.id as i64],
            )?;
            tx.commit()?;
            Ok(run)
        })
    }

    /// Ends every run still recorded as running (see [`Run::interrupted`])
    /// but the ones whose rollout a deployment's phase carries on: called
    /// when a control plane starts, since no pipeline task survives the one
    /// before, while recorded rollouts do. Returns the runs it ended.
    pub fn interrupt_runs(&self, now_ms: u64) -> Result<Vec<Run>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let deployments: Vec<Deployment> =
                all(&tx, "SELECT body FROM deployments", [], "deployment")?;
            let rolling: Vec<u64> = deployments.iter().filter_map(|d| d.phase.run()).collect();
            let runs: Vec<Run> = all(&tx, "SELECT body FROM runs ORDER BY id", [], "run")?;
            let ended: Vec<Run> = runs
                .iter()
                .filter(|r| !rolling.contains(&r.id))
                .filter_map(|r| r.interrupted(now_ms))
                .collect();
            for run in &ended {
                tx.execute(
                    "UPDATE runs SET body = ?1 WHERE id = ?2",
                    params![json(run), run.id as i64],
                )?;
            }
            tx.commit()?;
            Ok(ended)
        })
    }

    pub fn put_run(&self, run: &Run) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET body = ?1 WHERE id = ?2",
                params![json(run), run.id as i64],
            )?;
            Ok(())
        })
    }

    pub fn run(&self, id: u64) -> Result<Option<Run>> {
        self.with(|c| {
            one(
                c,
                "SELECT body FROM runs WHERE id = ?1",
                params![id as i64],
                "run",
            )
        })
    }

    /// The `limit` newest runs.
    pub fn recent_runs(&self, limit: usize) -> Result<Vec<Run>> {
        self.with(|c| {
            all(
                c,
                "SELECT body FROM runs ORDER BY id DESC LIMIT ?1",
                params![limit as i64],
                "run",
            )
        })
    }

    /// Runs, newest first; of one deployment when given.
    pub fn runs(&self, deployment: Option<&str>) -> Result<Vec<Run>> {
        self.with(|c| match deployment {
            Some(d) => all(
                c,
                "SELECT body FROM runs WHERE deployment = ?1 ORDER BY id DESC",
                params![d],
                "run",
            ),
            None => all(c, "SELECT body FROM runs ORDER BY id DESC", [], "run"),
        })
    }

    // Events -----------------------------------------------------------

    pub fn add_event(&self, event: &Event) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO events (deployment, at, message) VALUES (?1, ?2, ?3)",
                params![event.deployment, event.at as i64, event.message],
            )?;
            Ok(())
        })
    }

    /// A deployment's events, oldest first.
    pub fn events(&self, deployment: &str) -> Result<Vec<Event>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT deployment, at, message FROM events WHERE deployment = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![deployment], |r| {
                Ok(Event {
                    deployment: r.get(0)?,
                    at: r.get::<_, i64>(1)? as u64,
                    message: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }
}

fn json<T: Serialize>(value: &T) -> String {
    // Our record types serialize infallibly (no maps with non-string keys).
    serde_json::to_string(value).unwrap_or_default()
}

fn parse<T: DeserializeOwned>(body: &str, kind: &'static str) -> Result<T> {
    serde_json::from_str(body).map_err(|source| StoreError::Corrupt { kind, source })
}

fn one<T: DeserializeOwned>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    kind: &'static str,
) -> Result<Option<T>> {
    let body: Option<String> = c.query_row(sql, params, |r| r.get(0)).optional()?;
    body.map(|b| parse(&b, kind)).transpose()
}

fn all<T: DeserializeOwned>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    kind: &'static str,
) -> Result<Vec<T>> {
    let mut stmt = c.prepare(sql)?;
    let bodies = stmt.query_map(params, |r| r.get::<_, String>(0))?;
    bodies.map(|b| parse(&b?, kind)).collect::<Result<Vec<T>>>()
}

#[cfg(test)]
mod tests;
