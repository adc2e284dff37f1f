//! `keepsake-loadgen scale` at a small size against this crate's server binary: the tool fills,
//! starts, restarts and stops the server, and checks every answer it times (each sampled user's
//! first pull and as-of read hold all of its items; the fleet restore undoes the new work). So
//! this test is also an end-to-end check that a log filled through the library in steps serves
//! cold users, reads the past and restores after each restart.
#![allow(clippy::expect_used, clippy::print_stdout)]

use keepsake_loadgen::scale::{self, ScaleConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_scale_run_measures_every_step_through_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = ScaleConfig {
        bin: env!("CARGO_BIN_EXE_keepsake").into(),
        dir: dir.path().to_path_buf(),
        users: 2_000,
        items: 3,
        steps: vec![50, 100],
        work_users: 20,
        patches: 4,
        checkpoint_rounds: 3,
        cold_samples: 10,
        restore_users: 100,
        register_all: true,
        view_memory_mb: 64,
        doc_bytes: (300, 700),
        seed: 7,
    };
    let report = scale::run(cfg).await.expect("the run");
    assert_eq!(report.steps.len(), 2);
    for (step, users) in report.steps.iter().zip([1_000, 2_000]) {
        assert_eq!(step.users, users);
        assert_eq!(step.fill.events, 1_000 * 3);
        // Every filled user and each sampled one got a device through the server.
        assert_eq!(step.registered, 1_000 + 20 + 10);
        assert!(step.checkpoint_bytes > 0, "the new work was checkpointed");
        // Each round's work was checkpointed, and the step's figure is their median.
        assert_eq!(step.checkpoint_rounds.len(), 3);
        assert!(
            step.checkpoint_rounds
                .iter()
                .all(|r| r.bytes > 0 && r.secs > 0.0)
        );
        let mut secs: Vec<f64> = step.checkpoint_rounds.iter().map(|r| r.secs).collect();
        secs.sort_by(f64::total_cmp);
        assert_eq!(step.checkpoint_secs, secs[1]);
        assert!(step.restart_secs > 0.0 && step.rss_ready_bytes > 0);
        assert!(step.cold_pull_p99_ms > 0.0 && step.as_of_p99_ms > 0.0);
        assert_eq!(step.restore_users, 100);
        // Each work user's 3 items were patched (4 patches, item p % 3, in each of 3 rounds):
        // restored, 3 each.
        assert_eq!(step.restore_changes, 20 * 3);
        assert!(step.kept.history + step.kept.segments > 0);
        assert!(step.log_bytes_per_event > 0.0);
    }
    assert_eq!(report.steps[1].events, report.steps[0].events * 2);
    let table = report.table();
    println!("{table}");
    assert!(table.contains("target: restart to ready"), "{table}");
}
