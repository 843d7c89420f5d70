/* Block sparse (BSR) and N:M kernels; see _native.c for the conventions. */
#include "_native.h"

/* ---- BSR: bp (block rows+1), bc (blocks) int32 block columns, bv (blocks, bh, bw) ---- */

/* One block of the matrix-vector product into accumulators acc (vf8) or acc4 (vf4). */
INLINE void bsr_mv_block(int bh, int bw, const float *vp, const float *xp, vf8 *acc, vf4 *acc4) {
    if (bw == 8) {
        vf8 xv = LOAD8(xp);
        for (int i = 0; i < bh; i++) acc[i] += LOAD8(vp + 8 * i) * xv;
    } else {
        vf4 xv = LOAD4(xp);
        for (int i = 0; i < bh; i++) acc4[i] += LOAD4(vp + 4 * i) * xv;
    }
}

/* Block rows lo..hi at batch 1; with short blocks (bh < 4) consecutive blocks alternate between
 * accumulator sets, so at least 4 FMA chains run at once. */
INLINE void bsr_mv_shape(int bh, int bw, int64_t lo, int64_t hi, const int32_t *bp, const int32_t *bc,
                         const float *bv, const float *x, float *y) {
    const int sets = bh >= 4 ? 1 : 4 / bh;
    for (int64_t R = lo; R < hi; R++) {
        vf8 acc[4][8];
        vf4 acc4[4][8];
        for (int e = 0; e < sets; e++)
            for (int i = 0; i < bh; i++) { acc[e][i] = (vf8){0}; acc4[e][i] = (vf4){0}; }
        int32_t k = bp[R];
        for (; k + sets <= bp[R + 1]; k += sets)
            for (int e = 0; e < sets; e++)
                bsr_mv_block(bh, bw, bv + (int64_t)(k + e) * bh * bw, x + (int64_t)bc[k + e] * bw, acc[e], acc4[e]);
        for (; k < bp[R + 1]; k++)
            bsr_mv_block(bh, bw, bv + (int64_t)k * bh * bw, x + (int64_t)bc[k] * bw, acc[0], acc4[0]);
        for (int i = 0; i < bh; i++) {
            vf8 a = acc[0][i];
            vf4 a4 = acc4[0][i];
            for (int e = 1; e < sets; e++) { a += acc[e][i]; a4 += acc4[e][i]; }
            y[R * bh + i] = bw == 8 ? hsum8(a) : (a4[0] + a4[2]) + (a4[1] + a4[3]);
        }
    }
}

/* Block rows lo..hi: each xt row a block touches is loaded once and used by all bh rows; where
 * bh * nv < 8 the block's columns alternate between accumulator sets to keep 8 FMA chains. */
#if defined(__AVX512VL__)
#define BSR_ACC 16   /* 32 vector registers: 16 accumulators, fewer broadcasts per FMA */
#else
#define BSR_ACC 8
#endif
INLINE void bsr_mm_tile(int bh, int bw, int nv, int64_t lo, int64_t hi, const int32_t *bp, const int32_t *bc,
                        const float *bv, const float *xt, int64_t b8, int64_t b0, float *y,
                        int64_t batch, int64_t out) {
    const int sets = bh * nv >= 8 ? 1 : 8 / (bh * nv);
    ybuf buf = {.n = 0};
    for (int64_t R = lo; R < hi; R++) {
        vf8 acc[8][8][8];
        for (int e = 0; e < sets; e++)
            for (int i = 0; i < bh; i++)
                for (int t = 0; t < nv; t++) acc[e][i][t] = (vf8){0};
        for (int32_t k = bp[R]; k < bp[R + 1]; k++) {
            const float *vp = bv + (int64_t)k * bh * bw;
            for (int j = 0; j < bw; j++) {
                const float *xp = xt + ((int64_t)bc[k] * bw + j) * b8 + b0;
                vf8 xv[8];
                for (int t = 0; t < nv; t++) xv[t] = LOAD8(xp + 8 * t);
                for (int i = 0; i < bh; i++) {
                    float v = vp[i * bw + j];
                    for (int t = 0; t < nv; t++) acc[j % sets][i][t] += v * xv[t];
                }
            }
        }
        for (int e = 1; e < sets; e++)
            for (int i = 0; i < bh; i++)
                for (int t = 0; t < nv; t++) acc[0][i][t] += acc[e][i][t];
        for (int i = 0; i < bh; i++) ybuf_put(&buf, acc[0][i], nv, R * bh + i, y, batch, out, b0);
    }
    ybuf_flush(&buf, nv, y, batch, out, b0);
}

