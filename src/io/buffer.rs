//! `BufferView`: a borrowed `Py_buffer` over a bytes-like object, for the syscalls that read
//! from or write into Python memory (transports, TLS, `sock_*`). Needs the GIL while alive.

use pyo3::ffi;
use pyo3::prelude::*;

/// A borrowed `Py_buffer` over a bytes-like object, released on drop.
pub struct BufferView {
    view: ffi::Py_buffer,
}

impl BufferView {
    pub fn get(object: &Bound<'_, PyAny>, flags: std::os::raw::c_int) -> PyResult<Self> {
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: PyObject_GetBuffer fills `view` on success (0) and leaves it unused on failure.
        unsafe {
            if ffi::PyObject_GetBuffer(object.as_ptr(), view.as_mut_ptr(), flags) < 0 {
                return Err(PyErr::fetch(object.py()));
            }
            Ok(BufferView {
                view: view.assume_init(),
            })
        }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.view.buf.cast()
    }

    pub fn len(&self) -> usize {
        self.view.len as usize
    }
}

impl Drop for BufferView {
    fn drop(&mut self) {
        // SAFETY: acquired by PyObject_GetBuffer and released exactly once; the GIL is held
        // wherever a BufferView lives (it never leaves a method that has `py`).
        unsafe { ffi::PyBuffer_Release(&mut self.view) };
    }
}
