/* The VOneBlock's Gabor stage and cells, from the images to the output channels, in cache.
 *
 * Compiled on first use by vone/accel/native.py and called through ctypes, so the package installs
 * without a build step. Everything is float32 arithmetic in C:
 *
 *   spectra: per image and colour, the image's 2-D FFT on the Fourier grid (the padding is the
 *            grid's zeros, never copied), and from it the s^2 aliases of every frequency of the
 *            folded half plane, in the layout the products read.
 *   cells:   per task (one unit of 2 x LANES real filters, one block of up to PB images): the alias
 *            inner products, one folded frequency column at a time, each column inverse-transformed
 *            (1-D FFT) while it is in cache; then per output row the second 1-D FFT, in which the
 *            unit's two tiles of real filters are the real and imaginary parts of one complex
 *            transform, and the cells (gain * relu for simple cells, gain * quadrature energy for
 *            complex cells) written straight into the VOneBlock's output channels.
 *
 * vone_run does both in one parallel region; vone_spectra and vone_cells_from_spectra do one each.
 *
 * Vectors run across filters (LANES of them, one vector register) or across grid lines, so every
 * FFT is plain vertical arithmetic, and the register blocking is chosen per instruction set:
 * AVX-512 has 32 vector registers, AVX2 and SSE 16, so PB (images whose accumulators stay in
 * registers) is 8 there and 5 here. Tasks are handed out dynamically, so a thread that shares its
 * CPU with other work takes fewer. Every output element is computed by one task in a fixed order
 * of float32 operations, whichever thread runs it, so an image's result does not depend on the
 * batch it came in nor on the number of threads. No fast-math: NaN and infinity propagate.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#define LANES 16
#define IMAGES_PER_BLOCK 8
#define ISA "avx512f"
#elif defined(__AVX2__) && defined(__FMA__)
#define LANES 8
#define IMAGES_PER_BLOCK 5
#define ISA "avx2+fma"
#elif defined(__AVX__)
#define LANES 8
#define IMAGES_PER_BLOCK 5
#define ISA "avx"
#elif defined(__aarch64__)
#define LANES 4
#define IMAGES_PER_BLOCK 8
#define ISA "neon"
#elif defined(__SSE2__)
#define LANES 4
#define IMAGES_PER_BLOCK 5
#define ISA "sse2"
#else
#define LANES 4
#define IMAGES_PER_BLOCK 4
#define ISA "generic"
#endif
#ifdef VONE_IMAGES_PER_BLOCK  /* for measuring other blockings */
#define PB VONE_IMAGES_PER_BLOCK
#else
#define PB IMAGES_PER_BLOCK
#endif

/* The filter spectra stream from memory once per block of images; hardware prefetchers stop at
 * 4 KiB boundaries, so the products ask for them this many floats ahead. */
#ifndef PREFETCH_FLOATS
#define PREFETCH_FLOATS 2048
#endif

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static inline vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }
/* The first n (< LANES) floats at p, zeros after. */
static inline vec load_partial(const float *p, int n)
{
    vec v = {0};
    for (int i = 0; i < n; i++)
        v[i] = p[i];
    return v;
}

int vone_lanes(void) { return LANES; }
int vone_images_per_block(void) { return PB; }
const char *vone_isa(void) { return ISA; }

/* In-register transpose of LANES x LANES floats, log2(LANES) rounds of two-vector shuffles:
 * round b interleaves blocks of b lanes of rows i and i + b. */