/* Tiles as wide as the accumulators allow (bh * nv <= BSR_ACC), one vector wide for what is left. */
INLINE void bsr_mm_shape(int bh, int bw, int64_t lo, int64_t hi, const int32_t *bp, const int32_t *bc,
                         const float *bv, const float *xt, int64_t b8, float *y, int64_t batch, int64_t out) {
    int64_t b0 = 0;
    int wide = BSR_ACC / bh > 8 ? 8 : BSR_ACC / bh;
    for (; b0 + 8 * wide <= b8; b0 += 8 * wide)
        bsr_mm_tile(bh, bw, wide, lo, hi, bp, bc, bv, xt, b8, b0, y, batch, out);
    for (; b0 < b8; b0 += 8) bsr_mm_tile(bh, bw, 1, lo, hi, bp, bc, bv, xt, b8, b0, y, batch, out);
}

#define BSR_SHAPES(X) X(1, 4) X(2, 4) X(4, 4) X(1, 8) X(2, 8) X(4, 8) X(8, 8)

/* Returns 0, or -1 for a block shape not compiled here (the caller checks first). */
int fp_bsr(int bh, int bw, int64_t brows, const int32_t *bp, const int32_t *bc, const float *bv,
           const float *x, int64_t b8, float *y, int64_t batch, int threads) {
    int64_t out = brows * bh;
#define MV_CASE(H, W) if (bh == H && bw == W) {                                              \
        PARALLEL(brows, bp, threads, bsr_mv_shape(H, W, lo, hi, bp, bc, bv, x, y));                \
        return 0;                                                                                  \
    }
#define MM_CASE(H, W) if (bh == H && bw == W) {                                              \
        PARALLEL(brows, bp, threads, bsr_mm_shape(H, W, lo, hi, bp, bc, bv, x, b8, y, batch, out)); \
        return 0;                                                                                  \
    }
    if (batch == 1) { BSR_SHAPES(MV_CASE) } else { BSR_SHAPES(MM_CASE) }
    return -1;
}

/* ---- N:M: every row has groups of m inputs with n stored values; idx = position in group -- */

/* Half-dense patterns (1:2, 2:4, 4:8): the x an entry block needs is contiguous, twice its length,
 * so two vector loads and a permute replace the scalar loads. */
INLINE int64_t nm_dot_half(int n, int m, int64_t total, const float *v, const uint8_t *idx, const float *x,
                           vf8 *acc) {
    int64_t e = 0;
#if defined(__AVX512F__)
    int pos[16];
    for (int i = 0; i < 16; i++) pos[i] = (i / n) * m;
    __m512i base = _mm512_loadu_si512(pos);
    __m512 a = _mm512_setzero_ps();
    for (; e + 16 <= total; e += 16) {
        const float *xs = x + e / n * m;   /* 32 floats */
        __m512i sel = _mm512_add_epi32(base, _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(idx + e))));
        __m512 xv = _mm512_permutex2var_ps(_mm512_loadu_ps(xs), sel, _mm512_loadu_ps(xs + 16));
        a = _mm512_fmadd_ps(_mm512_loadu_ps(v + e), xv, a);
    }
    acc[0] += (vf8)_mm512_castps512_ps256(a);
    acc[1] += (vf8)_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
#elif defined(__AVX2__)
    int pos[8];
    for (int i = 0; i < 8; i++) pos[i] = (i / n) * m;
    __m256i base = _mm256_loadu_si256((const __m256i *)pos), seven = _mm256_set1_epi32(7);
    __m256 a = _mm256_setzero_ps();
    for (; e + 8 <= total; e += 8) {
        const float *xs = x + e / n * m;   /* 16 floats */
        __m256i sel = _mm256_add_epi32(base, _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(idx + e))));
        __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xs), sel);
        __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xs + 8), sel);
        __m256 xv = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_cmpgt_epi32(sel, seven)));
        a = _mm256_fmadd_ps(_mm256_loadu_ps(v + e), xv, a);
    }
    acc[0] += (vf8)a;
#else
    (void)n; (void)m; (void)total; (void)v; (void)idx; (void)x; (void)acc;
#endif
    return e;
}

/* x of 8 consecutive entries: entry i sits in group i / n of the block starting at g */
#define NM_AT(g, ix, i, n, m) (g)[((i) / (n)) * (m) + (ix)[i]]
#define NM_GATHER8(g, ix, n, m)                                                                  \
    ((vf8){NM_AT(g, ix, 0, n, m), NM_AT(g, ix, 1, n, m), NM_AT(g, ix, 2, n, m), NM_AT(g, ix, 3, n, m), \
           NM_AT(g, ix, 4, n, m), NM_AT(g, ix, 5, n, m), NM_AT(g, ix, 6, n, m), NM_AT(g, ix, 7, n, m)})

