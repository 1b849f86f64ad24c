/*
 * gc_dense.h -- dense Jacobian-vector inner loops for gradchain.
 *
 * Plain C99, no Python.  Every routine exists for float (suffix _s) and
 * double (suffix _d); both are generated from gc_dense_impl.h.
 *
 * Matrices are addressed by a pointer to element [0, 0] and two strides
 * counted in elements (not bytes); strides may be zero or negative.  Vectors
 * are contiguous.  Sizes are ptrdiff_t.  No routine keeps state between
 * calls; all are safe to call concurrently on distinct outputs.
 *
 * The two kernels cover every dense product gradchain needs:
 *
 *   gc_axpy_rows:  y[c] = sum_r x[r] * A[r*rs + c*cs]     (y = A^T x), c < n
 *   gc_dot_rows:   y[r] = sum_c A[r*rs + c*cs] * x[c]     (y = A x),   r < m
 *
 * J^T g for a row-major (C-order) J is gc_axpy_rows over J; for a
 * column-major (F-order) J it is gc_dot_rows over J^T (swap the strides).
 * The inner loop always runs along the smaller stride.
 *
 * nthreads > 1 lets a routine split large products over OpenMP threads
 * (when the library is built with OpenMP); results do not depend on it.
 */
#ifndef GC_DENSE_H
#define GC_DENSE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Products smaller than this many matrix elements never start threads:
 * below it the fork/join cost exceeds the time saved (measured, see
 * BENCHMARKS.md). */
#define GC_PARALLEL_MIN_ELEMS ((ptrdiff_t)1 << 15)

/* Row-major matrices up to this many bytes (cache resident) take the
 * register-blocked J^T x kernel; larger ones are streamed row by row.  Any
 * J^T x of more than GC_CHUNK_MIN_ROWS rows runs in chunks of whole rows
 * (at most GC_CHUNK_MAX) whose partial sums are added in order. */
#define GC_REGBLOCK_BYTES ((ptrdiff_t)1 << 18)
#define GC_CHUNK_MIN_ROWS ((ptrdiff_t)128)
#define GC_CHUNK_MAX ((ptrdiff_t)64)
/* A^T x on one thread keeps a chunk's partial sums on the stack up to this
 * many columns (4 KiB of double) instead of allocating them */
#define GC_STACK_PARTIALS 512

/* Returns 0, or -1 when a work buffer for a large product cannot be
 * allocated (y is then unspecified). */
int gc_axpy_rows_s(ptrdiff_t m, ptrdiff_t n, const float *A, ptrdiff_t rs,
                   ptrdiff_t cs, const float *x, float *y, int nthreads);
int gc_axpy_rows_d(ptrdiff_t m, ptrdiff_t n, const double *A, ptrdiff_t rs,
                   ptrdiff_t cs, const double *x, double *y, int nthreads);

void gc_dot_rows_s(ptrdiff_t m, ptrdiff_t n, const float *A, ptrdiff_t rs,
                   ptrdiff_t cs, const float *x, float *y, int nthreads);
void gc_dot_rows_d(ptrdiff_t m, ptrdiff_t n, const double *A, ptrdiff_t rs,
                   ptrdiff_t cs, const double *x, double *y, int nthreads);

/* P[(r - r0) * n + c] = A[r*rs + c*cs] for r0 <= r < r1, c < n: packs a
 * row panel of a strided matrix into a contiguous C-order buffer. */
void gc_pack_rows_s(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n, const float *A,
                    ptrdiff_t rs, ptrdiff_t cs, float *P);
void gc_pack_rows_d(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n, const double *A,
                    ptrdiff_t rs, ptrdiff_t cs, double *P);

/* The mixed instance (suffix _m): float32 A, float64 x, y and sums, the
 * bits of the _d routines on A converted to float64 (accumulate="float64");
 * gc_pack_rows_m converts a float32 panel into float64. */
int gc_axpy_rows_m(ptrdiff_t m, ptrdiff_t n, const float *A, ptrdiff_t rs,
                   ptrdiff_t cs, const double *x, double *y, int nthreads);
void gc_dot_rows_m(ptrdiff_t m, ptrdiff_t n, const float *A, ptrdiff_t rs,
                   ptrdiff_t cs, const double *x, double *y, int nthreads);
void gc_pack_rows_m(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n, const float *A,
                    ptrdiff_t rs, ptrdiff_t cs, double *P);

/* Name of the instruction set the dispatched kernels run on this CPU:
 * "x86-64-v4" (AVX-512), "x86-64-v3" (AVX2+FMA) or "baseline". */
const char *gc_simd_target(void);

/* 1 when built with OpenMP, else 0. */
int gc_have_openmp(void);

/* omp_get_max_threads() for the calling thread (follows OMP_NUM_THREADS and
 * omp_set_num_threads, hence threadpoolctl); 1 without OpenMP. */
int gc_max_threads(void);

/* --- the floating-point environment of a call --------------------------
 *
 * Flush-to-zero and denormals-are-zero (x86-64: MXCSR FTZ | DAZ; aarch64:
 * FPCR FZ) for gradchain's own work, chosen per calling thread:
 * gc_fp_set_flush(1) makes this thread's later calls run flushed.  A call
 * brackets its compiled work with gc_fp_enter / gc_fp_exit: with flushing
 * on, enter saves and sets the bits in the calling thread and, through one
 * parallel region of nthreads, in each OpenMP worker that will run it (the
 * worker keeps its own old bits); exit puts back every thread's old bits
 * (the two bits only; the rest of the control word is left as found).
 * With flushing off both cost one thread-local read. */
typedef struct {
    int on;                 /* flushing this call */
    int nthreads;           /* the workers set by enter */
    unsigned long long caller;  /* the caller's control word on entry */
} gc_fpstate;

int gc_fp_flush_supported(void);
void gc_fp_set_flush(int on);
int gc_fp_get_flush(void);
void gc_fp_enter(gc_fpstate *st, int nthreads);
void gc_fp_exit(const gc_fpstate *st);
/* the tests' look at every worker's bits (gc_dense.c) */
int gc_fp_probe(int nthreads, int *during, int *after);

#ifdef __cplusplus
}
#endif
#endif /* GC_DENSE_H */
