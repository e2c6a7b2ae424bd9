/*
 * quant.h — weight-only quantization of matrices: the storage format shared by
 * the loader (worker/model/model.c, which quantizes at load), the kernels that read
 * it (kernels/cpu/qmatmul.c) and the memory estimator (worker/engine/vram.c, which
 * counts its bytes).  Activations stay F32; only the weights are compressed.
 *
 * Layout of a quantized [rows, cols] matrix: a be_weight with dt Q8 or Q4
 * whose data points to a be_qweight (kernels/backend.h) naming the arrays,
 * all in one allocation, rows contiguous:
 *
 *   Q8  q       int8   [rows, cols]         values in -127..127
 *       scales  f32    [rows]                w[r,i] ~ scales[r] * q[r,i]
 *       Symmetric, one scale per output row: scale = max|w[r,:]| / 127.
 *
 *   Q4  q       uint8  [rows, 8*ceil(cols/16)]  two elements a byte, in
 *                                            blocks of 16 elements / 8 bytes:
 *                                            element 16b + o sits in byte 8b + o%8,
 *                                            low nibble for o < 8, high for o >= 8.
 *                                            So the 8 bytes of a block widen to
 *                                            elements 0-7 (& 15) and 8-15 (>> 4)
 *                                            with one zero-extension each.
 *       scales  f32    [rows, G]             G = ceil(cols / group)
 *       zeros   uint8  [rows, G]             zero point z in 0..15
 *       w[r,i] ~ scales[r,g] * (q[r,i] - zeros[r,g]),  g = i / group.
 *       Asymmetric per group: the group's range [min(lo,0), max(hi,0)] is cut
 *       into 15 steps, so 0 is exact.  group is a multiple of 8 (32 or 128);
 *       the last group of a row may be shorter.
 *
 * The dequantized value of an element is defined as the F32 product above
 * (float(q - z) * scale, rounded once): every kernel computes exactly that
 * value, so a reference and a fast path differ only by summation order.
 */
#ifndef LLMQ_QUANT_H
#define LLMQ_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kernels/backend.h"

typedef enum llmq_quant {
    LLMQ_QUANT_NONE = 0,
    LLMQ_QUANT_INT8, /* -> LLMQ_Q8 */
    LLMQ_QUANT_INT4, /* -> LLMQ_Q4 */
} llmq_quant;

#define LLMQ_Q4_GROUP 128 /* default Q4 group size */

/* "none", "int8", "int4" -> *q; LLMQ_ERR_INVALID naming the choices otherwise. */
llmq_status llmq_quant_parse(const char *s, llmq_quant *q, llmq_err *err);
const char *llmq_quant_name(llmq_quant q);

/* Bytes a quantized [rows, cols] matrix takes (data + scales + zeros, no
 * alignment padding).  group is ignored for INT8; NONE returns 0. */
size_t llmq_quant_bytes(llmq_quant q, size_t rows, size_t cols, int group);

/*
 * Quantize the matrix `in` (F32, F16 or BF16, any row stride) into one new
 * malloc'd block *mem (descriptor and arrays); *out describes it (same rows
 * and cols, dt Q8 or Q4, ld = cols, data = the descriptor).
 * group: Q4 group size, a positive multiple of 8 (0 = LLMQ_Q4_GROUP).
 * Ownership: the caller frees *mem (and only *mem) when done with *out.
 */
llmq_status llmq_quantize(be_weight *out, void **mem, const be_weight *in, llmq_quant q, int group, llmq_err *err);

/* Row r of a quantized (or plain) matrix as F32: the reference dequantization. */
void llmq_dequantize_row(float *dst, const be_weight *w, int r);

/* The descriptor of a Q8 / Q4 matrix. */
static inline const be_qweight *llmq_qweight_of(const be_weight *w) { return (const be_qweight *)w->data; }

/* Bytes of one row of quantized values (not counting scales). */
static inline size_t llmq_quant_row_bytes(const be_weight *w) {
    return w->dt == LLMQ_Q4 ? (size_t)(w->cols + 15) / 16 * 8 : (size_t)w->cols;
}

/* Q4: the byte of element i in its row, and the shift of its nibble. */
static inline size_t llmq_q4_byte(int i) { return (size_t)(i >> 4) * 8 + (size_t)(i & 7); }
static inline int llmq_q4_shift(int i) { return i & 8 ? 4 : 0; }

/* Scale groups per row: ceil(cols / group) for Q4, 1 for Q8. */
static inline int llmq_quant_groups(const be_weight *w) {
    const int g = llmq_qweight_of(w)->group;
    return w->dt == LLMQ_Q4 ? (w->cols + g - 1) / g : 1;
}

#endif
