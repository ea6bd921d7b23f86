//! The thread-local that says "tokioloop is polling (or dropping) one of its tasks on this
//! thread, for this loop": a task's poll sets it around the user's future, and leaves made while
//! it is set (`time::sleep`) use the loop's own machinery instead of tokio's. Only `native_task`
//! sets it; the leaves read it.

use std::cell::Cell;

use tokioloop_ffi as ffi;

use crate::bridge::NativeLoop;

thread_local! {
    static POLLING: Cell<Option<NativeLoop>> = const { Cell::new(None) };
}

/// The loop whose task is being polled on this thread, if any.
pub(crate) fn polling_loop() -> Option<NativeLoop> {
    POLLING.get()
}

/// Whether tokioloop is polling or dropping a task of `lp` on this thread right now: the only
/// time a leaf of that loop may call the ABI.
pub(crate) fn is_polling(lp: *const ffi::Loop) -> bool {
    polling_loop().is_some_and(|native| std::ptr::eq(native.lp, lp))
}

/// Marks this thread as polling a task of `native` until dropped; restores what was there
/// before (a native poll never nests today, but a leaf must not see a stale loop if one does).
pub(crate) struct PollingScope {
    previous: Option<NativeLoop>,
}

impl PollingScope {
    pub(crate) fn enter(native: NativeLoop) -> Self {
        PollingScope {
            previous: POLLING.replace(Some(native)),
        }
    }
}

impl Drop for PollingScope {
    fn drop(&mut self) {
        POLLING.set(self.previous);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::tests::fake_loop;

    #[test]
    fn a_scope_sets_the_loop_and_restores_the_previous_one() {
        let (outer, inner) = (fake_loop(1), fake_loop(2));
        assert!(polling_loop().is_none());
        {
            let _outer = PollingScope::enter(outer);
            assert!(is_polling(outer.lp));
            {
                let _inner = PollingScope::enter(inner);
                assert!(is_polling(inner.lp) && !is_polling(outer.lp));
            }
            assert!(is_polling(outer.lp));
        }
        assert!(polling_loop().is_none());
    }
}
