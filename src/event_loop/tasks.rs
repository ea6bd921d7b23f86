//! `create_future` and `create_task`: CPython's own `asyncio.Future`/`asyncio.Task`, made natively.
//!
//! Both are per-task hot paths (a `gather` of 100k coroutines is 100k `create_task` calls), so
//! they skip the Python frame and call the classes with vectorcall and a `loop=` keyword. The
//! classes are looked up on `asyncio.futures` / `asyncio.tasks` at each call, as the stdlib
//! loop does, so patching them keeps working. Called only from `LoopCore`'s methods.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyString, PyTuple};

static FUTURES_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static TASKS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static LOOP_KWNAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

fn module<'py, 'a>(
    py: Python<'py>,
    cell: &'a PyOnceLock<Py<PyModule>>,
    name: &str,
) -> PyResult<&'a Bound<'py, PyModule>> {
    cell.get_or_try_init(py, || Ok::<_, PyErr>(py.import(name)?.unbind()))
        .map(|m| m.bind(py))
}

/// `callable(*positional, loop=loop)` through vectorcall; at most one positional argument.
fn call_with_loop<'py>(
    callable: &Bound<'py, PyAny>,
    positional: Option<&Bound<'py, PyAny>>,
    event_loop: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    let kwnames = LOOP_KWNAMES.get_or_init(py, || PyTuple::new(py, ["loop"]).expect("a 1-tuple").unbind());
    let args = match positional {
        Some(first) => [first.as_ptr(), event_loop.as_ptr()],
        None => [event_loop.as_ptr(), std::ptr::null_mut()],
    };
    let count = usize::from(positional.is_some());
    // SAFETY: `args` holds borrowed pointers kept alive by the caller's Bounds for the call's
    // duration; the one after the positionals is the keyword value named by `kwnames`.
    unsafe {
        let result = ffi::PyObject_Vectorcall(callable.as_ptr(), args.as_ptr(), count, kwnames.as_ptr());
        Bound::from_owned_ptr_or_err(py, result)
    }
}

/// `module.name`, read from the module's dict when it is there (the common case: a plain
/// module attribute, perhaps patched), through getattr otherwise.
fn module_attribute<'py>(module: &Bound<'py, PyModule>, name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
    let py = module.py();
    // SAFETY: GIL held; PyModule_GetDict returns a borrowed reference to the module's dict,
    // and PyDict_GetItemWithError a borrowed value (NULL with or without an error set).
    unsafe {
        let dict = ffi::PyModule_GetDict(module.as_ptr());
        if !dict.is_null() {
            let value = ffi::PyDict_GetItemWithError(dict, name.as_ptr());
            if !value.is_null() {
                return Ok(Bound::from_borrowed_ptr(py, value));
            }
            if let Some(err) = PyErr::take(py) {
                return Err(err);
            }
        }
    }
    module.getattr(name)
}

/// `asyncio.Future(loop=event_loop)`, the class looked up at each call as the stdlib does.
pub fn new_future<'py>(event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = event_loop.py();
    let module = module(py, &FUTURES_MODULE, "asyncio.futures")?;
    let future_class = module_attribute(module, intern!(py, "Future"))?;
    call_with_loop(&future_class, None, event_loop)
}

/// A keyword the running version's `loop.create_task` does not take, refused as Python would.
fn refuse_keyword(name: &str, since: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "create_task() got an unexpected keyword argument '{name}' (asyncio has it from Python {since})"
    ))
}

/// What `loop.create_task` does in the running version's stdlib: `context=` from 3.11,
/// `eager_start=` from 3.14 (its documented form; refused below it, as the stdlib refuses it).
pub fn new_task<'py>(
    event_loop: &Bound<'py, PyAny>,
    factory: Option<Bound<'py, PyAny>>,
    coro: &Bound<'py, PyAny>,
    name: Option<Bound<'py, PyAny>>,
    context: Option<Bound<'py, PyAny>>,
    eager_start: Option<Bound<'py, PyAny>>,
    debug: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = event_loop.py();
    if eager_start.is_some() && py.version_info() < (3, 14) {
        return Err(refuse_keyword("eager_start", "3.14"));
    }
    let context = context.filter(|c| !c.is_none());
    if context.is_some() && py.version_info() < (3, 11) {
        return Err(refuse_keyword("context", "3.11"));
    }
    let name = name.filter(|n| !n.is_none());
    let Some(factory) = factory else {
        let task_class = module_attribute(module(py, &TASKS_MODULE, "asyncio.tasks")?, intern!(py, "Task"))?;
        let task = if name.is_none() && context.is_none() && eager_start.is_none() {
            call_with_loop(&task_class, Some(coro), event_loop)?
        } else {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "loop"), event_loop)?;
            kwargs.set_item(intern!(py, "name"), name)?;
            if let Some(context) = context {
                kwargs.set_item(intern!(py, "context"), context)?;
            }
            if let Some(eager) = eager_start {
                kwargs.set_item(intern!(py, "eager_start"), eager)?;
            }
            task_class.call((coro,), Some(&kwargs))?
        };
        if debug {
            // The stdlib drops its own create_task frame from the creation traceback.
            let traceback = task.getattr(intern!(py, "_source_traceback"))?;
            if traceback.is_truthy()? {
                traceback.del_item(-1)?;
            }
        }
        return Ok(task);
    };
    let task = if context.is_none() && eager_start.is_none() {
        factory.call1((event_loop, coro))?
    } else {
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "context"), context)?;
        if let Some(eager) = eager_start {
            kwargs.set_item(intern!(py, "eager_start"), eager)?;
        }
        factory.call((event_loop, coro), Some(&kwargs))?
    };
    if let Some(name) = name {
        task.call_method1(intern!(py, "set_name"), (name,))?;
    }
    Ok(task)
}
