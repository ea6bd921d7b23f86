//! The loom model of `io::Handoff` as the DNS completions use it (the bridge's woken-task
//! queue is the same type) (`RUSTFLAGS="--cfg tokioloop_loom" cargo test
//! --lib loom`, as `nox -s lint` runs it): a blocking worker publishes an answer while the loop
//! parks, or while it takes the answers. In every interleaving no answer is lost: the parking
//! loop sees the flag on its re-check or is woken (once at most), and an answer that arrives
//! during a take is still flagged for the next one. Test-only; only `dns` declares it.

use std::task::{Wake as TaskWake, Waker};

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;

use super::{Completions, Outcome};
use crate::io::Wake;

struct CountingWaker(AtomicUsize);

impl TaskWake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A worker's answer; which one does not matter to the protocol.
fn answer() -> Outcome {
    Outcome::Errno(libc::EAI_AGAIN)
}

#[test]
fn loom_dns_answer_not_lost_while_the_loop_parks() {
    loom::model(|| {
        let wake = Arc::new(Wake::default());
        let completions = Arc::new(Completions::default());
        let woken = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
        wake.set_waker(Some(Waker::from(woken.clone())));

        let worker = {
            let (wake, completions) = (wake.clone(), completions.clone());
            loom::thread::spawn(move || completions.publish((1, answer()), &wake))
        };
        // The loop's park (event_loop/turn.rs), with `has_work` down to the DNS flag.
        wake.set_idle(true);
        let saw_answer = completions.is_pending();
        if saw_answer {
            wake.set_idle(false);
        }
        worker.join().unwrap();
        let wakeups = woken.0.load(Ordering::SeqCst);
        assert!(
            saw_answer || wakeups == 1,
            "an answer was published and the loop slept on"
        );
        assert!(wakeups <= 1, "woken more than once");
        // Seen or woken, the loop's next turn takes the answer.
        assert_eq!(completions.take().map_or(0, |answers| answers.len()), 1);
    });
}

#[test]
fn loom_dns_answer_not_stranded_by_a_concurrent_take() {
    loom::model(|| {
        let wake = Arc::new(Wake::default());
        let completions = Arc::new(Completions::default());
        let workers: Vec<_> = (0..2u64)
            .map(|id| {
                let (wake, completions) = (wake.clone(), completions.clone());
                loom::thread::spawn(move || completions.publish((id, answer()), &wake))
            })
            .collect();
        // A turn's `complete` racing the workers.
        let mut taken = completions.take().map_or(0, |answers| answers.len());
        for worker in workers {
            worker.join().unwrap();
        }
        // Whatever the first take missed must still be flagged for the next one.
        taken += completions.take().map_or(0, |answers| answers.len());
        assert_eq!(taken, 2, "an answer stayed in the list with the flag down");
        assert!(completions.take().is_none_or(|answers| answers.is_empty()));
    });
}
