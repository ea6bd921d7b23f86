//! Panic points for the reliability suite (`tests/reliability/test_panics.py`), compiled in
//! only with the cargo feature `fault-points`; a normal build has none and pays nothing.
//!
//! `fault_point!("name")` marks a place where a panic must come out as a Python exception
//! (`PanicException`, or an unraisable report where Python has no caller to raise to), never
//! as an abort or a hang. The test arms one point by name with `_arm_fault_point(name)`; the
//! next time that point runs it disarms itself and panics. Any module may mark a point; only
//! the test arms them.

/// Panics here if the reliability test armed this point (cargo feature `fault-points`).
#[macro_export]
macro_rules! fault_point {
    ($name:literal) => {
        #[cfg(feature = "fault-points")]
        $crate::fault::hit($name);
    };
}

#[cfg(feature = "fault-points")]
mod armed {
    use parking_lot::Mutex;
    use pyo3::prelude::*;

    static ARMED: Mutex<Option<String>> = Mutex::new(None);

    pub fn hit(name: &str) {
        let fire = {
            let mut armed = ARMED.lock();
            if armed.as_deref() == Some(name) {
                *armed = None;
                true
            } else {
                false
            }
        };
        if fire {
            panic!("tokioloop fault point {name}");
        }
    }

    /// Arms the point `name` (None disarms): its next run panics once.
    #[pyfunction]
    pub fn _arm_fault_point(name: Option<String>) {
        *ARMED.lock() = name;
    }
}

#[cfg(feature = "fault-points")]
pub use armed::{_arm_fault_point, hit};
