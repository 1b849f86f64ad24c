/*
 * gc_instantiate.h -- include the type template named by GC_IMPL twice:
 * for float (suffix s, GC_W 32: two 512-bit registers) and for double
 * (suffix d, GC_W 16).  Not a public header; no include guard on purpose.
 */
#define GC_T float
#define GC_SFX s
#define GC_W 32
#include GC_IMPL
#undef GC_T
#undef GC_SFX
#undef GC_W

#define GC_T double
#define GC_SFX d
#define GC_W 16
#include GC_IMPL
#undef GC_T
#undef GC_SFX
#undef GC_W
#undef GC_IMPL
