/* The VOneBlock's folded-spectrum Gabor stage, fused where torch operators cannot be.
 *
 * Compiled on first use by vone/native.py and called through ctypes, so the package installs
 * without a build step. Three kernels:
 *
 *   pack_aliases: the images' 16 aliases per output frequency, gathered from rfft2 half spectra
 *             into the layout contract reads (torch would need a full FFT and two copies).
 *   contract: the per-frequency 16-alias inner products (image spectra x filter-pair spectra),
 *             written straight into the layout the inverse FFT reads. With torch operators this
 *             is a batched matrix product whose output must then be transposed in memory.
 *   cells:    simple cells (gain * relu) and complex cells (gain * quadrature energy) from the
 *             inverse-transformed maps, written straight into the VOneBlock's output channels.
 *             With torch operators this is four element-wise passes and a scatter.
 *
 * All are plain float32 arithmetic in a fixed order per output element, so an image's result does
 * not depend on the batch it came in. No fast-math: NaN and infinity propagate as in torch.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#define VL 16     /* frequencies per vector (one AVX-512 register of floats) */
#define PB 8      /* images held in registers at once */

typedef float vec __attribute__((vector_size(VL * sizeof(float))));

static inline vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }

/* One task's inner products for ``np`` images (a compile-time constant after inlining, so the
 * accumulators stay in registers): re/im += x * h over the A aliases, then stored interleaved. */
static inline __attribute__((always_inline)) void
images_block(const float *xb, const float *hb, float *y, int A, int C, int K, int k0, int n, int c, int p0,
             const int np)
{
    const int alias_floats = 2 * VL, block_floats = A * alias_floats;
    vec re[PB], im[PB];
    for (int q = 0; q < np; q++) { re[q] = (vec){0}; im[q] = (vec){0}; }
    for (int a = 0; a < A; a++) {
        const vec hr = load(hb + a * alias_floats), hi = load(hb + a * alias_floats + VL);
        #pragma GCC unroll 8
        for (int q = 0; q < np; q++) {
            const float *xp = xb + (size_t)(p0 + q) * block_floats + a * alias_floats;
            const vec xr = load(xp), xi = load(xp + VL);
            re[q] += xr * hr;   /* one fused multiply-add each */
            re[q] -= xi * hi;
            im[q] += xr * hi;
            im[q] += xi * hr;
        }
    }
    for (int q = 0; q < np; q++) {
        float *out = y + (((size_t)(p0 + q) * C + c) * K + k0) * 2;
        float r[VL], i[VL];
        memcpy(r, &re[q], sizeof r);
        memcpy(i, &im[q], sizeof i);
        for (int j = 0; j < n; j++) { out[2 * j] = r[j]; out[2 * j + 1] = i[j]; }
    }
}

/* y[p][c][k] (interleaved complex, k < K) = sum_a x[p][a][k] * h[c][a][k]  for p < P, c < C.
 *
 * Frequencies come in blocks of VL; inside a block real and imaginary parts are planar:
 *   x block kb, image p, alias a:  x + kb * x_block_stride + (p * A + a) * 2 * VL  (VL re, VL im)
 *   h block kb, pair c, alias a:   h + ((kb * C + c) * A + a) * 2 * VL
 * so each task (kb, c) streams one contiguous block of h and reuses a cached block of x. */
void vone_contract(const float *x, const float *h, float *y, int P, int C, int A, int blocks, int K,
                   long x_block_stride, int threads)
{
    const int block_floats = A * 2 * VL;
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int task = 0; task < blocks * C; task++) {
        const int kb = task / C, c = task % C, k0 = kb * VL;
        const int n = K - k0 < VL ? K - k0 : VL;
        const float *hb = h + ((size_t)kb * C + c) * block_floats;
        const float *xb = x + (size_t)kb * x_block_stride;
        for (int line = 0; line < block_floats; line += 16)  /* the next tasks' h: memory, not the */
            __builtin_prefetch(hb + 4 * block_floats + line); /* arithmetic, bounds this loop */
        int p0 = 0;
        for (; p0 + PB <= P; p0 += PB)
            images_block(xb, hb, y, A, C, K, k0, n, c, p0, PB);
        switch (P - p0) {  /* the remaining images, each count with its own unrolled code */
            case 7: images_block(xb, hb, y, A, C, K, k0, n, c, p0, 7); break;
            case 6: images_block(xb, hb, y, A, C, K, k0, n, c, p0, 6); break;
            case 5: images_block(xb, hb, y, A, C, K, k0, n, c, p0, 5); break;
            case 4: images_block(xb, hb, y, A, C, K, k0, n, c, p0, 4); break;
            case 3: images_block(xb, hb, y, A, C, K, k0, n, c, p0, 3); break;
            case 2: images_block(xb, hb, y, A, C, K, k0, n, c, p0, 2); break;
            case 1: images_block(xb, hb, y, A, C, K, k0, n, c, p0, 1); break;
        }
    }
}

