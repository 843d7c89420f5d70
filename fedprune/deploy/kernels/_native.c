/* Sparse float32 kernels for fedprune.deploy.kernels: CSR, block sparse (BSR) and N:M layers.
 *
 * A pruned linear layer at batch 1 is bound by the bytes its weight takes to read, so these
 * kernels read nothing but the kept values and int32 / uint8 indices, several accumulators
 * at once. Above batch 1 they take x transposed and padded, xt (in, b8) with b8 a multiple of 8
 * (fp_transpose), so each kept weight scales a contiguous run of the batch; y is (batch, out).
 * Written with GCC/Clang vector extensions, so any CPU builds them; AVX2 / AVX-512 intrinsics
 * only where they pay (N:M permutes, the transpose). Work splits over OpenMP threads by stored
 * entries; the runtime is torch's libgomp, already loaded, so torch and these share one pool.
 * Built by setup.py, loaded through ctypes. No -ffast-math: sums keep IEEE semantics (their
 * order differs from dense, as any blocked sum's does).
 */
#include "_native.h"

int fp_abi(void) { return 1; }

const char *fp_isa(void) {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__)
    return "avx2";
#else
    return "generic";
#endif
}

int fp_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* xt (width, b8) = x (batch, width) transposed, batch rows padded with zeros up to b8. Blocks of
 * 64 columns keep the written part of xt in L1; 8x8 tiles transpose in registers. */
void fp_transpose(const float *x, int64_t batch, int64_t width, float *xt, int64_t b8) {
    for (int64_t c0 = 0; c0 < width; c0 += 64) {
        int64_t c1 = c0 + 64 < width ? c0 + 64 : width;
        for (int64_t b0 = 0; b0 < b8; b0 += 8) {
            int64_t rows = batch - b0 < 8 ? batch - b0 : 8, c = c0;
#if defined(__AVX2__)
            for (; rows == 8 && c + 8 <= c1; c += 8) {
                const float *p = x + b0 * width + c;
                __m256 r0 = _mm256_loadu_ps(p), r1 = _mm256_loadu_ps(p + width);
                __m256 r2 = _mm256_loadu_ps(p + 2 * width), r3 = _mm256_loadu_ps(p + 3 * width);
                __m256 r4 = _mm256_loadu_ps(p + 4 * width), r5 = _mm256_loadu_ps(p + 5 * width);
                __m256 r6 = _mm256_loadu_ps(p + 6 * width), r7 = _mm256_loadu_ps(p + 7 * width);
                __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
                __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
                __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
                __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
                __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                float *q = xt + c * b8 + b0;
                _mm256_storeu_ps(q, _mm256_permute2f128_ps(s0, s4, 0x20));
                _mm256_storeu_ps(q + b8, _mm256_permute2f128_ps(s1, s5, 0x20));
                _mm256_storeu_ps(q + 2 * b8, _mm256_permute2f128_ps(s2, s6, 0x20));
                _mm256_storeu_ps(q + 3 * b8, _mm256_permute2f128_ps(s3, s7, 0x20));
                _mm256_storeu_ps(q + 4 * b8, _mm256_permute2f128_ps(s0, s4, 0x31));
                _mm256_storeu_ps(q + 5 * b8, _mm256_permute2f128_ps(s1, s5, 0x31));
                _mm256_storeu_ps(q + 6 * b8, _mm256_permute2f128_ps(s2, s6, 0x31));
                _mm256_storeu_ps(q + 7 * b8, _mm256_permute2f128_ps(s3, s7, 0x31));
            }
#endif
            for (; c < c1; c++)
                for (int64_t i = 0; i < 8; i++) xt[c * b8 + b0 + i] = i < rows ? x[(b0 + i) * width + c] : 0.f;
        }
    }
}

/* ---- CSR: rp (rows+1), col (nnz) int32, val (nnz) ----------------------------------- */

