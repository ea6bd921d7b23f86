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
fn module_attribute<'py>(
    module: &Bound<'py, PyModule>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
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
fn refuse_keyword(name: &str, since: Option<&str>) -> PyErr {
    let hint = since
        .map(|v| format!(" (asyncio has it from Python {v})"))
        .unwrap_or_default();
    PyTypeError::new_err(format!(
        "create_task() got an unexpected keyword argument '{name}'{hint}"
    ))
}

/// What `loop.create_task(coro, **kwargs)` does in the running version's stdlib.
///
/// 3.14 (gh-128307) passes every keyword through untouched: to the task factory, or to
/// `asyncio.Task` next to `loop=` (so `eager_start=`, and any keyword a custom factory takes).
/// Before it the method takes `name=` and (3.11+) `context=` only: a factory gets `context=`
/// only when it is not None and the name is set afterwards.
pub fn new_task<'py>(
    event_loop: &Bound<'py, PyAny>,
    factory: Option<Bound<'py, PyAny>>,
    coro: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
    debug: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = event_loop.py();
    let kwargs = kwargs.filter(|k| !k.is_empty());
    if py.version_info() < (3, 14) {
        return new_task_named(event_loop, factory, coro, kwargs, debug);
    }
    if let Some(factory) = factory {
        return factory.call((event_loop, coro), kwargs);
    }
    let task_class = module_attribute(module(py, &TASKS_MODULE, "asyncio.tasks")?, intern!(py, "Task"))?;
    let task = match kwargs {
        None => call_with_loop(&task_class, Some(coro), event_loop)?,
        Some(given) => {
            if given.contains(intern!(py, "loop"))? {
                return Err(PyTypeError::new_err(
                    "Task() got multiple values for keyword argument 'loop'",
                ));
            }
            let all = given.copy()?;
            all.set_item(intern!(py, "loop"), event_loop)?;
            task_class.call((coro,), Some(&all))?
        }
    };
    drop_own_frame(&task, debug)?;
    Ok(task)
}

/// The stdlib drops its own create_task frame from a debug-mode task's (or handle's) creation
/// traceback.
pub(crate) fn drop_own_frame(task: &Bound<'_, PyAny>, debug: bool) -> PyResult<()> {
    if debug {
        let traceback = task.getattr(intern!(task.py(), "_source_traceback"))?;
        if traceback.is_truthy()? {
            traceback.del_item(-1)?;
        }
    }
    Ok(())
}

/// `create_task(coro, *, name=None[, context=None])`: 3.10-3.13.
fn new_task_named<'py>(
    event_loop: &Bound<'py, PyAny>,
    factory: Option<Bound<'py, PyAny>>,
    coro: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
    debug: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = event_loop.py();
    let (mut name, mut context) = (None, None);
    if let Some(kwargs) = kwargs {
        for (key, value) in kwargs.iter() {
            let key = key.cast_into::<PyString>()?;
            match key.to_str()? {
                "name" => name = Some(value),
                "context" if py.version_info() >= (3, 11) => context = Some(value),
                "context" => return Err(refuse_keyword("context", Some("3.11"))),
                "eager_start" => return Err(refuse_keyword("eager_start", Some("3.14"))),
                other => return Err(refuse_keyword(other, None)),
            }
        }
    }
    let context = context.filter(|c| !c.is_none());
    let name = name.filter(|n| !n.is_none());
    let Some(factory) = factory else {
        let task_class = module_attribute(module(py, &TASKS_MODULE, "asyncio.tasks")?, intern!(py, "Task"))?;
        let task = if name.is_none() && context.is_none() {
            call_with_loop(&task_class, Some(coro), event_loop)?
        } else {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "loop"), event_loop)?;
            kwargs.set_item(intern!(py, "name"), name)?;
            if let Some(context) = context {
                kwargs.set_item(intern!(py, "context"), context)?;
            }
            task_class.call((coro,), Some(&kwargs))?
        };
        drop_own_frame(&task, debug)?;
        return Ok(task);
    };
    let task = match context {
        None => factory.call1((event_loop, coro))?,
        Some(context) => {
            let kwargs = PyDict::new(py);
            kwargs.set_item(intern!(py, "context"), context)?;
            factory.call((event_loop, coro), Some(&kwargs))?
        }
    };
    if let Some(name) = name {
        task.call_method1(intern!(py, "set_name"), (name,))?;
    }
    Ok(task)
}
