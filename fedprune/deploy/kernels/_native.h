/* Shared by the compiled sparse kernels (_native.c: CSR and the transpose; _structured.c: block
 * sparse and N:M): vector types, the OpenMP row split, the output buffer. */
#ifndef FEDPRUNE_NATIVE_H
#define FEDPRUNE_NATIVE_H
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define INLINE static inline __attribute__((always_inline))
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf8u __attribute__((vector_size(32), aligned(4)));   /* unaligned access */
typedef float vf4 __attribute__((vector_size(16)));
typedef float vf4u __attribute__((vector_size(16), aligned(4)));
#define LOAD8(p) (*(const vf8u *)(p))
#define LOAD4(p) (*(const vf4u *)(p))

/* x at 8 columns, as one vector. Scalar loads beat the hardware gather instruction on the CPUs
 * measured (AMD Zen 4: 0.25 against 0.42 ns per entry) and need no intrinsics. */
#define GATHER8(x, c) ((vf8){(x)[(c)[0]], (x)[(c)[1]], (x)[(c)[2]], (x)[(c)[3]], \
                             (x)[(c)[4]], (x)[(c)[5]], (x)[(c)[6]], (x)[(c)[7]]})

#ifdef _OPENMP
/* First row of part p of q, splitting the entries counted by ptr (NULL: rows) evenly. */
static inline int64_t split(const int32_t *ptr, int64_t n, int p, int q) {
    if (p >= q) return n;
    if (!ptr) return n * p / q;
    int64_t target = (int64_t)ptr[n] * p / q, lo = 0, hi = n;
    while (lo < hi) { int64_t mid = (lo + hi) / 2; if (ptr[mid] < target) lo = mid + 1; else hi = mid; }
    return lo;
}

#define PARALLEL(n, ptr, threads, CALL)                                                   \
    do {                                                                                  \
        if ((threads) <= 1) { int64_t lo = 0, hi = (n); CALL; break; }                    \
        _Pragma("omp parallel num_threads(threads)") {                                    \
            int p_ = omp_get_thread_num(), q_ = omp_get_num_threads();                     \
            int64_t lo = split((ptr), (n), p_, q_), hi = split((ptr), (n), p_ + 1, q_);     \
            CALL;                                                                         \
        }                                                                                 \
    } while (0)
#else
#define PARALLEL(n, ptr, threads, CALL) do { (void)(threads); int64_t lo = 0, hi = (n); CALL; } while (0)
#endif

INLINE float hsum8(vf8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

/* Rows of y go out through a small buffer: y is (batch, out), so one row's tile is a column of
 * y, its stores out*4 bytes apart; those strides alias in L1 (4 KB apart for out = 1024) and
 * each store would miss. Sixteen rows at a time make each store a run of 16 floats instead. */
#define YROWS 16
typedef struct { float v[YROWS][64]; int64_t r0; int n; } ybuf;

INLINE void ybuf_put(ybuf *buf, const vf8 *acc, int nv, int64_t r, float *y, int64_t batch, int64_t out,
                     int64_t b0) {
    if (buf->n == 0) buf->r0 = r;
    for (int k = 0; k < nv; k++) memcpy(&buf->v[buf->n][8 * k], &acc[k], sizeof(vf8));
    if (++buf->n < YROWS) return;
    int64_t width = batch - b0 < 8 * nv ? batch - b0 : 8 * nv;
    for (int64_t t = 0; t < width; t++)
        for (int i = 0; i < YROWS; i++) y[(b0 + t) * out + buf->r0 + i] = buf->v[i][t];
    buf->n = 0;
}

INLINE void ybuf_flush(ybuf *buf, int nv, float *y, int64_t batch, int64_t out, int64_t b0) {
    int64_t width = batch - b0 < 8 * nv ? batch - b0 : 8 * nv;
    for (int64_t t = 0; t < width; t++)
        for (int i = 0; i < buf->n; i++) y[(b0 + t) * out + buf->r0 + i] = buf->v[i][t];
    buf->n = 0;
}

#endif