/* Cells from the inverse-transformed maps of one unit of C filter pairs, for P images.
 *
 * a, b: maps[p][j][rows_in][cols_in] interleaved complex; part 0 (real) / 1 (imaginary) of pair j is
 * slot part * C + j, written to output channel channels[slot] (skipped when negative) of
 * out[p][channel][rows][cols] (images out_stride floats apart). Without b: simple cells,
 * gain * relu(a). With b: complex cells, gain * sqrt(a^2 + b^2), a and b the two quadrature filters. */
void vone_cells(const float *a, const float *b, float *out, const long *channels, int P, int C,
                int rows_in, int cols_in, int rows, int cols, long out_stride, float gain, int threads)
{
    #pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (threads > 1)
    for (int p = 0; p < P; p++) {
        for (int slot = 0; slot < 2 * C; slot++) {
            const long channel = channels[slot];
            if (channel < 0)
                continue;
            const int j = slot % C, part = slot / C;
            const size_t source = ((size_t)p * C + j) * rows_in * cols_in * 2 + part;
            float *target = out + (size_t)p * out_stride + (size_t)channel * rows * cols;
            for (int r = 0; r < rows; r++) {
                const float *ar = a + source + (size_t)r * cols_in * 2;
                float *t = target + (size_t)r * cols;
                if (b) {
                    const float *br = b + source + (size_t)r * cols_in * 2;
                    for (int c = 0; c < cols; c++)
                        t[c] = gain * sqrtf(ar[2 * c] * ar[2 * c] + br[2 * c] * br[2 * c]);
                } else {
                    for (int c = 0; c < cols; c++) {
                        const float v = ar[2 * c];
                        t[c] = gain * (v < 0.f ? 0.f : v);  /* keeps NaN, as torch's relu */
                    }
                }
            }
        }
    }
}

/* The images' aliases in vone_contract's x layout, x[kb][colour][p][a][re|im][VL] (zero past the
 * last frequency), gathered from the half spectra r[p][colour][n_h][n_w / 2 + 1] (interleaved
 * complex, torch.fft.rfft2 of real images). Alias a = (sh, sw) of folded frequency k = (mh, mw) is
 * full-grid frequency (sh * m_h + mh, sw * m_w + mw); columns past n_w / 2 are the conjugates of
 * their mirror (-u, -v), as the images are real. Replaces a full complex FFT and two copies. */
void vone_pack_aliases(const float *r, float *x, int P, int colours, int n_h, int n_w, int stride, int blocks,
                       int threads)
{
    const int m_h = n_h / stride, m_w = n_w / stride, frequencies = m_h * m_w, A = stride * stride;
    const int half = n_w / 2 + 1;
    #pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (threads > 1)
    for (int kb = 0; kb < blocks; kb++) {
        for (int image = 0; image < colours * P; image++) {
            const int colour = image / P, p = image % P;
            const float *spectrum = r + ((size_t)p * colours + colour) * n_h * half * 2;
            float *out = x + (((size_t)kb * colours + colour) * P + p) * A * 2 * VL;
            int row[VL], column[VL], valid = 0;  /* folded (mh, mw) of the block's frequencies */
            for (int j = 0, k = kb * VL; j < VL && k < frequencies; j++, k++, valid++) {
                row[j] = k / m_w;
                column[j] = k % m_w;
            }
            for (int a = 0; a < A; a++) {
                const int sh = a / stride, sw = a % stride;
                for (int j = 0; j < VL; j++) {
                    float re = 0.f, im = 0.f;
                    if (j < valid) {
                        const int u = sh * m_h + row[j], v = sw * m_w + column[j];
                        if (v < half) {
                            re = spectrum[((size_t)u * half + v) * 2];
                            im = spectrum[((size_t)u * half + v) * 2 + 1];
                        } else {
                            const int mirror_u = (n_h - u) % n_h, mirror_v = n_w - v;
                            re = spectrum[((size_t)mirror_u * half + mirror_v) * 2];
                            im = -spectrum[((size_t)mirror_u * half + mirror_v) * 2 + 1];
                        }
                    }
                    out[a * 2 * VL + j] = re;
                    out[a * 2 * VL + VL + j] = im;
                }
            }
        }
    }
}
