/*
 * gc_struct.c -- instantiates gc_struct_impl.h for float and double, with
 * the same runtime SIMD dispatch as gc_dense.c.
 */
#include "gc_struct.h"

#include "gc_simd.h"

#define GC_IMPL "gc_struct_impl.h"
#include "gc_instantiate.h"