typedef int ivec __attribute__((vector_size(LANES * sizeof(int))));
#if defined(__clang__)
#define SHUFFLE(a, b, mask) __builtin_shufflevector(a, b, mask)
#else
#define SHUFFLE(a, b, mask) __builtin_shuffle(a, b, (ivec){mask})
#endif
#if LANES == 4
#define LOW1 0, 4, 2, 6
#define HIGH1 1, 5, 3, 7
#define LOW2 0, 1, 4, 5
#define HIGH2 2, 3, 6, 7
#elif LANES == 8
#define LOW1 0, 8, 2, 10, 4, 12, 6, 14
#define HIGH1 1, 9, 3, 11, 5, 13, 7, 15
#define LOW2 0, 1, 8, 9, 4, 5, 12, 13
#define HIGH2 2, 3, 10, 11, 6, 7, 14, 15
#define LOW4 0, 1, 2, 3, 8, 9, 10, 11
#define HIGH4 4, 5, 6, 7, 12, 13, 14, 15
#elif LANES == 16
#define LOW1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define HIGH1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#define LOW2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define HIGH2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LOW4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define HIGH4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define LOW8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define HIGH8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#endif
#define ROUND(b) \
    for (int i = 0; i < LANES; i++) \
        if (!(i & (b))) { const vec lo = r[i], hi = r[i + (b)]; r[i] = SHUFFLE(lo, hi, LOW##b); r[i + (b)] = SHUFFLE(lo, hi, HIGH##b); }
static inline void transpose(vec *r)
{
    ROUND(1) ROUND(2)
#if LANES >= 8
    ROUND(4)
#endif
#if LANES >= 16
    ROUND(8)
#endif
}
#undef ROUND


/* --- FFTs across vector lanes ---------------------------------------------------------------
 * Stockham autosort, radices 4, 2, 3, 5 (the Fourier grid sizes are 2^a 3^b 5^c), unnormalised,
 * exp(sign 2 pi i j e / n). Element e of a line is the complex vector pair line[e * stride] (real
 * parts), line[e * stride + 1] (imaginary parts), strides in vectors. */
#define MAX_STAGES 40

typedef struct {
    int n, sign, count, radix[MAX_STAGES], offset[MAX_STAGES];
    float *twiddles; /* per stage: (cos, sign * sin) of 2 pi p u / n_stage, p < n_stage / radix, 0 < u < radix */
} plan;

/* Floats of twiddles a plan of length n needs (at most 4 n). */
static ptrdiff_t plan_floats(int n) { return 4 * (ptrdiff_t)n + 16; }

/* Fills ``pl`` (twiddles in ``tw``, plan_floats(n) floats); 0, or -1 if n is not 2^a 3^b 5^c. */
static int make_plan(plan *pl, int n, int sign, float *tw)
{
    pl->n = n;
    pl->sign = sign;
    pl->count = 0;
    pl->twiddles = tw;
    int left = n, used = 0, current = n;
    if (n < 1)
        return -1;
    while (left > 1) {
        const int r = left % 4 == 0 ? 4 : left % 2 == 0 ? 2 : left % 3 == 0 ? 3 : left % 5 == 0 ? 5 : 0;
        if (r == 0 || pl->count == MAX_STAGES)
            return -1;
        const int m = current / r;
        pl->radix[pl->count] = r;
        pl->offset[pl->count] = used;
        for (int p = 0; p < m; p++)
            for (int u = 1; u < r; u++) {
                const double angle = 2.0 * 3.14159265358979323846 * (double)((ptrdiff_t)p * u % current) / current;
                tw[used++] = (float)cos(angle);
                tw[used++] = (float)(sign * sin(angle));
            }
        pl->count++;
        left /= r;
        current = m;
    }
    return 0;
}

#define INLINE static inline __attribute__((always_inline))
#define LOAD_E(t, src, e, st) const vec t##r = (src)[(ptrdiff_t)(e) * (st)], t##i = (src)[(ptrdiff_t)(e) * (st) + 1]
#define STORE_E(dst, e, st, vr, vi) \
    do { if ((e) < keep) { (dst)[(ptrdiff_t)(e) * (st)] = (vr); (dst)[(ptrdiff_t)(e) * (st) + 1] = (vi); } } while (0)
#define TWIDDLE(vr, vi, w) \
    do { const vec _r = (vr); (vr) = _r * (w)[0] - (vi) * (w)[1]; (vi) = _r * (w)[1] + (vi) * (w)[0]; } while (0)

static void radix2(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep)
{
    for (int p = 0; p < m; p++) {
        const float *w = tw + 2 * p;
        for (int q = 0; q < s; q++) {
            const int i0 = q + s * p;
            LOAD_E(a, in, i0, is); LOAD_E(b, in, i0 + s * m, is);
            vec y1r = ar - br, y1i = ai - bi;
            if (p) TWIDDLE(y1r, y1i, w);
            const int o = q + 2 * s * p;
            STORE_E(out, o, os, ar + br, ai + bi);
            STORE_E(out, o + s, os, y1r, y1i);
        }
    }
}

/* sg: the transform's sign (+1 inverse, -1 forward), a constant after inlining */
INLINE void radix3(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep,
                   const float sg)
{
    const float half = 0.5f, sn = sg * 0.86602540378443864676f;
    for (int p = 0; p < m; p++) {
        const float *w = tw + 4 * p;
        for (int q = 0; q < s; q++) {
            const int i0 = q + s * p;
            LOAD_E(a, in, i0, is); LOAD_E(b, in, i0 + s * m, is); LOAD_E(c, in, i0 + 2 * s * m, is);
            const vec tr = br + cr, ti = bi + ci, dr = br - cr, di = bi - ci;
            const vec mr = ar - half * tr, mi = ai - half * ti;
            vec y1r = mr - sn * di, y1i = mi + sn * dr, y2r = mr + sn * di, y2i = mi - sn * dr;
            if (p) { TWIDDLE(y1r, y1i, w); TWIDDLE(y2r, y2i, w + 2); }
            const int o = q + 3 * s * p;
            STORE_E(out, o, os, ar + tr, ai + ti);
            STORE_E(out, o + s, os, y1r, y1i);
            STORE_E(out, o + 2 * s, os, y2r, y2i);
        }
    }
}

INLINE void radix4(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep,
                   const float sg)
{
    for (int p = 0; p < m; p++) {
        const float *w = tw + 6 * p;
        for (int q = 0; q < s; q++) {
            const int i0 = q + s * p;
            LOAD_E(a, in, i0, is); LOAD_E(b, in, i0 + s * m, is);
            LOAD_E(c, in, i0 + 2 * s * m, is); LOAD_E(d, in, i0 + 3 * s * m, is);
            const vec t0r = ar + cr, t0i = ai + ci, t1r = ar - cr, t1i = ai - ci;
            const vec t2r = br + dr, t2i = bi + di;
            const vec t3r = sg > 0 ? br - dr : dr - br, t3i = sg > 0 ? bi - di : di - bi;  /* sg (b - d) */
            vec y1r = t1r - t3i, y1i = t1i + t3r, y2r = t0r - t2r, y2i = t0i - t2i;     /* y1 = t1 + i sg (b - d) */
            vec y3r = t1r + t3i, y3i = t1i - t3r;
            if (p) { TWIDDLE(y1r, y1i, w); TWIDDLE(y2r, y2i, w + 2); TWIDDLE(y3r, y3i, w + 4); }
            const int o = q + 4 * s * p;
            STORE_E(out, o, os, t0r + t2r, t0i + t2i);
            STORE_E(out, o + s, os, y1r, y1i);
            STORE_E(out, o + 2 * s, os, y2r, y2i);
            STORE_E(out, o + 3 * s, os, y3r, y3i);
        }
    }
}

INLINE void radix5(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep,
                   const float sg)
{
    const float c1 = 0.30901699437494742410f, c2 = -0.80901699437494742410f;
    const float s1 = sg * 0.95105651629515357212f, s2 = sg * 0.58778525229247312917f;
    for (int p = 0; p < m; p++) {
        const float *w = tw + 8 * p;
        for (int q = 0; q < s; q++) {
            const int i0 = q + s * p;
            LOAD_E(a, in, i0, is); LOAD_E(b, in, i0 + s * m, is); LOAD_E(c, in, i0 + 2 * s * m, is);
            LOAD_E(d, in, i0 + 3 * s * m, is); LOAD_E(e, in, i0 + 4 * s * m, is);
            const vec t1r = br + er, t1i = bi + ei, d1r = br - er, d1i = bi - ei;
            const vec t2r = cr + dr, t2i = ci + di, d2r = cr - dr, d2i = ci - di;
            const vec m1r = ar + c1 * t1r + c2 * t2r, m1i = ai + c1 * t1i + c2 * t2i;
            const vec m2r = ar + c2 * t1r + c1 * t2r, m2i = ai + c2 * t1i + c1 * t2i;
            const vec n1r = s1 * d1r + s2 * d2r, n1i = s1 * d1i + s2 * d2i;
            const vec n2r = s2 * d1r - s1 * d2r, n2i = s2 * d1i - s1 * d2i;
            vec y1r = m1r - n1i, y1i = m1i + n1r, y4r = m1r + n1i, y4i = m1i - n1r;
            vec y2r = m2r - n2i, y2i = m2i + n2r, y3r = m2r + n2i, y3i = m2i - n2r;
            if (p) {
                TWIDDLE(y1r, y1i, w); TWIDDLE(y2r, y2i, w + 2);
                TWIDDLE(y3r, y3i, w + 4); TWIDDLE(y4r, y4i, w + 6);
            }
            const int o = q + 5 * s * p;
            STORE_E(out, o, os, ar + t1r + t2r, ai + t1i + t2i);
            STORE_E(out, o + s, os, y1r, y1i);
            STORE_E(out, o + 2 * s, os, y2r, y2i);
            STORE_E(out, o + 3 * s, os, y3r, y3i);
            STORE_E(out, o + 4 * s, os, y4r, y4i);
        }
    }
}

static void radix3_inverse(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep)
{ radix3(in, is, out, os, m, s, tw, keep, 1.f); }
static void radix3_forward(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep)
{ radix3(in, is, out, os, m, s, tw, keep, -1.f); }
static void radix4_inverse(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep)
{ radix4(in, is, out, os, m, s, tw, keep, 1.f); }
static void radix4_forward(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep)
{ radix4(in, is, out, os, m, s, tw, keep, -1.f); }
static void radix5_inverse(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep)
{ radix5(in, is, out, os, m, s, tw, keep, 1.f); }
static void radix5_forward(const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int m, int s, const float *tw, int keep)
{ radix5(in, is, out, os, m, s, tw, keep, -1.f); }

/* out[e] (e < keep, stride os) = sum_j in[j] exp(sign 2 pi i j e / n) (stride is); b0, b1: n elements
 * each, neither of them ``in`` or ``out``. */
static void fft_line(const plan *pl, const vec *in, ptrdiff_t is, vec *out, ptrdiff_t os, int keep, vec *b0, vec *b1)
{
    if (pl->count == 0) {  /* n == 1 */
        if (keep > 0) { out[0] = in[0]; out[1] = in[1]; }
        return;
    }
    const vec *src = in;
    ptrdiff_t ss = is;
    int s = 1, current = pl->n;
    const int forward = pl->sign < 0;
    for (int i = 0; i < pl->count; i++) {
        const int last = i == pl->count - 1, r = pl->radix[i], m = current / r;
        vec *dst = last ? out : (i & 1) ? b1 : b0;
        const ptrdiff_t ds = last ? os : 2;
        const int k = last ? keep : pl->n;
        const float *tw = pl->twiddles + pl->offset[i];
        switch (r) {
            case 2: radix2(src, ss, dst, ds, m, s, tw, k); break;
            case 3: (forward ? radix3_forward : radix3_inverse)(src, ss, dst, ds, m, s, tw, k); break;
            case 4: (forward ? radix4_forward : radix4_inverse)(src, ss, dst, ds, m, s, tw, k); break;
            default: (forward ? radix5_forward : radix5_inverse)(src, ss, dst, ds, m, s, tw, k); break;
        }
        src = dst;
        ss = ds;
        s *= r;
        current = m;
    }
}

/* --- geometry and scratch --------------------------------------------------------------------- */
typedef struct {
    int P, colours, height, width, padding, n_h, n_w, stride, m_h, m_w, hw, half, A, u_blocks, rows, cols;
    ptrdiff_t k_count, x_image;  /* half-plane frequencies; floats of one image's aliases of one colour */
} grid;

static grid make_grid(int P, int colours, int height, int width, int padding, int n_h, int n_w, int stride,
                      int rows, int cols)
{
    grid g;
    g.P = P; g.colours = colours; g.height = height; g.width = width; g.padding = padding;
    g.n_h = n_h; g.n_w = n_w; g.stride = stride; g.rows = rows; g.cols = cols;
    g.m_h = n_h / stride; g.m_w = n_w / stride; g.hw = g.m_w / 2 + 1; g.half = n_w / 2 + 1;
    g.A = stride * stride; g.u_blocks = (n_h + LANES - 1) / LANES;
    g.k_count = (ptrdiff_t)g.hw * g.m_h;
    g.x_image = g.k_count * g.A * 2;
    return g;
}

static int longest(int a, int b) { return a > b ? a : b; }

/* Vectors of scratch one thread needs for the spectra of one image colour, and for one cells task. */
static ptrdiff_t spectra_vectors(const grid *g)
{
    return (ptrdiff_t)g->n_w * g->u_blocks * 2      /* column transforms, transposed: [w][u block] */
           + (ptrdiff_t)g->half * g->u_blocks * 2   /* the half spectrum: [v][u block] */
           + 2 * (ptrdiff_t)g->n_h * 2              /* one pair of column blocks, and its transform */
           + 2 * (ptrdiff_t)longest(g->n_h, g->n_w) * 2;  /* FFT ping-pong buffers */
}

static ptrdiff_t cells_vectors(const grid *g)
{
    return (ptrdiff_t)PB * g->m_h * 2                  /* one frequency column per image */
           + 2 * (ptrdiff_t)PB * g->rows * g->hw * 2   /* both tiles' column transforms */
           + 2 * (ptrdiff_t)longest(g->m_h, g->m_w) * 2  /* FFT ping-pong buffers */
           + (ptrdiff_t)g->m_w * 2 + (ptrdiff_t)g->cols * 2   /* one output row: spectrum, maps */
           + (ptrdiff_t)g->hw * 2;                           /* zeros for a skipped tile B */
}

static ptrdiff_t twiddle_floats(const grid *g)
{
    return plan_floats(g->n_h) + plan_floats(g->n_w) + plan_floats(g->m_h) + plan_floats(g->m_w);
}

/* Per-thread scratch of vone_run (and of either half of it), in floats (a multiple of 16). */
int64_t vone_scratch_floats(int n_h, int n_w, int stride, int rows, int cols)
{
    const grid g = make_grid(1, 1, 1, 1, 0, n_h, n_w, stride, rows, cols);
    const ptrdiff_t spectra = spectra_vectors(&g), cells = cells_vectors(&g);
    const ptrdiff_t vectors = spectra > cells ? spectra : cells;
    return (vectors * LANES + twiddle_floats(&g) + 15) / 16 * 16;
}

typedef struct { plan forward_h, forward_w, inverse_h, inverse_w; vec *work; } thread_state;

/* The thread's plans (twiddles at the end of its scratch) and work space; -1 for a grid size that
 * is not 2^a 3^b 5^c. */
static int thread_setup(thread_state *t, const grid *g, float *mine, int64_t scratch_floats)
{
    float *tw = mine + scratch_floats - twiddle_floats(g);
    t->work = (vec *)mine;  /* scratch is torch-allocated: 64-byte aligned, and so is every part */
    if (make_plan(&t->forward_h, g->n_h, -1, tw)) return -1;
    tw += plan_floats(g->n_h);
    if (make_plan(&t->forward_w, g->n_w, -1, tw)) return -1;
    tw += plan_floats(g->n_w);
    if (make_plan(&t->inverse_h, g->m_h, 1, tw)) return -1;
    tw += plan_floats(g->m_h);
    return make_plan(&t->inverse_w, g->m_w, 1, tw);
}

static int checks(const grid *g, float *scratch, int64_t scratch_floats)
{
    thread_state t;
    if (g->n_h != g->m_h * g->stride || g->n_w != g->m_w * g->stride || g->rows > g->m_h || g->cols > g->m_w
        || g->padding + g->height > g->n_h || g->padding + g->width > g->n_w
        || scratch_floats < vone_scratch_floats(g->n_h, g->n_w, g->stride, g->rows, g->cols))
        return -1;
    return thread_setup(&t, g, scratch, scratch_floats);
}

/* --- the images' aliases ----------------------------------------------------------------------
 * One image colour (height x width floats at ``image``, at (padding, padding) of an n_h x n_w grid
 * of zeros): its forward 2-D FFT X[u][v] for v <= n_w / 2, then the aliases of each folded
 * half-plane frequency into x[k][a][re|im] (k = mw * m_h + mh, mw <= m_w / 2): alias a = (sh, sw)
 * of (mh, mw) is grid frequency (sh * m_h + mh, sw * m_w + mw), and a frequency v > n_w / 2 is the
 * conjugate of its mirror (-u, -v), as the image is real.
 *
 * Columns first, two blocks of LANES columns at a time as the real and imaginary parts of one
 * transform along h, separated by symmetry; transposed in registers to lanes across u; then the
 * transforms along w for LANES rows u at a time, of which the half spectrum is kept. */
static void image_aliases(const grid *g, const float *image, float *x, thread_state *t)
{
    const int n_h = g->n_h, n_w = g->n_w, UB = g->u_blocks, W = g->width, H = g->height, pad = g->padding;
    vec *columns_t = t->work;                                   /* [w][u block][re|im] */
    vec *spectrum = columns_t + (ptrdiff_t)n_w * UB * 2;        /* [v][u block][re|im], v < half */
    vec *line = spectrum + (ptrdiff_t)g->half * UB * 2, *transformed = line + (ptrdiff_t)n_h * 2;
    vec *b0 = transformed + (ptrdiff_t)n_h * 2, *b1 = b0 + (ptrdiff_t)longest(n_h, n_w) * 2;
    for (int w = 0; w < n_w; w++)  /* grid columns outside the image are zero */
        if (w < pad || w >= pad + W)
            memset(columns_t + (ptrdiff_t)w * UB * 2, 0, sizeof(vec) * UB * 2);
    for (int w0 = 0; w0 < W; w0 += 2 * LANES) {
        const int na = W - w0 < LANES ? W - w0 : LANES;
        const int nb = W - w0 - LANES < 0 ? 0 : W - w0 - LANES < LANES ? W - w0 - LANES : LANES;
        for (int u = 0; u < n_h; u++) {
            vec re = {0}, im = {0};
            if (u >= pad && u < pad + H) {
                const float *row = image + (ptrdiff_t)(u - pad) * W + w0;
                re = na == LANES ? load(row) : load_partial(row, na);
                if (nb)
                    im = nb == LANES ? load(row + LANES) : load_partial(row + LANES, nb);
            }
            line[2 * u] = re;
            line[2 * u + 1] = im;
        }
        fft_line(&t->forward_h, line, 2, transformed, 2, n_h, b0, b1);
        for (int ub = 0; ub < UB; ub++) {
            vec ar[LANES], ai[LANES], br[LANES], bi[LANES];
            for (int i = 0; i < LANES; i++) {
                const int k = ub * LANES + i;
                if (k >= n_h) {
                    ar[i] = ai[i] = br[i] = bi[i] = (vec){0};
                    continue;
                }
                const int mirror = (n_h - k) % n_h;
                const vec zr = transformed[2 * k], zi = transformed[2 * k + 1];
                const vec cr = transformed[2 * mirror], ci = transformed[2 * mirror + 1];
                ar[i] = 0.5f * (zr + cr);  /* A = (Z[k] + conj Z[-k]) / 2, B = (Z[k] - conj Z[-k]) / 2i */
                ai[i] = 0.5f * (zi - ci);
                br[i] = 0.5f * (zi + ci);
                bi[i] = 0.5f * (cr - zr);
            }
            transpose(ar); transpose(ai); transpose(br); transpose(bi);
            for (int j = 0; j < na; j++) {
                vec *to = columns_t + ((ptrdiff_t)(pad + w0 + j) * UB + ub) * 2;
                to[0] = ar[j];
                to[1] = ai[j];
            }
            for (int j = 0; j < nb; j++) {
                vec *to = columns_t + ((ptrdiff_t)(pad + w0 + LANES + j) * UB + ub) * 2;
                to[0] = br[j];
                to[1] = bi[j];
            }
        }
    }
    for (int ub = 0; ub < UB; ub++)
        fft_line(&t->forward_w, columns_t + (ptrdiff_t)ub * 2, (ptrdiff_t)UB * 2, spectrum + (ptrdiff_t)ub * 2,
                 (ptrdiff_t)UB * 2, g->half, b0, b1);
    const float *values = (const float *)spectrum;
    const int s = g->stride, m_h = g->m_h, m_w = g->m_w;
    float *o = x;
    for (int mw = 0; mw < g->hw; mw++) {
        for (int mh = 0; mh < m_h; mh++, o += 2 * g->A) {
            for (int a = 0; a < g->A; a++) {
                int u = a / s * m_h + mh, v = a % s * m_w + mw;
                float sign = 1.f;
                if (v >= g->half) {
                    u = (n_h - u) % n_h;
                    v = n_w - v;
                    sign = -1.f;
                }
                const float *at = values + (((ptrdiff_t)v * UB + u / LANES) * 2) * LANES + u % LANES;
                o[2 * a] = at[0];
                o[2 * a + 1] = sign * at[LANES];
            }
        }
    }
}

/* --- the cells --------------------------------------------------------------------------------- */
/* The alias inner products of one frequency column for np images: column[q][mh] = sum_a
 * x[q][mh][a] * h[mh][a] (complex; x a scalar broadcast over the lanes, h a vector of LANES
 * filters). ``np`` is a compile-time constant after inlining, so the 2 np accumulators stay in
 * registers. */
INLINE void column_block(const float *x, ptrdiff_t x_image, const float *h, vec *column, int m_h, int A, const int np)
{
    for (int mh = 0; mh < m_h; mh++) {
        const float *hk = h + (ptrdiff_t)mh * A * 2 * LANES, *xk = x + (ptrdiff_t)mh * A * 2;
        vec re[PB], im[PB];
        for (int q = 0; q < np; q++) { re[q] = (vec){0}; im[q] = (vec){0}; }
        for (int a = 0; a < A; a++) {
            for (int line = 0; line < 2 * LANES; line += 16)
                __builtin_prefetch(hk + a * 2 * LANES + line + PREFETCH_FLOATS);
            const vec hr = load(hk + a * 2 * LANES), hi = load(hk + a * 2 * LANES + LANES);
            #pragma GCC unroll 16
            for (int q = 0; q < np; q++) {
                const float xr = xk[q * x_image + 2 * a], xi = xk[q * x_image + 2 * a + 1];
                re[q] += hr * xr;   /* one fused multiply-add each (where the CPU has them) */
                re[q] -= hi * xi;
                im[q] += hi * xr;
                im[q] += hr * xi;
            }
        }
        for (int q = 0; q < np; q++) {
            column[((ptrdiff_t)q * m_h + mh) * 2] = re[q];
            column[((ptrdiff_t)q * m_h + mh) * 2 + 1] = im[q];
        }
    }
}

static void columns(const float *x, ptrdiff_t x_image, const float *h, vec *column, int m_h, int A, int np)
{
    switch (np) {  /* every count up to PB, each with its own unrolled code */
#if PB > 15 || PB < 1
#error "PB must be 1 to 15"
#endif
#define CASE(n) case n: column_block(x, x_image, h, column, m_h, A, n); break;
#if PB >= 15
        CASE(15)
#endif
#if PB >= 14
        CASE(14)
#endif
#if PB >= 13
        CASE(13)
#endif
#if PB >= 12
        CASE(12)
#endif
#if PB >= 11
        CASE(11)
#endif
#if PB >= 10
        CASE(10)
#endif
#if PB >= 9
        CASE(9)
#endif
#if PB >= 8
        CASE(8)
#endif
#if PB >= 7
        CASE(7)
#endif
#if PB >= 6
        CASE(6)
#endif
#if PB >= 5
        CASE(5)
#endif
#if PB >= 4
        CASE(4)
#endif
#if PB >= 3
        CASE(3)
#endif
#if PB >= 2
        CASE(2)
#endif
        CASE(1)
#undef CASE
        default: break;
    }
}

static inline vec relu(vec v)  /* keeps NaN, as torch's relu */
{
    const ivec negative = v < (vec){0};
    return (vec)((ivec)v & ~negative);
}

static inline vec energy(vec re, vec im, float gain)
{
    vec e;
    for (int j = 0; j < LANES; j++)
        e[j] = gain * sqrtf(re[j] * re[j] + im[j] * im[j]);
    return e;
}

/* Row ``r`` of the cells of one image from one row of maps (maps[c] = tile A's lanes + i tile B's):
 * LANES columns at a time are turned into cells, transposed, and stored per channel (the same
 * values again where the last block overlaps the one before it). */
static void write_cells(const vec *maps, int cols, int r, const int64_t *channels, int complex_cells,
                        float gain_simple, float gain_complex, float *image, ptrdiff_t plane)
{
    vec t[LANES];
    for (int c0 = 0; c0 < cols; c0 += LANES) {
        if (c0 + LANES > cols && cols >= LANES)
            c0 = cols - LANES;  /* the last block overlaps the one before: whole-vector stores only */
        const int n = cols - c0 < LANES ? cols - c0 : LANES;
        for (int part = 0; part < (complex_cells ? 1 : 2); part++) {
            for (int i = 0; i < LANES; i++) {
                const vec *m = maps + 2 * (c0 + (i < n ? i : 0));
                t[i] = complex_cells ? energy(m[0], m[1], gain_complex) : gain_simple * relu(m[part]);
            }
            transpose(t);
            for (int j = 0; j < LANES; j++) {
                const int64_t channel = channels[part * LANES + j];
                if (channel < 0)
                    continue;
                float *target = image + channel * plane + (ptrdiff_t)r * cols + c0;
                if (n == LANES)
                    store(target, t[j]);
                else
                    for (int k = 0; k < n; k++)
                        target[k] = t[j][k];
            }
        }
    }
}

/* One unit (units[5 u .. 5 u + 4]) for images p0 .. p0 + np - 1. */
static void unit_task(const grid *g, const float *x, const int64_t *unit, int p0, int np, float *out,
                      int64_t out_stride, float gain_simple, float gain_complex, thread_state *t)
{
    const int m_h = g->m_h, m_w = g->m_w, hw = g->hw, rows = g->rows, cols = g->cols, A = g->A;
    const ptrdiff_t tile = g->k_count * A * 2 * LANES, plane = (ptrdiff_t)rows * cols;
    vec *column = t->work;
    vec *spectra = column + (ptrdiff_t)PB * m_h * 2;
    vec *b0 = spectra + 2 * (ptrdiff_t)PB * rows * hw * 2, *b1 = b0 + (ptrdiff_t)longest(m_h, m_w) * 2;
    vec *row = b1 + (ptrdiff_t)longest(m_h, m_w) * 2, *maps = row + (ptrdiff_t)m_w * 2;
    const float *h = (const float *)(uintptr_t)unit[0];
    const int64_t *channels = (const int64_t *)(uintptr_t)unit[1];
    const int complex_cells = (int)unit[4];
    int tiles = complex_cells ? 2 : 1;  /* a simple unit's tile B is skipped when it has no channel */
    for (int j = 0; j < LANES && tiles == 1; j++)
        tiles += channels[LANES + j] >= 0;
    for (int tl = 0; tl < tiles; tl++) {  /* each tile: alias products, then the transform along h */
        const float *xt = x + ((ptrdiff_t)unit[2 + tl] * g->P + p0) * g->x_image, *ht = h + tl * tile;
        vec *out_t = spectra + (ptrdiff_t)tl * PB * rows * hw * 2;
        for (int mw = 0; mw < hw; mw++) {
            columns(xt + (ptrdiff_t)mw * m_h * A * 2, g->x_image, ht + (ptrdiff_t)mw * m_h * A * 2 * LANES, column,
                    m_h, A, np);
            for (int q = 0; q < np; q++)
                fft_line(&t->inverse_h, column + (ptrdiff_t)q * m_h * 2, 2,
                         out_t + ((ptrdiff_t)q * rows * hw + mw) * 2, (ptrdiff_t)hw * 2, rows, b0, b1);
        }
    }
    const vec *spectra_b = spectra + (ptrdiff_t)PB * rows * hw * 2;
    vec *zeros = maps + (ptrdiff_t)cols * 2;  /* a row of tile B when it is skipped */
    if (tiles == 1)
        memset(zeros, 0, sizeof(vec) * 2 * hw);
    for (int q = 0; q < np; q++) {
        float *image = out + (ptrdiff_t)(p0 + q) * out_stride;
        for (int r = 0; r < rows; r++) {
            /* Both tiles' rows are Hermitian along w (real maps): A + i B over the full row. */
            const vec *a = spectra + ((ptrdiff_t)q * rows + r) * hw * 2;
            const vec *b = tiles == 2 ? spectra_b + ((ptrdiff_t)q * rows + r) * hw * 2 : zeros;
            for (int mw = 0; mw < m_w; mw++) {
                if (mw < hw) {
                    const int real_only = mw == 0 || 2 * mw == m_w;  /* real in exact arithmetic */
                    const vec ar = a[2 * mw], ai = real_only ? (vec){0} : a[2 * mw + 1];
                    const vec br = b[2 * mw], bi = real_only ? (vec){0} : b[2 * mw + 1];
                    row[2 * mw] = ar - bi;
                    row[2 * mw + 1] = ai + br;
                } else {  /* conj(A[m_w - mw]) + i conj(B[m_w - mw]) */
                    const int mirror = m_w - mw;
                    row[2 * mw] = a[2 * mirror] + b[2 * mirror + 1];
                    row[2 * mw + 1] = b[2 * mirror] - a[2 * mirror + 1];
                }
            }
            fft_line(&t->inverse_w, row, 2, maps, 2, cols, b0, b1);
            write_cells(maps, cols, r, channels, complex_cells, gain_simple, gain_complex, image, plane);
        }
    }
}

/* --- entry points ------------------------------------------------------------------------------
 * images: float32 [P][colours][height][width], at (padding, padding) of the n_h x n_w Fourier grid
 *    (n = stride * m, m = 2^a 3^b 5^c, rows <= m_h, cols <= m_w).
 * aliases: float32 [colours][P][k_count][stride^2][re|im], k_count = (m_w / 2 + 1) * m_h, written by the
 *    spectra and read by the cells.
 * units[u] = {filter spectra, channels, colour A, colour B, complex}: int64, the first two addresses.
 *    Filter spectra: two tiles (A, B) of LANES real filters, h[tile][k][a][re|im][lane], correlation
 *    spectra with the fold's 1 / s^2 and the inverse FFT's 1 / (m_h m_w). Channels: 2 LANES int64,
 *    the output channel of tile A's and then tile B's lanes (-1: none). Simple units write
 *    gain_simple * relu of each map; complex units pair lane j of A (q0) and B (q1) as one cell,
 *    gain_complex * sqrt(q0^2 + q1^2), into channel channels[j].
 * out: float32 [P][out_stride floats: channels][rows][cols].
 * scratch: threads * scratch_floats floats (vone_scratch_floats), 64-byte aligned.
 * Each returns 0, or -1 (nothing written) for sizes it cannot do. */
#define THREAD_SCRATCH(me) (scratch + (ptrdiff_t)(me) * scratch_floats)
#ifdef _OPENMP
#define ME omp_get_thread_num()
#else
#define ME 0
#endif

static void spectra_tasks(const grid *g, const float *images, float *aliases, thread_state *t)
{
    #pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < g->P * g->colours; task++) {  /* dynamic: a thread sharing its CPU takes fewer */
        const int p = task / g->colours, colour = task % g->colours;
        image_aliases(g, images + (ptrdiff_t)task * g->height * g->width,
                      aliases + ((ptrdiff_t)colour * g->P + p) * g->x_image, t);
    }
}

static void cells_tasks(const grid *g, const float *aliases, const int64_t *units, int n_units, float *out,
                        int64_t out_stride, float gain_simple, float gain_complex, thread_state *t)
{
    const int blocks = (g->P + PB - 1) / PB;
    #pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < n_units * blocks; task++) {
        const int u = task / blocks, p0 = task % blocks * PB;
        unit_task(g, aliases, units + 5 * (ptrdiff_t)u, p0, g->P - p0 < PB ? g->P - p0 : PB, out, out_stride,
                  gain_simple, gain_complex, t);
    }
}

