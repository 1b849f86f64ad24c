/*
 * gc_maps.c -- instantiates gc_maps_impl.h for float and double.
 */
#include "gc_maps.h"

#include <math.h>

#define GC_T float
#define GC_SFX s
#define GC_EXP expf
#define GC_LOG logf
#define GC_LOG1P log1pf
#define GC_TANH tanhf
#define GC_SIN sinf
#define GC_COS cosf
#include "gc_maps_impl.h"
#undef GC_T
#undef GC_SFX
#undef GC_EXP
#undef GC_LOG
#undef GC_LOG1P
#undef GC_TANH
#undef GC_SIN
#undef GC_COS

#define GC_T double
#define GC_SFX d
#define GC_EXP exp
#define GC_LOG log
#define GC_LOG1P log1p
#define GC_TANH tanh
#define GC_SIN sin
#define GC_COS cos
#include "gc_maps_impl.h"
