# Overflow-checked size arithmetic (csrc/gc_checked.h): the one place where
# a size that decides an allocation or an index bound is multiplied or added.
cdef extern from "gc_checked.h" nogil:
    # 1 and *r = a op b, or 0 when the result does not fit (or a, b < 0)
    bint gc_size_mul(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *r)
    bint gc_size_add(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *r)
    bint gc_size_mul3(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t *r)
    # malloc(max(count, 1) * size), NULL when out of memory or on overflow
    void *gc_malloc_n(Py_ssize_t count, size_t size)

