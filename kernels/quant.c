/*
 * quant.c — quantize matrices into the Q8 / Q4 layouts of quant.h, and the
 * reference dequantization.
 *
 * Quantization runs once, at load, on the host; rows are independent, so
 * they are spread over OpenMP threads.  Rounding is to nearest, ties to even
 * (nearbyintf in the default rounding mode), so the result is the same on
 * every run and every thread count.
 */
#include "kernels/quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/dtype.h"

llmq_status llmq_quant_parse(const char *s, llmq_quant *q, llmq_err *err) {
    if (s && !strcmp(s, "none")) *q = LLMQ_QUANT_NONE;
    else if (s && !strcmp(s, "int8")) *q = LLMQ_QUANT_INT8;
    else if (s && !strcmp(s, "int4")) *q = LLMQ_QUANT_INT4;
    else return llmq_err_set(err, LLMQ_ERR_INVALID, "unknown quantization '%s' (known: none, int8, int4)", s ? s : "");
    return LLMQ_OK;
}

const char *llmq_quant_name(llmq_quant q) {
    switch (q) {
    case LLMQ_QUANT_NONE: return "none";
    case LLMQ_QUANT_INT8: return "int8";
    case LLMQ_QUANT_INT4: return "int4";
    }
    return "?";
}

size_t llmq_quant_bytes(llmq_quant q, size_t rows, size_t cols, int group) {
    if (group <= 0) group = LLMQ_Q4_GROUP;
    switch (q) {
    case LLMQ_QUANT_NONE: return 0;
    case LLMQ_QUANT_INT8: return rows * cols + rows * sizeof(float);
    case LLMQ_QUANT_INT4: {
        const size_t groups = (cols + (size_t)group - 1) / (size_t)group;
        return rows * ((cols + 15) / 16 * 8) + rows * groups * (sizeof(float) + 1);
    }
    }
    return 0;
}

/* Element i of row r of a plain matrix as F32. */
static void plain_row(float *dst, const be_weight *w, int r) {
    const size_t off = (size_t)r * be_weight_ld(w);
    for (int i = 0; i < w->cols; i++) {
        switch (w->dt) {
        case LLMQ_F32: dst[i] = ((const float *)w->data)[off + (size_t)i]; break;
        case LLMQ_F16: dst[i] = f16_to_f32(((const uint16_t *)w->data)[off + (size_t)i]); break;
        case LLMQ_BF16: dst[i] = bf16_to_f32(((const uint16_t *)w->data)[off + (size_t)i]); break;
        case LLMQ_Q8:
        case LLMQ_Q4: dst[i] = 0; break; /* not reached: quantized rows go through llmq_dequantize_row */
        }
    }
}

static void quant_row_q8(int8_t *q, float *scale, const float *w, int cols) {
    float amax = 0;
    for (int i = 0; i < cols; i++) amax = fmaxf(amax, fabsf(w[i]));
    const float s = amax / 127.0f;
    *scale = s;
    const float inv = s > 0 ? 1.0f / s : 0.0f;
    for (int i = 0; i < cols; i++) {
        float v = nearbyintf(w[i] * inv);
        q[i] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
    }
}

static void quant_row_q4(uint8_t *q, float *scales, uint8_t *zeros, const float *w, int cols, int group) {
    memset(q, 0, (size_t)(cols + 15) / 16 * 8);
    for (int g0 = 0, g = 0; g0 < cols; g0 += group, g++) {
        const int end = g0 + group < cols ? g0 + group : cols;
        float lo = 0, hi = 0; /* the range always holds 0, so 0 dequantizes exactly */
        for (int i = g0; i < end; i++) {
            lo = fminf(lo, w[i]);
            hi = fmaxf(hi, w[i]);
        }
        const float s = (hi - lo) / 15.0f;
        float z = s > 0 ? nearbyintf(-lo / s) : 0;
        z = z < 0 ? 0 : z > 15 ? 15 : z;
        scales[g] = s;
        zeros[g] = (uint8_t)z;
        const float inv = s > 0 ? 1.0f / s : 0.0f;
        for (int i = g0; i < end; i++) {
            float v = nearbyintf(w[i] * inv) + z;
            const unsigned n = (unsigned)(v < 0 ? 0 : v > 15 ? 15 : v);
            q[llmq_q4_byte(i)] |= (uint8_t)(n << llmq_q4_shift(i));
        }
    }
}

