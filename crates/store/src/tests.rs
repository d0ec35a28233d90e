use modelship_types::{ReplicaState, RunStatus};

use super::*;

fn spec(name: &str) -> modelship_types::ModelDeployment {
    serde_json::from_str(&format!(
        r#"{{"apiVersion":"modelship.dev/v1alpha1","kind":"ModelDeployment",
            "metadata":{{"name":"{name}"}},"spec":{{"model":{{"source":"/m"}}}}}}"#
    ))
    .unwrap()
}

fn deployment(name: &str, revision: u32) -> Deployment {
    Deployment {
        name: name.into(),
        revision,
        replicas: 2,
        phase: Default::default(),
        created_at: 1,
        updated_at: 2,
    }
}

fn revision(name: &str, number: u32) -> Revision {
    Revision {
        deployment: name.into(),
        number,
        spec: spec(name),
        artifact: "/m".into(),
        artifact_digest: "abc".into(),
        image: None,
        plan: None,
        legacy_memory_estimate: None,
        cause: "deploy".into(),
        created_at: 3,
    }
}

fn replica(id: &str) -> Replica {
    Replica {
        id: id.into(),
        deployment: "a".into(),
        revision: 1,
        endpoint: "127.0.0.1:1".into(),
        pid: Some(7),
        state: ReplicaState::Ready,
        restarts: 0,
        exited_at: None,
        started_at: 4,
        target: Default::default(),
        reason: None,
        reserved: None,
    }
}

#[test]
fn everything_written_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let store = Store::open(&path).unwrap();
        store
            .put_revision(&deployment("a", 1), &revision("a", 1))
            .unwrap();
        store
            .put_revision(&deployment("a", 2), &revision("a", 2))
            .unwrap();
        store
            .update_replicas(&[replica("a-1-0"), replica("a-1-1")], &[])
            .unwrap();
        store.update_replicas(&[], &["a-1-0".into()]).unwrap();
        let run = store
            .start_run(Run {
                id: 0,
                deployment: "a".into(),
                revision: None,
                status: RunStatus::Running,
                error: None,
                stages: vec![],
                started_at: 5,
                finished_at: None,
                spec: None,
                retry_of: None,
                attempt: 1,
                retried_as: None,
            })
            .unwrap();
        assert_eq!(run.id, 1);
        store
            .put_run(&Run {
                revision: Some(2),
                ..run
            })
            .unwrap();
        store
            .add_event(&Event {
                deployment: "a".into(),
                at: 6,
                message: "hi".into(),
            })
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.deployment("a").unwrap(), Some(deployment("a", 2)));
    assert_eq!(store.last_revision_number("a").unwrap(), 2);
    assert_eq!(store.last_revision_number("b").unwrap(), 0);
    assert_eq!(store.revisions(Some("a")).unwrap().len(), 2);
    assert_eq!(store.revision("a", 1).unwrap(), Some(revision("a", 1)));
    assert_eq!(store.replicas().unwrap(), vec![replica("a-1-1")]);
    assert_eq!(store.run(1).unwrap().unwrap().revision, Some(2));
    assert_eq!(store.events("a").unwrap()[0].message, "hi");

    // The run was left running by a store that closed: the next start
    // ends it, once.
    let ended = store.interrupt_runs(50).unwrap();
    assert_eq!(ended.len(), 1);
    let run = store.run(1).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.finished_at, Some(50));
    assert!(run.error.unwrap().starts_with("interrupted"));
    assert!(store.interrupt_runs(60).unwrap().is_empty());

    // A run whose rollout a deployment's phase carries on is not ended: the
    // next control plane's controller goes on with it.
    let carried = store
        .start_run(Run {
            status: RunStatus::Running,
            error: None,
            finished_at: None,
            ..store.run(1).unwrap().unwrap()
        })
        .unwrap();
    let mut rolling = deployment("a", 2);
    rolling.phase = modelship_types::Phase::Rolling {
        progress: modelship_types::Progress {
            run: Some(carried.id),
            previous: Some(1),
            started_at: 0,
            since: 0,
            record: vec![],
            ready: 0,
        },
    };
    store.put_deployment(&rolling).unwrap();
    assert!(store.interrupt_runs(70).unwrap().is_empty());
    assert_eq!(
        store.run(carried.id).unwrap().unwrap().status,
        RunStatus::Running
    );

    store.delete_deployment("a").unwrap();
    assert_eq!(store.deployment("a").unwrap(), None);
    assert!(store.revisions(Some("a")).unwrap().is_empty());
    // Runs and events stay: they are history.
    assert_eq!(store.runs(Some("a")).unwrap().len(), 2);
}

#[test]
fn a_corrupt_record_is_an_error_naming_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    store
        .with(|c| {
            c.execute("INSERT INTO deployments (name, body) VALUES ('x', '{')", [])?;
            Ok(())
        })
        .unwrap();
    let err = store.deployments().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                kind: "deployment",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_database_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    std::fs::write(
        &path,
        b"this is not sqlite, it is long enough to have a header",
    )
    .unwrap();
    let err = Store::open(&path).err().unwrap();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
}

#[test]
fn update_deployment_changes_only_what_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    assert_eq!(store.update_deployment("a", |_| true).unwrap(), None);
    store.put_deployment(&deployment("a", 1)).unwrap();
    let after = store
        .update_deployment("a", |d| {
            d.replicas = 5;
            true
        })
        .unwrap()
        .unwrap();
    assert_eq!((after.revision, after.replicas), (1, 5));
    // Declined: nothing written.
    store
        .update_deployment("a", |d| {
            d.replicas = 9;
            false
        })
        .unwrap();
    assert_eq!(store.deployment("a").unwrap().unwrap().replicas, 5);
}
