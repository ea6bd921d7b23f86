//! ASAN liveness probe (tests/reliability/memsafety/memsafety.py): a cdylib built with exactly the
//! flags the tokioloop ASAN build gets, loaded with ctypes by the same interpreter and preload. A
//! read one byte past a heap buffer must be reported (heap-buffer-overflow) and abort the process;
//! if it returns instead, the sanitizer is not live and the ASAN run proves nothing.

use std::hint::black_box;

#[no_mangle]
pub extern "C" fn tokioloop_asan_probe(past: usize) -> u8 {
    let buffer = black_box(vec![7u8; 16]);
    let index = black_box(buffer.len() + past);
    // SAFETY: none; reading out of bounds is this probe's whole purpose.
    unsafe { *buffer.as_ptr().add(index) }
}
