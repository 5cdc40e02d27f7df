/*
 * qloop._qloop: module init (multi-phase, module state, heap types).
 *
 * Subinterpreters are not supported: the handle freelists are per process.
 */
#include "qloop_ext.h"

static struct PyModuleDef qloop_module;

static inline qloop_state *get_state(PyObject *module)
{
    return (qloop_state *)PyModule_GetState(module);
}

/* One interpreter per process (see above), so one state; set at exec.
 * (PyType_GetModuleByDef would do for 3.11+, but not for 3.10.) */
static qloop_state *the_state;

qloop_state *qloop_state_from_type(PyTypeObject *type)
{
    (void)type;
    if (!the_state)
        PyErr_SetString(PyExc_RuntimeError, "qloop._qloop is not initialised");
    return the_state;
}

/* _set_helpers(handle_exception, handle_repr, extract_stack, log_slow,
 *              check_callback): the slow paths, written in Python. */
static PyObject *set_helpers(PyObject *module, PyObject *const *args,
                             Py_ssize_t nargs)
{
    qloop_state *st = get_state(module);
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_set_helpers() takes 5 arguments");
        return NULL;
    }
    Py_XSETREF(st->handle_exception, Py_NewRef(args[0]));
    Py_XSETREF(st->handle_repr, Py_NewRef(args[1]));
    Py_XSETREF(st->extract_stack, Py_NewRef(args[2]));
    Py_XSETREF(st->log_slow, Py_NewRef(args[3]));
    Py_XSETREF(st->check_callback, Py_NewRef(args[4]));
    Py_RETURN_NONE;
}

static PyObject *backend_name(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    return PyUnicode_FromString(ql_backend_name());
}

static PyMethodDef module_methods[] = {
    {"_set_helpers", (PyCFunction)(void (*)(void))set_helpers, METH_FASTCALL,
     NULL},
    {"backend_name", backend_name, METH_NOARGS,
     "The reactor's poller: 'epoll' or 'kqueue'."},
    {NULL, NULL, 0, NULL},
};

static int add_type(PyObject *module, PyType_Spec *spec, PyObject *base,
                    PyTypeObject **out)
{
    PyObject *t = PyType_FromModuleAndSpec(module, spec, base);
    if (!t)
        return -1;
    *out = (PyTypeObject *)t;
    return PyModule_AddType(module, (PyTypeObject *)t);
}

static int module_exec(PyObject *module)
{
    qloop_state *st = get_state(module);
    if (add_type(module, &qloop_loop_spec, NULL, &st->LoopType) < 0 ||
        add_type(module, &qloop_handle_spec, NULL, &st->HandleType) < 0 ||
        add_type(module, &qloop_timer_handle_spec, (PyObject *)st->HandleType,
                 &st->TimerHandleType) < 0 ||
        add_type(module, &qloop_watcher_spec, NULL, &st->WatcherType) < 0 ||
        qloop_sock_exec(module, st) < 0 ||
        qloop_datagram_exec(module) < 0 ||
        qloop_gc_hook_install() < 0 ||
        qloop_stream_exec(module, st) < 0 ||
        PyModule_AddIntConstant(module, "HAS_DIAGNOSTICS", QL_DIAG) < 0)
        return -1;
    st->str_check_thread = PyUnicode_InternFromString("_check_thread");
    st->str_current_handle = PyUnicode_InternFromString("_current_handle");
    st->str_slow_callback_duration =
        PyUnicode_InternFromString("slow_callback_duration");
    st->str_context = PyUnicode_InternFromString("context");
    if (!st->str_check_thread || !st->str_current_handle ||
        !st->str_slow_callback_duration || !st->str_context)
        return -1;
    the_state = st;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    qloop_state *st = get_state(module);
    Py_VISIT(st->LoopType);
    Py_VISIT(st->HandleType);
    Py_VISIT(st->TimerHandleType);
    Py_VISIT(st->WatcherType);
    Py_VISIT(st->handle_exception);
    Py_VISIT(st->handle_repr);
    Py_VISIT(st->extract_stack);
    Py_VISIT(st->log_slow);
    Py_VISIT(st->check_callback);
    int rc = qloop_stream_traverse(st, visit, arg);
    if (rc)
        return rc;
    return qloop_sock_traverse(st, visit, arg);
}

static int module_clear(PyObject *module)
{
    qloop_state *st = get_state(module);
    /* Freed handles keep ob_type, and PyObject_GC_Del reads it (3.11+):
     * empty the freelists while the types are still alive. */
    qloop_freelists_clear();
    Py_CLEAR(st->LoopType);
    Py_CLEAR(st->HandleType);
    Py_CLEAR(st->TimerHandleType);
    Py_CLEAR(st->WatcherType);
    Py_CLEAR(st->handle_exception);
    Py_CLEAR(st->handle_repr);
    Py_CLEAR(st->extract_stack);
    Py_CLEAR(st->log_slow);
    Py_CLEAR(st->check_callback);
    Py_CLEAR(st->str_check_thread);
    Py_CLEAR(st->str_current_handle);
    Py_CLEAR(st->str_slow_callback_duration);
    Py_CLEAR(st->str_context);
    qloop_sock_clear(st);
    qloop_stream_clear(st);
    return 0;
}

static void module_free(void *module)
{
    module_clear((PyObject *)module);
    the_state = NULL;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef qloop_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "qloop._qloop",
    .m_doc = "qloop's C core: the reactor and the hot paths of the loop.",
    .m_size = sizeof(qloop_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__qloop(void) { return PyModuleDef_Init(&qloop_module); }