int vone_spectra(const float *images, int P, int colours, int height, int width, int padding, int n_h, int n_w,
                 int stride, float *aliases, float *scratch, int64_t scratch_floats, int threads)
{
    const grid g = make_grid(P, colours, height, width, padding, n_h, n_w, stride, 1, 1);
    if (checks(&g, scratch, scratch_floats))
        return -1;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        thread_state t;
        thread_setup(&t, &g, THREAD_SCRATCH(ME), scratch_floats);
        spectra_tasks(&g, images, aliases, &t);
    }
    return 0;
}

int vone_cells_from_spectra(const float *aliases, int P, int colours, int n_h, int n_w, int stride, int rows,
                            int cols, const int64_t *units, int n_units, float *out, int64_t out_stride,
                            float gain_simple, float gain_complex, float *scratch, int64_t scratch_floats,
                            int threads)
{
    const grid g = make_grid(P, colours, 1, 1, 0, n_h, n_w, stride, rows, cols);
    if (checks(&g, scratch, scratch_floats))
        return -1;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        thread_state t;
        thread_setup(&t, &g, THREAD_SCRATCH(ME), scratch_floats);
        cells_tasks(&g, aliases, units, n_units, out, out_stride, gain_simple, gain_complex, &t);
    }
    return 0;
}

/* Both in one parallel region (one barrier between them, none before). */
int vone_run(const float *images, int P, int colours, int height, int width, int padding, int n_h, int n_w,
             int stride, int rows, int cols, float *aliases, const int64_t *units, int n_units, float *out,
             int64_t out_stride, float gain_simple, float gain_complex, float *scratch, int64_t scratch_floats,
             int threads)
{
    const grid g = make_grid(P, colours, height, width, padding, n_h, n_w, stride, rows, cols);
    if (checks(&g, scratch, scratch_floats))
        return -1;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        thread_state t;
        thread_setup(&t, &g, THREAD_SCRATCH(ME), scratch_floats);
        spectra_tasks(&g, images, aliases, &t);  /* ends with a barrier: every image's aliases are in */
        cells_tasks(&g, aliases, units, n_units, out, out_stride, gain_simple, gain_complex, &t);
    }
    return 0;
}