INLINE float nm_dot(int n, int m, int64_t groups, const float *v, const uint8_t *idx, const float *x) {
    int64_t e = 0, total = groups * n;
    vf8 a[2] = {{0}, {0}};
    if (2 * n == m) e = nm_dot_half(n, m, total, v, idx, x, a);
    /* 8 entries are 8/n whole groups (n divides 8) */
    for (; e + 16 <= total; e += 16) {
        const float *g0 = x + e / n * m, *g1 = x + (e + 8) / n * m;
        const uint8_t *i0 = idx + e, *i1 = idx + e + 8;
        a[0] += LOAD8(v + e) * NM_GATHER8(g0, i0, n, m);
        a[1] += LOAD8(v + e + 8) * NM_GATHER8(g1, i1, n, m);
    }
    float s = hsum8(a[0] + a[1]);
    for (; e < total; e++) s += v[e] * x[e / n * m + idx[e]];
    return s;
}

INLINE void nm_mv_shape(int n, int m, int64_t lo, int64_t hi, int64_t groups, const float *v, const uint8_t *idx,
                        const float *x, float *y) {
    for (int64_t r = lo; r < hi; r++) y[r] = nm_dot(n, m, groups, v + r * groups * n, idx + r * groups * n, x);
}

/* As csr_mm_tile, the column of entry e being (e / n) * m + idx[e]. */
INLINE void nm_mm_tile(int n, int nv, int m, int64_t lo, int64_t hi, int64_t groups, const float *v,
                       const uint8_t *idx, const float *xt, int64_t b8, int64_t b0, float *y,
                       int64_t batch, int64_t out) {
    const int u = 8 / nv;
    const int64_t total = groups * n;
    ybuf buf = {.n = 0};
    for (int64_t r = lo; r < hi; r++) {
        vf8 acc[8][8];
        for (int f = 0; f < u; f++)
            for (int t = 0; t < nv; t++) acc[f][t] = (vf8){0};
        const float *vr = v + r * total;
        const uint8_t *ir = idx + r * total;
        int64_t e = 0;
        for (; e + u <= total; e += u)
            for (int f = 0; f < u; f++) {
                const float *xp = xt + ((e + f) / n * m + ir[e + f]) * b8 + b0;
                for (int t = 0; t < nv; t++) acc[f][t] += vr[e + f] * LOAD8(xp + 8 * t);
            }
        for (; e < total; e++) {
            const float *xp = xt + (e / n * m + ir[e]) * b8 + b0;
            for (int t = 0; t < nv; t++) acc[0][t] += vr[e] * LOAD8(xp + 8 * t);
        }
        for (int f = 1; f < u; f++)
            for (int t = 0; t < nv; t++) acc[0][t] += acc[f][t];
        ybuf_put(&buf, acc[0], nv, r, y, batch, out, b0);
    }
    ybuf_flush(&buf, nv, y, batch, out, b0);
}

INLINE void nm_mm_shape(int n, int m, int64_t lo, int64_t hi, int64_t groups, const float *v, const uint8_t *idx,
                        const float *xt, int64_t b8, float *y, int64_t batch, int64_t out) {
    int64_t b0 = 0;
    for (; b0 + 64 <= b8; b0 += 64) nm_mm_tile(n, 8, m, lo, hi, groups, v, idx, xt, b8, b0, y, batch, out);
    if (b0 + 32 <= b8) { nm_mm_tile(n, 4, m, lo, hi, groups, v, idx, xt, b8, b0, y, batch, out); b0 += 32; }
    if (b0 + 16 <= b8) { nm_mm_tile(n, 2, m, lo, hi, groups, v, idx, xt, b8, b0, y, batch, out); b0 += 16; }
    if (b0 + 8 <= b8) nm_mm_tile(n, 1, m, lo, hi, groups, v, idx, xt, b8, b0, y, batch, out);
}

#define NM_PATTERNS(X) X(1, 2) X(1, 4) X(2, 4) X(1, 8) X(2, 8) X(4, 8)

/* Returns 0, or -1 for an n:m not compiled here (the caller checks first). */
int fp_nm(int n, int m, int64_t rows, int64_t groups, const float *v, const uint8_t *idx, const float *x,
          int64_t b8, float *y, int64_t batch, int threads) {
#define NM_MV(N, M) if (n == N && m == M) {                                                        \
        PARALLEL(rows, NULL, threads, nm_mv_shape(N, M, lo, hi, groups, v, idx, x, y));                \
        return 0;                                                                                      \
    }
#define NM_MM(N, M) if (n == N && m == M) {                                                        \
        PARALLEL(rows, NULL, threads, nm_mm_shape(N, M, lo, hi, groups, v, idx, x, b8, y, batch, rows)); \
        return 0;                                                                                      \
    }
    if (batch == 1) { NM_PATTERNS(NM_MV) } else { NM_PATTERNS(NM_MM) }
    return -1;
}
