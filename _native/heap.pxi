# The template's heap made immortal before it is forked (Python 3.12+).
#
# A forked shim copies every page it writes, and using an object writes its
# reference count: a shim that calls a function copies the pages of the
# function, its code, its constants, its module's dict. An immortal object's
# count is never written (PEP 683), so those pages stay shared with the
# template. The objects alive in the template are the modules, classes and
# functions every shim keeps for its whole life anyway: not freeing them
# costs nothing.

cdef extern from *:
    """
    /* 1 if this interpreter has immortal objects (3.12+, not free-threaded). */
    #if !defined(Py_GIL_DISABLED) && defined(_Py_IMMORTAL_INITIAL_REFCNT)
    #define PYSHIM_IMMORTAL_REFCNT _Py_IMMORTAL_INITIAL_REFCNT
    #elif !defined(Py_GIL_DISABLED) && defined(_Py_IMMORTAL_REFCNT)
    #define PYSHIM_IMMORTAL_REFCNT _Py_IMMORTAL_REFCNT
    #endif
    #ifdef PYSHIM_IMMORTAL_REFCNT
    static const int pyshim_has_immortal = 1;
    static void pyshim_set_immortal(PyObject *op) { op->ob_refcnt = PYSHIM_IMMORTAL_REFCNT; }
    #else
    static const int pyshim_has_immortal = 0;
    static void pyshim_set_immortal(PyObject *op) { (void)op; }
    #endif
    """
    const int pyshim_has_immortal
    void pyshim_set_immortal(object op)


def make_heap_immortal():
    """Make every object the collector knows of immortal, and what they
    refer to (strings, numbers, code and its constants included). Returns
    how many objects (0: this interpreter has no immortal objects)."""
    if not pyshim_has_immortal:
        return 0
    import gc
    code_type = type(make_heap_immortal.__code__)
    stack = gc.get_objects()
    seen = set()        # made after that list: not in it, and stays mortal
    cdef Py_ssize_t count = 0
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        pyshim_set_immortal(o)
        count += 1
        if type(o) is code_type:    # not seen by the collector: its parts by hand
            stack += (o.co_consts, o.co_names, o.co_varnames, o.co_freevars,
                      o.co_cellvars, o.co_filename, o.co_name, o.co_qualname)
        else:
            stack.extend(gc.get_referents(o))
    return count