/* Dot product of n stored entries with the gathered x: two vector accumulators, scalar tail. */
INLINE float sparse_dot(const int32_t *col, const float *val, int64_t n, const float *x) {
    vf8 a0 = {0}, a1 = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        a0 += LOAD8(val + j) * GATHER8(x, col + j);
        a1 += LOAD8(val + j + 8) * GATHER8(x, col + j + 8);
    }
    if (j + 8 <= n) { a0 += LOAD8(val + j) * GATHER8(x, col + j); j += 8; }
    float t0 = 0.f, t1 = 0.f;
    for (; j + 2 <= n; j += 2) { t0 += val[j] * x[col[j]]; t1 += val[j + 1] * x[col[j + 1]]; }
    if (j < n) t0 += val[j] * x[col[j]];
    return hsum8(a0 + a1) + (t0 + t1);
}

static void csr_mv_rows(int64_t lo, int64_t hi, const int32_t *rp, const int32_t *col, const float *val,
                        const float *x, float *y) {
    for (int64_t r = lo; r < hi; r++) y[r] = sparse_dot(col + rp[r], val + rp[r], rp[r + 1] - rp[r], x);
}

void fp_csr_mv(int64_t rows, const int32_t *rp, const int32_t *col, const float *val, const float *x,
               float *y, int threads) {
    PARALLEL(rows, rp, threads, csr_mv_rows(lo, hi, rp, col, val, x, y));
}

/* Rows lo..hi, batch columns b0..b0+8nv: each kept weight scales nv contiguous vectors of xt.
 * 8/nv entries go at once into separate accumulators, so 8 FMA chains hide the FMA latency. */
INLINE void csr_mm_tile(int nv, int64_t lo, int64_t hi, const int32_t *rp, const int32_t *col,
                        const float *val, const float *xt, int64_t b8, int64_t b0, float *y,
                        int64_t batch, int64_t out) {
    const int u = 8 / nv;
    ybuf buf = {.n = 0};
    for (int64_t r = lo; r < hi; r++) {
        vf8 acc[8][8];   /* only [u][nv] used: zero just those, so they live in registers */
        for (int e = 0; e < u; e++)
            for (int k = 0; k < nv; k++) acc[e][k] = (vf8){0};
        int32_t j = rp[r], end = rp[r + 1];
        for (; j + u <= end; j += u)
            for (int e = 0; e < u; e++) {
                const float *xp = xt + (int64_t)col[j + e] * b8 + b0;
                float v = val[j + e];
                for (int k = 0; k < nv; k++) acc[e][k] += v * LOAD8(xp + 8 * k);
            }
        for (; j < end; j++) {
            const float *xp = xt + (int64_t)col[j] * b8 + b0;
            for (int k = 0; k < nv; k++) acc[0][k] += val[j] * LOAD8(xp + 8 * k);
        }
        for (int e = 1; e < u; e++)
            for (int k = 0; k < nv; k++) acc[0][k] += acc[e][k];
        ybuf_put(&buf, acc[0], nv, r, y, batch, out, b0);
    }
    ybuf_flush(&buf, nv, y, batch, out, b0);
}

static void csr_mm_rows(int64_t lo, int64_t hi, const int32_t *rp, const int32_t *col, const float *val,
                        const float *xt, int64_t b8, float *y, int64_t batch, int64_t out) {
    int64_t b0 = 0;
    for (; b0 + 64 <= b8; b0 += 64) csr_mm_tile(8, lo, hi, rp, col, val, xt, b8, b0, y, batch, out);
    if (b0 + 32 <= b8) { csr_mm_tile(4, lo, hi, rp, col, val, xt, b8, b0, y, batch, out); b0 += 32; }
    if (b0 + 16 <= b8) { csr_mm_tile(2, lo, hi, rp, col, val, xt, b8, b0, y, batch, out); b0 += 16; }
    if (b0 + 8 <= b8) csr_mm_tile(1, lo, hi, rp, col, val, xt, b8, b0, y, batch, out);
}

void fp_csr_mm(int64_t rows, const int32_t *rp, const int32_t *col, const float *val, const float *xt,
               int64_t b8, float *y, int64_t batch, int threads) {
    PARALLEL(rows, rp, threads, csr_mm_rows(lo, hi, rp, col, val, xt, b8, y, batch, rows));
}