llmq_status llmq_quantize(be_weight *out, void **mem, const be_weight *in, llmq_quant q, int group, llmq_err *err) {
    if (group <= 0) group = LLMQ_Q4_GROUP;
    if (q == LLMQ_QUANT_NONE || llmq_dtype_is_quant(in->dt) || in->rows <= 0 || in->cols <= 0)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "quantize: %s of a %s [%d, %d] matrix", llmq_quant_name(q),
                            llmq_dtype_name(in->dt), in->rows, in->cols);
    if (q == LLMQ_QUANT_INT4 && group % 8)
        return llmq_err_set(err, LLMQ_ERR_INVALID, "quantize: int4 group size %d is not a multiple of 8", group);
    const size_t rows = (size_t)in->rows, cols = (size_t)in->cols;
    const size_t row_bytes = q == LLMQ_QUANT_INT4 ? (cols + 15) / 16 * 8 : cols;
    const size_t groups = q == LLMQ_QUANT_INT4 ? (cols + (size_t)group - 1) / (size_t)group : 1;
    /* descriptor, values, scales, zero points; each at a 64-byte boundary */
    const size_t head = 64, data_bytes = (rows * row_bytes + 63) & ~(size_t)63;
    const size_t scale_bytes = (rows * groups * sizeof(float) + 63) & ~(size_t)63;
    const size_t zero_bytes = q == LLMQ_QUANT_INT4 ? (rows * groups + 63) & ~(size_t)63 : 0;
    char *block = aligned_alloc(64, head + data_bytes + scale_bytes + zero_bytes);
    if (!block)
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "quantize: no memory for a %s [%d, %d] matrix",
                            llmq_quant_name(q), in->rows, in->cols);
    be_qweight *qw = (be_qweight *)block;
    uint8_t *values = (uint8_t *)block + head;
    float *scales = (float *)(block + head + data_bytes);
    uint8_t *zeros = q == LLMQ_QUANT_INT4 ? (uint8_t *)(block + head + data_bytes + scale_bytes) : NULL;
    int failed = 0;
#pragma omp parallel reduction(| : failed) if (rows * cols > 65536)
    {
        float *row = malloc(cols * sizeof(float));
        if (!row) failed = 1;
#pragma omp for schedule(static)
        for (size_t r = 0; r < rows; r++) {
            if (!row) continue;
            plain_row(row, in, (int)r);
            if (q == LLMQ_QUANT_INT8)
                quant_row_q8((int8_t *)values + r * row_bytes, &scales[r], row, (int)cols);
            else
                quant_row_q4(values + r * row_bytes, scales + r * groups, zeros + r * groups, row, (int)cols, group);
        }
        free(row);
    }
    if (failed) {
        free(block);
        return llmq_err_set(err, LLMQ_ERR_NOMEM, "quantize: out of memory");
    }
    qw->q = values;
    qw->scales = scales;
    qw->zeros = zeros;
    qw->group = q == LLMQ_QUANT_INT4 ? group : 0;
    memset(out, 0, sizeof *out);
    out->data = qw;
    out->dt = q == LLMQ_QUANT_INT8 ? LLMQ_Q8 : LLMQ_Q4;
    out->rows = in->rows;
    out->cols = in->cols;
    out->ld = in->cols;
    *mem = block;
    return LLMQ_OK;
}

void llmq_dequantize_row(float *dst, const be_weight *w, int r) {
    if (!llmq_dtype_is_quant(w->dt)) {
        plain_row(dst, w, r);
        return;
    }
    const be_qweight *qw = llmq_qweight_of(w);
    if (w->dt == LLMQ_Q8) {
        const int8_t *q = (const int8_t *)qw->q + (size_t)r * (size_t)w->cols;
        const float s = qw->scales[r];
        for (int i = 0; i < w->cols; i++) dst[i] = (float)q[i] * s;
        return;
    }
    const uint8_t *q = (const uint8_t *)qw->q + (size_t)r * llmq_quant_row_bytes(w);
    const int G = llmq_quant_groups(w);
    const float *s = qw->scales + (size_t)r * G;
    const uint8_t *z = qw->zeros + (size_t)r * G;
    for (int i = 0; i < w->cols; i++) {
        const int g = i / qw->group;
        dst[i] = (float)((int)((q[llmq_q4_byte(i)] >> llmq_q4_shift(i)) & 15) - (int)z[g]) * s[g];
    }
}
