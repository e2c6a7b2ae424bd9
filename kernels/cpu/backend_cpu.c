/*
 * backend_cpu.c — the CPU backends' op tables, memory and conversions.
 *
 * Host memory is the device memory: alloc is calloc,
 * upload/download are memcpy, and weights are used in place from wherever
 * the loader mapped them (weight_prepare copies nothing).
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/threads.h"

/* calloc: large buffers (the KV cache) come from fresh zero pages the
 * kernel maps lazily, so a big pool costs nothing until it is used.  The
 * kernels use unaligned loads, so calloc's 16-byte alignment is enough. */
static void *cpu_alloc(llmq_backend *be, size_t bytes) {
    (void)be;
    return calloc(1, bytes ? bytes : 1);
}

static void cpu_free(llmq_backend *be, void *p) {
    (void)be;
    free(p);
}

static void cpu_upload(llmq_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    memcpy(dst, src, bytes);
}

static void cpu_download_f32(llmq_backend *be, float *dst, const void *src, size_t n) {
    (void)be;
    memcpy(dst, src, n * sizeof(float));
}

static void cpu_upload_f32(llmq_backend *be, void *dst, const float *src, size_t n) {
    (void)be;
    memcpy(dst, src, n * sizeof(float));
}

static llmq_status cpu_weight_prepare(llmq_backend *be, be_weight *out, const be_weight *in) {
    (void)be;
    *out = *in;
    return LLMQ_OK;
}

static void cpu_weight_release(llmq_backend *be, be_weight *w) {
    (void)be;
    (void)w;
}

static llmq_status cpu_sync(llmq_backend *be, llmq_err *err) {
    if (be->err.code != LLMQ_OK) {
        if (err) *err = be->err;
        return be->err.code;
    }
    return LLMQ_OK;
}

void cpu_convert_row(float *dst, const void *src, llmq_dtype dt, size_t off, size_t n) {
    switch (dt) {
    case LLMQ_F32:
        memcpy(dst, (const float *)src + off, n * sizeof(float));
        break;
    case LLMQ_BF16: {
        const uint16_t *s = (const uint16_t *)src + off;
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
        break;
    }
    case LLMQ_F16: {
        const uint16_t *s = (const uint16_t *)src + off;
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
        break;
    }
    case LLMQ_Q8:
    case LLMQ_Q4: /* quantized rows carry scales: llmq_dequantize_row (kernels/quant.h) */
        memset(dst, 0, n * sizeof(float));
        break;
    }
}

void cpu_embed(llmq_backend *be, void *out, const be_weight *table, const int32_t *ids, int n) {
    (void)be;
    float *o = out;
    const size_t dim = (size_t)table->cols;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= table->rows)
            memset(o + i * dim, 0, dim * sizeof(float));
        else
            cpu_convert_row(o + i * dim, table->data, table->dt, (size_t)ids[i] * be_weight_ld(table), dim);
    }
}

void cpu_gather_rows(llmq_backend *be, void *dst, const void *src, const int32_t *rows, int n, int dim) {
    (void)be;
    for (int i = 0; i < n; i++)
        memmove((float *)dst + (size_t)i * dim, (const float *)src + (size_t)rows[i] * dim, (size_t)dim * 4);
}

void cpu_add(llmq_backend *be, void *x, const void *y, size_t n) {
    (void)be;
    float *a = x;
    const float *b = y;
    for (size_t i = 0; i < n; i++) a[i] += b[i];
}

int cpu_scratch_reserve(cpu_impl *impl, size_t n) {
    if (n <= impl->scratch_cap) return 0;
    for (int t = 0; t < impl->n_threads; t++) {
        float *p = NULL;
        if (posix_memalign((void **)&p, 64, n * sizeof(float))) return -1;
        free(impl->scratch[t]);
        impl->scratch[t] = p;
    }
    impl->scratch_cap = n;
    return 0;
}

/* be_ops.destroy of both tables: the scratch, the state, the backend. */
static void cpu_destroy(llmq_backend *be) {
    cpu_impl *impl = be->impl;
    for (int t = 0; t < impl->n_threads; t++) free(impl->scratch[t]);
    free(impl->scratch);
    free(impl);
    free(be);
}

static const be_ops cpu_fast_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download_f32 = cpu_download_f32,
    .upload_f32 = cpu_upload_f32,
    .weight_prepare = cpu_weight_prepare,
    .weight_release = cpu_weight_release,
    .sync = cpu_sync,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .add_rmsnorm = cpu_add_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .gather_rows = cpu_gather_rows,
    .add = cpu_add,
    .layernorm = cpu_layernorm,
    .gelu = cpu_gelu,
    .moe = cpu_moe,
    .destroy = cpu_destroy,
    .kv_dtypes = 1u << LLMQ_F32 | 1u << LLMQ_F16 | 1u << LLMQ_BF16,
};

static const be_ops cpu_ref_ops = {
    .name = "cpu-ref",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download_f32 = cpu_download_f32,
    .upload_f32 = cpu_upload_f32,
    .weight_prepare = cpu_weight_prepare,
    .weight_release = cpu_weight_release,
    .sync = cpu_sync,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm_ref,
    .add_rmsnorm = cpu_add_rmsnorm_ref,
    .matmul = cpu_matmul_ref,
    .rope = cpu_rope_ref,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention_ref,
    .swiglu = cpu_swiglu_ref,
    .gather_rows = cpu_gather_rows,
    .add = cpu_add,
    .layernorm = cpu_layernorm_ref,
    .gelu = cpu_gelu_ref,
    .moe = cpu_moe_ref,
    .destroy = cpu_destroy,
    .kv_dtypes = 1u << LLMQ_F32 | 1u << LLMQ_F16 | 1u << LLMQ_BF16,
};

llmq_backend *cpu_backend_create(int reference, llmq_err *err) {
    cpu_isa isa = CPU_ISA_GENERIC;
    if (!reference && cpu_isa_select(&isa, err)) return NULL;
    llmq_backend *be = calloc(1, sizeof *be);
    cpu_impl *impl = calloc(1, sizeof *impl);
    cpu_threads_setup(NULL); /* the pool sized to the CPUs this process may use, once */
    int nt = omp_get_max_threads();
    float **scratch = calloc((size_t)(nt > 0 ? nt : 1), sizeof *scratch);
    if (!be || !impl || !scratch) {
        free(be);
        free(impl);
        free(scratch);
        llmq_err_set(err, LLMQ_ERR_NOMEM, "cpu backend: out of memory");
        return NULL;
    }
    impl->reference = reference;
    impl->isa = isa;
    impl->n_threads = nt > 0 ? nt : 1;
    impl->scratch = scratch;
    be->ops = reference ? &cpu_ref_ops : &cpu_fast_ops;
    be->act_dt = LLMQ_F32;
    be->kv_dt = LLMQ_F32; /* until the engine picks its KV type (eng_opts.kv_dtype) */
    be->impl = impl;
    be->isa = reference ? "scalar" : cpu_isa_name(isa);
    return be;
}
