/*
 * gc_struct.c -- instantiates gc_struct_impl.h for float and double, with
 * the same runtime SIMD dispatch as gc_dense.c.
 */
#include "gc_struct.h"

#include "gc_simd.h"

#define GC_T float
#define GC_SFX s
#define GC_W 32
#include "gc_struct_impl.h"
#undef GC_T
#undef GC_SFX
#undef GC_W

#define GC_T double
#define GC_SFX d
#define GC_W 16
#include "gc_struct_impl.h"
#undef GC_T
#undef GC_SFX
#undef GC_W
